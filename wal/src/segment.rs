//! Segment files: names, listing, preallocation, and scanning one
//! segment's frames (telling a torn tail from corruption).

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::record::{decode_at, segment_seed, Decoded, Frame, ALIGN};

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
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "fsync directory", e))
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
    // SAFETY: fallocate only reads its integer arguments; the descriptor is
    // owned by `file`, which outlives the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
    if rc != 0 {
        // Filesystems without fallocate get a plain (sparse) extension.
        file.set_len(size)
            .map_err(|e| Error::io(path, "extend segment", e))?;
    }
    file.sync_all()
        .map_err(|e| Error::io(path, "fsync segment", e))?;
    Ok(file)
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
    /// A frame that is not intact, where nothing after it belongs to a
    /// later write batch: the last batch was cut short by a crash.
    Torn { offset: u64, reason: String },
    /// A frame that is not intact, followed by intact frames of later
    /// batches: the data was damaged after it was written.
    Corrupt { offset: u64, reason: String },
}

/// Every frame of a segment, and how it ends.
pub struct Scan {
    pub frames: Vec<ScannedFrame>,
    pub end: SegmentEnd,
}

/// Scans segment `seq` held in `buf`.
pub fn scan(buf: &[u8], seq: u64) -> Scan {
    let seed = segment_seed(seq);
    let mut frames = Vec::new();
    let mut at = 0usize;
    loop {
        match decode_at(buf, at, seed) {
            Decoded::Frame {
                frame, crc, len, ..
            } => {
                frames.push(ScannedFrame {
                    offset: at as u64,
                    frame,
                    crc,
                });
                at += len;
            }
            Decoded::End => {
                return Scan {
                    frames,
                    end: SegmentEnd::Clean { offset: at as u64 },
                }
            }
            Decoded::Bad(reason) => {
                let end = if later_batch_follows(buf, at, seed) {
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
                return Scan { frames, end };
            }
        }
    }
}

/// Whether an intact frame whose write batch began after `bad` exists past
/// it. A crash can only cut short the last batch (each batch is fsynced
/// before the next is written), so such a frame proves the damage at `bad`
/// happened to data already acknowledged.
fn later_batch_follows(buf: &[u8], bad: usize, seed: u32) -> bool {
    let mut at = bad + ALIGN;
    while at < buf.len() {
        if let Decoded::Frame { batch_back, .. } = decode_at(buf, at, seed) {
            if at - batch_back as usize > bad {
                return true;
            }
        }
        at += ALIGN;
    }
    false
}
