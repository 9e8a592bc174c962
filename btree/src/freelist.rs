//! Free-page accounting.
//!
//! A page freed by the commit that produced version `v` is still part of
//! every older snapshot, and of the last durable meta until a meta of
//! version `v` or later is on disk. It therefore waits in `pending[v]` and
//! moves to `free` (where it can be allocated again) only once
//! (a) no open reader holds a snapshot older than `v`, and
//! (b) a meta of version `v` or later has been fsynced.
//! Rule (b) is what keeps a power cut after a commit without fdatasync
//! from finding the last durable tree overwritten.
//!
//! Rule (b) protects only pages the last durable meta can reach. A page
//! allocated after that meta (by a commit without fdatasync) is not in the
//! durable tree, so when it is freed again it waits for rule (a) alone.
//! Without that, a writer committing thousands of times between syncs would
//! never reuse a page until the next sync.
//!
//! Freelist pages themselves are never read by transactions (only by open
//! and by `check`, which holds the writer lock while it reads them), so a
//! replaced freelist run waits for rule (b) alone. Without that, a reader
//! held open for a long time would make every commit's freelist larger
//! than the last.

use std::collections::{BTreeMap, BTreeSet};

use crate::page::PageId;

#[derive(Debug, Default, Clone)]
pub struct Freelist {
    free: BTreeSet<PageId>,
    pending: BTreeMap<u64, Vec<PageId>>,
    /// Replaced freelist runs, by the version that replaced them.
    pending_freelist: BTreeMap<u64, Vec<PageId>>,
    /// Pages freed that the durable meta cannot reach: they wait for
    /// readers only.
    pending_readers: BTreeMap<u64, Vec<PageId>>,
    /// Pages allocated since the last durable meta.
    fresh: BTreeSet<PageId>,
    /// Every id in `pending` and `pending_freelist`, kept sorted so that writing the freelist at
    /// each commit is a merge, not a sort.
    pending_ids: BTreeSet<PageId>,
}

impl Freelist {
    pub fn from_free(ids: impl IntoIterator<Item = PageId>) -> Freelist {
        Freelist {
            free: ids.into_iter().collect(),
            ..Freelist::default()
        }
    }

    /// Records that `n` pages from `id` were just allocated (from the free
    /// set or past the high-water mark), so they are not in the durable tree.
    pub fn mark_fresh(&mut self, id: PageId, n: u64) {
        self.fresh.extend(id..id + n);
    }

    /// A meta describing every commit so far is durable: nothing allocated
    /// before now is fresh any more.
    pub fn made_durable(&mut self) {
        self.fresh.clear();
    }

    /// Allocates `n` contiguous free pages, returning the first id.
    pub fn allocate(&mut self, n: usize) -> Option<PageId> {
        if n == 1 {
            return self.free.pop_first();
        }
        let mut run_start = None;
        let mut run_len = 0;
        let mut prev = None;
        for &id in &self.free {
            if prev.is_some_and(|p| p + 1 == id) {
                run_len += 1;
            } else {
                run_start = Some(id);
                run_len = 1;
            }
            prev = Some(id);
            if run_len == n {
                break;
            }
        }
        if run_len < n {
            return None;
        }
        let start = run_start?;
        for id in start..start + n as u64 {
            self.free.remove(&id);
        }
        Some(start)
    }

    /// Records that the commit producing `version` no longer uses `pages`
    /// pages starting at `id`.
    pub fn free_run(&mut self, version: u64, id: PageId, pages: u64) {
        for p in id..id + pages {
            let map = if self.fresh.remove(&p) {
                &mut self.pending_readers
            } else {
                &mut self.pending
            };
            Self::add(map, &mut self.pending_ids, version, p, 1);
        }
    }

    /// Records that the commit producing `version` replaced the freelist run
    /// of `pages` pages at `id`.
    /// A run written after the durable meta is reachable from no durable
    /// meta and read by no transaction, so it is free at once.
    pub fn free_freelist_run(&mut self, version: u64, id: PageId, pages: u64) {
        for p in id..id + pages {
            if self.fresh.remove(&p) {
                self.free.insert(p);
            } else {
                Self::add(
                    &mut self.pending_freelist,
                    &mut self.pending_ids,
                    version,
                    p,
                    1,
                );
            }
        }
    }

    fn add(
        pending: &mut BTreeMap<u64, Vec<PageId>>,
        ids: &mut BTreeSet<PageId>,
        version: u64,
        id: PageId,
        pages: u64,
    ) {
        pending.entry(version).or_default().extend(id..id + pages);
        ids.extend(id..id + pages);
    }

    /// Makes allocatable every page freed by a version no newer than both
    /// `oldest_reader` and `durable`, and every freelist run replaced by a
    /// version no newer than `durable`.
    pub fn release(&mut self, oldest_reader: u64, durable: u64) {
        Self::release_from(
            &mut self.pending,
            oldest_reader.min(durable),
            &mut self.pending_ids,
            &mut self.free,
        );
        Self::release_from(
            &mut self.pending_freelist,
            durable,
            &mut self.pending_ids,
            &mut self.free,
        );
        Self::release_from(
            &mut self.pending_readers,
            oldest_reader,
            &mut self.pending_ids,
            &mut self.free,
        );
    }

    fn release_from(
        pending: &mut BTreeMap<u64, Vec<PageId>>,
        upto: u64,
        ids: &mut BTreeSet<PageId>,
        free: &mut BTreeSet<PageId>,
    ) {
        while let Some(entry) = pending.first_entry() {
            if *entry.key() > upto {
                break;
            }
            for id in entry.remove() {
                ids.remove(&id);
                free.insert(id);
            }
        }
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Free pages with ids below `limit`.
    pub fn free_below(&self, limit: PageId) -> usize {
        self.free.range(..limit).count()
    }

    pub fn pending_count(&self) -> usize {
        self.pending_ids.len()
    }

    /// Every page that the next meta's tree does not use: free and pending
    /// alike (after a reopen nothing is pending). Sorted.
    pub fn persisted_ids(&self) -> Vec<PageId> {
        let mut ids = Vec::with_capacity(self.free.len() + self.pending_ids.len());
        let (mut a, mut b) = (
            self.free.iter().peekable(),
            self.pending_ids.iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x <= y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, _) => b.next(),
            };
            match next {
                Some(&id) => ids.push(id),
                None => return ids,
            }
        }
    }

    /// Drops free pages at the end of the file (ids >= new high-water mark)
    /// and returns the lowered high-water mark.
    pub fn trim_tail(&mut self, mut high_water: u64) -> u64 {
        while high_water > 0 && self.free.last() == Some(&(high_water - 1)) {
            self.free.pop_last();
            high_water -= 1;
        }
        high_water
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_runs_are_found_and_removed() {
        let mut f = Freelist::from_free([3, 5, 6, 7, 9]);
        assert_eq!(f.allocate(3), Some(5));
        assert_eq!(f.allocate(2), None);
        assert_eq!(f.allocate(1), Some(3));
        assert_eq!(f.allocate(1), Some(9));
        assert_eq!(f.allocate(1), None);
    }

    #[test]
    fn pending_pages_are_released_only_up_to_the_given_version() {
        let mut f = Freelist::default();
        f.free_run(5, 10, 2);
        f.free_run(6, 20, 1);
        f.release(4, 10);
        assert_eq!(f.allocate(1), None);
        f.release(10, 4);
        assert_eq!(f.allocate(1), None);
        f.release(5, 5);
        assert_eq!(f.free_count(), 2);
        assert_eq!(f.pending_count(), 1);
        assert_eq!(f.persisted_ids(), vec![10, 11, 20]);
    }

    #[test]
    fn pages_born_after_the_durable_meta_wait_only_for_readers() {
        let mut f = Freelist::default();
        f.mark_fresh(50, 2);
        f.free_run(7, 50, 1);
        f.free_run(7, 60, 1);
        f.release(7, 1);
        assert_eq!(f.persisted_ids(), vec![50, 60]);
        assert_eq!(
            f.allocate(1),
            Some(50),
            "the fresh page is reusable before any sync"
        );
        assert_eq!(f.allocate(1), None, "the durable tree's page is not");
        f.made_durable();
        f.free_run(8, 51, 1);
        f.release(8, 7);
        assert_eq!(
            f.allocate(1),
            Some(60),
            "durable at 7 releases what 7 freed"
        );
        assert_eq!(
            f.allocate(1),
            None,
            "after a sync, 51 may be in the durable tree"
        );
    }

    #[test]
    fn replaced_freelist_runs_wait_only_for_durability() {
        let mut f = Freelist::default();
        f.free_freelist_run(5, 30, 2);
        f.free_run(5, 40, 1);
        f.release(1, 4);
        assert_eq!(f.free_count(), 0);
        f.release(1, 5);
        assert_eq!(f.persisted_ids(), vec![30, 31, 40]);
        assert_eq!((f.free_count(), f.pending_count()), (2, 1));
    }
}
