//! Opening an existing log: validate every segment from the snapshot on,
//! rebuild the entries, hard state and metadata, cut a torn tail, and hand
//! the writer its position.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::record::{roll, Frame, Record};
use crate::segment::{list_segments, remove_leftovers, scan, sync_dir, SegmentEnd, SegmentName};
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

    let mut metadata: Option<Metadata> = None;
    let mut hard_state: Option<HardState> = None;
    let mut entries: Vec<Entry> = Vec::new();
    let mut last_index = 0;
    let mut snapshot_found = snap.index == 0;
    // Entries at or below `base` are covered by a snapshot.
    let mut base = snap.index;
    let mut latest_snapshot: Option<SnapshotRecord> = None;
    let mut rolling: Option<u32> = None;
    let mut torn_tail = None;
    let mut repaired = None;
    let mut resume_offset = 0;
    let mut i = start;
    while i < segs.len() {
        let seg = segs[i].clone();
        let is_last = i + 1 == segs.len();
        let buf = std::fs::read(&seg.path).map_err(|e| Error::io(&seg.path, "read", e))?;
        let sc = scan(&buf, seg.seq);
        let corrupt = |offset: u64, reason: String| Error::Corrupt {
            segment: seg.path.clone(),
            offset,
            reason,
        };

        // A last segment with no intact frame at all was being created when
        // the process died (its first batch never became durable).
        if sc.frames.is_empty()
            && is_last
            && i > start
            && !matches!(sc.end, SegmentEnd::Corrupt { .. })
        {
            std::fs::remove_file(&seg.path).map_err(|e| Error::io(&seg.path, "remove", e))?;
            sync_dir(dir)?;
            segs.pop();
            // The previous segment ended clean (it was not the last one),
            // so `resume_offset` already points at the end of its data.
            break;
        }
        let chain = match sc.frames.first().map(|f| &f.frame) {
            Some(Frame::Chain(c)) if c.seq == seg.seq => *c,
            Some(_) => {
                return Err(corrupt(
                    0,
                    "segment does not start with its chain record".into(),
                ))
            }
            None => {
                return Err(corrupt(
                    0,
                    match &sc.end {
                        SegmentEnd::Torn { reason, .. } | SegmentEnd::Corrupt { reason, .. } => {
                            reason.clone()
                        }
                        SegmentEnd::Clean { .. } => "empty segment".into(),
                    },
                ))
            }
        };
        match rolling {
            Some(r) if r != chain.prev_rolling => {
                return Err(Error::ChainBroken {
                    segment: seg.path.clone(),
                })
            }
            _ => {}
        }
        let mut r = chain.prev_rolling;
        for f in &sc.frames {
            r = roll(r, f.crc);
            let Frame::Record(rec) = &f.frame else {
                continue;
            };
            match rec {
                Record::Metadata {
                    member_id,
                    cluster_id,
                } => {
                    let found = Metadata {
                        member_id: *member_id,
                        cluster_id: *cluster_id,
                    };
                    match metadata {
                        None => metadata = Some(found),
                        Some(m) if m != found => {
                            return Err(Error::ClusterMismatch {
                                segment: seg.path.clone(),
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
                    last_index = *index;
                    if *index <= base {
                        continue;
                    }
                    if let Some(pos) = entries.iter().position(|e| e.index >= *index) {
                        entries.truncate(pos);
                    }
                    let expected = entries.last().map_or(base + 1, |e| e.index + 1);
                    if *index != expected {
                        return Err(Error::EntryGap {
                            segment: seg.path.clone(),
                            last: expected - 1,
                            index: *index,
                        });
                    }
                    entries.push(Entry {
                        index: *index,
                        term: *term,
                        data: data.clone(),
                    });
                }
                Record::HardState { term, vote, commit } => {
                    hard_state = Some(HardState {
                        term: *term,
                        vote: *vote,
                        commit: *commit,
                    })
                }
                Record::Snapshot {
                    index,
                    term,
                    conf_state,
                } => {
                    if *index == snap.index {
                        if *term != snap.term {
                            return Err(Error::SnapshotMismatch {
                                dir: dir.to_path_buf(),
                                index: *index,
                                term: snap.term,
                                found: *term,
                            });
                        }
                        snapshot_found = true;
                    }
                    // A snapshot at or after the marker rebases the log:
                    // entries it covers go, and the next entry may follow
                    // it with a gap (a follower that installed a leader's
                    // snapshot continues from its index).
                    if *index >= snap.index && *index >= base {
                        base = *index;
                        entries.retain(|e| e.index > base);
                        latest_snapshot = Some(SnapshotRecord {
                            index: *index,
                            term: *term,
                            conf_state: conf_state.clone(),
                        });
                    }
                }
            }
        }
        rolling = Some(r);
        match sc.end {
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
                let dropped_bytes = last_nonzero(&buf).saturating_sub(offset);
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

fn last_nonzero(buf: &[u8]) -> u64 {
    buf.iter()
        .rposition(|&b| b != 0)
        .map_or(0, |p| p as u64 + 1)
}
