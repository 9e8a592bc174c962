//! A real crash: a child process appends from several threads and prints
//! each acknowledged index; the parent SIGKILLs it at a random moment,
//! reopens the log and finds every acknowledged record.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wal::{Options, Wal};

use crate::{entry, open, META};

const CHILD_ENV: &str = "WAL_CRASH_CHILD_DIR";

/// The child's body; a no-op unless the parent set `WAL_CRASH_CHILD_DIR`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let small = Options {
        segment_size: 64 * 1024,
        ..crate::opts()
    };
    let (w, start) = match Wal::open(&dir, wal::SnapshotMarker::default(), small.clone()) {
        Ok((w, rec)) => (w, rec.entries.last().map_or(0, |e| e.index)),
        Err(wal::Error::NoSegments { .. }) => (Wal::create(&dir, META, small).unwrap(), 0),
        Err(e) => panic!("{e}"),
    };
    let w = Arc::new(w);
    let next = Arc::new(Mutex::new(start));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (w, next) = (w.clone(), next.clone());
            std::thread::spawn(move || loop {
                let (index, durable) = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    (*n, w.append(vec![entry(*n, 1)]))
                };
                durable.wait().unwrap();
                let mut out = std::io::stdout().lock();
                writeln!(out, "ack {index}").unwrap();
                out.flush().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn sigkill_at_a_random_moment_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut max_acked = 0u64;
    for round in 0..6u64 {
        let mut child = Command::new(&exe)
            .args([
                "crash::crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ack ") {
                    acked.push(n.trim().parse::<u64>().unwrap());
                }
            }
            acked
        });
        let wait_ms = 150 + (round * 7919 + 13) % 600;
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        let (w, rec) = open(dir.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        drop(w);
        let got: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
        let last = got.last().copied().unwrap_or(0);
        assert_eq!(
            got,
            (1..=last).collect::<Vec<_>>(),
            "round {round}: entries are contiguous"
        );
        for a in &acked {
            assert!(
                *a <= last,
                "round {round}: acknowledged entry {a} lost (log ends at {last})"
            );
        }
        max_acked = max_acked.max(acked.iter().copied().max().unwrap_or(0));
        assert!(
            !acked.is_empty() || round > 0,
            "the child acknowledged nothing"
        );
    }
    assert!(
        max_acked > 100,
        "only {max_acked} appends acknowledged over all rounds"
    );
}
