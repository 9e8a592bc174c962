//! Watch: live events, history replay, prev_kv, filters, cancel, progress,
//! and a start below the compacted revision.

use std::time::Duration;

use etcd_client::{EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream};

use crate::Server;

/// The next response that carries events (or a cancel), at most 5 s away.
async fn next_events(stream: &mut WatchStream) -> WatchResponse {
    loop {
        let r = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a watch response within 5 s")
            .expect("the stream is open")
            .expect("a response");
        if !r.events().is_empty() || r.canceled() {
            return r;
        }
    }
}

/// The ID from the created response that opens a watch.
async fn created(stream: &mut WatchStream) -> i64 {
    let r = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("created within 5 s")
        .unwrap()
        .unwrap();
    assert!(r.created());
    r.watch_id()
}

fn summary(r: &WatchResponse) -> Vec<(EventType, String, String, Option<String>)> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
            )
        })
        .collect()
}

#[tokio::test]
async fn watchers_see_live_changes_with_prev_kv_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    let mut all_stream = c
        .watch(
            "p/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    let all = created(&mut all_stream).await;
    let mut puts_stream = c
        .watch(
            "p/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoDelete]),
            ),
        )
        .await
        .unwrap();
    created(&mut puts_stream).await;
    c.put("p/a", "1", None).await.unwrap();
    c.put("p/a", "2", None).await.unwrap();
    c.put("other", "x", None).await.unwrap();
    c.delete("p/a", None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.extend(summary(&next_events(&mut all_stream).await));
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Put, "p/a".into(), "1".into(), None),
            (EventType::Put, "p/a".into(), "2".into(), Some("1".into())),
            (EventType::Delete, "p/a".into(), "".into(), Some("2".into())),
        ]
    );
    let mut puts = Vec::new();
    while puts.len() < 2 {
        puts.extend(summary(&next_events(&mut puts_stream).await));
    }
    assert!(puts.iter().all(|e| e.0 == EventType::Put));
    // After a cancel, nothing more arrives on that watcher.
    all_stream.cancel(all).await.unwrap();
    c.put("p/b", "3", None).await.unwrap();
    let r = next_events(&mut puts_stream).await;
    assert_eq!(summary(&r)[0].1, "p/b");
    while let Ok(Ok(Some(r))) =
        tokio::time::timeout(Duration::from_millis(300), all_stream.message()).await
    {
        assert!(r.events().is_empty(), "an event after cancel");
    }
}

#[tokio::test]
async fn a_watch_from_the_past_replays_then_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    for i in 0..20 {
        c.put("k", format!("v{i}"), None).await.unwrap();
    }
    // Revisions 2..=21; start at 12.
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(12)))
        .await
        .unwrap();
    let mut revs = Vec::new();
    while revs.len() < 10 {
        for e in next_events(&mut stream).await.events() {
            revs.push(e.kv().unwrap().mod_revision());
        }
    }
    assert_eq!(revs, (12..=21).collect::<Vec<_>>());
    c.put("k", "live", None).await.unwrap();
    let r = next_events(&mut stream).await;
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), 22);

    // Below the compacted revision: canceled with the compact revision.
    c.compact(15, None).await.unwrap();
    let mut old_stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(5)))
        .await
        .unwrap();
    let r = next_events(&mut old_stream).await;
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), 15);
}

#[tokio::test]
async fn a_progress_request_reports_the_current_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    c.put("x", "1", None).await.unwrap();
    let mut stream = c.watch("y", None).await.unwrap();
    created(&mut stream).await;
    stream.request_progress().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = stream.message().await.unwrap().unwrap();
            if !r.created() && r.events().is_empty() {
                return r;
            }
        }
    })
    .await
    .expect("a progress notification");
    assert_eq!(r.header().unwrap().revision(), 2);
}

#[tokio::test]
async fn large_responses_come_in_fragments_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("d"), &["--max-request-bytes", "10000"]).await;
    let mut c = server.client().await;
    for i in 0..10 {
        c.put(format!("f/{i}"), vec![b'x'; 4000], None)
            .await
            .unwrap();
    }
    let opts = WatchOptions::new().with_prefix().with_prev_key();
    let mut whole = c.watch("f/", Some(opts.clone())).await.unwrap();
    created(&mut whole).await;
    let mut parts = c.watch("f/", Some(opts.with_fragment())).await.unwrap();
    created(&mut parts).await;
    // One revision deleting ten keys, each event carrying a 4000-byte
    // previous value: 40 KB, over the 10 KB limit.
    c.delete("f/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let r = next_events(&mut whole).await;
    assert_eq!(r.events().len(), 10, "unfragmented: one response");
    let mut got = 0;
    let mut responses = 0;
    while got < 10 {
        got += next_events(&mut parts).await.events().len();
        responses += 1;
    }
    assert_eq!(got, 10);
    assert!(responses >= 4, "{responses} fragments of at most 10 KB");
}

#[tokio::test]
async fn a_client_chosen_watch_id_must_be_positive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    // -1 marks progress notifications and failed creations: refused.
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_watch_id(-1)))
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an answer within 5 s")
        .unwrap()
        .unwrap();
    assert!(r.created() && r.canceled(), "{r:?}");
    assert_eq!(r.watch_id(), -1);
    assert_eq!(
        r.cancel_reason(),
        "mvcc: watch ID -1 is invalid (a client-chosen watch ID must be positive)"
    );
    // A positive one is the client's to pick, and sees events.
    stream
        .watch("k", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    assert_eq!(created(&mut stream).await, 7);
    c.put("k", "v", None).await.unwrap();
    let r = next_events(&mut stream).await;
    assert_eq!(r.watch_id(), 7);
    assert_eq!(summary(&r)[0].1, "k");
}

/// A client that reads nothing from its watch stream: its watcher falls
/// behind and is set aside (a victim), while puts go on answering and a
/// watcher on another connection sees every event in order; once read, the
/// slow one has missed nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_that_reads_nothing_holds_up_neither_writes_nor_other_watchers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let prefix = || Some(WatchOptions::new().with_prefix());
    let mut slow_client = server.client().await;
    let mut slow = slow_client.watch("s/", prefix()).await.unwrap();
    created(&mut slow).await;
    let mut fast_client = server.client().await;
    let mut fast = fast_client.watch("s/", prefix()).await.unwrap();
    created(&mut fast).await;
    // 3,000 events of 1 KiB: far more than the slow stream's HTTP/2 window
    // and the server's channels hold.
    let n = 3000;
    let mut c = server.client().await;
    let writer = tokio::spawn(async move {
        let value = "v".repeat(1024);
        for i in 0..n {
            tokio::time::timeout(
                Duration::from_secs(5),
                c.put(format!("s/{i:05}"), value.as_str(), None),
            )
            .await
            .expect("a put held up by a slow watcher")
            .unwrap();
        }
    });
    async fn read_all(stream: &mut WatchStream, n: usize) {
        let mut seen = 0;
        while seen < n {
            let r = next_events(stream).await;
            assert!(!r.canceled(), "{r:?}");
            for e in r.events() {
                assert_eq!(e.kv().unwrap().key_str().unwrap(), format!("s/{seen:05}"));
                seen += 1;
            }
        }
    }
    read_all(&mut fast, n).await;
    writer.await.unwrap();
    // The slow one was set aside, as etcd's gauge of slow watchers says.
    let metrics = crate::http::request(&server.endpoint, "GET", "/metrics", "")
        .await
        .body;
    let slow_watchers = metrics
        .lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_slow_watcher_total "))
        .expect("the slow-watcher gauge");
    assert_eq!(slow_watchers, "1", "{metrics}");
    read_all(&mut slow, n).await;
}

/// One stream holds at most `MAX_WATCHERS_PER_STREAM` watchers; one more
/// is refused (created and canceled with the reason), the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_stream_holds_at_most_its_bound_of_watchers() {
    let bound = mvcc::MAX_WATCHERS_PER_STREAM;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    let (mut sender, mut answers) = c.watch("k", None).await.unwrap().split();
    // The creations go out without waiting for each answer, at most 500
    // unanswered, while the answers are read. (Thousands of small
    // messages the server has not read yet trip h2's flood protection,
    // GOAWAY ENHANCE_YOUR_CALM: see the README.)
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(500));
    let permits = window.clone();
    let creating = tokio::spawn(async move {
        for _ in 1..=bound {
            permits.acquire().await.unwrap().forget();
            sender.watch("k", None).await.unwrap();
        }
        sender
    });
    let mut ids = std::collections::HashSet::new();
    let refused = loop {
        let r = answer(&mut answers, 30).await;
        assert!(r.created(), "{r:?}");
        window.add_permits(1);
        if r.canceled() {
            break r;
        }
        assert!(ids.insert(r.watch_id()), "watch ID {} twice", r.watch_id());
    };
    let _sender = creating.await.unwrap();
    assert_eq!(ids.len(), bound);
    assert_eq!(
        refused.cancel_reason(),
        format!("mvcc: too many watchers on one watch stream (at most {bound})")
    );
    // The watchers it has still see events.
    c.put("k", "v", None).await.unwrap();
    let r = loop {
        let r = answer(&mut answers, 5).await;
        if !r.events().is_empty() {
            break r;
        }
    };
    assert_eq!(summary(&r)[0].1, "k");
}

/// The next answer on the receiving half of a split watch stream, at most
/// `secs` seconds away.
async fn answer(answers: &mut etcd_client::WatchResponseStream, secs: u64) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(secs), answers.message())
        .await
        .unwrap_or_else(|_| panic!("a watch answer within {secs} s"))
        .expect("the stream is open")
        .expect("an answer")
}
