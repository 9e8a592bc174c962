//! etcd's gRPC services: each handler checks its request, goes through raft
//! for writes (or ReadIndex for linearizable reads) and answers with
//! etcd's header and errors.

use std::pin::Pin;
use std::sync::Arc;

use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::apply::{self, Applied};
use crate::error::ServerError;
use crate::node::Shared;
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::request::Op;
use crate::pb::mvccpb;

/// The etcd release whose API this server speaks (reported by Status, and
/// used by clients to decide which features they may use).
pub const ETCD_API_VERSION: &str = "3.4.23";

type Rpc<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn check_size(s: &Shared, len: usize) -> Result<(), ServerError> {
    if len > s.max_request_bytes {
        Err(ServerError::TooLarge)
    } else {
        Ok(())
    }
}

fn mvcc_err(e: mvcc::Error) -> Status {
    ServerError::from(e).into()
}

#[derive(Clone)]
pub struct Kv(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::kv_server::Kv for Kv {
    async fn range(&self, req: Request<pb::RangeRequest>) -> Rpc<pb::RangeResponse> {
        let r = req.into_inner();
        if r.key.is_empty() {
            return Err(mvcc_err(mvcc::Error::EmptyKey));
        }
        if !r.serializable {
            self.0.read_index().await?;
        }
        let res = self
            .0
            .store
            .range(&apply::range_request(&r))
            .map_err(mvcc_err)?;
        let mut resp = apply::range_response(res);
        resp.header = Some(self.0.header(resp.header.map_or(0, |h| h.revision)));
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Rpc<pb::PutResponse> {
        let r = req.into_inner();
        check_size(&self.0, r.encoded_len())?;
        if r.key.is_empty() {
            return Err(mvcc_err(mvcc::Error::EmptyKey));
        }
        match self.0.propose(Op::Put(r)).await? {
            (Applied::Put(mut p), rev) => {
                p.header = Some(self.0.header(rev));
                Ok(Response::new(p))
            }
            _ => Err(Status::internal("mismatched answer")),
        }
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Rpc<pb::DeleteRangeResponse> {
        let r = req.into_inner();
        check_size(&self.0, r.encoded_len())?;
        if r.key.is_empty() {
            return Err(mvcc_err(mvcc::Error::EmptyKey));
        }
        match self.0.propose(Op::DeleteRange(r)).await? {
            (Applied::DeleteRange(mut d), rev) => {
                d.header = Some(self.0.header(rev));
                Ok(Response::new(d))
            }
            _ => Err(Status::internal("mismatched answer")),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Rpc<pb::TxnResponse> {
        let r = req.into_inner();
        check_size(&self.0, r.encoded_len())?;
        match self.0.propose(Op::Txn(r)).await? {
            (Applied::Txn(mut t), rev) => {
                t.header = Some(self.0.header(rev));
                Ok(Response::new(t))
            }
            _ => Err(Status::internal("mismatched answer")),
        }
    }

    async fn compact(&self, req: Request<pb::CompactionRequest>) -> Rpc<pb::CompactionResponse> {
        match self.0.propose(Op::Compaction(req.into_inner())).await? {
            (Applied::Compaction(mut c), rev) => {
                c.header = Some(self.0.header(rev));
                Ok(Response::new(c))
            }
            _ => Err(Status::internal("mismatched answer")),
        }
    }
}

#[derive(Clone)]
pub struct Lease(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::lease_server::Lease for Lease {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Rpc<pb::LeaseGrantResponse> {
        let mut r = req.into_inner();
        if r.id == 0 {
            // A positive ID no live lease has, chosen here so that every
            // member applies the same one.
            loop {
                let id = rand::random::<i64>() & i64::MAX;
                if id != 0 && self.0.store.lease_time_to_live(id).is_err() {
                    r.id = id;
                    break;
                }
            }
        }
        match self.0.propose(Op::LeaseGrant(r)).await? {
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
        match self.0.propose(Op::LeaseRevoke(req.into_inner())).await? {
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
        let mut inbound = req.into_inner();
        let shared = self.0.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            // Ends when the client closes its side or goes away.
            while let Ok(Some(r)) = inbound.message().await {
                // An unknown lease answers TTL 0, as etcd does.
                let ttl = shared.store.lease_renew(r.id).unwrap_or(0);
                let resp = pb::LeaseKeepAliveResponse {
                    header: Some(shared.header(shared.store.current_revision())),
                    id: r.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Rpc<pb::LeaseTimeToLiveResponse> {
        let r = req.into_inner();
        let header = Some(self.0.header(self.0.store.current_revision()));
        let resp = match self.0.store.lease_time_to_live(r.id) {
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
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<pb::LeaseLeasesRequest>,
    ) -> Rpc<pb::LeaseLeasesResponse> {
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

#[derive(Clone)]
pub struct Cluster(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Cluster {
    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Rpc<pb::MemberListResponse> {
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
            members: self
                .0
                .members
                .iter()
                .map(|m| pb::Member {
                    id: m.id,
                    name: m.name.clone(),
                    peer_ur_ls: m.peer_urls.clone(),
                    client_ur_ls: m.client_urls.clone(),
                    is_learner: false,
                })
                .collect(),
        }))
    }
}

#[derive(Clone)]
pub struct Maintenance(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for Maintenance {
    async fn alarm(&self, req: Request<pb::AlarmRequest>) -> Rpc<pb::AlarmResponse> {
        let r = req.into_inner();
        let rev = self.0.store.current_revision();
        if r.action() == pb::alarm_request::AlarmAction::Get {
            let mut resp = self
                .0
                .alarms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(&r);
            resp.header = Some(self.0.header(rev));
            return Ok(Response::new(resp));
        }
        match self.0.propose(Op::Alarm(r)).await? {
            (Applied::Alarm(mut a), rev) => {
                a.header = Some(self.0.header(rev));
                Ok(Response::new(a))
            }
            _ => Err(Status::internal("mismatched answer")),
        }
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Rpc<pb::StatusResponse> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.0;
        let (db_size, in_use) = s.store.db_size();
        let errors = s
            .alarms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list()
            .iter()
            .map(|a| {
                format!(
                    "memberID:{} alarm:{} ",
                    a.member_id,
                    a.alarm().as_str_name()
                )
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            header: Some(s.header(s.store.current_revision())),
            version: ETCD_API_VERSION.into(),
            db_size: db_size as i64,
            leader: s.leader.load(Relaxed),
            raft_index: s.commit_index.load(Relaxed),
            raft_term: s.term.load(Relaxed),
            raft_applied_index: s.applied_index.load(Relaxed),
            errors,
            db_size_in_use: in_use as i64,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        _req: Request<pb::DefragmentRequest>,
    ) -> Rpc<pb::DefragmentResponse> {
        let store = self.0.store.clone();
        let stats = tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(mvcc_err)?;
        tracing::info!(
            before = stats.source_bytes,
            after = stats.dest_bytes,
            "defragmented the database"
        );
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
        }))
    }

    async fn hash(&self, _req: Request<pb::HashRequest>) -> Rpc<pb::HashResponse> {
        let store = self.0.store.clone();
        let hash = tokio::task::spawn_blocking(move || store.hash())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(mvcc_err)?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
            hash,
        }))
    }

    async fn hash_kv(&self, req: Request<pb::HashKvRequest>) -> Rpc<pb::HashKvResponse> {
        let rev = req.into_inner().revision;
        let store = self.0.store.clone();
        let (hash, current, compacted) = tokio::task::spawn_blocking(move || store.hash_kv(rev))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(mvcc_err)?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.0.header(current)),
            hash,
            compact_revision: compacted,
        }))
    }

    async fn snapshot(
        &self,
        _req: Request<pb::SnapshotRequest>,
    ) -> Rpc<BoxStream<pb::SnapshotResponse>> {
        let shared = self.0.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = send_snapshot(&shared, &tx) {
                let _ = tx.blocking_send(Err(Status::internal(e)));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Streams a compact copy of the database followed by its sha256, as etcd
/// does (clients check the digest).
fn send_snapshot(
    shared: &Shared,
    tx: &mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) -> Result<(), String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = shared
        .data_dir
        .join("member")
        .join("snap")
        .join(format!("snapshot-{}-{n}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let result = (|| {
        shared
            .store
            .snapshot_into(&path)
            .map_err(|e| format!("snapshot: {e}"))?;
        let mut file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        let header = Some(shared.header(shared.store.current_revision()));
        let mut remaining = size + 32;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            remaining -= n as u64;
            let resp = pb::SnapshotResponse {
                header,
                remaining_bytes: remaining,
                blob: buf[..n].to_vec(),
            };
            if tx.blocking_send(Ok(resp)).is_err() {
                return Ok(());
            }
        }
        let digest = hasher.finalize().to_vec();
        let _ = tx.blocking_send(Ok(pb::SnapshotResponse {
            header,
            remaining_bytes: 0,
            blob: digest,
        }));
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result
}

#[derive(Clone)]
pub struct Auth(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::auth_server::Auth for Auth {
    async fn authenticate(
        &self,
        _req: Request<pb::AuthenticateRequest>,
    ) -> Rpc<pb::AuthenticateResponse> {
        Err(Status::failed_precondition(
            "etcdserver: authentication is not enabled",
        ))
    }

    async fn auth_disable(
        &self,
        _req: Request<pb::AuthDisableRequest>,
    ) -> Rpc<pb::AuthDisableResponse> {
        Ok(Response::new(pb::AuthDisableResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
        }))
    }

    async fn auth_status(
        &self,
        _req: Request<pb::AuthStatusRequest>,
    ) -> Rpc<pb::AuthStatusResponse> {
        Ok(Response::new(pb::AuthStatusResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
            enabled: false,
            auth_revision: 0,
        }))
    }
}

#[derive(Clone)]
pub struct Watch(pub Arc<Shared>, pub tokio::sync::watch::Receiver<bool>);

#[tonic::async_trait]
impl pb::watch_server::Watch for Watch {
    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Rpc<BoxStream<pb::WatchResponse>> {
        let mut inbound = req.into_inner();
        let shared = self.0.clone();
        let mut stopping = self.1.clone();
        let (tx, rx) = mpsc::channel(128);
        tokio::spawn(async move {
            let (stream, mut events) = shared.store.watch_stream(256);
            let mut fragment: std::collections::HashSet<i64> = Default::default();
            loop {
                tokio::select! {
                    msg = inbound.message() => {
                        let Ok(Some(msg)) = msg else { break };
                        let Some(out) = watch_request(&shared, &stream, &mut fragment, msg) else {
                            continue;
                        };
                        if tx.send(Ok(out)).await.is_err() {
                            break;
                        }
                    }
                    resp = events.recv() => {
                        let Some(resp) = resp else { break };
                        let mut sent = true;
                        for out in watch_responses(&shared, &fragment, resp) {
                            if tx.send(Ok(out)).await.is_err() {
                                sent = false;
                                break;
                            }
                        }
                        if !sent {
                            break;
                        }
                    }
                    _ = stopping.changed() => break,
                }
            }
            // Dropping the stream removes its watchers.
            drop(stream);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn watch_request(
    shared: &Shared,
    stream: &mvcc::WatchStream,
    fragment: &mut std::collections::HashSet<i64>,
    msg: pb::WatchRequest,
) -> Option<pb::WatchResponse> {
    use pb::watch_request::RequestUnion as U;
    let header = Some(shared.header(shared.store.current_revision()));
    match msg.request_union? {
        U::CreateRequest(c) => {
            let no_put = c
                .filters
                .contains(&(pb::watch_create_request::FilterType::Noput as i32));
            let no_delete = c
                .filters
                .contains(&(pb::watch_create_request::FilterType::Nodelete as i32));
            let req = mvcc::WatchRequest {
                key: c.key.clone(),
                range_end: c.range_end.clone(),
                start_revision: c.start_revision,
                prev_kv: c.prev_kv,
                no_put,
                no_delete,
                progress_notify: c.progress_notify,
                watch_id: c.watch_id,
            };
            Some(match stream.watch(&req) {
                Ok(id) => {
                    if c.fragment {
                        fragment.insert(id);
                    }
                    pb::WatchResponse {
                        header,
                        watch_id: id,
                        created: true,
                        ..Default::default()
                    }
                }
                // etcd 3.4: a refused watch is created and canceled at once.
                Err(e) => pb::WatchResponse {
                    header,
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: e.to_string(),
                    ..Default::default()
                },
            })
        }
        U::CancelRequest(c) => {
            if stream.cancel(c.watch_id) {
                fragment.remove(&c.watch_id);
                Some(pb::WatchResponse {
                    header,
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                })
            } else {
                None
            }
        }
        U::ProgressRequest(_) => {
            stream.request_progress();
            None
        }
    }
}

/// The wire responses for one mvcc watch response: events converted, a
/// compaction turned into a cancel, large responses split when the watcher
/// asked for fragments.
fn watch_responses(
    shared: &Shared,
    fragment: &std::collections::HashSet<i64>,
    r: mvcc::WatchResponse,
) -> Vec<pb::WatchResponse> {
    let header = Some(shared.header(r.revision));
    if r.compact_revision != 0 {
        return vec![pb::WatchResponse {
            header,
            watch_id: r.watch_id,
            canceled: true,
            compact_revision: r.compact_revision,
            cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
            ..Default::default()
        }];
    }
    let events: Vec<mvccpb::Event> = r
        .events
        .into_iter()
        .map(|e| mvccpb::Event {
            r#type: match e.kind {
                mvcc::EventKind::Put => mvccpb::event::EventType::Put as i32,
                mvcc::EventKind::Delete => mvccpb::event::EventType::Delete as i32,
            },
            kv: Some(e.kv),
            prev_kv: e.prev_kv,
        })
        .collect();
    let whole = pb::WatchResponse {
        header,
        watch_id: r.watch_id,
        events,
        ..Default::default()
    };
    if !fragment.contains(&r.watch_id) || whole.encoded_len() <= shared.max_request_bytes {
        return vec![whole];
    }
    let mut out = Vec::new();
    let mut part = pb::WatchResponse {
        header,
        watch_id: r.watch_id,
        fragment: true,
        ..Default::default()
    };
    for e in whole.events {
        if !part.events.is_empty()
            && part.encoded_len() + e.encoded_len() > shared.max_request_bytes
        {
            let next = pb::WatchResponse {
                header,
                watch_id: r.watch_id,
                fragment: true,
                ..Default::default()
            };
            out.push(std::mem::replace(&mut part, next));
        }
        part.events.push(e);
    }
    part.fragment = false;
    out.push(part);
    out
}
