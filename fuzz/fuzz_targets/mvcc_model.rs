//! Random puts, deletes, range deletes, transactions and compactions
//! against a reference model of etcd's key space: after every operation,
//! reads at the current and at past revisions match the model (or fail
//! with "compacted" exactly where the model says so).
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mvcc::{PutRequest, RangeRequest, Store};

#[derive(Arbitrary, Debug)]
enum Op {
    Put {
        key: u8,
        value: u8,
    },
    Delete {
        key: u8,
    },
    DeleteRange {
        from: u8,
        to: u8,
    },
    /// Puts to several keys as one transaction (one revision).
    Txn {
        keys: Vec<u8>,
        value: u8,
    },
    Compact {
        back: u8,
    },
    ReadAt {
        back: u8,
    },
}

/// key -> (value, create revision, mod revision, version)
type State = BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)>;

fn key(k: u8) -> Vec<u8> {
    format!("k{}", k % 12).into_bytes()
}

struct Model {
    /// The state after each revision; index = revision (revision 1 is the
    /// empty store).
    history: Vec<State>,
    compacted: i64,
}

impl Model {
    fn current(&self) -> i64 {
        self.history.len() as i64
    }
    fn put_all(&mut self, keys: &[Vec<u8>], value: &[u8]) {
        let rev = self.current() + 1;
        let mut s = self.history.last().cloned().unwrap_or_default();
        for k in keys {
            let (create, version) = match s.get(k) {
                Some((_, c, _, v)) => (*c, v + 1),
                None => (rev, 1),
            };
            s.insert(k.clone(), (value.to_vec(), create, rev, version));
        }
        self.history.push(s);
    }
    fn delete(&mut self, lo: &[u8], hi: Option<&[u8]>) -> bool {
        let mut s = self.history.last().cloned().unwrap_or_default();
        let before = s.len();
        s.retain(|k, _| match hi {
            None => k.as_slice() != lo,
            Some(h) => !(k.as_slice() >= lo && k.as_slice() < h),
        });
        if s.len() == before {
            return false;
        }
        self.history.push(s);
        true
    }
}

fn read(store: &Store, rev: i64) -> Result<State, mvcc::Error> {
    let r = store.range(&RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision: rev,
        ..Default::default()
    })?;
    Ok(r.kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                (kv.value, kv.create_revision, kv.mod_revision, kv.version),
            )
        })
        .collect())
}

fuzz_target!(|ops: Vec<Op>| {
    if ops.len() > 200 {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("db")).expect("store");
    let mut model = Model {
        history: vec![State::new()],
        compacted: 0,
    };
    for (n, op) in ops.iter().enumerate() {
        let mut a = store.apply().expect("batch");
        match op {
            Op::Put { key: k, value } => {
                a.put(&PutRequest {
                    key: key(*k),
                    value: vec![*value],
                    ..Default::default()
                })
                .expect("put");
                model.put_all(&[key(*k)], &[*value]);
            }
            Op::Delete { key: k } => {
                let r = a.delete_range(&key(*k), &[], false).expect("delete");
                let changed = model.delete(&key(*k), None);
                assert_eq!(r.deleted > 0, changed);
            }
            Op::DeleteRange { from, to } => {
                let (lo, hi) = (key(*from), key(*to));
                if lo < hi {
                    let r = a.delete_range(&lo, &hi, false).expect("delete range");
                    let changed = model.delete(&lo, Some(&hi));
                    assert_eq!(r.deleted > 0, changed);
                }
            }
            Op::Txn { keys, value } => {
                let mut ks: Vec<Vec<u8>> = keys.iter().take(5).map(|k| key(*k)).collect();
                ks.sort();
                ks.dedup();
                if !ks.is_empty() {
                    a.txn(&mvcc::TxnRequest {
                        compare: vec![],
                        success: ks
                            .iter()
                            .map(|k| {
                                mvcc::RequestOp::Put(PutRequest {
                                    key: k.clone(),
                                    value: vec![*value],
                                    ..Default::default()
                                })
                            })
                            .collect(),
                        failure: vec![],
                    })
                    .expect("txn");
                    model.put_all(&ks, &[*value]);
                }
            }
            Op::Compact { back } => {
                let rev = model.current() - i64::from(*back % 8);
                let r = a.compact(rev);
                if rev > model.compacted && rev >= 1 {
                    r.expect("compact");
                    model.compacted = rev;
                } else {
                    assert!(
                        r.is_err(),
                        "compacting at {rev} (compacted {})",
                        model.compacted
                    );
                }
            }
            Op::ReadAt { .. } => {}
        }
        a.commit(n as u64 + 1).expect("commit");
        store.finish_compaction().expect("compaction");
        if let Op::ReadAt { back } = op {
            let rev = model.current() - i64::from(*back % 16);
            if rev < 1 {
                continue;
            }
            match read(&store, rev) {
                Ok(s) => {
                    assert!(rev >= model.compacted, "read below the compacted revision");
                    assert_eq!(s, model.history[rev as usize - 1], "state at {rev}");
                }
                Err(e) => {
                    assert!(rev < model.compacted, "read at {rev} failed: {e}");
                }
            }
        }
        assert_eq!(store.current_revision(), model.current());
        assert_eq!(
            read(&store, 0).expect("current read"),
            *model.history.last().expect("a state")
        );
    }
});
