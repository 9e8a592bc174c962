use std::os::unix::fs::FileExt;
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
    Wal::create(dir.path(), META, crate::opts())
        .unwrap()
        .close();
    let err = Wal::create(dir.path(), META, crate::opts()).err().unwrap();
    assert!(matches!(err, wal::Error::AlreadyExists { .. }), "{err}");
}

fn rolled_log(dir: &Path, meta: Metadata) {
    let opts = Options {
        segment_size: 8 * 1024,
        ..crate::opts()
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
    // Rewrite the metadata record of the second segment as another
    // cluster's member would have written it, with a valid checksum: the
    // chain still holds up to that record, the metadata does not.
    let a = tempfile::tempdir().unwrap();
    rolled_log(a.path(), META);
    let seg = &wal::dump(a.path()).unwrap()[1];
    let meta = &seg.frames[1];
    assert!(matches!(
        meta.frame,
        wal::Frame::Record(wal::Record::Metadata { .. })
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg.path)
        .unwrap();
    let mut frame = [0u8; 32];
    f.read_exact_at(&mut frame, meta.offset).unwrap();
    frame[24..32].copy_from_slice(&0x23u64.to_le_bytes());
    let seed = crc32fast::hash(&seg.seq.to_le_bytes());
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(&frame[..12]);
    h.update(&frame[16..32]);
    frame[12..16].copy_from_slice(&h.finalize().to_le_bytes());
    f.write_all_at(&frame, meta.offset).unwrap();
    drop(f);
    let err = open(a.path()).err().unwrap();
    match &err {
        wal::Error::ClusterMismatch {
            segment,
            cluster,
            found_cluster,
            ..
        } => {
            assert_eq!(segment, &seg.path);
            assert_eq!((*cluster, *found_cluster), (0x22, 0x23));
        }
        other => panic!("{other}"),
    }
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
    let w = Wal::create(dir.path(), META, crate::opts()).unwrap();
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

/// A segment whose preallocation fails for want of space is an error,
/// never a sparse file whose later appends could find no blocks; no file
/// is left behind. Run on a tmpfs of 1 MiB (the tests run as root).
#[test]
fn a_segment_the_disk_cannot_hold_is_an_error_not_a_sparse_file() {
    let base = tempfile::tempdir().unwrap();
    let disk = base.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&disk)
        .status()
        .expect("mount(8)");
    assert!(mounted.success(), "mounting a tmpfs needs root");
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _unmount = Unmount(&disk);
    let dir = disk.join("wal");
    let opts = wal::Options {
        segment_size: 4 << 20,
        ..crate::opts()
    };
    match wal::Wal::create(&dir, META, opts) {
        Err(wal::Error::Io { op, source, .. }) => {
            assert_eq!(op, "fallocate segment");
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
        }
        Err(e) => panic!("not the fallocate error: {e}"),
        Ok(_) => panic!("a 4 MiB segment was created on a 1 MiB disk"),
    }
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}
