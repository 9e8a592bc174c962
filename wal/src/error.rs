//! Error types, each naming the file (and offset) it is about.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{dir}: no WAL segments found ({others} other files)")]
    NoSegments { dir: PathBuf, others: usize },

    #[error("{dir}: already holds a WAL")]
    AlreadyExists { dir: PathBuf },

    #[error("{dir}: segment {missing:016x} is missing (sequence numbers jump from {before:016x})")]
    MissingSegment {
        dir: PathBuf,
        before: u64,
        missing: u64,
    },

    #[error("{segment}: checksum chain broken: the segment does not follow the one before it")]
    ChainBroken { segment: PathBuf },

    #[error("{segment}: belongs to member {found_member:#x} of cluster {found_cluster:#x}, but the log is member {member:#x} of cluster {cluster:#x}")]
    ClusterMismatch {
        segment: PathBuf,
        member: u64,
        cluster: u64,
        found_member: u64,
        found_cluster: u64,
    },

    #[error("{segment}: corrupt record at offset {offset}: {reason}")]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error("{dir}: snapshot marker at index {index} term {term} not found in the log")]
    SnapshotNotFound { dir: PathBuf, index: u64, term: u64 },

    #[error("{dir}: snapshot marker at index {index} has term {found}, expected {term}")]
    SnapshotMismatch {
        dir: PathBuf,
        index: u64,
        term: u64,
        found: u64,
    },

    #[error("{segment}: entry {index} follows entry {last}: entries are missing")]
    EntryGap {
        segment: PathBuf,
        last: u64,
        index: u64,
    },

    #[error("record payload of {len} bytes is over the limit of {max}")]
    RecordTooLarge { len: usize, max: usize },

    #[error("the log writer has stopped after an earlier failure: {0}")]
    Stopped(String),
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}
