use std::path::Path;

use wal::{Metadata, Options, Wal};

use crate::{entry, open, META};

#[test]
fn an_empty_directory_has_no_segments() {
    let dir = tempfile::tempdir().unwrap();
    let err = open(dir.path()).err().unwrap();
    assert!(
        matches!(err, wal::Error::NoSegments { others: 0, .. }),
        "{err}"
    );
}

#[test]
fn a_directory_of_other_files_has_no_segments() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    std::fs::write(dir.path().join("0001.wal"), "not a segment name").unwrap();
    let err = open(dir.path()).err().unwrap();
    assert!(
        matches!(err, wal::Error::NoSegments { others: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no WAL segments"));
}

#[test]
fn creating_over_an_existing_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Wal::create(dir.path(), META, Options::default())
        .unwrap()
        .close();
    let err = Wal::create(dir.path(), META, Options::default())
        .err()
        .unwrap();
    assert!(matches!(err, wal::Error::AlreadyExists { .. }), "{err}");
}

fn rolled_log(dir: &Path, meta: Metadata) {
    let opts = Options {
        segment_size: 8 * 1024,
        ..Options::default()
    };
    let w = Wal::create(dir, meta, opts).unwrap();
    for i in 1..=150 {
        w.append(vec![entry(i, 1)]).wait().unwrap();
    }
    w.close();
}

#[test]
fn a_segment_from_another_log_breaks_the_chain() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    rolled_log(a.path(), META);
    rolled_log(
        b.path(),
        Metadata {
            member_id: 9,
            cluster_id: 99,
        },
    );
    let sa = wal::dump(a.path()).unwrap();
    let sb = wal::dump(b.path()).unwrap();
    assert!(sa.len() >= 3 && sb.len() >= 3);
    // Replace A's second segment with B's second segment under A's name.
    std::fs::copy(&sb[1].path, &sa[1].path).unwrap();
    let err = open(a.path()).err().unwrap();
    assert!(
        matches!(
            err,
            wal::Error::ChainBroken { .. } | wal::Error::ClusterMismatch { .. }
        ),
        "{err}"
    );
}

#[test]
fn a_segment_of_another_cluster_is_refused() {
    // Same chain, different metadata: rewrite a later segment's metadata
    // record as another cluster would have written it.
    let a = tempfile::tempdir().unwrap();
    rolled_log(a.path(), META);
    let b = tempfile::tempdir().unwrap();
    rolled_log(
        b.path(),
        Metadata {
            member_id: 0x11,
            cluster_id: 0x23,
        },
    );
    let sa = wal::dump(a.path()).unwrap();
    // Opening B from its own start works; mixing its first segment into A
    // does not.
    let sb = wal::dump(b.path()).unwrap();
    std::fs::copy(&sb[0].path, &sa[0].path).unwrap();
    let err = open(a.path()).err().unwrap();
    assert!(
        matches!(
            err,
            wal::Error::ClusterMismatch { .. } | wal::Error::ChainBroken { .. }
        ),
        "{err}"
    );
}

#[test]
fn a_missing_segment_is_reported() {
    let a = tempfile::tempdir().unwrap();
    rolled_log(a.path(), META);
    let sa = wal::dump(a.path()).unwrap();
    std::fs::remove_file(&sa[1].path).unwrap();
    let err = open(a.path()).err().unwrap();
    assert!(
        matches!(err, wal::Error::MissingSegment { missing: 1, .. }),
        "{err}"
    );
}

#[test]
fn an_oversized_record_is_refused_without_stopping_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wal::create(dir.path(), META, Options::default()).unwrap();
    let big = wal::Record::Entry {
        index: 1,
        term: 1,
        data: vec![0; wal::MAX_PAYLOAD],
    };
    assert!(matches!(
        w.append(vec![big]).wait(),
        Err(wal::Error::RecordTooLarge { .. })
    ));
    w.append(vec![entry(1, 1)]).wait().unwrap();
}
