use std::os::unix::fs::FileExt;

use btree::{Db, Error, Options};

use crate::assert_clean;

fn make_db(path: &std::path::Path) {
    let db = Db::open(path).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"b").unwrap();
    for i in 0..5000u32 {
        tx.put(b"b", &i.to_be_bytes(), &[5u8; 64]).unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text.db");
    std::fs::write(&path, "hello, this is not a database\n".repeat(500)).unwrap();
    let err = Db::open(&path).unwrap_err();
    assert!(matches!(err, Error::NotADatabase(_)), "{err}");
    assert!(err.to_string().contains("not a database"));
}

#[test]
fn a_different_page_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    drop(
        Db::open_with(
            &path,
            Options {
                page_size: 8192,
                ..Options::default()
            },
        )
        .unwrap(),
    );
    // (A process another test spawns may share the file's lock briefly,
    // between its fork and exec: wait that out, bounded.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let err = loop {
        match Db::open(&path) {
            Err(Error::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => break other.unwrap_err(),
        }
    };
    assert!(
        matches!(
            err,
            Error::PageSizeMismatch {
                found: 8192,
                expected: 4096,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        Db::open_with(
            &path,
            Options {
                page_size: 3000,
                ..Options::default()
            }
        ),
        Err(Error::InvalidPageSize(3000))
    ));
    assert_clean(
        &Db::open_with(
            &path,
            Options {
                page_size: 8192,
                ..Options::default()
            },
        )
        .unwrap(),
    );
}

#[test]
fn a_newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    drop(Db::open(&path).unwrap());
    // Rewrite both metas with version 99 and a matching checksum.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    for slot in 0..2u64 {
        let mut page = vec![0u8; 4096];
        f.read_exact_at(&mut page, slot * 4096).unwrap();
        page[32..36].copy_from_slice(&99u32.to_le_bytes());
        let sum = crc32fast_hash(&page[..80]);
        page[80..84].copy_from_slice(&sum.to_le_bytes());
        f.write_all_at(&page, slot * 4096).unwrap();
    }
    let err = Db::open(&path).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedVersion { found: 99, .. }),
        "{err}"
    );
}

/// The crc32 (IEEE) of `data`, computed bitwise so the test does not lean
/// on the code it tests.
fn crc32fast_hash(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_truncated_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    make_db(&path);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(5 * 4096).unwrap();
    let err = Db::open(&path).unwrap_err();
    assert!(matches!(err, Error::Truncated { .. }), "{err}");
    f.set_len(100).unwrap();
    let err = Db::open(&path).unwrap_err();
    assert!(
        matches!(err, Error::NotADatabase(_) | Error::Truncated { .. }),
        "{err}"
    );
}

#[test]
fn a_second_open_gets_database_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let db = Db::open(&path).unwrap();
    let err = Db::open(&path).unwrap_err();
    assert!(matches!(err, Error::Locked(_)), "{err}");
    assert!(err.to_string().contains("database is locked"));
    let ro = Options {
        read_only: true,
        ..Options::default()
    };
    assert!(matches!(
        Db::open_with(&path, ro.clone()),
        Err(Error::Locked(_))
    ));
    drop(db);
    // Another test of this binary may be spawning a process: between its
    // fork and exec the child briefly shares every open file description,
    // and with it this file's lock. Wait that out (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let r1 = loop {
        match Db::open_with(&path, ro.clone()) {
            Err(Error::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => break other.unwrap(),
        }
    };
    let _r2 = Db::open_with(&path, ro).unwrap();
    assert!(matches!(r1.begin_write(), Err(Error::ReadOnly)));
    assert!(matches!(Db::open(&path), Err(Error::Locked(_))));
}

#[test]
fn a_second_process_gets_database_is_locked() {
    // flock is per open file description, so a child process holding the
    // lock is the real thing. `flock` from util-linux holds it while `sleep` runs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proc.db");
    drop(Db::open(&path).unwrap());
    let Ok(mut child) = std::process::Command::new("flock")
        .arg("-x")
        .arg(&path)
        .args(["sleep", "30"])
        .spawn()
    else {
        panic!("util-linux flock is needed for this test");
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut saw_locked = false;
    while std::time::Instant::now() < deadline {
        match Db::open(&path) {
            Err(Error::Locked(_)) => {
                saw_locked = true;
                break;
            }
            Ok(db) => drop(db),
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(saw_locked, "the other process's lock was never seen");
}

#[test]
fn a_torn_meta_falls_back_to_the_previous_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let db = Db::open(&path).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"b").unwrap();
    tx.put(b"b", b"k", b"first").unwrap();
    tx.commit().unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.put(b"b", b"k", b"second").unwrap();
    tx.commit().unwrap();
    let active = db.stats().metas.iter().find(|m| m.active).unwrap().slot;
    drop(db);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xAB; 40], active * 4096 + 30).unwrap();
    drop(f);
    let db = Db::open(&path).unwrap();
    let rx = db.begin_read();
    assert_eq!(
        rx.open_bucket(b"b").unwrap().get(b"k").unwrap(),
        Some(&b"first"[..])
    );
    let report = db.check();
    assert!(report.is_clean(), "{report}");
    assert!(
        report.notes.iter().any(|n| n.contains("not valid")),
        "{report}"
    );
}

#[test]
fn corrupt_pages_give_errors_naming_the_page_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    make_db(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    let kinds = Db::open(&path).unwrap().stats().page_kinds;
    // Scribble garbage over each page in use in turn, then read everything.
    let mut rng = 0x2545F4914F6CDD1Du64;
    for page in 2..kinds.len() as u64 {
        if kinds[page as usize] == btree::PageKind::Free {
            continue;
        }
        let copy = dir.path().join(format!("c{page}.db"));
        std::fs::copy(&path, &copy).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        let mut junk = vec![0u8; 4096];
        for b in junk.iter_mut() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            *b = rng as u8;
        }
        // Keep the header's page id sometimes, so deeper checks are reached.
        if page % 2 == 0 {
            junk[..8].copy_from_slice(&page.to_le_bytes());
            junk[8..10].copy_from_slice(&2u16.to_le_bytes());
        }
        f.write_all_at(&junk, page * 4096).unwrap();
        assert!(page * 4096 < len);
        drop(f);
        let db = match Db::open(&copy) {
            Ok(db) => db,
            Err(e) => {
                assert!(e.page().is_some(), "{e}");
                continue;
            }
        };
        let report = db.check();
        assert!(!report.is_clean(), "garbage on page {page} went unnoticed");
        assert!(
            report.problems.iter().any(|p| p.page == page),
            "page {page}: {report}"
        );
        let rx = db.begin_read();
        if let Ok(Some(b)) = rx.bucket(b"b") {
            for item in b.range(b"", None) {
                if let Err(e) = item {
                    assert!(e.page().is_some(), "{e}");
                    break;
                }
            }
            for i in 0..5000u32 {
                let _ = b.get(&i.to_be_bytes());
            }
        }
        drop(rx);
        // Writes over a corrupt page fail cleanly too.
        if let Ok(mut tx) = db.begin_write() {
            for i in 0..5000u32 {
                if tx.put(b"b", &i.to_be_bytes(), b"x").is_err() {
                    break;
                }
            }
        }
        std::fs::remove_file(&copy).unwrap();
    }
}

/// On a full disk (a 16 MiB tmpfs; the tests run as root) the file keeps
/// its reserve until it cannot grow: then [`Db::space_short`] says so and
/// commits within the reserve still succeed, the file stays clean, and
/// freeing pages (deletes, then an online defragmentation) clears it.
#[test]
fn a_full_disk_is_reported_before_a_commit_fails() {
    let base = tempfile::tempdir().unwrap();
    let disk = base.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
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
    let path = disk.join("db");
    let reserve = 2 << 20;
    let db = Db::open_with(
        &path,
        Options {
            reserve_bytes: reserve,
            ..Options::default()
        },
    )
    .unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.create_bucket(b"b").unwrap();
    tx.commit().unwrap();
    let value = vec![7u8; 64 * 1024];
    let mut n = 0u32;
    while !db.space_short() {
        let mut tx = db.begin_write().unwrap();
        tx.put(b"b", &n.to_be_bytes(), &value).unwrap();
        tx.commit().unwrap();
        n += 1;
        assert!(n < 1000, "a 16 MiB disk never filled");
    }
    assert!(n > 50, "short after {n} commits");
    // Within the reserve, commits go on.
    for _ in 0..8 {
        let mut tx = db.begin_write().unwrap();
        tx.put(b"b", &n.to_be_bytes(), &value).unwrap();
        tx.commit().unwrap();
        n += 1;
    }
    assert_clean(&db);
    let mut tx = db.begin_write().unwrap();
    for k in 0..n {
        tx.delete(b"b", &k.to_be_bytes()).unwrap();
    }
    tx.commit().unwrap();
    db.defragment_online().unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.put(b"b", b"after", b"ok").unwrap();
    tx.commit().unwrap();
    assert!(!db.space_short());
    assert_clean(&db);
}
