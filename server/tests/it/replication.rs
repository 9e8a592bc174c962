//! A three-member cluster: one leader, and every member serves writes
//! (forwarded to the leader), linearizable and serializable reads,
//! watches, the member list and status.

use std::time::Duration;

use etcd_client::{GetOptions, WatchOptions};

use crate::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_member_serves_writes_reads_and_watches() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    // A watch on one follower sees what is written through the other.
    let mut w = c.client(other).await;
    let mut events = w
        .watch("k", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let created = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("created in time")
        .unwrap()
        .unwrap();
    assert!(created.created());

    let mut f = c.client(follower).await;
    let put = f.put("k1", "v1", None).await.unwrap();
    let rev = put.header().unwrap().revision();
    assert_eq!(put.header().unwrap().member_id(), c.members[follower].id);
    for i in 0..3 {
        let mut m = c.client(i).await;
        // Linearizable: every member answers with the write just made.
        let r = m.get("k1", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), b"v1", "member {i}");
        assert!(r.header().unwrap().revision() >= rev);
    }
    let t = f
        .txn(etcd_client::Txn::new().and_then([etcd_client::TxnOp::put("k2", "v2", None)]))
        .await
        .unwrap();
    assert!(t.succeeded());

    let resp = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("a watch event in time")
        .unwrap()
        .unwrap();
    assert_eq!(resp.events()[0].kv().unwrap().key(), b"k1");

    // Serializable reads are local, and catch up.
    let mut o = c.client(other).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = o
            .get("k2", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        if r.count() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "k2 never reached member {other}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every member lists every member with its name and URLs, and agrees
    // on the leader; each reports its own ID.
    for i in 0..3 {
        let mut m = c.client(i).await;
        let list = m.member_list().await.unwrap();
        let mut got: Vec<(u64, String, Vec<String>, Vec<String>)> = list
            .members()
            .iter()
            .map(|x| {
                (
                    x.id(),
                    x.name().to_string(),
                    x.peer_urls().to_vec(),
                    x.client_urls().to_vec(),
                )
            })
            .collect();
        got.sort();
        let mut want: Vec<(u64, String, Vec<String>, Vec<String>)> = c
            .members
            .iter()
            .map(|x| {
                (
                    x.id,
                    x.name.clone(),
                    vec![format!("http://127.0.0.1:{}", x.peer_port)],
                    vec![format!("http://{}", x.endpoint())],
                )
            })
            .collect();
        want.sort();
        assert_eq!(got, want, "member list on member {i}");
        let s = m.status().await.unwrap();
        assert_eq!(s.leader(), c.members[leader].id);
        assert_eq!(s.header().unwrap().member_id(), c.members[i].id);
        assert!(s.raft_term() >= 1);
        assert!(s.raft_index() >= s.raft_applied_index() || s.raft_applied_index() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_cluster_commands_reach_every_member() {
    // etcdctl 3.4 dials the member list's client URLs with an :authority
    // that keeps the scheme (`http://127.0.0.1:port`); etcd accepts it and
    // so must kvserver (src/authority.rs).
    let c = Cluster::start(3, &[]).await;
    let ep = c.members[0].endpoint();
    for cmd in [
        &["endpoint", "status", "--cluster"][..],
        &["endpoint", "health", "--cluster"],
        &["endpoint", "hashkv", "--cluster"],
        &["defrag", "--cluster"],
    ] {
        let mut args = vec!["--endpoints", ep.as_str()];
        args.extend_from_slice(cmd);
        let (ok, text) = crate::etcdctl(&args);
        assert!(ok, "etcdctl {cmd:?} failed:\n{text}");
        assert!(!text.contains("PROTOCOL_ERROR"), "{text}");
        for m in &c.members {
            assert!(
                text.contains(&format!("http://{}", m.endpoint())),
                "etcdctl {cmd:?} did not reach {}:\n{text}",
                m.name
            );
        }
    }
}
