//! The watchdog: a process of its own per command run, which stops the command's process group on time
//! even when `leaderlease run` itself cannot (stopped by SIGSTOP or a debugger, starved, or killed).
//!
//! It is started with the group and the first kill time, and reads lines on stdin from `run`:
//! - `deadline <ns>`: the new SIGKILL time (`CLOCK_MONOTONIC` ns) after a confirmed renewal;
//! - `stop`: stop the group now (SIGTERM now, SIGKILL after the grace, or at the kill time if sooner).
//!
//! End of stdin (the `run` process died) is a `stop`. SIGTERM goes to the group `grace` before the kill
//! time, or at a `stop`; SIGKILL at `min(SIGTERM + grace, kill time)`. It exits once the group is empty
//! or has been sent SIGKILL: status 0 after a `stop`, [`EXIT_DEADLINE`] when it acted on the deadline.

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Args;
use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};
use tracing::{info, warn};

use crate::args::mono_ns;

/// Exit status of a watchdog that stopped the group because the lease deadline came.
pub const EXIT_DEADLINE: u8 = 3;

#[derive(Args, Debug)]
pub struct WatchdogArgs {
    /// The process group to stop
    #[arg(long)]
    pgid: i32,
    /// SIGKILL time, CLOCK_MONOTONIC nanoseconds
    #[arg(long)]
    kill_at: i128,
    /// Nanoseconds between SIGTERM and SIGKILL
    #[arg(long)]
    grace: u64,
}

enum Msg {
    Deadline(i128),
    Stop,
}

pub fn main(a: WatchdogArgs) -> ExitCode {
    let Some(pgid) = Pid::from_raw(a.pgid) else {
        return ExitCode::FAILURE;
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let mut words = line.split_whitespace();
            let msg = match (words.next(), words.next().map(str::parse::<i128>)) {
                (Some("deadline"), Some(Ok(ns))) => Msg::Deadline(ns),
                (Some("stop"), _) => Msg::Stop,
                _ => continue,
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
        let _ = tx.send(Msg::Stop);
    });

    let grace = i128::from(a.grace);
    let mut kill_at = a.kill_at;
    // When SIGTERM was sent, and whether the deadline (not a request) caused it.
    let mut termed_at: Option<i128> = None;
    let mut by_deadline = false;
    let mut rx = Some(rx);
    loop {
        let now = mono_ns();
        if termed_at.is_none() && now >= kill_at - grace {
            by_deadline = true;
            termed_at = Some(now);
            info!(
                pgid = a.pgid,
                "lease deadline near: SIGTERM to the command's process group"
            );
            signal(pgid, Signal::TERM);
        }
        let kill_time = termed_at.map_or(kill_at, |t| (t + grace).min(kill_at));
        if now >= kill_time {
            signal(pgid, Signal::KILL);
            info!(
                pgid = a.pgid,
                late_ms = ((now - kill_time) as f64 / 1e6),
                "SIGKILL to the command's process group"
            );
            return exit(by_deadline);
        }
        if termed_at.is_some() && !group_alive(pgid) {
            return exit(by_deadline);
        }
        let next = match termed_at {
            // Stopping: look for the group's end every 5 ms.
            Some(_) => kill_time.min(now + 5_000_000),
            None => (kill_at - grace).min(kill_time),
        };
        let wait = Duration::from_nanos(u64::try_from(next - now).unwrap_or(0));
        let msg = match &rx {
            Some(r) => r.recv_timeout(wait),
            None => {
                std::thread::sleep(wait);
                Err(mpsc::RecvTimeoutError::Timeout)
            }
        };
        match msg {
            Ok(Msg::Deadline(ns)) => kill_at = ns,
            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if matches!(msg, Err(mpsc::RecvTimeoutError::Disconnected)) {
                    rx = None;
                }
                if termed_at.is_none() {
                    termed_at = Some(mono_ns());
                    info!(
                        pgid = a.pgid,
                        "stopping: SIGTERM to the command's process group"
                    );
                    signal(pgid, Signal::TERM);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

fn exit(by_deadline: bool) -> ExitCode {
    if by_deadline {
        ExitCode::from(EXIT_DEADLINE)
    } else {
        ExitCode::SUCCESS
    }
}

/// Whether a process of the group is still running. Zombies do not count: an orphan's zombie waits for
/// an init that reaps it (some containers' first process never does), and it runs nothing.
fn group_alive(pgid: Pid) -> bool {
    if test_kill_process_group(pgid).is_err() {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    let want = pgid.as_raw_nonzero().get();
    dir.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
        pgrp == Some(want) && state != Some("Z") && state != Some("X")
    })
}

fn signal(pgid: Pid, sig: Signal) {
    match kill_process_group(pgid, sig) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::SRCH => {}
        Err(e) => {
            warn!(pgid = pgid.as_raw_nonzero().get(), error = %e, "cannot signal the process group")
        }
    }
}
