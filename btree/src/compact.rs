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

/// Most tree nodes one online defragmentation step moves (4 KiB pages: a
/// step writes about 2 MiB and commits once).
pub const RECLAIM_STEP_NODES: usize = 512;

/// How much of the file's end one truncation step cuts off (ext4 took
/// about 0.8 ms per MiB here, all of it with writers waiting).
pub const TRUNCATE_STEP_BYTES: u64 = 4 << 20;

/// Pause between defragmentation steps, so writers waiting for the lock
/// get it (a mutex does not queue them fairly).
const STEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

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
            // Tests pause the copy here to show writers go on beside it.
            fail::fail_point!("btree::compact_bucket");
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

    /// Defragments the database while it stays in use: in small write
    /// transactions, moves the tree nodes that sit near the end of the file
    /// into free pages nearer its start, then cuts the freed end off the
    /// file. Each step holds the writer for one small transaction (at most
    /// [`RECLAIM_STEP_NODES`] nodes copied and one commit), so writers are
    /// held up for one step at a time and readers never. Returns the file
    /// sizes before and after. Pages an old reader still sees stay until it
    /// finishes (a later defragmentation reclaims them).
    pub fn defragment_online(&self) -> Result<CompactStats> {
        let source_bytes = self.lock_writer()?.file_len;
        self.shared.defrag.start();
        let result = self.defragment_rounds(source_bytes);
        self.shared.defrag.finish();
        result
    }

    fn defragment_rounds(&self, source_bytes: u64) -> Result<CompactStats> {
        // Rounds until the end of the file stops coming down: moving nodes
        // can leave the freelist's own run high up, and the next round's
        // smaller freelist fits lower.
        let mut last_hw = u64::MAX;
        for _round in 0..4 {
            self.reclaim_round()?;
            let hw = self.begin_read().snapshot().meta.high_water;
            if hw >= last_hw {
                break;
            }
            last_hw = hw;
        }
        self.truncate_to_fit()?;
        let (mut buckets, mut keys) = (0, 0);
        for (_, count) in self.begin_read().buckets()? {
            buckets += 1;
            keys += count;
        }
        Ok(CompactStats {
            source_bytes,
            dest_bytes: self.lock_writer()?.file_len,
            buckets,
            keys,
        })
    }

    /// Moves nodes down in steps until nothing above the target is left,
    /// then commits twice so the freed end leaves the high-water mark.
    fn reclaim_round(&self) -> Result<()> {
        let start_hw = self.begin_read().snapshot().meta.high_water;
        let mut steps_left = start_hw / 16 + 64;
        let mut stalled = 0;
        while steps_left > 0 {
            steps_left -= 1;
            let mut tx = self.begin_write()?;
            let (hw, limit, cap) = tx.reclaim_plan();
            if limit >= hw {
                break;
            }
            if cap == 0 {
                // The room below the limit is still pending release: make
                // the last steps durable so their freed pages come back.
                drop(tx);
                self.sync()?;
                stalled += 1;
                if stalled > 3 {
                    break;
                }
                continue;
            }
            let moved = tx.relocate_above(limit, cap.min(RECLAIM_STEP_NODES))?;
            self.shared.defrag.step(moved as u64, hw - limit);
            if moved == 0 {
                break;
            }
            tx.commit()?;
            std::thread::sleep(STEP_PAUSE);
            stalled = 0;
        }
        // The first commit releases what the last steps freed, the second
        // drops the free end of the file from the high-water mark (and
        // frees the freelist run the first one replaced).
        for _ in 0..2 {
            let mut tx = self.begin_write()?;
            tx.force_write();
            tx.commit()?;
        }
        Ok(())
    }

    /// Shortens the file to the pages the newest commit and every snapshot
    /// still read use, [`TRUNCATE_STEP_BYTES`] at a time (a filesystem
    /// takes time to free a large tail, and writers wait meanwhile). Each
    /// step first makes the newest commit durable, so the meta on disk
    /// never names pages past the end of the file. A crash mid-way leaves
    /// a longer file, which is harmless.
    pub(crate) fn truncate_to_fit(&self) -> Result<()> {
        let ps = self.page_size() as u64;
        let path = self.path().to_path_buf();
        loop {
            // The lock is not fair: without a pause, this loop would take
            // it again before a waiting writer wakes up.
            std::thread::sleep(STEP_PAUSE);
            let mut w = self.lock_writer()?;
            let snap = self.snapshot();
            self.make_durable(&mut w, &snap)?;
            w.history.retain(|s| Arc::strong_count(s) > 1);
            let pages = w
                .history
                .iter()
                .map(|s| s.meta.high_water)
                .chain([snap.meta.high_water])
                .max()
                .unwrap_or(snap.meta.high_water);
            let needed = pages * ps;
            if needed >= w.file_len {
                return Ok(());
            }
            let len = needed.max(w.file_len.saturating_sub(TRUNCATE_STEP_BYTES).div_ceil(ps) * ps);
            w.io.set_len(len)
                .map_err(|e| Error::io(&path, "truncate", e))?;
            w.file_len = len;
            w.map = crate::db::map_file(&path, &w.file)?;
        }
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
        self.swap_in(&mut w, &tmp)?;
        Ok(stats)
    }

    /// Replaces the database with the (complete, fsynced) database file at
    /// `src`, which is renamed over this one: the next snapshot and every
    /// later one read the new contents, writers carry on in the new file,
    /// and snapshots taken before keep reading the old one. Installing a
    /// snapshot received from a raft leader is this. `src` must be in the
    /// same file system and have the same page size.
    pub fn replace_with(&self, src: impl AsRef<Path>) -> Result<()> {
        let mut w = self.lock_writer()?;
        self.swap_in(&mut w, src.as_ref())
    }

    /// Renames `src` over the file and carries on writing to it.
    fn swap_in(&self, w: &mut crate::db::Writer, src: &Path) -> Result<()> {
        let path = self.path().to_path_buf();
        let copy = Db::open_with(
            src,
            Options {
                page_size: self.page_size(),
                read_only: false,
                io: self.shared.io_factory.clone(),
                reserve_bytes: self.shared.reserve_bytes,
            },
        )?;
        std::fs::rename(src, &path).map_err(|e| Error::io(&path, "rename", e))?;
        crate::db::sync_parent_dir(&path)?;
        let copy = Arc::try_unwrap(copy.shared).map_err(|_| Error::Corrupt {
            page: 0,
            reason: "the replacement file is still in use".into(),
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
            w,
            Arc::new(Snapshot {
                version,
                meta: new_snap.meta,
                map: new_snap.map.clone(),
            }),
        );
        w.history.clear();
        Ok(())
    }
}
