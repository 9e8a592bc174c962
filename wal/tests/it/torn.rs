//! Torn tails and corruption: cut the last record at every byte, scribble
//! over it, damage a record in the middle.

use std::os::unix::fs::FileExt;
use std::path::Path;

use wal::{Options, SegmentEnd, SnapshotMarker, Wal};

use crate::{entry, indexes, log_with, open};

/// Small segments keep copying and zeroing cheap in these loops.
fn small() -> Options {
    Options {
        segment_size: 64 * 1024,
        ..crate::opts()
    }
}

/// (segment path, offset, framed length) of the frame holding entry `index`.
fn locate(dir: &Path, index: u64) -> (std::path::PathBuf, u64, u64) {
    for s in wal::dump(dir).unwrap() {
        for (k, f) in s.frames.iter().enumerate() {
            if let wal::Frame::Record(wal::Record::Entry { index: i, .. }) = &f.frame {
                if *i == index {
                    let end = match s.frames.get(k + 1) {
                        Some(next) => next.offset,
                        None => match s.end {
                            SegmentEnd::Clean { offset } => offset,
                            _ => panic!("unexpected end"),
                        },
                    };
                    return (s.path.clone(), f.offset, end - f.offset);
                }
            }
        }
    }
    panic!("entry {index} not found");
}

#[test]
fn a_cut_at_every_byte_of_the_last_record_recovers_the_records_before_it() {
    let base = tempfile::tempdir().unwrap();
    log_with(base.path(), 5, small());
    let (seg, off, len) = locate(base.path(), 5);
    // Header, index and term, data: the bytes before the zero padding.
    let meaningful = 16 + 16 + 200;
    let name = seg.file_name().unwrap().to_owned();
    for cut in off..off + len {
        for garbage in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let copy = dir.path().join(&name);
            std::fs::copy(&seg, &copy).unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
            if garbage {
                // Everything from the cut to the end of the file is junk.
                let flen = f.metadata().unwrap().len();
                let junk: Vec<u8> = (0..flen - cut).map(|i| (i * 131 + cut) as u8 | 1).collect();
                f.write_all_at(&junk, cut).unwrap();
            } else {
                f.set_len(cut).unwrap();
            }
            drop(f);
            let (w, rec) = open(dir.path())
                .unwrap_or_else(|e| panic!("cut at {cut} (garbage {garbage}): {e}"));
            // A cut that keeps every byte but the zero padding keeps the
            // record; a cut at its very start leaves no trace of it.
            if !garbage && cut >= off + meaningful {
                assert_eq!(
                    indexes(&rec),
                    vec![1, 2, 3, 4, 5],
                    "cut at {cut} in the padding"
                );
                w.close();
                continue;
            }
            assert_eq!(
                indexes(&rec),
                vec![1, 2, 3, 4],
                "cut at {cut} garbage {garbage}"
            );
            let torn = if !garbage && cut == off {
                None
            } else {
                Some(off)
            };
            assert_eq!(
                rec.torn_tail.as_ref().map(|t| t.1),
                torn,
                "cut at {cut} garbage {garbage}"
            );
            // Appending continues after the last good record.
            w.append(vec![entry(5, 2), entry(6, 2)]).wait().unwrap();
            w.close();
            let (_, rec) = open(dir.path()).unwrap();
            assert_eq!(indexes(&rec), vec![1, 2, 3, 4, 5, 6]);
            assert_eq!(rec.entries[4].term, 2);
            assert!(rec.torn_tail.is_none());
        }
    }
}

#[test]
fn corruption_in_the_middle_is_reported_and_repair_cuts_there() {
    let base = tempfile::tempdir().unwrap();
    log_with(base.path(), 20, small());
    let (seg, off, _) = locate(base.path(), 8);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0xFF], off + 20).unwrap();
    drop(f);
    let err = open(base.path())
        .err()
        .expect("corruption must not be silently cut");
    match &err {
        wal::Error::Corrupt {
            segment, offset, ..
        } => {
            assert_eq!(segment, &seg);
            assert_eq!(*offset, off);
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains(&format!("offset {off}")), "{err}");
    let opts = Options {
        repair: true,
        ..crate::opts()
    };
    let (w, rec) = Wal::open(base.path(), SnapshotMarker::default(), opts).unwrap();
    assert_eq!(indexes(&rec), (1..=7).collect::<Vec<_>>());
    let repair = rec.repaired.expect("repair report");
    assert_eq!(repair.offset, off);
    assert!(repair.dropped_bytes > 0);
    w.append(vec![entry(8, 3)]).wait().unwrap();
    w.close();
    let (_, rec) = open(base.path()).unwrap();
    assert_eq!(indexes(&rec), (1..=8).collect::<Vec<_>>());
}

#[test]
fn a_torn_batch_with_intact_records_after_the_tear_is_still_a_torn_tail() {
    // One batch of several records whose first record was torn (as a power
    // cut can persist a later sector but not an earlier one).
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 3, small());
    let (w, _) = open(dir.path()).unwrap();
    w.append((4..=9).map(|i| entry(i, 1)).collect())
        .wait()
        .unwrap();
    w.close();
    let (seg, off, _) = locate(dir.path(), 4);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0u8; 8], off + 16).unwrap();
    drop(f);
    let (_, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), vec![1, 2, 3]);
    assert_eq!(rec.torn_tail.map(|t| t.1), Some(off));
}

#[test]
fn a_write_lost_under_a_pipelined_one_is_a_torn_tail() {
    // Appends queued faster than the disk takes them, in small batches:
    // where the backend keeps two writes in flight, most batches are
    // pipelined behind the one before.
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_batch_bytes: 600,
        ..crate::opts()
    };
    let w = Wal::create(dir.path(), crate::META, opts.clone()).unwrap();
    let pending: Vec<_> = (1..=40).map(|i| w.append(vec![entry(i, 1)])).collect();
    for p in pending {
        p.wait().unwrap();
    }
    let backend = w.backend();
    w.close();
    let seg = wal::dump(dir.path()).unwrap().remove(0);
    let Some((at, last)) = seg.frames.iter().rev().find_map(|f| match f.frame {
        wal::Frame::Pipelined(p) => Some((f.offset, p)),
        _ => None,
    }) else {
        eprintln!("{backend} pipelines no batch; nothing to test");
        assert_eq!(backend, wal::Resolved::Plain);
        return;
    };
    assert!(at > last.prev_end && at % 4096 == 0);
    assert!(last.durable_end <= last.prev_start);
    // A crash with both writes in flight: the later one reached the disk,
    // the one under it did not. Recovery must cut both, not skip the hole.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg.path)
        .unwrap();
    let hole = (last.prev_end - last.prev_start) as usize;
    f.write_all_at(&vec![0u8; hole], last.prev_start).unwrap();
    let expected: Vec<u64> = seg
        .frames
        .iter()
        .filter(|f| f.offset < last.prev_start)
        .filter_map(|f| match f.frame {
            wal::Frame::Record(wal::Record::Entry { index, .. }) => Some(index),
            _ => None,
        })
        .collect();
    assert!(expected.len() < 40);
    let (w, rec) = Wal::open(dir.path(), SnapshotMarker::default(), opts).unwrap();
    assert_eq!(indexes(&rec), expected);
    // Cut where the data durable before both writes ends.
    assert_eq!(rec.torn_tail, Some((seg.path.clone(), last.durable_end)));
    // Appending goes on from the cut, and what it wrote is kept.
    let next = expected.last().map_or(1, |i| i + 1);
    w.append(vec![entry(next, 1)]).wait().unwrap();
    w.close();
    let (_, rec) = open(dir.path()).unwrap();
    assert_eq!(rec.entries.last().map(|e| e.index), Some(next));
    assert_eq!(rec.entries.len(), expected.len() + 1);
    assert!(rec.torn_tail.is_none());
}
