//! The in-memory, mutable form of a branch or leaf page.
//!
//! A write transaction never changes a page in the mmap. The first time it
//! needs to change a page it copies the page into a [`Node`] (materialises
//! it), and from then on works on the copy. At commit every node is written
//! to a newly allocated page run. This split between the read-only
//! [`PageView`](crate::page::PageView) and the owned `Node` is the heart of
//! copy-on-write.
//!
//! A node keeps its key and value bytes in one buffer (`buf`) and a sorted
//! list of items pointing into it, so materialising a page is one copy of
//! the page and an index, not an allocation per key.

use crate::error::Result;
use crate::page::{
    compare_keys, seal_run, PageHeader, PageId, PageView, BRANCH_ELEMENT_SIZE, FLAG_BRANCH,
    FLAG_LEAF, LEAF_ELEMENT_SIZE, PAGE_HEADER_SIZE,
};

/// Where a child (or a root) lives: still on a page of the mmap, or already
/// materialised as node number `n` of the transaction's arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRef {
    Page(PageId),
    Node(usize),
}

#[derive(Debug, Clone, Copy)]
struct Item {
    off: usize,
    klen: u32,
    vlen: u32,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub leaf: bool,
    buf: Vec<u8>,
    items: Vec<Item>,
    /// Branch only: the child under each item's separator key.
    children: Vec<NodeRef>,
    /// Bytes of keys and values referenced by `items` (the rest of `buf` is
    /// garbage left by overwrites and removals).
    live: usize,
}

impl Node {
    pub fn new_leaf() -> Node {
        Node {
            leaf: true,
            buf: Vec::new(),
            items: Vec::new(),
            children: Vec::new(),
            live: 0,
        }
    }

    pub fn new_branch() -> Node {
        Node {
            leaf: false,
            ..Node::new_leaf()
        }
    }

    /// Copies a validated branch or leaf page into a node.
    pub fn from_page(page: &PageView<'_>) -> Result<Node> {
        let leaf = page.is_leaf();
        let mut node = Node {
            leaf,
            buf: page.data.to_vec(),
            items: Vec::with_capacity(page.count + 1),
            children: Vec::new(),
            live: 0,
        };
        let base = page.data.as_ptr() as usize;
        for i in 0..page.count {
            let key = page.key(i)?;
            let off = key.as_ptr() as usize - base;
            let vlen = if leaf {
                page.value(i)?.len() as u32
            } else {
                node.children.push(NodeRef::Page(page.child(i)?));
                0
            };
            node.items.push(Item {
                off,
                klen: key.len() as u32,
                vlen,
            });
            node.live += key.len() + vlen as usize;
        }
        Ok(node)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn key(&self, i: usize) -> &[u8] {
        let it = self.items[i];
        &self.buf[it.off..it.off + it.klen as usize]
    }

    pub fn value(&self, i: usize) -> &[u8] {
        let it = self.items[i];
        let start = it.off + it.klen as usize;
        &self.buf[start..start + it.vlen as usize]
    }

    pub fn child(&self, i: usize) -> NodeRef {
        self.children[i]
    }

    pub fn set_child(&mut self, i: usize, r: NodeRef) {
        self.children[i] = r;
    }

    fn element_size(&self) -> usize {
        if self.leaf {
            LEAF_ELEMENT_SIZE
        } else {
            BRANCH_ELEMENT_SIZE
        }
    }

    /// Bytes this node takes when written out.
    pub fn size(&self) -> usize {
        PAGE_HEADER_SIZE + self.items.len() * self.element_size() + self.live
    }

    fn item_size(&self, i: usize) -> usize {
        let it = self.items[i];
        self.element_size() + it.klen as usize + it.vlen as usize
    }

    /// Index of the first key >= `key`, and whether it is equal.
    pub fn lower_bound(&self, key: &[u8]) -> (usize, bool) {
        match self
            .items
            .binary_search_by(|it| compare_keys(&self.buf[it.off..it.off + it.klen as usize], key))
        {
            Ok(i) => (i, true),
            Err(i) => (i, false),
        }
    }

    /// Branch: the child whose subtree may hold `key`.
    pub fn route(&self, key: &[u8]) -> usize {
        let (i, exact) = self.lower_bound(key);
        if exact {
            i
        } else {
            i.saturating_sub(1)
        }
    }

    fn push_bytes(&mut self, key: &[u8], value: &[u8]) -> Item {
        let off = self.buf.len();
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(value);
        self.live += key.len() + value.len();
        Item {
            off,
            klen: key.len() as u32,
            vlen: value.len() as u32,
        }
    }

    /// Leaf: inserts `key` at position `i` (from `lower_bound`), or
    /// replaces its value when `replace` is set.
    pub fn leaf_put(&mut self, i: usize, replace: bool, key: &[u8], value: &[u8]) {
        if replace {
            let old = self.items[i];
            self.live -= old.klen as usize + old.vlen as usize;
            self.items[i] = self.push_bytes(key, value);
        } else {
            let it = self.push_bytes(key, value);
            self.items.insert(i, it);
        }
        self.maybe_compact();
    }

    /// Branch: inserts a separator and child at position `i`.
    pub fn branch_insert(&mut self, i: usize, key: &[u8], child: NodeRef) {
        let it = self.push_bytes(key, &[]);
        self.items.insert(i, it);
        self.children.insert(i, child);
    }

    /// Branch: replaces separator `i`.
    pub fn set_key(&mut self, i: usize, key: &[u8]) {
        let old = self.items[i];
        self.live -= old.klen as usize;
        let it = self.push_bytes(key, &[]);
        self.items[i] = it;
    }

    pub fn remove(&mut self, i: usize) {
        let old = self.items.remove(i);
        self.live -= old.klen as usize + old.vlen as usize;
        if !self.leaf {
            self.children.remove(i);
        }
        self.maybe_compact();
    }

    /// Rewrites `buf` without garbage once garbage dominates it.
    fn maybe_compact(&mut self) {
        if self.buf.len() > 2 * self.live + 4096 {
            let mut buf = Vec::with_capacity(self.live);
            for it in &mut self.items {
                let len = it.klen as usize + it.vlen as usize;
                let off = buf.len();
                buf.extend_from_slice(&self.buf[it.off..it.off + len]);
                it.off = off;
            }
            self.buf = buf;
        }
    }

    /// Moves every item of `right` (whose keys all sort after ours) to the end
    /// of this node. `right_bound` is the parent's separator for `right`,
    /// which the merged branch keeps as the separator of `right`'s first
    /// child (it bounds that child from below and lies above every key
    /// already here).
    pub fn append_from(&mut self, right: &Node, right_bound: &[u8]) {
        for i in 0..right.len() {
            let key = if i == 0 && !self.leaf {
                right_bound
            } else {
                right.key(i)
            };
            let it = self.push_bytes(key, right.value(i));
            self.items.push(it);
        }
        self.children.extend_from_slice(&right.children);
    }

    fn take_range(&self, from: usize, to: usize) -> Node {
        let mut n = Node {
            leaf: self.leaf,
            ..Node::new_leaf()
        };
        for i in from..to {
            let it = n.push_bytes(self.key(i), self.value(i));
            n.items.push(it);
        }
        if !self.leaf {
            n.children.extend_from_slice(&self.children[from..to]);
        }
        n
    }

    /// Splits a node larger than a page into parts that each fit one page
    /// where they can. This node keeps the first part; the others are
    /// returned in key order. A leaf part may hold a single item larger than
    /// a page (it gets an overflow run). A branch part always keeps at least
    /// two children, so splitting a branch of huge separators shrinks it
    /// and a root split always ends (a branch of fewer than four huge keys
    /// simply spans an overflow run). When `append` is set (the change was
    /// at the end, as in a sequential load), parts are filled as full as
    /// possible; otherwise the node is cut in halves by size, leaving room
    /// on both sides for random inserts.
    pub fn split(&mut self, page_size: usize, append: bool) -> Vec<Node> {
        let cap = page_size - PAGE_HEADER_SIZE;
        let n = self.items.len();
        let min_items = if self.leaf { 1 } else { 2 };
        if n < 2 * min_items || self.size() <= page_size {
            return Vec::new();
        }
        let total = self.size() - PAGE_HEADER_SIZE;
        let mut cuts = Vec::new();
        if !append && total <= 2 * cap {
            let mut acc = 0;
            let mut cut = n - min_items;
            for i in 0..n {
                acc += self.item_size(i);
                if acc >= total / 2 {
                    cut = (i + 1).clamp(min_items, n - min_items);
                    break;
                }
            }
            let left: usize = (0..cut).map(|i| self.item_size(i)).sum();
            if left <= cap && total - left <= cap {
                cuts.push(cut);
            }
        }
        if cuts.is_empty() {
            // Greedy fill: start a new part whenever the next item would not
            // fit, as long as both sides keep their minimum.
            let mut acc = 0;
            let mut last = 0;
            for i in 0..n {
                let s = self.item_size(i);
                if acc + s > cap && i - last >= min_items && n - i >= min_items {
                    cuts.push(i);
                    last = i;
                    acc = 0;
                }
                acc += s;
            }
        }
        if cuts.is_empty() {
            return Vec::new();
        }
        let mut parts = Vec::with_capacity(cuts.len());
        for (k, &from) in cuts.iter().enumerate() {
            let to = cuts.get(k + 1).copied().unwrap_or(n);
            parts.push(self.take_range(from, to));
        }
        *self = self.take_range(0, cuts[0]);
        parts
    }

    /// Writes this node as page `id` into a sealed buffer of whole pages.
    /// Every child must already be a page. Returns the buffer.
    pub fn serialize(&self, id: PageId, page_size: usize) -> Vec<u8> {
        let size = self.size();
        let pages = size.div_ceil(page_size).max(1);
        let mut out = vec![0u8; pages * page_size];
        PageHeader {
            id,
            flags: if self.leaf { FLAG_LEAF } else { FLAG_BRANCH },
            count: self.items.len() as u32,
            overflow: (pages - 1) as u32,
            checksum: 0,
        }
        .write(&mut out);
        let es = self.element_size();
        let mut data = PAGE_HEADER_SIZE + self.items.len() * es;
        for i in 0..self.items.len() {
            let key = self.key(i);
            let e = PAGE_HEADER_SIZE + i * es;
            out[e..e + 4].copy_from_slice(&(data as u32).to_le_bytes());
            out[e + 4..e + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
            out[data..data + key.len()].copy_from_slice(key);
            data += key.len();
            if self.leaf {
                let value = self.value(i);
                out[e + 8..e + 12].copy_from_slice(&(value.len() as u32).to_le_bytes());
                out[data..data + value.len()].copy_from_slice(value);
                data += value.len();
            } else {
                let pid = match self.children[i] {
                    NodeRef::Page(p) => p,
                    NodeRef::Node(_) => unreachable!("children are spilled before their parent"),
                };
                out[e + 8..e + 16].copy_from_slice(&pid.to_le_bytes());
            }
        }
        seal_run(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf_with(n: usize, vlen: usize) -> Node {
        let mut node = Node::new_leaf();
        for i in 0..n {
            let k = format!("key{i:05}");
            let (idx, found) = node.lower_bound(k.as_bytes());
            node.leaf_put(idx, found, k.as_bytes(), &vec![b'v'; vlen]);
        }
        node
    }

    #[test]
    fn split_halves_fit_pages_and_keep_order() {
        let mut node = leaf_with(100, 60);
        let parts = node.split(4096, false);
        assert!(!parts.is_empty());
        assert!(node.size() <= 4096);
        let mut keys: Vec<Vec<u8>> = (0..node.len()).map(|i| node.key(i).to_vec()).collect();
        for p in &parts {
            assert!(p.size() <= 4096);
            keys.extend((0..p.len()).map(|i| p.key(i).to_vec()));
        }
        assert_eq!(keys.len(), 100);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn split_in_append_mode_fills_the_left_page() {
        let mut node = leaf_with(60, 60);
        let parts = node.split(4096, true);
        assert_eq!(parts.len(), 1);
        assert!(
            node.size() > 4096 - 100,
            "left part is nearly full: {}",
            node.size()
        );
    }

    #[test]
    fn huge_value_gets_its_own_run() {
        let mut node = leaf_with(10, 10);
        let (i, found) = node.lower_bound(b"key00004x");
        node.leaf_put(i, found, b"key00004x", &vec![1u8; 20_000]);
        let parts = node.split(4096, false);
        let all: Vec<&Node> = std::iter::once(&node).chain(parts.iter()).collect();
        for p in &all {
            assert!(p.size() <= 4096 || p.len() == 1);
        }
        assert!(all
            .iter()
            .any(|p| p.len() == 1 && p.value(0).len() == 20_000));
    }

    #[test]
    fn branches_of_huge_keys_keep_two_children_per_part() {
        let mut node = Node::new_branch();
        for i in 0..5u8 {
            node.branch_insert(
                i as usize,
                &vec![i; 60_000],
                NodeRef::Page(10 + u64::from(i)),
            );
        }
        let parts = node.split(4096, false);
        assert!(node.len() >= 2 && parts.iter().all(|p| p.len() >= 2));
        let mut small = Node::new_branch();
        for i in 0..3u8 {
            small.branch_insert(i as usize, &vec![i; 60_000], NodeRef::Page(10));
        }
        assert!(
            small.split(4096, false).is_empty(),
            "three children cannot split into two-child parts"
        );
    }

    #[test]
    fn serialized_node_reads_back() {
        let node = leaf_with(20, 30);
        let buf = node.serialize(7, 4096);
        let view = PageView::open(&[vec![0u8; 7 * 4096], buf].concat(), 4096, 8, 7)
            .map(|v| {
                (
                    v.count,
                    v.key(3).map(|k| k.to_vec()),
                    v.value(3).map(|v| v.len()),
                )
            })
            .expect("open");
        assert_eq!(view.0, 20);
        assert_eq!(view.1.expect("key"), b"key00003");
        assert_eq!(view.2.expect("value"), 30);
    }
}
