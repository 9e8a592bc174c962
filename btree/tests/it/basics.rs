use btree::{Db, Error};

use crate::{assert_clean, dump};

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

#[test]
fn put_get_delete_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    {
        let db = Db::open(&path).unwrap();
        let mut tx = db.begin_write().unwrap();
        tx.create_bucket(b"key").unwrap();
        tx.create_bucket(b"meta").unwrap();
        for i in 0..1000 {
            tx.put(b"key", &key(i), format!("value {i}").as_bytes())
                .unwrap();
        }
        tx.put(b"meta", b"consistent_index", &7u64.to_be_bytes())
            .unwrap();
        assert_eq!(tx.get(b"key", &key(5)).unwrap(), Some(&b"value 5"[..]));
        tx.commit().unwrap();
        let mut tx = db.begin_write().unwrap();
        for i in (0..1000).step_by(2) {
            assert!(tx.delete(b"key", &key(i)).unwrap());
        }
        assert!(!tx.delete(b"key", b"missing").unwrap());
        tx.commit().unwrap();
        assert_clean(&db);
    }
    let db = Db::open(&path).unwrap();
    let rx = db.begin_read();
    let b = rx.open_bucket(b"key").unwrap();
    assert_eq!(b.len(), 500);
    assert_eq!(b.get(&key(3)).unwrap(), Some(&b"value 3"[..]));
    assert_eq!(b.get(&key(4)).unwrap(), None);
    assert_eq!(
        rx.open_bucket(b"meta")
            .unwrap()
            .get(b"consistent_index")
            .unwrap(),
        Some(&7u64.to_be_bytes()[..])
    );
    assert_clean(&db);
}

#[test]
fn cursor_moves_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("c.db")).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"b").unwrap();
    for i in (0..3000).map(|i| i * 2) {
        tx.put(b"b", &key(i), &[0u8; 50]).unwrap();
    }
    tx.commit().unwrap();
    let rx = db.begin_read();
    let b = rx.open_bucket(b"b").unwrap();
    let mut c = b.cursor();
    assert_eq!(c.first().unwrap().unwrap().0, key(0));
    assert_eq!(c.next().unwrap().unwrap().0, key(2));
    assert_eq!(c.prev().unwrap().unwrap().0, key(0));
    assert_eq!(c.prev().unwrap(), None);
    assert_eq!(c.last().unwrap().unwrap().0, key(5998));
    assert_eq!(c.next().unwrap(), None);
    assert_eq!(c.seek(&key(1001)).unwrap().unwrap().0, key(1002));
    assert_eq!(c.seek(&key(1002)).unwrap().unwrap().0, key(1002));
    assert_eq!(c.seek(&key(9999)).unwrap(), None);
    // Walk backwards over every leaf boundary.
    let mut n = 1;
    c.last().unwrap();
    while c.prev().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3000);
    let got: Vec<Vec<u8>> = b
        .range(&key(100), Some(&key(110)))
        .map(|r| r.unwrap().0.to_vec())
        .collect();
    assert_eq!(got, vec![key(100), key(102), key(104), key(106), key(108)]);
}

#[test]
fn large_keys_and_values_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    let big_key = vec![b'k'; 64 * 1024];
    let big_value: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    {
        let db = Db::open(&path).unwrap();
        let mut tx = db.begin_write().unwrap();
        tx.create_bucket(b"b").unwrap();
        for i in 0..20 {
            tx.put(b"b", &key(i), &[1u8; 300]).unwrap();
        }
        tx.put(b"b", &big_key, b"v").unwrap();
        tx.put(b"b", &key(7), &big_value).unwrap();
        tx.commit().unwrap();
        assert_clean(&db);
        let stats = db.stats();
        assert!(
            stats.overflow_pages >= 512,
            "2 MiB value spans an overflow run: {stats:?}"
        );
    }
    let db = Db::open(&path).unwrap();
    let rx = db.begin_read();
    let b = rx.open_bucket(b"b").unwrap();
    assert_eq!(b.get(&key(7)).unwrap().unwrap(), &big_value[..]);
    assert_eq!(b.get(&big_key).unwrap(), Some(&b"v"[..]));
    let mut tx = db.begin_write().unwrap();
    assert!(tx.delete(b"b", &key(7)).unwrap());
    tx.commit().unwrap();
    assert_clean(&db);
    assert_eq!(dump(&db)[&b"b"[..]].len(), 20);
}

#[test]
fn oversized_keys_and_values_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("x.db")).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"b").unwrap();
    let err = tx.put(b"b", &vec![0u8; 64 * 1024 + 1], b"").unwrap_err();
    assert!(matches!(err, Error::KeyTooLarge { .. }), "{err}");
    let err = tx
        .put(b"b", b"k", &vec![0u8; 64 * 1024 * 1024 + 1])
        .unwrap_err();
    assert!(matches!(err, Error::ValueTooLarge { .. }), "{err}");
    let err = tx.put(b"nope", b"k", b"v").unwrap_err();
    assert!(matches!(err, Error::BucketNotFound(_)), "{err}");
}

#[test]
fn buckets_are_created_listed_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("b.db")).unwrap();
    let mut tx = db.begin_write().unwrap();
    for name in ["key", "meta", "lease", "auth", "members", "alarm"] {
        tx.create_bucket(name.as_bytes()).unwrap();
    }
    assert!(matches!(
        tx.create_bucket(b"key"),
        Err(Error::BucketExists(_))
    ));
    assert!(!tx.create_bucket_if_missing(b"key").unwrap());
    for i in 0..2000 {
        tx.put(b"lease", &key(i), &[9u8; 40]).unwrap();
    }
    tx.commit().unwrap();
    let before = db.stats();
    let mut tx = db.begin_write().unwrap();
    tx.delete_bucket(b"lease").unwrap();
    tx.commit().unwrap();
    let names: Vec<Vec<u8>> = db
        .begin_read()
        .buckets()
        .unwrap()
        .into_iter()
        .map(|b| b.0)
        .collect();
    assert_eq!(
        names,
        vec![
            b"alarm".to_vec(),
            b"auth".to_vec(),
            b"key".to_vec(),
            b"members".to_vec(),
            b"meta".to_vec()
        ]
    );
    assert_clean(&db);
    let after = db.stats();
    assert!(
        after.free_pages > before.free_pages + 20,
        "dropped bucket's pages are free"
    );
}

#[test]
fn rollback_discards_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("r.db")).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"b").unwrap();
    tx.put(b"b", b"a", b"1").unwrap();
    tx.commit().unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.put(b"b", b"a", b"2").unwrap();
    tx.put(b"b", b"z", b"3").unwrap();
    tx.rollback();
    assert_eq!(dump(&db)[&b"b"[..]].get(&b"a"[..]), Some(&b"1".to_vec()));
    assert_eq!(dump(&db)[&b"b"[..]].len(), 1);
    assert_clean(&db);
}

#[test]
fn nosync_commits_are_visible_and_become_durable_on_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.db");
    {
        let db = Db::open(&path).unwrap();
        for round in 0..10u32 {
            let mut tx = db.begin_write().unwrap();
            tx.create_bucket_if_missing(b"b").unwrap();
            for i in 0..100 {
                tx.put(b"b", &key(round * 100 + i), b"v").unwrap();
            }
            tx.commit_nosync().unwrap();
            assert!(db.has_unsynced_commits());
            assert_eq!(
                db.begin_read().open_bucket(b"b").unwrap().len(),
                u64::from(round + 1) * 100
            );
        }
        db.sync().unwrap();
        assert!(!db.has_unsynced_commits());
        assert_clean(&db);
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(db.begin_read().open_bucket(b"b").unwrap().len(), 1000);
    assert_clean(&db);
}

#[test]
fn deleting_everything_frees_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("d.db")).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"b").unwrap();
    for i in 0..20_000 {
        tx.put(b"b", &key(i), &[7u8; 100]).unwrap();
    }
    tx.commit().unwrap();
    for chunk in 0..20 {
        let mut tx = db.begin_write().unwrap();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            assert!(tx.delete(b"b", &key(i)).unwrap());
        }
        tx.commit().unwrap();
        assert_clean(&db);
    }
    let stats = db.stats();
    let b = &stats.buckets[0];
    assert_eq!((b.keys, b.leaf_pages, b.depth), (0, 0, 0));
    assert!(
        stats.free_pages + 10 >= stats.high_water,
        "nearly every page is free: {stats:?}"
    );
}

#[test]
fn compact_into_writes_a_dense_copy() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("src.db")).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"b").unwrap();
    tx.create_bucket(b"empty").unwrap();
    for i in 0..50_000 {
        tx.put(b"b", &key(i * 7919 % 50_000), &[3u8; 100]).unwrap();
    }
    tx.commit().unwrap();
    let mut tx = db.begin_write().unwrap();
    for i in 0..40_000 {
        tx.delete(b"b", &key(i)).unwrap();
    }
    tx.commit().unwrap();
    let dest = dir.path().join("dest.db");
    let st = db.compact_into(&dest).unwrap();
    assert_eq!((st.buckets, st.keys), (2, 10_000));
    assert!(st.dest_bytes * 3 < st.source_bytes, "{st:?}");
    assert!(matches!(
        db.compact_into(&dest),
        Err(Error::DestinationExists(_))
    ));
    let copy = Db::open(&dest).unwrap();
    assert_eq!(dump(&copy), dump(&db));
    assert_clean(&copy);
    let fill = copy
        .stats()
        .buckets
        .iter()
        .find(|b| b.name == b"b")
        .unwrap()
        .fill_ratio();
    assert!(fill > 0.9, "compacted leaves are nearly full: {fill}");
}

#[test]
fn defragmenting_in_place_shrinks_the_file_and_keeps_readers_and_writers_going() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let db = Db::open(&path).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"b").unwrap();
    for i in 0..20_000 {
        tx.put(b"b", &key(i), &[7u8; 200]).unwrap();
    }
    tx.commit().unwrap();
    let mut tx = db.begin_write().unwrap();
    for i in 0..19_000 {
        tx.delete(b"b", &key(i)).unwrap();
    }
    tx.put(b"b", b"unsynced", b"yes").unwrap();
    tx.commit_nosync().unwrap();
    let before = dump(&db);
    // A reader that started before the defragmentation keeps its view.
    let old_reader = db.begin_read();
    let size_before = std::fs::metadata(&path).unwrap().len();
    let stats = db.defragment().unwrap();
    let size_after = std::fs::metadata(&path).unwrap().len();
    assert!(
        size_after * 4 < size_before,
        "{size_before} -> {size_after} ({stats:?})"
    );
    assert_eq!(stats.source_bytes, size_before);
    assert_eq!(dump(&db), before);
    assert_eq!(
        old_reader
            .open_bucket(b"b")
            .unwrap()
            .get(&key(19_500))
            .unwrap(),
        Some(&[7u8; 200][..])
    );
    drop(old_reader);
    // Writing goes on in the new file, and survives a reopen.
    let mut tx = db.begin_write().unwrap();
    for i in 0..500 {
        tx.put(b"b", &key(100_000 + i), b"after").unwrap();
    }
    tx.commit().unwrap();
    assert_clean(&db);
    let after = dump(&db);
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(dump(&db), after);
    assert_clean(&db);
    assert!(!dir.path().join("d.db.defrag").exists());
}

#[test]
fn online_defragmentation_shrinks_the_file_while_writers_and_readers_go_on() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let db = Db::open(&path).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"b").unwrap();
    tx.create_bucket(b"w").unwrap();
    for i in 0..20_000 {
        tx.put(b"b", &key(i), &[7u8; 200]).unwrap();
    }
    tx.commit().unwrap();
    // The keys that stay were written last: they sit at the end of the file.
    let mut tx = db.begin_write().unwrap();
    for i in 0..19_000 {
        tx.delete(b"b", &key(i)).unwrap();
    }
    tx.commit().unwrap();
    let size_before = std::fs::metadata(&path).unwrap().len();
    let old_reader = db.begin_read();

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let writer = {
        let (db, stop, writes) = (db.clone(), stop.clone(), writes.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let mut tx = db.begin_write().unwrap();
                tx.put(b"w", &key(n), &n.to_be_bytes()).unwrap();
                if n >= 50 {
                    tx.delete(b"w", &key(n - 50)).unwrap();
                }
                tx.commit_nosync().unwrap();
                writes.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            n
        })
    };
    let reader = {
        let (db, stop, reads) = (db.clone(), stop.clone(), reads.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = db.begin_read();
                let b = r.open_bucket(b"b").unwrap();
                assert_eq!(b.get(&key(19_999)).unwrap(), Some(&[7u8; 200][..]));
                assert_eq!(b.len(), 1000);
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Let both get going, then defragment underneath them.
    while writes.load(Ordering::Relaxed) < 20 || reads.load(Ordering::Relaxed) < 20 {
        std::thread::yield_now();
    }
    let (w0, r0) = (
        writes.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
    );
    let stats = db.defragment_online().unwrap();
    let (w1, r1) = (
        writes.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
    );
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    reader.join().unwrap();
    assert!(
        w1 > w0 && r1 > r0,
        "writes {w0}->{w1} and reads {r0}->{r1} went on during the defragmentation"
    );

    // The reader from before still sees its data.
    assert_eq!(
        old_reader
            .open_bucket(b"b")
            .unwrap()
            .get(&key(19_500))
            .unwrap(),
        Some(&[7u8; 200][..])
    );
    drop(old_reader);
    // A second pass reclaims what that reader held.
    let second = db.defragment_online().unwrap();
    let size_after = std::fs::metadata(&path).unwrap().len();
    eprintln!("online defragmentation: {size_before} -> {stats:?} -> {second:?}");
    assert!(
        size_after * 4 < size_before,
        "{size_before} -> {size_after} ({stats:?})"
    );
    assert_clean(&db);
    let r = db.begin_read();
    let w = r.open_bucket(b"w").unwrap();
    assert_eq!(w.len(), u64::from(written.min(50)));
    for n in written.saturating_sub(50)..written {
        assert_eq!(w.get(&key(n)).unwrap(), Some(&n.to_be_bytes()[..]));
    }
    drop(r);
    let after = dump(&db);
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(dump(&db), after);
    assert_clean(&db);
}

#[test]
fn keeping_a_reserve_grows_the_file_in_steps_not_a_page_per_commit() {
    // Every growth is an fallocate and a fresh mapping of the whole file
    // (its pages faulted in again): a member keeping the NOSPACE reserve
    // did both on every commit once the data passed the first size.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let db = Db::open_with(
        &path,
        btree::Options {
            reserve_bytes: 1 << 20,
            ..btree::Options::default()
        },
    )
    .unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"b").unwrap();
    tx.commit().unwrap();
    let value = vec![5u8; 1000];
    let mut sizes = std::collections::BTreeSet::new();
    for i in 0..3000 {
        let mut tx = db.begin_write().unwrap();
        tx.put(b"b", &key(i), &value).unwrap();
        tx.commit().unwrap();
        sizes.insert(std::fs::metadata(&path).unwrap().len());
    }
    let last = *sizes.last().unwrap();
    assert!(last >= 4 << 20, "3 MB of values in {last} bytes");
    assert!(sizes.len() <= 12, "{} sizes: {sizes:?}", sizes.len());
    assert!(!db.space_short());
    assert_clean(&db);
}
