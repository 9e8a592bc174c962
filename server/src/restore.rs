//! Creating a new member's data directory from a database snapshot (what
//! `etcdutl snapshot restore` does; `kvtool snapshot restore` calls it).
//!
//! The snapshot is a copy of a member's database, as the Maintenance
//! Snapshot stream sends it (optionally followed by the SHA-256 of the
//! database, as etcd appends one). The new data directory holds that
//! database and a fresh WAL written for the new cluster: its metadata names
//! the member and cluster IDs derived from `--initial-cluster` and
//! `--initial-cluster-token` exactly as a starting server derives them, and
//! a raft snapshot at the database's consistent index stands for
//! everything the database already holds, so the restored member starts
//! from it with an empty log.

use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::ConfState;
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError};
use crate::datadir::{db_path, wal_dir, write_marker, DataDirError};
use crate::membership::{initial_cluster, Member};

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{0}: the SHA-256 at the end of the snapshot does not match its contents")]
    HashMismatch(PathBuf),
    #[error("data-dir {0:?} exists")]
    Exists(PathBuf),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the snapshot's database: {0}")]
    Database(#[from] mvcc::Error),
    #[error("writing the WAL: {0}")]
    Wal(#[from] wal::Error),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("encoding the membership: {0}")]
    Encode(String),
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> RestoreError + 'a {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// What a restore produced.
#[derive(Debug, Clone)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub member_id: u64,
    pub cluster_id: u64,
    /// The raft index and term the new member starts from.
    pub index: u64,
    pub term: u64,
    pub revision: i64,
    /// Whether the snapshot file carried a SHA-256 that was checked.
    pub hash_checked: bool,
}

/// Length of the database part of a snapshot file and whether a SHA-256
/// of it follows: a database is whole pages, so a length 32 bytes past a
/// page multiple carries a hash.
pub fn snapshot_layout(len: u64, page_size: u64) -> (u64, bool) {
    if len % page_size == 32 && len > 32 {
        (len - 32, true)
    } else {
        (len, false)
    }
}

/// Checks a snapshot file's trailing SHA-256 (when it has one) and copies
/// its database part to `dest`, fsynced. Returns whether a hash was
/// checked.
pub fn extract_database(snapshot: &Path, dest: &Path) -> Result<bool, RestoreError> {
    let data = std::fs::read(snapshot).map_err(io(snapshot, "read"))?;
    let (db_len, has_hash) = snapshot_layout(data.len() as u64, 4096);
    let db_len = db_len as usize;
    if has_hash {
        let want = &data[db_len..];
        let got = Sha256::digest(&data[..db_len]);
        if got.as_slice() != want {
            return Err(RestoreError::HashMismatch(snapshot.to_path_buf()));
        }
    }
    write_synced(dest, &data[..db_len])?;
    Ok(has_hash)
}

fn write_synced(dest: &Path, bytes: &[u8]) -> Result<(), RestoreError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(io(dest, "create"))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(dest, "write"))
}

/// What a new data directory's database is made from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A snapshot file (a database, optionally followed by its SHA-256).
    Snapshot(&'a Path),
    /// A database file, copied as it is (`kvtool migrate` builds one).
    Database(&'a Path),
    /// A database file moved into the data directory (it must be on the
    /// same file system).
    MoveDatabase(&'a Path),
}

/// Creates `cfg.data_dir()` for member `cfg.name` of the cluster
/// `cfg.initial_cluster` from `snapshot`. The data directory must not exist
/// yet (or be empty).
pub fn restore(cfg: &Config, snapshot: &Path) -> Result<Restored, RestoreError> {
    restore_from(cfg, Source::Snapshot(snapshot))
}

/// [`restore`] from `source`. The data directory is written beside its
/// final place and renamed there once complete, so a failure at any point
/// leaves no data directory at all.
pub fn restore_from(cfg: &Config, source: Source<'_>) -> Result<Restored, RestoreError> {
    let data_dir = cfg.data_dir();
    if data_dir.exists() {
        let empty = std::fs::read_dir(&data_dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(RestoreError::Exists(data_dir));
        }
    }
    let initial = initial_cluster(cfg)?;
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    crate::datadir::create_dir_synced(&parent)?;
    let file_name = data_dir
        .file_name()
        .map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    let scratch = parent.join(format!(".{file_name}.restoring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let made = restore_into(
        source,
        &scratch,
        &initial.members,
        &initial.me,
        initial.cluster_id,
    )
    .and_then(|r| {
        if data_dir.exists() {
            std::fs::remove_dir(&data_dir).map_err(io(&data_dir, "remove the empty directory"))?;
        }
        std::fs::rename(&scratch, &data_dir).map_err(io(&data_dir, "rename into place"))?;
        std::fs::File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io(&parent, "fsync"))?;
        Ok(Restored {
            data_dir: data_dir.clone(),
            ..r
        })
    });
    if made.is_err() {
        // Leave nothing half made behind.
        let _ = std::fs::remove_dir_all(&scratch);
    }
    made
}

/// Copies a database file to `dest`, fsynced.
fn copy_database(src: &Path, dest: &Path) -> Result<(), RestoreError> {
    let mut from = std::fs::File::open(src).map_err(io(src, "open"))?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(io(dest, "create"))?;
    std::io::copy(&mut from, &mut to).map_err(io(dest, "write"))?;
    to.sync_all().map_err(io(dest, "fsync"))
}

fn restore_into(
    source: Source<'_>,
    data_dir: &Path,
    members: &[Member],
    me: &Member,
    cluster_id: u64,
) -> Result<Restored, RestoreError> {
    let data_dir = data_dir.to_path_buf();
    let snap_dir = crate::datadir::snap_dir(&data_dir);
    crate::datadir::create_dir_synced(&snap_dir)?;
    let db = db_path(&data_dir);
    let hash_checked = match source {
        Source::Snapshot(snapshot) => extract_database(snapshot, &db)?,
        Source::Database(file) => {
            copy_database(file, &db)?;
            false
        }
        Source::MoveDatabase(file) => {
            std::fs::rename(file, &db).map_err(io(&db, "move the database here"))?;
            false
        }
    };

    // Reading the database through the store checks that it is one, and
    // gives the point the new raft log starts from.
    // The new cluster's member list replaces the old one's.
    let (index, term, revision) = {
        let store = mvcc::Store::open(&db)?;
        let mut batch = store.apply()?;
        for (id, _) in store.members()? {
            batch.set_member(id, None)?;
        }
        for id in store.removed_members()? {
            batch.unset_member_removed(id)?;
        }
        for m in members {
            batch.set_member(m.id, Some(&m.encode()))?;
        }
        batch.commit(store.consistent_index())?;
        store.sync()?;
        (
            store.consistent_index(),
            store.term().max(1),
            store.current_revision(),
        )
    };
    let voters: Vec<u64> = members.iter().map(|m| m.id).collect();
    let log = wal::Wal::create(
        wal_dir(&data_dir),
        wal::Metadata {
            member_id: me.id,
            cluster_id,
        },
        wal::Options::default(),
    )?;
    let conf = ConfState::from((voters, vec![]));
    log.append(vec![
        wal::Record::Snapshot {
            index,
            term,
            conf_state: conf
                .write_to_bytes()
                .map_err(|e| RestoreError::Encode(e.to_string()))?,
        },
        wal::Record::HardState {
            term,
            vote: 0,
            commit: index,
        },
    ])
    .wait()?;
    log.close();
    write_marker(&data_dir, wal::SnapshotMarker { index, term })?;
    std::fs::File::open(&snap_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&snap_dir, "fsync"))?;
    Ok(Restored {
        data_dir,
        member_id: me.id,
        cluster_id,
        index,
        term,
        revision,
        hash_checked,
    })
}
