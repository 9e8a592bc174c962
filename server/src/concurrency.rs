//! etcd's Lock and Election services, built as etcd builds them: on
//! leases, transactions, ranges and watches. A lock or a candidacy is a key
//! `<name>/<lease in hex>` attached to the caller's lease; whoever holds the
//! key with the lowest create revision under `<name>/` owns the lock or
//! leads the election, and the others wait for the key just before theirs
//! to be deleted.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

use crate::apply::Applied;
use crate::error::ServerError;
use crate::node::Shared;
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::request::Op;
use crate::pb::{v3electionpb as el, v3lockpb as lk};

type Rpc<T> = Result<Response<T>, Status>;

/// The end of the range of every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `<name>/`: where the keys of a lock or an election live.
fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// A lock or a candidacy needs a live lease to attach its key to.
fn check_lease(s: &Shared, lease: i64) -> Result<(), Status> {
    match s.store.lease_time_to_live(lease) {
        Ok(_) => Ok(()),
        Err(_) => Err(ServerError::from(mvcc::Error::LeaseNotFound).into()),
    }
}

fn member_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.extend_from_slice(format!("/{lease:x}").as_bytes());
    key
}

fn compare_created(key: &[u8], rev: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(rev)),
        range_end: Vec::new(),
    }
}

fn op(r: pb::request_op::Request) -> pb::RequestOp {
    pb::RequestOp { request: Some(r) }
}

async fn txn(s: &Shared, t: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
    match s.propose(Op::Txn(t)).await? {
        (Applied::Txn(mut t), rev) => {
            t.header = Some(s.header(rev));
            Ok(t)
        }
        _ => Err(Status::internal("mismatched answer")),
    }
}

fn first_range(t: &pb::TxnResponse) -> Option<&pb::RangeResponse> {
    t.responses.iter().find_map(|r| match &r.response {
        Some(pb::response_op::Response::ResponseRange(r)) => Some(r),
        _ => None,
    })
}

/// Creates `key` (attached to `lease`, holding `value`) unless it exists.
/// Returns its create revision and the value it holds.
async fn ensure_key(
    s: &Shared,
    key: &[u8],
    lease: i64,
    value: &[u8],
) -> Result<(i64, Vec<u8>), Status> {
    use pb::request_op::Request as R;
    let t = txn(
        s,
        pb::TxnRequest {
            compare: vec![compare_created(key, 0)],
            success: vec![op(R::RequestPut(pb::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
                ..Default::default()
            }))],
            failure: vec![op(R::RequestRange(pb::RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            }))],
        },
    )
    .await?;
    if t.succeeded {
        return Ok((t.header.map_or(0, |h| h.revision), value.to_vec()));
    }
    let kv = first_range(&t)
        .and_then(|r| r.kvs.first())
        .ok_or_else(|| Status::internal("the existing key vanished"))?;
    Ok((kv.create_revision, kv.value.clone()))
}

fn range_at(s: &Shared, req: mvcc::RangeRequest) -> Result<mvcc::RangeResult, Status> {
    s.store
        .range(&req)
        .map_err(|e| Status::from(ServerError::from(e)))
}

/// Waits until no key under `prefix` was created before `rev` (each wait is
/// for the deletion of the newest such key, as etcd's waitDeletes does).
async fn wait_turn(s: &Shared, prefix: &[u8], rev: i64) -> Result<i64, Status> {
    loop {
        s.read_index().await?;
        let r = range_at(
            s,
            mvcc::RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                max_create_revision: rev - 1,
                sort_target: mvcc::SortTarget::Create,
                sort_order: mvcc::SortOrder::Descend,
                limit: 1,
                ..Default::default()
            },
        )?;
        let Some(before) = r.kvs.first() else {
            return Ok(r.revision);
        };
        wait_deleted(s, &before.key, r.revision + 1).await?;
    }
}

/// Resolves once `key` is deleted at or after revision `from`.
async fn wait_deleted(s: &Shared, key: &[u8], from: i64) -> Result<(), Status> {
    let (stream, mut rx) = s.store.watch_stream(16);
    stream
        .watch(&mvcc::WatchRequest {
            key: key.to_vec(),
            start_revision: from,
            no_put: true,
            ..Default::default()
        })
        .map_err(|e| Status::internal(e.to_string()))?;
    while let Some(resp) = rx.recv().await {
        // A compacted start means history is gone: look again from now.
        if resp.compact_revision != 0 || !resp.events.is_empty() {
            return Ok(());
        }
    }
    Err(Status::unavailable("etcdserver: server stopped"))
}

async fn delete_key(s: &Shared, key: Vec<u8>) -> Result<i64, Status> {
    let (_, rev) = s
        .propose(Op::DeleteRange(pb::DeleteRangeRequest {
            key,
            ..Default::default()
        }))
        .await?;
    Ok(rev)
}

#[derive(Clone)]
pub struct Lock(pub Arc<Shared>);

#[tonic::async_trait]
impl lk::lock_server::Lock for Lock {
    async fn lock(&self, req: Request<lk::LockRequest>) -> Rpc<lk::LockResponse> {
        let r = req.into_inner();
        let s = &self.0;
        check_lease(s, r.lease)?;
        let key = member_key(&r.name, r.lease);
        let (created, _) = ensure_key(s, &key, r.lease, b"").await?;
        let rev = wait_turn(s, &prefix_of(&r.name), created).await?;
        Ok(Response::new(lk::LockResponse {
            header: Some(s.header(rev)),
            key,
        }))
    }

    async fn unlock(&self, req: Request<lk::UnlockRequest>) -> Rpc<lk::UnlockResponse> {
        let rev = delete_key(&self.0, req.into_inner().key).await?;
        Ok(Response::new(lk::UnlockResponse {
            header: Some(self.0.header(rev)),
        }))
    }
}

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
        let r = req.into_inner();
        let s = &self.0;
        check_lease(s, r.lease)?;
        let key = member_key(&r.name, r.lease);
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
        let r = req.into_inner();
        let leader = r.leader.ok_or_else(not_leader)?;
        let rev = proclaim(&self.0, &leader, r.value).await?;
        Ok(Response::new(el::ProclaimResponse {
            header: Some(self.0.header(rev)),
        }))
    }

    async fn leader(&self, req: Request<el::LeaderRequest>) -> Rpc<el::LeaderResponse> {
        let (kv, rev) = leader_of(&self.0, &req.into_inner().name).await?;
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
        let name = req.into_inner().name;
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
        use pb::request_op::Request as R;
        let leader = req.into_inner().leader.ok_or_else(not_leader)?;
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
