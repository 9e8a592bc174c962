//! Error types. Every error carries the context a user needs: which file,
//! which page, which bucket.

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

    #[error("{0}: database is locked by another process or handle")]
    Locked(PathBuf),

    #[error("{0}: not a database file (no valid meta page with the expected magic number)")]
    NotADatabase(PathBuf),

    #[error("{path}: page size is {found} in the file but {expected} was requested")]
    PageSizeMismatch {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    #[error(
        "{path}: format version {found} is newer than the newest this build reads ({supported})"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error("{path}: file is truncated: {len} bytes, but the meta page needs {needed}")]
    Truncated {
        path: PathBuf,
        len: u64,
        needed: u64,
    },

    #[error("{path}: both meta pages are invalid (page 0: {meta0}; page 1: {meta1})")]
    NoValidMeta {
        path: PathBuf,
        meta0: String,
        meta1: String,
    },

    #[error("invalid page size {0}: must be a power of two between 1024 and 65536")]
    InvalidPageSize(usize),

    #[error("corrupt page {page}: {reason}")]
    Corrupt { page: u64, reason: String },

    #[error("bucket {0:?} not found")]
    BucketNotFound(String),

    #[error("bucket {0:?} already exists")]
    BucketExists(String),

    #[error("key of {len} bytes is larger than the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },

    #[error("value of {len} bytes is larger than the limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },

    #[error("the database was opened read-only")]
    ReadOnly,

    #[error("an earlier commit failed part-way ({0}); the handle refuses writes until the database is reopened")]
    Poisoned(String),

    #[error("{0}: destination already exists")]
    DestinationExists(PathBuf),
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// The page an error names, when it names one.
    pub fn page(&self) -> Option<u64> {
        match self {
            Error::Corrupt { page, .. } => Some(*page),
            _ => None,
        }
    }
}
