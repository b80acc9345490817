//! One candidate process of the chaos checker (`npm run chaos`, see `docs/chaos.md`): campaigns for one
//! or more lock ids and samples `is_leader()` of every election every millisecond from a thread of its
//! own, reading CLOCK_MONOTONIC first, and records every leadership it saw as the interval between the
//! first and the last sample that answered true.
//!
//! ```text
//! cargo build --profile release-fast --features nats --example chaos_candidate
//! chaos_candidate --id r1-g1 --url postgres://... --dir RUN_DIR --t0 NS [--lock-id 7] [--elections 1]
//!     [--schema chaos] [--lease 2000] [--renewal 600] [--jitter 200] [--safety-margin MS]
//!     [--operation-timeout MS] [--shared] [--twin] [--store pg|nats] [--bucket chaos]
//! ```
//!
//! - `--elections N`: campaigns for the lock ids `--lock-id` .. `--lock-id + N - 1`, one elector each.
//! - `--shared` starts them with `connect_shared` (the process's shared hub, as the Node binding does)
//!   instead of `connect`.
//! - `--twin` (PostgreSQL, implies `--shared`): a second elector for the first lock id with the same
//!   instance id on the same hub, sampled on its own as candidate `<id>~b` (two electors of one process
//!   that the database cannot tell apart; they must never lead at once).
//! - `--store nats`: `connect_nats(url, bucket)` (built with the `nats` feature).
//!
//! Writes, in `RUN_DIR`:
//! - `<id>.jsonl`: one JSON line per closed leadership interval, `{"type":"interval","candidate","lock",
//!   "sampler","term","first_true_ns","last_true_ns","samples"}` (`sampler` is `<id>` or `<id>~b`), and
//!   `{"type":"exit",...}` as the last line of a clean exit. Times are CLOCK_MONOTONIC nanoseconds minus
//!   `--t0` (the harness's start), the clock every candidate process on the machine reads.
//! - `<id>.slot`: the open interval of each sampled elector, a fixed-size record each (record `k` at
//!   offset `k x 256`), rewritten in place after every true sample, so that a process killed while leading
//!   leaves its exact last true sample behind.
//!
//! `chaos_candidate --cli-child --id c1-g1 --dir RUN_DIR --t0 NS` is the command of a command-line
//! candidate (`leaderlease run ... -- chaos_candidate --cli-child ...`, see the harness): it leads for as
//! long as it runs. It samples its own running every millisecond (term and lock id from
//! `LEADERLEASE_TERM` and `LEADERLEASE_LOCK_ID`, which `leaderlease run` sets) into a slot record of its
//! own, appended to `<id>.slot` after those of the candidate's earlier commands, so that a command killed
//! by the watchdog or the kernel leaves its last sample behind; on SIGTERM it appends its interval to
//! `<id>.jsonl` and exits 0.
//!
//! On stdout, one JSON line per change for the harness's live view (`ready`, `lead`, `follow`, with the
//! lock id). On stdin, commands from the harness, one a line: `release <lock id>` (a voluntary handover:
//! `release()` of that election). SIGTERM or the end of stdin shuts every elector down (sampling goes on
//! until `shutdown()` has returned) and exits 0. A panic anywhere aborts the process, so the harness sees
//! it in the exit status.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leaderlease::{Elector, Error};
use tokio::signal::unix::{SignalKind, signal};

/// Size of the slot record; the JSON is padded with spaces so that a shorter record overwrites a longer one.
const SLOT_LEN: usize = 256;
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
    twin: bool,
    elections: u64,
    nats: bool,
    bucket: String,
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
        shared: argv.iter().any(|a| a == "--shared" || a == "--twin"),
        twin: argv.iter().any(|a| a == "--twin"),
        elections: required("--elections", 1)?.max(1),
        nats: match get("--store").as_deref() {
            None | Some("pg") => false,
            Some("nats") => true,
            Some(other) => return Err(format!("--store {other:?}: pg or nats")),
        },
        bucket: get("--bucket").unwrap_or_else(|| "chaos".into()),
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

/// One sampled elector: its candidate name (`<id>` or `<id>~b`), lock id and open interval.
struct Track {
    sampler: String,
    lock: i64,
    index: usize,
    open: Option<Open>,
}

/// The sampler's records: closed intervals appended to the log, the open ones kept in the slot file.
struct Recorder {
    id: String,
    log: File,
    slot: File,
    tracks: Vec<Track>,
    intervals: u64,
    samples: u64,
    true_samples: u64,
    termless: u64,
    last_sample: Option<i64>,
    max_sample_gap: i64,
}

impl Recorder {
    fn create(dir: &Path, id: &str, tracks: Vec<(String, i64)>) -> std::io::Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{id}.jsonl")))?;
        let slot = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(dir.join(format!("{id}.slot")))?;
        let tracks = tracks
            .into_iter()
            .enumerate()
            .map(|(index, (sampler, lock))| Track {
                sampler,
                lock,
                index,
                open: None,
            })
            .collect();
        Ok(Self {
            id: id.to_owned(),
            log,
            slot,
            tracks,
            intervals: 0,
            samples: 0,
            true_samples: 0,
            termless: 0,
            last_sample: None,
            max_sample_gap: 0,
        })
    }

    /// The records of one command of a command-line candidate: the candidate's files, not truncated, and
    /// one slot record after those already there.
    fn open_command(dir: &Path, id: &str, lock: i64) -> std::io::Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{id}.jsonl")))?;
        let slot = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(dir.join(format!("{id}.slot")))?;
        let index = slot.metadata()?.len() as usize / SLOT_LEN;
        Ok(Self {
            id: id.to_owned(),
            log,
            slot,
            tracks: vec![Track {
                sampler: id.to_owned(),
                lock,
                index,
                open: None,
            }],
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
    fn interval_json(&self, kind: &str, track: &Track, o: &Open) -> String {
        format!(
            r#"{{"type":"{kind}","candidate":{},"lock":{},"sampler":{},"term":{},"first_true_ns":{},"last_true_ns":{},"samples":{}}}"#,
            json_str(&self.id),
            track.lock,
            json_str(&track.sampler),
            o.term,
            o.first,
            o.last,
            o.samples
        )
    }

    fn write_slot(&self, k: usize) {
        let track = &self.tracks[k];
        let body = match &track.open {
            Some(o) => self.interval_json("open", track, o),
            None => format!(
                r#"{{"type":"none","candidate":{},"lock":{},"sampler":{}}}"#,
                json_str(&self.id),
                track.lock,
                json_str(&track.sampler)
            ),
        };
        let mut buf = [b' '; SLOT_LEN];
        let n = body.len().min(SLOT_LEN - 1);
        buf[..n].copy_from_slice(&body.as_bytes()[..n]);
        buf[SLOT_LEN - 1] = b'\n';
        if let Err(e) = self
            .slot
            .write_all_at(&buf, (track.index * SLOT_LEN) as u64)
        {
            eprintln!("chaos_candidate {}: cannot write the slot: {e}", self.id);
        }
    }

    fn write_slots(&self) {
        for k in 0..self.tracks.len() {
            self.write_slot(k);
        }
    }

    fn close(&mut self, k: usize) {
        if let Some(o) = self.tracks[k].open.take() {
            let line = self.interval_json("interval", &self.tracks[k], &o);
            self.append(&line);
            self.intervals += 1;
            self.write_slot(k);
        }
    }

    /// One round of samples began at `t`.
    fn round(&mut self, t: i64) {
        self.samples += 1;
        if let Some(prev) = self.last_sample {
            self.max_sample_gap = self.max_sample_gap.max(t - prev);
        }
        self.last_sample = Some(t);
    }

    /// One sample of track `k`: at `t` (read before asking), `is_leader()` answered `leads`, with `term`.
    fn sample(&mut self, k: usize, t: i64, leads: bool, term: Option<u64>) {
        let lock = self.tracks[k].lock;
        if !leads {
            if self.tracks[k].open.is_some() {
                self.close(k);
                event(&format!(r#"{{"ev":"follow","lock":{lock},"t":{t}}}"#));
            }
            return;
        }
        self.true_samples += 1;
        let Some(term) = term.or_else(|| self.tracks[k].open.as_ref().map(|o| o.term)) else {
            // The deadline passed between is_leader() and term(): a true answer of unknown term.
            self.termless += 1;
            return;
        };
        if self.tracks[k].open.as_ref().is_some_and(|o| o.term != term) {
            self.close(k);
        }
        match &mut self.tracks[k].open {
            Some(o) => {
                o.last = t;
                o.samples += 1;
            }
            None => {
                self.tracks[k].open = Some(Open {
                    term,
                    first: t,
                    last: t,
                    samples: 1,
                });
                let sampler = json_str(&self.tracks[k].sampler);
                event(&format!(
                    r#"{{"ev":"lead","lock":{lock},"sampler":{sampler},"term":{term},"t":{t}}}"#
                ));
            }
        }
        self.write_slot(k);
    }

    fn finish(mut self, t: i64, shutdown: &str) {
        for k in 0..self.tracks.len() {
            self.close(k);
        }
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
        Error::Unreachable { .. }
            | Error::Timeout { .. }
            | Error::Database { .. }
            | Error::Store { .. }
            | Error::StoreUnreachable { .. }
    )
}

/// Connects one elector for `lock_id`, retrying while the store is unreachable (a fault may be active
/// while this process starts).
async fn connect(args: &Args, lock_id: i64, shared: bool) -> Result<Elector, Error> {
    let mut builder = Elector::builder()
        .with_instance_id(args.id.clone())
        .with_lock_id(lock_id)
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
        let started = if args.nats {
            connect_nats(builder.clone(), &args.url, &args.bucket).await
        } else if shared {
            builder.clone().connect_shared(&args.url).await
        } else {
            builder.clone().connect(&args.url).await
        };
        match started {
            Ok(elector) => return Ok(elector),
            Err(e) if retryable(&e) && tokio::time::Instant::now() < give_up => {
                eprintln!(
                    "chaos_candidate {} lock {lock_id}: start failed, retrying: {e}",
                    args.id
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(feature = "nats")]
async fn connect_nats(
    builder: leaderlease::ElectorBuilder,
    url: &str,
    bucket: &str,
) -> Result<Elector, Error> {
    builder.connect_nats(url, bucket).await
}

#[cfg(not(feature = "nats"))]
async fn connect_nats(
    _builder: leaderlease::ElectorBuilder,
    _url: &str,
    _bucket: &str,
) -> Result<Elector, Error> {
    eprintln!("chaos_candidate: --store nats needs the example built with --features nats");
    std::process::exit(2);
}

/// Every elector of the process, in the order of the slot records: `(sampler name, lock id, shared)`.
fn plan(args: &Args) -> Vec<(String, i64, bool)> {
    let mut out: Vec<(String, i64, bool)> = (0..args.elections)
        .map(|k| (args.id.clone(), args.lock_id + k as i64, args.shared))
        .collect();
    if args.twin && !args.nats {
        out.push((format!("{}~b", args.id), args.lock_id, true));
    }
    out
}

#[tokio::main]
async fn main() {
    // Exits without dropping the runtime, which would wait for any blocking read still running.
    std::process::exit(run().await);
}

/// `--cli-child`: the command of a command-line candidate (see the header).
async fn cli_child() -> i32 {
    let argv: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1).cloned())
    };
    let env_num = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<i64>().ok());
    let (Some(id), Some(dir), Some(t0), Some(term), Some(lock)) = (
        get("--id"),
        get("--dir"),
        get("--t0").and_then(|t| t.parse::<i128>().ok()),
        env_num("LEADERLEASE_TERM"),
        env_num("LEADERLEASE_LOCK_ID"),
    ) else {
        eprintln!(
            "chaos_candidate --cli-child: needs --id, --dir, --t0 and LEADERLEASE_TERM, LEADERLEASE_LOCK_ID"
        );
        return 2;
    };
    let mut sigterm = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chaos_candidate {id}: no SIGTERM handler: {e}");
            return 2;
        }
    };
    let mut recorder = match Recorder::open_command(Path::new(&dir), &id, lock) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos_candidate {id}: cannot open the records: {e}");
            return 2;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            _ = tick.tick() => {
                let t = now_ns(t0);
                recorder.sample(0, t, true, Some(term as u64));
            }
        }
    }
    recorder.close(0);
    event(&format!(
        r#"{{"ev":"follow","lock":{lock},"t":{}}}"#,
        now_ns(t0)
    ));
    0
}

async fn run() -> i32 {
    if std::env::args().any(|a| a == "--cli-child") {
        return cli_child().await;
    }
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
    let plan = plan(&args);
    let tracks = plan.iter().map(|(s, l, _)| (s.clone(), *l)).collect();
    let mut recorder = match Recorder::create(&args.dir, &args.id, tracks) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "chaos_candidate {}: cannot create the records: {e}",
                args.id
            );
            return 2;
        }
    };
    recorder.write_slots();
    // Installed before connecting, so that a SIGTERM during the start is a clean exit too.
    let mut sigterm = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chaos_candidate {}: no SIGTERM handler: {e}", args.id);
            return 2;
        }
    };
    let connect_all = async {
        let mut all = Vec::with_capacity(plan.len());
        for (_, lock, shared) in &plan {
            all.push(connect(&args, *lock, *shared).await.map(Arc::new)?);
        }
        Ok::<_, Error>(all)
    };
    let electors: Vec<Arc<Elector>> = tokio::select! {
        e = connect_all => match e {
            Ok(e) => e,
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
        let electors = electors.clone();
        let stop = stop.clone();
        let (t0, every, id) = (args.t0, args.sample_every, args.id.clone());
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    recorder.round(now_ns(t0));
                    for (k, elector) in electors.iter().enumerate() {
                        // The clock first: a pause between the two reads can only make the recorded time
                        // of a true answer earlier than the answer, never later.
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
                        recorder.sample(k, t, leads, term);
                    }
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

    // Commands and the end of stdin (the harness is gone) are read on a plain thread: Tokio's stdin reads
    // on a blocking thread that the runtime would wait for at exit.
    let (command_tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if command_tx.send(line).is_err() {
                    break;
                }
            }
        });
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            line = commands.recv() => match line {
                None => break,
                Some(line) => command(&args.id, &electors, &plan, &line),
            },
        }
    }
    // Sampling goes on during the shutdown: the release must have stepped down before it deletes the lease.
    let mut shutdown = "ok".to_owned();
    for elector in &electors {
        if let Err(e) = elector.shutdown().await {
            shutdown = format!("error: {e}");
        }
    }
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

/// A command of the harness: `release <lock id>` releases that election's lease (every elector of the
/// lock id, the twin too) in the background.
fn command(id: &str, electors: &[Arc<Elector>], plan: &[(String, i64, bool)], line: &str) {
    let mut words = line.split_whitespace();
    match (
        words.next(),
        words.next().and_then(|w| w.parse::<i64>().ok()),
    ) {
        (Some("release"), Some(lock)) => {
            for (elector, (_, l, _)) in electors.iter().zip(plan) {
                if *l == lock {
                    let elector = elector.clone();
                    let id = id.to_owned();
                    tokio::spawn(async move {
                        if let Err(e) = elector.release().await {
                            eprintln!("chaos_candidate {id}: release of lock {lock} failed: {e}");
                        }
                    });
                }
            }
        }
        _ => eprintln!("chaos_candidate {id}: unknown command {line:?}"),
    }
}
