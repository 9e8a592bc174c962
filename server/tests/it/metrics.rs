//! `/metrics` read as Prometheus reads it (a parser crate): etcd's names
//! and types, counters that move by what the load did, the
//! `--listen-metrics-urls` listener, and the peers' metrics in a cluster.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use prometheus_parse::{Scrape, Value};

use crate::cluster::Cluster;
use crate::http::request;
use crate::{free_port, Server};

/// One scrape of `addr`'s `/metrics`.
pub(crate) async fn scrape(addr: &str) -> Scrape {
    let a = request(addr, "GET", "/metrics", "").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Scrape::parse(a.body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus's text format")
}

/// A sample's value by name and labels (a histogram's: its count).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b
                .iter()
                .find(|c| c.less_than.is_infinite())
                .map_or(0.0, |c| c.count),
            Value::Summary(_) => f64::NAN,
        })
}

pub(crate) fn v(s: &Scrape, name: &str) -> f64 {
    value(s, name, &[]).unwrap_or_else(|| panic!("{name} is missing"))
}

/// The names the issue asks for on one member (peers come with a
/// cluster), with their Prometheus types as etcd declares them.
const ONE_MEMBER: &[(&str, &str)] = &[
    ("etcd_server_has_leader", "gauge"),
    ("etcd_server_is_leader", "gauge"),
    ("etcd_server_is_learner", "gauge"),
    ("etcd_server_leader_changes_seen_total", "counter"),
    ("etcd_server_proposals_committed_total", "gauge"),
    ("etcd_server_proposals_applied_total", "gauge"),
    ("etcd_server_proposals_pending", "gauge"),
    ("etcd_server_proposals_failed_total", "counter"),
    ("etcd_server_slow_apply_total", "counter"),
    ("etcd_server_id", "gauge"),
    // etcd's alerting rules divide the database size by it.
    ("etcd_server_quota_backend_bytes", "gauge"),
    ("etcd_server_read_indexes_failed_total", "counter"),
    ("etcd_server_health_success", "counter"),
    ("etcd_server_health_failures", "counter"),
    ("etcd_server_version", "gauge"),
    ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
    ("etcd_disk_backend_commit_duration_seconds", "histogram"),
    ("etcd_disk_backend_defrag_duration_seconds", "histogram"),
    ("etcd_disk_backend_snapshot_duration_seconds", "histogram"),
    ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
    ("etcd_mvcc_db_total_size_in_use_in_bytes", "gauge"),
    ("etcd_mvcc_put_total", "counter"),
    ("etcd_mvcc_range_total", "counter"),
    ("etcd_mvcc_txn_total", "counter"),
    ("etcd_mvcc_delete_total", "counter"),
    ("etcd_debugging_mvcc_keys_total", "gauge"),
    ("etcd_debugging_mvcc_watcher_total", "gauge"),
    ("etcd_debugging_mvcc_slow_watcher_total", "gauge"),
    ("etcd_debugging_lease_granted_total", "counter"),
    ("etcd_debugging_server_lease_expired_total", "counter"),
    ("etcd_network_client_grpc_received_bytes_total", "counter"),
    ("etcd_network_client_grpc_sent_bytes_total", "counter"),
    ("grpc_server_started_total", "counter"),
    ("grpc_server_handled_total", "counter"),
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_start_time_seconds", "gauge"),
    ("kvserver_wal_batch_records", "histogram"),
    ("kvserver_backend_commit_pages_freed", "histogram"),
    ("kvserver_backend_free_pages", "gauge"),
    ("kvserver_defrag_running", "gauge"),
    ("kvserver_defrag_nodes_moved_total", "counter"),
];

/// The `# TYPE` of each family in a raw scrape.
fn types(body: &str) -> HashMap<String, String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_etcds_names_and_move_with_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let metrics_url = format!("http://{metrics_addr}");
    let kv = Server::start_with(
        &dir.path().join("kv"),
        &[
            "--listen-metrics-urls",
            &metrics_url,
            "--metrics",
            "extensive",
        ],
    )
    .await;
    let mut c = kv.client().await;
    c.put("warm", "up", None).await.unwrap();

    let raw = request(&kv.endpoint, "GET", "/metrics", "").await.body;
    let declared = types(&raw);
    for (name, kind) in ONE_MEMBER {
        assert_eq!(
            declared.get(*name).map(String::as_str),
            Some(*kind),
            "{name}"
        );
    }
    let before = scrape(&kv.endpoint).await;
    assert_eq!(v(&before, "etcd_server_has_leader"), 1.0);
    assert_eq!(v(&before, "etcd_server_is_leader"), 1.0);
    assert_eq!(v(&before, "etcd_server_is_learner"), 0.0);
    assert_eq!(v(&before, "etcd_server_quota_backend_bytes"), 2147483648.0);
    assert_eq!(
        value(
            &before,
            "etcd_server_version",
            &[("server_version", "3.4.23")]
        ),
        Some(1.0)
    );
    let status = c.status().await.unwrap();
    let id = format!("{:x}", status.header().unwrap().member_id());
    assert_eq!(
        value(&before, "etcd_server_id", &[("server_id", &id)]),
        Some(1.0)
    );
    // Every etcd method's series exist from the start (etcd pre-fills
    // them), with the code by name.
    let handled = |s: &Scrape, method: &str, code: &str| {
        value(
            s,
            "grpc_server_handled_total",
            &[
                ("grpc_method", method),
                ("grpc_code", code),
                ("grpc_type", "unary"),
            ],
        )
        .unwrap_or_else(|| panic!("no handled series for {method} {code}"))
    };
    let _ = handled(&before, "MemberPromote", "Unavailable");

    // The load: 20 puts, 5 ranges, 3 txns of a put and a range, a delete,
    // a refused put, a lease.
    for i in 0..20 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    for _ in 0..5 {
        c.get("k1", None).await.unwrap();
    }
    for i in 0..3 {
        let t = Txn::new()
            .when([Compare::version("k0", CompareOp::Greater, 0)])
            .and_then([
                TxnOp::put(format!("t{i}"), "v", None),
                TxnOp::get("k0", None),
            ]);
        c.txn(t).await.unwrap();
    }
    c.delete("k19", None).await.unwrap();
    assert!(c.put("", "v", None).await.is_err());
    c.lease_grant(60, None).await.unwrap();

    let after = scrape(&kv.endpoint).await;
    let moved = |name: &str| v(&after, name) - v(&before, name);
    assert_eq!(moved("etcd_mvcc_put_total"), 23.0);
    assert_eq!(moved("etcd_mvcc_range_total"), 8.0);
    assert_eq!(moved("etcd_mvcc_txn_total"), 3.0);
    assert_eq!(moved("etcd_mvcc_delete_total"), 1.0);
    assert_eq!(moved("etcd_debugging_lease_granted_total"), 1.0);
    assert_eq!(
        handled(&after, "Put", "OK") - handled(&before, "Put", "OK"),
        20.0
    );
    assert_eq!(
        handled(&after, "Put", "InvalidArgument") - handled(&before, "Put", "InvalidArgument"),
        1.0
    );
    assert_eq!(
        handled(&after, "Txn", "OK") - handled(&before, "Txn", "OK"),
        3.0
    );
    let started = |s: &Scrape| {
        value(
            s,
            "grpc_server_started_total",
            &[
                ("grpc_service", "etcdserverpb.KV"),
                ("grpc_method", "Range"),
            ],
        )
        .unwrap()
    };
    assert_eq!(started(&after) - started(&before), 5.0);
    assert!(moved("etcd_network_client_grpc_received_bytes_total") > 20.0 * 2.0);
    assert!(moved("etcd_network_client_grpc_sent_bytes_total") > 0.0);
    // Each put a durable WAL batch (one client: one at a time), each
    // applied batch a B+tree commit.
    assert!(moved("etcd_disk_wal_fsync_duration_seconds") >= 20.0);
    assert!(moved("kvserver_wal_batch_records") >= 20.0);
    assert!(moved("etcd_disk_backend_commit_duration_seconds") >= 1.0);
    assert!(moved("etcd_server_proposals_committed_total") >= 25.0);
    assert_eq!(
        v(&after, "etcd_server_proposals_applied_total"),
        v(&after, "etcd_server_proposals_committed_total")
    );
    // warm, k0..k18 and t0..t2.
    assert_eq!(v(&after, "etcd_debugging_mvcc_keys_total"), 23.0);
    let rev = c
        .get("k0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(
        v(&after, "etcd_debugging_mvcc_current_revision"),
        rev as f64
    );
    assert!(
        v(&after, "etcd_mvcc_db_total_size_in_bytes")
            >= v(&after, "etcd_mvcc_db_total_size_in_use_in_bytes")
    );
    // --metrics extensive: the handling-time histograms.
    assert!(
        value(
            &after,
            "grpc_server_handling_seconds",
            &[("grpc_method", "Put")]
        )
        .unwrap()
            >= 20.0
    );

    // A defragmentation and a snapshot are timed.
    c.defragment().await.unwrap();
    let mut snap = c.snapshot().await.unwrap();
    while snap.message().await.unwrap().is_some() {}
    let last = scrape(&kv.endpoint).await;
    assert_eq!(v(&last, "etcd_disk_backend_defrag_duration_seconds"), 1.0);
    assert_eq!(v(&last, "etcd_disk_backend_snapshot_duration_seconds"), 1.0);
    assert!(v(&last, "process_resident_memory_bytes") > 1e6);

    // The metrics listener: /metrics and /health, nothing else.
    let m = scrape(&metrics_addr).await;
    assert_eq!(v(&m, "etcd_server_has_leader"), 1.0);
    assert_eq!(
        request(&metrics_addr, "GET", "/health", "").await.status,
        200
    );
    assert!(v(&scrape(&metrics_addr).await, "etcd_server_health_success") >= 1.0);
    for path in ["/version", "/v3/kv/range", "/livez"] {
        assert_eq!(
            request(&metrics_addr, "GET", path, "").await.status,
            404,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_members_report_their_peers_and_one_leader() {
    let mut cl = Cluster::start(3, &[]).await;
    cl.leader(Duration::from_secs(10)).await;
    let ids: Vec<String> = cl.members.iter().map(|m| format!("{:x}", m.id)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut leaders = 0.0;
        let mut ready = true;
        for (i, m) in cl.members.iter().enumerate() {
            let s = scrape(&m.endpoint()).await;
            leaders += v(&s, "etcd_server_is_leader");
            ready &= v(&s, "etcd_server_has_leader") == 1.0;
            ready &= v(&s, "etcd_server_leader_changes_seen_total") >= 1.0;
            for (j, peer) in ids.iter().enumerate() {
                if i == j {
                    continue;
                }
                let to = [("To", peer.as_str())];
                let from = [("From", peer.as_str())];
                let rtt = value(&s, "etcd_network_peer_round_trip_time_seconds", &to);
                ready &= rtt.unwrap_or(0.0) >= 1.0;
                ready &= value(&s, "etcd_network_peer_sent_bytes_total", &to).unwrap_or(0.0) > 0.0;
                ready &=
                    value(&s, "etcd_network_peer_received_bytes_total", &from).unwrap_or(0.0) > 0.0;
            }
        }
        if ready {
            assert_eq!(leaders, 1.0, "one leader");
            break;
        }
        if Instant::now() >= deadline {
            let body = request(&cl.members[0].endpoint(), "GET", "/metrics", "")
                .await
                .body;
            let lines: Vec<&str> = body
                .lines()
                .filter(|l| l.contains("peer") || l.contains("leader"))
                .filter(|l| !l.contains("_bucket"))
                .collect();
            panic!(
                "the peers' metrics did not show (peers {ids:?}):\n{}",
                lines.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A member cut off from the others: no leader, and /health false.
    let ep = cl.members[0].endpoint();
    cl.kill(1);
    cl.kill(2);
    let deadline = Instant::now() + Duration::from_secs(15);
    while v(&scrape(&ep).await, "etcd_server_has_leader") != 0.0 {
        assert!(Instant::now() < deadline, "a leader without a quorum");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(request(&ep, "GET", "/health", "").await.status, 503);
    assert!(v(&scrape(&ep).await, "etcd_server_health_failures") >= 1.0);
}
