//! The Lock and Election services (etcd's v3lock and v3election).

use std::time::Duration;

use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};

use crate::Server;

#[tokio::test]
async fn a_lock_is_held_by_one_owner_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    let first = c.lease_grant(30, None).await.unwrap().id();
    let second = c.lease_grant(30, None).await.unwrap().id();
    let held = c
        .lock("mylock", Some(LockOptions::new().with_lease(first)))
        .await
        .unwrap();
    assert_eq!(held.key(), format!("mylock/{first:x}").as_bytes());
    // The second caller waits while the first holds it.
    let mut c2 = server.client().await;
    let waiter = tokio::spawn(async move {
        c2.lock("mylock", Some(LockOptions::new().with_lease(second)))
            .await
            .map(|r| r.key().to_vec())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the lock was taken twice");
    c.unlock(held.key()).await.unwrap();
    let key = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the second owner got the lock")
        .unwrap()
        .unwrap();
    assert_eq!(key, format!("mylock/{second:x}").as_bytes());
    // A lock with an unknown lease is refused.
    let e = c
        .lock("mylock", Some(LockOptions::new().with_lease(0x4242)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("requested lease not found"), "{e}");
}

#[tokio::test]
async fn an_election_has_one_leader_who_can_proclaim_and_resign() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    let alice = c.lease_grant(30, None).await.unwrap().id();
    let bob = c.lease_grant(30, None).await.unwrap().id();
    let won = c.campaign("vote", "alice", alice).await.unwrap();
    let leader = won.leader().unwrap().clone();
    let mut observe = c.observe("vote").await.unwrap();
    let first = observe.message().await.unwrap().unwrap();
    assert_eq!(first.kv().unwrap().value(), b"alice");
    let mut c2 = server.client().await;
    let bob_campaign = tokio::spawn(async move {
        c2.campaign("vote", "bob", bob)
            .await
            .map(|r| r.leader().cloned())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!bob_campaign.is_finished(), "two leaders");
    c.proclaim(
        "alice-2",
        Some(ProclaimOptions::new().with_leader(leader.clone())),
    )
    .await
    .unwrap();
    assert_eq!(
        c.leader("vote").await.unwrap().kv().unwrap().value(),
        b"alice-2"
    );
    let seen = observe.message().await.unwrap().unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"alice-2");
    c.resign(Some(ResignOptions::new().with_leader(leader)))
        .await
        .unwrap();
    let bob_leads = tokio::time::timeout(Duration::from_secs(5), bob_campaign)
        .await
        .expect("bob takes over")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(bob_leads.key(), format!("vote/{bob:x}").as_bytes());
    let seen = tokio::time::timeout(Duration::from_secs(5), observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_work_across_members_and_a_caller_that_gives_up_leaves_no_key() {
    let c = crate::cluster::Cluster::start(3, &[]).await;
    let mut a = c.client(0).await;
    let mut b = c.client(1).await;
    let first = a.lease_grant(30, None).await.unwrap().id();
    let second = b.lease_grant(30, None).await.unwrap().id();
    let third = b.lease_grant(30, None).await.unwrap().id();
    let held = a
        .lock("xlock", Some(LockOptions::new().with_lease(first)))
        .await
        .unwrap();
    // A caller on another member gives up while waiting: its key goes.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(800),
        b.lock("xlock", Some(LockOptions::new().with_lease(third))),
    )
    .await;
    assert!(gave_up.is_err(), "the lock was taken twice");
    let prefix = etcd_client::GetOptions::new().with_prefix();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let keys = a.get("xlock/", Some(prefix.clone())).await.unwrap();
        if keys.count() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned waiter's key stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One that waits gets it once the holder, on another member, unlocks.
    let mut b2 = b.clone();
    let waiter = tokio::spawn(async move {
        b2.lock("xlock", Some(LockOptions::new().with_lease(second)))
            .await
            .map(|r| r.key().to_vec())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the lock was taken twice");
    a.unlock(held.key()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter got the lock")
        .unwrap()
        .unwrap();
    assert_eq!(got, format!("xlock/{second:x}").into_bytes());
}
