//! Maintenance and Cluster: status, hashes, snapshot, alarms, member list,
//! auth status; clean shutdown and restart.

use sha2::{Digest, Sha256};

use etcd_client::{AlarmAction, AlarmOptions, AlarmType};

use crate::Server;

#[tokio::test]
async fn status_hashes_members_and_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    c.put("a", "1", None).await.unwrap();
    let s = c.status().await.unwrap();
    let h = s.header().unwrap();
    assert_eq!(s.leader(), h.member_id(), "one member leads itself");
    assert_eq!(h.revision(), 2);
    assert!(s.db_size() > 0 && s.raft_term() >= 1 && s.raft_index() >= 1);
    assert_eq!(s.version(), "3.4.23");
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1);
    let m = &members.members()[0];
    assert_eq!((m.id(), m.name()), (h.member_id(), "n1"));
    assert_eq!(m.client_urls(), [format!("http://{}", server.endpoint)]);
    // HashKV: unchanged by reads, changed by writes, same at rev 0 and current.
    let h1 = c.hash_kv(0).await.unwrap().hash();
    c.get("a", None).await.unwrap();
    assert_eq!(c.hash_kv(0).await.unwrap().hash(), h1);
    assert_eq!(c.hash_kv(2).await.unwrap().hash(), h1);
    c.put("b", "2", None).await.unwrap();
    assert_ne!(c.hash_kv(0).await.unwrap().hash(), h1);
    assert_ne!(c.hash().await.unwrap().hash(), 0);
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, Some(AlarmOptions::new()))
        .await
        .unwrap();
    assert!(alarms.alarms().is_empty());
}

#[tokio::test]
async fn a_snapshot_is_the_database_followed_by_its_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    for i in 0..100 {
        c.put(format!("k{i}"), vec![b'v'; 500], None).await.unwrap();
    }
    let mut stream = c.snapshot().await.unwrap();
    let mut bytes = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        bytes.extend_from_slice(r.blob());
    }
    assert!(bytes.len() > 32 && (bytes.len() - 32) % 512 == 0);
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(body).as_slice(), digest);
    // The body is a database holding the data.
    let path = dir.path().join("snap.db");
    std::fs::write(&path, body).unwrap();
    let store = mvcc::Store::open(&path).unwrap();
    assert_eq!(store.current_revision(), 101);
    let r = store
        .range(&mvcc::RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.count, 100);
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_a_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    for i in 0..50 {
        c.put(format!("k{i}"), format!("v{i}"), None).await.unwrap();
    }
    let lease = c.lease_grant(600, None).await.unwrap().id();
    let hash = c.hash_kv(0).await.unwrap().hash();
    drop(c);
    assert!(server.terminate().success());
    server.restart().await;
    let mut c = server.client().await;
    assert_eq!(c.hash_kv(0).await.unwrap().hash(), hash);
    let r = c.get("k49", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"v49");
    assert_eq!(r.header().unwrap().revision(), 51);
    assert!(c.lease_time_to_live(lease, None).await.unwrap().ttl() > 500);
    // Auth is off: disabling it again succeeds, as in etcd.
    c.auth_disable().await.unwrap();
}

/// Defragmentation does not stop the world: while it shrinks a large,
/// mostly free database, puts and linearizable gets keep completing, and
/// none fails. The file shrinks and checks clean afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn defragment_runs_while_reads_and_writes_go_on() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    let c = server.client().await;
    // 24 MiB of values, then nine keys in ten deleted: what stays is spread
    // over the whole file.
    let value = vec![b'v'; 1024];
    let mut loaders = Vec::new();
    for t in 0..16u32 {
        let (mut c, value) = (c.clone(), value.clone());
        loaders.push(tokio::spawn(async move {
            for i in (t..24_000).step_by(16) {
                c.put(format!("k{i:06}"), value.clone(), None)
                    .await
                    .unwrap();
            }
        }));
    }
    for l in loaders {
        l.await.unwrap();
    }
    let mut c2 = c.clone();
    let mut rev = 0;
    for i in (0..24_000).step_by(10) {
        let opts = etcd_client::DeleteOptions::new().with_range(format!("k{:06}", i + 10));
        rev = c2
            .delete(format!("k{:06}", i + 1), Some(opts))
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    c2.compact(
        rev,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    let before = c2.status().await.unwrap();
    let (before, before_used) = (before.db_size(), before.raft_used_db_size());

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for t in 0..8u32 {
        let (mut c, stop, done, failed) = (c.clone(), stop.clone(), done.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load{t}-{}", n % 100);
                let ok = if n.is_multiple_of(2) {
                    c.put(key, "x", None).await.is_ok()
                } else {
                    c.get("k000000", None)
                        .await
                        .is_ok_and(|r| r.kvs().len() == 1)
                };
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }
    while done.load(Ordering::Relaxed) < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let at_start = done.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    c2.defragment().await.unwrap();
    let took = started.elapsed();
    let during = done.load(Ordering::Relaxed) - at_start;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    // Eight clients, each with one request outstanding: had the
    // defragmentation held requests for its whole length, at most eight
    // would have finished (about 200 do here).
    assert!(
        during >= 50,
        "only {during} requests completed during the {took:?} defragmentation"
    );
    // The pages in use (the high-water mark) shrink by two thirds; the
    // file too, though it keeps its reserve (16 MiB) ahead of them.
    let after = c2.status().await.unwrap();
    let (after, after_used) = (after.db_size(), after.raft_used_db_size());
    assert!(
        after_used * 3 < before_used,
        "the pages in use shrank: {before_used} -> {after_used} bytes"
    );
    assert!(after < before, "the file shrank: {before} -> {after} bytes");
    assert_eq!(
        c2.get("k000000", None).await.unwrap().kvs()[0].value(),
        &value[..]
    );
    assert_eq!(
        c2.get(
            "k",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only()
            )
        )
        .await
        .unwrap()
        .count(),
        2400
    );
    eprintln!(
        "defragment: {before} -> {after} bytes in {took:?}, {during} requests completed meanwhile"
    );
    drop((c, c2));
    assert!(server.terminate().success());
    let db = btree::Db::open_with(
        dir.path().join("member/snap/db"),
        btree::Options {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let report = db.check();
    assert!(report.is_clean(), "{report}");
}

/// The database copies snapshot streams are served from, in the snap dir.
fn snapshot_copies(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(server::datadir::snap_dir(data_dir))
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(server::datadir::SNAPSHOT_COPY_PREFIX) && n.ends_with(".tmp")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_streams_are_bounded_and_their_copies_removed_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut server = Server::start(&data).await;
    let mut c = server.client().await;
    for i in 0..400 {
        c.put(format!("k{i}"), vec![b'v'; 16 * 1024], None)
            .await
            .unwrap();
    }
    // Five streams whose clients read nothing: the two with a turn keep
    // their copies on disk (the stream is stalled), the others wait.
    let stalled: Vec<_> = (0..5)
        .map(|_| {
            let ep = server.endpoint.clone();
            tokio::spawn(async move {
                let mut c = etcd_client::Client::connect([ep], None).await.unwrap();
                let stream = c.snapshot().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                drop(stream);
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        snapshot_copies(&data),
        server::shared::MAX_CONCURRENT_SNAPSHOTS
    );
    // A crash leaves the copies; the restart removes them.
    server.restart().await;
    for t in stalled {
        t.abort();
    }
    assert_eq!(snapshot_copies(&data), 0);
    // Streams read to the end each give the whole database, one after
    // the other when more than two ask at once.
    let mut whole = Vec::new();
    for _ in 0..3 {
        let ep = server.endpoint.clone();
        whole.push(tokio::spawn(async move {
            let mut c = etcd_client::Client::connect([ep], None).await.unwrap();
            let mut stream = c.snapshot().await.unwrap();
            let mut bytes = Vec::new();
            while let Some(r) = stream.message().await.unwrap() {
                bytes.extend_from_slice(r.blob());
            }
            let (body, digest) = bytes.split_at(bytes.len() - 32);
            assert_eq!(Sha256::digest(body).as_slice(), digest);
            body.len()
        }));
    }
    let mut sizes = Vec::new();
    for w in whole {
        sizes.push(w.await.unwrap());
    }
    assert!(sizes[0] > 400 * 16 * 1024, "{sizes:?}");
    assert!(sizes.iter().all(|s| *s == sizes[0]), "{sizes:?}");
    assert_eq!(snapshot_copies(&data), 0);
}

/// A Snapshot copies the database from a read snapshot of it: while the
/// copy is held up, writes are applied and answered as usual, and the
/// stream then delivers a whole, checked database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_go_on_while_a_snapshot_is_being_copied() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let server = Server::start(&data).await;
    let mut c = server.client().await;
    c.put("before", "1", None).await.unwrap();
    let point = "/failpoints/btree::compact_bucket";
    let armed = crate::http::request(&server.endpoint, "PUT", point, "pause").await;
    assert_eq!(armed.status, 200, "{}", armed.body);
    let ep = server.endpoint.clone();
    let snapshot = tokio::spawn(async move {
        let mut c = etcd_client::Client::connect([ep], None).await.unwrap();
        let mut stream = c.snapshot().await.unwrap();
        let mut bytes = Vec::new();
        while let Some(r) = stream.message().await.unwrap() {
            bytes.extend_from_slice(r.blob());
        }
        bytes
    });
    // The copy has begun (its file exists) and is held at the failpoint.
    let deadline = Instant::now() + Duration::from_secs(10);
    while snapshot_copies(&data) == 0 {
        assert!(Instant::now() < deadline, "the snapshot's copy never began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..20 {
        tokio::time::timeout(
            Duration::from_secs(5),
            c.put(format!("during/{i}"), "v", None),
        )
        .await
        .expect("a put waited for the snapshot's copy")
        .unwrap();
    }
    let r = c.get("during/19", None).await.unwrap();
    assert_eq!(r.kvs().len(), 1);
    assert!(!snapshot.is_finished(), "the copy was not held up");
    let off = crate::http::request(&server.endpoint, "DELETE", point, "").await;
    assert_eq!(off.status, 200, "{}", off.body);
    let bytes = tokio::time::timeout(Duration::from_secs(30), snapshot)
        .await
        .expect("the snapshot did not finish once let go")
        .unwrap();
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(body).as_slice(), digest);
    let file = dir.path().join("snapshot.db");
    std::fs::write(&file, body).unwrap();
    crate::kvtool_check_db(&file);
}
