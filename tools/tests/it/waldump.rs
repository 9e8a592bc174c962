//! `wal dump` on a WAL the server wrote.

use std::os::unix::fs::FileExt;

use server::pb::etcdserverpb::lease_client::LeaseClient;
use server::pb::etcdserverpb::{
    compare, request_op, Compare, LeaseGrantRequest, PutRequest, RequestOp, TxnRequest,
};

use crate::{describe, json_line, kvtool_async, stdout, Member};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_dump_decodes_the_servers_records_and_shows_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(&dir.path().join("m"), &[]).await;
    m.put("alpha", b"12345").await;
    m.delete("alpha").await;
    m.kv()
        .await
        .txn(TxnRequest {
            compare: vec![Compare {
                key: b"beta".to_vec(),
                target: compare::CompareTarget::Version as i32,
                result: compare::CompareResult::Equal as i32,
                target_union: Some(compare::TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"beta".to_vec(),
                    value: b"x".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        })
        .await
        .unwrap();
    LeaseClient::connect(format!("http://{}", m.endpoint))
        .await
        .unwrap()
        .lease_grant(LeaseGrantRequest { ttl: 100, id: 42 })
        .await
        .unwrap();
    let wal = m.wal();
    m.stop().await;
    let w = wal.to_str().unwrap().to_string();

    let o = kvtool_async(&["wal", "dump", &w]).await;
    assert!(o.status.success(), "{}", describe(&o));
    let out = stdout(&o);
    for want in [
        "metadata",
        "Put key=\"alpha\" value=5B",
        "DeleteRange key=\"alpha\"",
        "Txn compares=1 success=[Put key=\"beta\" value=1B lease=0] failure=[]",
        "LeaseGrant id=42 ttl=100",
        "hardstate",
        "no-op (new leader)",
        "end of data at @",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }

    // Filters: only entries, and only from the put on.
    let o = kvtool_async(&["-w", "json", "wal", "dump", &w, "--type", "entry"]).await;
    let j = json_line(&o);
    let records: Vec<_> = j[0]["records"].as_array().unwrap().to_vec();
    assert!(records.iter().all(|r| r["type"] == "entry"), "{records:?}");
    let put_index = records
        .iter()
        .find(|r| r["description"].as_str().unwrap().starts_with("Put"))
        .unwrap()["index"]
        .as_u64()
        .unwrap();
    let o = kvtool_async(&[
        "-w",
        "json",
        "wal",
        "dump",
        &w,
        "--type",
        "entry",
        "--from-index",
        &(put_index + 1).to_string(),
    ])
    .await;
    let later = json_line(&o)[0]["records"].as_array().unwrap().to_vec();
    assert_eq!(
        later.len(),
        records.len()
            - records
                .iter()
                .position(|r| r["index"] == put_index)
                .unwrap()
            - 1
    );
    assert!(later
        .iter()
        .all(|r| r["index"].as_u64().unwrap() > put_index));

    // Tear the last record: half of it is zeros, as a crash leaves it.
    let all = json_line(&kvtool_async(&["-w", "json", "wal", "dump", &w]).await);
    let seg = all.as_array().unwrap().last().unwrap().clone();
    let last = seg["records"].as_array().unwrap().last().unwrap()["offset"]
        .as_u64()
        .unwrap();
    let end = seg["end"]["offset"].as_u64().unwrap();
    let path = seg["path"].as_str().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let half = (end - last) / 2;
    f.write_all_at(&vec![0u8; (end - last - half) as usize], last + half)
        .unwrap();
    drop(f);
    let o = kvtool_async(&["wal", "dump", &w]).await;
    assert!(
        o.status.success(),
        "a torn tail is not corruption: {}",
        describe(&o)
    );
    assert!(
        stdout(&o).contains(&format!("TORN TAIL starts at @{last}")),
        "{}",
        describe(&o)
    );
}
