//! The in-memory key index: for every key, the revisions at which it
//! changed, grouped into generations (lives). It answers "which revision of
//! key k is visible at store revision r" and range scans at any revision not
//! yet compacted, without touching the B+tree; the B+tree is then read by
//! revision.
//!
//! A key's history is a list of generations. A generation starts with the
//! put that created the key, holds every later put, and ends with the
//! tombstone that deleted it; the last generation is the current one and
//! is empty while the key is deleted. Compaction at revision `c` drops, per
//! key, every revision that no read at `c` or later can see: everything
//! before the newest revision at or below `c`, that revision itself when it
//! is a tombstone, and whole generations that ended at or before `c`.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use crate::revision::Revision;

/// One life of a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Generation {
    /// Puts in this life, counting from 1 (a tombstone counts too, as it
    /// ends the life with one more change).
    version: i64,
    /// The revision that created the key in this life.
    created: Revision,
    /// Every change in this life, in order; the last is the tombstone when
    /// the life has ended.
    revs: Vec<Revision>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyHistory {
    generations: Vec<Generation>,
}

/// A key as seen at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    /// The revision holding the key's value at that point.
    pub modified: Revision,
    /// The revision that created the key (in its current life).
    pub created: Revision,
    /// Puts since creation, up to and including `modified`.
    pub version: i64,
}

/// Which keys a range covers (etcd's `key` / `range_end` pair).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeEnd {
    /// Just the key.
    Single,
    /// Every key from the key on (etcd's `range_end` of `"\0"`).
    ToEnd,
    /// Keys up to, not including, this one.
    Until(Vec<u8>),
}

impl RangeEnd {
    /// Whether `k` lies in the range that starts at `start`.
    pub fn contains(&self, start: &[u8], k: &[u8]) -> bool {
        match self {
            RangeEnd::Single => k == start,
            RangeEnd::ToEnd => k >= start,
            RangeEnd::Until(e) => k >= start && k < e.as_slice(),
        }
    }

    /// etcd's encoding: empty is a single key, `"\0"` is "to the end".
    pub fn from_etcd(range_end: &[u8]) -> RangeEnd {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::ToEnd,
            end => RangeEnd::Until(end.to_vec()),
        }
    }
}

/// Changing a key that the index does not consider live.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key is not live: nothing to delete")]
pub struct NotLive;

impl KeyHistory {
    fn current(&mut self) -> &mut Generation {
        if self.generations.is_empty() {
            // Most keys have one life and few changes kept: room for
            // exactly what is there (a Vec's first growth is to four).
            self.generations.reserve_exact(1);
            self.generations.push(Generation::default());
        }
        let last = self.generations.len() - 1;
        &mut self.generations[last]
    }

    fn put(&mut self, rev: Revision) {
        let g = self.current();
        if g.revs.is_empty() {
            g.created = rev;
            g.revs.reserve_exact(1);
        }
        g.revs.push(rev);
        g.version += 1;
    }

    fn tombstone(&mut self, rev: Revision) -> Result<(), NotLive> {
        if self.generations.last().is_none_or(|g| g.revs.is_empty()) {
            return Err(NotLive);
        }
        self.put(rev);
        self.generations.reserve_exact(1);
        self.generations.push(Generation::default());
        Ok(())
    }

    fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.revs.is_empty())
    }

    /// The generation whose life covers store revision `at`.
    fn generation_at(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(end)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            if i != last && end.main <= at {
                // Deleted at or before `at`, and not yet recreated then.
                return None;
            }
            if first.main <= at {
                return Some(g);
            }
        }
        None
    }

    fn get(&self, at: i64) -> Option<KeyAt> {
        let g = self.generation_at(at)?;
        let idx = g.revs.iter().rposition(|r| r.main <= at)?;
        Some(KeyAt {
            modified: g.revs[idx],
            created: g.created,
            version: g.version - (g.revs.len() - 1 - idx) as i64,
        })
    }

    /// Where compaction at `at` cuts: the first generation to keep and, in
    /// it, the index of the newest revision at or below `at` (if any).
    fn compaction_point(&self, at: i64) -> (usize, Option<usize>) {
        let mut gi = 0;
        // Skip lives that ended at or before `at` (the last one never ends).
        while gi + 1 < self.generations.len() {
            match self.generations[gi].revs.last() {
                Some(end) if end.main > at => break,
                _ => gi += 1,
            }
        }
        let keep_from = self.generations[gi].revs.iter().rposition(|r| r.main <= at);
        (gi, keep_from)
    }

    /// The revision compaction at `at` keeps as the key's visible state at
    /// `at` (none when it is deleted there).
    fn kept_at(&self, at: i64) -> Option<Revision> {
        if self.generations.is_empty() {
            return None;
        }
        let (gi, keep_from) = self.compaction_point(at);
        let g = &self.generations[gi];
        let i = keep_from?;
        let is_tombstone = i + 1 == g.revs.len() && gi + 1 != self.generations.len();
        (!is_tombstone).then_some(g.revs[i])
    }

    fn compact(&mut self, at: i64) {
        if self.generations.is_empty() {
            return;
        }
        let (mut gi, keep_from) = self.compaction_point(at);
        let last = self.generations.len() - 1;
        let g = &mut self.generations[gi];
        if let Some(i) = keep_from {
            g.revs.drain(..i);
        }
        // A life reduced to its tombstone is over for every reader at or
        // after `at`.
        if g.revs.len() == 1 && gi != last && keep_from.is_some() {
            gi += 1;
        }
        self.generations.drain(..gi);
    }

    fn is_empty(&self) -> bool {
        self.generations.iter().all(|g| g.revs.is_empty())
    }
}

/// A range walk over the index done in steps ([`KeyIndex::range_step`]):
/// what it found so far and where it stopped.
#[derive(Debug, Default)]
pub struct RangeWalk {
    /// The state of each key found, in key order, up to `limit` of them.
    pub rows: Vec<KeyAt>,
    /// Keys found in all.
    pub total: usize,
    limit: usize,
    /// The last key visited.
    after: Option<Vec<u8>>,
}

impl RangeWalk {
    /// A walk keeping at most `limit` rows (0: all).
    pub fn new(limit: usize) -> RangeWalk {
        RangeWalk {
            limit,
            ..RangeWalk::default()
        }
    }
}

/// The index of every key's history.
#[derive(Debug, Default, Clone)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, KeyHistory>,
    /// Keys live now (etcd's `keys_total`).
    live: usize,
}

impl KeyIndex {
    pub fn new() -> KeyIndex {
        KeyIndex::default()
    }

    /// Records a put of `key` at `rev`.
    pub fn put(&mut self, key: &[u8], rev: Revision) {
        match self.keys.get_mut(key) {
            Some(h) => {
                if !h.is_live() {
                    self.live += 1;
                }
                h.put(rev)
            }
            None => {
                self.live += 1;
                let mut h = KeyHistory::default();
                h.put(rev);
                self.keys.insert(key.to_vec(), h);
            }
        }
    }

    /// Records a put found when rebuilding the index from storage: like
    /// [`KeyIndex::put`], except that a key not live yet starts its life
    /// with the creation revision and version its record carries (the
    /// revisions before it may have been compacted away).
    pub fn restore(&mut self, key: Vec<u8>, created: Revision, modified: Revision, version: i64) {
        let h = self.keys.entry(key).or_default();
        if h.is_live() {
            h.put(modified);
            return;
        }
        self.live += 1;
        let g = h.current();
        g.created = created;
        g.version = version;
        g.revs.reserve_exact(1);
        g.revs.push(modified);
    }

    /// Records the deletion of a live `key` at `rev`.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> Result<(), NotLive> {
        self.keys.get_mut(key).ok_or(NotLive)?.tombstone(rev)?;
        self.live -= 1;
        Ok(())
    }

    /// Number of keys live now.
    pub fn live_count(&self) -> usize {
        self.live
    }

    /// Whether `key` currently exists.
    pub fn is_live(&self, key: &[u8]) -> bool {
        self.keys.get(key).is_some_and(KeyHistory::is_live)
    }

    /// `key` as seen at store revision `at`.
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.keys.get(key)?.get(at)
    }

    fn bounds<'a>(key: &'a [u8], end: &'a RangeEnd) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        match end {
            RangeEnd::Single => (Bound::Included(key), Bound::Included(key)),
            RangeEnd::ToEnd => (Bound::Included(key), Bound::Unbounded),
            RangeEnd::Until(e) => (Bound::Included(key), Bound::Excluded(e.as_slice())),
        }
    }

    /// Keys in the range that exist at `at`, in key order, with their state
    /// there; at most `limit` of them (0: no limit). Also returns how many
    /// exist in all.
    pub fn range(&self, key: &[u8], end: &RangeEnd, at: i64, limit: usize) -> (Vec<KeyAt>, usize) {
        let mut walk = RangeWalk::new(limit);
        self.range_step(key, end, at, &mut walk, usize::MAX);
        (walk.rows, walk.total)
    }

    /// [`KeyIndex::range`] in steps, so that a walk over many keys need
    /// not hold the index for its whole length: visits at most `budget`
    /// keys of the range from where `walk` stopped, adding to it. Returns
    /// true when the range is done. The answer is the same as one
    /// [`KeyIndex::range`] as long as nothing at or below `at` changes
    /// between steps (puts and deletes only add newer revisions;
    /// compaction past `at` is the caller's to detect).
    pub fn range_step(
        &self,
        key: &[u8],
        end: &RangeEnd,
        at: i64,
        walk: &mut RangeWalk,
        budget: usize,
    ) -> bool {
        if let RangeEnd::Until(e) = end {
            if e.as_slice() <= key {
                return true;
            }
        }
        let (lo, hi) = Self::bounds(key, end);
        let lo = match &walk.after {
            Some(a) => Bound::Excluded(a.as_slice()),
            None => lo,
        };
        let mut keys = self.keys.range::<[u8], _>((lo, hi));
        for _ in 0..budget.max(1) {
            let Some((k, h)) = keys.next() else {
                walk.after = None;
                return true;
            };
            if let Some(state) = h.get(at) {
                walk.total += 1;
                if walk.limit == 0 || walk.rows.len() < walk.limit {
                    walk.rows.push(state);
                }
            }
            walk.after = Some(k.clone());
        }
        if keys.next().is_none() {
            walk.after = None;
            return true;
        }
        false
    }

    /// Keys in the range that are live now (for deletes), in key order.
    pub fn live_keys(&self, key: &[u8], end: &RangeEnd) -> Vec<Vec<u8>> {
        if let RangeEnd::Until(e) = end {
            if e.as_slice() <= key {
                return Vec::new();
            }
        }
        self.keys
            .range::<[u8], _>(Self::bounds(key, end))
            .filter(|(_, h)| h.is_live())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The revisions a compaction at `at` keeps as the visible state at
    /// `at`: per key, the newest revision at or below `at`, unless it is a
    /// tombstone. Everything else at or below `at` may be removed from the
    /// B+tree. Changes nothing.
    pub fn kept_at(&self, at: i64) -> HashSet<Revision> {
        self.keys.values().filter_map(|h| h.kept_at(at)).collect()
    }

    /// [`KeyIndex::kept_at`] in steps of at most `budget` keys, resuming
    /// after `after` (None: from the first key); returns the key to resume
    /// after, None when every key has been visited.
    pub fn kept_at_step(
        &self,
        at: i64,
        after: Option<&[u8]>,
        budget: usize,
        kept: &mut HashSet<Revision>,
    ) -> Option<Vec<u8>> {
        let lo = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut keys = self.keys.range::<[u8], _>((lo, Bound::Unbounded));
        let mut last = None;
        for _ in 0..budget.max(1) {
            let (k, h) = keys.next()?;
            kept.extend(h.kept_at(at));
            last = Some(k);
        }
        keys.next()?;
        last.cloned()
    }

    /// Forgets every revision that no read at `at` or later can see, and
    /// every key left with no history. Returns the revisions kept as the
    /// visible state at `at` (see [`KeyIndex::kept_at`]).
    pub fn compact(&mut self, at: i64) -> HashSet<Revision> {
        let kept = self.kept_at(at);
        self.keys.retain(|_, h| {
            h.compact(at);
            !h.is_empty()
        });
        kept
    }

    /// Number of keys with any history left.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// foo: put 2, put 4, delete 6, put 8, put 10, delete 12, put 14, put 16
    fn history() -> KeyIndex {
        let mut ix = KeyIndex::new();
        ix.put(b"foo", r(2));
        ix.put(b"foo", r(4));
        ix.tombstone(b"foo", r(6)).unwrap();
        ix.put(b"foo", r(8));
        ix.put(b"foo", r(10));
        ix.tombstone(b"foo", r(12)).unwrap();
        ix.put(b"foo", r(14));
        ix.put(b"foo", r(16));
        ix
    }

    #[test]
    fn get_sees_the_right_life_and_version() {
        let ix = history();
        let at = |rev| {
            ix.get(b"foo", rev)
                .map(|k| (k.modified.main, k.created.main, k.version))
        };
        assert_eq!(at(1), None);
        assert_eq!(at(2), Some((2, 2, 1)));
        assert_eq!(at(5), Some((4, 2, 2)));
        assert_eq!(at(6), None);
        assert_eq!(at(7), None);
        assert_eq!(at(9), Some((8, 8, 1)));
        assert_eq!(at(11), Some((10, 8, 2)));
        assert_eq!(at(13), None);
        assert_eq!(at(15), Some((14, 14, 1)));
        assert_eq!(at(100), Some((16, 14, 2)));
    }

    #[test]
    fn deleting_a_dead_key_is_refused() {
        let mut ix = history();
        ix.tombstone(b"foo", r(18)).unwrap();
        assert_eq!(ix.tombstone(b"foo", r(20)), Err(NotLive));
        assert_eq!(ix.tombstone(b"bar", r(20)), Err(NotLive));
        assert!(!ix.is_live(b"foo"));
    }

    #[test]
    fn the_live_count_follows_puts_deletes_restores_and_compactions() {
        let mut ix = history();
        assert_eq!(ix.live_count(), 1);
        ix.put(b"bar", r(18));
        ix.put(b"bar", r(19));
        assert_eq!(ix.live_count(), 2);
        ix.tombstone(b"foo", r(20)).unwrap();
        assert_eq!(ix.live_count(), 1);
        assert_eq!(ix.tombstone(b"foo", r(21)), Err(NotLive));
        assert_eq!(ix.live_count(), 1);
        ix.compact(21);
        assert_eq!(ix.live_count(), 1);
        ix.put(b"foo", r(22));
        ix.restore(b"baz".to_vec(), r(23), r(23), 1);
        ix.restore(b"baz".to_vec(), r(23), r(24), 2);
        assert_eq!(ix.live_count(), 3);
    }

    #[test]
    fn compaction_keeps_what_later_reads_see() {
        for c in 1..=17 {
            let full = history();
            let mut ix = history();
            let kept = ix.compact(c);
            for at in c..=20 {
                assert_eq!(
                    ix.get(b"foo", at),
                    full.get(b"foo", at),
                    "compacted at {c}, read at {at}"
                );
            }
            let expected: HashSet<Revision> = full
                .get(b"foo", c)
                .map(|k| k.modified)
                .into_iter()
                .collect();
            assert_eq!(kept, expected, "kept at {c}");
        }
    }

    #[test]
    fn a_restored_key_keeps_the_creation_and_version_of_its_record() {
        let mut ix = KeyIndex::new();
        // After a compaction the B+tree holds only foo's revision 10, which
        // was its third put since creation at revision 4.
        ix.restore(b"foo".to_vec(), r(4), r(10), 3);
        ix.restore(b"foo".to_vec(), r(4), r(12), 4);
        let k = ix.get(b"foo", 12).unwrap();
        assert_eq!((k.created.main, k.version), (4, 4));
        assert_eq!(ix.get(b"foo", 10).unwrap().version, 3);
    }

    #[test]
    fn a_fully_deleted_key_disappears_after_compaction() {
        let mut ix = KeyIndex::new();
        ix.put(b"a", r(1));
        ix.tombstone(b"a", r(2)).unwrap();
        ix.put(b"b", r(3));
        assert_eq!(ix.compact(2), HashSet::new());
        assert_eq!(ix.len(), 1);
        assert!(ix.get(b"a", 5).is_none());
    }

    #[test]
    fn walks_in_steps_answer_as_one_walk() {
        let mut ix = KeyIndex::new();
        for i in 0..50i64 {
            ix.put(format!("k{i:02}").as_bytes(), r(i + 1));
            if i % 7 == 0 {
                ix.tombstone(format!("k{i:02}").as_bytes(), r(100 + i))
                    .unwrap();
            }
        }
        for (key, end) in [
            (b"k".to_vec(), RangeEnd::ToEnd),
            (b"k10".to_vec(), RangeEnd::Until(b"k33".to_vec())),
            (b"k05".to_vec(), RangeEnd::Single),
            (b"z".to_vec(), RangeEnd::ToEnd),
        ] {
            for (at, limit) in [(30, 0), (200, 0), (200, 5), (120, 3)] {
                let whole = ix.range(&key, &end, at, limit);
                for budget in [1, 2, 7, 1000] {
                    let mut walk = RangeWalk::new(limit);
                    let mut steps = 0;
                    while !ix.range_step(&key, &end, at, &mut walk, budget) {
                        steps += 1;
                        assert!(steps < 100, "the walk never ends");
                    }
                    assert_eq!((walk.rows.clone(), walk.total), whole, "budget {budget}");
                }
            }
        }
        for at in [10, 60, 130] {
            let whole = ix.kept_at(at);
            let mut kept = HashSet::new();
            let mut after = ix.kept_at_step(at, None, 3, &mut kept);
            while let Some(a) = after {
                after = ix.kept_at_step(at, Some(&a), 3, &mut kept);
            }
            assert_eq!(kept, whole, "at {at}");
        }
    }

    #[test]
    fn ranges_respect_the_revision_and_the_limit() {
        let mut ix = KeyIndex::new();
        for (i, k) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            ix.put(*k, r(i as i64 + 1));
        }
        ix.tombstone(b"b", r(5)).unwrap();
        // Each key was put at its own revision: a=1, b=2, c=3, d=4.
        let keys = |v: (Vec<KeyAt>, usize)| {
            let name = |k: &KeyAt| vec![b"abcd"[k.modified.main as usize - 1]];
            (v.0.iter().map(name).collect::<Vec<_>>(), v.1)
        };
        assert_eq!(keys(ix.range(b"a", &RangeEnd::ToEnd, 5, 0)).1, 3);
        assert_eq!(
            keys(ix.range(b"a", &RangeEnd::ToEnd, 4, 2)),
            (vec![b"a".to_vec(), b"b".to_vec()], 4)
        );
        assert_eq!(
            keys(ix.range(b"b", &RangeEnd::Until(b"d".to_vec()), 5, 0)),
            (vec![b"c".to_vec()], 1)
        );
        assert_eq!(keys(ix.range(b"c", &RangeEnd::Single, 2, 0)).1, 0);
        assert_eq!(
            keys(ix.range(b"c", &RangeEnd::Until(b"a".to_vec()), 5, 0)).1,
            0
        );
        assert_eq!(
            ix.live_keys(b"a", &RangeEnd::ToEnd),
            vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        assert_eq!(RangeEnd::from_etcd(b"\0"), RangeEnd::ToEnd);
        assert_eq!(RangeEnd::from_etcd(b""), RangeEnd::Single);
    }
}
