//! Leases: TTLs that keys attach to. When a lease expires or is revoked,
//! every key attached to it is deleted in one revision.
//!
//! The lessor keeps, per lease, its granted TTL, its expiry instant and the
//! keys attached to it. Grants and revocations are applied operations
//! (they go through raft and are stored in the `lease` bucket); renewals
//! (keep-alive) and expiry checks are the leader's business and touch only
//! memory, as in etcd. Time is passed in, so expiry is testable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use prost::Message;

use crate::apply::Apply;
use crate::buckets::LEASE_BUCKET;
use crate::error::{Error, Result};
use crate::store::Store;

/// etcd's `leasepb.Lease`, the record stored per lease in the `lease`
/// bucket (keyed by the lease ID, 8 bytes big-endian).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseRecord {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// The smallest TTL granted (etcd's default with its default election
/// timeout: 1.5 s, rounded up).
pub const MIN_TTL: i64 = 2;
/// The largest TTL accepted (etcd's `MaxLeaseTTL`).
pub const MAX_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone)]
pub struct Lease {
    pub id: i64,
    /// Seconds granted.
    pub ttl: i64,
    pub expiry: Instant,
    /// Seconds left at the last checkpoint (0: none since the last
    /// renewal). A new leader, or a restart, resumes the lease from here
    /// rather than from its full TTL.
    pub remaining_ttl: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

impl Lease {
    /// Whole seconds left, rounded up (0 once expired).
    pub fn remaining(&self, now: Instant) -> i64 {
        let left = self.expiry.saturating_duration_since(now);
        left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0)
    }
}

/// Every lease, and which lease each key is attached to.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: BTreeMap<i64, Lease>,
    key_lease: HashMap<Vec<u8>, i64>,
}

impl Lessor {
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// IDs of every lease, in order.
    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// The TTL a grant of `ttl` seconds actually gets.
    pub fn effective_ttl(ttl: i64) -> i64 {
        ttl.max(MIN_TTL)
    }

    pub(crate) fn insert(&mut self, id: i64, ttl: i64, remaining_ttl: i64, now: Instant) {
        let ttl = Self::effective_ttl(ttl);
        let keys = self.leases.remove(&id).map(|l| l.keys).unwrap_or_default();
        let left = if remaining_ttl > 0 {
            remaining_ttl
        } else {
            ttl
        };
        self.leases.insert(
            id,
            Lease {
                id,
                ttl,
                expiry: now + Duration::from_secs(left as u64),
                remaining_ttl,
                keys,
            },
        );
    }

    /// Removes a lease; returns the keys attached to it.
    pub(crate) fn remove(&mut self, id: i64) -> Option<BTreeSet<Vec<u8>>> {
        let lease = self.leases.remove(&id)?;
        for k in &lease.keys {
            self.key_lease.remove(k);
        }
        Some(lease.keys)
    }

    /// Attaches `key` to `lease` (0: to none), detaching it from any other.
    pub(crate) fn attach(&mut self, key: &[u8], lease: i64) {
        if let Some(old) = self.key_lease.remove(key) {
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(key);
            }
        }
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(key.to_vec());
                self.key_lease.insert(key.to_vec(), lease);
            }
        }
    }

    /// Renews a lease for its full TTL; returns the TTL. A lease whose
    /// time is up is not renewed (its revocation is under way): a
    /// keep-alive must not answer a full TTL for keys about to go.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let l = self.leases.get_mut(&id)?;
        if l.expiry <= now {
            return None;
        }
        l.expiry = now + Duration::from_secs(l.ttl as u64);
        Some(l.ttl)
    }

    /// Records a checkpoint: `remaining` seconds were left (0 clears it).
    pub(crate) fn checkpoint(&mut self, id: i64, remaining: i64) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.remaining_ttl = remaining;
        }
    }

    /// Leases whose time is up: the leader proposes their revocation.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        self.leases
            .values()
            .filter(|l| l.expiry <= now)
            .map(|l| l.id)
            .collect()
    }

    /// Gives every lease its checkpointed remaining TTL (or its full TTL)
    /// plus `extend` from `now`: what a new leader does, so that no lease
    /// expires because leadership moved (etcd's Promote).
    pub fn refresh_all(&mut self, now: Instant, extend: Duration) {
        for l in self.leases.values_mut() {
            let left = if l.remaining_ttl > 0 {
                l.remaining_ttl
            } else {
                l.ttl
            };
            l.expiry = now + extend + Duration::from_secs(left as u64);
        }
    }

    /// (id, seconds left) of every lease, for checkpoints.
    pub fn remaining_all(&self, now: Instant) -> Vec<(i64, i64)> {
        self.leases
            .values()
            .map(|l| (l.id, l.remaining(now)))
            .collect()
    }
}

impl Store {
    /// Renews a lease for its full TTL (keep-alive); returns the TTL.
    pub fn lease_renew(&self, id: i64) -> Result<i64> {
        self.write_shared()
            .lessor
            .renew(id, std::time::Instant::now())
            .ok_or(Error::LeaseNotFound)
    }

    /// (granted TTL, seconds remaining, attached keys) of a lease.
    pub fn lease_time_to_live(&self, id: i64) -> Result<(i64, i64, Vec<Vec<u8>>)> {
        let s = self.read_shared();
        let l = s.lessor.get(id).ok_or(Error::LeaseNotFound)?;
        Ok((
            l.ttl,
            l.remaining(std::time::Instant::now()),
            l.keys.iter().cloned().collect(),
        ))
    }

    /// A new leader's lease clock: every lease gets its checkpointed
    /// remaining TTL (or its full TTL) plus `extend` from now, so that no
    /// lease expires because leadership moved.
    pub fn lease_promote(&self, extend: std::time::Duration) {
        self.write_shared()
            .lessor
            .refresh_all(std::time::Instant::now(), extend);
    }

    /// (lease ID, seconds left) of every lease, for checkpoints.
    pub fn lease_remaining(&self) -> Vec<(i64, i64)> {
        self.read_shared()
            .lessor
            .remaining_all(std::time::Instant::now())
    }

    /// The remaining TTL a lease's last checkpoint recorded (0: none).
    pub fn lease_checkpointed(&self, id: i64) -> Option<i64> {
        self.read_shared().lessor.get(id).map(|l| l.remaining_ttl)
    }

    /// Every lease ID.
    pub fn leases(&self) -> Vec<i64> {
        self.read_shared().lessor.ids()
    }

    /// Leases expired at `now`; the leader proposes their revocation.
    pub fn expired_leases(&self, now: std::time::Instant) -> Vec<i64> {
        self.read_shared().lessor.expired(now)
    }

    /// The keys attached to lease `id` (None: no such lease).
    pub fn lease_keys(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        let s = self.read_shared();
        s.lessor.get(id).map(|l| l.keys.iter().cloned().collect())
    }
}

impl<'s> Apply<'s> {
    /// Grants lease `id` (chosen by the server, positive) for `ttl` seconds
    /// (raised to the minimum TTL). Returns the TTL granted.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<i64> {
        if ttl > MAX_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        if id <= 0 {
            return Err(Error::LeaseNotFound);
        }
        if self.store.read_shared().lessor.contains(id) {
            return Err(Error::LeaseExists);
        }
        let ttl = Lessor::effective_ttl(ttl);
        self.put_lease_record(LeaseRecord {
            id,
            ttl,
            remaining_ttl: 0,
        })?;
        self.store
            .write_shared()
            .lessor
            .insert(id, ttl, 0, std::time::Instant::now());
        Ok(ttl)
    }

    /// Stores a lease's record in the batch.
    fn put_lease_record(&mut self, rec: LeaseRecord) -> Result<()> {
        self.tx()
            .put(LEASE_BUCKET, &rec.id.to_be_bytes(), &rec.encode_to_vec())?;
        self.changed = true;
        Ok(())
    }

    /// Revokes lease `id`: deletes every key attached to it in one new
    /// revision, and the lease. Returns the store revision after it.
    pub fn lease_revoke(&mut self, id: i64) -> Result<i64> {
        let keys = match self.store.read_shared().lessor.get(id) {
            Some(l) => l.keys.clone(),
            None => return Err(Error::LeaseNotFound),
        };
        let mut op = self.begin_op();
        let mut result = Ok(());
        for k in &keys {
            if let Err(e) = self.delete_in(k, b"", false, &mut op) {
                result = Err(e);
                break;
            }
        }
        self.end_op(op);
        result?;
        self.tx().delete(LEASE_BUCKET, &id.to_be_bytes())?;
        self.changed = true;
        self.store.write_shared().lessor.remove(id);
        Ok(self.rev)
    }

    /// Records a lease checkpoint: `remaining` seconds were left (0 clears
    /// it, as a renewal does). A restart or a new leader resumes the lease
    /// from there. An unknown lease is ignored (it was revoked meanwhile).
    pub fn lease_checkpoint(&mut self, id: i64, remaining: i64) -> Result<()> {
        let ttl = match self.store.read_shared().lessor.get(id) {
            Some(l) => l.ttl,
            None => return Ok(()),
        };
        self.put_lease_record(LeaseRecord {
            id,
            ttl,
            remaining_ttl: remaining.max(0),
        })?;
        self.store
            .write_shared()
            .lessor
            .checkpoint(id, remaining.max(0));
        Ok(())
    }

    /// The keys attached to lease `id` as this batch leaves them.
    pub fn lease_keys(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        self.store.lease_keys(id)
    }
}
