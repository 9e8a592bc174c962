//! Durability with real process kills: clients write concurrently and
//! record every acknowledged put with its revision; the server is killed
//! with SIGKILL at random moments and restarted; every acknowledged put is
//! there with the revision it was acknowledged with, and the revision never
//! goes backwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

use crate::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_loses_no_acknowledged_put() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("d")).await;
    let acked: Arc<Mutex<Vec<(String, String, i64)>>> = Default::default();
    let mut highest_seen = 0i64;
    for round in 0..4 {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..8 {
            let mut client = server.client().await;
            let (stop, acked) = (stop.clone(), acked.clone());
            writers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("r{round}/w{w}/{n}");
                    let value = format!("value-{round}-{w}-{n}");
                    match client.put(key.clone(), value.clone(), None).await {
                        Ok(r) => {
                            let rev = r.header().map_or(0, |h| h.revision());
                            acked.lock().unwrap().push((key, value, rev));
                        }
                        // The server is gone: this put is not acknowledged.
                        Err(_) => break,
                    }
                }
            }));
        }
        let pause = rand::rng().random_range(200..800);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        server.restart().await;
        let mut c = server.client().await;
        let acked = acked.lock().unwrap().clone();
        assert!(!acked.is_empty(), "round {round}: nothing was acknowledged");
        for (key, value, rev) in &acked {
            let r = c.get(key.as_str(), None).await.unwrap();
            let kv = r
                .kvs()
                .first()
                .unwrap_or_else(|| panic!("round {round}: acknowledged {key} is gone"));
            assert_eq!(kv.value_str().unwrap(), value);
            assert_eq!(kv.mod_revision(), *rev, "{key}: revision changed");
        }
        let current = c
            .get("probe", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let max_acked = acked.iter().map(|a| a.2).max().unwrap_or(0);
        assert!(
            current >= max_acked,
            "revision {current} below an acknowledged {max_acked}"
        );
        assert!(current >= highest_seen, "the revision went backwards");
        highest_seen = current;
    }
}

/// etcd ignores `--initial-cluster` and the peer URLs on a restart: the
/// WAL says who the member is. A member restarted with a new peer URL
/// (which changes the ID those flags would give it) still leads its
/// cluster and serves linearizable reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_new_peer_urls_keeps_the_member_identity() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = crate::Server::start(dir.path()).await;
    let mut c = s.client().await;
    c.put("k", "v", None).await.unwrap();
    let id = c.status().await.unwrap().header().unwrap().member_id();
    s.peer_port = crate::free_port();
    s.restart().await;
    let mut c = s.client().await;
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), c.get("k", None))
        .await
        .expect("a linearizable read answers")
        .unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");
    assert_eq!(c.status().await.unwrap().header().unwrap().member_id(), id);
}

/// The database is made durable every 100 ms while writes are applied, not
/// only at raft snapshots: after a SIGKILL under load, it holds at least
/// every put acknowledged half a second before the kill, so a restart
/// replays only the last moments from the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_is_made_durable_on_an_interval_not_only_at_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut server = Server::start(&data).await;
    let mut c = server.client().await;
    let mut before = 0;
    for n in 0..500 {
        let r = c.put(format!("early/{n}"), "v", None).await.unwrap();
        before = r.header().unwrap().revision();
    }
    // Writes go on up to the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, mut c) = (stop.clone(), server.client().await);
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if c.put(format!("late/{n}"), "v", None).await.is_err() {
                    break;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    // What the file holds durably (its last synced meta): far beyond the
    // snapshot at start, which is all a database synced only at raft
    // snapshots (every 100,000 entries) would hold.
    let store = mvcc::Store::open(server::datadir::db_path(&data)).unwrap();
    assert!(
        store.current_revision() >= before,
        "the database is at revision {} after the kill; {before} was acknowledged 500 ms before it",
        store.current_revision()
    );
    drop(store);
    server.restart().await;
    let r = server.client().await.get("early/499", None).await.unwrap();
    assert_eq!(r.kvs().len(), 1);
}
