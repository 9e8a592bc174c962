//! How bytes reach the disk: positioned writes plus fdatasync.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The write side of one open segment.
pub trait SegmentWriter: Send {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
}

/// Plain `pwrite` + `fdatasync`.
pub struct PlainWriter(pub File);

impl SegmentWriter for PlainWriter {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}
