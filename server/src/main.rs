//! `kvserver`: an etcd-compatible key-value server. `kvserver --help`
//! lists the flags (etcd's names; `ETCD_*` environment variables work too).

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let env: Vec<(String, String)> = std::env::vars().collect();
    if let Err(e) = server::config::Config::check_environment(env.clone()) {
        eprintln!("kvserver: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let args = match server::config::refused::take(std::env::args().collect(), &env) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kvserver: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cfg = server::config::Config::parse_from(args);
    if let Err(e) = cfg.validate() {
        eprintln!("kvserver: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("{},raft=warn", cfg.tracing_level()))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let (writer, terminal) = match cfg.log_outputs.as_str() {
        "default" | "stderr" => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
        "stdout" => (
            BoxMakeWriter::new(std::io::stdout),
            std::io::IsTerminal::is_terminal(&std::io::stdout()),
        ),
        path => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => (BoxMakeWriter::new(std::sync::Mutex::new(f)), false),
            Err(e) => {
                eprintln!("kvserver: --log-outputs {path}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if cfg.log_format == "json" {
        // One JSON object per line: level, time, target, message and the
        // event's fields at the top level (log collectors read them so).
        logs.json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        // Colours only on a terminal, never in log files.
        logs.with_ansi(terminal).init();
    }
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
