//! Snapshot catch-up: a follower that was down while the leader took raft
//! snapshots and dropped the log it would need gets the leader's database
//! instead, installs it, and ends with the same history (HashKV).

use std::time::{Duration, Instant};

use crate::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_the_leaders_log_installs_a_snapshot() {
    let mut c = Cluster::start(
        3,
        &[
            "--snapshot-count",
            "100",
            "--experimental-snapshot-catchup-entries",
            "10",
        ],
    )
    .await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let behind = (leader + 1) % 3;
    let mut l = c.client(leader).await;
    l.put("before", "1", None).await.unwrap();
    c.kill(behind);
    // Several snapshots' worth of entries, with history to keep: keys
    // written several times, some deleted, a compaction.
    for i in 0..450 {
        l.put(format!("k{}", i % 50), format!("v{i}"), None)
            .await
            .unwrap();
    }
    l.delete("k7", None).await.unwrap();
    let mid = l
        .put("mid", "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    l.compact(mid - 100, None).await.unwrap();
    for i in 0..60 {
        l.put(format!("late{i}"), "y", None).await.unwrap();
    }
    c.restart(behind);
    c.wait_serving(behind).await;
    let mut b = c.client(behind).await;
    let rev = l
        .get("late59", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Linearizable: it has caught up once this sees the last write.
        let r = b.get("late59", None).await.unwrap();
        if r.count() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the follower did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let want = l.hash_kv(rev).await.unwrap();
    let got = b.hash_kv(rev).await.unwrap();
    assert_eq!(got.hash(), want.hash());
    assert_eq!(got.compact_version(), want.compact_version());
    assert_eq!(b.get("k7", None).await.unwrap().count(), 0);
    // History above the compaction is there, below it is gone.
    let old = b
        .get(
            "k3",
            Some(etcd_client::GetOptions::new().with_revision(mid - 50)),
        )
        .await
        .unwrap();
    assert_eq!(old.count(), 1);
    assert!(b
        .get(
            "k3",
            Some(etcd_client::GetOptions::new().with_revision(mid - 200))
        )
        .await
        .is_err());
    let log = std::fs::read_to_string(c.members[behind].data_dir.with_extension("log")).unwrap();
    assert!(
        log.contains("installed the leader's snapshot"),
        "the follower caught up without a snapshot:\n{}",
        c.log_tail(behind)
    );
    // It serves writes too, and survives a restart from its new state.
    b.put("after", "z", None).await.unwrap();
    c.restart(behind);
    c.wait_serving(behind).await;
    let mut b = c.client(behind).await;
    assert_eq!(b.get("after", None).await.unwrap().count(), 1);
    assert_eq!(b.hash_kv(rev).await.unwrap().hash(), want.hash());
}
