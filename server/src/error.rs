//! Errors a client sees: etcd's gRPC status codes and messages, exactly,
//! because clients match on them.

use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Mvcc(String, Code),
    #[error("etcdserver: request is too large")]
    TooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutLeaderFail,
    #[error("etcdserver: request timed out, possibly due to connection lost")]
    TimeoutConnectionLost,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimeoutLeaderTransfer,
    #[error("etcdserver: {0}")]
    Internal(String),
}

/// etcd's answer to each of the store's errors: its gRPC code and message
/// (etcd's `rpctypes`). Failures of the storage itself are internal.
impl From<mvcc::Error> for ServerError {
    fn from(e: mvcc::Error) -> ServerError {
        use mvcc::Error as E;
        let (code, text) = match &e {
            E::Compacted => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            E::FutureRevision => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            E::LeaseNotFound => (Code::NotFound, "etcdserver: requested lease not found"),
            E::KeyNotFound => (Code::InvalidArgument, "etcdserver: key not found"),
            E::DuplicateKey => (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            E::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
            E::TooLarge => (Code::InvalidArgument, "etcdserver: request is too large"),
            E::TooManyOps => (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            E::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
            E::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
            E::LeaseExists => (Code::FailedPrecondition, "etcdserver: lease already exists"),
            E::LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
            E::Storage(_) | E::Corrupt { .. } | E::Poisoned => {
                return ServerError::Mvcc(format!("etcdserver: {e}"), Code::Internal)
            }
        };
        ServerError::Mvcc(text.to_string(), code)
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        let code = match &e {
            ServerError::Mvcc(_, code) => *code,
            ServerError::TooLarge => Code::InvalidArgument,
            ServerError::NoLeader | ServerError::Stopped => Code::Unavailable,
            ServerError::Timeout
            | ServerError::TimeoutLeaderFail
            | ServerError::TimeoutConnectionLost
            | ServerError::LeaderChanged => Code::Unavailable,
            ServerError::NoSpace | ServerError::TooManyRequests => Code::ResourceExhausted,
            ServerError::Corrupt => Code::DataLoss,
            ServerError::RootUserNotExist
            | ServerError::RootRoleNotExist
            | ServerError::UserAlreadyExist
            | ServerError::UserNotFound
            | ServerError::RoleAlreadyExist
            | ServerError::RoleNotFound
            | ServerError::RoleNotGranted
            | ServerError::PermissionNotGranted
            | ServerError::AuthNotEnabled => Code::FailedPrecondition,
            ServerError::UserEmpty
            | ServerError::RoleEmpty
            | ServerError::AuthFailed
            | ServerError::PermissionNotGiven
            | ServerError::InvalidAuthMgmt
            | ServerError::AuthOldRevision => Code::InvalidArgument,
            ServerError::PermissionDenied => Code::PermissionDenied,
            ServerError::InvalidAuthToken => Code::Unauthenticated,
            ServerError::MemberExist
            | ServerError::PeerUrlExist
            | ServerError::NotEnoughStarted
            | ServerError::MemberNotLearner
            | ServerError::LearnerNotReady
            | ServerError::TooManyLearners
            | ServerError::NotLeader
            | ServerError::BadLeaderTransferee => Code::FailedPrecondition,
            ServerError::MemberBadUrls => Code::InvalidArgument,
            ServerError::MemberNotFound => Code::NotFound,
            ServerError::Unhealthy | ServerError::NotSupportedForLearner => Code::Unavailable,
            // etcd has no gRPC error for it: it answers Unknown.
            ServerError::TimeoutLeaderTransfer => Code::Unknown,
            ServerError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// Why a member could not start or stopped: returned to `main`, which
/// prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the database: {0}")]
    Database(#[from] mvcc::Error),
    #[error("the WAL: {0}")]
    Wal(#[from] wal::Error),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("starting the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Inconsistent(String),
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    #[error("fatal: {0}")]
    Fatal(String),
    #[error("this member ({0}) is not in the cluster its peers ({1}) belong to: add it with `etcdctl member add` first")]
    NotAMember(String, String),
    #[error("found data inconsistency with peers: {0}")]
    Inconsistency(String),
    #[error("joining the cluster: no peer in --initial-cluster answered ({0})")]
    NoPeerAnswered(String),
}

/// gRPC's codes by number, as Go names them.
pub const GO_CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// A status as Go's gRPC prints it (`rpc error: code = ... desc = ...`):
/// etcd puts that text in some answers (a refused watch's reason).
pub fn go_status_text(s: &tonic::Status) -> String {
    let name = GO_CODE_NAMES.get(s.code() as usize).unwrap_or(&"Unknown");
    format!("rpc error: code = {name} desc = {}", s.message())
}
