//! How bytes reach the disk: plain `pwrite` + `fdatasync`, or io_uring.
//!
//! Both backends implement [`SegmentWriter`]: `submit` starts writing a
//! batch and making it durable, `wait_oldest` returns once the oldest
//! write submitted is durable. The plain backend does the whole job in
//! `submit` (one write in flight at a time); the io_uring backend in its
//! `RWF_DSYNC` and linked-fsync modes keeps up to [`MAX_IN_FLIGHT`] writes
//! in the kernel at once, which is where io_uring beats a synchronous
//! call. The io_uring backend has three ways to make a write durable
//! ([`UringMode`]); `benches/benches/wal_append.rs` measures them.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Most writes a backend keeps in flight at once. The format relies on it
/// (`FORMAT.md`, "Pipelined batches"): a crash can only damage the last
/// two batches, and only when the last was pipelined behind the other.
pub const MAX_IN_FLIGHT: usize = 2;

/// A buffer handed to the kernel: owned, so it outlives an asynchronous
/// write, and (for O_DIRECT) starting on a block boundary in memory.
pub struct IoBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl IoBuf {
    /// `data` as it is (for buffered writes).
    pub fn unaligned(data: Vec<u8>) -> IoBuf {
        let len = data.len();
        IoBuf {
            storage: data,
            start: 0,
            len,
        }
    }

    /// `len` zero bytes starting at a block-aligned address.
    fn aligned_zeroed(len: usize) -> IoBuf {
        let storage = vec![0u8; len + BLOCK];
        let start = storage.as_ptr().align_offset(BLOCK);
        IoBuf {
            storage,
            start,
            len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// The write side of one open segment.
pub trait SegmentWriter: Send {
    /// Starts writing `buf` at `offset` and making it durable. It is
    /// durable once [`SegmentWriter::wait_oldest`] has returned Ok for it.
    fn submit(&mut self, buf: IoBuf, offset: u64) -> io::Result<()>;
    /// Waits until the oldest write submitted and not yet waited for is
    /// durable (writes are waited for in submission order).
    fn wait_oldest(&mut self) -> io::Result<()>;
    /// Writes submitted and not yet waited for.
    fn in_flight(&self) -> usize;
    /// How many writes this backend keeps in flight at once (1 or
    /// [`MAX_IN_FLIGHT`]).
    fn depth(&self) -> usize;
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

/// Plain `pwrite` + `fdatasync`, done whole in `submit`.
pub struct PlainWriter {
    file: File,
    results: VecDeque<io::Result<()>>,
}

impl PlainWriter {
    pub fn new(file: File) -> PlainWriter {
        PlainWriter {
            file,
            results: VecDeque::new(),
        }
    }
}

impl SegmentWriter for PlainWriter {
    fn submit(&mut self, buf: IoBuf, offset: u64) -> io::Result<()> {
        let r = self
            .file
            .write_all_at(buf.as_slice(), offset)
            .and_then(|()| self.file.sync_data());
        self.results.push_back(r);
        Ok(())
    }

    fn wait_oldest(&mut self) -> io::Result<()> {
        self.results
            .pop_front()
            .unwrap_or_else(|| Err(io::Error::other("no write in flight")))
    }

    fn in_flight(&self) -> usize {
        self.results.len()
    }

    fn depth(&self) -> usize {
        1
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

/// How a segment writer writes (from [`crate::Options`]).
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Switch the file to O_DIRECT where the filesystem allows it, and
    /// make writes whole aligned blocks.
    pub direct: bool,
    /// With io_uring, up to this many writes (1 to [`MAX_IN_FLIGHT`]) are
    /// kept in flight where the mode allows it.
    pub in_flight: usize,
    /// With direct I/O, write zeros over the next [`ZERO_AHEAD`] bytes
    /// before appends reach them.
    pub zero_ahead: bool,
}

/// How far ahead of the appends zeros are written.
pub const ZERO_AHEAD: u64 = 1 << 20;

/// A writer for `file` on the resolved backend, whose next write goes to
/// `offset`.
pub fn open_writer(
    file: File,
    backend: Resolved,
    offset: u64,
    config: WriterConfig,
    journal: Option<&std::path::Path>,
) -> io::Result<Box<dyn SegmentWriter>> {
    if let Some(segment) = journal {
        // Power-cut tests: plain buffered writes, each recorded until it
        // is durable (`journal`).
        let plain = Box::new(PlainWriter::new(file.try_clone()?));
        return Ok(Box::new(crate::journal::Journaled::new(
            plain, &file, segment,
        )?));
    }
    let direct = config.direct && set_direct(&file);
    if !direct {
        return Ok(match backend {
            Resolved::Plain => Box::new(PlainWriter::new(file)),
            Resolved::IoUring(mode) => {
                Box::new(uring::UringWriter::new(file, mode, config.in_flight)?)
            }
        });
    }
    let tail = read_tail(&file, offset)?;
    drop_cached_pages(&file);
    let zeros = if config.zero_ahead {
        let file_len = file.metadata()?.len();
        Some(ZeroAhead {
            file: file.try_clone()?,
            file_len,
            // The block holding `offset` is written (or about to be, by the
            // first write, which carries its head).
            zeroed_to: offset.next_multiple_of(BLOCK as u64),
            zeros: None,
        })
    } else {
        None
    };
    let inner: Box<dyn SegmentWriter> = match backend {
        Resolved::Plain => Box::new(PlainWriter::new(file)),
        Resolved::IoUring(mode) => Box::new(uring::UringWriter::new(file, mode, config.in_flight)?),
    };
    Ok(Box::new(BlockWriter {
        inner,
        tail_start: offset - tail.len() as u64,
        tail,
        zeros,
    }))
}

/// Writes zeros ahead of the appends. A fallocated segment's blocks are
/// *unwritten* extents: the first write to each turns it into a written
/// extent, and the fdatasync after it must commit that change to the
/// filesystem journal. Writing zeros a MiB at a time, before appends get
/// there, leaves one such commit per MiB instead of one per batch, and
/// lets io_uring issue direct writes without a worker thread (a write into
/// unwritten space cannot be issued without blocking). The zeros need no
/// fsync of their own: until they are durable the range reads as zeros
/// anyway, and the next batch's fdatasync makes them durable.
struct ZeroAhead {
    file: File,
    file_len: u64,
    /// Everything before this offset has been written.
    zeroed_to: u64,
    /// A block-aligned buffer of ZERO_AHEAD zero bytes, made on first use.
    zeros: Option<IoBuf>,
}

impl ZeroAhead {
    /// Makes sure `[.., end)` is written (zeros where nothing else is),
    /// before a write ending at `end` is submitted. Every write in flight
    /// ends at or before `zeroed_to`, so the zeros never overlap one.
    fn cover(&mut self, end: u64) -> io::Result<()> {
        while self.zeroed_to < end.min(self.file_len) {
            let to = ((self.zeroed_to / ZERO_AHEAD + 1) * ZERO_AHEAD)
                .min(self.file_len.next_multiple_of(BLOCK as u64));
            let zeros = self
                .zeros
                .get_or_insert_with(|| IoBuf::aligned_zeroed(ZERO_AHEAD as usize));
            let n = (to - self.zeroed_to) as usize;
            self.file
                .write_all_at(&zeros.as_slice()[..n], self.zeroed_to)?;
            self.zeroed_to = to;
        }
        Ok(())
    }
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

/// Drops the file's clean pages from the page cache. Recovery, the tail
/// read and zero-filling leave the segment cached, and a direct write over
/// cached pages cannot be issued without blocking (the kernel must
/// invalidate them), so io_uring would hand every write to a worker thread.
fn drop_cached_pages(file: &File) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; the
    // descriptor is owned by `file` for the duration of the call. It is
    // advice: a failure changes nothing but speed.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
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
/// continuing the previous one mid-block starts at the beginning of that
/// block, carrying the bytes already written there (kept in `tail`) again;
/// every write is padded with zeros to the end of its last block (the
/// segment is zeros past the data anyway). Rewriting those bytes with the
/// same content is safe as long as the device writes a sector atomically,
/// which every disk does. A write starting on a block boundary (a
/// pipelined batch) carries nothing, so two writes in flight never share
/// a block.
struct BlockWriter {
    inner: Box<dyn SegmentWriter>,
    /// The start of the block holding the end of the last write submitted,
    /// and the bytes from there to that end.
    tail_start: u64,
    tail: Vec<u8>,
    zeros: Option<ZeroAhead>,
}

impl SegmentWriter for BlockWriter {
    fn submit(&mut self, buf: IoBuf, offset: u64) -> io::Result<()> {
        let carried: &[u8] = if offset == self.tail_start + self.tail.len() as u64 {
            &self.tail
        } else if offset.is_multiple_of(BLOCK as u64) {
            &[]
        } else {
            return Err(io::Error::other(format!("unaligned write at {offset}")));
        };
        let start = offset - carried.len() as u64;
        let data = buf.as_slice();
        let len = carried.len() + data.len();
        let mut aligned = IoBuf::aligned_zeroed(len.div_ceil(BLOCK) * BLOCK);
        let out = aligned.as_mut_slice();
        out[..carried.len()].copy_from_slice(carried);
        out[carried.len()..len].copy_from_slice(data);
        let last_block = len - len % BLOCK;
        self.tail = out[last_block..len].to_vec();
        self.tail_start = start + last_block as u64;
        if let Some(z) = self.zeros.as_mut() {
            z.cover(start + aligned.as_slice().len() as u64)?;
        }
        self.inner.submit(aligned, start)
    }

    fn wait_oldest(&mut self) -> io::Result<()> {
        self.inner.wait_oldest()
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn depth(&self) -> usize {
        self.inner.depth()
    }
}

#[cfg(target_os = "linux")]
mod uring {
    use std::collections::VecDeque;
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;

    use io_uring::{opcode, squeue, types, IoUring, Probe};

    use super::{IoBuf, SegmentWriter, UringMode, MAX_IN_FLIGHT};

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

    /// A write the kernel may still be working on. It owns its buffer, so
    /// the memory the kernel reads stays put until the write completes.
    struct InFlight {
        id: u64,
        buf: IoBuf,
        offset: u64,
        /// Completion results: the write, and the linked fsync if any.
        results: [Option<i32>; 2],
        expected: usize,
    }

    pub struct UringWriter {
        /// Set up by the first write, on the writer thread, so the ring can
        /// be single-issuer (the kernel then skips cross-thread locking and
        /// runs completions only when this thread waits for them).
        ring: Option<IoUring>,
        file: File,
        mode: UringMode,
        in_flight: VecDeque<InFlight>,
        /// Most writes kept in flight.
        depth: usize,
        next_id: u64,
    }

    impl UringWriter {
        pub fn new(file: File, mode: UringMode, depth: usize) -> io::Result<UringWriter> {
            let depth = match mode {
                UringMode::DsyncWrite | UringMode::LinkedFsync => depth.clamp(1, MAX_IN_FLIGHT),
                // The fdatasync is a plain call after the write completes:
                // nothing to overlap.
                UringMode::WriteThenFdatasync => 1,
            };
            Ok(UringWriter {
                ring: None,
                file,
                mode,
                in_flight: VecDeque::new(),
                depth,
                next_id: 0,
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

        /// Moves every completion available into its in-flight write.
        fn reap(&mut self) {
            let Some(ring) = self.ring.as_mut() else {
                return;
            };
            for cqe in ring.completion() {
                let (id, slot) = (cqe.user_data() >> 1, (cqe.user_data() & 1) as usize);
                if let Some(w) = self.in_flight.iter_mut().find(|w| w.id == id) {
                    w.results[slot] = Some(cqe.result());
                }
            }
        }

        /// Whether every completion of the oldest write has arrived.
        fn oldest_done(&self) -> bool {
            self.in_flight
                .front()
                .is_none_or(|w| w.results.iter().filter(|r| r.is_some()).count() >= w.expected)
        }

        fn wait_one(&mut self) -> io::Result<()> {
            match self.ring()?.submit_and_wait(1) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
                Err(e) => Err(e),
            }
        }

        /// Finishes a write the kernel did only part of, the plain way.
        fn complete(&self, w: &InFlight, result: i32) -> io::Result<()> {
            if result < 0 {
                return Err(io::Error::from_raw_os_error(-result));
            }
            let buf = w.buf.as_slice();
            let done = (result as usize).min(buf.len());
            self.file
                .write_all_at(&buf[done..], w.offset + done as u64)?;
            self.file.sync_data()
        }

        /// What a completed write's results mean.
        fn finish(&self, w: &InFlight) -> io::Result<()> {
            let len = w.buf.as_slice().len();
            let wrote = w.results[0].unwrap_or(-libc::EIO);
            match self.mode {
                UringMode::DsyncWrite => {
                    if wrote >= 0 && wrote as usize == len {
                        Ok(())
                    } else {
                        self.complete(w, wrote)
                    }
                }
                UringMode::LinkedFsync => {
                    let synced = w.results[1].unwrap_or(-libc::EIO);
                    // A failed fsync is final: retrying could report data
                    // durable that the kernel already dropped.
                    if synced < 0 && synced != -libc::ECANCELED {
                        return Err(io::Error::from_raw_os_error(-synced));
                    }
                    if wrote >= 0 && wrote as usize == len && synced >= 0 {
                        Ok(())
                    } else {
                        // A short write cancels the linked fsync: finish
                        // the write and the sync the plain way.
                        self.complete(w, wrote)
                    }
                }
                UringMode::WriteThenFdatasync => {
                    if wrote >= 0 && wrote as usize == len {
                        self.file.sync_data()
                    } else {
                        self.complete(w, wrote)
                    }
                }
            }
        }
    }

    impl SegmentWriter for UringWriter {
        fn submit(&mut self, buf: IoBuf, offset: u64) -> io::Result<()> {
            if self.in_flight.len() >= self.depth() {
                return Err(io::Error::other("too many writes in flight"));
            }
            let id = self.next_id;
            self.next_id += 1;
            let fd = types::Fd(self.file.as_raw_fd());
            let data = buf.as_slice();
            let write = |flags: i32| {
                opcode::Write::new(fd, data.as_ptr(), data.len() as u32)
                    .offset(offset)
                    .rw_flags(flags)
                    .build()
                    .user_data(id << 1)
            };
            let entries = match self.mode {
                UringMode::DsyncWrite => vec![write(libc::RWF_DSYNC)],
                UringMode::LinkedFsync => vec![
                    write(0).flags(squeue::Flags::IO_LINK),
                    opcode::Fsync::new(fd)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data((id << 1) | 1),
                ],
                UringMode::WriteThenFdatasync => vec![write(0)],
            };
            let ring = self.ring()?;
            {
                let mut sq = ring.submission();
                if sq.capacity() - sq.len() < entries.len() {
                    return Err(io::Error::other("io_uring submission queue full"));
                }
                for e in &entries {
                    // SAFETY: the entries point into `buf`'s heap storage,
                    // which moves into `self.in_flight` below and is
                    // dropped only after the kernel has posted every
                    // completion for this write (`wait_oldest`, and `Drop`
                    // waits for all writes still in flight).
                    unsafe { sq.push(e) }
                        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                }
            }
            self.in_flight.push_back(InFlight {
                id,
                buf,
                offset,
                results: [None, None],
                expected: entries.len(),
            });
            if let Err(e) = ring_submit(self.ring.as_mut()) {
                // Nothing submitted: the kernel holds no pointer into it.
                self.in_flight.pop_back();
                return Err(e);
            }
            Ok(())
        }

        fn wait_oldest(&mut self) -> io::Result<()> {
            loop {
                self.reap();
                if self.oldest_done() {
                    break;
                }
                self.wait_one()?;
            }
            match self.in_flight.pop_front() {
                Some(w) => self.finish(&w),
                None => Err(io::Error::other("no write in flight")),
            }
        }

        fn in_flight(&self) -> usize {
            self.in_flight.len()
        }

        fn depth(&self) -> usize {
            self.depth
        }
    }

    fn ring_submit(ring: Option<&mut IoUring>) -> io::Result<()> {
        let ring = ring.ok_or_else(|| io::Error::other("io_uring ring missing"))?;
        loop {
            match ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    impl Drop for UringWriter {
        fn drop(&mut self) {
            // The kernel may still read the buffers of writes in flight:
            // wait for every one before they are freed.
            let mut failures = 0;
            while failures < 100 {
                self.reap();
                if !self.in_flight.is_empty() && self.oldest_done() {
                    let _ = self.in_flight.pop_front();
                    continue;
                }
                if self.in_flight.is_empty() {
                    break;
                }
                if self.wait_one().is_err() {
                    failures += 1;
                }
            }
            // If waiting keeps failing, leak the buffers rather than free
            // memory the kernel might still read.
            for w in self.in_flight.drain(..) {
                std::mem::forget(w.buf);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod uring {
    use std::fs::File;
    use std::io;

    use super::{IoBuf, SegmentWriter, UringMode};

    pub fn probe() -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring exists only on Linux",
        ))
    }

    pub struct UringWriter;

    impl UringWriter {
        pub fn new(_: File, _: UringMode, _: usize) -> io::Result<UringWriter> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring exists only on Linux",
            ))
        }
    }

    impl SegmentWriter for UringWriter {
        fn submit(&mut self, _: IoBuf, _: u64) -> io::Result<()> {
            probe()
        }
        fn wait_oldest(&mut self) -> io::Result<()> {
            probe()
        }
        fn in_flight(&self) -> usize {
            0
        }
        fn depth(&self) -> usize {
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(direct: bool) -> WriterConfig {
        WriterConfig {
            direct,
            in_flight: MAX_IN_FLIGHT,
            zero_ahead: true,
        }
    }

    fn write_durable(w: &mut dyn SegmentWriter, data: &[u8], offset: u64) {
        w.submit(IoBuf::unaligned(data.to_vec()), offset).unwrap();
        w.wait_oldest().unwrap();
        assert_eq!(w.in_flight(), 0);
    }

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
                let mut w = open_writer(file, b, 0, config(direct), None).unwrap();
                write_durable(&mut *w, b"hello", 0);
                write_durable(&mut *w, b"world", 5);
                let big = vec![7u8; 5000];
                write_durable(&mut *w, &big, 10);
                let got = std::fs::read(&path).unwrap();
                assert_eq!(&got[..10], b"helloworld", "{b} direct {direct}");
                assert_eq!(&got[10..5010], &big[..], "{b} direct {direct}");
                assert!(got[5010..].iter().all(|&x| x == 0));
                // Two writes in flight at once where the backend allows it:
                // the second starts on a block boundary and carries nothing
                // of the first's last block.
                w.submit(IoBuf::unaligned(b"first".to_vec()), 5010).unwrap();
                if w.depth() > 1 {
                    w.submit(IoBuf::unaligned(b"second".to_vec()), 8192)
                        .unwrap();
                    assert_eq!(w.in_flight(), 2);
                } else {
                    w.wait_oldest().unwrap();
                    w.submit(IoBuf::unaligned(b"second".to_vec()), 8192)
                        .unwrap();
                }
                while w.in_flight() > 0 {
                    w.wait_oldest().unwrap();
                }
                // And a write continuing the second mid-block.
                write_durable(&mut *w, b"third", 8198);
                let got = std::fs::read(&path).unwrap();
                assert_eq!(&got[5010..5015], b"first", "{b} direct {direct}");
                assert!(got[5015..8192].iter().all(|&x| x == 0));
                assert_eq!(&got[8192..8203], b"secondthird", "{b} direct {direct}");
                drop(w);
                // A writer resuming mid-block carries the block's head along.
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap();
                let mut w = open_writer(file, b, 5015, config(direct), None).unwrap();
                write_durable(&mut *w, b"tail", 5015);
                let got = std::fs::read(&path).unwrap();
                assert_eq!(
                    &got[4096..5019],
                    &[&big[4086..], &b"first"[..], &b"tail"[..]].concat()[..],
                    "{b} direct {direct}"
                );
            }
        }
    }
}
