//! etcd's backend, read from its bbolt file: the buckets and records that
//! `kvtool migrate from-etcd` carries over (`tools/ETCD_FORMAT.md`).

use crate::bbolt::{Bbolt, BboltError, Bucket, Entries};

/// Why a file could not be read as etcd's backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error(transparent)]
    Bbolt(#[from] BboltError),
    #[error("not an etcd database: it has no `key` bucket (its buckets: {0})")]
    NoKeyBucket(String),
    #[error("etcd's `{bucket}` bucket: {reason}")]
    Record {
        bucket: &'static str,
        reason: String,
    },
}

type Result<T> = std::result::Result<T, EtcdError>;

/// etcd's own state in its `meta` bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EtcdMeta {
    /// The raft index of the last entry applied to the backend.
    pub consistent_index: u64,
    /// The raft term of it (etcd 3.5 and later record it).
    pub term: u64,
    pub scheduled_compaction: i64,
    pub finished_compaction: i64,
}

/// An etcd backend file, opened.
pub struct EtcdBackend<'a> {
    pub bolt: Bbolt<'a>,
    buckets: Vec<(&'a [u8], Bucket<'a>)>,
}

fn meta_err(reason: String) -> EtcdError {
    EtcdError::Record {
        bucket: "meta",
        reason,
    }
}

/// A compaction revision as etcd stores it: a revision key (8 bytes of
/// the main revision big-endian, `_`, 8 bytes of sub revision).
fn compaction_revision(key: &str, v: &[u8]) -> Result<i64> {
    if v.len() != 17 || v[8] != b'_' {
        return Err(meta_err(format!(
            "{key} is {} bytes, not a revision",
            v.len()
        )));
    }
    let mut main = [0; 8];
    main.copy_from_slice(&v[..8]);
    let main = i64::from_be_bytes(main);
    if main < 0 {
        return Err(meta_err(format!("{key} is revision {main}")));
    }
    Ok(main)
}

fn be_u64(key: &str, v: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_be_bytes)
        .map_err(|_| meta_err(format!("{key} is {} bytes, not 8", v.len())))
}

impl<'a> EtcdBackend<'a> {
    /// Opens `data` as bbolt and finds etcd's buckets; refuses a bbolt
    /// file without a `key` bucket.
    pub fn open(data: &'a [u8]) -> Result<EtcdBackend<'a>> {
        let bolt = Bbolt::open(data)?;
        let mut buckets = Vec::new();
        for e in bolt.entries(bolt.root()) {
            let e = e?;
            if e.is_bucket {
                buckets.push((e.key, bolt.nested(&e)?));
            }
        }
        if !buckets.iter().any(|(n, _)| *n == b"key") {
            let names: Vec<String> = buckets
                .iter()
                .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
                .collect();
            return Err(EtcdError::NoKeyBucket(if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }));
        }
        Ok(EtcdBackend { bolt, buckets })
    }

    /// Names of every top-level bucket, in order.
    pub fn bucket_names(&self) -> Vec<String> {
        self.buckets
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    /// The records of bucket `name`, in key order (None: no such bucket).
    pub fn entries(&self, name: &[u8]) -> Option<Entries<'a, '_>> {
        self.buckets
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| self.bolt.entries(*b))
    }

    /// etcd's state from the `meta` bucket (all zero without one).
    pub fn meta(&self) -> Result<EtcdMeta> {
        let mut m = EtcdMeta::default();
        let Some(entries) = self.entries(b"meta") else {
            return Ok(m);
        };
        for e in entries {
            let e = e?;
            match e.key {
                b"consistent_index" => m.consistent_index = be_u64("consistent_index", e.value)?,
                b"term" => m.term = be_u64("term", e.value)?,
                b"scheduledCompactRev" => {
                    m.scheduled_compaction = compaction_revision("scheduledCompactRev", e.value)?
                }
                b"finishedCompactRev" => {
                    m.finished_compaction = compaction_revision("finishedCompactRev", e.value)?
                }
                _ => {}
            }
        }
        Ok(m)
    }
}
