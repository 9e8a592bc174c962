//! What every part of a member shares: the key space, the member's
//! identity, raft's state as last seen, the member list, the alarms, and
//! the ways to reach the raft thread (proposals, reads) and the peers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::alarms::Alarms;
use crate::apply::ApplyResult;
use crate::membership::Membership;
use crate::pb::etcdserverpb as pb;
use crate::raft::Command;
use crate::transport::Transport;

/// Snapshot streams served at once (see [`Shared::snapshots`]).
pub const MAX_CONCURRENT_SNAPSHOTS: usize = 2;

/// raft's state as the raft thread last published it.
#[derive(Debug, Default)]
pub struct RaftStatus {
    pub term: AtomicU64,
    /// 0: no leader known.
    pub leader: AtomicU64,
    pub is_leader: AtomicBool,
    pub commit_index: AtomicU64,
    /// The index of the last entry applied to the key space.
    pub applied_index: AtomicU64,
    /// Bumped at every change of leader (reads in flight then fail).
    pub leader_changes: AtomicU64,
    /// When the current leader was elected (or seen first).
    pub leader_since: Mutex<Option<Instant>>,
    /// The term in which this member, as leader, took over the leases'
    /// clocks (it expires leases only from then on: before, their
    /// deadlines are a follower's stale ones).
    pub lease_term: AtomicU64,
    /// The term of the last entry applied.
    pub applied_term: AtomicU64,
    /// Entries raft holds in memory (its log since the last trim).
    pub log_entries: AtomicU64,
}

/// Handlers waiting for their proposal to be applied, by request ID (the
/// apply thread answers them, on whichever member they were proposed).
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<u64, oneshot::Sender<ApplyResult>>>,
}

impl Waiters {
    pub fn register(&self, id: u64) -> oneshot::Receiver<ApplyResult> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    /// [`Waiters::register`], unless `max` are waiting already.
    pub fn register_bounded(&self, id: u64, max: usize) -> Option<oneshot::Receiver<ApplyResult>> {
        let mut map = self.lock();
        if map.len() >= max {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        map.insert(id, tx);
        Some(rx)
    }

    pub fn take(&self, id: u64) -> Option<oneshot::Sender<ApplyResult>> {
        self.lock().remove(&id)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<ApplyResult>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// etcd's request IDs: the low 16 bits of the member ID in the top 16
/// bits, then the start time in milliseconds (40 bits) and a counter (8
/// bits) that counts on from there, so IDs are unique across members and
/// restarts.
pub struct RequestIds {
    prefix: u64,
    suffix: AtomicU64,
}

const SUFFIX_BITS: u32 = 48;

impl RequestIds {
    pub fn new(member_id: u64) -> RequestIds {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        RequestIds {
            prefix: (member_id & 0xffff) << SUFFIX_BITS,
            suffix: AtomicU64::new((millis & ((1 << 40) - 1)) << 8),
        }
    }

    pub fn next(&self) -> u64 {
        let s = self.suffix.fetch_add(1, Ordering::Relaxed) + 1;
        self.prefix | (s & ((1 << SUFFIX_BITS) - 1))
    }
}

/// How far past the commit index a token's login may be and still be
/// waited for.
const TOKEN_INDEX_SLACK: u64 = 10_000;

/// How long a removed member goes on before it stops (etcd's delay).
const REMOVED_STOP_DELAY: Duration = Duration::from_secs(1);

/// What the handlers share with the raft and apply threads.
pub struct Shared {
    pub store: Arc<mvcc::Store>,
    pub member_id: u64,
    pub cluster_id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub members: Membership,
    pub auth: crate::auth::AuthStore,
    /// At most one bcrypt computation at a time (a login flood must not
    /// take every core).
    pub bcrypt: tokio::sync::Semaphore,
    /// Maintenance.Snapshot streams writing their copy at once, at most
    /// [`MAX_CONCURRENT_SNAPSHOTS`] (each holds a compact copy of the
    /// database on disk); more wait their turn.
    pub snapshots: Arc<tokio::sync::Semaphore>,
    /// `--client-cert-auth`: a request without a token is made by the
    /// user its client certificate names (etcd's CommonName auth).
    pub client_cert_auth: bool,
    pub raft: RaftStatus,
    pub alarms: Mutex<Alarms>,
    pub waiters: Waiters,
    pub ids: RequestIds,
    pub transport: Arc<Transport>,
    pub max_request_bytes: usize,
    pub data_dir: PathBuf,
    pub request_timeout: Duration,
    pub election_timeout: Duration,
    /// `--strict-reconfig-check`.
    pub strict_reconfig_check: bool,
    pub(crate) commands: Mutex<Option<std::sync::mpsc::Sender<Command>>>,
    /// Set when a thread of the member hit an error it cannot go on from
    /// (a failed WAL write, say); [`crate::run`] then stops and returns it.
    /// Shared with `run`, which reads it again once the threads have
    /// stopped (a failure during a clean shutdown still ends the process
    /// with its error).
    pub failure: Arc<Mutex<Option<String>>>,
    pub failed: tokio::sync::Notify,
    /// This member was removed from the cluster: it stops, and `run`
    /// returns without an error (as etcd, which exits 0).
    pub removed: AtomicBool,
    /// What `/metrics` reports.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Shared {
    /// etcd's response header, at revision `revision`.
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.term.load(Ordering::Relaxed),
        }
    }

    /// The leader this member knows of (0: none).
    pub fn leader(&self) -> u64 {
        self.raft.leader.load(Ordering::Acquire)
    }

    pub fn is_leader(&self) -> bool {
        self.raft.is_leader.load(Ordering::Acquire)
    }

    /// Leads and has taken over the leases' clocks in this term: only then
    /// are keep-alives and TimeToLive answered here (etcd's primary
    /// lessor).
    pub fn is_lease_primary(&self) -> bool {
        self.is_leader()
            && self.raft.lease_term.load(Ordering::Acquire)
                == self.raft.term.load(Ordering::Acquire)
    }

    pub fn applied_index(&self) -> u64 {
        self.raft.applied_index.load(Ordering::Acquire)
    }

    /// Records a fatal error: the member stops serving and `run` returns
    /// it.
    pub fn fail(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
        drop(f);
        self.failed.notify_one();
    }

    /// This member learnt it was removed from the cluster (it applied its
    /// removal, or a peer refused its messages): it stops.
    pub fn removed_from_cluster(self: &Arc<Self>) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!("the member has been permanently removed from the cluster");
        // As etcd, a moment before stopping: the answer to the removal
        // gets out, and a removed leader hands leadership on.
        let me = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(REMOVED_STOP_DELAY);
            me.fail("the member has been permanently removed from the cluster".into());
        });
    }

    /// Who sent a request: the user its `token` metadata names; without
    /// a token, with `--client-cert-auth`, the common name of the
    /// client's verified certificate (etcd's order); else anonymous. A
    /// token this member does not know is refused; one made by a login
    /// entry not applied here yet is waited for (a little).
    pub async fn caller<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> Result<crate::pb::kvserverpb::Caller, crate::error::ServerError> {
        use crate::auth::tokens::SimpleTokens;
        use crate::error::ServerError;
        let Some(token) = token(req.metadata()) else {
            let common_name = req
                .extensions()
                .get::<crate::tls::ConnInfo>()
                .and_then(|c| c.common_name.as_deref());
            return Ok(match common_name {
                Some(cn) if self.client_cert_auth && self.auth.enabled() => {
                    crate::pb::kvserverpb::Caller {
                        username: cn.to_string(),
                        auth_revision: self.auth.revision(),
                    }
                }
                _ => crate::pb::kvserverpb::Caller::default(),
            });
        };
        if self.auth.jwt.is_some() {
            return self
                .auth
                .resolve(token)
                .ok_or(ServerError::InvalidAuthToken);
        }
        let index = SimpleTokens::index_of(token).ok_or(ServerError::InvalidAuthToken)?;
        // A login committed but not applied here yet: wait for it, but not
        // for an index far beyond what is committed (a forged token).
        let committed = self.raft.commit_index.load(Ordering::Relaxed);
        if index > committed + TOKEN_INDEX_SLACK {
            return Err(ServerError::InvalidAuthToken);
        }
        let deadline = Instant::now() + self.request_timeout;
        while self.applied_index() < index {
            if Instant::now() >= deadline {
                return Err(ServerError::InvalidAuthToken);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.auth
            .resolve(token)
            .ok_or(ServerError::InvalidAuthToken)
    }

    /// Refuses a caller without the root role once auth is enabled
    /// (maintenance and membership calls, checked before anything is
    /// done, as etcd does).
    pub async fn admin<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> Result<crate::pb::kvserverpb::Caller, crate::error::ServerError> {
        let caller = self.caller(req).await?;
        self.auth.check_admin(Some(&caller))?;
        Ok(caller)
    }

    /// Whether this member is a learner (as the member list it applied
    /// says).
    pub fn is_learner(&self) -> bool {
        self.members.is_learner(self.member_id)
    }

    /// etcd's refusal of what a learner does not serve.
    pub fn refuse_on_learner(&self) -> Result<(), crate::error::ServerError> {
        if self.is_learner() {
            Err(crate::error::ServerError::NotSupportedForLearner)
        } else {
            Ok(())
        }
    }

    /// Stops the raft loop (it finishes its current turn, and the apply
    /// thread syncs the database and the WAL is closed).
    pub fn stop(&self) {
        let tx = self
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(Command::Stop);
        }
    }
}

/// The token a request carries: etcd's `token` metadata, or
/// `authorization` (what the JSON gateway passes on).
pub fn token(md: &tonic::metadata::MetadataMap) -> Option<&str> {
    md.get("token")
        .or_else(|| md.get("authorization"))
        .and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_carry_the_member_and_never_repeat() {
        let a = RequestIds::new(0xddd6_7b31_2462_fd7b);
        let b = RequestIds::new(0x9e73_7feb_b6b9_9eee);
        let ids_a: Vec<u64> = (0..1000).map(|_| a.next()).collect();
        let ids_b: Vec<u64> = (0..1000).map(|_| b.next()).collect();
        // etcd's layout: the member ID's low 16 bits on top.
        assert!(ids_a.iter().all(|id| id >> 48 == 0xfd7b));
        assert!(ids_b.iter().all(|id| id >> 48 == 0x9eee));
        assert!(ids_a.windows(2).all(|w| w[0] < w[1]));
        let all: std::collections::HashSet<u64> = ids_a.iter().chain(&ids_b).copied().collect();
        assert_eq!(all.len(), 2000);
        // A restart a moment later starts past where the last run was
        // (fewer than 256 IDs a millisecond stay within the counter).
        let before = RequestIds::new(0x1234);
        let last = (0..10).map(|_| before.next()).last().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(RequestIds::new(0x1234).next() > last);
    }
}
