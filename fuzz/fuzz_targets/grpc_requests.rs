//! Arbitrary bytes decoded as etcd's requests and run against a scratch
//! member state (one store for the whole run, so later inputs meet the
//! state earlier ones left): every request decodes to an error or runs to
//! an etcd error or an answer. Never a panic, never a storage failure.
//!
//! The first byte picks the message: 0 a RangeRequest served from the
//! store, anything else a raft-entry request (Put, DeleteRange, Txn,
//! Compaction, LeaseGrant, LeaseRevoke, Alarm, the auth store's changes,
//! with or without a caller) applied as a committed entry is.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use server::pb::etcdserverpb::RangeRequest;
use server::pb::kvserverpb::Request;

struct Member {
    _dir: tempfile::TempDir,
    store: Arc<mvcc::Store>,
    alarms: Mutex<server::alarms::Alarms>,
    members: server::membership::Membership,
    auth: server::auth::AuthStore,
    metrics: server::metrics::Metrics,
    index: Mutex<u64>,
}

fn member() -> &'static Member {
    static M: OnceLock<Member> = OnceLock::new();
    M.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(
            mvcc::Store::open_with(
                dir.path().join("db"),
                mvcc::Limits {
                    max_put_bytes: 1_572_864,
                    max_txn_ops: 128,
                    reserve_bytes: 0,
                },
            )
            .expect("store"),
        );
        let auth = server::auth::AuthStore::load(
            &store,
            std::time::Duration::from_secs(300),
            None,
            4,
        )
        .expect("auth store");
        Member {
            _dir: dir,
            auth,
            store,
            alarms: Mutex::new(server::alarms::Alarms::default()),
            members: server::membership::Membership::default(),
            metrics: server::metrics::Metrics::new(false).expect("metrics"),
            index: Mutex::new(0),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let m = member();
    if kind == 0 {
        let Ok(r) = RangeRequest::decode(body) else {
            return;
        };
        match m.store.range(&server::apply::range_request(&r)) {
            Ok(res) => {
                let resp = server::apply::range_response(res);
                assert!(resp.count >= resp.kvs.len() as i64 || r.count_only || r.limit > 0);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        return;
    }
    let Ok(req) = Request::decode(body) else {
        return;
    };
    let mut index = m.index.lock().unwrap_or_else(|e| e.into_inner());
    *index += 1;
    let mut batch = m.store.apply().expect("a batch");
    let mut alarms = m.alarms.lock().unwrap_or_else(|e| e.into_inner());
    let mut ctx = server::apply::ApplyContext {
        alarms: &mut alarms,
        members: &m.members,
        auth: &m.auth,
        index: *index,
        metrics: &m.metrics,
    };
    let applied = server::apply::apply(&mut batch, &req, &mut ctx);
    assert!(applied.is_ok(), "storage failure: {applied:?}");
    batch.commit(*index).expect("commit");
    let _ = m.store.finish_compaction();
});
