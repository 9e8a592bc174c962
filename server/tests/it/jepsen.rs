//! A Jepsen-style linearizability test: clients doing puts, gets and
//! compare-and-swaps on a few keys against every member of a 3-member
//! cluster, while a nemesis kills (SIGKILL), pauses (SIGSTOP/SIGCONT), cuts
//! off, mutes (drops one way) and slows down members one at a time; the recorded history is then checked
//! by [`crate::linearizability`] and must have no violation.
//!
//! It runs for `JEPSEN_SECONDS` (default 60; CI uses the default). For a
//! longer run: `JEPSEN_SECONDS=600 cargo test -p server --test it -- jepsen
//! --nocapture`. `JEPSEN_SEED` replays a nemesis schedule.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::linearizability::{check, CheckResult, Input, Operation, Outcome, Output, Value};

const KEYS: [&str; 3] = ["jepsen/a", "jepsen/b", "jepsen/c"];
const CLIENTS: u32 = 5;
/// A client gives up on an operation after this (its outcome is then
/// unknown); longer than the server's request timeout would only slow the
/// test down.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

fn parse(v: &[u8]) -> Option<Value> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The history of one run: every operation with its call and return
/// times.
pub(crate) struct Recorder {
    pub start: Instant,
    pub history: Mutex<Vec<Operation>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            history: Mutex::new(Vec::new()),
        })
    }

    /// Checks the history for linearizability (panicking with `what` and
    /// the violation) after asserting that more than `min_known`
    /// operations had a known outcome; returns (operations, known).
    pub fn assert_linearizable(&self, what: &str, min_known: usize) -> (usize, usize) {
        let history = self.history.lock().unwrap().clone();
        let known = history
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
            .count();
        assert!(known > min_known, "too few operations completed: {known}");
        let started = Instant::now();
        let result = check(&history);
        eprintln!("{what}: checked in {:?}: {result:?}", started.elapsed());
        match result {
            CheckResult::Ok => (history.len(), known),
            other => panic!("not linearizable ({what}): {other:?}"),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// One client: puts, gets and compare-and-swaps on [`KEYS`] through a
/// member picked from `endpoints` (read again at every reconnect, so a
/// test may change the membership), recorded in `rec` until `stop`.
pub(crate) async fn run_client(
    id: u32,
    endpoints: Arc<Mutex<Vec<String>>>,
    rec: Arc<Recorder>,
    values: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut client: Option<etcd_client::Client> = None;
    let mut last_seen: [Option<Value>; 3] = [None; 3];
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            let ep = {
                let eps = endpoints.lock().unwrap();
                eps[rng.random_range(0..eps.len())].clone()
            };
            let opts = etcd_client::ConnectOptions::new().with_connect_timeout(OP_TIMEOUT);
            match tokio::time::timeout(
                OP_TIMEOUT,
                etcd_client::Client::connect([ep.as_str()], Some(opts)),
            )
            .await
            {
                Ok(Ok(c)) => client = Some(c),
                _ => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let k = rng.random_range(0..KEYS.len());
        let key = KEYS[k].to_string();
        let call = rec.now();
        let (input, outcome) = match rng.random_range(0..10) {
            0..=3 => {
                let value = values.fetch_add(1, Ordering::Relaxed);
                let r =
                    tokio::time::timeout(OP_TIMEOUT, c.put(key.clone(), value.to_string(), None))
                        .await;
                let outcome = match r {
                    Ok(Ok(_)) => Outcome::Ok(Output::Put),
                    _ => Outcome::Unknown,
                };
                (Input::Put { key, value }, outcome)
            }
            4..=6 => {
                let r = tokio::time::timeout(OP_TIMEOUT, c.get(key.clone(), None)).await;
                let outcome = match r {
                    Ok(Ok(r)) => {
                        let v = r.kvs().first().and_then(|kv| parse(kv.value()));
                        last_seen[k] = v;
                        Outcome::Ok(Output::Get(v))
                    }
                    _ => Outcome::Unknown,
                };
                (Input::Get { key }, outcome)
            }
            _ => {
                let expected = last_seen[k];
                let new = values.fetch_add(1, Ordering::Relaxed);
                let cmp = match expected {
                    Some(v) => Compare::value(key.clone(), CompareOp::Equal, v.to_string()),
                    None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                };
                let txn = Txn::new().when([cmp]).and_then([TxnOp::put(
                    key.clone(),
                    new.to_string(),
                    None,
                )]);
                let r = tokio::time::timeout(OP_TIMEOUT, c.txn(txn)).await;
                let outcome = match r {
                    Ok(Ok(r)) => Outcome::Ok(Output::Cas(r.succeeded())),
                    _ => Outcome::Unknown,
                };
                (Input::Cas { key, expected, new }, outcome)
            }
        };
        let ret = rec.now();
        let failed = matches!(outcome, Outcome::Unknown);
        rec.history.lock().unwrap().push(Operation {
            client: id,
            call,
            ret,
            input,
            outcome,
        });
        if failed {
            // The member may be gone: try another.
            client = None;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_under_kills_pauses_and_partitions_are_linearizable() {
    let seconds: u64 = std::env::var("JEPSEN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("JEPSEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("jepsen: {seconds} s, JEPSEN_SEED={seed}");
    let mut c = Cluster::start(3, &[]).await;
    let rec = Recorder::new();
    let endpoints = Arc::new(Mutex::new(c.endpoints()));
    let stop = Arc::new(AtomicBool::new(false));
    let values = Arc::new(AtomicU64::new(1));
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        clients.push(tokio::spawn(run_client(
            id,
            endpoints.clone(),
            rec.clone(),
            values.clone(),
            stop.clone(),
            seed.wrapping_add(id as u64 + 1),
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut faults = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        let victim = rng.random_range(0..3);
        let hold = Duration::from_millis(rng.random_range(500..3000));
        match rng.random_range(0..5) {
            0 => {
                faults.push(format!("kill m{}", victim + 1));
                c.kill(victim);
                tokio::time::sleep(hold).await;
                c.restart(victim);
            }
            1 => {
                faults.push(format!("pause m{}", victim + 1));
                c.pause(victim);
                tokio::time::sleep(hold).await;
                c.resume(victim);
            }
            2 => {
                // One way: what the victim sends is lost, it still hears.
                faults.push(format!("m{} mute", victim + 1));
                let rules: String = (0..3)
                    .filter(|i| *i != victim)
                    .map(|i| format!("drop-out {:x}\n", c.members[i].id))
                    .collect();
                c.faults(victim, &rules);
                tokio::time::sleep(hold).await;
                c.heal();
            }
            3 => {
                let ms = rng.random_range(20..300);
                faults.push(format!("m{} delayed {ms} ms", victim + 1));
                let rules: String = (0..3)
                    .filter(|i| *i != victim)
                    .map(|i| format!("delay {:x} {ms}\n", c.members[i].id))
                    .collect();
                c.faults(victim, &rules);
                tokio::time::sleep(hold).await;
                c.heal();
            }
            _ => {
                faults.push(format!("cut off m{}", victim + 1));
                let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
                c.partition(&[&[victim], &others]);
                tokio::time::sleep(hold).await;
                c.heal();
            }
        }
        // Let the cluster settle before the next fault.
        let _ =
            tokio::time::timeout(Duration::from_secs(10), c.leader(Duration::from_secs(10))).await;
    }
    stop.store(true, Ordering::Relaxed);
    for cl in clients {
        cl.await.unwrap();
    }
    assert!(!faults.is_empty());
    let (ops, known) = rec.assert_linearizable(&format!("jepsen, JEPSEN_SEED={seed}"), 100);
    eprintln!(
        "jepsen: {ops} operations ({known} with a known outcome), faults: {}",
        faults.join(", ")
    );
}
