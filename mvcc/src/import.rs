//! Writing a new store file from records kept in this crate's layout by
//! another program: etcd keeps its backend in the same buckets with the
//! same encodings (FORMAT.md), so `kvtool migrate` feeds etcd's records
//! through here.
//!
//! Each record is checked as the store will read it before it is written;
//! records are written in bounded batches (the B+tree holds a batch's pages
//! in memory until it commits); [`Import::finish`] writes the store's own
//! state, makes the file durable and opens it as a [`Store`], which
//! rebuilds the index and the leases and so checks the history as a whole.

use std::path::Path;

use btree::Db;
use prost::Message;

use crate::buckets::{
    AuthBucket, COMPACTED_REVISION, CONSISTENT_INDEX, KEY_BUCKET, LEASE_BUCKET, META_BUCKET,
    SCHEDULED_COMPACTION, TERM,
};
use crate::error::{Error, Result};
use crate::kv::KeyValueHead;
use crate::lease::LeaseRecord;
use crate::revision::Revision;
use crate::store::Store;

/// Bytes of records buffered before they are written in one transaction.
const BATCH_BYTES: usize = 8 << 20;

/// The store's own state, written by [`Import::finish`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportMeta {
    /// The raft index the store's data stands for.
    pub consistent_index: u64,
    pub term: u64,
    /// The newest compaction asked for, and the newest finished one (0:
    /// none).
    pub scheduled_compaction: i64,
    pub finished_compaction: i64,
}

/// What an import has written so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    /// Records of the `key` bucket (every revision kept, tombstones
    /// included).
    pub revisions: u64,
    /// The newest revision among them.
    pub newest_revision: i64,
    pub leases: u64,
    pub users: u64,
    pub roles: u64,
    /// Bytes of keys and values written.
    pub bytes: u64,
}

/// A store file being written.
pub struct Import {
    db: Db,
    batch: Vec<(&'static [u8], Vec<u8>, Vec<u8>)>,
    batch_bytes: usize,
    last_revision: Option<Revision>,
    counts: ImportCounts,
}

fn corrupt(rev: Revision, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        rev,
        reason: reason.into(),
    }
}

impl Import {
    /// Starts a new store file at `path`, which must not exist.
    pub fn create(path: impl AsRef<Path>) -> Result<Import> {
        let path = path.as_ref();
        if path.exists() {
            return Err(Error::Storage(btree::Error::Io {
                path: path.to_path_buf(),
                op: "create",
                source: std::io::ErrorKind::AlreadyExists.into(),
            }));
        }
        let db = Db::open(path)?;
        {
            let mut tx = db.begin_write()?;
            for b in [
                KEY_BUCKET,
                META_BUCKET,
                LEASE_BUCKET,
                AuthBucket::Meta.name(),
                AuthBucket::Users.name(),
                AuthBucket::Roles.name(),
            ] {
                tx.create_bucket_if_missing(b)?;
            }
            tx.commit_nosync()?;
        }
        Ok(Import {
            db,
            batch: Vec::new(),
            batch_bytes: 0,
            last_revision: None,
            counts: ImportCounts::default(),
        })
    }

    pub fn counts(&self) -> ImportCounts {
        self.counts
    }

    fn push(&mut self, bucket: &'static [u8], key: &[u8], value: &[u8]) -> Result<()> {
        self.batch_bytes += key.len() + value.len();
        self.counts.bytes += (key.len() + value.len()) as u64;
        self.batch.push((bucket, key.to_vec(), value.to_vec()));
        if self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write()?;
        for (bucket, k, v) in self.batch.drain(..) {
            tx.put(bucket, &k, &v)?;
        }
        tx.commit_nosync()?;
        self.batch_bytes = 0;
        Ok(())
    }

    /// One record of the `key` bucket, in revision order: its key (the
    /// encoded revision) and value (`mvccpb.KeyValue`), kept byte for byte
    /// so that HashKV stays the same.
    pub fn revision(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let Some((rev, tombstone)) = Revision::from_key(key) else {
            return Err(corrupt(
                self.last_revision.unwrap_or_default(),
                format!(
                    "a key of {} bytes where a revision (17, or 18 for a tombstone) belongs",
                    key.len()
                ),
            ));
        };
        if rev.main < 1 || rev.sub < 0 {
            return Err(corrupt(rev, "not a revision a store writes"));
        }
        if self.last_revision.is_some_and(|last| last >= rev) {
            return Err(corrupt(rev, "revisions out of order"));
        }
        let kv = KeyValueHead::decode(value)
            .map_err(|e| corrupt(rev, format!("the record is not a KeyValue: {e}")))?;
        if kv.key.is_empty() {
            return Err(corrupt(rev, "the record names no key"));
        }
        if !tombstone
            && (kv.mod_revision != rev.main
                || kv.create_revision < 1
                || kv.create_revision > rev.main
                || kv.version < 1)
        {
            return Err(corrupt(
                rev,
                format!(
                    "the record says created at {}, modified at {}, version {}",
                    kv.create_revision, kv.mod_revision, kv.version
                ),
            ));
        }
        self.last_revision = Some(rev);
        self.counts.revisions += 1;
        self.counts.newest_revision = rev.main;
        self.push(KEY_BUCKET, key, value)
    }

    /// One record of the `lease` bucket: the lease ID (8 bytes
    /// big-endian) and `leasepb.Lease`.
    pub fn lease(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let bad = |reason: String| corrupt(Revision::default(), format!("lease record: {reason}"));
        let id = <[u8; 8]>::try_from(key)
            .map(i64::from_be_bytes)
            .map_err(|_| bad(format!("a key of {} bytes", key.len())))?;
        let rec = LeaseRecord::decode(value).map_err(|e| bad(e.to_string()))?;
        if rec.id != id {
            return Err(bad(format!("lease {:x} stored under {id:x}", rec.id)));
        }
        self.counts.leases += 1;
        self.push(LEASE_BUCKET, key, value)
    }

    /// One record of an auth bucket, as the server reads it (the caller
    /// checks users' and roles' encodings, which are the server's).
    pub fn auth_record(&mut self, bucket: AuthBucket, key: &[u8], value: &[u8]) -> Result<()> {
        match bucket {
            AuthBucket::Users => self.counts.users += 1,
            AuthBucket::Roles => self.counts.roles += 1,
            AuthBucket::Meta => {}
        }
        self.push(bucket.name(), key, value)
    }

    /// Writes the store's own state, makes the file durable, and opens it.
    pub fn finish(mut self, meta: ImportMeta) -> Result<Store> {
        // A compaction may be newer than every record left (a deletion
        // compacted away): the store's revision is then the compaction's.
        for (what, rev) in [
            ("scheduled", meta.scheduled_compaction),
            ("finished", meta.finished_compaction),
        ] {
            if rev < 0 {
                return Err(corrupt(
                    Revision::new(rev, 0),
                    format!("the {what} compaction is at a negative revision"),
                ));
            }
        }
        self.flush()?;
        {
            let mut tx = self.db.begin_write()?;
            tx.put(
                META_BUCKET,
                CONSISTENT_INDEX,
                &meta.consistent_index.to_be_bytes(),
            )?;
            if meta.term > 0 {
                tx.put(META_BUCKET, TERM, &meta.term.to_be_bytes())?;
            }
            if meta.scheduled_compaction > 0 {
                tx.put(
                    META_BUCKET,
                    SCHEDULED_COMPACTION,
                    &(meta.scheduled_compaction as u64).to_be_bytes(),
                )?;
            }
            if meta.finished_compaction > 0 {
                tx.put(
                    META_BUCKET,
                    COMPACTED_REVISION,
                    &(meta.finished_compaction as u64).to_be_bytes(),
                )?;
            }
            tx.commit()?;
        }
        self.db.sync()?;
        let path = self.db.path().to_path_buf();
        drop(self.db);
        let store = Store::open(&path)?;
        // An unfinished compaction is finished now, so the new member
        // starts with none pending.
        store.finish_compaction()?;
        Ok(store)
    }
}
