//! Integration tests of the mvcc crate, one binary with a module per area.

mod import;
mod index_model;
mod install;
mod long_reads;
mod restart;
mod store_basics;
mod store_model;
mod watch;

/// Held while spawning a child process and while opening a store file
/// that was open before: a child forked meanwhile holds a copy of the
/// file's descriptor, and so its lock, until its exec closes it.
pub static SPAWN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Opens (again) the store at `path`. The kernel wakes the spawning parent
/// slightly before the exec'ing child has dropped its copies of the
/// parent's descriptors, so a lock can outlive `spawn` by a moment: a
/// locked file is retried for up to two seconds.
pub fn open_store(path: &std::path::Path) -> mvcc::Store {
    let _g = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match mvcc::Store::open(path) {
            Err(mvcc::Error::Storage(btree::Error::Locked(_)))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            r => return r.unwrap(),
        }
    }
}
mod bad_input;
