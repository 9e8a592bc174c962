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
//!
//! The store's parts, one file each: [`crate::buckets`] (what lives where
//! in the B+tree), [`crate::rebuild`] (opening), [`crate::range`],
//! [`crate::apply`] (the write batch), [`crate::txn`], [`crate::lease`],
//! [`crate::compact`], [`crate::history`] and [`crate::watch_stream`]
//! (watches), [`crate::hash`], [`crate::snapshot`] and [`crate::records`]
//! (the server's members, alarms and auth records).

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use btree::Db;

use crate::compact::PendingCompaction;
use crate::error::Result;
use crate::index::KeyIndex;
use crate::lease::Lessor;
use crate::rebuild::load;
use crate::watch::Hub;

pub(crate) struct Shared {
    pub(crate) index: KeyIndex,
    pub(crate) lessor: Lessor,
    /// The newest revision readers may see.
    pub(crate) current: i64,
    pub(crate) compacted: i64,
    pub(crate) consistent_index: u64,
    /// The raft term of the last applied entry.
    pub(crate) term: u64,
    pub(crate) poisoned: bool,
    /// Records a compaction still has to remove from the B+tree.
    pub(crate) pending_compaction: Option<PendingCompaction>,
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
    pub(crate) db: Db,
    pub(crate) limits: Limits,
    pub(crate) shared: RwLock<Shared>,
    pub(crate) hub: Arc<Hub>,
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

    pub(crate) fn read_shared(&self) -> RwLockReadGuard<'_, Shared> {
        self.shared.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write_shared(&self) -> RwLockWriteGuard<'_, Shared> {
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
}
