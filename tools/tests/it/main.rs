//! kvtool against files and servers made by the real server.
//!
//! Members run in this process (`server::run_with_state`) on free loopback
//! ports; kvtool runs as the real binary. A member is always stopped before
//! an offline command opens its files (the database is locked while a
//! member runs).

mod bench;
mod bolt_file;
mod db;
mod migrate;
mod snapshot;
mod waldump;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use clap::Parser;
use server::pb::etcdserverpb::kv_client::KvClient;
use server::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use server::pb::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, HashKvRequest, PutRequest, RangeRequest,
};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A member running in this process.
pub struct Member {
    pub data_dir: PathBuf,
    pub endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<Result<(), server::error::StartError>>>,
}

impl Member {
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Member {
        let peer = format!("http://127.0.0.1:{}", free_port());
        Member::start_with_peer(data_dir, &peer, extra).await
    }

    /// [`Member::start`] listening for peers on `peer`.
    pub async fn start_with_peer(data_dir: &Path, peer: &str, extra: &[&str]) -> Member {
        if std::env::var("TEST_LOG").is_ok() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(std::env::var("TEST_LOG").unwrap_or_default())
                .try_init();
        }
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let peer = peer.to_string();
        let mut argv = vec![
            "kvserver".to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen-client-urls".into(),
            url.clone(),
            "--listen-peer-urls".into(),
            peer,
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let cfg = server::config::Config::parse_from(argv);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (state_tx, state_rx) = tokio::sync::oneshot::channel();
        let running = tokio::spawn(server::run_with_state(
            cfg,
            async move {
                let _ = stop_rx.await;
            },
            Some(state_tx),
        ));
        tokio::time::timeout(Duration::from_secs(20), state_rx)
            .await
            .expect("the member serves within 20 s")
            .expect("the member started");
        Member {
            data_dir: data_dir.to_path_buf(),
            endpoint: format!("127.0.0.1:{port}"),
            stop: Some(stop_tx),
            running: Some(running),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.data_dir.join("member").join("snap").join("db")
    }

    pub fn wal(&self) -> PathBuf {
        self.data_dir.join("member").join("wal")
    }

    pub async fn kv(&self) -> KvClient<tonic::transport::Channel> {
        KvClient::connect(format!("http://{}", self.endpoint))
            .await
            .expect("connect")
    }

    pub async fn put(&self, key: &str, value: &[u8]) {
        self.kv()
            .await
            .put(PutRequest {
                key: key.into(),
                value: value.to_vec(),
                ..Default::default()
            })
            .await
            .expect("put");
    }

    pub async fn delete(&self, key: &str) {
        self.kv()
            .await
            .delete_range(DeleteRangeRequest {
                key: key.into(),
                ..Default::default()
            })
            .await
            .expect("delete");
    }

    pub async fn compact(&self, revision: i64) {
        self.kv()
            .await
            .compact(CompactionRequest {
                revision,
                physical: true,
            })
            .await
            .expect("compact");
    }

    /// Every key and value, in key order, and the revision read at.
    pub async fn all(&self) -> (Vec<(Vec<u8>, Vec<u8>)>, i64) {
        let r = self
            .kv()
            .await
            .range(RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        (
            r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            r.header.map_or(0, |h| h.revision),
        )
    }

    pub async fn hash_kv(&self) -> u32 {
        MaintenanceClient::connect(format!("http://{}", self.endpoint))
            .await
            .expect("connect")
            .hash_kv(HashKvRequest { revision: 0 })
            .await
            .expect("hash kv")
            .into_inner()
            .hash
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(20), r)
                .await
                .expect("the member stops within 20 s")
                .expect("join")
                .expect("the member ran cleanly");
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Runs kvtool (bounded to 120 s).
pub fn kvtool(args: &[&str]) -> Output {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kvtool"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kvtool");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("kvtool {args:?} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The last line of kvtool's output as JSON.
pub fn json_line(o: &Output) -> serde_json::Value {
    let out = stdout(o);
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {}", describe(o)))
}

/// [`kvtool`] from async code, without blocking the runtime the in-process
/// member runs on.
pub async fn kvtool_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        kvtool(&refs)
    })
    .await
    .expect("kvtool task")
}
