//! The corruption checks: a member whose database was altered behind
//! raft's back (one stored value changed, revisions untouched) is refused
//! at start by `--experimental-initial-corrupt-check`, and caught by the
//! leader's periodic check (`--experimental-corrupt-check-time`), which
//! raises the CORRUPT alarm: writes are refused until it is cleared.

use std::time::{Duration, Instant};

use etcd_client::{AlarmAction, AlarmOptions, AlarmType};

use crate::cluster::Cluster;

/// Changes the last byte of the newest record in member `i`'s key bucket
/// (the end of its value), keeping every revision as it was.
fn alter_newest_value(c: &Cluster, i: usize) {
    let path = server::datadir::db_path(&c.members[i].data_dir);
    let db = btree::Db::open(&path).expect("open the database");
    let (key, mut value) = {
        let rx = db.begin_read();
        let bucket = rx.open_bucket(b"key").unwrap();
        let last = bucket.range(b"", None).last().expect("a record").unwrap();
        (last.0.to_vec(), last.1.to_vec())
    };
    let n = value.len();
    value[n - 1] ^= 0x01;
    let mut tx = db.begin_write().unwrap();
    tx.put(b"key", &key, &value).unwrap();
    tx.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_altered_member_is_refused_at_start_and_raises_the_corrupt_alarm() {
    let mut c = Cluster::start(3, &["--experimental-corrupt-check-time", "1s"]).await;
    let mut cl = c.client(0).await;
    for i in 0..20 {
        cl.put(format!("k/{i}"), "value-aaaa", None).await.unwrap();
    }
    // Every member has applied everything before m3 stops.
    for i in 0..3 {
        let mut m = c.client(i).await;
        m.get("k/19", None).await.unwrap();
    }
    // Stopped cleanly, so that its database holds everything applied.
    c.stop(2);
    alter_newest_value(&c, 2);

    // The initial check refuses to start it.
    c.restart_with(2, &["--experimental-initial-corrupt-check"]);
    let code = c.wait_exit(2, Duration::from_secs(30)).await;
    assert_ne!(code, Some(0));
    assert!(
        c.log(2).contains("found data inconsistency with peers"),
        "{}",
        c.log_tail(2)
    );

    // Started without it, the leader's periodic check finds it.
    c.restart_with(2, &[]);
    c.wait_serving(2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let alarms = loop {
        let a = cl
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap();
        let raised: Vec<(u64, i32)> = a
            .alarms()
            .iter()
            .map(|m| (m.member_id(), m.alarm() as i32))
            .collect();
        if !raised.is_empty() {
            break raised;
        }
        assert!(Instant::now() < deadline, "no CORRUPT alarm within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        alarms.iter().all(|(_, a)| *a == AlarmType::Corrupt as i32),
        "{alarms:?}"
    );
    let e = cl.put("k/new", "v", None).await.unwrap_err();
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(s.code(), tonic::Code::DataLoss);
            assert_eq!(s.message(), "etcdserver: corrupt cluster");
        }
        other => panic!("{other}"),
    }
    // Reads still work.
    assert_eq!(cl.get("k/1", None).await.unwrap().count(), 1);
    // Cleared (with the altered member gone, so that the check does not
    // raise it again), writes go through again.
    c.kill(2);
    for (member, _) in &alarms {
        let mut opts = AlarmOptions::new();
        opts.with_member(*member);
        cl.alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(opts))
            .await
            .unwrap();
    }
    cl.put("k/new", "v", None).await.unwrap();
}
