//! etcd's flags: each one kvserver takes does what etcd's does, and each
//! one it cannot honour is refused at start with one line naming it.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::Server;

/// Runs kvserver with `args` and `env`, expecting it to refuse them;
/// returns its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvserver"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} {env:?} started:\n{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        !dir.path().join("data").exists(),
        "a refused start made a data dir"
    );
    err
}

#[test]
fn flags_kvserver_cannot_honour_are_refused_by_name() {
    let e = refused(&["--wal-dir", "/srv/wal"], &[]);
    assert!(
        e.contains("--wal-dir \"/srv/wal\": the WAL is kept in"),
        "{e}"
    );
    let e = refused(&["--force-new-cluster"], &[]);
    assert!(e.contains("--force-new-cluster \"true\""), "{e}");
    let e = refused(&["--listen-metrics-urls=unix:///tmp/m"], &[]);
    assert!(e.contains("unix:///tmp/m"), "{e}");
    let e = refused(&[], &[("ETCD_DISCOVERY", "https://discovery.etcd.io/x")]);
    assert!(e.contains("--discovery"), "{e}");
    let e = refused(&[], &[("ETCD_NO_SUCH_THING", "1")]);
    assert!(e.contains("ETCD_NO_SUCH_THING"), "{e}");
    let e = refused(&["--log-outputs", "stderr,stdout"], &[]);
    assert!(e.contains("--log-outputs"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honoured_flags_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out.log");
    let log_arg = log.to_string_lossy().into_owned();
    // Values that ask for what kvserver does are accepted.
    let s = Server::start_with(
        &dir.path().join("data"),
        &[
            "--log-outputs",
            &log_arg,
            "--log-format",
            "json",
            "--experimental-warning-apply-duration",
            "1ns",
            "--experimental-watch-progress-notify-interval",
            "200ms",
            "--max-concurrent-streams",
            "2",
            "--proxy",
            "off",
            "--enable-pprof=false",
            // No limit at all, as etcd takes it: the envelope added to it
            // must not overflow.
            "--max-request-bytes",
            "18446744073709551615",
        ],
    )
    .await;
    let mut c = s.client().await;
    c.put("k", "v", None).await.unwrap();
    // Above the default 1.5 MiB, accepted under that limit.
    c.put("big", vec![7u8; 2 << 20], None).await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("serving clients"),
        "logs go to the file:\n{text}"
    );
    assert!(text.contains("apply request took too long"), "{text}");
    // --log-format json: one object per line, the event's fields at the
    // top level.
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(events
        .iter()
        .all(|e| e["level"].is_string() && e["timestamp"].is_string()));
    let slow = events
        .iter()
        .find(|e| e["message"] == "apply request took too long")
        .expect("the slow apply, as JSON");
    assert!(slow["index"].is_u64(), "{slow}");

    // Progress notifications at the interval asked for.
    let opts = etcd_client::WatchOptions::new().with_progress_notify();
    let mut stream = c.watch("k", Some(opts)).await.unwrap();
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a progress notification within 5 s")
        .unwrap()
        .unwrap();
    assert!(
        got.events().is_empty(),
        "a progress notification, not an event"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // At most two streams at a time on one connection: a third call waits
    // until one ends.
    let s2 = c.watch("j", None).await.unwrap();
    let mut c3 = c.clone();
    let third = tokio::spawn(async move { c3.get("k", None).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third stream ran beside two open ones"
    );
    drop(s2);
    tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third call ran once a stream ended")
        .unwrap()
        .unwrap();
}

#[test]
fn out_of_range_flag_values_are_start_up_errors_not_panics() {
    let cases: &[(&[&str], &str)] = &[
        (&["--auto-compaction-retention", "inf"], "retention"),
        (&["--auto-compaction-retention", "NaN"], "retention"),
        (&["--auto-compaction-retention=-1"], "retention"),
        (&["--auto-compaction-retention", "1e400"], "retention"),
        (
            &[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1.5",
            ],
            "revision retention",
        ),
        (&["--election-timeout", "60000"], "--election-timeout"),
        (
            &["--heartbeat-interval", "18446744073709551615"],
            "--election-timeout",
        ),
        (&["--max-request-bytes=-1"], "--max-request-bytes"),
        (&["--snapshot-count=-5"], "--snapshot-count"),
        (&["--quota-backend-bytes", "NaN"], "--quota-backend-bytes"),
        (
            &["--grpc-keepalive-timeout=-1s"],
            "--grpc-keepalive-timeout",
        ),
        (
            &["--max-concurrent-streams", "99999999999"],
            "--max-concurrent-streams",
        ),
    ];
    for (args, names) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_kvserver"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "{args:?}: {:?}",
            out.status
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
        assert!(
            !dir.path().join("data").exists(),
            "{args:?} made a data dir"
        );
    }
}
