//! The write side of the file, behind a trait so tests can inject faults.
//!
//! The database reads through its mmap and writes only through a
//! [`PageIo`]: `write_at`, `sync_data`, `set_len` and `allocate`. [`FaultyIo`] wraps a
//! real file, counts those calls, fails at a chosen one (optionally tearing
//! that write in half), and remembers every write not yet covered by a
//! sync so that a power cut can be simulated afterwards by undoing them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// What the database needs from the file it writes.
pub trait PageIo: Send + Sync {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Extends the file from `from` to `len` bytes with blocks the
    /// filesystem has allocated (fallocate), so writes there cannot fail
    /// for want of space, and a full disk is learnt here, before any page
    /// is written. A filesystem without fallocate gets a plain extension.
    fn allocate(&self, from: u64, len: u64) -> io::Result<()>;
}

/// fallocate(2) of `[from, len)` on `file`, or `set_len` where the
/// filesystem cannot allocate.
pub fn allocate_file(file: &File, from: u64, len: u64) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    if len <= from {
        return Ok(());
    }
    // SAFETY: fallocate only reads its integer arguments; the descriptor
    // is owned by `file`, which outlives the call.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            0,
            from as libc::off_t,
            (len - from) as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return file.set_len(len);
    }
    // A failed fallocate may still have changed the size: the file keeps
    // the length it had (nothing beyond it is referenced).
    let _ = file.set_len(from);
    Err(e)
}

/// Plain positioned writes and fdatasync on the database file.
pub struct FileIo(pub File);

impl PageIo for FileIo {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn allocate(&self, from: u64, len: u64) -> io::Result<()> {
        allocate_file(&self.0, from, len)
    }
}

/// A builder of the [`PageIo`] for a freshly opened file.
pub type IoFactory = Arc<dyn Fn(File) -> Box<dyn PageIo> + Send + Sync>;

#[derive(Debug, Clone)]
enum Unsynced {
    Write {
        offset: u64,
        old: Vec<u8>,
        new: Vec<u8>,
    },
    SetLen {
        old: u64,
        new: u64,
    },
}

#[derive(Debug, Default)]
struct FaultState {
    ops: u64,
    fail_at: Option<u64>,
    tear: bool,
    crashed: bool,
    unsynced: Vec<Unsynced>,
}

/// Shared control of one or more [`FaultyIo`]s: when to fail, and the
/// record of unsynced writes for simulating a power cut.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan(Arc<Mutex<FaultState>>);

impl FaultPlan {
    /// A plan that never fails (it still records unsynced writes).
    pub fn new() -> FaultPlan {
        FaultPlan::default()
    }

    /// Fail at the `n`-th I/O call (1-based) from now on counting; if `tear`,
    /// and that call is a write, the first half of it reaches the file.
    pub fn fail_at(n: u64, tear: bool) -> FaultPlan {
        let plan = FaultPlan::default();
        {
            let mut s = plan.lock();
            s.fail_at = Some(n);
            s.tear = tear;
        }
        plan
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A panic while holding this lock only happens in a failing test;
        // the state is still usable for the report.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// I/O calls made so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Whether the planned failure has happened.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// An [`IoFactory`] that wraps the database file in a [`FaultyIo`]
    /// driven by this plan.
    pub fn factory(&self) -> IoFactory {
        let plan = self.clone();
        Arc::new(move |file| {
            Box::new(FaultyIo {
                file,
                plan: plan.clone(),
            })
        })
    }

    /// Simulates a power cut on the file at `path` (the database must be
    /// closed): every write and length change since the last successful
    /// sync is lost, except those for which `keep(i)` returns true (`i`
    /// counts the unsynced operations in order), which models a disk that
    /// wrote some of its cache back before power went.
    pub fn power_cut(&self, path: &Path, mut keep: impl FnMut(usize) -> bool) -> io::Result<()> {
        let ops = std::mem::take(&mut self.lock().unsynced);
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        for op in ops.iter().rev() {
            match op {
                Unsynced::Write { offset, old, .. } => file.write_all_at(old, *offset)?,
                Unsynced::SetLen { old, .. } => file.set_len(*old)?,
            }
        }
        for (i, op) in ops.iter().enumerate() {
            if keep(i) {
                match op {
                    Unsynced::Write { offset, new, .. } => file.write_all_at(new, *offset)?,
                    Unsynced::SetLen { new, .. } => file.set_len(*new)?,
                }
            }
        }
        file.sync_all()
    }
}

/// A [`PageIo`] over a real file that fails when its [`FaultPlan`] says so.
pub struct FaultyIo {
    file: File,
    plan: FaultPlan,
}

fn injected() -> io::Error {
    io::Error::other("injected fault")
}

impl FaultyIo {
    /// Counts one call; returns whether it is the one to fail. Every call
    /// after the failure fails too, as a crashed process does no more I/O.
    fn step(s: &mut FaultState) -> io::Result<bool> {
        if s.crashed {
            return Err(injected());
        }
        s.ops += 1;
        if s.fail_at == Some(s.ops) {
            s.crashed = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn read_old(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let size = self.file.metadata()?.len();
        let mut old = vec![0u8; len];
        if offset < size {
            let n = ((size - offset) as usize).min(len);
            self.file.read_exact_at(&mut old[..n], offset)?;
        }
        Ok(old)
    }
}

impl PageIo for FaultyIo {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.plan.lock();
        let fail = Self::step(&mut s)?;
        let buf = if fail {
            if !s.tear {
                return Err(injected());
            }
            &buf[..buf.len() / 2]
        } else {
            buf
        };
        let old = self.read_old(offset, buf.len())?;
        self.file.write_all_at(buf, offset)?;
        s.unsynced.push(Unsynced::Write {
            offset,
            old,
            new: buf.to_vec(),
        });
        if fail {
            return Err(injected());
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.plan.lock();
        if Self::step(&mut s)? {
            return Err(injected());
        }
        self.file.sync_data()?;
        s.unsynced.clear();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.plan.lock();
        if Self::step(&mut s)? {
            return Err(injected());
        }
        let old = self.file.metadata()?.len();
        self.file.set_len(len)?;
        s.unsynced.push(Unsynced::SetLen { old, new: len });
        Ok(())
    }

    fn allocate(&self, from: u64, len: u64) -> io::Result<()> {
        let mut s = self.plan.lock();
        if Self::step(&mut s)? {
            return Err(injected());
        }
        let old = self.file.metadata()?.len();
        allocate_file(&self.file, from, len)?;
        s.unsynced.push(Unsynced::SetLen { old, new: len });
        Ok(())
    }
}

/// A test aid for simulating a power cut of the whole machine: a
/// [`PageIo`] that, before each write or length change, appends what it
/// replaces to a journal file, and empties the journal once a sync has
/// made everything durable. After a SIGKILL (the page cache keeps every
/// write) the journal names exactly the changes a power cut could have
/// lost; the server's power-loss test undoes them. The format is the
/// WAL's (`wal::journal`), plus one record for length changes:
/// - `W`, offset u64, length of the file before u64, len u32, the `len`
///   bytes the write replaced;
/// - `L`, length of the file before u64;
/// - `S`: everything before is durable.
pub struct JournaledIo {
    file: File,
    journal: Mutex<File>,
}

impl JournaledIo {
    /// An [`IoFactory`] journaling to `journal` (emptied for each file
    /// opened: a freshly opened file is all durable).
    pub fn factory(journal: std::path::PathBuf) -> IoFactory {
        Arc::new(move |file| {
            let j = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&journal);
            match j {
                Ok(j) => Box::new(JournaledIo {
                    file,
                    journal: Mutex::new(j),
                }) as Box<dyn PageIo>,
                // Without its journal the test could not undo anything:
                // every write then fails, loudly.
                Err(e) => Box::new(Unjournaled(e.to_string())),
            }
        })
    }

    fn record(&self, rec: &[u8]) -> io::Result<()> {
        use std::io::Write;
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(rec)
    }
}

impl PageIo for JournaledIo {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let size = self.file.metadata()?.len();
        let mut old = vec![0u8; buf.len()];
        if offset < size {
            let n = ((size - offset) as usize).min(buf.len());
            self.file.read_exact_at(&mut old[..n], offset)?;
        }
        let mut rec = Vec::with_capacity(21 + buf.len());
        rec.push(b'W');
        rec.extend_from_slice(&offset.to_le_bytes());
        rec.extend_from_slice(&size.to_le_bytes());
        rec.extend_from_slice(&(buf.len() as u32).to_le_bytes());
        rec.extend_from_slice(&old);
        self.record(&rec)?;
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        use std::io::{Seek, Write};
        self.file.sync_data()?;
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.write_all(b"S")?;
        j.set_len(0)?;
        j.seek(io::SeekFrom::Start(0))?;
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let size = self.file.metadata()?.len();
        let mut rec = vec![b'L'];
        rec.extend_from_slice(&size.to_le_bytes());
        self.record(&rec)?;
        self.file.set_len(len)
    }

    fn allocate(&self, from: u64, len: u64) -> io::Result<()> {
        let size = self.file.metadata()?.len();
        let mut rec = vec![b'L'];
        rec.extend_from_slice(&size.to_le_bytes());
        self.record(&rec)?;
        allocate_file(&self.file, from, len)
    }
}

/// What [`JournaledIo::factory`] hands out when it cannot open its
/// journal: every call fails with the reason.
struct Unjournaled(String);

impl PageIo for Unjournaled {
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other(self.0.clone()))
    }
    fn sync_data(&self) -> io::Result<()> {
        Err(io::Error::other(self.0.clone()))
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::other(self.0.clone()))
    }
    fn allocate(&self, _: u64, _: u64) -> io::Result<()> {
        Err(io::Error::other(self.0.clone()))
    }
}
