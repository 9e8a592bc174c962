//! A cluster of kvserver processes on free loopback ports, for the tests
//! of replication, failover, partitions and catch-up. Every member gets a
//! faults file (the transport's test hook, `KVSERVER_TEST_PEER_FAULTS`)
//! through which a test cuts or delays links. Members are killed by PID
//! when the cluster is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

use crate::free_port;

pub const TOKEN: &str = "etcd-cluster";

pub struct Member {
    pub name: String,
    pub id: u64,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub faults: PathBuf,
    /// Its `--initial-cluster`, and whether it joins a running cluster.
    pub initial_cluster: String,
    pub existing: bool,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    extra: Vec<String>,
    /// Flags for one member only (after `extra`).
    own: Vec<Vec<String>>,
    /// `http` or `https` (peer TLS) for the peer URLs.
    peer_scheme: &'static str,
    _dir: tempfile::TempDir,
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on the pid of a child this harness started and has
    // not reaped yet.
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Cluster {
    /// Starts `n` members with `extra` flags and waits until every one
    /// serves clients.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        let mut c = Cluster::spawn_all(n, extra, &[]);
        for i in 0..n {
            c.wait_serving(i).await;
        }
        c
    }

    /// Starts `n` members, member `i` with `own[i]` flags too, without
    /// waiting for them.
    pub fn spawn_all(n: usize, extra: &[&str], own: &[&[&str]]) -> Cluster {
        Cluster::spawn_all_with(n, extra, own, "http")
    }

    /// [`Cluster::spawn_all`] with peer URLs of `peer_scheme`.
    pub fn spawn_all_with(
        n: usize,
        extra: &[&str],
        own: &[&[&str]],
        peer_scheme: &'static str,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut members = Vec::new();
        for i in 1..=n {
            let peer_port = free_port();
            let peer = format!("{peer_scheme}://127.0.0.1:{peer_port}");
            let name = format!("m{i}");
            members.push(Member {
                id: server::membership::member_id(std::slice::from_ref(&peer), TOKEN),
                data_dir: dir.path().join(format!("{name}.data")),
                faults: dir.path().join(format!("{name}.faults")),
                name,
                client_port: free_port(),
                peer_port,
                initial_cluster: String::new(),
                existing: false,
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={peer_scheme}://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = initial_cluster.clone();
        }
        let mut c = Cluster {
            members,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            own: (0..n)
                .map(|i| {
                    own.get(i)
                        .map(|f| f.iter().map(|s| s.to_string()).collect())
                        .unwrap_or_default()
                })
                .collect(),
            peer_scheme,
            _dir: dir,
        };
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        std::fs::write(&m.faults, "").unwrap();
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("{}://127.0.0.1:{}", self.peer_scheme, m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.data_dir.with_extension("log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kvserver"))
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &m.initial_cluster])
            .args(if m.existing {
                vec!["--initial-cluster-state", "existing"]
            } else {
                vec![]
            })
            .args(
                if self.own[i].iter().any(|f| f == "--initial-cluster-token") {
                    vec![]
                } else {
                    vec!["--initial-cluster-token", TOKEN]
                },
            )
            .args(&self.extra)
            .args(&self.own[i])
            .env("KVSERVER_TEST_PEER_FAULTS", &m.faults)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kvserver");
        m.child = Some(child);
    }

    /// Adds a member through member `via` (etcd's MemberAdd, tried again
    /// while the cluster is "unhealthy": peers connected for less than
    /// 5 s), then starts it empty with `--initial-cluster-state existing`
    /// and the `--initial-cluster` etcdctl would print. Returns its index;
    /// it is not waited for.
    pub async fn add_member(&mut self, via: usize, learner: bool) -> usize {
        let peer_port = free_port();
        let peer = format!("{}://127.0.0.1:{peer_port}", self.peer_scheme);
        let mut cl = self.client(via).await;
        let resp = member_add_when_healthy(&mut cl, &peer, learner)
            .await
            .unwrap_or_else(|e| panic!("member add through m{}: {e}", via + 1));
        let id = resp.member().expect("the added member").id();
        let name = format!("m{}", self.members.len() + 1);
        let initial_cluster = resp
            .member_list()
            .iter()
            .filter_map(|m| {
                let n = if m.id() == id {
                    name.as_str()
                } else {
                    m.name()
                };
                (!n.is_empty()).then(|| {
                    m.peer_urls()
                        .iter()
                        .map(|u| format!("{n}={u}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
            })
            .collect::<Vec<_>>()
            .join(",");
        self.members.push(Member {
            id,
            data_dir: self._dir.path().join(format!("{name}.data")),
            faults: self._dir.path().join(format!("{name}.faults")),
            name,
            client_port: free_port(),
            peer_port,
            initial_cluster,
            existing: true,
            child: None,
        });
        self.own.push(Vec::new());
        let i = self.members.len() - 1;
        self.spawn(i);
        i
    }

    /// Removes member `i` through member `via` (tried again while the
    /// cluster is "unhealthy").
    pub async fn remove_member(&mut self, via: usize, i: usize) {
        let mut cl = self.client(via).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match cl.member_remove(self.members[i].id).await {
                Ok(_) => return,
                Err(e)
                    if e.to_string().contains("unhealthy cluster") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(300)).await
                }
                Err(e) => panic!("member remove m{} through m{}: {e}", i + 1, via + 1),
            }
        }
    }

    /// Waits (at most `within`) for member `i`'s process to exit; returns
    /// its exit code.
    pub async fn wait_exit(&mut self, i: usize, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.members[i].child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.members[i].child = None;
                    return status.code();
                }
            } else {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "m{} still runs after {within:?}:\n{}",
                i + 1,
                self.log_tail(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most 30 s) until member `i` answers a serializable read.
    pub async fn wait_serving(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let endpoint = self.members[i].endpoint();
        loop {
            if let Ok(mut c) = Client::connect([endpoint.as_str()], None).await {
                let opts = etcd_client::GetOptions::new().with_serializable();
                if c.get("health", Some(opts)).await.is_ok() {
                    return;
                }
            }
            if !self.members[i].is_running() {
                panic!(
                    "member {} exited:\n{}",
                    self.members[i].name,
                    self.log_tail(i)
                );
            }
            assert!(
                Instant::now() < deadline,
                "member {} did not serve within 30 s:\n{}",
                self.members[i].name,
                self.log_tail(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.members[i].data_dir.with_extension("log")).unwrap_or_default()
    }

    pub fn log_tail(&self, i: usize) -> String {
        let log = self.log(i);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub async fn client(&self, i: usize) -> Client {
        Client::connect([self.members[i].endpoint()], None)
            .await
            .expect("connect")
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The index of the member every running member agrees leads, waiting
    /// (at most `within`) until they do.
    pub async fn leader(&mut self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for i in 0..self.members.len() {
                if !self.members[i].is_running() {
                    continue;
                }
                let ep = self.members[i].endpoint();
                let status = async {
                    let mut c = Client::connect([ep.as_str()], None).await.ok()?;
                    c.status().await.ok()
                };
                match tokio::time::timeout(Duration::from_secs(1), status).await {
                    Ok(Some(s)) => seen.push(s.leader()),
                    _ => seen.push(0),
                }
            }
            if let Some(&l) = seen.first() {
                if l != 0 && seen.iter().all(|x| *x == l) {
                    if let Some(i) = self.members.iter().position(|m| m.id == l) {
                        if self.members[i].is_running() {
                            return i;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}: {seen:x?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and waits (at most 10 s) for a clean exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            signal(c.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT.
    pub fn pause(&self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            signal(pid, libc::SIGSTOP);
        }
    }

    pub fn resume(&self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            signal(pid, libc::SIGCONT);
        }
    }

    /// Restarts member `i` with `flags` as its own flags from now on.
    pub fn restart_with(&mut self, i: usize, flags: &[&str]) {
        self.own[i] = flags.iter().map(|s| s.to_string()).collect();
        self.restart(i);
    }

    /// Starts a stopped member again on its data and ports.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Cuts every link between members of different groups (both ways).
    /// Members in no group keep all their links.
    pub fn partition(&self, groups: &[&[usize]]) {
        let group_of = |i: usize| groups.iter().position(|g| g.contains(&i));
        for i in 0..self.members.len() {
            let mut rules = String::new();
            for j in 0..self.members.len() {
                if i != j
                    && group_of(i).is_some()
                    && group_of(j).is_some()
                    && group_of(i) != group_of(j)
                {
                    rules.push_str(&format!("drop {:x}\n", self.members[j].id));
                }
            }
            std::fs::write(&self.members[i].faults, rules).unwrap();
        }
        // The hook reads its file every 50 ms.
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Writes raw fault rules for member `i`.
    pub fn faults(&self, i: usize, rules: &str) {
        std::fs::write(&self.members[i].faults, rules).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }

    pub fn heal(&self) {
        for m in &self.members {
            std::fs::write(&m.faults, "").unwrap();
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.resume(i);
            self.kill(i);
        }
    }
}

/// etcd's MemberAdd of `peer`, tried again for up to 30 s while the member
/// answers "unhealthy cluster" (its peers connected for less than 5 s, or
/// one reconnected on a busy machine); any other answer is returned.
pub async fn member_add_when_healthy(
    cl: &mut Client,
    peer: &str,
    learner: bool,
) -> Result<etcd_client::MemberAddResponse, etcd_client::Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let opts = learner.then(|| etcd_client::MemberAddOptions::new().with_is_learner());
        match cl.member_add([peer.to_string()], opts).await {
            Err(e) if e.to_string().contains("unhealthy cluster") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await
            }
            r => return r,
        }
    }
}
