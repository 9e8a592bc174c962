//! Snapshots of the whole store: a compact copy of the database file,
//! what such a copy holds, and installing one in place of the store.

use btree::Db;

use crate::buckets::{be_u64, member_key, CONSISTENT_INDEX, MEMBERS_BUCKET, META_BUCKET, TERM};
use crate::error::Result;
use crate::rebuild::load;
use crate::store::Store;

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

pub(crate) fn read_members(rx: &btree::ReadTxn) -> Result<Vec<(u64, Vec<u8>)>> {
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

impl Store {
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
}
