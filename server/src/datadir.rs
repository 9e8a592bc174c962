//! Where a member keeps its files (etcd's layout), and the raft snapshot
//! marker.
//!
//! ```text
//! <data-dir>/member/wal/               the write-ahead log
//! <data-dir>/member/snap/db            the database
//! <data-dir>/member/snap/raft.marker   where the WAL is read from on restart
//! <data-dir>/member/snap/<index>.snap.db  a leader's snapshot, received
//!                                      and not installed yet
//! ```

use std::path::{Path, PathBuf};

/// A data-directory file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{0} is damaged (its checksum does not match)")]
    DamagedMarker(PathBuf),
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

pub fn member_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member")
}

pub fn snap_dir(data_dir: &Path) -> PathBuf {
    member_dir(data_dir).join("snap")
}

pub fn wal_dir(data_dir: &Path) -> PathBuf {
    member_dir(data_dir).join("wal")
}

/// Whether the data dir holds a WAL (the member has started before).
pub fn has_wal(data_dir: &Path) -> bool {
    let dir = wal_dir(data_dir);
    dir.is_dir() && std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some())
}

pub fn db_path(data_dir: &Path) -> PathBuf {
    snap_dir(data_dir).join("db")
}

/// A database received from the leader for a raft snapshot at `index`.
pub fn received_db_path(data_dir: &Path, index: u64) -> PathBuf {
    snap_dir(data_dir).join(format!("{index:016x}.snap.db"))
}

fn marker_path(data_dir: &Path) -> PathBuf {
    snap_dir(data_dir).join("raft.marker")
}

/// Creates `dir` and its missing parents, fsyncing each parent that got
/// a new entry, so the directories survive a power cut.
pub fn create_dir_synced(dir: &Path) -> Result<(), DataDirError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_synced(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io(dir, "create directory")(e)),
    }
    sync_parent(dir)
}

/// fsyncs the directory holding `path`.
pub fn sync_parent(path: &Path) -> Result<(), DataDirError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fail::fail_point!("datadir::fsync_dir", |_| Err(
        io(parent, "fsync directory")(std::io::Error::from_raw_os_error(libc::EIO))
    ));
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io(parent, "fsync directory"))
}

/// The raft snapshot the WAL is read from on restart (index 0: from the
/// beginning). `raft.marker` holds its index and term (u64 big-endian
/// each) and the first four bytes of a SHA-256 of both; it is replaced
/// atomically.
pub fn read_marker(data_dir: &Path) -> Result<wal::SnapshotMarker, DataDirError> {
    let path = marker_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(wal::SnapshotMarker::default())
        }
        Err(e) => return Err(io(&path, "read")(e)),
    };
    if bytes.len() != 20 || marker_check(&bytes[..16]).to_be_bytes() != bytes[16..20] {
        return Err(DataDirError::DamagedMarker(path));
    }
    let mut index = [0u8; 8];
    let mut term = [0u8; 8];
    index.copy_from_slice(&bytes[..8]);
    term.copy_from_slice(&bytes[8..16]);
    Ok(wal::SnapshotMarker {
        index: u64::from_be_bytes(index),
        term: u64::from_be_bytes(term),
    })
}

fn marker_check(b: &[u8]) -> u32 {
    use sha2::{Digest, Sha256};
    // A short digest is all the marker needs: it only has to tell a whole
    // file from a damaged one.
    let d = Sha256::digest(b);
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Replaces the marker: written to a temporary file, fsynced, renamed
/// over the old one, and the directory fsynced.
pub fn write_marker(data_dir: &Path, m: wal::SnapshotMarker) -> Result<(), DataDirError> {
    use std::io::Write;
    let path = marker_path(data_dir);
    let tmp = path.with_extension("tmp");
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(&m.index.to_be_bytes());
    bytes.extend_from_slice(&m.term.to_be_bytes());
    let check = marker_check(&bytes);
    bytes.extend_from_slice(&check.to_be_bytes());
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp, "create"))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp, "write"))?;
    std::fs::rename(&tmp, &path).map_err(io(&path, "rename"))?;
    sync_parent(&path)
}

/// Removes every received snapshot database and partial transfer (at
/// start-up, once the latest is installed: nothing is in flight then).
/// How a Maintenance.Snapshot's copy of the database is named, in the
/// snap directory, while it is streamed (`snapshot-<pid>-<n>.tmp`).
pub const SNAPSHOT_COPY_PREFIX: &str = "snapshot-";

pub fn remove_stale_snapshots(data_dir: &Path) {
    remove_received(data_dir, |_| true, true);
}

/// Removes the received snapshot databases at or below `index` (once the
/// one at `index` is installed; a newer one may be waiting).
pub fn remove_received_up_to(data_dir: &Path, index: u64) {
    remove_received(data_dir, |i| i <= index, false);
}

fn remove_received(data_dir: &Path, doomed: impl Fn(u64) -> bool, parts: bool) {
    let Ok(dir) = std::fs::read_dir(snap_dir(data_dir)) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let go = match name.strip_suffix(".snap.db") {
            Some(hex) => u64::from_str_radix(hex, 16).is_ok_and(&doomed),
            None => {
                parts
                    && (name.ends_with(".snap.db.part")
                        || (name.starts_with(SNAPSHOT_COPY_PREFIX) && name.ends_with(".tmp")))
            }
        };
        if go {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
