//! The on-disk page layout: page headers, leaf and branch elements, meta
//! pages and freelist pages. Everything here reads borrowed bytes (from the
//! mmap) or writes into an owned buffer; nothing here does I/O.
//!
//! Every accessor checks its bounds against the page run it was given and
//! returns [`Error::Corrupt`] naming the page instead of panicking, so a
//! damaged file can never make a reader index out of bounds.
//!
//! See `FORMAT.md` for the layout in prose.

use crate::error::{Error, Result};

/// Page id: the page's offset in the file divided by the page size.
pub type PageId = u64;

/// Size of the header at the start of every page run.
pub const PAGE_HEADER_SIZE: usize = 24;
/// Size of one leaf element: key offset, key length, value length (u32 each).
pub const LEAF_ELEMENT_SIZE: usize = 12;
/// Size of one branch element: key offset, key length (u32), child (u64).
pub const BRANCH_ELEMENT_SIZE: usize = 16;

/// Page type flags stored in the header.
pub const FLAG_BRANCH: u16 = 0x01;
pub const FLAG_LEAF: u16 = 0x02;
pub const FLAG_META: u16 = 0x04;
pub const FLAG_FREELIST: u16 = 0x10;

/// "KVSBTREE" as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"KVSBTREE");
/// The format version this code writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Smallest and largest page sizes accepted.
pub const MIN_PAGE_SIZE: usize = 1024;
pub const MAX_PAGE_SIZE: usize = 65536;

/// Largest key accepted by `put`.
pub const MAX_KEY_SIZE: usize = 64 * 1024;
/// Largest value accepted by `put`.
pub const MAX_VALUE_SIZE: usize = 64 * 1024 * 1024;

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
#[inline]
fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Byte-wise key order (the order of `[u8]::cmp`) without a memcmp call:
/// keys are compared 8 bytes at a time as big-endian integers, which is
/// what a lookup spends most of its time on.
#[inline]
pub fn compare_keys(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (mut a, mut b) = (a, b);
    while let (Some((x, ra)), Some((y, rb))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        let (x, y) = (u64::from_be_bytes(*x), u64::from_be_bytes(*y));
        if x != y {
            return x.cmp(&y);
        }
        a = ra;
        b = rb;
    }
    a.cmp(b)
}

/// The common header at the start of every page run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub id: PageId,
    pub flags: u16,
    pub count: u32,
    /// Number of pages in the run after the first one.
    pub overflow: u32,
    pub checksum: u32,
}

impl PageHeader {
    /// Reads a header from the first bytes of `b` (which must hold at least
    /// [`PAGE_HEADER_SIZE`] bytes).
    pub fn read(b: &[u8]) -> PageHeader {
        PageHeader {
            id: read_u64(b, 0),
            flags: read_u16(b, 8),
            count: read_u32(b, 12),
            overflow: read_u32(b, 16),
            checksum: read_u32(b, 20),
        }
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..10].copy_from_slice(&self.flags.to_le_bytes());
        b[10..12].copy_from_slice(&0u16.to_le_bytes());
        b[12..16].copy_from_slice(&self.count.to_le_bytes());
        b[16..20].copy_from_slice(&self.overflow.to_le_bytes());
        b[20..24].copy_from_slice(&self.checksum.to_le_bytes());
    }
}

/// The checksum of a page run: crc32 of the whole run with the checksum
/// field itself left out.
pub fn run_checksum(run: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&run[..20]);
    h.update(&run[PAGE_HEADER_SIZE..]);
    h.finalize()
}

/// Stores the run checksum into the header of `run`.
pub fn seal_run(run: &mut [u8]) {
    let sum = run_checksum(run);
    run[20..24].copy_from_slice(&sum.to_le_bytes());
}

/// Human name of a page type, for reports.
pub fn type_name(flags: u16) -> &'static str {
    match flags {
        FLAG_BRANCH => "branch",
        FLAG_LEAF => "leaf",
        FLAG_META => "meta",
        FLAG_FREELIST => "freelist",
        _ => "unknown",
    }
}

/// A borrowed, validated view of one page run (a page and its overflow
/// pages) in the mmap.
#[derive(Clone, Copy)]
pub struct PageView<'a> {
    pub id: PageId,
    pub flags: u16,
    pub count: usize,
    /// The whole run, header included.
    pub data: &'a [u8],
}

fn corrupt(page: PageId, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        page,
        reason: reason.into(),
    }
}

impl<'a> PageView<'a> {
    /// Locates page `id` in `map`. Checks that the page and its overflow run
    /// lie below `high_water` and inside the map, and that the header names
    /// this page. Does not verify the checksum (see [`PageView::verify_checksum`]).
    pub fn open(map: &'a [u8], page_size: usize, high_water: u64, id: PageId) -> Result<Self> {
        if id < 2 || id >= high_water {
            return Err(corrupt(
                id,
                format!("page id outside the data area (high-water mark {high_water})"),
            ));
        }
        let start = (id as usize)
            .checked_mul(page_size)
            .ok_or_else(|| corrupt(id, "page offset overflows"))?;
        if start + page_size > map.len() {
            return Err(corrupt(id, "page lies beyond the end of the file"));
        }
        let hdr = PageHeader::read(&map[start..start + PAGE_HEADER_SIZE]);
        if hdr.id != id {
            return Err(corrupt(id, format!("header names page {}", hdr.id)));
        }
        let pages = hdr.overflow as u64 + 1;
        if id + pages > high_water {
            return Err(corrupt(
                id,
                format!("overflow run of {pages} pages passes the high-water mark {high_water}"),
            ));
        }
        let len = pages as usize * page_size;
        if start + len > map.len() {
            return Err(corrupt(id, "overflow run lies beyond the end of the file"));
        }
        Ok(PageView {
            id,
            flags: hdr.flags,
            count: hdr.count as usize,
            data: &map[start..start + len],
        })
    }

    pub fn header(&self) -> PageHeader {
        PageHeader::read(self.data)
    }

    pub fn pages(&self, page_size: usize) -> u64 {
        (self.data.len() / page_size) as u64
    }

    pub fn is_leaf(&self) -> bool {
        self.flags == FLAG_LEAF
    }

    pub fn is_branch(&self) -> bool {
        self.flags == FLAG_BRANCH
    }

    /// Fails unless this page is a branch or a leaf.
    pub fn expect_node(self) -> Result<Self> {
        if self.is_leaf() || self.is_branch() {
            Ok(self)
        } else {
            Err(corrupt(
                self.id,
                format!(
                    "expected a branch or leaf page, found type {:#x} ({})",
                    self.flags,
                    type_name(self.flags)
                ),
            ))
        }
    }

    /// Bytes this branch or leaf takes when written as a node (header,
    /// elements, keys and values), read off the element table.
    pub fn node_size(&self) -> Result<usize> {
        let mut size = PAGE_HEADER_SIZE + self.count * self.element_size();
        for i in 0..self.count {
            size += self.key(i)?.len();
            if self.is_leaf() {
                size += self.value(i)?.len();
            }
        }
        Ok(size)
    }

    pub fn verify_checksum(&self) -> Result<()> {
        let stored = self.header().checksum;
        let actual = run_checksum(self.data);
        if stored != actual {
            return Err(corrupt(
                self.id,
                format!("checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"),
            ));
        }
        Ok(())
    }

    fn element_size(&self) -> usize {
        if self.is_leaf() {
            LEAF_ELEMENT_SIZE
        } else {
            BRANCH_ELEMENT_SIZE
        }
    }

    fn element(&self, i: usize) -> Result<&'a [u8]> {
        let es = self.element_size();
        let at = PAGE_HEADER_SIZE + i * es;
        if i >= self.count || at + es > self.data.len() {
            return Err(corrupt(
                self.id,
                format!("element {i} of {} lies outside the page", self.count),
            ));
        }
        Ok(&self.data[at..at + es])
    }

    fn slice(&self, off: usize, len: usize, what: &str, i: usize) -> Result<&'a [u8]> {
        match off.checked_add(len) {
            Some(end) if off >= PAGE_HEADER_SIZE && end <= self.data.len() => {
                Ok(&self.data[off..end])
            }
            _ => Err(corrupt(
                self.id,
                format!("{what} of element {i} (offset {off}, length {len}) lies outside the page"),
            )),
        }
    }

    /// Key `i` of a leaf or branch page.
    pub fn key(&self, i: usize) -> Result<&'a [u8]> {
        let e = self.element(i)?;
        self.slice(read_u32(e, 0) as usize, read_u32(e, 4) as usize, "key", i)
    }

    /// Value `i` of a leaf page (stored right after its key).
    pub fn value(&self, i: usize) -> Result<&'a [u8]> {
        let e = self.element(i)?;
        let off = read_u32(e, 0) as usize + read_u32(e, 4) as usize;
        self.slice(off, read_u32(e, 8) as usize, "value", i)
    }

    /// Child page id `i` of a branch page.
    pub fn child(&self, i: usize) -> Result<PageId> {
        let e = self.element(i)?;
        Ok(read_u64(e, 8))
    }

    /// Index of the first key >= `key`, and whether it is equal. This is
    /// the hot loop of every lookup, so the element table is bounds-checked
    /// once and each probe checks only its own key slice.
    pub fn lower_bound(&self, key: &[u8]) -> Result<(usize, bool)> {
        let es = self.element_size();
        let table = self
            .data
            .get(PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + self.count * es)
            .ok_or_else(|| {
                corrupt(
                    self.id,
                    format!("{} elements do not fit the page", self.count),
                )
            })?;
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let e = mid * es;
            let off = read_u32(table, e) as usize;
            let len = read_u32(table, e + 4) as usize;
            let probe = match self.data.get(off..off.saturating_add(len)) {
                Some(k) if off >= PAGE_HEADER_SIZE => k,
                _ => {
                    return Err(corrupt(
                        self.id,
                        format!("key of element {mid} lies outside the page"),
                    ))
                }
            };
            match compare_keys(probe, key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Equal => return Ok((mid, true)),
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok((lo, false))
    }

    /// Branch: index of the child whose subtree may hold `key`: the last
    /// child whose separator is <= `key`, or the first child.
    pub fn route(&self, key: &[u8]) -> Result<usize> {
        let (i, exact) = self.lower_bound(key)?;
        Ok(if exact { i } else { i.saturating_sub(1) })
    }
}

/// The contents of a meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    /// Root page of the bucket directory tree; 0 when there are no buckets.
    pub directory: PageId,
    /// First page of the freelist run.
    pub freelist: PageId,
    /// Number of pages in use: every page id below it is allocated or free.
    pub high_water: u64,
    /// Durable commit counter; this meta lives in slot `txid % 2`.
    pub txid: u64,
}

/// Byte offsets inside a meta page.
const META_MAGIC: usize = PAGE_HEADER_SIZE;
const META_VERSION: usize = META_MAGIC + 8;
const META_PAGE_SIZE: usize = META_VERSION + 4;
const META_FLAGS: usize = META_PAGE_SIZE + 4;
const META_DIRECTORY: usize = META_FLAGS + 8;
const META_FREELIST: usize = META_DIRECTORY + 8;
const META_HIGH_WATER: usize = META_FREELIST + 8;
const META_TXID: usize = META_HIGH_WATER + 8;
const META_CHECKSUM: usize = META_TXID + 8;
/// Bytes of a meta page that carry data (the rest is zero).
pub const META_SIZE: usize = META_CHECKSUM + 4;

/// Why a meta page was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaProblem {
    /// Too short to hold a meta page.
    Short,
    /// The magic number is wrong: not one of our files.
    BadMagic,
    /// The checksum does not match: torn or damaged.
    BadChecksum,
    /// Valid checksum, but written by a newer format version.
    NewerVersion(u32),
}

impl std::fmt::Display for MetaProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaProblem::Short => write!(f, "too short"),
            MetaProblem::BadMagic => write!(f, "bad magic"),
            MetaProblem::BadChecksum => write!(f, "checksum mismatch"),
            MetaProblem::NewerVersion(v) => {
                write!(f, "format version {v} is newer than {FORMAT_VERSION}")
            }
        }
    }
}

impl Meta {
    /// Writes this meta as page `slot` into `page` (one page of zeros or more).
    pub fn encode(&self, slot: PageId, page: &mut [u8]) {
        page[..META_SIZE].fill(0);
        PageHeader {
            id: slot,
            flags: FLAG_META,
            count: 0,
            overflow: 0,
            checksum: 0,
        }
        .write(page);
        page[META_MAGIC..META_MAGIC + 8].copy_from_slice(&MAGIC.to_le_bytes());
        page[META_VERSION..META_VERSION + 4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        page[META_PAGE_SIZE..META_PAGE_SIZE + 4].copy_from_slice(&self.page_size.to_le_bytes());
        page[META_DIRECTORY..META_DIRECTORY + 8].copy_from_slice(&self.directory.to_le_bytes());
        page[META_FREELIST..META_FREELIST + 8].copy_from_slice(&self.freelist.to_le_bytes());
        page[META_HIGH_WATER..META_HIGH_WATER + 8].copy_from_slice(&self.high_water.to_le_bytes());
        page[META_TXID..META_TXID + 8].copy_from_slice(&self.txid.to_le_bytes());
        let sum = crc32fast::hash(&page[..META_CHECKSUM]);
        page[META_CHECKSUM..META_CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
    }

    /// Reads and validates a meta page.
    pub fn decode(page: &[u8]) -> std::result::Result<Meta, MetaProblem> {
        if page.len() < META_SIZE {
            return Err(MetaProblem::Short);
        }
        if read_u64(page, META_MAGIC) != MAGIC {
            return Err(MetaProblem::BadMagic);
        }
        let stored = read_u32(page, META_CHECKSUM);
        if crc32fast::hash(&page[..META_CHECKSUM]) != stored {
            return Err(MetaProblem::BadChecksum);
        }
        let version = read_u32(page, META_VERSION);
        if version > FORMAT_VERSION {
            return Err(MetaProblem::NewerVersion(version));
        }
        Ok(Meta {
            page_size: read_u32(page, META_PAGE_SIZE),
            directory: read_u64(page, META_DIRECTORY),
            freelist: read_u64(page, META_FREELIST),
            high_water: read_u64(page, META_HIGH_WATER),
            txid: read_u64(page, META_TXID),
        })
    }
}

/// Serialises a freelist page run holding `ids` (sorted) into a buffer of
/// `pages` pages.
pub fn encode_freelist(id: PageId, pages: usize, page_size: usize, ids: &[PageId]) -> Vec<u8> {
    let mut buf = vec![0u8; pages * page_size];
    PageHeader {
        id,
        flags: FLAG_FREELIST,
        count: ids.len() as u32,
        overflow: (pages - 1) as u32,
        checksum: 0,
    }
    .write(&mut buf);
    for (i, pid) in ids.iter().enumerate() {
        let at = PAGE_HEADER_SIZE + i * 8;
        buf[at..at + 8].copy_from_slice(&pid.to_le_bytes());
    }
    seal_run(&mut buf);
    buf
}

/// Pages needed by a freelist run of `n` ids.
pub fn freelist_pages(n: usize, page_size: usize) -> usize {
    (PAGE_HEADER_SIZE + n * 8).div_ceil(page_size)
}

/// Reads the ids stored in a freelist page run.
pub fn decode_freelist(view: &PageView<'_>) -> Result<Vec<PageId>> {
    if view.flags != FLAG_FREELIST {
        return Err(corrupt(
            view.id,
            format!(
                "expected a freelist page, found type {:#x} ({})",
                view.flags,
                type_name(view.flags)
            ),
        ));
    }
    let need = PAGE_HEADER_SIZE + view.count * 8;
    if need > view.data.len() {
        return Err(corrupt(
            view.id,
            format!("freelist of {} ids does not fit its run", view.count),
        ));
    }
    Ok((0..view.count)
        .map(|i| read_u64(view.data, PAGE_HEADER_SIZE + i * 8))
        .collect())
}
