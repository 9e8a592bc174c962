//! etcd's two hashes of a member's data, for comparing members.

use std::collections::HashSet;

use crate::buckets::{CONSISTENT_INDEX, KEY_BUCKET, META_BUCKET};
use crate::error::{Error, Result};
use crate::revision::Revision;
use crate::store::Store;

/// Keys of the index one step of HashKV's walk visits with the store's
/// lock held.
const HASH_INDEX_STEP: usize = 10_000;

impl Store {
    /// etcd's HashKV as etcd 3.4 computes it: a crc32 (Castagnoli) of the
    /// bucket's name and then the `key` bucket's records up to `rev` (0: the
    /// current revision), counting at or below the compacted revision only
    /// the records a compaction at `rev` would keep (each key's newest
    /// revision at or below `rev`, unless a tombstone). The value is the
    /// same before and after a compaction's records are removed, on every
    /// member holding the same history, and on etcd holding it. Returns
    /// (hash, current revision, compacted revision).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64)> {
        let (current, compacted, keep, rx) = self.kept_for_hash(rev)?;
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

    /// What HashKV needs from one moment: the current and compacted
    /// revisions, the records a compaction at the hashed revision keeps,
    /// and a snapshot of the B+tree. The index is walked in steps, the
    /// store's lock released between them; a compaction landing meanwhile
    /// changes what is kept, so the walk starts over (and after a few
    /// tries runs in one step).
    fn kept_for_hash(&self, rev: i64) -> Result<(i64, i64, HashSet<Revision>, btree::ReadTxn)> {
        let mut attempt = 0;
        loop {
            let step = if attempt < 3 {
                HASH_INDEX_STEP
            } else {
                usize::MAX
            };
            attempt += 1;
            let (current, compacted, at, rx, mut kept, mut after) = {
                let s = self.read_shared();
                if rev > 0 && rev <= s.compacted {
                    return Err(Error::Compacted);
                }
                if rev > s.current {
                    return Err(Error::FutureRevision);
                }
                let at = if rev <= 0 { s.current } else { rev };
                let mut kept = HashSet::new();
                let after = s.index.kept_at_step(at, None, step, &mut kept);
                (
                    s.current,
                    s.compacted,
                    at,
                    self.db.begin_read(),
                    kept,
                    after,
                )
            };
            let mut stale = false;
            while let Some(from) = after.take() {
                fail::fail_point!("mvcc::hash_step");
                let s = self.read_shared();
                if s.compacted != compacted {
                    stale = true;
                    break;
                }
                after = s.index.kept_at_step(at, Some(&from), step, &mut kept);
            }
            if !stale {
                return Ok((current, compacted, kept, rx));
            }
        }
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
}
