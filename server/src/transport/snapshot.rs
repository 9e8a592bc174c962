//! Snapshots to followers too far behind the leader's log.
//!
//! The leader copies its database from one read transaction (writes go on
//! meanwhile) into a temporary file, and sends raft's MsgSnapshot — its
//! index and term rewritten to exactly those of the copy, so the follower's
//! WAL and database agree on where the snapshot stands — followed by the
//! file in 1 MiB chunks and a SHA-256 of it. The follower writes the
//! chunks to a `.part` file, checks size and digest, fsyncs and renames it
//! to `member/snap/<index>.snap.db`, and only then hands the message to
//! raft; the apply thread installs it in order. A broken transfer leaves
//! nothing behind and is retried (raft hears it failed). Memory stays
//! bounded: a few chunks are in flight at a time.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::Transport;
use crate::datadir;
use crate::pb::kvserverpb::SnapshotChunk;
use crate::raft::Command;
use crate::shared::Shared;

const CHUNK: usize = 1 << 20;

/// How long the leader waits for its own apply thread to reach the index
/// raft wants to snapshot at.
const APPLY_WAIT: Duration = Duration::from_secs(30);

/// Sends the snapshot `m` asks for, in the background; raft hears how it
/// ended.
pub(crate) fn send(t: &Arc<Transport>, m: Message) {
    let to = m.to;
    let Some(busy) = t.snapshot_busy(to) else {
        t.to_raft(Command::SnapshotSent { to, ok: false });
        return;
    };
    if busy.swap(true, Ordering::AcqRel) {
        // One transfer per peer at a time; the one under way reports.
        return;
    }
    let t2 = t.clone();
    t.spawn(async move {
        let started = Instant::now();
        let ok = if t2.faults.drops_out(to) {
            false
        } else {
            match send_inner(&t2, m).await {
                Ok((index, bytes)) => {
                    tracing::info!(
                        index,
                        bytes,
                        "sent a snapshot to peer {to:x} in {:.1?}",
                        started.elapsed()
                    );
                    true
                }
                Err(e) => {
                    tracing::warn!("sending a snapshot to peer {to:x}: {e}");
                    false
                }
            }
        };
        busy.store(false, Ordering::Release);
        t2.to_raft(Command::SnapshotSent { to, ok });
    });
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Why a snapshot could not be sent (raft hears it failed and retries).
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("this member has not applied index {0} yet")]
    NotApplied(u64),
    #[error("copying the database: {0}")]
    Copy(#[from] mvcc::Error),
    #[error("{0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
    #[error("encoding the raft message: {0}")]
    Encode(#[from] protobuf::ProtobufError),
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the receiver went away")]
    ReceiverGone,
    #[error("no such peer")]
    NoPeer,
    #[error("broken off by the test faults")]
    Cut,
    #[error("the peer answered: {}", .0.message())]
    Refused(Status),
}

async fn send_inner(t: &Arc<Transport>, mut m: Message) -> Result<(u64, u64), SendError> {
    let to = m.to;
    let want = m.get_snapshot().get_metadata().index;
    let deadline = Instant::now() + APPLY_WAIT;
    while t.store.consistent_index() < want {
        if Instant::now() > deadline {
            return Err(SendError::NotApplied(want));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp =
        datadir::snap_dir(&t.data_dir).join(format!("send-{to:x}-{}-{n}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let store = t.store.clone();
    let path = tmp.clone();
    let info = tokio::task::spawn_blocking(move || store.snapshot_into(&path)).await?;
    let result = async {
        let info = info?;
        let io = |e| SendError::Io(tmp.clone(), e);
        let meta = m.mut_snapshot().mut_metadata();
        meta.index = info.consistent_index;
        meta.term = info.term;
        // raft's configuration as of the copy's index: its member list.
        let members = crate::membership::decode_members(info.members.clone())?;
        meta.set_conf_state(crate::membership::conf_state(&members));
        let message = m.write_to_bytes()?;
        let mut file = std::fs::File::open(&tmp).map_err(io)?;
        let total = file.metadata().map_err(io)?.len();
        let path = tmp.clone();
        let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
        let (cluster_id, from) = (t.cluster_id, t.me);
        // The test hook can break the transfer off after its first chunk.
        let cut = t.faults.get(to).cut_snapshot;
        let reader = tokio::task::spawn_blocking(move || -> Result<(), SendError> {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; CHUNK];
            let mut first = Some(message);
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| SendError::Io(path.clone(), e))?;
                hasher.update(&buf[..n]);
                let chunk = SnapshotChunk {
                    cluster_id,
                    from,
                    to,
                    message: first.take().unwrap_or_default(),
                    total_bytes: total,
                    data: buf[..n].to_vec(),
                    sha256: Vec::new(),
                };
                if tx.blocking_send(chunk).is_err() {
                    return Err(SendError::ReceiverGone);
                }
                if cut {
                    return Err(SendError::Cut);
                }
                if n == 0 {
                    break;
                }
            }
            let last = SnapshotChunk {
                cluster_id,
                from,
                to,
                message: Vec::new(),
                total_bytes: total,
                data: Vec::new(),
                sha256: hasher.finalize().to_vec(),
            };
            tx.blocking_send(last).map_err(|_| SendError::ReceiverGone)
        });
        let mut client = t.client(to).ok_or(SendError::NoPeer)?;
        let sent = client.snapshot(ReceiverStream::new(rx)).await;
        let read = reader.await?;
        read?;
        sent.map_err(SendError::Refused)?;
        Ok((info.consistent_index, total))
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Receives a snapshot stream whose first chunk is `first`; returns the
/// raft message once the database is whole, verified and in place.
pub(crate) async fn receive(
    shared: &Shared,
    first: SnapshotChunk,
    inbound: &mut Streaming<SnapshotChunk>,
) -> Result<Message, Status> {
    let msg = Message::parse_from_bytes(&first.message)
        .map_err(|e| Status::invalid_argument(format!("bad snapshot message: {e}")))?;
    if msg.get_msg_type() != MessageType::MsgSnapshot || msg.from != first.from {
        return Err(Status::invalid_argument("not a snapshot message"));
    }
    let index = msg.get_snapshot().get_metadata().index;
    let path = datadir::received_db_path(&shared.data_dir, index);
    let part = std::path::PathBuf::from(format!("{}.part", path.display()));
    let result = receive_into(&part, first, inbound).await;
    match result {
        Ok(()) => {
            std::fs::rename(&part, &path)
                .and_then(|()| std::fs::File::open(datadir::snap_dir(&shared.data_dir))?.sync_all())
                .map_err(|e| {
                    let _ = std::fs::remove_file(&part);
                    Status::internal(format!("storing the snapshot: {e}"))
                })?;
            tracing::info!(index, "received a snapshot from peer {:x}", msg.from);
            Ok(msg)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            tracing::warn!("receiving a snapshot at index {index}: {}", e.message());
            Err(e)
        }
    }
}

async fn receive_into(
    part: &std::path::Path,
    first: SnapshotChunk,
    inbound: &mut Streaming<SnapshotChunk>,
) -> Result<(), Status> {
    let io = |e: std::io::Error| Status::internal(format!("{}: {e}", part.display()));
    let total = first.total_bytes;
    let mut file = tokio::fs::File::create(part).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut chunk = first;
    loop {
        if !chunk.sha256.is_empty() {
            if written != total || hasher.finalize().as_slice() != chunk.sha256.as_slice() {
                return Err(Status::data_loss(
                    "the snapshot does not match its size or SHA-256",
                ));
            }
            break;
        }
        written += chunk.data.len() as u64;
        if written > total {
            return Err(Status::invalid_argument(
                "the snapshot is larger than announced",
            ));
        }
        hasher.update(&chunk.data);
        file.write_all(&chunk.data).await.map_err(io)?;
        chunk = inbound
            .message()
            .await?
            .ok_or_else(|| Status::aborted("the snapshot stream ended early"))?;
    }
    file.sync_all().await.map_err(io)?;
    Ok(())
}
