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
