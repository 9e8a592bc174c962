//! Changing a tree inside a write transaction: put, delete, split, merge,
//! and spilling the changed nodes to new pages at commit.
//!
//! The tree is always valid between calls: a node that grows past a page is
//! split at once and the separator goes into its parent; a node that
//! shrinks below a quarter page is merged into a sibling when the two fit
//! one page. Every node on the path to a change is materialised (copied
//! out of the mmap) first, and the page it came from is recorded as freed.

use crate::cursor::{too_deep, TreeReader, MAX_DEPTH};
use crate::error::Result;
use crate::node::{Node, NodeRef};
use crate::page::{PageId, PageView, PAGE_HEADER_SIZE};

/// A write transaction's arena of materialised nodes.
pub struct Arena {
    pub page_size: usize,
    pub high_water: u64,
    pub nodes: Vec<Node>,
    /// Page runs (first id, page count) this transaction stopped using.
    pub freed: Vec<(PageId, u64)>,
}

impl Arena {
    pub fn new(page_size: usize, high_water: u64) -> Arena {
        Arena {
            page_size,
            high_water,
            nodes: Vec::new(),
            freed: Vec::new(),
        }
    }

    pub fn reader<'a>(&'a self, map: &'a [u8]) -> TreeReader<'a> {
        TreeReader {
            map,
            page_size: self.page_size,
            high_water: self.high_water,
            nodes: &self.nodes,
        }
    }

    /// Returns the arena index of `r`, copying it out of the mmap first if
    /// it is still a page.
    fn materialize(&mut self, map: &[u8], r: NodeRef) -> Result<usize> {
        match r {
            NodeRef::Node(i) => Ok(i),
            NodeRef::Page(id) => {
                let page =
                    PageView::open(map, self.page_size, self.high_water, id)?.expect_node()?;
                let node = Node::from_page(&page)?;
                self.freed.push((id, page.pages(self.page_size)));
                self.nodes.push(node);
                Ok(self.nodes.len() - 1)
            }
        }
    }

    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Materialises the path from `root` to the leaf that holds (or would
    /// hold) `key`. Returns the (branch, child index) pairs and the leaf.
    fn path_to(
        &mut self,
        map: &[u8],
        root: &mut NodeRef,
        key: &[u8],
    ) -> Result<(Vec<(usize, usize)>, usize)> {
        let mut cur = self.materialize(map, *root)?;
        *root = NodeRef::Node(cur);
        let mut path = Vec::new();
        while !self.nodes[cur].leaf {
            if path.len() >= MAX_DEPTH {
                return Err(too_deep(*root));
            }
            if self.nodes[cur].len() == 0 {
                return Err(crate::Error::Corrupt {
                    page: 0,
                    reason: "branch with no children".into(),
                });
            }
            let idx = self.nodes[cur].route(key);
            let child = self.materialize(map, self.nodes[cur].child(idx))?;
            self.nodes[cur].set_child(idx, NodeRef::Node(child));
            path.push((cur, idx));
            cur = child;
        }
        Ok((path, cur))
    }

    /// Inserts or replaces `key`. Returns true if the key is new.
    pub fn put(
        &mut self,
        map: &[u8],
        root: &mut Option<NodeRef>,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool> {
        let mut r = match *root {
            Some(r) => r,
            None => NodeRef::Node(self.push(Node::new_leaf())),
        };
        let (mut path, leaf) = self.path_to(map, &mut r, key)?;
        *root = Some(r);
        let node = &mut self.nodes[leaf];
        let (i, found) = node.lower_bound(key);
        node.leaf_put(i, found, key, value);
        let append = i + 1 == node.len();
        if i == 0 && !found {
            self.lower_first_separators(&path, key);
        }
        self.split_upwards(root, &mut path, leaf, append);
        Ok(!found)
    }

    /// Keeps the invariant "a branch's separator `i` is <= every key under
    /// child `i`" for the first child too: a key inserted before every
    /// other key of the leftmost path lowers the first separators above it.
    /// (Under any other child the router already guarantees it.)
    fn lower_first_separators(&mut self, path: &[(usize, usize)], key: &[u8]) {
        for &(parent, idx) in path.iter().rev() {
            if idx != 0 || self.nodes[parent].key(0) <= key {
                return;
            }
            self.nodes[parent].set_key(0, key);
        }
    }

    /// Splits `node` while it is larger than a page, pushing separators up
    /// the path, and grows a new root when the root splits.
    fn split_upwards(
        &mut self,
        root: &mut Option<NodeRef>,
        path: &mut Vec<(usize, usize)>,
        mut node: usize,
        mut append: bool,
    ) {
        loop {
            let parts = self.nodes[node].split(self.page_size, append);
            if parts.is_empty() {
                return;
            }
            let firsts: Vec<Vec<u8>> = parts.iter().map(|p| p.key(0).to_vec()).collect();
            let ids: Vec<usize> = parts.into_iter().map(|p| self.push(p)).collect();
            match path.pop() {
                Some((parent, idx)) => {
                    let p = &mut self.nodes[parent];
                    for (k, (first, id)) in firsts.iter().zip(&ids).enumerate() {
                        p.branch_insert(idx + 1 + k, first, NodeRef::Node(*id));
                    }
                    append = idx + ids.len() + 1 == p.len();
                    node = parent;
                }
                None => {
                    let mut new_root = Node::new_branch();
                    let first = self.nodes[node].key(0).to_vec();
                    new_root.branch_insert(0, &first, NodeRef::Node(node));
                    for (k, (first, id)) in firsts.iter().zip(&ids).enumerate() {
                        new_root.branch_insert(k + 1, first, NodeRef::Node(*id));
                    }
                    let id = self.push(new_root);
                    *root = Some(NodeRef::Node(id));
                    node = id;
                    append = false;
                }
            }
        }
    }

    /// Removes `key`. Returns false (and changes nothing) if it is absent.
    pub fn delete(&mut self, map: &[u8], root: &mut Option<NodeRef>, key: &[u8]) -> Result<bool> {
        let Some(mut r) = *root else { return Ok(false) };
        if self.reader(map).get(Some(r), key)?.is_none() {
            return Ok(false);
        }
        let (mut path, leaf) = self.path_to(map, &mut r, key)?;
        *root = Some(r);
        let (i, found) = self.nodes[leaf].lower_bound(key);
        if !found {
            return Ok(false);
        }
        self.nodes[leaf].remove(i);
        self.rebalance(map, &mut path, leaf)?;
        self.collapse_root(root);
        Ok(true)
    }

    /// After a removal from `node`: drops it from its parent when empty,
    /// merges it with a sibling when it is under a quarter page and the two
    /// fit one page, and carries on upwards while parents shrink.
    fn rebalance(
        &mut self,
        map: &[u8],
        path: &mut Vec<(usize, usize)>,
        mut node: usize,
    ) -> Result<()> {
        let threshold = self.page_size / 4;
        while let Some((parent, idx)) = path.pop() {
            if self.nodes[node].len() == 0 {
                self.nodes[parent].remove(idx);
                node = parent;
                continue;
            }
            if self.nodes[node].size() >= threshold || self.nodes[parent].len() < 2 {
                return Ok(());
            }
            let (left_idx, right_idx) = if idx > 0 {
                (idx - 1, idx)
            } else {
                (idx, idx + 1)
            };
            let left_ref = self.nodes[parent].child(left_idx);
            let right_ref = self.nodes[parent].child(right_idx);
            let reader = self.reader(map);
            let (lsize, rsize) = (
                node_size(&reader, left_ref)?,
                node_size(&reader, right_ref)?,
            );
            // The merged branch may carry the parent's separator instead of
            // the right node's first key; allow for it being longer.
            let bound = self.nodes[parent].key(right_idx).to_vec();
            if lsize + rsize - PAGE_HEADER_SIZE + bound.len() > self.page_size {
                return Ok(());
            }
            let left = self.materialize(map, left_ref)?;
            let right = self.materialize(map, right_ref)?;
            let right_node = std::mem::replace(&mut self.nodes[right], Node::new_leaf());
            self.nodes[left].append_from(&right_node, &bound);
            let p = &mut self.nodes[parent];
            p.set_child(left_idx, NodeRef::Node(left));
            p.remove(right_idx);
            node = parent;
        }
        Ok(())
    }

    /// A root branch with one child hands the root to that child; an empty
    /// root leaf leaves the tree empty.
    fn collapse_root(&mut self, root: &mut Option<NodeRef>) {
        while let Some(NodeRef::Node(i)) = *root {
            let n = &self.nodes[i];
            if n.leaf && n.len() == 0 {
                *root = None;
            } else if !n.leaf && n.len() == 1 {
                *root = Some(n.child(0));
            } else {
                return;
            }
        }
    }

    /// Records every page of the tree at `root` as freed (for dropping a
    /// bucket).
    pub fn free_tree(&mut self, map: &[u8], root: Option<NodeRef>) -> Result<()> {
        let mut stack: Vec<NodeRef> = root.into_iter().collect();
        while let Some(r) = stack.pop() {
            match r {
                NodeRef::Page(id) => {
                    let page =
                        PageView::open(map, self.page_size, self.high_water, id)?.expect_node()?;
                    self.freed.push((id, page.pages(self.page_size)));
                    if page.is_branch() {
                        for i in 0..page.count {
                            stack.push(NodeRef::Page(page.child(i)?));
                        }
                    }
                }
                NodeRef::Node(i) => {
                    let n = &self.nodes[i];
                    if !n.leaf {
                        stack.extend((0..n.len()).map(|c| n.child(c)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Materialises every node of the tree under `root` that sits on a page
    /// at or above `limit`, and the path down to it, so the commit writes
    /// them to newly allocated (lower) pages: the step online
    /// defragmentation repeats. Materialises at most about `budget` nodes
    /// (a parent on the path may take it slightly below zero, saturated).
    /// Returns whether anything moved.
    pub fn relocate_above(
        &mut self,
        map: &[u8],
        root: &mut Option<NodeRef>,
        limit: PageId,
        budget: &mut usize,
    ) -> Result<bool> {
        let Some(r) = *root else {
            return Ok(false);
        };
        let (new, moved) = self.relocate(map, r, limit, budget, 0)?;
        *root = Some(new);
        Ok(moved)
    }

    fn relocate(
        &mut self,
        map: &[u8],
        r: NodeRef,
        limit: PageId,
        budget: &mut usize,
        depth: usize,
    ) -> Result<(NodeRef, bool)> {
        if depth > MAX_DEPTH {
            return Err(too_deep(r));
        }
        let children = {
            let view = self.reader(map).view(r)?;
            if view.is_leaf() {
                0
            } else {
                view.len()
            }
        };
        let mut cur = r;
        let mut moved = false;
        for c in 0..children {
            if *budget == 0 {
                break;
            }
            let child = self.reader(map).view(cur)?.child(c)?;
            let (new_child, child_moved) = self.relocate(map, child, limit, budget, depth + 1)?;
            if child_moved {
                if let NodeRef::Page(_) = cur {
                    *budget = budget.saturating_sub(1);
                }
                let i = self.materialize(map, cur)?;
                cur = NodeRef::Node(i);
                self.nodes[i].set_child(c, new_child);
                moved = true;
            }
        }
        if let NodeRef::Page(id) = cur {
            if id >= limit && *budget > 0 {
                *budget -= 1;
                let i = self.materialize(map, cur)?;
                return Ok((NodeRef::Node(i), true));
            }
        }
        Ok((cur, moved))
    }

    /// Writes every materialised node under `root` to newly allocated
    /// pages, children before parents. `alloc(pages)` returns the first id
    /// of a free run; every written run is handed to `write`. Returns the
    /// root's page id.
    pub fn spill(
        &mut self,
        root: NodeRef,
        alloc: &mut dyn FnMut(u64) -> PageId,
        write: &mut dyn FnMut(PageId, Vec<u8>),
    ) -> PageId {
        let i = match root {
            NodeRef::Page(id) => return id,
            NodeRef::Node(i) => i,
        };
        if !self.nodes[i].leaf {
            for c in 0..self.nodes[i].len() {
                let child = self.nodes[i].child(c);
                if let NodeRef::Node(_) = child {
                    let id = self.spill(child, alloc, write);
                    self.nodes[i].set_child(c, NodeRef::Page(id));
                }
            }
        }
        let pages = self.nodes[i].size().div_ceil(self.page_size).max(1) as u64;
        let id = alloc(pages);
        let buf = self.nodes[i].serialize(id, self.page_size);
        write(id, buf);
        id
    }
}

fn node_size(reader: &TreeReader<'_>, r: NodeRef) -> Result<usize> {
    Ok(match r {
        NodeRef::Node(i) => reader.nodes[i].size(),
        NodeRef::Page(id) => {
            let p = PageView::open(reader.map, reader.page_size, reader.high_water, id)?
                .expect_node()?;
            Node::from_page(&p)?.size()
        }
    })
}
