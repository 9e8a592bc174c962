//! Restarts: reopening after every kind of operation gives the same index,
//! hash and leases; batches not yet synced are gone after a reopen and the
//! consistent index says where to replay from; a SIGKILL at a random
//! moment leaves exactly the state of some prefix of the applied entries,
//! never less than the last sync.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use mvcc::{
    Compare, CompareResult, CompareTarget, KeyValue, PutRequest, RangeRequest, RequestOp, Store,
    TxnRequest,
};

/// Everything a restart must preserve.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    current: i64,
    compacted: i64,
    consistent_index: u64,
    term: u64,
    hash_kv: u32,
    /// The whole key space at every readable revision.
    history: Vec<Vec<KeyValue>>,
    /// (lease, granted TTL, attached keys)
    leases: Vec<(i64, i64, Vec<Vec<u8>>)>,
    alarms: Vec<(u64, i32)>,
}

fn fingerprint(s: &Store) -> Fingerprint {
    let current = s.current_revision();
    let compacted = s.compacted_revision();
    let history = (compacted.max(1)..=current)
        .map(|rev| {
            s.range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision: rev,
                ..Default::default()
            })
            .unwrap()
            .kvs
        })
        .collect();
    let mut leases: Vec<(i64, i64, Vec<Vec<u8>>)> = s
        .leases()
        .into_iter()
        .map(|id| {
            let (ttl, _, mut keys) = s.lease_time_to_live(id).unwrap();
            keys.sort();
            (id, ttl, keys)
        })
        .collect();
    leases.sort();
    Fingerprint {
        current,
        compacted,
        consistent_index: s.consistent_index(),
        term: s.term(),
        hash_kv: s.hash_kv(0).unwrap().0,
        history,
        leases,
        alarms: s.alarms().unwrap(),
    }
}

fn put_req(k: &str, v: &str, lease: i64) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        lease,
        ..Default::default()
    }
}

/// The operation of raft entry `index`: a fixed mix of every kind, so a
/// store can be rebuilt to any index.
fn apply_entry(s: &Store, index: u64) {
    let mut a = s.apply().unwrap();
    let k = |n: u64| format!("key{:02}", n % 13);
    let lease = (index / 10 % 3 + 1) as i64;
    // Errors are answers too (a lease that does not exist, a compaction
    // of a revision already compacted): the entry is still applied.
    let _answer = match index % 10 {
        0 | 4 => a
            .put(&put_req(&k(index), &format!("v{index}"), 0))
            .map(|_| ()),
        1 => a
            .put(&put_req(&k(index * 7), &format!("l{index}"), lease))
            .map(|_| ()),
        2 => a
            .delete_range(k(index).as_bytes(), k(index + 3).as_bytes(), false)
            .map(|_| ()),
        3 => a
            .txn(&TxnRequest {
                compare: vec![Compare {
                    key: k(index).into(),
                    range_end: vec![],
                    result: CompareResult::Greater,
                    target: CompareTarget::Version(1),
                }],
                success: vec![
                    RequestOp::Put(put_req(&k(index + 1), "t-yes", 0)),
                    RequestOp::DeleteRange {
                        key: k(index + 2).into(),
                        range_end: vec![],
                        prev_kv: false,
                    },
                ],
                failure: vec![RequestOp::Put(put_req(&k(index + 5), "t-no", 0))],
            })
            .map(|_| ()),
        5 => a.lease_grant(lease, 30 + index as i64).map(|_| ()),
        6 => a.lease_revoke((index / 10 + 1) as i64 % 3 + 1).map(|_| ()),
        7 => {
            let rev = s.current_revision() - 5;
            if rev > s.compacted_revision() {
                a.compact(rev)
            } else {
                Ok(())
            }
        }
        8 => a
            .put(&PutRequest {
                key: k(index).into(),
                ignore_value: true,
                ..Default::default()
            })
            .map(|_| ()),
        _ => a.delete_range(k(index).as_bytes(), b"", false).map(|_| ()),
    };
    if index.is_multiple_of(13) {
        // Alarms go on and off with the entries that change them.
        a.set_alarm(1, 1, index.is_multiple_of(26)).unwrap();
    }
    a.set_term(index / 7 + 1).unwrap();
    a.commit(index).unwrap();
}

#[test]
fn reopening_after_every_kind_of_operation_keeps_index_hash_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let mut s = crate::open_store(&path);
    for index in 1..=60 {
        apply_entry(&s, index);
        // Half the time with the compaction's records still to remove.
        if index % 20 < 10 {
            s.finish_compaction().unwrap();
        }
        let before = fingerprint(&s);
        s.sync().unwrap();
        drop(s);
        s = crate::open_store(&path);
        assert_eq!(fingerprint(&s), before, "after entry {index}");
    }
    assert!(s.current_revision() > 20 && s.compacted_revision() > 0);
    assert!(!s.leases().is_empty());
}

#[test]
fn batches_applied_but_not_synced_are_gone_and_the_index_says_where_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let s = crate::open_store(&path);
    for index in 1..=25 {
        apply_entry(&s, index);
    }
    s.sync().unwrap();
    let synced = fingerprint(&s);
    for index in 26..=40 {
        apply_entry(&s, index);
    }
    let full = fingerprint(&s);
    drop(s);
    let s = crate::open_store(&path);
    assert_eq!(fingerprint(&s), synced);
    // Replaying the entries after the consistent index (as the server does
    // from the WAL) reaches the same state as before the restart.
    for index in s.consistent_index() + 1..=40 {
        apply_entry(&s, index);
    }
    assert_eq!(fingerprint(&s), full);
}

const CHILD_ENV: &str = "MVCC_CRASH_CHILD_DB";

/// The child's body; a no-op unless the parent set `MVCC_CRASH_CHILD_DB`.
/// Applies entries from where the store stands, syncing every few and
/// printing each synced index.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let s = crate::open_store(std::path::Path::new(&path));
    let mut index = s.consistent_index();
    loop {
        index += 1;
        apply_entry(&s, index);
        s.compact_step(3).unwrap();
        if index.is_multiple_of(7) {
            s.sync().unwrap();
            let mut out = std::io::stdout().lock();
            writeln!(out, "synced {index}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn sigkill_while_applying_leaves_the_state_of_an_applied_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let exe = std::env::current_exe().unwrap();
    let mut last_synced = 0u64;
    for round in 0..5u64 {
        let spawning = crate::SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = Command::new(&exe)
            .args([
                "restart::crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        drop(spawning);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut synced = 0;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("synced ") {
                    synced = n.trim().parse::<u64>().unwrap();
                }
            }
            synced
        });
        std::thread::sleep(Duration::from_millis(150 + 70 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let synced = reader.join().unwrap();
        assert!(
            synced > last_synced,
            "round {round}: the child made progress"
        );
        last_synced = synced;
        let s = crate::open_store(&path);
        let at = s.consistent_index();
        assert!(
            at >= synced,
            "round {round}: index {at} below sync {synced}"
        );
        // The same entries applied to a fresh store give the same state.
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = Store::open(fresh_dir.path().join("kv.db")).unwrap();
        for index in 1..=at {
            apply_entry(&fresh, index);
            fresh.compact_step(3).unwrap();
        }
        fresh.finish_compaction().unwrap();
        s.finish_compaction().unwrap();
        assert_eq!(fingerprint(&s), fingerprint(&fresh), "round {round}");
    }
}
