//! What a cluster member needs of the key space besides applying entries:
//! installing a leader's snapshot in place (watchers replay what they
//! missed), read-only transactions without a batch, and lease clocks
//! (checkpoints, promotion, no renewal of an expired lease).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mvcc::{
    spawn_watch_syncer, Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, RequestOp,
    ResponseOp, Store, TxnRequest, WatchRequest,
};

fn put(s: &Store, key: &str, value: &str, index: u64) -> i64 {
    let mut a = s.apply().unwrap();
    let r = a
        .put(&PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .unwrap();
    a.commit(index).unwrap();
    r.revision
}

#[test]
fn installing_a_snapshot_replaces_the_key_space_and_watchers_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    // The leader's store, further along.
    let leader = Store::open(dir.path().join("leader.db")).unwrap();
    for i in 1..=20u64 {
        put(&leader, &format!("k{}", i % 5), &format!("v{i}"), i);
    }
    let copy = dir.path().join("copy.db");
    let info = leader.snapshot_into(&copy).unwrap();
    assert_eq!(info.consistent_index, 20);

    // The follower's, behind, with a watcher that has seen its revisions.
    let follower = Arc::new(crate::open_store(&dir.path().join("follower.db")));
    for i in 1..=3u64 {
        put(&follower, &format!("k{i}"), &format!("v{i}"), i);
    }
    let _syncer =
        spawn_watch_syncer(&follower, Duration::from_millis(5), Duration::from_secs(60)).unwrap();
    let (stream, mut rx) = follower.watch_stream(64);
    stream
        .watch(&WatchRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            start_revision: 4,
            ..Default::default()
        })
        .unwrap();

    follower.install(&copy).unwrap();
    assert!(!copy.exists(), "the snapshot file is renamed into place");
    assert_eq!(follower.consistent_index(), 20);
    assert_eq!(follower.current_revision(), leader.current_revision());
    assert_eq!(follower.hash_kv(0).unwrap().0, leader.hash_kv(0).unwrap().0);
    // The watcher gets revisions 4..=21 from the new history, in order.
    let mut revs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while revs.len() < 18 {
        match rx.try_recv() {
            Ok(r) => revs.extend(r.events.iter().map(|e| e.kv.mod_revision)),
            Err(_) => {
                assert!(Instant::now() < deadline, "watcher saw only {revs:?}");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    assert_eq!(revs, (4..=21).collect::<Vec<i64>>());
    // Writes go on in the installed file, and survive a reopen.
    put(&follower, "after", "x", 21);
    drop(stream);
    drop(_syncer);
    let follower = Arc::try_unwrap(follower).ok().unwrap();
    follower.sync().unwrap();
    drop(follower);
    let again = crate::open_store(&dir.path().join("follower.db"));
    assert_eq!(again.consistent_index(), 21);
    assert_eq!(
        again
            .range(&RangeRequest {
                key: b"after".to_vec(),
                ..Default::default()
            })
            .unwrap()
            .count,
        1
    );
}

#[test]
fn read_only_transactions_need_no_batch() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("db")).unwrap();
    put(&s, "a", "1", 1);
    put(&s, "b", "2", 2);
    let range = |k: &str| {
        RequestOp::Range(RangeRequest {
            key: k.into(),
            ..Default::default()
        })
    };
    let t = TxnRequest {
        compare: vec![Compare {
            key: b"a".to_vec(),
            range_end: Vec::new(),
            result: CompareResult::Equal,
            target: CompareTarget::Value(b"1".to_vec()),
        }],
        success: vec![range("b")],
        failure: vec![range("a")],
    };
    // A batch in progress holds the writer: a read-only txn does not wait.
    let batch = s.apply().unwrap();
    let r = s.read_txn(&t).unwrap();
    drop(batch);
    assert!(r.succeeded);
    assert_eq!(r.revision, 3);
    match &r.responses[0] {
        ResponseOp::Range(x) => assert_eq!(x.kvs[0].value, b"2"),
        other => panic!("{other:?}"),
    }
    let mut failing = t.clone();
    failing.compare[0].target = CompareTarget::Value(b"9".to_vec());
    assert!(!s.read_txn(&failing).unwrap().succeeded);
    let mut writing = t.clone();
    writing.success.push(RequestOp::Put(PutRequest {
        key: b"c".to_vec(),
        ..Default::default()
    }));
    assert!(s.read_txn(&writing).is_err());
    let mut future = t;
    future.success = vec![RequestOp::Range(RangeRequest {
        key: b"a".to_vec(),
        revision: 99,
        ..Default::default()
    })];
    assert!(matches!(
        s.read_txn(&future),
        Err(mvcc::Error::FutureRevision)
    ));
}

#[test]
fn lease_clocks_checkpoints_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = crate::open_store(&path);
    let mut a = s.apply().unwrap();
    a.lease_grant(7, 100).unwrap();
    a.lease_grant(8, 2).unwrap();
    a.commit(1).unwrap();
    // A checkpoint records what was left; a restart resumes from it.
    let mut a = s.apply().unwrap();
    a.lease_checkpoint(7, 40).unwrap();
    a.lease_checkpoint(999, 5).unwrap(); // unknown: ignored
    a.commit(2).unwrap();
    assert_eq!(s.lease_checkpointed(7), Some(40));
    s.sync().unwrap();
    drop(s);
    let s = crate::open_store(&path);
    let (_, left, _) = s.lease_time_to_live(7).unwrap();
    assert!((39..=40).contains(&left), "{left}");
    // A new leader adds its election timeout.
    s.lease_promote(Duration::from_secs(5));
    let (_, left, _) = s.lease_time_to_live(7).unwrap();
    assert!((44..=45).contains(&left), "{left}");
    // An expired lease is not renewed: its keys are about to go.
    std::thread::sleep(Duration::from_millis(2100));
    assert!(
        s.expired_leases(Instant::now()).is_empty(),
        "promoted by 5 s"
    );
    s.lease_promote(Duration::ZERO);
    let (_, left, _) = s.lease_time_to_live(8).unwrap();
    assert!(left <= 2);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(s.expired_leases(Instant::now()), vec![8]);
    assert!(s.lease_renew(8).is_err());
    assert_eq!(s.lease_renew(7).unwrap(), 100);
}
