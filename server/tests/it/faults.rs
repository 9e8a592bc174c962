//! Faults injected into running members (the test build has the
//! `failpoints` feature; `/failpoints` arms a point at run time): a panic
//! in a vital thread ends the process, a failed WAL write or fdatasync
//! stops the member with nothing after it acknowledged, the cluster goes
//! on without it, and a restart recovers to a consistent state.

use std::path::Path;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::http::request;

/// Arms failpoint `point` with fail-rs `actions` on member `i`.
async fn arm(c: &Cluster, i: usize, point: &str, actions: &str) {
    let a = request(
        &c.members[i].endpoint(),
        "PUT",
        &format!("/failpoints/{point}"),
        actions,
    )
    .await;
    assert_eq!(a.status, 200, "arming {point}: {}", a.body);
}

/// Disarms failpoint `point` on member `i`.
async fn disarm(c: &Cluster, i: usize, point: &str) {
    let a = request(
        &c.members[i].endpoint(),
        "DELETE",
        &format!("/failpoints/{point}"),
        "",
    )
    .await;
    assert_eq!(a.status, 200, "disarming {point}: {}", a.body);
}

/// Puts through member `i` until one is refused at once with etcd's "too
/// many requests"; none may be acknowledged meanwhile. Before each probe
/// `more()` may add load. (A probe that is taken waits for an answer that
/// cannot come: it is given up after a while and the next one asked. A
/// loaded machine may take long to get the test's proposals in.)
async fn until_refused_as_too_many(c: &Cluster, i: usize, mut more: impl FnMut()) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut probe = c.client(i).await;
    loop {
        more();
        let asked = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(2), probe.put("k/probe", "v", None));
        match answer.await {
            Err(_) => {}
            Ok(Err(e)) => {
                let (code, msg) = crate::status(e);
                if code == tonic::Code::ResourceExhausted {
                    assert_eq!(msg, "etcdserver: too many requests");
                    assert!(asked.elapsed() < Duration::from_secs(1));
                    return;
                }
            }
            Ok(Ok(_)) => panic!("a put was acknowledged while they could not be"),
        }
        if std::time::Instant::now() > deadline {
            let mut seen = Vec::new();
            for name in [
                "etcd_server_proposals_committed_total",
                "etcd_server_proposals_applied_total",
                "etcd_server_proposals_pending",
            ] {
                // The member may be gone: its metrics are asked for apart.
                let ep = c.members[i].endpoint();
                let got = tokio::spawn(async move { crate::http::metric(&ep, name).await });
                let got = tokio::time::timeout(Duration::from_secs(2), got).await;
                seen.push(format!("{name} {got:?}"));
            }
            panic!(
                "no put was refused as too many: {seen:?}; log: {}",
                c.log_tail(i)
            );
        }
    }
}

/// Puts `key` through member `i` with a bound on the wait; Ok only if the
/// put was acknowledged.
async fn put(c: &Cluster, i: usize, key: &str) -> Result<(), String> {
    put_to(c.members[i].endpoint(), key.to_string()).await
}

async fn put_to(endpoint: String, key: String) -> Result<(), String> {
    let attempt = async move {
        let mut cl = etcd_client::Client::connect([endpoint], None)
            .await
            .map_err(|e| e.to_string())?;
        cl.put(key.clone(), key.clone(), None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(r) => r,
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// The keys under `prefix` member `i` holds (a serializable read: the
/// member's own state).
async fn keys(c: &Cluster, i: usize, prefix: &str) -> Vec<String> {
    let mut cl = c.client(i).await;
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_serializable()
        .with_keys_only();
    let r = cl.get(prefix, Some(opts)).await.unwrap();
    let mut out: Vec<String> = r
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// The database of a stopped member passes the B+tree's full check.
fn db_is_clean(c: &Cluster, i: usize) {
    let path = server::datadir::db_path(&c.members[i].data_dir);
    let db = btree::Db::open(&path).expect("open the database");
    let report = db.check();
    assert!(report.is_clean(), "m{}: {report:?}", i + 1);
}

/// The stopped one-member cluster `c` has a clean database and, restarted,
/// holds every acknowledged key and takes writes again.
async fn recovers(c: &mut Cluster, acked: &[String], point: &str) {
    db_is_clean(c, 0);
    c.restart(0);
    c.wait_serving(0).await;
    let have = keys(c, 0, "k/").await;
    for k in acked {
        assert!(have.contains(k), "{point}: {k} lost: {have:?}");
    }
    put(c, 0, "k/later").await.unwrap();
}

/// Waits until member `i` holds every key of `want` (it catches up).
async fn wait_for_keys(c: &Cluster, i: usize, prefix: &str, want: &[String]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let have = keys(c, i, prefix).await;
        if want.iter().all(|k| have.contains(k)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "m{} lacks acknowledged keys: has {have:?}, wants {want:?}",
            i + 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_in_a_vital_thread_ends_the_process_and_a_restart_recovers() {
    // The watch syncer's thread is off the write path: a put may still be
    // answered before it ends the process.
    for (point, thread, on_write_path) in [
        ("apply::entries", "apply", true),
        ("raft::ready", "raft", true),
        ("wal::writer", "wal-writer", true),
        ("wal::notify", "wal-notify", true),
        ("mvcc::watch_syncer", "watch-syncer", false),
    ] {
        let mut c = Cluster::start(1, &[]).await;
        let mut acked = Vec::new();
        for n in 0..5 {
            let k = format!("k/{n}");
            put(&c, 0, &k).await.unwrap();
            acked.push(k);
        }
        // The watch syncer runs by itself every few milliseconds: its
        // panic waits until the arming has been answered.
        let actions = if on_write_path {
            "panic"
        } else {
            "1*sleep(500)->panic"
        };
        arm(&c, 0, point, actions).await;
        if on_write_path {
            let refused = put(&c, 0, "k/after").await;
            assert!(refused.is_err(), "{point}: a put was acknowledged");
        }
        // The process ends by itself: it does not go on half-alive.
        let code = c.wait_exit(0, Duration::from_secs(10)).await;
        assert_eq!(code, None, "{point}: killed by SIGABRT, not an exit code");
        let log = c.log(0);
        assert!(
            log.contains(&format!("the {thread} thread panicked")),
            "{point}: {}",
            c.log_tail(0)
        );
        recovers(&mut c, &acked, point).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_wal_write_or_fdatasync_acknowledges_nothing_after_it() {
    for (point, actions, says) in [
        ("wal::fdatasync", "return(EIO)", "Input/output error"),
        ("wal::write", "return(ENOSPC)", "No space left on device"),
    ] {
        let mut c = Cluster::start(1, &[]).await;
        let mut acked = Vec::new();
        for n in 0..20 {
            let k = format!("k/{n:02}");
            put(&c, 0, &k).await.unwrap();
            acked.push(k);
        }
        arm(&c, 0, point, actions).await;
        // Concurrent puts: none of them may be acknowledged.
        let puts: Vec<_> = (0..10)
            .map(|n| tokio::spawn(put_to(c.members[0].endpoint(), format!("k/late{n}"))))
            .collect();
        for p in puts {
            let r = p.await.unwrap();
            assert!(
                r.is_err(),
                "{point}: a put after the failure was acknowledged"
            );
        }
        // Fail-stop: the member exits non-zero with one line saying why.
        let code = c.wait_exit(0, Duration::from_secs(10)).await;
        assert_eq!(code, Some(1), "{point}: {}", c.log_tail(0));
        let log = c.log(0);
        let stops: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(stops.len(), 1, "{point}: {}", c.log_tail(0));
        assert!(
            stops[0].contains("the raft thread stopped") && stops[0].contains(says),
            "{point}: {}",
            stops[0]
        );
        recovers(&mut c, &acked, point).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_wal_fails_leaves_and_the_cluster_goes_on() {
    let mut c = Cluster::start(3, &[]).await;
    let mut acked = Vec::new();
    let leader = c.leader(Duration::from_secs(10)).await;
    for n in 0..10 {
        let k = format!("k/a{n}");
        put(&c, leader, &k).await.unwrap();
        acked.push(k);
    }
    // A follower's fdatasync fails: it stops acknowledging and exits; the
    // other two go on.
    let follower = (leader + 1) % 3;
    arm(&c, follower, "wal::fdatasync", "return(EIO)").await;
    for n in 0..10 {
        let k = format!("k/b{n}");
        put(&c, leader, &k).await.unwrap();
        acked.push(k);
    }
    assert_eq!(
        c.wait_exit(follower, Duration::from_secs(10)).await,
        Some(1),
        "{}",
        c.log_tail(follower)
    );
    db_is_clean(&c, follower);
    c.restart(follower);
    c.wait_serving(follower).await;
    wait_for_keys(&c, follower, "k/", &acked).await;

    // The leader's fdatasync fails: it exits, the others elect a leader
    // and every write it acknowledged is still there.
    let leader = c.leader(Duration::from_secs(10)).await;
    arm(&c, leader, "wal::fdatasync", "return(EIO)").await;
    assert!(put(&c, leader, "k/refused").await.is_err());
    assert_eq!(
        c.wait_exit(leader, Duration::from_secs(10)).await,
        Some(1),
        "{}",
        c.log_tail(leader)
    );
    db_is_clean(&c, leader);
    let next = c.leader(Duration::from_secs(15)).await;
    assert_ne!(next, leader);
    for n in 0..10 {
        let k = format!("k/c{n}");
        put(&c, next, &k).await.unwrap();
        acked.push(k);
    }
    c.restart(leader);
    c.wait_serving(leader).await;
    for i in 0..3 {
        wait_for_keys(&c, i, "k/", &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_applying_lags_refuses_writes_at_once_and_recovers() {
    let c = Cluster::start(1, &[]).await;
    put(&c, 0, "k/first").await.unwrap();
    // Applying stops (the apply thread waits at the point); raft goes on
    // committing what is proposed.
    arm(&c, 0, "apply::entries", "pause").await;
    let cl = c.client(0).await;
    let lag = server::raft::MAX_APPLY_LAG as usize;
    let mut waiting = Vec::new();
    let mut propose = |n: usize| {
        let from = waiting.len();
        for k in from..from + n {
            let mut cl = cl.clone();
            waiting.push(tokio::spawn(async move {
                cl.put(format!("k/{k}"), "v", None).await
            }));
        }
    };
    propose(lag + 500);
    // Once more than 5000 entries wait to be applied, a put is refused at
    // once with etcd's error. (Puts a loaded machine gave up on before
    // proposing them are made up for.)
    until_refused_as_too_many(&c, 0, || propose(100)).await;
    // Applying resumes: the member catches up and serves writes again.
    disarm(&c, 0, "apply::entries").await;
    let mut acked = vec!["k/first".to_string()];
    for (n, w) in waiting.into_iter().enumerate() {
        if w.await.unwrap().is_ok() {
            acked.push(format!("k/{n}"));
        }
    }
    put(&c, 0, "k/last").await.unwrap();
    let have = keys(&c, 0, "k/").await;
    for k in &acked {
        assert!(have.contains(k), "{k} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_with_its_proposal_queue_full_refuses_writes_at_once_and_recovers() {
    // A long election timeout makes the request timeout (5 s plus two
    // elections) long: the proposals filling the queue are not given up
    // before it is full, on a machine slow to get them all in.
    let c = Cluster::start(1, &["--election-timeout", "30000"]).await;
    put(&c, 0, "k/first").await.unwrap();
    // The raft thread stops at its next Ready: proposals queue up here,
    // none is committed.
    arm(&c, 0, "raft::ready", "pause").await;
    let full = server::raft::MAX_PENDING_PROPOSALS;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(c.client(0).await);
    }
    let waiting: Vec<_> = (0..full)
        .map(|n| {
            let mut cl = clients[n % clients.len()].clone();
            tokio::spawn(async move { cl.put(format!("k/{n}"), "v", None).await })
        })
        .collect();
    let endpoint = c.members[0].endpoint();
    let deadline = std::time::Instant::now() + Duration::from_secs(50);
    loop {
        let pending = crate::http::metric(&endpoint, "etcd_server_proposals_pending").await;
        if pending >= full as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {pending} of {full} proposals got in"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One more is refused at once with etcd's error.
    let mut probe = c.client(0).await;
    let asked = std::time::Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(5), probe.put("k/probe", "v", None))
        .await
        .expect("the put beyond the bound is answered at once");
    let (code, msg) = crate::status(refused.expect_err("the put beyond the bound is refused"));
    assert_eq!(code, tonic::Code::ResourceExhausted);
    assert_eq!(msg, "etcdserver: too many requests");
    assert!(asked.elapsed() < Duration::from_secs(1));
    // Raft goes on: every waiting put is acknowledged and held.
    disarm(&c, 0, "raft::ready").await;
    let mut acked = vec!["k/first".to_string()];
    for (n, w) in waiting.into_iter().enumerate() {
        w.await.unwrap().unwrap_or_else(|e| panic!("k/{n}: {e}"));
        acked.push(format!("k/{n}"));
    }
    put(&c, 0, "k/last").await.unwrap();
    let have = keys(&c, 0, "k/").await;
    assert!(
        !have.contains(&"k/probe".to_string()),
        "the refused put was applied"
    );
    for k in &acked {
        assert!(have.contains(k), "{k} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_io_error_under_the_memory_map_ends_the_member_with_one_line() {
    let mut c = Cluster::start(1, &[]).await;
    let mut cl = c.client(0).await;
    let value = "v".repeat(4096);
    for n in 0..300 {
        cl.put(format!("k/{n:03}"), value.as_str(), None)
            .await
            .unwrap();
    }
    // The file shrinks behind the member's back: reading a page past the
    // new end faults (SIGBUS) as a read the disk fails does.
    let path = server::datadir::db_path(&c.members[0].data_dir);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(16 * 4096)
        .unwrap();
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_serializable();
    let read = tokio::time::timeout(Duration::from_secs(5), cl.get("k/", Some(opts))).await;
    assert!(
        !matches!(read, Ok(Ok(_))),
        "a read of the shrunk file answered"
    );
    assert_eq!(
        c.wait_exit(0, Duration::from_secs(10)).await,
        Some(128 + libc::SIGBUS),
        "{}",
        c.log_tail(0)
    );
    let log = c.log(0);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("SIGBUS")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("kvtool check db"), "{}", lines[0]);
}

/// A tmpfs of a fixed size (the tests run as root, as CI does);
/// unmounted when dropped.
struct SmallDisk {
    mount_point: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl SmallDisk {
    /// A fresh, empty one.
    fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let mount_point = dir.path().join("disk");
        std::fs::create_dir(&mount_point).unwrap();
        SmallDisk::mount_at(&mount_point, mib);
        SmallDisk {
            mount_point,
            _dir: Some(dir),
        }
    }

    /// One mounted over the directory `dir`, holding what `dir` held.
    fn mount_over(dir: &Path, mib: u64) -> SmallDisk {
        let aside = dir.with_extension("aside");
        std::fs::rename(dir, &aside).unwrap();
        std::fs::create_dir(dir).unwrap();
        SmallDisk::mount_at(dir, mib);
        let disk = SmallDisk {
            mount_point: dir.to_path_buf(),
            _dir: None,
        };
        for entry in std::fs::read_dir(&aside).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        std::fs::remove_dir_all(&aside).unwrap();
        disk
    }

    fn mount_at(dir: &Path, mib: u64) {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount(8)");
        assert!(
            status.success(),
            "mounting a {mib} MiB tmpfs failed: the full-disk tests need root"
        );
    }

    fn path(&self) -> std::path::PathBuf {
        self.mount_point.clone()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

/// The WAL and the database share one small disk: the WAL, which
/// preallocates its segments ahead, runs out first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_raises_nospace_keeps_reads_and_recovers_after_defrag() {
    let disk = SmallDisk::mount(224);
    // The data dir is the mount point: the test's log lies beside it, on
    // the real disk.
    let mut server = crate::Server::start(&disk.path()).await;
    let db = server::datadir::db_path(&disk.path());
    nospace_then_recovery(
        &mut server,
        "the WAL cannot preallocate its next segment",
        &db,
    )
    .await;
    drop(disk);
}

/// Only the database's directory is on a small disk (the WAL has room):
/// the file cannot grow to keep its reserve.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_cannot_grow_raises_nospace_keeps_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("m");
    let mut server = crate::Server::start(&data).await;
    server.terminate();
    let db = server::datadir::db_path(&data);
    let disk = SmallDisk::mount_over(db.parent().unwrap(), 48);
    server.restart().await;
    nospace_then_recovery(&mut server, "the database cannot keep its reserve", &db).await;
    drop(disk);
}

/// Puts 512 KiB values until the member refuses one for want of space,
/// saying `what` filled; then checks reads, a restart on the full disk,
/// and recovery by delete, compaction, defragmentation and disarm.
async fn nospace_then_recovery(server: &mut crate::Server, what: &str, db: &Path) {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType, CompactionOptions, DeleteOptions};
    let mut cl = server.client().await;
    let value = "x".repeat(512 * 1024);
    let mut acked = Vec::new();
    let mut refused = None;
    for n in 0..448 {
        let k = format!("big/{n:03}");
        match cl.put(k.as_str(), value.as_str(), None).await {
            Ok(_) => acked.push(k),
            Err(e) => {
                refused = Some(crate::status(e));
                break;
            }
        }
    }
    let (code, msg) = refused.expect("the disk never filled");
    assert_eq!(code, tonic::Code::ResourceExhausted, "{msg}");
    assert_eq!(msg, "etcdserver: mvcc: database space exceeded");
    assert!(acked.len() > 10, "only {} puts fit", acked.len());
    let log = server.log();
    assert!(
        log.contains("the disk is full") && log.contains(what),
        "{log}"
    );
    // Reads go on; the alarm names this member.
    let r = cl.get(acked[0].as_str(), None).await.unwrap();
    assert_eq!(r.kvs()[0].value().len(), value.len());
    let alarms = cl
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert_eq!(alarms.alarms().len(), 1);
    assert_eq!(alarms.alarms()[0].alarm(), AlarmType::Nospace);

    // A restart on the full disk does not crash-loop: it serves reads and
    // still refuses writes.
    server.restart().await;
    let mut cl = server.client().await;
    for k in &acked {
        let r = cl.get(k.as_str(), None).await.unwrap();
        assert_eq!(r.kvs().len(), 1, "{k} lost");
    }
    let e = cl.put("big/more", value.as_str(), None).await.unwrap_err();
    assert_eq!(
        crate::status(e).1,
        "etcdserver: mvcc: database space exceeded"
    );

    // Deletes, compaction, defragmentation and disarm recover.
    let del = cl
        .delete("big/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(del.deleted() as usize, acked.len());
    let rev = del.header().unwrap().revision();
    cl.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let mut m = server.client().await;
    m.defragment().await.unwrap();
    let mut only = AlarmOptions::new();
    only.with_member(alarms.alarms()[0].member_id());
    cl.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(only))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match cl.put("after", "ok", None).await {
            Ok(_) => break,
            Err(e) => {
                let (_, msg) = crate::status(e);
                assert!(
                    std::time::Instant::now() < deadline,
                    "writes still refused after recovery: {msg}\n{}",
                    server.log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(server.is_running());
    server.terminate();
    crate::kvtool_check_db(db);
}

/// Raises this process's open-file limit (children inherit it) so that
/// the test and the member can each hold `need` descriptors.
fn allow_descriptors(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < need {
            lim.rlim_cur = need.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(
        lim.rlim_cur >= need,
        "this test needs {need} open files; the hard limit is {}",
        lim.rlim_max
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_holds_its_bound_of_connections_and_accepts_more_as_they_close() {
    let bound = server::tls::incoming::MAX_CONNECTIONS;
    allow_descriptors(bound as u64 + 1000);
    let dir = tempfile::tempdir().unwrap();
    let s = crate::Server::start(&dir.path().join("m")).await;
    // Connections that never say a word, up to the bound.
    let mut idle = Vec::with_capacity(bound);
    for _ in 0..bound {
        idle.push(std::net::TcpStream::connect(&s.endpoint).unwrap());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !s
        .log()
        .contains("connections are open: accepting more once one closes")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener never reached its bound:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One more client waits in the kernel's backlog: no answer.
    let ep = s.endpoint.clone();
    let waiting = tokio::spawn(async move {
        let mut c = etcd_client::Client::connect([ep.as_str()], None).await?;
        c.status().await.map(|st| st.version().to_string())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "a client past the bound was served");
    // As connections close, the waiting one is taken and served.
    idle.truncate(bound - 100);
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting client was served once connections closed")
        .unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    drop(idle);
    let mut c = s.client().await;
    c.put("after", "v", None).await.unwrap();
}
