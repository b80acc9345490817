//! The `leaderlease` command line against a real PostgreSQL: `status` against the table, `migrate up`
//! and `down`, the child's exit status, and three `leaderlease run` processes under faults (SIGKILL and
//! SIGSTOP of the leading one, database restarts) whose children must never overlap nor outlive their
//! lease.
//!
//! The children are this test binary run again as `stamp_child`: it appends `CLOCK_MONOTONIC` ns to a
//! file of its own every millisecond and ignores SIGTERM, so every stop of a child is a SIGKILL, the case
//! the command line must get right on time.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestSchema, ThrowawayPg, database_url, unique};
use rustix::process::{Pid, Signal, kill_process};

const BIN: &str = env!("CARGO_BIN_EXE_leaderlease");

fn mono_ns() -> i128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run leaderlease")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The child of the fault test (a no-op in a normal test run).
#[test]
fn stamp_child() {
    let Some(dir) = std::env::var_os("LL_STAMP_DIR") else {
        return;
    };
    let term = std::env::var("LEADERLEASE_TERM").expect("LEADERLEASE_TERM set by leaderlease run");
    let path = Path::new(&dir).join(format!("{term}-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A handler for SIGTERM that does nothing: only SIGKILL stops this child.
    let _term = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap()
    });
    loop {
        // One write per stamp: what was stamped is in the file when SIGKILL comes.
        let _ = file.write_all(format!("{}\n", mono_ns()).as_bytes());
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[tokio::test]
async fn migrate_up_then_down_and_status_without_a_table() {
    let schema = TestSchema::new("cli_migrate").await;
    let url = database_url();
    let s = schema.name.as_str();
    let table = schema.table();
    let regclass = |name: String| {
        let pool = schema.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass($1)::text")
                .bind(name)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let sequence = format!(
        "{}.leader_lease_term_seq",
        leaderlease::schema::quote_ident(s)
    );

    let out = cli(&["status", "--url", &url, "--schema", s]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("does not exist") && err.contains("leaderlease migrate up --schema"),
        "{err}"
    );

    for _ in 0..2 {
        let out = cli(&["migrate", "up", "--url", &url, "--schema", s]);
        assert!(out.status.success(), "{out:?}");
    }
    assert!(regclass(table.clone()).await.is_some());
    assert!(regclass(sequence.clone()).await.is_some());

    // A live lease: `down` refuses and names the lock id; --force drops.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (id, leader_id, expires_at, created_at, term) \
         VALUES (4, 'someone', clock_timestamp() + interval '1 minute', clock_timestamp(), 1)"
    )))
    .execute(&schema.pool)
    .await
    .unwrap();
    let out = cli(&["migrate", "down", "--url", &url, "--schema", s]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("lock id 4 has a live lease"),
        "{out:?}"
    );
    assert!(regclass(table.clone()).await.is_some());
    let out = cli(&["migrate", "down", "--url", &url, "--schema", s, "--force"]);
    assert!(out.status.success(), "{out:?}");
    assert!(regclass(table.clone()).await.is_none());
    assert!(regclass(sequence).await.is_none());

    let out = cli(&["migrate", "sideways", "--url", &url, "--schema", s]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = cli(&["status", "--url", &url, "--schema", "pg_nope"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--schema"), "{out:?}");
}

#[tokio::test]
async fn status_matches_the_table() {
    let schema = TestSchema::new("cli_status").await;
    let url = database_url();
    let elector = schema
        .builder()
        .with_lock_id(5)
        .with_instance_id("status-a")
        .connect(&url)
        .await
        .unwrap();
    common::wait_until(Duration::from_secs(10), "a leader", || elector.is_leader()).await;
    let table = schema.table();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (id, leader_id, expires_at, created_at, renewed_at, term) \
         VALUES (9, 'gone \"b\"', clock_timestamp() - interval '3 seconds', \
                 clock_timestamp() - interval '1 minute', clock_timestamp() - interval '4 seconds', 77)"
    )))
    .execute(&schema.pool)
    .await
    .unwrap();

    let out = cli(&["status", "--url", &url, "--schema", &schema.name, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<(i32, String, i64, f64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, leader_id, term, \
                (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::float8 \
         FROM {table} ORDER BY id"
    )))
    .fetch_all(&schema.pool)
    .await
    .unwrap();
    let leases = doc["leases"].as_array().unwrap();
    assert_eq!(doc["table"], table);
    assert_eq!(leases.len(), rows.len(), "{doc}");
    for (l, (id, leader, term, expires_in)) in leases.iter().zip(&rows) {
        assert_eq!(l["lock_id"], *id, "{doc}");
        assert_eq!(l["leader_id"], leader.as_str(), "{doc}");
        assert_eq!(l["term"], *term, "{doc}");
        assert_eq!(l["live"], *expires_in > 0.0, "{doc}");
        let shown = l["expires_in_ms"].as_f64().unwrap();
        // Read a moment before the test's own query: at most that moment (and a renewal) apart.
        assert!(
            (shown - expires_in).abs() < 1500.0,
            "{doc}: expires_in {expires_in}"
        );
    }
    assert_eq!(leases[0]["term"], elector.term().unwrap());
    assert!(leases[0]["expires_in_ms"].as_i64().unwrap() <= 1500);
    assert!(leases[1]["renewed_ago_ms"].as_i64().unwrap() >= 4000);

    let out = cli(&["status", "--url", &url, "--schema", &schema.name]);
    assert!(out.status.success(), "{out:?}");
    let human = text(&out.stdout);
    let lines: Vec<&str> = human.lines().collect();
    assert!(lines[0].starts_with(&table), "{human}");
    assert!(lines[1].starts_with("LOCK ID"), "{human}");
    let five: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        five[..3],
        ["5", "status-a", &elector.term().unwrap().to_string()]
    );
    // Expired 3 s before it was written, and more by now (the two CLI runs take a while on a busy machine).
    let expired_s: f64 = lines[3]
        .split("expired ")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'expired <seconds>' in {human}"));
    assert!(
        lines[3].starts_with("9") && (3.0..60.0).contains(&expired_s),
        "{human}"
    );
    elector.shutdown().await.unwrap();
}

#[tokio::test]
async fn run_passes_the_exit_status_through_and_releases() {
    let schema = TestSchema::new("cli_exit").await;
    let url = database_url();
    let run = |command: &[&str]| {
        let mut args = vec![
            "run",
            "--url",
            &url,
            "--schema",
            &schema.name,
            "--lock-id",
            "3",
            "--lease",
            "2s",
            "--",
        ];
        args.extend_from_slice(command);
        Command::new(BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = run(&["sh", "-c", "echo term=$LEADERLEASE_TERM; exit 7"])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(text(&out.stdout).starts_with("term="), "{out:?}");
    let count = || {
        let pool = schema.pool.clone();
        let table = schema.table();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table}"
            )))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        count().await,
        0,
        "the lease is released when the command exits"
    );

    // SIGTERM to the command line while it leads: the command gets SIGTERM, its status comes back, and
    // the lease is released.
    let child = run(&["sleep", "60"]);
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    let start = Instant::now();
    while count().await == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    kill_process(pid, Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out.stderr));
    assert_eq!(count().await, 0, "released at shutdown");

    let out = cli(&[
        "run",
        "--url",
        &url,
        "--lock-id",
        "1",
        "--",
        "no-such-cmd-ll",
    ]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let out = cli(&[
        "run",
        "--url",
        &url,
        "--lock-id",
        "1",
        "--lease",
        "10",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("needs a unit"), "{out:?}");
}

/// One `leaderlease run` process of the fault test.
struct Candidate {
    child: Child,
    log: PathBuf,
}

struct Cluster {
    url: String,
    schema: String,
    dir: PathBuf,
    stamps: PathBuf,
    candidates: Vec<Candidate>,
    spawned: usize,
}

impl Cluster {
    fn spawn(&mut self) {
        let id = format!("cli-{}", self.spawned);
        self.spawned += 1;
        let log = self.dir.join(format!("{id}.log"));
        let me = std::env::current_exe().unwrap();
        let child = Command::new(BIN)
            .args(["run", "--url", &self.url, "--schema", &self.schema])
            .args([
                "--lock-id",
                "1",
                "--lease",
                "2s",
                "--instance-id",
                &id,
                "--restart",
            ])
            .arg("--")
            .arg(me)
            .args(["--exact", "stamp_child", "--nocapture", "--test-threads=1"])
            .env("LL_STAMP_DIR", &self.stamps)
            .env("LEADERLEASE_LOG", "info,leaderlease::run=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.candidates.push(Candidate { child, log });
    }

    /// The terms of the children that have stamped so far.
    fn terms(&self) -> Vec<u64> {
        let mut terms: Vec<u64> = std::fs::read_dir(&self.stamps)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.split('-').next()?.parse().ok())
            .collect();
        terms.sort_unstable();
        terms
    }

    /// Waits for a child of a term after `after` to stamp for a while; returns the term and the index
    /// of the candidate that runs it.
    fn wait_new_child(&self, after: u64, limit: Duration) -> (u64, usize) {
        let start = Instant::now();
        loop {
            if let Some(&term) = self.terms().iter().find(|t| **t > after) {
                std::thread::sleep(Duration::from_millis(300));
                let needle = format!("started the command term={term} ");
                let who = self
                    .candidates
                    .iter()
                    .position(|c| std::fs::read_to_string(&c.log).unwrap().contains(&needle))
                    .expect("the leader's log names the term");
                return (term, who);
            }
            assert!(
                start.elapsed() < limit,
                "no new child after term {after} within {limit:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> String {
        self.candidates
            .iter()
            .map(|c| {
                let l = std::fs::read_to_string(&c.log).unwrap_or_default();
                let tail: Vec<&str> = l.lines().rev().take(15).collect();
                format!(
                    "--- {}\n{}",
                    c.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn signal(&self, who: usize, sig: Signal) {
        let pid = Pid::from_raw(self.candidates[who].child.id() as i32).unwrap();
        kill_process(pid, sig).unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.candidates {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }
}

/// `key=value` of a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Whether a process runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().next() != Some("Z"))
        })
        .unwrap_or(false)
}

#[test]
fn three_runs_under_kills_stops_and_database_restarts_never_overlap() {
    let pg = ThrowawayPg::start();
    let dir = std::env::temp_dir().join(unique("ll_cli_faults"));
    let stamps = dir.join("stamps");
    std::fs::create_dir_all(&stamps).unwrap();
    let mut cluster = Cluster {
        url: pg.url(),
        schema: "ll_cli".into(),
        dir: dir.clone(),
        stamps: stamps.clone(),
        candidates: Vec::new(),
        spawned: 0,
    };
    let out = cli(&["migrate", "up", "--url", &cluster.url, "--schema", "ll_cli"]);
    assert!(out.status.success(), "{out:?}");
    for _ in 0..3 {
        cluster.spawn();
    }
    let rounds: usize = std::env::var("LL_CLI_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let limit = Duration::from_secs(20);
    let (mut term, _) = cluster.wait_new_child(0, limit);
    let mut faults = Vec::new();
    for _ in 0..rounds {
        // SIGKILL of the leading command line: the kernel kills its child (parent-death signal).
        let (_, who) = cluster.wait_new_child(term - 1, limit);
        cluster.signal(who, Signal::KILL);
        let _ = cluster.candidates[who].child.wait();
        faults.push((term, "SIGKILL of the leading command line"));
        cluster.spawn();
        (term, _) = cluster.wait_new_child(term, limit);

        // SIGSTOP of the leading command line past its lease: the watchdog kills its child.
        let (_, who) = cluster.wait_new_child(term - 1, limit);
        cluster.signal(who, Signal::STOP);
        faults.push((term, "SIGSTOP of the leading command line for 4 s"));
        let (next, _) = cluster.wait_new_child(term, limit);
        std::thread::sleep(Duration::from_secs(4).saturating_sub(Duration::from_secs(2)));
        cluster.signal(who, Signal::CONT);
        term = next;

        // The database stops for longer than the lease, then starts again.
        faults.push((term, "database down for 3 s"));
        pg.stop();
        std::thread::sleep(Duration::from_secs(3));
        pg.restart();
        (term, _) = cluster.wait_new_child(term, limit);
    }
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..cluster.candidates.len() {
        if cluster.candidates[i].child.try_wait().unwrap().is_none() {
            cluster.signal(i, Signal::TERM);
        }
    }
    let shutdown = Instant::now();
    for c in &mut cluster.candidates {
        // A follower ends by the signal (143); the leader passes its child's status through, and the
        // child ignores SIGTERM, so it ended by SIGKILL after the grace (137).
        let status = c.child.wait().unwrap();
        assert!(
            matches!(status.code(), Some(143 | 137) | None),
            "{status:?}"
        );
    }
    assert!(shutdown.elapsed() < Duration::from_secs(10));

    // Every lease expiry the command lines logged, by term: the latest is the one that counts.
    let mut expiry: BTreeMap<u64, i128> = BTreeMap::new();
    for c in &cluster.candidates {
        for line in std::fs::read_to_string(&c.log).unwrap().lines() {
            if let (Some(t), Some(e)) = (field(line, "term"), field(line, "expiry_mono_ns")) {
                let (t, e) = (t.parse().unwrap(), e.parse().unwrap());
                let entry = expiry.entry(t).or_insert(e);
                *entry = (*entry).max(e);
            }
        }
    }
    // Every child: its stamps, in order of its first.
    let mut children: Vec<(u64, u32, i128, i128)> = std::fs::read_dir(&stamps)
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            let (t, pid) = name.split_once('-').unwrap();
            let content = std::fs::read_to_string(e.path()).unwrap();
            let ns: Vec<i128> = content.lines().filter_map(|l| l.parse().ok()).collect();
            (
                t.parse().unwrap(),
                pid.parse().unwrap(),
                ns[0],
                *ns.last().unwrap(),
            )
        })
        .collect();
    children.sort_by_key(|c| c.2);
    assert!(children.len() > 3 * rounds, "{children:?}");
    let mut report = Vec::new();
    let mut worst = i128::MAX;
    for (i, &(t, pid, _, last)) in children.iter().enumerate() {
        assert!(!running(pid), "child {pid} (term {t}) still runs");
        if let Some(&(t2, _, next_first, _)) = children.get(i + 1) {
            assert!(
                last < next_first,
                "children of terms {t} and {t2} overlap: {} ms",
                (last - next_first) as f64 / 1e6
            );
        }
        let bound = *expiry
            .get(&t)
            .unwrap_or_else(|| panic!("no expiry logged for term {t}"));
        let margin = bound - last;
        assert!(
            margin > 0,
            "child of term {t} stamped {} ms after its lease's expiry",
            -margin as f64 / 1e6
        );
        let fault = faults
            .iter()
            .find(|f| f.0 == t)
            .map_or("shutdown (SIGTERM)", |f| f.1);
        report.push(format!(
            "term {t}: {fault}: last stamp {:.1} ms before the lease's expiry, next child {:.1} ms \
             after it",
            margin as f64 / 1e6,
            children
                .get(i + 1)
                .map_or(f64::NAN, |n| (n.2 - bound) as f64 / 1e6)
        ));
        if faults.iter().any(|f| f.0 == t) {
            worst = worst.min(margin);
        }
    }
    eprintln!(
        "{}\nworst margin over the faults: {:.1} ms",
        report.join("\n"),
        worst as f64 / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
}
