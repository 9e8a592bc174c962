//! etcd's Election service (see [`super::waiting`] for how waiting works).

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

use super::waiting::*;
use super::Rpc;
use crate::pb::etcdserverpb as pb;
use crate::pb::v3electionpb as el;
use crate::shared::Shared;

#[derive(Clone)]
pub struct Election(pub Arc<Shared>);

fn not_leader() -> Status {
    Status::new(Code::Unknown, "election: not leader")
}

/// The first-created key under `name/` (the leader), with the revision the
/// answer was made at.
async fn leader_of(s: &Shared, name: &[u8]) -> Result<(Option<mvcc::KeyValue>, i64), Status> {
    s.read_index().await?;
    let prefix = prefix_of(name);
    let r = range_at(
        s,
        mvcc::RangeRequest {
            key: prefix.clone(),
            range_end: prefix_end(&prefix),
            sort_target: mvcc::SortTarget::Create,
            sort_order: mvcc::SortOrder::Ascend,
            limit: 1,
            ..Default::default()
        },
    )?;
    Ok((r.kvs.into_iter().next(), r.revision))
}

#[tonic::async_trait]
impl el::election_server::Election for Election {
    async fn campaign(&self, req: Request<el::CampaignRequest>) -> Rpc<el::CampaignResponse> {
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        let mut r = req.into_inner();
        let s = &self.0;
        if r.lease == 0 {
            r.lease = session_lease(s).await?;
        }
        let key = member_key(&r.name, r.lease);
        authorize(s, &caller, Some(&r.name), &[&key])?;
        check_lease(s, r.lease)?;
        let (created, value) = ensure_key(s, &key, r.lease, &r.value).await?;
        let leader = el::LeaderKey {
            name: r.name.clone(),
            key: key.clone(),
            rev: created,
            lease: r.lease,
        };
        if value != r.value {
            proclaim(s, &leader, r.value.clone()).await?;
        }
        let rev = wait_turn(s, &prefix_of(&r.name), created).await?;
        Ok(Response::new(el::CampaignResponse {
            header: Some(s.header(rev)),
            leader: Some(leader),
        }))
    }

    async fn proclaim(&self, req: Request<el::ProclaimRequest>) -> Rpc<el::ProclaimResponse> {
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        let r = req.into_inner();
        let leader = r.leader.ok_or_else(not_leader)?;
        authorize(&self.0, &caller, None, &[&leader.key])?;
        let rev = proclaim(&self.0, &leader, r.value).await?;
        Ok(Response::new(el::ProclaimResponse {
            header: Some(self.0.header(rev)),
        }))
    }

    async fn leader(&self, req: Request<el::LeaderRequest>) -> Rpc<el::LeaderResponse> {
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        let name = req.into_inner().name;
        authorize(&self.0, &caller, Some(&name), &[])?;
        let (kv, rev) = leader_of(&self.0, &name).await?;
        let kv = kv.ok_or_else(|| Status::new(Code::Unknown, "election: no leader"))?;
        Ok(Response::new(el::LeaderResponse {
            header: Some(self.0.header(rev)),
            kv: Some(kv),
        }))
    }

    async fn observe(
        &self,
        req: Request<el::LeaderRequest>,
    ) -> Rpc<Pin<Box<dyn Stream<Item = Result<el::LeaderResponse, Status>> + Send + 'static>>> {
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        let name = req.into_inner().name;
        authorize(&self.0, &caller, Some(&name), &[])?;
        let s = self.0.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<(Vec<u8>, i64, Vec<u8>)> = None;
            loop {
                let (kv, rev) = match leader_of(&s, &name).await {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if let Some(kv) = kv {
                    let now = (kv.key.clone(), kv.mod_revision, kv.value.clone());
                    if last.as_ref() != Some(&now) {
                        last = Some(now);
                        let resp = el::LeaderResponse {
                            header: Some(s.header(rev)),
                            kv: Some(kv),
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
                // Wait for any change under the election's prefix.
                let prefix = prefix_of(&name);
                let (stream, mut events) = s.store.watch_stream(16);
                if stream
                    .watch(&mvcc::WatchRequest {
                        key: prefix.clone(),
                        range_end: prefix_end(&prefix),
                        start_revision: rev + 1,
                        ..Default::default()
                    })
                    .is_err()
                {
                    return;
                }
                tokio::select! {
                    e = events.recv() => if e.is_none() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(&self, req: Request<el::ResignRequest>) -> Rpc<el::ResignResponse> {
        self.0.refuse_on_learner()?;
        use pb::request_op::Request as R;
        let caller = self.0.caller(&req).await?;
        let leader = req.into_inner().leader.ok_or_else(not_leader)?;
        authorize(&self.0, &caller, None, &[&leader.key])?;
        let t = txn(
            &self.0,
            pb::TxnRequest {
                compare: vec![compare_created(&leader.key, leader.rev)],
                success: vec![op(R::RequestDeleteRange(pb::DeleteRangeRequest {
                    key: leader.key.clone(),
                    ..Default::default()
                }))],
                failure: Vec::new(),
            },
        )
        .await?;
        Ok(Response::new(el::ResignResponse { header: t.header }))
    }
}

/// Replaces the leader's value, if it still leads with that key.
async fn proclaim(s: &Shared, leader: &el::LeaderKey, value: Vec<u8>) -> Result<i64, Status> {
    use pb::request_op::Request as R;
    let t = txn(
        s,
        pb::TxnRequest {
            compare: vec![compare_created(&leader.key, leader.rev)],
            success: vec![op(R::RequestPut(pb::PutRequest {
                key: leader.key.clone(),
                value,
                lease: leader.lease,
                ..Default::default()
            }))],
            failure: Vec::new(),
        },
    )
    .await?;
    if !t.succeeded {
        return Err(not_leader());
    }
    Ok(t.header.map_or(0, |h| h.revision))
}
