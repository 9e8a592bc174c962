//! The raft member: one thread drives a raft-rs `RawNode` through its
//! Ready loop, makes every entry durable in the WAL before anything depends
//! on it, applies committed entries to the key space in order, and answers
//! the gRPC handlers waiting for them.
//!
//! ## A write, step by step
//! 1. A handler sends [`Command::Propose`] with a fresh request ID and
//!    waits on a oneshot channel.
//! 2. The loop proposes every command that arrived since its last turn;
//!    the next Ready carries them as new entries.
//! 3. The entries (and the hard state) go to the WAL in one append: one
//!    fdatasync for all of them (group commit).
//! 4. `advance` tells raft they are durable; with one member they are now
//!    committed, and come back as committed entries.
//! 5. They are applied to mvcc in one batch, whose B+tree transaction
//!    records the raft index (the consistent index), and each waiting
//!    handler gets its answer.
//!
//! ## A linearizable read
//! Handlers waiting for a read send [`Command::ReadIndex`]; every read
//! waiting when the loop takes its turn shares one raft ReadIndex request.
//! When raft confirms the index, the reads are released as soon as the
//! applied index reaches it, and run on an mvcc snapshot.
//!
//! ## Restart
//! The B+tree holds everything applied up to its consistent index (only
//! what was synced survives a crash); the WAL holds every entry since the
//! last raft snapshot marker. raft's log is rebuilt from the WAL and
//! entries at or below the consistent index are not applied again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::*;
use raft::storage::MemStorage;
use raft::StateRole;
use tokio::sync::oneshot;

use crate::apply::{self, Applied, ApplyResult};
use crate::config::{AutoCompaction, Config};
use crate::error::ServerError;
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::{request::Op, Request};

/// Work for the raft loop.
pub enum Command {
    Propose {
        op: Op,
        reply: oneshot::Sender<ApplyResult>,
    },
    /// Resolves once the applied index has reached a read index confirmed
    /// after the command was sent.
    ReadIndex { reply: oneshot::Sender<()> },
}

/// A member of the cluster, as the Cluster service reports it.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// Raised alarms (etcd's alarm store), changed only through raft.
#[derive(Debug, Default)]
pub struct Alarms {
    list: Vec<pb::AlarmMember>,
}

impl Alarms {
    /// The alarms the store recorded.
    pub fn from_store(store: &mvcc::Store) -> Result<Alarms, String> {
        Ok(Alarms {
            list: store
                .alarms()
                .map_err(|e| format!("reading alarms: {e}"))?
                .into_iter()
                .map(|(member_id, alarm)| pb::AlarmMember { member_id, alarm })
                .collect(),
        })
    }

    pub fn no_space(&self) -> bool {
        self.list
            .iter()
            .any(|a| a.alarm == pb::AlarmType::Nospace as i32)
    }

    pub fn list(&self) -> Vec<pb::AlarmMember> {
        self.list.clone()
    }

    /// Applies an alarm request (etcd's semantics: GET lists the alarms of
    /// the type asked, NONE meaning all; ACTIVATE and DEACTIVATE answer
    /// with the alarm changed).
    pub fn apply(&mut self, a: &pb::AlarmRequest) -> pb::AlarmResponse {
        use pb::alarm_request::AlarmAction;
        let member = pb::AlarmMember {
            member_id: a.member_id,
            alarm: a.alarm,
        };
        let alarms = match a.action() {
            AlarmAction::Get => self
                .list
                .iter()
                .filter(|m| a.alarm == pb::AlarmType::None as i32 || m.alarm == a.alarm)
                .cloned()
                .collect(),
            AlarmAction::Activate => {
                if a.alarm == pb::AlarmType::None as i32 {
                    Vec::new()
                } else {
                    if !self.list.contains(&member) {
                        self.list.push(member);
                    }
                    vec![member]
                }
            }
            AlarmAction::Deactivate => {
                let before = self.list.len();
                self.list
                    .retain(|m| !(m.member_id == a.member_id && m.alarm == a.alarm));
                if self.list.len() < before {
                    vec![member]
                } else {
                    Vec::new()
                }
            }
        };
        pb::AlarmResponse {
            header: None,
            alarms,
        }
    }
}

/// What the handlers share with the raft loop.
pub struct Shared {
    pub store: Arc<mvcc::Store>,
    pub member_id: u64,
    pub cluster_id: u64,
    pub members: Vec<Member>,
    pub term: AtomicU64,
    pub leader: AtomicU64,
    pub applied_index: AtomicU64,
    pub commit_index: AtomicU64,
    pub alarms: Mutex<Alarms>,
    pub max_request_bytes: usize,
    pub data_dir: PathBuf,
    commands: Mutex<Sender<Command>>,
}

/// How long a handler waits for its request to be applied.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

impl Shared {
    fn send(&self, cmd: Command) -> Result<(), ServerError> {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(cmd)
            .map_err(|_| ServerError::Stopped)
    }

    /// Proposes `op` through raft and waits for its answer.
    pub async fn propose(&self, op: Op) -> Result<(Applied, i64), ServerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Propose { op, reply })?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok((Ok(a), rev))) => Ok((a, rev)),
            Ok(Ok((Err(e), _))) => Err(e),
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::Timeout),
        }
    }

    /// Waits until this member has applied everything committed before
    /// the call (raft's ReadIndex).
    pub async fn read_index(&self) -> Result<(), ServerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ReadIndex { reply })?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::Timeout),
        }
    }

    /// etcd's response header, at revision `revision`.
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.term.load(Ordering::Relaxed),
        }
    }

    /// Stops the raft loop (it finishes its current turn, syncs the
    /// database and closes the WAL).
    pub fn stop(&self) {
        // Replacing the sender with one whose receiver is gone disconnects
        // the loop's channel once the handlers' clones are gone too.
        let (dead, _) = std::sync::mpsc::channel();
        *self.commands.lock().unwrap_or_else(|e| e.into_inner()) = dead;
    }
}

fn first_u64(parts: &[&[u8]]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0]);
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b).max(1)
}

/// The members of `--initial-cluster`, this member among them, and the
/// cluster ID they and `--initial-cluster-token` make.
pub(crate) fn cluster_identity(cfg: &Config) -> Result<(Vec<Member>, Member, u64), String> {
    let members = initial_members(cfg)?;
    let me = members
        .iter()
        .find(|m| m.name == cfg.name)
        .ok_or_else(|| format!("--initial-cluster does not name this member ({})", cfg.name))?
        .clone();
    let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    ids.sort();
    let id_bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_be_bytes()).collect();
    let cluster_id = first_u64(&[&id_bytes, cfg.initial_cluster_token.as_bytes()]);
    Ok((members, me, cluster_id))
}

/// The members of `--initial-cluster` (this member alone when empty).
fn initial_members(cfg: &Config) -> Result<Vec<Member>, String> {
    let mut members = Vec::new();
    let spec = if cfg.initial_cluster.is_empty() {
        format!("{}={}", cfg.name, cfg.peer_urls().join(","))
    } else {
        cfg.initial_cluster.clone()
    };
    let mut by_name: Vec<(String, Vec<String>)> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("bad --initial-cluster entry {part:?}"))?;
        match by_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => by_name.push((name.to_string(), vec![url.to_string()])),
        }
    }
    for (name, mut urls) in by_name {
        urls.sort();
        let id = first_u64(&[
            urls.join(",").as_bytes(),
            cfg.initial_cluster_token.as_bytes(),
        ]);
        members.push(Member {
            id,
            client_urls: if name == cfg.name {
                cfg.client_urls()
            } else {
                Vec::new()
            },
            name,
            peer_urls: urls,
        });
    }
    Ok(members)
}

/// Logs raft-rs's messages through `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, r: &slog::Record<'_>, _kv: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match r.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", r.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", r.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", r.msg()),
            _ => tracing::debug!(target: "raft", "{}", r.msg()),
        }
        Ok(())
    }
}

/// Where a member keeps its files (etcd's layout).
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("wal")
}

pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap").join("db")
}

/// The raft snapshot the WAL is read from on restart: the last point where
/// the database was synced and WAL segments before it could go. Kept in
/// `member/snap/raft.marker` (index and term, big-endian, then the first four bytes of a sha256 of
/// both), replaced atomically.
fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap").join("raft.marker")
}

fn read_marker(data_dir: &Path) -> Result<wal::SnapshotMarker, String> {
    let path = marker_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(wal::SnapshotMarker::default())
        }
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let ok = bytes.len() == 20 && marker_check(&bytes[..16]).to_be_bytes() == bytes[16..20];
    if !ok {
        return Err(format!("{} is damaged", path.display()));
    }
    let index = u64::from_be_bytes(bytes[..8].try_into().map_err(|_| "marker")?);
    let term = u64::from_be_bytes(bytes[8..16].try_into().map_err(|_| "marker")?);
    Ok(wal::SnapshotMarker { index, term })
}

fn marker_check(b: &[u8]) -> u32 {
    use sha2::{Digest, Sha256};
    // A short digest is all the marker needs: it only has to tell a whole
    // file from a damaged one.
    let d = Sha256::digest(b);
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

pub(crate) fn write_marker(data_dir: &Path, m: wal::SnapshotMarker) -> std::io::Result<()> {
    use std::io::Write;
    let path = marker_path(data_dir);
    let tmp = path.with_extension("tmp");
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(&m.index.to_be_bytes());
    bytes.extend_from_slice(&m.term.to_be_bytes());
    let check = marker_check(&bytes);
    bytes.extend_from_slice(&check.to_be_bytes());
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Starts the member: opens (or creates) the database and the WAL,
/// rebuilds raft's log, and runs the raft loop on its own thread.
pub fn start(cfg: &Config) -> Result<(Arc<Shared>, std::thread::JoinHandle<()>), String> {
    let data_dir = cfg.data_dir();
    let (members, me, cluster_id) = cluster_identity(cfg)?;
    let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    ids.sort();

    std::fs::create_dir_all(data_dir.join("member").join("snap"))
        .map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
    let store = Arc::new(
        mvcc::Store::open_with(
            db_path(&data_dir),
            mvcc::Limits {
                max_put_bytes: cfg.max_request_bytes,
                max_txn_ops: cfg.max_txn_ops,
            },
        )
        .map_err(|e| format!("opening the database: {e}"))?,
    );
    let wal_path = wal_dir(&data_dir);
    let wal_opts = wal::Options::default();
    let marker = read_marker(&data_dir)?;
    let existing = if wal_path.exists() {
        let (log, rec) = wal::Wal::open(&wal_path, marker, wal_opts.clone())
            .map_err(|e| format!("opening the WAL: {e}"))?;
        // As etcd does on a restart, the log, not the command line, says
        // who this member is: flags that changed since (a new peer URL, a
        // new token) must not turn it into a stranger to its own cluster.
        let recorded = rec.metadata.member_id;
        if recorded != me.id {
            for id in ids.iter_mut().filter(|id| **id == me.id) {
                *id = recorded;
            }
            ids.sort();
        }
        Some((log, rec))
    } else {
        None
    };
    let storage = MemStorage::new_with_conf_state(ConfState::from((ids.clone(), vec![])));
    let (log, member_id, cluster_id) = if let Some((log, rec)) = existing {
        if marker.index > 0 {
            let mut snap = Snapshot::default();
            let meta = snap.mut_metadata();
            meta.index = marker.index;
            meta.term = marker.term;
            meta.set_conf_state(ConfState::from((ids.clone(), vec![])));
            storage
                .wl()
                .apply_snapshot(snap)
                .map_err(|e| format!("restoring the raft snapshot: {e}"))?;
        }
        let entries: Vec<Entry> = rec
            .entries
            .iter()
            .map(|e| Entry::parse_from_bytes(&e.data))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("a WAL entry does not decode: {e}"))?;
        let last = entries.last().map_or(marker.index, |e| e.index);
        {
            let mut core = storage.wl();
            if !entries.is_empty() {
                core.append(&entries)
                    .map_err(|e| format!("rebuilding the raft log: {e}"))?;
            }
            if let Some(hs) = rec.hard_state {
                // Everything applied was committed; the commit index in
                // the log may lag behind it.
                core.set_hardstate(HardState {
                    term: hs.term,
                    vote: hs.vote,
                    commit: hs.commit.max(store.consistent_index()).min(last),
                    ..Default::default()
                });
            }
        }
        tracing::info!(
            entries = entries.len(),
            applied = store.consistent_index(),
            "recovered the raft log from the WAL"
        );
        (log, rec.metadata.member_id, rec.metadata.cluster_id)
    } else {
        let log = wal::Wal::create(
            &wal_path,
            wal::Metadata {
                member_id: me.id,
                cluster_id,
            },
            wal_opts,
        )
        .map_err(|e| format!("creating the WAL: {e}"))?;
        (log, me.id, cluster_id)
    };
    let applied = store
        .consistent_index()
        .min(storage.rl().hard_state().commit);
    let raft_cfg = raft::Config {
        id: member_id,
        heartbeat_tick: 1,
        election_tick: (cfg.election_timeout / cfg.heartbeat_interval.max(1)).max(2) as usize,
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    let logger = slog::Logger::root(TracingDrain, slog::o!());
    let mut node = RawNode::new(&raft_cfg, storage, &logger).map_err(|e| e.to_string())?;
    if ids.len() == 1 {
        // Alone in the cluster: no reason to wait for an election timeout.
        node.campaign().map_err(|e| e.to_string())?;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let members = members
        .into_iter()
        .map(|mut m| {
            if m.name == cfg.name {
                m.id = member_id;
            }
            m
        })
        .collect();
    let shared = Arc::new(Shared {
        store: store.clone(),
        member_id,
        cluster_id,
        members,
        term: AtomicU64::new(0),
        leader: AtomicU64::new(0),
        applied_index: AtomicU64::new(store.consistent_index()),
        commit_index: AtomicU64::new(0),
        alarms: Mutex::new(Alarms::from_store(&store)?),
        max_request_bytes: cfg.max_request_bytes,
        data_dir,
        commands: Mutex::new(tx),
    });
    let mut lp = RaftLoop {
        node,
        log: Some(log),
        shared: shared.clone(),
        tick: Duration::from_millis(cfg.heartbeat_interval.max(1)),
        waiters: HashMap::new(),
        // Request IDs never repeat across restarts (entries replayed from
        // the WAL carry the IDs of the run that proposed them).
        next_id: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| (d.as_millis() as u64) << 20),
        backlog: Vec::new(),
        pending_reads: Vec::new(),
        reads_in_flight: HashMap::new(),
        next_read: 0,
        reads_waiting_apply: Vec::new(),
        physical_waiters: Vec::new(),
        revoking: HashSet::new(),
        quota_bytes: cfg.quota_bytes(),
        auto_compaction: cfg.auto_compaction()?,
        revision_marks: Vec::new(),
        snapshot_count: cfg.snapshot_count.max(1),
        last_snapshot: marker.index,
        voters: ids,
    };
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || lp.run(rx))
        .map_err(|e| format!("starting the raft thread: {e}"))?;
    Ok((shared, thread))
}

struct RaftLoop {
    node: RawNode<MemStorage>,
    log: Option<wal::Wal>,
    shared: Arc<Shared>,
    tick: Duration,
    /// Handlers waiting for their entry to be applied, by request ID.
    waiters: HashMap<u64, oneshot::Sender<ApplyResult>>,
    next_id: u64,
    /// Proposals that arrived before this member could propose.
    backlog: Vec<Command>,
    pending_reads: Vec<oneshot::Sender<()>>,
    reads_in_flight: HashMap<Vec<u8>, Vec<oneshot::Sender<()>>>,
    next_read: u64,
    reads_waiting_apply: Vec<(u64, Vec<oneshot::Sender<()>>)>,
    /// Physical compactions answer once the records are gone.
    physical_waiters: Vec<(oneshot::Sender<ApplyResult>, ApplyResult)>,
    /// Expired leases whose revocation is proposed and not yet applied.
    revoking: HashSet<i64>,
    quota_bytes: i64,
    auto_compaction: AutoCompaction,
    /// (when, revision) samples for periodic auto-compaction.
    revision_marks: Vec<(Instant, i64)>,
    /// Applied entries between raft snapshots.
    snapshot_count: u64,
    /// Index of the last raft snapshot.
    last_snapshot: u64,
    voters: Vec<u64>,
}

impl RaftLoop {
    fn run(&mut self, rx: Receiver<Command>) {
        let mut next_tick = Instant::now() + self.tick;
        let mut last_housekeeping = Instant::now();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(cmd) => {
                    self.handle(cmd);
                    // Everything already queued joins this turn.
                    for _ in 0..100_000 {
                        match rx.try_recv() {
                            Ok(cmd) => self.handle(cmd),
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
            if last_housekeeping.elapsed() >= Duration::from_millis(100) {
                last_housekeeping = Instant::now();
                self.housekeeping();
            }
            self.start_reads();
            if let Err(e) = self.on_ready() {
                // The log or the database failed: stop here rather than
                // acknowledge anything not durable. A restart recovers.
                tracing::error!("fatal: {e}");
                std::process::exit(1);
            }
            if !self.backlog.is_empty() && self.can_propose() {
                for cmd in std::mem::take(&mut self.backlog) {
                    self.handle(cmd);
                }
            }
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Err(e) = self.shared.store.sync() {
            tracing::error!("syncing the database at shutdown: {e}");
        }
        if let Some(log) = self.log.take() {
            log.close();
        }
        tracing::info!("raft loop stopped");
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// Leader whose log has an entry of its own term committed (raft-rs
    /// drops read requests before that).
    fn can_propose(&self) -> bool {
        let log = &self.node.raft.raft_log;
        self.is_leader() && log.term(log.committed).unwrap_or(0) == self.node.raft.term
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::ReadIndex { reply } => self.pending_reads.push(reply),
            Command::Propose { op, reply } => {
                if !self.can_propose() {
                    self.backlog.push(Command::Propose { op, reply });
                    return;
                }
                let id = self.next_id;
                self.next_id += 1;
                let data = Request { id, op: Some(op) }.encode_to_vec();
                if data.len() > self.shared.max_request_bytes + 4096 {
                    let _ = reply.send((Err(ServerError::TooLarge), 0));
                    return;
                }
                match self.node.propose(Vec::new(), data) {
                    Ok(()) => {
                        self.waiters.insert(id, reply);
                    }
                    Err(e) => {
                        tracing::warn!("proposal dropped: {e}");
                        let _ = reply.send((Err(ServerError::NoLeader), 0));
                    }
                }
            }
        }
    }

    /// One ReadIndex request for every read waiting now.
    fn start_reads(&mut self) {
        if self.pending_reads.is_empty() || !self.can_propose() {
            return;
        }
        self.next_read += 1;
        let ctx = self.next_read.to_be_bytes().to_vec();
        self.reads_in_flight
            .insert(ctx.clone(), std::mem::take(&mut self.pending_reads));
        self.node.read_index(ctx);
    }

    fn release_reads(&mut self) {
        let applied = self.shared.applied_index.load(Ordering::Acquire);
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_waiting_apply)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_waiting_apply = waiting;
        for (_, waiters) in ready {
            for w in waiters {
                let _ = w.send(());
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), String> {
        if !self.node.has_ready() {
            self.compact_step()?;
            return Ok(());
        }
        let store = self.node.store().clone();
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            self.shared.leader.store(ss.leader_id, Ordering::Relaxed);
        }
        // One member: there are no peers to send to yet.
        let _ = rd.take_messages();
        for rs in rd.take_read_states() {
            if let Some(w) = self.reads_in_flight.remove(&rs.request_ctx) {
                self.reads_waiting_apply.push((rs.index, w));
            }
        }
        let committed = rd.take_committed_entries();
        self.apply(committed)?;
        let mut records = Vec::with_capacity(rd.entries().len() + 1);
        for e in rd.entries() {
            let data = e
                .write_to_bytes()
                .map_err(|err| format!("encoding entry {}: {err}", e.index))?;
            records.push(wal::Record::Entry {
                index: e.index,
                term: e.term,
                data,
            });
        }
        if let Some(hs) = rd.hs() {
            records.push(wal::Record::HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            });
            self.shared.term.store(hs.term, Ordering::Relaxed);
        }
        if !records.is_empty() {
            let log = self.log.as_ref().ok_or("the WAL is closed")?;
            log.append(records)
                .wait()
                .map_err(|e| format!("WAL append: {e}"))?;
        }
        if !rd.entries().is_empty() {
            store
                .wl()
                .append(rd.entries())
                .map_err(|e| format!("raft log: {e}"))?;
        }
        if let Some(hs) = rd.hs() {
            store.wl().set_hardstate(hs.clone());
        }
        let _ = rd.take_persisted_messages();
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            store.wl().mut_hard_state().set_commit(commit);
            self.shared.commit_index.store(commit, Ordering::Relaxed);
        }
        let _ = light.take_messages();
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.node.advance_apply();
        self.release_reads();
        self.compact_step()?;
        self.maybe_snapshot()?;
        Ok(())
    }

    /// Every `--snapshot-count` applied entries: make the database durable
    /// up to the applied index, record a snapshot there in the WAL and the
    /// marker, then drop the log before it (WAL segments and raft's
    /// in-memory entries). A restart reads the WAL from the marker on.
    fn maybe_snapshot(&mut self) -> Result<(), String> {
        let applied = self.shared.applied_index.load(Ordering::Acquire);
        if applied < self.last_snapshot + self.snapshot_count {
            return Ok(());
        }
        let store = self.node.store().clone();
        let term = raft::Storage::term(&store, applied).map_err(|e| e.to_string())?;
        self.shared.store.sync().map_err(|e| e.to_string())?;
        let conf = ConfState::from((self.voters.clone(), vec![]));
        let log = self.log.as_ref().ok_or("the WAL is closed")?;
        log.append(vec![wal::Record::Snapshot {
            index: applied,
            term,
            conf_state: conf.write_to_bytes().map_err(|e| e.to_string())?,
        }])
        .wait()
        .map_err(|e| format!("WAL snapshot record: {e}"))?;
        let marker = wal::SnapshotMarker {
            index: applied,
            term,
        };
        write_marker(&self.shared.data_dir, marker)
            .map_err(|e| format!("writing the snapshot marker: {e}"))?;
        let released = log
            .release_to(applied)
            .wait()
            .map_err(|e| format!("releasing WAL segments: {e}"))?;
        store
            .wl()
            .compact(applied)
            .map_err(|e| format!("compacting the raft log: {e}"))?;
        self.last_snapshot = applied;
        tracing::info!(index = applied, term, released, "raft snapshot");
        Ok(())
    }

    /// Applies committed entries to the key space in one batch.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let store = self.shared.store.clone();
        let done = store.consistent_index();
        let entries: Vec<Entry> = entries.into_iter().filter(|e| e.index > done).collect();
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut batch = store.apply().map_err(|e| e.to_string())?;
        let mut answers: Vec<(u64, ApplyResult, bool)> = Vec::new();
        for e in &entries {
            if e.get_entry_type() != EntryType::EntryNormal || e.get_data().is_empty() {
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
            if let Some(Op::LeaseRevoke(r)) = &req.op {
                self.revoking.remove(&r.id);
            }
            let mut alarms = self.shared.alarms.lock().unwrap_or_else(|e| e.into_inner());
            let result = apply::apply(&mut batch, &req, &mut alarms)
                .map_err(|err| format!("applying entry {}: {err}", e.index))?;
            drop(alarms);
            if req.id != 0 {
                answers.push((req.id, result, physical));
            }
        }
        if let Some(e) = entries.last() {
            batch.set_term(e.term).map_err(|e| e.to_string())?;
        }
        batch.commit(last).map_err(|e| e.to_string())?;
        self.shared.applied_index.store(last, Ordering::Release);
        for (id, result, physical) in answers {
            if let Some(w) = self.waiters.remove(&id) {
                if physical && result.0.is_ok() {
                    self.physical_waiters.push((w, result));
                } else {
                    let _ = w.send(result);
                }
            }
        }
        Ok(())
    }

    /// Removes compacted records in bounded steps between turns.
    fn compact_step(&mut self) -> Result<(), String> {
        let done = self
            .shared
            .store
            .compact_step(10_000)
            .map_err(|e| e.to_string())?;
        if done {
            for (w, r) in self.physical_waiters.drain(..) {
                let _ = w.send(r);
            }
        }
        Ok(())
    }

    fn propose_internal(&mut self, op: Op) {
        let data = Request {
            id: 0,
            op: Some(op),
        }
        .encode_to_vec();
        if let Err(e) = self.node.propose(Vec::new(), data) {
            tracing::warn!("internal proposal dropped: {e}");
        }
    }

    /// Lease expiry, the space quota and auto-compaction (leader only).
    fn housekeeping(&mut self) {
        if !self.can_propose() {
            return;
        }
        let store = self.shared.store.clone();
        for id in store.expired_leases(Instant::now()) {
            if self.revoking.insert(id) {
                self.propose_internal(Op::LeaseRevoke(pb::LeaseRevokeRequest { id }));
            }
        }
        let (file, _) = store.db_size();
        let no_space = self
            .shared
            .alarms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .no_space();
        if file as i64 > self.quota_bytes && !no_space {
            tracing::warn!(
                "database size {file} exceeds the quota {}: raising NOSPACE",
                self.quota_bytes
            );
            self.propose_internal(Op::Alarm(pb::AlarmRequest {
                action: pb::alarm_request::AlarmAction::Activate as i32,
                member_id: self.shared.member_id,
                alarm: pb::AlarmType::Nospace as i32,
            }));
        }
        self.auto_compact(&store);
    }

    fn auto_compact(&mut self, store: &mvcc::Store) {
        let current = store.current_revision();
        let target = match self.auto_compaction {
            AutoCompaction::Off => return,
            AutoCompaction::Revision(keep) => {
                // etcd checks every five minutes; so does this.
                let now = Instant::now();
                if self
                    .revision_marks
                    .last()
                    .is_some_and(|(t, _)| now.duration_since(*t) < Duration::from_secs(300))
                {
                    return;
                }
                self.revision_marks = vec![(now, current)];
                current - keep
            }
            AutoCompaction::Periodic(keep) => {
                let now = Instant::now();
                let sample_every = (keep / 10).max(Duration::from_secs(1));
                if self
                    .revision_marks
                    .last()
                    .is_none_or(|(t, _)| now.duration_since(*t) >= sample_every)
                {
                    self.revision_marks.push((now, current));
                }
                // The newest revision at least `keep` old.
                let Some(pos) = self
                    .revision_marks
                    .iter()
                    .rposition(|(t, _)| now.duration_since(*t) >= keep)
                else {
                    return;
                };
                let rev = self.revision_marks[pos].1;
                self.revision_marks.drain(..=pos);
                rev
            }
        };
        if target > store.compacted_revision() && target <= current {
            tracing::info!("auto-compaction at revision {target}");
            self.propose_internal(Op::Compaction(pb::CompactionRequest {
                revision: target,
                physical: false,
            }));
        }
    }
}
