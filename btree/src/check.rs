//! Walking the whole file: the integrity check and the statistics.
//!
//! One walk serves both. It visits every page reachable from the meta (the
//! bucket directory, every bucket tree, the freelist), verifies each run's
//! checksum, header, key order and key bounds, marks every page it meets,
//! and finally accounts for every page below the high-water mark. It never
//! panics on a corrupt file: each problem is recorded with its page and the
//! walk carries on with what it can still trust.

use std::fmt;

use crate::cursor::MAX_DEPTH;
use crate::db::Db;
use crate::error::Error;
use crate::page::{
    decode_freelist, Meta, PageId, PageView, BRANCH_ELEMENT_SIZE, LEAF_ELEMENT_SIZE,
    PAGE_HEADER_SIZE,
};
use crate::tx::BucketRecord;

/// What a page is used for, as found by the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// Not reached and not listed free (a problem, unless beyond high water).
    Unaccounted,
    Meta,
    Freelist,
    /// A branch page (first page of its run).
    Branch,
    /// A leaf page (first page of its run).
    Leaf,
    /// A continuation page of a branch, leaf or freelist run.
    Overflow,
    /// Listed in the freelist.
    Free,
}

impl PageKind {
    /// One character for a page map.
    pub fn symbol(self) -> char {
        match self {
            PageKind::Unaccounted => '?',
            PageKind::Meta => 'M',
            PageKind::Freelist => 'F',
            PageKind::Branch => 'B',
            PageKind::Leaf => 'L',
            PageKind::Overflow => 'o',
            PageKind::Free => '.',
        }
    }
}

/// One inconsistency, with the page it was found on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub page: PageId,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {}: {}", self.page, self.message)
    }
}

/// The result of [`Db::check`].
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    /// Observations that are not inconsistencies (for example a torn
    /// inactive meta page, which a crash during a commit leaves behind).
    pub notes: Vec<String>,
    pub pages_checked: u64,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        write!(
            f,
            "{} pages checked, {} problems",
            self.pages_checked,
            self.problems.len()
        )
    }
}

/// Shape and fill of one bucket's tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketStats {
    pub name: Vec<u8>,
    pub keys: u64,
    /// Levels from root to leaf (0 for an empty bucket).
    pub depth: u32,
    pub branch_pages: u64,
    pub leaf_pages: u64,
    pub overflow_pages: u64,
    /// Bytes of headers, elements, keys and values.
    pub used_bytes: u64,
    /// Bytes of the pages holding them.
    pub allocated_bytes: u64,
}

impl BucketStats {
    /// Used bytes over allocated bytes (1.0 for an empty bucket).
    pub fn fill_ratio(&self) -> f64 {
        if self.allocated_bytes == 0 {
            1.0
        } else {
            self.used_bytes as f64 / self.allocated_bytes as f64
        }
    }
}

/// One meta slot as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaSlot {
    pub slot: u64,
    /// The decoded meta, or why it is invalid.
    pub meta: Result<Meta, String>,
    /// Whether this is the meta a reopen would start from (the valid one
    /// with the highest txid).
    pub active: bool,
}

/// The result of [`Db::stats`].
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub page_size: usize,
    pub file_size: u64,
    pub high_water: u64,
    /// Bytes below the high-water mark.
    pub used_size: u64,
    pub metas: Vec<MetaSlot>,
    pub branch_pages: u64,
    pub leaf_pages: u64,
    pub overflow_pages: u64,
    pub freelist_pages: u64,
    pub free_pages: u64,
    /// Length of the longest run of consecutive free pages.
    pub largest_free_run: u64,
    pub buckets: Vec<BucketStats>,
    /// What every page below the high-water mark is, by page id.
    pub page_kinds: Vec<PageKind>,
}

/// The message of an error without the page prefix (the problem names it).
fn reason(e: Error) -> String {
    match e {
        Error::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    }
}

struct Walk<'a> {
    map: &'a [u8],
    page_size: usize,
    high_water: u64,
    kinds: Vec<PageKind>,
    problems: Vec<Problem>,
}

struct Pending {
    id: PageId,
    depth: u32,
    lo: Option<Vec<u8>>,
    hi: Option<Vec<u8>>,
}

impl<'a> Walk<'a> {
    fn problem(&mut self, page: PageId, message: impl Into<String>) {
        self.problems.push(Problem {
            page,
            message: message.into(),
        });
    }

    /// Marks a run; returns false if any page of it was already reached.
    fn mark(&mut self, id: PageId, pages: u64, kind: PageKind) -> bool {
        let mut fresh = true;
        for p in id..id + pages {
            let k = if p == id { kind } else { PageKind::Overflow };
            match self.kinds.get(p as usize).copied() {
                None => {
                    self.problem(
                        p,
                        format!("page is beyond the high-water mark {}", self.high_water),
                    );
                    fresh = false;
                }
                Some(PageKind::Unaccounted) => self.kinds[p as usize] = k,
                Some(prev) => {
                    self.problem(
                        p,
                        format!("page reachable twice (as {prev:?} and as {k:?})"),
                    );
                    fresh = false;
                }
            }
        }
        fresh
    }

    fn open(&mut self, id: PageId) -> Option<PageView<'a>> {
        match PageView::open(self.map, self.page_size, self.high_water, id) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(id, reason(e));
                None
            }
        }
    }

    /// Walks one tree. Calls `on_entry` for each leaf entry of a sound page.
    fn tree(
        &mut self,
        name: &[u8],
        root: PageId,
        mut on_entry: impl FnMut(&mut Self, PageId, &[u8], &'a [u8]),
    ) -> BucketStats {
        let mut st = BucketStats {
            name: name.to_vec(),
            ..BucketStats::default()
        };
        if root == 0 {
            return st;
        }
        let mut leaf_depth: Option<u32> = None;
        let mut stack = vec![Pending {
            id: root,
            depth: 1,
            lo: None,
            hi: None,
        }];
        while let Some(p) = stack.pop() {
            if p.depth as usize > MAX_DEPTH {
                self.problem(p.id, format!("tree deeper than {MAX_DEPTH} levels"));
                continue;
            }
            let Some(v) = self.open(p.id) else { continue };
            let pages = v.pages(self.page_size);
            let kind = if v.is_leaf() {
                PageKind::Leaf
            } else if v.is_branch() {
                PageKind::Branch
            } else {
                self.problem(
                    p.id,
                    format!("expected a branch or leaf page, found type {:#x}", v.flags),
                );
                continue;
            };
            if !self.mark(p.id, pages, kind) {
                continue;
            }
            if let Err(e) = v.verify_checksum() {
                self.problem(p.id, reason(e));
                continue;
            }
            let es = if v.is_leaf() {
                LEAF_ELEMENT_SIZE
            } else {
                BRANCH_ELEMENT_SIZE
            };
            let mut used = PAGE_HEADER_SIZE + v.count * es;
            let mut prev: Option<&[u8]> = None;
            let mut sound = true;
            let mut keys = Vec::with_capacity(v.count);
            for i in 0..v.count {
                let key = match v.key(i) {
                    Ok(k) => k,
                    Err(e) => {
                        self.problem(p.id, reason(e));
                        sound = false;
                        break;
                    }
                };
                if prev.is_some_and(|pk| pk >= key) {
                    self.problem(p.id, format!("keys out of order at element {i}"));
                    sound = false;
                }
                if p.lo.as_deref().is_some_and(|lo| key < lo)
                    || p.hi.as_deref().is_some_and(|hi| key >= hi)
                {
                    self.problem(
                        p.id,
                        format!("key at element {i} lies outside the range its parent gives"),
                    );
                    sound = false;
                }
                prev = Some(key);
                used += key.len();
                keys.push(key);
            }
            if !sound {
                continue;
            }
            if v.is_leaf() {
                match leaf_depth {
                    None => leaf_depth = Some(p.depth),
                    Some(d) if d != p.depth => self.problem(
                        p.id,
                        format!("leaf at depth {} but other leaves at depth {d}", p.depth),
                    ),
                    Some(_) => {}
                }
                for (i, key) in keys.iter().enumerate() {
                    match v.value(i) {
                        Ok(val) => {
                            used += val.len();
                            on_entry(self, p.id, key, val);
                        }
                        Err(e) => self.problem(p.id, reason(e)),
                    }
                }
                st.keys += v.count as u64;
                st.leaf_pages += 1;
            } else {
                if v.count == 0 {
                    self.problem(p.id, "branch page with no children");
                }
                for i in (0..v.count).rev() {
                    match v.child(i) {
                        Ok(child) => stack.push(Pending {
                            id: child,
                            depth: p.depth + 1,
                            lo: Some(keys[i].to_vec()),
                            hi: if i + 1 < v.count {
                                Some(keys[i + 1].to_vec())
                            } else {
                                p.hi.clone()
                            },
                        }),
                        Err(e) => self.problem(p.id, reason(e)),
                    }
                }
                st.branch_pages += 1;
            }
            st.overflow_pages += pages - 1;
            st.used_bytes += used as u64;
            st.allocated_bytes += pages * self.page_size as u64;
        }
        st.depth = leaf_depth.unwrap_or(0);
        st
    }
}

/// Walks the snapshot and returns (stats, problems).
fn walk(db: &Db) -> (Stats, Vec<Problem>, Vec<String>) {
    // The freelist run of the latest commit can be reused once a later
    // commit is durable, without waiting for readers; hold the writer lock
    // while reading it so it cannot change underneath.
    let writer = db.shared.writer.lock().unwrap_or_else(|e| e.into_inner());
    let txn = db.begin_read();
    let snap = txn.snapshot();
    let ps = db.page_size();
    let meta = snap.meta;
    let map: &[u8] = &snap.map;
    let mut w = Walk {
        map,
        page_size: ps,
        high_water: meta.high_water,
        kinds: vec![PageKind::Unaccounted; meta.high_water as usize],
        problems: Vec::new(),
    };
    let mut notes = Vec::new();
    let mut metas = Vec::new();
    for slot in 0..2u64 {
        w.mark(slot, 1, PageKind::Meta);
        let decoded = map
            .get(slot as usize * ps..(slot as usize + 1) * ps)
            .ok_or_else(|| "beyond the end of the file".to_string())
            .and_then(|page| Meta::decode(page).map_err(|e| e.to_string()));
        if let Err(e) = &decoded {
            notes.push(format!(
                "meta page {slot} is not valid ({e}); the other one is in use"
            ));
        }
        metas.push(MetaSlot {
            slot,
            active: false,
            meta: decoded,
        });
    }
    // The meta a reopen would start from: the valid one with the highest txid.
    let newest = metas
        .iter()
        .filter_map(|m| m.meta.as_ref().ok().map(|meta| (meta.txid, m.slot)))
        .max()
        .map(|(_, slot)| slot);
    for m in &mut metas {
        m.active = Some(m.slot) == newest;
    }

    // Freelist first, so pages both free and reachable are reported on the
    // tree page that reaches them.
    let mut free_ids = Vec::new();
    let mut freelist_pages = 0;
    if let Some(v) = w.open(meta.freelist) {
        freelist_pages = v.pages(ps);
        if w.mark(meta.freelist, freelist_pages, PageKind::Freelist) {
            if let Err(e) = v.verify_checksum() {
                w.problem(meta.freelist, reason(e));
            }
            match decode_freelist(&v) {
                Ok(ids) => free_ids = ids,
                Err(e) => w.problem(meta.freelist, reason(e)),
            }
        }
    }
    drop(writer);
    for &id in &free_ids {
        match w.kinds.get(id as usize).copied() {
            None => w.problem(
                id,
                format!(
                    "freelist names a page beyond the high-water mark {}",
                    meta.high_water
                ),
            ),
            Some(PageKind::Unaccounted) => w.kinds[id as usize] = PageKind::Free,
            Some(PageKind::Free) => w.problem(id, "page listed twice in the freelist"),
            Some(other) => w.problem(
                id,
                format!("page is in the freelist but in use as {other:?}"),
            ),
        }
    }

    let mut records = Vec::new();
    let mut dir_stats =
        w.tree(
            b"",
            meta.directory,
            |w, page, name, value| match BucketRecord::decode(value, page) {
                Ok(rec) => records.push((name.to_vec(), rec)),
                Err(e) => w.problem(page, reason(e)),
            },
        );
    dir_stats.name = b"(directory)".to_vec();
    let mut buckets = Vec::new();
    for (name, rec) in records {
        let st = w.tree(&name, rec.root, |_, _, _, _| {});
        if st.keys != rec.count {
            w.problem(
                rec.root,
                format!(
                    "bucket {:?} records {} keys but holds {}",
                    String::from_utf8_lossy(&name),
                    rec.count,
                    st.keys
                ),
            );
        }
        buckets.push(st);
    }
    for id in 2..meta.high_water {
        if w.kinds[id as usize] == PageKind::Unaccounted {
            w.problem(id, "page is neither reachable nor free");
        }
    }

    let mut largest_free_run = 0;
    let mut run = 0;
    for k in &w.kinds {
        run = if *k == PageKind::Free { run + 1 } else { 0 };
        largest_free_run = largest_free_run.max(run);
    }
    let all = buckets.iter().chain(std::iter::once(&dir_stats));
    let stats = Stats {
        page_size: ps,
        file_size: map.len() as u64,
        high_water: meta.high_water,
        used_size: meta.high_water * ps as u64,
        metas,
        branch_pages: all.clone().map(|b| b.branch_pages).sum(),
        leaf_pages: all.clone().map(|b| b.leaf_pages).sum(),
        overflow_pages: all.map(|b| b.overflow_pages).sum::<u64>()
            + freelist_pages.saturating_sub(1),
        freelist_pages,
        free_pages: free_ids.len() as u64,
        largest_free_run,
        buckets,
        page_kinds: w.kinds,
    };
    (stats, w.problems, notes)
}

impl Db {
    /// Checks the whole file (as of the latest commit) and reports every
    /// inconsistency found. Never panics on a corrupt file. Waits for an
    /// open write transaction to end (do not call it from the thread that
    /// holds one), but writers may commit while the walk runs.
    pub fn check(&self) -> CheckReport {
        let (stats, problems, notes) = walk(self);
        CheckReport {
            problems,
            notes,
            pages_checked: stats.high_water,
        }
    }

    /// Pages by type, free space, and each bucket's shape and fill. Waits
    /// for an open write transaction to end, as [`Db::check`] does.
    pub fn stats(&self) -> Stats {
        walk(self).0
    }
}
