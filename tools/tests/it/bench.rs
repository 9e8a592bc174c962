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
