//! Segment files: names, listing, preallocation, and scanning one
//! segment's frames (telling a torn tail from corruption).

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::backend::BLOCK;
use crate::error::{Error, Result};
use crate::record::{decode_at, segment_seed, Decoded, Frame, ALIGN, FLAG_PIPELINED};

/// A segment file's identity, from its name `<seq>-<first index>.wal`
/// (both 16 hex digits, so names sort by sequence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentName {
    pub seq: u64,
    pub first_index: u64,
    pub path: PathBuf,
}

pub fn segment_file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// The segments in `dir` sorted by sequence, and how many other files it
/// holds (segments being prepared, `.wal.tmp`, are neither).
pub fn list_segments(dir: &Path) -> Result<(Vec<SegmentName>, usize)> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))?;
    let mut segs = Vec::new();
    let mut others = 0;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, "read directory", e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some((seq, first_index)) = parse_name(&name) {
            segs.push(SegmentName {
                seq,
                first_index,
                path: entry.path(),
            });
        } else if !name.ends_with(".wal.tmp") {
            others += 1;
        }
    }
    segs.sort_by_key(|s| s.seq);
    Ok((segs, others))
}

/// Removes segments left half-prepared (`.wal.tmp`) by a process that died.
pub fn remove_leftovers(dir: &Path) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, "read directory", e))?;
        if entry.file_name().to_string_lossy().ends_with(".wal.tmp") {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, "remove leftover", e))?;
        }
    }
    Ok(())
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    fail::fail_point!("wal::fsync_dir", |arg| Err(Error::io(
        dir,
        "fsync directory",
        crate::injected(arg)
    )));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "fsync directory", e))
}

/// Creates `dir` and any missing parents, fsyncing the directory that
/// got each new entry, so a power cut cannot lose the log's directory.
pub fn create_dir_synced(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_synced(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(Error::io(dir, "create directory", e)),
    }
    sync_dir(parent.unwrap_or(Path::new(".")))
}

/// Creates `path` with `size` bytes allocated (fallocate, so later appends
/// do not change the file's size or allocation), fsynced.
pub fn create_preallocated(path: &Path, size: u64) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, "create segment", e))?;
    if let Err(e) = fallocate(&file, size) {
        // Only a filesystem without fallocate gets a plain (sparse)
        // extension; any other failure (ENOSPC above all) is an error,
        // never a segment whose blocks a later append may not get.
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            let _ = std::fs::remove_file(path);
            return Err(Error::io(path, "fallocate segment", e));
        }
        file.set_len(size)
            .map_err(|e| Error::io(path, "extend segment", e))?;
    }
    file.sync_all()
        .map_err(|e| Error::io(path, "fsync segment", e))?;
    Ok(file)
}

/// Allocates `size` bytes for `file` (a test may inject a failure at
/// `wal::fallocate`: fail-rs, the `failpoints` feature).
fn fallocate(file: &File, size: u64) -> std::io::Result<()> {
    fail::fail_point!("wal::fallocate", |arg| Err(crate::injected(arg)));
    // SAFETY: fallocate only reads its integer arguments; the descriptor is
    // owned by `file`, which outlives the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One frame found by a scan, with where it sits.
#[derive(Debug, Clone)]
pub struct ScannedFrame {
    pub offset: u64,
    pub frame: Frame,
    pub crc: u32,
}

/// How a segment's data ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Zeros or the end of the file after the last frame.
    Clean { offset: u64 },
    /// A frame that is not intact, where nothing after it proves that data
    /// written after it was acknowledged: the last batch (or the last two,
    /// when the last was pipelined behind the one before) was cut short by
    /// a crash.
    Torn { offset: u64, reason: String },
    /// A frame that is not intact, followed by intact frames of a batch
    /// written only after it was durable: the data was damaged after it
    /// was acknowledged.
    Corrupt { offset: u64, reason: String },
}

/// Every frame of a segment, and how it ends.
pub struct Scan {
    pub frames: Vec<ScannedFrame>,
    pub end: SegmentEnd,
}

/// Scans segment `seq` held in `buf`, keeping every frame.
pub fn scan(buf: &[u8], seq: u64) -> Scan {
    let mut frames = Vec::new();
    let end = scan_each(buf, seq, |f| frames.push(f));
    Scan { frames, end }
}

/// Scans segment `seq` held in `buf`, handing each intact frame to `visit`
/// in order as it is decoded (recovery keeps only what it needs), and
/// says how the segment ends.
pub fn scan_each(buf: &[u8], seq: u64, mut visit: impl FnMut(ScannedFrame)) -> SegmentEnd {
    let seed = segment_seed(seq);
    let mut at = 0usize;
    // Where the batch of the last intact frame began, and where that
    // frame ended.
    let mut batch_start = 0usize;
    let mut data_end = 0usize;
    loop {
        let reason = match decode_at(buf, at, seed) {
            Decoded::Frame {
                frame,
                crc,
                len,
                batch_back,
                flags,
            } => {
                let starts = at - batch_back as usize;
                // A pipelined batch starts at the first block boundary at
                // or after the end of the batch before it, and names it.
                let misplaced = matches!(frame, Frame::Pipelined(p)
                    if starts != at
                        || flags & FLAG_PIPELINED == 0
                        || at != data_end.next_multiple_of(BLOCK)
                        || p.prev_end != data_end as u64
                        || p.prev_start != batch_start as u64);
                if !misplaced {
                    visit(ScannedFrame {
                        offset: at as u64,
                        frame,
                        crc,
                    });
                    batch_start = starts;
                    at += len;
                    data_end = at;
                    continue;
                }
                "pipelined frame does not follow the batch before it".to_string()
            }
            Decoded::End => {
                if buf[at.min(buf.len())..].iter().all(|&b| b == 0) {
                    return SegmentEnd::Clean { offset: at as u64 };
                }
                "zeros followed by data".to_string()
            }
            Decoded::Bad(reason) => reason,
        };
        if at == data_end {
            if let Some(next) = pipelined_successor(buf, at, batch_start, seed) {
                at = next;
                continue;
            }
        }
        return if acknowledged_data_follows(buf, at, seed) {
            SegmentEnd::Corrupt {
                offset: at as u64,
                reason,
            }
        } else {
            SegmentEnd::Torn {
                offset: at as u64,
                reason,
            }
        };
    }
}

/// Where a batch pipelined behind the intact batch that began at
/// `batch_start` and ended at `end` starts: the next block boundary, if an
/// intact pipelined frame there names exactly that batch.
fn pipelined_successor(buf: &[u8], end: usize, batch_start: usize, seed: u32) -> Option<usize> {
    let next = end.next_multiple_of(BLOCK);
    if next == end || end == 0 {
        return None;
    }
    match decode_at(buf, next, seed) {
        Decoded::Frame {
            frame: Frame::Pipelined(p),
            batch_back: 0,
            flags,
            ..
        } if flags & FLAG_PIPELINED != 0
            && p.prev_end == end as u64
            && p.prev_start == batch_start as u64 =>
        {
            Some(next)
        }
        _ => None,
    }
}

/// Whether intact frames past the damage at `bad` prove it hit data that
/// was already acknowledged.
///
/// At most two batches are in flight at once, and the second only when it
/// was pipelined behind the first (its frames carry [`FLAG_PIPELINED`]);
/// every batch before the oldest one in flight is durable. So a crash
/// leaves damage only in the last batch, or in the last two when the last
/// is pipelined behind the one before. Frames whose batch began at or
/// before `bad` are the damaged batch itself. Anything else intact after
/// `bad` is a batch written after the damaged one was durable: corruption.
fn acknowledged_data_follows(buf: &[u8], bad: usize, seed: u32) -> bool {
    let mut later: Option<(usize, bool)> = None;
    let mut at = bad + ALIGN;
    while at < buf.len() {
        if let Decoded::Frame {
            batch_back, flags, ..
        } = decode_at(buf, at, seed)
        {
            let start = at - batch_back as usize;
            if start > bad {
                let pipelined = flags & FLAG_PIPELINED != 0;
                match later {
                    None => later = Some((start, pipelined)),
                    Some((s, p)) if s == start && p == pipelined => {}
                    // Two later batches, or one with mixed flags.
                    Some(_) => return true,
                }
            }
        }
        at += ALIGN;
    }
    match later {
        None => false,
        Some((_, false)) => true,
        // The one later batch was pipelined: it was in flight beside the
        // batch it follows, so the damage is a crash only if it lies past
        // the data that was durable when it was submitted. Its first frame
        // says where that ended; if that frame is itself damaged, both
        // batches are the torn tail.
        Some((start, true)) => match decode_at(buf, start, seed) {
            Decoded::Frame {
                frame: Frame::Pipelined(p),
                ..
            } => bad < p.durable_end as usize,
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{encode_frame, FrameRef, Pipelined, Record};

    /// A segment written as the writer writes it: each batch either right
    /// after the one before, or pipelined behind it (at the next block
    /// boundary, behind a frame naming it). Returns the segment and each
    /// batch's (start, end).
    fn segment(batches: &[(u64, bool)]) -> (Vec<u8>, Vec<(usize, usize)>) {
        let seed = segment_seed(0);
        let mut buf = Vec::new();
        let mut bounds: Vec<(usize, usize)> = Vec::new();
        let mut index = 0;
        // Where the batch before the last one ended.
        let mut durable_end = 0;
        for &(records, pipelined) in batches {
            let mut frames = Vec::new();
            let start = match bounds.last() {
                Some(&(prev_start, prev_end)) if pipelined => {
                    frames.push(FrameRef::Pipelined(Pipelined {
                        prev_start: prev_start as u64,
                        prev_end: prev_end as u64,
                        durable_end: durable_end as u64,
                    }));
                    prev_end.next_multiple_of(BLOCK)
                }
                _ => buf.len(),
            };
            buf.resize(start, 0);
            let entries: Vec<Record> = (0..records)
                .map(|_| {
                    index += 1;
                    Record::Entry {
                        index,
                        term: 1,
                        data: vec![index as u8; 700],
                    }
                })
                .collect();
            frames.extend(entries.iter().map(FrameRef::Record));
            let flags = if pipelined { FLAG_PIPELINED } else { 0 };
            for f in frames {
                let at = buf.len() as u64;
                encode_frame(f, seed, start as u64, at, flags, &mut buf);
            }
            durable_end = bounds.last().map_or(0, |b| b.1);
            bounds.push((start, buf.len()));
        }
        buf.resize(buf.len().next_multiple_of(BLOCK) + 4 * BLOCK, 0);
        (buf, bounds)
    }

    fn entries(sc: &Scan) -> usize {
        sc.frames
            .iter()
            .filter(|f| matches!(f.frame, Frame::Record(Record::Entry { .. })))
            .count()
    }

    #[test]
    fn a_pipelined_batch_is_followed_across_the_gap() {
        let (buf, b) = segment(&[(3, false), (2, false), (4, true), (1, false), (5, true)]);
        let sc = scan(&buf, 0);
        assert_eq!(entries(&sc), 15);
        assert_eq!(
            sc.end,
            SegmentEnd::Clean {
                offset: b[4].1 as u64
            }
        );
        assert_eq!(b[2].0 % BLOCK, 0);
        assert!(b[2].0 > b[1].1, "the pipelined batch starts past a gap");
    }

    #[test]
    fn a_lost_batch_under_a_pipelined_one_is_a_torn_tail() {
        // The last batch in flight was written, the one before it was not
        // (or only partly): both are cut, never skipped over.
        let (whole, b) = segment(&[(3, false), (4, false), (3, true)]);
        for damage in [b[1].0, b[1].0 + 100, b[1].1 - 8] {
            let mut buf = whole.clone();
            buf[damage..b[1].1].fill(0);
            let sc = scan(&buf, 0);
            assert_eq!(
                entries(&sc),
                3 + (damage - b[1].0) / 736,
                "damage at {damage}"
            );
            assert!(
                matches!(sc.end, SegmentEnd::Torn { .. }),
                "damage at {damage}: {:?}",
                sc.end
            );
        }
        // The lost batch was itself pipelined (it starts past a gap).
        let (mut buf, b) = segment(&[(3, false), (4, true), (3, true)]);
        buf[b[1].0..b[1].1].fill(0);
        let sc = scan(&buf, 0);
        assert_eq!(entries(&sc), 3);
        assert!(matches!(sc.end, SegmentEnd::Torn { offset, .. } if offset == b[0].1 as u64));
        // But damage inside the batch before it, durable by then, is not.
        let (mut buf, b) = segment(&[(3, false), (4, true), (3, true)]);
        buf[b[0].1 - 100..b[1].1].fill(0);
        assert!(matches!(scan(&buf, 0).end, SegmentEnd::Corrupt { .. }));
        // Garbage instead of zeros: the same.
        let mut buf = whole.clone();
        buf[b[1].0 + 40] ^= 0xff;
        assert!(matches!(scan(&buf, 0).end, SegmentEnd::Torn { .. }));
    }

    #[test]
    fn a_torn_start_of_the_last_pipelined_batch_is_a_torn_tail() {
        let (mut buf, b) = segment(&[(3, false), (8, true)]);
        // Its first block never reached the disk; later blocks did.
        buf[b[1].0..b[1].0 + BLOCK].fill(0);
        let sc = scan(&buf, 0);
        assert_eq!(entries(&sc), 3);
        assert_eq!(
            sc.end,
            SegmentEnd::Torn {
                offset: b[0].1 as u64,
                reason: "zeros followed by data".into()
            }
        );
    }

    #[test]
    fn damage_older_than_the_batches_in_flight_is_corruption() {
        // Batch 1 was durable before batch 3 was submitted (at most two in
        // flight): damage in it, with batch 2 gone and 3 intact, is
        // corruption, not a crash.
        let (mut buf, b) = segment(&[(3, false), (3, false), (3, false), (3, true)]);
        buf[b[1].0 + 40] ^= 0xff;
        buf[b[2].0..b[2].1].fill(0);
        assert!(matches!(scan(&buf, 0).end, SegmentEnd::Corrupt { .. }));
        // Damage under a pipelined batch with another batch after it.
        let (mut buf, b) = segment(&[(3, false), (3, false), (3, true), (2, false)]);
        buf[b[1].0 + 40] ^= 0xff;
        assert!(matches!(scan(&buf, 0).end, SegmentEnd::Corrupt { .. }));
        // Damage under a batch that was not pipelined.
        let (mut buf, b) = segment(&[(3, false), (3, false), (3, false)]);
        buf[b[1].0 + 40] ^= 0xff;
        assert!(matches!(scan(&buf, 0).end, SegmentEnd::Corrupt { .. }));
        // Zeros in the middle of acknowledged data are damage too.
        let (mut buf, b) = segment(&[(3, false), (3, false), (3, false)]);
        buf[b[1].0..b[1].1].fill(0);
        assert!(matches!(scan(&buf, 0).end, SegmentEnd::Corrupt { .. }));
    }

    #[test]
    fn a_pipelined_frame_naming_another_batch_is_not_followed() {
        // A batch in between was lost (it followed batch 0 in the same
        // block): the pipelined batch names it, not batch 0, so the scan
        // stops at batch 0's end instead of skipping the loss.
        let (whole, b) = segment(&[(2, false), (1, false), (3, true)]);
        let mut buf = whole.clone();
        buf[b[1].0..b[1].1].fill(0);
        let sc = scan(&buf, 0);
        assert_eq!(entries(&sc), 2);
        assert!(matches!(sc.end, SegmentEnd::Torn { offset, .. } if offset == b[0].1 as u64));
    }
}
