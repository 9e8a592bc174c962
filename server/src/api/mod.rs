//! etcd's client-facing gRPC services, one file each: every handler
//! checks its request, goes through raft for writes (or ReadIndex for
//! linearizable reads) and answers with etcd's header and errors.

pub mod auth;
pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod waiting;
pub mod watch;

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Response, Status};

use crate::error::ServerError;
use crate::shared::Shared;

/// The etcd release whose API this server speaks (reported by Status, and
/// used by clients to decide which features they may use).
pub const ETCD_API_VERSION: &str = "3.4.23";

pub(crate) type Rpc<T> = Result<Response<T>, Status>;
pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub(crate) fn check_size(s: &Shared, len: usize) -> Result<(), ServerError> {
    if len > s.max_request_bytes {
        Err(ServerError::TooLarge)
    } else {
        Ok(())
    }
}

pub(crate) fn mvcc_err(e: mvcc::Error) -> Status {
    ServerError::from(e).into()
}
