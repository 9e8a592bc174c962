//! Compaction: the logical half (the index forgets history below the
//! revision and reads there fail) happens at the batch's commit; the
//! physical half removes the records from the `key` bucket in bounded
//! steps between batches, resumed from `scheduledCompactRev` after a
//! crash.

use crate::apply::Apply;
use crate::buckets::{COMPACTED_REVISION, KEY_BUCKET, META_BUCKET};
use crate::error::{Error, Result};
use crate::revision::Revision;
use crate::store::Store;

/// The physical half of a compaction, done in bounded steps.
pub(crate) struct PendingCompaction {
    pub(crate) rev: i64,
    /// The records at or below `rev` that stay.
    pub(crate) kept: std::collections::HashSet<Revision>,
    /// Where the next step resumes in the `key` bucket.
    pub(crate) next_key: Vec<u8>,
}

impl Store {
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
}

impl<'s> Apply<'s> {
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
}
