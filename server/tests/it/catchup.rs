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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_snapshot_transfer_is_retried_and_never_half_installed() {
    let mut c = Cluster::start(
        3,
        &[
            "--snapshot-count",
            "50",
            "--experimental-snapshot-catchup-entries",
            "5",
        ],
    )
    .await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let behind = (leader + 1) % 3;
    let mut l = c.client(leader).await;
    c.kill(behind);
    for i in 0..200 {
        l.put(format!("k{i}"), "v", None).await.unwrap();
    }
    // Every snapshot the leader sends the follower breaks off after its
    // first chunk.
    c.faults(
        leader,
        &format!("cut-snapshot {:x}\n", c.members[behind].id),
    );
    c.restart(behind);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.log(behind).contains("the snapshot stream ended early") {
        assert!(
            Instant::now() < deadline,
            "no transfer was attempted:\n{}",
            c.log_tail(behind)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing half-received stays, and nothing was installed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let snap = c.members[behind].data_dir.join("member").join("snap");
    let leftovers: Vec<String> = std::fs::read_dir(&snap)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".snap.db"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert!(!c.log(behind).contains("installed the leader's snapshot"));
    // Once transfers go through, a retry brings the follower level.
    c.heal();
    c.wait_serving(behind).await;
    let mut b = c.client(behind).await;
    let rev = l
        .get("k199", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.get("k199", None).await.map(|r| r.count()).unwrap_or(0) != 1 {
        assert!(Instant::now() < deadline, "the follower did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.log(behind).contains("installed the leader's snapshot"));
    assert_eq!(
        b.hash_kv(rev).await.unwrap().hash(),
        l.hash_kv(rev).await.unwrap().hash()
    );
}

/// Raft's in-memory log as `kvserver_raft_log_entries` reports it.
async fn log_entries(c: &Cluster, i: usize) -> f64 {
    crate::metrics::v(
        &crate::metrics::scrape(&c.members[i].endpoint()).await,
        "kvserver_raft_log_entries",
    )
}

/// Waits until member `i` holds at most `most` entries in memory.
async fn wait_log_at_most(c: &Cluster, i: usize, most: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = log_entries(c, i).await;
        if held <= most {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {i} still holds {held} entries in memory (at most {most} wanted)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_in_memory_log_keeps_what_a_follower_needs_and_no_more() {
    // Catch-up entries 10, and the in-memory log is trimmed 1,024 entries
    // at a time: nobody behind, no member holds more than 1,034. The raft
    // snapshot (--snapshot-count, 100,000 by default) is far away.
    let most = 10.0 + 1024.0;
    let mut c = Cluster::start(3, &["--experimental-snapshot-catchup-entries", "10"]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let behind = (leader + 1) % 3;
    let mut l = c.client(leader).await;
    for i in 0..1500 {
        l.put(format!("a{}", i % 100), "v", None).await.unwrap();
    }
    for i in 0..3 {
        wait_log_at_most(&c, i, most).await;
    }
    // A follower down: the leader keeps every entry since its match.
    c.kill(behind);
    for i in 0..1500 {
        l.put(format!("b{}", i % 100), "v", None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = log_entries(&c, leader).await;
    assert!(
        held >= 1500.0,
        "the leader dropped entries its follower needs: it holds {held}"
    );
    // Back, it catches up from those entries, not from a snapshot, and
    // the leader lets them go.
    c.restart(behind);
    c.wait_serving(behind).await;
    let mut b = c.client(behind).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.get("b99", None).await.unwrap().count() != 1 {
        assert!(Instant::now() < deadline, "the follower did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(c.members[behind].data_dir.with_extension("log")).unwrap();
    assert!(
        !log.contains("installed the leader's snapshot"),
        "the follower needed a snapshot:\n{}",
        c.log_tail(behind)
    );
    wait_log_at_most(&c, leader, most).await;
    let rev = l
        .get("b99", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(
        b.hash_kv(rev).await.unwrap().hash(),
        l.hash_kv(rev).await.unwrap().hash()
    );
}
