//! A client that goes away mid-stream frees what it held: its watchers and
//! its keep-alive stream. The server runs in this process here, so the
//! test can count the store's watchers.

use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Client, WatchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_client_leaves_no_watchers_behind() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", crate::free_port());
    let cfg = server::config::Config::parse_from([
        "kvserver",
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
        "--listen-client-urls",
        &url,
        "--listen-peer-urls",
        &peer,
    ]);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (state_tx, state_rx) = tokio::sync::oneshot::channel();
    let running = tokio::spawn(server::run_with_state(
        cfg,
        async move {
            let _ = stop_rx.await;
        },
        Some(state_tx),
    ));
    let shared = state_rx.await.unwrap();
    let endpoint = format!("127.0.0.1:{port}");
    let mut c = Client::connect([endpoint.as_str()], None).await.unwrap();
    let mut streams = Vec::new();
    for key in ["a", "b", "c"] {
        let mut s = c
            .watch(key, Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        s.message().await.unwrap().unwrap();
        streams.push(s);
    }
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let (mut keeper, mut ka) = c.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    ka.message().await.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.store.watcher_count().0 != 3 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            shared.store.watcher_count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The client goes away without cancelling anything.
    drop((streams, keeper, ka, c));
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.store.watcher_count() != (0, 0, 0) {
        assert!(
            Instant::now() < deadline,
            "watchers left behind: {:?}",
            shared.store.watcher_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server still serves others.
    let mut other = Client::connect([endpoint.as_str()], None).await.unwrap();
    other.put("k", "v", None).await.unwrap();
    drop(other);
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}
