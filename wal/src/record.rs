//! Record framing: the 16-byte header, the per-segment checksum seed, the
//! typed payloads, and decoding one frame at an offset.
//!
//! See `FORMAT.md` for the layout in prose.

/// Bytes of a record header.
pub const HEADER_SIZE: usize = 16;
/// Records start and end on multiples of this.
pub const ALIGN: usize = 8;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 256 << 20;

/// Record type codes stored in the header.
pub const TYPE_CHAIN: u8 = 1;
pub const TYPE_METADATA: u8 = 2;
pub const TYPE_ENTRY: u8 = 3;
pub const TYPE_HARD_STATE: u8 = 4;
pub const TYPE_SNAPSHOT: u8 = 5;
pub const TYPE_PIPELINED: u8 = 6;

/// Header flag (byte 5): this frame's write batch was submitted while the
/// batch before it was still in flight.
pub const FLAG_PIPELINED: u8 = 1;

/// A log record as the caller sees it. The crate knows the meaning of
/// indexes and terms only as far as recovery needs them (a later entry at
/// an index replaces earlier ones; a snapshot marker says where to start);
/// the entry data itself is opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Which member and cluster this log belongs to.
    Metadata { member_id: u64, cluster_id: u64 },
    /// A replicated log entry.
    Entry {
        index: u64,
        term: u64,
        data: Vec<u8>,
    },
    /// Raft's hard state.
    HardState { term: u64, vote: u64, commit: u64 },
    /// A snapshot was taken at (index, term) with this membership.
    Snapshot {
        index: u64,
        term: u64,
        conf_state: Vec<u8>,
    },
}

/// The first record of every segment: its sequence number and the rolling
/// checksum of every record before it, so a segment cannot be swapped,
/// reordered or dropped unnoticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    pub seq: u64,
    pub prev_rolling: u32,
}

/// The first frame of a write batch submitted while the batch before it
/// was still in flight: that batch's bounds in the segment, and where the
/// data known durable then ended (the end of the batch before that one).
/// A pipelined batch starts at the first 4 KiB boundary at or after
/// `prev_end` (so the two writes share no block); recovery crosses the
/// zeros between them only to a frame naming exactly where the intact data
/// ended, so a lost batch can never be skipped over, and damage before
/// `durable_end` is corruption, never a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pipelined {
    pub prev_start: u64,
    pub prev_end: u64,
    pub durable_end: u64,
}

/// Any frame found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Chain(Chain),
    Pipelined(Pipelined),
    Record(Record),
}

impl Frame {
    /// The same frame, borrowed for encoding.
    pub fn as_ref(&self) -> FrameRef<'_> {
        match self {
            Frame::Chain(c) => FrameRef::Chain(*c),
            Frame::Pipelined(p) => FrameRef::Pipelined(*p),
            Frame::Record(r) => FrameRef::Record(r),
        }
    }
}

/// A frame to encode, borrowing its record.
#[derive(Debug, Clone, Copy)]
pub enum FrameRef<'a> {
    Chain(Chain),
    Pipelined(Pipelined),
    Record(&'a Record),
}

impl FrameRef<'_> {
    pub fn type_code(&self) -> u8 {
        match self {
            FrameRef::Chain(_) => TYPE_CHAIN,
            FrameRef::Pipelined(_) => TYPE_PIPELINED,
            FrameRef::Record(Record::Metadata { .. }) => TYPE_METADATA,
            FrameRef::Record(Record::Entry { .. }) => TYPE_ENTRY,
            FrameRef::Record(Record::HardState { .. }) => TYPE_HARD_STATE,
            FrameRef::Record(Record::Snapshot { .. }) => TYPE_SNAPSHOT,
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        let u64s = |out: &mut Vec<u8>, vals: &[u64]| {
            for v in vals {
                out.extend_from_slice(&v.to_le_bytes());
            }
        };
        match self {
            FrameRef::Chain(c) => {
                u64s(out, &[c.seq]);
                out.extend_from_slice(&c.prev_rolling.to_le_bytes());
            }
            FrameRef::Pipelined(p) => u64s(out, &[p.prev_start, p.prev_end, p.durable_end]),
            FrameRef::Record(Record::Metadata {
                member_id,
                cluster_id,
            }) => u64s(out, &[*member_id, *cluster_id]),
            FrameRef::Record(Record::Entry { index, term, data }) => {
                u64s(out, &[*index, *term]);
                out.extend_from_slice(data);
            }
            FrameRef::Record(Record::HardState { term, vote, commit }) => {
                u64s(out, &[*term, *vote, *commit])
            }
            FrameRef::Record(Record::Snapshot {
                index,
                term,
                conf_state,
            }) => {
                u64s(out, &[*index, *term]);
                out.extend_from_slice(conf_state);
            }
        }
    }
}

impl Frame {
    fn decode_payload(kind: u8, p: &[u8]) -> Result<Frame, String> {
        let u64_at = |i: usize| -> Result<u64, String> {
            p.get(i * 8..i * 8 + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .ok_or_else(|| format!("payload of {} bytes too short for type {kind}", p.len()))
        };
        let exact = |n: usize| -> Result<(), String> {
            if p.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "payload of {} bytes, type {kind} needs {n}",
                    p.len()
                ))
            }
        };
        Ok(match kind {
            TYPE_CHAIN => {
                exact(12)?;
                Frame::Chain(Chain {
                    seq: u64_at(0)?,
                    prev_rolling: u32::from_le_bytes([p[8], p[9], p[10], p[11]]),
                })
            }
            TYPE_PIPELINED => {
                exact(24)?;
                Frame::Pipelined(Pipelined {
                    prev_start: u64_at(0)?,
                    prev_end: u64_at(1)?,
                    durable_end: u64_at(2)?,
                })
            }
            TYPE_METADATA => {
                exact(16)?;
                Frame::Record(Record::Metadata {
                    member_id: u64_at(0)?,
                    cluster_id: u64_at(1)?,
                })
            }
            TYPE_ENTRY => Frame::Record(Record::Entry {
                index: u64_at(0)?,
                term: u64_at(1)?,
                data: p[16..].to_vec(),
            }),
            TYPE_HARD_STATE => {
                exact(24)?;
                Frame::Record(Record::HardState {
                    term: u64_at(0)?,
                    vote: u64_at(1)?,
                    commit: u64_at(2)?,
                })
            }
            TYPE_SNAPSHOT => Frame::Record(Record::Snapshot {
                index: u64_at(0)?,
                term: u64_at(1)?,
                conf_state: p[16..].to_vec(),
            }),
            other => return Err(format!("unknown record type {other}")),
        })
    }
}

/// The checksum seed of segment `seq`: records of one segment do not
/// verify under another's seed, so a segment renamed or recycled into the
/// wrong place fails its checksums.
pub fn segment_seed(seq: u64) -> u32 {
    crc32fast::hash(&seq.to_le_bytes())
}

/// Folds a record's checksum into the rolling checksum of the log.
pub fn roll(rolling: u32, record_crc: u32) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(rolling);
    h.update(&record_crc.to_le_bytes());
    h.finalize()
}

fn frame_crc(seed: u32, header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(&header[..12]);
    h.update(payload);
    h.finalize()
}

/// Appends one framed record to `out`. `batch_start` is the offset in the
/// segment where this record's write batch begins, `at` the record's own
/// offset, and `flags` the header flags ([`FLAG_PIPELINED`]). Returns the
/// record's checksum.
pub fn encode_frame(
    frame: FrameRef<'_>,
    seed: u32,
    batch_start: u64,
    at: u64,
    flags: u8,
    out: &mut Vec<u8>,
) -> u32 {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_SIZE]);
    frame.encode_payload(out);
    let len = out.len() - start - HEADER_SIZE;
    let back = (at - batch_start) as u32;
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4] = frame.type_code();
    out[start + 5] = flags;
    out[start + 8..start + 12].copy_from_slice(&back.to_le_bytes());
    let crc = {
        let (head, payload) = out[start..].split_at(HEADER_SIZE);
        frame_crc(seed, head, payload)
    };
    out[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + framed_len(len), 0);
    crc
}

/// Bytes a record with a `payload`-byte payload takes, padding included.
pub fn framed_len(payload: usize) -> usize {
    (HEADER_SIZE + payload).div_ceil(ALIGN) * ALIGN
}

/// Encoded payload size of a record (for batching decisions).
pub fn payload_len(r: &Record) -> usize {
    match r {
        Record::Metadata { .. } => 16,
        Record::Entry { data, .. } => 16 + data.len(),
        Record::HardState { .. } => 24,
        Record::Snapshot { conf_state, .. } => 16 + conf_state.len(),
    }
}

/// What sits at an offset of a segment.
#[derive(Debug)]
pub enum Decoded {
    /// An intact frame: the frame, its checksum, its framed length, how
    /// far back its batch began, and its header flags.
    Frame {
        frame: Frame,
        crc: u32,
        len: usize,
        batch_back: u32,
        flags: u8,
    },
    /// A zero header: the end of written data.
    End,
    /// Not an intact frame, and why.
    Bad(String),
}

/// Decodes the frame at `at` in `buf` (a whole segment).
pub fn decode_at(buf: &[u8], at: usize, seed: u32) -> Decoded {
    let Some(head) = buf.get(at..at + HEADER_SIZE) else {
        if buf[at.min(buf.len())..].iter().all(|&b| b == 0) {
            return Decoded::End;
        }
        return Decoded::Bad("header runs past the end of the file".into());
    };
    if head.iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let kind = head[4];
    let batch_back = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    let stored = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
    let flags = head[5];
    if flags & !FLAG_PIPELINED != 0
        || head[6] != 0
        || head[7] != 0
        || !(TYPE_CHAIN..=TYPE_PIPELINED).contains(&kind)
    {
        return Decoded::Bad(format!("invalid header (type {kind})"));
    }
    if len > MAX_PAYLOAD {
        return Decoded::Bad(format!("payload length {len} is over the limit"));
    }
    let Some(payload) = buf.get(at + HEADER_SIZE..at + HEADER_SIZE + len) else {
        return Decoded::Bad(format!(
            "record of {len} bytes runs past the end of the file"
        ));
    };
    if frame_crc(seed, head, payload) != stored {
        return Decoded::Bad("checksum mismatch".into());
    }
    if batch_back as usize > at {
        return Decoded::Bad("batch offset points before the segment".into());
    }
    match Frame::decode_payload(kind, payload) {
        Ok(frame) => Decoded::Frame {
            frame,
            crc: stored,
            len: framed_len(len),
            batch_back,
            flags,
        },
        Err(e) => Decoded::Bad(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_are_aligned() {
        let frames = [
            Frame::Chain(Chain {
                seq: 3,
                prev_rolling: 77,
            }),
            Frame::Record(Record::Metadata {
                member_id: 1,
                cluster_id: 2,
            }),
            Frame::Record(Record::Entry {
                index: 5,
                term: 2,
                data: b"hello".to_vec(),
            }),
            Frame::Record(Record::HardState {
                term: 2,
                vote: 1,
                commit: 5,
            }),
            Frame::Record(Record::Snapshot {
                index: 4,
                term: 2,
                conf_state: vec![1, 2, 3],
            }),
            Frame::Pipelined(Pipelined {
                prev_start: 8,
                prev_end: 4000,
                durable_end: 8,
            }),
        ];
        let seed = segment_seed(3);
        let mut buf = Vec::new();
        for f in &frames {
            let at = buf.len() as u64;
            encode_frame(f.as_ref(), seed, 0, at, 0, &mut buf);
            assert_eq!(buf.len() % ALIGN, 0);
        }
        let mut at = 0;
        for f in &frames {
            match decode_at(&buf, at, seed) {
                Decoded::Frame { frame, len, .. } => {
                    assert_eq!(&frame, f);
                    at += len;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(decode_at(&buf, at, seed), Decoded::End));
        assert!(matches!(
            decode_at(&buf, 0, segment_seed(4)),
            Decoded::Bad(_)
        ));
    }
}
