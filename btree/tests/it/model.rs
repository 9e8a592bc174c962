//! Model-based property test: random operations against the database and
//! against a `BTreeMap` model, compared after every step that can differ.

use btree::{Db, Options};
use proptest::prelude::*;

use crate::{assert_clean, dump, Content};

const BUCKETS: [&[u8]; 3] = [b"key", b"meta", b"lease"];

#[derive(Debug, Clone)]
enum Op {
    Put {
        bucket: usize,
        key: u16,
        len: usize,
        fill: u8,
    },
    Delete {
        bucket: usize,
        key: u16,
    },
    Get {
        bucket: usize,
        key: u16,
    },
    Range {
        bucket: usize,
        start: u16,
        end: u16,
    },
    CreateBucket(usize),
    DeleteBucket(usize),
    Commit,
    CommitNoSync,
    Sync,
    Rollback,
    Reopen,
}

fn key_bytes(k: u16) -> Vec<u8> {
    // Varying key lengths, including some longer than a page (the test
    // runs with 1 KiB pages), so branches with overflow runs occur.
    let mut v = format!("{k:05}").into_bytes();
    let len = if k.is_multiple_of(41) {
        3000 + k as usize
    } else {
        5 + (k as usize % 7) * 13
    };
    v.resize(len, b'.');
    v
}

fn op() -> impl Strategy<Value = Op> {
    let bucket = 0..BUCKETS.len();
    let key = 0u16..600;
    let len = prop_oneof![8 => 0usize..120, 2 => 120usize..3000, 1 => 3000usize..40_000];
    prop_oneof![
        30 => (bucket.clone(), key.clone(), len, any::<u8>()).prop_map(|(bucket, key, len, fill)| Op::Put { bucket, key, len, fill }),
        12 => (bucket.clone(), key.clone()).prop_map(|(bucket, key)| Op::Delete { bucket, key }),
        6 => (bucket.clone(), key.clone()).prop_map(|(bucket, key)| Op::Get { bucket, key }),
        3 => (bucket.clone(), key.clone(), key).prop_map(|(bucket, start, end)| Op::Range { bucket, start, end }),
        2 => bucket.clone().prop_map(Op::CreateBucket),
        1 => bucket.prop_map(Op::DeleteBucket),
        3 => Just(Op::Commit),
        3 => Just(Op::CommitNoSync),
        1 => Just(Op::Sync),
        1 => Just(Op::Rollback),
        1 => Just(Op::Reopen),
    ]
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.db");
    let opts = Options {
        page_size: 1024,
        ..Options::default()
    };
    let mut db = Db::open_with(&path, opts.clone()).unwrap();
    let mut durable = Content::new();
    let mut committed = Content::new();
    let mut i = 0;
    while i < ops.len() {
        let mut txn_model = committed.clone();
        let mut txn = Some(db.begin_write().unwrap());
        let mut ended = false;
        let mut reopen = false;
        while i < ops.len() && !ended {
            let op = ops[i].clone();
            i += 1;
            let Some(tx) = txn.as_mut() else { break };
            match op {
                Op::Put {
                    bucket,
                    key,
                    len,
                    fill,
                } => {
                    let name = BUCKETS[bucket];
                    let value = vec![fill; len];
                    let res = tx.put(name, &key_bytes(key), &value);
                    match txn_model.get_mut(name) {
                        Some(m) => {
                            res.unwrap();
                            m.insert(key_bytes(key), value);
                        }
                        None => assert!(matches!(res, Err(btree::Error::BucketNotFound(_)))),
                    }
                }
                Op::Delete { bucket, key } => {
                    let name = BUCKETS[bucket];
                    let res = tx.delete(name, &key_bytes(key));
                    match txn_model.get_mut(name) {
                        Some(m) => assert_eq!(res.unwrap(), m.remove(&key_bytes(key)).is_some()),
                        None => assert!(res.is_err()),
                    }
                }
                Op::Get { bucket, key } => {
                    let name = BUCKETS[bucket];
                    if let Some(m) = txn_model.get(name) {
                        assert_eq!(
                            tx.get(name, &key_bytes(key)).unwrap().map(<[u8]>::to_vec),
                            m.get(&key_bytes(key)).cloned()
                        );
                    }
                    // Readers see the committed state, not the open transaction.
                    let rx = db.begin_read();
                    let seen = rx
                        .bucket(name)
                        .unwrap()
                        .map(|b| b.get(&key_bytes(key)).unwrap().map(<[u8]>::to_vec));
                    assert_eq!(
                        seen,
                        committed.get(name).map(|m| m.get(&key_bytes(key)).cloned())
                    );
                }
                Op::Range { bucket, start, end } => {
                    let name = BUCKETS[bucket];
                    if let Some(m) = txn_model.get(name) {
                        let (s, e) = (key_bytes(start), key_bytes(end));
                        let got: Vec<(Vec<u8>, Vec<u8>)> = tx
                            .range(name, &s, Some(&e))
                            .unwrap()
                            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
                            .collect();
                        let want: Vec<(Vec<u8>, Vec<u8>)> = if s <= e {
                            m.range(s..e).map(|(k, v)| (k.clone(), v.clone())).collect()
                        } else {
                            Vec::new()
                        };
                        assert_eq!(got, want);
                        // Backwards from the last key matches the model too.
                        let mut c = tx.cursor(name).unwrap();
                        let mut back = Vec::new();
                        let mut cur = c.last().unwrap();
                        while let Some((k, _)) = cur {
                            back.push(k.to_vec());
                            cur = c.prev().unwrap();
                        }
                        back.reverse();
                        assert_eq!(back, m.keys().cloned().collect::<Vec<_>>());
                    }
                }
                Op::CreateBucket(b) => {
                    let created = tx.create_bucket_if_missing(BUCKETS[b]).unwrap();
                    assert_eq!(created, !txn_model.contains_key(BUCKETS[b]));
                    txn_model.entry(BUCKETS[b].to_vec()).or_default();
                }
                Op::DeleteBucket(b) => {
                    let res = tx.delete_bucket(BUCKETS[b]);
                    assert_eq!(res.is_ok(), txn_model.remove(BUCKETS[b]).is_some());
                }
                Op::Commit => {
                    txn.take().unwrap().commit().unwrap();
                    committed = txn_model.clone();
                    durable = committed.clone();
                    ended = true;
                }
                Op::CommitNoSync => {
                    txn.take().unwrap().commit_nosync().unwrap();
                    committed = txn_model.clone();
                    ended = true;
                }
                Op::Sync => {
                    // Sync needs the writer: end the transaction first.
                    txn = None;
                    db.sync().unwrap();
                    durable = committed.clone();
                    ended = true;
                }
                Op::Rollback => {
                    txn.take().unwrap().rollback();
                    ended = true;
                }
                Op::Reopen => {
                    ended = true;
                    reopen = true;
                }
            }
        }
        drop(txn);
        if reopen {
            drop(db);
            db = Db::open_with(&path, opts.clone()).unwrap();
            committed = durable.clone();
            assert_eq!(dump(&db), committed, "after reopen");
            assert_clean(&db);
        }
        assert_eq!(dump(&db), committed);
    }
    assert_clean(&db);
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N runs more.

    #[test]
    fn random_operations_match_a_btreemap_model(ops in proptest::collection::vec(op(), 1..400)) {
        run(ops);
    }
}
