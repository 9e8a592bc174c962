//! Reads over many keys walk the index in steps, letting writes in
//! between: each answer must still be the key space at one revision.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mvcc::{Error, PutRequest, RangeRequest, Store};

fn put_batch(s: &Store, keys: impl Iterator<Item = String>) {
    let mut a = s.apply().unwrap();
    for k in keys {
        a.put(&PutRequest {
            key: k.into_bytes(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .unwrap();
    }
    let ci = s.consistent_index() + 1;
    a.commit(ci).unwrap();
}

fn everything(rev: i64, count_only: bool) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: b"\0".to_vec(),
        revision: rev,
        count_only,
        ..Default::default()
    }
}

#[test]
fn a_range_over_many_keys_is_one_revision_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(crate::open_store(&dir.path().join("kv.db")));
    // 35,000 keys: several steps of the index walk.
    for b in 0..35 {
        put_batch(&s, (0..1000).map(|i| format!("base/{b:02}/{i:04}")));
    }
    let base_rev = s.current_revision();
    let base = 35_000;
    let stop = Arc::new(AtomicBool::new(false));
    // Every revision from here on adds one new key.
    let writer = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                put_batch(&s, (n..n + 20).map(|i| format!("new/{i:08}")));
                n += 20;
            }
            n
        })
    };
    let mut reads = 0;
    while reads < 30 {
        let r = s.range(&everything(0, reads % 2 == 0)).unwrap();
        let expected = base + (r.revision - base_rev);
        assert_eq!(r.count, expected, "at revision {}", r.revision);
        if reads % 2 == 1 {
            assert_eq!(r.kvs.len() as i64, expected);
            assert!(r.kvs.iter().all(|kv| kv.mod_revision <= r.revision));
        }
        // The same at a fixed revision, however far writes have gone.
        let old = s.range(&everything(base_rev, true)).unwrap();
        assert_eq!(old.count, base);
        reads += 1;
    }
    // Once compacted past, the old revision is gone.
    let mut a = s.apply().unwrap();
    a.compact(base_rev + 1).unwrap();
    let ci = s.consistent_index() + 1;
    a.commit(ci).unwrap();
    assert!(matches!(
        s.range(&everything(base_rev, true)),
        Err(Error::Compacted)
    ));
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 0);
    let r = s.range(&everything(0, true)).unwrap();
    assert_eq!(r.count, base + written as i64);
}

#[test]
fn hash_kv_over_many_keys_is_the_same_in_steps_and_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = crate::open_store(&dir.path().join("kv.db"));
    for b in 0..25 {
        put_batch(&s, (0..1000).map(|i| format!("k/{b:02}/{i:04}")));
        // Overwrites, so that a compaction has records to drop.
        put_batch(&s, (0..100).map(|i| format!("k/{b:02}/{i:04}")));
    }
    let at = s.current_revision();
    let mut a = s.apply().unwrap();
    a.compact(at - 500).unwrap();
    let ci = s.consistent_index() + 1;
    a.commit(ci).unwrap();
    let (before, _, compacted) = s.hash_kv(at).unwrap();
    assert_eq!(compacted, at - 500);
    s.finish_compaction().unwrap();
    let (after, _, _) = s.hash_kv(at).unwrap();
    assert_eq!(before, after);
}
