//! `leaderlease run`: campaign, and run a command only while this process leads.
//!
//! The command runs without a shell, in a process group of its own (so a signal to this process's group,
//! such as Ctrl-C in a terminal, reaches only this process, which then stops the command itself). Three
//! processes take part:
//!
//! - this one: the election; it tells the watchdog every new lease deadline, and stops the command when
//!   leadership ends, when the command ends, or on SIGTERM/SIGINT/SIGHUP;
//! - the child: `leaderlease __exec`, which sets `PR_SET_PDEATHSIG` to SIGKILL (so the kernel kills it the
//!   moment this process dies, even by SIGKILL) and then `exec`s the command, keeping its pid;
//! - the watchdog (`leaderlease __watchdog`, in a group of its own): sends SIGTERM to the command's group
//!   `--grace` before the kill time and SIGKILL at the kill time, `KILL_LEAD` before the local lease
//!   deadline, unless a renewal moved the deadline on. It does so even while this process is stopped
//!   (SIGSTOP, a debugger) or starved, and stops the group when this process dies.
//!
//! Under the npm package's bin (`npx leaderlease`, ts/cli.ts), the process a user starts and signals is a
//! Node wrapper that stays this process's parent (Node cannot `exec`). A SIGSTOP of that wrapper would
//! stop only the wrapper, and this process would lead on under a frozen `leaderlease run`; so this process
//! looks at the wrapper's state every [`WRAPPER_POLL`] and, while the wrapper is stopped (or stopped by a
//! debugger), is no candidate: it stops the command, hands the lease over and campaigns again only once
//! the wrapper runs again (with `--restart`; without it, a leader that stepped down so exits with
//! [`EXIT_LOST`], as this process does when it was itself stopped past its lease).
//!
//! The local deadline is `send time of the last confirmed renewal + lease − safety margin`: the database
//! cannot let another node in before `send time + lease`, so the command is dead a safety margin (plus
//! `KILL_LEAD`) before anyone else can lead. What remains outside any guarantee: a process of the group in
//! uninterruptible sleep dies only when it leaves it; a descendant that leaves the process group (setsid,
//! a daemon) is not followed; and if this process *and* the watchdog are both SIGKILLed, only the direct
//! child is killed (by the kernel), not the rest of its group.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use leaderlease::{DEFAULT_LEASE_DURATION, Elector, ElectorConfig, Lease};
use rustix::process::{Pid, Signal, getppid, kill_process_group, set_parent_process_death_signal};
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::args::{Db, config_message, instant_ns, parse_duration};
use crate::watchdog::EXIT_DEADLINE;

/// SIGKILL goes to the command's group this long before the local lease deadline, so that the command
/// is dead, not merely signalled, when this node stops being leader.
pub const KILL_LEAD: Duration = Duration::from_millis(20);
/// Exit status when leadership was lost (the command was stopped) and `--restart` was not given:
/// `EX_TEMPFAIL`, "try again later", for supervisors.
pub const EXIT_LOST: u8 = 75;
/// How often the state of the npm wrapper (this process's parent) is looked at.
pub const WRAPPER_POLL: Duration = Duration::from_millis(20);
/// Time between two attempts to join the election again after a pause of the wrapper.
const REJOIN_RETRY: Duration = Duration::from_millis(250);
/// The longest default `--grace`.
const MAX_DEFAULT_GRACE: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    db: Db,
    /// The election: the lease row's id (fits INT)
    #[arg(long)]
    lock_id: i64,
    /// Lease duration, e.g. 10s or 1500ms [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    lease: Option<Duration>,
    /// Renewal interval [default: 3/10 of the lease]
    #[arg(long, value_parser = parse_duration)]
    renewal: Option<Duration>,
    /// Jitter range around the renewal interval [default: 2/3 of the renewal]
    #[arg(long, value_parser = parse_duration)]
    jitter: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when the command is stopped [default: half the room the
    /// settings leave between a healthy renewal and the deadline, at most 10s]
    #[arg(long, value_parser = parse_duration)]
    grace: Option<Duration>,
    /// This candidate's id in the lease table [default: hostname-pid-random]
    #[arg(long)]
    instance_id: Option<String>,
    /// After the command exits, hand leadership over and campaign again (instead of exiting)
    #[arg(long)]
    restart: bool,
    /// The command and its arguments, after `--` (run without a shell)
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The `run` process that must still be this process's parent
    #[arg(long)]
    parent: i32,
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

/// The child side: ask the kernel for SIGKILL when the parent dies, make sure the parent is still the one
/// that forked us (it may have died before the request), then become the command.
pub fn exec_child(a: ExecArgs) -> ExitCode {
    if let Err(e) = set_parent_process_death_signal(Some(Signal::KILL)) {
        eprintln!("leaderlease: cannot set the parent-death signal: {e}");
        return ExitCode::from(126);
    }
    if getppid().map(|p| p.as_raw_nonzero().get()) != Some(a.parent) {
        return ExitCode::from(128 + 9);
    }
    let Some((program, args)) = a.command.split_first() else {
        return ExitCode::from(127);
    };
    let e = std::process::Command::new(program).args(args).exec();
    eprintln!("leaderlease: cannot run {}: {e}", program.to_string_lossy());
    ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

fn config(a: &RunArgs) -> Result<ElectorConfig, String> {
    let lease = a.lease.unwrap_or(DEFAULT_LEASE_DURATION);
    let renewal = a.renewal.unwrap_or(lease * 3 / 10);
    let jitter = a.jitter.unwrap_or(renewal * 2 / 3);
    let mut b = Elector::builder()
        .with_lock_id(a.lock_id)
        .with_schema(a.db.schema.clone())
        .with_lease_duration(lease)
        .with_renewal_interval(renewal)
        .with_jitter_range(jitter);
    if let Some(id) = &a.instance_id {
        b = b.with_instance_id(id.clone());
    }
    b.build().map_err(|e| config_message(&e))
}

/// `--grace` must fit between the lowest local deadline a healthy leader sees (just before a renewal
/// is confirmed) and the kill time, or a leader whose renewals succeed would signal its own command.
fn grace(c: &ElectorConfig, given: Option<Duration>) -> Result<Duration, String> {
    let room = c.lease_duration().saturating_sub(
        c.safety_margin()
            + c.renewal_interval()
            + c.jitter_range() / 2
            + c.operation_timeout()
            + KILL_LEAD,
    );
    match given {
        None => Ok((room / 2).min(MAX_DEFAULT_GRACE)),
        Some(g) if g <= room => Ok(g),
        Some(g) => Err(format!(
            "--grace: must be at most {room:?} with these settings (lease - safety margin - renewal - \
             jitter/2 - operation timeout - {KILL_LEAD:?}), so that a leader whose renewals succeed \
             never signals its command; {g:?} given"
        )),
    }
}

/// Whether `program` can be run: a path to an executable file, or a name found on `PATH`.
fn runnable(program: &OsStr) -> bool {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let p = Path::new(program);
    if program.as_encoded_bytes().contains(&b'/') {
        return executable(p);
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

/// SIGTERM, SIGINT and SIGHUP to this process: stop the command, release, exit.
struct Stops([tokio::signal::unix::Signal; 3]);

impl Stops {
    fn new() -> std::io::Result<Self> {
        Ok(Self([
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        ]))
    }

    /// The number of the next stop signal.
    async fn recv(&mut self) -> u8 {
        let [term, int, hup] = &mut self.0;
        tokio::select! {
            _ = term.recv() => 15,
            _ = int.recv() => 2,
            _ = hup.recv() => 1,
        }
    }
}

/// The npm wrapper this process runs under (the `bin` of the npm package), when it is the parent.
struct Wrapper {
    pid: i32,
}

impl Wrapper {
    /// The wrapper named by [`crate::WRAPPER_PID_ENV`], if it is this process's parent.
    fn from_env() -> Option<Self> {
        let pid = std::env::var(crate::WRAPPER_PID_ENV)
            .ok()?
            .parse::<i32>()
            .ok()?;
        (getppid().map(|p| p.as_raw_nonzero().get()) == Some(pid)).then_some(Self { pid })
    }

    /// Whether the wrapper is stopped: by a signal (`T`) or in a debugger (`t`). A wrapper that is gone
    /// is not stopped (its death sends this process SIGTERM).
    fn is_stopped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|stat| {
                // pid (comm) state ...: comm may hold spaces and parentheses.
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().next().map(|s| s == "T" || s == "t")
            })
            .unwrap_or(false)
    }

    /// Returns once the wrapper is stopped (`true`) or running (`false`); looks at once, then every
    /// [`WRAPPER_POLL`].
    async fn until(&self, stopped: bool) {
        while self.is_stopped() != stopped {
            tokio::time::sleep(WRAPPER_POLL).await;
        }
    }
}

/// Returns once the wrapper, if any, is stopped; never without one.
async fn wrapper_stopped(wrapper: Option<&Wrapper>) {
    match wrapper {
        Some(w) => w.until(true).await,
        None => std::future::pending().await,
    }
}

/// How one run of the command ended.
enum End {
    /// It exited by itself while this node led.
    Exited(ExitStatus),
    /// Leadership ended (or the watchdog acted on the deadline), and the command was stopped.
    Lost,
    /// This process was told to stop; the command was stopped and exited so.
    Stopped(ExitStatus),
    /// The npm wrapper was stopped (SIGSTOP): the command was stopped while this node still led.
    Paused,
    /// It could not be started.
    Failed,
}

pub async fn main(a: RunArgs) -> ExitCode {
    let config = match config(&a) {
        Ok(c) => c,
        Err(m) => {
            eprintln!("leaderlease: {m}");
            return ExitCode::from(2);
        }
    };
    let grace = match grace(&config, a.grace) {
        Ok(g) => g,
        Err(m) => {
            eprintln!("leaderlease: {m}");
            return ExitCode::from(2);
        }
    };
    if !runnable(&a.command[0]) {
        eprintln!(
            "leaderlease: {}: command not found (or not executable)",
            a.command[0].to_string_lossy()
        );
        return ExitCode::from(127);
    }
    let mut stops = match Stops::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("leaderlease: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let wrapper = Wrapper::from_env();
    // After a pause the election is joined again; the store may be unreachable then for a while.
    let mut rejoining = false;
    loop {
        if let Some(w) = &wrapper
            && w.is_stopped()
        {
            info!(
                wrapper_pid = w.pid,
                "the wrapper is stopped: campaigning once it runs again"
            );
            tokio::select! {
                sig = stops.recv() => return ExitCode::from(128 + sig),
                _ = w.until(false) => info!("the wrapper runs again"),
            }
        }
        let elector = tokio::select! {
            biased;
            sig = stops.recv() => return ExitCode::from(128 + sig),
            _ = wrapper_stopped(wrapper.as_ref()) => continue,
            r = Elector::connect(&a.db.url, config.clone()) => match r {
                Ok(e) => e,
                Err(e) if rejoining && transient(&e) => {
                    warn!(error = %e, "cannot join the election again yet: retrying");
                    tokio::select! {
                        sig = stops.recv() => return ExitCode::from(128 + sig),
                        _ = tokio::time::sleep(REJOIN_RETRY) => continue,
                    }
                }
                Err(e) => return crate::fail("run", &e),
            },
        };
        rejoining = true;
        let outcome = campaign(&a, &elector, grace, &mut stops, wrapper.as_ref()).await;
        // Releases the lease if this node still holds it: the command has ended by now.
        if let Err(e) = elector.shutdown().await {
            warn!(error = %e, "shutdown failed");
        }
        match outcome {
            Campaign::Exit(code) => return code,
            Campaign::Paused { led: true } if !a.restart => {
                info!("stepped down while the wrapper is stopped: exiting");
                return ExitCode::from(EXIT_LOST);
            }
            Campaign::Paused { .. } => {}
        }
    }
}

/// How one campaign (one elector) ended.
enum Campaign {
    /// Exit with this status.
    Exit(ExitCode),
    /// The npm wrapper was stopped; `led`: the command ran and was stopped for it.
    Paused { led: bool },
}

async fn campaign(
    a: &RunArgs,
    elector: &Elector,
    grace: Duration,
    stops: &mut Stops,
    wrapper: Option<&Wrapper>,
) -> Campaign {
    let c = elector.config();
    info!(
        lock_id = c.lock_id(),
        instance_id = c.instance_id(),
        lease_ms = c.lease_duration().as_millis() as u64,
        safety_margin_ms = c.safety_margin().as_millis() as u64,
        grace_ms = grace.as_millis() as u64,
        "campaigning"
    );
    let mut leases = elector.subscribe_lease();
    loop {
        let lease = tokio::select! {
            biased;
            sig = stops.recv() => return Campaign::Exit(ExitCode::from(128 + sig)),
            _ = wrapper_stopped(wrapper) => {
                warn!("the wrapper is stopped: leaving the election until it runs again");
                return Campaign::Paused { led: false };
            }
            l = next_leadership(&mut leases) => l,
        };
        match run_once(a, elector, grace, lease, &mut leases, stops, wrapper).await {
            End::Exited(status) if a.restart => {
                info!(%status, "the command exited: handing leadership over, then campaigning again");
                if let Err(e) = elector.release().await {
                    warn!(error = %e, "could not release the lease; it will expire by itself");
                }
            }
            End::Exited(status) | End::Stopped(status) => {
                return Campaign::Exit(exit_code(status));
            }
            End::Paused => return Campaign::Paused { led: true },
            End::Lost if a.restart => info!("campaigning again"),
            End::Lost => return Campaign::Exit(ExitCode::from(EXIT_LOST)),
            End::Failed => return Campaign::Exit(ExitCode::FAILURE),
        }
    }
}

/// Whether joining the election may succeed if tried again shortly (the store restarting, cut off, slow).
fn transient(e: &leaderlease::Error) -> bool {
    use leaderlease::Error as E;
    matches!(
        e,
        E::Unreachable { .. } | E::Timeout { .. } | E::Database { .. } | E::Store { .. }
    )
}

/// Waits until this node leads with a deadline still ahead.
async fn next_leadership(rx: &mut watch::Receiver<Option<Lease>>) -> Lease {
    loop {
        let current = *rx.borrow_and_update();
        if let Some(l) = current
            && l.deadline > Instant::now() + KILL_LEAD
        {
            return l;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from(128u8.saturating_add(sig as u8)),
        _ => ExitCode::FAILURE,
    }
}

/// The kill time for `lease`, as `CLOCK_MONOTONIC` ns.
fn kill_at(lease: &Lease) -> i128 {
    instant_ns(lease.deadline) - KILL_LEAD.as_nanos() as i128
}

/// The earliest the database can let another node in: `send time + lease`, as `CLOCK_MONOTONIC` ns.
fn expiry_ns(lease: &Lease, c: &ElectorConfig) -> i128 {
    instant_ns(lease.deadline) + c.safety_margin().as_nanos() as i128
}

fn self_command(arg: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0("leaderlease").arg(arg).process_group(0);
    cmd
}

async fn tell(watchdog: &mut Option<ChildStdin>, line: &str) {
    if let Some(w) = watchdog
        && w.write_all(line.as_bytes()).await.is_err()
    {
        *watchdog = None;
    }
}

async fn run_once(
    a: &RunArgs,
    elector: &Elector,
    grace: Duration,
    lease: Lease,
    leases: &mut watch::Receiver<Option<Lease>>,
    stops: &mut Stops,
    wrapper: Option<&Wrapper>,
) -> End {
    let c = elector.config();
    let term = lease.term;
    let mut cmd = self_command("__exec");
    cmd.arg("--parent")
        .arg(std::process::id().to_string())
        .arg("--")
        .args(&a.command)
        .env("LEADERLEASE_TERM", term.to_string())
        .env("LEADERLEASE_LOCK_ID", c.lock_id().to_string())
        .env("LEADERLEASE_INSTANCE_ID", c.instance_id())
        .env_remove(crate::WRAPPER_PID_ENV);
    // Forked by this (the main) thread: see `block_on` in main.rs.
    let mut child = match tokio::process::Command::from(cmd).spawn() {
        Ok(child) => child,
        Err(e) => {
            error!(error = %e, "cannot start the command");
            return End::Failed;
        }
    };
    let Some(pgid) = child.id().and_then(|p| Pid::from_raw(p as i32)) else {
        error!("the command has no pid");
        return End::Failed;
    };
    let mut wd = self_command("__watchdog");
    wd.args(["--pgid", &pgid.as_raw_nonzero().get().to_string()])
        .args(["--kill-at", &kill_at(&lease).to_string()])
        .args(["--grace", &grace.as_nanos().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .env_remove(crate::WRAPPER_PID_ENV);
    let mut watchdog = match tokio::process::Command::from(wd).spawn() {
        Ok(w) => w,
        Err(e) => {
            error!(error = %e, "cannot start the watchdog: killing the command");
            let _ = kill_process_group(pgid, Signal::KILL);
            let _ = child.wait().await;
            return End::Failed;
        }
    };
    let mut watchdog_in = watchdog.stdin.take();
    info!(
        term,
        pid = pgid.as_raw_nonzero().get(),
        expiry_mono_ns = %expiry_ns(&lease, c),
        "leading: started the command"
    );

    let mut lost = false;
    let mut stop_signal = None;
    let mut paused = false;
    let mut watchdog_status = None;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            changed = leases.changed(), if !lost => {
                let current = if changed.is_ok() { *leases.borrow_and_update() } else { None };
                match current {
                    Some(l) if l.term == term => {
                        debug!(term, expiry_mono_ns = %expiry_ns(&l, c), "lease renewed");
                        tell(&mut watchdog_in, &format!("deadline {}\n", kill_at(&l))).await;
                    }
                    _ => {
                        lost = true;
                        warn!(term, "leadership lost: stopping the command");
                        tell(&mut watchdog_in, "stop\n").await;
                    }
                }
            }
            sig = stops.recv(), if stop_signal.is_none() => {
                stop_signal = Some(sig);
                info!(signal = sig, "stopping the command, then releasing the lease");
                tell(&mut watchdog_in, "stop\n").await;
            }
            _ = wrapper_stopped(wrapper), if !paused && !lost && stop_signal.is_none() => {
                paused = true;
                warn!(term, "the wrapper is stopped: stopping the command, then handing leadership over");
                tell(&mut watchdog_in, "stop\n").await;
            }
            s = watchdog.wait(), if watchdog_status.is_none() => {
                let code = s.as_ref().ok().and_then(|s| s.code());
                let asked = lost || paused || stop_signal.is_some();
                if asked && code == Some(0) {
                    debug!("the watchdog has stopped the command's process group");
                } else if code != Some(EXIT_DEADLINE.into()) {
                    warn!(status = ?s, "the watchdog ended unexpectedly: killing the command");
                }
                // The watchdog has sent SIGKILL (or is gone): make sure, and count it as a loss.
                let _ = kill_process_group(pgid, Signal::KILL);
                lost = true;
                watchdog_status = Some(s);
            }
        }
    };
    // The command has ended: whatever it left in its group is stopped (SIGTERM, then SIGKILL after the
    // grace) before the lease is released or renewed for another run.
    tell(&mut watchdog_in, "stop\n").await;
    drop(watchdog_in);
    if watchdog_status.is_none()
        && let Ok(s) = watchdog.wait().await
        && s.code() == Some(EXIT_DEADLINE.into())
    {
        lost = true;
    }
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot wait for the command");
            return End::Failed;
        }
    };
    info!(term, %status, "the command ended");
    if stop_signal.is_some() {
        End::Stopped(status)
    } else if paused {
        End::Paused
    } else if lost || elector.term() != Some(term) {
        End::Lost
    } else {
        End::Exited(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_grace_leaves_room_for_a_healthy_leader() {
        let c = Elector::builder()
            .with_lease_duration(Duration::from_secs(10))
            .with_renewal_interval(Duration::from_secs(3))
            .with_jitter_range(Duration::from_secs(2))
            .build()
            .unwrap();
        // 10 s - 1 s margin - 3 s - 1 s - 1.5 s operation timeout - 20 ms = 3.48 s of room.
        assert_eq!(grace(&c, None), Ok(Duration::from_millis(1740)));
        assert!(
            grace(&c, Some(Duration::from_secs(4)))
                .unwrap_err()
                .starts_with("--grace: must be at most 3.48s")
        );
    }

    #[test]
    fn a_missing_command_is_found_missing() {
        assert!(runnable(OsStr::new("sh")));
        assert!(!runnable(OsStr::new("no-such-command-leaderlease")));
        assert!(!runnable(OsStr::new("/etc/passwd")));
    }
}
