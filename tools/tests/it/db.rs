//! `inspect db`, `check db` and `defrag`.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{describe, json_line, kvtool, kvtool_async, stdout, Member};

/// A database made the same way every time: 300 puts in six batches, a
/// range delete, a lease.
fn known_database(path: &Path) {
    let store = mvcc::Store::open(path).expect("open");
    let mut index = 0;
    for batch in 0..6 {
        let mut a = store.apply().expect("apply");
        for i in 0..50 {
            a.put(&mvcc::PutRequest {
                key: format!("key{:04}", batch * 50 + i).into_bytes(),
                value: vec![b'a' + (i % 26) as u8; 100],
                ..Default::default()
            })
            .expect("put");
        }
        index += 1;
        a.commit(index).expect("commit");
    }
    let mut a = store.apply().expect("apply");
    a.delete_range(b"key0000", b"key0100", false)
        .expect("delete");
    a.lease_grant(7, 60).expect("lease");
    a.commit(index + 1).expect("commit");
    store.sync().expect("sync");
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        actual,
        want,
        "output differs from {} (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

#[test]
fn inspect_and_check_a_known_database_match_the_golden_output() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    known_database(&db);
    let p = db.to_str().unwrap();

    let o = kvtool(&["inspect", "db", p, "--pages"]);
    assert!(o.status.success(), "{}", describe(&o));
    golden("inspect_db.txt", &stdout(&o).replace(p, "<db>"));

    let o = kvtool(&["check", "db", p]);
    assert!(o.status.success(), "{}", describe(&o));
    golden("check_db.txt", &stdout(&o));

    // The JSON view carries the same facts.
    let o = kvtool(&["-w", "json", "inspect", "db", p]);
    let j = json_line(&o);
    assert_eq!(j["mvcc"]["current_revision"], 302);
    assert_eq!(j["mvcc"]["keys"], 300);
    assert_eq!(j["mvcc"]["live_keys"], 200);
    assert_eq!(j["mvcc"]["revisions"], 400);
    assert_eq!(j["mvcc"]["leases"], 1);
    assert_eq!(j["mvcc"]["consistent_index"], 7);
}

/// The id of the first page of `kind` ('B' branch, 'L' leaf) in the map.
fn first_page(db: &str, kind: char) -> u64 {
    let j = json_line(&kvtool(&["-w", "json", "inspect", "db", db, "--pages"]));
    let map = j["page_map"].as_str().expect("page map").to_string();
    map.chars().position(|c| c == kind).expect("such a page") as u64
}

#[test]
fn a_flipped_branch_page_is_named_by_check_and_inspect_still_reports() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    known_database(&db);
    let p = db.to_str().unwrap();
    let page = first_page(p, 'B');
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.write_all_at(&[0xff; 16], page * 4096 + 100).unwrap();
    drop(f);

    let o = kvtool(&["check", "db", p]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(
        stdout(&o).contains(&format!("page {page}:")),
        "check names page {page}: {}",
        describe(&o)
    );
    let o = kvtool(&["-w", "json", "check", "db", p]);
    let j = json_line(&o);
    assert_eq!(j["clean"], false);
    assert!(j["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["page"] == page));

    // inspect reports the file and says what it cannot read.
    let o = kvtool(&["inspect", "db", p]);
    let out = stdout(&o);
    assert!(out.contains("meta 0:") && out.contains("meta 1:"), "{out}");
    assert!(out.contains("pages:"), "{out}");
    assert!(out.contains("mvcc: unreadable"), "{out}");
}

#[test]
fn a_torn_meta_page_is_named_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    known_database(&db);
    let p = db.to_str().unwrap();
    let j = json_line(&kvtool(&["-w", "json", "inspect", "db", p]));
    let active = j["metas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["active"] == true)
        .expect("an active meta")["slot"]
        .as_u64()
        .unwrap();
    // Half the page is garbage, as a torn write leaves it.
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.write_all_at(&[0x5a; 2048], active * 4096 + 2048).unwrap();
    f.write_all_at(&[0xa5; 8], active * 4096 + 40).unwrap();
    drop(f);

    let o = kvtool(&["check", "db", p]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(
        stdout(&o).contains(&format!("page {active}: meta page is not valid")),
        "{}",
        describe(&o)
    );
    let o = kvtool(&["inspect", "db", p]);
    assert!(
        stdout(&o).contains(&format!("meta {active}: INVALID")),
        "{}",
        describe(&o)
    );
}

#[test]
fn check_of_a_missing_file_fails_with_a_message() {
    let o = kvtool(&["check", "db", "/nonexistent/db"]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot open /nonexistent/db"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_defrag_shrinks_a_server_database_and_refuses_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("m");
    let m = Member::start(&data, &[]).await;
    let value = vec![b'x'; 2048];
    for i in 0..1500 {
        m.put(&format!("k{i:05}"), &value).await;
    }
    for i in 0..1400 {
        m.delete(&format!("k{i:05}")).await;
    }
    let (_, rev) = m.all().await;
    m.compact(rev).await;
    let db = m.db();
    let p = db.to_str().unwrap().to_string();

    let o = kvtool_async(&["defrag", &p]).await;
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is in use"),
        "{}",
        describe(&o)
    );

    let (kvs, _) = m.all().await;
    let hash = m.hash_kv().await;
    m.stop().await;
    // inspect reads what the server wrote.
    let o = kvtool_async(&["-w", "json", "inspect", "db", &p]).await;
    let j = json_line(&o);
    assert_eq!(j["mvcc"]["current_revision"], rev, "{}", describe(&o));
    assert_eq!(j["mvcc"]["live_keys"], 100);
    assert_eq!(j["mvcc"]["compacted_revision"], rev);
    let before = std::fs::metadata(&db).unwrap().len();
    let o = kvtool_async(&["-w", "json", "defrag", &p]).await;
    assert!(o.status.success(), "{}", describe(&o));
    let j = json_line(&o);
    let after = std::fs::metadata(&db).unwrap().len();
    assert_eq!(j["before_bytes"], before);
    assert_eq!(j["after_bytes"], after);
    assert!(
        after * 4 < before,
        "the file shrank: {before} -> {after} bytes"
    );
    let o = kvtool_async(&["check", "db", &p]).await;
    assert!(o.status.success(), "{}", describe(&o));

    // The member comes back with the same data.
    let m = Member::start(&data, &[]).await;
    assert_eq!(m.all().await.0, kvs);
    assert_eq!(m.hash_kv().await, hash);
    m.stop().await;
}
