//! `inspect db`, `check db` and `defrag`: the database file offline.

use std::path::Path;

use btree::page::Meta;
use btree::{Db, MetaSlot, Options, Stats};
use serde_json::{json, Value};

use crate::output::{bytes, print_json, spinner, Format};
use crate::Failure;

/// Opens `file` read-only (under a shared lock: a running server's
/// exclusive lock makes this fail with a clear message).
fn open_read_only(file: &Path) -> Result<Db, btree::Error> {
    Db::open_with(
        file,
        Options {
            read_only: true,
            ..Options::default()
        },
    )
}

/// The two meta pages read straight from the file, for when the database
/// cannot be opened at all.
fn raw_metas(file: &Path) -> Vec<MetaSlot> {
    let data = std::fs::read(file).unwrap_or_default();
    let ps = 4096;
    let decoded: Vec<Result<Meta, String>> = (0..2)
        .map(|i| {
            data.get(i * ps..(i + 1) * ps)
                .ok_or_else(|| "beyond the end of the file".to_string())
                .and_then(|p| Meta::decode(p).map_err(|e| e.to_string()))
        })
        .collect();
    let newest = decoded
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.as_ref().ok().map(|m| (m.txid, i)))
        .max()
        .map(|(_, i)| i);
    decoded
        .into_iter()
        .enumerate()
        .map(|(i, meta)| MetaSlot {
            slot: i as u64,
            active: Some(i) == newest,
            meta,
        })
        .collect()
}

fn meta_json(m: &MetaSlot) -> Value {
    match &m.meta {
        Ok(meta) => json!({
            "slot": m.slot, "valid": true, "active": m.active, "txid": meta.txid,
            "high_water": meta.high_water, "freelist_page": meta.freelist,
            "directory_page": meta.directory, "page_size": meta.page_size,
        }),
        Err(e) => json!({"slot": m.slot, "valid": false, "active": false, "error": e}),
    }
}

fn meta_line(m: &MetaSlot) -> String {
    match &m.meta {
        Ok(meta) => format!(
            "meta {}: txid {}, checksum ok{}, high water {} pages, freelist page {}, directory page {}",
            m.slot,
            meta.txid,
            if m.active { ", ACTIVE" } else { "" },
            meta.high_water,
            meta.freelist,
            meta.directory
        ),
        Err(e) => format!("meta {}: INVALID ({e})", m.slot),
    }
}

/// The MVCC layer's view of the file, read from its buckets.
pub(crate) struct MvccView {
    pub(crate) current_revision: i64,
    pub(crate) compacted_revision: u64,
    pub(crate) scheduled_compaction: u64,
    pub(crate) consistent_index: u64,
    pub(crate) term: u64,
    pub(crate) keys: u64,
    pub(crate) live_keys: u64,
    pub(crate) revisions: u64,
    pub(crate) leases: u64,
    pub(crate) alarms: u64,
}

fn be_u64(v: Option<&[u8]>) -> u64 {
    v.and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

pub(crate) fn mvcc_view(db: &Db) -> Result<Option<MvccView>, String> {
    let txn = db.begin_read();
    let Some(key) = txn
        .bucket(mvcc::buckets::KEY_BUCKET)
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let mut view = MvccView {
        current_revision: 1,
        compacted_revision: 0,
        scheduled_compaction: 0,
        consistent_index: 0,
        term: 0,
        keys: 0,
        live_keys: 0,
        revisions: key.len(),
        leases: 0,
        alarms: 0,
    };
    if let Some(meta) = txn
        .bucket(mvcc::buckets::META_BUCKET)
        .map_err(|e| e.to_string())?
    {
        let get = |k: &[u8]| meta.get(k).map_err(|e| e.to_string());
        view.consistent_index = be_u64(get(b"consistent_index")?);
        view.term = be_u64(get(b"term")?);
        view.compacted_revision = be_u64(get(b"finishedCompactRev")?);
        view.scheduled_compaction = be_u64(get(b"scheduledCompactRev")?);
    }
    for (name, count) in [
        (mvcc::buckets::LEASE_BUCKET, &mut view.leases),
        (mvcc::buckets::ALARM_BUCKET, &mut view.alarms),
    ] {
        if let Some(b) = txn.bucket(name).map_err(|e| e.to_string())? {
            *count = b.len();
        }
    }
    // Every record in revision order: the last one of each key says
    // whether the key is live (a tombstone's revision key ends in 't').
    let mut latest_is_tombstone: std::collections::HashMap<Vec<u8>, bool> = Default::default();
    let pb = spinner("reading revisions");
    for item in key.range(b"", None) {
        let (rev, value) = item.map_err(|e| e.to_string())?;
        if rev.len() >= 8 {
            let main = i64::from_be_bytes(rev[..8].try_into().unwrap_or_default());
            view.current_revision = view.current_revision.max(main);
        }
        let head = <mvcc::kv::KeyValueHead as prost::Message>::decode(value)
            .map_err(|e| format!("a record at revision key {rev:02x?} does not decode: {e}"))?;
        latest_is_tombstone.insert(head.key, rev.last() == Some(&b't'));
    }
    pb.finish_and_clear();
    // Compaction removes the tombstones of deleted keys: the store's
    // revision is at least the compacted one (as the store computes it).
    view.current_revision = view
        .current_revision
        .max(view.compacted_revision as i64)
        .max(view.scheduled_compaction as i64);
    view.keys = latest_is_tombstone.len() as u64;
    view.live_keys = latest_is_tombstone.values().filter(|t| !**t).count() as u64;
    Ok(Some(view))
}

fn page_map(stats: &Stats) -> String {
    let mut out = String::new();
    for (i, chunk) in stats.page_kinds.chunks(64).enumerate() {
        out.push_str(&format!("{:>8} ", i * 64));
        out.extend(chunk.iter().map(|k| k.symbol()));
        out.push('\n');
    }
    out
}

pub fn inspect(file: &Path, pages: bool, fmt: Format) -> Result<(), Failure> {
    let db = match open_read_only(file) {
        Ok(db) => db,
        Err(e) => {
            // Say what can still be said: the meta pages.
            let metas = raw_metas(file);
            match fmt {
                Format::Json => print_json(&json!({
                    "file": file.display().to_string(),
                    "error": e.to_string(),
                    "metas": metas.iter().map(meta_json).collect::<Vec<_>>(),
                })),
                Format::Simple => {
                    println!("file: {}", file.display());
                    for m in &metas {
                        println!("{}", meta_line(m));
                    }
                }
            }
            return Err(Failure {
                message: format!("cannot open {}: {e}", file.display()),
                code: 1,
            });
        }
    };
    let pb = spinner("walking pages");
    let stats = db.stats();
    pb.finish_and_clear();
    let view = mvcc_view(&db);
    let used_pct = if stats.file_size > 0 {
        100.0 * stats.used_size as f64 / stats.file_size as f64
    } else {
        0.0
    };
    match fmt {
        Format::Json => {
            let buckets: Vec<Value> = stats
                .buckets
                .iter()
                .map(|b| {
                    json!({
                        "name": String::from_utf8_lossy(&b.name),
                        "keys": b.keys, "depth": b.depth,
                        "branch_pages": b.branch_pages, "leaf_pages": b.leaf_pages,
                        "overflow_pages": b.overflow_pages, "fill_ratio": b.fill_ratio(),
                    })
                })
                .collect();
            let mvcc = match &view {
                Ok(Some(v)) => json!({
                    "current_revision": v.current_revision,
                    "compacted_revision": v.compacted_revision,
                    "scheduled_compaction": v.scheduled_compaction,
                    "consistent_index": v.consistent_index, "term": v.term,
                    "keys": v.keys, "live_keys": v.live_keys, "revisions": v.revisions,
                    "leases": v.leases, "alarms": v.alarms,
                }),
                Ok(None) => Value::Null,
                Err(e) => json!({"error": e}),
            };
            let mut doc = json!({
                "file": file.display().to_string(),
                "page_size": stats.page_size,
                "file_size": stats.file_size,
                "used_size": stats.used_size,
                "high_water": stats.high_water,
                "metas": stats.metas.iter().map(meta_json).collect::<Vec<_>>(),
                "pages": {
                    "branch": stats.branch_pages, "leaf": stats.leaf_pages,
                    "overflow": stats.overflow_pages, "freelist": stats.freelist_pages,
                    "free": stats.free_pages,
                },
                "largest_free_run": stats.largest_free_run,
                "buckets": buckets,
                "mvcc": mvcc,
            });
            if pages {
                doc["page_map"] =
                    Value::String(stats.page_kinds.iter().map(|k| k.symbol()).collect());
            }
            print_json(&doc);
        }
        Format::Simple => {
            println!("file: {}", file.display());
            println!("page size: {}", stats.page_size);
            println!(
                "file size: {} ({}), in use: {} ({}, {used_pct:.1}%), high water: {} pages",
                stats.file_size,
                bytes(stats.file_size),
                stats.used_size,
                bytes(stats.used_size),
                stats.high_water
            );
            for m in &stats.metas {
                println!("{}", meta_line(m));
            }
            println!(
                "pages: {} branch, {} leaf, {} overflow, {} freelist, {} free (largest free run {})",
                stats.branch_pages,
                stats.leaf_pages,
                stats.overflow_pages,
                stats.freelist_pages,
                stats.free_pages,
                stats.largest_free_run
            );
            println!("buckets:");
            for b in &stats.buckets {
                println!(
                    "  {:<16} {:>10} keys, depth {}, {} branch + {} leaf + {} overflow pages, fill {:.0}%",
                    String::from_utf8_lossy(&b.name),
                    b.keys,
                    b.depth,
                    b.branch_pages,
                    b.leaf_pages,
                    b.overflow_pages,
                    100.0 * b.fill_ratio()
                );
            }
            match &view {
                Ok(Some(v)) => {
                    println!("mvcc:");
                    println!("  current revision:   {}", v.current_revision);
                    println!("  compacted revision: {}", v.compacted_revision);
                    if v.scheduled_compaction != v.compacted_revision {
                        println!("  scheduled compaction: {}", v.scheduled_compaction);
                    }
                    println!(
                        "  consistent index:   {} (term {})",
                        v.consistent_index, v.term
                    );
                    println!(
                        "  keys: {} ({} live), revisions: {}, leases: {}, alarms: {}",
                        v.keys, v.live_keys, v.revisions, v.leases, v.alarms
                    );
                }
                Ok(None) => println!("mvcc: no key bucket (not a kvserver database)"),
                Err(e) => println!("mvcc: unreadable ({e})"),
            }
            if pages {
                println!(
                    "page map (M meta, F freelist, B branch, L leaf, o overflow, . free, ? unaccounted):"
                );
                print!("{}", page_map(&stats));
            }
        }
    }
    Ok(())
}

pub fn check(file: &Path, fmt: Format) -> Result<(), Failure> {
    let db = open_read_only(file).map_err(|e| Failure {
        message: format!("cannot open {}: {e}", file.display()),
        code: 2,
    })?;
    let pb = spinner("checking");
    let mut report = db.check();
    pb.finish_and_clear();
    // The library counts an invalid meta page as a note (a crash during a
    // commit leaves one, and the file stays consistent through the other);
    // for an operator it is damage to report, with its page.
    for m in raw_metas(file) {
        if let Err(e) = &m.meta {
            report.problems.insert(
                0,
                btree::Problem {
                    page: m.slot,
                    message: format!(
                        "meta page is not valid ({e}); the file opens from the other meta page"
                    ),
                },
            );
        }
    }
    match fmt {
        Format::Json => print_json(&json!({
            "file": file.display().to_string(),
            "clean": report.is_clean(),
            "pages_checked": report.pages_checked,
            "problems": report.problems.iter()
                .map(|p| json!({"page": p.page, "message": p.message}))
                .collect::<Vec<_>>(),
            "notes": report.notes,
        })),
        Format::Simple => println!("{report}"),
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(Failure {
            message: format!(
                "{}: {} problems found",
                file.display(),
                report.problems.len()
            ),
            code: 1,
        })
    }
}

pub fn defrag(file: &Path, fmt: Format) -> Result<(), Failure> {
    // Opening for writing would create a missing file.
    if !file.is_file() {
        return Err(format!("{}: no such database file", file.display()).into());
    }
    let db = Db::open(file).map_err(|e| match e {
        btree::Error::Locked(_) => Failure::from(format!(
            "{} is in use (is a server running on it?); use `etcdctl defrag` for a live member",
            file.display()
        )),
        other => Failure::from(format!("cannot open {}: {other}", file.display())),
    })?;
    let size = |f: &Path| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
    let before = size(file);
    let pb = spinner("defragmenting");
    let started = std::time::Instant::now();
    let stats = db.defragment()?;
    pb.finish_and_clear();
    let took = started.elapsed();
    drop(db);
    let after = size(file);
    match fmt {
        Format::Json => print_json(&json!({
            "file": file.display().to_string(),
            "before_bytes": before,
            "after_bytes": after,
            "keys": stats.keys,
            "seconds": took.as_secs_f64(),
        })),
        Format::Simple => println!(
            "defragmented {}: {} -> {} ({} keys in {} buckets, {:.2?})",
            file.display(),
            bytes(before),
            bytes(after),
            stats.keys,
            stats.buckets,
            took
        ),
    }
    Ok(())
}
