//! One candidate process of the chaos checker (`npm run chaos`, see `docs/chaos.md`): campaigns for one
//! lock id and samples `is_leader()` every millisecond from a thread of its own, reading CLOCK_MONOTONIC
//! first, and records every leadership it saw as the interval between the first and the last sample that
//! answered true.
//!
//! ```text
//! cargo build --profile release-fast --example chaos_candidate
//! chaos_candidate --id r1-g1 --url postgres://... --dir RUN_DIR --t0 NS [--lock-id 7] [--schema chaos]
//!     [--lease 2000] [--renewal 600] [--jitter 200] [--safety-margin MS] [--operation-timeout MS]
//!     [--shared]
//! ```
//!
//! `--shared` starts with `connect_shared` (the process's shared hub, as the Node binding does) instead
//! of `connect`.
//!
//! Writes, in `RUN_DIR`:
//! - `<id>.jsonl`: one JSON line per closed leadership interval, `{"type":"interval","candidate","term",
//!   "first_true_ns","last_true_ns","samples"}`, and `{"type":"exit",...}` as the last line of a clean exit.
//!   Times are CLOCK_MONOTONIC nanoseconds minus `--t0` (the harness's start), the clock every candidate
//!   process on the machine reads.
//! - `<id>.slot`: the open interval, rewritten in place after every true sample, so that a process killed
//!   while leading leaves its exact last true sample behind.
//!
//! On stdout, one JSON line per change for the harness's live view (`ready`, `lead`, `follow`). SIGTERM or
//! the end of stdin shuts the elector down (sampling goes on until `shutdown()` has returned) and exits 0.
//! A panic anywhere aborts the process, so the harness sees it in the exit status.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leaderlease::{Elector, Error};
use tokio::signal::unix::{SignalKind, signal};

/// Size of the slot record; the JSON is padded with spaces so that a shorter record overwrites a longer one.
const SLOT_LEN: usize = 192;
/// How long a candidate keeps trying to connect at start before it gives up (exit status 3).
const START_DEADLINE: Duration = Duration::from_secs(120);

struct Args {
    id: String,
    url: String,
    dir: PathBuf,
    t0: i128,
    lock_id: i64,
    schema: String,
    lease: u64,
    renewal: u64,
    jitter: u64,
    safety_margin: Option<u64>,
    operation_timeout: Option<u64>,
    sample_every: Duration,
    shared: bool,
}

fn parse_args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| -> Option<String> {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1).cloned())
    };
    let need = |name: &str| get(name).ok_or_else(|| format!("missing {name}"));
    let num = |name: &str, default: Option<u64>| -> Result<Option<u64>, String> {
        match get(name) {
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| format!("{name} {v:?}: {e}")),
            None => Ok(default),
        }
    };
    let required = |name: &str, default: u64| -> Result<u64, String> {
        Ok(num(name, Some(default))?.unwrap_or(default))
    };
    Ok(Args {
        id: need("--id")?,
        url: need("--url")?,
        dir: PathBuf::from(need("--dir")?),
        t0: need("--t0")?.parse().map_err(|e| format!("--t0: {e}"))?,
        lock_id: required("--lock-id", 7)? as i64,
        schema: get("--schema").unwrap_or_else(|| "chaos".into()),
        lease: required("--lease", 2000)?,
        renewal: required("--renewal", 600)?,
        jitter: required("--jitter", 200)?,
        safety_margin: num("--safety-margin", None)?,
        operation_timeout: num("--operation-timeout", None)?,
        sample_every: Duration::from_micros(required("--sample-us", 1000)?),
        shared: argv.iter().any(|a| a == "--shared"),
    })
}

/// CLOCK_MONOTONIC in nanoseconds minus `t0`.
fn now_ns(t0: i128) -> i64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let ns = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    i64::try_from(ns - t0).unwrap_or(i64::MAX)
}

/// One line of JSON on stdout for the harness; a closed stdout (the harness is gone) is ignored.
fn event(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Quotes `s` as a JSON string (instance ids are plain ASCII here, but stay correct for any input).
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Open {
    term: u64,
    first: i64,
    last: i64,
    samples: u64,
}

/// The sampler's records: closed intervals appended to the log, the open one kept in the slot file.
struct Recorder {
    id: String,
    log: File,
    slot: File,
    open: Option<Open>,
    intervals: u64,
    samples: u64,
    true_samples: u64,
    termless: u64,
    last_sample: Option<i64>,
    max_sample_gap: i64,
}

impl Recorder {
    fn create(dir: &Path, id: &str) -> std::io::Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{id}.jsonl")))?;
        let slot = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(dir.join(format!("{id}.slot")))?;
        Ok(Self {
            id: id.to_owned(),
            log,
            slot,
            open: None,
            intervals: 0,
            samples: 0,
            true_samples: 0,
            termless: 0,
            last_sample: None,
            max_sample_gap: 0,
        })
    }

    fn append(&mut self, line: &str) {
        // One write(2) per line on an O_APPEND file: a line is whole or absent, even after SIGKILL.
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        if let Err(e) = self.log.write_all(&buf) {
            eprintln!("chaos_candidate {}: cannot write the log: {e}", self.id);
        }
    }

    /// One leadership interval as a JSON record of type `kind` (`open` in the slot, `interval` in the log).
    fn interval_json(&self, kind: &str, o: &Open) -> String {
        format!(
            r#"{{"type":"{kind}","candidate":{},"term":{},"first_true_ns":{},"last_true_ns":{},"samples":{}}}"#,
            json_str(&self.id),
            o.term,
            o.first,
            o.last,
            o.samples
        )
    }

    fn write_slot(&self) {
        let body = match &self.open {
            Some(o) => self.interval_json("open", o),
            None => format!(r#"{{"type":"none","candidate":{}}}"#, json_str(&self.id)),
        };
        let mut buf = [b' '; SLOT_LEN];
        let n = body.len().min(SLOT_LEN - 1);
        buf[..n].copy_from_slice(&body.as_bytes()[..n]);
        buf[SLOT_LEN - 1] = b'\n';
        if let Err(e) = self.slot.write_all_at(&buf, 0) {
            eprintln!("chaos_candidate {}: cannot write the slot: {e}", self.id);
        }
    }

    fn close(&mut self) {
        if let Some(o) = self.open.take() {
            let line = self.interval_json("interval", &o);
            self.append(&line);
            self.intervals += 1;
            self.write_slot();
        }
    }

    /// One sample: at `t` (read before asking), `is_leader()` answered `leads`, with `term`.
    fn sample(&mut self, t: i64, leads: bool, term: Option<u64>) {
        self.samples += 1;
        if let Some(prev) = self.last_sample {
            self.max_sample_gap = self.max_sample_gap.max(t - prev);
        }
        self.last_sample = Some(t);
        if !leads {
            if self.open.is_some() {
                self.close();
                event(&format!(r#"{{"ev":"follow","t":{t}}}"#));
            }
            return;
        }
        self.true_samples += 1;
        let Some(term) = term.or_else(|| self.open.as_ref().map(|o| o.term)) else {
            // The deadline passed between is_leader() and term(): a true answer of unknown term.
            self.termless += 1;
            return;
        };
        if self.open.as_ref().is_some_and(|o| o.term != term) {
            self.close();
        }
        match &mut self.open {
            Some(o) => {
                o.last = t;
                o.samples += 1;
            }
            None => {
                self.open = Some(Open {
                    term,
                    first: t,
                    last: t,
                    samples: 1,
                });
                event(&format!(r#"{{"ev":"lead","term":{term},"t":{t}}}"#));
            }
        }
        self.write_slot();
    }

    fn finish(mut self, t: i64, shutdown: &str) {
        self.close();
        let line = format!(
            r#"{{"type":"exit","candidate":{},"t_ns":{t},"shutdown":{},"samples":{},"true_samples":{},"termless_true_samples":{},"intervals":{},"max_sample_gap_ns":{}}}"#,
            json_str(&self.id),
            json_str(shutdown),
            self.samples,
            self.true_samples,
            self.termless,
            self.intervals,
            self.max_sample_gap
        );
        self.append(&line);
    }
}

fn retryable(e: &Error) -> bool {
    matches!(
        e,
        Error::Unreachable { .. } | Error::Timeout { .. } | Error::Database { .. }
    )
}

/// Connects, retrying while the database is unreachable (a fault may be active while this process starts).
async fn connect(args: &Args) -> Result<Elector, Error> {
    let mut builder = Elector::builder()
        .with_instance_id(args.id.clone())
        .with_lock_id(args.lock_id)
        .with_schema(args.schema.clone())
        .with_lease_duration(Duration::from_millis(args.lease))
        .with_renewal_interval(Duration::from_millis(args.renewal))
        .with_jitter_range(Duration::from_millis(args.jitter));
    if let Some(ms) = args.safety_margin {
        builder = builder.with_safety_margin(Duration::from_millis(ms));
    }
    if let Some(ms) = args.operation_timeout {
        builder = builder.with_operation_timeout(Duration::from_millis(ms));
    }
    let give_up = tokio::time::Instant::now() + START_DEADLINE;
    loop {
        let started = if args.shared {
            builder.clone().connect_shared(&args.url).await
        } else {
            builder.clone().connect(&args.url).await
        };
        match started {
            Ok(elector) => return Ok(elector),
            Err(e) if retryable(&e) && tokio::time::Instant::now() < give_up => {
                eprintln!("chaos_candidate {}: start failed, retrying: {e}", args.id);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[tokio::main]
async fn main() {
    // Exits without dropping the runtime, which would wait for any blocking read still running.
    std::process::exit(run().await);
}

async fn run() -> i32 {
    // A panic on any thread (the elector's task included, which Tokio would otherwise swallow) ends the
    // process with SIGABRT, so the harness cannot miss it.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chaos_candidate: {e}");
            return 2;
        }
    };
    let mut recorder = match Recorder::create(&args.dir, &args.id) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "chaos_candidate {}: cannot create the records: {e}",
                args.id
            );
            return 2;
        }
    };
    recorder.write_slot();
    // Installed before connecting, so that a SIGTERM during the start is a clean exit too.
    let mut sigterm = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chaos_candidate {}: no SIGTERM handler: {e}", args.id);
            return 2;
        }
    };
    let elector = tokio::select! {
        e = connect(&args) => match e {
            Ok(e) => Arc::new(e),
            Err(e) => {
                eprintln!("chaos_candidate {}: could not start: {e}", args.id);
                return 3;
            }
        },
        _ = sigterm.recv() => {
            recorder.finish(now_ns(args.t0), "not started");
            return 0;
        }
    };
    event(&format!(r#"{{"ev":"ready","t":{}}}"#, now_ns(args.t0)));

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let elector = elector.clone();
        let stop = stop.clone();
        let (t0, every, id) = (args.t0, args.sample_every, args.id.clone());
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    // The clock first: a pause between the two reads can only make the recorded time of a
                    // true answer earlier than the answer, never later.
                    let t = now_ns(t0);
                    let leads = elector.is_leader();
                    let term = if leads {
                        elector.term().or_else(|| {
                            elector
                                .leader()
                                .filter(|l| l.leader_id == id)
                                .map(|l| l.term)
                        })
                    } else {
                        None
                    };
                    recorder.sample(t, leads, term);
                    std::thread::sleep(every);
                }
                recorder
            })
    };
    let sampler = match sampler {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chaos_candidate {}: cannot start the sampler: {e}", args.id);
            return 2;
        }
    };

    // The end of stdin (the harness is gone) is watched from a plain thread: Tokio's stdin reads on a
    // blocking thread that the runtime would wait for at exit.
    let (stdin_closed_tx, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = stdin_closed_tx.send(());
        });
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = stdin_closed => {}
    }
    // Sampling goes on during the shutdown: the release must have stepped down before it deletes the lease.
    let shutdown = match elector.shutdown().await {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("error: {e}"),
    };
    stop.store(true, Ordering::Release);
    let recorder = match sampler.join() {
        Ok(r) => r,
        Err(_) => return 4,
    };
    recorder.finish(now_ns(args.t0), &shutdown);
    if shutdown == "ok" {
        0
    } else {
        eprintln!("chaos_candidate {}: shutdown failed: {shutdown}", args.id);
        5
    }
}
