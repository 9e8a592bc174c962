//! How bytes reach the disk: plain `pwrite` + `fdatasync`, or io_uring.
//!
//! Both backends implement [`SegmentWriter`]; the writer thread only ever
//! calls `write_durable` for a batch (and `write_at` never on its own), so
//! each backend is free to make "write these bytes and make them durable"
//! one operation. The io_uring backend has three ways to do that
//! ([`UringMode`]); `benches/benches/wal_append.rs` measures them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The write side of one open segment.
pub trait SegmentWriter: Send {
    /// Writes `buf` at `offset` and returns once it is durable.
    fn write_durable(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring when the kernel allows it (probed at start-up), else plain.
    Auto,
    /// `pwrite` + `fdatasync` always.
    Plain,
    /// io_uring always (opening fails where the kernel refuses it).
    IoUring,
}

/// How the io_uring backend makes a batch durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringMode {
    /// One write with `RWF_DSYNC`.
    DsyncWrite,
    /// A write linked to an `fsync(DATASYNC)`, submitted together.
    LinkedFsync,
    /// An io_uring write, then a plain `fdatasync` call.
    WriteThenFdatasync,
}

/// The backend chosen for an open log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Plain,
    IoUring(UringMode),
}

impl std::fmt::Display for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resolved::Plain => write!(f, "pwrite+fdatasync"),
            Resolved::IoUring(m) => write!(f, "io_uring ({m:?})"),
        }
    }
}

/// Plain `pwrite` + `fdatasync`.
pub struct PlainWriter(pub File);

impl SegmentWriter for PlainWriter {
    fn write_durable(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)?;
        self.0.sync_data()
    }
}

/// Resolves `want` to a backend this kernel runs, probing io_uring once.
pub fn resolve(want: Backend, mode: UringMode) -> io::Result<Resolved> {
    match want {
        Backend::Plain => Ok(Resolved::Plain),
        Backend::IoUring => uring::probe().map(|()| Resolved::IoUring(mode)),
        Backend::Auto => Ok(match uring::probe() {
            Ok(()) => Resolved::IoUring(mode),
            Err(e) => {
                tracing::info!("wal: io_uring unavailable ({e}); using pwrite+fdatasync");
                Resolved::Plain
            }
        }),
    }
}

/// A writer for `file` on the resolved backend, whose next write goes to
/// `offset`. With `direct`, the file is switched to O_DIRECT where the
/// filesystem allows it and writes are made whole aligned blocks.
pub fn open_writer(
    file: File,
    backend: Resolved,
    offset: u64,
    direct: bool,
) -> io::Result<Box<dyn SegmentWriter>> {
    let direct = direct && set_direct(&file);
    let tail = if direct {
        read_tail(&file, offset)?
    } else {
        Vec::new()
    };
    let inner: Box<dyn SegmentWriter> = match backend {
        Resolved::Plain => Box::new(PlainWriter(file)),
        Resolved::IoUring(mode) => Box::new(uring::UringWriter::new(file, mode)?),
    };
    Ok(if direct {
        Box::new(BlockWriter { inner, tail })
    } else {
        inner
    })
}

/// Alignment of O_DIRECT writes (offset, length and buffer address).
pub const BLOCK: usize = 4096;

/// Turns on O_DIRECT; false where the filesystem refuses it (tmpfs).
fn set_direct(file: &File) -> bool {
    use std::os::unix::io::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl with F_GETFL/F_SETFL only reads and sets the status
    // flags of a descriptor that `file` owns for the duration of the call.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) == 0
    }
}

/// The bytes of the block holding `offset`, from its start up to `offset`.
fn read_tail(file: &File, offset: u64) -> io::Result<Vec<u8>> {
    let start = offset - offset % BLOCK as u64;
    let mut tail = vec![0u8; (offset - start) as usize];
    if !tail.is_empty() {
        // A buffered read through a second descriptor: the O_DIRECT one
        // would need an aligned buffer, and the kernel keeps the two
        // coherent.
        let path = format!(
            "/proc/self/fd/{}",
            std::os::unix::io::AsRawFd::as_raw_fd(file)
        );
        std::fs::File::open(path)?.read_exact_at(&mut tail, start)?;
    }
    Ok(tail)
}

/// Makes every write whole, aligned blocks, as O_DIRECT requires: a write
/// at `offset` starts at the beginning of `offset`'s block, carrying the
/// bytes already written there (kept in `tail`) again, and is padded with
/// zeros to the end of its last block (the segment is zeros past the data
/// anyway). Rewriting those bytes with the same content is safe as long
/// as the device writes a sector atomically, which every disk does.
struct BlockWriter {
    inner: Box<dyn SegmentWriter>,
    tail: Vec<u8>,
}

impl SegmentWriter for BlockWriter {
    fn write_durable(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = offset - self.tail.len() as u64;
        if !start.is_multiple_of(BLOCK as u64) {
            return Err(io::Error::other(format!("unaligned write at {offset}")));
        }
        let len = self.tail.len() + buf.len();
        let padded = len.div_ceil(BLOCK) * BLOCK;
        let mut storage = vec![0u8; padded + BLOCK];
        let shift = storage.as_ptr().align_offset(BLOCK);
        let aligned = &mut storage[shift..shift + padded];
        aligned[..self.tail.len()].copy_from_slice(&self.tail);
        aligned[self.tail.len()..len].copy_from_slice(buf);
        self.inner.write_durable(aligned, start)?;
        let last_block = len - len % BLOCK;
        self.tail = aligned[last_block..len].to_vec();
        Ok(())
    }
}

#[cfg(target_os = "linux")]
mod uring {
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;

    use io_uring::{opcode, squeue, types, IoUring, Probe};

    use super::{SegmentWriter, UringMode};

    /// Checks that io_uring can be set up and runs writes and fsyncs
    /// (containers often forbid `io_uring_setup`).
    pub fn probe() -> io::Result<()> {
        let ring = IoUring::new(4)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Write::CODE) || !probe.is_supported(opcode::Fsync::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "write or fsync opcode unsupported",
            ));
        }
        Ok(())
    }

    pub struct UringWriter {
        /// Set up by the first write, on the writer thread, so the ring can
        /// be single-issuer (the kernel then skips cross-thread locking and
        /// runs completions only when this thread waits for them).
        ring: Option<IoUring>,
        file: File,
        mode: UringMode,
    }

    impl UringWriter {
        pub fn new(file: File, mode: UringMode) -> io::Result<UringWriter> {
            Ok(UringWriter {
                ring: None,
                file,
                mode,
            })
        }

        fn ring(&mut self) -> io::Result<&mut IoUring> {
            if self.ring.is_none() {
                let tuned = IoUring::builder()
                    .setup_single_issuer()
                    .setup_defer_taskrun()
                    .build(8);
                self.ring = Some(match tuned {
                    Ok(r) => r,
                    // Kernels before 6.1 lack these flags.
                    Err(_) => IoUring::new(8)?,
                });
            }
            self.ring
                .as_mut()
                .ok_or_else(|| io::Error::other("io_uring ring missing"))
        }

        /// Submits `entries` and waits for all of them; returns each result
        /// in submission order (by user data).
        fn run(&mut self, entries: &[squeue::Entry]) -> io::Result<Vec<i32>> {
            let ring = self.ring()?;
            for e in entries {
                // SAFETY: every buffer an entry points at is borrowed by the
                // caller for the whole of this call, and this call waits
                // below for every submitted entry to complete, so the kernel
                // never touches a buffer after it is released.
                unsafe { ring.submission().push(e) }
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
            ring.submit_and_wait(entries.len())?;
            let mut results = vec![0i32; entries.len()];
            let mut seen = 0;
            while seen < entries.len() {
                let next = ring.completion().next();
                match next {
                    Some(cqe) => {
                        let slot = cqe.user_data() as usize;
                        if let Some(r) = results.get_mut(slot) {
                            *r = cqe.result();
                        }
                        seen += 1;
                    }
                    None => {
                        ring.submit_and_wait(entries.len() - seen)?;
                    }
                }
            }
            Ok(results)
        }

        fn write_entry(&self, buf: &[u8], offset: u64, flags: i32) -> squeue::Entry {
            opcode::Write::new(
                types::Fd(self.file.as_raw_fd()),
                buf.as_ptr(),
                buf.len() as u32,
            )
            .offset(offset)
            .rw_flags(flags)
            .build()
            .user_data(0)
        }

        /// Finishes a write the kernel did only part of (or failed).
        fn complete(&self, buf: &[u8], offset: u64, result: i32) -> io::Result<()> {
            if result < 0 {
                return Err(io::Error::from_raw_os_error(-result));
            }
            let done = result as usize;
            if done < buf.len() {
                self.file.write_all_at(&buf[done..], offset + done as u64)?;
            }
            Ok(())
        }
    }

    impl SegmentWriter for UringWriter {
        fn write_durable(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
            match self.mode {
                UringMode::DsyncWrite => {
                    let e = self.write_entry(buf, offset, libc::RWF_DSYNC);
                    let r = self.run(&[e])?;
                    if (r[0] as usize) < buf.len() && r[0] >= 0 {
                        self.complete(buf, offset, r[0])?;
                        return self.file.sync_data();
                    }
                    self.complete(buf, offset, r[0])
                }
                UringMode::LinkedFsync => {
                    let w = self
                        .write_entry(buf, offset, 0)
                        .flags(squeue::Flags::IO_LINK);
                    let f = opcode::Fsync::new(types::Fd(self.file.as_raw_fd()))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data(1);
                    let r = self.run(&[w, f])?;
                    if r[0] < 0 {
                        return Err(io::Error::from_raw_os_error(-r[0]));
                    }
                    // A failed fsync is final: retrying could report data
                    // durable that the kernel already dropped.
                    if r[1] < 0 && r[1] != -libc::ECANCELED {
                        return Err(io::Error::from_raw_os_error(-r[1]));
                    }
                    if r[0] as usize != buf.len() || r[1] < 0 {
                        // A short write cancels the linked fsync: finish the
                        // write and the sync the plain way.
                        self.complete(buf, offset, r[0])?;
                        return self.file.sync_data();
                    }
                    Ok(())
                }
                UringMode::WriteThenFdatasync => {
                    let e = self.write_entry(buf, offset, 0);
                    let r = self.run(&[e])?;
                    self.complete(buf, offset, r[0])?;
                    self.file.sync_data()
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod uring {
    use std::fs::File;
    use std::io;

    use super::{SegmentWriter, UringMode};

    pub fn probe() -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring exists only on Linux",
        ))
    }

    pub struct UringWriter;

    impl UringWriter {
        pub fn new(_: File, _: UringMode) -> io::Result<UringWriter> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring exists only on Linux",
            ))
        }
    }

    impl SegmentWriter for UringWriter {
        fn write_durable(&mut self, _: &[u8], _: u64) -> io::Result<()> {
            probe()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_writes_durably_where_available() {
        let dir = tempfile::tempdir().unwrap();
        let modes = [
            UringMode::DsyncWrite,
            UringMode::LinkedFsync,
            UringMode::WriteThenFdatasync,
        ];
        let mut backends = vec![Resolved::Plain];
        match uring::probe() {
            Ok(()) => backends.extend(modes.map(Resolved::IoUring)),
            Err(e) => eprintln!("io_uring unavailable here: {e}"),
        }
        for (i, b) in backends.into_iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            for direct in [false, true] {
                let file = file.try_clone().unwrap();
                file.set_len(0).unwrap();
                let mut w = open_writer(file, b, 0, direct).unwrap();
                w.write_durable(b"hello", 0).unwrap();
                w.write_durable(b"world", 5).unwrap();
                let big = vec![7u8; 5000];
                w.write_durable(&big, 10).unwrap();
                let got = std::fs::read(&path).unwrap();
                assert_eq!(&got[..10], b"helloworld", "{b} direct {direct}");
                assert_eq!(&got[10..5010], &big[..], "{b} direct {direct}");
                assert!(got[5010..].iter().all(|&x| x == 0));
                // A writer resuming mid-block carries the block's head along.
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap();
                let mut w = open_writer(file, b, 5010, direct).unwrap();
                w.write_durable(b"tail", 5010).unwrap();
                let got = std::fs::read(&path).unwrap();
                assert_eq!(
                    &got[4096..5014],
                    &[&big[4086..], &b"tail"[..]].concat()[..],
                    "{b} direct {direct}"
                );
            }
        }
    }
}
