//! `snapshot save`, `status` and `restore`: a restored member serves the
//! same data.

use server::pb::etcdserverpb::RangeRequest;

use crate::{describe, free_port, json_line, kvtool_async, Member};

async fn cluster_id(m: &Member) -> u64 {
    m.kv()
        .await
        .range(RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .cluster_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_status_restore_gives_a_member_with_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(&dir.path().join("m"), &[]).await;
    for i in 0..100 {
        m.put(&format!("key{i:03}"), format!("value{i}").as_bytes())
            .await;
    }
    m.delete("key000").await;
    let (kvs, revision) = m.all().await;
    let hash = m.hash_kv().await;
    let old_cluster = cluster_id(&m).await;
    let snap = dir.path().join("snap.db");
    let s = snap.to_str().unwrap().to_string();

    let o = kvtool_async(&["snapshot", "save", &s, "--endpoints", &m.endpoint]).await;
    assert!(o.status.success(), "{}", describe(&o));
    m.stop().await;

    let o = kvtool_async(&["-w", "json", "snapshot", "status", &s]).await;
    assert!(o.status.success(), "{}", describe(&o));
    let j = json_line(&o);
    assert_eq!(j["revision"], revision);
    assert_eq!(j["total_keys"], 99);
    assert_eq!(j["sha256_checked"], true);

    let peer = format!("http://127.0.0.1:{}", free_port());
    let cluster = format!("n1={peer}");
    let restored = dir.path().join("restored");
    let r = restored.to_str().unwrap().to_string();
    let o = kvtool_async(&[
        "snapshot",
        "restore",
        &s,
        "--data-dir",
        &r,
        "--name",
        "n1",
        "--initial-cluster",
        &cluster,
        "--initial-advertise-peer-urls",
        &peer,
    ])
    .await;
    assert!(o.status.success(), "{}", describe(&o));

    // Restoring over a data directory that exists is refused.
    let o = kvtool_async(&["snapshot", "restore", &s, "--data-dir", &r]).await;
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists"));

    let m = Member::start(
        &restored,
        &[
            "--name",
            "n1",
            "--initial-cluster",
            &cluster,
            "--initial-advertise-peer-urls",
            &peer,
        ],
    )
    .await;
    let (got, got_rev) = m.all().await;
    assert_eq!(got, kvs);
    assert_eq!(got_rev, revision);
    assert_eq!(m.hash_kv().await, hash);
    assert_ne!(cluster_id(&m).await, old_cluster, "a new cluster ID");
    // And it takes writes.
    m.put("after", b"restore").await;
    assert_eq!(m.all().await.1, revision + 1);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(&dir.path().join("m"), &[]).await;
    m.put("k", b"v").await;
    let snap = dir.path().join("snap.db");
    let s = snap.to_str().unwrap().to_string();
    let o = kvtool_async(&["snapshot", "save", &s, "--endpoints", &m.endpoint]).await;
    assert!(o.status.success(), "{}", describe(&o));
    m.stop().await;
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[5000] ^= 0x40;
    std::fs::write(&snap, bytes).unwrap();
    for args in [
        vec!["snapshot", "status", s.as_str()],
        vec![
            "snapshot",
            "restore",
            s.as_str(),
            "--data-dir",
            dir.path().join("r").to_str().unwrap(),
        ],
    ] {
        let o = kvtool_async(&args).await;
        assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("SHA-256"),
            "{}",
            describe(&o)
        );
    }
    // A member that is not there: a clear failure, not a hang.
    let o = kvtool_async(&[
        "snapshot",
        "save",
        dir.path().join("x").to_str().unwrap(),
        "--endpoints",
        &format!("127.0.0.1:{}", free_port()),
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_snapshot_restored_three_times_starts_as_one_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(&dir.path().join("m"), &[]).await;
    for i in 0..50 {
        m.put(&format!("key{i:03}"), b"v").await;
    }
    let (kvs, revision) = m.all().await;
    let hash = m.hash_kv().await;
    let snap = dir.path().join("snap.db");
    let s = snap.to_str().unwrap().to_string();
    let o = kvtool_async(&["snapshot", "save", &s, "--endpoints", &m.endpoint]).await;
    assert!(o.status.success(), "{}", describe(&o));
    m.stop().await;

    let peers: Vec<String> = (0..3)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let cluster = (0..3)
        .map(|i| format!("n{}={}", i + 1, peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut ids = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let d = dir.path().join(&name);
        let o = kvtool_async(&[
            "-w",
            "json",
            "snapshot",
            "restore",
            &s,
            "--data-dir",
            d.to_str().unwrap(),
            "--name",
            &name,
            "--initial-cluster",
            &cluster,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .await;
        assert!(o.status.success(), "{}", describe(&o));
        ids.push(json_line(&o)["cluster_id"].clone());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");

    let start = |i: usize| {
        let name = format!("n{}", i + 1);
        let d = dir.path().join(&name);
        let peer = peers[i].clone();
        let cluster = cluster.clone();
        async move {
            Member::start_with_peer(
                &d,
                &peer,
                &[
                    "--name",
                    &name,
                    "--initial-cluster",
                    &cluster,
                    "--initial-advertise-peer-urls",
                    &peer,
                ],
            )
            .await
        }
    };
    // They serve only once they have a quorum: started together.
    let (a, b, c) = tokio::join!(start(0), start(1), start(2));
    for m in [&a, &b, &c] {
        let (got, rev) = m.all().await;
        assert_eq!(got, kvs);
        assert_eq!(rev, revision);
        assert_eq!(m.hash_kv().await, hash);
    }
    // One cluster: a write through one is read linearizably on the others.
    a.put("after", b"restore").await;
    for m in [&b, &c] {
        assert_eq!(m.all().await.1, revision + 1);
    }
    for m in [a, b, c] {
        m.stop().await;
    }
}
