//! Integration tests of the btree crate, one binary with a module per area.

mod bad_input;
mod basics;
mod concurrency;
mod crash;
mod model;
mod scale;

use std::collections::BTreeMap;

use btree::Db;

/// The whole content of a database: bucket -> key -> value.
pub type Content = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Reads every bucket and key of the latest commit.
pub fn dump(db: &Db) -> Content {
    let rx = db.begin_read();
    let mut out = Content::new();
    for (name, count) in rx.buckets().expect("list buckets") {
        let b = rx.open_bucket(&name).expect("open bucket");
        let mut m = BTreeMap::new();
        for item in b.range(b"", None) {
            let (k, v) = item.expect("range");
            m.insert(k.to_vec(), v.to_vec());
        }
        assert_eq!(m.len() as u64, count, "bucket key count");
        out.insert(name, m);
    }
    out
}

/// Asserts that `check()` finds nothing wrong.
pub fn assert_clean(db: &Db) {
    let report = db.check();
    assert!(report.is_clean(), "check found problems:\n{report}");
}
