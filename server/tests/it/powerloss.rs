//! Power loss of a whole member, WAL and database together: the member
//! runs with `KVSERVER_TEST_POWER_JOURNAL` (a `failpoints` build), which
//! records every write of both files that is not yet durable; under a put
//! load it is SIGKILLed at a random moment, then every unsynced write is
//! undone (all of them, or a random subset: a disk that wrote part of its
//! cache back), as a power cut would leave the files. The restarted member
//! must hold every acknowledged put at its revision, and its database must
//! pass `kvtool check db`. `POWERLOSS_SECONDS` (default 20) bounds
//! the run; CI uses the default. The same journals stand for a disk that
//! failed an fdatasync of the WAL and lost what it held.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::Server;

/// Undoes the changes `journal` lists for `target` (those after its last
/// sync), each one lost when `lose()` says so; returns (listed, undone).
fn power_cut(journal: &Path, target: &Path, mut lose: impl FnMut() -> bool) -> (usize, usize) {
    let Ok(bytes) = std::fs::read(journal) else {
        return (0, 0);
    };
    enum Change {
        Write {
            offset: u64,
            size: u64,
            old: Vec<u8>,
        },
        Len {
            size: u64,
        },
    }
    let mut changes = Vec::new();
    let mut at = 0;
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    // A record cut short was being appended when the process died: its
    // change had not been made.
    while at < bytes.len() {
        match bytes[at] {
            b'S' => {
                changes.clear();
                at += 1;
            }
            b'L' if at + 9 <= bytes.len() => {
                changes.push(Change::Len {
                    size: u64_at(&bytes, at + 1),
                });
                at += 9;
            }
            b'W' if at + 21 <= bytes.len() => {
                let len = u32::from_le_bytes(bytes[at + 17..at + 21].try_into().unwrap()) as usize;
                if at + 21 + len > bytes.len() {
                    break;
                }
                changes.push(Change::Write {
                    offset: u64_at(&bytes, at + 1),
                    size: u64_at(&bytes, at + 9),
                    old: bytes[at + 21..at + 21 + len].to_vec(),
                });
                at += 21 + len;
            }
            b'L' | b'W' => break,
            other => panic!("{}: bad record {other} at {at}", journal.display()),
        }
    }
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(target) else {
        // The segment was released after its writes became durable.
        return (changes.len(), 0);
    };
    let mut undone = 0;
    for c in changes.iter().rev() {
        if !lose() {
            continue;
        }
        undone += 1;
        match c {
            Change::Write { offset, size, old } => {
                file.write_all_at(old, *offset).unwrap();
                if *size < offset + old.len() as u64 {
                    file.set_len((*size).max(*offset)).unwrap();
                }
            }
            Change::Len { size } => file.set_len(*size).unwrap(),
        }
    }
    file.sync_all().unwrap();
    (changes.len(), undone)
}

/// Cuts the power of the (killed) member with data in `data`: every
/// journal of its database and WAL is applied, then removed.
fn cut_the_power(data: &Path, rng: &mut impl Rng) -> (usize, usize) {
    // Half the rounds lose every unsynced write, half a random subset.
    let all = rng.random_bool(0.5);
    let mut seeds: Vec<bool> = (0..100_000).map(|_| rng.random_bool(0.5)).collect();
    let mut lose = move || all || seeds.pop().unwrap_or(true);
    undo_unsynced(data, &mut lose)
}

/// Undoes each write that the journals of the member's database and WAL
/// list as not yet durable when `lose()` says so, and removes the
/// journals; returns (listed, undone).
fn undo_unsynced(data: &Path, mut lose: impl FnMut() -> bool) -> (usize, usize) {
    let db = server::datadir::db_path(data);
    let db_journal = server::raft::bootstrap::journal_of(&db);
    let (mut listed, mut undone) = power_cut(&db_journal, &db, &mut lose);
    let _ = std::fs::remove_file(&db_journal);
    let wal = server::datadir::wal_dir(data);
    for entry in std::fs::read_dir(&wal).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(segment) = name.strip_suffix(".unsynced") {
            let (l, u) = power_cut(&entry.path(), &wal.join(segment), &mut lose);
            listed += l;
            undone += u;
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    (listed, undone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_cuts_under_load_lose_no_acknowledged_put() {
    let budget = Duration::from_secs(
        std::env::var("POWERLOSS_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let env = [(server::raft::bootstrap::POWER_CUT_ENV, "1")];
    // Small raft snapshots, so that database syncs and WAL releases happen
    // under the load too.
    let mut server = Server::start_with_env(&data, &["--snapshot-count", "300"], &env).await;
    let mut rng = rand::rng();
    // key -> the revision its acknowledged put got.
    let acked: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let started = Instant::now();
    let mut rounds = 0;
    let (mut listed, mut undone) = (0, 0);
    while rounds < 3 || started.elapsed() < budget {
        rounds += 1;
        let load: Vec<_> = (0..8)
            .map(|t| {
                let (ep, acked) = (server.endpoint.clone(), acked.clone());
                tokio::spawn(async move {
                    let Ok(mut c) = etcd_client::Client::connect([ep], None).await else {
                        return;
                    };
                    for n in 0.. {
                        let key = format!("p/{rounds}/{t}/{n}");
                        match c.put(key.as_str(), vec![b'v'; 200 + n % 3000], None).await {
                            Ok(r) => {
                                let rev = r.header().map_or(0, |h| h.revision());
                                acked.lock().unwrap().insert(key, rev);
                            }
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        server.kill();
        for l in load {
            let _ = l.await;
        }
        let (l, u) = cut_the_power(&data, &mut rng);
        listed += l;
        undone += u;
        // The database is whole after the cut, as the operator's tool
        // sees it.
        crate::kvtool_check_db(&server::datadir::db_path(&data));
        server.restart().await;
        let mut c = server.client().await;
        let r = c
            .get(
                "p/",
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await
            .unwrap();
        let have: HashMap<String, i64> = r
            .kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
            .collect();
        for (k, rev) in acked.lock().unwrap().iter() {
            assert_eq!(
                have.get(k),
                Some(rev),
                "round {rounds}: acknowledged {k} at revision {rev} lost or moved"
            );
        }
    }
    let n = acked.lock().unwrap().len();
    eprintln!(
        "{rounds} power cuts, {n} acknowledged puts kept, {undone} of {listed} unsynced writes undone"
    );
    assert!(n > 100, "only {n} puts were acknowledged");
    assert!(
        undone > 0,
        "no power cut lost anything: the test tests nothing"
    );
}

/// The WAL's fdatasync fails and the disk has lost what it was asked to
/// make durable (the journal still lists those writes, and they are undone
/// before the restart): nothing after the failure is acknowledged, the
/// member stops by itself, and it restarts with every acknowledged put at
/// its revision and none of the refused ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_wal_sync_that_lost_its_writes_loses_no_acknowledged_put() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let env = [(server::raft::bootstrap::POWER_CUT_ENV, "1")];
    let mut server = Server::start_with_env(&data, &[], &env).await;
    let mut c = server.client().await;
    let mut acked = HashMap::new();
    for n in 0..50 {
        let key = format!("f/{n:02}");
        let r = c.put(key.as_str(), "v", None).await.unwrap();
        acked.insert(key, r.header().unwrap().revision());
    }
    let point = "/failpoints/wal::journal_sync";
    let armed = crate::http::request(&server.endpoint, "PUT", point, "return(EIO)").await;
    assert_eq!(armed.status, 200, "{}", armed.body);
    let late: Vec<_> = (0..8)
        .map(|t| {
            let ep = server.endpoint.clone();
            tokio::spawn(async move {
                let mut c = etcd_client::Client::connect([ep], None).await.ok()?;
                let put = c.put(format!("late/{t}"), "v", None);
                tokio::time::timeout(Duration::from_secs(15), put)
                    .await
                    .expect("a put after the failed sync was neither answered nor refused")
                    .ok()
                    .map(|_| t)
            })
        })
        .collect();
    for l in late {
        assert_eq!(
            l.await.unwrap(),
            None,
            "a put after the failed sync was acknowledged"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.is_running() {
        assert!(
            Instant::now() < deadline,
            "the member goes on after its WAL failed to sync"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (listed, undone) = undo_unsynced(&data, || true);
    assert!(
        undone > 0 && undone == listed,
        "the failed sync lost nothing ({undone} of {listed}): the test tests nothing"
    );
    crate::kvtool_check_db(&server::datadir::db_path(&data));
    server.restart().await;
    let mut c = server.client().await;
    for (k, rev) in &acked {
        let r = c.get(k.as_str(), None).await.unwrap();
        assert_eq!(
            r.kvs().first().map(|kv| kv.mod_revision()),
            Some(*rev),
            "acknowledged {k} at revision {rev} lost or moved"
        );
    }
    let r = c
        .get("late/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(
        r.kvs().is_empty(),
        "a refused put was applied: {:?}",
        r.kvs()
    );
}
