//! Corruption checks: members compare the HashKV of their key spaces.
//!
//! - At start (`--experimental-initial-corrupt-check`), before serving
//!   clients, a member asks every peer for its hash at this member's
//!   revision; a peer with the same compaction and another hash means the
//!   data differ, and the member refuses to start.
//! - Periodically (`--experimental-corrupt-check-time`), the leader takes
//!   its own hash and asks the followers for theirs at the same revision.
//!   A follower ahead of the leader, compacted further, or with another
//!   hash at the same compaction gets the CORRUPT alarm, raised through
//!   raft; while it is up, every member refuses writes ("etcdserver:
//!   corrupt cluster") until it is cleared.
//!
//! Hashes travel on the peer service (`Peer.HashKv`).

use std::sync::Arc;
use std::time::Duration;

use crate::error::{ServerError, StartError};
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::{request::Op, HashKvForward};
use crate::shared::Shared;

/// How long a peer gets to answer with its hash.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// This member's (hash, revision, compacted revision) at `rev` (0: now).
async fn own_hash(s: &Arc<Shared>, rev: i64) -> Result<(u32, i64, i64), ServerError> {
    let store = s.store.clone();
    tokio::task::spawn_blocking(move || store.hash_kv(rev))
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .map_err(ServerError::from)
}

/// Every peer's answer for `rev` (peers that fail to answer are left out).
async fn peer_hashes(s: &Arc<Shared>, rev: i64) -> Vec<(u64, pb::HashKvResponse)> {
    let mut out = Vec::new();
    for m in s.members.list() {
        if m.id == s.member_id {
            continue;
        }
        let Some(mut client) = s.transport.client(m.id) else {
            continue;
        };
        let req = HashKvForward {
            cluster_id: s.cluster_id,
            revision: rev,
        };
        match tokio::time::timeout(ASK_TIMEOUT, client.hash_kv(req)).await {
            Ok(Ok(r)) => out.push((m.id, r.into_inner())),
            Ok(Err(e)) => {
                tracing::warn!("cannot fetch the hash of peer {:x}: {}", m.id, e.message())
            }
            Err(_) => tracing::warn!("peer {:x} did not answer with its hash in time", m.id),
        }
    }
    out
}

/// The check at start: refuses to go on when a peer's data differ.
pub async fn initial_check(s: &Arc<Shared>) -> Result<(), StartError> {
    let (hash, rev, compacted) = own_hash(s, 0)
        .await
        .map_err(|e| StartError::Fatal(format!("hashing the key space: {e}")))?;
    tracing::info!(revision = rev, "initial corruption check with the peers");
    let mut mismatches = Vec::new();
    for (id, p) in peer_hashes(s, rev).await {
        if p.compact_revision == compacted && p.hash != hash {
            mismatches.push(format!(
                "peer {id:x} has hash {:x} at revision {rev}, this member {hash:x}",
                p.hash
            ));
        }
    }
    if mismatches.is_empty() {
        tracing::info!(revision = rev, "initial corruption check passed");
        Ok(())
    } else {
        Err(StartError::Inconsistency(mismatches.join("; ")))
    }
}

/// One round of the leader's check; returns the members found corrupt
/// (the CORRUPT alarm is raised for each).
pub async fn check_once(s: &Arc<Shared>) -> Vec<u64> {
    let Ok((hash, rev, compacted)) = own_hash(s, 0).await else {
        return Vec::new();
    };
    let peers = peer_hashes(s, rev).await;
    let Ok((hash2, rev2, compacted2)) = own_hash(s, 0).await else {
        return Vec::new();
    };
    let mut corrupt = Vec::new();
    if hash2 != hash && rev2 == rev && compacted2 == compacted {
        // The leader's own key space changed under an unchanged revision.
        corrupt.push(s.member_id);
    }
    for (id, p) in peers {
        let ahead = p.header.as_ref().is_some_and(|h| h.revision > rev2);
        let differs = p.compact_revision == compacted && p.hash != hash;
        if ahead || p.compact_revision > compacted2 || differs {
            tracing::error!(
                "member {id:x} disagrees with the leader: hash {:x} (leader {hash:x}) at revision \
                 {rev}, compacted at {} (leader {compacted})",
                p.hash,
                p.compact_revision
            );
            corrupt.push(id);
        }
    }
    for id in &corrupt {
        let alarm = pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: *id,
            alarm: pb::AlarmType::Corrupt as i32,
        };
        if let Err(e) = s.propose(Op::Alarm(alarm)).await {
            tracing::warn!("raising the CORRUPT alarm for {id:x}: {e}");
        }
    }
    corrupt
}

/// The periodic check: every `every`, when this member leads.
pub async fn run_periodic(s: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if s.is_leader() && !s.alarms.lock().unwrap_or_else(|e| e.into_inner()).corrupt() {
            check_once(&s).await;
        }
    }
}
