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
fn a_fresh_store_is_at_revision_1_and_the_first_change_makes_revision_2() {
    // As in etcd: revision 1 is the empty key space.
    let dir = tempfile::tempdir().unwrap();
    let s = crate::open_store(&dir.path().join("kv.db"));
    assert_eq!(s.current_revision(), 1);
    let every_key = RangeRequest {
        key: vec![0],
        range_end: b"\0".to_vec(),
        ..Default::default()
    };
    let r = s.range(&every_key).unwrap();
    assert_eq!((r.revision, r.count, r.kvs.len(), r.more), (1, 0, 0, false));
    assert_eq!(put(&s, "a", "1"), 2);
    assert_eq!(s.current_revision(), 2);
}

#[test]
fn puts_and_deletes_make_revisions_readable_at_any_point() {
    let dir = tempfile::tempdir().unwrap();
    let s = crate::open_store(&dir.path().join("kv.db"));
    assert_eq!(s.current_revision(), 1);
    assert_eq!(put(&s, "foo", "a"), 2);
    assert_eq!(put(&s, "foo", "b"), 3);
    assert_eq!(put(&s, "bar", "x"), 4);
    let mut a = s.apply().unwrap();
    let d = a.delete_range(b"foo", b"", true).unwrap();
    assert_eq!(
        (d.revision, d.deleted, d.prev_kvs[0].value.as_slice()),
        (5, 1, &b"b"[..])
    );
    let none = a.delete_range(b"nothing", b"", false).unwrap();
    assert_eq!(
        (none.revision, none.deleted),
        (5, 0),
        "deleting nothing makes no revision"
    );
    a.commit(10).unwrap();
    assert_eq!(put(&s, "foo", "c"), 6);

    assert_eq!(get(&s, "foo", 2).unwrap(), Some(("a".into(), 2, 2, 1)));
    assert_eq!(get(&s, "foo", 4).unwrap(), Some(("b".into(), 2, 3, 2)));
    assert_eq!(get(&s, "foo", 5).unwrap(), None);
    assert_eq!(get(&s, "foo", 0).unwrap(), Some(("c".into(), 6, 6, 1)));
    assert!(matches!(get(&s, "foo", 7), Err(Error::FutureRevision)));
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
        (2, true, 1, 6)
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
    let s = crate::open_store(&dir.path().join("kv.db"));
    for i in 0..10 {
        put(&s, "k", &format!("v{i}"));
    }
    put(&s, "gone", "x");
    let mut a = s.apply().unwrap();
    a.delete_range(b"gone", b"", false).unwrap();
    a.commit(12).unwrap();
    let mut a = s.apply().unwrap();
    a.compact(13).unwrap();
    a.commit(13).unwrap();
    assert_eq!(s.compacted_revision(), 13);
    assert!(matches!(get(&s, "k", 6), Err(Error::Compacted)));
    assert_eq!(
        Error::Compacted.to_string(),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(get(&s, "k", 13).unwrap(), Some(("v9".into(), 2, 11, 10)));
    let mut a = s.apply().unwrap();
    assert!(matches!(a.compact(13), Err(Error::Compacted)));
    assert!(matches!(a.compact(100), Err(Error::FutureRevision)));
    drop(a);
    // Only the one visible record of "k" is left in the B+tree, and it all
    // survives a reopen once synced.
    s.sync().unwrap();
    drop(s);
    let s = crate::open_store(&dir.path().join("kv.db"));
    assert_eq!(
        (
            s.current_revision(),
            s.compacted_revision(),
            s.consistent_index()
        ),
        (13, 13, 13)
    );
    assert_eq!(get(&s, "k", 0).unwrap(), Some(("v9".into(), 2, 11, 10)));
    assert_eq!(get(&s, "gone", 0).unwrap(), None);
}

#[test]
fn ignore_value_and_lease_need_an_existing_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = crate::open_store(&dir.path().join("kv.db"));
    let mut a = s.apply().unwrap();
    let err = a
        .put(&PutRequest {
            key: b"k".to_vec(),
            ignore_value: true,
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "key not found");
    a.lease_grant(7, 60).unwrap();
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
    let s = crate::open_store(&path);
    put(&s, "a", "1");
    s.sync().unwrap();
    put(&s, "b", "2");
    drop(s);
    let s = crate::open_store(&path);
    assert_eq!((s.current_revision(), s.consistent_index()), (2, 2));
    assert_eq!(get(&s, "b", 0).unwrap(), None);
}

#[test]
fn an_abandoned_batch_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = crate::open_store(&dir.path().join("kv.db"));
    let mut a = s.apply().unwrap();
    a.put(&PutRequest {
        key: b"k".to_vec(),
        ..Default::default()
    })
    .unwrap();
    drop(a);
    assert!(matches!(s.apply(), Err(Error::Poisoned)));
    // Readers never saw the abandoned revision.
    assert_eq!(s.current_revision(), 1);
    assert_eq!(get(&s, "k", 0).unwrap(), None);
}

#[test]
fn ranges_sort_filter_and_limit_as_etcd_does() {
    use mvcc::{SortOrder, SortTarget};
    let dir = tempfile::tempdir().unwrap();
    let s = crate::open_store(&dir.path().join("kv.db"));
    put(&s, "a", "3"); // rev 2
    put(&s, "b", "1"); // rev 3
    put(&s, "c", "2"); // rev 4
    put(&s, "a", "4"); // rev 5: a has version 2
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
    assert_eq!(q(&|r| r.min_mod_revision = 4), ("ac".into(), 3, false));
    assert_eq!(q(&|r| r.max_create_revision = 3), ("ab".into(), 3, false));
    assert_eq!(
        q(&|r| {
            r.min_create_revision = 3;
            r.max_mod_revision = 3
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

#[test]
fn transactions_write_at_one_revision_and_see_their_own_writes() {
    use mvcc::{
        Compare, CompareResult as R, CompareTarget as T, RequestOp, ResponseOp, TxnRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let s = crate::open_store(&dir.path().join("kv.db"));
    put(&s, "k", "v1"); // rev 2
    put(&s, "old", "x"); // rev 3
    let cmp = |key: &str, result, target| Compare {
        key: key.into(),
        range_end: Vec::new(),
        result,
        target,
    };
    let p = |k: &str, v: &str| {
        RequestOp::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })
    };
    let read = |k: &str| {
        RequestOp::Range(RangeRequest {
            key: k.into(),
            ..Default::default()
        })
    };

    let t = TxnRequest {
        compare: vec![
            cmp("k", R::Equal, T::Value(b"v1".to_vec())),
            cmp("missing", R::Equal, T::Version(0)),
        ],
        success: vec![
            p("k", "v2"),
            p("other", "o"),
            read("k"),
            RequestOp::DeleteRange {
                key: b"old".to_vec(),
                range_end: Vec::new(),
                prev_kv: true,
            },
        ],
        failure: vec![p("k", "never")],
    };
    let mut a = s.apply().unwrap();
    let r = a.txn(&t).unwrap();
    a.commit(2).unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, 4, "the whole transaction is one revision");
    match &r.responses[2] {
        ResponseOp::Range(rr) => {
            assert_eq!(rr.kvs[0].value, b"v2", "reads see the txn's own writes")
        }
        other => panic!("{other:?}"),
    }
    match &r.responses[3] {
        ResponseOp::DeleteRange(d) => {
            assert_eq!((d.deleted, d.prev_kvs[0].value.as_slice()), (1, &b"x"[..]))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.current_revision(), 4);
    assert_eq!(get(&s, "old", 0).unwrap(), None);
    assert_eq!(get(&s, "k", 0).unwrap(), Some(("v2".into(), 2, 4, 2)));
    assert_eq!(get(&s, "other", 0).unwrap(), Some(("o".into(), 4, 4, 1)));

    // A value compare on a missing key fails; the failure branch runs.
    let t = TxnRequest {
        compare: vec![cmp("missing", R::Equal, T::Value(Vec::new()))],
        success: vec![p("x", "1")],
        failure: vec![read("other")],
    };
    let mut a = s.apply().unwrap();
    let r = a.txn(&t).unwrap();
    a.commit(3).unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.revision, 4, "a read-only branch makes no revision");

    // Nested transactions share the outer revision.
    let inner = TxnRequest {
        compare: vec![cmp("other", R::Greater, T::Version(0))],
        success: vec![p("n1", "a")],
        failure: vec![],
    };
    let t = TxnRequest {
        compare: vec![],
        success: vec![p("n0", "b"), RequestOp::Txn(inner)],
        failure: vec![],
    };
    let mut a = s.apply().unwrap();
    let r = a.txn(&t).unwrap();
    a.commit(4).unwrap();
    assert_eq!(r.revision, 5);
    assert_eq!(get(&s, "n1", 0).unwrap(), Some(("a".into(), 5, 5, 1)));

    // Writing a key twice is refused before anything runs.
    let t = TxnRequest {
        compare: vec![],
        success: vec![p("d", "1"), p("d", "2")],
        failure: vec![],
    };
    let mut a = s.apply().unwrap();
    assert!(matches!(a.txn(&t), Err(Error::DuplicateKey)));
    a.commit(5).unwrap();
    assert_eq!(s.current_revision(), 5);
}

#[test]
fn a_transaction_that_would_fail_part_way_changes_nothing() {
    use mvcc::{Compare, CompareResult as R, CompareTarget as T, RequestOp, TxnRequest};
    let dir = tempfile::tempdir().unwrap();
    let s = crate::open_store(&dir.path().join("kv.db"));
    put(&s, "a", "1");
    let p = |k: &str, ignore_value: bool| {
        RequestOp::Put(PutRequest {
            key: k.into(),
            value: if ignore_value { vec![] } else { b"v".to_vec() },
            ignore_value,
            ..Default::default()
        })
    };
    // The second put needs an existing key: the whole txn fails up front.
    let t = TxnRequest {
        compare: vec![],
        success: vec![p("b", false), p("missing", true)],
        failure: vec![],
    };
    let mut a = s.apply().unwrap();
    assert!(matches!(a.txn(&t), Err(Error::KeyNotFound)));
    a.commit(2).unwrap();
    assert_eq!(s.current_revision(), 2);
    assert_eq!(get(&s, "b", 0).unwrap(), None);
    // Nested compares are decided before the outer writes run.
    let inner = TxnRequest {
        compare: vec![Compare {
            key: b"a".to_vec(),
            range_end: Vec::new(),
            result: R::Equal,
            target: T::Version(1),
        }],
        success: vec![p("inner-saw-old", false)],
        failure: vec![p("inner-saw-new", false)],
    };
    let t = TxnRequest {
        compare: vec![],
        success: vec![p("a", false), RequestOp::Txn(inner)],
        failure: vec![],
    };
    let mut a = s.apply().unwrap();
    a.txn(&t).unwrap();
    a.commit(3).unwrap();
    assert!(get(&s, "inner-saw-old", 0).unwrap().is_some());
}

#[test]
fn hashes_agree_between_stores_with_the_same_history() {
    let dir = tempfile::tempdir().unwrap();
    let build = |name: &str, index_offset: u64| {
        let s = Store::open(dir.path().join(name)).unwrap();
        for i in 0..20u64 {
            let mut a = s.apply().unwrap();
            a.put(&PutRequest {
                key: format!("k{}", i % 5).into_bytes(),
                value: vec![i as u8],
                ..Default::default()
            })
            .unwrap();
            a.commit(i + index_offset).unwrap();
        }
        s
    };
    let a = build("a.db", 1);
    let b = build("b.db", 1000);
    assert_eq!(
        a.hash().unwrap(),
        b.hash().unwrap(),
        "the consistent index is left out"
    );
    let (ha, rev, _) = a.hash_kv(0).unwrap();
    assert_eq!(rev, 21);
    assert_eq!(ha, b.hash_kv(0).unwrap().0);
    let at11 = a.hash_kv(11).unwrap().0;
    assert_ne!(at11, ha);
    // Members that compacted at the same revision agree, whatever else
    // differs about how they got there.
    for s in [&a, &b] {
        let mut ap = s.apply().unwrap();
        ap.compact(9).unwrap();
        ap.commit(5000).unwrap();
    }
    assert_eq!(a.hash_kv(11).unwrap().0, b.hash_kv(11).unwrap().0);
    assert_eq!(a.hash_kv(0).unwrap().0, b.hash_kv(0).unwrap().0);
    assert!(matches!(a.hash_kv(9), Err(Error::Compacted)));
    assert!(matches!(a.hash_kv(22), Err(Error::FutureRevision)));
    // Different data, different hashes.
    let mut ap = a.apply().unwrap();
    ap.put(&PutRequest {
        key: b"extra".to_vec(),
        ..Default::default()
    })
    .unwrap();
    ap.commit(101).unwrap();
    assert_ne!(a.hash().unwrap(), b.hash().unwrap());
    assert_ne!(a.hash_kv(0).unwrap().0, b.hash_kv(0).unwrap().0);
}

/// The values etcd 3.4.23 printed (`etcdctl endpoint hashkv --rev R`) for
/// this history: put foo a, put foo b, put bar c, del foo, put baz d,
/// put foo e, put bar f (revisions 2 to 8), then `compact 5`.
#[test]
fn hash_kv_equals_what_etcd_prints_for_the_same_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("kv.db")).unwrap();
    for (k, v) in [("foo", "a"), ("foo", "b"), ("bar", "c")] {
        put(&s, k, v);
    }
    let mut a = s.apply().unwrap();
    a.delete_range(b"foo", b"", false).unwrap();
    a.commit(5).unwrap();
    for (k, v) in [("baz", "d"), ("foo", "e"), ("bar", "f")] {
        put(&s, k, v);
    }
    let mut a = s.apply().unwrap();
    a.compact(5).unwrap();
    a.commit(9).unwrap();
    let etcd = [
        (0, 4110620208u32),
        (8, 4110620208),
        (6, 1871049446),
        (7, 3397066513),
    ];
    for (rev, want) in etcd {
        assert_eq!(
            s.hash_kv(rev).unwrap(),
            (want, 8, 5),
            "before the records go, at {rev}"
        );
    }
    s.finish_compaction().unwrap();
    for (rev, want) in etcd {
        assert_eq!(s.hash_kv(rev).unwrap(), (want, 8, 5), "after, at {rev}");
    }
}

#[test]
fn leases_attach_keys_and_revoking_deletes_them_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let s = crate::open_store(&path);
    let mut a = s.apply().unwrap();
    assert_eq!(
        a.lease_grant(7, 1).unwrap(),
        mvcc::lease::MIN_TTL,
        "TTLs are raised to the minimum"
    );
    assert!(matches!(a.lease_grant(7, 10), Err(Error::LeaseExists)));
    assert!(matches!(
        a.lease_grant(8, mvcc::lease::MAX_TTL + 1),
        Err(Error::LeaseTtlTooLarge)
    ));
    let lp = |k: &str, lease| PutRequest {
        key: k.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    };
    a.put(&lp("a", 7)).unwrap();
    a.put(&lp("b", 7)).unwrap();
    a.put(&lp("c", 7)).unwrap();
    let err = a.put(&lp("d", 99)).unwrap_err();
    assert_eq!(err.to_string(), "requested lease not found");
    a.put(&lp("c", 0)).unwrap(); // overwrite without a lease detaches
    a.commit(1).unwrap();
    let (granted, remaining, keys) = s.lease_time_to_live(7).unwrap();
    assert_eq!((granted, keys), (2, vec![b"a".to_vec(), b"b".to_vec()]));
    assert!((1..=2).contains(&remaining));
    assert_eq!(s.leases(), vec![7]);
    assert!(s.expired_leases(std::time::Instant::now()).is_empty());
    let later = std::time::Instant::now() + std::time::Duration::from_secs(3);
    assert_eq!(s.expired_leases(later), vec![7]);
    assert_eq!(s.lease_renew(7).unwrap(), 2);
    assert!(matches!(s.lease_renew(8), Err(Error::LeaseNotFound)));

    // A restart restores the lease and its keys.
    s.sync().unwrap();
    drop(s);
    let s = crate::open_store(&path);
    assert_eq!(
        s.lease_time_to_live(7).unwrap().2,
        vec![b"a".to_vec(), b"b".to_vec()]
    );

    let before = s.current_revision();
    let mut a = s.apply().unwrap();
    assert_eq!(
        a.lease_revoke(7).unwrap(),
        before + 1,
        "both keys go in one revision"
    );
    assert!(matches!(a.lease_revoke(7), Err(Error::LeaseNotFound)));
    a.commit(2).unwrap();
    assert_eq!(get(&s, "a", 0).unwrap(), None);
    assert_eq!(get(&s, "b", 0).unwrap(), None);
    assert!(get(&s, "c", 0).unwrap().is_some());
    assert!(s.leases().is_empty());
    s.sync().unwrap();
    drop(s);
    assert!(
        crate::open_store(&path).leases().is_empty(),
        "the revoke is durable"
    );
}

#[test]
fn compaction_removes_records_in_bounded_steps_and_resumes_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let s = crate::open_store(&path);
    for i in 0..300 {
        put(&s, &format!("k{}", i % 10), &format!("v{i}"));
    }
    let mut a = s.apply().unwrap();
    a.compact(251).unwrap();
    a.commit(1000).unwrap();
    assert!(
        matches!(get(&s, "k1", 101), Err(Error::Compacted)),
        "reads below refuse at once"
    );
    let hash_mid = s.hash_kv(261).unwrap().0;
    // One small step, then writes and reads carry on between steps; HashKV
    // is the same however far the steps have got.
    assert!(!s.compact_step(50).unwrap());
    assert_eq!(s.hash_kv(261).unwrap().0, hash_mid);
    put(&s, "k1", "new");
    assert_eq!(get(&s, "k1", 0).unwrap().unwrap().0, "new");
    assert_eq!(get(&s, "k2", 251).unwrap().unwrap().0, "v242");
    // Crash before the compaction finished (what was synced survives).
    s.sync().unwrap();
    drop(s);
    let s = crate::open_store(&path);
    assert_eq!(s.compacted_revision(), 251);
    assert_eq!(get(&s, "k2", 251).unwrap().unwrap().0, "v242");
    s.finish_compaction().unwrap();
    assert!(s.compact_step(10).unwrap(), "nothing left");
    assert_eq!(get(&s, "k2", 251).unwrap().unwrap().0, "v242");
    assert_eq!(get(&s, "k3", 0).unwrap().unwrap().0, "v293");
    assert_eq!(s.hash_kv(261).unwrap().0, hash_mid);
    s.sync().unwrap();
    drop(s);
    // Finished: reopening finds every record at or below 251 gone but the
    // ten kept ones, and the same answers.
    let s = crate::open_store(&path);
    assert_eq!(s.compacted_revision(), 251);
    assert_eq!(get(&s, "k9", 251).unwrap().unwrap().0, "v249");
}

#[test]
fn history_replay_lists_every_change_in_revision_order() {
    use mvcc::EventKind;
    let dir = tempfile::tempdir().unwrap();
    let s = crate::open_store(&dir.path().join("kv.db"));
    put(&s, "/a/1", "x"); // 2
    put(&s, "/b/1", "y"); // 3
    put(&s, "/a/2", "z"); // 4
    put(&s, "/a/1", "x2"); // 5
    let mut a = s.apply().unwrap();
    a.delete_range(b"/a/", b"/a0", false).unwrap(); // 6: /a/1 and /a/2
    a.commit(5).unwrap();
    let evs = s.events_since(3, b"/a/", b"/a0", true, 0).unwrap();
    let summary: Vec<(EventKind, String, i64, Option<String>)> = evs
        .iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8(e.kv.key.clone()).unwrap(),
                e.kv.mod_revision,
                e.prev_kv
                    .as_ref()
                    .map(|p| String::from_utf8(p.value.clone()).unwrap()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (EventKind::Put, "/a/2".into(), 4, None),
            (EventKind::Put, "/a/1".into(), 5, Some("x".into())),
            (EventKind::Delete, "/a/1".into(), 6, Some("x2".into())),
            (EventKind::Delete, "/a/2".into(), 6, Some("z".into())),
        ]
    );
    assert_eq!(s.events_since(2, b"/b/1", b"", false, 0).unwrap().len(), 1);
    assert_eq!(s.events_since(2, b"/", b"\0", false, 2).unwrap().len(), 2);
    let mut a = s.apply().unwrap();
    a.compact(4).unwrap();
    a.commit(6).unwrap();
    // As in etcd, history from the compacted revision itself is readable.
    assert!(matches!(
        s.events_since(3, b"/", b"\0", false, 0),
        Err(Error::Compacted)
    ));
    assert_eq!(s.events_since(4, b"/", b"\0", false, 0).unwrap().len(), 4);
    assert_eq!(s.events_since(5, b"/", b"\0", false, 0).unwrap().len(), 3);
}
