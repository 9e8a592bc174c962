//! The store against a model keeping full copies of every revision, with
//! transactions, reopens (the index is rebuilt from the B+tree) and compactions.

use std::collections::BTreeMap;

use mvcc::{
    Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8, u8),
    /// If key a's version is above n: put b = v and delete a; else put a = v.
    Txn(u8, u8, i64, u8),
    Compact,
    Reopen,
}

type State = BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)>;

fn key(k: u8) -> Vec<u8> {
    vec![b'k', b'0' + k]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..8, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => (0u8..8, 0u8..3).prop_map(|(k, w)| Op::Delete(k, w)),
        3 => (0u8..8, 0u8..8, 0i64..3, any::<u8>()).prop_map(|(a, b, n, v)| Op::Txn(a, b, n, v)),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N runs more.

    #[test]
    fn reads_at_every_revision_match_the_model(ops in proptest::collection::vec(op(), 1..80), seed in any::<u64>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        let mut store = crate::open_store(&path);
        // states[r] = the whole key space at revision r. As in etcd, an
        // empty store is at revision 1 (states[0] is only there so that
        // indices are revisions; no read asks for revision 0).
        let mut states: Vec<State> = vec![State::new(), State::new()];
        let mut compacted = 0i64;
        let mut s = seed;
        let mut rnd = move |n: i64| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) as i64).rem_euclid(n.max(1)) };
        let mut index = 0u64;
        // The raft index of the last committed batch.
        let mut applied = 0u64;
        for op in ops {
            index += 1;
            let cur = (states.len() - 1) as i64;
            match op {
                Op::Put(k, v) => {
                    let mut a = store.apply().unwrap();
                    let r = a.put(&PutRequest { key: key(k), value: vec![v], ..Default::default() }).unwrap();
                    a.commit(index).unwrap();
                    applied = index;
                    let mut next = states[cur as usize].clone();
                    let (created, version) = next.get(&key(k)).map_or((cur + 1, 1), |e| (e.1, e.3 + 1));
                    next.insert(key(k), (vec![v], created, cur + 1, version));
                    prop_assert_eq!(r.revision, cur + 1);
                    states.push(next);
                }
                Op::Delete(k, width) => {
                    let (start, end) = (key(k), key(k + width));
                    let range_end = if width == 0 { Vec::new() } else { end.clone() };
                    let mut a = store.apply().unwrap();
                    let d = a.delete_range(&start, &range_end, false).unwrap();
                    a.commit(index).unwrap();
                    applied = index;
                    let mut next = states[cur as usize].clone();
                    let doomed: Vec<Vec<u8>> = next.keys().filter(|x| **x == start || (width > 0 && **x >= start && **x < end)).cloned().collect();
                    prop_assert_eq!(d.deleted, doomed.len() as i64);
                    if !doomed.is_empty() {
                        for x in doomed { next.remove(&x); }
                        states.push(next);
                    }
                }
                Op::Txn(ka, kb, n, v) => {
                    let req = TxnRequest {
                        compare: vec![Compare {
                            key: key(ka),
                            range_end: vec![],
                            result: CompareResult::Greater,
                            target: CompareTarget::Version(n),
                        }],
                        success: vec![
                            RequestOp::Put(PutRequest { key: key(kb), value: vec![v], ..Default::default() }),
                            RequestOp::DeleteRange { key: key(ka), range_end: vec![], prev_kv: false },
                        ],
                        failure: vec![RequestOp::Put(PutRequest { key: key(ka), value: vec![v], ..Default::default() })],
                    };
                    let mut a = store.apply().unwrap();
                    let r = a.txn(&req);
                    a.commit(index).unwrap();
                    applied = index;
                    let mut next = states[cur as usize].clone();
                    let version = next.get(&key(ka)).map_or(0, |e| e.3);
                    let put_model = |next: &mut State, k: u8| {
                        let (created, version) = next.get(&key(k)).map_or((cur + 1, 1), |e| (e.1, e.3 + 1));
                        next.insert(key(k), (vec![v], created, cur + 1, version));
                    };
                    if ka == kb {
                        // A put and a delete of one key in one branch: refused
                        // whichever branch would run, as etcd does.
                        prop_assert!(matches!(r, Err(mvcc::Error::DuplicateKey)));
                        continue;
                    }
                    if version > n {
                        prop_assert!(r.unwrap().succeeded);
                        put_model(&mut next, kb);
                        next.remove(&key(ka));
                    } else {
                        prop_assert!(!r.unwrap().succeeded);
                        put_model(&mut next, ka);
                    }
                    states.push(next);
                }
                Op::Compact => {
                    let c = compacted + 1 + rnd(cur - compacted);
                    if c <= cur {
                        let mut a = store.apply().unwrap();
                        a.compact(c).unwrap();
                        a.commit(index).unwrap();
                        applied = index;
                        compacted = c;
                    }
                }
                Op::Reopen => {
                    store.sync().unwrap();
                    drop(store);
                    store = crate::open_store(&path);
                    prop_assert_eq!(store.consistent_index(), applied);
                }
            }
            // Compaction removes records in small steps between operations.
            store.compact_step(2).unwrap();
            let cur = (states.len() - 1) as i64;
            prop_assert_eq!(store.current_revision(), cur);
            let at = compacted.max(1).min(cur) + rnd(cur - compacted.max(1).min(cur) + 1);
            // The store is never below revision 1, so neither is `at`
            // (revision 0 would mean "the current one").
            prop_assert!(at >= 1, "at revision {}", at);
            let got = store.range(&RangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), revision: at, ..Default::default() }).unwrap();
            let want = &states[at as usize];
            let got_map: State = got.kvs.iter().map(|kv| (kv.key.clone(), (kv.value.clone(), kv.create_revision, kv.mod_revision, kv.version))).collect();
            prop_assert_eq!(&got_map, want, "at revision {} (compacted {})", at, compacted);
        }
    }
}
