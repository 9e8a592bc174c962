use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use btree::Db;

const ACCOUNTS: u64 = 2000;
const TOTAL: u64 = ACCOUNTS * 100;

fn account(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

/// Reads every balance in one snapshot; returns (sum, all balances).
fn read_all(db: &Db) -> (btree::ReadTxn, Vec<u64>) {
    let rx = db.begin_read();
    let balances = {
        let b = rx.open_bucket(b"accounts").unwrap();
        b.range(b"", None)
            .map(|r| u64::from_be_bytes(r.unwrap().1[..8].try_into().unwrap()))
            .collect()
    };
    (rx, balances)
}

#[test]
fn readers_keep_stable_snapshots_while_a_writer_commits_thousands_of_times() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("conc.db")).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"accounts").unwrap();
    for i in 0..ACCOUNTS {
        // Pad values so the tree has many pages to free and reuse.
        let mut v = 100u64.to_be_bytes().to_vec();
        v.resize(120, 0);
        tx.put(b"accounts", &account(i), &v).unwrap();
    }
    tx.commit().unwrap();

    // A reader that holds its snapshot across the whole run.
    let (oldest, oldest_balances) = read_all(&db);

    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..std::env::var("READERS")
        .map(|v| v.parse().unwrap())
        .unwrap_or(3)
    {
        let db = db.clone();
        let stop = stop.clone();
        readers.push(thread::spawn(move || {
            let mut snapshots = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (rx, first) = read_all(&db);
                assert_eq!(
                    first.iter().sum::<u64>(),
                    TOTAL,
                    "reader {r}: a snapshot mixes commits"
                );
                // Re-read the same snapshot after the writer has moved on:
                // none of its pages may have been reused.
                thread::yield_now();
                let b = rx.open_bucket(b"accounts").unwrap();
                let again: Vec<u64> = b
                    .range(b"", None)
                    .map(|x| u64::from_be_bytes(x.unwrap().1[..8].try_into().unwrap()))
                    .collect();
                assert_eq!(first, again, "reader {r}: snapshot changed under it");
                snapshots += 1;
            }
            snapshots
        }));
    }

    let mut seed = 88172645463325252u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..3000 {
        let mut tx = db.begin_write().unwrap();
        for _ in 0..5 {
            let (from, to) = (next() % ACCOUNTS, next() % ACCOUNTS);
            let bal = |tx: &mut btree::WriteTxn<'_>, k: u64| {
                u64::from_be_bytes(
                    tx.get(b"accounts", &account(k)).unwrap().unwrap()[..8]
                        .try_into()
                        .unwrap(),
                )
            };
            let amount = bal(&mut tx, from).min(7);
            let (f, t) = (bal(&mut tx, from) - amount, bal(&mut tx, to));
            let mut v = f.to_be_bytes().to_vec();
            v.resize(120, 0);
            tx.put(b"accounts", &account(from), &v).unwrap();
            let t = if from == to { f } else { t };
            let mut v = (t + amount).to_be_bytes().to_vec();
            v.resize(120, 0);
            tx.put(b"accounts", &account(to), &v).unwrap();
        }
        if round % 10 == 0 {
            tx.commit().unwrap();
        } else {
            tx.commit_nosync().unwrap();
        }
    }
    db.sync().unwrap();
    stop.store(true, Ordering::Relaxed);
    let total_snapshots: u64 = readers.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(total_snapshots > 0);

    let b = oldest.open_bucket(b"accounts").unwrap();
    let still: Vec<u64> = b
        .range(b"", None)
        .map(|x| u64::from_be_bytes(x.unwrap().1[..8].try_into().unwrap()))
        .collect();
    assert_eq!(
        still, oldest_balances,
        "the oldest snapshot survived 3000 commits"
    );
    drop(oldest);
    let (_, now) = read_all(&db);
    assert_eq!(now.iter().sum::<u64>(), TOTAL);
    assert_ne!(now, oldest_balances);
    crate::assert_clean(&db);
}

#[test]
fn freed_pages_are_reused_once_readers_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("reuse.db")).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"b").unwrap();
    for i in 0..5000u64 {
        tx.put(b"b", &i.to_be_bytes(), &[1u8; 100]).unwrap();
    }
    tx.commit().unwrap();
    let rewrite = |db: &Db, v: u8| {
        let mut tx = db.begin_write().unwrap();
        for i in 0..5000u64 {
            tx.put(b"b", &i.to_be_bytes(), &[v; 100]).unwrap();
        }
        tx.commit().unwrap();
    };
    // With a reader pinning the first version, rewrites cannot reuse its pages.
    let pin = db.begin_read();
    for v in 2..6 {
        rewrite(&db, v);
    }
    let grown = db.stats().high_water;
    assert_eq!(
        pin.open_bucket(b"b")
            .unwrap()
            .get(&7u64.to_be_bytes())
            .unwrap(),
        Some(&[1u8; 100][..])
    );
    drop(pin);
    // Without readers, the file stops growing: freed pages are reused.
    for v in 6..30 {
        rewrite(&db, v);
    }
    let after = db.stats().high_water;
    assert!(
        after <= grown + grown / 4,
        "file kept growing: {grown} -> {after} pages"
    );
    crate::assert_clean(&db);
}
