//! A test aid for simulating a power cut of the whole machine: a segment
//! writer that, before each write, appends the bytes it is about to
//! overwrite to `<segment>.unsynced`, and empties that file once the write
//! is durable. After the process is SIGKILLed (the page cache keeps every
//! write, so the segment holds them all), the journal names exactly the
//! writes a power cut at that moment could have lost; the server's
//! power-loss test undoes all of them, or a random subset, before it
//! restarts the member. Only [`crate::Options::power_cut_journal`] turns
//! it on (the server does so only in a `failpoints` build, for tests).
//!
//! The journal is a sequence of records (integers little-endian):
//! - `W`, offset u64, length of the file before u64, len u32, the `len`
//!   bytes the write replaced;
//! - `S`: everything before is durable (written just before the journal
//!   is emptied, so a kill between the two leaves nothing to undo).
//!
//! The B+tree writes the same format for its file (`btree::io`).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::backend::{IoBuf, SegmentWriter};

/// The journal of the segment at `segment`.
pub fn journal_path(segment: &Path) -> std::path::PathBuf {
    let mut p = segment.as_os_str().to_owned();
    p.push(".unsynced");
    p.into()
}

pub(crate) struct Journaled {
    inner: Box<dyn SegmentWriter>,
    file: File,
    journal: File,
}

impl Journaled {
    pub(crate) fn new(
        inner: Box<dyn SegmentWriter>,
        file: &File,
        segment: &Path,
    ) -> io::Result<Journaled> {
        let journal = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(journal_path(segment))?;
        Ok(Journaled {
            inner,
            file: file.try_clone()?,
            journal,
        })
    }
}

impl SegmentWriter for Journaled {
    fn submit(&mut self, buf: IoBuf, offset: u64) -> io::Result<()> {
        let len = buf.as_slice().len();
        let size = self.file.metadata()?.len();
        let mut old = vec![0u8; len];
        if offset < size {
            let n = ((size - offset) as usize).min(len);
            self.file.read_exact_at(&mut old[..n], offset)?;
        }
        let mut rec = Vec::with_capacity(21 + len);
        rec.push(b'W');
        rec.extend_from_slice(&offset.to_le_bytes());
        rec.extend_from_slice(&size.to_le_bytes());
        rec.extend_from_slice(&(len as u32).to_le_bytes());
        rec.extend_from_slice(&old);
        self.journal.write_all(&rec)?;
        self.inner.submit(buf, offset)
    }

    fn wait_oldest(&mut self) -> io::Result<()> {
        // A disk that fails a flush and has lost what it held (as Linux
        // may drop the dirty pages after an fdatasync error): the journal
        // keeps listing the writes as not durable, so the test's power cut
        // undoes them.
        fail::fail_point!("wal::journal_sync", |arg| Err(crate::injected(arg)));
        self.inner.wait_oldest()?;
        if self.inner.in_flight() == 0 {
            self.journal.write_all(b"S")?;
            self.journal.set_len(0)?;
            // Appends go on at the start of the emptied file.
            use std::io::Seek;
            self.journal.seek(io::SeekFrom::Start(0))?;
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn depth(&self) -> usize {
        self.inner.depth()
    }
}
