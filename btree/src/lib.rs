//! # btree: the storage engine of kvserver
//!
//! A single-file, mmap'ed, copy-on-write B+tree in the family of bbolt.
//! Everything the server stores lives in one such file, split into named
//! buckets (top-level key spaces), each a B+tree of byte keys and values.
//!
//! ## Invariants
//! - **A reader never sees a page that a later transaction may overwrite.**
//!   A write transaction never changes a page in place: it copies each page
//!   it changes into memory ([`node`]) and writes the result to pages that
//!   no live snapshot can reach. A page it stops using is only reused once
//!   no open reader is older than the commit that freed it, *and* a meta at
//!   least that new is durable (so a power cut never finds the last durable
//!   tree overwritten).
//! - **A commit is atomic.** It writes every changed page, fdatasyncs, then
//!   writes the meta page of slot `txid % 2` and fdatasyncs again. On open
//!   the valid meta (checksummed) with the highest txid wins, so a crash at
//!   any point leaves either the previous commit or the new one.
//! - **Readers never wait for the writer.** Any number of [`ReadTxn`]s run
//!   beside one [`WriteTxn`]; a reader takes only a pointer-sized critical
//!   section to pick up the latest snapshot, never the writer's lock.
//! - **The mapping a reader uses stays valid for its whole life.** A growing
//!   file is remapped into a new mapping; older mappings live on until the
//!   last snapshot using them is dropped.
//! - **A corrupt file yields errors, not panics.** Every page access is
//!   bounds-checked; problems are reported as [`Error::Corrupt`] naming the
//!   page, and [`Db::check`] lists every inconsistency it finds.
//!
//! `FORMAT.md` beside this crate describes the file layout.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let db = btree::Db::open(dir.path().join("data.db")).unwrap();
//! let mut tx = db.begin_write().unwrap();
//! tx.create_bucket(b"key").unwrap();
//! tx.put(b"key", b"hello", b"world").unwrap();
//! tx.commit().unwrap();
//! let rx = db.begin_read();
//! assert_eq!(rx.open_bucket(b"key").unwrap().get(b"hello").unwrap(), Some(&b"world"[..]));
//! ```

mod check;
mod compact;
mod cursor;
mod db;
mod error;
mod freelist;
pub mod io;
mod node;
mod observe;
pub mod page;
mod tree;
mod tx;

pub use check::{BucketStats, CheckReport, MetaSlot, PageKind, Problem, Stats};
pub use compact::CompactStats;
pub use cursor::{Cursor, Entry, Range};
pub use db::{Db, Options};
pub use error::{Error, Result};
pub use observe::{CommitDone, CommitObserver, DefragState};
pub use tx::{Bucket, ReadTxn, WriteTxn};
