//! The MVCC layer alone: put, range (1 key and 1000 keys), txn, watch
//! fan-out (one put reaching 10,000 watchers), and how
//! long rebuilding the key index takes when a store of 1M keys opens (the
//! server's restart time).
//!
//! `MVCC_BENCH_KEYS=N` sets the size of the rebuilt store (default 1M).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mvcc::{
    Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, RequestOp, Store, TxnRequest,
    WatchRequest,
};

fn key(i: u64) -> Vec<u8> {
    format!("/registry/pods/default/pod-{i:08}").into_bytes()
}

/// Loads `n` keys, `batch` puts per apply batch.
fn load(store: &Store, n: u64, batch: u64) {
    let mut index = store.consistent_index();
    let mut i = 0;
    while i < n {
        let mut a = store.apply().expect("apply");
        for _ in 0..batch.min(n - i) {
            a.put(&PutRequest {
                key: key(i),
                value: vec![0x5a; 256],
                ..Default::default()
            })
            .expect("put");
            i += 1;
        }
        index += 1;
        a.commit(index).expect("commit");
    }
    store.sync().expect("sync");
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("kv.db")).expect("open");
    load(&store, 10_000, 1000);

    let mut g = c.benchmark_group("mvcc");
    g.throughput(Throughput::Elements(100));
    let mut n = 0u64;
    g.bench_function("put_100_per_batch", |b| {
        b.iter(|| {
            let mut a = store.apply().expect("apply");
            for _ in 0..100 {
                n += 1;
                a.put(&PutRequest {
                    key: key(n % 10_000),
                    value: vec![1; 256],
                    ..Default::default()
                })
                .expect("put");
            }
            a.commit(n).expect("commit");
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("range_1_key", |b| {
        b.iter(|| {
            n += 7919;
            let r = store
                .range(&RangeRequest {
                    key: key(n % 10_000),
                    ..Default::default()
                })
                .expect("range");
            assert_eq!(r.kvs.len(), 1);
        })
    });
    g.bench_function("range_1000_keys", |b| {
        b.iter(|| {
            n += 7919;
            let start = n % 9_000;
            let r = store
                .range(&RangeRequest {
                    key: key(start),
                    range_end: key(start + 1000),
                    ..Default::default()
                })
                .expect("range");
            assert_eq!(r.kvs.len(), 1000);
        })
    });
    g.bench_function("txn_compare_and_put", |b| {
        b.iter(|| {
            n += 1;
            let k = key(n % 10_000);
            let t = TxnRequest {
                compare: vec![Compare {
                    key: k.clone(),
                    range_end: Vec::new(),
                    result: CompareResult::Greater,
                    target: CompareTarget::Version(0),
                }],
                success: vec![RequestOp::Put(PutRequest {
                    key: k,
                    value: vec![2; 256],
                    ..Default::default()
                })],
                failure: vec![],
            };
            let mut a = store.apply().expect("apply");
            assert!(a.txn(&t).expect("txn").succeeded);
            a.commit(n).expect("commit");
        })
    });
    // Watch fan-out: one put to a key that 10,000 watchers watch (100
    // streams of 100 watchers, as 100 clients), until every watcher has
    // its event.
    const STREAMS: usize = 100;
    const PER_STREAM: usize = 100;
    let streams: Vec<_> = (0..STREAMS)
        .map(|_| {
            let (ws, rx) = store.watch_stream(4 * PER_STREAM);
            for _ in 0..PER_STREAM {
                ws.watch(&WatchRequest {
                    key: key(42),
                    ..Default::default()
                })
                .expect("watch");
            }
            (ws, rx)
        })
        .collect();
    let mut receivers: Vec<_> = streams.into_iter().collect();
    g.throughput(Throughput::Elements((STREAMS * PER_STREAM) as u64));
    g.bench_function("watch_fanout_1_put_10000_watchers", |b| {
        b.iter(|| {
            n += 1;
            let mut a = store.apply().expect("apply");
            a.put(&PutRequest {
                key: key(42),
                value: vec![3; 256],
                ..Default::default()
            })
            .expect("put");
            a.commit(n).expect("commit");
            let mut got = 0;
            for (_, rx) in receivers.iter_mut() {
                while let Ok(r) = rx.try_recv() {
                    got += r.events.len();
                }
            }
            assert_eq!(got, STREAMS * PER_STREAM);
        })
    });
    drop(receivers);
    g.finish();

    // Restart: open a store of many keys, rebuilding the index.
    let keys: u64 = kvserver_benches::size("MVCC_BENCH_KEYS", 1_000_000, 2_000);
    let big = tempfile::tempdir().expect("tempdir");
    let path = big.path().join("big.db");
    {
        let s = Store::open(&path).expect("open");
        let t = Instant::now();
        load(&s, keys, 10_000);
        println!("loaded {keys} keys in {:.1?}", t.elapsed());
    }
    let mut g = c.benchmark_group("mvcc_restart");
    g.sample_size(10);
    g.throughput(Throughput::Elements(keys));
    g.bench_function(format!("open_and_rebuild_index_{keys}_keys"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let s = Store::open(&path).expect("open");
                total += t.elapsed();
                // An empty store is at revision 1; each put adds one.
                assert_eq!(s.current_revision(), keys as i64 + 1);
            }
            total
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
