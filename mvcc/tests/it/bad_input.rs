//! Bad requests get etcd's typed errors, change nothing, and leave the
//! store working.

use mvcc::{
    Error, Limits, PutRequest, RangeRequest, RequestOp, Store, TxnRequest, WatchError, WatchRequest,
};

fn put_req(k: &[u8], v: &[u8]) -> PutRequest {
    PutRequest {
        key: k.to_vec(),
        value: v.to_vec(),
        ..Default::default()
    }
}

fn txn(success: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: vec![],
        success,
        failure: vec![],
    }
}

#[test]
fn bad_requests_get_etcds_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with(
        dir.path().join("kv.db"),
        Limits {
            max_put_bytes: 1000,
            max_txn_ops: 4,
            reserve_bytes: 0,
        },
    )
    .unwrap();
    let mut a = s.apply().unwrap();
    a.put(&put_req(b"a", b"1")).unwrap();
    a.commit(1).unwrap();
    let hash = s.hash_kv(0).unwrap();
    let mut a = s.apply().unwrap();
    let err = |r: mvcc::Result<()>| r.unwrap_err().to_string();
    assert_eq!(
        err(a.put(&put_req(b"", b"x")).map(drop)),
        "key is not provided"
    );
    assert_eq!(
        err(a.delete_range(b"", b"z", false).map(drop)),
        "key is not provided"
    );
    assert_eq!(
        err(a.put(&put_req(b"k", &[7; 1000])).map(drop)),
        "request is too large"
    );
    assert!(a.put(&put_req(b"k", &[7; 999])).is_ok(), "at the limit");
    assert_eq!(
        err(a
            .put(&PutRequest {
                ignore_value: true,
                ..put_req(b"a", b"v")
            })
            .map(drop)),
        "value is provided"
    );
    assert_eq!(
        err(a
            .put(&PutRequest {
                ignore_lease: true,
                lease: 5,
                ..put_req(b"a", b"")
            })
            .map(drop)),
        "lease is provided"
    );
    assert_eq!(
        err(a
            .put(&PutRequest {
                lease: 42,
                ..put_req(b"a", b"v")
            })
            .map(drop)),
        "requested lease not found"
    );
    assert_eq!(
        err(a.lease_revoke(42).map(drop)),
        "requested lease not found"
    );
    // Transactions are checked whole before anything runs, nested ones too.
    let nested_empty = RequestOp::Txn(txn(vec![RequestOp::Range(RangeRequest::default())]));
    assert_eq!(
        err(a
            .txn(&txn(vec![
                RequestOp::Put(put_req(b"t", b"1")),
                nested_empty
            ]))
            .map(drop)),
        "key is not provided"
    );
    let five: Vec<RequestOp> = (0..5u8)
        .map(|i| RequestOp::Put(put_req(&[b'x', i], b"")))
        .collect();
    assert_eq!(
        err(a.txn(&txn(five)).map(drop)),
        "too many operations in txn request"
    );
    let big = RequestOp::Txn(txn(vec![RequestOp::Put(put_req(b"b", &[0; 2000]))]));
    assert_eq!(
        err(a.txn(&txn(vec![big])).map(drop)),
        "request is too large"
    );
    // range_end before the key: an empty range, nothing deleted.
    assert_eq!(a.delete_range(b"z", b"a", true).unwrap().deleted, 0);
    assert_eq!(
        err(a.compact(100)),
        "mvcc: required revision is a future revision"
    );
    a.commit(2).unwrap();
    // Only the one good put made a revision.
    assert_eq!(s.current_revision(), 3);
    assert_ne!(s.hash_kv(0).unwrap(), hash);
    assert!(matches!(
        s.range(&RangeRequest::default()),
        Err(Error::EmptyKey)
    ));
    assert!(matches!(
        s.range(&RangeRequest {
            key: b"a".to_vec(),
            revision: 4,
            ..Default::default()
        }),
        Err(Error::FutureRevision)
    ));
    // As in etcd, a negative limit is no limit and a negative revision the
    // current one; a range ending before its key is empty.
    let r = s
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            limit: -1,
            revision: -5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more, r.revision), (2, 2, false, 3));
    let r = s
        .range(&RangeRequest {
            key: b"z".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 0));
    assert!(matches!(s.lease_renew(42), Err(Error::LeaseNotFound)));
    assert!(matches!(
        s.lease_time_to_live(42),
        Err(Error::LeaseNotFound)
    ));
    let (ws, _rx) = s.watch_stream(4);
    assert_eq!(
        ws.watch(&WatchRequest {
            key: b"z".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        }),
        Err(WatchError::EmptyRange)
    );
    // Still working.
    let mut a = s.apply().unwrap();
    assert_eq!(a.put(&put_req(b"c", b"3")).unwrap().revision, 4);
    a.commit(3).unwrap();
}

#[test]
fn lease_ttls_beyond_etcds_maximum_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = crate::open_store(&dir.path().join("kv.db"));
    let mut a = s.apply().unwrap();
    assert!(matches!(
        a.lease_grant(1, 9_000_000_001),
        Err(Error::LeaseTtlTooLarge)
    ));
    assert_eq!(a.lease_grant(1, 1).unwrap(), 2, "raised to the minimum");
    assert!(matches!(a.lease_grant(1, 10), Err(Error::LeaseExists)));
    a.commit(1).unwrap();
}
