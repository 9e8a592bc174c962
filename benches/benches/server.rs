//! Through the gRPC API on a running one-member server (in this process,
//! on a loopback port): serializable vs linearizable single-key Range with
//! 1 and 64 concurrent clients, Put, and Txn.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use server::pb::etcdserverpb as pb;
use server::pb::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

struct Running {
    runtime: tokio::runtime::Runtime,
    endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start() -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let cfg = server::config::Config::parse_from([
        "kvserver",
        "--name",
        "bench",
        "--data-dir",
        dir.path().join("data").to_str().expect("utf-8 path"),
        "--listen-client-urls",
        &url,
        "--listen-peer-urls",
        &peer,
    ]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            server::run(cfg, async move {
                let _ = stopped.await;
            })
            .await
            .expect("server");
        });
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let endpoint = url.clone();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = KvClient::connect(endpoint.clone()).await {
                if c.range(range(true)).await.is_ok() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    Running {
        runtime,
        endpoint,
        stop: Some(stop),
        done: Some(done),
        _dir: dir,
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = d.join();
        }
    }
}

fn range(serializable: bool) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b"bench/key".to_vec(),
        serializable,
        ..Default::default()
    }
}

fn put(i: u64) -> pb::PutRequest {
    pb::PutRequest {
        key: format!("bench/put/{}", i % 10_000).into_bytes(),
        value: vec![7; 256],
        ..Default::default()
    }
}

/// Runs `iters` calls of `call` spread over `clients` concurrent tasks
/// (sharing 8 connections) and returns the elapsed time.
fn concurrent<F, Fut>(s: &Running, clients: u64, iters: u64, call: F) -> Duration
where
    F: Fn(KvClient<Channel>, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    s.runtime.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..8.min(clients) {
            conns.push(
                KvClient::connect(s.endpoint.clone())
                    .await
                    .expect("connect"),
            );
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..clients {
            let client = conns[(t % conns.len() as u64) as usize].clone();
            let call = call.clone();
            let n = iters / clients + u64::from(t < iters % clients);
            tasks.push(tokio::spawn(async move {
                for i in 0..n {
                    call(client.clone(), t * 1_000_000 + i).await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("client task");
        }
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let s = start();
    s.runtime.block_on(async {
        let mut kv = KvClient::connect(s.endpoint.clone())
            .await
            .expect("connect");
        kv.put(pb::PutRequest {
            key: b"bench/key".to_vec(),
            value: vec![1; 256],
            ..Default::default()
        })
        .await
        .expect("put");
    });
    let mut g = c.benchmark_group("server");
    g.throughput(Throughput::Elements(1));
    for clients in [1u64, 64] {
        for (name, serializable) in [("serializable", true), ("linearizable", false)] {
            g.bench_function(format!("range_{name}_{clients}_clients"), |b| {
                b.iter_custom(|iters| {
                    concurrent(&s, clients, iters, move |mut kv, _| async move {
                        kv.range(range(serializable)).await.expect("range");
                    })
                })
            });
        }
        g.bench_function(format!("put_{clients}_clients"), |b| {
            b.iter_custom(|iters| {
                concurrent(&s, clients, iters, |mut kv, i| async move {
                    kv.put(put(i)).await.expect("put");
                })
            })
        });
    }
    g.bench_function("txn_1_client", |b| {
        b.iter_custom(|iters| {
            concurrent(&s, 1, iters, |mut kv, i| async move {
                let key = format!("bench/txn/{}", i % 1000).into_bytes();
                let t = pb::TxnRequest {
                    compare: vec![pb::Compare {
                        key: key.clone(),
                        target: pb::compare::CompareTarget::Version as i32,
                        result: pb::compare::CompareResult::Greater as i32,
                        target_union: Some(pb::compare::TargetUnion::Version(-1)),
                        ..Default::default()
                    }],
                    success: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key,
                            value: vec![2; 256],
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                };
                kv.txn(t).await.expect("txn");
            })
        })
    });
    g.finish();
    drop(s);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
