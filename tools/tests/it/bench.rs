//! `bench` loads a member and reports what it measured.

use crate::{describe, json_line, kvtool_async, stdout, Member};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_load_runs_and_reports_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(&dir.path().join("m"), &[]).await;
    let ep = m.endpoint.clone();
    let common = ["--endpoints", ep.as_str(), "--conns", "2", "--clients", "8"];

    let run = |load: Vec<&'static str>, total: &'static str| {
        let mut args: Vec<String> = vec!["bench".into()];
        args.extend(load.iter().map(|s| s.to_string()));
        args.extend(common.iter().map(|s| s.to_string()));
        args.extend(["--total".to_string(), total.to_string()]);
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            kvtool_async(&refs).await
        }
    };

    let o = run(
        vec!["put", "--key-space-size", "50", "--val-size", "64"],
        "400",
    )
    .await;
    assert!(o.status.success(), "{}", describe(&o));
    let out = stdout(&o);
    assert!(
        out.contains("Requests/sec") && out.contains("99.9% in"),
        "{out}"
    );
    let j = json_line(&o);
    assert_eq!(j["ok"], 400, "{j}");
    assert_eq!(j["errors"], 0, "{j}");
    assert!(j["per_second"].as_f64().unwrap() > 0.0);
    assert!(j["latency_ms"]["p99"].as_f64().unwrap() >= j["latency_ms"]["p50"].as_f64().unwrap());
    // The puts landed: 50 distinct keys at most, 400 revisions.
    let (kvs, rev) = m.all().await;
    assert!(!kvs.is_empty() && kvs.len() <= 50, "{}", kvs.len());
    assert_eq!(rev, 401);

    for consistency in ["l", "s"] {
        let o = run(
            vec!["range", "00000001", "--consistency", consistency],
            "300",
        )
        .await;
        let j = json_line(&o);
        assert_eq!(
            (j["ok"].as_u64(), j["errors"].as_u64()),
            (Some(300), Some(0)),
            "{}",
            describe(&o)
        );
    }

    let o = run(
        vec![
            "txn",
            "--txn-ops",
            "3",
            "--key-space-size",
            "1000",
            "--sequential-keys",
        ],
        "100",
    )
    .await;
    let j = json_line(&o);
    assert_eq!(j["ok"], 100, "{}", describe(&o));
    assert_eq!(m.all().await.1, 501, "one revision per txn");

    let o = run(vec!["watch", "--watchers", "20", "--streams", "4"], "50").await;
    let j = json_line(&o);
    assert_eq!(j["errors"], 0, "{}", describe(&o));
    assert_eq!(
        j["ok"],
        20 * 50,
        "every watcher saw every put: {}",
        describe(&o)
    );
    m.stop().await;

    // Nobody listening: every request fails, and the command says so.
    let o = kvtool_async(&["bench", "put", "--endpoints", &ep, "--total", "5"]).await;
    assert!(!o.status.success(), "{}", describe(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_checks_every_watch_event_and_samples_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(&dir.path().join("m"), &[]).await;
    let ep = m.endpoint.clone();
    // The member runs in this process, so its memory is this process's.
    let pid = std::process::id().to_string();
    let soak = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "bench",
            "soak",
            "--endpoints",
            ep.as_str(),
            "--conns",
            "2",
            "--clients",
            "8",
            "--key-space-size",
            "200",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            kvtool_async(&refs).await
        }
    };
    let o = soak(&["--total", "5"]).await;
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(
        describe(&o).contains("--total does not apply"),
        "{}",
        describe(&o)
    );

    let o = soak(&[
        "--duration",
        "6s",
        "--window",
        "2s",
        "--compact-every",
        "2s",
        "--watchers",
        "6",
        "--streams",
        "2",
        "--pid",
        &pid,
        "--max-rss-growth",
        "1024",
    ])
    .await;
    assert!(o.status.success(), "{}", describe(&o));
    let j = json_line(&o);
    assert_eq!(j["errors"], 0, "{j}");
    assert!(j["ok"].as_u64().unwrap() > 100, "{j}");
    assert!(j["compactions"].as_u64().unwrap() >= 2, "{j}");
    // Three windows: too few for the latency to be judged.
    assert!(j["p99_drift"].is_null(), "{j}");
    let expected = j["put_events_expected"].as_u64().unwrap();
    assert!(expected > 10, "{j}");
    let seen = j["put_events_seen"].as_array().unwrap();
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(|s| s.as_u64() == Some(expected)), "{j}");
    let windows = j["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 3, "{j}");
    assert!(windows
        .iter()
        .all(|w| w["rss_mib"].as_f64().unwrap() > 1.0 && w["requests"].as_u64().unwrap() > 0));

    // The member stops part-way: the soak fails and says why.
    let run = tokio::spawn(soak(&["--duration", "6s", "--window", "1s"]));
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    m.stop().await;
    let o = run.await.unwrap();
    assert!(!o.status.success(), "{}", describe(&o));
    let why = describe(&o);
    assert!(
        why.contains("requests failed") || why.contains("watch stream"),
        "{why}"
    );
}
