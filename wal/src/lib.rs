//! # wal: the write-ahead log of kvserver
//!
//! A directory of segment files holding typed, checksummed records. The
//! server acknowledges a write only after raft has made it durable here, so
//! this log's fsync rate bounds the cluster's write rate; concurrent
//! appends therefore share fsyncs (group commit, see [`writer`]).
//!
//! ## Invariants
//! - **An append resolves only after its records are fdatasynced.** A
//!   failed write or fdatasync stops the log: that append and every later
//!   one fail, and nothing unsynced is ever reported durable.
//! - **Recovery returns a prefix of what was appended.** Every record is
//!   checksummed with a per-segment seed; each segment starts with a chain
//!   record carrying the rolling checksum of everything before it, so a
//!   segment cannot be dropped, swapped or reordered unnoticed.
//! - **Only a torn tail is cut silently.** At most two write batches are
//!   in flight (the second only with io_uring, *pipelined* behind the
//!   first), and everything before the older one is durable. Damage that
//!   only those batches can explain is a crash: it is cut off (and zeroed)
//!   so appending continues after the last good record. Damage followed by
//!   intact records written after it was durable is corruption, reported
//!   with its segment and offset (or cut by an explicit repair).
//! - **Answers come in log order.** A batch is answered only after every
//!   batch before it, whatever order the disk finishes them in.
//! - The crate knows nothing of raft: entries are opaque bytes with an index
//!   and a term; the raft glue lives in the server.
//!
//! `FORMAT.md` beside this crate describes the format.
//!
//! ## Failpoints
//! Built with the `failpoints` feature (fail-rs), a test can inject at
//! `wal::write` and `wal::fdatasync` (`return(EIO)`, `return(ENOSPC)`: a
//! batch's write or its fdatasync fails, after the real call for the
//! latter), `wal::fallocate` (the next segment's preallocation fails), and
//! `wal::writer`, `wal::notify` (`panic`: the writer or notifier thread
//! panics). Without the feature they compile to nothing.

mod backend;
mod error;
pub mod journal;
mod record;
mod recover;
mod segment;
pub mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

pub use error::{Error, Result};
pub use record::{Chain, Frame, Pipelined, Record, MAX_PAYLOAD};
pub use recover::{Recovered, Repair, SnapshotRecord};
pub use segment::{segment_file_name, SegmentEnd};

pub use backend::{Backend, Resolved, UringMode};
use record::{encode_frame, roll, segment_seed, FrameRef};
use segment::{create_preallocated, list_segments, sync_dir};
pub use writer::{BatchDone, BatchObserver};
use writer::{Command, LogWriter, OpenSegment};

#[cfg(feature = "failpoints")]
/// The error a failpoint injects (`return(ENOSPC)`, `return(EIO)`; EIO
/// when unnamed).
pub(crate) fn injected(arg: Option<String>) -> std::io::Error {
    let code = match arg.as_deref() {
        Some("ENOSPC") => libc::ENOSPC,
        Some("EDQUOT") => libc::EDQUOT,
        _ => libc::EIO,
    };
    std::io::Error::from_raw_os_error(code)
}

/// How to open or create a log.
#[derive(Debug, Clone)]
pub struct Options {
    /// Size each segment is preallocated to. Default 64 MiB.
    pub segment_size: u64,
    /// Bytes of records one group commit gathers at most. Default 4 MiB.
    pub max_batch_bytes: usize,
    /// On open, cut the log at the first corrupt record (dropping it,
    /// everything after it and every later segment) instead of failing.
    pub repair: bool,
    /// io_uring where the kernel allows it (the default), or forced.
    pub backend: Backend,
    /// How the io_uring backend makes a batch durable. Default: one write
    /// flagged `RWF_DSYNC` (BENCHMARKS.md compares the modes).
    pub uring_mode: UringMode,
    /// Writes the io_uring backend keeps in flight at once in the modes
    /// that can overlap them (`DsyncWrite`, `LinkedFsync`): 1, or 2 to
    /// write appends that wait while a write is in flight at once, as a
    /// pipelined batch (`FORMAT.md`). Default 1: on the 2-core machine
    /// measured, two in flight won with 16 async appenders and lost with
    /// 256 threads (BENCHMARKS.md).
    pub uring_in_flight: usize,
    /// With direct I/O, write zeros over the next MiB of a segment before
    /// appends reach it, so appends overwrite written blocks and their
    /// fdatasync is a disk cache flush rather than a journal commit of a
    /// block allocation (one commit per MiB instead of one per batch).
    /// Default true.
    pub zero_ahead: bool,
    /// Write segments with O_DIRECT in whole 4 KiB blocks where the
    /// filesystem allows it (faster to make durable on the disks measured;
    /// see BENCHMARKS.md). Default true.
    pub direct_io: bool,
    /// Tests only: write with plain buffered writes and record, before
    /// each, the bytes it overwrites in `<segment>.unsynced` until it is
    /// durable ([`journal`]), so that a test can simulate a power cut
    /// after killing the process. Default false.
    pub power_cut_journal: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size: 64 << 20,
            max_batch_bytes: 4 << 20,
            repair: false,
            backend: Backend::Auto,
            uring_mode: UringMode::DsyncWrite,
            uring_in_flight: 1,
            zero_ahead: true,
            direct_io: true,
            power_cut_journal: false,
        }
    }
}

impl Options {
    pub(crate) fn writer_config(&self) -> backend::WriterConfig {
        backend::WriterConfig {
            direct: self.direct_io,
            in_flight: self.uring_in_flight,
            zero_ahead: self.zero_ahead,
        }
    }
}

/// Which member and cluster a log belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub member_id: u64,
    pub cluster_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

/// The snapshot recovery starts from (index 0: the beginning).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotMarker {
    pub index: u64,
    pub term: u64,
}

/// An open log. Appends from any number of threads or tasks are group
/// committed by one writer thread.
pub struct Wal {
    dir: PathBuf,
    backend: Resolved,
    counters: std::sync::Arc<writer::Counters>,
    tx: Mutex<Option<Sender<Command>>>,
    thread: Option<JoinHandle<()>>,
}

/// Resolves once an append is durable (or has failed).
pub struct Durable<T> {
    rx: Option<oneshot::Receiver<Result<T>>>,
}

impl<T> Future for Durable<T> {
    type Output = Result<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(Err(Error::Stopped("the log is closed".into())));
        };
        match Pin::new(rx).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(_)) => {
                Poll::Ready(Err(Error::Stopped("the writer thread ended".into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Durable<T> {
    /// Waits on the current thread (outside an async runtime).
    pub fn wait(self) -> Result<T> {
        match self.rx {
            None => Err(Error::Stopped("the log is closed".into())),
            Some(rx) => rx
                .blocking_recv()
                .unwrap_or_else(|_| Err(Error::Stopped("the writer thread ended".into()))),
        }
    }
}

/// Chooses the backend and says which in one log line.
fn resolve_backend(opts: &Options, dir: &Path) -> Result<Resolved> {
    let b = backend::resolve(opts.backend, opts.uring_mode)
        .map_err(|e| Error::io(dir, "io_uring probe", e))?;
    tracing::info!("wal {}: writing with {b}", dir.display());
    Ok(b)
}

fn check_records(records: &[Record]) -> Result<()> {
    for r in records {
        let len = record::payload_len(r);
        if len > MAX_PAYLOAD {
            return Err(Error::RecordTooLarge {
                len,
                max: MAX_PAYLOAD,
            });
        }
    }
    Ok(())
}

impl Wal {
    /// Creates a new log in `dir` (created if missing; must hold no log).
    pub fn create(dir: impl AsRef<Path>, metadata: Metadata, opts: Options) -> Result<Wal> {
        let dir = dir.as_ref().to_path_buf();
        segment::create_dir_synced(&dir)?;
        if !list_segments(&dir)?.0.is_empty() {
            return Err(Error::AlreadyExists { dir });
        }
        let name = segment_file_name(0, 0);
        let tmp = dir.join(format!("{name}.tmp"));
        let path = dir.join(&name);
        let backend = resolve_backend(&opts, &dir)?;
        let file = create_preallocated(&tmp, opts.segment_size)?;
        let meta_record = Record::Metadata {
            member_id: metadata.member_id,
            cluster_id: metadata.cluster_id,
        };
        let seed = segment_seed(0);
        let mut buf = Vec::new();
        let mut rolling = 0;
        let chain = Chain {
            seq: 0,
            prev_rolling: 0,
        };
        rolling = roll(
            rolling,
            encode_frame(FrameRef::Chain(chain), seed, 0, 0, 0, &mut buf),
        );
        let at = buf.len() as u64;
        rolling = roll(
            rolling,
            encode_frame(FrameRef::Record(&meta_record), seed, 0, at, 0, &mut buf),
        );
        // The first frames are written here with a plain write: an io_uring
        // ring belongs to the writer thread that will use it.
        {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&buf, 0)
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::io(&tmp, "write and fdatasync", e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, "rename segment", e))?;
        sync_dir(&dir)?;
        let seg_writer = backend::open_writer(
            file,
            backend,
            buf.len() as u64,
            opts.writer_config(),
            opts.power_cut_journal.then_some(path.as_path()),
        )
        .map_err(|e| Error::io(&path, "io_uring setup", e))?;
        let writer = LogWriter {
            dir: dir.clone(),
            opts,
            backend,
            segment: OpenSegment {
                name: segment::SegmentName {
                    seq: 0,
                    first_index: 0,
                    path: path.clone(),
                },
                writer: seg_writer,
                before_batch: buf.len() as u64,
                batch_start: 0,
                offset: buf.len() as u64,
            },
            segments: vec![segment::SegmentName {
                seq: 0,
                first_index: 0,
                path,
            }],
            rolling,
            metadata: meta_record,
            hard_state: None,
            last_index: 0,
            prepared: None,
            prepare_tried: std::time::Instant::now(),
            counters: Default::default(),
        };
        Wal::start(dir, writer)
    }

    /// Opens the log in `dir`, recovering from `snapshot`: validates every
    /// record from the segment holding the snapshot on, and returns the
    /// metadata, the latest hard state, the latest snapshot record at or
    /// after the marker, and the entries after that snapshot.
    pub fn open(
        dir: impl AsRef<Path>,
        snapshot: SnapshotMarker,
        opts: Options,
    ) -> Result<(Wal, Recovered)> {
        let dir = dir.as_ref().to_path_buf();
        let backend = resolve_backend(&opts, &dir)?;
        let (recovered, resume) = recover::recover(&dir, snapshot, &opts)?;
        let config = opts.writer_config();
        let journal = opts.power_cut_journal;
        let last = resume.segments[resume.segments.len() - 1].clone();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&last.path)
            .map_err(|e| Error::io(&last.path, "open", e))?;
        let writer = LogWriter {
            dir: dir.clone(),
            opts,
            backend,
            segment: OpenSegment {
                writer: backend::open_writer(
                    file,
                    backend,
                    resume.offset,
                    config,
                    journal.then_some(last.path.as_path()),
                )
                .map_err(|e| Error::io(&dir, "io_uring setup", e))?,
                name: last,
                before_batch: resume.offset,
                batch_start: 0,
                offset: resume.offset,
            },
            segments: resume.segments,
            rolling: resume.rolling,
            metadata: resume.metadata,
            hard_state: resume.hard_state,
            last_index: resume.last_index,
            prepared: None,
            prepare_tried: std::time::Instant::now(),
            counters: Default::default(),
        };
        Ok((Wal::start(dir, writer)?, recovered))
    }

    fn start(dir: PathBuf, mut writer: LogWriter) -> Result<Wal> {
        let backend = writer.backend;
        let counters = writer.counters.clone();
        writer.prepare_next();
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx))
            .ok();
        Ok(Wal {
            dir,
            backend,
            counters,
            tx: Mutex::new(Some(tx)),
            thread,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// (batches written, records made durable) since the log was opened;
    /// each batch is one fdatasync.
    pub fn counters(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.counters.batches.load(Relaxed),
            self.counters.records.load(Relaxed),
        )
    }

    /// Calls `observer` for every batch made durable from now on, on the
    /// writer's thread (the server's metrics); only the first observer set
    /// is kept.
    pub fn observe_batches(&self, observer: BatchObserver) {
        let _ = self.counters.observer.set(observer);
    }

    /// Whether the next segment could not be preallocated for want of
    /// disk space: appends continue in the open segment, but the log
    /// stops when it fills (the server raises NOSPACE and takes no more
    /// writes). Cleared once a later try succeeds.
    pub fn space_short(&self) -> bool {
        self.counters
            .space_short
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The backend this log writes with.
    pub fn backend(&self) -> Resolved {
        self.backend
    }

    fn send(&self, cmd: Command) {
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            // A send fails only when the writer thread is gone; the caller's
            // receiver then reports it.
            let _ = tx.send(cmd);
        }
    }

    /// Appends records; the future resolves once they are durable (a
    /// closed log drops the command, and with it the answer: the future
    /// then reports the log stopped).
    pub fn append(&self, records: Vec<Record>) -> Durable<()> {
        let (done, rx) = oneshot::channel();
        self.append_then(records, move |r| {
            let _ = done.send(r);
        });
        Durable { rx: Some(rx) }
    }

    /// Appends records and calls `then` once they are durable or the
    /// append failed, in the order appends were made. `then` runs on the
    /// log's notifier thread (or on the caller's, when the records are
    /// refused at once or the log is closed), so it must be quick: send a
    /// message, wake a thread.
    pub fn append_then(
        &self,
        records: Vec<Record>,
        then: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        let done = writer::Done::new(then);
        if let Err(e) = check_records(&records) {
            done.send(Err(e));
        } else {
            self.send(Command::Append { records, done });
        }
    }

    /// Deletes the segments entirely below `index` (keeping the one that
    /// holds it). Returns how many were deleted once the directory is
    /// fsynced.
    pub fn release_to(&self, index: u64) -> Durable<usize> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Release { index, done });
        Durable { rx: Some(rx) }
    }

    /// Stops the writer after the appends already submitted.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One frame of a segment as [`dump`] found it.
#[derive(Debug, Clone)]
pub struct DumpedFrame {
    pub offset: u64,
    pub crc: u32,
    pub frame: Frame,
}

/// One segment as [`dump`] found it: every intact frame with its position,
/// and how the data ends (clean, a torn tail, or corruption, with offset).
#[derive(Debug, Clone)]
pub struct SegmentDump {
    pub path: PathBuf,
    pub seq: u64,
    pub first_index: u64,
    pub frames: Vec<DumpedFrame>,
    pub end: SegmentEnd,
}

/// Walks every segment in `dir` without changing anything (for `kvtool wal
/// dump`). A damaged frame ends its segment's list; `end` says where and
/// whether it looks torn or corrupt.
pub fn dump(dir: impl AsRef<Path>) -> Result<Vec<SegmentDump>> {
    let (segs, _) = list_segments(dir.as_ref())?;
    let mut out = Vec::new();
    for s in segs {
        let buf = std::fs::read(&s.path).map_err(|e| Error::io(&s.path, "read", e))?;
        let sc = segment::scan(&buf, s.seq);
        out.push(SegmentDump {
            path: s.path,
            seq: s.seq,
            first_index: s.first_index,
            frames: sc
                .frames
                .into_iter()
                .map(|f| DumpedFrame {
                    offset: f.offset,
                    crc: f.crc,
                    frame: f.frame,
                })
                .collect(),
            end: sc.end,
        });
    }
    Ok(out)
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}
