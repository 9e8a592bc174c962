//! Partitions (cut with the transport's test hook): the minority side
//! cannot commit or serve linearizable reads and says so with etcd's
//! errors; the majority goes on; after healing the minority converges,
//! and a returning member does not depose the leader (pre-vote: the term
//! does not rise).

use std::time::{Duration, Instant};

use etcd_client::GetOptions;

use crate::cluster::Cluster;
use crate::status;

const ETCD_ERRORS: [&str; 4] = [
    "etcdserver: request timed out",
    "etcdserver: no leader",
    "etcdserver: leader changed",
    "etcdserver: request timed out, possibly due to previous leader failure",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_follower_cannot_commit_and_does_not_depose_the_leader() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let lonely = (leader + 1) % 3;
    let mut l = c.client(leader).await;
    l.put("p", "before", None).await.unwrap();
    let term = l.status().await.unwrap().raft_term();

    let others: Vec<usize> = (0..3).filter(|i| *i != lonely).collect();
    c.partition(&[&[lonely], &others]);
    let mut f = c.client(lonely).await;
    // The majority goes on.
    l.put("p", "during", None).await.unwrap();
    // The minority: a write and a linearizable read fail with etcd's
    // errors after the request timeout, never with stale data; a
    // serializable read answers from what it has.
    let started = Instant::now();
    let (mut f1, mut f2) = (f.clone(), f.clone());
    let (w, r) = tokio::join!(f1.put("p", "lost", None), f2.get("p", None));
    let waited = started.elapsed();
    let w = status(w.expect_err("a cut-off member committed a write"));
    let r = status(r.expect_err("a cut-off member served a linearizable read"));
    for (what, (code, msg)) in [("put", w), ("get", r)] {
        assert_eq!(code, tonic::Code::Unavailable, "{what}: {msg}");
        assert!(ETCD_ERRORS.contains(&msg.as_str()), "{what}: {msg}");
    }
    assert!(
        waited >= Duration::from_secs(5),
        "answered after {waited:?}"
    );
    let stale = f
        .get("p", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(stale.kvs()[0].value(), b"before");

    c.heal();
    // The returning member catches up ...
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = f.get("p", None).await {
            if r.kvs()[0].value() == b"during" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the healed member did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and the leader and its term are unchanged (pre-vote).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.leader(Duration::from_secs(5)).await, leader);
    assert_eq!(l.status().await.unwrap().raft_term(), term);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_leader_is_replaced_and_follows_after_healing() {
    let mut c = Cluster::start(3, &[]).await;
    let old = c.leader(Duration::from_secs(10)).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    c.partition(&[&[old], &others]);
    // The majority elects a new leader and commits.
    let mut m = c.client(others[0]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match m.put("q", "majority", None).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "the majority cannot commit: {e}"),
        }
    }
    // The old leader, alone, cannot.
    let mut o = c.client(old).await;
    let err = status(
        o.put("q", "minority", None)
            .await
            .expect_err("committed alone"),
    );
    assert!(ETCD_ERRORS.contains(&err.1.as_str()), "{err:?}");
    c.heal();
    let new = c.leader(Duration::from_secs(10)).await;
    assert_ne!(new, old);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = o.get("q", None).await {
            if r.kvs().first().map(|kv| kv.value()) == Some(b"majority".as_slice()) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the old leader did not follow");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
