//! kvtool: what an operator of kvserver reaches for.
//!
//! Offline commands read a member's files directly and never change one
//! unless the command says so (`defrag`, `snapshot restore`, `migrate`):
//! `inspect db`, `check db`, `defrag`, `wal dump`, `snapshot status`, and
//! `migrate from-etcd`, which reads etcd's own database files. Online commands
//! speak the plain etcd v3 gRPC API, so they work against real etcd too:
//! `snapshot save` and `bench`.
//!
//! Every command prints for people by default and, with `-w json`, one JSON
//! document for scripts. Failures print one clear line on stderr and exit
//! non-zero; `check db` exits 1 when it found problems and 2 when it could
//! not run at all.

mod bench;
mod db;
mod migrate;
mod output;
mod snapshot;
mod soak;
mod waldump;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::Format;

#[derive(Parser)]
#[command(
    name = "kvtool",
    version,
    about = "Maintenance tools for kvserver (and etcd)"
)]
struct Cli {
    /// Output format: `simple` for people, `json` for scripts.
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        default_value = "simple"
    )]
    write_out: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a database file: meta pages, pages by type, buckets, MVCC state.
    Inspect {
        #[command(subcommand)]
        what: InspectWhat,
    },
    /// Check a database file's integrity (exit 0 only when clean).
    Check {
        #[command(subcommand)]
        what: CheckWhat,
    },
    /// Rewrite a database file compactly and replace it atomically (offline;
    /// refuses while a server holds the file).
    Defrag {
        /// The database file (`<data-dir>/member/snap/db`).
        file: PathBuf,
    },
    /// Write-ahead log commands.
    Wal {
        #[command(subcommand)]
        what: WalWhat,
    },
    /// Save, describe and restore snapshots.
    Snapshot {
        #[command(subcommand)]
        what: SnapshotWhat,
    },
    /// Load generator for the etcd v3 API (kvserver or etcd).
    Bench(bench::BenchArgs),
    /// Move to kvserver from another store, history included.
    Migrate {
        #[command(subcommand)]
        what: MigrateWhat,
    },
}

#[derive(Subcommand)]
enum MigrateWhat {
    /// New kvserver data directories from an etcd 3.x data directory or
    /// snapshot file: every revision, leases, users and roles.
    FromEtcd(migrate::FromEtcdArgs),
}

#[derive(Subcommand)]
enum InspectWhat {
    /// A database file.
    Db {
        file: PathBuf,
        /// Draw a page map: one character per page by type.
        #[arg(long)]
        pages: bool,
    },
}

#[derive(Subcommand)]
enum CheckWhat {
    /// A database file.
    Db { file: PathBuf },
}

#[derive(Subcommand)]
enum WalWhat {
    /// Every segment and record of a WAL directory.
    Dump(waldump::DumpArgs),
}

#[derive(Subcommand)]
enum SnapshotWhat {
    /// Save a member's database through the Maintenance.Snapshot stream.
    Save(snapshot::SaveArgs),
    /// Hash, revision, keys and size of a snapshot file.
    Status { file: PathBuf },
    /// Create a new member's data directory from a snapshot file.
    Restore(snapshot::RestoreArgs),
}

/// What a failed command reports: its message and exit code.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            message: e.to_string(),
            code: 1,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let fmt = cli.write_out;
    let result = match cli.command {
        Command::Inspect {
            what: InspectWhat::Db { file, pages },
        } => db::inspect(&file, pages, fmt),
        Command::Check {
            what: CheckWhat::Db { file },
        } => db::check(&file, fmt),
        Command::Defrag { file } => db::defrag(&file, fmt),
        Command::Wal {
            what: WalWhat::Dump(args),
        } => waldump::dump(&args, fmt),
        Command::Snapshot { what } => match what {
            SnapshotWhat::Save(args) => snapshot::save(&args, fmt),
            SnapshotWhat::Status { file } => snapshot::status(&file, fmt),
            SnapshotWhat::Restore(args) => snapshot::restore(&args, fmt),
        },
        Command::Bench(args) => bench::run(&args, fmt),
        Command::Migrate {
            what: MigrateWhat::FromEtcd(args),
        } => migrate::from_etcd(&args, fmt),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("kvtool: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
