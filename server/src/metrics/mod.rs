//! # /metrics: what a member reports to Prometheus
//!
//! etcd's metrics under etcd's names, types, help texts and histogram
//! buckets (etcd 3.4.23's source), so that etcd's Grafana dashboard and
//! alerting rules work unchanged, plus `kvserver_*` ones this engine makes
//! possible (WAL batch sizes, B+tree page churn, online-defrag progress)
//! and the standard `process_*` collector.
//!
//! - Counters on the hot path are plain atomics ([`prometheus::IntCounter`]),
//!   resolved once (no label lookup per request).
//! - What the member already knows (leader, indexes, sizes, keys,
//!   watchers, revisions) is read when `/metrics` is scraped
//!   ([`Metrics::render`]), not kept up to date on every change.
//! - The gRPC metrics (`grpc_server_*`, bytes to and from clients) come
//!   from [`grpc::GrpcLayer`], a layer over the client port's gRPC routes.
//!
//! ## Invariants
//! - One registry per member (a process that runs members in turn, as the
//!   benchmarks do, starts each from zero).
//! - A metric named as etcd's means what etcd's means; where kvserver's
//!   engine differs the doc comment of the field says how.

pub mod grpc;

use std::sync::atomic::Ordering;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::shared::Shared;

/// etcd's `ExponentialBuckets(start, factor, count)`.
fn buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    exponential_buckets(start, factor, count).unwrap_or_default()
}

/// Every metric of a member.
pub struct Metrics {
    registry: Registry,
    /// One scrape at a time (refreshing reads counters, then adds to them).
    scraping: std::sync::Mutex<()>,
    /// `--metrics extensive`: per-call handling-time histograms too.
    pub extensive: bool,

    // etcd_server_*
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub is_learner: IntGauge,
    pub leader_changes_seen: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub slow_apply: IntCounter,
    pub read_indexes_failed: IntCounter,
    pub slow_read_indexes: IntCounter,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    pub quota_backend_bytes: IntGauge,
    server_id: IntGaugeVec,

    // etcd_disk_*
    /// Each WAL batch's write and fdatasync (one group commit).
    pub wal_fsync: Histogram,
    pub wal_write_bytes: IntGauge,
    /// Each B+tree commit: its pages written, and fsynced when durable.
    pub backend_commit: Histogram,
    pub backend_defrag: Histogram,
    pub backend_snapshot: Histogram,

    // etcd_mvcc_* and etcd_debugging_mvcc_*
    db_size: IntGauge,
    db_size_in_use: IntGauge,
    pub puts: IntCounter,
    pub ranges: IntCounter,
    pub txns: IntCounter,
    pub deletes: IntCounter,
    pub hash: Histogram,
    pub hash_rev: Histogram,
    keys: IntGauge,
    watchers: IntGauge,
    slow_watchers: IntGauge,
    pub watch_streams: IntGauge,
    pub events: IntCounter,
    current_revision: IntGauge,
    compact_revision: IntGauge,

    // etcd_debugging_lease_*
    pub leases_granted: IntCounter,
    pub leases_revoked: IntCounter,
    pub leases_renewed: IntCounter,
    pub lease_ttl: Histogram,
    pub leases_expired: IntCounter,

    // etcd_network_*
    pub peer_rtt: HistogramVec,
    pub peer_sent_bytes: IntCounterVec,
    pub peer_received_bytes: IntCounterVec,
    pub peer_sent_failures: IntCounterVec,
    pub client_received_bytes: IntCounter,
    pub client_sent_bytes: IntCounter,

    // kvserver_*
    /// Records per WAL batch (one fdatasync each).
    pub wal_batch_records: Histogram,
    /// Pages each B+tree commit frees.
    pub pages_freed: Histogram,
    /// Pages each B+tree commit writes.
    pub pages_written: Histogram,
    pub free_pages: IntGauge,
    raft_log_entries: IntGauge,
    /// Time of each `fsync` that makes applied batches durable.
    pub backend_sync: Histogram,
    defrag_running: IntGauge,
    defrag_nodes_moved: IntCounter,
    defrag_pages_above_target: IntGauge,

    pub grpc: grpc::GrpcMetrics,
}

/// Makes metrics and registers them.
struct Registrar<'a> {
    registry: &'a Registry,
}

type R<M> = prometheus::Result<M>;

impl Registrar<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(&mut self, m: M) -> R<M> {
        self.registry.register(Box::new(m.clone()))?;
        Ok(m)
    }

    fn counter(&mut self, name: &str, help: &str) -> R<IntCounter> {
        self.add(IntCounter::new(name, help)?)
    }

    fn gauge(&mut self, name: &str, help: &str) -> R<IntGauge> {
        self.add(IntGauge::new(name, help)?)
    }

    fn histogram(&mut self, name: &str, help: &str, b: Vec<f64>) -> R<Histogram> {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(b),
        )?)
    }

    fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> R<IntCounterVec> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    fn gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> R<IntGaugeVec> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    fn histogram_vec(
        &mut self,
        name: &str,
        help: &str,
        b: Vec<f64>,
        labels: &[&str],
    ) -> R<HistogramVec> {
        self.add(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(b),
            labels,
        )?)
    }
}

/// A metric could not be registered (a name given twice or invalid).
#[derive(Debug, thiserror::Error)]
#[error("registering the metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// A member's metrics, registered and at zero.
    pub fn new(extensive: bool) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let mut r = Registrar {
            registry: &registry,
        };
        let b1 = || buckets(0.001, 2.0, 14);
        let client_received_bytes = r.counter(
            "etcd_network_client_grpc_received_bytes_total",
            "The total number of bytes received from grpc clients.",
        )?;
        let client_sent_bytes = r.counter(
            "etcd_network_client_grpc_sent_bytes_total",
            "The total number of bytes sent to grpc clients.",
        )?;
        let client_requests = r.counter_vec(
            "etcd_server_client_requests_total",
            "The total number of client requests per client version.",
            &["type", "client_api_version"],
        )?;
        let m = Metrics {
            extensive,
            has_leader: r.gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            )?,
            is_leader: r.gauge(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            )?,
            is_learner: r.gauge(
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            )?,
            leader_changes_seen: r.counter(
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            )?,
            proposals_committed: r.gauge(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            )?,
            proposals_applied: r.gauge(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            )?,
            proposals_pending: r.gauge(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            )?,
            proposals_failed: r.counter(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            )?,
            slow_apply: r.counter(
                "etcd_server_slow_apply_total",
                "The total number of slow apply requests (likely overloaded from slow disk).",
            )?,
            read_indexes_failed: r.counter(
                "etcd_server_read_indexes_failed_total",
                "The total number of failed read indexes seen.",
            )?,
            slow_read_indexes: r.counter(
                "etcd_server_slow_read_indexes_total",
                "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
            )?,
            health_success: r.counter(
                "etcd_server_health_success",
                "The total number of successful health checks",
            )?,
            health_failures: r.counter(
                "etcd_server_health_failures",
                "The total number of failed health checks",
            )?,
            quota_backend_bytes: r.gauge(
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes.",
            )?,
            server_id: r.gauge_vec(
                "etcd_server_id",
                "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
                &["server_id"],
            )?,
            wal_fsync: r.histogram(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                b1(),
            )?,
            wal_write_bytes: r.gauge(
                "etcd_disk_wal_write_bytes_total",
                "Total number of bytes written in WAL.",
            )?,
            backend_commit: r.histogram(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                b1(),
            )?,
            backend_defrag: r.histogram(
                "etcd_disk_backend_defrag_duration_seconds",
                "The latency distribution of backend defragmentation.",
                buckets(0.1, 2.0, 13),
            )?,
            backend_snapshot: r.histogram(
                "etcd_disk_backend_snapshot_duration_seconds",
                "The latency distribution of backend snapshots.",
                buckets(0.01, 2.0, 17),
            )?,
            db_size: r.gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            )?,
            db_size_in_use: r.gauge(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            )?,
            puts: r.counter(
                "etcd_mvcc_put_total",
                "Total number of puts seen by this member.",
            )?,
            ranges: r.counter(
                "etcd_mvcc_range_total",
                "Total number of ranges seen by this member.",
            )?,
            txns: r.counter(
                "etcd_mvcc_txn_total",
                "Total number of txns seen by this member.",
            )?,
            deletes: r.counter(
                "etcd_mvcc_delete_total",
                "Total number of deletes seen by this member.",
            )?,
            hash: r.histogram(
                "etcd_mvcc_hash_duration_seconds",
                "The latency distribution of storage hash operation.",
                buckets(0.01, 2.0, 15),
            )?,
            hash_rev: r.histogram(
                "etcd_mvcc_hash_rev_duration_seconds",
                "The latency distribution of storage hash by revision operation.",
                buckets(0.01, 2.0, 15),
            )?,
            keys: r.gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.")?,
            watchers: r.gauge(
                "etcd_debugging_mvcc_watcher_total",
                "Total number of watchers.",
            )?,
            slow_watchers: r.gauge(
                "etcd_debugging_mvcc_slow_watcher_total",
                "Total number of unsynced slow watchers.",
            )?,
            watch_streams: r.gauge(
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
            )?,
            events: r.counter(
                "etcd_debugging_mvcc_events_total",
                "Total number of events sent by this member.",
            )?,
            current_revision: r.gauge(
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
            )?,
            compact_revision: r.gauge(
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
            )?,
            leases_granted: r.counter(
                "etcd_debugging_lease_granted_total",
                "The total number of granted leases.",
            )?,
            leases_revoked: r.counter(
                "etcd_debugging_lease_revoked_total",
                "The total number of revoked leases.",
            )?,
            leases_renewed: r.counter(
                "etcd_debugging_lease_renewed_total",
                "The number of renewed leases seen by the leader.",
            )?,
            lease_ttl: r.histogram(
                "etcd_debugging_lease_ttl_total",
                "Bucketed histogram of lease TTLs.",
                buckets(1.0, 2.0, 24),
            )?,
            leases_expired: r.counter(
                "etcd_debugging_server_lease_expired_total",
                "The total number of expired leases.",
            )?,
            peer_rtt: r.histogram_vec(
                "etcd_network_peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
                buckets(0.0001, 2.0, 16),
                &["To"],
            )?,
            peer_sent_bytes: r.counter_vec(
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                &["To"],
            )?,
            peer_received_bytes: r.counter_vec(
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                &["From"],
            )?,
            peer_sent_failures: r.counter_vec(
                "etcd_network_peer_sent_failures_total",
                "The total number of send failures from peers.",
                &["To"],
            )?,
            client_received_bytes: client_received_bytes.clone(),
            client_sent_bytes: client_sent_bytes.clone(),
            wal_batch_records: r.histogram(
                "kvserver_wal_batch_records",
                "Records made durable by each WAL group commit (one fdatasync each).",
                buckets(1.0, 2.0, 14),
            )?,
            pages_freed: r.histogram(
                "kvserver_backend_commit_pages_freed",
                "Pages each B+tree commit frees (replaced nodes and the old freelist).",
                buckets(1.0, 2.0, 16),
            )?,
            pages_written: r.histogram(
                "kvserver_backend_commit_pages_written",
                "Pages each B+tree commit writes.",
                buckets(1.0, 2.0, 16),
            )?,
            free_pages: r.gauge(
                "kvserver_backend_free_pages",
                "Pages of the database file free for reuse after the last commit.",
            )?,
            raft_log_entries: r.gauge(
                "kvserver_raft_log_entries",
                "Entries of the raft log this member holds in memory.",
            )?,
            backend_sync: r.histogram(
                "kvserver_backend_sync_duration_seconds",
                "The latency distribution of the fsyncs that make applied batches durable.",
                b1(),
            )?,
            defrag_running: r.gauge(
                "kvserver_defrag_running",
                "Whether an online defragmentation is under way. 1 if it is, 0 otherwise.",
            )?,
            defrag_nodes_moved: r.counter(
                "kvserver_defrag_nodes_moved_total",
                "B+tree nodes moved towards the start of the file by online defragmentation.",
            )?,
            defrag_pages_above_target: r.gauge(
                "kvserver_defrag_pages_above_target",
                "Pages between the end the running defragmentation aims for and the file's end.",
            )?,
            grpc: grpc::GrpcMetrics::new(
                &mut r,
                extensive,
                &client_requests,
                (&client_received_bytes, &client_sent_bytes),
            )?,
            registry: registry.clone(),
            scraping: std::sync::Mutex::new(()),
        };
        let version = r.gauge_vec(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            &["server_version"],
        )?;
        version
            .with_label_values(&[crate::api::ETCD_API_VERSION])
            .set(1);
        let cluster_version = r.gauge_vec(
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            &["cluster_version"],
        )?;
        cluster_version.with_label_values(&["3.4"]).set(1);
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// Names this member (`etcd_server_id`).
    /// `quota_bytes` as etcd reports it: the quota in force, or the
    /// negative flag value that turned it off.
    pub fn set_member(&self, member_id: u64, quota_bytes: i64) {
        self.server_id
            .with_label_values(&[&format!("{member_id:x}")])
            .set(1);
        self.quota_backend_bytes.set(quota_bytes);
    }

    /// What a WAL batch made durable.
    pub fn wal_batch(&self, b: &wal::BatchDone) {
        self.wal_fsync.observe(b.took.as_secs_f64());
        self.wal_write_bytes.add(b.bytes as i64);
        self.wal_batch_records.observe(b.records as f64);
    }

    /// What a B+tree commit did.
    pub fn backend_commit(&self, c: &btree::CommitDone) {
        self.backend_commit.observe(c.took.as_secs_f64());
        self.pages_freed.observe(c.pages_freed as f64);
        self.pages_written.observe(c.pages_written as f64);
        self.free_pages.set(c.free_pages as i64);
    }

    /// Counts a transaction's operations as etcd's mvcc counts them: each
    /// range, put and delete of the branches it ran (nested ones too), and
    /// the transaction itself when it ran more than one.
    pub fn txn(
        &self,
        t: &crate::pb::etcdserverpb::TxnRequest,
        r: &crate::pb::etcdserverpb::TxnResponse,
    ) {
        if self.txn_ops(t, r) > 1 {
            self.txns.inc();
        }
    }

    fn txn_ops(
        &self,
        t: &crate::pb::etcdserverpb::TxnRequest,
        r: &crate::pb::etcdserverpb::TxnResponse,
    ) -> usize {
        use crate::pb::etcdserverpb::request_op::Request as R;
        use crate::pb::etcdserverpb::response_op::Response as A;
        let ops = if r.succeeded { &t.success } else { &t.failure };
        let mut n = 0;
        for (op, answer) in ops.iter().zip(&r.responses) {
            match (&op.request, &answer.response) {
                (Some(R::RequestRange(_)), _) => self.ranges.inc(),
                (Some(R::RequestPut(_)), _) => self.puts.inc(),
                (Some(R::RequestDeleteRange(_)), _) => self.deletes.inc(),
                (Some(R::RequestTxn(inner)), Some(A::ResponseTxn(a))) => {
                    n += self.txn_ops(inner, a);
                    continue;
                }
                _ => continue,
            }
            n += 1;
        }
        n
    }

    /// Observes how long `f` took in `h`.
    pub fn time<T>(h: &Histogram, f: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let out = f();
        h.observe(start.elapsed().as_secs_f64());
        out
    }

    /// Reads what the member already knows into the gauges.
    fn refresh(&self, s: &Shared) {
        let leader = s.leader();
        self.has_leader.set(i64::from(leader != 0));
        self.is_leader.set(i64::from(s.is_leader()));
        self.is_learner.set(i64::from(s.is_learner()));
        self.proposals_committed
            .set(s.raft.commit_index.load(Ordering::Relaxed) as i64);
        self.proposals_applied.set(s.applied_index() as i64);
        self.raft_log_entries
            .set(s.raft.log_entries.load(Ordering::Relaxed) as i64);
        let (size, in_use) = s.store.db_size();
        self.db_size.set(size as i64);
        self.db_size_in_use.set(in_use as i64);
        self.keys.set(s.store.key_count() as i64);
        let (synced, unsynced, victims) = s.store.watcher_count();
        self.watchers.set((synced + unsynced + victims) as i64);
        self.slow_watchers.set((unsynced + victims) as i64);
        self.current_revision.set(s.store.current_revision());
        self.compact_revision.set(s.store.compacted_revision());
        let d = s.store.defrag_progress();
        self.defrag_running.set(i64::from(d.running));
        let moved = self.defrag_nodes_moved.get();
        self.defrag_nodes_moved
            .inc_by(d.nodes_moved.saturating_sub(moved));
        self.defrag_pages_above_target
            .set(d.pages_above_target as i64);
    }

    /// The whole registry in Prometheus's text format.
    pub fn render(&self, s: &Shared) -> String {
        use prometheus::Encoder as _;
        let _one = self.scraping.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(s);
        let mut out = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!("encoding the metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
