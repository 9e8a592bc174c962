//! Starting a member: a new one writes its database's member list and a
//! fresh WAL (a joining one, the list its peers gave it); a restarting one takes its identity from the WAL and its
//! membership from the database (ignoring the initial-cluster flags, as
//! etcd does), rebuilds raft's log from the WAL, and checks that the WAL
//! covers everything the database has applied.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::*;
use raft::storage::MemStorage;

use crate::alarms::Alarms;
use crate::config::Config;
use crate::datadir;
use crate::error::StartError;
use crate::membership::{initial_cluster, Member, Membership};
use crate::raft::applier::{Applier, ApplyTask};
use crate::raft::ready::RaftLoop;
use crate::shared::{RaftStatus, RequestIds, Shared, Waiters};
use crate::transport::Transport;

/// The member's two threads; join both after [`Shared::stop`].
pub struct Threads {
    pub raft: std::thread::JoinHandle<()>,
    pub apply: std::thread::JoinHandle<()>,
}

impl Threads {
    /// Waits for both threads; an error names the one that panicked.
    pub fn join(self) -> Result<(), StartError> {
        let raft = self.raft.join();
        let apply = self.apply.join();
        raft.map_err(|_| StartError::Panicked("raft"))?;
        apply.map_err(|_| StartError::Panicked("apply"))?;
        Ok(())
    }
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

fn conf_state(members: &Membership) -> ConfState {
    ConfState::from((members.voters(), members.learners()))
}

/// Starts the member: opens (or creates) the database and the WAL,
/// rebuilds raft's log, and runs the raft and apply threads. Must be
/// called inside a tokio runtime (the transport's tasks run on it).
pub fn start(
    cfg: &Config,
    join: Option<crate::join::Joined>,
    dialer: crate::tls::Dialer,
) -> Result<(Arc<Shared>, Threads), StartError> {
    cfg.validate()?;
    let data_dir = cfg.data_dir();
    datadir::create_dir_synced(&datadir::snap_dir(&data_dir))?;
    let power_cut = power_cut_journal();
    let db_path = datadir::db_path(&data_dir);
    let store = Arc::new(mvcc::Store::open_with_io(
        &db_path,
        mvcc::Limits {
            max_put_bytes: cfg.max_request_bytes,
            max_txn_ops: cfg.max_txn_ops,
            reserve_bytes: DB_RESERVE_BYTES,
        },
        power_cut.then(|| btree::io::JournaledIo::factory(journal_of(&db_path))),
    )?);
    let metrics = Arc::new(crate::metrics::Metrics::new(cfg.metrics == "extensive")?);
    {
        let m = metrics.clone();
        store.observe_commits(Arc::new(move |c| m.backend_commit(c)));
    }
    let wal_path = datadir::wal_dir(&data_dir);
    let wal_opts = wal::Options {
        power_cut_journal: power_cut,
        ..wal::Options::default()
    };
    let storage = MemStorage::new();
    let has_wal = datadir::has_wal(&data_dir);

    if !has_wal {
        prepare(cfg, &store, join)?;
    }
    let (log, member_id, cluster_id, members, snapshot_index) = {
        let marker = datadir::read_marker(&data_dir)?;
        let (log, rec) = wal::Wal::open(&wal_path, marker, wal_opts)?;
        let member_id = rec.metadata.member_id;
        let cluster_id = rec.metadata.cluster_id;
        let (snap_index, snap_term) = match &rec.snapshot {
            Some(s) => (s.index, s.term),
            None => (marker.index, marker.term),
        };
        if snap_index > store.consistent_index() {
            // A leader's snapshot was made durable in the WAL but the
            // database it came with was not installed before a crash.
            let received = datadir::received_db_path(&data_dir, snap_index);
            if !received.exists() {
                return Err(StartError::Inconsistent(format!(
                    "the WAL starts at a snapshot at index {snap_index}, but the database has \
                     applied entries only up to {} and the snapshot's database {} is missing",
                    store.consistent_index(),
                    received.display()
                )));
            }
            tracing::info!(
                index = snap_index,
                "installing a received snapshot left by a crash"
            );
            store.install(&received)?;
        }
        datadir::remove_stale_snapshots(&data_dir);
        let entries: Vec<Entry> = rec
            .entries
            .iter()
            .map(|e| Entry::parse_from_bytes(&e.data))
            .collect::<Result<_, _>>()
            .map_err(|e| StartError::Inconsistent(format!("a WAL entry does not decode: {e}")))?;
        let last = entries.last().map_or(snap_index, |e| e.index);
        let applied = store.consistent_index();
        if applied > last {
            return Err(StartError::Inconsistent(format!(
                "the database has applied raft entries up to index {applied}, but the WAL in {} \
                 ends at index {last}: it was cut short or replaced, and starting would lose or \
                 diverge from what was applied",
                wal_path.display()
            )));
        }
        let members = Membership::from_store(&store)?;
        if members.list().is_empty() {
            // A data directory written before member lists were stored:
            // it can only be a one-member cluster.
            seed_members(
                &store,
                &[Member {
                    id: member_id,
                    name: cfg.name.clone(),
                    peer_urls: cfg.peer_urls(),
                    client_urls: Vec::new(),
                    is_learner: false,
                }],
                0,
            )?;
            members.reload(&store)?;
        }
        // A member that joined a running cluster and has received nothing
        // yet from the leader: it learns raft's configuration from the
        // leader's snapshot (the member list it holds is only there to
        // reach its peers).
        let joining = rec.snapshot.is_none() && entries.is_empty() && store.consistent_index() == 0;
        {
            let mut core = storage.wl();
            let mut cs = if joining {
                ConfState::default()
            } else {
                conf_state(&members)
            };
            if snap_index > 0 {
                let mut snap = Snapshot::default();
                let meta = snap.mut_metadata();
                meta.index = snap_index;
                meta.term = snap_term;
                meta.set_conf_state(cs.clone());
                core.apply_snapshot(snap)?;
            } else {
                core.set_conf_state(std::mem::take(&mut cs));
            }
            if !entries.is_empty() {
                core.append(&entries)?;
            }
            let hs = rec.hard_state.unwrap_or(wal::HardState {
                term: snap_term,
                vote: 0,
                commit: snap_index,
            });
            core.set_hardstate(HardState {
                term: hs.term.max(snap_term),
                vote: hs.vote,
                // Everything applied was committed; the commit index in the
                // log may lag behind it.
                commit: hs.commit.max(applied).max(snap_index).min(last),
                ..Default::default()
            });
        }
        tracing::info!(
            entries = entries.len(),
            applied,
            snapshot = snap_index,
            "recovered the raft log from the WAL"
        );
        (log, member_id, cluster_id, members, snap_index)
    };

    let hard_state = storage.rl().hard_state().clone();
    let applied = store
        .consistent_index()
        .max(snapshot_index)
        .min(hard_state.commit);
    let election_tick = (cfg.election_timeout / cfg.heartbeat_interval).max(2) as usize;
    let raft_cfg = raft::Config {
        id: member_id,
        heartbeat_tick: 1,
        election_tick,
        applied,
        check_quorum: true,
        pre_vote: cfg.pre_vote,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    let logger = slog::Logger::root(TracingDrain, slog::o!());
    let voters = members.voters();
    let mut node = RawNode::new(&raft_cfg, storage, &logger)?;
    if voters == [member_id] && !members.is_learner(member_id) {
        // Alone in the cluster: no reason to wait for an election timeout.
        node.campaign()?;
    }

    let (tx, rx) = std::sync::mpsc::channel();
    let transport = Transport::start(
        member_id,
        cluster_id,
        tx.clone(),
        store.clone(),
        data_dir.clone(),
        dialer,
        metrics.clone(),
    );
    for m in members.list() {
        if m.id != member_id {
            transport.add_peer(m.id, m.peer_urls.clone());
        }
    }
    let shared = Arc::new(Shared {
        store: store.clone(),
        member_id,
        cluster_id,
        name: cfg.name.clone(),
        client_urls: cfg.client_urls(),
        members,
        auth: crate::auth::AuthStore::load(
            &store,
            Duration::from_secs(cfg.auth_token_ttl.max(1)),
            cfg.jwt_tokens()?,
            cfg.bcrypt_cost(),
        )?,
        bcrypt: tokio::sync::Semaphore::new(1),
        snapshots: Arc::new(tokio::sync::Semaphore::new(
            crate::shared::MAX_CONCURRENT_SNAPSHOTS,
        )),
        client_cert_auth: cfg.tls.client_cert_auth,
        raft: RaftStatus {
            term: AtomicU64::new(hard_state.term),
            applied_index: AtomicU64::new(applied),
            commit_index: AtomicU64::new(hard_state.commit),
            ..Default::default()
        },
        alarms: Mutex::new(Alarms::from_store(&store)?),
        waiters: Waiters::default(),
        ids: RequestIds::new(member_id),
        transport: transport.clone(),
        max_request_bytes: cfg.max_request_bytes,
        data_dir: data_dir.clone(),
        request_timeout: cfg.request_timeout(),
        election_timeout: Duration::from_millis(cfg.election_timeout),
        strict_reconfig_check: cfg.strict_reconfig_check,
        commands: Mutex::new(Some(tx.clone())),
        failure: Arc::new(Mutex::new(None)),
        failed: tokio::sync::Notify::new(),
        removed: AtomicBool::new(false),
        metrics: metrics.clone(),
    });
    metrics.set_member(
        member_id,
        cfg.quota_bytes().unwrap_or(cfg.quota_backend_bytes),
    );
    {
        let m = metrics.clone();
        log.observe_batches(Arc::new(move |b| m.wal_batch(b)));
    }
    let log = Arc::new(log);
    let (apply_tx, apply_rx) = std::sync::mpsc::channel::<ApplyTask>();
    let applier = Applier::new(
        shared.clone(),
        log.clone(),
        tx.clone(),
        cfg.snapshot_count.max(1),
        snapshot_index,
        cfg.experimental_warning_apply_duration,
    );
    let apply = std::thread::Builder::new()
        .name("apply".into())
        .spawn(move || applier.run(apply_rx))
        .map_err(|source| StartError::Thread {
            what: "apply",
            source,
        })?;
    let mut lp = RaftLoop {
        node,
        log,
        shared: shared.clone(),
        commands: tx,
        unpersisted: std::collections::VecDeque::new(),
        unsynced_hs: None,
        log_failed: None,
        apply: apply_tx,
        tick: Duration::from_millis(cfg.heartbeat_interval),
        backlog: Vec::new(),
        pending_reads: Vec::new(),
        reads_in_flight: Vec::new(),
        next_read: 0,
        catchup_entries: cfg.experimental_snapshot_catchup_entries,
        log_floor: 0,
        housekeeping: crate::raft::housekeeping::Housekeeping::new(cfg)?,
        last_leader: 0,
        last_housekeeping: Instant::now(),
        proposed: std::collections::VecDeque::new(),
        held_conf: std::collections::VecDeque::new(),
        held_forwarded: std::collections::VecDeque::new(),
        handoff: None,
        removed: false,
        pending_removal: None,
    };
    let raft = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || lp.run(rx))
        .map_err(|source| StartError::Thread {
            what: "raft",
            source,
        })?;
    shared.raft.term.store(hard_state.term, Ordering::Relaxed);
    Ok((shared, Threads { raft, apply }))
}

/// Makes a new member's data: its member list in the database, then its
/// WAL, written in a temporary directory and renamed into place, so that a
/// crash leaves either no WAL (and the member is prepared again) or a whole
/// one (and it starts as a restart). A new cluster's WAL holds a snapshot
/// record at index 1 with the membership (etcd starts its log with one
/// configuration change per member instead), so the log never reaches back
/// to an empty state and a member added later always gets a snapshot
/// first, with raft's configuration in it. A joining member's WAL holds
/// only its identity; raft's configuration comes with the leader's
/// snapshot.
fn prepare(
    cfg: &Config,
    store: &mvcc::Store,
    join: Option<crate::join::Joined>,
) -> Result<(), StartError> {
    let data_dir = cfg.data_dir();
    let wal_path = datadir::wal_dir(&data_dir);
    if store.consistent_index() > INITIAL_INDEX {
        return Err(StartError::Inconsistent(format!(
            "the database has applied raft entries up to index {}, but {} holds no WAL: \
             without it this member cannot rejoin its cluster safely",
            store.consistent_index(),
            wal_path.display()
        )));
    }
    let (metadata, records) = match join {
        Some(joined) => {
            seed_members(store, &joined.members, 0)?;
            let metadata = wal::Metadata {
                member_id: joined.member_id,
                cluster_id: joined.cluster_id,
            };
            (metadata, Vec::new())
        }
        None => {
            // A restart ignores the initial-cluster flags (as etcd): they
            // are read only here.
            let initial = initial_cluster(cfg)?;
            seed_members(store, &initial.members, INITIAL_INDEX)?;
            let cs = conf_state(&Membership::from_store(store)?);
            let record = wal::Record::Snapshot {
                index: INITIAL_INDEX,
                term: INITIAL_INDEX,
                conf_state: cs
                    .write_to_bytes()
                    .map_err(|e| StartError::Fatal(format!("encoding a conf state: {e}")))?,
            };
            let metadata = wal::Metadata {
                member_id: initial.me.id,
                cluster_id: initial.cluster_id,
            };
            (metadata, vec![record])
        }
    };
    let tmp = wal_path.with_extension("tmp");
    let io = |op: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| StartError::Fatal(format!("{}: {op}: {e}", path.display()))
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io("remove", &tmp))?;
    }
    // Waited for on a thread of its own: this runs inside the async
    // runtime, whose threads must not block.
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<(), StartError> {
                let log = wal::Wal::create(&tmp, metadata, wal::Options::default())?;
                if !records.is_empty() {
                    log.append(records).wait()?;
                }
                log.close();
                Ok(())
            })
            .join()
            .map_err(|_| StartError::Panicked("WAL creation"))
    })??;
    std::fs::rename(&tmp, &wal_path).map_err(io("rename", &tmp))?;
    let member = datadir::member_dir(&data_dir);
    std::fs::File::open(&member)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", &member))?;
    Ok(())
}

/// The variable that makes a `failpoints` build journal every unsynced
/// write of its database and WAL (`btree::io::JournaledIo`,
/// `wal::journal`), for the power-loss test. Other builds refuse it.
pub const POWER_CUT_ENV: &str = "KVSERVER_TEST_POWER_JOURNAL";

fn power_cut_journal() -> bool {
    cfg!(feature = "failpoints") && std::env::var_os(POWER_CUT_ENV).is_some()
}

/// Where the database at `db`'s power-cut journal is.
pub fn journal_of(db: &std::path::Path) -> std::path::PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".unsynced");
    p.into()
}

/// Disk the database keeps allocated ahead of its data: the commits after
/// a full disk is noticed (NOSPACE raised, writes refused) still have room
/// for the entries already committed, deletes, compaction and the alarm's
/// own entry. bbolt's files carry as much slack (its 16 MiB allocation
/// step), so file sizes compare with etcd's.
pub const DB_RESERVE_BYTES: u64 = 16 << 20;

/// Where a new cluster's log starts: its initial snapshot's index (and
/// term).
const INITIAL_INDEX: u64 = 1;

/// Writes the member list of a new cluster into the database (every
/// member writes the same list, as the state at raft index `index`).
fn seed_members(store: &mvcc::Store, members: &[Member], index: u64) -> Result<(), mvcc::Error> {
    let left = store.members()?;
    let mut batch = store.apply()?;
    // A first start that failed after seeding (a directory not fsynced,
    // the WAL not made) and is tried again with other flags: the list it
    // left is replaced, not added to.
    for (id, _) in left {
        if !members.iter().any(|m| m.id == id) {
            batch.set_member(id, None)?;
        }
    }
    for m in members {
        batch.set_member(m.id, Some(&m.encode()))?;
    }
    if index > 0 {
        batch.set_term(index)?;
    }
    batch.commit(index.max(store.consistent_index()))?;
    store.sync()
}
