//! Opening a database file, choosing the meta page, the commit protocol,
//! file growth and snapshot publication.
//!
//! Shared state is split in two so readers never wait on a commit:
//! `current` (a read-write lock around an `Arc<Snapshot>`, held only for
//! the instant it takes to clone or replace the pointer) and `writer` (a
//! mutex held by the one write transaction for its whole life).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::freelist::Freelist;
use crate::io::{FileIo, IoFactory, PageIo};
use crate::page::{
    decode_freelist, encode_freelist, Meta, MetaProblem, PageId, PageView, MAX_PAGE_SIZE,
    MIN_PAGE_SIZE,
};
use crate::tx::{ReadTxn, WriteTxn};

/// How to open a database.
#[derive(Clone)]
pub struct Options {
    /// Page size for a new file; an existing file must have been created
    /// with the same size. Default 4096.
    pub page_size: usize,
    /// Open without write access, under a shared lock (several read-only
    /// handles may coexist; none may coexist with a writer).
    pub read_only: bool,
    /// Wraps the file for writing (tests use it to inject faults).
    pub io: Option<IoFactory>,
    /// Space kept allocated beyond the data (free pages included) after
    /// every commit, so that the commits after it cannot fail for want of
    /// disk: when the file cannot grow to keep it, the commit still
    /// succeeds and [`Db::space_short`] says so (the server raises etcd's
    /// NOSPACE alarm and stops taking writes). Default 0.
    pub reserve_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            page_size: 4096,
            read_only: false,
            io: None,
            reserve_bytes: 0,
        }
    }
}

/// One consistent state of the file: a meta and a mapping that covers
/// every page it references.
pub(crate) struct Snapshot {
    pub version: u64,
    pub meta: Meta,
    pub map: Arc<Mmap>,
}

/// The write side's state, owned by whoever holds the writer mutex.
pub(crate) struct Writer {
    /// The open file; holds the file lock for the handle's life (replaced,
    /// lock and all, by a defragmentation).
    pub file: File,
    pub io: Box<dyn PageIo>,
    pub freelist: Freelist,
    /// Version of the newest commit (in memory; may not be durable yet).
    pub version: u64,
    /// Version described by the newest meta on disk.
    pub durable_version: u64,
    /// txid of the newest meta on disk.
    pub durable_txid: u64,
    pub file_len: u64,
    pub map: Arc<Mmap>,
    /// Superseded snapshots that readers may still hold.
    pub history: Vec<Arc<Snapshot>>,
    pub poisoned: Option<String>,
}

pub(crate) struct Shared {
    pub path: PathBuf,
    pub page_size: usize,
    pub read_only: bool,
    /// How the file is wrapped for writing (kept for the file a
    /// defragmentation puts in place).
    pub io_factory: Option<IoFactory>,
    pub current: RwLock<Arc<Snapshot>>,
    pub writer: Mutex<Writer>,
    /// Told of each commit (see [`Db::observe_commits`]).
    pub observer: std::sync::OnceLock<crate::observe::CommitObserver>,
    pub defrag: crate::observe::DefragProgress,
    /// See [`Options::reserve_bytes`].
    pub reserve_bytes: u64,
    /// The file could not grow to keep its reserve (the disk is full).
    pub space_short: std::sync::atomic::AtomicBool,
}

/// A database file. Cheap to clone; all clones share one handle.
#[derive(Clone)]
pub struct Db {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.shared.path)
            .field("page_size", &self.shared.page_size)
            .field("read_only", &self.shared.read_only)
            .finish()
    }
}

/// Files grow by doubling up to this size, then by this much at a time.
const MAX_GROW_STEP: u64 = 1 << 30;
/// Smallest file size.
const MIN_FILE_SIZE: u64 = 32 * 1024;

fn validate_page_size(ps: usize) -> Result<()> {
    if !ps.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps) {
        return Err(Error::InvalidPageSize(ps));
    }
    Ok(())
}

/// The file size to grow to so that `needed` bytes fit.
fn grown_size(current: u64, needed: u64) -> u64 {
    let mut size = current.max(MIN_FILE_SIZE);
    while size < needed {
        size += size.min(MAX_GROW_STEP);
    }
    size
}

pub(crate) fn map_file(path: &Path, file: &File) -> Result<Arc<Mmap>> {
    // SAFETY: the mapping is read-only and the file is flock()ed, so no
    // cooperating process writes it. Within this process the writer only
    // writes pages that no live snapshot can reach (free pages and pages
    // past every snapshot's high-water mark), and the file never shrinks
    // while a mapping of it exists, so the bytes a reader borrows stay
    // unchanged and mapped for as long as the borrow lives.
    let map = unsafe { Mmap::map(file) }.map_err(|e| Error::io(path, "mmap", e))?;
    Ok(Arc::new(map))
}

/// How long a lock held elsewhere is waited for before the open fails.
/// A process that forks (any thread of it spawning a child) lends the
/// child its open files, this database's locked one among them, until the
/// child's exec closes them: a handle just dropped in the parent can stay
/// locked for that moment.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes `file`'s lock: shared for a read-only handle, else exclusive.
fn lock(file: &File, read_only: bool, path: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        let locked = if read_only {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match locked {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked(path.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(path, "lock", e)),
        }
    }
}

pub(crate) fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fail::fail_point!("btree::fsync_dir", |_| Err(Error::io(
        dir,
        "fsync directory",
        std::io::Error::from_raw_os_error(libc::EIO)
    )));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "fsync directory", e))
}

/// Picks the meta with the highest txid among the valid ones.
fn choose_meta(path: &Path, map: &[u8], page_size: usize) -> Result<Meta> {
    let slot = |i: usize| -> std::result::Result<Meta, MetaProblem> {
        let page = map
            .get(i * page_size..(i + 1) * page_size)
            .ok_or(MetaProblem::Short)?;
        let meta = Meta::decode(page)?;
        let sane = meta.high_water >= 3
            && (2..meta.high_water).contains(&meta.freelist)
            && (meta.directory == 0 || (2..meta.high_water).contains(&meta.directory));
        if meta.page_size as usize == page_size && !sane {
            return Err(MetaProblem::BadChecksum);
        }
        Ok(meta)
    };
    let metas = [slot(0), slot(1)];
    for m in &metas {
        match m {
            Err(MetaProblem::NewerVersion(v)) => {
                return Err(Error::UnsupportedVersion {
                    path: path.to_path_buf(),
                    found: *v,
                    supported: crate::page::FORMAT_VERSION,
                })
            }
            Ok(meta) if meta.page_size as usize != page_size => {
                return Err(Error::PageSizeMismatch {
                    path: path.to_path_buf(),
                    found: meta.page_size,
                    expected: page_size as u32,
                })
            }
            _ => {}
        }
    }
    let best = metas
        .iter()
        .filter_map(|m| m.as_ref().ok())
        .max_by_key(|m| m.txid);
    match (best, &metas) {
        (Some(m), _) => Ok(*m),
        (None, [Err(a), Err(b)])
            if matches!(a, MetaProblem::BadMagic | MetaProblem::Short)
                && matches!(b, MetaProblem::BadMagic | MetaProblem::Short) =>
        {
            Err(Error::NotADatabase(path.to_path_buf()))
        }
        (None, [a, b]) => Err(Error::NoValidMeta {
            path: path.to_path_buf(),
            meta0: a.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
            meta1: b.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
        }),
    }
}

/// Writes the first pages of a new file: two metas and an empty freelist.
fn initialize(path: &Path, io: &dyn PageIo, page_size: usize) -> Result<()> {
    let mut buf = vec![0u8; 3 * page_size];
    let mut meta = Meta {
        page_size: page_size as u32,
        directory: 0,
        freelist: 2,
        high_water: 3,
        txid: 0,
    };
    meta.encode(0, &mut buf[..page_size]);
    meta.txid = 1;
    meta.encode(1, &mut buf[page_size..2 * page_size]);
    buf[2 * page_size..].copy_from_slice(&encode_freelist(2, 1, page_size, &[]));
    let len = grown_size(0, buf.len() as u64).div_ceil(page_size as u64) * page_size as u64;
    io.allocate(0, len)
        .map_err(|e| Error::io(path, "allocate file", e))?;
    io.write_at(&buf, 0)
        .map_err(|e| Error::io(path, "write", e))?;
    io.sync_data()
        .map_err(|e| Error::io(path, "fdatasync", e))?;
    sync_parent_dir(path)
}

impl Db {
    /// Opens (or creates) the database at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Db> {
        Db::open_with(path, Options::default())
    }

    pub fn open_with(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        let path = path.as_ref().to_path_buf();
        let ps = opts.page_size;
        validate_page_size(ps)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .create(!opts.read_only)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, "open", e))?;
        lock(&file, opts.read_only, &path)?;
        let io_file = file.try_clone().map_err(|e| Error::io(&path, "dup", e))?;
        let io: Box<dyn PageIo> = match &opts.io {
            Some(factory) => factory(io_file),
            None => Box::new(FileIo(io_file)),
        };
        let mut len = file
            .metadata()
            .map_err(|e| Error::io(&path, "stat", e))?
            .len();
        if len == 0 {
            if opts.read_only {
                return Err(Error::NotADatabase(path));
            }
            initialize(&path, io.as_ref(), ps)?;
            len = file
                .metadata()
                .map_err(|e| Error::io(&path, "stat", e))?
                .len();
        }
        let map = map_file(&path, &file)?;
        let meta = choose_meta(&path, &map, ps)?;
        let needed = meta.high_water * ps as u64;
        if len < needed {
            return Err(Error::Truncated { path, len, needed });
        }
        let fl_page = PageView::open(&map, ps, meta.high_water, meta.freelist)?;
        let free = decode_freelist(&fl_page)?;
        if let Some(bad) = free.iter().find(|&&id| id < 2 || id >= meta.high_water) {
            return Err(Error::Corrupt {
                page: meta.freelist,
                reason: format!("freelist names page {bad}, outside the data area"),
            });
        }
        let version = 1;
        let snapshot = Arc::new(Snapshot {
            version,
            meta,
            map: map.clone(),
        });
        let writer = Writer {
            file,
            io,
            freelist: Freelist::from_free(free),
            version,
            durable_version: version,
            durable_txid: meta.txid,
            file_len: len,
            map,
            history: Vec::new(),
            poisoned: None,
        };
        let db = Db {
            shared: Arc::new(Shared {
                path,
                page_size: ps,
                read_only: opts.read_only,
                io_factory: opts.io.clone(),
                current: RwLock::new(snapshot),
                writer: Mutex::new(writer),
                observer: Default::default(),
                defrag: Default::default(),
                reserve_bytes: opts.reserve_bytes,
                space_short: Default::default(),
            }),
        };
        if !opts.read_only {
            // A member restarted on a full disk learns it at once.
            let mut w = db.lock_writer()?;
            db.keep_reserve(&mut w);
        }
        Ok(db)
    }

    /// Whether the file could not grow to keep [`Options::reserve_bytes`]
    /// free after the last commit: the disk is (nearly) full. Commits
    /// within the reserve still succeed; a later commit that makes room
    /// (after a compaction and defragmentation freed space) clears it.
    pub fn space_short(&self) -> bool {
        self.shared
            .space_short
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Grows the file, if need be, so that the free pages and the space
    /// past the data hold at least the reserve; records whether it could.
    pub(crate) fn keep_reserve(&self, w: &mut Writer) {
        let reserve = self.shared.reserve_bytes;
        if reserve == 0 {
            return;
        }
        let ps = self.shared.page_size as u64;
        let used = self.snapshot().meta.high_water * ps;
        let free_pages = w.freelist.free_count() as u64 * ps;
        let tail = w.file_len.saturating_sub(used);
        let short =
            free_pages + tail < reserve && self.grow(w, used + reserve - free_pages).is_err();
        self.shared
            .space_short
            .store(short, std::sync::atomic::Ordering::Release);
    }

    /// Grows the file to hold `needed` bytes with allocated blocks: by the
    /// usual step if the disk allows, else to `needed` exactly.
    fn grow(&self, w: &mut Writer, needed: u64) -> Result<()> {
        let path = &self.shared.path;
        let ps = self.shared.page_size as u64;
        let stepped = grown_size(w.file_len, needed).div_ceil(ps) * ps;
        let exact = needed.div_ceil(ps) * ps;
        let from = w.file_len;
        let grown =
            w.io.allocate(from, stepped)
                .map(|()| stepped)
                .or_else(|_| w.io.allocate(from, exact).map(|()| exact))
                .map_err(|e| Error::io(path, "allocate file", e))?;
        w.file_len = grown;
        w.map = map_file(path, &w.file)?;
        Ok(())
    }

    /// Calls `observer` after every commit from now on, under the writer's
    /// lock (the server's metrics); only the first observer set is kept.
    pub fn observe_commits(&self, observer: crate::observe::CommitObserver) {
        let _ = self.shared.observer.set(observer);
    }

    /// How the online defragmentation stands.
    pub fn defrag_progress(&self) -> crate::observe::DefragState {
        self.shared.defrag.state()
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn page_size(&self) -> usize {
        self.shared.page_size
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts a read transaction: a stable snapshot of the latest commit.
    /// Never waits for a writer.
    pub fn begin_read(&self) -> ReadTxn {
        ReadTxn::new(self.snapshot(), self.shared.page_size)
    }

    pub(crate) fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>> {
        if self.shared.read_only {
            return Err(Error::ReadOnly);
        }
        let w = self.shared.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &w.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        Ok(w)
    }

    /// Starts the write transaction, waiting for the current one to end.
    pub fn begin_write(&self) -> Result<WriteTxn<'_>> {
        let mut w = self.lock_writer()?;
        release_freed_pages(&mut w);
        let base = self.snapshot();
        Ok(WriteTxn::new(self, w, base))
    }

    /// Makes every commit so far durable: fdatasync, then write and
    /// fdatasync the meta page. A no-op when nothing is pending.
    pub fn sync(&self) -> Result<()> {
        let mut w = self.lock_writer()?;
        let snap = self.snapshot();
        self.make_durable(&mut w, &snap)
    }

    /// The durable half of a commit. Poisons the writer on failure.
    pub(crate) fn make_durable(&self, w: &mut Writer, snap: &Snapshot) -> Result<()> {
        if w.durable_version == snap.version {
            return Ok(());
        }
        let path = &self.shared.path;
        let ps = self.shared.page_size;
        let io = &w.io;
        let result = (|| -> Result<u64> {
            io.sync_data()
                .map_err(|e| Error::io(path, "fdatasync", e))?;
            let mut meta = snap.meta;
            meta.txid = w.durable_txid + 1;
            let slot = meta.txid % 2;
            let mut page = vec![0u8; ps];
            meta.encode(slot, &mut page);
            io.write_at(&page, slot * ps as u64)
                .map_err(|e| Error::io(path, "write meta", e))?;
            io.sync_data()
                .map_err(|e| Error::io(path, "fdatasync", e))?;
            Ok(meta.txid)
        })();
        match result {
            Ok(txid) => {
                w.durable_txid = txid;
                w.durable_version = snap.version;
                w.freelist.made_durable();
                Ok(())
            }
            Err(e) => {
                w.poisoned = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Lets go of this process's mapping of the file's pages after a walk
    /// over all of them (rebuilding an index at open): they stay in the
    /// kernel's page cache, and the next read of a page maps it again with
    /// a minor fault, so the process's resident memory reflects the pages
    /// it keeps using rather than every page it ever read.
    pub fn release_mapped_pages(&self) -> Result<()> {
        let snap = self.snapshot();
        // SAFETY: the mapping is shared and read-only. MADV_DONTNEED on a
        // shared file mapping drops page-table entries only; a later read
        // faults the same bytes back in from the file, which this call does
        // not change. Slices readers hold stay valid and read the same.
        unsafe {
            snap.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        }
        .map_err(|e| Error::io(&self.shared.path, "madvise", e))
    }

    /// Whether commits exist that are not yet durable.
    pub fn has_unsynced_commits(&self) -> bool {
        let w = self.shared.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.durable_version != w.version
    }

    /// Grows the file so `high_water` pages fit, remapping it.
    pub(crate) fn ensure_capacity(&self, w: &mut Writer, high_water: u64) -> Result<()> {
        let needed = high_water * self.shared.page_size as u64;
        if needed <= w.file_len {
            return Ok(());
        }
        self.grow(w, needed)
    }

    /// Writes `runs` (page id, bytes), coalescing neighbours into one write.
    pub(crate) fn write_runs(&self, w: &Writer, mut runs: Vec<(PageId, Vec<u8>)>) -> Result<()> {
        let ps = self.shared.page_size as u64;
        runs.sort_unstable_by_key(|r| r.0);
        let mut i = 0;
        while i < runs.len() {
            let start = runs[i].0;
            let mut end = start + runs[i].1.len() as u64 / ps;
            let mut j = i + 1;
            while j < runs.len() && runs[j].0 == end {
                end += runs[j].1.len() as u64 / ps;
                j += 1;
            }
            let result = if j == i + 1 {
                w.io.write_at(&runs[i].1, start * ps)
            } else {
                let mut buf = Vec::with_capacity(((end - start) * ps) as usize);
                for r in &runs[i..j] {
                    buf.extend_from_slice(&r.1);
                }
                w.io.write_at(&buf, start * ps)
            };
            result.map_err(|e| Error::io(&self.shared.path, "write", e))?;
            i = j;
        }
        Ok(())
    }

    /// Replaces the published snapshot.
    pub(crate) fn publish(&self, w: &mut Writer, snap: Arc<Snapshot>) {
        let old = std::mem::replace(
            &mut *self
                .shared
                .current
                .write()
                .unwrap_or_else(|e| e.into_inner()),
            snap,
        );
        w.history.push(old);
    }
}

/// Moves pages freed by old commits to the free set once no reader can see
/// them and a meta newer than their release is durable.
fn release_freed_pages(w: &mut Writer) {
    w.history.retain(|s| Arc::strong_count(s) > 1);
    let oldest_reader = w
        .history
        .iter()
        .map(|s| s.version)
        .min()
        .unwrap_or(w.version);
    w.freelist.release(oldest_reader, w.durable_version);
}

#[cfg(test)]
mod tests {
    use super::grown_size;

    #[test]
    fn growth_doubles_then_steps_by_a_gigabyte() {
        assert_eq!(grown_size(0, 1), 32 * 1024);
        assert_eq!(grown_size(32 * 1024, 40 * 1024), 64 * 1024);
        assert_eq!(grown_size(1 << 30, (1 << 30) + 1), 2 << 30);
        assert_eq!(grown_size(3 << 30, (3 << 30) + 1), 4 << 30);
    }
}
