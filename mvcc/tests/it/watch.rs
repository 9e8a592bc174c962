//! Watches: live delivery, history replay and its handover to live events,
//! filters, cancel, compaction, progress, slow consumers, and a
//! completeness run with concurrent writes and watchers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mvcc::{
    spawn_watch_syncer, EventKind, PutRequest, Store, WatchError, WatchRequest, WatchResponse,
};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc::Receiver;

fn open() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let s = crate::open_store(&dir.path().join("kv.db"));
    (dir, Arc::new(s))
}

fn put(s: &Store, key: &str, value: &str) -> i64 {
    let mut a = s.apply().unwrap();
    let r = a
        .put(&PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .unwrap();
    a.commit(r.revision as u64).unwrap();
    r.revision
}

fn delete(s: &Store, key: &str, end: &str) -> i64 {
    let mut a = s.apply().unwrap();
    let r = a
        .delete_range(key.as_bytes(), end.as_bytes(), false)
        .unwrap();
    a.commit(r.revision as u64).unwrap();
    r.revision
}

fn watch_req(key: &str, end: &str, start: i64) -> WatchRequest {
    WatchRequest {
        key: key.into(),
        range_end: end.into(),
        start_revision: start,
        ..Default::default()
    }
}

/// The next response, waiting at most five seconds.
fn next(rx: &mut Receiver<WatchResponse>) -> WatchResponse {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match rx.try_recv() {
            Ok(r) => return r,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("no watch response: {e:?}"),
        }
    }
}

fn no_more(rx: &mut Receiver<WatchResponse>) {
    std::thread::sleep(Duration::from_millis(50));
    assert!(rx.try_recv().is_err(), "an unexpected response");
}

/// (kind, key, value, mod_revision, prev value)
type Seen = (EventKind, String, String, i64, Option<String>);

fn summary(r: &WatchResponse) -> Vec<Seen> {
    r.events
        .iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8(e.kv.key.clone()).unwrap(),
                String::from_utf8(e.kv.value.clone()).unwrap(),
                e.kv.mod_revision,
                e.prev_kv
                    .as_ref()
                    .map(|p| String::from_utf8(p.value.clone()).unwrap()),
            )
        })
        .collect()
}

#[test]
fn live_watchers_get_their_keys_changes_with_filters_and_prev_kv() {
    let (_d, s) = open();
    let (ws, mut rx) = s.watch_stream(16);
    let one = ws.watch(&watch_req("a", "", 0)).unwrap();
    let prefix = ws
        .watch(&WatchRequest {
            prev_kv: true,
            ..watch_req("p/", "p0", 0)
        })
        .unwrap();
    let puts_only = ws
        .watch(&WatchRequest {
            no_delete: true,
            ..watch_req("", "\0", 0)
        })
        .unwrap();
    assert_eq!((one, prefix, puts_only), (0, 1, 2), "IDs count from 0");
    put(&s, "a", "1"); // 2
    put(&s, "p/x", "2"); // 3
    put(&s, "p/x", "3"); // 4
    delete(&s, "p/", "p0"); // 5
    let mut got: Vec<(i64, Vec<Seen>)> = (0..7)
        .map(|_| {
            let r = next(&mut rx);
            (r.watch_id, summary(&r))
        })
        .collect();
    no_more(&mut rx);
    got.sort_by_key(|(id, evs)| (*id, evs[0].3));
    use EventKind::*;
    assert_eq!(
        got,
        vec![
            (0, vec![(Put, "a".into(), "1".into(), 2, None)]),
            (1, vec![(Put, "p/x".into(), "2".into(), 3, None)]),
            (
                1,
                vec![(Put, "p/x".into(), "3".into(), 4, Some("2".into()))]
            ),
            (
                1,
                vec![(Delete, "p/x".into(), "".into(), 5, Some("3".into()))]
            ),
            (2, vec![(Put, "a".into(), "1".into(), 2, None)]),
            (2, vec![(Put, "p/x".into(), "2".into(), 3, None)]),
            (2, vec![(Put, "p/x".into(), "3".into(), 4, None)]),
        ]
    );
    // Cancel stops a watcher; a second cancel finds nothing.
    assert!(ws.cancel(one));
    assert!(!ws.cancel(one));
    put(&s, "a", "again");
    let r = next(&mut rx);
    assert_eq!(r.watch_id, puts_only);
    no_more(&mut rx);
    // IDs: a freed one is reused by the automatic choice only once the
    // counter passes it; an ID in use is refused; an explicit one is kept.
    assert_eq!(ws.watch(&watch_req("b", "", 0)).unwrap(), 3);
    assert_eq!(
        ws.watch(&WatchRequest {
            watch_id: 3,
            ..watch_req("b", "", 0)
        }),
        Err(WatchError::DuplicateId)
    );
    assert_eq!(
        ws.watch(&WatchRequest {
            watch_id: 100,
            ..watch_req("b", "", 0)
        }),
        Ok(100)
    );
    assert_eq!(
        ws.watch(&watch_req("b", "a", 0)),
        Err(WatchError::EmptyRange)
    );
    assert_eq!(
        ws.watch(&watch_req("b", "b", 0)),
        Err(WatchError::EmptyRange)
    );
    drop(ws);
    assert_eq!(
        s.watcher_count(),
        (0, 0, 0),
        "dropping the stream drops its watchers"
    );
}

#[test]
fn a_watcher_created_while_a_batch_is_applied_gets_the_batch() {
    // The batch began with no watcher, so it collected no events; the
    // watcher is caught up from the B+tree instead.
    let (_d, s) = open();
    let _syncer =
        spawn_watch_syncer(&s, Duration::from_millis(5), Duration::from_secs(600)).unwrap();
    let mut a = s.apply().unwrap();
    a.put(&PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
    .unwrap();
    let (ws, mut rx) = s.watch_stream(4);
    ws.watch(&watch_req("k", "", 0)).unwrap();
    let later = ws.watch(&watch_req("k", "", 3)).unwrap();
    a.commit(1).unwrap();
    let r = next(&mut rx);
    assert_eq!((r.watch_id, r.events.len()), (0, 1));
    no_more(&mut rx);
    put(&s, "k", "w");
    let mut ids: Vec<i64> = (0..2).map(|_| next(&mut rx).watch_id).collect();
    ids.sort();
    assert_eq!(ids, vec![0, later]);
}

#[test]
fn a_transaction_reaches_a_watcher_as_one_response() {
    let (_d, s) = open();
    let (ws, mut rx) = s.watch_stream(16);
    ws.watch(&watch_req("k", "l", 0)).unwrap();
    let mut a = s.apply().unwrap();
    for k in ["k1", "k2", "k3"] {
        a.put(&PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .unwrap();
    }
    a.delete_range(b"k1", b"", false).unwrap();
    a.commit(1).unwrap();
    let r = next(&mut rx);
    let revs: Vec<i64> = r.events.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, vec![2, 3, 4, 5]);
    assert_eq!(r.revision, 5);
    no_more(&mut rx);
}

#[test]
fn watching_from_the_past_replays_then_continues_live() {
    let (_d, s) = open();
    // Put i makes revision i + 1.
    for i in 1..=30 {
        put(&s, &format!("k{}", i % 3), &format!("v{i}"));
    }
    let _syncer =
        spawn_watch_syncer(&s, Duration::from_millis(5), Duration::from_secs(600)).unwrap();
    let (ws, mut rx) = s.watch_stream(4);
    ws.watch(&WatchRequest {
        prev_kv: true,
        ..watch_req("k1", "", 5)
    })
    .unwrap();
    // Writes continue while the replay runs.
    for i in 31..=60 {
        put(&s, &format!("k{}", i % 3), &format!("v{i}"));
    }
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(r, _, _)| *r < 59) {
        for e in next(&mut rx).events {
            seen.push((
                e.kv.mod_revision,
                String::from_utf8(e.kv.value).unwrap(),
                e.prev_kv.map(|p| String::from_utf8(p.value).unwrap()),
            ));
        }
    }
    let expected: Vec<(i64, String, Option<String>)> = (4..=60)
        .filter(|i| i % 3 == 1)
        .map(|i| (i + 1, format!("v{i}"), Some(format!("v{}", i - 3))))
        .collect();
    assert_eq!(seen, expected);
    // The syncer hands a caught-up watcher back to the synced set just
    // after delivering its last replayed events.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.watcher_count() != (1, 0, 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(s.watcher_count(), (1, 0, 0), "caught up, so synced");
    put(&s, "k1", "live");
    assert_eq!(next(&mut rx).events[0].kv.mod_revision, 62);
}

#[test]
fn a_start_below_the_compacted_revision_gets_a_compacted_response() {
    let (_d, s) = open();
    for i in 1..=10 {
        put(&s, "k", &format!("v{i}"));
    }
    let mut a = s.apply().unwrap();
    a.compact(7).unwrap();
    a.commit(11).unwrap();
    s.finish_compaction().unwrap();
    let _syncer =
        spawn_watch_syncer(&s, Duration::from_millis(5), Duration::from_secs(600)).unwrap();
    let (ws, mut rx) = s.watch_stream(4);
    let old = ws.watch(&watch_req("k", "", 4)).unwrap();
    let r = next(&mut rx);
    assert_eq!((r.watch_id, r.compact_revision), (old, 7));
    assert!(r.events.is_empty());
    // As in etcd, the compacted revision itself can still be watched from.
    let at = ws.watch(&watch_req("k", "", 7)).unwrap();
    let r = next(&mut rx);
    assert_eq!(r.watch_id, at);
    let revs: Vec<i64> = r.events.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, (7..=11).collect::<Vec<_>>());
    assert_eq!(
        s.watcher_count(),
        (1, 0, 0),
        "the compacted watcher is gone"
    );
}

#[test]
fn progress_requests_and_notifications_carry_the_revision() {
    let (_d, s) = open();
    put(&s, "x", "1");
    put(&s, "y", "2");
    let (ws, mut rx) = s.watch_stream(4);
    ws.watch(&WatchRequest {
        progress_notify: true,
        ..watch_req("a", "", 0)
    })
    .unwrap();
    ws.watch(&watch_req("b", "", 0)).unwrap();
    ws.request_progress();
    assert_eq!(
        next(&mut rx),
        WatchResponse {
            watch_id: -1,
            revision: 3,
            ..Default::default()
        }
    );
    s.notify_watch_progress();
    assert_eq!(
        next(&mut rx),
        WatchResponse {
            watch_id: 0,
            revision: 3,
            ..Default::default()
        }
    );
    no_more(&mut rx);
    // With a watcher still replaying, the stream's progress waits for it.
    let (ws2, mut rx2) = s.watch_stream(4);
    ws2.watch(&watch_req("x", "", 2)).unwrap();
    ws2.request_progress();
    no_more(&mut rx2);
    while s.sync_watchers(16, 100).unwrap() {}
    assert_eq!(next(&mut rx2).events.len(), 1);
    s.sync_watchers(16, 100).unwrap();
    assert_eq!(next(&mut rx2).watch_id, -1);
}

#[test]
fn a_slow_consumer_holds_up_neither_writes_nor_other_watchers() {
    let (_d, s) = open();
    let _syncer =
        spawn_watch_syncer(&s, Duration::from_millis(5), Duration::from_secs(600)).unwrap();
    let (slow_stream, mut slow) = s.watch_stream(2);
    slow_stream.watch(&watch_req("k", "", 0)).unwrap();
    let (fast_stream, mut fast) = s.watch_stream(4096);
    fast_stream.watch(&watch_req("k", "", 0)).unwrap();
    for i in 1..=1000 {
        put(&s, "k", &format!("{i}"));
    }
    // Every write went through and the fast watcher has all of them while
    // the slow one has read nothing yet.
    let mut fast_revs = Vec::new();
    while fast_revs.len() < 1000 {
        fast_revs.extend(next(&mut fast).events.iter().map(|e| e.kv.mod_revision));
    }
    assert_eq!(fast_revs, (2..=1001).collect::<Vec<_>>());
    let (_, unsynced, victims) = s.watcher_count();
    assert_eq!(
        unsynced + victims,
        1,
        "the slow watcher left the synced set"
    );
    // Reading slowly, it still gets exactly every revision once.
    let mut slow_revs = Vec::new();
    while slow_revs.len() < 1000 {
        slow_revs.extend(next(&mut slow).events.iter().map(|e| e.kv.mod_revision));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(slow_revs, (2..=1001).collect::<Vec<_>>());
    no_more(&mut slow);
    // And it is back in the synced set.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.watcher_count() != (2, 0, 0) {
        assert!(Instant::now() < deadline, "{:?}", s.watcher_count());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// (revision, key, Some(value) | None for a delete)
type Change = (i64, String, Option<String>);

/// One applier writes random puts, deletes and transactions over a small
/// key space while threads open watchers at random moments, on random
/// ranges, from random past or current revisions, some reading slowly.
/// Every watcher must see exactly the changes to its range from its start
/// revision on, each once, in revision order, as the writer logged them.
#[test]
fn every_watcher_sees_exactly_its_ranges_history() {
    let (_d, s) = open();
    let _syncer =
        spawn_watch_syncer(&s, Duration::from_millis(2), Duration::from_secs(600)).unwrap();
    const WRITES: usize = 3000;
    const KEYS: u32 = 20;
    let key = |i: u32| format!("k{i:02}");
    // (revision, key, Some(value) | None for a delete) in apply order.
    let log: Arc<std::sync::Mutex<Vec<Change>>> = Default::default();
    let writer = {
        let s = s.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            for n in 0..WRITES {
                let mut a = s.apply().unwrap();
                let base = s.current_revision();
                let mut changes = Vec::new();
                match rng.random_range(0..10) {
                    0..=5 => {
                        let k = key(rng.random_range(0..KEYS));
                        let v = format!("v{n}");
                        let r = a
                            .put(&PutRequest {
                                key: k.clone().into(),
                                value: v.clone().into(),
                                ..Default::default()
                            })
                            .unwrap();
                        changes.push((r.revision, k, Some(v)));
                    }
                    6..=7 => {
                        let lo = rng.random_range(0..KEYS);
                        let hi = (lo + rng.random_range(1..4)).min(KEYS);
                        let live: Vec<String> = (lo..hi)
                            .map(key)
                            .filter(|k| {
                                s.range(&mvcc::RangeRequest {
                                    key: k.clone().into(),
                                    ..Default::default()
                                })
                                .unwrap()
                                .count
                                    > 0
                            })
                            .collect();
                        let r = a
                            .delete_range(key(lo).as_bytes(), key(hi).as_bytes(), false)
                            .unwrap();
                        assert_eq!(r.deleted as usize, live.len());
                        for k in live {
                            changes.push((r.revision, k, None));
                        }
                    }
                    _ => {
                        // Several puts in one transaction: one revision.
                        let mut ks: Vec<u32> = (0..3).map(|_| rng.random_range(0..KEYS)).collect();
                        ks.sort();
                        ks.dedup();
                        let ops = ks
                            .iter()
                            .map(|k| {
                                mvcc::RequestOp::Put(PutRequest {
                                    key: key(*k).into(),
                                    value: format!("t{n}").into(),
                                    ..Default::default()
                                })
                            })
                            .collect();
                        a.txn(&mvcc::TxnRequest {
                            compare: vec![],
                            success: ops,
                            failure: vec![],
                        })
                        .unwrap();
                        for k in ks {
                            changes.push((base + 1, key(k), Some(format!("t{n}"))));
                        }
                    }
                }
                a.commit(n as u64 + 1).unwrap();
                log.lock().unwrap().extend(changes);
                if n % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let done = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut watchers = Vec::new();
    for w in 0..12u64 {
        let s = s.clone();
        let done = done.clone();
        watchers.push(std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + w);
            std::thread::sleep(Duration::from_millis(rng.random_range(0..100)));
            let lo = rng.random_range(0..KEYS);
            let hi = (lo + rng.random_range(1..8)).min(KEYS);
            let end = if hi == lo + 1 && rng.random_bool(0.5) {
                String::new()
            } else {
                key(hi)
            };
            let now = s.current_revision();
            let start = match w % 3 {
                0 => 0,
                1 => rng.random_range(1..=now.max(1)),
                _ => 1,
            };
            let slow = w % 4 == 3;
            let (ws, mut rx) = s.watch_stream(if slow { 1 } else { 64 });
            ws.watch(&WatchRequest {
                key: key(lo).into(),
                range_end: end.clone().into(),
                start_revision: start,
                ..Default::default()
            })
            .unwrap();
            // "From now" means from the revision published when the
            // watcher registers; a commit may land between reading `now`
            // and registering, so the first revision is somewhere in
            // first..=last_first.
            let after = s.current_revision();
            let (first, last_first) = if start == 0 {
                (now + 1, after + 1)
            } else {
                (start, start)
            };
            let mut seen: Vec<Change> = Vec::new();
            let mut asked = false;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                assert!(Instant::now() < deadline, "watcher {w} never caught up");
                let final_revision = done.load(std::sync::atomic::Ordering::SeqCst);
                if !asked && final_revision > 0 {
                    ws.request_progress();
                    asked = true;
                }
                match rx.try_recv() {
                    Ok(r) if r.watch_id == -1 => {
                        if r.revision >= final_revision {
                            break;
                        }
                        asked = false;
                    }
                    Ok(r) => {
                        for e in r.events {
                            seen.push((
                                e.kv.mod_revision,
                                String::from_utf8(e.kv.key).unwrap(),
                                (e.kind == EventKind::Put)
                                    .then(|| String::from_utf8(e.kv.value).unwrap()),
                            ));
                        }
                        if slow {
                            std::thread::sleep(Duration::from_micros(300));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            (lo, end, first, last_first, seen)
        }));
    }
    writer.join().unwrap();
    done.store(s.current_revision(), std::sync::atomic::Ordering::SeqCst);
    let log = log.lock().unwrap().clone();
    for w in watchers {
        let (lo, end, first_lo, first_hi, seen) = w.join().unwrap();
        let lo_key = key(lo);
        let expected_from = |first: i64| -> Vec<Change> {
            log.iter()
                .filter(|(rev, k, _)| {
                    *rev >= first
                        && if end.is_empty() {
                            *k == lo_key
                        } else {
                            *k >= lo_key && *k < end
                        }
                })
                .cloned()
                .collect()
        };
        let first = (first_lo..=first_hi)
            .find(|f| expected_from(*f) == seen)
            .unwrap_or(first_lo);
        let expected = expected_from(first);
        assert!(!expected.is_empty() || first > 1000);
        assert_eq!(
            seen.len(),
            expected.len(),
            "watcher on {lo_key}..{end} from {first_lo}..={first_hi}"
        );
        assert_eq!(seen, expected, "watcher on {lo_key}..{end} from {first}");
    }
}

#[test]
fn an_expired_lease_revoked_deletes_its_keys_and_watchers_see_it() {
    let (_d, s) = open();
    let mut a = s.apply().unwrap();
    a.lease_grant(9, 5).unwrap();
    for k in ["l/a", "l/b"] {
        a.put(&PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            lease: 9,
            ..Default::default()
        })
        .unwrap();
    }
    a.commit(1).unwrap();
    let (ws, mut rx) = s.watch_stream(4);
    ws.watch(&WatchRequest {
        prev_kv: true,
        ..watch_req("l/", "l0", 0)
    })
    .unwrap();
    // What the leader does: find the expired leases, revoke each.
    assert!(s.expired_leases(Instant::now()).is_empty());
    let expired = s.expired_leases(Instant::now() + Duration::from_secs(6));
    assert_eq!(expired, vec![9]);
    let mut a = s.apply().unwrap();
    for id in expired {
        a.lease_revoke(id).unwrap();
    }
    a.commit(2).unwrap();
    let r = next(&mut rx);
    use EventKind::Delete;
    assert_eq!(
        summary(&r),
        vec![
            (Delete, "l/a".into(), "".into(), 4, Some("v".into())),
            (Delete, "l/b".into(), "".into(), 4, Some("v".into())),
        ]
    );
    assert!(s.leases().is_empty());
    let left = s
        .range(&mvcc::RangeRequest {
            key: b"l/".to_vec(),
            range_end: b"l0".to_vec(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(left.count, 0);
}

#[test]
fn a_stream_holds_at_most_its_bound_of_watchers() {
    let (_d, s) = open();
    let (ws, _rx) = s.watch_stream(16);
    let bound = mvcc::MAX_WATCHERS_PER_STREAM;
    for n in 0..bound {
        assert_eq!(ws.watch(&watch_req("k", "", 0)), Ok(n as i64));
    }
    assert_eq!(
        ws.watch(&watch_req("k", "", 0)),
        Err(WatchError::TooManyWatchers)
    );
    // The bound is the stream's: another stream still watches, and a
    // cancel frees a place.
    let (other, _orx) = s.watch_stream(16);
    assert_eq!(other.watch(&watch_req("k", "", 0)), Ok(0));
    assert!(ws.cancel(7));
    assert_eq!(
        ws.watch(&WatchRequest {
            watch_id: 7,
            ..watch_req("k", "", 0)
        }),
        Ok(7)
    );
    assert_eq!(s.watcher_count().0, bound + 1);
}
