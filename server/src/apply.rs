//! Applying a committed request to the key space, and the translation
//! between etcd's wire messages and the mvcc crate's types.

use mvcc::{Compare, CompareResult, CompareTarget, RequestOp, ResponseOp};

use crate::error::ServerError;
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::{request::Op, Request};

/// The answer to one applied request (its header is filled in by the
/// handler that waits for it).
#[derive(Debug, Clone)]
pub enum Applied {
    Put(pb::PutResponse),
    DeleteRange(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Compaction(pb::CompactionResponse),
    LeaseGrant(pb::LeaseGrantResponse),
    LeaseRevoke(pb::LeaseRevokeResponse),
    Alarm(pb::AlarmResponse),
    /// Member attributes or lease checkpoints were recorded.
    Published,
    /// The member list after a membership change.
    Members(Vec<crate::membership::Member>),
    /// An auth store change was applied.
    Auth,
    /// A login was recorded: the caller's token.
    Token(String),
}

/// What applying one entry produced: the answer (or etcd's error) and the
/// store revision right after it.
pub type ApplyResult = (Result<Applied, ServerError>, i64);

fn header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision,
        ..Default::default()
    })
}

pub fn range_request(r: &pb::RangeRequest) -> mvcc::RangeRequest {
    use pb::range_request::{SortOrder as O, SortTarget as T};
    mvcc::RangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: r.limit,
        revision: r.revision,
        keys_only: r.keys_only,
        count_only: r.count_only,
        sort_order: match r.sort_order() {
            O::None => mvcc::SortOrder::None,
            O::Ascend => mvcc::SortOrder::Ascend,
            O::Descend => mvcc::SortOrder::Descend,
        },
        sort_target: match r.sort_target() {
            T::Key => mvcc::SortTarget::Key,
            T::Version => mvcc::SortTarget::Version,
            T::Create => mvcc::SortTarget::Create,
            T::Mod => mvcc::SortTarget::Mod,
            T::Value => mvcc::SortTarget::Value,
        },
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

pub fn range_response(r: mvcc::RangeResult) -> pb::RangeResponse {
    pb::RangeResponse {
        header: header(r.revision),
        kvs: r.kvs,
        more: r.more,
        count: r.count,
    }
}

fn put_request(p: &pb::PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: p.key.clone(),
        value: p.value.clone(),
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

fn compare(c: &pb::Compare) -> Compare {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let int = |u: &Option<U>| match u {
        Some(U::Version(v)) | Some(U::CreateRevision(v)) | Some(U::ModRevision(v)) => *v,
        Some(U::Lease(v)) => *v,
        _ => 0,
    };
    Compare {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        result: match c.result() {
            R::Equal => CompareResult::Equal,
            R::Greater => CompareResult::Greater,
            R::Less => CompareResult::Less,
            R::NotEqual => CompareResult::NotEqual,
        },
        target: match c.target() {
            T::Version => CompareTarget::Version(int(&c.target_union)),
            T::Create => CompareTarget::Create(int(&c.target_union)),
            T::Mod => CompareTarget::Mod(int(&c.target_union)),
            T::Lease => CompareTarget::Lease(int(&c.target_union)),
            T::Value => CompareTarget::Value(match &c.target_union {
                Some(U::Value(v)) => v.clone(),
                _ => Vec::new(),
            }),
        },
    }
}

fn ops(ops: &[pb::RequestOp]) -> Vec<RequestOp> {
    use pb::request_op::Request as R;
    ops.iter()
        .filter_map(|op| {
            Some(match op.request.as_ref()? {
                R::RequestRange(r) => RequestOp::Range(range_request(r)),
                R::RequestPut(p) => RequestOp::Put(put_request(p)),
                R::RequestDeleteRange(d) => RequestOp::DeleteRange {
                    key: d.key.clone(),
                    range_end: d.range_end.clone(),
                    prev_kv: d.prev_kv,
                },
                R::RequestTxn(t) => RequestOp::Txn(txn_request(t)),
            })
        })
        .collect()
}

pub fn txn_request(t: &pb::TxnRequest) -> mvcc::TxnRequest {
    mvcc::TxnRequest {
        compare: t.compare.iter().map(compare).collect(),
        success: ops(&t.success),
        failure: ops(&t.failure),
    }
}

/// Whether a transaction only reads (then it needs no raft round).
pub fn txn_is_read_only(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request as R;
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(R::RequestRange(_)) | None => true,
            Some(R::RequestTxn(t)) => txn_is_read_only(t),
            Some(_) => false,
        })
}

/// Whether every range in a read-only transaction is serializable (then
/// it needs no ReadIndex either).
pub fn txn_is_serializable(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request as R;
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(R::RequestRange(r)) => r.serializable,
            Some(R::RequestTxn(t)) => txn_is_serializable(t),
            _ => true,
        })
}

pub fn txn_response(t: mvcc::TxnResult) -> pb::TxnResponse {
    use pb::response_op::Response as R;
    let revision = t.revision;
    pb::TxnResponse {
        header: header(revision),
        succeeded: t.succeeded,
        responses: t
            .responses
            .into_iter()
            .map(|r| pb::ResponseOp {
                response: Some(match r {
                    ResponseOp::Range(r) => R::ResponseRange(range_response(r)),
                    ResponseOp::Put(p) => R::ResponsePut(pb::PutResponse {
                        header: header(revision),
                        prev_kv: p.prev_kv,
                    }),
                    ResponseOp::DeleteRange(d) => R::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: header(revision),
                        deleted: d.deleted,
                        prev_kvs: d.prev_kvs,
                    }),
                    ResponseOp::Txn(t) => R::ResponseTxn(txn_response(t)),
                }),
            })
            .collect(),
    }
}

/// What applying a request may change besides the key space.
pub struct ApplyContext<'a> {
    pub alarms: &'a mut crate::alarms::Alarms,
    pub members: &'a crate::membership::Membership,
    pub auth: &'a crate::auth::AuthStore,
    /// The raft index of the entry being applied.
    pub index: u64,
    pub metrics: &'a crate::metrics::Metrics,
}

/// The auth store applies its own requests (before this match).
fn unreachable_auth() -> Result<Applied, mvcc::Error> {
    Ok(Applied::Auth)
}

/// Applies one committed request inside `batch`. Errors etcd returns to
/// the client come back in the result; only a storage failure is `Err`
/// (the batch is then unusable).
pub fn apply(
    batch: &mut mvcc::Apply<'_>,
    req: &Request,
    ctx: &mut ApplyContext<'_>,
) -> Result<ApplyResult, mvcc::Error> {
    let alarms = &mut *ctx.alarms;
    let fatal = |e: &mvcc::Error| {
        matches!(
            e,
            mvcc::Error::Storage(_) | mvcc::Error::Corrupt { .. } | mvcc::Error::Poisoned
        )
    };
    if let Some(op) = &req.op {
        // The caller's permissions, against the auth store as of this entry.
        if let Err(e) = ctx
            .auth
            .check_request(req.caller.as_ref(), op, |id| batch.lease_keys(id))
        {
            return Ok((Err(e), batch.revision()));
        }
        if let Some(done) = ctx.auth.apply(batch, op, ctx.index)? {
            return Ok((done, batch.revision()));
        }
    }
    let result: Result<Applied, mvcc::Error> = match &req.op {
        None => return Ok((Err(ServerError::Internal("empty request".into())), 0)),
        // Members disagree: nothing is written until the alarm is
        // cleared (etcd's corrupt applier).
        Some(
            Op::Put(_)
            | Op::DeleteRange(_)
            | Op::Compaction(_)
            | Op::LeaseGrant(_)
            | Op::LeaseRevoke(_),
        ) if alarms.corrupt() => {
            return Ok((Err(ServerError::Corrupt), batch.revision()));
        }
        Some(Op::Txn(_)) if alarms.corrupt() => {
            return Ok((Err(ServerError::Corrupt), batch.revision()));
        }
        Some(Op::Put(_)) if alarms.no_space() => {
            return Ok((Err(ServerError::NoSpace), batch.revision()));
        }
        Some(Op::Txn(t)) if alarms.no_space() && !txn_is_read_only(t) => {
            return Ok((Err(ServerError::NoSpace), batch.revision()));
        }
        Some(Op::LeaseGrant(_)) if alarms.no_space() => {
            return Ok((Err(ServerError::NoSpace), batch.revision()));
        }
        Some(Op::Put(p)) => batch.put(&put_request(p)).map(|r| {
            ctx.metrics.puts.inc();
            Applied::Put(pb::PutResponse {
                header: header(r.revision),
                prev_kv: r.prev_kv,
            })
        }),
        Some(Op::DeleteRange(d)) => batch
            .delete_range(&d.key, &d.range_end, d.prev_kv)
            .map(|r| {
                ctx.metrics.deletes.inc();
                Applied::DeleteRange(pb::DeleteRangeResponse {
                    header: header(r.revision),
                    deleted: r.deleted,
                    prev_kvs: r.prev_kvs,
                })
            }),
        Some(Op::Txn(t)) => batch.txn(&txn_request(t)).map(|r| {
            let r = txn_response(r);
            ctx.metrics.txn(t, &r);
            Applied::Txn(r)
        }),
        Some(Op::Compaction(c)) => batch.compact(c.revision).map(|()| {
            Applied::Compaction(pb::CompactionResponse {
                header: header(batch.revision()),
            })
        }),
        Some(Op::LeaseGrant(g)) => batch.lease_grant(g.id, g.ttl).map(|ttl| {
            ctx.metrics.leases_granted.inc();
            ctx.metrics.lease_ttl.observe(ttl as f64);
            Applied::LeaseGrant(pb::LeaseGrantResponse {
                header: header(batch.revision()),
                id: g.id,
                ttl,
                error: String::new(),
            })
        }),
        Some(Op::LeaseRevoke(r)) => batch.lease_revoke(r.id).map(|rev| {
            ctx.metrics.leases_revoked.inc();
            Applied::LeaseRevoke(pb::LeaseRevokeResponse {
                header: header(rev),
            })
        }),
        Some(Op::MemberAttributes(m)) => {
            if let Some(mut member) = ctx.members.get(m.id) {
                member.name = m.name.clone();
                member.client_urls = m.client_urls.clone();
                batch.set_member(m.id, Some(&member.encode()))?;
                ctx.members.set(member);
            }
            Ok(Applied::Published)
        }
        Some(Op::MemberChange(c)) => {
            use crate::pb::kvserverpb::member_change::Kind;
            // Only a change of peer URLs travels as a normal entry; the
            // others change raft's configuration (the apply thread's
            // configuration change path).
            if c.kind() != Kind::Update {
                return Ok((
                    Err(ServerError::Internal(
                        "membership change outside raft".into(),
                    )),
                    batch.revision(),
                ));
            }
            if let Err(e) = ctx.members.validate(c) {
                return Ok((Err(e), batch.revision()));
            }
            ctx.members.apply_change(batch, c)?;
            Ok(Applied::Members(ctx.members.list()))
        }
        Some(Op::LeaseCheckpoints(c)) => {
            for cp in &c.checkpoints {
                batch.lease_checkpoint(cp.id, cp.remaining_ttl)?;
            }
            Ok(Applied::Published)
        }
        Some(
            Op::AuthEnable(_)
            | Op::AuthDisable(_)
            | Op::Authenticated(_)
            | Op::UserAdd(_)
            | Op::UserDelete(_)
            | Op::UserChangePassword(_)
            | Op::UserGrantRole(_)
            | Op::UserRevokeRole(_)
            | Op::RoleAdd(_)
            | Op::RoleDelete(_)
            | Op::RoleGrantPermission(_)
            | Op::RoleRevokePermission(_),
        ) => unreachable_auth(),
        Some(Op::Alarm(a)) => {
            use pb::alarm_request::AlarmAction;
            let resp = alarms.apply(a);
            // A changed alarm is recorded with the batch.
            let on = a.action() == AlarmAction::Activate;
            if a.action() != AlarmAction::Get && !resp.alarms.is_empty() {
                batch.set_alarm(a.member_id, a.alarm, on)?;
            }
            Ok(Applied::Alarm(resp))
        }
    };
    match result {
        Err(e) if fatal(&e) => Err(e),
        Err(e) => Ok((Err(e.into()), batch.revision())),
        Ok(a) => Ok((Ok(a), batch.revision())),
    }
}
