//! `snapshot save`, `snapshot status` and `snapshot restore`.
//!
//! A snapshot file is what the Maintenance.Snapshot stream sends: the
//! member's database followed by the SHA-256 of it (etcd's format, so files
//! saved from etcd and from kvserver are handled alike by the tools that
//! only need the hash; restoring needs a kvserver database).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::output::{bytes, print_json, progress, Format};
use crate::Failure;

#[derive(clap::Args)]
pub struct SaveArgs {
    /// Where to write the snapshot.
    file: PathBuf,
    /// The member to take it from (the first one listed is used).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The snapshot file.
    file: PathBuf,
    /// The new member's data directory (must not exist).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The new member's name.
    #[arg(long, default_value = "default")]
    name: String,
    /// The new cluster's members, `name=peer-url,...`.
    #[arg(long, default_value = "default=http://localhost:2380")]
    initial_cluster: String,
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    #[arg(long, default_value = "http://localhost:2380")]
    initial_advertise_peer_urls: String,
}

/// `host:port` or a URL, as tonic wants it.
pub fn endpoint_url(e: &str) -> String {
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::from(format!("starting the async runtime: {e}")))
}

pub fn save(args: &SaveArgs, fmt: Format) -> Result<(), Failure> {
    use server::pb::etcdserverpb::maintenance_client::MaintenanceClient;
    use server::pb::etcdserverpb::SnapshotRequest;

    let endpoint = endpoint_url(args.endpoints.first().map_or("127.0.0.1:2379", |s| s));
    let part = args.file.with_extension("part");
    let rt = runtime()?;
    let size = rt.block_on(async {
        let mut client = MaintenanceClient::connect(endpoint.clone())
            .await
            .map_err(|e| format!("connecting to {endpoint}: {e}"))?
            .max_decoding_message_size(64 << 20);
        let mut stream = client
            .snapshot(SnapshotRequest {})
            .await
            .map_err(|e| format!("snapshot: {}", e.message()))?
            .into_inner();
        let mut out = std::fs::File::create(&part)
            .map_err(|e| format!("creating {}: {e}", part.display()))?;
        let mut data = Vec::new();
        let mut bar = None;
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|e| format!("snapshot stream: {}", e.message()))?
        {
            data.extend_from_slice(&msg.blob);
            let total = data.len() as u64 + msg.remaining_bytes;
            let pb = bar.get_or_insert_with(|| progress(total, "receiving"));
            pb.set_position(data.len() as u64);
        }
        if let Some(pb) = bar {
            pb.finish_and_clear();
        }
        if data.len() < 32 {
            return Err(format!(
                "the snapshot stream sent only {} bytes",
                data.len()
            ));
        }
        let (db, sum) = data.split_at(data.len() - 32);
        if Sha256::digest(db).as_slice() != sum {
            return Err("the snapshot's SHA-256 does not match its contents".to_string());
        }
        out.write_all(&data)
            .and_then(|()| out.sync_all())
            .map_err(|e| format!("writing {}: {e}", part.display()))?;
        Ok::<u64, String>(data.len() as u64)
    });
    let size = match size {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e.into());
        }
    };
    std::fs::rename(&part, &args.file)
        .map_err(|e| format!("renaming to {}: {e}", args.file.display()))?;
    match fmt {
        Format::Json => {
            print_json(&json!({"file": args.file.display().to_string(), "bytes": size}))
        }
        Format::Simple => println!(
            "Snapshot saved at {} ({}, checksum verified)",
            args.file.display(),
            bytes(size)
        ),
    }
    Ok(())
}

/// A scratch copy of a snapshot's database, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn status(file: &Path, fmt: Format) -> Result<(), Failure> {
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "kvtool-snapshot-{}-{}.db",
        std::process::id(),
        rand::random::<u32>()
    )));
    let hash_checked = server::restore::extract_database(file, &scratch.0)?;
    let (hash, revision) = {
        let store = mvcc::Store::open(&scratch.0)
            .map_err(|e| format!("{}: not a kvserver database: {e}", file.display()))?;
        (store.hash()?, store.current_revision())
    };
    let db = btree::Db::open_with(
        &scratch.0,
        btree::Options {
            read_only: true,
            ..Default::default()
        },
    )?;
    let view = crate::db::mvcc_view(&db)?.ok_or("the snapshot holds no key space")?;
    let size = std::fs::metadata(&scratch.0)?.len();
    match fmt {
        Format::Json => print_json(&json!({
            "hash": hash, "revision": revision, "total_keys": view.live_keys,
            "revisions": view.revisions, "total_size": size, "sha256_checked": hash_checked,
        })),
        Format::Simple => {
            println!("hash:       {hash:08x}");
            println!("revision:   {revision}");
            println!(
                "total keys: {} ({} revisions kept)",
                view.live_keys, view.revisions
            );
            println!("total size: {} ({})", size, bytes(size));
            println!(
                "sha256:     {}",
                if hash_checked {
                    "present and matching"
                } else {
                    "absent (a plain database file)"
                }
            );
        }
    }
    Ok(())
}

pub fn restore(args: &RestoreArgs, fmt: Format) -> Result<(), Failure> {
    use clap::Parser;
    let mut argv = vec![
        "kvserver".to_string(),
        "--name".into(),
        args.name.clone(),
        "--initial-cluster".into(),
        args.initial_cluster.clone(),
        "--initial-cluster-token".into(),
        args.initial_cluster_token.clone(),
        "--initial-advertise-peer-urls".into(),
        args.initial_advertise_peer_urls.clone(),
    ];
    if let Some(d) = &args.data_dir {
        argv.push("--data-dir".into());
        argv.push(d.display().to_string());
    }
    let cfg = server::config::Config::try_parse_from(argv)?;
    let r = server::restore::restore(&cfg, &args.file)?;
    match fmt {
        Format::Json => print_json(&json!({
            "data_dir": r.data_dir.display().to_string(),
            "member_id": format!("{:x}", r.member_id),
            "cluster_id": format!("{:x}", r.cluster_id),
            "raft_index": r.index, "raft_term": r.term, "revision": r.revision,
            "sha256_checked": r.hash_checked,
        })),
        Format::Simple => println!(
            "restored {} into {} (member {:x}, cluster {:x}, revision {}, raft index {}){}",
            args.file.display(),
            r.data_dir.display(),
            r.member_id,
            r.cluster_id,
            r.revision,
            r.index,
            if r.hash_checked {
                ", sha256 verified"
            } else {
                ""
            }
        ),
    }
    Ok(())
}
