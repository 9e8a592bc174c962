//! Start-up checks: a WAL that does not cover what the database has
//! applied is refused with a clear error (never silent loss), and a member
//! of another cluster is refused by its would-be peers.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::Server;

/// Starts kvserver on `data_dir` expecting it to fail; returns its stderr.
fn start_fails(data_dir: &std::path::Path) -> String {
    start_fails_with(data_dir, &[])
}

/// [`start_fails`] with environment variables `env`. A kvserver that has
/// not exited within 30 s is killed and fails the test.
fn start_fails_with(data_dir: &std::path::Path, env: &[(&str, &str)]) -> String {
    let peer = format!("http://127.0.0.1:{}", crate::free_port());
    let client = format!("http://127.0.0.1:{}", crate::free_port());
    let log = data_dir.with_extension("failed.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvserver"))
        .args(["--name", "n1", "--data-dir"])
        .arg(data_dir)
        .args(["--listen-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("n1={peer}")])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kvserver did not exit: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "kvserver started: {stderr}");
    stderr
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test]
async fn a_wal_that_does_not_cover_the_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut s = Server::start(&data).await;
    let mut c = s.client().await;
    for i in 0..20 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    assert!(s.terminate().success());
    let wal = data.join("member").join("wal");
    let early = dir.path().join("early-wal");
    copy_dir(&wal, &early);
    let mut s = Server::start(&data).await;
    let mut c = s.client().await;
    for i in 0..20 {
        c.put(format!("later{i}"), "v", None).await.unwrap();
    }
    // A clean stop syncs the database: it has applied every entry.
    assert!(s.terminate().success());

    // The WAL put back as it was earlier: it ends before what the
    // database has applied.
    std::fs::remove_dir_all(&wal).unwrap();
    copy_dir(&early, &wal);
    let err = start_fails(&data);
    assert!(
        err.contains("but the WAL in") && err.contains("ends at index"),
        "{err}"
    );

    // No WAL at all beside a database that has applied entries.
    std::fs::remove_dir_all(&wal).unwrap();
    let err = start_fails(&data);
    assert!(err.contains("holds no WAL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_of_another_cluster_is_refused() {
    // The third member was given another token, so another cluster ID.
    let mut c = Cluster::spawn_all(3, &[], &[&[], &[], &["--initial-cluster-token", "other"]]);
    c.wait_serving(0).await;
    c.wait_serving(1).await;
    let mut m = c.client(0).await;
    m.put("k", "v", None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = c.log(0) + &c.log(1);
        if logs.contains("refusing a message from member") && logs.contains("of cluster") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            c.log_tail(0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let odd = c.log(2);
    assert!(
        odd.contains("refuses this member's messages"),
        "{}",
        c.log_tail(2)
    );
    // The list of the real cluster holds its two members that started.
    let list = m.member_list().await.unwrap();
    let started = list
        .members()
        .iter()
        .filter(|x| !x.client_urls().is_empty());
    assert_eq!(started.count(), 2);
}

/// A first start fsyncs each directory it creates (the data dir's parent,
/// `member/`, `member/wal/`, `member/snap/`): a failed one stops the
/// start with one line naming the directory, and the next start on the
/// same data dir goes on cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_fsyncs_each_directory_it_makes_and_a_failed_one_is_retried_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("datadir::fsync_dir", std::path::PathBuf::new()),
        ("wal::fsync_dir", std::path::PathBuf::from("member")),
        ("btree::fsync_dir", std::path::PathBuf::from("member/snap")),
    ];
    for (point, sub) in cases {
        let case = dir.path().join(point.replace("::", "-"));
        std::fs::create_dir(&case).unwrap();
        let data = case.join("data");
        let stderr = start_fails_with(&data, &[("FAILPOINTS", &format!("{point}=return"))]);
        let want = if sub.as_os_str().is_empty() {
            case.clone()
        } else {
            data.join(&sub)
        };
        let line = format!("{}: fsync directory", want.display());
        assert!(
            stderr.contains(&line),
            "{point}: wants {line:?} in {stderr}"
        );
        let server = Server::start(&data).await;
        let mut cl = server.client().await;
        tokio::time::timeout(Duration::from_secs(10), cl.put("k", point, None))
            .await
            .unwrap_or_else(|_| panic!("{point}: the restarted member takes no write"))
            .unwrap();
        let got = cl.get("k", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), point.as_bytes());
    }
}
