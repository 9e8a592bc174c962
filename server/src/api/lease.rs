//! The Lease service. Grants and revocations go through raft; keep-alives
//! and TimeToLive are answered by the leader, which alone keeps leases'
//! clocks (a follower passes them on over the peer transport, as etcd
//! does over its peer URLs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{BoxStream, Rpc};
use crate::apply::Applied;
use crate::error::ServerError;
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::{self as kpb, request::Op};
use crate::shared::Shared;

#[derive(Clone)]
pub struct Lease(pub Arc<Shared>);

/// Renews a lease on the leader: its TTL, or None when it does not exist
/// or has expired (its revocation is under way). A lease that had a
/// checkpoint gets it cleared, as etcd's renewal does.
pub fn renew_here(s: &Arc<Shared>, id: i64) -> Option<i64> {
    let ttl = s.store.lease_renew(id).ok()?;
    s.metrics.leases_renewed.inc();
    if s.store.lease_checkpointed(id).unwrap_or(0) > 0 {
        let s = s.clone();
        tokio::spawn(async move {
            let _ = s
                .propose(Op::LeaseCheckpoints(kpb::LeaseCheckpoints {
                    checkpoints: vec![kpb::LeaseCheckpoint {
                        id,
                        remaining_ttl: 0,
                    }],
                }))
                .await;
        });
    }
    Some(ttl)
}

/// TimeToLive as the leader answers it.
pub fn time_to_live_here(
    s: &Shared,
    r: &pb::LeaseTimeToLiveRequest,
) -> pb::LeaseTimeToLiveResponse {
    let header = Some(s.header(s.store.current_revision()));
    match s.store.lease_time_to_live(r.id) {
        Ok((granted, remaining, keys)) => pb::LeaseTimeToLiveResponse {
            header,
            id: r.id,
            ttl: remaining,
            granted_ttl: granted,
            keys: if r.keys { keys } else { Vec::new() },
        },
        // etcd answers an expired or unknown lease with TTL -1.
        Err(_) => pb::LeaseTimeToLiveResponse {
            header,
            id: r.id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        },
    }
}

/// Runs `here` on the leader if this member leads, or `there` against the
/// leader, retrying (a new leader, a broken connection) until the request
/// timeout.
async fn at_leader<T, H, F, Fut>(s: &Arc<Shared>, here: H, there: F) -> Result<T, ServerError>
where
    H: Fn(&Arc<Shared>) -> T,
    F: Fn(kpb::peer_client::PeerClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + s.request_timeout;
    loop {
        let leader = s.leader();
        if leader == s.member_id && s.is_lease_primary() {
            return Ok(here(s));
        }
        if leader != 0 && leader != s.member_id && !s.transport.faults.drops_out(leader) {
            if let Some(client) = s.transport.client(leader) {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, there(client)).await {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) => tracing::debug!("lease call at the leader: {e}"),
                    Err(_) => {}
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(if s.leader() == 0 {
                ServerError::NoLeader
            } else {
                ServerError::Timeout
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A keep-alive, wherever it arrives: (TTL, revision); TTL 0 for a lease
/// that does not exist or has expired.
async fn renew(s: &Arc<Shared>, id: i64) -> Result<(i64, i64), ServerError> {
    let cluster_id = s.cluster_id;
    at_leader(
        s,
        |s| (renew_here(s, id).unwrap_or(0), s.store.current_revision()),
        |mut c| async move {
            let r = c
                .lease_renew(kpb::LeaseRenewRequest { cluster_id, id })
                .await?
                .into_inner();
            Ok((if r.found { r.ttl } else { 0 }, r.revision))
        },
    )
    .await
}

#[tonic::async_trait]
impl pb::lease_server::Lease for Lease {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Rpc<pb::LeaseGrantResponse> {
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        let mut r = req.into_inner();
        if r.id == 0 {
            // A positive ID no live lease has, chosen here (from the
            // request IDs, unique across members) so that every member
            // applies the same one.
            loop {
                let id = (self.0.ids.next() & i64::MAX as u64) as i64;
                if id != 0 && self.0.store.lease_time_to_live(id).is_err() {
                    r.id = id;
                    break;
                }
            }
        }
        match self.0.propose_as(Op::LeaseGrant(r), &caller).await? {
            (Applied::LeaseGrant(mut g), rev) => {
                g.header = Some(self.0.header(rev));
                Ok(Response::new(g))
            }
            _ => Err(Status::internal("mismatched answer")),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Rpc<pb::LeaseRevokeResponse> {
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        match self
            .0
            .propose_as(Op::LeaseRevoke(req.into_inner()), &caller)
            .await?
        {
            (Applied::LeaseRevoke(mut r), rev) => {
                r.header = Some(self.0.header(rev));
                Ok(Response::new(r))
            }
            _ => Err(Status::internal("mismatched answer")),
        }
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Rpc<BoxStream<pb::LeaseKeepAliveResponse>> {
        self.keep_alive(req).await
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Rpc<pb::LeaseTimeToLiveResponse> {
        self.0.refuse_on_learner()?;
        let r = req.into_inner();
        let cluster_id = self.0.cluster_id;
        let resp = at_leader(
            &self.0,
            |s| time_to_live_here(s, &r),
            |mut c| async move {
                Ok(c.lease_time_to_live(kpb::LeaseTtlRequest {
                    cluster_id,
                    request: Some(r),
                })
                .await?
                .into_inner())
            },
        )
        .await?;
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<pb::LeaseLeasesRequest>,
    ) -> Rpc<pb::LeaseLeasesResponse> {
        self.0.refuse_on_learner()?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
            leases: self
                .0
                .store
                .leases()
                .into_iter()
                .map(|id| pb::LeaseStatus { id })
                .collect(),
        }))
    }
}

impl Lease {
    /// Renews each lease `req` names as its message comes, from gRPC or
    /// from the JSON gateway; ends when the client closes its side or
    /// goes away.
    pub async fn keep_alive<S>(&self, req: Request<S>) -> Rpc<BoxStream<pb::LeaseKeepAliveResponse>>
    where
        S: Stream<Item = Result<pb::LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
    {
        self.0.refuse_on_learner()?;
        let mut inbound = req.into_inner();
        let shared = self.0.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(r)) = inbound.next().await {
                let out = match renew(&shared, r.id).await {
                    // An unknown or expired lease answers TTL 0, as etcd's
                    // does ("lease not found").
                    Ok((ttl, rev)) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(shared.header(rev)),
                        id: r.id,
                        ttl,
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = out.is_err();
                if tx.send(out).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
