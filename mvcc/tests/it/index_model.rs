//! The key index against a model that keeps every event of every key.

use std::collections::{BTreeMap, HashSet};

use mvcc::{KeyIndex, RangeEnd, Revision};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8),
    Delete(u8),
    Compact,
}

/// Every change of every key: (revision, is a tombstone).
#[derive(Default)]
struct Model {
    events: BTreeMap<Vec<u8>, Vec<(Revision, bool)>>,
}

impl Model {
    fn live(&self, key: &[u8]) -> bool {
        self.events
            .get(key)
            .and_then(|e| e.last())
            .is_some_and(|(_, tomb)| !tomb)
    }

    /// (modified, created, version) of `key` at `at`.
    fn get(&self, key: &[u8], at: i64) -> Option<(Revision, Revision, i64)> {
        let events = self.events.get(key)?;
        let upto: Vec<&(Revision, bool)> = events.iter().filter(|(r, _)| r.main <= at).collect();
        let (modified, tomb) = **upto.last()?;
        if tomb {
            return None;
        }
        // The life containing `modified` began after the last tombstone before it.
        let life: Vec<&&(Revision, bool)> = upto.iter().rev().take_while(|(_, t)| !t).collect();
        let created = life.last()?.0;
        Some((modified, created, life.len() as i64))
    }
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', k]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![6 => (0u8..12).prop_map(Op::Put), 3 => (0u8..12).prop_map(Op::Delete), 1 => Just(Op::Compact)]
}

proptest! {
    #[test]
    fn the_index_matches_a_full_history_model(ops in proptest::collection::vec(op(), 1..200), seed in any::<u64>()) {
        let mut ix = KeyIndex::new();
        let mut model = Model::default();
        let mut main = 1i64;
        let mut compacted = 0i64;
        let mut s = seed;
        let mut rnd = move |n: i64| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1); ((s >> 33) as i64).rem_euclid(n.max(1)) };
        for op in ops {
            match op {
                Op::Put(k) => {
                    main += 1;
                    ix.put(&key(k), Revision::new(main, 0));
                    model.events.entry(key(k)).or_default().push((Revision::new(main, 0), false));
                }
                Op::Delete(k) => {
                    let live = model.live(&key(k));
                    let res = ix.tombstone(&key(k), Revision::new(main + 1, 0));
                    prop_assert_eq!(res.is_ok(), live);
                    if live {
                        main += 1;
                        model.events.entry(key(k)).or_default().push((Revision::new(main, 0), true));
                    }
                }
                Op::Compact => {
                    let c = compacted + rnd(main - compacted + 1);
                    let kept = ix.compact(c);
                    let expected: HashSet<Revision> = model
                        .events
                        .keys()
                        .filter_map(|k| model.get(k, c).map(|(m, _, _)| m))
                        .collect();
                    prop_assert_eq!(kept, expected);
                    compacted = c;
                }
            }
            // Every read at or above the compacted revision matches the model.
            let at = compacted + rnd(main - compacted + 2);
            for k in 0..12u8 {
                let got = ix.get(&key(k), at).map(|s| (s.modified, s.created, s.version));
                prop_assert_eq!(got, model.get(&key(k), at), "key {} at {} (compacted {})", k, at, compacted);
            }
            let (rows, total) = ix.range(&key(2), &RangeEnd::Until(key(9)), at, 3);
            // Each key's state, in key order, as the model has it.
            let want: Vec<Revision> = (2..9u8).filter_map(|k| model.get(&key(k), at).map(|(m, _, _)| m)).collect();
            prop_assert_eq!(total, want.len());
            let got: Vec<Revision> = rows.iter().map(|s| s.modified).collect();
            prop_assert_eq!(&got[..], &want[..want.len().min(3)]);
        }
    }
}
