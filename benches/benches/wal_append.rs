//! WAL appends of 256-byte records with 1, 16 and 256 concurrent writers,
//! on every backend, beside the raw rate of 4 KiB write + fdatasync on the
//! same disk, in the same run.
//!
//! Criterion measures appends per second. After it, fixed-length runs of
//! every configuration print appends/s, fdatasyncs/s and p50/p99 latency
//! (criterion has no notion of per-append latency or fsync counts), the
//! ratio of appends/s to the raw fsync rate and to the plain backend.
//! Those runs go round the configurations several times, interleaved, and
//! report medians: on a shared VM one run's figures drift by ±10%.
//!
//! `WAL_BENCH_SECS=N` sets the length of one run (default 2),
//! `WAL_BENCH_ROUNDS=N` the rounds (default 3), and `WAL_BENCH_ONLY=a,b`
//! limits the summary to the configurations whose names contain one of
//! those words (plain always runs: it is the reference).

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wal::{Backend, Metadata, Options, Record, UringMode, Wal};

const RECORD: usize = 256;
const WRITERS: [usize; 3] = [1, 16, 256];

fn configs() -> Vec<(&'static str, Options)> {
    let o = |backend, uring_mode, uring_in_flight| Options {
        backend,
        uring_mode,
        uring_in_flight,
        ..Options::default()
    };
    vec![
        ("plain", o(Backend::Plain, UringMode::WriteThenFdatasync, 1)),
        (
            "plain-no-zero-ahead",
            Options {
                zero_ahead: false,
                ..o(Backend::Plain, UringMode::WriteThenFdatasync, 1)
            },
        ),
        (
            "uring-dsync-write/2",
            o(Backend::IoUring, UringMode::DsyncWrite, 2),
        ),
        (
            "uring-dsync-write/1",
            o(Backend::IoUring, UringMode::DsyncWrite, 1),
        ),
        (
            "uring-linked-fsync/2",
            o(Backend::IoUring, UringMode::LinkedFsync, 2),
        ),
        (
            "uring-write+fdatasync",
            o(Backend::IoUring, UringMode::WriteThenFdatasync, 1),
        ),
    ]
}

fn record(i: u64) -> Record {
    // 256 bytes on disk: 16 header + 16 index/term + 224 data.
    Record::Entry {
        index: i,
        term: 1,
        data: vec![0xab; RECORD - 32],
    }
}

/// Runs `total` appends split over `writers` threads; returns the elapsed
/// time and every append's latency.
fn run_appends(
    w: &Arc<Wal>,
    writers: usize,
    per_writer: u64,
    stop: Option<Duration>,
) -> (Duration, Vec<Duration>) {
    let barrier = Arc::new(Barrier::new(writers + 1));
    let done = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..writers)
        .map(|t| {
            let (w, barrier, done) = (w.clone(), barrier.clone(), done.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per_writer.min(1 << 16) as usize);
                barrier.wait();
                for i in 0..per_writer {
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    let t0 = Instant::now();
                    w.append(vec![record(((t as u64) << 40) | i)])
                        .wait()
                        .expect("append");
                    lat.push(t0.elapsed());
                }
                lat
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    if let Some(limit) = stop {
        std::thread::sleep(limit);
        done.store(true, Ordering::Relaxed);
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.join().expect("writer"));
    }
    (start.elapsed(), lat)
}

/// The same load from async tasks on a two-thread tokio runtime, as the
/// server issues it: waking a task costs far less than waking a thread.
fn run_appends_async(
    w: &Arc<Wal>,
    writers: usize,
    per_writer: u64,
    stop: Option<Duration>,
) -> (Duration, Vec<Duration>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let done = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|t| {
                let (w, done) = (w.clone(), done.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    for i in 0..per_writer {
                        if done.load(Ordering::Relaxed) {
                            break;
                        }
                        let t0 = Instant::now();
                        w.append(vec![record(((t as u64) << 40) | i)])
                            .await
                            .expect("append");
                        lat.push(t0.elapsed());
                    }
                    lat
                })
            })
            .collect();
        if let Some(limit) = stop {
            tokio::time::sleep(limit).await;
            done.store(true, Ordering::Relaxed);
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.expect("task"));
        }
        (start.elapsed(), lat)
    })
}

fn open_log(opts: &Options) -> (tempfile::TempDir, Arc<Wal>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = Wal::create(
        dir.path(),
        Metadata {
            member_id: 1,
            cluster_id: 1,
        },
        opts.clone(),
    )
    .expect("create");
    (dir, Arc::new(w))
}

/// 4 KiB pwrite + fdatasync into a preallocated (sparse) file, `n` times:
/// the raw fsync rate the targets are stated against.
fn raw_fsync(n: u64) -> Duration {
    raw_fsync_into(n, false)
}

/// The same, into a file whose blocks were written first (zeros), so no
/// fdatasync has to commit a block allocation: the fastest a single
/// synchronous writer gets on this disk.
fn raw_fsync_into(n: u64, written: bool) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("raw"))
        .expect("open");
    f.set_len(64 << 20).expect("size");
    if written {
        let zeros = vec![0u8; 1 << 20];
        for i in 0..64 {
            f.write_all_at(&zeros, i << 20).expect("zero");
        }
    }
    f.sync_all().expect("sync");
    let page = [0x5au8; 4096];
    let start = Instant::now();
    for i in 0..n {
        f.write_all_at(&page, (i % 16_000) * 4096).expect("write");
        f.sync_data().expect("fdatasync");
    }
    start.elapsed()
}

/// Whether this kernel lets io_uring run (containers often do not).
fn uring_available() -> bool {
    open_log(&Options::default()).1.backend() != wal::Resolved::Plain
}

/// The configurations this machine can run.
fn runnable() -> Vec<(&'static str, Options)> {
    let uring = uring_available();
    if !uring {
        println!("io_uring unavailable: measuring the plain backend only");
    }
    configs()
        .into_iter()
        .filter(|(_, o)| uring || o.backend != Backend::IoUring)
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_append");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_4k_write_fdatasync", |b| b.iter_custom(raw_fsync));
    for (name, opts) in runnable() {
        let (_dir, w) = open_log(&opts);
        for writers in WRITERS {
            g.bench_function(BenchmarkId::new(format!("{name}/threads"), writers), |b| {
                b.iter_custom(|iters| {
                    run_appends(&w, writers, iters.div_ceil(writers as u64), None).0
                })
            });
            g.bench_function(BenchmarkId::new(format!("{name}/tasks"), writers), |b| {
                b.iter_custom(|iters| {
                    run_appends_async(&w, writers, iters.div_ceil(writers as u64), None).0
                })
            });
        }
    }
    g.finish();
    summary();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One fixed-length run's figures.
struct Run {
    rate: f64,
    fsyncs: f64,
    p50: Duration,
    p99: Duration,
}

fn median_by<T>(runs: &mut [T], key: impl Fn(&T) -> f64) -> &T {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    &runs[runs.len() / 2]
}

/// Whether `WAL_BENCH_ONLY` lets configuration `name` run.
fn wanted(name: &str) -> bool {
    match std::env::var("WAL_BENCH_ONLY") {
        Ok(only) if !only.is_empty() => {
            name == "plain" || only.split(',').any(|w| name.contains(w))
        }
        _ => true,
    }
}

/// Fixed-length runs reporting what criterion cannot: fsyncs and latency.
fn summary() {
    let millis = kvserver_benches::size("WAL_BENCH_SECS", 2, 0) * 1000;
    let millis = if millis == 0 { 50 } else { millis };
    let rounds = kvserver_benches::size("WAL_BENCH_ROUNDS", 3, 1).max(1);
    let n = kvserver_benches::size("WAL_BENCH_RAW", 20_000, 200);
    let configs: Vec<_> = runnable()
        .into_iter()
        .filter(|(name, _)| wanted(name))
        .collect();
    let kinds: Vec<(&str, usize)> = WRITERS
        .iter()
        .flat_map(|&w| [("threads", w), ("tasks", w)])
        .collect();
    let mut raw = Vec::new();
    let mut raw_written = Vec::new();
    let mut runs: Vec<Vec<Vec<Run>>> = configs
        .iter()
        .map(|_| kinds.iter().map(|_| Vec::new()).collect())
        .collect();
    for _ in 0..rounds {
        raw.push(n as f64 / raw_fsync(n).as_secs_f64());
        raw_written.push(n as f64 / raw_fsync_into(n, true).as_secs_f64());
        for (c, (_, opts)) in configs.iter().enumerate() {
            for (k, &(kind, writers)) in kinds.iter().enumerate() {
                let (_dir, w) = open_log(opts);
                let limit = Some(Duration::from_millis(millis));
                let (took, mut lat) = if kind == "threads" {
                    run_appends(&w, writers, u64::MAX, limit)
                } else {
                    run_appends_async(&w, writers, u64::MAX, limit)
                };
                let (batches, _) = w.counters();
                lat.sort_unstable();
                runs[c][k].push(Run {
                    rate: lat.len() as f64 / took.as_secs_f64(),
                    fsyncs: batches as f64 / took.as_secs_f64(),
                    p50: percentile(&lat, 0.5),
                    p99: percentile(&lat, 0.99),
                });
            }
        }
    }
    raw.sort_by(f64::total_cmp);
    raw_written.sort_by(f64::total_cmp);
    let raw_rate = raw[raw.len() / 2];
    let raw_written_rate = raw_written[raw_written.len() / 2];
    println!(
        "\nmedians of {rounds} interleaved rounds of {millis} ms; raw 4 KiB write+fdatasync: \
         {raw_rate:.0}/s into new space (\"x raw\"), {raw_written_rate:.0}/s over written blocks"
    );
    println!(
        "{:<24} {:<8} {:>7} {:>12} {:>12} {:>10} {:>10} {:>7} {:>9} {:>8}",
        "backend",
        "writers",
        "count",
        "appends/s",
        "fsyncs/s",
        "p50",
        "p99",
        "x raw",
        "x written",
        "x plain"
    );
    let plain: Vec<f64> = runs[0]
        .iter_mut()
        .map(|r| median_by(r, |r| r.rate).rate)
        .collect();
    for (c, (name, _)) in configs.iter().enumerate() {
        for (k, &(kind, writers)) in kinds.iter().enumerate() {
            let m = median_by(&mut runs[c][k], |r| r.rate);
            println!(
                "{name:<24} {kind:<8} {writers:>7} {:>12.0} {:>12.0} {:>10.1?} {:>10.1?} {:>7.1} {:>9.1} {:>8.2}",
                m.rate,
                m.fsyncs,
                m.p50,
                m.p99,
                m.rate / raw_rate,
                m.rate / raw_written_rate,
                m.rate / plain[k],
            );
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(10);
    targets = bench
}
criterion_main!(benches);
