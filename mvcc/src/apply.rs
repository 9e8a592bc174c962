//! The apply batch: the writes of a run of committed raft entries, one
//! B+tree write transaction, published to readers and watchers at commit.
//!
//! Each operation (a put, a delete of several keys, a transaction, a
//! lease revocation) takes one revision; its changes take the sub
//! revisions. The key index changes as the operations run, but readers
//! look only up to the published revision, which moves at commit.

use btree::WriteTxn;
use prost::Message;

use crate::buckets::{CONSISTENT_INDEX, KEY_BUCKET, META_BUCKET, SCHEDULED_COMPACTION, TERM};
use crate::compact::PendingCompaction;
use crate::error::{Error, Result};
use crate::history::{Event, EventKind};
use crate::index::RangeEnd;
use crate::kv::{decode, KeyValue};
use crate::revision::Revision;
use crate::store::Store;

#[derive(Debug, Clone, Default)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutResult {
    pub revision: i64,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteResult {
    pub revision: i64,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// The revision an operation writes at: every change of one operation
/// (a put, a delete of several keys, a whole transaction) shares `main`
/// and takes the next `sub`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpRev {
    pub(crate) main: i64,
    pub(crate) sub: i64,
}

/// A batch of applied operations: one B+tree write transaction, made
/// visible by [`Apply::commit`].
pub struct Apply<'s> {
    pub(crate) store: &'s Store,
    pub(crate) tx: Option<WriteTxn<'s>>,
    /// The newest revision this batch has used.
    pub(crate) rev: i64,
    /// Whether the shared index has been changed (a batch dropped after
    /// that poisons the store: the index would name missing revisions).
    pub(crate) changed: bool,
    pub(crate) compact_to: Option<i64>,
    /// The batch's changes, for watchers, collected only when some
    /// watcher existed as the batch began.
    pub(crate) events: Vec<Event>,
    pub(crate) collect: bool,
    pub(crate) term: Option<u64>,
}

impl Drop for Apply<'_> {
    fn drop(&mut self) {
        if self.changed {
            self.store.write_shared().poisoned = true;
        }
    }
}

impl Store {
    /// Starts a batch of writes (one B+tree transaction).
    pub fn apply(&self) -> Result<Apply<'_>> {
        let s = self.read_shared();
        if s.poisoned {
            return Err(Error::Poisoned);
        }
        let next = s.current;
        drop(s);
        Ok(Apply {
            store: self,
            tx: Some(self.db.begin_write()?),
            rev: next,
            changed: false,
            compact_to: None,
            events: Vec::new(),
            collect: self.hub.lock().has_watchers(),
            term: None,
        })
    }
}

impl<'s> Apply<'s> {
    pub(crate) fn tx(&mut self) -> &mut WriteTxn<'s> {
        // Present from creation until commit consumes the batch.
        self.tx.as_mut().expect("apply batch used after commit")
    }

    pub(crate) fn read_kv(&mut self, rev: Revision) -> Result<KeyValue> {
        let bytes = self
            .tx()
            .get(KEY_BUCKET, &rev.to_key(false))?
            .map(<[u8]>::to_vec);
        match bytes {
            Some(b) => decode(rev, &b),
            None => Err(Error::Corrupt {
                rev,
                reason: "the index names a revision the key bucket does not hold".into(),
            }),
        }
    }

    /// Puts a key at a new revision.
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResult> {
        self.check_put(req)?;
        let mut op = self.begin_op();
        let r = self.put_in(req, &mut op);
        self.end_op(op);
        r
    }

    /// Deletes every live key in the range at one new revision (none is
    /// used when nothing is deleted).
    pub fn delete_range(
        &mut self,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
    ) -> Result<DeleteResult> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let mut op = self.begin_op();
        let r = self.delete_in(key, range_end, prev_kv, &mut op);
        self.end_op(op);
        r
    }

    pub(crate) fn check_put(&self, req: &PutRequest) -> Result<()> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if req.ignore_value && !req.value.is_empty() {
            return Err(Error::ValueProvided);
        }
        if req.ignore_lease && req.lease != 0 {
            return Err(Error::LeaseProvided);
        }
        if req.key.len() + req.value.len() > self.store.limits.max_put_bytes {
            return Err(Error::TooLarge);
        }
        Ok(())
    }

    pub(crate) fn begin_op(&self) -> OpRev {
        OpRev {
            main: self.rev + 1,
            sub: 0,
        }
    }

    pub(crate) fn end_op(&mut self, op: OpRev) {
        if op.sub > 0 {
            self.rev = op.main;
        }
    }

    /// The revision reads inside the current operation see.
    pub(crate) fn visible(&self, op: &OpRev) -> i64 {
        if op.sub > 0 {
            op.main
        } else {
            self.rev
        }
    }

    pub(crate) fn put_in(&mut self, req: &PutRequest, op: &mut OpRev) -> Result<PutResult> {
        let main = op.main;
        let prev = self.store.read_shared().index.get(&req.key, main);
        let prev_kv = match prev {
            Some(p) => Some(self.read_kv(p.modified)?),
            None => None,
        };
        if (req.ignore_value || req.ignore_lease) && prev_kv.is_none() {
            return Err(Error::KeyNotFound);
        }
        if !req.ignore_lease
            && req.lease != 0
            && !self.store.read_shared().lessor.contains(req.lease)
        {
            return Err(Error::LeaseNotFound);
        }
        let rev = Revision::new(main, op.sub);
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.map_or(main, |p| p.created.main),
            mod_revision: main,
            version: prev.map_or(1, |p| p.version + 1),
            value: match (&prev_kv, req.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => req.value.clone(),
            },
            lease: match (&prev_kv, req.ignore_lease) {
                (Some(p), true) => p.lease,
                _ => req.lease,
            },
        };
        self.tx()
            .put(KEY_BUCKET, &rev.to_key(false), &kv.encode_to_vec())?;
        self.changed = true;
        {
            let mut s = self.store.write_shared();
            s.index.put(&req.key, rev);
            s.lessor.attach(&req.key, kv.lease);
        }
        op.sub += 1;
        let result_prev = if req.prev_kv { prev_kv.clone() } else { None };
        if self.collect {
            self.events.push(Event {
                kind: EventKind::Put,
                kv,
                prev_kv,
            });
        }
        Ok(PutResult {
            revision: main,
            prev_kv: result_prev,
        })
    }

    pub(crate) fn delete_in(
        &mut self,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
        op: &mut OpRev,
    ) -> Result<DeleteResult> {
        let end = RangeEnd::from_etcd(range_end);
        let main = op.main;
        let live: Vec<(Vec<u8>, Revision)> = {
            let s = self.store.read_shared();
            s.index
                .live_keys(key, &end)
                .into_iter()
                .filter_map(|k| s.index.get(&k, main).map(|at| (k, at.modified)))
                .collect()
        };
        let mut out = DeleteResult::default();
        for (k, modified) in live {
            let before = if prev_kv || self.collect {
                Some(self.read_kv(modified)?)
            } else {
                None
            };
            if prev_kv {
                out.prev_kvs.extend(before.clone());
            }
            let rev = Revision::new(main, op.sub);
            let tomb = KeyValue {
                key: k.clone(),
                ..KeyValue::default()
            };
            self.tx()
                .put(KEY_BUCKET, &rev.to_key(true), &tomb.encode_to_vec())?;
            self.changed = true;
            {
                let mut s = self.store.write_shared();
                s.lessor.attach(&k, 0);
                s.index.tombstone(&k, rev).map_err(|e| Error::Corrupt {
                    rev,
                    reason: e.to_string(),
                })?;
            }
            if self.collect {
                self.events.push(Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: k,
                        mod_revision: main,
                        ..KeyValue::default()
                    },
                    prev_kv: before,
                });
            }
            op.sub += 1;
            out.deleted += 1;
        }
        out.revision = self.visible(op);
        Ok(out)
    }

    /// Records the raft term of the batch's last entry, stored with the
    /// consistent index at commit.
    pub fn set_term(&mut self, term: u64) -> Result<()> {
        self.tx().put(META_BUCKET, TERM, &term.to_be_bytes())?;
        self.term = Some(term);
        Ok(())
    }

    /// The store revision as this batch leaves it so far.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// Commits the batch (without fdatasync) with the raft index of its last
    /// entry, then publishes its revisions to readers.
    pub fn commit(mut self, consistent_index: u64) -> Result<()> {
        let mut tx = self.tx.take().expect("apply batch used after commit");
        tx.put(
            META_BUCKET,
            CONSISTENT_INDEX,
            &consistent_index.to_be_bytes(),
        )?;
        if let Some(c) = self.compact_to {
            // The index forgets history below `c` and reads below `c`
            // start failing in the same instant; snapshots taken before
            // still hold every record until this commit lands.
            let kept = {
                let mut s = self.store.write_shared();
                s.compacted = c;
                s.index.compact(c)
            };
            self.changed = true;
            // The records themselves go in bounded steps
            // (`Store::compact_step`); a crash before the last one resumes
            // from `scheduledCompactRev` on open.
            tx.put(META_BUCKET, SCHEDULED_COMPACTION, &(c as u64).to_be_bytes())?;
            self.store.write_shared().pending_compaction = Some(PendingCompaction {
                rev: c,
                kept,
                next_key: Vec::new(),
            });
        }
        tx.commit_nosync()?;
        // Publishing and notifying happen under the hub lock, so a watcher
        // created or caught up meanwhile sees either both or neither.
        let mut hub = self.store.hub.lock();
        let current = {
            let mut s = self.store.write_shared();
            s.current = s.current.max(self.rev);
            s.consistent_index = consistent_index;
            if let Some(t) = self.term {
                s.term = t;
            }
            s.current
        };
        self.changed = false;
        if self.collect {
            hub.notify(&self.events, current);
        } else {
            if hub.publish_uncollected(current) {
                drop(hub);
                self.store.hub.wake();
            }
        }
        Ok(())
    }
}
