//! # kvserver: etcd's v3 API on raft-rs, the wal crate and the mvcc crate
//!
//! The server a client talks to. A write goes: gRPC handler
//! ([`services`]) → raft proposal ([`node`]) → WAL append, fsynced → commit
//! (one member: at once; later by a quorum) → apply to mvcc ([`apply`]) →
//! B+tree → answer. A linearizable read: ReadIndex → wait until applied →
//! read an mvcc snapshot. A serializable read skips the ReadIndex.
//!
//! ## Invariants
//! - A write is answered only after its entry is durable in the WAL and
//!   applied.
//! - Entries are applied in log order, each exactly once: the B+tree
//!   records the index of the last one applied in the same transaction.
//! - Errors carry etcd's gRPC codes and messages ([`error`]).

pub mod apply;
pub mod concurrency;
pub mod config;
pub mod error;
pub mod node;
pub mod pb;
pub mod restore;
pub mod services;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use config::Config;
use pb::etcdserverpb as etcd;

/// Runs a member until `shutdown` resolves, then stops cleanly: stops
/// accepting requests, ends open streams, syncs the database and closes
/// the WAL.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    run_with_state(cfg, shutdown, None).await
}

/// [`run`], handing the member's shared state to `state` once it serves
/// (tests and benchmarks look inside through it).
pub async fn run_with_state(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    state: Option<tokio::sync::oneshot::Sender<SharedState>>,
) -> Result<(), String> {
    let addrs = cfg.client_listen_addrs()?;
    let mut listeners = Vec::new();
    for addr in &addrs {
        listeners.push(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("listening on {addr}: {e}"))?,
        );
    }
    let (shared, raft_thread) = node::start(&cfg)?;
    let _syncer = mvcc::spawn_watch_syncer(
        &shared.store,
        Duration::from_millis(20),
        Duration::from_secs(600),
    )
    .map_err(|e| format!("starting the watch syncer: {e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let routes =
        tonic::service::Routes::new(etcd::kv_server::KvServer::new(services::Kv(shared.clone())))
            .add_service(etcd::watch_server::WatchServer::new(services::Watch(
                shared.clone(),
                stop_rx.clone(),
            )))
            .add_service(etcd::lease_server::LeaseServer::new(services::Lease(
                shared.clone(),
            )))
            .add_service(etcd::cluster_server::ClusterServer::new(services::Cluster(
                shared.clone(),
            )))
            .add_service(etcd::maintenance_server::MaintenanceServer::new(
                services::Maintenance(shared.clone()),
            ))
            .add_service(etcd::auth_server::AuthServer::new(services::Auth(
                shared.clone(),
            )))
            .add_service(pb::v3lockpb::lock_server::LockServer::new(
                concurrency::Lock(shared.clone()),
            ))
            .add_service(pb::v3electionpb::election_server::ElectionServer::new(
                concurrency::Election(shared.clone()),
            ));
    tracing::info!(
        name = %cfg.name,
        member_id = format!("{:x}", shared.member_id),
        cluster_id = format!("{:x}", shared.cluster_id),
        "serving clients on {}",
        cfg.listen_client_urls
    );
    let mut servers = Vec::new();
    for listener in listeners {
        let routes = routes.clone();
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.changed().await;
                })
                .await
        }));
    }
    if let Some(tx) = state {
        let _ = tx.send(shared.clone());
    }
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for s in servers {
        // Connections get a moment to finish; open streams were ended.
        let _ = tokio::time::timeout(Duration::from_secs(3), s).await;
    }
    shared.stop();
    drop(shared);
    tokio::task::spawn_blocking(move || raft_thread.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the raft thread panicked".to_string())?;
    Ok(())
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

/// Keeps `Arc` in the public API readable.
pub type SharedState = Arc<node::Shared>;
