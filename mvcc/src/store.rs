//! The revisioned key space on the B+tree: ranges at any revision, puts
//! and deletes that each make a new revision, compaction, and the consistent
//! index that makes applying a raft entry twice a no-op.
//!
//! ## Reads and writes
//! Writes arrive from one apply loop. Each batch of applied operations is
//! one B+tree write transaction ([`Apply`]), committed without fdatasync:
//! readers see it at once, and the WAL holds everything not yet durable in
//! the B+tree. [`Store::sync`] makes it durable (the server calls it
//! periodically and before releasing WAL segments). A crash loses only
//! batches after the last sync, and the consistent index stored with them
//! tells the server which WAL entries to apply again.
//!
//! The key index is updated as operations are applied; a read only ever
//! looks at revisions up to the *published* revision, which moves forward
//! after the batch's B+tree commit, so no reader sees half a batch.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use btree::{Db, WriteTxn};
use prost::Message;

use crate::index::{KeyIndex, RangeEnd};
use crate::kv::{KeyValue, KeyValueHead};
use crate::lease::{LeaseRecord, Lessor, MAX_TTL};
use crate::revision::Revision;
use crate::txn::{
    check_txn_keys, Compare, CompareTarget, RequestOp, ResponseOp, TxnRequest, TxnResult,
};
use crate::watch::{Hub, ReplayJob, WatchError, WatchRequest, WatchResponse};

/// Bucket of every revision's record, keyed by encoded revision.
pub const KEY_BUCKET: &[u8] = b"key";
/// Bucket of the store's own state.
pub const META_BUCKET: &[u8] = b"meta";
/// Bucket of leases, keyed by lease ID (8 bytes big-endian).
pub const LEASE_BUCKET: &[u8] = b"lease";
/// Bucket of raised alarms, keyed by member ID (8 bytes big-endian) and
/// alarm type (4 bytes big-endian).
pub const ALARM_BUCKET: &[u8] = b"alarm";
/// The cluster's members (etcd's `members` bucket), by member ID.
pub const MEMBERS_BUCKET: &[u8] = b"members";
/// IDs of members removed from the cluster (they may never come back).
pub const MEMBERS_REMOVED_BUCKET: &[u8] = b"members_removed";

/// The auth store's buckets (etcd's names): whether auth is enabled and
/// its revision; users; roles. The server encodes the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthBucket {
    Meta,
    Users,
    Roles,
}

impl AuthBucket {
    pub fn name(self) -> &'static [u8] {
        match self {
            AuthBucket::Meta => b"auth",
            AuthBucket::Users => b"authUsers",
            AuthBucket::Roles => b"authRoles",
        }
    }
}
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const TERM: &[u8] = b"term";
const COMPACTED_REVISION: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACTION: &[u8] = b"scheduledCompactRev";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: request is too large")]
    TooLarge,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("storage: {0}")]
    Storage(#[from] btree::Error),
    #[error("corrupt record at revision {rev}: {reason}")]
    Corrupt { rev: Revision, reason: String },
    #[error("an apply batch was abandoned part-way; reopen the store")]
    Poisoned,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    fn has_filters(&self) -> bool {
        self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0
    }

    fn keeps(&self, kv: &KeyValue) -> bool {
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
fn finish_range(req: &RangeRequest, mut kvs: Vec<KeyValue>) -> (Vec<KeyValue>, bool) {
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

struct Shared {
    index: KeyIndex,
    lessor: Lessor,
    /// The newest revision readers may see.
    current: i64,
    compacted: i64,
    consistent_index: u64,
    /// The raft term of the last applied entry.
    term: u64,
    poisoned: bool,
    /// Records a compaction still has to remove from the B+tree.
    pending_compaction: Option<PendingCompaction>,
}

/// The physical half of a compaction, done in bounded steps.
struct PendingCompaction {
    rev: i64,
    /// The records at or below `rev` that stay.
    kept: std::collections::HashSet<Revision>,
    /// Where the next step resumes in the `key` bucket.
    next_key: Vec<u8>,
}

/// Limits on what one request may carry (the server passes in its own),
/// and the disk space the database keeps in reserve.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of key plus value one put may store (etcd's
    /// `--max-request-bytes`, 1.5 MiB by default, bounds the whole request).
    pub max_put_bytes: usize,
    /// Most compares, and most ops per branch, of one transaction (etcd's
    /// `--max-txn-ops`).
    pub max_txn_ops: usize,
    /// Space the database file keeps allocated ahead of its data
    /// (`btree::Options::reserve_bytes`); [`Store::space_short`] tells
    /// when the disk cannot give it. 0: none.
    pub reserve_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_put_bytes: 1536 * 1024,
            max_txn_ops: 128,
            reserve_bytes: 0,
        }
    }
}

/// The key space.
pub struct Store {
    db: Db,
    limits: Limits,
    shared: RwLock<Shared>,
    hub: Arc<Hub>,
}

fn decode(rev: Revision, bytes: &[u8]) -> Result<KeyValue> {
    KeyValue::decode(bytes).map_err(|e| Error::Corrupt {
        rev,
        reason: e.to_string(),
    })
}

fn be_u64(v: Option<&[u8]>) -> u64 {
    v.and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Whether compare `c` holds on the keys its range found: a value compare
/// on a missing key always fails (an empty value and no value look the
/// same); the others compare against a key whose fields are all zero.
fn compare_holds_on(c: &Compare, kvs: &[KeyValue]) -> bool {
    if kvs.is_empty() {
        return !matches!(c.target, CompareTarget::Value(_)) && c.holds_for(&KeyValue::default());
    }
    kvs.iter().all(|kv| c.holds_for(kv))
}

/// etcd's `--max-txn-ops`: compares, and ops per branch, of one
/// transaction level.
fn check_op_counts(limits: &Limits, req: &TxnRequest) -> Result<()> {
    let max = limits.max_txn_ops;
    if req.compare.len() > max || req.success.len() > max || req.failure.len() > max {
        return Err(Error::TooManyOps);
    }
    Ok(())
}

/// What a database copy holds (see [`Store::snapshot_into`]).
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub stats: btree::CompactStats,
    /// The raft index of the last entry applied in the copy.
    pub consistent_index: u64,
    /// That entry's raft term.
    pub term: u64,
    /// The copy's `members` bucket (as [`Store::members`]).
    pub members: Vec<(u64, Vec<u8>)>,
}

fn read_members(rx: &btree::ReadTxn) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    let Some(bucket) = rx.bucket(MEMBERS_BUCKET)? else {
        return Ok(out);
    };
    for item in bucket.range(b"", None) {
        let (k, v) = item?;
        out.push((member_key(k)?, v.to_vec()));
    }
    Ok(out)
}

fn member_key(k: &[u8]) -> Result<u64> {
    let id = <[u8; 8]>::try_from(k).map_err(|_| Error::Corrupt {
        rev: Revision::default(),
        reason: format!("member key of {} bytes", k.len()),
    })?;
    Ok(u64::from_be_bytes(id))
}

/// The consistent index and term recorded in a database file, read
/// without rebuilding anything.
pub fn read_snapshot_info(path: &std::path::Path) -> Result<SnapshotInfo> {
    let db = Db::open_with(
        path,
        btree::Options {
            read_only: true,
            ..btree::Options::default()
        },
    )?;
    let rx = db.begin_read();
    let (consistent_index, term) = match rx.bucket(META_BUCKET)? {
        Some(meta) => (be_u64(meta.get(CONSISTENT_INDEX)?), be_u64(meta.get(TERM)?)),
        None => (0, 0),
    };
    let members = read_members(&rx)?;
    Ok(SnapshotInfo {
        members,
        stats: btree::CompactStats {
            source_bytes: 0,
            dest_bytes: 0,
            buckets: 0,
            keys: 0,
        },
        consistent_index,
        term,
    })
}

/// Reads a store's state from its database: creates missing buckets,
/// rebuilds the key index and the leases, and picks up an unfinished
/// compaction.
fn load(db: &Db) -> Result<Shared> {
    {
        let mut tx = db.begin_write()?;
        for b in [
            KEY_BUCKET,
            META_BUCKET,
            LEASE_BUCKET,
            ALARM_BUCKET,
            MEMBERS_BUCKET,
            MEMBERS_REMOVED_BUCKET,
            AuthBucket::Meta.name(),
            AuthBucket::Users.name(),
            AuthBucket::Roles.name(),
        ] {
            tx.create_bucket_if_missing(b)?;
        }
        tx.commit()?;
    }
    let mut index = KeyIndex::new();
    let mut lessor = Lessor::default();
    // The lease of each live key's latest record.
    let mut key_leases: std::collections::HashMap<Vec<u8>, i64> = Default::default();
    let mut current = 0;
    let (consistent_index, term, finished, scheduled) = {
        let rx = db.begin_read();
        let meta = rx.open_bucket(META_BUCKET)?;
        let consistent_index = be_u64(meta.get(CONSISTENT_INDEX)?);
        let term = be_u64(meta.get(TERM)?);
        let finished = be_u64(meta.get(COMPACTED_REVISION)?) as i64;
        let scheduled = be_u64(meta.get(SCHEDULED_COMPACTION)?) as i64;
        let keys = rx.open_bucket(KEY_BUCKET)?;
        for item in keys.range(b"", None) {
            let (k, v) = item?;
            let Some((rev, tombstone)) = Revision::from_key(k) else {
                return Err(Error::Corrupt {
                    rev: Revision::default(),
                    reason: format!(
                        "key bucket holds a key that is not a revision ({} bytes)",
                        k.len()
                    ),
                });
            };
            // Only the head: copying every value would double the work.
            let kv = KeyValueHead::decode(v).map_err(|e| Error::Corrupt {
                rev,
                reason: e.to_string(),
            })?;
            // Most keys have no lease: the map holds only those that do.
            if !key_leases.is_empty() {
                key_leases.remove(&kv.key);
            }
            if tombstone {
                // An unfinished compaction may have removed the puts
                // before a tombstone it had not reached yet; the index
                // is compacted past it below anyway.
                let unfinished = scheduled > finished && rev.main <= scheduled;
                if index.tombstone(&kv.key, rev).is_err() && !unfinished {
                    return Err(Error::Corrupt {
                        rev,
                        reason: "tombstone of a key that does not exist".into(),
                    });
                }
            } else {
                if kv.lease != 0 {
                    key_leases.insert(kv.key.clone(), kv.lease);
                }
                index.restore(
                    kv.key,
                    Revision::new(kv.create_revision, 0),
                    rev,
                    kv.version,
                );
            }
            current = rev.main;
        }
        // Leases come back with the time left at their last checkpoint,
        // or their full TTL, from now.
        let now = std::time::Instant::now();
        for item in rx.open_bucket(LEASE_BUCKET)?.range(b"", None) {
            let (_, v) = item?;
            let rec = LeaseRecord::decode(v).map_err(|e| Error::Corrupt {
                rev: Revision::default(),
                reason: format!("lease record: {e}"),
            })?;
            lessor.insert(rec.id, rec.ttl, rec.remaining_ttl, now);
        }
        for (k, lease) in &key_leases {
            lessor.attach(k, *lease);
        }
        (consistent_index, term, finished, scheduled)
    };
    // A compaction scheduled but not finished before a crash: the index
    // was rebuilt from every record, so compact it again and let the
    // physical steps run to the end.
    let (compacted, pending_compaction) = if scheduled > finished {
        let kept = index.compact(scheduled);
        (
            scheduled,
            Some(PendingCompaction {
                rev: scheduled,
                kept,
                next_key: Vec::new(),
            }),
        )
    } else {
        (finished, None)
    };
    // As in etcd, an empty store is at revision 1: the first change
    // makes revision 2.
    let current = current.max(compacted).max(1);
    Ok(Shared {
        index,
        lessor,
        current,
        compacted,
        consistent_index,
        term,
        poisoned: false,
        pending_compaction,
    })
}

impl Store {
    /// Opens (or creates) the store in the B+tree file at `path` and
    /// rebuilds the key index from the `key` bucket.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Store> {
        Store::open_with(path, Limits::default())
    }

    /// Opens the store with request limits other than etcd's defaults.
    pub fn open_with(path: impl AsRef<std::path::Path>, limits: Limits) -> Result<Store> {
        Store::open_with_io(path, limits, None)
    }

    /// [`Store::open_with`], the database file written through `io` when
    /// given (tests: the power-cut journal, `btree::io::JournaledIo`).
    pub fn open_with_io(
        path: impl AsRef<std::path::Path>,
        limits: Limits,
        io: Option<btree::io::IoFactory>,
    ) -> Result<Store> {
        let db = Db::open_with(
            path,
            btree::Options {
                reserve_bytes: limits.reserve_bytes,
                io,
                ..btree::Options::default()
            },
        )?;
        let shared = load(&db)?;
        Ok(Store {
            db,
            limits,
            hub: Arc::new(Hub::new(shared.current)),
            shared: RwLock::new(shared),
        })
    }

    /// Replaces the whole key space with the database file at `path` (a
    /// snapshot from a raft leader: complete and fsynced, in the same file
    /// system), renamed over this store's file: the index, leases,
    /// revisions and consistent index are rebuilt from it, and every
    /// watcher replays what it has not seen from the new history (or is
    /// told it was compacted). The caller applies nothing meanwhile.
    pub fn install(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.db.replace_with(path)?;
        let fresh = load(&self.db)?;
        let current = fresh.current;
        let mut hub = self.hub.lock();
        *self.write_shared() = fresh;
        if hub.publish_uncollected(current) {
            drop(hub);
            self.hub.wake();
        }
        Ok(())
    }

    fn read_shared(&self) -> RwLockReadGuard<'_, Shared> {
        self.shared.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_shared(&self) -> RwLockWriteGuard<'_, Shared> {
        self.shared.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The disk could not give the database its reserve: writes beyond
    /// it may fail (the server raises NOSPACE).
    pub fn space_short(&self) -> bool {
        self.db.space_short()
    }

    pub fn current_revision(&self) -> i64 {
        self.read_shared().current
    }

    pub fn compacted_revision(&self) -> i64 {
        self.read_shared().compacted
    }

    /// The raft index of the last applied entry.
    pub fn consistent_index(&self) -> u64 {
        self.read_shared().consistent_index
    }

    /// The raft term of the last applied entry (as recorded by
    /// [`Apply::set_term`]).
    pub fn term(&self) -> u64 {
        self.read_shared().term
    }

    /// etcd's HashKV: a crc32 (Castagnoli) of the `key` bucket's records up
    /// to `rev` (0: the current revision), counting at or below the
    /// compacted revision only the records a compaction there keeps, so
    /// the value is the same before and after the compaction runs and on
    /// every member holding the same history. Returns (hash, current
    /// revision, compacted revision).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64)> {
        let (current, compacted, keep, rx) = {
            let s = self.read_shared();
            if rev > 0 && rev <= s.compacted {
                return Err(Error::Compacted);
            }
            if rev > s.current {
                return Err(Error::FutureRevision);
            }
            (
                s.current,
                s.compacted,
                s.index.kept_at(s.compacted),
                self.db.begin_read(),
            )
        };
        let upto = if rev <= 0 { current } else { rev };
        let mut h = crc32c::crc32c(KEY_BUCKET);
        let end = Revision::new(upto + 1, 0).to_key(false);
        for item in rx.open_bucket(KEY_BUCKET)?.range(b"", Some(&end)) {
            let (k, v) = item?;
            if let Some((r, tombstone)) = Revision::from_key(k) {
                if r.main <= compacted && !keep.is_empty() && (tombstone || !keep.contains(&r)) {
                    continue;
                }
            }
            h = crc32c::crc32c_append(h, k);
            h = crc32c::crc32c_append(h, v);
        }
        Ok((h, current, compacted))
    }

    /// etcd's Hash: a crc32 (Castagnoli) of every bucket's name, keys and
    /// values, leaving out what differs between members holding the same
    /// data (the consistent index).
    pub fn hash(&self) -> Result<u32> {
        let rx = self.db.begin_read();
        let mut h = 0u32;
        for (name, _) in rx.buckets()? {
            h = crc32c::crc32c_append(h, &name);
            for item in rx.open_bucket(&name)?.range(b"", None) {
                let (k, v) = item?;
                if name == META_BUCKET && k == CONSISTENT_INDEX {
                    continue;
                }
                h = crc32c::crc32c_append(h, k);
                h = crc32c::crc32c_append(h, v);
            }
        }
        Ok(h)
    }

    /// Renews a lease for its full TTL (keep-alive); returns the TTL.
    pub fn lease_renew(&self, id: i64) -> Result<i64> {
        self.write_shared()
            .lessor
            .renew(id, std::time::Instant::now())
            .ok_or(Error::LeaseNotFound)
    }

    /// (granted TTL, seconds remaining, attached keys) of a lease.
    pub fn lease_time_to_live(&self, id: i64) -> Result<(i64, i64, Vec<Vec<u8>>)> {
        let s = self.read_shared();
        let l = s.lessor.get(id).ok_or(Error::LeaseNotFound)?;
        Ok((
            l.ttl,
            l.remaining(std::time::Instant::now()),
            l.keys.iter().cloned().collect(),
        ))
    }

    /// A new leader's lease clock: every lease gets its checkpointed
    /// remaining TTL (or its full TTL) plus `extend` from now, so that no
    /// lease expires because leadership moved.
    pub fn lease_promote(&self, extend: std::time::Duration) {
        self.write_shared()
            .lessor
            .refresh_all(std::time::Instant::now(), extend);
    }

    /// (lease ID, seconds left) of every lease, for checkpoints.
    pub fn lease_remaining(&self) -> Vec<(i64, i64)> {
        self.read_shared()
            .lessor
            .remaining_all(std::time::Instant::now())
    }

    /// The remaining TTL a lease's last checkpoint recorded (0: none).
    pub fn lease_checkpointed(&self, id: i64) -> Option<i64> {
        self.read_shared().lessor.get(id).map(|l| l.remaining_ttl)
    }

    /// Every lease ID.
    pub fn leases(&self) -> Vec<i64> {
        self.read_shared().lessor.ids()
    }

    /// Leases expired at `now`; the leader proposes their revocation.
    pub fn expired_leases(&self, now: std::time::Instant) -> Vec<i64> {
        self.read_shared().lessor.expired(now)
    }

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
    fn history(
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

    /// Opens a watch stream: one channel of responses (holding at most
    /// `capacity` of them) for any number of watchers. Watchers starting in
    /// the past, and slow ones, need the syncer
    /// ([`Store::sync_watchers`], or [`spawn_watch_syncer`]).
    pub fn watch_stream(
        &self,
        capacity: usize,
    ) -> (WatchStream, tokio::sync::mpsc::Receiver<WatchResponse>) {
        let (id, rx) = self.hub.open_stream(capacity);
        (
            WatchStream {
                hub: self.hub.clone(),
                id,
            },
            rx,
        )
    }

    /// One round of the syncer: resends parked responses of slow watchers
    /// and replays history to up to `max_watchers` watchers that are
    /// behind, at most `max_events` events each. Returns true when some
    /// watcher is still behind.
    pub fn sync_watchers(&self, max_watchers: usize, max_events: usize) -> Result<bool> {
        self.hub.lock().retry_victims();
        let jobs: Vec<ReplayJob> = self.hub.lock().replay_jobs(max_watchers);
        for job in &jobs {
            match self.history(job.next_rev, &job.key, &job.end, job.prev_kv, max_events) {
                Ok((events, reached)) => self.hub.lock().finish_replay(job, &events, reached),
                Err(Error::Compacted) => {
                    let compacted = self.compacted_revision();
                    self.hub.lock().compacted(job, compacted);
                }
                Err(e) => return Err(e),
            }
        }
        let (_, unsynced, victims) = self.hub.watcher_count();
        Ok(unsynced + victims > 0)
    }

    /// Sends a progress notification to every caught-up watcher that
    /// asked for them (the server calls this periodically).
    pub fn notify_watch_progress(&self) {
        self.hub.lock().notify_progress();
    }

    /// Watchers (synced, unsynced, victims).
    pub fn watcher_count(&self) -> (usize, usize, usize) {
        self.hub.watcher_count()
    }

    /// Removes up to `max_records` records of a pending compaction from the
    /// B+tree in one transaction, so a large compaction never holds the
    /// writer for long; the server calls it between apply batches. Returns
    /// true when no compaction work is left.
    pub fn compact_step(&self, max_records: usize) -> Result<bool> {
        let (rev, kept, start) = match &self.read_shared().pending_compaction {
            None => return Ok(true),
            Some(p) => (p.rev, p.kept.clone(), p.next_key.clone()),
        };
        let mut tx = self.db.begin_write()?;
        let end = Revision::new(rev + 1, 0).to_key(false);
        let mut doomed = Vec::new();
        let mut next = None;
        for item in tx.range(KEY_BUCKET, &start, Some(&end))? {
            let (k, _) = item?;
            if doomed.len() == max_records.max(1) {
                next = Some(k.to_vec());
                break;
            }
            match Revision::from_key(k) {
                Some((r, false)) if kept.contains(&r) => {}
                _ => doomed.push(k.to_vec()),
            }
        }
        for k in &doomed {
            tx.delete(KEY_BUCKET, k)?;
        }
        let done = next.is_none();
        if done {
            tx.put(META_BUCKET, COMPACTED_REVISION, &(rev as u64).to_be_bytes())?;
        }
        tx.commit_nosync()?;
        let mut s = self.write_shared();
        // A newer compaction scheduled meanwhile starts its own pass.
        if s.pending_compaction.as_ref().is_some_and(|p| p.rev == rev) {
            match next {
                Some(k) => {
                    if let Some(p) = s.pending_compaction.as_mut() {
                        p.next_key = k;
                    }
                }
                None => s.pending_compaction = None,
            }
        }
        Ok(s.pending_compaction.is_none())
    }

    /// Runs every pending compaction step.
    pub fn finish_compaction(&self) -> Result<()> {
        while !self.compact_step(10_000)? {}
        Ok(())
    }

    /// Raised alarms as (member ID, alarm type), as recorded by
    /// [`Apply::set_alarm`].
    pub fn alarms(&self) -> Result<Vec<(u64, i32)>> {
        let rx = self.db.begin_read();
        let mut out = Vec::new();
        for item in rx.open_bucket(ALARM_BUCKET)?.range(b"", None) {
            let (k, _) = item?;
            let (Ok(member), Ok(alarm)) = (
                <[u8; 8]>::try_from(&k[..k.len().min(8)]),
                <[u8; 4]>::try_from(&k[k.len().min(8)..]),
            ) else {
                return Err(Error::Corrupt {
                    rev: Revision::default(),
                    reason: format!("alarm key of {} bytes", k.len()),
                });
            };
            out.push((u64::from_be_bytes(member), i32::from_be_bytes(alarm)));
        }
        Ok(out)
    }

    /// Every record of the `members` bucket: (member ID, the server's
    /// encoding of the member).
    pub fn members(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        read_members(&self.db.begin_read())
    }

    /// Every record of an auth bucket, in key order.
    pub fn auth_records(&self, bucket: AuthBucket) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let rx = self.db.begin_read();
        let mut out = Vec::new();
        for item in rx.open_bucket(bucket.name())?.range(b"", None) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The keys attached to lease `id` (None: no such lease).
    pub fn lease_keys(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        let s = self.read_shared();
        s.lessor.get(id).map(|l| l.keys.iter().cloned().collect())
    }

    /// IDs of the members removed from the cluster.
    pub fn removed_members(&self) -> Result<Vec<u64>> {
        let rx = self.db.begin_read();
        let mut out = Vec::new();
        for item in rx.open_bucket(MEMBERS_REMOVED_BUCKET)?.range(b"", None) {
            out.push(member_key(item?.0)?);
        }
        Ok(out)
    }

    /// Keys that exist now.
    pub fn key_count(&self) -> usize {
        self.read_shared().index.live_count()
    }

    /// Calls `observer` after every B+tree commit (the server's metrics).
    pub fn observe_commits(&self, observer: btree::CommitObserver) {
        self.db.observe_commits(observer);
    }

    /// How an online defragmentation stands.
    pub fn defrag_progress(&self) -> btree::DefragState {
        self.db.defrag_progress()
    }

    /// (file size, bytes in use) of the database file.
    pub fn db_size(&self) -> (u64, u64) {
        let file = std::fs::metadata(self.db.path()).map_or(0, |m| m.len());
        (file, self.db.begin_read().size_in_use())
    }

    /// Writes a compact copy of the whole database, as of the latest
    /// applied batch, to a new file at `dest` (fsynced); a snapshot of the
    /// member's state. Writes go on meanwhile (the copy reads one B+tree
    /// snapshot). Returns what the copy holds.
    pub fn snapshot_into(&self, dest: impl AsRef<std::path::Path>) -> Result<SnapshotInfo> {
        let dest = dest.as_ref();
        let stats = self.db.compact_into(dest)?;
        let mut info = read_snapshot_info(dest)?;
        info.stats = stats;
        Ok(info)
    }

    /// Defragments the database file while it stays in use: small steps
    /// move pages from the end of the file into free space nearer its start
    /// (each step holds writers for one small B+tree transaction; readers
    /// never wait), then the file is cut short. Returns the file sizes
    /// before and after.
    pub fn defragment(&self) -> Result<btree::CompactStats> {
        Ok(self.db.defragment_online()?)
    }

    /// Makes every applied batch durable.
    pub fn sync(&self) -> Result<()> {
        Ok(self.db.sync()?)
    }

    /// Reads a key or range at a revision.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResult> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let end = RangeEnd::from_etcd(&req.range_end);
        let (current, rows, total, rx) = {
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
            let (rows, total) = s.index.range(&req.key, &end, at, limit);
            let rows: Vec<Revision> = rows.into_iter().map(|(_, k)| k.modified).collect();
            // Taken under the lock: compaction cannot remove these revisions
            // from this snapshot.
            (s.current, rows, total, self.db.begin_read())
        };
        let mut out = RangeResult {
            count: total as i64,
            revision: current,
            ..RangeResult::default()
        };
        if req.count_only {
            return Ok(out);
        }
        let keys = rx.open_bucket(KEY_BUCKET)?;
        let mut kvs = Vec::with_capacity(rows.len());
        for rev in rows {
            let bytes = keys
                .get(&rev.to_key(false))?
                .ok_or_else(|| Error::Corrupt {
                    rev,
                    reason: "the index names a revision the key bucket does not hold".into(),
                })?;
            kvs.push(decode(rev, bytes)?);
        }
        (out.kvs, out.more) = finish_range(req, kvs);
        Ok(out)
    }

    /// A transaction that only reads (its branches hold nothing but
    /// ranges, nested transactions included): every compare and range is
    /// evaluated at one revision, on snapshots, without a write batch, so
    /// it needs no raft entry (etcd serves such transactions as reads).
    /// A transaction with a write in it is refused
    /// ([`Error::ValueProvided`]): the caller checks first.
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResult> {
        self.check_read_txn(req)?;
        let at = self.current_revision();
        self.read_txn_at(req, at)
    }

    fn check_read_txn(&self, req: &TxnRequest) -> Result<()> {
        check_op_counts(&self.limits, req)?;
        for op in req.success.iter().chain(&req.failure) {
            match op {
                RequestOp::Range(r) if r.key.is_empty() => return Err(Error::EmptyKey),
                RequestOp::Range(_) => {}
                RequestOp::Txn(t) => self.check_read_txn(t)?,
                RequestOp::Put(_) | RequestOp::DeleteRange { .. } => {
                    return Err(Error::ValueProvided)
                }
            }
        }
        Ok(())
    }

    fn read_txn_at(&self, req: &TxnRequest, at: i64) -> Result<TxnResult> {
        let mut succeeded = true;
        for c in &req.compare {
            let kvs = self
                .range(&RangeRequest {
                    key: c.key.clone(),
                    range_end: c.range_end.clone(),
                    revision: at,
                    ..RangeRequest::default()
                })?
                .kvs;
            if !compare_holds_on(c, &kvs) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(q) => {
                    if q.revision > at {
                        return Err(Error::FutureRevision);
                    }
                    let mut q = q.clone();
                    if q.revision <= 0 {
                        q.revision = at;
                    }
                    let mut r = self.range(&q)?;
                    r.revision = at;
                    ResponseOp::Range(r)
                }
                RequestOp::Txn(t) => ResponseOp::Txn(self.read_txn_at(t, at)?),
                RequestOp::Put(_) | RequestOp::DeleteRange { .. } => {
                    return Err(Error::ValueProvided)
                }
            });
        }
        Ok(TxnResult {
            succeeded,
            responses,
            revision: at,
        })
    }

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

/// The revision an operation writes at: every change of one operation
/// (a put, a delete of several keys, a whole transaction) shares `main`
/// and takes the next `sub`.
#[derive(Debug, Clone, Copy)]
struct OpRev {
    main: i64,
    sub: i64,
}

/// A batch of applied operations: one B+tree write transaction, made
/// visible by [`Apply::commit`].
pub struct Apply<'s> {
    store: &'s Store,
    tx: Option<WriteTxn<'s>>,
    /// The newest revision this batch has used.
    rev: i64,
    /// Whether the shared index has been changed (a batch dropped after
    /// that poisons the store: the index would name missing revisions).
    changed: bool,
    compact_to: Option<i64>,
    /// The batch's changes, for watchers, collected only when some
    /// watcher existed as the batch began.
    events: Vec<Event>,
    collect: bool,
    term: Option<u64>,
}

impl<'s> Apply<'s> {
    fn tx(&mut self) -> &mut WriteTxn<'s> {
        // Present from creation until commit consumes the batch.
        self.tx.as_mut().expect("apply batch used after commit")
    }

    fn read_kv(&mut self, rev: Revision) -> Result<KeyValue> {
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

    /// Runs a transaction: if every compare holds, the success ops, else
    /// the failure ops, all at one revision (none when nothing is written).
    /// Reads inside see the transaction's own earlier writes.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResult> {
        self.check_txn(req)?;
        check_txn_keys(req)?;
        let mut op = self.begin_op();
        // As etcd does: every compare on the path (nested ones included) is
        // decided on the state before the transaction, and the ops on that
        // path are checked before any of them runs, so a failing op never
        // leaves half a transaction behind.
        let mut path = Vec::new();
        self.txn_path(req, &op, &mut path)?;
        self.check_path(req, &op, &mut path.iter().copied())?;
        let r = self.txn_in(req, &mut op, &mut path.into_iter());
        self.end_op(op);
        r
    }

    fn check_put(&self, req: &PutRequest) -> Result<()> {
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

    /// etcd's checks of a transaction's shape, nested ones included.
    fn check_txn(&self, req: &TxnRequest) -> Result<()> {
        check_op_counts(&self.store.limits, req)?;
        for op in req.success.iter().chain(&req.failure) {
            match op {
                RequestOp::Range(r) if r.key.is_empty() => return Err(Error::EmptyKey),
                RequestOp::Range(_) => {}
                RequestOp::Put(p) => self.check_put(p)?,
                RequestOp::DeleteRange { key, .. } if key.is_empty() => {
                    return Err(Error::EmptyKey)
                }
                RequestOp::DeleteRange { .. } => {}
                RequestOp::Txn(t) => self.check_txn(t)?,
            }
        }
        Ok(())
    }

    /// The branch each transaction on the path takes, in execution order.
    fn txn_path(&mut self, req: &TxnRequest, op: &OpRev, path: &mut Vec<bool>) -> Result<()> {
        let mut succeeded = true;
        for c in &req.compare {
            if !self.compare_holds(c, op)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        for r in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            if let RequestOp::Txn(t) = r {
                self.txn_path(t, op, path)?;
            }
        }
        Ok(())
    }

    /// Fails as the ops on the path would, before any of them runs.
    fn check_path(
        &mut self,
        req: &TxnRequest,
        op: &OpRev,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<()> {
        let succeeded = path.next().unwrap_or(false);
        for r in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            match r {
                RequestOp::Put(p)
                    if (p.ignore_value || p.ignore_lease)
                        && self
                            .store
                            .read_shared()
                            .index
                            .get(&p.key, self.visible(op))
                            .is_none() =>
                {
                    return Err(Error::KeyNotFound);
                }
                RequestOp::Put(p)
                    if !p.ignore_lease
                        && p.lease != 0
                        && !self.store.read_shared().lessor.contains(p.lease) =>
                {
                    return Err(Error::LeaseNotFound);
                }
                RequestOp::Range(q) => {
                    let current = self.visible(op);
                    if q.revision > current {
                        return Err(Error::FutureRevision);
                    }
                    if q.revision > 0 && q.revision < self.store.read_shared().compacted {
                        return Err(Error::Compacted);
                    }
                }
                RequestOp::Txn(t) => self.check_path(t, op, path)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn begin_op(&self) -> OpRev {
        OpRev {
            main: self.rev + 1,
            sub: 0,
        }
    }

    fn end_op(&mut self, op: OpRev) {
        if op.sub > 0 {
            self.rev = op.main;
        }
    }

    /// The revision reads inside the current operation see.
    fn visible(&self, op: &OpRev) -> i64 {
        if op.sub > 0 {
            op.main
        } else {
            self.rev
        }
    }

    fn put_in(&mut self, req: &PutRequest, op: &mut OpRev) -> Result<PutResult> {
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

    fn delete_in(
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

    /// A range read inside a batch, through its own write transaction.
    fn range_in(&mut self, req: &RangeRequest, op: &OpRev) -> Result<RangeResult> {
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
            let (rows, total) =
                s.index
                    .range(&req.key, &RangeEnd::from_etcd(&req.range_end), at, 0);
            let rows: Vec<Revision> = rows.into_iter().map(|(_, k)| k.modified).collect();
            (rows, total)
        };
        let mut out = RangeResult {
            count: total as i64,
            revision: current,
            ..RangeResult::default()
        };
        if req.count_only {
            return Ok(out);
        }
        let mut kvs = Vec::with_capacity(rows.len());
        for rev in rows {
            kvs.push(self.read_kv(rev)?);
        }
        (out.kvs, out.more) = finish_range(req, kvs);
        Ok(out)
    }

    fn compare_holds(&mut self, c: &Compare, op: &OpRev) -> Result<bool> {
        let req = RangeRequest {
            key: c.key.clone(),
            range_end: c.range_end.clone(),
            ..RangeRequest::default()
        };
        let kvs = self.range_in(&req, op)?.kvs;
        Ok(compare_holds_on(c, &kvs))
    }

    fn txn_in(
        &mut self,
        req: &TxnRequest,
        op: &mut OpRev,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<TxnResult> {
        let succeeded = path.next().unwrap_or(false);
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for r in ops {
            responses.push(match r {
                RequestOp::Range(q) => ResponseOp::Range(self.range_in(q, op)?),
                RequestOp::Put(p) => ResponseOp::Put(self.put_in(p, op)?),
                RequestOp::DeleteRange {
                    key,
                    range_end,
                    prev_kv,
                } => ResponseOp::DeleteRange(self.delete_in(key, range_end, *prev_kv, op)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn_in(t, op, path)?),
            });
        }
        let revision = self.visible(op);
        Ok(TxnResult {
            succeeded,
            responses,
            revision,
        })
    }

    /// Grants lease `id` (chosen by the server, positive) for `ttl` seconds
    /// (raised to the minimum TTL). Returns the TTL granted.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<i64> {
        if ttl > MAX_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        if id <= 0 {
            return Err(Error::LeaseNotFound);
        }
        if self.store.read_shared().lessor.contains(id) {
            return Err(Error::LeaseExists);
        }
        let ttl = Lessor::effective_ttl(ttl);
        let rec = LeaseRecord {
            id,
            ttl,
            remaining_ttl: 0,
        };
        self.tx()
            .put(LEASE_BUCKET, &id.to_be_bytes(), &rec.encode_to_vec())?;
        self.changed = true;
        self.store
            .write_shared()
            .lessor
            .insert(id, ttl, 0, std::time::Instant::now());
        Ok(ttl)
    }

    /// Revokes lease `id`: deletes every key attached to it in one new
    /// revision, and the lease. Returns the store revision after it.
    pub fn lease_revoke(&mut self, id: i64) -> Result<i64> {
        let keys = match self.store.read_shared().lessor.get(id) {
            Some(l) => l.keys.clone(),
            None => return Err(Error::LeaseNotFound),
        };
        let mut op = self.begin_op();
        let mut result = Ok(());
        for k in &keys {
            if let Err(e) = self.delete_in(k, b"", false, &mut op) {
                result = Err(e);
                break;
            }
        }
        self.end_op(op);
        result?;
        self.tx().delete(LEASE_BUCKET, &id.to_be_bytes())?;
        self.changed = true;
        self.store.write_shared().lessor.remove(id);
        Ok(self.rev)
    }

    /// Compacts history at `rev`: every revision no read at `rev` or later
    /// can see is removed from the index and the B+tree, and reads below
    /// `rev` fail with [`Error::Compacted`] from the commit on.
    pub fn compact(&mut self, rev: i64) -> Result<()> {
        let (current, compacted) = {
            let s = self.store.read_shared();
            (s.current.max(self.rev), s.compacted)
        };
        if rev > current {
            return Err(Error::FutureRevision);
        }
        if rev <= compacted {
            return Err(Error::Compacted);
        }
        self.compact_to = Some(rev);
        Ok(())
    }

    /// Records the raft term of the batch's last entry, stored with the
    /// consistent index at commit.
    pub fn set_term(&mut self, term: u64) -> Result<()> {
        self.tx().put(META_BUCKET, TERM, &term.to_be_bytes())?;
        self.term = Some(term);
        Ok(())
    }

    /// Raises (`on`) or clears an alarm of a member, durably with the
    /// batch.
    pub fn set_alarm(&mut self, member: u64, alarm: i32, on: bool) -> Result<()> {
        let mut key = member.to_be_bytes().to_vec();
        key.extend_from_slice(&alarm.to_be_bytes());
        if on {
            self.tx().put(ALARM_BUCKET, &key, b"")?;
        } else {
            self.tx().delete(ALARM_BUCKET, &key)?;
        }
        Ok(())
    }

    /// Records a lease checkpoint: `remaining` seconds were left (0 clears
    /// it, as a renewal does). A restart or a new leader resumes the lease
    /// from there. An unknown lease is ignored (it was revoked meanwhile).
    pub fn lease_checkpoint(&mut self, id: i64, remaining: i64) -> Result<()> {
        let ttl = match self.store.read_shared().lessor.get(id) {
            Some(l) => l.ttl,
            None => return Ok(()),
        };
        let rec = LeaseRecord {
            id,
            ttl,
            remaining_ttl: remaining.max(0),
        };
        self.tx()
            .put(LEASE_BUCKET, &id.to_be_bytes(), &rec.encode_to_vec())?;
        self.changed = true;
        self.store
            .write_shared()
            .lessor
            .checkpoint(id, remaining.max(0));
        Ok(())
    }

    /// Stores (Some) or removes (None) a member record, durably with the
    /// batch.
    pub fn set_member(&mut self, id: u64, record: Option<&[u8]>) -> Result<()> {
        match record {
            Some(r) => self.tx().put(MEMBERS_BUCKET, &id.to_be_bytes(), r)?,
            None => {
                self.tx().delete(MEMBERS_BUCKET, &id.to_be_bytes())?;
            }
        }
        Ok(())
    }

    /// Records that member `id` was removed (its record goes with
    /// [`Apply::set_member`]).
    pub fn set_member_removed(&mut self, id: u64) -> Result<()> {
        self.tx()
            .put(MEMBERS_REMOVED_BUCKET, &id.to_be_bytes(), b"removed")?;
        Ok(())
    }

    /// Writes (or with `None` deletes) a record of the auth store.
    pub fn set_auth_record(
        &mut self,
        bucket: AuthBucket,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<()> {
        match value {
            Some(v) => self.tx().put(bucket.name(), key, v)?,
            None => {
                self.tx().delete(bucket.name(), key)?;
            }
        }
        Ok(())
    }

    /// The keys attached to lease `id` as this batch leaves them.
    pub fn lease_keys(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        self.store.lease_keys(id)
    }

    /// Forgets that member `id` was removed (a restore starts a new
    /// cluster, where the old cluster's removals mean nothing).
    pub fn unset_member_removed(&mut self, id: u64) -> Result<()> {
        self.tx()
            .delete(MEMBERS_REMOVED_BUCKET, &id.to_be_bytes())?;
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

impl Drop for Apply<'_> {
    fn drop(&mut self) {
        if self.changed {
            self.store.write_shared().poisoned = true;
        }
    }
}

/// A watch stream: many watchers sharing one channel of responses
/// (etcd's `WatchStream`). Dropping it removes its watchers.
pub struct WatchStream {
    hub: Arc<Hub>,
    id: u64,
}

impl WatchStream {
    /// Adds a watcher; returns its ID.
    pub fn watch(&self, req: &WatchRequest) -> std::result::Result<i64, WatchError> {
        self.hub.watch(self.id, req)
    }

    /// Removes a watcher; false when there was none with that ID.
    pub fn cancel(&self, watch_id: i64) -> bool {
        self.hub.cancel(self.id, watch_id)
    }

    /// Asks for a progress notification (watch ID -1) carrying a revision
    /// up to which every event has been sent to every watcher of the
    /// stream; it is sent once all of them have caught up.
    pub fn request_progress(&self) {
        self.hub.request_progress(self.id)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.hub.close_stream(self.id);
    }
}

/// A thread running the watch syncer of a store until dropped.
pub struct WatchSyncer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts a thread that runs [`Store::sync_watchers`] whenever a watcher
/// is behind (at least every `interval`), and sends progress notifications
/// every `progress_interval`. It holds only a weak reference to the store.
pub fn spawn_watch_syncer(
    store: &Arc<Store>,
    interval: std::time::Duration,
    progress_interval: std::time::Duration,
) -> std::io::Result<WatchSyncer> {
    let weak = Arc::downgrade(store);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("watch-syncer".into())
        .spawn(move || {
            let mut last_progress = std::time::Instant::now();
            while !stop_flag.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(store) = weak.upgrade() else { break };
                let behind = match store.sync_watchers(512, 1000) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!("watch syncer: {e}");
                        true
                    }
                };
                if last_progress.elapsed() >= progress_interval {
                    store.notify_watch_progress();
                    last_progress = std::time::Instant::now();
                }
                let hub = store.hub.clone();
                drop(store);
                if behind {
                    // Slow consumers are retried at this pace.
                    std::thread::sleep(interval.min(std::time::Duration::from_millis(10)));
                } else {
                    hub.wait_for_work(interval);
                }
            }
        })?;
    Ok(WatchSyncer {
        stop,
        thread: Some(thread),
    })
}

impl Drop for WatchSyncer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
