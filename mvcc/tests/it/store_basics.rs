use mvcc::{Error, PutRequest, RangeRequest, Store};

fn put(s: &Store, key: &str, value: &str) -> i64 {
    let mut a = s.apply().unwrap();
    let r = a
        .put(&PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .unwrap();
    a.commit(r.revision as u64).unwrap();
    r.revision
}

fn get(s: &Store, key: &str, rev: i64) -> mvcc::Result<Option<(String, i64, i64, i64)>> {
    let r = s.range(&RangeRequest {
        key: key.into(),
        revision: rev,
        ..Default::default()
    })?;
    Ok(r.kvs.first().map(|kv| {
        (
            String::from_utf8(kv.value.clone()).unwrap(),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
        )
    }))
}

#[test]
fn puts_and_deletes_make_revisions_readable_at_any_point() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("kv.db")).unwrap();
    assert_eq!(s.current_revision(), 0);
    assert_eq!(put(&s, "foo", "a"), 1);
    assert_eq!(put(&s, "foo", "b"), 2);
    assert_eq!(put(&s, "bar", "x"), 3);
    let mut a = s.apply().unwrap();
    let d = a.delete_range(b"foo", b"", true).unwrap();
    assert_eq!(
        (d.revision, d.deleted, d.prev_kvs[0].value.as_slice()),
        (4, 1, &b"b"[..])
    );
    let none = a.delete_range(b"nothing", b"", false).unwrap();
    assert_eq!(
        (none.revision, none.deleted),
        (4, 0),
        "deleting nothing makes no revision"
    );
    a.commit(10).unwrap();
    assert_eq!(put(&s, "foo", "c"), 5);

    assert_eq!(get(&s, "foo", 1).unwrap(), Some(("a".into(), 1, 1, 1)));
    assert_eq!(get(&s, "foo", 3).unwrap(), Some(("b".into(), 1, 2, 2)));
    assert_eq!(get(&s, "foo", 4).unwrap(), None);
    assert_eq!(get(&s, "foo", 0).unwrap(), Some(("c".into(), 5, 5, 1)));
    assert!(matches!(get(&s, "foo", 6), Err(Error::FutureRevision)));
    assert_eq!(
        Error::FutureRevision.to_string(),
        "mvcc: required revision is a future revision"
    );

    let all = s
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (all.count, all.more, all.kvs.len(), all.revision),
        (2, true, 1, 5)
    );
    assert_eq!(all.kvs[0].key, b"bar");
    let counted = s
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((counted.count, counted.kvs.len()), (2, 0));
}

#[test]
fn compaction_removes_history_and_refuses_old_reads() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("kv.db")).unwrap();
    for i in 0..10 {
        put(&s, "k", &format!("v{i}"));
    }
    put(&s, "gone", "x");
    let mut a = s.apply().unwrap();
    a.delete_range(b"gone", b"", false).unwrap();
    a.commit(12).unwrap();
    let mut a = s.apply().unwrap();
    a.compact(12).unwrap();
    a.commit(13).unwrap();
    assert_eq!(s.compacted_revision(), 12);
    assert!(matches!(get(&s, "k", 5), Err(Error::Compacted)));
    assert_eq!(
        Error::Compacted.to_string(),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(get(&s, "k", 12).unwrap(), Some(("v9".into(), 1, 10, 10)));
    let mut a = s.apply().unwrap();
    assert!(matches!(a.compact(12), Err(Error::Compacted)));
    assert!(matches!(a.compact(99), Err(Error::FutureRevision)));
    drop(a);
    // Only the one visible record of "k" is left in the B+tree, and it all
    // survives a reopen once synced.
    s.sync().unwrap();
    drop(s);
    let s = Store::open(dir.path().join("kv.db")).unwrap();
    assert_eq!(
        (
            s.current_revision(),
            s.compacted_revision(),
            s.consistent_index()
        ),
        (12, 12, 13)
    );
    assert_eq!(get(&s, "k", 0).unwrap(), Some(("v9".into(), 1, 10, 10)));
    assert_eq!(get(&s, "gone", 0).unwrap(), None);
}

#[test]
fn ignore_value_and_lease_need_an_existing_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("kv.db")).unwrap();
    let mut a = s.apply().unwrap();
    let err = a
        .put(&PutRequest {
            key: b"k".to_vec(),
            ignore_value: true,
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "etcdserver: key not found");
    a.put(&PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 7,
        ..Default::default()
    })
    .unwrap();
    let r = a
        .put(&PutRequest {
            key: b"k".to_vec(),
            value: b"w".to_vec(),
            ignore_lease: true,
            prev_kv: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.prev_kv.unwrap().lease, 7);
    let r = a
        .put(&PutRequest {
            key: b"k".to_vec(),
            ignore_value: true,
            ..Default::default()
        })
        .unwrap();
    a.commit(1).unwrap();
    let kv = &s
        .range(&RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .unwrap()
        .kvs[0];
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version, kv.mod_revision),
        (&b"w"[..], 0, 3, r.revision)
    );
}

#[test]
fn batches_not_synced_are_gone_after_a_reopen_and_the_index_says_where_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let s = Store::open(&path).unwrap();
    put(&s, "a", "1");
    s.sync().unwrap();
    put(&s, "b", "2");
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!((s.current_revision(), s.consistent_index()), (1, 1));
    assert_eq!(get(&s, "b", 0).unwrap(), None);
}

#[test]
fn an_abandoned_batch_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("kv.db")).unwrap();
    let mut a = s.apply().unwrap();
    a.put(&PutRequest {
        key: b"k".to_vec(),
        ..Default::default()
    })
    .unwrap();
    drop(a);
    assert!(matches!(s.apply(), Err(Error::Poisoned)));
    // Readers never saw the abandoned revision.
    assert_eq!(s.current_revision(), 0);
    assert_eq!(get(&s, "k", 0).unwrap(), None);
}

#[test]
fn ranges_sort_filter_and_limit_as_etcd_does() {
    use mvcc::{SortOrder, SortTarget};
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("kv.db")).unwrap();
    put(&s, "a", "3"); // rev 1
    put(&s, "b", "1"); // rev 2
    put(&s, "c", "2"); // rev 3
    put(&s, "a", "4"); // rev 4: a has version 2
    let q = |f: &dyn Fn(&mut RangeRequest)| {
        let mut r = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            ..Default::default()
        };
        f(&mut r);
        let res = s.range(&r).unwrap();
        (
            res.kvs
                .iter()
                .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
                .collect::<Vec<_>>()
                .join(""),
            res.count,
            res.more,
        )
    };
    assert_eq!(q(&|_| {}), ("abc".into(), 3, false));
    assert_eq!(q(&|r| r.limit = 2), ("ab".into(), 3, true));
    assert_eq!(q(&|r| r.limit = 3), ("abc".into(), 3, false));
    assert_eq!(
        q(&|r| r.sort_order = SortOrder::Descend),
        ("cba".into(), 3, false)
    );
    assert_eq!(
        q(&|r| r.sort_target = SortTarget::Value),
        ("bca".into(), 3, false)
    );
    assert_eq!(
        q(&|r| {
            r.sort_target = SortTarget::Mod;
            r.sort_order = SortOrder::Descend;
            r.limit = 1
        }),
        ("a".into(), 3, true)
    );
    assert_eq!(
        q(&|r| {
            r.sort_target = SortTarget::Create;
            r.sort_order = SortOrder::Ascend
        }),
        ("abc".into(), 3, false)
    );
    assert_eq!(
        q(&|r| {
            r.sort_target = SortTarget::Version;
            r.sort_order = SortOrder::Descend;
            r.limit = 1
        }),
        ("a".into(), 3, true)
    );
    assert_eq!(q(&|r| r.min_mod_revision = 3), ("ac".into(), 3, false));
    assert_eq!(q(&|r| r.max_create_revision = 2), ("ab".into(), 3, false));
    assert_eq!(
        q(&|r| {
            r.min_create_revision = 2;
            r.max_mod_revision = 2
        }),
        ("b".into(), 3, false)
    );
    let ko = s
        .range(&RangeRequest {
            key: b"a".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .unwrap();
    assert!(ko.kvs[0].value.is_empty());
}
