//! The writer thread: group commit, segment roll-over, release.
//!
//! Every append reaches this thread through one channel. The thread takes
//! the first waiting append, then every other one already queued (up to
//! the batch byte bound), writes them with one write call and makes them
//! durable with one fdatasync, and only then answers each of them. While
//! that fdatasync runs, new appends queue up and form the next batch, so
//! the number of fsyncs per second stays flat as writers are added while
//! appends per second grow.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::backend::{open_writer, Resolved, SegmentWriter};
use crate::error::{Error, Result};
use crate::record::{
    encode_frame, framed_len, payload_len, roll, segment_seed, Chain, Frame, FrameRef, Record,
};
use crate::segment::{create_preallocated, segment_file_name, sync_dir, SegmentName};
use crate::Options;

pub(crate) enum Command {
    Append {
        records: Vec<Record>,
        done: oneshot::Sender<Result<()>>,
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
    /// Where the next batch goes.
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
    pub counters: Arc<Counters>,
}

/// What the writer has done since the log was opened.
#[derive(Debug, Default)]
pub struct Counters {
    /// Batches written, each with one fdatasync.
    pub batches: AtomicU64,
    /// Records made durable.
    pub records: AtomicU64,
}

impl LogWriter {
    pub fn run(mut self, rx: Receiver<Command>) {
        // Waking hundreds of waiting appenders takes longer than a fast
        // fdatasync, so a second thread delivers the answers while this
        // one goes on to write the next batch.
        let (notify, notifications) =
            std::sync::mpsc::channel::<Vec<oneshot::Sender<Result<()>>>>();
        let notifier = std::thread::Builder::new()
            .name("wal-notify".into())
            .spawn(move || {
                for batch in notifications {
                    for done in batch {
                        let _ = done.send(Ok(()));
                    }
                }
            });
        let mut notify = Some(notify);
        self.serve(rx, &mut notify);
        drop(notify);
        if let Ok(handle) = notifier {
            let _ = handle.join();
        }
    }

    fn serve(
        &mut self,
        rx: Receiver<Command>,
        notify: &mut Option<std::sync::mpsc::Sender<Vec<oneshot::Sender<Result<()>>>>>,
    ) {
        let mut carry: Option<Command> = None;
        let mut failed: Option<String> = None;
        loop {
            let first = match carry.take() {
                Some(c) => c,
                None => match rx.recv() {
                    Ok(c) => c,
                    Err(_) => return,
                },
            };
            let (records, done) = match first {
                Command::Release { index, done } => {
                    let r = match &failed {
                        Some(why) => Err(Error::Stopped(why.clone())),
                        None => self.release(index),
                    };
                    let _ = done.send(r);
                    continue;
                }
                Command::Append { records, done } => (records, done),
            };
            let mut bytes: usize = records.iter().map(|r| framed_len(payload_len(r))).sum();
            let mut batch = vec![(records, done)];
            while bytes < self.opts.max_batch_bytes {
                match rx.try_recv() {
                    Ok(Command::Append { records, done }) => {
                        bytes += records
                            .iter()
                            .map(|r| framed_len(payload_len(r)))
                            .sum::<usize>();
                        batch.push((records, done));
                    }
                    Ok(other) => {
                        carry = Some(other);
                        break;
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let result = match &failed {
                Some(why) => Err(Error::Stopped(why.clone())),
                None => self.write_batch(batch.iter().flat_map(|(r, _)| r.iter()), bytes),
            };
            match result {
                Ok(()) => {
                    let mut dones: Vec<_> = batch.into_iter().map(|(_, done)| done).collect();
                    if let Some(n) = notify.as_ref() {
                        match n.send(dones) {
                            Ok(()) => dones = Vec::new(),
                            Err(unsent) => {
                                *notify = None;
                                dones = unsent.0;
                            }
                        }
                    }
                    // Without a notifier thread, answer here.
                    for done in dones {
                        let _ = done.send(Ok(()));
                    }
                }
                Err(e) => {
                    // After a failed write or fdatasync nothing later can be
                    // trusted to be durable: refuse everything from now on.
                    let why = failed.get_or_insert_with(|| e.to_string()).clone();
                    let mut first = Some(e);
                    for (_, done) in batch {
                        let err = first.take().unwrap_or_else(|| Error::Stopped(why.clone()));
                        let _ = done.send(Err(err));
                    }
                }
            }
        }
    }

    fn write_batch<'a>(
        &mut self,
        records: impl Iterator<Item = &'a Record> + Clone,
        bytes: usize,
    ) -> Result<()> {
        let mut head = Vec::new();
        let header_only = self.segment.offset <= self.header_len();
        if self.segment.offset + bytes as u64 > self.opts.segment_size && !header_only {
            let first_index = records
                .clone()
                .find_map(|r| match r {
                    Record::Entry { index, .. } => Some(*index),
                    _ => None,
                })
                .unwrap_or(self.last_index + 1);
            head = self.roll(first_index)?;
        }
        let seed = segment_seed(self.segment.name.seq);
        let batch_start = self.segment.offset;
        let mut buf = Vec::with_capacity(bytes + 128);
        let mut rolling = self.rolling;
        let head_frames = head.iter().map(|c| match c {
            Frame::Chain(chain) => FrameRef::Chain(*chain),
            Frame::Record(r) => FrameRef::Record(r),
        });
        let frames: Vec<FrameRef<'_>> = head_frames
            .chain(records.map(|r: &Record| FrameRef::Record(r)))
            .collect();
        let count = frames.len() as u64;
        for f in frames {
            let at = batch_start + buf.len() as u64;
            rolling = roll(rolling, encode_frame(f, seed, batch_start, at, &mut buf));
            match f {
                FrameRef::Record(Record::Entry { index, .. }) => self.last_index = *index,
                FrameRef::Record(r @ Record::HardState { .. }) => self.hard_state = Some(r.clone()),
                _ => {}
            }
        }
        let path = &self.segment.name.path;
        self.segment
            .writer
            .write_durable(&buf, batch_start)
            .map_err(|e| Error::io(path, "write and fdatasync", e))?;
        self.segment.offset += buf.len() as u64;
        self.rolling = rolling;
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.records.fetch_add(count, Ordering::Relaxed);
        Ok(())
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
        self.segment = OpenSegment {
            name,
            writer: open_writer(file, self.backend, 0, self.opts.direct_io)
                .map_err(|e| Error::io(&self.dir, "io_uring setup", e))?,
            offset: 0,
        };
        self.prepare_next();
        Ok(frames)
    }

    /// Starts preallocating the segment after the open one.
    pub fn prepare_next(&mut self) {
        let seq = self.segment.name.seq + 1;
        let tmp = self.dir.join(format!("{}.tmp", segment_file_name(seq, 0)));
        let size = self.opts.segment_size;
        self.prepared = Some(std::thread::spawn(move || {
            let _ = std::fs::remove_file(&tmp);
            let file = create_preallocated(&tmp, size)?;
            Ok((tmp, file))
        }));
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
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }
}
