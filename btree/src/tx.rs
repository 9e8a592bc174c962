//! Transactions: a read transaction's life (a snapshot, nothing more) and a
//! write transaction's (materialise, change, spill, write, sync, publish).

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use crate::cursor::{Cursor, Range, TreeReader};
use crate::db::{Db, Snapshot, Writer};
use crate::error::{Error, Result};
use crate::node::NodeRef;
use crate::page::{
    encode_freelist, freelist_pages, PageId, PageView, MAX_KEY_SIZE, MAX_VALUE_SIZE,
};
use crate::tree::Arena;

/// A bucket's entry in the directory tree: its root page (0 when empty)
/// and its key count, 16 bytes little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BucketRecord {
    pub root: PageId,
    pub count: u64,
}

impl BucketRecord {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.root.to_le_bytes());
        b[8..].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    pub fn decode(v: &[u8], page: PageId) -> Result<BucketRecord> {
        if v.len() != 16 {
            return Err(Error::Corrupt {
                page,
                reason: format!("bucket record of {} bytes, expected 16", v.len()),
            });
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&v[..8]);
        let root = u64::from_le_bytes(a);
        a.copy_from_slice(&v[8..]);
        Ok(BucketRecord {
            root,
            count: u64::from_le_bytes(a),
        })
    }

    pub fn root_ref(&self) -> Option<NodeRef> {
        (self.root != 0).then_some(NodeRef::Page(self.root))
    }
}

fn root_ref(id: PageId) -> Option<NodeRef> {
    (id != 0).then_some(NodeRef::Page(id))
}

fn bucket_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// A read-only view of one committed state. Holds its snapshot (and the
/// pages it can reach) alive until dropped; `Send` and `Sync`, so it can be
/// shared across threads.
pub struct ReadTxn {
    snap: Arc<Snapshot>,
    page_size: usize,
}

impl ReadTxn {
    pub(crate) fn new(snap: Arc<Snapshot>, page_size: usize) -> ReadTxn {
        ReadTxn { snap, page_size }
    }

    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    pub(crate) fn reader(&self) -> TreeReader<'_> {
        TreeReader {
            map: &self.snap.map,
            page_size: self.page_size,
            high_water: self.snap.meta.high_water,
            nodes: &[],
        }
    }

    /// Bytes of the file this state uses (pages below the high-water mark,
    /// free ones included).
    pub fn size_in_use(&self) -> u64 {
        self.snap.meta.high_water * self.page_size as u64
    }

    /// Version of the commit this transaction sees (increases by one per
    /// commit while the handle is open).
    pub fn version(&self) -> u64 {
        self.snap.version
    }

    /// Opens a bucket, or `None` if it does not exist.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket<'_>>> {
        let reader = self.reader();
        let Some(v) = reader.get(root_ref(self.snap.meta.directory), name)? else {
            return Ok(None);
        };
        let rec = BucketRecord::decode(v, self.snap.meta.directory)?;
        Ok(Some(Bucket {
            reader,
            root: rec.root_ref(),
            count: rec.count,
        }))
    }

    /// Opens a bucket that must exist.
    pub fn open_bucket(&self, name: &[u8]) -> Result<Bucket<'_>> {
        self.bucket(name)?
            .ok_or_else(|| Error::BucketNotFound(bucket_name(name)))
    }

    /// Every bucket name with its key count, in name order.
    pub fn buckets(&self) -> Result<Vec<(Vec<u8>, u64)>> {
        let reader = self.reader();
        let dir = self.snap.meta.directory;
        let mut out = Vec::new();
        for item in Range::new(Cursor::new(reader, root_ref(dir)), b"", None) {
            let (k, v) = item?;
            out.push((k.to_vec(), BucketRecord::decode(v, dir)?.count));
        }
        Ok(out)
    }
}

/// One bucket as a read transaction sees it.
#[derive(Clone, Copy)]
pub struct Bucket<'t> {
    reader: TreeReader<'t>,
    root: Option<NodeRef>,
    count: u64,
}

impl<'t> Bucket<'t> {
    pub fn get(&self, key: &[u8]) -> Result<Option<&'t [u8]>> {
        self.reader.get(self.root, key)
    }

    pub fn cursor(&self) -> Cursor<'t> {
        Cursor::new(self.reader, self.root)
    }

    /// Entries with `start <= key < end` (`end` of `None`: to the last key).
    pub fn range(&self, start: &[u8], end: Option<&[u8]>) -> Range<'t> {
        Range::new(self.cursor(), start, end)
    }

    /// Number of keys.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// A bucket opened inside a write transaction.
#[derive(Debug, Clone, Copy)]
struct OpenBucket {
    root: Option<NodeRef>,
    count: u64,
    dirty: bool,
    exists: bool,
}

/// The one write transaction. Changes are private until `commit`; dropping
/// the transaction rolls it back.
pub struct WriteTxn<'db> {
    db: &'db Db,
    writer: MutexGuard<'db, Writer>,
    base: Arc<Snapshot>,
    arena: Arena,
    directory: Option<NodeRef>,
    buckets: HashMap<Vec<u8>, OpenBucket>,
    /// Commit even if no bucket changed (the directory or the file's
    /// layout did).
    force_write: bool,
}

impl<'db> WriteTxn<'db> {
    pub(crate) fn new(
        db: &'db Db,
        writer: MutexGuard<'db, Writer>,
        base: Arc<Snapshot>,
    ) -> WriteTxn<'db> {
        let arena = Arena::new(db.page_size(), base.meta.high_water);
        let directory = root_ref(base.meta.directory);
        WriteTxn {
            db,
            writer,
            base,
            arena,
            directory,
            buckets: HashMap::new(),
            force_write: false,
        }
    }

    /// Moves up to about `budget` tree nodes that sit on pages at or above
    /// `limit` (and the paths to them) to new pages when this transaction
    /// commits; new pages come from the lowest free ones. Returns how many
    /// nodes it moved. Keys and values do not change.
    pub(crate) fn relocate_above(&mut self, limit: PageId, budget: usize) -> Result<usize> {
        let map = self.base.map.clone();
        let mut names = Vec::new();
        for item in Range::new(
            Cursor::new(self.arena.reader(&map), self.directory),
            b"",
            None,
        ) {
            names.push(item?.0.to_vec());
        }
        let mut left = budget;
        let before = self.arena.nodes.len();
        for name in names {
            if left == 0 {
                break;
            }
            let mut b = self.existing_bucket(&name)?;
            if self
                .arena
                .relocate_above(&map, &mut b.root, limit, &mut left)?
            {
                self.store_bucket(&name, b);
            }
        }
        let mut dir = self.directory;
        if left > 0
            && self
                .arena
                .relocate_above(&map, &mut dir, limit, &mut left)?
        {
            self.directory = dir;
            self.force_write = true;
        }
        Ok(self.arena.nodes.len() - before)
    }

    /// Where an online defragmentation step should move pages from: the
    /// high-water mark, the page id above which nodes should move (the
    /// pages in use plus a little room), and how many nodes this step can
    /// move into free pages below that id.
    pub(crate) fn reclaim_plan(&self) -> (u64, PageId, usize) {
        let hw = self.base.meta.high_water;
        let fl = &self.writer.freelist;
        let used = hw.saturating_sub((fl.free_count() + fl.pending_count()) as u64);
        let limit = (used + (used / 16).max(32)).max(2);
        // Each moved node takes one free page below the limit; the bucket
        // directory's path and the freelist run need a few more.
        let room = fl.free_below(limit);
        let fl_pages = freelist_pages(fl.free_count() + fl.pending_count(), self.db.page_size());
        let cap = room.saturating_sub(8 + fl_pages);
        (hw, limit, cap)
    }

    /// Makes the commit write a new meta even if nothing else changed, so
    /// that free pages at the end of the file leave its high-water mark.
    pub(crate) fn force_write(&mut self) {
        self.force_write = true;
    }

    fn load_bucket(&mut self, name: &[u8]) -> Result<OpenBucket> {
        if let Some(b) = self.buckets.get(name) {
            return Ok(*b);
        }
        let found = self
            .arena
            .reader(&self.base.map)
            .get(self.directory, name)?;
        let b = match found {
            Some(v) => {
                let rec = BucketRecord::decode(v, self.base.meta.directory)?;
                OpenBucket {
                    root: rec.root_ref(),
                    count: rec.count,
                    dirty: false,
                    exists: true,
                }
            }
            None => OpenBucket {
                root: None,
                count: 0,
                dirty: false,
                exists: false,
            },
        };
        self.buckets.insert(name.to_vec(), b);
        Ok(b)
    }

    fn existing_bucket(&mut self, name: &[u8]) -> Result<OpenBucket> {
        let b = self.load_bucket(name)?;
        if !b.exists {
            return Err(Error::BucketNotFound(bucket_name(name)));
        }
        Ok(b)
    }

    fn store_bucket(&mut self, name: &[u8], b: OpenBucket) {
        if let Some(slot) = self.buckets.get_mut(name) {
            *slot = OpenBucket { dirty: true, ..b };
        }
    }

    pub fn bucket_exists(&mut self, name: &[u8]) -> Result<bool> {
        Ok(self.load_bucket(name)?.exists)
    }

    /// Creates an empty bucket; fails if it exists.
    pub fn create_bucket(&mut self, name: &[u8]) -> Result<()> {
        if !self.create_bucket_if_missing(name)? {
            return Err(Error::BucketExists(bucket_name(name)));
        }
        Ok(())
    }

    /// Creates the bucket unless it exists. Returns whether it was created.
    pub fn create_bucket_if_missing(&mut self, name: &[u8]) -> Result<bool> {
        check_key(name)?;
        let b = self.load_bucket(name)?;
        if b.exists {
            return Ok(false);
        }
        self.store_bucket(
            name,
            OpenBucket {
                root: None,
                count: 0,
                dirty: true,
                exists: true,
            },
        );
        Ok(true)
    }

    /// Deletes a bucket and every key in it.
    pub fn delete_bucket(&mut self, name: &[u8]) -> Result<()> {
        let b = self.existing_bucket(name)?;
        self.arena.free_tree(&self.base.map, b.root)?;
        self.store_bucket(
            name,
            OpenBucket {
                root: None,
                count: 0,
                dirty: true,
                exists: false,
            },
        );
        Ok(())
    }

    pub fn get(&mut self, bucket: &[u8], key: &[u8]) -> Result<Option<&[u8]>> {
        let b = self.existing_bucket(bucket)?;
        self.arena.reader(&self.base.map).get(b.root, key)
    }

    /// Inserts or replaces `key`.
    pub fn put(&mut self, bucket: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        check_key(key)?;
        if value.len() > MAX_VALUE_SIZE {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: MAX_VALUE_SIZE,
            });
        }
        let mut b = self.existing_bucket(bucket)?;
        if self.arena.put(&self.base.map, &mut b.root, key, value)? {
            b.count += 1;
        }
        self.store_bucket(bucket, b);
        Ok(())
    }

    /// Removes `key`. Returns whether it existed.
    pub fn delete(&mut self, bucket: &[u8], key: &[u8]) -> Result<bool> {
        let mut b = self.existing_bucket(bucket)?;
        let existed = self.arena.delete(&self.base.map, &mut b.root, key)?;
        if existed {
            b.count -= 1;
            self.store_bucket(bucket, b);
        }
        Ok(existed)
    }

    /// Number of keys in a bucket.
    pub fn len(&mut self, bucket: &[u8]) -> Result<u64> {
        Ok(self.existing_bucket(bucket)?.count)
    }

    /// A cursor over a bucket as this transaction sees it.
    pub fn cursor(&mut self, bucket: &[u8]) -> Result<Cursor<'_>> {
        let b = self.existing_bucket(bucket)?;
        Ok(Cursor::new(self.arena.reader(&self.base.map), b.root))
    }

    /// Entries with `start <= key < end` as this transaction sees them.
    pub fn range(&mut self, bucket: &[u8], start: &[u8], end: Option<&[u8]>) -> Result<Range<'_>> {
        Ok(Range::new(self.cursor(bucket)?, start, end))
    }

    /// Commits and makes the commit durable before returning: writes the
    /// changed pages, fdatasync, writes the meta page, fdatasync.
    pub fn commit(self) -> Result<()> {
        self.commit_inner(true)
    }

    /// Commits without fdatasync: new readers see the changes at once, but
    /// they become durable only at the next [`Db::sync`] or synced commit.
    /// A crash before then returns the file to the last durable commit.
    pub fn commit_nosync(self) -> Result<()> {
        self.commit_inner(false)
    }

    /// Discards every change.
    pub fn rollback(self) {}

    fn commit_inner(mut self, durable: bool) -> Result<()> {
        if !self.force_write && !self.buckets.values().any(|b| b.dirty) {
            return if durable {
                self.db.make_durable(&mut self.writer, &self.base)
            } else {
                Ok(())
            };
        }
        let started = std::time::Instant::now();
        let (pages_written, pages_freed) = match self.write_changes() {
            Ok(counts) => counts,
            Err(e) => {
                self.writer.poisoned = Some(e.to_string());
                return Err(e);
            }
        };
        if durable {
            let snap = self.db.snapshot();
            self.db.make_durable(&mut self.writer, &snap)?;
        }
        if let Some(observe) = self.db.shared.observer.get() {
            observe(&crate::observe::CommitDone {
                pages_written,
                pages_freed,
                free_pages: self.writer.freelist.free_count() as u64,
                durable,
                took: started.elapsed(),
            });
        }
        // Room for the next commits, allocated now (or the disk is full,
        // which the database then reports rather than fail a commit).
        self.db.keep_reserve(&mut self.writer);
        Ok(())
    }

    /// Spills every changed tree to new pages, writes them and the new
    /// freelist, and publishes the new snapshot (not yet durable). Returns
    /// the pages written and the pages freed.
    fn write_changes(&mut self) -> Result<(u64, u64)> {
        let ps = self.db.page_size();
        let version = self.writer.version + 1;
        let map = self.base.map.clone();
        let mut high_water = self.writer.freelist.trim_tail(self.base.meta.high_water);
        let mut runs: Vec<(PageId, Vec<u8>)> = Vec::new();

        let mut names: Vec<Vec<u8>> = self
            .buckets
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        for name in names {
            let b = self.buckets[&name];
            if !b.exists {
                self.arena.delete(&map, &mut self.directory, &name)?;
                continue;
            }
            let root = match b.root {
                None => 0,
                Some(r) => {
                    let freelist = &mut self.writer.freelist;
                    self.arena.spill(
                        r,
                        &mut |n| allocate(freelist, &mut high_water, n),
                        &mut |id, buf| runs.push((id, buf)),
                    )
                }
            };
            let rec = BucketRecord {
                root,
                count: b.count,
            };
            self.arena
                .put(&map, &mut self.directory, &name, &rec.encode())?;
        }
        let directory = match self.directory {
            None => 0,
            Some(r) => {
                let freelist = &mut self.writer.freelist;
                self.arena.spill(
                    r,
                    &mut |n| allocate(freelist, &mut high_water, n),
                    &mut |id, buf| runs.push((id, buf)),
                )
            }
        };

        // The freelist: the old run is freed, a new run written.
        let old_fl = PageView::open(&map, ps, self.base.meta.high_water, self.base.meta.freelist)?;
        let freelist = &mut self.writer.freelist;
        freelist.free_freelist_run(version, old_fl.id, old_fl.pages(ps));
        for &(id, pages) in &self.arena.freed {
            freelist.free_run(version, id, pages);
        }
        let fl_pages = freelist_pages(freelist.free_count() + freelist.pending_count(), ps);
        let fl_id = allocate(freelist, &mut high_water, fl_pages as u64);
        runs.push((
            fl_id,
            encode_freelist(fl_id, fl_pages, ps, &freelist.persisted_ids()),
        ));

        let freed = old_fl.pages(ps) + self.arena.freed.iter().map(|r| r.1).sum::<u64>();
        let written = runs
            .iter()
            .map(|(_, buf)| (buf.len() as u64).div_ceil(ps as u64))
            .sum();
        self.db.ensure_capacity(&mut self.writer, high_water)?;
        self.db.write_runs(&self.writer, runs)?;

        let meta = crate::page::Meta {
            page_size: ps as u32,
            directory,
            freelist: fl_id,
            high_water,
            txid: self.writer.durable_txid,
        };
        let snap = Arc::new(Snapshot {
            version,
            meta,
            map: self.writer.map.clone(),
        });
        self.writer.version = version;
        self.db.publish(&mut self.writer, snap);
        Ok((written, freed))
    }
}

fn allocate(freelist: &mut crate::freelist::Freelist, high_water: &mut u64, pages: u64) -> PageId {
    let id = match freelist.allocate(pages as usize) {
        Some(id) => id,
        None => {
            let id = *high_water;
            *high_water += pages;
            id
        }
    };
    freelist.mark_fresh(id, pages);
    id
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_SIZE {
        return Err(Error::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_SIZE,
        });
    }
    Ok(())
}
