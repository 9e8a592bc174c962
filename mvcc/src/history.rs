//! History: the changes to a range from a revision on, read back from
//! the `key` bucket in revision order (a watch's replay).

use crate::buckets::KEY_BUCKET;
use crate::error::{Error, Result};
use crate::index::RangeEnd;
use crate::kv::{decode, KeyValue};
use crate::revision::Revision;
use crate::store::Store;

/// One change to one key, as a watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// The key after the change (for a delete: the key, with `mod_revision`
    /// the deleting revision and nothing else).
    pub kv: KeyValue,
    /// The key before the change, when asked for and still readable.
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

impl Store {
    /// Every change to keys in the range from revision `start` on, in
    /// revision order, read from the B+tree (a watch's history replay), at
    /// most `limit` of them (0: all) but never part of a revision. Fails
    /// with [`Error::Compacted`] when `start` is below the compacted
    /// revision (a watch then gets a compacted response), as etcd does.
    pub fn events_since(
        &self,
        start: i64,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let end = RangeEnd::from_etcd(range_end);
        Ok(self.history(start, key, &end, prev_kv, limit)?.0)
    }

    /// History of a range from `start` to the current revision, at most
    /// `limit` events (0: all) rounded up to a whole revision. Returns the
    /// events and the revision through which they are complete.
    pub(crate) fn history(
        &self,
        start: i64,
        key: &[u8],
        end: &RangeEnd,
        prev_kv: bool,
        limit: usize,
    ) -> Result<(Vec<Event>, i64)> {
        let (upto, rx) = {
            let s = self.read_shared();
            if s.compacted > 0 && start < s.compacted {
                return Err(Error::Compacted);
            }
            // Taken under the lock: the snapshot holds every record up to
            // `upto`, and compaction cannot take them away from it.
            (s.current, self.db.begin_read())
        };
        let bucket = rx.open_bucket(KEY_BUCKET)?;
        let from = Revision::new(start.max(1), 0).to_key(false);
        let to = Revision::new(upto + 1, 0).to_key(false);
        let mut events: Vec<Event> = Vec::new();
        for item in bucket.range(&from, Some(&to)) {
            let (k, v) = item?;
            let Some((rev, tombstone)) = Revision::from_key(k) else {
                continue;
            };
            if limit != 0
                && events.len() >= limit
                && events.last().is_some_and(|e| e.kv.mod_revision < rev.main)
            {
                let reached = rev.main - 1;
                return Ok((events, reached));
            }
            let mut kv = decode(rev, v)?;
            if !end.contains(key, &kv.key) {
                continue;
            }
            let prev = if prev_kv {
                let before = self.read_shared().index.get(&kv.key, rev.main - 1);
                match before {
                    Some(b) => match bucket.get(&b.modified.to_key(false))? {
                        Some(bytes) => Some(decode(b.modified, bytes)?),
                        None => None,
                    },
                    None => None,
                }
            } else {
                None
            };
            let kind = if tombstone {
                kv.mod_revision = rev.main;
                EventKind::Delete
            } else {
                EventKind::Put
            };
            events.push(Event {
                kind,
                kv,
                prev_kv: prev,
            });
        }
        Ok((events, upto))
    }
}
