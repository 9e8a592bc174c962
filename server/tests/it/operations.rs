//! Operating a member: raft snapshots releasing the log, restarts from a
//! snapshot, the space quota, auto-compaction.

use std::time::{Duration, Instant};

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, GetOptions};

use crate::{status, Server};

#[tokio::test]
async fn restarts_after_raft_snapshots_keep_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut server = Server::start_with(&data, &["--snapshot-count", "20"]).await;
    let mut c = server.client().await;
    for i in 0..75 {
        c.put(format!("k{i:03}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    assert!(
        data.join("member/snap/raft.marker").exists(),
        "a snapshot was taken"
    );
    let hash = c.hash_kv(0).await.unwrap().hash();
    drop(c);
    // Killed: what was not synced to the database is replayed from the
    // WAL after the snapshot marker.
    server.restart().await;
    let mut c = server.client().await;
    assert_eq!(c.hash_kv(0).await.unwrap().hash(), hash);
    let r = c
        .get("k", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert_eq!((r.count(), r.header().unwrap().revision()), (75, 76));
    c.put("after", "restart", None).await.unwrap();
}

#[tokio::test]
async fn exceeding_the_quota_raises_nospace_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        Server::start_with(&dir.path().join("d"), &["--quota-backend-bytes", "300000"]).await;
    let mut c = server.client().await;
    let start = Instant::now();
    let err = loop {
        match c.put("big", vec![1u8; 100_000], None).await {
            Ok(_) => {}
            Err(e) => break e,
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never refused");
    };
    assert_eq!(
        status(err),
        (
            tonic::Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded".into()
        )
    );
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, Some(AlarmOptions::new()))
        .await
        .unwrap();
    assert_eq!(alarms.alarms().len(), 1);
    assert_eq!(alarms.alarms()[0].alarm(), AlarmType::Nospace);
    // The alarm survives a clean restart (the database is synced at
    // shutdown, so the alarm's raft entry is not applied again), even
    // with the default quota, under which it would not be raised again.
    drop(c);
    assert!(server.terminate().success());
    server.extra.clear();
    server.restart().await;
    let mut c = server.client().await;
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, Some(AlarmOptions::new()))
        .await
        .unwrap();
    assert_eq!(alarms.alarms().len(), 1, "the alarm was forgotten");
    let e = c.put("more", "x", None).await.unwrap_err();
    assert_eq!(status(e).1, "etcdserver: mvcc: database space exceeded");
    // Reads and deletes still work.
    assert_eq!(c.get("big", None).await.unwrap().kvs().len(), 1);
    // etcd's way out: compact, defragment, disarm.
    let rev = c
        .delete("big", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    c.compact(
        rev,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    let before = c.status().await.unwrap().db_size();
    c.defragment().await.unwrap();
    let after = c.status().await.unwrap().db_size();
    assert!(after < before, "defragment: {before} -> {after}");
    let member = c.status().await.unwrap().header().unwrap().member_id();
    let mut opts = AlarmOptions::new();
    opts.with_member(member);
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts))
        .await
        .unwrap();
    c.put("small", "ok", None).await.unwrap();
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, Some(AlarmOptions::new()))
        .await
        .unwrap();
    assert!(alarms.alarms().is_empty());
}

#[tokio::test]
async fn periodic_auto_compaction_drops_old_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("d"),
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "2s",
        ],
    )
    .await;
    let mut c = server.client().await;
    c.put("k", "old", None).await.unwrap();
    let start = Instant::now();
    loop {
        c.put("k", "new", None).await.unwrap();
        if c.get("k", Some(GetOptions::new().with_revision(2)))
            .await
            .is_err()
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "never compacted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "compacted too early"
    );
}
