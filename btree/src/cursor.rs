//! Reading a tree: point lookups, cursors and range iteration.
//!
//! A tree seen by a read transaction lives entirely in the mmap. A tree seen
//! by a write transaction mixes pages (untouched so far) and materialised
//! nodes; [`TreeReader`] and [`NodeView`] hide the difference so the same
//! cursor serves both.

use crate::error::Result;
use crate::node::{Node, NodeRef};
use crate::page::PageView;

/// Deepest tree a reader follows before calling the file corrupt (a cycle
/// of branch pages would otherwise loop forever).
pub const MAX_DEPTH: usize = 64;

/// Everything needed to resolve a [`NodeRef`] to a node.
#[derive(Clone, Copy)]
pub struct TreeReader<'a> {
    pub map: &'a [u8],
    pub page_size: usize,
    pub high_water: u64,
    /// The write transaction's materialised nodes (empty for readers).
    pub nodes: &'a [Node],
}

impl<'a> TreeReader<'a> {
    pub fn view(&self, r: NodeRef) -> Result<NodeView<'a>> {
        Ok(match r {
            NodeRef::Page(id) => NodeView::Page(
                PageView::open(self.map, self.page_size, self.high_water, id)?.expect_node()?,
            ),
            NodeRef::Node(i) => NodeView::Node(&self.nodes[i]),
        })
    }

    /// Looks `key` up in the tree rooted at `root`.
    pub fn get(&self, root: Option<NodeRef>, key: &[u8]) -> Result<Option<&'a [u8]>> {
        let Some(mut r) = root else { return Ok(None) };
        for _ in 0..MAX_DEPTH {
            let v = self.view(r)?;
            if v.is_leaf() {
                let (i, found) = v.lower_bound(key)?;
                return if found {
                    Ok(Some(v.value(i)?))
                } else {
                    Ok(None)
                };
            }
            r = v.child(v.route(key)?)?;
        }
        Err(too_deep(r))
    }
}

pub(crate) fn too_deep(r: NodeRef) -> crate::Error {
    crate::Error::Corrupt {
        page: match r {
            NodeRef::Page(p) => p,
            NodeRef::Node(_) => 0,
        },
        reason: format!("tree deeper than {MAX_DEPTH} levels (a cycle?)"),
    }
}

/// A branch or leaf, on a page or materialised.
#[derive(Clone, Copy)]
pub enum NodeView<'a> {
    Page(PageView<'a>),
    Node(&'a Node),
}

impl<'a> NodeView<'a> {
    pub fn is_leaf(&self) -> bool {
        match self {
            NodeView::Page(p) => p.is_leaf(),
            NodeView::Node(n) => n.leaf,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            NodeView::Page(p) => p.count,
            NodeView::Node(n) => n.len(),
        }
    }

    pub fn key(&self, i: usize) -> Result<&'a [u8]> {
        match self {
            NodeView::Page(p) => p.key(i),
            NodeView::Node(n) => Ok(n.key(i)),
        }
    }

    pub fn value(&self, i: usize) -> Result<&'a [u8]> {
        match self {
            NodeView::Page(p) => p.value(i),
            NodeView::Node(n) => Ok(n.value(i)),
        }
    }

    pub fn child(&self, i: usize) -> Result<NodeRef> {
        match self {
            NodeView::Page(p) => Ok(NodeRef::Page(p.child(i)?)),
            NodeView::Node(n) => Ok(n.child(i)),
        }
    }

    pub fn lower_bound(&self, key: &[u8]) -> Result<(usize, bool)> {
        match self {
            NodeView::Page(p) => p.lower_bound(key),
            NodeView::Node(n) => Ok(n.lower_bound(key)),
        }
    }

    pub fn route(&self, key: &[u8]) -> Result<usize> {
        match self {
            NodeView::Page(p) => p.route(key),
            NodeView::Node(n) => Ok(n.route(key)),
        }
    }
}

/// A key/value pair borrowed from a transaction.
pub type Entry<'a> = (&'a [u8], &'a [u8]);

/// A position in one bucket's tree. Moves with `first`, `last`, `seek`,
/// `next` and `prev`; each returns the entry it lands on, or `None` once it
/// runs off either end (after which `next` and `prev` keep returning `None`
/// until the cursor is positioned again).
pub struct Cursor<'a> {
    reader: TreeReader<'a>,
    root: Option<NodeRef>,
    /// Path from the root: each node and the index taken in it.
    stack: Vec<(NodeView<'a>, usize)>,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(reader: TreeReader<'a>, root: Option<NodeRef>) -> Cursor<'a> {
        Cursor {
            reader,
            root,
            stack: Vec::new(),
        }
    }

    fn current(&self) -> Result<Option<Entry<'a>>> {
        match self.stack.last() {
            Some((v, i)) if *i < v.len() => Ok(Some((v.key(*i)?, v.value(*i)?))),
            _ => Ok(None),
        }
    }

    /// Descends from `r` to a leaf, always taking the first (or last) child.
    fn descend_edge(&mut self, mut r: NodeRef, last: bool) -> Result<()> {
        loop {
            if self.stack.len() >= MAX_DEPTH {
                return Err(too_deep(r));
            }
            let v = self.reader.view(r)?;
            let i = if last { v.len().saturating_sub(1) } else { 0 };
            self.stack.push((v, i));
            if v.is_leaf() {
                return Ok(());
            }
            if v.len() == 0 {
                return Err(empty_branch(&v));
            }
            r = v.child(i)?;
        }
    }

    pub fn first(&mut self) -> Result<Option<Entry<'a>>> {
        self.stack.clear();
        let Some(root) = self.root else {
            return Ok(None);
        };
        self.descend_edge(root, false)?;
        self.settle_forward()
    }

    pub fn last(&mut self) -> Result<Option<Entry<'a>>> {
        self.stack.clear();
        let Some(root) = self.root else {
            return Ok(None);
        };
        self.descend_edge(root, true)?;
        match self.stack.last() {
            Some((v, _)) if v.len() == 0 => self.prev(),
            _ => self.current(),
        }
    }

    /// Positions at the first key >= `key`.
    pub fn seek(&mut self, key: &[u8]) -> Result<Option<Entry<'a>>> {
        self.stack.clear();
        let Some(mut r) = self.root else {
            return Ok(None);
        };
        loop {
            if self.stack.len() >= MAX_DEPTH {
                return Err(too_deep(r));
            }
            let v = self.reader.view(r)?;
            if v.is_leaf() {
                let (i, _) = v.lower_bound(key)?;
                self.stack.push((v, i));
                return self.settle_forward();
            }
            let i = v.route(key)?;
            self.stack.push((v, i));
            r = v.child(i)?;
        }
    }

    /// If the leaf position is past its end, moves to the next leaf.
    fn settle_forward(&mut self) -> Result<Option<Entry<'a>>> {
        match self.stack.last() {
            Some((v, i)) if *i >= v.len() => self.next_leaf(),
            _ => self.current(),
        }
    }

    fn next_leaf(&mut self) -> Result<Option<Entry<'a>>> {
        loop {
            self.stack.pop();
            let Some((v, i)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if *i + 1 < v.len() {
                *i += 1;
                let child = v.child(*i)?;
                self.descend_edge(child, false)?;
                match self.stack.last() {
                    Some((leaf, _)) if leaf.len() == 0 => continue,
                    _ => return self.current(),
                }
            }
        }
    }

    // A cursor moves both ways and can fail, so it is not an Iterator;
    // `Range` is the iterator.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Entry<'a>>> {
        let Some((v, i)) = self.stack.last_mut() else {
            return Ok(None);
        };
        *i += 1;
        if *i < v.len() {
            return self.current();
        }
        self.next_leaf()
    }

    pub fn prev(&mut self) -> Result<Option<Entry<'a>>> {
        let Some((_, i)) = self.stack.last_mut() else {
            return Ok(None);
        };
        if *i > 0 {
            *i -= 1;
            return self.current();
        }
        loop {
            self.stack.pop();
            let Some((v, i)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if *i > 0 {
                *i -= 1;
                let child = v.child(*i)?;
                self.descend_edge(child, true)?;
                match self.stack.last() {
                    Some((leaf, _)) if leaf.len() == 0 => continue,
                    _ => return self.current(),
                }
            }
        }
    }
}

fn empty_branch(v: &NodeView<'_>) -> crate::Error {
    crate::Error::Corrupt {
        page: match v {
            NodeView::Page(p) => p.id,
            NodeView::Node(_) => 0,
        },
        reason: "branch page with no children".into(),
    }
}

/// Iterates `[start, end)` in key order (`end` of `None` means to the last
/// key). Yields errors from a corrupt file instead of panicking.
pub struct Range<'a> {
    cursor: Cursor<'a>,
    start: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    done: bool,
}

impl<'a> Range<'a> {
    pub(crate) fn new(cursor: Cursor<'a>, start: &[u8], end: Option<&[u8]>) -> Range<'a> {
        Range {
            cursor,
            start: Some(start.to_vec()),
            end: end.map(<[u8]>::to_vec),
            done: false,
        }
    }
}

impl<'a> Iterator for Range<'a> {
    type Item = Result<Entry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = match self.start.take() {
            Some(start) => self.cursor.seek(&start),
            None => self.cursor.next(),
        };
        match step {
            Ok(Some((k, v))) if self.end.as_deref().is_none_or(|e| k < e) => Some(Ok((k, v))),
            Ok(_) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
