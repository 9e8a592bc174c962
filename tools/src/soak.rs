//! `bench soak`: a long mixed load that looks for what only time shows
//! (memory that creeps up, a watcher that falls behind, an error once an
//! hour, latency that drifts).
//!
//! `--clients` clients share `--conns` connections and run, for
//! `--duration`, a mix of puts (45 %), ranges (25 %: one key or a prefix,
//! linearizable or serializable), transactions (15 %: a compare on the
//! key's version, one put in either branch) and lease work (15 %: grant a
//! lease and put a key under it, look one up, revoke the oldest; leases
//! not revoked expire on their own). `--watchers` watchers on the soak
//! prefix, from the revision the run starts at, see every change; history
//! is compacted every `--compact-every`.
//!
//! Every `--window` one line reports the window's requests a second, its
//! latency percentiles (hdrhistogram), and, with `--pid`, the member's
//! memory (VmRSS and its anonymous part, from /proc/PID/status) and its
//! CPU time per request (/proc/PID/stat).
//!
//! The run fails (exit status 1) when a request fails, when a watcher does
//! not see exactly one put event per acknowledged put (checked once the
//! load stops and the watchers catch up), when a watch stream ends or is
//! cancelled, or when the member's anonymous memory at the end exceeds
//! what it was after the first window by more than `--max-rss-growth`,
//! or when latency drifts: the median of the windows' p99 over the second
//! half of the run exceeds `--max-latency-drift` times that of the first
//! half (taken as at least 1 ms, so that noise on a fast member is not a
//! drift). Medians over halves see a trend, not one slow window; the
//! bound is loose because client and member share the machine's cores.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use server::pb::etcdserverpb::kv_client::KvClient;
use server::pb::etcdserverpb::lease_client::LeaseClient;
use server::pb::etcdserverpb::watch_client::WatchClient;
use server::pb::etcdserverpb::{
    compare, request_op, watch_request, CompactionRequest, Compare, LeaseGrantRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest,
};
use tonic::transport::Channel;

use crate::bench::{connect, key_for, latency_histogram, BenchArgs};
use crate::output::{print_json, Format};
use crate::Failure;

/// Every key the soak writes starts with this.
const PREFIX: &str = "kvtool-soak/";
/// Leases outstanding before the oldest is revoked.
const MAX_LEASES: usize = 64;

#[derive(clap::Args, Clone)]
pub struct SoakArgs {
    /// How long to run: 60s, 10m, 12h.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Requests a second in all (0: as fast as the clients go).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// The member's process ID: its memory and CPU time are sampled from
    /// /proc, and its memory growth judged.
    #[arg(long)]
    pid: Option<u32>,
    /// Length of one reporting window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Watchers on the soak prefix.
    #[arg(long, default_value_t = 16)]
    watchers: usize,
    /// Watch streams the watchers are spread over.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// How often history is compacted (to the revision of the previous
    /// compaction's time, so one interval of history stays readable).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    compact_every: Duration,
    /// Most growth of the member's anonymous memory, in MiB, from the end
    /// of the first window to the end of the run (needs --pid).
    #[arg(long, default_value_t = 64)]
    max_rss_growth: u64,
    /// Most growth of the windows' median p99 latency, second half of the
    /// run over the first, as a factor (0: latency not judged; judged from
    /// four windows on).
    #[arg(long, default_value_t = 5.0, value_parser = drift_factor)]
    max_latency_drift: f64,
}

fn drift_factor(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 => Ok(f),
        _ => Err(format!("{s:?} is not a factor of 0 or more")),
    }
}

/// The drift of the windows' p99 latency (ms): the median over the second
/// half of `windows` over that of the first (taken as at least 1 ms); None
/// with fewer than four windows.
fn latency_drift(windows: &[serde_json::Value]) -> Option<f64> {
    if windows.len() < 4 {
        return None;
    }
    let median = |ws: &[serde_json::Value]| {
        let mut p99: Vec<f64> = ws
            .iter()
            .filter_map(|w| w["latency_ms"]["p99"].as_f64())
            .collect();
        p99.sort_by(f64::total_cmp);
        p99.get(p99.len() / 2).copied().unwrap_or(0.0)
    };
    let (first, second) = windows.split_at(windows.len() / 2);
    Some(median(second) / median(first).max(1.0))
}

/// What the clients tally, shared.
struct Load {
    /// Latencies (µs) of the current window.
    window: Mutex<Histogram<u64>>,
    /// Latencies (µs) of the whole run.
    whole: Mutex<Histogram<u64>>,
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Acknowledged operations that put exactly one key under the prefix.
    puts: AtomicU64,
    leases: Mutex<VecDeque<i64>>,
}

impl Load {
    fn record(&self, t0: Instant) {
        let micros = (t0.elapsed().as_micros() as u64).max(1);
        for h in [&self.window, &self.whole] {
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            h.saturating_record(micros);
        }
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, what: &str, e: &tonic::Status) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(format!("{what}: {:?}: {}", e.code(), e.message()));
        }
    }
}

/// What a watcher has seen.
#[derive(Default, Clone, Copy)]
struct Seen {
    puts: u64,
    deletes: u64,
    last_rev: i64,
}

/// The member's memory and CPU time, from /proc.
#[derive(Clone, Copy, Default)]
struct Sample {
    rss_kib: u64,
    anon_kib: u64,
    cpu_secs: f64,
}

fn sample(pid: u32) -> Result<Sample, Failure> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| Failure::from(format!("reading /proc/{pid}/status: {e}")))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| Failure::from(format!("reading /proc/{pid}/stat: {e}")))?;
    // Fields after the command name (which may hold spaces, so the last
    // ')' ends it): utime and stime are the 12th and 13th of them.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Sample {
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
        cpu_secs: ticks as f64 / hz,
    })
}

fn soak_key(n: u64, size: usize) -> Vec<u8> {
    let mut k = PREFIX.as_bytes().to_vec();
    k.extend(key_for(n, size));
    k
}

fn prefix_end() -> Vec<u8> {
    let mut end = PREFIX.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

pub fn run(bench: &BenchArgs, args: &SoakArgs, fmt: Format) -> Result<(), Failure> {
    if let Some(pid) = args.pid {
        sample(pid)?;
    }
    if args.window.is_zero() || args.compact_every.is_zero() {
        return Err("--window and --compact-every must be longer than 0".into());
    }
    let rt = crate::snapshot::runtime()?;
    rt.block_on(soak(bench, args, fmt))
}

async fn soak(bench: &BenchArgs, args: &SoakArgs, fmt: Format) -> Result<(), Failure> {
    let channels = connect(bench).await?;
    let mut kv = KvClient::new(channels[0].clone());
    // The run's first revision: every watcher starts there.
    let start_rev = kv
        .range(RangeRequest {
            key: PREFIX.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|e| Failure::from(format!("first range: {}", e.message())))?
        .into_inner()
        .header
        .map_or(0, |h| h.revision)
        + 1;
    let seen: Arc<Vec<Mutex<Seen>>> =
        Arc::new((0..args.watchers).map(|_| Mutex::default()).collect());
    let watch_failure: Arc<Mutex<Option<String>>> = Arc::default();
    let streams = start_watchers(&channels, args, start_rev, &seen, &watch_failure).await?;

    let load = Arc::new(Load {
        window: Mutex::new(latency_histogram()),
        whole: Mutex::new(latency_histogram()),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        puts: AtomicU64::new(0),
        leases: Mutex::new(VecDeque::new()),
    });
    let start = Instant::now();
    let deadline = start + args.duration;
    let slots = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..bench.clients.max(1) {
        let ch = channels[c % channels.len()].clone();
        let (load, slots, bench_keys, val_size, rate) = (
            load.clone(),
            slots.clone(),
            (bench.key_space_size, bench.key_size),
            bench.val_size,
            args.rate,
        );
        clients.push(tokio::spawn(async move {
            client(ch, load, slots, bench_keys, val_size, rate, start, deadline).await
        }));
    }

    // Windows, compactions and samples until the deadline.
    let mut windows = Vec::new();
    let mut baseline: Option<Sample> = None;
    let mut last = args.pid.map(sample).transpose()?.unwrap_or_default();
    let mut last_ok = 0;
    let mut next_compact = start + args.compact_every;
    let mut compact_to = start_rev;
    let mut window_start = start;
    let mut compactions = 0u64;
    while Instant::now() < deadline {
        let window_end = (window_start + args.window).min(deadline);
        while Instant::now() < window_end {
            let now = Instant::now();
            if now >= next_compact {
                compact(&mut kv, &mut compact_to, &load).await;
                compactions += 1;
                next_compact = now + args.compact_every;
            }
            let wake = window_end.min(next_compact);
            tokio::time::sleep_until(wake.into()).await;
        }
        let h = std::mem::replace(
            &mut *load.window.lock().unwrap_or_else(|e| e.into_inner()),
            latency_histogram(),
        );
        let secs = window_start.elapsed().as_secs_f64().max(1e-9);
        let ok = load.ok.load(Ordering::Relaxed);
        let requests = ok - last_ok;
        last_ok = ok;
        let now_sample = args.pid.map(sample).transpose()?;
        let mut line = json!({
            "t_s": start.elapsed().as_secs_f64().round(),
            "requests": requests,
            "per_second": requests as f64 / secs,
            "errors": load.errors.load(Ordering::Relaxed),
            "latency_ms": percentiles(&h),
        });
        if let Some(s) = now_sample {
            let cpu = s.cpu_secs - last.cpu_secs;
            line["rss_mib"] = json!(s.rss_kib as f64 / 1024.0);
            line["anon_mib"] = json!(s.anon_kib as f64 / 1024.0);
            line["server_cpu_us_per_request"] = json!(cpu * 1e6 / requests.max(1) as f64);
            baseline.get_or_insert(s);
            last = s;
        }
        if fmt == Format::Simple {
            println!("{}", window_line(&line));
        }
        windows.push(line);
        window_start = Instant::now();
    }
    for c in clients {
        let _ = c.await;
    }
    let elapsed = start.elapsed();

    // One last put; then every watcher must reach it, having seen one put
    // event for each acknowledged put.
    let mut failures = Vec::new();
    let last_put = kv
        .put(PutRequest {
            key: soak_key(0, bench.key_size),
            value: vec![b'v'; bench.val_size],
            ..Default::default()
        })
        .await;
    let expected_puts = load.puts.load(Ordering::Relaxed) + 1;
    match last_put {
        Ok(r) => {
            let last_rev = r.into_inner().header.map_or(0, |h| h.revision);
            let caught_up = Instant::now() + Duration::from_secs(30);
            let behind = loop {
                let behind = seen
                    .iter()
                    .filter(|s| s.lock().unwrap_or_else(|e| e.into_inner()).last_rev < last_rev)
                    .count();
                if behind == 0 || Instant::now() > caught_up {
                    break behind;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if behind > 0 {
                failures.push(format!(
                    "{behind} watchers never reached revision {last_rev}"
                ));
            }
        }
        Err(e) => failures.push(format!("the last put failed: {}", e.message())),
    }
    for s in streams {
        s.abort();
    }
    let seen: Vec<Seen> = seen
        .iter()
        .map(|s| *s.lock().unwrap_or_else(|e| e.into_inner()))
        .collect();

    let whole = load.whole.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let errors = load.errors.load(Ordering::Relaxed);
    let growth_mib = match (baseline, args.pid) {
        (Some(b), Some(_)) => Some((last.anon_kib as f64 - b.anon_kib as f64) / 1024.0),
        _ => None,
    };
    let drift = latency_drift(&windows);
    let summary = json!({
        "bench": "soak",
        "seconds": elapsed.as_secs_f64(),
        "ok": whole.len(),
        "errors": errors,
        "per_second": whole.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        "latency_ms": percentiles(&whole),
        "compactions": compactions,
        "watchers": seen.len(),
        "put_events_expected": expected_puts,
        "put_events_seen": seen.iter().map(|s| s.puts).collect::<Vec<_>>(),
        "delete_events_seen": seen.first().map_or(0, |s| s.deletes),
        "anon_growth_mib": growth_mib,
        "p99_drift": drift,
        "windows": windows,
    });
    if fmt == Format::Simple {
        println!(
            "soak: {} requests in {:.0} s ({:.0}/s), {errors} errors, {} watchers saw {} puts each",
            whole.len(),
            elapsed.as_secs_f64(),
            summary["per_second"].as_f64().unwrap_or(0.0),
            seen.len(),
            expected_puts,
        );
    }
    print_json(&summary);

    if errors > 0 {
        let first = load.first_error.lock().unwrap_or_else(|e| e.into_inner());
        failures.push(format!(
            "{errors} requests failed, the first with {}",
            first.as_deref().unwrap_or("?")
        ));
    }
    if let Some(w) = watch_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        failures.push(w.clone());
    }
    if let Some(bad) = seen
        .iter()
        .find(|s| failures.is_empty() && s.puts != expected_puts)
    {
        failures.push(format!(
            "a watcher saw {} put events for {expected_puts} acknowledged puts",
            bad.puts
        ));
    }
    if let Some(g) = growth_mib {
        if g > args.max_rss_growth as f64 {
            failures.push(format!(
                "the member's anonymous memory grew by {g:.1} MiB after the first window (limit {} MiB)",
                args.max_rss_growth
            ));
        }
    }
    if let Some(d) = drift {
        if args.max_latency_drift > 0.0 && d > args.max_latency_drift {
            failures.push(format!(
                "p99 latency drifted: the second half's median window p99 is {d:.1}x the first half's (limit {}x)",
                args.max_latency_drift
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |v: u64| v as f64 / 1000.0;
    json!({
        "p50": ms(h.value_at_quantile(0.5)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p99.9": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

fn window_line(w: &serde_json::Value) -> String {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let mut line = format!(
        "{:>6.0} s {:>8.0}/s  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  errors {}",
        f(&w["t_s"]),
        f(&w["per_second"]),
        f(&w["latency_ms"]["p50"]),
        f(&w["latency_ms"]["p99"]),
        f(&w["latency_ms"]["p99.9"]),
        f(&w["latency_ms"]["max"]),
        w["errors"],
    );
    if w.get("rss_mib").is_some() {
        line.push_str(&format!(
            "  rss {:.1} MiB (anon {:.1})  server {:.0} µs/request",
            f(&w["rss_mib"]),
            f(&w["anon_mib"]),
            f(&w["server_cpu_us_per_request"]),
        ));
    }
    line
}

/// Compacts to the revision recorded at the previous compaction, then
/// records the current one for the next.
async fn compact(kv: &mut KvClient<Channel>, compact_to: &mut i64, load: &Load) {
    let t0 = Instant::now();
    match kv
        .compact(CompactionRequest {
            revision: *compact_to,
            physical: false,
        })
        .await
    {
        Ok(r) => {
            load.record(t0);
            if let Some(h) = r.into_inner().header {
                *compact_to = h.revision;
            }
        }
        // Compacting to the same revision twice (nothing was written in
        // between) is etcd's answer, not a failure.
        Err(e) if e.message().contains("required revision has been compacted") => {}
        Err(e) => load.failed("compact", &e),
    }
}

/// One client's loop: picks an operation by weight, waits for its slot
/// when a rate is set, and records the outcome.
#[allow(clippy::too_many_arguments)]
async fn client(
    ch: Channel,
    load: Arc<Load>,
    slots: Arc<AtomicU64>,
    (space, key_size): (u64, usize),
    val_size: usize,
    rate: u64,
    start: Instant,
    deadline: Instant,
) {
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch);
    let value = vec![b'v'; val_size];
    let key = |n: u64| soak_key(n % space.max(1), key_size);
    while Instant::now() < deadline {
        if rate > 0 {
            let slot = slots.fetch_add(1, Ordering::Relaxed);
            let at = start + Duration::from_secs_f64(slot as f64 / rate as f64);
            if at >= deadline {
                return;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        let pick = rand::random::<u64>() % 100;
        let n = rand::random::<u64>();
        let t0 = Instant::now();
        match pick {
            0..45 => match kv
                .put(PutRequest {
                    key: key(n),
                    value: value.clone(),
                    ..Default::default()
                })
                .await
            {
                Ok(_) => {
                    load.puts.fetch_add(1, Ordering::Relaxed);
                    load.record(t0);
                }
                Err(e) => load.failed("put", &e),
            },
            45..70 => {
                let (range_end, limit) = if n.is_multiple_of(2) {
                    (Vec::new(), 0)
                } else {
                    (prefix_end(), 20)
                };
                let req = RangeRequest {
                    key: if limit == 0 {
                        key(n)
                    } else {
                        PREFIX.as_bytes().to_vec()
                    },
                    range_end,
                    limit,
                    serializable: (n >> 8).is_multiple_of(2),
                    ..Default::default()
                };
                match kv.range(req).await {
                    Ok(_) => load.record(t0),
                    Err(e) => load.failed("range", &e),
                }
            }
            70..85 => {
                let k = key(n);
                let put = RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: k.clone(),
                        value: value.clone(),
                        ..Default::default()
                    })),
                };
                let req = TxnRequest {
                    compare: vec![Compare {
                        result: compare::CompareResult::Greater as i32,
                        target: compare::CompareTarget::Version as i32,
                        key: k,
                        target_union: Some(compare::TargetUnion::Version(0)),
                        ..Default::default()
                    }],
                    success: vec![put.clone()],
                    failure: vec![put],
                };
                match kv.txn(req).await {
                    Ok(_) => {
                        load.puts.fetch_add(1, Ordering::Relaxed);
                        load.record(t0);
                    }
                    Err(e) => load.failed("txn", &e),
                }
            }
            _ => lease_op(&mut kv, &mut lease, &load, n, &value).await,
        }
    }
}

/// Grants a lease with a key under it, looks one up, or revokes the
/// oldest; a lease that expired before its lookup or revocation is
/// etcd's "lease not found", which is expected here.
async fn lease_op(
    kv: &mut KvClient<Channel>,
    lease: &mut LeaseClient<Channel>,
    load: &Load,
    n: u64,
    value: &[u8],
) {
    let expired = |e: &tonic::Status| e.message().contains("requested lease not found");
    let t0 = Instant::now();
    let oldest = {
        let mut leases = load.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.len() >= MAX_LEASES {
            leases.pop_front()
        } else {
            None
        }
    };
    if let Some(id) = oldest {
        match lease.lease_revoke(LeaseRevokeRequest { id }).await {
            Ok(_) => load.record(t0),
            Err(e) if expired(&e) => load.record(t0),
            Err(e) => load.failed("lease revoke", &e),
        }
        return;
    }
    if n.is_multiple_of(3) {
        let any = load
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back()
            .copied();
        if let Some(id) = any {
            match lease
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
                .await
            {
                Ok(_) => load.record(t0),
                Err(e) if expired(&e) => load.record(t0),
                Err(e) => load.failed("lease time-to-live", &e),
            }
            return;
        }
    }
    let ttl = 3 + (n % 8) as i64;
    let id = match lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await {
        Ok(r) => r.into_inner().id,
        Err(e) => return load.failed("lease grant", &e),
    };
    load.record(t0);
    let t1 = Instant::now();
    let mut key = format!("{PREFIX}lease/{id:x}").into_bytes();
    key.shrink_to_fit();
    match kv
        .put(PutRequest {
            key,
            value: value.to_vec(),
            lease: id,
            ..Default::default()
        })
        .await
    {
        Ok(_) => {
            load.puts.fetch_add(1, Ordering::Relaxed);
            load.record(t1);
            load.leases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(id);
        }
        // The shortest leases can expire between the grant and the put.
        Err(e) if expired(&e) => load.record(t1),
        Err(e) => load.failed("put with a lease", &e),
    }
}

/// Opens the watchers, all from `start_rev`, and returns the tasks that
/// read their streams.
async fn start_watchers(
    channels: &[Channel],
    args: &SoakArgs,
    start_rev: i64,
    seen: &Arc<Vec<Mutex<Seen>>>,
    failure: &Arc<Mutex<Option<String>>>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Failure> {
    let watchers = args.watchers;
    let streams = args.streams.clamp(1, watchers.max(1));
    let mut tasks = Vec::new();
    let mut first = 0;
    for s in 0..streams {
        let mine = watchers / streams + usize::from(s < watchers % streams);
        let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(mine.max(1));
        let mut client = WatchClient::new(channels[s % channels.len()].clone());
        let mut responses = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| Failure::from(format!("watch: {}", e.message())))?
            .into_inner();
        // Watchers are created one at a time, so the n-th creation answer
        // carries the stream's n-th watcher.
        let mut ids = Vec::new();
        for w in 0..mine {
            tx.send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: PREFIX.as_bytes().to_vec(),
                        range_end: prefix_end(),
                        start_revision: start_rev,
                        ..Default::default()
                    },
                )),
            })
            .await
            .map_err(|e| Failure::from(format!("watch: {e}")))?;
            let created = loop {
                match tokio::time::timeout(Duration::from_secs(30), responses.message()).await {
                    Ok(Ok(Some(r))) if r.created => break r,
                    Ok(Ok(Some(_))) => continue,
                    _ => return Err("a watcher was not created within 30 s".into()),
                }
            };
            ids.push((created.watch_id, first + w));
        }
        first += mine;
        let (seen, failure) = (seen.clone(), failure.clone());
        tasks.push(tokio::spawn(async move {
            let _keep_open = tx;
            let fail = |why: String| {
                failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(why);
            };
            loop {
                let r = match responses.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return fail("a watch stream ended".into()),
                    Err(e) => return fail(format!("a watch stream failed: {}", e.message())),
                };
                if r.canceled || r.compact_revision != 0 {
                    return fail(format!(
                        "watcher {} was cancelled ({}; compacted at {})",
                        r.watch_id, r.cancel_reason, r.compact_revision
                    ));
                }
                let Some(&(_, i)) = ids.iter().find(|(id, _)| *id == r.watch_id) else {
                    continue;
                };
                let mut s = seen[i].lock().unwrap_or_else(|e| e.into_inner());
                for ev in &r.events {
                    let rev = ev.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                    if rev < s.last_rev {
                        return fail(format!(
                            "watcher {} saw revision {rev} after {}",
                            r.watch_id, s.last_rev
                        ));
                    }
                    s.last_rev = rev;
                    if ev.r#type == 0 {
                        s.puts += 1;
                    } else {
                        s.deletes += 1;
                    }
                }
            }
        }));
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(p99: &[f64]) -> Vec<serde_json::Value> {
        p99.iter()
            .map(|p| json!({ "latency_ms": { "p99": p } }))
            .collect()
    }

    #[test]
    fn latency_drift_compares_the_halves_medians_not_one_window() {
        assert_eq!(latency_drift(&windows(&[2.0, 2.0, 2.0])), None);
        // One slow window in the second half is not a drift.
        assert_eq!(
            latency_drift(&windows(&[2.0, 2.0, 2.0, 2.0, 40.0, 2.0])),
            Some(1.0)
        );
        // A trend is.
        assert_eq!(
            latency_drift(&windows(&[2.0, 3.0, 2.0, 12.0, 14.0, 16.0])),
            Some(7.0)
        );
        // A first half under 1 ms counts as 1 ms.
        assert_eq!(latency_drift(&windows(&[0.1, 0.1, 3.0, 3.0])), Some(3.0));
    }

    #[test]
    fn a_drift_factor_is_finite_and_not_negative() {
        assert_eq!(drift_factor("2.5"), Ok(2.5));
        assert_eq!(drift_factor("0"), Ok(0.0));
        for bad in ["-1", "inf", "NaN", "x"] {
            assert!(drift_factor(bad).is_err(), "{bad}");
        }
    }
}
