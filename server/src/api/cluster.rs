//! The Cluster service: the member list, and changes to it with etcd's
//! rules and errors.
//!
//! Adding, removing and promoting go through raft as configuration changes
//! (one at a time); updating peer URLs is a normal entry. Every member
//! checks a committed change against the member list it applied
//! ([`crate::membership::Membership::validate`]), so all decide alike. What
//! only this member can judge is checked before proposing, as etcd does:
//! with `--strict-reconfig-check`, whether enough members have started and
//! have been connected to this one for [`HEALTH_INTERVAL`]; for a
//! promotion, whether the learner has caught up with the leader (only the
//! leader knows: a follower passes the call on to it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::ConfChangeType;
use tonic::{Request, Response, Status};

use super::Rpc;
use crate::apply::Applied;
use crate::error::ServerError;
use crate::membership::{check_peer_urls, runtime_member_id, Member};
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::{member_change::Kind, request::Op, MemberChange};
use crate::shared::Shared;

/// How long every voter must have been connected to this member before a
/// reconfiguration is let through (etcd's HealthInterval).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// A learner is ready for promotion once its log matches at least this
/// share of the leader's (etcd's readyPercent).
const READY_PERCENT: f64 = 0.9;

#[derive(Clone)]
pub struct Cluster(pub Arc<Shared>);

fn change(kind: Kind, member: pb::Member) -> MemberChange {
    let mut c = MemberChange {
        kind: 0,
        member: Some(member),
    };
    c.set_kind(kind);
    c
}

/// A member record naming only the member.
fn by_id(id: u64) -> pb::Member {
    pb::Member {
        id,
        ..Default::default()
    }
}

fn members_of(applied: Applied) -> Result<Vec<Member>, Status> {
    match applied {
        Applied::Members(m) => Ok(m),
        _ => Err(Status::internal("mismatched answer")),
    }
}

fn to_pb(members: &[Member]) -> Vec<pb::Member> {
    members.iter().map(Member::to_pb).collect()
}

/// How many of `voters` (this member counted) have been connected to this
/// member since `since` (etcd's numConnectedSince).
fn connected_since(s: &Shared, since: Instant, voters: &[u64]) -> usize {
    voters
        .iter()
        .filter(|id| {
            **id == s.member_id || s.transport.active_since(**id).is_some_and(|t| t <= since)
        })
        .count()
}

fn health_cutoff() -> Instant {
    Instant::now()
        .checked_sub(HEALTH_INTERVAL)
        .unwrap_or_else(Instant::now)
}

/// etcd's mayAddMember.
fn may_add(s: &Shared, learner: bool) -> Result<(), ServerError> {
    if !s.strict_reconfig_check {
        return Ok(());
    }
    if !learner && !s.members.ready_to_add_voter() {
        return Err(ServerError::NotEnoughStarted);
    }
    let voters = s.members.voters();
    if connected_since(s, health_cutoff(), &voters) != voters.len() {
        return Err(ServerError::Unhealthy);
    }
    Ok(())
}

/// etcd's mayRemoveMember.
fn may_remove(s: &Shared, id: u64) -> Result<(), ServerError> {
    if !s.strict_reconfig_check || s.members.is_learner(id) {
        return Ok(());
    }
    if !s.members.ready_to_remove_voter(id) {
        return Err(ServerError::NotEnoughStarted);
    }
    // A member that is down is not part of the working quorum.
    if id != s.member_id && s.transport.active_since(id).is_none() {
        return Ok(());
    }
    let voters = s.members.voters();
    let active = connected_since(s, health_cutoff(), &voters);
    if active < 2 + (voters.len() - 1) / 2 {
        return Err(ServerError::Unhealthy);
    }
    Ok(())
}

/// Promotes learner `id`; only the leader can (None from
/// [`Shared::progress`] on a follower answers "not leader").
pub async fn promote_here(s: &Arc<Shared>, id: u64) -> Result<Vec<Member>, Status> {
    let progress = s.progress().await?.ok_or(ServerError::NotLeader)?;
    let matched = |who: u64| progress.iter().find(|(m, _)| *m == who).map(|(_, i)| *i);
    // Only a learner's progress matters (a voter or an unknown member is
    // refused when the change is applied).
    if let Some(learner) = matched(id).filter(|_| s.members.is_learner(id)) {
        let leader = matched(s.member_id).unwrap_or(0);
        if (learner as f64) < (leader as f64) * READY_PERCENT {
            return Err(ServerError::LearnerNotReady.into());
        }
    }
    if s.strict_reconfig_check && !s.members.ready_to_promote() {
        return Err(ServerError::NotEnoughStarted.into());
    }
    let c = change(Kind::Promote, by_id(id));
    let (applied, _) = s
        .propose_conf_change(ConfChangeType::AddNode, id, c)
        .await?;
    members_of(applied)
}

/// A follower passes a promotion on to the leader, trying again while
/// leadership is settling, for up to the request timeout.
async fn promote_at_leader(s: &Arc<Shared>, id: u64) -> Result<Vec<Member>, Status> {
    let deadline = Instant::now() + s.request_timeout;
    loop {
        match promote_here(s, id).await {
            Err(e) if e.message() == ServerError::NotLeader.to_string() => {}
            other => return other,
        }
        let leader = s.leader();
        if let Some(mut client) = (leader != 0 && leader != s.member_id)
            .then(|| s.transport.client(leader))
            .flatten()
        {
            let req = crate::pb::kvserverpb::MemberPromoteForward {
                cluster_id: s.cluster_id,
                id,
            };
            match client.member_promote(req).await {
                Ok(r) => {
                    return Ok(r
                        .into_inner()
                        .members
                        .into_iter()
                        .map(Member::from_pb)
                        .collect())
                }
                // etcd gives up at once on these; anything else is tried
                // again (the leader may have moved).
                Err(e)
                    if [
                        ServerError::LearnerNotReady,
                        ServerError::MemberNotFound,
                        ServerError::MemberNotLearner,
                        ServerError::NotEnoughStarted,
                    ]
                    .iter()
                    .any(|x| x.to_string() == e.message()) =>
                {
                    return Err(e)
                }
                Err(e) => tracing::debug!("passing a promotion on to the leader: {e}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(ServerError::Timeout.into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Cluster {
    async fn member_add(&self, req: Request<pb::MemberAddRequest>) -> Rpc<pb::MemberAddResponse> {
        self.0.refuse_on_learner()?;
        self.0.admin(&req).await?;
        let s = &self.0;
        let r = req.into_inner();
        check_peer_urls(&r.peer_ur_ls)?;
        let mut urls = r.peer_ur_ls;
        urls.sort();
        let id = runtime_member_id(&urls, now_nanos(), |id| s.members.has_used(id));
        may_add(s, r.is_learner)?;
        let member = pb::Member {
            id,
            name: String::new(),
            peer_ur_ls: urls,
            client_ur_ls: Vec::new(),
            is_learner: r.is_learner,
        };
        let kind = if r.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let (applied, _) = s
            .propose_conf_change(kind, id, change(Kind::Add, member.clone()))
            .await?;
        let members = members_of(applied)?;
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(s.header(0)),
            member: Some(member),
            members: to_pb(&members),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Rpc<pb::MemberRemoveResponse> {
        self.0.refuse_on_learner()?;
        self.0.admin(&req).await?;
        let s = &self.0;
        let id = req.into_inner().id;
        may_remove(s, id)?;
        let c = change(Kind::Remove, by_id(id));
        let (applied, _) = s
            .propose_conf_change(ConfChangeType::RemoveNode, id, c)
            .await?;
        let members = members_of(applied)?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(s.header(0)),
            members: to_pb(&members),
        }))
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Rpc<pb::MemberUpdateResponse> {
        self.0.refuse_on_learner()?;
        self.0.admin(&req).await?;
        let s = &self.0;
        let r = req.into_inner();
        check_peer_urls(&r.peer_ur_ls)?;
        let mut urls = r.peer_ur_ls;
        urls.sort();
        let c = change(
            Kind::Update,
            pb::Member {
                id: r.id,
                peer_ur_ls: urls,
                ..Default::default()
            },
        );
        let (applied, _) = s.propose(Op::MemberChange(c)).await?;
        let members = members_of(applied)?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: Some(s.header(0)),
            members: to_pb(&members),
        }))
    }

    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Rpc<pb::MemberListResponse> {
        self.0.refuse_on_learner()?;
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.0.header(0)),
            members: self.0.members.list().iter().map(|m| m.to_pb()).collect(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Rpc<pb::MemberPromoteResponse> {
        self.0.refuse_on_learner()?;
        self.0.admin(&req).await?;
        let s = &self.0;
        let members = promote_at_leader(s, req.into_inner().id).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(s.header(0)),
            members: to_pb(&members),
        }))
    }
}
