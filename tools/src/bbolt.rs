//! A reader of bbolt database files, the B+tree etcd keeps its backend in
//! (`member/snap/db`, and what `etcdctl snapshot save` writes).
//!
//! It reads a whole file given as bytes (a memory map or a buffer) and never
//! writes. Whatever the bytes are it returns an error rather than panicking
//! or looping: every page number is checked against the file and the
//! database's high-water mark, every element against its page, and a walk
//! visits each page at most once (a page reached twice is corruption, which
//! also rules out cycles). `tools/ETCD_FORMAT.md` describes what is read.

/// bbolt's magic number, first field of both meta pages.
const MAGIC: u32 = 0xED0C_DAED;
/// The only file format version bbolt has written.
const VERSION: u32 = 2;

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
/// Bytes of the meta fields covered by the checksum (up to the checksum).
const META_SUMMED: usize = 56;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;

/// A leaf element that is a nested bucket rather than a key/value pair.
const BUCKET_LEAF: u32 = 0x01;
/// A bucket's header in its parent's leaf: root page and sequence.
const BUCKET_HEADER: usize = 16;

/// Why a file could not be read as a bbolt database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BboltError {
    #[error("not a bbolt database: {0}")]
    NotBbolt(String),
    #[error("both meta pages are invalid (meta 0: {0}; meta 1: {1}): the file is torn or corrupt")]
    BothMetasBad(String, String),
    #[error(
        "page {page} is out of range: the database has {high_water} pages and the file {file_pages}"
    )]
    PageOutOfRange {
        page: u64,
        high_water: u64,
        file_pages: u64,
    },
    #[error("page {page} is corrupt: {reason}")]
    Corrupt { page: u64, reason: String },
}

type Result<T> = std::result::Result<T, BboltError>;

/// The meta page a reader uses: the newer of the two that are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Which meta page it is (0 or 1).
    pub page: u64,
    pub page_size: u32,
    pub flags: u32,
    /// Root page of the top-level bucket (the bucket of buckets).
    pub root: u64,
    /// Page holding the freelist.
    pub freelist: u64,
    /// The high-water mark: pages at or after it are not part of the
    /// database.
    pub high_water: u64,
    pub txid: u64,
}

/// An open bbolt database over `data`.
pub struct Bbolt<'a> {
    data: &'a [u8],
    meta: Meta,
}

/// A bucket: where its B+tree starts.
#[derive(Debug, Clone, Copy)]
pub enum Bucket<'a> {
    /// Its root is a page of the file.
    Paged(u64),
    /// Small buckets are stored inline, a page in their parent's value.
    Inline(&'a [u8]),
}

/// One leaf element of a bucket.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// The value is a nested bucket's header, not a value.
    pub is_bucket: bool,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv64a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Parses and validates the meta page `which` found at `offset`.
fn read_meta(data: &[u8], offset: usize, which: u64) -> std::result::Result<Meta, String> {
    let Some(p) = data.get(offset..offset + PAGE_HEADER + META_SUMMED + 8) else {
        return Err(format!("the file ends before it ({} bytes)", data.len()));
    };
    let m = &p[PAGE_HEADER..];
    if u32_at(m, 0) != MAGIC {
        return Err("no bbolt magic number".into());
    }
    if u32_at(m, 4) != VERSION {
        return Err(format!("format version {} (bbolt writes 2)", u32_at(m, 4)));
    }
    let sum = u64_at(m, META_SUMMED);
    if fnv64a(&m[..META_SUMMED]) != sum {
        return Err("checksum mismatch".into());
    }
    if u16_at(p, 8) & META_PAGE == 0 {
        return Err(format!(
            "page flags {:#x} are not a meta page's",
            u16_at(p, 8)
        ));
    }
    let page_size = u32_at(m, 8);
    if !(512..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size}"));
    }
    Ok(Meta {
        page: which,
        page_size,
        flags: u32_at(m, 12),
        root: u64_at(m, 16),
        freelist: u64_at(m, 32),
        high_water: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

/// A page of the file, with its overflow pages.
struct Page<'a> {
    id: u64,
    flags: u16,
    count: usize,
    bytes: &'a [u8],
}

impl<'a> Page<'a> {
    /// Reads a page header from `bytes` (a page and its overflow, or an
    /// inline page) and checks that its elements fit.
    fn parse(id: u64, bytes: &'a [u8]) -> Result<Page<'a>> {
        if bytes.len() < PAGE_HEADER {
            return Err(corrupt(id, "shorter than a page header"));
        }
        let flags = u16_at(bytes, 8);
        let count = usize::from(u16_at(bytes, 10));
        if flags != BRANCH_PAGE && flags != LEAF_PAGE {
            return Err(corrupt(
                id,
                format!("flags {flags:#x} where a branch or leaf page belongs"),
            ));
        }
        if PAGE_HEADER + count * ELEMENT > bytes.len() {
            return Err(corrupt(id, format!("{count} elements do not fit in it")));
        }
        Ok(Page {
            id,
            flags,
            count,
            bytes,
        })
    }

    fn is_leaf(&self) -> bool {
        self.flags == LEAF_PAGE
    }

    /// `len` bytes at `pos` past element `i`'s own position.
    fn slice(&self, i: usize, pos: u32, len: u64) -> Result<&'a [u8]> {
        let at = (PAGE_HEADER + i * ELEMENT) as u64 + u64::from(pos);
        let end = at.saturating_add(len);
        if end > self.bytes.len() as u64 {
            return Err(corrupt(
                self.id,
                format!("element {i} points past the page's end"),
            ));
        }
        Ok(&self.bytes[at as usize..end as usize])
    }

    fn element(&self, i: usize) -> &'a [u8] {
        let at = PAGE_HEADER + i * ELEMENT;
        &self.bytes[at..at + ELEMENT]
    }

    /// Leaf element `i`: (flags, key, value).
    fn leaf(&self, i: usize) -> Result<(u32, &'a [u8], &'a [u8])> {
        let e = self.element(i);
        let (flags, pos, ksize, vsize) = (u32_at(e, 0), u32_at(e, 4), u32_at(e, 8), u32_at(e, 12));
        let both = self.slice(i, pos, u64::from(ksize) + u64::from(vsize))?;
        let (k, v) = both.split_at(ksize as usize);
        Ok((flags, k, v))
    }

    /// Branch element `i`: its child page.
    fn child(&self, i: usize) -> u64 {
        u64_at(self.element(i), 8)
    }
}

fn corrupt(page: u64, reason: impl Into<String>) -> BboltError {
    BboltError::Corrupt {
        page,
        reason: reason.into(),
    }
}

impl<'a> Bbolt<'a> {
    /// Opens the database in `data`: finds the page size, validates both
    /// meta pages and picks the newer valid one, as bbolt does.
    pub fn open(data: &'a [u8]) -> Result<Bbolt<'a>> {
        if data.len() < PAGE_HEADER + META_SUMMED + 8 {
            return Err(BboltError::NotBbolt(format!(
                "{} bytes is too short for a meta page",
                data.len()
            )));
        }
        if u32_at(data, PAGE_HEADER) != MAGIC {
            // Meta 0 may be torn; meta 1 still says it is bbolt's.
            let any = [4096usize, 8192, 16384, 65536, 512, 1024, 2048, 32768]
                .iter()
                .any(|&ps| {
                    data.len() >= ps + PAGE_HEADER + 4 && u32_at(data, ps + PAGE_HEADER) == MAGIC
                });
            if !any {
                return Err(BboltError::NotBbolt(
                    "no bbolt magic number in either meta page".into(),
                ));
            }
        }
        let m0 = read_meta(data, 0, 0);
        // Meta 1 is one page in: the page size meta 0 names when it is
        // valid, else any page size bbolt may have used.
        let m1 = match &m0 {
            Ok(m) => read_meta(data, m.page_size as usize, 1),
            Err(_) => [4096u32, 8192, 16384, 65536, 512, 1024, 2048, 32768]
                .iter()
                .map(|&ps| {
                    read_meta(data, ps as usize, 1).and_then(|m| {
                        if m.page_size == ps {
                            Ok(m)
                        } else {
                            Err(format!(
                                "page size {} where it was found at {ps}",
                                m.page_size
                            ))
                        }
                    })
                })
                .find(|m| m.is_ok())
                .unwrap_or_else(|| Err("not found at any page size".into())),
        };
        let meta = match (m0, m1) {
            (Ok(a), Ok(b)) => {
                if b.page_size != a.page_size {
                    return Err(BboltError::BothMetasBad(
                        format!("page size {}", a.page_size),
                        format!("page size {}", b.page_size),
                    ));
                }
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(a), Err(b)) => return Err(BboltError::BothMetasBad(a, b)),
        };
        let db = Bbolt { data, meta };
        let file_pages = db.file_pages();
        if meta.high_water > file_pages || meta.high_water < 2 {
            return Err(BboltError::PageOutOfRange {
                page: meta.high_water,
                high_water: meta.high_water,
                file_pages,
            });
        }
        Ok(db)
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Whole pages the file holds.
    pub fn file_pages(&self) -> u64 {
        self.data.len() as u64 / u64::from(self.meta.page_size)
    }

    /// Bytes of the database proper: its pages up to the high-water mark.
    pub fn size(&self) -> u64 {
        self.meta.high_water * u64::from(self.meta.page_size)
    }

    /// Page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Page<'a>> {
        let ps = u64::from(self.meta.page_size);
        let out_of_range = |page| BboltError::PageOutOfRange {
            page,
            high_water: self.meta.high_water,
            file_pages: self.file_pages(),
        };
        if id < 2 || id >= self.meta.high_water {
            return Err(out_of_range(id));
        }
        let start = (id * ps) as usize;
        let header = &self.data[start..start + PAGE_HEADER];
        if u64_at(header, 0) != id {
            return Err(corrupt(
                id,
                format!("its header says page {}", u64_at(header, 0)),
            ));
        }
        let overflow = u64::from(u32_at(header, 12));
        let end = id + 1 + overflow;
        if end > self.meta.high_water {
            return Err(out_of_range(end - 1));
        }
        Page::parse(id, &self.data[start..(end * ps) as usize])
    }

    /// The top-level bucket, whose entries are the database's buckets.
    pub fn root(&self) -> Bucket<'a> {
        Bucket::Paged(self.meta.root)
    }

    /// The nested bucket whose header is `entry`'s value.
    pub fn nested(&self, entry: &Entry<'a>) -> Result<Bucket<'a>> {
        if !entry.is_bucket || entry.value.len() < BUCKET_HEADER {
            return Err(corrupt(
                0,
                format!(
                    "{:?} is not a bucket header",
                    String::from_utf8_lossy(entry.key)
                ),
            ));
        }
        let root = u64_at(entry.value, 0);
        Ok(if root == 0 {
            Bucket::Inline(&entry.value[BUCKET_HEADER..])
        } else {
            Bucket::Paged(root)
        })
    }

    /// The top-level bucket named `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket<'a>>> {
        for e in self.entries(self.root()) {
            let e = e?;
            if e.key == name {
                return if e.is_bucket {
                    self.nested(&e).map(Some)
                } else {
                    Err(corrupt(
                        self.meta.root,
                        format!(
                            "{:?} is a key where a bucket belongs",
                            String::from_utf8_lossy(name)
                        ),
                    ))
                };
            }
        }
        Ok(None)
    }

    /// Every leaf element of `bucket`, in key order.
    pub fn entries(&self, bucket: Bucket<'a>) -> Entries<'a, '_> {
        let mut it = Entries {
            db: self,
            stack: Vec::new(),
            visited: vec![0; (self.meta.high_water as usize).div_ceil(64)],
            pending: None,
            last_key: None,
            bytes_read: 0,
            branch_pages: 0,
            overflow_pages: 0,
        };
        let first = match bucket {
            Bucket::Paged(id) => it.enter(id),
            Bucket::Inline(bytes) => Page::parse(0, bytes).and_then(|p| {
                if p.is_leaf() {
                    it.bytes_read += bytes.len() as u64;
                    it.stack.push((p, 0));
                    Ok(())
                } else {
                    Err(corrupt(0, "an inline bucket holds a branch page"))
                }
            }),
        };
        if let Err(e) = first {
            it.pending = Some(e);
        }
        it
    }
}

/// The walk of one bucket's B+tree: a stack of pages and the next element
/// of each.
pub struct Entries<'a, 'd> {
    db: &'d Bbolt<'a>,
    stack: Vec<(Page<'a>, usize)>,
    /// Pages already entered, one bit each.
    visited: Vec<u64>,
    /// An error found while starting, reported by the first `next`.
    pending: Option<BboltError>,
    last_key: Option<&'a [u8]>,
    bytes_read: u64,
    branch_pages: u64,
    overflow_pages: u64,
}

/// Deeper than any B+tree of 2^64 pages can be.
const MAX_DEPTH: usize = 64;

impl<'a> Entries<'a, '_> {
    /// Bytes of the pages entered so far (for progress).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Branch pages entered so far.
    pub fn branch_pages(&self) -> u64 {
        self.branch_pages
    }

    /// Overflow pages (those continuing a page too full for one) entered
    /// so far.
    pub fn overflow_pages(&self) -> u64 {
        self.overflow_pages
    }

    fn enter(&mut self, id: u64) -> Result<()> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(corrupt(id, "the tree is deeper than any valid one"));
        }
        let page = self.db.page(id)?;
        let (word, bit) = ((id / 64) as usize, id % 64);
        if self.visited[word] & (1 << bit) != 0 {
            return Err(corrupt(id, "it is reached twice in one bucket's tree"));
        }
        self.visited[word] |= 1 << bit;
        self.bytes_read += page.bytes.len() as u64;
        self.overflow_pages += page.bytes.len() as u64 / u64::from(self.db.meta.page_size) - 1;
        if !page.is_leaf() {
            self.branch_pages += 1;
        }
        self.stack.push((page, 0));
        Ok(())
    }

    fn step(&mut self) -> Result<Option<Entry<'a>>> {
        loop {
            let Some((page, i)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if *i >= page.count {
                self.stack.pop();
                continue;
            }
            let at = *i;
            *i += 1;
            if !page.is_leaf() {
                let child = page.child(at);
                self.enter(child)?;
                continue;
            }
            let (flags, key, value) = page.leaf(at)?;
            if self.last_key.is_some_and(|last| last >= key) {
                return Err(corrupt(
                    page.id,
                    "its keys are out of order with the ones before",
                ));
            }
            self.last_key = Some(key);
            return Ok(Some(Entry {
                key,
                value,
                is_bucket: flags & BUCKET_LEAF != 0,
            }));
        }
    }
}

impl<'a> Iterator for Entries<'a, '_> {
    type Item = Result<Entry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending.take() {
            self.stack.clear();
            return Some(Err(e));
        }
        match self.step() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.stack.clear();
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv64a_matches_the_published_test_vectors() {
        assert_eq!(fnv64a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv64a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn short_and_foreign_files_are_not_bbolt() {
        assert!(matches!(Bbolt::open(b"tiny"), Err(BboltError::NotBbolt(_))));
        assert!(matches!(
            Bbolt::open(&[0u8; 8192]),
            Err(BboltError::NotBbolt(_))
        ));
    }
}
