//! Killing the leader with SIGKILL under a write load: a new leader within
//! a few election timeouts, clients that retry on another member succeed,
//! no acknowledged write is lost, revisions never go backwards, and the
//! old leader restarts and catches up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// (key, value, revision, when acknowledged)
type Acked = (String, String, i64, Instant);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let endpoints = c.endpoints();
    // A watch on a follower that survives sees every write, in order,
    // across the leader change.
    let watched = (leader + 1) % 3;
    let mut wc = c.client(watched).await;
    let mut watch = wc
        .watch(
            "w",
            Some(
                etcd_client::WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(1),
            ),
        )
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<(String, i64)>>> = Default::default();
    let seen2 = seen.clone();
    let watcher = tokio::spawn(async move {
        while let Ok(Some(r)) = watch.message().await {
            let mut seen = seen2.lock().unwrap();
            for e in r.events() {
                let kv = e.kv().unwrap();
                seen.push((kv.key_str().unwrap().to_string(), kv.mod_revision()));
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Default::default();
    let mut writers = Vec::new();
    for w in 0..6usize {
        let (stop, acked, endpoints) = (stop.clone(), acked.clone(), endpoints.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut at = w % endpoints.len();
            let mut last_rev = 0i64;
            let mut client = None;
            while !stop.load(Ordering::Relaxed) {
                if client.is_none() {
                    client = etcd_client::Client::connect([endpoints[at].as_str()], None)
                        .await
                        .ok();
                }
                let Some(cl) = client.as_mut() else {
                    at = (at + 1) % endpoints.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                n += 1;
                let key = format!("w{w}/{n}");
                let value = format!("v{w}-{n}");
                let put = tokio::time::timeout(
                    Duration::from_secs(3),
                    cl.put(key.clone(), value.clone(), None),
                )
                .await;
                match put {
                    Ok(Ok(r)) => {
                        let rev = r.header().unwrap().revision();
                        assert!(
                            rev > last_rev,
                            "revision went backwards: {last_rev} then {rev}"
                        );
                        last_rev = rev;
                        acked
                            .lock()
                            .unwrap()
                            .push((key, value, rev, Instant::now()));
                    }
                    // Not acknowledged: try another member.
                    _ => {
                        client = None;
                        at = (at + 1) % endpoints.len();
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "writes are not acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = acked.lock().unwrap().len();
    let killed_at = Instant::now();
    c.kill(leader);
    let new_leader = c.leader(Duration::from_secs(10)).await;
    let elected = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    // Writes go on.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first_after = loop {
        let first = acked
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.3 > killed_at)
            .map(|a| a.3 - killed_at);
        if let Some(d) = first {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "no write acknowledged after the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "new leader after {elected:?}, first acknowledged write {first_after:?} after the kill"
    );
    assert!(
        elected < Duration::from_secs(8),
        "election took {elected:?}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    c.restart(leader);
    c.wait_serving(leader).await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > before);
    // Every member, the restarted one included, holds every acknowledged
    // write at its revision (linearizable reads).
    for i in 0..3 {
        let mut cl = c.client(i).await;
        for (key, value, rev, _) in &acked {
            let r = cl.get(key.as_str(), None).await.unwrap();
            let kv = r
                .kvs()
                .first()
                .unwrap_or_else(|| panic!("member {i}: acknowledged {key} is gone"));
            assert_eq!(kv.value(), value.as_bytes());
            assert_eq!(kv.mod_revision(), *rev, "member {i}: {key}");
        }
    }
    // The watch saw every acknowledged write, in revision order, once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = seen.lock().unwrap().clone();
        assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "out of order");
        let all = acked.iter().all(|(k, _, rev, _)| {
            seen.binary_search_by_key(rev, |s| s.1)
                .is_ok_and(|i| seen[i].0 == *k)
        });
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watch on member {watched} missed writes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.abort();
    // The members agree on the whole history.
    let mut hashes = Vec::new();
    let rev = c
        .client(0)
        .await
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    for i in 0..3 {
        let mut cl = c.client(i).await;
        // A linearizable read first: the member has applied up to `rev`.
        cl.get("x", None).await.unwrap();
        hashes.push(cl.hash_kv(rev).await.unwrap().hash());
    }
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "HashKV differs: {hashes:?}"
    );
}
