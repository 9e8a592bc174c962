//! Integration tests of the wal crate, one binary with a module per area.

mod bad_input;
mod basics;
mod crash;
mod torn;

use std::path::Path;

use wal::{Metadata, Options, Record, SnapshotMarker, Wal};

/// Options for every test log: the backend comes from `WAL_TEST_BACKEND`
/// (`plain`, `io_uring`, or unset for the default probe), so the whole
/// suite runs once per backend (scripts/test.sh does both). On io_uring
/// the suite uses the mode that keeps two writes in flight, whose
/// pipelined batches recovery has the most to check on.
pub fn opts() -> Options {
    let backend = match std::env::var("WAL_TEST_BACKEND").as_deref() {
        Ok("plain") => wal::Backend::Plain,
        Ok("io_uring") => wal::Backend::IoUring,
        _ => wal::Backend::Auto,
    };
    Options {
        backend,
        uring_mode: wal::UringMode::DsyncWrite,
        uring_in_flight: 2,
        ..Options::default()
    }
}

pub const META: Metadata = Metadata {
    member_id: 0x11,
    cluster_id: 0x22,
};

/// An entry of about 200 bytes, so small segments roll over often.
pub fn entry(index: u64, term: u64) -> Record {
    let mut data = format!("entry {index} term {term}").into_bytes();
    data.resize(200, b'.');
    Record::Entry { index, term, data }
}

/// Creates a log holding entries 1..=n, one append each.
pub fn log_with(dir: &Path, n: u64, opts: Options) {
    let w = Wal::create(dir, META, opts).unwrap();
    for i in 1..=n {
        w.append(vec![entry(i, 1)]).wait().unwrap();
    }
    w.close();
}

pub fn open(dir: &Path) -> wal::Result<(Wal, wal::Recovered)> {
    Wal::open(dir, SnapshotMarker::default(), opts())
}

pub fn indexes(r: &wal::Recovered) -> Vec<u64> {
    r.entries.iter().map(|e| e.index).collect()
}
