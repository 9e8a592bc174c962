//! The KV service: ranges (linearizable through ReadIndex, or
//! serializable from this member's copy), and puts, deletes, transactions
//! and compactions through raft.

use std::sync::Arc;

use prost::Message as _;
use tonic::{Request, Response, Status};

use super::{check_size, mvcc_err, Rpc};
use crate::apply::{self, Applied};
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::request::Op;
use crate::shared::Shared;

#[derive(Clone)]
pub struct Kv(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::kv_server::Kv for Kv {
    async fn range(&self, req: Request<pb::RangeRequest>) -> Rpc<pb::RangeResponse> {
        if !req.get_ref().serializable {
            // A learner serves serializable reads only (etcd).
            self.0.refuse_on_learner()?;
        }
        let caller = self.0.caller(&req).await?;
        let r = req.into_inner();
        if r.key.is_empty() {
            return Err(mvcc_err(mvcc::Error::EmptyKey));
        }
        if !r.serializable {
            self.0.read_index().await?;
        }
        self.0
            .auth
            .check_read(Some(&caller), &r.key, &r.range_end)?;
        let res = self
            .0
            .store
            .range(&apply::range_request(&r))
            .map_err(mvcc_err)?;
        self.0.metrics.ranges.inc();
        let mut resp = apply::range_response(res);
        resp.header = Some(self.0.header(resp.header.map_or(0, |h| h.revision)));
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Rpc<pb::PutResponse> {
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        let r = req.into_inner();
        check_size(&self.0, r.encoded_len())?;
        if r.key.is_empty() {
            return Err(mvcc_err(mvcc::Error::EmptyKey));
        }
        match self.0.propose_as(Op::Put(r), &caller).await? {
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
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        let r = req.into_inner();
        check_size(&self.0, r.encoded_len())?;
        if r.key.is_empty() {
            return Err(mvcc_err(mvcc::Error::EmptyKey));
        }
        match self.0.propose_as(Op::DeleteRange(r), &caller).await? {
            (Applied::DeleteRange(mut d), rev) => {
                d.header = Some(self.0.header(rev));
                Ok(Response::new(d))
            }
            _ => Err(Status::internal("mismatched answer")),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Rpc<pb::TxnResponse> {
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        let r = req.into_inner();
        check_size(&self.0, r.encoded_len())?;
        if apply::txn_is_read_only(&r) {
            // A read: no raft entry, a ReadIndex unless every range in it
            // is serializable (as etcd serves it).
            if !apply::txn_is_serializable(&r) {
                self.0.read_index().await?;
            }
            self.0.auth.check_txn(Some(&caller), &r)?;
            let res = self
                .0
                .store
                .read_txn(&apply::txn_request(&r))
                .map_err(mvcc_err)?;
            let mut t = apply::txn_response(res);
            self.0.metrics.txn(&r, &t);
            t.header = Some(self.0.header(t.header.map_or(0, |h| h.revision)));
            return Ok(Response::new(t));
        }
        match self.0.propose_as(Op::Txn(r), &caller).await? {
            (Applied::Txn(mut t), rev) => {
                t.header = Some(self.0.header(rev));
                Ok(Response::new(t))
            }
            _ => Err(Status::internal("mismatched answer")),
        }
    }

    async fn compact(&self, req: Request<pb::CompactionRequest>) -> Rpc<pb::CompactionResponse> {
        self.0.refuse_on_learner()?;
        let caller = self.0.caller(&req).await?;
        match self
            .0
            .propose_as(Op::Compaction(req.into_inner()), &caller)
            .await?
        {
            (Applied::Compaction(mut c), rev) => {
                c.header = Some(self.0.header(rev));
                Ok(Response::new(c))
            }
            _ => Err(Status::internal("mismatched answer")),
        }
    }
}
