//! `leaderlease`: look at the lease table, migrate it, and run a command only while this process leads.
//!
//! - `leaderlease status`: every lease of a schema, by the database clock.
//! - `leaderlease migrate up|down`: the SQL of `migrations/`.
//! - `leaderlease run --lock-id N -- cmd args…`: campaigns; runs the command (no shell, in a process group
//!   of its own) while leading; SIGTERM then SIGKILL to that group before the lease can pass to anyone else.
//!
//! Two hidden subcommands are the same binary run again by `run`: `__exec` (the child: sets its parent-death
//! signal, then `exec`s the command) and `__watchdog` (a separate process that kills the child's group at
//! the lease deadline even if this process is stopped or killed). See `run.rs`.

mod args;
mod migrate;
mod run;
mod status;
mod watchdog;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Lease-based leader election on PostgreSQL, from the command line.
#[derive(Parser, Debug)]
#[command(name = "leaderlease", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every lease of a schema: leader, term, expires in, renewed ago (by the database clock).
    Status(status::StatusArgs),
    /// Creates or upgrades (`up`), or drops (`down`), the lease table and its term sequence.
    Migrate(migrate::MigrateArgs),
    /// Campaigns for a lock id and runs a command while this process leads; stops it before the lease
    /// can pass to another node.
    Run(run::RunArgs),
    #[command(name = "__exec", hide = true)]
    Exec(run::ExecArgs),
    #[command(name = "__watchdog", hide = true)]
    Watchdog(watchdog::WatchdogArgs),
}

/// Set by the npm package's `bin` wrapper (`npx leaderlease`) to its own pid.
pub const WRAPPER_PID_ENV: &str = "LEADERLEASE_WRAPPER_PID";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Status(_) | Command::Migrate(_) | Command::Run(_)
    ) && !follow_wrapper()
    {
        return ExitCode::from(128 + 15);
    }
    match cli.command {
        // The child: nothing else may run before the command replaces this process.
        Command::Exec(a) => run::exec_child(a),
        Command::Watchdog(a) => {
            init_logging(false);
            watchdog::main(a)
        }
        Command::Status(a) => {
            init_logging(false);
            block_on(status::main(a))
        }
        Command::Migrate(a) => {
            init_logging(false);
            block_on(migrate::main(a))
        }
        Command::Run(a) => {
            init_logging(true);
            block_on(run::main(a))
        }
    }
}

/// Under the npm wrapper, this process gets SIGTERM when the wrapper dies, even by SIGKILL, and so
/// stops its command and releases as on any SIGTERM (Node cannot `exec`, so the wrapper stays the
/// parent). False when the wrapper is already gone.
fn follow_wrapper() -> bool {
    use rustix::process::{Signal, getppid, set_parent_process_death_signal};
    let Some(wrapper) = std::env::var(WRAPPER_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return true;
    };
    // The wrapper forks from Node's main thread, which lives as long as the wrapper.
    if set_parent_process_death_signal(Some(Signal::TERM)).is_err() {
        return true;
    }
    getppid().map(|p| p.as_raw_nonzero().get()) == Some(wrapper)
}

/// One thread: the child is forked by this (main) thread, which lives as long as the process, so the
/// child's parent-death signal fires exactly when this process dies.
fn block_on<F: Future<Output = ExitCode>>(f: F) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("leaderlease: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr. `LEADERLEASE_LOG` (an `EnvFilter`, e.g. `debug` or `leaderlease::run=debug`)
/// overrides the default: `info` for `run` (leadership changes, the command started and stopped), `warn`
/// for the other commands.
fn init_logging(run: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LEADERLEASE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(if run { "info" } else { "warn" }));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Prints an error of the crate with its code, and the exit status for it.
fn fail(context: &str, e: &leaderlease::Error) -> ExitCode {
    eprintln!("leaderlease: {context}: {e} ({})", e.code());
    ExitCode::FAILURE
}
