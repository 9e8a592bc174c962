//! A random stream of records written in random batches across small
//! segments, then damage: truncation, bit flips and garbage at random
//! points of random segments. Recovery never panics; it returns entries
//! that are a prefix of what was written (indexes 1..=k, data intact), or
//! an error. With `repair`, it always returns such a prefix.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wal::{Backend, Metadata, Options, Record, SnapshotMarker, Wal};

#[derive(Arbitrary, Debug)]
enum Damage {
    Truncate {
        segment: u8,
        at: u32,
    },
    Flip {
        segment: u8,
        at: u32,
        bit: u8,
    },
    Garbage {
        segment: u8,
        at: u32,
        bytes: Vec<u8>,
    },
    Remove {
        segment: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// (data length, records in this batch, hard state after it)
    batches: Vec<(u16, u8, bool)>,
    /// Queue every append before waiting for any, on io_uring with two
    /// writes in flight where the kernel allows it: batches are then
    /// pipelined behind one another.
    pipelined: bool,
    damage: Vec<Damage>,
}

fn opts(repair: bool, pipelined: bool) -> Options {
    Options {
        segment_size: 16 * 1024,
        backend: if pipelined {
            Backend::Auto
        } else {
            Backend::Plain
        },
        uring_in_flight: 2,
        max_batch_bytes: 4096,
        zero_ahead: false,
        direct_io: false,
        repair,
        ..Options::default()
    }
}

fn data(index: u64, len: u16) -> Vec<u8> {
    (0..(len % 3000) as usize)
        .map(|i| (index as usize * 31 + i) as u8)
        .collect()
}

fn check_prefix(entries: &[wal::Entry], written: &[Vec<u8>]) {
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.index, i as u64 + 1, "entries are 1..=k in order");
        assert_eq!(&e.data, &written[i], "entry {} intact", e.index);
    }
    assert!(entries.len() <= written.len());
}

fuzz_target!(|input: Input| {
    if input.batches.len() > 40 || input.damage.len() > 8 {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = Metadata {
        member_id: 1,
        cluster_id: 2,
    };
    let mut written: Vec<Vec<u8>> = Vec::new();
    {
        let w = Wal::create(dir.path(), meta, opts(false, input.pipelined)).expect("create");
        let mut pending = Vec::new();
        for (len, n, hs) in &input.batches {
            let mut recs = Vec::new();
            for _ in 0..(*n % 8).max(1) {
                let index = written.len() as u64 + 1;
                let d = data(index, *len);
                written.push(d.clone());
                recs.push(Record::Entry {
                    index,
                    term: 1,
                    data: d,
                });
            }
            if *hs {
                recs.push(Record::HardState {
                    term: 1,
                    vote: 1,
                    commit: written.len() as u64,
                });
            }
            let durable = w.append(recs);
            if input.pipelined {
                pending.push(durable);
            } else {
                durable.wait().expect("append");
            }
        }
        for durable in pending {
            durable.wait().expect("append");
        }
        w.close();
    }
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    if segments.is_empty() {
        return;
    }
    for d in &input.damage {
        let pick = |s: u8| segments[s as usize % segments.len()].clone();
        match d {
            Damage::Truncate { segment, at } => {
                let p = pick(*segment);
                let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p) {
                    let _ = f.set_len(u64::from(*at) % (len + 1));
                }
            }
            Damage::Flip { segment, at, bit } => {
                let p = pick(*segment);
                if let Ok(mut b) = std::fs::read(&p) {
                    if !b.is_empty() {
                        let i = *at as usize % b.len();
                        b[i] ^= 1 << (bit % 8);
                        let _ = std::fs::write(&p, b);
                    }
                }
            }
            Damage::Garbage { segment, at, bytes } => {
                let p = pick(*segment);
                if let Ok(mut b) = std::fs::read(&p) {
                    let start = (*at as usize) % (b.len() + 1);
                    for (i, x) in bytes.iter().take(512).enumerate() {
                        if let Some(slot) = b.get_mut(start + i) {
                            *slot = *x;
                        }
                    }
                    let _ = std::fs::write(&p, b);
                }
            }
            Damage::Remove { segment } => {
                let _ = std::fs::remove_file(pick(*segment));
            }
        }
    }
    // Recovery reads a copy, so the repair run sees the same damage.
    let copy = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(dir.path()).expect("read dir").flatten() {
        let _ = std::fs::copy(e.path(), copy.path().join(e.file_name()));
    }
    // Without repair, then with it on the copy. A missing or swapped
    // segment, or a metadata record that is gone, is not something a
    // truncation can repair: an error is a fine answer either way.
    for (at, repair) in [(dir.path(), false), (copy.path(), true)] {
        match Wal::open(at, SnapshotMarker::default(), opts(repair, input.pipelined)) {
            Ok((w, rec)) => {
                check_prefix(&rec.entries, &written);
                w.close();
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
