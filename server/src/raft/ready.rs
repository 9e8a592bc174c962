//! The raft thread: one loop that ticks raft, steps peers' messages,
//! proposes, and handles every Ready. It waits for nothing: a Ready's
//! records go to the WAL, and raft goes on (raft-rs's asynchronous
//! persistence) until the WAL's notifier says they are durable
//! (`Command::Persisted`). Only then does raft hear it (`on_persist_ready`:
//! the leader counts its own log towards the quorum, a follower's answers
//! go out), so nothing is acknowledged or voted for before it is durable.
//! Meanwhile the next Readies are written behind it, which is what lets
//! the WAL's group commit and pipelining work. Applying, database fsyncs
//! and compaction run on the apply thread.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::*;
use raft::storage::MemStorage;
use raft::StateRole;
use tokio::sync::oneshot;

use crate::error::{ServerError, StartError};
use crate::raft::applier::ApplyTask;
use crate::raft::housekeeping::Housekeeping;
use crate::raft::Command;
use crate::shared::Shared;

/// Proposals held while no leader is known, at most.
const MAX_BACKLOG: usize = 10_000;

/// Forwarded configuration changes a leader holds, at most.
const MAX_HELD_FORWARDED: usize = 64;

/// A ReadIndex request not answered within this is asked again (a message
/// to the leader may have been lost).
const READ_RETRY: Duration = Duration::from_millis(500);

/// How often a removed leader asks its successor again to take over.
const HANDOFF_RETRY: Duration = Duration::from_millis(50);

type ReadReply = oneshot::Sender<Result<(), ServerError>>;

pub(crate) struct ReadBatch {
    ctx: Vec<u8>,
    sent: Instant,
    waiters: Vec<ReadReply>,
}

/// A Ready handed to raft (`advance_append_async`) whose records the WAL
/// has not yet made durable.
pub(crate) struct Unpersisted {
    number: u64,
    /// Whether it wrote anything: one that did not is done as soon as
    /// every Ready before it is.
    written: bool,
    /// Messages raft may send only once the Ready is durable (a
    /// follower's answers, votes).
    messages: Vec<Message>,
    /// A leader's snapshot at (index, term), installed once durable.
    install: Option<(u64, u64)>,
}

pub struct RaftLoop {
    pub(crate) node: RawNode<MemStorage>,
    pub(crate) log: Arc<wal::Wal>,
    pub(crate) shared: Arc<Shared>,
    /// This loop's own command channel: the WAL's answers come back on it.
    pub(crate) commands: Sender<Command>,
    /// Readies whose records are on their way to the WAL, oldest first.
    pub(crate) unpersisted: std::collections::VecDeque<Unpersisted>,
    /// A hard state that changed only its commit index: not worth an
    /// fdatasync of its own (raft's commit index may be lost and learnt
    /// again; a restart takes at least what the database applied). It
    /// goes with the next records written.
    pub(crate) unsynced_hs: Option<HardState>,
    /// The WAL failed: the loop stops with this.
    pub(crate) log_failed: Option<wal::Error>,
    pub(crate) apply: Sender<ApplyTask>,
    pub(crate) tick: Duration,
    /// Proposals (request IDs and data) that arrived while no leader was
    /// known.
    pub(crate) backlog: Vec<(u64, Vec<u8>)>,
    pub(crate) pending_reads: Vec<ReadReply>,
    pub(crate) reads_in_flight: Vec<ReadBatch>,
    pub(crate) next_read: u64,
    pub(crate) catchup_entries: u64,
    /// Entries before this are dropped from raft's in-memory log whoever
    /// is behind (the last raft snapshot less the catch-up entries).
    pub(crate) log_floor: u64,
    pub(crate) housekeeping: Housekeeping,
    pub(crate) last_leader: u64,
    pub(crate) last_housekeeping: Instant,
    /// Proposals made here and still waiting, with the term they were
    /// proposed in.
    pub(crate) proposed: std::collections::VecDeque<(u64, u64)>,
    /// Configuration changes held by this leader until the one before
    /// them is applied (raft would turn them into empty entries).
    pub(crate) held_conf: std::collections::VecDeque<(u64, ConfChange)>,
    /// Configuration changes a follower forwarded, held by this leader in
    /// the same way (with when they came: after the request timeout the
    /// follower has given up on them).
    pub(crate) held_forwarded: std::collections::VecDeque<(Box<Message>, Instant)>,
    /// A leader that removed itself hands leadership to this voter, asking
    /// again until it has (a follower that has not yet applied the
    /// removal refuses to campaign).
    pub(crate) handoff: Option<(u64, Instant)>,
    /// This member applied its own removal.
    pub(crate) removed: bool,
    /// Its own removal, held (with the apply thread's reply) while this
    /// leader hands leadership on.
    pub(crate) pending_removal: Option<(ConfChange, ConfReply, Instant)>,
}

type ConfReply = std::sync::mpsc::Sender<Result<ConfState, raft::Error>>;

impl RaftLoop {
    pub fn run(&mut self, rx: Receiver<Command>) {
        // `rx` lives to the end of this function, after the failure is
        // recorded: the apply thread, if it waits on this thread, learns
        // that raft stopped only once this thread's cause is the one kept.
        if let Err(e) = self.run_inner(&rx) {
            // The log failed: stop here rather than acknowledge anything
            // not durable. The member stops with this error (main exits
            // non-zero, a supervisor restarts it, the WAL recovers); main
            // logs why, once.
            self.shared.fail(format!("the raft thread stopped: {e}"));
            let _ = self.apply.send(ApplyTask::Stop);
        }
    }

    fn run_inner(&mut self, rx: &Receiver<Command>) -> Result<(), StartError> {
        let mut next_tick = Instant::now() + self.tick;
        'outer: loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        break 'outer;
                    }
                    // Everything already queued joins this turn.
                    for _ in 0..100_000 {
                        match rx.try_recv() {
                            Ok(cmd) => {
                                if !self.handle(cmd) {
                                    break 'outer;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick += self.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.tick;
                }
            }
            self.advance_applied();
            if self.last_housekeeping.elapsed() >= Duration::from_millis(100) {
                self.last_housekeeping = Instant::now();
                self.housekeep();
                self.trim_log();
            }
            self.start_reads();
            self.propose_held_conf();
            self.step_held_forwarded();
            self.hand_off();
            self.on_ready()?;
            self.fail_lost_proposals();
            if !self.backlog.is_empty() && self.leader() != 0 {
                for (id, data) in std::mem::take(&mut self.backlog) {
                    self.propose(id, data);
                }
            }
        }
        if let Some(e) = self.log_failed.take() {
            return Err(e.into());
        }
        let _ = self.apply.send(ApplyTask::Stop);
        tracing::info!("raft loop stopped");
        Ok(())
    }

    fn leader(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// Leader whose log has an entry of its own term committed (raft-rs
    /// drops read requests before that).
    pub(crate) fn can_serve_reads(&self) -> bool {
        let log = &self.node.raft.raft_log;
        if self.is_leader() {
            log.term(log.committed).unwrap_or(0) == self.node.raft.term
        } else {
            self.leader() != 0
        }
    }

    /// Returns false when the loop must stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::ReadIndex { reply } => self.pending_reads.push(reply),
            Command::Propose { id, data } => {
                if self.leader() == 0 {
                    if self.backlog.len() >= MAX_BACKLOG {
                        self.fail(id, ServerError::NoLeader);
                    } else {
                        self.backlog.push((id, data));
                    }
                } else {
                    self.propose(id, data);
                }
            }
            Command::ProposeConfChange { id, cc } => {
                self.advance_applied();
                self.held_conf.push_back((id, cc));
                self.propose_held_conf();
            }
            Command::ApplyConfChange { cc, reply } => {
                let me = self.shared.member_id;
                if cc.get_change_type() == ConfChangeType::RemoveNode
                    && cc.node_id == me
                    && self.is_leader()
                {
                    // This leader is removed: it hands leadership on first
                    // and applies its removal once it no longer leads
                    // (raft-rs cannot run a leader outside its own
                    // configuration).
                    self.start_handoff();
                    self.pending_removal = Some((cc, reply, Instant::now()));
                } else {
                    let _ = reply.send(self.apply_conf_change(&cc));
                }
            }
            Command::TransferLeader(to) => {
                tracing::info!("leadership transfer to {to:x} starting");
                self.node.transfer_leader(to);
            }
            Command::Progress { reply } => {
                let progress = self.is_leader().then(|| {
                    self.node
                        .raft
                        .prs()
                        .iter()
                        .map(|(id, pr)| (*id, pr.matched))
                        .collect()
                });
                let _ = reply.send(progress);
            }
            Command::Removed => self.shared.removed_from_cluster(),
            Command::Step(_) if self.removed => {
                // Removed from the cluster and about to stop: raft-rs
                // cannot step a removed leader's responses (it looks up
                // its own progress), and nothing here matters any more.
            }
            Command::Step(m) => {
                if m.get_msg_type() == MessageType::MsgPropose {
                    // A forwarded configuration change must see the
                    // previous one as applied if it is, and waits here
                    // until it is (raft would turn it into an empty entry
                    // and the follower's request would time out).
                    self.advance_applied();
                }
                if self.conf_change_must_wait(&m) {
                    if self.held_forwarded.len() < MAX_HELD_FORWARDED {
                        self.held_forwarded.push_back((m, Instant::now()));
                    }
                } else if let Err(e) = self.node.step(*m) {
                    tracing::debug!("raft message dropped: {e}");
                }
            }
            Command::Unreachable(id) => self.node.report_unreachable(id),
            Command::SnapshotSent { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.node.report_snapshot(to, status);
            }
            Command::CompactLog(index) => self.compact_log(index),
            Command::Persisted { number, result } => match result {
                Ok(()) => self.on_persisted(number),
                Err(e) => {
                    self.log_failed = Some(e);
                    return false;
                }
            },
            Command::Stop => return false,
        }
        true
    }

    fn fail(&self, id: u64, e: ServerError) {
        if let Some(w) = self.shared.waiters.take(id) {
            let _ = w.send((Err(e), 0));
        }
    }

    fn propose(&mut self, id: u64, data: Vec<u8>) {
        // A handler that gave up no longer waits: its request is not
        // proposed at all.
        if !self.shared.waiters.contains(id) {
            return;
        }
        if let Err(e) = self.node.propose(Vec::new(), data) {
            tracing::debug!("proposal dropped: {e}");
            self.fail(id, ServerError::NoLeader);
            return;
        }
        self.proposed.push_back((id, self.node.raft.term));
    }

    /// Proposals made in an earlier term that are still waiting once this
    /// member has applied an entry of the current term can never be
    /// applied (short of being proposed again): whatever of them reached
    /// the new leader's log was committed before its first entry, and the
    /// rest was dropped or will be overwritten. (Within one term the
    /// leader is the same, so a proposal may still commit.) They fail at once with etcd's "leader changed"
    /// instead of waiting for the request timeout, so clients retry
    /// sooner (the outcome is as unknown to them as after a timeout).
    fn fail_lost_proposals(&mut self) {
        if self.proposed.is_empty() {
            return;
        }
        let s = self.shared.clone();
        let term = self.node.raft.term;
        let settled = self.leader() != 0 && s.raft.applied_term.load(Ordering::Acquire) == term;
        // In proposal order, so oldest first: answered ones go, and lost
        // ones once the new leader has settled.
        while let Some(&(id, at)) = self.proposed.front() {
            if let Some(w) = (settled && at < term).then(|| s.waiters.take(id)).flatten() {
                let _ = w.send((Err(ServerError::LeaderChanged), 0));
            } else if s.waiters.contains(id) {
                break;
            }
            self.proposed.pop_front();
        }
    }

    /// Proposes the configuration changes held, one at a time on a leader
    /// (the next once the one before is applied); a follower forwards them
    /// all to the leader.
    /// Whether `m`, a proposal, carries a configuration change that this
    /// leader must hold until the one before it is applied.
    fn conf_change_must_wait(&self, m: &Message) -> bool {
        let r = &self.node.raft;
        m.get_msg_type() == MessageType::MsgPropose
            && self.is_leader()
            && r.pending_conf_index > r.raft_log.applied
            && m.get_entries().iter().any(|e| {
                matches!(
                    e.get_entry_type(),
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2
                )
            })
    }

    /// Steps the forwarded configuration changes held, in order, once the
    /// one before each is applied; those held past the request timeout
    /// are dropped (their follower has answered its client).
    fn step_held_forwarded(&mut self) {
        let timeout = self.shared.request_timeout;
        while let Some((m, at)) = self.held_forwarded.front() {
            if at.elapsed() >= timeout {
                self.held_forwarded.pop_front();
                continue;
            }
            if self.conf_change_must_wait(m) {
                return;
            }
            let Some((m, _)) = self.held_forwarded.pop_front() else {
                return;
            };
            if let Err(e) = self.node.step(*m) {
                tracing::debug!("raft message dropped: {e}");
            }
        }
    }

    fn propose_held_conf(&mut self) {
        while let Some((id, _)) = self.held_conf.front() {
            let id = *id;
            if !self.shared.waiters.contains(id) {
                self.held_conf.pop_front();
                continue;
            }
            if self.leader() == 0 {
                self.held_conf.pop_front();
                self.fail(id, ServerError::NoLeader);
                continue;
            }
            let r = &self.node.raft;
            if self.is_leader() && r.pending_conf_index > r.raft_log.applied {
                return;
            }
            let Some((_, cc)) = self.held_conf.pop_front() else {
                return;
            };
            if let Err(e) = self.node.propose_conf_change(Vec::new(), cc) {
                tracing::debug!("configuration change dropped: {e}");
                self.fail(id, ServerError::NoLeader);
                continue;
            }
            self.proposed.push_back((id, self.node.raft.term));
        }
    }

    /// Changes raft's configuration as the apply thread changed the member
    /// list. A leader that removed itself hands leadership to the voter
    /// most up to date before it stops.
    fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<ConfState, raft::Error> {
        let cs = self.node.apply_conf_change(cc)?;
        self.node.store().wl().set_conf_state(cs.clone());
        let me = self.shared.member_id;
        self.removed = !cs.voters.contains(&me) && !cs.learners.contains(&me);
        if self.is_leader() && !cs.voters.contains(&me) {
            // Still leading outside its configuration (the hand-off timed
            // out): step down rather than run raft-rs's leader paths.
            let term = self.node.raft.term;
            self.node.raft.become_follower(term, raft::INVALID_ID);
        }
        Ok(cs)
    }

    /// Asks the most up-to-date other voter to take leadership over.
    fn start_handoff(&mut self) {
        let me = self.shared.member_id;
        let voters = self.node.raft.prs().conf().voters().ids();
        let best = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me && voters.contains(**id))
            .max_by_key(|(_, pr)| pr.matched)
            .map(|(id, _)| *id);
        if let Some(to) = best {
            tracing::info!("removed from the cluster as its leader: handing leadership to {to:x}");
            self.node.transfer_leader(to);
            self.handoff = Some((to, Instant::now()));
        }
    }

    /// A removed leader: asks its successor again until it takes over (a
    /// follower that has not applied the removal yet refuses to
    /// campaign), then applies its removal; gives up waiting after two
    /// election timeouts.
    fn hand_off(&mut self) {
        if let Some((_, _, since)) = &self.pending_removal {
            if !self.is_leader() || since.elapsed() >= 2 * self.shared.election_timeout {
                if let Some((cc, reply, _)) = self.pending_removal.take() {
                    self.handoff = None;
                    let _ = reply.send(self.apply_conf_change(&cc));
                }
                return;
            }
        }
        let Some((to, at)) = self.handoff else {
            return;
        };
        if !self.is_leader() {
            self.handoff = None;
        } else if at.elapsed() >= HANDOFF_RETRY {
            self.node.raft.abort_leader_transfer();
            self.node.transfer_leader(to);
            self.handoff = Some((to, Instant::now()));
        }
    }

    pub(crate) fn propose_internal(&mut self, op: crate::pb::kvserverpb::request::Op) {
        use prost::Message as _;
        let data = crate::pb::kvserverpb::Request {
            id: 0,
            op: Some(op),
            caller: None,
        }
        .encode_to_vec();
        if let Err(e) = self.node.propose(Vec::new(), data) {
            tracing::warn!("internal proposal dropped: {e}");
        }
    }

    /// Tells raft how far the apply thread has got.
    fn advance_applied(&mut self) {
        let applied = self.shared.applied_index();
        let log = &self.node.raft.raft_log;
        let high = log.committed.min(log.persisted);
        if applied > log.applied && applied <= high {
            self.node.advance_apply_to(applied);
        }
    }

    /// One ReadIndex request for every read waiting now; requests not
    /// answered for a while are asked again.
    fn start_reads(&mut self) {
        if !self.can_serve_reads() {
            return;
        }
        let now = Instant::now();
        let mut retry = Vec::new();
        self.reads_in_flight.retain_mut(|b| {
            if now.duration_since(b.sent) >= READ_RETRY {
                retry.append(&mut b.waiters);
                false
            } else {
                true
            }
        });
        self.pending_reads.append(&mut retry);
        if self.pending_reads.is_empty() {
            return;
        }
        self.next_read += 1;
        let mut ctx = self.shared.member_id.to_be_bytes().to_vec();
        ctx.extend_from_slice(&self.next_read.to_be_bytes());
        self.reads_in_flight.push(ReadBatch {
            ctx: ctx.clone(),
            sent: now,
            waiters: std::mem::take(&mut self.pending_reads),
        });
        self.node.read_index(ctx);
    }

    /// A new leader (or none): reads in flight fail as etcd's do, since
    /// the old leader's answer can no longer be trusted to arrive.
    fn on_leader_change(&mut self, leader: u64) {
        let s = &self.shared;
        s.raft.leader.store(leader, Ordering::Release);
        s.raft.is_leader.store(self.is_leader(), Ordering::Release);
        s.raft.leader_changes.fetch_add(1, Ordering::AcqRel);
        if leader != 0 {
            s.metrics.leader_changes_seen.inc();
        }
        *s.raft
            .leader_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = (leader != 0).then(Instant::now);
        for b in self.reads_in_flight.drain(..) {
            for w in b.waiters {
                let _ = w.send(Err(ServerError::LeaderChanged));
            }
        }
        if leader == 0 {
            tracing::info!(term = self.node.raft.term, "no leader");
        } else {
            tracing::info!(
                term = self.node.raft.term,
                leader = format!("{leader:x}"),
                "leader elected"
            );
        }
        if self.is_leader() {
            // Leases are promoted when this leader's first entry is
            // applied (the apply thread), after everything before it.
            self.housekeeping.became_leader();
        }
        self.last_leader = leader;
    }

    fn on_ready(&mut self) -> Result<(), StartError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        fail::fail_point!("raft::ready");
        let store = self.node.store().clone();
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            let leader = ss.leader_id;
            if leader != self.last_leader || self.is_leader() != self.shared.is_leader() {
                self.on_leader_change(leader);
            }
        }
        // A leader sends before it persists (raft thesis 10.2.1).
        if !rd.messages().is_empty() {
            self.send(rd.take_messages());
        }
        let mut records = Vec::with_capacity(rd.entries().len() + 2);
        let mut install = None;
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let meta = snap.get_metadata();
            records.push(wal::Record::Snapshot {
                index: meta.index,
                term: meta.term,
                conf_state: meta
                    .get_conf_state()
                    .write_to_bytes()
                    .map_err(|e| StartError::Fatal(format!("encoding a conf state: {e}")))?,
            });
            install = Some((meta.index, meta.term));
            store.wl().apply_snapshot(snap)?;
        }
        for rs in rd.take_read_states() {
            if let Some(pos) = self
                .reads_in_flight
                .iter()
                .position(|b| b.ctx == rs.request_ctx)
            {
                let b = self.reads_in_flight.remove(pos);
                let _ = self.apply.send(ApplyTask::ReadBarrier {
                    index: rs.index,
                    waiters: b.waiters,
                });
            }
        }
        let committed = rd.take_committed_entries();
        if !committed.is_empty() {
            let _ = self.apply.send(ApplyTask::Entries(committed));
        }
        for e in rd.entries() {
            let data = e
                .write_to_bytes()
                .map_err(|err| StartError::Fatal(format!("encoding entry {}: {err}", e.index)))?;
            records.push(wal::Record::Entry {
                index: e.index,
                term: e.term,
                data,
            });
        }
        if let Some(hs) = rd.hs() {
            self.shared.raft.term.store(hs.term, Ordering::Relaxed);
            self.shared
                .raft
                .commit_index
                .store(hs.commit, Ordering::Relaxed);
            self.unsynced_hs = Some(hs.clone());
        }
        // A hard state goes to the WAL with entries, a snapshot, or when
        // its term or vote changed (raft's must_sync); a new commit index
        // alone waits for the next of those.
        if !records.is_empty() || rd.must_sync() {
            if let Some(hs) = self.unsynced_hs.take() {
                records.push(wal::Record::HardState {
                    term: hs.term,
                    vote: hs.vote,
                    commit: hs.commit,
                });
            }
        }
        // raft reads what it has handed over from the storage at once
        // (below its persisted index only what the WAL holds).
        if !rd.entries().is_empty() {
            store.wl().append(rd.entries())?;
        }
        if let Some(hs) = rd.hs() {
            store.wl().set_hardstate(hs.clone());
        }
        let number = rd.number();
        let written = !records.is_empty();
        self.unpersisted.push_back(Unpersisted {
            number,
            written,
            messages: rd.take_persisted_messages(),
            install,
        });
        if written {
            let answer = self.commands.clone();
            self.log.append_then(records, move |result| {
                let _ = answer.send(Command::Persisted { number, result });
            });
        }
        self.node.advance_append_async(rd);
        if !written {
            self.on_persisted(0);
        }
        Ok(())
    }

    /// The Readies up to `number` are durable (and those after them that
    /// wrote nothing are done as well): their held messages go out, a
    /// leader's snapshot is installed, and raft hears of it.
    fn on_persisted(&mut self, number: u64) {
        let mut last = None;
        while let Some(front) = self.unpersisted.front() {
            if front.written && front.number > number {
                break;
            }
            let Some(done) = self.unpersisted.pop_front() else {
                break;
            };
            if !done.messages.is_empty() {
                self.send(done.messages);
            }
            if let Some((index, term)) = done.install {
                // Durable in the WAL; its database is installed by the
                // apply thread, in order with the entries after it.
                let _ = self.apply.send(ApplyTask::Install { index, term });
            }
            last = Some(done.number);
        }
        if let Some(n) = last {
            self.node.on_persist_ready(n);
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for id in self.shared.transport.send(msgs) {
            self.node.report_unreachable(id);
        }
    }

    /// A raft snapshot at `index` was recorded: nothing before it less the
    /// catch-up entries is kept for anyone, however far behind.
    fn compact_log(&mut self, index: u64) {
        self.log_floor = self
            .log_floor
            .max(index.saturating_sub(self.catchup_entries));
        self.trim_log();
    }

    /// Drops the in-memory entries no one needs: those applied here and
    /// matched by every follower this leader tracks, less the catch-up
    /// entries (`--experimental-snapshot-catchup-entries`). A follower
    /// behind keeps the leader's entries from its match on, back to the
    /// last raft snapshot's floor as before, so it catches up from entries
    /// as with etcd; a member alone, or whose followers keep up, holds
    /// about the catch-up entries, not everything since the last snapshot
    /// (up to `--snapshot-count`, 100,000). Restarts read the WAL, not this.
    pub(crate) fn trim_log(&mut self) {
        let raft = &self.node.raft;
        let mut keep = raft.raft_log.applied;
        if self.is_leader() {
            for (id, pr) in raft.prs().iter() {
                if *id != raft.id {
                    keep = keep.min(pr.matched);
                }
            }
        }
        let store = self.node.store().clone();
        let first = raft::Storage::first_index(&store).unwrap_or(0);
        let target = keep
            .saturating_sub(self.catchup_entries)
            .max(self.log_floor)
            .min(raft.raft_log.applied)
            .min(store.rl().hard_state().commit);
        // Each step moves what is kept to the front of raft's vector: not
        // for fewer than TRIM_STEP entries at a time.
        if target >= first + TRIM_STEP || (target > first && target == self.log_floor) {
            if let Err(e) = store.wl().compact(target) {
                tracing::warn!("compacting the raft log at {target}: {e}");
            }
        }
        let first = raft::Storage::first_index(&store).unwrap_or(0);
        let last = raft::Storage::last_index(&store).unwrap_or(0);
        self.shared
            .raft
            .log_entries
            .store((last + 1).saturating_sub(first), Ordering::Relaxed);
    }
}

/// Fewest entries dropped from raft's in-memory log at a time.
const TRIM_STEP: u64 = 1024;
