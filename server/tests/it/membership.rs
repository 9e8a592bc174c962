//! Membership changes on running clusters: growing and shrinking under
//! load (checked for linearizability and lost writes), replacing a failed
//! member, learners, removing the leader, moving a member's peer URL,
//! MoveLeader, and etcd's errors for what is refused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use crate::cluster::Cluster;
use crate::jepsen::{run_client, Recorder};

/// Writes `load/<n>` keys through random members until stopped; returns
/// the keys whose puts were acknowledged.
fn acked_writer(
    endpoints: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut n = 0u64;
        let mut client: Option<Client> = None;
        while !stop.load(Ordering::Relaxed) {
            if client.is_none() {
                let ep = {
                    let eps = endpoints.lock().unwrap();
                    eps[n as usize % eps.len()].clone()
                };
                client = tokio::time::timeout(Duration::from_secs(2), Client::connect([ep], None))
                    .await
                    .ok()
                    .and_then(Result::ok);
                if client.is_none() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    n += 1;
                    continue;
                }
            }
            let Some(c) = client.as_mut() else { continue };
            let key = format!("load/{n:06}");
            n += 1;
            match tokio::time::timeout(Duration::from_secs(2), c.put(key.clone(), "x", None)).await
            {
                Ok(Ok(_)) => acked.push(key),
                _ => client = None,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acked
    })
}

/// Every acknowledged key is on member `i` (a serializable read there,
/// once it has caught up with the latest revision).
async fn assert_has_all(c: &Cluster, i: usize, acked: &[String]) {
    let mut cl = c.client(i).await;
    let latest = {
        let mut l = c
            .client(c.members.iter().position(|m| m.pid().is_some()).unwrap())
            .await;
        l.get("load/", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = cl
            .get(
                "load/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_serializable(),
                ),
            )
            .await
            .unwrap();
        if r.header().unwrap().revision() >= latest {
            let have: std::collections::HashSet<&[u8]> =
                r.kvs().iter().map(|kv| kv.key()).collect();
            let lost: Vec<&String> = acked
                .iter()
                .filter(|k| !have.contains(k.as_bytes()))
                .collect();
            assert!(
                lost.is_empty(),
                "m{} lost acknowledged writes: {lost:?}",
                i + 1
            );
            return;
        }
        assert!(Instant::now() < deadline, "m{} did not catch up", i + 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HashKV of every member in `members` at the same revision.
async fn hashes(c: &Cluster, members: &[usize]) -> Vec<u32> {
    let mut first = c.client(members[0]).await;
    let rev = first
        .get("any", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut out = Vec::new();
    for &i in members {
        let mut cl = c.client(i).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = cl
                .get("any", Some(GetOptions::new().with_serializable()))
                .await
                .unwrap();
            if r.header().unwrap().revision() >= rev {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "m{} did not reach revision {rev}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        out.push(cl.hash_kv(rev).await.unwrap().hash());
    }
    out
}

fn status_of(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a gRPC status: {other}"),
    }
}

async fn member_names(c: &Cluster, via: usize) -> Vec<(u64, String, bool)> {
    let mut cl = c.client(via).await;
    let mut list: Vec<(u64, String, bool)> = cl
        .member_list()
        .await
        .unwrap()
        .members()
        .iter()
        .map(|m| (m.id(), m.name().to_string(), m.is_learner()))
        .collect();
    list.sort();
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn growing_1_to_3_to_5_and_shrinking_to_3_under_load_is_linearizable_and_loses_nothing() {
    let mut c = Cluster::start(1, &[]).await;
    let endpoints = Arc::new(Mutex::new(c.endpoints()));
    let rec = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let values = Arc::new(AtomicU64::new(1));
    let mut clients = Vec::new();
    for id in 0..4 {
        clients.push(tokio::spawn(run_client(
            id,
            endpoints.clone(),
            rec.clone(),
            values.clone(),
            stop.clone(),
            rand::random(),
        )));
    }
    let writer = acked_writer(endpoints.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    for _ in 0..4 {
        let via = c.leader(Duration::from_secs(10)).await;
        let i = c.add_member(via, false).await;
        c.wait_serving(i).await;
        endpoints.lock().unwrap().push(c.members[i].endpoint());
    }
    assert_eq!(member_names(&c, 0).await.len(), 5);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Shrink: the first two go, whoever leads.
    for gone in [0, 1] {
        endpoints
            .lock()
            .unwrap()
            .retain(|e| *e != c.members[gone].endpoint());
        let via = (2..5).find(|i| c.members[*i].pid().is_some()).unwrap();
        c.remove_member(via, gone).await;
        let code = c.wait_exit(gone, Duration::from_secs(15)).await;
        assert_eq!(code, Some(0), "m{}:\n{}", gone + 1, c.log_tail(gone));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for cl in clients {
        cl.await.unwrap();
    }
    let acked = writer.await.unwrap();

    let list = member_names(&c, 2).await;
    assert_eq!(
        list.iter()
            .map(|m| m.0)
            .collect::<std::collections::BTreeSet<_>>(),
        (2..5).map(|i| c.members[i].id).collect()
    );
    for i in 2..5 {
        assert_has_all(&c, i, &acked).await;
    }
    let h = hashes(&c, &[2, 3, 4]).await;
    assert!(h.windows(2).all(|w| w[0] == w[1]), "HashKV differs: {h:x?}");

    assert!(
        acked.len() > 50,
        "too few writes acknowledged: {}",
        acked.len()
    );
    let (ops, known) = rec.assert_linearizable("membership", 50);
    eprintln!(
        "membership: {ops} operations ({known} known), {} acknowledged writes",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_member_is_replaced_by_a_new_one() {
    let mut c = Cluster::start(3, &["--snapshot-count", "50"]).await;
    let mut cl = c.client(0).await;
    for i in 0..200 {
        cl.put(format!("before/{i}"), "v", None).await.unwrap();
    }
    // m3 is lost for good; a member that is down may be removed at once.
    c.kill(2);
    c.remove_member(0, 2).await;
    let i = c.add_member(0, false).await;
    c.wait_serving(i).await;
    let mut n = c.client(i).await;
    n.put("after", "replaced", None).await.unwrap();
    let r = n
        .get(
            "before/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), 200);
    let list = member_names(&c, 1).await;
    let expected: Vec<u64> = {
        let mut v = vec![c.members[0].id, c.members[1].id, c.members[i].id];
        v.sort();
        v
    };
    assert_eq!(list.iter().map(|m| m.0).collect::<Vec<_>>(), expected);
    assert!(list.iter().all(|m| !m.1.is_empty() && !m.2), "{list:?}");
    let h = hashes(&c, &[0, 1, i]).await;
    assert!(h.windows(2).all(|w| w[0] == w[1]), "HashKV differs: {h:x?}");
    // The membership survives restarts: the new member (which started
    // from a snapshot) and an original one come back with the same list.
    for m in [i, 0] {
        c.restart(m);
        c.wait_serving(m).await;
        assert_eq!(
            member_names(&c, m).await,
            list,
            "after restarting m{}",
            m + 1
        );
    }
    let mut n = c.client(i).await;
    n.put("after", "restarts", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_serves_stale_reads_refuses_writes_and_is_promoted_once_caught_up() {
    let mut c = Cluster::start(3, &[]).await;
    let mut cl = c.client(0).await;
    for i in 0..100 {
        cl.put(format!("k/{i}"), "v", None).await.unwrap();
    }
    let i = c.add_member(0, true).await;
    let learner = c.members[i].id;
    // Promotion is refused until the learner has caught up; it may
    // already have by the first try, so the refusal is checked on a
    // learner that is not running at all first.
    c.kill(i);
    let (code, msg) = status_of(cl.member_promote(learner).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader"
        )
    );
    c.restart(i);
    c.wait_serving(i).await;
    let mut l = c.client(i).await;
    let r = l
        .get("k/99", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"v");
    assert!(l.status().await.unwrap().is_learner());
    for e in [
        l.put("x", "y", None).await.map(|_| ()).unwrap_err(),
        l.get("k/1", None).await.map(|_| ()).unwrap_err(),
        l.member_list().await.map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(
            status_of(e),
            (
                tonic::Code::Unavailable,
                "etcdserver: rpc not supported for learner".to_string()
            )
        );
    }
    let list = member_names(&c, 0).await;
    assert!(list.contains(&(learner, "m4".into(), true)), "{list:?}");

    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = cl.member_promote(learner).await {
        assert!(Instant::now() < deadline, "never promoted: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The promoted member learns it when it applies the change.
    let deadline = Instant::now() + Duration::from_secs(10);
    while l.status().await.unwrap().is_learner() {
        assert!(Instant::now() < deadline, "m4 still a learner");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    l.put("x", "y", None).await.unwrap();
    assert!(member_names(&c, 1).await.iter().all(|m| !m.2));
    // A follower passes a promotion on to the leader: the answer is the
    // leader's.
    let follower = (c.leader(Duration::from_secs(5)).await + 1) % 3;
    let mut f = c.client(follower).await;
    let (code, msg) = status_of(f.member_promote(learner).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: can only promote a learner member"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_the_leader_hands_leadership_on_and_it_stops() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let via = (leader + 1) % 3;
    c.remove_member(via, leader).await;
    assert_eq!(c.wait_exit(leader, Duration::from_secs(10)).await, Some(0));
    assert!(c
        .log(leader)
        .contains("the member has been permanently removed from the cluster"));
    let new = c.leader(Duration::from_secs(10)).await;
    assert_ne!(new, leader);
    let mut cl = c.client(via).await;
    cl.put("after", "removal", None).await.unwrap();
    assert_eq!(member_names(&c, via).await.len(), 2);
    // Restarting the removed member: its peers refuse it and it stops.
    c.restart(leader);
    assert_eq!(c.wait_exit(leader, Duration::from_secs(15)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_moves_to_a_new_peer_url() {
    let mut c = Cluster::start(3, &[]).await;
    let port = crate::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut cl = c.client(0).await;
    let id = c.members[2].id;
    let r = cl.member_update(id, vec![url.clone()]).await.unwrap();
    let moved = r.members().iter().find(|m| m.id() == id).unwrap();
    assert_eq!(moved.peer_urls(), std::slice::from_ref(&url));
    c.kill(2);
    c.members[2].peer_port = port;
    c.restart(2);
    c.wait_serving(2).await;
    // m3 is reached on its new URL: a write through it, a linearizable
    // read on it.
    let mut m3 = c.client(2).await;
    m3.put("moved", "yes", None).await.unwrap();
    assert_eq!(
        m3.get("moved", None).await.unwrap().kvs()[0].value(),
        b"yes"
    );
    c.kill(1);
    // With m2 down, m1 and m3 make the quorum over m3's new URL (after an
    // election if m2 led).
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = cl.put("quorum", "m1+m3", None).await {
        assert!(Instant::now() < deadline, "no quorum of m1 and m3: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_leader_hands_leadership_to_each_member_in_turn_under_load() {
    let mut c = Cluster::start(3, &[]).await;
    let endpoints = Arc::new(Mutex::new(c.endpoints()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = acked_writer(endpoints, stop.clone());
    for round in 0..3 {
        let leader = c.leader(Duration::from_secs(10)).await;
        let target = (leader + 1) % 3;
        let mut l = c.client(leader).await;
        l.move_leader(c.members[target].id).await.unwrap();
        assert_eq!(
            c.leader(Duration::from_secs(10)).await,
            target,
            "round {round}"
        );
    }
    let leader = c.leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let mut f = c.client(follower).await;
    assert_eq!(
        status_of(f.move_leader(c.members[leader].id).await.unwrap_err()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: not leader".to_string()
        )
    );
    let mut l = c.client(leader).await;
    assert_eq!(
        status_of(l.move_leader(0x1234abcd).await.unwrap_err()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: bad leader transferee".to_string()
        )
    );
    let learner = c.add_member(leader, true).await;
    assert_eq!(
        status_of(l.move_leader(c.members[learner].id).await.unwrap_err()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: bad leader transferee".to_string()
        )
    );
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(!acked.is_empty());
    for i in 0..3 {
        assert_has_all(&c, i, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_membership_changes_carry_etcds_errors() {
    let mut c = Cluster::start(3, &[]).await;
    // --strict-reconfig-check refuses every change until the members have
    // been connected for 5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut cl = c.client(0).await;
    let err = |r: Result<(), etcd_client::Error>| status_of(r.unwrap_err());
    let fp = tonic::Code::FailedPrecondition;
    let taken = format!("http://127.0.0.1:{}", c.members[1].peer_port);
    assert_eq!(
        err(cl.member_add([taken], None).await.map(|_| ())),
        (fp, "etcdserver: Peer URLs already exists".into())
    );
    assert_eq!(
        err(cl.member_add(["not a url"], None).await.map(|_| ())),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: given member URLs are invalid".into()
        )
    );
    assert_eq!(
        err(cl.member_remove(0x1234abcd).await.map(|_| ())),
        (tonic::Code::NotFound, "etcdserver: member not found".into())
    );
    assert_eq!(
        err(cl
            .member_update(0x1234abcd, vec!["http://127.0.0.1:1".to_string()])
            .await
            .map(|_| ())),
        (tonic::Code::NotFound, "etcdserver: member not found".into())
    );
    assert_eq!(
        err(cl.member_promote(c.members[1].id).await.map(|_| ())),
        (fp, "etcdserver: can only promote a learner member".into())
    );
    c.add_member(0, true).await;
    // A URL no member has (the learner's port is not bound, so the kernel
    // may hand it out again), and, as `add_member` does, the member's
    // health check given time if a busy machine made a peer reconnect.
    let taken: Vec<String> = cl
        .member_list()
        .await
        .unwrap()
        .members()
        .iter()
        .flat_map(|m| m.peer_urls().to_vec())
        .collect();
    let other = std::iter::repeat_with(|| format!("http://127.0.0.1:{}", crate::free_port()))
        .find(|u| !taken.contains(u))
        .unwrap();
    assert_eq!(
        err(
            crate::cluster::member_add_when_healthy(&mut cl, &other, true)
                .await
                .map(|_| ())
        ),
        (fp, "etcdserver: too many learner members in cluster".into())
    );

    // --strict-reconfig-check: with m3 down, adding a voter is refused as
    // unhealthy, and so is removing a live voter (the quorum would rest on
    // every remaining member).
    let leader = c.leader(Duration::from_secs(10)).await;
    let down = if leader == 2 { 1 } else { 2 };
    let live = 3 - leader - down;
    c.kill(down);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut cl = c.client(leader).await;
    let unhealthy = (
        tonic::Code::Unavailable,
        "etcdserver: unhealthy cluster".to_string(),
    );
    assert_eq!(
        err(cl.member_add([other.clone()], None).await.map(|_| ())),
        unhealthy
    );
    assert_eq!(
        err(cl.member_remove(c.members[live].id).await.map(|_| ())),
        unhealthy
    );

    // A member that was never added, started with `existing`, says so and
    // stops.
    let dir = tempfile::tempdir().unwrap();
    let (cport, pport) = (crate::free_port(), crate::free_port());
    let (client, peer) = (
        format!("http://127.0.0.1:{cport}"),
        format!("http://127.0.0.1:{pport}"),
    );
    let initial = format!(
        "stray={peer},m1=http://127.0.0.1:{}",
        c.members[0].peer_port
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvserver"))
        .args(["--name", "stray", "--data-dir"])
        .arg(dir.path().join("stray"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args([
            "--initial-cluster",
            &initial,
            "--initial-cluster-state",
            "existing",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is not in the cluster"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_strict_reconfig_check_a_change_goes_through_with_a_member_down() {
    let mut c = Cluster::start(3, &["--strict-reconfig-check=false"]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    c.kill((leader + 1) % 3);
    let mut cl = c.client(leader).await;
    let url = format!("http://127.0.0.1:{}", crate::free_port());
    let r = cl.member_add([url], None).await.unwrap();
    assert_eq!(r.member_list().len(), 4);
}
