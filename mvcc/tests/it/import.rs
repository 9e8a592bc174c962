//! `mvcc::Import`: a store written from another store's records answers
//! exactly as the original; records the store could not read are refused.

use mvcc::{Import, ImportMeta, PutRequest, RangeRequest, Store};

fn put(s: &Store, key: &str, value: &str, lease: i64, index: u64) -> i64 {
    let mut a = s.apply().unwrap();
    let r = a
        .put(&PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        })
        .unwrap();
    a.commit(index).unwrap();
    r.revision
}

fn all(s: &Store, rev: i64) -> Vec<mvcc::KeyValue> {
    s.range(&RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision: rev,
        ..Default::default()
    })
    .unwrap()
    .kvs
}

/// Every record of `bucket` in the store file at `path`.
fn records(path: &std::path::Path, bucket: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = btree::Db::open(path).unwrap();
    let rx = db.begin_read();
    let b = rx.open_bucket(bucket).unwrap();
    b.range(b"", None)
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

#[test]
fn a_store_imported_from_records_answers_as_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("src.db");
    let (current, compacted, hashes, states) = {
        let s = crate::open_store(&src_path);
        let mut a = s.apply().unwrap();
        a.lease_grant(7, 600).unwrap();
        a.commit(1).unwrap();
        for i in 0..300u64 {
            let lease = if i % 10 == 0 { 7 } else { 0 };
            put(
                &s,
                &format!("k{:03}", i % 120),
                &format!("v{i}"),
                lease,
                i + 2,
            );
        }
        let mut a = s.apply().unwrap();
        a.delete_range(b"k010", b"k020", false).unwrap();
        a.compact(150).unwrap();
        a.commit(400).unwrap();
        s.finish_compaction().unwrap();
        put(&s, "after", "x", 0, 401);
        let current = s.current_revision();
        let revs: Vec<i64> = (151..=current).step_by(17).chain([current]).collect();
        let hashes: Vec<u32> = revs.iter().map(|&r| s.hash_kv(r).unwrap().0).collect();
        let states: Vec<_> = revs.iter().map(|&r| all(&s, r)).collect();
        s.sync().unwrap();
        (current, s.compacted_revision(), hashes, states)
    };
    let mut imp = Import::create(dir.path().join("new.db")).unwrap();
    for (k, v) in records(&src_path, b"key") {
        imp.revision(&k, &v).unwrap();
    }
    for (k, v) in records(&src_path, b"lease") {
        imp.lease(&k, &v).unwrap();
    }
    let counts = imp.counts();
    assert_eq!(counts.leases, 1);
    let s = imp
        .finish(ImportMeta {
            consistent_index: 401,
            term: 0,
            scheduled_compaction: compacted,
            finished_compaction: compacted,
        })
        .unwrap();
    assert_eq!(
        (s.current_revision(), s.compacted_revision()),
        (current, compacted)
    );
    assert_eq!(s.consistent_index(), 401);
    let revs: Vec<i64> = (151..=current).step_by(17).chain([current]).collect();
    for (i, &r) in revs.iter().enumerate() {
        assert_eq!(s.hash_kv(r).unwrap().0, hashes[i], "hash at {r}");
        assert_eq!(all(&s, r), states[i], "state at {r}");
    }
    assert!(matches!(
        s.range(&RangeRequest {
            key: b"k".to_vec(),
            revision: 100,
            ..Default::default()
        }),
        Err(mvcc::Error::Compacted)
    ));
}

#[test]
fn records_the_store_could_not_read_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("src.db");
    {
        let s = crate::open_store(&src_path);
        put(&s, "a", "1", 0, 1);
        put(&s, "b", "2", 0, 2);
        s.sync().unwrap();
    }
    let recs = records(&src_path, b"key");
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        Import::create(dir.path().join(format!("new{n}.db"))).unwrap()
    };
    let err = |r: mvcc::Result<()>| r.unwrap_err().to_string();
    assert!(err(fresh().revision(b"short", &recs[0].1)).contains("where a revision"));
    let mut imp = fresh();
    imp.revision(&recs[1].0, &recs[1].1).unwrap();
    assert!(err(imp.revision(&recs[0].0, &recs[0].1)).contains("out of order"));
    // The record of revision 3 under the key of revision 2.
    assert!(err(fresh().revision(&recs[0].0, &recs[1].1)).contains("modified at 3"));
    assert!(err(fresh().revision(&recs[0].0, b"\xff\xff")).contains("not a KeyValue"));
    let lease = mvcc::lease::LeaseRecord {
        id: 5,
        ttl: 10,
        remaining_ttl: 0,
    };
    use prost::Message as _;
    assert!(
        err(fresh().lease(&6i64.to_be_bytes(), &lease.encode_to_vec())).contains("stored under")
    );
    assert!(
        Import::create(&src_path).is_err(),
        "an existing file is not overwritten"
    );
}

#[test]
fn a_compaction_newer_than_every_record_left_is_the_revision() {
    // put a, delete a, compact at the deletion: etcd keeps no record.
    let dir = tempfile::tempdir().unwrap();
    let s = Import::create(dir.path().join("new.db"))
        .unwrap()
        .finish(ImportMeta {
            consistent_index: 3,
            term: 2,
            scheduled_compaction: 3,
            finished_compaction: 3,
        })
        .unwrap();
    assert_eq!(
        (s.current_revision(), s.compacted_revision(), s.term()),
        (3, 3, 2)
    );
    assert!(all(&s, 0).is_empty());
}
