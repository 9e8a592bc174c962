//! Writing a densely packed copy of the database (the core of defrag).
//!
//! Keys are copied bucket by bucket in key order, so every leaf is filled
//! to the brim by the append-mode split, and no free pages are carried
//! over. The copy is fsynced before this returns.

use std::path::Path;

use crate::db::{Db, Options};
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
}
