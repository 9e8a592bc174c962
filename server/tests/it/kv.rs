//! KV: put, range with every option, delete, txn, compact, and etcd's
//! errors for bad requests.

use etcd_client::{
    CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

use crate::{status, Server};

#[tokio::test]
async fn puts_and_ranges_follow_etcds_revision_rules() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    // A fresh store is at revision 1; headers name the member and term.
    let r = c.get("nothing", None).await.unwrap();
    let h = r.header().unwrap();
    assert_eq!(h.revision(), 1);
    assert!(h.cluster_id() != 0 && h.member_id() != 0 && h.raft_term() >= 1);
    assert_eq!(
        c.put("a", "1", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision(),
        2
    );
    c.put("b", "2", None).await.unwrap();
    c.put("c", "3", None).await.unwrap();
    let p = c
        .put("a", "4", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(p.prev_key().unwrap().value(), b"1");
    assert_eq!(p.header().unwrap().revision(), 5);

    let r = c.get("a", None).await.unwrap();
    let kv = &r.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        ),
        (&b"4"[..], 2, 5, 2)
    );
    // History stays readable.
    let old = c
        .get("a", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"1");
    // Prefix, limit (count is the total), sort, keys only, serializable.
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
        .await
        .unwrap();
    assert_eq!((r.kvs().len(), r.count(), r.more()), (2, 3, true));
    // A limit far beyond the key space is no limit (nothing is sized by it).
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_limit(i64::MAX)),
        )
        .await
        .unwrap();
    assert_eq!((r.kvs().len(), r.count(), r.more()), (3, 3, false));
    let r = c
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Value, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    let values: Vec<&[u8]> = r.kvs().iter().map(|kv| kv.value()).collect();
    assert_eq!(values, vec![&b"4"[..], b"3", b"2"]);
    let r = c
        .get(
            "a",
            Some(GetOptions::new().with_range("c").with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 2);
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    let r = c
        .get("b", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"2");
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((r.count(), r.kvs().len()), (3, 0));

    // Deletes: nothing deleted makes no revision; a prefix goes in one.
    let d = c.delete("zzz", None).await.unwrap();
    assert_eq!((d.deleted(), d.header().unwrap().revision()), (0, 5));
    let d = c
        .delete(
            "",
            Some(DeleteOptions::new().with_all_keys().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!((d.deleted(), d.prev_kvs().len()), (3, 3));
    assert_eq!(d.header().unwrap().revision(), 6);
}

#[tokio::test]
async fn transactions_compare_and_swap_at_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    c.put("lock", "free", None).await.unwrap();
    let take = Txn::new()
        .when([Compare::value("lock", CompareOp::Equal, "free")])
        .and_then([
            TxnOp::put("lock", "mine", None),
            TxnOp::put("owner", "me", None),
            TxnOp::get("lock", None),
        ])
        .or_else([TxnOp::get("owner", None)]);
    let r = c.txn(take.clone()).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(
        r.header().unwrap().revision(),
        3,
        "both puts at one revision"
    );
    match &r.op_responses()[2] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"mine"),
        other => panic!("{other:?}"),
    }
    let r = c.txn(take).await.unwrap();
    assert!(!r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 3);
    match &r.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"me"),
        other => panic!("{other:?}"),
    }
    // Version, create and mod revision compares; missing keys compare as 0.
    let r = c
        .txn(Txn::new().when([
            Compare::version("lock", CompareOp::Equal, 2),
            Compare::create_revision("missing", CompareOp::Equal, 0),
            Compare::mod_revision("owner", CompareOp::Greater, 2),
        ]))
        .await
        .unwrap();
    assert!(r.succeeded());
    // Writing one key twice is refused, whatever the compares say.
    let e = c
        .txn(Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request".into()
        )
    );
}

#[tokio::test]
async fn compaction_and_bad_requests_get_etcds_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d")).await;
    let mut c = server.client().await;
    for i in 0..5 {
        c.put("k", format!("v{i}"), None).await.unwrap();
    }
    // Revisions 2..=6.
    c.compact(4, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let e = c
        .get("k", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    let r = c
        .get("k", Some(GetOptions::new().with_revision(4)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"v2");
    let e = c.compact(4, None).await.unwrap_err();
    assert_eq!(
        status(e).1,
        "etcdserver: mvcc: required revision has been compacted"
    );
    let e = c
        .get("k", Some(GetOptions::new().with_revision(100)))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
    let e = c.compact(100, None).await.unwrap_err();
    assert_eq!(
        status(e).1,
        "etcdserver: mvcc: required revision is a future revision"
    );
    let e = c.put("", "v", None).await.unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::InvalidArgument,
            "etcdserver: key is not provided".into()
        )
    );
    let e = c.get("", None).await.unwrap_err();
    assert_eq!(status(e).1, "etcdserver: key is not provided");
    // Over --max-request-bytes (1.5 MiB): refused before it is proposed
    // (raft's log does not grow), a put as a transaction.
    let index_before = c.status().await.unwrap().raft_index();
    let big = vec![7u8; 1800 * 1024];
    let e = c.put("big", big.clone(), None).await.unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::InvalidArgument,
            "etcdserver: request is too large".into()
        )
    );
    let txn = Txn::new().and_then([TxnOp::put("big", big, None)]);
    let e = c.txn(txn).await.unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::InvalidArgument,
            "etcdserver: request is too large".into()
        )
    );
    assert_eq!(c.status().await.unwrap().raft_index(), index_before);
    // Over gRPC's limit (1.5 MiB + 512 KiB): refused as etcd's gRPC
    // server refuses it, before it is decoded.
    let big = vec![7u8; 2 * 1024 * 1024];
    let e = c.put("big", big, None).await.unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::ResourceExhausted,
            "grpc: received message larger than max (2097162 vs. 2097152)".into()
        )
    );
    let e = c
        .put("k", "v", Some(PutOptions::new().with_lease(12345)))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    let e = c
        .put("nokey", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap_err();
    assert_eq!(status(e).1, "etcdserver: key not found");
    // Nothing above changed the store; it still serves.
    let r = c.get("k", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 6);
    assert_eq!(r.kvs()[0].value(), b"v4");
}
