//! The Maintenance service: alarms, status, defragmentation, hashes and
//! database snapshots.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{mvcc_err, BoxStream, Rpc};
use crate::apply::Applied;
use crate::error::ServerError;
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::request::Op;
use crate::shared::Shared;

#[derive(Clone)]
pub struct Maintenance(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for Maintenance {
    async fn alarm(&self, req: Request<pb::AlarmRequest>) -> Rpc<pb::AlarmResponse> {
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        let r = req.into_inner();
        // etcd 3.4 answers alarms without a header.
        if r.action() == pb::alarm_request::AlarmAction::Get {
            let resp = self
                .0
                .alarms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(&r);
            return Ok(Response::new(resp));
        }
        match self.0.propose_as(Op::Alarm(r), &caller).await? {
            (Applied::Alarm(a), _) => Ok(Response::new(a)),
            _ => Err(Status::internal("mismatched answer")),
        }
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Rpc<pb::StatusResponse> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.0;
        let (db_size, in_use) = s.store.db_size();
        let mut errors: Vec<String> = s
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
        let leader = s.leader();
        if leader == 0 {
            errors.push(ServerError::NoLeader.to_string());
        }
        Ok(Response::new(pb::StatusResponse {
            header: Some(s.header(s.store.current_revision())),
            version: super::ETCD_API_VERSION.into(),
            db_size: db_size as i64,
            leader,
            raft_index: s.raft.commit_index.load(Relaxed),
            raft_term: s.raft.term.load(Relaxed),
            raft_applied_index: s.applied_index(),
            errors,
            db_size_in_use: in_use as i64,
            is_learner: s.is_learner(),
        }))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Rpc<pb::MoveLeaderResponse> {
        self.0.refuse_on_learner()?;
        self.0.admin(&req).await?;
        let s = &self.0;
        if !s.is_leader() {
            return Err(ServerError::NotLeader.into());
        }
        let target = req.into_inner().target_id;
        if s.members.get(target).is_none_or(|m| m.is_learner) {
            return Err(ServerError::BadLeaderTransferee.into());
        }
        let from = s.member_id;
        tracing::info!("leadership transfer from {from:x} to {target:x} starting");
        let start = std::time::Instant::now();
        let deadline = start + s.request_timeout;
        let mut asked = None;
        while s.leader() != target {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(ServerError::TimeoutLeaderTransfer.into());
            }
            // raft gives a transfer up after an election timeout: ask again.
            if asked.is_none_or(|t: std::time::Instant| now.duration_since(t) >= s.election_timeout)
            {
                s.send(crate::raft::Command::TransferLeader(target))?;
                asked = Some(now);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::info!(
            "leadership transfer from {from:x} to {target:x} finished in {:.1?}",
            start.elapsed()
        );
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(s.header(s.store.current_revision())),
        }))
    }

    async fn defragment(&self, req: Request<pb::DefragmentRequest>) -> Rpc<pb::DefragmentResponse> {
        self.0.refuse_on_learner()?;
        admin(&self.0, &req).await?;
        let store = self.0.store.clone();
        let m = self.0.metrics.clone();
        let stats = tokio::task::spawn_blocking(move || {
            crate::metrics::Metrics::time(&m.backend_defrag, || store.defragment())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(mvcc_err)?;
        tracing::info!(
            before = stats.source_bytes,
            after = stats.dest_bytes,
            "defragmented the database"
        );
        // etcd 3.4's answer carries no header.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn hash(&self, req: Request<pb::HashRequest>) -> Rpc<pb::HashResponse> {
        self.0.refuse_on_learner()?;
        admin(&self.0, &req).await?;
        let store = self.0.store.clone();
        let m = self.0.metrics.clone();
        let hash = tokio::task::spawn_blocking(move || {
            crate::metrics::Metrics::time(&m.hash, || store.hash())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(mvcc_err)?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.0.header(self.0.store.current_revision())),
            hash,
        }))
    }

    async fn hash_kv(&self, req: Request<pb::HashKvRequest>) -> Rpc<pb::HashKvResponse> {
        self.0.refuse_on_learner()?;
        admin(&self.0, &req).await?;
        let rev = req.into_inner().revision;
        let store = self.0.store.clone();
        let m = self.0.metrics.clone();
        let (hash, current, compacted) = tokio::task::spawn_blocking(move || {
            crate::metrics::Metrics::time(&m.hash_rev, || store.hash_kv(rev))
        })
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
        req: Request<pb::SnapshotRequest>,
    ) -> Rpc<BoxStream<pb::SnapshotResponse>> {
        self.0.refuse_on_learner()?;
        admin(&self.0, &req).await?;
        let shared = self.0.clone();
        // A turn among the snapshots being written (each needs a copy of
        // the database on disk); the stream waits for one.
        let turn = shared
            .snapshots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::from(crate::error::ServerError::Stopped))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let m = shared.metrics.clone();
            let sent =
                crate::metrics::Metrics::time(&m.backend_snapshot, || send_snapshot(&shared, &tx));
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(e));
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
) -> Result<(), Status> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = crate::datadir::snap_dir(&shared.data_dir).join(format!(
        "{}{}-{n}.tmp",
        crate::datadir::SNAPSHOT_COPY_PREFIX,
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let io = |e: std::io::Error| Status::internal(format!("{}: {e}", path.display()));
    let result = (|| {
        shared.store.snapshot_into(&path).map_err(mvcc_err)?;
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        // As etcd 3.4: no header, and the bytes left count the database
        // only (the checksum after it comes with 0).
        let mut remaining = size;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            remaining = remaining.saturating_sub(n as u64);
            let resp = pb::SnapshotResponse {
                header: None,
                remaining_bytes: remaining,
                blob: buf[..n].to_vec(),
            };
            if tx.blocking_send(Ok(resp)).is_err() {
                return Ok(());
            }
        }
        let digest = hasher.finalize().to_vec();
        let _ = tx.blocking_send(Ok(pb::SnapshotResponse {
            header: None,
            remaining_bytes: 0,
            blob: digest,
        }));
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// The root check of Defragment, Hash, HashKV and Snapshot as etcd 3.4
/// makes it: its maintenance server asks the auth store itself and
/// returns the store's own error, which reaches the client as Unknown
/// with the store's text ("auth: user name is empty").
async fn admin<T>(s: &Shared, req: &Request<T>) -> Result<(), Status> {
    match s.admin(req).await {
        Ok(_) => Ok(()),
        Err(
            e @ (ServerError::UserEmpty
            | ServerError::UserNotFound
            | ServerError::PermissionDenied
            | ServerError::InvalidAuthToken
            | ServerError::AuthOldRevision),
        ) => Err(Status::unknown(e.to_string().replacen(
            "etcdserver: ",
            "auth: ",
            1,
        ))),
        Err(e) => Err(e.into()),
    }
}
