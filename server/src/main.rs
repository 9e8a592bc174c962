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
    if !cfg!(feature = "failpoints")
        && env
            .iter()
            .any(|(k, _)| k == server::raft::bootstrap::POWER_CUT_ENV)
    {
        eprintln!(
            "kvserver: {} is set, but this build has no failpoints (build with --features failpoints)",
            server::raft::bootstrap::POWER_CUT_ENV
        );
        return std::process::ExitCode::FAILURE;
    }
    if let Some(spec) = env.iter().find(|(k, _)| k == "FAILPOINTS").map(|(_, v)| v) {
        if let Err(e) = arm_failpoints(spec) {
            eprintln!("kvserver: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
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
    end_on_vital_panic();
    exit_on_sigbus();
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
    let logs_to_stderr = matches!(cfg.log_outputs.as_str(), "default" | "stderr");
    match runtime.block_on(server::run(cfg, server::signalled())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            // Once on stderr, whatever the log's destination.
            if !logs_to_stderr {
                eprintln!("kvserver: {e}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// A panic in one of the member's vital threads ends the process at once
/// (after the usual panic message and one error line), rather than leaving
/// a member that serves reads and Status while every write fails. A
/// supervisor restarts it and it recovers from its WAL. Panics elsewhere
/// (a request's task) fail that request only.
fn end_on_vital_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("");
        if server::VITAL_THREADS.contains(&name) {
            tracing::error!(
                thread = name,
                "the {name} thread panicked: the member stops (a restart recovers from its WAL)"
            );
            std::process::abort();
        }
    }));
}

/// `FAILPOINTS=name=actions;...` arms fail-rs points at start, in a build
/// with the `failpoints` feature; any other build refuses the variable
/// rather than ignore it.
fn arm_failpoints(spec: &str) -> Result<(), String> {
    #[cfg(feature = "failpoints")]
    {
        server::http::failpoints::arm_from_env(spec)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = spec;
        Err("FAILPOINTS is set, but this build has no failpoints (build with --features failpoints)".into())
    }
}

/// An I/O error under the database's memory map (a failing disk, the file
/// truncated behind kvserver's back) arrives as SIGBUS at the read that
/// touched the page. It cannot be recovered from safely (the reader is in
/// the middle of a page), and left alone it would kill the process with no
/// word or, caught and returned from, fault again forever. The handler
/// writes one line to stderr and exits at once; a restart reopens the
/// database (refusing it with a clear error if it is damaged).
fn exit_on_sigbus() {
    extern "C" fn on_sigbus(_: libc::c_int) {
        const MSG: &[u8] = b"kvserver: SIGBUS: an I/O error under the database's memory map \
(the disk failed, or the file shrank behind kvserver's back): exiting; check the disk, \
then `kvtool check db` on the member's database before restarting it\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe, and MSG is
        // a static buffer.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(SIGBUS_EXIT);
        }
    }
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // the handler only makes async-signal-safe calls; the pointer passed
    // for the old action may be null.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
            tracing::warn!("cannot handle SIGBUS: {}", std::io::Error::last_os_error());
        }
    }
}

/// The exit status after SIGBUS (128 + the signal's number, as a shell
/// reports a process it killed).
const SIGBUS_EXIT: libc::c_int = 128 + libc::SIGBUS;
