//! The peer transport: how raft messages, snapshots and forwarded lease
//! calls travel between members, over etcd's peer URLs with gRPC
//! (`kvserverpb.Peer`, `proto/kvserverpb/peer.proto`).
//!
//! - Every peer has one bounded queue and one task ([`sender`]) that keeps
//!   a stream open to it and writes the queue into it, one batch per
//!   Ready. When the queue is full the batch is dropped and raft is told
//!   the peer is unreachable, as etcd does; a broken stream is reopened
//!   with backoff.
//! - A snapshot for a follower too far behind goes on its own call
//!   ([`snapshot`]): the database copied from one read transaction (writes
//!   go on meanwhile), streamed in chunks with a SHA-256, installed by the
//!   follower only once whole and verified.
//! - Every message names the sender's cluster; the receiver ([`service`])
//!   refuses another cluster's with a clear log line.
//! - [`faults`] is a test hook that drops or delays traffic per peer.

pub mod faults;
pub mod sender;
pub mod service;
pub mod snapshot;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::pb::kvserverpb::peer_client::PeerClient;
use crate::pb::kvserverpb::RaftBatch;
use crate::raft::Command;
use faults::Faults;

/// Batches a peer's queue holds before new ones are dropped (etcd's
/// stream buffer holds 4096 messages; a batch is one Ready's worth).
const QUEUE_BATCHES: usize = 1024;

/// A sender with nothing to send for this long sends an empty batch, so
/// that peers know the link works.
pub const KEEP_ALIVE: Duration = Duration::from_millis(500);

/// A peer not heard from for this long counts as disconnected.
const LIVENESS_GAP: Duration = Duration::from_secs(2);

/// The largest message a peer call may carry (entries can be 1.5 MiB each
/// and a batch holds several).
pub const MAX_PEER_MESSAGE: usize = 256 << 20;

/// A batch waiting in a peer's queue, with when it was queued (for the
/// test hook's delays).
pub(crate) struct Queued {
    pub at: Instant,
    pub batch: RaftBatch,
}

struct Peer {
    urls: Vec<String>,
    queue: mpsc::Sender<Queued>,
    channel: Channel,
    /// A snapshot is being sent to it.
    snapshot_busy: Arc<AtomicBool>,
}

pub struct Transport {
    pub me: u64,
    pub cluster_id: u64,
    raft: Mutex<Sender<Command>>,
    pub(crate) store: Arc<mvcc::Store>,
    pub(crate) data_dir: PathBuf,
    peers: Mutex<HashMap<u64, Peer>>,
    /// When each peer was first heard from without a gap, and last.
    heard: Mutex<HashMap<u64, (Instant, Instant)>>,
    pub faults: Arc<Faults>,
    runtime: tokio::runtime::Handle,
    /// Makes the channels to peers (TLS for `https://` peer URLs).
    pub dialer: crate::tls::Dialer,
    pub metrics: Arc<crate::metrics::Metrics>,
}

fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        // A peer that stops answering (paused, cut off) is noticed within
        // a few seconds and its stream reopened.
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .http2_adaptive_window(true))
}

/// A channel to the peer at `url`, with TLS for `https://`.
fn channel(dialer: &crate::tls::Dialer, url: &str) -> Result<Channel, String> {
    let endpoint = endpoint(url).map_err(|e| e.to_string())?;
    dialer.channel(url, endpoint).map_err(|e| e.to_string())
}

impl Transport {
    /// A transport for member `me` of `cluster_id`; must be called inside
    /// a tokio runtime (its tasks run there).
    pub fn start(
        me: u64,
        cluster_id: u64,
        raft: Sender<Command>,
        store: Arc<mvcc::Store>,
        data_dir: PathBuf,
        dialer: crate::tls::Dialer,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Transport> {
        let t = Arc::new(Transport {
            me,
            cluster_id,
            raft: Mutex::new(raft),
            store,
            data_dir,
            peers: Mutex::new(HashMap::new()),
            heard: Mutex::new(HashMap::new()),
            faults: Arc::new(Faults::default()),
            runtime: tokio::runtime::Handle::current(),
            dialer,
            metrics,
        });
        t.faults.watch_env();
        t
    }

    pub(crate) fn to_raft(&self, cmd: Command) {
        let _ = self
            .raft
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(cmd);
    }

    /// Adds a peer (or changes its URLs) and starts its sender.
    pub fn add_peer(self: &Arc<Self>, id: u64, urls: Vec<String>) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.get(&id).is_some_and(|p| p.urls == urls) {
            return;
        }
        // Called from the apply thread too: the channel's tasks run on the
        // transport's runtime.
        let _runtime = self.runtime.enter();
        let Some(channel) = urls.iter().find_map(|u| match self.channel(u) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("peer {id:x}: bad peer URL {u:?}: {e}");
                None
            }
        }) else {
            return;
        };
        let (queue, rx) = mpsc::channel(QUEUE_BATCHES);
        peers.insert(
            id,
            Peer {
                urls,
                queue,
                channel: channel.clone(),
                snapshot_busy: Arc::new(AtomicBool::new(false)),
            },
        );
        let t = self.clone();
        let probed = channel.clone();
        self.runtime
            .spawn(async move { sender::stream_to(t, id, channel, rx).await });
        let t = self.clone();
        let alive = peers.get(&id).map(|p| p.queue.downgrade());
        if let Some(alive) = alive {
            self.runtime
                .spawn(async move { sender::probe(t, id, probed, alive).await });
        }
    }

    /// Stops sending to every peer (the member stops): the queues close,
    /// so the senders and probes end.
    pub fn stop(&self) {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Stops sending to peer `id` (removed from the cluster): its queue
    /// closes and its sender ends.
    pub fn remove_peer(&self, id: u64) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.remove(&id).is_some() {
            tracing::info!("stopped sending to removed member {id:x}");
        }
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    pub fn peer_ids(&self) -> Vec<u64> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.keys().copied().collect()
    }

    /// A batch (or a keep-alive) arrived from peer `id`.
    pub fn heard_from(&self, id: u64) {
        let now = Instant::now();
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let e = heard.entry(id).or_insert((now, now));
        if now.duration_since(e.1) > LIVENESS_GAP {
            e.0 = now;
        }
        e.1 = now;
    }

    /// Since when peer `id` has been heard from without a gap (None: not
    /// lately). etcd's "active since", which `--strict-reconfig-check`
    /// consults.
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        heard
            .get(&id)
            .filter(|(_, last)| last.elapsed() <= LIVENESS_GAP)
            .map(|(since, _)| *since)
    }

    fn channel(&self, url: &str) -> Result<Channel, String> {
        channel(&self.dialer, url)
    }

    /// A client for calls to any of `urls` (a peer not yet known, or the
    /// leader reached by URL).
    pub fn client_for(dialer: &crate::tls::Dialer, urls: &[String]) -> Option<PeerClient<Channel>> {
        let channel = urls.iter().find_map(|u| channel(dialer, u).ok())?;
        Some(
            PeerClient::new(channel)
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
        )
    }

    /// A client for calls to peer `id`.
    pub fn client(&self, id: u64) -> Option<PeerClient<Channel>> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(&id).map(|p| {
            PeerClient::new(p.channel.clone())
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE)
        })
    }

    /// Queues raft's messages, one batch per peer. Returns the peers that
    /// could not take theirs (raft should hear they are unreachable).
    pub fn send(self: &Arc<Self>, msgs: Vec<Message>) -> Vec<u64> {
        let mut by_peer: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        let mut unreachable = Vec::new();
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                snapshot::send(self, m);
                continue;
            }
            match m.write_to_bytes() {
                Ok(b) => by_peer.entry(m.to).or_default().push(b),
                Err(e) => tracing::error!("encoding a raft message: {e}"),
            }
        }
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        for (to, messages) in by_peer {
            let Some(peer) = peers.get(&to) else {
                unreachable.push(to);
                continue;
            };
            if self.faults.drops_out(to) {
                continue;
            }
            let batch = RaftBatch {
                cluster_id: self.cluster_id,
                from: self.me,
                to,
                messages,
            };
            let queued = Queued {
                at: Instant::now(),
                batch,
            };
            if peer.queue.try_send(queued).is_err() {
                tracing::debug!("the queue to peer {to:x} is full: messages dropped");
                unreachable.push(to);
            }
        }
        unreachable
    }

    pub(crate) fn snapshot_busy(&self, id: u64) -> Option<Arc<AtomicBool>> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(&id).map(|p| p.snapshot_busy.clone())
    }

    pub(crate) fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(f);
    }
}
