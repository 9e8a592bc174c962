//! Writing a densely packed copy of the database (the core of defrag).
//!
//! Keys are copied bucket by bucket in key order, so every leaf is filled
//! to the brim by the append-mode split, and no free pages are carried
//! over. The copy is fsynced before this returns.

use std::path::Path;

use std::sync::Arc;

use crate::db::{Db, Options, Snapshot};
use crate::error::{Error, Result};

/// Sizes before and after a compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactStats {
    pub source_bytes: u64,
    pub dest_bytes: u64,
    pub buckets: u64,
    pub keys: u64,
}

/// Bytes of keys and values copied per write transaction.
const BATCH_BYTES: usize = 64 << 20;

impl Db {
    /// Writes every bucket into a new database file at `dest` (which must
    /// not exist), as of the latest commit.
    pub fn compact_into(&self, dest: impl AsRef<Path>) -> Result<CompactStats> {
        let dest = dest.as_ref();
        if dest.exists() {
            return Err(Error::DestinationExists(dest.to_path_buf()));
        }
        let out = Db::open_with(
            dest,
            Options {
                page_size: self.page_size(),
                ..Options::default()
            },
        )?;
        let src = self.begin_read();
        let mut stats = CompactStats {
            source_bytes: src.snapshot().meta.high_water * self.page_size() as u64,
            dest_bytes: 0,
            buckets: 0,
            keys: 0,
        };
        for (name, _) in src.buckets()? {
            let bucket = src.open_bucket(&name)?;
            let mut tx = out.begin_write()?;
            tx.create_bucket(&name)?;
            let mut batch = 0;
            for item in bucket.range(b"", None) {
                let (k, v) = item?;
                tx.put(&name, k, v)?;
                stats.keys += 1;
                batch += k.len() + v.len();
                if batch >= BATCH_BYTES {
                    tx.commit_nosync()?;
                    tx = out.begin_write()?;
                    batch = 0;
                }
            }
            tx.commit_nosync()?;
            stats.buckets += 1;
        }
        out.sync()?;
        stats.dest_bytes = out.begin_read().snapshot().meta.high_water * self.page_size() as u64;
        Ok(stats)
    }

    /// Defragments the database in place: writes a densely packed copy of
    /// the latest commit next to the file, fsyncs it, renames it over the
    /// file and carries on writing to it. Writers wait meanwhile; readers
    /// do not, and snapshots taken before keep reading the old file (its
    /// mapping outlives the rename). Returns the sizes before and after.
    pub fn defragment(&self) -> Result<CompactStats> {
        let mut w = self.lock_writer()?;
        let path = self.path().to_path_buf();
        let mut tmp = path.clone().into_os_string();
        tmp.push(".defrag");
        let tmp = std::path::PathBuf::from(tmp);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&tmp, "remove", e)),
        }
        let mut stats = self.compact_into(&tmp)?;
        stats.source_bytes = w.file_len;
        let copy = Db::open_with(
            &tmp,
            Options {
                page_size: self.page_size(),
                read_only: false,
                io: self.shared.io_factory.clone(),
            },
        )?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, "rename", e))?;
        crate::db::sync_parent_dir(&path)?;
        let copy = Arc::try_unwrap(copy.shared).map_err(|_| Error::Corrupt {
            page: 0,
            reason: "the defragmented copy is still in use".into(),
        })?;
        let new_writer = copy.writer.into_inner().unwrap_or_else(|e| e.into_inner());
        let new_snap = copy.current.into_inner().unwrap_or_else(|e| e.into_inner());
        // Versions keep increasing across the swap; the old file's snapshots
        // no longer hold back page reuse (they read the old file).
        let version = w.version + 1;
        w.file = new_writer.file;
        w.io = new_writer.io;
        w.freelist = new_writer.freelist;
        w.file_len = new_writer.file_len;
        w.map = new_writer.map;
        w.durable_txid = new_writer.durable_txid;
        w.version = version;
        w.durable_version = version;
        self.publish(
            &mut w,
            Arc::new(Snapshot {
                version,
                meta: new_snap.meta,
                map: new_snap.map.clone(),
            }),
        );
        w.history.clear();
        Ok(stats)
    }
}
