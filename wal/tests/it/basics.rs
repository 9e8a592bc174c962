use std::sync::Arc;

use wal::{HardState, Options, Record, SnapshotMarker, Wal};

use crate::{entry, indexes, log_with, open, META};

/// Appends from `threads` threads, `each` apiece, every one an entry and
/// a hard state naming it; returns the log's (batches, records) counters.
fn append_concurrently(w: &Arc<Wal>, threads: usize, each: usize) -> (u64, u64) {
    // Indexes are handed out under a lock so the log order is the index order.
    let next = Arc::new(std::sync::Mutex::new(0u64));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (w, next) = (w.clone(), next.clone());
        handles.push(std::thread::spawn(move || {
            for _ in 0..each {
                let durable = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    w.append(vec![
                        entry(*n, 1),
                        Record::HardState {
                            term: 1,
                            vote: 3,
                            commit: *n,
                        },
                    ])
                };
                durable.wait().unwrap();
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    w.counters()
}

/// How many batches in `dir` were pipelined behind another.
fn pipelined_batches(dir: &std::path::Path) -> usize {
    wal::dump(dir)
        .unwrap()
        .iter()
        .flat_map(|s| &s.frames)
        .filter(|f| matches!(f.frame, wal::Frame::Pipelined(_)))
        .count()
}

#[test]
fn appends_from_many_threads_are_recovered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let w = Arc::new(Wal::create(dir.path(), META, crate::opts()).unwrap());
    let (batches, records) = append_concurrently(&w, 8, 200);
    // Group commit: appends waiting during an fdatasync share the next one.
    eprintln!("{records} records in {batches} batches");
    assert_eq!(records, 3200);
    assert!(
        batches * 4 <= records * 3,
        "{records} records took {batches} fdatasyncs"
    );
    let backend = w.backend();
    Arc::try_unwrap(w).ok().unwrap().close();
    // io_uring keeps a second write in flight: appends arriving while one
    // is written go out at once as a pipelined batch. Plain never does.
    let pipelined = pipelined_batches(dir.path());
    eprintln!("{backend}: {pipelined} pipelined batches");
    if backend == wal::Resolved::IoUring(wal::UringMode::DsyncWrite) {
        assert!(pipelined > 0, "no batch was pipelined on {backend}");
    } else {
        assert_eq!(pipelined, 0, "{backend}");
    }
    let (_, rec) = open(dir.path()).unwrap();
    assert_eq!(rec.metadata, META);
    assert_eq!(indexes(&rec), (1..=1600).collect::<Vec<_>>());
    assert_eq!(
        rec.hard_state,
        Some(HardState {
            term: 1,
            vote: 3,
            commit: 1600
        })
    );
    assert!(rec.entries[41].data.starts_with(b"entry 42 term 1."));
    assert!(rec.torn_tail.is_none());
}

#[test]
fn concurrent_appends_roll_over_small_segments_and_reopen_whole() {
    // Pipelined batches meet segment boundaries often: a batch that starts
    // a segment waits for the writes in flight first.
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_size: 32 << 10,
        ..crate::opts()
    };
    let w = Arc::new(Wal::create(dir.path(), META, opts.clone()).unwrap());
    append_concurrently(&w, 8, 150);
    Arc::try_unwrap(w).ok().unwrap().close();
    let segments = wal::dump(dir.path()).unwrap();
    assert!(segments.len() > 10, "{} segments", segments.len());
    for s in &segments {
        assert!(
            matches!(s.end, wal::SegmentEnd::Clean { .. }),
            "{}: {:?}",
            s.path.display(),
            s.end
        );
    }
    let (w, rec) = Wal::open(dir.path(), SnapshotMarker::default(), opts).unwrap();
    assert_eq!(indexes(&rec), (1..=1200).collect::<Vec<_>>());
    assert_eq!(rec.hard_state.map(|h| h.commit), Some(1200));
    // And the log goes on after them.
    w.append(vec![entry(1201, 1)]).wait().unwrap();
    w.close();
    let (_, rec) = open(dir.path()).unwrap();
    assert_eq!(rec.entries.last().map(|e| e.index), Some(1201));
}

#[tokio::test(flavor = "current_thread")]
async fn the_async_api_resolves_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wal::create(dir.path(), META, crate::opts()).unwrap();
    let futures: Vec<_> = (1..=50).map(|i| w.append(vec![entry(i, 2)])).collect();
    for f in futures {
        f.await.unwrap();
    }
    w.close();
    let (_, rec) = open(dir.path()).unwrap();
    assert_eq!(rec.entries.len(), 50);
}

#[test]
fn the_backend_asked_for_is_the_one_used() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wal::create(dir.path(), META, crate::opts()).unwrap();
    eprintln!("backend: {}", w.backend());
    match std::env::var("WAL_TEST_BACKEND").as_deref() {
        Ok("plain") => assert_eq!(w.backend(), wal::Resolved::Plain),
        Ok("io_uring") => assert!(matches!(w.backend(), wal::Resolved::IoUring(_))),
        _ => {}
    }
}

#[test]
fn later_entries_at_an_index_replace_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 10, crate::opts());
    let (w, _) = open(dir.path()).unwrap();
    // A new leader overwrote 6..8 in term 2.
    w.append(vec![entry(6, 2), entry(7, 2), entry(8, 2)])
        .wait()
        .unwrap();
    w.close();
    let (_, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), (1..=8).collect::<Vec<_>>());
    assert!(rec.entries[..5].iter().all(|e| e.term == 1));
    assert!(rec.entries[5..].iter().all(|e| e.term == 2));
}

fn small_segments() -> Options {
    Options {
        segment_size: 16 * 1024,
        ..crate::opts()
    }
}

#[test]
fn segments_roll_over_and_reopen_from_every_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wal::create(dir.path(), META, small_segments()).unwrap();
    for i in 1..=420u64 {
        let mut recs = vec![entry(i, 1)];
        if i % 50 == 0 {
            recs.push(Record::Snapshot {
                index: i,
                term: 1,
                conf_state: b"voters: 1".to_vec(),
            });
        }
        w.append(recs).wait().unwrap();
    }
    w.close();
    let segments = wal::dump(dir.path()).unwrap();
    assert!(segments.len() >= 4, "{} segments", segments.len());
    for s in &segments {
        assert!(
            matches!(s.end, wal::SegmentEnd::Clean { .. }),
            "{:?}",
            s.end
        );
        assert!(matches!(s.frames[0].frame, wal::Frame::Chain(c) if c.seq == s.seq));
    }
    for snap in (50..=400).step_by(50) {
        let (w, rec) = Wal::open(
            dir.path(),
            SnapshotMarker {
                index: snap,
                term: 1,
            },
            small_segments(),
        )
        .unwrap();
        // Whichever marker recovery starts from, the later snapshot
        // records rebase the log: what comes back is the latest snapshot
        // and the entries after it.
        assert_eq!(
            indexes(&rec),
            (401..=420).collect::<Vec<_>>(),
            "from snapshot {snap}"
        );
        assert_eq!(rec.snapshot.as_ref().map(|s| s.index), Some(400));
        drop(w);
    }
    let err = Wal::open(
        dir.path(),
        SnapshotMarker { index: 51, term: 1 },
        small_segments(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, wal::Error::SnapshotNotFound { .. }), "{err}");
    let err = Wal::open(
        dir.path(),
        SnapshotMarker {
            index: 100,
            term: 7,
        },
        small_segments(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, wal::Error::SnapshotMismatch { .. }), "{err}");
}

#[test]
fn releasing_deletes_segments_below_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wal::create(dir.path(), META, small_segments()).unwrap();
    for i in 1..=400u64 {
        let mut recs = vec![entry(i, 1)];
        if i == 300 {
            recs.push(Record::Snapshot {
                index: 300,
                term: 1,
                conf_state: Vec::new(),
            });
        }
        w.append(recs).wait().unwrap();
    }
    let before = wal::dump(dir.path()).unwrap().len();
    let removed = w.release_to(300).wait().unwrap();
    assert!(removed > 0 && removed < before);
    // More appends after the release still land and recover.
    for i in 401..=450u64 {
        w.append(vec![entry(i, 1)]).wait().unwrap();
    }
    w.close();
    let after = wal::dump(dir.path()).unwrap();
    assert_eq!(after[0].seq as usize, removed, "the oldest segments went");
    assert!(after[0].first_index <= 300);
    let (_, rec) = Wal::open(
        dir.path(),
        SnapshotMarker {
            index: 300,
            term: 1,
        },
        small_segments(),
    )
    .unwrap();
    assert_eq!(indexes(&rec), (301..=450).collect::<Vec<_>>());
    // Starting before the released segments is no longer possible.
    assert!(matches!(
        open(dir.path()),
        Err(wal::Error::SnapshotNotFound { .. })
    ));
}

#[test]
fn reopen_after_a_roll_over_at_every_boundary() {
    // Close the log right after each append of a run that rolls several
    // times: every reopen must see exactly what was appended.
    let dir = tempfile::tempdir().unwrap();
    let w = Wal::create(dir.path(), META, small_segments()).unwrap();
    w.close();
    for i in 1..=200u64 {
        let (w, rec) = Wal::open(dir.path(), SnapshotMarker::default(), small_segments()).unwrap();
        assert_eq!(rec.entries.len() as u64, i - 1);
        w.append(vec![entry(i, 1)]).wait().unwrap();
        w.close();
    }
    assert!(wal::dump(dir.path()).unwrap().len() >= 3);
}

fn snapshot(index: u64, term: u64) -> Record {
    Record::Snapshot {
        index,
        term,
        conf_state: vec![index as u8],
    }
}

#[test]
fn a_later_snapshot_record_rebases_the_log() {
    // A local snapshot at 3 while entries run to 5: the entries after it
    // stay. Then a leader's snapshot at 10, past every entry this log has:
    // the entries before it go, and 11 may follow it.
    let dir = tempfile::tempdir().unwrap();
    let w = Wal::create(dir.path(), META, crate::opts()).unwrap();
    for i in 1..=5 {
        w.append(vec![entry(i, 1)]).wait().unwrap();
    }
    w.append(vec![snapshot(3, 1)]).wait().unwrap();
    w.close();
    let (w, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), vec![4, 5]);
    assert_eq!(
        rec.snapshot.as_ref().map(|s| (s.index, s.term)),
        Some((3, 1))
    );
    w.append(vec![snapshot(10, 2), entry(11, 2), entry(12, 2)])
        .wait()
        .unwrap();
    w.close();
    for marker in [
        SnapshotMarker::default(),
        SnapshotMarker { index: 3, term: 1 },
    ] {
        let (w, rec) = Wal::open(dir.path(), marker, crate::opts()).unwrap();
        assert_eq!(indexes(&rec), vec![11, 12], "from marker {marker:?}");
        let s = rec.snapshot.clone().unwrap();
        assert_eq!((s.index, s.term, s.conf_state), (10, 2, vec![10]));
        w.close();
    }
    // A gap without a snapshot record to explain it is still an error.
    let (w, _) = open(dir.path()).unwrap();
    w.append(vec![entry(20, 2)]).wait().unwrap();
    w.close();
    assert!(matches!(open(dir.path()), Err(wal::Error::EntryGap { .. })));
}
