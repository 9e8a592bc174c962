//! Where the store keeps what in the B+tree: its buckets (etcd's names)
//! and the keys of its own state in `meta`.

use crate::error::{Error, Result};
use crate::revision::Revision;

/// Bucket of every revision's record, keyed by encoded revision.
pub const KEY_BUCKET: &[u8] = b"key";

/// Bucket of the store's own state.
pub const META_BUCKET: &[u8] = b"meta";

/// Bucket of leases, keyed by lease ID (8 bytes big-endian).
pub const LEASE_BUCKET: &[u8] = b"lease";

/// Bucket of raised alarms, keyed by member ID (8 bytes big-endian) and
/// alarm type (4 bytes big-endian).
pub const ALARM_BUCKET: &[u8] = b"alarm";

/// The cluster's members (etcd's `members` bucket), by member ID.
pub const MEMBERS_BUCKET: &[u8] = b"members";

/// IDs of members removed from the cluster (they may never come back).
pub const MEMBERS_REMOVED_BUCKET: &[u8] = b"members_removed";

/// The auth store's buckets (etcd's names): whether auth is enabled and
/// its revision; users; roles. The server encodes the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthBucket {
    Meta,
    Users,
    Roles,
}

impl AuthBucket {
    pub fn name(self) -> &'static [u8] {
        match self {
            AuthBucket::Meta => b"auth",
            AuthBucket::Users => b"authUsers",
            AuthBucket::Roles => b"authRoles",
        }
    }
}

pub(crate) const CONSISTENT_INDEX: &[u8] = b"consistent_index";

pub(crate) const TERM: &[u8] = b"term";

pub(crate) const COMPACTED_REVISION: &[u8] = b"finishedCompactRev";

pub(crate) const SCHEDULED_COMPACTION: &[u8] = b"scheduledCompactRev";

pub(crate) fn be_u64(v: Option<&[u8]>) -> u64 {
    v.and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

pub(crate) fn member_key(k: &[u8]) -> Result<u64> {
    let id = <[u8; 8]>::try_from(k).map_err(|_| Error::Corrupt {
        rev: Revision::default(),
        reason: format!("member key of {} bytes", k.len()),
    })?;
    Ok(u64::from_be_bytes(id))
}
