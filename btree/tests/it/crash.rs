//! Crash safety: a fault-injecting I/O layer stops a commit at every write
//! and fsync, with and without a torn last write, and with a simulated
//! power cut that loses unsynced writes. After each, the reopened file must
//! hold exactly the old state or the new one, and `check()` must be clean.

use std::path::Path;

use btree::io::FaultPlan;
use btree::{Db, Options};

use crate::{assert_clean, dump, Content};

fn key(i: u32) -> Vec<u8> {
    format!("k{i:06}").into_bytes()
}

/// The committed starting state: several commits, so free pages exist.
fn build_base(path: &Path) {
    let db = Db::open(path).unwrap();
    for round in 0..4u32 {
        let mut tx = db.begin_write().unwrap();
        tx.create_bucket_if_missing(b"key").unwrap();
        tx.create_bucket_if_missing(b"doomed").unwrap();
        for i in 0..1500 {
            tx.put(b"key", &key(i * 4 + round), &[round as u8; 80])
                .unwrap();
        }
        tx.put(b"doomed", b"x", b"y").unwrap();
        tx.commit().unwrap();
    }
}

/// The change under test: puts, overwrites, deletes, a large value, a new
/// bucket and a dropped one; enough to grow the file.
fn change(db: &Db, synced: bool) -> btree::Result<()> {
    let mut tx = db.begin_write()?;
    for i in 0..3000 {
        tx.put(b"key", &key(i * 3), &[9u8; 90])?;
    }
    for i in 0..800 {
        tx.delete(b"key", &key(i * 5))?;
    }
    tx.put(b"key", b"big", &vec![7u8; 300_000])?;
    tx.create_bucket(b"lease")?;
    tx.put(b"lease", b"l1", b"ttl")?;
    tx.delete_bucket(b"doomed")?;
    if synced {
        tx.commit()
    } else {
        // Two unsynced commits, then the sync that makes them durable.
        tx.commit_nosync()?;
        let mut tx = db.begin_write()?;
        tx.put(b"key", b"second", b"commit")?;
        tx.commit_nosync()?;
        db.sync()
    }
}

fn expected_states(dir: &Path, synced: bool) -> (Content, Content) {
    let base = dir.join("expect.db");
    build_base(&base);
    let db = Db::open(&base).unwrap();
    let before = dump(&db);
    change(&db, synced).unwrap();
    let after = dump(&db);
    assert_ne!(before, after);
    drop(db);
    std::fs::remove_file(&base).unwrap();
    (before, after)
}

#[derive(Clone, Copy, Debug)]
enum Loss {
    /// The process dies; everything written reached the page cache.
    ProcessCrash,
    /// Power is cut: every unsynced write is lost.
    PowerCutAll,
    /// Power is cut: a pseudo-random subset of unsynced writes survives.
    PowerCutSome(u64),
}

fn run_crash_points(synced: bool, tear: bool, loss: Loss) {
    let dir = tempfile::tempdir().unwrap();
    let (before, after) = expected_states(dir.path(), synced);
    let base = dir.path().join("base.db");
    build_base(&base);
    let mut n = 1;
    loop {
        let path = dir.path().join(format!("crash-{n}.db"));
        std::fs::copy(&base, &path).unwrap();
        let plan = FaultPlan::fail_at(n, tear);
        let db = Db::open_with(
            &path,
            Options {
                io: Some(plan.factory()),
                ..Options::default()
            },
        )
        .unwrap();
        let result = change(&db, synced);
        let crashed = plan.crashed();
        drop(db);
        assert_eq!(result.is_err(), crashed, "crash point {n}: {result:?}");
        match loss {
            Loss::ProcessCrash => {}
            Loss::PowerCutAll => plan.power_cut(&path, |_| false).unwrap(),
            Loss::PowerCutSome(seed) => {
                let mut s = seed ^ n;
                plan.power_cut(&path, |_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    s >> 63 == 1
                })
                .unwrap()
            }
        }
        let db = Db::open(&path)
            .unwrap_or_else(|e| panic!("crash point {n} ({loss:?}, tear {tear}): reopen: {e}"));
        let got = dump(&db);
        if result.is_ok() {
            assert!(
                got == after,
                "crash point {n}: an acknowledged commit was lost"
            );
        } else {
            assert!(
                got == before || got == after,
                "crash point {n} ({loss:?}, tear {tear}): neither old nor new state"
            );
        }
        assert_clean(&db);
        // The reopened file takes new commits.
        let mut tx = db.begin_write().unwrap();
        tx.create_bucket_if_missing(b"after").unwrap();
        tx.put(b"after", b"k", b"v").unwrap();
        tx.commit().unwrap();
        assert_clean(&db);
        drop(db);
        std::fs::remove_file(&path).unwrap();
        if !crashed {
            assert!(n > 4, "the change made only {} I/O calls", n - 1);
            break;
        }
        n += 1;
    }
}

#[test]
fn crash_at_every_io_call_of_a_commit_leaves_old_or_new_state() {
    run_crash_points(true, false, Loss::ProcessCrash);
}

#[test]
fn torn_write_at_every_io_call_of_a_commit_leaves_old_or_new_state() {
    run_crash_points(true, true, Loss::ProcessCrash);
}

#[test]
fn power_cut_at_every_io_call_of_a_commit_leaves_old_or_new_state() {
    run_crash_points(true, false, Loss::PowerCutAll);
    run_crash_points(true, true, Loss::PowerCutAll);
}

#[test]
fn power_cut_keeping_random_unsynced_writes_leaves_old_or_new_state() {
    for seed in 1..4 {
        run_crash_points(true, true, Loss::PowerCutSome(seed));
    }
}

#[test]
fn crash_during_unsynced_commits_and_sync_leaves_old_or_final_state() {
    run_crash_points(false, false, Loss::ProcessCrash);
    run_crash_points(false, true, Loss::PowerCutAll);
    run_crash_points(false, true, Loss::PowerCutSome(9));
}

#[test]
fn unsynced_commits_are_lost_by_a_power_cut_but_never_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nosync.db");
    build_base(&path);
    let before = dump(&Db::open(&path).unwrap());
    let plan = FaultPlan::new();
    let db = Db::open_with(
        &path,
        Options {
            io: Some(plan.factory()),
            ..Options::default()
        },
    )
    .unwrap();
    for r in 0..20u32 {
        let mut tx = db.begin_write().unwrap();
        for i in 0..200 {
            tx.put(b"key", &key(r * 200 + i), &[r as u8; 50]).unwrap();
        }
        tx.commit_nosync().unwrap();
    }
    drop(db);
    plan.power_cut(&path, |i| i % 3 == 0).unwrap();
    let db = Db::open(&path).unwrap();
    assert_eq!(dump(&db), before);
    assert_clean(&db);
}

#[test]
fn a_failed_commit_poisons_the_handle_until_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("poison.db");
    build_base(&path);
    let plan = FaultPlan::fail_at(2, false);
    let db = Db::open_with(
        &path,
        Options {
            io: Some(plan.factory()),
            ..Options::default()
        },
    )
    .unwrap();
    assert!(change(&db, true).is_err());
    let err = db
        .begin_write()
        .err()
        .expect("writes refused after a failed commit");
    assert!(matches!(err, btree::Error::Poisoned(_)), "{err}");
    // Readers still work on the last published state.
    assert!(db.begin_read().bucket(b"key").unwrap().is_some());
}
