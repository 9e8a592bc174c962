//! The apply thread: applies committed entries to the key space in log
//! order (each exactly once: the database records the index of the last
//! one applied in the same transaction), answers the handlers waiting for
//! them, releases linearizable reads, installs snapshots from the leader,
//! takes the periodic raft snapshot, and runs compaction steps between
//! batches.
//!
//! Batches are committed to the database without fdatasync (the WAL holds
//! them). Every [`DB_SYNC_INTERVAL`] with something applied, or every
//! [`DB_SYNC_ENTRIES`] entries, the database is made durable (as etcd's
//! backend commits every 100 ms or 10,000 writes), so a restart replays
//! only the entries applied since, not everything since the last raft
//! snapshot.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfState, Entry, EntryType};
use tokio::sync::oneshot;

use crate::apply::{self, Applied, ApplyContext, ApplyResult};
use crate::datadir;
use crate::error::ServerError;
use crate::pb::kvserverpb::{member_change::Kind, request::Op, MemberChange, Request};
use crate::raft::Command;
use crate::shared::Shared;

/// Why the apply thread stopped: the member cannot go on (a restart
/// recovers from the WAL).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("applying entry {index}: {source}")]
    Entry { index: u64, source: mvcc::Error },
    #[error("installing the snapshot at index {index}: {source}")]
    Install { index: u64, source: mvcc::Error },
    #[error("the database: {0}")]
    Store(#[from] mvcc::Error),
    #[error("the WAL: {0}")]
    Wal(#[from] wal::Error),
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    #[error("encoding the membership: {0}")]
    Encode(#[from] protobuf::ProtobufError),
    #[error("the raft thread stopped")]
    RaftStopped,
}

/// Work for the apply thread, in log order.
pub enum ApplyTask {
    Entries(Vec<Entry>),
    /// Reads to release once everything up to `index` is applied.
    ReadBarrier {
        index: u64,
        waiters: ReadWaiters,
    },
    /// A leader's snapshot at (index, term), durable in the WAL; its
    /// database waits at `datadir::received_db_path(index)`.
    Install {
        index: u64,
        term: u64,
    },
    Stop,
}

type ReadWaiters = Vec<oneshot::Sender<Result<(), ServerError>>>;

/// The database is made durable this long after the first batch applied
/// since the last time, at most.
pub const DB_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// ...or once this many entries have been applied since.
pub const DB_SYNC_ENTRIES: u64 = 10_000;

pub struct Applier {
    shared: Arc<Shared>,
    log: Arc<wal::Wal>,
    raft: Sender<Command>,
    /// Applied entries between raft snapshots.
    snapshot_count: u64,
    /// Index of the last raft snapshot.
    last_snapshot: u64,
    /// Term of the last entry applied.
    last_term: u64,
    reads: Vec<(u64, ReadWaiters)>,
    /// Physical compactions answer once the records are gone.
    physical_waiters: Vec<(oneshot::Sender<ApplyResult>, ApplyResult)>,
    compaction_pending: bool,
    /// Applying one request for longer than this is logged.
    warn_apply: Duration,
    /// When the first batch not yet durable in the database was applied.
    unsynced_since: Option<Instant>,
    /// Entries applied since the database was last made durable.
    unsynced_entries: u64,
}

impl Applier {
    pub fn new(
        shared: Arc<Shared>,
        log: Arc<wal::Wal>,
        raft: Sender<Command>,
        snapshot_count: u64,
        last_snapshot: u64,
        warn_apply: Duration,
    ) -> Applier {
        let last_term = shared.store.term();
        Applier {
            shared,
            log,
            raft,
            snapshot_count,
            last_snapshot,
            last_term,
            reads: Vec::new(),
            physical_waiters: Vec::new(),
            compaction_pending: true,
            warn_apply,
            unsynced_since: None,
            unsynced_entries: 0,
        }
    }

    pub fn run(mut self, rx: Receiver<ApplyTask>) {
        loop {
            let wait = if self.compaction_pending {
                Some(Duration::from_millis(1))
            } else {
                self.unsynced_since
                    .map(|t| DB_SYNC_INTERVAL.saturating_sub(t.elapsed()))
            };
            let task = if let Some(wait) = wait {
                match rx.recv_timeout(wait) {
                    Ok(t) => Some(t),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(t) => Some(t),
                    Err(_) => break,
                }
            };
            let result = match task {
                None => Ok(()),
                Some(ApplyTask::Stop) => break,
                Some(ApplyTask::Entries(entries)) => {
                    // Batches already queued are applied together.
                    let mut entries = entries;
                    let mut stop = false;
                    let mut later = Vec::new();
                    while let Ok(t) = rx.try_recv() {
                        match t {
                            ApplyTask::Entries(more) if later.is_empty() => entries.extend(more),
                            ApplyTask::Stop => {
                                stop = true;
                                break;
                            }
                            other => {
                                later.push(other);
                                break;
                            }
                        }
                    }
                    let mut r = self.apply(entries);
                    for t in later {
                        if r.is_ok() {
                            r = self.handle(t);
                        }
                    }
                    if stop {
                        if let Err(e) = r {
                            self.shared.fail(format!("the apply thread stopped: {e}"));
                        }
                        break;
                    }
                    r
                }
                Some(t) => self.handle(t),
            };
            let result = result.and_then(|()| self.compact_step());
            let result = result.and_then(|()| self.maybe_snapshot());
            let result = result.and_then(|()| self.maybe_sync());
            if let Err(e) = result {
                // The database or the log failed: nothing more is applied
                // or acknowledged. A restart recovers from the WAL.
                tracing::error!("the apply thread stops: {e}");
                self.shared.fail(format!("the apply thread stopped: {e}"));
                break;
            }
        }
        if let Err(e) = self.shared.store.sync() {
            tracing::error!("syncing the database at shutdown: {e}");
        }
        tracing::info!("apply thread stopped");
    }

    fn handle(&mut self, task: ApplyTask) -> Result<(), ApplyError> {
        match task {
            ApplyTask::Entries(e) => self.apply(e),
            ApplyTask::ReadBarrier { index, waiters } => {
                self.reads.push((index, waiters));
                self.release_reads();
                Ok(())
            }
            ApplyTask::Install { index, term } => self.install(index, term),
            ApplyTask::Stop => Ok(()),
        }
    }

    fn release_reads(&mut self) {
        let applied = self.shared.applied_index();
        let mut i = 0;
        while i < self.reads.len() {
            if self.reads[i].0 <= applied {
                for w in self.reads.swap_remove(i).1 {
                    let _ = w.send(Ok(()));
                }
            } else {
                i += 1;
            }
        }
    }

    /// Applies committed entries to the key space in one batch.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ApplyError> {
        fail::fail_point!("apply::entries");
        let Some(last) = entries.last().map(|e| (e.index, e.term)) else {
            return Ok(());
        };
        let store = self.shared.store.clone();
        let done = store.consistent_index();
        let entries: Vec<Entry> = entries.into_iter().filter(|e| e.index > done).collect();
        if entries.is_empty() {
            // Replayed after a restart: already in the database.
            self.set_applied(last.0.max(done), last.1);
            return Ok(());
        }
        let mut batch = store.apply()?;
        let mut answers: Vec<(u64, ApplyResult, bool)> = Vec::new();
        let mut changes: Vec<MemberChange> = Vec::new();
        for e in &entries {
            if e.get_entry_type() == EntryType::EntryConfChange {
                if let Some((id, result, change)) = self.apply_conf_change(&mut batch, e)? {
                    if result.0.is_ok() {
                        changes.push(change);
                    }
                    if id != 0 {
                        answers.push((id, result, false));
                    }
                }
                continue;
            }
            if e.get_entry_type() != EntryType::EntryNormal {
                continue;
            }
            if e.get_data().is_empty() {
                // A new leader's first entry: once everything before it is
                // applied, the leader takes over leases' clocks, giving
                // each its remaining TTL plus an election timeout, so none
                // expires because leadership moved (etcd's Promote). Once
                // per term: raft also leaves empty entries in place of
                // configuration changes it refused.
                let s = &self.shared;
                if s.is_leader()
                    && e.term == s.raft.term.load(Ordering::Acquire)
                    && s.raft.lease_term.load(Ordering::Acquire) != e.term
                {
                    s.store.lease_promote(s.election_timeout);
                    s.raft.lease_term.store(e.term, Ordering::Release);
                }
                continue;
            }
            let req = match Request::decode(e.get_data()) {
                Ok(r) => r,
                Err(err) => {
                    tracing::error!("entry {} does not decode: {err}", e.index);
                    continue;
                }
            };
            let physical = matches!(&req.op, Some(Op::Compaction(c)) if c.physical);
            let mut alarms = self.shared.alarms.lock().unwrap_or_else(|e| e.into_inner());
            let mut ctx = ApplyContext {
                alarms: &mut alarms,
                members: &self.shared.members,
                auth: &self.shared.auth,
                index: e.index,
                metrics: &self.shared.metrics,
            };
            let started = Instant::now();
            let result =
                apply::apply(&mut batch, &req, &mut ctx).map_err(|source| ApplyError::Entry {
                    index: e.index,
                    source,
                })?;
            let took = started.elapsed();
            if took > self.warn_apply {
                self.shared.metrics.slow_apply.inc();
                tracing::warn!(
                    ?took,
                    expected = ?self.warn_apply,
                    index = e.index,
                    "apply request took too long"
                );
            }
            drop(alarms);
            if let (Some(Op::MemberChange(c)), Ok(_)) = (&req.op, &result.0) {
                changes.push(c.clone());
            }
            if req.id != 0 {
                answers.push((req.id, result, physical));
            }
        }
        batch.set_term(last.1)?;
        batch.commit(last.0)?;
        self.unsynced_since.get_or_insert_with(Instant::now);
        self.unsynced_entries += entries.len() as u64;
        self.set_applied(last.0, last.1);
        for c in &changes {
            self.after_member_change(c);
        }
        for (id, result, physical) in answers {
            if let Some(w) = self.shared.waiters.take(id) {
                if physical && result.0.is_ok() {
                    self.physical_waiters.push((w, result));
                    self.compaction_pending = true;
                } else {
                    let _ = w.send(result);
                }
            }
        }
        self.compaction_pending = true;
        self.release_reads();
        Ok(())
    }

    /// A committed configuration change: checked against the member list
    /// (etcd's rules; every member decides the same), then raft's
    /// configuration and the member list change together. Returns the
    /// waiting request's ID, its answer and the change.
    fn apply_conf_change(
        &mut self,
        batch: &mut mvcc::Apply<'_>,
        e: &Entry,
    ) -> Result<Option<(u64, ApplyResult, MemberChange)>, ApplyError> {
        use protobuf::Message as _;
        let cc = match ConfChange::parse_from_bytes(e.get_data()) {
            Ok(cc) => cc,
            Err(err) => {
                tracing::error!("configuration change {} does not decode: {err}", e.index);
                return Ok(None);
            }
        };
        let req = match Request::decode(cc.get_context()) {
            Ok(r) => r,
            Err(err) => {
                tracing::error!("configuration change {} has a bad context: {err}", e.index);
                return Ok(None);
            }
        };
        let Some(Op::MemberChange(change)) = req.op else {
            tracing::error!("configuration change {} carries no member change", e.index);
            return Ok(None);
        };
        let s = self.shared.clone();
        let rev = batch.revision();
        if let Err(err) = s.members.validate(&change) {
            tracing::info!(
                "refused membership change {:?} of {:x}: {err}",
                change.kind(),
                cc.node_id
            );
            return Ok(Some((req.id, (Err(err), rev), change)));
        }
        let (reply, rx) = std::sync::mpsc::channel();
        self.raft
            .send(Command::ApplyConfChange {
                cc: cc.clone(),
                reply,
            })
            .map_err(|_| ApplyError::RaftStopped)?;
        match rx.recv().map_err(|_| ApplyError::RaftStopped)? {
            Ok(_) => {
                let m = s.members.apply_change(batch, &change)?;
                tracing::info!(
                    "membership change applied: {:?} {:x} {:?}{}",
                    change.kind(),
                    m.id,
                    m.peer_urls,
                    if m.is_learner { " (learner)" } else { "" }
                );
                Ok(Some((
                    req.id,
                    (Ok(Applied::Members(s.members.list())), rev),
                    change,
                )))
            }
            Err(err) => {
                tracing::warn!("raft refused configuration change {}: {err}", e.index);
                let err = ServerError::Internal(format!("raft refused the change: {err}"));
                Ok(Some((req.id, (Err(err), rev), change)))
            }
        }
    }

    /// Once a membership change is committed: peers added, moved or
    /// dropped; this member stops if it was removed.
    fn after_member_change(&self, c: &MemberChange) {
        let s = &self.shared;
        let id = c.member.as_ref().map_or(0, |m| m.id);
        match c.kind() {
            Kind::Remove if id == s.member_id => s.removed_from_cluster(),
            Kind::Remove => s.transport.remove_peer(id),
            Kind::Add | Kind::Update if id != s.member_id => {
                if let Some(m) = s.members.get(id) {
                    s.transport.add_peer(id, m.peer_urls);
                }
            }
            _ => {}
        }
    }

    fn set_applied(&mut self, index: u64, term: u64) {
        self.last_term = term;
        self.shared.raft.applied_term.store(term, Ordering::Release);
        self.shared
            .raft
            .applied_index
            .store(index, Ordering::Release);
    }

    /// Replaces the key space with the leader's snapshot database, then
    /// moves the WAL's restart point to it.
    fn install(&mut self, index: u64, term: u64) -> Result<(), ApplyError> {
        let s = self.shared.clone();
        let path = datadir::received_db_path(&s.data_dir, index);
        if s.store.consistent_index() >= index {
            // Already there (installed before a crash, on restart).
            let _ = std::fs::remove_file(&path);
        } else {
            s.store
                .install(&path)
                .map_err(|source| ApplyError::Install { index, source })?;
        }
        s.members.reload(&s.store)?;
        s.auth.reload(&s.store)?;
        *s.alarms.lock().unwrap_or_else(|e| e.into_inner()) =
            crate::alarms::Alarms::from_store(&s.store)?;
        let list = s.members.list();
        for m in &list {
            if m.id != s.member_id {
                s.transport.add_peer(m.id, m.peer_urls.clone());
            }
        }
        for id in s.transport.peer_ids() {
            if !list.iter().any(|m| m.id == id) {
                s.transport.remove_peer(id);
            }
        }
        if s.members.is_removed(s.member_id) {
            s.removed_from_cluster();
        }
        let applied = s.store.consistent_index();
        self.set_applied(applied, term);
        datadir::write_marker(&s.data_dir, wal::SnapshotMarker { index, term })?;
        self.log.release_to(index).wait()?;
        self.last_snapshot = index;
        // A newer one may have arrived meanwhile: only this and older go.
        datadir::remove_received_up_to(&s.data_dir, index);
        tracing::info!(
            index,
            term,
            revision = s.store.current_revision(),
            "installed the leader's snapshot"
        );
        self.release_reads();
        Ok(())
    }

    /// Makes the database durable once [`DB_SYNC_INTERVAL`] has passed
    /// since the first batch not yet durable, or [`DB_SYNC_ENTRIES`]
    /// entries wait.
    fn maybe_sync(&mut self) -> Result<(), ApplyError> {
        let Some(since) = self.unsynced_since else {
            return Ok(());
        };
        if since.elapsed() < DB_SYNC_INTERVAL && self.unsynced_entries < DB_SYNC_ENTRIES {
            return Ok(());
        }
        let s = &self.shared;
        crate::metrics::Metrics::time(&s.metrics.backend_sync, || s.store.sync())?;
        self.unsynced_since = None;
        self.unsynced_entries = 0;
        Ok(())
    }

    /// Removes compacted records in bounded steps between batches.
    fn compact_step(&mut self) -> Result<(), ApplyError> {
        if !self.compaction_pending {
            return Ok(());
        }
        let done = self.shared.store.compact_step(10_000)?;
        if done {
            self.compaction_pending = false;
            for (w, r) in self.physical_waiters.drain(..) {
                let _ = w.send(r);
            }
        }
        Ok(())
    }

    /// Every `--snapshot-count` applied entries: make the database durable
    /// up to the applied index, record a snapshot there in the WAL and the
    /// marker, then drop the log before it (WAL segments, and raft's
    /// in-memory entries less the catch-up ones). A restart reads the WAL
    /// from the marker on.
    fn maybe_snapshot(&mut self) -> Result<(), ApplyError> {
        let s = &self.shared;
        let applied = s.applied_index();
        if applied < self.last_snapshot + self.snapshot_count {
            return Ok(());
        }
        let term = self.last_term;
        crate::metrics::Metrics::time(&s.metrics.backend_sync, || s.store.sync())?;
        let conf: ConfState = crate::membership::conf_state(&s.members.list());
        self.log
            .append(vec![wal::Record::Snapshot {
                index: applied,
                term,
                conf_state: conf.write_to_bytes()?,
            }])
            .wait()?;
        datadir::write_marker(
            &s.data_dir,
            wal::SnapshotMarker {
                index: applied,
                term,
            },
        )?;
        let released = self.log.release_to(applied).wait()?;
        let _ = self.raft.send(Command::CompactLog(applied));
        self.last_snapshot = applied;
        tracing::info!(index = applied, term, released, "raft snapshot");
        Ok(())
    }
}
