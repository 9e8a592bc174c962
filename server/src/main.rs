//! `kvserver`: an etcd-compatible key-value server. `kvserver --help`
//! lists the flags (etcd's names; `ETCD_*` environment variables work too).

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    if let Err(e) = server::config::Config::check_environment(std::env::vars()) {
        eprintln!("kvserver: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let cfg = server::config::Config::parse();
    if let Err(e) = cfg.validate() {
        eprintln!("kvserver: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("{},raft=warn", cfg.tracing_level()))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kvserver: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(cfg, server::signalled())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("kvserver: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
