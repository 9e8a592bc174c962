//! # kvserver: etcd's v3 API on raft-rs, the wal crate and the mvcc crate
//!
//! The server a client talks to. A write goes: gRPC handler ([`api`]) →
//! raft proposal ([`raft`], forwarded to the leader from a follower) → the
//! leader's WAL, fsynced, and the followers' ([`transport`]) → committed
//! once a quorum has it durable → applied to mvcc on every member
//! ([`raft::applier`], [`apply`]) → B+tree → answered by the member the
//! client called. A linearizable read: ReadIndex at the leader → wait
//! until applied here → read an mvcc snapshot. A serializable read skips
//! the ReadIndex.
//!
//! ## Layout
//! - [`config`]: etcd's flags; [`datadir`]: where files live.
//! - [`membership`]: members, their IDs, the member list; [`join`]: a
//!   new member joining a running cluster.
//! - [`raft`]: the raft thread, the apply thread, bootstrap, housekeeping.
//! - [`transport`]: the peer service and per-peer senders; [`tls`]: TLS
//!   for the client and peer listeners and the peer channels.
//! - [`api`]: one file per client gRPC service; [`auth`]: users, roles,
//!   permissions and tokens.
//! - [`apply`]: one committed request applied to the key space.
//! - [`alarms`], [`corruption`] (HashKV checks between members),
//!   [`error`], [`restore`], [`shared`].
//!
//! ## Invariants
//! - A write is answered only after its entry is durable in the WAL of a
//!   quorum and applied on the member answering.
//! - Entries are applied in log order, each exactly once: the B+tree
//!   records the index of the last one applied in the same transaction.
//! - The WAL covers the database: it holds every entry after the
//!   database's consistent index (a start-up error otherwise).
//! - Errors carry etcd's gRPC codes and messages ([`error`]).
//! - Nothing half-alive: a failed WAL write or fdatasync, or a database
//!   error while applying, stops the member with one log line; a panic in
//!   one of the [`VITAL_THREADS`] ends the process.

pub mod alarms;
pub mod api;
pub mod apply;
pub mod auth;
pub mod authority;
pub mod config;
pub mod corruption;
pub mod datadir;
pub mod error;
pub mod http;
pub mod join;
pub mod keepalive;
pub mod membership;
pub mod metrics;
pub mod pb;
pub mod raft;
pub mod restore;
pub mod shared;
pub mod tls;
pub mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use config::Config;
use error::StartError;
use pb::etcdserverpb as etcd;

pub use shared::Shared;

/// The threads a member cannot serve without: raft, applying, the WAL's
/// writer and the thread that answers its appends, and the watch syncer.
/// A panic in one must end the process (`main` installs a hook that does),
/// never leave a member that answers reads and Status while every write
/// hangs; a restart recovers from the WAL.
pub const VITAL_THREADS: &[&str] = &["raft", "apply", "wal-writer", "wal-notify", "watch-syncer"];

/// What etcd allows a gRPC message beyond `--max-request-bytes` (its
/// `grpcOverheadBytes`): the rest of the request around a value at the
/// limit.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Keeps `Arc` in the public API readable.
pub type SharedState = Arc<Shared>;

/// Runs a member until `shutdown` resolves, then stops cleanly: stops
/// accepting requests, ends open streams, syncs the database and closes
/// the WAL.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    run_with_state(cfg, shutdown, None).await
}

/// A bound listener with the TLS its URL asks for.
type Listener = (tokio::net::TcpListener, Option<Arc<tls::ServerSide>>);

async fn bind(
    addrs: &[(std::net::SocketAddr, bool)],
    tls: &Option<Arc<tls::ServerSide>>,
) -> Result<Vec<Listener>, StartError> {
    let mut listeners = Vec::new();
    for (addr, secure) in addrs {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })?;
        listeners.push((l, if *secure { tls.clone() } else { None }));
    }
    Ok(listeners)
}

/// [`run`], handing the member's shared state to `state` once it serves
/// (tests and benchmarks look inside through it).
pub async fn run_with_state(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    state: Option<tokio::sync::oneshot::Sender<SharedState>>,
) -> Result<(), StartError> {
    cfg.validate()?;
    let tls = cfg.tls()?;
    let client_listeners = bind(&cfg.client_listen_addrs()?, &tls.client).await?;
    let peer_listeners = bind(&cfg.peer_listen_addrs()?, &tls.peer).await?;
    let metrics_listeners = bind(&cfg.metrics_listen_addrs()?, &tls.client).await?;
    // A member joining a running cluster asks its peers for the member
    // list first (once: after that its WAL says who it is).
    let join = if cfg.initial_cluster_state == "existing" && !datadir::has_wal(&cfg.data_dir()) {
        Some(join::fetch(&cfg, &tls.dialer).await?)
    } else {
        None
    };
    let (shared, threads) = raft::start(&cfg, join, tls.dialer.clone())?;
    let _syncer = mvcc::spawn_watch_syncer(
        &shared.store,
        Duration::from_millis(20),
        cfg.experimental_watch_progress_notify_interval,
    )
    .map_err(|source| StartError::Thread {
        what: "watch syncer",
        source,
    })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http2 = ClientHttp2 {
        max_concurrent_streams: cfg.max_concurrent_streams,
        keepalive_interval: cfg.grpc_keepalive_interval,
        keepalive_timeout: cfg.grpc_keepalive_timeout,
        keepalive_min_time: Some(cfg.grpc_keepalive_min_time)
            .filter(|d| !d.is_zero())
            .unwrap_or(keepalive::DEFAULT_MIN_TIME),
    };
    let mut servers = Vec::new();

    // Peers first, so that the cluster can elect a leader.
    let peer_routes = tonic::service::Routes::new(
        pb::kvserverpb::peer_server::PeerServer::new(transport::service::PeerService(
            shared.clone(),
        ))
        .max_decoding_message_size(transport::MAX_PEER_MESSAGE)
        .max_encoding_message_size(transport::MAX_PEER_MESSAGE),
    );
    for listener in peer_listeners {
        servers.push(serve(listener, peer_routes.clone(), None, stop_rx.clone()));
    }

    // etcd's gRPC limits: a message in may be --max-request-bytes plus
    // gRPC's overhead allowance, a message out any size.
    let limit = cfg.max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES);
    macro_rules! limited {
        ($svc:expr) => {
            $svc.max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX)
        };
    }
    let routes = tonic::service::Routes::new(limited!(etcd::kv_server::KvServer::new(
        api::kv::Kv(shared.clone())
    )))
    .add_service(limited!(etcd::watch_server::WatchServer::new(
        api::watch::Watch(shared.clone(), stop_rx.clone())
    )))
    .add_service(limited!(etcd::lease_server::LeaseServer::new(
        api::lease::Lease(shared.clone())
    )))
    .add_service(limited!(etcd::cluster_server::ClusterServer::new(
        api::cluster::Cluster(shared.clone())
    )))
    .add_service(limited!(etcd::maintenance_server::MaintenanceServer::new(
        api::maintenance::Maintenance(shared.clone())
    )))
    .add_service(limited!(etcd::auth_server::AuthServer::new(
        api::auth::Auth(shared.clone())
    )))
    .add_service(limited!(pb::v3lockpb::lock_server::LockServer::new(
        api::lock::Lock(shared.clone())
    )))
    .add_service(limited!(
        pb::v3electionpb::election_server::ElectionServer::new(api::election::Election(
            shared.clone()
        ))
    ));
    // The client port's HTTP side shares the listeners (and the router):
    // the gRPC routes are counted (metrics), the HTTP ones get etcd's CORS
    // headers; neither layer sits on the other's path.
    let routes = tonic::service::Routes::from(
        routes
            .into_axum_router()
            .layer(metrics::grpc::GrpcLayer(shared.metrics.clone()))
            .merge(
                http::router(shared.clone(), stop_rx.clone())
                    .layer(axum::middleware::from_fn(http::cors)),
            )
            .fallback(http::fallback),
    );
    // --listen-metrics-urls: /metrics and /health only, from the start
    // (a member waiting for its cluster is worth watching).
    let metrics_routes = tonic::service::Routes::from(
        http::metrics_router(shared.clone())
            .fallback(http::fallback)
            .layer(axum::middleware::from_fn(http::cors)),
    );
    for listener in metrics_listeners {
        let http1 = ClientHttp2 {
            max_concurrent_streams: cfg.max_concurrent_streams,
            keepalive_interval: Duration::ZERO,
            keepalive_timeout: cfg.grpc_keepalive_timeout,
            keepalive_min_time: http2.keepalive_min_time,
        };
        servers.push(serve(
            listener,
            metrics_routes.clone(),
            Some(http1),
            stop_rx.clone(),
        ));
    }
    tracing::info!(
        name = %cfg.name,
        member_id = format!("{:x}", shared.member_id),
        cluster_id = format!("{:x}", shared.cluster_id),
        "serving peers on {}",
        cfg.listen_peer_urls
    );
    // As etcd, clients are served once this member's attributes are
    // published through raft (the cluster has a quorum and a leader, and
    // the member list shows this member's client URLs).
    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = shutdown;
    let failed = tokio::select! {
        _ = publish(shared.clone()) => {
            // A member whose data differ from its peers' does not serve.
            let inconsistent = if cfg.experimental_initial_corrupt_check {
                corruption::initial_check(&shared).await.err()
            } else {
                None
            };
            if let Some(e) = inconsistent {
                tracing::error!("{e}");
                Some(e.to_string())
            } else {
            if !cfg.experimental_corrupt_check_time.is_zero() {
                tokio::spawn(corruption::run_periodic(
                    shared.clone(),
                    cfg.experimental_corrupt_check_time,
                ));
            }
            tracing::info!("serving clients on {}", cfg.listen_client_urls);
            for listener in client_listeners {
                servers.push(serve(listener, routes.clone(), Some(http2), stop_rx.clone()));
            }
            if let Some(tx) = state {
                let _ = tx.send(shared.clone());
            }
            tokio::select! {
                _ = &mut shutdown => None,
                _ = shared.failed.notified() => shared.failure.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            }
            }
        }
        _ = &mut shutdown => None,
        _ = shared.failed.notified() => shared.failure.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    };
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for s in servers {
        // Connections get a moment to finish; open streams were ended.
        let _ = tokio::time::timeout(Duration::from_secs(3), s).await;
    }
    shared.stop();
    shared.transport.stop();
    let removed = shared.removed.load(std::sync::atomic::Ordering::Acquire);
    let failure = shared.failure.clone();
    drop(shared);
    let joined = tokio::task::spawn_blocking(move || threads.join());
    // A member stopping on a failure does not wait forever for threads
    // that may be stuck on the failed disk: it exits, and the process's
    // end stops them.
    let joined = match &failed {
        Some(why) => match tokio::time::timeout(Duration::from_secs(10), joined).await {
            Ok(j) => j,
            Err(_) => return Err(StartError::Fatal(why.clone())),
        },
        None => joined.await,
    };
    joined.map_err(|_| StartError::Panicked("shutdown"))??;
    // A vital thread that failed while the member was stopping.
    let failed = failed.or_else(|| failure.lock().unwrap_or_else(|e| e.into_inner()).clone());
    match failed {
        Some(_) if removed => Ok(()),
        Some(why) => Err(StartError::Fatal(why)),
        None => Ok(()),
    }
}

/// HTTP/2 settings of the client listeners (etcd's flags).
#[derive(Clone, Copy)]
struct ClientHttp2 {
    max_concurrent_streams: u32,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    /// The ping policy's minimum time (`keepalive`).
    keepalive_min_time: Duration,
}

fn serve(
    (listener, tls): Listener,
    routes: tonic::service::Routes,
    http2: Option<ClientHttp2>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    use tokio_stream::StreamExt as _;
    tokio::spawn(async move {
        // etcdctl 3.4 sends an :authority with a scheme on some
        // connections; `authority` lets them through as etcd does. It
        // reads the plain HTTP/2 stream, so it sits inside TLS.
        // Clients are held to etcd's ping policy (`keepalive`); peers are
        // not.
        let min_time = http2.map(|h| h.keepalive_min_time);
        let incoming = tokio_stream::wrappers::ReceiverStream::new(tls::incoming::accept(
            listener, tls,
        ))
        .map(move |conn| {
            conn.map(|c| keepalive::PingPolicy::new(authority::AuthorityFix::new(c), min_time))
        });
        let mut builder = tonic::transport::Server::builder();
        if let Some(h) = http2 {
            // HTTP/1.1 for the JSON side (`http`).
            builder = builder
                .accept_http1(true)
                .max_concurrent_streams(h.max_concurrent_streams)
                // etcd: 0 turns the pings off.
                .http2_keepalive_interval(Some(h.keepalive_interval).filter(|d| !d.is_zero()))
                .http2_keepalive_timeout(Some(h.keepalive_timeout));
        }
        builder
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.changed().await;
            })
            .await
    })
}

/// Publishes this member's name and client URLs through raft once it can
/// (etcd's publish), retrying until it is applied, so that every member's
/// list shows them.
async fn publish(s: Arc<Shared>) {
    use pb::kvserverpb::{request::Op, MemberAttributes};
    loop {
        if s.leader() != 0 {
            let attrs = MemberAttributes {
                id: s.member_id,
                name: s.name.clone(),
                client_urls: s.client_urls.clone(),
            };
            match s.propose(Op::MemberAttributes(attrs)).await {
                Ok(_) => {
                    tracing::info!("published {} {:?} to the cluster", s.name, s.client_urls);
                    return;
                }
                Err(e) => tracing::debug!("publishing this member's attributes: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signalled() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
