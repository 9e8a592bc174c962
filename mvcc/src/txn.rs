//! Transactions: compares, the ops of each branch, their results, the
//! check that no key is written twice in one transaction, and running
//! them: read-only ones on a snapshot ([`Store::read_txn`]), the others
//! inside an apply batch ([`Apply::txn`]).

use crate::apply::{Apply, DeleteResult, OpRev, PutRequest, PutResult};
use crate::error::{Error, Result};
use crate::kv::KeyValue;
use crate::range::{RangeRequest, RangeResult};
use crate::store::{Limits, Store};

/// How a compare relates the key's field to the given value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// The field a compare looks at, with the value to compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// One condition of a transaction, over a key or every key of a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    /// As in a range: empty for the key alone.
    pub range_end: Vec<u8>,
    pub result: CompareResult,
    pub target: CompareTarget,
}

impl Compare {
    /// Whether `kv` satisfies this compare.
    pub fn holds_for(&self, kv: &KeyValue) -> bool {
        let ord = match &self.target {
            CompareTarget::Version(v) => kv.version.cmp(v),
            CompareTarget::Create(v) => kv.create_revision.cmp(v),
            CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
            CompareTarget::Lease(v) => kv.lease.cmp(v),
            CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        };
        match self.result {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::NotEqual => ord.is_ne(),
            CompareResult::Greater => ord.is_gt(),
            CompareResult::Less => ord.is_lt(),
        }
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange {
        key: Vec<u8>,
        range_end: Vec<u8>,
        prev_kv: bool,
    },
    Txn(TxnRequest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseOp {
    Range(RangeResult),
    Put(PutResult),
    DeleteRange(DeleteResult),
    Txn(TxnResult),
}

#[derive(Debug, Clone, Default)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
    /// The store revision after the transaction.
    pub revision: i64,
}

/// A deleted interval: one key, or `[key, end)` (`end` of `"\0"`: to the
/// last key).
struct Deleted {
    key: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Deleted {
    fn covers(&self, k: &[u8]) -> bool {
        match &self.end {
            None => k == self.key.as_slice(),
            Some(end) => {
                k >= self.key.as_slice() && (end.as_slice() == b"\0" || k < end.as_slice())
            }
        }
    }
}

/// Rejects a transaction that writes a key twice in a branch: two puts of
/// one key, or a put of a key that a delete in the same branch covers,
/// looking into nested transactions (whose success and failure branches
/// may put the same key, as only one of them runs). etcd's rule and error.
pub fn check_txn_keys(req: &TxnRequest) -> Result<()> {
    branch_writes(&req.success)?;
    branch_writes(&req.failure)?;
    Ok(())
}

/// The keys put and the ranges deleted by one branch, or the duplicate error.
fn branch_writes(ops: &[RequestOp]) -> Result<(Vec<Vec<u8>>, Vec<Deleted>)> {
    let mut dels: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange { key, range_end, .. } => Some(Deleted {
                key: key.clone(),
                end: (!range_end.is_empty()).then(|| range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    let mut puts: Vec<Vec<u8>> = Vec::new();
    let covered = |dels: &[Deleted], k: &[u8]| dels.iter().any(|d| d.covers(k));
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (then_puts, then_dels) = branch_writes(&t.success)?;
        let (else_puts, else_dels) = branch_writes(&t.failure)?;
        for k in &then_puts {
            if puts.contains(k) || covered(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.push(k.clone());
        }
        for k in &else_puts {
            if (puts.contains(k) && !then_puts.contains(k)) || covered(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            if !puts.contains(k) {
                puts.push(k.clone());
            }
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || covered(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.push(p.key.clone());
    }
    Ok((puts, dels))
}

/// Whether compare `c` holds on the keys its range found: a value compare
/// on a missing key always fails (an empty value and no value look the
/// same); the others compare against a key whose fields are all zero.
pub(crate) fn compare_holds_on(c: &Compare, kvs: &[KeyValue]) -> bool {
    if kvs.is_empty() {
        return !matches!(c.target, CompareTarget::Value(_)) && c.holds_for(&KeyValue::default());
    }
    kvs.iter().all(|kv| c.holds_for(kv))
}

/// etcd's `--max-txn-ops`: compares, and ops per branch, of one
/// transaction level.
pub(crate) fn check_op_counts(limits: &Limits, req: &TxnRequest) -> Result<()> {
    let max = limits.max_txn_ops;
    if req.compare.len() > max || req.success.len() > max || req.failure.len() > max {
        return Err(Error::TooManyOps);
    }
    Ok(())
}

impl Store {
    /// A transaction that only reads (its branches hold nothing but
    /// ranges, nested transactions included): every compare and range is
    /// evaluated at one revision, on snapshots, without a write batch, so
    /// it needs no raft entry (etcd serves such transactions as reads).
    /// A transaction with a write in it is refused
    /// ([`Error::ValueProvided`]): the caller checks first.
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResult> {
        self.check_read_txn(req)?;
        let at = self.current_revision();
        self.read_txn_at(req, at)
    }

    pub(crate) fn check_read_txn(&self, req: &TxnRequest) -> Result<()> {
        check_op_counts(&self.limits, req)?;
        for op in req.success.iter().chain(&req.failure) {
            match op {
                RequestOp::Range(r) if r.key.is_empty() => return Err(Error::EmptyKey),
                RequestOp::Range(_) => {}
                RequestOp::Txn(t) => self.check_read_txn(t)?,
                RequestOp::Put(_) | RequestOp::DeleteRange { .. } => {
                    return Err(Error::ValueProvided)
                }
            }
        }
        Ok(())
    }

    pub(crate) fn read_txn_at(&self, req: &TxnRequest, at: i64) -> Result<TxnResult> {
        let mut succeeded = true;
        for c in &req.compare {
            let kvs = self
                .range(&RangeRequest {
                    key: c.key.clone(),
                    range_end: c.range_end.clone(),
                    revision: at,
                    ..RangeRequest::default()
                })?
                .kvs;
            if !compare_holds_on(c, &kvs) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(q) => {
                    if q.revision > at {
                        return Err(Error::FutureRevision);
                    }
                    let mut q = q.clone();
                    if q.revision <= 0 {
                        q.revision = at;
                    }
                    let mut r = self.range(&q)?;
                    r.revision = at;
                    ResponseOp::Range(r)
                }
                RequestOp::Txn(t) => ResponseOp::Txn(self.read_txn_at(t, at)?),
                RequestOp::Put(_) | RequestOp::DeleteRange { .. } => {
                    return Err(Error::ValueProvided)
                }
            });
        }
        Ok(TxnResult {
            succeeded,
            responses,
            revision: at,
        })
    }
}

impl<'s> Apply<'s> {
    /// Runs a transaction: if every compare holds, the success ops, else
    /// the failure ops, all at one revision (none when nothing is written).
    /// Reads inside see the transaction's own earlier writes.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResult> {
        self.check_txn(req)?;
        check_txn_keys(req)?;
        let mut op = self.begin_op();
        // As etcd does: every compare on the path (nested ones included) is
        // decided on the state before the transaction, and the ops on that
        // path are checked before any of them runs, so a failing op never
        // leaves half a transaction behind.
        let mut path = Vec::new();
        self.txn_path(req, &op, &mut path)?;
        self.check_path(req, &op, &mut path.iter().copied())?;
        let r = self.txn_in(req, &mut op, &mut path.into_iter());
        self.end_op(op);
        r
    }

    /// etcd's checks of a transaction's shape, nested ones included.
    pub(crate) fn check_txn(&self, req: &TxnRequest) -> Result<()> {
        check_op_counts(&self.store.limits, req)?;
        for op in req.success.iter().chain(&req.failure) {
            match op {
                RequestOp::Range(r) if r.key.is_empty() => return Err(Error::EmptyKey),
                RequestOp::Range(_) => {}
                RequestOp::Put(p) => self.check_put(p)?,
                RequestOp::DeleteRange { key, .. } if key.is_empty() => {
                    return Err(Error::EmptyKey)
                }
                RequestOp::DeleteRange { .. } => {}
                RequestOp::Txn(t) => self.check_txn(t)?,
            }
        }
        Ok(())
    }

    /// The branch each transaction on the path takes, in execution order.
    pub(crate) fn txn_path(
        &mut self,
        req: &TxnRequest,
        op: &OpRev,
        path: &mut Vec<bool>,
    ) -> Result<()> {
        let mut succeeded = true;
        for c in &req.compare {
            if !self.compare_holds(c, op)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        for r in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            if let RequestOp::Txn(t) = r {
                self.txn_path(t, op, path)?;
            }
        }
        Ok(())
    }

    /// Fails as the ops on the path would, before any of them runs.
    pub(crate) fn check_path(
        &mut self,
        req: &TxnRequest,
        op: &OpRev,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<()> {
        let succeeded = path.next().unwrap_or(false);
        for r in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            match r {
                RequestOp::Put(p)
                    if (p.ignore_value || p.ignore_lease)
                        && self
                            .store
                            .read_shared()
                            .index
                            .get(&p.key, self.visible(op))
                            .is_none() =>
                {
                    return Err(Error::KeyNotFound);
                }
                RequestOp::Put(p)
                    if !p.ignore_lease
                        && p.lease != 0
                        && !self.store.read_shared().lessor.contains(p.lease) =>
                {
                    return Err(Error::LeaseNotFound);
                }
                RequestOp::Range(q) => {
                    let current = self.visible(op);
                    if q.revision > current {
                        return Err(Error::FutureRevision);
                    }
                    if q.revision > 0 && q.revision < self.store.read_shared().compacted {
                        return Err(Error::Compacted);
                    }
                }
                RequestOp::Txn(t) => self.check_path(t, op, path)?,
                _ => {}
            }
        }
        Ok(())
    }

    pub(crate) fn compare_holds(&mut self, c: &Compare, op: &OpRev) -> Result<bool> {
        let req = RangeRequest {
            key: c.key.clone(),
            range_end: c.range_end.clone(),
            ..RangeRequest::default()
        };
        let kvs = self.range_in(&req, op)?.kvs;
        Ok(compare_holds_on(c, &kvs))
    }

    pub(crate) fn txn_in(
        &mut self,
        req: &TxnRequest,
        op: &mut OpRev,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<TxnResult> {
        let succeeded = path.next().unwrap_or(false);
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for r in ops {
            responses.push(match r {
                RequestOp::Range(q) => ResponseOp::Range(self.range_in(q, op)?),
                RequestOp::Put(p) => ResponseOp::Put(self.put_in(p, op)?),
                RequestOp::DeleteRange {
                    key,
                    range_end,
                    prev_kv,
                } => ResponseOp::DeleteRange(self.delete_in(key, range_end, *prev_kv, op)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn_in(t, op, path)?),
            });
        }
        let revision = self.visible(op);
        Ok(TxnResult {
            succeeded,
            responses,
            revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: k.into(),
            ..PutRequest::default()
        })
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp::DeleteRange {
            key: k.into(),
            range_end: end.into(),
            prev_kv: false,
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: Vec::new(),
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_writes_are_found_as_etcd_finds_them() {
        let dup = |t: TxnRequest| matches!(check_txn_keys(&t), Err(Error::DuplicateKey));
        assert!(dup(txn(vec![put("a"), put("a")], vec![])));
        assert!(dup(txn(vec![], vec![put("a"), put("a")])));
        assert!(
            !dup(txn(vec![put("a")], vec![put("a")])),
            "branches are exclusive"
        );
        assert!(dup(txn(vec![del("a", "c"), put("b")], vec![])));
        assert!(dup(txn(vec![del("a", "\0"), put("zzz")], vec![])));
        assert!(!dup(txn(vec![del("a", "c"), put("c")], vec![])));
        assert!(!dup(txn(vec![del("a", ""), put("ab")], vec![])));
        // Nested: exclusive branches may share a key, but not with the parent.
        let nested = RequestOp::Txn(txn(vec![put("x")], vec![put("x")]));
        assert!(!dup(txn(vec![nested.clone()], vec![])));
        assert!(dup(txn(vec![nested.clone(), put("x")], vec![])));
        let nested_del = RequestOp::Txn(txn(vec![del("m", "n")], vec![]));
        assert!(dup(txn(vec![nested_del, put("m1")], vec![])));
        assert_eq!(
            Error::DuplicateKey.to_string(),
            "duplicate key given in txn request"
        );
    }

    #[test]
    fn compares_relate_fields_as_asked() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            version: 3,
            create_revision: 2,
            mod_revision: 9,
            value: b"m".to_vec(),
            lease: 0,
        };
        let c = |result, target| Compare {
            key: b"k".to_vec(),
            range_end: Vec::new(),
            result,
            target,
        };
        assert!(c(CompareResult::Equal, CompareTarget::Version(3)).holds_for(&kv));
        assert!(c(CompareResult::Greater, CompareTarget::Mod(8)).holds_for(&kv));
        assert!(c(CompareResult::Less, CompareTarget::Create(3)).holds_for(&kv));
        assert!(c(CompareResult::NotEqual, CompareTarget::Lease(5)).holds_for(&kv));
        assert!(c(CompareResult::Greater, CompareTarget::Value(b"a".to_vec())).holds_for(&kv));
        assert!(!c(CompareResult::Equal, CompareTarget::Value(b"n".to_vec())).holds_for(&kv));
    }
}
