//! `bench`: a load generator for the etcd v3 API, after etcd's own
//! benchmark tool. `--conns` gRPC connections are shared by `--clients`
//! concurrent clients, which together issue `--total` requests; every
//! request's latency is recorded. It speaks only the public API, so the
//! same command loads kvserver and real etcd.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use server::pb::etcdserverpb::kv_client::KvClient;
use server::pb::etcdserverpb::watch_client::WatchClient;
use server::pb::etcdserverpb::{
    request_op, watch_request, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchRequest,
};
use tonic::transport::Channel;

use crate::output::{print_json, progress, Format};
use crate::snapshot::{endpoint_url, runtime};
use crate::Failure;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    load: Load,
    /// Members to load, comma separated (connections are spread over them).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub(crate) endpoints: Vec<String>,
    /// gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub(crate) conns: usize,
    /// Concurrent clients (each has one request outstanding at a time).
    #[arg(long, global = true, default_value_t = 1)]
    pub(crate) clients: usize,
    /// Requests in all (10,000 unless given; `soak` runs for a time
    /// instead and refuses it).
    #[arg(long, global = true)]
    total: Option<u64>,
    /// Bytes of each key written.
    #[arg(long, global = true, default_value_t = 8)]
    pub(crate) key_size: usize,
    /// Bytes of each value written.
    #[arg(long, global = true, default_value_t = 8)]
    pub(crate) val_size: usize,
    /// Distinct keys written (chosen at random unless --sequential-keys).
    #[arg(long, global = true, default_value_t = 1)]
    pub(crate) key_space_size: u64,
    /// Write keys 0, 1, 2, ... instead of random ones.
    #[arg(long, global = true)]
    pub(crate) sequential_keys: bool,
}

impl BenchArgs {
    fn total(&self) -> u64 {
        self.total.unwrap_or(10_000)
    }
}

#[derive(clap::Subcommand)]
enum Load {
    /// Puts.
    Put,
    /// Ranges over one key or `[key, end)`.
    Range {
        /// The key read.
        #[arg(default_value = "foo")]
        key: String,
        /// The end of the range (exclusive); one key when absent.
        end: Option<String>,
        /// `l` linearizable (the default) or `s` serializable.
        #[arg(long, default_value = "l")]
        consistency: String,
    },
    /// Transactions of `--txn-ops` puts each (etcd's `txn-put`).
    Txn {
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// Watchers on a prefix, then puts under it: measures how long each
    /// event takes from the put's start to each watcher.
    Watch {
        /// Watchers in all.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Watch streams the watchers are spread over.
        #[arg(long, default_value_t = 10)]
        streams: usize,
    },
    /// A mixed load for a time (puts, ranges, txns, leases, watchers,
    /// compaction), judged on errors, missed events and memory growth.
    Soak(crate::soak::SoakArgs),
}

/// A latency histogram: 1 µs to 10 minutes, three significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

/// Latencies (in microseconds, an HDR histogram to 3 significant digits)
/// and failures of a run.
struct Tally {
    micros: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            micros: latency_histogram(),
            errors: 0,
            first_error: None,
        }
    }
}

impl Tally {
    fn record(&mut self, micros: u64) {
        self.micros.saturating_record(micros.max(1));
    }
    fn merge(&mut self, other: Tally) {
        // Both have the same bounds, and values were clamped to them.
        let _ = self.micros.add(&other.micros);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
    fn failed(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

pub(crate) fn key_for(n: u64, size: usize) -> Vec<u8> {
    let digits = format!("{n:0size$}");
    digits.as_bytes()[digits.len().saturating_sub(size)..].to_vec()
}

struct Keys {
    next: AtomicU64,
    space: u64,
    size: usize,
    sequential: bool,
}

impl Keys {
    fn next(&self) -> Vec<u8> {
        let n = if self.sequential {
            self.next.fetch_add(1, Ordering::Relaxed) % self.space.max(1)
        } else {
            rand::random::<u64>() % self.space.max(1)
        };
        key_for(n, self.size)
    }
}

pub(crate) async fn connect(args: &BenchArgs) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::new();
    for i in 0..args.conns.max(1) {
        let ep = endpoint_url(&args.endpoints[i % args.endpoints.len().max(1)]);
        let channel = tonic::transport::Endpoint::from_shared(ep.clone())
            .map_err(|e| format!("{ep}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("connecting to {ep}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

pub fn run(args: &BenchArgs, fmt: Format) -> Result<(), Failure> {
    if args.endpoints.is_empty() {
        return Err("--endpoints is empty".into());
    }
    let (name, op) = match &args.load {
        Load::Soak(soak) => {
            if args.total.is_some() {
                return Err("--total does not apply to soak, which runs for --duration".into());
            }
            return crate::soak::run(args, soak, fmt);
        }
        Load::Watch { .. } => ("watch", None),
        Load::Put => ("put", Some(Op::Put)),
        Load::Range {
            key,
            end,
            consistency,
        } => (
            "range",
            Some(Op::Range(RangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: end
                    .as_ref()
                    .map(|e| e.as_bytes().to_vec())
                    .unwrap_or_default(),
                serializable: consistency == "s",
                ..Default::default()
            })),
        ),
        Load::Txn { txn_ops } => ("txn", Some(Op::Txn(*txn_ops))),
    };
    let rt = runtime()?;
    let (elapsed, tally) = rt.block_on(async {
        let channels = connect(args).await?;
        match (&args.load, op) {
            (_, Some(op)) => Ok::<_, String>(request_load(args, &channels, op).await),
            (Load::Watch { watchers, streams }, None) => {
                watch_load(args, &channels, *watchers, *streams).await
            }
            (_, None) => Err("this load has no requests of its own".into()),
        }
    })?;
    report(name, args, elapsed, tally, fmt)
}

/// Runs `args.total` requests of `op` from `args.clients` clients.
async fn request_load(args: &BenchArgs, channels: &[Channel], op: Op) -> (Duration, Tally) {
    let issued = Arc::new(AtomicU64::new(0));
    let keys = Arc::new(Keys {
        next: AtomicU64::new(0),
        space: args.key_space_size,
        size: args.key_size,
        sequential: args.sequential_keys,
    });
    let value = vec![b'v'; args.val_size];
    let bar = progress(args.total(), "requests");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        let (issued, keys, value, total, bar, op) = (
            issued.clone(),
            keys.clone(),
            value.clone(),
            args.total(),
            bar.clone(),
            op.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while issued.fetch_add(1, Ordering::Relaxed) < total {
                let t0 = Instant::now();
                let result = match &op {
                    Op::Put => kv
                        .put(PutRequest {
                            key: keys.next(),
                            value: value.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    Op::Range(req) => kv.range(req.clone()).await.map(drop),
                    Op::Txn(n) => kv
                        .txn(TxnRequest {
                            success: (0..*n)
                                .map(|_| RequestOp {
                                    request: Some(request_op::Request::RequestPut(PutRequest {
                                        key: keys.next(),
                                        value: value.clone(),
                                        ..Default::default()
                                    })),
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                };
                match result {
                    Ok(()) => tally.record(t0.elapsed().as_micros() as u64),
                    Err(e) => tally.failed(format!("{:?}: {}", e.code(), e.message())),
                }
                bar.inc(1);
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        match t.await {
            Ok(t) => tally.merge(t),
            Err(e) => tally.failed(e),
        }
    }
    bar.finish_and_clear();
    (start.elapsed(), tally)
}

#[derive(Clone)]
enum Op {
    Put,
    Range(RangeRequest),
    Txn(usize),
}

const WATCH_PREFIX: &str = "kvtool-watch/";

/// Opens `watchers` watchers on a prefix over `streams` streams, then puts
/// `args.total` keys under it, each value carrying its start time; every
/// event's latency is measured at the watcher.
async fn watch_load(
    args: &BenchArgs,
    channels: &[Channel],
    watchers: usize,
    streams: usize,
) -> Result<(Duration, Tally), String> {
    let epoch = Instant::now();
    let streams = streams.clamp(1, watchers.max(1));
    let expected = args.total() * watchers as u64;
    let received = Arc::new(AtomicU64::new(0));
    let mut stream_tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers.max(1));
    // What every watcher saw; shared, so stopping the streams loses nothing.
    let seen = Arc::new(std::sync::Mutex::new(Tally::default()));
    let prefix = WATCH_PREFIX.as_bytes().to_vec();
    let mut end = prefix.clone();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    for s in 0..streams {
        let mine = watchers / streams + usize::from(s < watchers % streams);
        let mut client = WatchClient::new(channels[s % channels.len()].clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(mine.max(1));
        for _ in 0..mine {
            tx.send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: prefix.clone(),
                        range_end: end.clone(),
                        ..Default::default()
                    },
                )),
            })
            .await
            .map_err(|e| e.to_string())?;
        }
        let mut responses = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("watch: {}", e.message()))?
            .into_inner();
        let (received, ready_tx, seen) = (received.clone(), ready_tx.clone(), seen.clone());
        stream_tasks.push(tokio::spawn(async move {
            let _keep_open = tx;
            loop {
                let r = match responses.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(e) => {
                        let mut tally = seen.lock().unwrap_or_else(|e| e.into_inner());
                        tally.failed(format!("watch stream: {}", e.message()));
                        return;
                    }
                };
                if r.created {
                    let _ = ready_tx.send(()).await;
                }
                let now = epoch.elapsed().as_micros() as u64;
                let mut tally = seen.lock().unwrap_or_else(|e| e.into_inner());
                for ev in &r.events {
                    let sent = ev
                        .kv
                        .as_ref()
                        .and_then(|kv| kv.value.get(..8))
                        .and_then(|b| b.try_into().ok())
                        .map_or(now, u64::from_be_bytes);
                    tally.record(now.saturating_sub(sent));
                }
                drop(tally);
                let n = r.events.len() as u64;
                if received.fetch_add(n, Ordering::Relaxed) + n >= expected {
                    return;
                }
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..watchers {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .map_err(|_| "watchers were not all created within 30 s".to_string())?;
    }
    let bar = progress(expected, "events");
    let start = Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    let mut put_tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        let (issued, total, val_size) = (issued.clone(), args.total(), args.val_size.max(8));
        put_tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return tally;
                }
                let mut value = vec![b'v'; val_size];
                value[..8].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_be_bytes());
                let key = format!("{WATCH_PREFIX}{n}").into_bytes();
                if let Err(e) = kv
                    .put(PutRequest {
                        key,
                        value,
                        ..Default::default()
                    })
                    .await
                {
                    tally.failed(format!("put: {}", e.message()));
                }
            }
        }));
    }
    let mut tally = Tally::default();
    for t in put_tasks {
        match t.await {
            Ok(t) => tally.merge(Tally {
                micros: latency_histogram(),
                ..t
            }),
            Err(e) => tally.failed(e),
        }
    }
    // Every event, or give up 30 s after the last put.
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        bar.set_position(received.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let missing = expected.saturating_sub(received.load(Ordering::Relaxed));
    for t in stream_tasks {
        t.abort();
        let _ = t.await;
    }
    tally.merge(std::mem::take(
        &mut *seen.lock().unwrap_or_else(|e| e.into_inner()),
    ));
    if missing > 0 {
        tally.failed(format!("{missing} events never arrived"));
    }
    Ok((elapsed, tally))
}

/// This process's CPU time so far (user + system), seconds: the load
/// generator shares the machine's cores with the server it measures.
fn own_cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the buffer it is given,
    // which is large enough and zero-initialised; it is read only on
    // success.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } == 0;
    if !ok {
        return 0.0;
    }
    // SAFETY: initialised above (zeroed, then filled by getrusage).
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn report(
    name: &str,
    args: &BenchArgs,
    elapsed: Duration,
    tally: Tally,
    fmt: Format,
) -> Result<(), Failure> {
    let h = &tally.micros;
    let n = h.len();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let throughput = n as f64 / secs;
    let avg = if n == 0 { 0.0 } else { h.mean() / 1000.0 };
    let pct: Vec<(f64, u64)> = [50.0, 90.0, 99.0, 99.9]
        .iter()
        .map(|p| (*p, if n == 0 { 0 } else { h.value_at_percentile(*p) }))
        .collect();
    let (min, max) = if n == 0 { (0, 0) } else { (h.min(), h.max()) };
    let summary = json!({
        "bench": name,
        "endpoints": args.endpoints, "conns": args.conns, "clients": args.clients,
        "total": args.total(), "ok": n, "errors": tally.errors,
        "seconds": secs, "per_second": throughput,
        "cpu_seconds": own_cpu_seconds(),
        "latency_ms": {
            "avg": avg, "min": ms(min), "p50": ms(pct[0].1), "p90": ms(pct[1].1),
            "p99": ms(pct[2].1), "p99.9": ms(pct[3].1), "max": ms(max),
        },
    });
    if fmt == Format::Simple {
        println!("Summary ({name}):");
        println!("  Total:\t{secs:.4} secs.");
        println!("  Slowest:\t{:.4} ms.", ms(max));
        println!("  Fastest:\t{:.4} ms.", ms(min));
        println!("  Average:\t{avg:.4} ms.");
        println!("  Requests/sec:\t{throughput:.2}");
        println!("  Errors:\t{}", tally.errors);
        if let Some(e) = &tally.first_error {
            println!("  First error:\t{e}");
        }
        println!();
        println!("Response time histogram (ms):");
        let buckets = 10u64;
        let width = (max - min).max(1).div_ceil(buckets);
        let counts: Vec<u64> = (0..buckets)
            .map(|i| {
                let low = min + width * i;
                let high = if i + 1 == buckets {
                    max
                } else {
                    low + width - 1
                };
                h.count_between(low, high)
            })
            .collect();
        let most = counts.iter().copied().max().unwrap_or(1).max(1);
        for (i, c) in counts.iter().enumerate() {
            let upper = min + width * (i as u64 + 1);
            println!(
                "  {:>10.3} [{:>8}]\t|{}",
                ms(upper),
                c,
                "∎".repeat((c * 40 / most) as usize)
            );
        }
        println!();
        println!("Latency distribution:");
        for (p, v) in &pct {
            println!("  {p}% in {:.4} ms.", ms(*v));
        }
    }
    print_json(&summary);
    if n == 0 && tally.errors > 0 {
        return Err(format!(
            "every request failed: {}",
            tally.first_error.unwrap_or_default()
        )
        .into());
    }
    Ok(())
}
