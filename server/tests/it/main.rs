//! Integration tests of kvserver through `etcd-client`, a real etcd client
//! written by others: a started `kvserver` process per test.

mod auth;
mod catchup;
mod cluster;
mod cluster_lease;
mod concurrency;
mod corruption;
mod crash;
mod failover;
mod faults;
mod flags;
mod http;
mod jepsen;
mod keepalive;
mod kv;
mod lease;
mod linearizability;
mod maintenance;
mod membership;
mod metrics;
mod operations;
mod partition;
mod powerloss;
mod replication;
mod startup;
mod streams;
mod tls;
mod watch;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

/// Runs `kvtool check db` (what an operator runs) on the database file
/// `db` and fails the test unless it exits 0, saying the file is clean.
/// The binary sits beside kvserver's (`cargo test --workspace` builds it);
/// when missing it is built there, with the same profile.
pub fn kvtool_check_db(db: &Path) {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let kvserver = Path::new(env!("CARGO_BIN_EXE_kvserver"));
    let kvtool = kvserver.with_file_name("kvtool");
    {
        let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        if !kvtool.exists() {
            let profile_dir = kvserver.parent().expect("the profile's directory");
            let target_dir = profile_dir.parent().expect("the target directory");
            let mut build = Command::new(env!("CARGO"));
            build
                .args(["build", "-q", "-p", "tools", "--bin", "kvtool"])
                .arg("--target-dir")
                .arg(target_dir);
            if profile_dir.file_name().is_some_and(|p| p == "release") {
                build.arg("--release");
            }
            let built = build.status().expect("cargo build kvtool");
            assert!(built.success(), "building kvtool failed");
        }
    }
    let out = Command::new(&kvtool)
        .args(["check", "db"])
        .arg(db)
        .output()
        .expect("run kvtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kvtool check db {}: {text}",
        db.display()
    );
}

/// A kvserver process on free loopback ports; killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub endpoint: String,
    pub data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// Flags beyond the basic ones, kept for restarts.
    extra: Vec<String>,
    /// Environment variables for the process, kept for restarts.
    pub env: Vec<(String, String)>,
}

/// A loopback port free now, taken below the kernel's ephemeral range
/// (32768 and up by default) and never handed out twice by this process:
/// a member killed and restarted on its ports finds them still free, since
/// neither the kernel (for another test's connection or port-0 bind) nor
/// this function gives them to anyone else meanwhile.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Each test binary starts at its own place in 20000..32000.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 6_000) as u16,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    for _ in 0..12_000 {
        let mut port = NEXT.fetch_add(1, Ordering::AcqRel);
        if port >= 32_000 {
            port = 20_000 + port % 12_000;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Server {
    /// Starts a one-member server with its data in `data_dir`.
    pub async fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[]).await
    }

    pub async fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[]).await
    }

    /// [`Server::start_with`] with environment variables (kept for
    /// restarts).
    pub async fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut s = Server {
            child: None,
            endpoint: String::new(),
            data_dir: data_dir.to_path_buf(),
            client_port: free_port(),
            peer_port: free_port(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.endpoint = format!("127.0.0.1:{}", s.client_port);
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.data_dir.with_extension("log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kvserver"))
            .args(["--name", "n1", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("n1={peer}")])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kvserver");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Status needs no permission: this works with auth enabled.
            // Bounded: a member without a leader may never answer.
            let ready = tokio::time::timeout(Duration::from_secs(2), async {
                let mut c = Client::connect([self.endpoint.as_str()], None).await?;
                c.status().await
            });
            if let Ok(Ok(_)) = ready.await {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("kvserver exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "kvserver did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint.as_str()], None)
            .await
            .expect("connect")
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (at most ten seconds) for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("kvserver did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the server again on the same data and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the real etcdctl (3.4) with `args`; returns (success, stdout + stderr).
pub fn etcdctl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("etcdctl (Debian's etcd-client; scripts/test.sh installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The gRPC status of a failed call.
pub fn status(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a gRPC status: {other}"),
    }
}
