//! One peer's sender: keeps a `Peer.Raft` stream open and writes the
//! peer's queue into it; reopens a broken stream with backoff, telling
//! raft the peer was unreachable (so it probes again rather than assume
//! the lost messages arrived).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{Queued, Transport, KEEP_ALIVE, MAX_PEER_MESSAGE};
use crate::pb::kvserverpb::peer_client::PeerClient;
use crate::pb::kvserverpb::{PeerAck, RaftBatch};
use crate::raft::Command;

/// What a member answers a removed member's messages with (etcd's).
pub const REMOVED: &str = "cannot process message from removed member";

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// While a peer stays unreachable, its failure is logged again at this
/// pace, not at every retry.
const LOG_EVERY: Duration = Duration::from_secs(30);

fn log_again(last: &Option<Instant>) -> bool {
    last.is_none_or(|t| t.elapsed() >= LOG_EVERY)
}

/// How often a peer's round trip is timed.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Times a `Peer.Probe` round trip to `peer` every [`PROBE_EVERY`] into
/// `etcd_network_peer_round_trip_time_seconds`, for as long as the peer's
/// queue (`alive`) exists: a removed peer, or one given new URLs, ends it.
pub(crate) async fn probe(
    t: Arc<Transport>,
    peer: u64,
    channel: Channel,
    alive: mpsc::WeakSender<Queued>,
) {
    let Ok(rtt) = t
        .metrics
        .peer_rtt
        .get_metric_with_label_values(&[&format!("{peer:x}")])
    else {
        return;
    };
    let mut client = PeerClient::new(channel);
    let mut tick = tokio::time::interval(PROBE_EVERY);
    loop {
        tick.tick().await;
        if alive.upgrade().is_none() {
            return;
        }
        let start = Instant::now();
        let answered = tokio::time::timeout(PROBE_EVERY, client.probe(PeerAck {})).await;
        if let Ok(Ok(_)) = answered {
            rtt.observe(start.elapsed().as_secs_f64());
        }
    }
}

pub(crate) async fn stream_to(
    t: Arc<Transport>,
    peer: u64,
    channel: Channel,
    mut queue: mpsc::Receiver<Queued>,
) {
    let label = format!("{peer:x}");
    let sent = t
        .metrics
        .peer_sent_bytes
        .get_metric_with_label_values(&[&label])
        .ok();
    let failures = t
        .metrics
        .peer_sent_failures
        .get_metric_with_label_values(&[&label])
        .ok();
    let mut backoff = MIN_BACKOFF;
    let mut down_since: Option<Instant> = None;
    let mut last_logged: Option<Instant> = None;
    loop {
        let mut client = PeerClient::new(channel.clone())
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let (tx, rx) = mpsc::channel(64);
        let mut call = Box::pin(client.raft(ReceiverStream::new(rx)));
        let opened = Instant::now();
        let mut sent_any = false;
        let was_down = down_since.is_some();
        let ended: Result<(), tonic::Status> = loop {
            tokio::select! {
                r = &mut call => break r.map(|_| ()),
                _ = tokio::time::sleep(KEEP_ALIVE) => {
                    let ping = RaftBatch { cluster_id: t.cluster_id, from: t.me, to: peer, messages: Vec::new() };
                    if t.faults.drops_out(peer) {
                        continue;
                    }
                    let bytes = prost::Message::encoded_len(&ping) as u64;
                    if tx.send(ping).await.is_err() {
                        break Err(tonic::Status::unavailable("the stream closed"));
                    }
                    if let Some(c) = &sent {
                        c.inc_by(bytes);
                    }
                }
                q = queue.recv() => {
                    let Some(q) = q else { return };
                    let delay = t.faults.get(peer).delay;
                    if !delay.is_zero() {
                        tokio::time::sleep_until((q.at + delay).into()).await;
                    }
                    let bytes = prost::Message::encoded_len(&q.batch) as u64;
                    if tx.send(q.batch).await.is_err() {
                        break Err(tonic::Status::unavailable("the stream closed"));
                    }
                    if let Some(c) = &sent {
                        c.inc_by(bytes);
                    }
                    sent_any = true;
                }
            }
        };
        t.to_raft(Command::Unreachable(peer));
        if let Some(c) = &failures {
            c.inc();
        }
        if let Err(s) = &ended {
            if s.code() == tonic::Code::PermissionDenied && s.message() == REMOVED {
                // The peer knows this member was removed from the cluster.
                t.to_raft(Command::Removed);
                return;
            }
        }
        // A stream that carried messages for a while was a working link:
        // its end is a new failure worth a line. While the peer stays
        // unreachable, the failure is logged again only now and then.
        let lived = sent_any && opened.elapsed() > Duration::from_secs(1);
        if lived {
            if let Some(since) = down_since.take() {
                tracing::info!(
                    "peer {peer:x} had been unreachable for {:.1?}",
                    since.elapsed()
                );
            }
        }
        if !was_down || lived || log_again(&last_logged) {
            match &ended {
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                    tracing::error!(
                        "peer {peer:x} refuses this member's messages: {}",
                        s.message()
                    );
                }
                Err(s) => tracing::warn!("lost the stream to peer {peer:x}: {}", s.message()),
                Ok(()) => tracing::warn!("peer {peer:x} closed the stream"),
            }
            last_logged = Some(Instant::now());
        }
        if down_since.is_none() {
            down_since = Some(Instant::now());
        }
        backoff = if lived {
            MIN_BACKOFF
        } else {
            (backoff * 2).min(MAX_BACKOFF)
        };
        // What is queued meanwhile cannot be delivered: raft resends.
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                q = queue.recv() => if q.is_none() { return },
            }
        }
    }
}
