//! Opening an existing log: validate every segment from the snapshot on,
//! rebuild the entries, hard state and metadata, cut a torn tail, and hand
//! the writer its position.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::record::{roll, Frame, Record};
use crate::segment::{
    list_segments, remove_leftovers, scan_each, sync_dir, SegmentEnd, SegmentName,
};
use crate::{Entry, HardState, Metadata, Options, SnapshotMarker};

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub metadata: Metadata,
    /// The latest hard state, if any was written.
    pub hard_state: Option<HardState>,
    /// The latest snapshot record at or after the marker asked for: the
    /// marker's own, or a later one (a snapshot received from a leader, or
    /// taken after the marker was last written). Entries start after it.
    pub snapshot: Option<SnapshotRecord>,
    /// Entries after the latest snapshot, in order; where a later entry
    /// reused an index, it replaced the earlier one and everything after it.
    pub entries: Vec<Entry>,
    /// Where a torn tail (a record cut short by a crash) was cut off.
    pub torn_tail: Option<(PathBuf, u64)>,
    /// What an explicit repair dropped.
    pub repaired: Option<Repair>,
}

/// A snapshot record as recovery found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub index: u64,
    pub term: u64,
    /// The membership at the snapshot (opaque to this crate).
    pub conf_state: Vec<u8>,
}

/// What `Options::repair` dropped at a corrupt record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub segment: PathBuf,
    pub offset: u64,
    pub reason: String,
    /// Bytes of data dropped from that segment.
    pub dropped_bytes: u64,
    /// Later segments deleted whole.
    pub dropped_segments: usize,
}

/// Where the writer resumes.
pub(crate) struct Resume {
    pub segments: Vec<SegmentName>,
    pub offset: u64,
    pub rolling: u32,
    pub hard_state: Option<Record>,
    pub metadata: Record,
    pub last_index: u64,
}

/// Overwrites `path` with zeros from `from` to its end, then fdatasyncs,
/// so nothing of a cut-off tail can be read back as data later.
fn zero_tail(path: &Path, from: u64) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, "open", e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(path, "stat", e))?
        .len();
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < len {
        let n = ((len - at) as usize).min(zeros.len());
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| Error::io(path, "zero tail", e))?;
        at += n as u64;
    }
    file.sync_data()
        .map_err(|e| Error::io(path, "fdatasync", e))
}

pub(crate) fn recover(
    dir: &Path,
    snap: SnapshotMarker,
    opts: &Options,
) -> Result<(Recovered, Resume)> {
    remove_leftovers(dir)?;
    let (mut segs, others) = list_segments(dir)?;
    if segs.is_empty() {
        return Err(Error::NoSegments {
            dir: dir.to_path_buf(),
            others,
        });
    }
    for w in segs.windows(2) {
        if w[1].seq != w[0].seq + 1 {
            return Err(Error::MissingSegment {
                dir: dir.to_path_buf(),
                before: w[0].seq,
                missing: w[0].seq + 1,
            });
        }
    }
    let not_found = || Error::SnapshotNotFound {
        dir: dir.to_path_buf(),
        index: snap.index,
        term: snap.term,
    };
    let start = segs
        .iter()
        .rposition(|s| s.first_index <= snap.index)
        .ok_or_else(not_found)?;

    let mut replay = Replay {
        dir,
        marker: snap,
        metadata: None,
        hard_state: None,
        entries: Vec::new(),
        last_index: 0,
        snapshot_found: snap.index == 0,
        base: snap.index,
        latest_snapshot: None,
    };
    let mut rolling: Option<u32> = None;
    let mut torn_tail = None;
    let mut repaired = None;
    let mut resume_offset = 0;
    let mut i = start;
    while i < segs.len() {
        let seg = segs[i].clone();
        let is_last = i + 1 == segs.len();
        let map = map_segment(&seg.path)?;
        let buf: &[u8] = map.as_deref().unwrap_or(&[]);
        let corrupt = |offset: u64, reason: String| Error::Corrupt {
            segment: seg.path.clone(),
            offset,
            reason,
        };
        // Frames are taken one at a time as they are decoded (a segment's
        // records are never all in memory at once); the first must be the
        // segment's chain record, continuing the checksum chain.
        let mut frames = 0usize;
        let mut failed: Option<Error> = None;
        let mut r = 0u32;
        let end = scan_each(buf, seg.seq, |f| {
            if failed.is_some() {
                return;
            }
            frames += 1;
            if frames == 1 {
                match &f.frame {
                    Frame::Chain(c) if c.seq == seg.seq => {
                        if rolling.is_some_and(|prev| prev != c.prev_rolling) {
                            failed = Some(Error::ChainBroken {
                                segment: seg.path.clone(),
                            });
                            return;
                        }
                        r = c.prev_rolling;
                    }
                    _ => {
                        failed = Some(corrupt(
                            0,
                            "segment does not start with its chain record".into(),
                        ));
                        return;
                    }
                }
            }
            r = roll(r, f.crc);
            if let Frame::Record(rec) = f.frame {
                if let Err(e) = replay.take(rec, &seg.path) {
                    failed = Some(e);
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }

        // A last segment with no intact frame at all was being created when
        // the process died (its first batch never became durable).
        if frames == 0 && is_last && i > start && !matches!(end, SegmentEnd::Corrupt { .. }) {
            std::fs::remove_file(&seg.path).map_err(|e| Error::io(&seg.path, "remove", e))?;
            sync_dir(dir)?;
            segs.pop();
            // The previous segment ended clean (it was not the last one),
            // so `resume_offset` already points at the end of its data.
            break;
        }
        if frames == 0 {
            return Err(corrupt(
                0,
                match &end {
                    SegmentEnd::Torn { reason, .. } | SegmentEnd::Corrupt { reason, .. } => {
                        reason.clone()
                    }
                    SegmentEnd::Clean { .. } => "empty segment".into(),
                },
            ));
        }
        rolling = Some(r);
        // What a repair drops, measured (only when one will run) before
        // anything is written to the file: the mapping is let go first.
        let repairs = match end {
            SegmentEnd::Clean { .. } => false,
            SegmentEnd::Torn { .. } if is_last => false,
            _ => opts.repair,
        };
        let data_end = if repairs { last_nonzero(buf) } else { 0 };
        drop(map);
        match end {
            SegmentEnd::Clean { offset } => resume_offset = offset,
            SegmentEnd::Torn { offset, .. } if is_last => {
                zero_tail(&seg.path, offset)?;
                torn_tail = Some((seg.path.clone(), offset));
                resume_offset = offset;
            }
            SegmentEnd::Torn { offset, reason } | SegmentEnd::Corrupt { offset, reason } => {
                if !opts.repair {
                    return Err(corrupt(offset, reason));
                }
                let later: Vec<SegmentName> = segs.drain(i + 1..).collect();
                for s in &later {
                    std::fs::remove_file(&s.path).map_err(|e| Error::io(&s.path, "remove", e))?;
                }
                zero_tail(&seg.path, offset)?;
                sync_dir(dir)?;
                let dropped_bytes = data_end.saturating_sub(offset);
                repaired = Some(Repair {
                    segment: seg.path.clone(),
                    offset,
                    reason,
                    dropped_bytes,
                    dropped_segments: later.len(),
                });
                resume_offset = offset;
                break;
            }
        }
        i += 1;
    }
    let Replay {
        metadata,
        hard_state,
        entries,
        last_index,
        snapshot_found,
        latest_snapshot,
        ..
    } = replay;
    if !snapshot_found {
        return Err(not_found());
    }
    let metadata = metadata.ok_or_else(|| Error::Corrupt {
        segment: segs[start].path.clone(),
        offset: 0,
        reason: "no metadata record".into(),
    })?;
    let resume = Resume {
        segments: segs,
        offset: resume_offset,
        rolling: rolling.unwrap_or(0),
        hard_state: hard_state.map(|h| Record::HardState {
            term: h.term,
            vote: h.vote,
            commit: h.commit,
        }),
        metadata: Record::Metadata {
            member_id: metadata.member_id,
            cluster_id: metadata.cluster_id,
        },
        last_index,
    };
    Ok((
        Recovered {
            metadata,
            hard_state,
            snapshot: latest_snapshot,
            entries,
            torn_tail,
            repaired,
        },
        resume,
    ))
}

/// Maps segment `path` to read it (None when it is empty): its pages come
/// from the page cache and go with the mapping, instead of a heap buffer
/// the size of the segment.
fn map_segment(path: &Path) -> Result<Option<memmap2::Mmap>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(path, "stat", e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the mapping is read-only and private, and nothing changes
    // the file while it lives: the log's directory belongs to this process
    // (the data dir is locked by its owner), no writer thread runs during
    // recovery, and recovery itself writes to a segment (zeroing a tail)
    // only after dropping its mapping (removing one leaves what a mapping
    // reads unchanged).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, "map", e))?;
    Ok(Some(map))
}

/// What recovery has gathered from the records read so far.
struct Replay<'a> {
    dir: &'a Path,
    marker: SnapshotMarker,
    metadata: Option<Metadata>,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    last_index: u64,
    snapshot_found: bool,
    /// Entries at or below it are covered by a snapshot.
    base: u64,
    latest_snapshot: Option<SnapshotRecord>,
}

impl Replay<'_> {
    /// Takes the next record, read from `segment`.
    fn take(&mut self, rec: Record, segment: &Path) -> Result<()> {
        match rec {
            Record::Metadata {
                member_id,
                cluster_id,
            } => {
                let found = Metadata {
                    member_id,
                    cluster_id,
                };
                match self.metadata {
                    None => self.metadata = Some(found),
                    Some(m) if m != found => {
                        return Err(Error::ClusterMismatch {
                            segment: segment.to_path_buf(),
                            member: m.member_id,
                            cluster: m.cluster_id,
                            found_member: found.member_id,
                            found_cluster: found.cluster_id,
                        })
                    }
                    Some(_) => {}
                }
            }
            Record::Entry { index, term, data } => {
                self.last_index = index;
                if index <= self.base {
                    return Ok(());
                }
                // A later entry reusing an index replaces it and all after
                // it (entries are in index order: a binary search).
                if self.entries.last().is_some_and(|e| e.index >= index) {
                    let pos = self.entries.partition_point(|e| e.index < index);
                    self.entries.truncate(pos);
                }
                let expected = self.entries.last().map_or(self.base + 1, |e| e.index + 1);
                if index != expected {
                    return Err(Error::EntryGap {
                        segment: segment.to_path_buf(),
                        last: expected - 1,
                        index,
                    });
                }
                self.entries.push(Entry { index, term, data });
            }
            Record::HardState { term, vote, commit } => {
                self.hard_state = Some(HardState { term, vote, commit })
            }
            Record::Snapshot {
                index,
                term,
                conf_state,
            } => {
                if index == self.marker.index {
                    if term != self.marker.term {
                        return Err(Error::SnapshotMismatch {
                            dir: self.dir.to_path_buf(),
                            index,
                            term: self.marker.term,
                            found: term,
                        });
                    }
                    self.snapshot_found = true;
                }
                // A snapshot at or after the marker rebases the log:
                // entries it covers go, and the next entry may follow it
                // with a gap (a follower that installed a leader's
                // snapshot continues from its index).
                if index >= self.marker.index && index >= self.base {
                    self.base = index;
                    self.entries.retain(|e| e.index > index);
                    self.latest_snapshot = Some(SnapshotRecord {
                        index,
                        term,
                        conf_state,
                    });
                }
            }
        }
        Ok(())
    }
}

fn last_nonzero(buf: &[u8]) -> u64 {
    buf.iter()
        .rposition(|&b| b != 0)
        .map_or(0, |p| p as u64 + 1)
}
