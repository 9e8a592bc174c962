//! Leases: grant, time-to-live with keys, keep-alive, list, revoke, and
//! expiry deleting the attached keys.

use std::time::{Duration, Instant};

use etcd_client::{GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions};
use tonic::Code;

use crate::{status, Server};

#[tokio::test]
async fn leases_attach_keep_alive_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    let g = c.lease_grant(60, None).await.unwrap();
    assert!(g.id() > 0);
    assert_eq!(g.ttl(), 60);
    let chosen = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap();
    assert_eq!(chosen.id(), 0x1234);
    c.put("a", "1", Some(PutOptions::new().with_lease(g.id())))
        .await
        .unwrap();
    c.put("b", "2", Some(PutOptions::new().with_lease(g.id())))
        .await
        .unwrap();
    let t = c
        .lease_time_to_live(g.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(t.granted_ttl(), 60);
    assert!((58..=60).contains(&t.ttl()));
    let mut keys = t.keys().to_vec();
    keys.sort();
    assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
    let (mut keeper, mut stream) = c.lease_keep_alive(g.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let ka = stream.message().await.unwrap().unwrap();
    assert_eq!((ka.id(), ka.ttl()), (g.id(), 60));
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    let mut want = vec![g.id(), 0x1234];
    want.sort();
    assert_eq!(ids, want);
    // Revoking deletes both keys in one revision.
    let before = c.get("a", None).await.unwrap().header().unwrap().revision();
    let r = c.lease_revoke(g.id()).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), before + 1);
    let left = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(left.count(), 0);
    let e = c.lease_revoke(g.id()).await.unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    // An unknown lease's time-to-live is -1, as etcd answers.
    let t = c.lease_time_to_live(g.id(), None).await.unwrap();
    assert_eq!(t.ttl(), -1);
    // A revoke of a lease with no keys makes no revision.
    let r = c.lease_revoke(0x1234).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), before + 1);
}

#[tokio::test]
async fn an_expired_lease_takes_its_keys_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    let g = c.lease_grant(2, None).await.unwrap();
    c.put("ephemeral", "x", Some(PutOptions::new().with_lease(g.id())))
        .await
        .unwrap();
    c.put("stays", "y", None).await.unwrap();
    let start = Instant::now();
    loop {
        let r = c.get("ephemeral", None).await.unwrap();
        if r.kvs().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "expired early"
    );
    assert_eq!(c.get("stays", None).await.unwrap().kvs().len(), 1);
    assert_eq!(c.lease_time_to_live(g.id(), None).await.unwrap().ttl(), -1);
}
