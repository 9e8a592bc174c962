//! What Lock and Election share, built as etcd builds them: on leases,
//! transactions, ranges and watches. A lock or a candidacy is a key
//! `<name>/<lease in hex>` attached to the caller's lease; whoever holds the
//! key with the lowest create revision under `<name>/` owns the lock or
//! leads the election, and the others wait for the key just before theirs
//! to be deleted.

use tonic::Status;

use crate::apply::Applied;
use crate::error::ServerError;
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::request::Op;
use crate::shared::Shared;

/// The end of the range of every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
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
pub(crate) fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// The caller may read every key under `name/` and write `keys` (what
/// etcd's lock and election clients do through KV calls, checked up front:
/// the operations below then run as the server's own).
pub(crate) fn authorize(
    s: &Shared,
    caller: &crate::pb::kvserverpb::Caller,
    name: Option<&[u8]>,
    keys: &[&[u8]],
) -> Result<(), Status> {
    if let Some(name) = name {
        let prefix = prefix_of(name);
        s.auth
            .check_read(Some(caller), &prefix, &prefix_end(&prefix))?;
    }
    for k in keys {
        s.auth.check_read(Some(caller), k, b"")?;
        s.auth.check_write(Some(caller), k, b"")?;
    }
    Ok(())
}

/// A lock or a candidacy needs a live lease to attach its key to.
pub(crate) fn check_lease(s: &Shared, lease: i64) -> Result<(), Status> {
    match s.store.lease_time_to_live(lease) {
        Ok(_) => Ok(()),
        Err(_) => Err(ServerError::from(mvcc::Error::LeaseNotFound).into()),
    }
}

/// etcd's session TTL when a lock or campaign names no lease.
const SESSION_TTL: i64 = 60;

/// For a lock or candidacy that names no lease: a new lease of 60 s
/// that nobody keeps alive, as etcd's server-side session grants and
/// orphans one.
pub(crate) async fn session_lease(s: &std::sync::Arc<Shared>) -> Result<i64, Status> {
    use crate::pb::etcdserverpb::lease_server::Lease as _;
    let grant = crate::api::lease::Lease(s.clone())
        .lease_grant(tonic::Request::new(pb::LeaseGrantRequest {
            ttl: SESSION_TTL,
            id: 0,
        }))
        .await?;
    Ok(grant.into_inner().id)
}

pub(crate) fn member_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.extend_from_slice(format!("/{lease:x}").as_bytes());
    key
}

pub(crate) fn compare_created(key: &[u8], rev: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(rev)),
        range_end: Vec::new(),
    }
}

pub(crate) fn op(r: pb::request_op::Request) -> pb::RequestOp {
    pb::RequestOp { request: Some(r) }
}

pub(crate) async fn txn(s: &Shared, t: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
    match s.propose(Op::Txn(t)).await? {
        (Applied::Txn(mut t), rev) => {
            t.header = Some(s.header(rev));
            Ok(t)
        }
        _ => Err(Status::internal("mismatched answer")),
    }
}

pub(crate) fn first_range(t: &pb::TxnResponse) -> Option<&pb::RangeResponse> {
    t.responses.iter().find_map(|r| match &r.response {
        Some(pb::response_op::Response::ResponseRange(r)) => Some(r),
        _ => None,
    })
}

/// Creates `key` (attached to `lease`, holding `value`) unless it exists.
/// Returns its create revision and the value it holds.
pub(crate) async fn ensure_key(
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

pub(crate) fn range_at(s: &Shared, req: mvcc::RangeRequest) -> Result<mvcc::RangeResult, Status> {
    s.store
        .range(&req)
        .map_err(|e| Status::from(ServerError::from(e)))
}

/// Waits until no key under `prefix` was created before `rev` (each wait is
/// for the deletion of the newest such key, as etcd's waitDeletes does).
pub(crate) async fn wait_turn(s: &Shared, prefix: &[u8], rev: i64) -> Result<i64, Status> {
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
pub(crate) async fn wait_deleted(s: &Shared, key: &[u8], from: i64) -> Result<(), Status> {
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

pub(crate) async fn delete_key(s: &Shared, key: Vec<u8>) -> Result<i64, Status> {
    let (_, rev) = s
        .propose(Op::DeleteRange(pb::DeleteRangeRequest {
            key,
            ..Default::default()
        }))
        .await?;
    Ok(rev)
}
