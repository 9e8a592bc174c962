//! The writer thread: group commit, pipelining, segment roll-over, release.
//!
//! Every append reaches this thread through one channel. The thread takes
//! the first waiting append, then every other one already queued (up to
//! the batch byte bound), writes them with one write call and makes them
//! durable with one fdatasync (or one `RWF_DSYNC` write), and only then
//! answers each of them. While that write runs, new appends queue up and
//! form the next batch, so the number of fsyncs per second stays flat as
//! writers are added while appends per second grow.
//!
//! A backend that keeps two writes in flight (io_uring in `DsyncWrite` or
//! `LinkedFsync` mode with `uring_in_flight: 2`) writes the appends waiting once a batch is
//! submitted at once, without waiting for that write to finish. That
//! second batch is *pipelined*: it starts at the next 4 KiB boundary with a
//! frame naming the batch before it (`FORMAT.md`). Batches are answered in
//! the order they were written, never the order the disk finished them.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::backend::{open_writer, IoBuf, Resolved, SegmentWriter, BLOCK};
use crate::error::{Error, Result};
use crate::record::{
    encode_frame, framed_len, payload_len, roll, segment_seed, Chain, Frame, FrameRef, Pipelined,
    Record, FLAG_PIPELINED,
};
use crate::segment::{create_preallocated, segment_file_name, sync_dir, SegmentName};
use crate::Options;

/// How long after a preparation failed for want of space it is tried again.
const PREPARE_RETRY: Duration = Duration::from_secs(1);

/// Who hears that an append is durable (or failed): a function called once,
/// on the notifier thread (so it must be quick). Dropped unanswered (the
/// writer thread gone), it hears that the log stopped.
pub(crate) struct Done(Option<Box<dyn FnOnce(Result<()>) + Send>>);

impl Done {
    pub(crate) fn new(then: impl FnOnce(Result<()>) + Send + 'static) -> Done {
        Done(Some(Box::new(then)))
    }

    pub(crate) fn send(mut self, r: Result<()>) {
        if let Some(f) = self.0.take() {
            f(r);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(Error::Stopped("the writer thread ended".into())));
        }
    }
}

/// Answers for the appends of one batch.
type Dones = Vec<Done>;

pub(crate) enum Command {
    Append {
        records: Vec<Record>,
        done: Done,
    },
    Release {
        index: u64,
        done: oneshot::Sender<Result<usize>>,
    },
}

/// The segment being appended to.
pub(crate) struct OpenSegment {
    pub name: SegmentName,
    pub writer: Box<dyn SegmentWriter>,
    /// Where the batch before the last one ended: with at most two writes
    /// in flight, everything before it is durable once a third is
    /// submitted.
    pub before_batch: u64,
    /// Where the last batch written began (0 before any).
    pub batch_start: u64,
    /// Where the last batch written ended: the next one goes here (or, if
    /// pipelined, at the next block boundary).
    pub offset: u64,
}

pub(crate) struct LogWriter {
    pub dir: PathBuf,
    pub opts: Options,
    pub backend: Resolved,
    pub segment: OpenSegment,
    /// Every segment on disk, oldest first (the open one last).
    pub segments: Vec<SegmentName>,
    /// Rolling checksum through the last frame written.
    pub rolling: u32,
    pub metadata: Record,
    pub hard_state: Option<Record>,
    pub last_index: u64,
    /// The next segment file, being preallocated in the background.
    pub prepared: Option<JoinHandle<Result<(PathBuf, std::fs::File)>>>,
    /// When that preparation started.
    pub prepare_tried: Instant,
    pub counters: Arc<Counters>,
}

/// The serving loop's bookkeeping.
struct Serving {
    notify: Option<std::sync::mpsc::Sender<Dones>>,
    /// Why the log stopped, once a write or fdatasync failed.
    failed: Option<String>,
    /// Answers of the batches in flight, oldest first, with what each
    /// wrote.
    in_flight: VecDeque<(Dones, Submitted)>,
}

/// A batch whose write is in flight.
struct Submitted {
    at: Instant,
    records: u64,
    bytes: u64,
}

impl Serving {
    /// Answers a durable batch (through the notifier thread if it runs).
    fn deliver(&mut self, mut dones: Dones) {
        if let Some(n) = self.notify.as_ref() {
            match n.send(dones) {
                Ok(()) => return,
                Err(unsent) => {
                    self.notify = None;
                    dones = unsent.0;
                }
            }
        }
        for done in dones {
            done.send(Ok(()));
        }
    }

    /// Fails a batch with `e` and stops the log.
    fn fail(&mut self, dones: Dones, e: Error) {
        let why = self.failed.get_or_insert_with(|| e.to_string()).clone();
        let mut first = Some(e);
        for done in dones {
            let err = first.take().unwrap_or_else(|| Error::Stopped(why.clone()));
            done.send(Err(err));
        }
    }
}

/// What the writer has done since the log was opened.
#[derive(Default)]
pub struct Counters {
    /// Batches written, each with one fdatasync.
    pub batches: AtomicU64,
    /// Records made durable.
    pub records: AtomicU64,
    /// Told of every batch made durable (the server's metrics).
    pub observer: OnceLock<BatchObserver>,
    /// The next segment could not be preallocated for want of space.
    pub space_short: std::sync::atomic::AtomicBool,
}

/// One batch made durable: what [`crate::Wal::observe_batches`]'s
/// observer is told.
#[derive(Debug, Clone, Copy)]
pub struct BatchDone {
    /// Records in the batch.
    pub records: u64,
    /// Bytes written (frames, including any padding to a block).
    pub bytes: u64,
    /// From the write's submission to its fdatasync's return.
    pub took: Duration,
}

/// A function told of each batch made durable, on the writer's thread
/// (so it must be quick).
pub type BatchObserver = Arc<dyn Fn(&BatchDone) + Send + Sync>;

/// What a batch's wait for durability reports: the backend's answer, or
/// the fault a test injected at `wal::fdatasync` after the real call (as a
/// disk that took the write and then failed the flush).
fn fdatasync_outcome(result: std::io::Result<()>) -> std::io::Result<()> {
    fail::fail_point!("wal::fdatasync", |arg| Err(crate::injected(arg)));
    result
}

impl LogWriter {
    pub fn run(mut self, rx: Receiver<Command>) {
        // Waking hundreds of waiting appenders takes longer than a fast
        // fdatasync, so a second thread delivers the answers while this
        // one goes on to write the next batch.
        let (notify, notifications) = std::sync::mpsc::channel::<Dones>();
        let notifier = std::thread::Builder::new()
            .name("wal-notify".into())
            .spawn(move || {
                for batch in notifications {
                    fail::fail_point!("wal::notify");
                    for done in batch {
                        done.send(Ok(()));
                    }
                }
            });
        let mut state = Serving {
            notify: Some(notify),
            failed: None,
            in_flight: VecDeque::new(),
        };
        self.serve(&rx, &mut state);
        // Answer whatever is still in flight before the answers' thread
        // goes away.
        while !state.in_flight.is_empty() {
            self.finish_oldest(&mut state);
        }
        drop(state);
        if let Ok(handle) = notifier {
            let _ = handle.join();
        }
        // No thread of this log outlives it: the next segment's
        // preparation finishes (its file is removed as a leftover on the
        // next open).
        if let Some(handle) = self.prepared.take() {
            let _ = handle.join();
        }
    }

    fn serve(&mut self, rx: &Receiver<Command>, state: &mut Serving) {
        let mut carry: Option<Command> = None;
        loop {
            let next = if let Some(c) = carry.take() {
                c
            } else if state.in_flight.is_empty() {
                match rx.recv() {
                    Ok(c) => c,
                    Err(_) => return,
                }
            } else if state.in_flight.len() < self.segment.writer.depth() && state.failed.is_none()
            {
                // Room for another write: appends already waiting go out
                // at once, pipelined behind the write in flight.
                match rx.try_recv() {
                    Ok(c) => c,
                    // Nothing waiting: the oldest write's answers come
                    // first.
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                        self.finish_oldest(state);
                        continue;
                    }
                }
            } else {
                self.finish_oldest(state);
                continue;
            };
            let (records, done) = match next {
                Command::Release { index, done } => {
                    while !state.in_flight.is_empty() {
                        self.finish_oldest(state);
                    }
                    let r = match &state.failed {
                        Some(why) => Err(Error::Stopped(why.clone())),
                        None => self.release(index),
                    };
                    let _ = done.send(r);
                    continue;
                }
                Command::Append { records, done } => (records, done),
            };
            let mut bytes: usize = records.iter().map(|r| framed_len(payload_len(r))).sum();
            let mut batch = vec![records];
            let mut dones = vec![done];
            while bytes < self.opts.max_batch_bytes {
                match rx.try_recv() {
                    Ok(Command::Append { records, done }) => {
                        bytes += records
                            .iter()
                            .map(|r| framed_len(payload_len(r)))
                            .sum::<usize>();
                        batch.push(records);
                        dones.push(done);
                    }
                    Ok(other) => {
                        carry = Some(other);
                        break;
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            // A batch that starts a new segment waits for every write in
            // flight: writes never overlap across segments.
            if self.must_roll(bytes, !state.in_flight.is_empty()) {
                while !state.in_flight.is_empty() {
                    self.finish_oldest(state);
                }
            }
            let result = match &state.failed {
                Some(why) => Err(Error::Stopped(why.clone())),
                None => {
                    self.submit_batch(batch.iter().flatten(), bytes, !state.in_flight.is_empty())
                }
            };
            match result {
                Ok(submitted) => state.in_flight.push_back((dones, submitted)),
                Err(e) => state.fail(dones, e),
            }
        }
    }

    /// Waits for the oldest write in flight and answers its appends.
    fn finish_oldest(&mut self, state: &mut Serving) {
        let Some((dones, submitted)) = state.in_flight.pop_front() else {
            return;
        };
        let result = fdatasync_outcome(self.segment.writer.wait_oldest());
        match (result, &state.failed) {
            (Ok(()), None) => {
                self.retry_prepare();
                if let Some(observe) = self.counters.observer.get() {
                    observe(&BatchDone {
                        records: submitted.records,
                        bytes: submitted.bytes,
                        took: submitted.at.elapsed(),
                    });
                }
                state.deliver(dones)
            }
            // After a failed write or fdatasync nothing later can be
            // trusted to be durable: refuse everything from now on.
            (Err(e), None) => {
                let path = &self.segment.name.path;
                state.fail(dones, Error::io(path, "write and fdatasync", e));
            }
            (_, Some(why)) => {
                let why = why.clone();
                state.fail(dones, Error::Stopped(why));
            }
        }
    }

    /// Whether a batch of `bytes` does not fit the rest of the open
    /// segment (a segment holding only its first frames takes any batch).
    fn must_roll(&self, bytes: usize, pipelined: bool) -> bool {
        let header_only = self.segment.offset <= self.header_len();
        let start = if pipelined {
            self.segment.offset.next_multiple_of(BLOCK as u64) + framed_len(24) as u64
        } else {
            self.segment.offset
        };
        start + bytes as u64 > self.opts.segment_size && !header_only
    }

    /// Encodes `records` as one batch and submits its write. `pipelined`:
    /// another write is in flight, so this batch starts on the next block
    /// boundary behind a frame naming the batch before it.
    fn submit_batch<'a>(
        &mut self,
        records: impl Iterator<Item = &'a Record> + Clone,
        bytes: usize,
        pipelined: bool,
    ) -> Result<Submitted> {
        let (head, batch_start, flags) = if self.must_roll(bytes, pipelined) {
            // The caller waited for every write in flight before a roll.
            if self.segment.writer.in_flight() > 0 {
                return Err(Error::Stopped(
                    "internal error: segment roll with writes in flight".into(),
                ));
            }
            let first_index = records
                .clone()
                .find_map(|r| match r {
                    Record::Entry { index, .. } => Some(*index),
                    _ => None,
                })
                .unwrap_or(self.last_index + 1);
            (self.roll(first_index)?, 0, 0)
        } else if pipelined {
            let head = vec![Frame::Pipelined(Pipelined {
                prev_start: self.segment.batch_start,
                prev_end: self.segment.offset,
                durable_end: self.segment.before_batch,
            })];
            let start = self.segment.offset.next_multiple_of(BLOCK as u64);
            (head, start, FLAG_PIPELINED)
        } else {
            (Vec::new(), self.segment.offset, 0)
        };
        let seed = segment_seed(self.segment.name.seq);
        let mut buf = Vec::with_capacity(bytes + 128);
        let mut rolling = self.rolling;
        let count = records.clone().count() as u64;
        let frames = head
            .iter()
            .map(Frame::as_ref)
            .chain(records.map(|r: &Record| FrameRef::Record(r)));
        for f in frames {
            let at = batch_start + buf.len() as u64;
            rolling = roll(
                rolling,
                encode_frame(f, seed, batch_start, at, flags, &mut buf),
            );
            match f {
                FrameRef::Record(Record::Entry { index, .. }) => self.last_index = *index,
                FrameRef::Record(r @ Record::HardState { .. }) => self.hard_state = Some(r.clone()),
                _ => {}
            }
        }
        let len = buf.len() as u64;
        let path = &self.segment.name.path;
        fail::fail_point!("wal::writer");
        fail::fail_point!("wal::write", |arg| Err(Error::io(
            path,
            "write",
            crate::injected(arg)
        )));
        let at = Instant::now();
        self.segment
            .writer
            .submit(IoBuf::unaligned(buf), batch_start)
            .map_err(|e| Error::io(path, "write", e))?;
        self.segment.before_batch = self.segment.offset;
        self.segment.batch_start = batch_start;
        self.segment.offset = batch_start + len;
        self.rolling = rolling;
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.records.fetch_add(count, Ordering::Relaxed);
        Ok(Submitted {
            at,
            records: count,
            bytes: len,
        })
    }

    /// Bytes of the frames every segment starts with.
    fn header_len(&self) -> u64 {
        let mut n = framed_len(12) + framed_len(16);
        if self.hard_state.is_some() {
            n += framed_len(24);
        }
        n as u64
    }

    /// Closes the open segment and starts the next one, whose name carries
    /// `first_index`. Returns the frames the new segment must start with
    /// (the chain record, the metadata and the latest hard state, so
    /// recovery can start at any segment); they are written in the same
    /// batch as the records that caused the roll.
    fn roll(&mut self, first_index: u64) -> Result<Vec<Frame>> {
        let seq = self.segment.name.seq + 1;
        let (tmp, file) = match self.prepared.take().map(|h| h.join()) {
            Some(Ok(Ok(prepared))) => prepared,
            // The background preparation failed or died: do it here.
            _ => {
                let tmp = self.dir.join(format!("{}.tmp", segment_file_name(seq, 0)));
                let _ = std::fs::remove_file(&tmp);
                let file = create_preallocated(&tmp, self.opts.segment_size)?;
                (tmp, file)
            }
        };
        let path = self.dir.join(segment_file_name(seq, first_index));
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, "rename segment", e))?;
        sync_dir(&self.dir)?;
        let name = SegmentName {
            seq,
            first_index,
            path,
        };
        let mut frames = vec![
            Frame::Chain(Chain {
                seq,
                prev_rolling: self.rolling,
            }),
            Frame::Record(self.metadata.clone()),
        ];
        if let Some(hs) = &self.hard_state {
            frames.push(Frame::Record(hs.clone()));
        }
        self.segments.push(name.clone());
        let journal = self.opts.power_cut_journal.then(|| name.path.clone());
        self.segment = OpenSegment {
            name,
            writer: open_writer(
                file,
                self.backend,
                0,
                self.opts.writer_config(),
                journal.as_deref(),
            )
            .map_err(|e| Error::io(&self.dir, "io_uring setup", e))?,
            before_batch: 0,
            batch_start: 0,
            offset: 0,
        };
        self.prepare_next();
        Ok(frames)
    }

    /// Starts preallocating the segment after the open one. A failure for
    /// want of space is reported through [`crate::Wal::space_short`] at
    /// once (the open segment still has room) and the preparation is tried
    /// again later ([`LogWriter::retry_prepare`]).
    pub fn prepare_next(&mut self) {
        let seq = self.segment.name.seq + 1;
        let tmp = self.dir.join(format!("{}.tmp", segment_file_name(seq, 0)));
        let size = self.opts.segment_size;
        let counters = self.counters.clone();
        self.prepare_tried = Instant::now();
        self.prepared = Some(std::thread::spawn(move || {
            let _ = std::fs::remove_file(&tmp);
            let result = create_preallocated(&tmp, size);
            let short = matches!(&result, Err(Error::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)));
            counters.space_short.store(short, Ordering::Release);
            Ok((tmp, result?))
        }));
    }

    /// Prepares the next segment again if the last try failed and a
    /// second has passed (space may have been freed since).
    fn retry_prepare(&mut self) {
        let failed = self
            .prepared
            .as_ref()
            .is_some_and(|h| h.is_finished() && self.counters.space_short.load(Ordering::Acquire));
        if failed && self.prepare_tried.elapsed() >= PREPARE_RETRY {
            if let Some(h) = self.prepared.take() {
                let _ = h.join();
            }
            self.prepare_next();
        }
    }

    /// Deletes every segment before the last one whose first index is at
    /// or below `index` (the open segment is never deleted).
    fn release(&mut self, index: u64) -> Result<usize> {
        let keep_from = self
            .segments
            .iter()
            .rposition(|s| s.first_index <= index)
            .unwrap_or(0);
        let doomed: Vec<SegmentName> = self.segments.drain(..keep_from).collect();
        for s in &doomed {
            std::fs::remove_file(&s.path).map_err(|e| Error::io(&s.path, "remove segment", e))?;
            if self.opts.power_cut_journal {
                let _ = std::fs::remove_file(crate::journal::journal_path(&s.path));
            }
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }
}
