//! Transactions: compares, the ops of each branch, their results, and the
//! check that no key is written twice in one transaction.

use crate::kv::KeyValue;
use crate::store::{DeleteResult, Error, PutRequest, PutResult, RangeRequest, RangeResult, Result};

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
            "etcdserver: duplicate key given in txn request"
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
