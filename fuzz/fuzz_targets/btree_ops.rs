//! Random transactions on the B+tree with a crash at a random write or
//! fsync (optionally tearing that write), then a power cut that loses a
//! random part of what was not synced. The reopened file must hold the
//! last durable state or the state of the commit that was under way, and
//! pass `check()`. Without a crash, the end state must match the model.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use btree::io::FaultPlan;
use btree::{Db, Options};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Put { bucket: bool, key: u8, len: u16 },
    Delete { bucket: bool, key: u8 },
    DeleteBucket { bucket: bool },
    Commit,
    CommitNoSync,
    Rollback,
    Sync,
    Reopen,
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
    crash_at: Option<u16>,
    tear: bool,
    /// Which unsynced writes survive the power cut (bit i: write i).
    survivors: u64,
}

type Model = BTreeMap<(bool, Vec<u8>), Vec<u8>>;

fn bucket(b: bool) -> &'static [u8] {
    if b {
        b"b"
    } else {
        b"a"
    }
}

fn dump(db: &Db) -> Model {
    let r = db.begin_read();
    let mut m = Model::new();
    for b in [false, true] {
        if let Some(bk) = r.bucket(bucket(b)).expect("directory readable") {
            for item in bk.range(b"", None) {
                let (k, v) = item.expect("tree readable");
                m.insert((b, k.to_vec()), v.to_vec());
            }
        }
    }
    m
}

/// Applies `pending` on top of `base`, as the transaction does.
fn apply(base: &Model, pending: &[Op]) -> Model {
    let mut m = base.clone();
    for op in pending {
        match op {
            Op::Put { bucket, key, len } => {
                m.insert((*bucket, vec![*key]), value(*key, *len));
            }
            Op::Delete { bucket, key } => {
                m.remove(&(*bucket, vec![*key]));
            }
            Op::DeleteBucket { bucket } => m.retain(|(b, _), _| b != bucket),
            _ => {}
        }
    }
    m
}

fn value(key: u8, len: u16) -> Vec<u8> {
    // Up to ~20 KiB: values that span overflow pages.
    vec![key; (len as usize) % 20_000]
}

fn run_txn(db: &Db, pending: &[Op], sync: bool) -> btree::Result<()> {
    let mut tx = db.begin_write()?;
    for op in pending {
        match op {
            Op::Put {
                bucket: b,
                key,
                len,
            } => {
                tx.create_bucket_if_missing(bucket(*b))?;
                tx.put(bucket(*b), &[*key], &value(*key, *len))?;
            }
            Op::Delete { bucket: b, key } => {
                if tx.bucket_exists(bucket(*b))? {
                    tx.delete(bucket(*b), &[*key])?;
                }
            }
            Op::DeleteBucket { bucket: b } => {
                if tx.bucket_exists(bucket(*b))? {
                    tx.delete_bucket(bucket(*b))?;
                }
            }
            _ => {}
        }
    }
    if sync {
        tx.commit()
    } else {
        tx.commit_nosync()
    }
}

fuzz_target!(|input: Input| {
    if input.ops.len() > 64 {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let plan = match input.crash_at {
        Some(n) => FaultPlan::fail_at(u64::from(n % 400) + 1, input.tear),
        None => FaultPlan::new(),
    };
    let opts = Options {
        io: Some(plan.factory()),
        ..Options::default()
    };
    let mut durable = Model::new();
    let mut committed = Model::new();
    // The state a commit under way would have produced.
    let mut attempted: Option<Model> = None;
    let mut db = match Db::open_with(&path, opts.clone()) {
        Ok(db) => Some(db),
        Err(_) => None,
    };
    let mut pending: Vec<Op> = Vec::new();
    for op in input.ops {
        let Some(d) = db.as_ref() else { break };
        {
            let result = match op {
                Op::Commit | Op::CommitNoSync => {
                    let sync = matches!(op, Op::Commit);
                    let next = apply(&committed, &pending);
                    attempted = Some(next.clone());
                    let r = run_txn(d, &pending, sync);
                    pending.clear();
                    if r.is_ok() {
                        committed = next;
                        if sync {
                            durable = committed.clone();
                        }
                        attempted = None;
                    }
                    r
                }
                Op::Rollback => {
                    pending.clear();
                    Ok(())
                }
                Op::Sync => {
                    attempted = Some(committed.clone());
                    let r = d.sync();
                    if r.is_ok() {
                        durable = committed.clone();
                        attempted = None;
                    }
                    r
                }
                Op::Reopen => {
                    // A clean close and reopen after a sync keeps everything.
                    attempted = Some(committed.clone());
                    let r = d.sync();
                    if r.is_ok() {
                        durable = committed.clone();
                        attempted = None;
                        db = None;
                        match Db::open_with(&path, opts.clone()) {
                            Ok(d) => {
                                assert_eq!(dump(&d), committed, "after reopen");
                                db = Some(d);
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    } else {
                        r
                    }
                }
                other => {
                    pending.push(other);
                    Ok(())
                }
            };
            if result.is_err() {
                assert!(
                    plan.crashed(),
                    "an error without an injected fault: {result:?}"
                );
                break;
            }
        }
    }
    if !plan.crashed() {
        if let Some(d) = db.take() {
            // The final sync is an I/O like any other: the planned fault
            // may land in it (found by this target: corpus/btree_ops/
            // crash-final-sync-fault).
            attempted = Some(committed.clone());
            match d.sync() {
                Ok(()) => {
                    drop(d);
                    let d = Db::open(&path).expect("reopen");
                    assert_eq!(dump(&d), committed);
                    let report = d.check();
                    assert!(report.is_clean(), "{report}");
                    return;
                }
                Err(e) => {
                    assert!(plan.crashed(), "an error without an injected fault: {e}");
                    db = Some(d);
                }
            }
        } else {
            return;
        }
    }
    // Power cut: unsynced writes are lost, but some may have reached disk.
    drop(db.take());
    let mut i = 0;
    plan.power_cut(&path, |_| {
        i += 1;
        input.survivors & (1u64 << (i % 64)) != 0
    })
    .expect("power cut");
    match Db::open(&path) {
        Ok(d) => {
            let got = dump(&d);
            assert!(
                got == durable || attempted.as_ref() == Some(&got),
                "after a crash the file holds neither the durable state nor the commit under way"
            );
            let report = d.check();
            assert!(report.is_clean(), "{report}");
        }
        Err(e) => {
            // Only a crash while the very first commit creates the file may
            // leave it unopenable, and then it never held any data.
            assert!(durable.is_empty(), "reopen failed: {e}");
        }
    }
});
