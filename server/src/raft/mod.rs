//! Consensus: raft-rs driven by one thread, persisted through the WAL,
//! applied to the key space by another.
//!
//! - [`bootstrap`]: opening or creating the member's data (database, WAL,
//!   raft's log rebuilt from it) and starting both threads.
//! - [`ready`]: the raft thread. It ticks, steps messages from peers,
//!   proposes, and handles each Ready: messages to the transport, entries
//!   and hard state to the WAL (one fdatasync for the lot), committed
//!   entries to the apply thread.
//! - [`applier`]: the apply thread. It applies committed entries in
//!   order, answers the handlers waiting for them, releases linearizable
//!   reads, installs snapshots from the leader, takes the periodic raft
//!   snapshot (database fsync, WAL snapshot record, marker) and runs the
//!   compaction steps, so the raft thread never waits for any of it.
//! - [`housekeeping`]: the leader's periodic duties (lease expiry and
//!   checkpoints, the space quota, auto-compaction).
//!
//! ## A write, step by step
//! 1. A handler calls [`Shared::propose`]: a fresh request ID (unique
//!    across members), a waiter registered under it, [`Command::Propose`].
//! 2. The raft thread proposes it; on a follower raft forwards it to the
//!    leader.
//! 3. The leader appends it to its WAL (fsynced) and replicates it; once a
//!    quorum has it durable it is committed.
//! 4. Every member's apply thread applies it; the member where the handler
//!    waits answers it with the result.
//!
//! ## A linearizable read
//! Handlers send [`Command::ReadIndex`]; the reads waiting when the raft
//! thread takes its turn share one raft ReadIndex request (sent to the
//! leader from a follower). When raft confirms the index, the apply thread
//! releases them once it has applied that far, and they read an mvcc
//! snapshot.

pub mod applier;
pub mod bootstrap;
pub mod housekeeping;
pub mod ready;

use std::sync::atomic::Ordering;
use std::time::Instant;

use prost::Message as _;
use tokio::sync::oneshot;

use crate::apply::Applied;
use crate::error::ServerError;
use crate::pb::kvserverpb::{request::Op, Caller, MemberChange, Request};
use crate::shared::Shared;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState};

pub use bootstrap::{start, Threads};

/// Work for the raft thread.
pub enum Command {
    /// A request (already encoded) whose waiter is registered under `id`.
    Propose {
        id: u64,
        data: Vec<u8>,
    },
    /// A membership change: a raft configuration change whose context is
    /// the request (waiter under `id`).
    ProposeConfChange {
        id: u64,
        cc: ConfChange,
    },
    /// The apply thread applied a configuration change to the member list;
    /// raft's configuration changes with it (the apply thread waits).
    ApplyConfChange {
        cc: ConfChange,
        reply: std::sync::mpsc::Sender<Result<ConfState, raft::Error>>,
    },
    /// Hand leadership to this voter (MoveLeader).
    TransferLeader(u64),
    /// The leader's view of how far each member's log matches its own
    /// (None: not the leader).
    Progress {
        reply: oneshot::Sender<Option<Vec<(u64, u64)>>>,
    },
    /// A peer refused this member's messages: it was removed from the
    /// cluster.
    Removed,
    /// Resolves once the applied index has reached a read index confirmed
    /// after the command was sent.
    ReadIndex {
        reply: oneshot::Sender<Result<(), ServerError>>,
    },
    /// The WAL made the records of the Ready numbered `number` (and of
    /// every one before it) durable, or failed to.
    Persisted {
        number: u64,
        result: Result<(), wal::Error>,
    },
    /// A raft message from a peer.
    Step(Box<raft::eraftpb::Message>),
    /// The transport could not deliver to this peer.
    Unreachable(u64),
    /// How a snapshot sent to a peer ended.
    SnapshotSent {
        to: u64,
        ok: bool,
    },
    /// The apply thread took a raft snapshot at this index: the log before
    /// it may go (less the catch-up entries kept).
    CompactLog(u64),
    Stop,
}

/// Slack on top of `--max-request-bytes` for the request's envelope.
const ENVELOPE_BYTES: usize = 4096;

/// Committed entries not yet applied beyond which new proposals are
/// refused with "too many requests" (etcd's
/// maxGapBetweenApplyAndCommitIndex).
pub const MAX_APPLY_LAG: u64 = 5000;

/// Proposals of this member waiting for their answer, at most; one more is
/// refused with "too many requests".
pub const MAX_PENDING_PROPOSALS: usize = 20_000;

impl Shared {
    pub(crate) fn send(&self, cmd: Command) -> Result<(), ServerError> {
        let guard = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(tx) => tx.send(cmd).map_err(|_| ServerError::Stopped),
            None => Err(ServerError::Stopped),
        }
    }

    /// Proposes the server's own `op` (no caller: not checked against
    /// permissions) through raft and waits for its answer (on this member,
    /// whichever member leads).
    pub async fn propose(&self, op: Op) -> Result<(Applied, i64), ServerError> {
        self.submit(op, None, None).await
    }

    /// Proposes a client's `op`: it is checked against `caller`'s
    /// permissions when applied.
    pub async fn propose_as(&self, op: Op, caller: &Caller) -> Result<(Applied, i64), ServerError> {
        self.submit(op, None, Some(caller.clone())).await
    }

    /// Proposes a membership change as a raft configuration change of
    /// `change_type` for `node` and waits until it is applied here.
    pub async fn propose_conf_change(
        &self,
        change_type: ConfChangeType,
        node: u64,
        change: MemberChange,
    ) -> Result<(Applied, i64), ServerError> {
        self.submit(Op::MemberChange(change), Some((change_type, node)), None)
            .await
    }

    /// The leader's progress of each member: (member, index its log
    /// matches the leader's to); None on a follower.
    pub async fn progress(&self) -> Result<Option<Vec<(u64, u64)>>, ServerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Progress { reply })?;
        rx.await.map_err(|_| ServerError::Stopped)
    }

    async fn submit(
        &self,
        op: Op,
        conf: Option<(ConfChangeType, u64)>,
        caller: Option<Caller>,
    ) -> Result<(Applied, i64), ServerError> {
        let start = Instant::now();
        let changes = self.raft.leader_changes.load(Ordering::Acquire);
        let id = self.ids.next();
        let data = Request {
            id,
            op: Some(op),
            caller,
        }
        .encode_to_vec();
        if data.len() > self.max_request_bytes.saturating_add(ENVELOPE_BYTES) {
            return Err(ServerError::TooLarge);
        }
        // etcd's back-pressure: a member whose applying lags what raft
        // has committed, or with too many proposals waiting, refuses new
        // ones at once rather than queue them without bound.
        let applied = self.raft.applied_index.load(Ordering::Acquire);
        let committed = self.raft.commit_index.load(Ordering::Acquire);
        if committed > applied + MAX_APPLY_LAG {
            return Err(ServerError::TooManyRequests);
        }
        let rx = self
            .waiters
            .register_bounded(id, MAX_PENDING_PROPOSALS)
            .ok_or(ServerError::TooManyRequests)?;
        // Whatever happens to this call (answered, timed out, the client
        // gone), the waiter goes with it.
        struct Forget<'a>(&'a Shared, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.waiters.take(self.1);
                self.0.metrics.proposals_pending.dec();
            }
        }
        self.metrics.proposals_pending.inc();
        let _forget = Forget(self, id);
        let sent = match conf {
            None => self.send(Command::Propose { id, data }),
            Some((change_type, node_id)) => {
                let mut cc = ConfChange::default();
                cc.set_change_type(change_type);
                cc.node_id = node_id;
                cc.context = data.into();
                self.send(Command::ProposeConfChange { id, cc })
            }
        };
        // Failed: not handed to raft, or not applied in time (etcd's
        // proposals_failed_total); an error the entry's apply gave is not.
        let answer = match sent {
            Err(e) => Err(e),
            Ok(()) => match tokio::time::timeout(self.request_timeout, rx).await {
                Ok(Ok(answer)) => return answer.0.map(|a| (a, answer.1)),
                Ok(Err(_)) => Err(ServerError::Stopped),
                Err(_) => Err(self.timeout_error(start, changes)),
            },
        };
        self.metrics.proposals_failed.inc();
        answer
    }

    /// Waits until this member has applied everything committed before
    /// the call (raft's ReadIndex, at the leader).
    pub async fn read_index(&self) -> Result<(), ServerError> {
        let start = Instant::now();
        let changes = self.raft.leader_changes.load(Ordering::Acquire);
        let (reply, rx) = oneshot::channel();
        self.send(Command::ReadIndex { reply })?;
        let result = match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => {
                self.metrics.slow_read_indexes.inc();
                Err(self.timeout_error(start, changes))
            }
        };
        if result.is_err() {
            self.metrics.read_indexes_failed.inc();
        }
        result
    }

    /// etcd's reading of a request that timed out: no leader now, a leader
    /// change while it waited, or a plain timeout.
    fn timeout_error(&self, _start: Instant, leader_changes: u64) -> ServerError {
        if self.leader() == 0 {
            ServerError::NoLeader
        } else if self.raft.leader_changes.load(Ordering::Acquire) != leader_changes {
            ServerError::TimeoutLeaderFail
        } else {
            ServerError::Timeout
        }
    }
}
