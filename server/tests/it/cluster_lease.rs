//! Leases in a cluster: keep-alives reach the leader from any member, a
//! leader change does not expire a kept-alive lease, and a lease that is
//! not kept alive expires once, on every member.

use std::time::{Duration, Instant};

use etcd_client::PutOptions;

use crate::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_survive_a_leader_change_and_expire_once_everywhere() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let mut f = c.client(follower).await;
    let kept = f.lease_grant(4, None).await.unwrap().id();
    f.put("kept", "1", Some(PutOptions::new().with_lease(kept)))
        .await
        .unwrap();
    // Keep-alives from a follower, which passes them on to the leader.
    let (mut keeper, mut answers) = f.lease_keep_alive(kept).await.unwrap();
    let keep_alive = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match answers.message().await {
                Ok(Some(a)) if a.ttl() > 0 => {}
                other => panic!("keep-alive answered {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let ttl = f.lease_time_to_live(kept, None).await.unwrap();
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 4);

    // The leader goes away; the lease lives on.
    c.kill(leader);
    let new_leader = c.leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        f.get("kept", None).await.unwrap().count(),
        1,
        "the kept-alive lease expired"
    );
    c.restart(leader);
    c.wait_serving(leader).await;

    // A lease nobody keeps alive expires, once, and on every member.
    let gone = f.lease_grant(2, None).await.unwrap().id();
    let put = f
        .put("gone", "1", Some(PutOptions::new().with_lease(gone)))
        .await
        .unwrap();
    let rev = put.header().unwrap().revision();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if f.get("gone", None).await.unwrap().count() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the lease did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..3 {
        let mut m = c.client(i).await;
        assert_eq!(m.get("gone", None).await.unwrap().count(), 0, "member {i}");
        assert_eq!(m.lease_time_to_live(gone, None).await.unwrap().ttl(), -1);
        // Deleted in exactly one revision after the put: the expiry was
        // applied once.
        let mut w = m
            .watch(
                "gone",
                Some(etcd_client::WatchOptions::new().with_start_revision(rev + 1)),
            )
            .await
            .unwrap();
        let mut deletes = 0;
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(Some(r))) =
            tokio::time::timeout(until.saturating_duration_since(Instant::now()), w.message()).await
        {
            deletes += r.events().len();
        }
        assert_eq!(deletes, 1, "member {i}");
    }
    assert_eq!(f.get("kept", None).await.unwrap().count(), 1);
    keep_alive.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_keeps_the_remaining_ttl_of_the_last_checkpoint() {
    let mut c = Cluster::start(1, &["--experimental-lease-checkpoint-interval", "500ms"]).await;
    let mut m = c.client(0).await;
    let id = m.lease_grant(60, None).await.unwrap().id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.restart(0);
    c.wait_serving(0).await;
    let mut m = c.client(0).await;
    let ttl = m.lease_time_to_live(id, None).await.unwrap().ttl();
    // The last checkpoint recorded at most 58 s left; the new leader adds
    // an election timeout (1 s). Without checkpoints it would be 60 + 1.
    assert!((50..=59).contains(&ttl), "ttl after the restart: {ttl}");
}
