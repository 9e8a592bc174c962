//! The peer service a member serves on its peer URLs: raft messages and
//! snapshots from the other members, and the lease calls followers pass
//! on to the leader.

use std::sync::Arc;

use protobuf::Message as _;
use tonic::{Request, Response, Status, Streaming};

use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::{self as kpb, peer_server::Peer};
use crate::raft::Command;
use crate::shared::Shared;

pub struct PeerService(pub Arc<Shared>);

/// A refused sender is logged at most this often.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether a refusal of `from` should be logged now.
fn log_refusal(from: u64) -> bool {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Instant;
    static LAST: Mutex<Option<HashMap<u64, Instant>>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let map = last.get_or_insert_with(HashMap::new);
    match map.get(&from) {
        Some(t) if t.elapsed() < LOG_EVERY => false,
        _ => {
            map.insert(from, Instant::now());
            true
        }
    }
}

impl PeerService {
    /// Refuses what comes from another cluster, or was meant for another
    /// member.
    fn check(&self, cluster_id: u64, from: u64, to: Option<u64>) -> Result<(), Status> {
        let s = &self.0;
        if cluster_id != s.cluster_id {
            if log_refusal(from) {
                tracing::warn!(
                "refusing a message from member {from:x} of cluster {cluster_id:x}: this member \
                 ({:x}) belongs to cluster {:x}",
                s.member_id,
                s.cluster_id
                );
            }
            return Err(Status::failed_precondition("cluster ID mismatch"));
        }
        if let Some(to) = to.filter(|to| *to != s.member_id) {
            if log_refusal(from) {
                tracing::warn!(
                    "refusing a message from member {from:x} for member {to:x}: this member is {:x}",
                    s.member_id
                );
            }
            return Err(Status::failed_precondition("member ID mismatch"));
        }
        if to.is_none() && s.members.is_removed(from) {
            return Err(removed(from));
        }
        Ok(())
    }
}

fn removed(from: u64) -> Status {
    if log_refusal(from) {
        tracing::warn!("refusing messages from member {from:x}: it was removed from the cluster");
    }
    Status::permission_denied(super::sender::REMOVED)
}

/// What comes from a removed member: a removed leader winding down may
/// still hand leadership on (MsgTimeoutNow passes; its heartbeats and
/// appends are dropped); anything else is refused, which tells a member
/// that missed its removal that it was removed.
fn from_removed(m: &raft::eraftpb::Message) -> Result<bool, ()> {
    use raft::eraftpb::MessageType as T;
    match m.get_msg_type() {
        T::MsgTimeoutNow => Ok(true),
        T::MsgHeartbeat | T::MsgAppend => Ok(false),
        _ => Err(()),
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        req: Request<Streaming<kpb::RaftBatch>>,
    ) -> Result<Response<kpb::PeerAck>, Status> {
        let mut inbound = req.into_inner();
        let mut received: Option<(u64, prometheus::IntCounter)> = None;
        while let Some(batch) = inbound.message().await? {
            self.check(batch.cluster_id, batch.from, Some(batch.to))?;
            // Labelled by members only (a stranger must not grow the
            // label set).
            if received
                .as_ref()
                .is_none_or(|(from, _)| *from != batch.from)
                && self.0.members.get(batch.from).is_some()
            {
                let from = format!("{:x}", batch.from);
                received = self
                    .0
                    .metrics
                    .peer_received_bytes
                    .get_metric_with_label_values(&[&from])
                    .ok()
                    .map(|c| (batch.from, c));
            }
            if let Some((from, c)) = &received {
                if *from == batch.from {
                    c.inc_by(prost::Message::encoded_len(&batch) as u64);
                }
            }
            if self.0.transport.faults.drops_in(batch.from) {
                continue;
            }
            let removed_sender = self.0.members.is_removed(batch.from);
            if removed_sender && batch.messages.is_empty() {
                return Err(removed(batch.from));
            }
            if !removed_sender {
                self.0.transport.heard_from(batch.from);
            }
            for bytes in &batch.messages {
                let m = raft::eraftpb::Message::parse_from_bytes(bytes)
                    .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
                if m.from != batch.from {
                    return Err(Status::invalid_argument("raft message from another member"));
                }
                if removed_sender && !from_removed(&m).map_err(|()| removed(batch.from))? {
                    continue;
                }
                self.0.transport.to_raft(Command::Step(Box::new(m)));
            }
        }
        Ok(Response::new(kpb::PeerAck {}))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<kpb::SnapshotChunk>>,
    ) -> Result<Response<kpb::PeerAck>, Status> {
        let shared = self.0.clone();
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check(first.cluster_id, first.from, Some(first.to))?;
        if shared.transport.faults.drops_in(first.from) {
            return Err(Status::unavailable("dropped by the test faults"));
        }
        let msg = super::snapshot::receive(&shared, first, &mut inbound).await?;
        shared.transport.to_raft(Command::Step(Box::new(msg)));
        Ok(Response::new(kpb::PeerAck {}))
    }

    async fn lease_renew(
        &self,
        req: Request<kpb::LeaseRenewRequest>,
    ) -> Result<Response<kpb::LeaseRenewResponse>, Status> {
        let r = req.into_inner();
        self.check(r.cluster_id, 0, None)?;
        let s = &self.0;
        if !s.is_lease_primary() {
            return Err(Status::failed_precondition("not the leader"));
        }
        let resp = match crate::api::lease::renew_here(s, r.id) {
            Some(ttl) => kpb::LeaseRenewResponse {
                found: true,
                ttl,
                revision: s.store.current_revision(),
            },
            None => kpb::LeaseRenewResponse {
                found: false,
                ttl: 0,
                revision: s.store.current_revision(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn probe(&self, _req: Request<kpb::PeerAck>) -> Result<Response<kpb::PeerAck>, Status> {
        Ok(Response::new(kpb::PeerAck {}))
    }

    async fn members(
        &self,
        _req: Request<kpb::MembersRequest>,
    ) -> Result<Response<kpb::MembersResponse>, Status> {
        let s = &self.0;
        Ok(Response::new(kpb::MembersResponse {
            cluster_id: s.cluster_id,
            members: s.members.list().iter().map(|m| m.to_pb()).collect(),
            removed: s.members.removed(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<kpb::MemberPromoteForward>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let r = req.into_inner();
        self.check(r.cluster_id, 0, None)?;
        let members = crate::api::cluster::promote_here(&self.0, r.id).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
            members: members.iter().map(|m| m.to_pb()).collect(),
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<kpb::HashKvForward>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let r = req.into_inner();
        self.check(r.cluster_id, 0, None)?;
        let store = self.0.store.clone();
        let (hash, current, compacted) =
            tokio::task::spawn_blocking(move || store.hash_kv(r.revision))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(crate::api::mvcc_err)?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.0.header(current)),
            hash,
            compact_revision: compacted,
        }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<kpb::LeaseTtlRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        self.check(r.cluster_id, 0, None)?;
        let s = &self.0;
        if !s.is_lease_primary() {
            return Err(Status::failed_precondition("not the leader"));
        }
        let inner = r.request.unwrap_or_default();
        Ok(Response::new(crate::api::lease::time_to_live_here(
            s, &inner,
        )))
    }
}
