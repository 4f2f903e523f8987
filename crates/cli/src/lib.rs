//! What the `coordinator` and `site-agent` binaries share, so each stays a thin argument
//! parser: running an async main that reports failure as one readable sentence (no backtrace)
//! and a non-zero exit code, log setup (text or JSON on stderr), and waiting for Ctrl-C.

pub mod lead;
pub mod watch;

use std::future::Future;
use std::process::ExitCode;

/// Log format on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The options every binary takes: `#[command(flatten)]` them into its `Cli`.
#[derive(Clone, Debug, clap::Args)]
pub struct GlobalArgs {
    /// Log format on stderr: text for people, json (one object per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FEDCARE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log level: error, warn, info, debug or trace, or per-module directives such as
    /// "info,fedcare_server=debug". Overrides RUST_LOG. Default: info for servers, warn for
    /// one-shot commands.
    #[arg(long, global = true, env = "FEDCARE_LOG")]
    pub log_level: Option<String>,
}

/// Logs to stderr in the chosen format, at `--log-level`, else `RUST_LOG`, else `default`.
/// A bad level is reported and the default used (logging is not worth refusing to start).
pub fn init_logging(global: &GlobalArgs, default: &str) {
    let filter = match &global.log_level {
        Some(level) => tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|e| {
            eprintln!("warning: --log-level {level:?} is not a valid level or directive ({e}); using {default:?}");
            default.into()
        }),
        None => tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into()),
    };
    // Colours only on a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match global.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs `main` on a multi-threaded runtime. An error is printed as its chain of causes on one
/// line ("what failed: because: because") for a hospital IT person, not a developer.
pub fn run_main<F: Future<Output = anyhow::Result<()>>>(main: F) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`coordinator audit show | head`)
/// would panic with "failed printing to stdout". For commands that only read local files and
/// print, end quietly instead, as `cat` does: restore the default action.
///
/// Never call it in a command that opens network connections: a peer that goes away while
/// hyper writes with `writev` (which has no MSG_NOSIGNAL) would then kill the process
/// silently instead of returning an error the agent recovers from.
pub fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread is spawned; setting a signal's
    // disposition to its default has no other effect on this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Completes on Ctrl-C (SIGINT) or, on Unix, SIGTERM (what `docker stop`, Kubernetes and
/// systemd send); a handler that cannot be installed never fires (run until killed).
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// How a read command prints: for people, or one JSON document (or object per line) for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// `audit verify|show`: the same for the coordinator's log and a site's.
#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Check a log's hash chain; names the first changed, missing or reordered entry, and
    /// prints the number of entries and the head hash (to record elsewhere).
    Verify {
        /// The audit log file.
        #[arg(long)]
        log: std::path::PathBuf,
        /// text, or json: {"log", "entries", "intact", "head"}.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Print the entries of a verified log, one per line.
    Show {
        #[arg(long)]
        log: std::path::PathBuf,
        /// text, or json: each whole entry (seq, time, prev, event, hash) as one JSON object
        /// per line.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Runs an [`AuditCommand`], printing to stdout (local files only: a closed pipe ends it
/// quietly).
pub fn run_audit(command: AuditCommand) -> anyhow::Result<()> {
    restore_sigpipe();
    use anyhow::Context;
    match command {
        AuditCommand::Verify { log, output } => {
            let report = fedcare_audit::verify(&log).with_context(|| format!("audit log {} does not verify", log.display()))?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "log": log.display().to_string(), "entries": report.entries, "intact": true, "head": report.head })
                ),
                Output::Text => {
                    println!("{}: {} entries, intact", log.display(), report.entries);
                    println!("head: {}", report.head.as_deref().unwrap_or("(empty log)"));
                }
            }
        }
        AuditCommand::Show { log, output } => {
            let entries = fedcare_audit::read_verified(&log).with_context(|| format!("audit log {} does not verify", log.display()))?;
            for e in entries {
                match output {
                    Output::Json => println!("{}", serde_json::to_string(&e).context("cannot encode an entry")?),
                    Output::Text => println!("{:>6} {} {}", e.seq, lead::utc(e.time_unix_ms), serde_json::to_string(&e.event).unwrap_or_default()),
                }
            }
        }
    }
    Ok(())
}
