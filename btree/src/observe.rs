//! What a database tells its embedder as it works (the server turns it
//! into metrics): each commit as it happens, and the progress of an
//! online defragmentation. Nothing here changes what is written.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// One write transaction committed.
#[derive(Debug, Clone, Copy)]
pub struct CommitDone {
    /// Pages written (tree nodes, overflow runs and the freelist).
    pub pages_written: u64,
    /// Pages this commit freed (nodes replaced, and the old freelist).
    pub pages_freed: u64,
    /// Pages free for reuse after it.
    pub free_pages: u64,
    /// Whether it was made durable (fsynced) before returning.
    pub durable: bool,
    /// Writing its pages, and fsyncing them when durable.
    pub took: Duration,
}

/// A function told of each commit, under the writer's lock (so it must be
/// quick).
pub type CommitObserver = Arc<dyn Fn(&CommitDone) + Send + Sync>;

/// An online defragmentation's progress, updated at each step.
#[derive(Debug, Default)]
pub(crate) struct DefragProgress {
    /// Defragmentations under way (two requests may overlap).
    running: AtomicU64,
    nodes_moved: AtomicU64,
    pages_above_target: AtomicU64,
}

/// What [`crate::Db::defrag_progress`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefragState {
    /// A defragmentation is under way.
    pub running: bool,
    /// Tree nodes moved down the file since the database was opened.
    pub nodes_moved: u64,
    /// Pages between the target end of the file and its current end, as
    /// of the last step (0 when none runs).
    pub pages_above_target: u64,
}

impl DefragProgress {
    pub(crate) fn start(&self) {
        self.running.fetch_add(1, Relaxed);
    }

    pub(crate) fn step(&self, moved: u64, pages_above_target: u64) {
        self.nodes_moved.fetch_add(moved, Relaxed);
        self.pages_above_target.store(pages_above_target, Relaxed);
    }

    pub(crate) fn finish(&self) {
        if self.running.fetch_sub(1, Relaxed) == 1 {
            self.pages_above_target.store(0, Relaxed);
        }
    }

    pub(crate) fn state(&self) -> DefragState {
        DefragState {
            running: self.running.load(Relaxed) > 0,
            nodes_moved: self.nodes_moved.load(Relaxed),
            pages_above_target: self.pages_above_target.load(Relaxed),
        }
    }
}
