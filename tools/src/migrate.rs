//! `kvtool migrate from-etcd`: an etcd 3.x member's data directory, or a
//! file written by `etcdctl snapshot save`, made into kvserver data
//! directories for a new cluster, with its whole history kept.
//!
//! etcd's backend is read directly (`tools::bbolt`, `tools::etcd`): every
//! revision of the `key` bucket, byte for byte (so HashKV agrees with
//! etcd's), the compaction revisions, the leases, and the auth store. The
//! records go through `mvcc::Import` into a new database, which is then
//! written into each member's data directory as `snapshot restore` does
//! (`server::restore`): each directory is built beside its final place and
//! renamed there complete, so a failure leaves none behind.

use std::path::{Path, PathBuf};
use std::time::Instant;

use prost::Message as _;
use serde_json::json;
use sha2::{Digest, Sha256};
use tools::etcd::EtcdBackend;

use crate::output::{bytes, print_json, progress, Format};
use crate::Failure;

#[derive(clap::Args)]
pub struct FromEtcdArgs {
    /// etcd's data directory (its `member/snap/db` is read; etcd must be
    /// stopped) or a file written by `etcdctl snapshot save`.
    source: PathBuf,
    /// The new member's data directory (default `<name>.etcd`). With
    /// several members in --initial-cluster and no --name: the directory
    /// that receives one data directory per member, named after it.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The one member to write (default: every member of
    /// --initial-cluster).
    #[arg(long)]
    name: Option<String>,
    /// The new cluster's members, `name=peer-url,...`.
    #[arg(long, default_value = "default=http://localhost:2380")]
    initial_cluster: String,
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// The peer URLs of the member --name names (default: its URLs in
    /// --initial-cluster).
    #[arg(long)]
    initial_advertise_peer_urls: Option<String>,
}

/// A data directory to write: the member's name, its peer URLs, where.
struct Target {
    name: String,
    peer_urls: String,
    data_dir: PathBuf,
}

/// The members of `--initial-cluster`, in order, with their URLs joined.
fn members(spec: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: bad entry {part:?}"))?;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => out.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if out.is_empty() {
        return Err("--initial-cluster names no member".into());
    }
    Ok(out.into_iter().map(|(n, u)| (n, u.join(","))).collect())
}

fn targets(args: &FromEtcdArgs) -> Result<Vec<Target>, String> {
    let all = members(&args.initial_cluster)?;
    if let Some(name) = &args.name {
        let Some((_, urls)) = all.iter().find(|(n, _)| n == name) else {
            return Err(format!("--name {name:?} is not in --initial-cluster"));
        };
        return Ok(vec![Target {
            name: name.clone(),
            peer_urls: args
                .initial_advertise_peer_urls
                .clone()
                .unwrap_or_else(|| urls.clone()),
            data_dir: args
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{name}.etcd"))),
        }]);
    }
    if args.initial_advertise_peer_urls.is_some() && all.len() > 1 {
        return Err(
            "--initial-advertise-peer-urls names one member's URLs: give --name too".into(),
        );
    }
    if all.len() == 1 {
        let (name, urls) = &all[0];
        return Ok(vec![Target {
            name: name.clone(),
            peer_urls: args
                .initial_advertise_peer_urls
                .clone()
                .unwrap_or_else(|| urls.clone()),
            data_dir: args
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{name}.etcd"))),
        }]);
    }
    let Some(parent) = &args.data_dir else {
        return Err(
            "--initial-cluster names several members: give --data-dir (the directory for their \
             data directories) or --name (one member)"
                .into(),
        );
    };
    Ok(all
        .into_iter()
        .map(|(name, peer_urls)| Target {
            data_dir: parent.join(&name),
            name,
            peer_urls,
        })
        .collect())
}

/// The database file in SOURCE, and whether SOURCE is a data directory.
fn database_file(source: &Path) -> Result<(PathBuf, bool), String> {
    if source.is_dir() {
        let db = source.join("member").join("snap").join("db");
        if !db.is_file() {
            return Err(format!(
                "{}: a directory without member/snap/db: not an etcd data directory",
                source.display()
            ));
        }
        Ok((db, true))
    } else if source.is_file() {
        Ok((source.to_path_buf(), false))
    } else {
        Err(format!("{}: no such file or directory", source.display()))
    }
}

/// Takes a shared lock on etcd's database: etcd holds an exclusive one
/// while it runs, so this fails then, and etcd cannot start meanwhile.
fn lock_shared(file: &std::fs::File, path: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function's caller owns; it takes
    // no pointers.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Err(format!(
            "{}: locked by a running etcd; stop it first (or migrate a file from `etcdctl snapshot save`)",
            path.display()
        ))
    } else {
        Err(format!("{}: lock: {e}", path.display()))
    }
}

/// Bytes of etcd's database read between releases of its mapped pages.
const RELEASE_EVERY: u64 = 64 << 20;

/// Drops the pages of etcd's database this process has read from its
/// resident memory (they stay in the page cache).
fn release_pages(map: &memmap2::Mmap) {
    // SAFETY: the map is a read-only view of a file nothing here writes
    // (and etcd cannot while the lock is held); dropping its pages only
    // makes later reads fault them in again from the page cache with the
    // same contents, so the slices borrowed from it stay valid.
    let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
}

/// [`release_pages`] for `len` bytes at `offset`.
fn release_range(map: &memmap2::Mmap, offset: usize, len: usize) {
    // SAFETY: as for `release_pages`.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the import found in etcd's database.
#[derive(Default)]
struct Found {
    auth_enabled: bool,
    alarms: u64,
    dropped_buckets: Vec<String>,
}

fn bad(bucket: &str, key: &[u8], reason: impl std::fmt::Display) -> String {
    format!(
        "etcd's `{bucket}` bucket, record {:?}: {reason}",
        String::from_utf8_lossy(key)
    )
}

/// Every record kvserver keeps, from `etcd` into `import`.
fn copy_records(
    etcd: &EtcdBackend<'_>,
    import: &mut mvcc::Import,
    bar: &indicatif::ProgressBar,
    release_pages: &dyn Fn(),
) -> Result<Found, String> {
    use server::pb::authpb;
    let mut found = Found::default();
    let mut read_before = 0;
    let mut released_at = 0;
    for name in etcd.bucket_names() {
        let mut entries = etcd
            .entries(name.as_bytes())
            .ok_or_else(|| format!("bucket {name:?} vanished"))?;
        let mut n = 0u64;
        while let Some(e) = entries.next() {
            let e = e.map_err(|e| e.to_string())?;
            n += 1;
            if n.is_multiple_of(1024) {
                let read = read_before + entries.bytes_read();
                bar.set_position(read);
                bar.set_message(format!("{} revisions", import.counts().revisions));
                // Pages read once need not stay resident.
                if read - released_at >= RELEASE_EVERY {
                    release_pages();
                    released_at = read;
                }
            }
            let known = matches!(
                name.as_str(),
                "key" | "lease" | "auth" | "authUsers" | "authRoles"
            );
            if e.is_bucket && known {
                return Err(bad(&name, e.key, "a nested bucket where records belong"));
            }
            let (k, v) = (e.key, e.value);
            match name.as_str() {
                "key" => import.revision(k, v).map_err(|e| bad(&name, k, e))?,
                "lease" => import.lease(k, v).map_err(|e| bad(&name, k, e))?,
                "auth" => match k {
                    b"authEnabled" => {
                        if v.len() != 1 {
                            return Err(bad(&name, k, format!("{} bytes, not 1", v.len())));
                        }
                        found.auth_enabled = v[0] == 1;
                        import
                            .auth_record(mvcc::AuthBucket::Meta, k, v)
                            .map_err(|e| bad(&name, k, e))?;
                    }
                    b"authRevision" => {
                        if v.len() != 8 {
                            return Err(bad(&name, k, format!("{} bytes, not 8", v.len())));
                        }
                        import
                            .auth_record(mvcc::AuthBucket::Meta, k, v)
                            .map_err(|e| bad(&name, k, e))?;
                    }
                    _ => {}
                },
                "authUsers" => {
                    let u = authpb::User::decode(v).map_err(|e| bad(&name, k, e))?;
                    if u.name != k {
                        return Err(bad(&name, k, "the user record names another user"));
                    }
                    import
                        .auth_record(mvcc::AuthBucket::Users, k, v)
                        .map_err(|e| bad(&name, k, e))?;
                }
                "authRoles" => {
                    let r = authpb::Role::decode(v).map_err(|e| bad(&name, k, e))?;
                    if r.name != k {
                        return Err(bad(&name, k, "the role record names another role"));
                    }
                    import
                        .auth_record(mvcc::AuthBucket::Roles, k, v)
                        .map_err(|e| bad(&name, k, e))?;
                }
                "alarm" => found.alarms += 1,
                _ => {}
            }
        }
        read_before += entries.bytes_read();
        bar.set_position(read_before);
        if !matches!(
            name.as_str(),
            "key" | "meta" | "lease" | "auth" | "authUsers" | "authRoles" | "alarm"
        ) {
            found.dropped_buckets.push(name);
        }
    }
    Ok(found)
}

pub fn from_etcd(args: &FromEtcdArgs, fmt: Format) -> Result<(), Failure> {
    let started = Instant::now();
    let targets = targets(args)?;
    for t in &targets {
        if t.data_dir.exists()
            && std::fs::read_dir(&t.data_dir).map_or(true, |mut d| d.next().is_some())
        {
            return Err(format!("data-dir {:?} exists", t.data_dir).into());
        }
    }
    let (db_path, is_data_dir) = database_file(&args.source)?;
    let file =
        std::fs::File::open(&db_path).map_err(|e| format!("{}: open: {e}", db_path.display()))?;
    lock_shared(&file, &db_path)?;
    // SAFETY: the map is only read. The file is locked against etcd (which
    // would take an exclusive lock to write it); another process
    // truncating it meanwhile would end this one with SIGBUS, not corrupt
    // anything, as nothing here writes through the map.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| format!("{}: map: {e}", db_path.display()))?;
    let data: &[u8] = &map;
    let etcd = EtcdBackend::open(data).map_err(|e| format!("{}: {e}", db_path.display()))?;
    let page_size = u64::from(etcd.bolt.meta().page_size);
    // A saved snapshot is the database followed by its SHA-256.
    let mut hash_checked = false;
    if !is_data_dir && data.len() as u64 % page_size == 32 {
        let (db, sum) = data.split_at(data.len() - 32);
        // In steps, each step's pages let go of once hashed.
        let mut hasher = Sha256::new();
        for (i, chunk) in db.chunks(RELEASE_EVERY as usize).enumerate() {
            hasher.update(chunk);
            release_range(&map, i * RELEASE_EVERY as usize, chunk.len());
        }
        if hasher.finalize().as_slice() != sum {
            return Err(format!(
                "{}: the SHA-256 at the end of the snapshot does not match its contents",
                db_path.display()
            )
            .into());
        }
        hash_checked = true;
    }
    let meta = etcd
        .meta()
        .map_err(|e| format!("{}: {e}", db_path.display()))?;

    let first = &targets[0].data_dir;
    let parent = match first.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let scratch = Scratch(parent.join(format!(".kvtool-migrate-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    std::fs::create_dir(&scratch.0).map_err(|e| format!("{}: {e}", scratch.0.display()))?;
    let new_db = scratch.0.join("db");

    let bar = progress(etcd.bolt.size(), "reading etcd's database");
    let mut import = mvcc::Import::create(&new_db)?;
    let release = || release_pages(&map);
    let found = copy_records(&etcd, &mut import, &bar, &release).map_err(|e| {
        bar.finish_and_clear();
        format!("{}: {e}", db_path.display())
    })?;
    bar.set_message("writing");
    let counts = import.counts();
    let store = import
        .finish(mvcc::ImportMeta {
            consistent_index: meta.consistent_index.max(1),
            term: meta.term,
            scheduled_compaction: meta.scheduled_compaction,
            finished_compaction: meta.finished_compaction,
        })
        .map_err(|e| {
            bar.finish_and_clear();
            format!("{}: {e}", db_path.display())
        })?;
    bar.finish_and_clear();
    let (revision, compacted, keys) = (
        store.current_revision(),
        store.compacted_revision(),
        store.key_count(),
    );
    drop(store);
    drop(map);
    drop(file);

    let mut written = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        use clap::Parser;
        let cfg = server::config::Config::try_parse_from([
            "kvserver".to_string(),
            "--name".into(),
            t.name.clone(),
            "--data-dir".into(),
            t.data_dir.display().to_string(),
            "--initial-cluster".into(),
            args.initial_cluster.clone(),
            "--initial-cluster-token".into(),
            args.initial_cluster_token.clone(),
            "--initial-advertise-peer-urls".into(),
            t.peer_urls.clone(),
        ])?;
        // The last member takes the new database itself, the others a copy.
        let source = if i + 1 == targets.len() {
            server::restore::Source::MoveDatabase(&new_db)
        } else {
            server::restore::Source::Database(&new_db)
        };
        let r = server::restore::restore_from(&cfg, source);
        match r {
            Ok(r) => written.push(r),
            Err(e) => {
                // All or nothing: the directories already written go too.
                for w in &written {
                    let _ = std::fs::remove_dir_all(&w.data_dir);
                }
                return Err(format!("{}: {e}", t.data_dir.display()).into());
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut notes = Vec::new();
    if found.alarms > 0 {
        notes.push(format!(
            "{} alarm(s) dropped: the new cluster starts with none",
            found.alarms
        ));
    }
    if !found.dropped_buckets.is_empty() {
        notes.push(format!(
            "left behind (the new cluster has its own): {}",
            found.dropped_buckets.join(", ")
        ));
    }
    match fmt {
        Format::Json => print_json(&json!({
            "source": args.source.display().to_string(),
            "revisions": counts.revisions,
            "revision": revision,
            "compact_revision": compacted,
            "keys": keys,
            "leases": counts.leases,
            "users": counts.users,
            "roles": counts.roles,
            "auth_enabled": found.auth_enabled,
            "bytes": counts.bytes,
            "sha256_checked": hash_checked,
            "data_dirs": written.iter().map(|r| json!({
                "data_dir": r.data_dir.display().to_string(),
                "member_id": format!("{:x}", r.member_id),
                "cluster_id": format!("{:x}", r.cluster_id),
            })).collect::<Vec<_>>(),
            "notes": notes,
            "seconds": seconds,
        })),
        Format::Simple => {
            println!(
                "migrated {} ({}): {} revisions up to {revision} (compacted at {compacted}), {keys} keys, {} leases, {} users, {} roles, auth {}{}",
                args.source.display(),
                bytes(counts.bytes),
                counts.revisions,
                counts.leases,
                counts.users,
                counts.roles,
                if found.auth_enabled { "enabled" } else { "disabled" },
                if hash_checked { ", sha256 verified" } else { "" },
            );
            for r in &written {
                println!(
                    "  {} (member {:x}, cluster {:x})",
                    r.data_dir.display(),
                    r.member_id,
                    r.cluster_id
                );
            }
            for n in &notes {
                println!("note: {n}");
            }
            println!("in {seconds:.1} s");
        }
    }
    Ok(())
}
