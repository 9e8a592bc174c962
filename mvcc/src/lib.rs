//! # mvcc: etcd's revisioned key space
//!
//! Every change to the key space gets a new store revision; history stays
//! readable until compacted; watches stream changes in revision order;
//! leases expire keys. This crate implements that model on the `btree`
//! crate, independent of raft and gRPC: the server applies committed raft
//! entries to it.
//!
//! Modules:
//! - [`revision`]: revisions and their `key`-bucket encoding (etcd's);
//! - [`kv`]: the stored record, etcd's `mvccpb.KeyValue` in protobuf;
//! - [`index`]: the in-memory key index (lives of each key, reads at any
//!   revision, compaction);
//! - [`store`]: the key space on the B+tree: ranges at a revision, puts,
//!   deletes, compaction, the consistent index, and the index rebuilt on
//!   open.
//!
//! - [`txn`]: transactions (compares, nested branches, one revision, the
//!   duplicate-key check).
//!
//! - [`lease`]: leases (grant, revoke deleting attached keys in one
//!   revision, attach and detach on put, keep-alive, expiry, persistence).
//!
//! - [`import`]: a new store file written from another store's records
//!   (etcd's backend shares the layout; `kvtool migrate`).
//!
//! - [`watch`]: watches from now or from the past, with no gap and no
//!   duplicate, that never let a slow consumer hold up writes (synced /
//!   unsynced / victim sets, as in etcd).
//!
//! ## Invariants
//! - A revision's key sorts in revision order, so a B+tree scan of the
//!   `key` bucket is a walk through history.
//! - The index answers for every revision at or above the compacted one
//!   exactly as it did before compaction.

pub mod apply;
pub mod buckets;
pub mod compact;
pub mod error;
pub mod hash;
pub mod history;
pub mod import;
pub mod index;
pub mod kv;
pub mod lease;
pub mod range;
pub mod rebuild;
pub mod records;
pub mod revision;
pub mod snapshot;
pub mod store;
pub mod txn;
pub mod watch;
pub mod watch_stream;

pub use apply::{Apply, DeleteResult, PutRequest, PutResult};
pub use buckets::AuthBucket;
pub use error::{Error, Result};
pub use history::{Event, EventKind};
pub use import::{Import, ImportCounts, ImportMeta};
pub use index::{KeyAt, KeyIndex, NotLive, RangeEnd, RangeWalk};
pub use kv::KeyValue;
pub use range::{RangeRequest, RangeResult, SortOrder, SortTarget};
pub use revision::Revision;
pub use snapshot::{read_snapshot_info, SnapshotInfo};
pub use store::{Limits, Store};
pub use txn::{
    Compare, CompareResult, CompareTarget, RequestOp, ResponseOp, TxnRequest, TxnResult,
};
pub use watch::{WatchError, WatchRequest, WatchResponse, MAX_WATCHERS_PER_STREAM};
pub use watch_stream::{spawn_watch_syncer, WatchStream, WatchSyncer};
