//! Ranges: a key or a range of keys read at a revision, with etcd's
//! sorting, filters, limit, `keys_only` and `count_only`, from the store
//! (a snapshot) or inside an apply batch (its own writes included).

use crate::apply::{Apply, OpRev};
use crate::buckets::KEY_BUCKET;
use crate::error::{Error, Result};
use crate::index::{KeyAt, RangeEnd, RangeWalk};
use crate::kv::{decode, KeyValue};
use crate::revision::Revision;
use crate::store::Store;

/// Order of a range's results (etcd's `RangeRequest.SortOrder`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Key order (etcd sorts ascending when a target other than the key is
    /// given).
    #[default]
    None,
    Ascend,
    Descend,
}

/// What a range is sorted by (etcd's `RangeRequest.SortTarget`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// A read of a key or a range at a revision, with etcd's options.
#[derive(Debug, Clone, Default)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    /// etcd's `range_end`: empty for one key, `"\0"` for every key from
    /// `key` on, else the end (excluded).
    pub range_end: Vec<u8>,
    /// 0: no limit.
    pub limit: i64,
    /// 0 or less: the current revision.
    pub revision: i64,
    pub keys_only: bool,
    pub count_only: bool,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Bounds on the results' revisions (0: no bound).
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

impl RangeRequest {
    pub(crate) fn has_filters(&self) -> bool {
        self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0
    }

    pub(crate) fn keeps(&self, kv: &KeyValue) -> bool {
        let within = |v: i64, min: i64, max: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
        within(
            kv.mod_revision,
            self.min_mod_revision,
            self.max_mod_revision,
        ) && within(
            kv.create_revision,
            self.min_create_revision,
            self.max_create_revision,
        )
    }
}

/// Sorts, filters, limits (and strips values for `keys_only` from) a range
/// the way etcd's apply layer does:
/// with sorting or filters everything in range is read first; `more` means
/// results beyond the limit were dropped; `count` stays the number of keys
/// in the range (before filters and the limit).
pub(crate) fn finish_range(req: &RangeRequest, mut kvs: Vec<KeyValue>) -> (Vec<KeyValue>, bool) {
    if req.has_filters() {
        kvs.retain(|kv| req.keeps(kv));
    }
    let order = match (req.sort_order, req.sort_target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    if order != SortOrder::None {
        kvs.sort_by(|a, b| {
            let ord = match req.sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                ord.reverse()
            } else {
                ord
            }
        });
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    (kvs, more)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the range before the limit.
    pub count: i64,
    pub more: bool,
    /// The store's current revision when the read ran.
    pub revision: i64,
}

/// Keys of the index one step of a range visits with the store's lock
/// held (about a millisecond of work).
const INDEX_STEP: usize = 10_000;

impl Store {
    /// Reads a key or range at a revision.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResult> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let end = RangeEnd::from_etcd(&req.range_end);
        // The index is walked in steps of INDEX_STEP keys, the store's
        // lock released between them, so that a range over many keys
        // never holds the apply loop back for its whole length.
        let (at, current, rx, mut walk, mut done) = {
            let s = self.read_shared();
            let at = if req.revision <= 0 {
                s.current
            } else {
                req.revision
            };
            if at > s.current {
                return Err(Error::FutureRevision);
            }
            if at < s.compacted {
                return Err(Error::Compacted);
            }
            // With sorting or filters everything is read and cut afterwards;
            // otherwise one more than the limit, to know about `more`.
            let limit = if req.count_only {
                1
            } else if req.sort_order != SortOrder::None || req.has_filters() || req.limit <= 0 {
                0
            } else {
                req.limit as usize + 1
            };
            let mut walk = RangeWalk::new(limit);
            let done = s
                .index
                .range_step(&req.key, &end, at, &mut walk, INDEX_STEP);
            // Taken under the lock: compaction cannot remove the revisions
            // at `at` from this snapshot.
            (at, s.current, self.db.begin_read(), walk, done)
        };
        while !done {
            fail::fail_point!("mvcc::range_step");
            let s = self.read_shared();
            // A compaction past `at` between steps has taken revisions
            // the rest of the walk needs from the index.
            if at < s.compacted {
                return Err(Error::Compacted);
            }
            done = s
                .index
                .range_step(&req.key, &end, at, &mut walk, INDEX_STEP);
        }
        let keys = rx.open_bucket(KEY_BUCKET)?;
        range_result(req, walk.rows, walk.total, current, |rev| {
            let bytes = keys
                .get(&rev.to_key(false))?
                .ok_or_else(|| Error::Corrupt {
                    rev,
                    reason: "the index names a revision the key bucket does not hold".into(),
                })?;
            decode(rev, bytes)
        })
    }
}

/// A range's answer from the index rows it found: each row's record read
/// by `read` (unless only the count is asked for), then sorted, filtered
/// and cut as the request says.
fn range_result(
    req: &RangeRequest,
    rows: Vec<KeyAt>,
    total: usize,
    current: i64,
    mut read: impl FnMut(Revision) -> Result<KeyValue>,
) -> Result<RangeResult> {
    let mut out = RangeResult {
        count: total as i64,
        revision: current,
        ..RangeResult::default()
    };
    if req.count_only {
        return Ok(out);
    }
    let mut kvs = Vec::with_capacity(rows.len());
    for row in rows {
        kvs.push(read(row.modified)?);
    }
    (out.kvs, out.more) = finish_range(req, kvs);
    Ok(out)
}

impl<'s> Apply<'s> {
    /// A range read inside a batch, through its own write transaction.
    pub(crate) fn range_in(&mut self, req: &RangeRequest, op: &OpRev) -> Result<RangeResult> {
        let current = self.visible(op);
        let at = if req.revision <= 0 {
            current
        } else {
            req.revision
        };
        if at > current {
            return Err(Error::FutureRevision);
        }
        let (rows, total) = {
            let s = self.store.read_shared();
            if at < s.compacted {
                return Err(Error::Compacted);
            }
            s.index
                .range(&req.key, &RangeEnd::from_etcd(&req.range_end), at, 0)
        };
        range_result(req, rows, total, current, |rev| self.read_kv(rev))
    }
}
