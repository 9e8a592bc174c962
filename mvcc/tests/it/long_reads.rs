//! Reads over many keys walk the index in steps, letting writes in
//! between: each answer must still be the key space at one revision.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mvcc::{Error, PutRequest, RangeRequest, Store};

/// Held by each test here: a failpoint one arms must meet only its own
/// walks.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _one = one_at_a_time();
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
    let _one = one_at_a_time();
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

/// Arms `point` (a point between two steps of a long read) to put a key
/// from another thread, once, and wait for it: were the walk holding the
/// store's lock there, the put could not land and the read fails. Returns
/// the revisions of the puts that landed.
#[cfg(feature = "failpoints")]
fn put_between_steps(point: &'static str, s: &Arc<Store>) -> Arc<std::sync::Mutex<Vec<i64>>> {
    let landed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (s, out) = (s.clone(), landed.clone());
    let once = AtomicBool::new(false);
    fail::cfg_callback(point, move || {
        if once.swap(true, Ordering::SeqCst) {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let s = s.clone();
        std::thread::spawn(move || {
            put_batch(&s, std::iter::once(format!("between/{point}")));
            let _ = tx.send(s.current_revision());
        });
        let rev = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("a put waited for the whole walk at {point}"));
        out.lock().unwrap().push(rev);
    })
    .unwrap();
    landed
}

#[cfg(feature = "failpoints")]
#[test]
fn writes_land_between_the_steps_of_a_long_range_and_hash_kv() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(crate::open_store(&dir.path().join("kv.db")));
    for b in 0..25 {
        put_batch(&s, (0..1000).map(|i| format!("k/{b:02}/{i:04}")));
    }
    let at = s.current_revision();
    let (hash_before, _, _) = s.hash_kv(at).unwrap();

    let landed = put_between_steps("mvcc::range_step", &s);
    let r = s.range(&everything(0, false)).unwrap();
    fail::remove("mvcc::range_step");
    let landed = landed.lock().unwrap().clone();
    assert_eq!(landed.len(), 1, "the walk took more than one step");
    // The put landed while the range walked, and the range is still the
    // key space at the revision it started at.
    assert!(landed[0] > r.revision);
    assert_eq!(r.revision, at);
    assert_eq!(r.kvs.len(), 25_000);

    let landed = put_between_steps("mvcc::hash_step", &s);
    let (hash, _, _) = s.hash_kv(at).unwrap();
    fail::remove("mvcc::hash_step");
    assert_eq!(landed.lock().unwrap().len(), 1);
    assert_eq!(
        hash, hash_before,
        "HashKV at {at} changed with a put after it"
    );
    assert_eq!(s.current_revision(), at + 2);
}
