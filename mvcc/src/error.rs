//! What can go wrong in the store. The messages are etcd's, without the
//! "etcdserver: " its server puts before them: the server maps each
//! variant to etcd's gRPC code and full message (`server::error`), never
//! by looking at the text.

use crate::revision::Revision;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("key not found")]
    KeyNotFound,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("key is not provided")]
    EmptyKey,
    #[error("request is too large")]
    TooLarge,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("storage: {0}")]
    Storage(#[from] btree::Error),
    #[error("corrupt record at revision {rev}: {reason}")]
    Corrupt { rev: Revision, reason: String },
    #[error("an apply batch was abandoned part-way; reopen the store")]
    Poisoned,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
