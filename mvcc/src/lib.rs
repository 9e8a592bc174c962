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
//! - [`watch`]: watches from now or from the past, with no gap and no
//!   duplicate, that never let a slow consumer hold up writes (synced /
//!   unsynced / victim sets, as in etcd).
//!
//! ## Invariants
//! - A revision's key sorts in revision order, so a B+tree scan of the
//!   `key` bucket is a walk through history.
//! - The index answers for every revision at or above the compacted one
//!   exactly as it did before compaction.

pub mod index;
pub mod kv;
pub mod lease;
pub mod revision;
pub mod store;
pub mod txn;
pub mod watch;

pub use index::{KeyAt, KeyIndex, NotLive, RangeEnd};
pub use kv::KeyValue;
pub use revision::Revision;
pub use store::{
    spawn_watch_syncer, Apply, AuthBucket, DeleteResult, Error, Event, EventKind, Limits,
    PutRequest, PutResult, RangeRequest, RangeResult, Result, SnapshotInfo, SortOrder, SortTarget,
    Store, WatchStream, WatchSyncer,
};
pub use txn::{
    Compare, CompareResult, CompareTarget, RequestOp, ResponseOp, TxnRequest, TxnResult,
};
pub use watch::{WatchError, WatchRequest, WatchResponse};
