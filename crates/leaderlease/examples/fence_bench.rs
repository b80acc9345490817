//! The database's fence, measured (`npm run bench:fence`, or `cargo run --release --example fence_bench`):
//!
//! 1. Trials: two electors hand leadership back and forth. In each trial the leader begins a transaction
//!    with a write of its term and commits it through `fence_term` at a random moment around its own
//!    release (before, during or after it); the next leader, once it leads, counts the old term's rows in
//!    a fenced transaction of its own. A row of the old term that appears after that count is a stale
//!    commit: a write of an earlier leadership landing inside a later one. Expected: 0.
//! 2. Cost: a leader's transaction (BEGIN, INSERT, COMMIT) with and without the fence, mean µs per
//!    transaction over many, on one connection.
//!
//! Options: `--trials N` (default 1000), `--writes N` (default 3000). `DATABASE_URL` or the local server.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use leaderlease::{Elector, Error, schema::quote_ident};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .unwrap_or(default)
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn count(pool: &PgPool, work: &str, term: u64) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {work} WHERE term = $1"
    )))
    .bind(term as i64)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// `writes` transactions BEGIN, INSERT, (fence,) COMMIT on `conn`: the mean µs of a whole transaction,
/// and every fence call's own µs.
async fn run_writes(
    conn: &mut sqlx::PgConnection,
    work: &str,
    leader: &Elector,
    writes: u64,
    fenced: bool,
) -> (f64, Vec<f64>) {
    let insert = format!("INSERT INTO {work} VALUES ($1, -1)");
    let mut fences = Vec::new();
    let t = Instant::now();
    for _ in 0..writes {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        sqlx::query(AssertSqlSafe(insert.clone()))
            .bind(0i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        if fenced {
            let f = Instant::now();
            leader.fence(&mut tx).await.unwrap();
            fences.push(f.elapsed().as_secs_f64() * 1e6);
        }
        tx.commit().await.unwrap();
    }
    (t.elapsed().as_secs_f64() * 1e6 / writes as f64, fences)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let trials = arg("--trials", 1000);
    let writes = arg("--writes", 3000);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("ll_fence_bench_{}", std::process::id());
    let q = quote_ident(&schema);
    let work = format!("{q}.work");
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "{}; CREATE TABLE {work} (term BIGINT NOT NULL, trial INT NOT NULL)",
        leaderlease::schema::up_sql(&schema)
    )))
    .execute(&pool)
    .await
    .unwrap();
    let builder = || {
        Elector::builder()
            .with_schema(schema.clone())
            .with_lock_id(1)
            .with_lease_duration(Duration::from_millis(1000))
            .with_renewal_interval(Duration::from_millis(150))
            .with_jitter_range(Duration::from_millis(50))
    };
    // Four candidates: one that just released stands back for a renewal interval, so with four there is
    // always another to take over at once.
    let mut electors = Vec::new();
    for id in ["a", "b", "c", "d"] {
        electors.push(builder().with_instance_id(id).connect(&url).await.unwrap());
    }
    let current = |electors: &[Elector]| electors.iter().position(Elector::is_leader);

    // 1. Trials.
    let (mut stale, mut passed, mut refused) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for trial in 0..trials {
        wait_for("a leader", || current(&electors).is_some()).await;
        let leader = &electors[current(&electors).unwrap()];
        let term = leader.term().unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(AssertSqlSafe(format!("INSERT INTO {work} VALUES ($1, $2)")))
            .bind(term as i64)
            .bind(trial as i32)
            .execute(&mut *tx)
            .await
            .unwrap();
        // The commit races the handover: anywhere from 3 ms before the release starts to well after the
        // next leader's first look.
        let delay = Duration::from_micros(rand::random::<u64>() % 15_000);
        let commit = async {
            tokio::time::sleep(delay).await;
            match leader.fence_term(&mut tx, term).await {
                Ok(_) => {
                    tx.commit().await.unwrap();
                    true
                }
                Err(Error::Fenced { .. }) => false,
                Err(e) => panic!("fence: {e}"),
            }
        };
        let hand_over = async {
            tokio::time::sleep(Duration::from_millis(3)).await;
            leader.release().await.unwrap();
            wait_for("the next leader", || {
                electors.iter().any(|e| e.term().is_some_and(|t| t > term))
            })
            .await;
            let next = electors
                .iter()
                .find(|e| e.term().is_some_and(|t| t > term))
                .unwrap();
            // The next leader's first look, fenced: what it sees of the old term must be final.
            let mut look = pool.begin().await.unwrap();
            next.fence(&mut look).await.unwrap();
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM {work} WHERE term = $1"
            )))
            .bind(term as i64)
            .fetch_one(&mut *look)
            .await
            .unwrap();
            look.commit().await.unwrap();
            n
        };
        let (committed, seen) = tokio::join!(commit, hand_over);
        if committed {
            passed += 1;
        } else {
            refused += 1;
        }
        if count(&pool, &work, term).await > seen {
            stale += 1;
        }
    }
    let trial_secs = started.elapsed().as_secs_f64();

    // 2. Cost per guarded write, on one connection of the current leader.
    wait_for("a leader", || current(&electors).is_some()).await;
    let leader = &electors[current(&electors).unwrap()];
    let mut conn = pool.acquire().await.unwrap();
    // Commits without waiting for the disk, so that the fsync does not drown the fence's own cost.
    sqlx::raw_sql("SET synchronous_commit = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    // Warm up, then alternate to spread the machine's noise over both.
    let _ = run_writes(&mut conn, &work, leader, writes / 3, true).await;
    let (mut plain, mut guarded, mut fences) = (0.0, 0.0, Vec::new());
    for _ in 0..3 {
        plain += run_writes(&mut conn, &work, leader, writes, false).await.0 / 3.0;
        let (mean, f) = run_writes(&mut conn, &work, leader, writes, true).await;
        guarded += mean / 3.0;
        fences.extend(f);
    }
    drop(conn);
    fences.sort_by(f64::total_cmp);

    println!(
        "fence trials: {trials} in {trial_secs:.1} s; fenced commits that passed {passed}, refused {refused}; \
         stale commits (an old term's write landing after the next leader's first look): {stale}"
    );
    println!(
        "cost (synchronous_commit off): BEGIN+INSERT+COMMIT {plain:.0} µs, with the fence {guarded:.0} µs \
         (difference {:.0} µs); the fence call itself: median {:.0} µs, p90 {:.0} µs, p99 {:.0} µs \
         ({} calls)",
        guarded - plain,
        percentile(&fences, 0.5),
        percentile(&fences, 0.9),
        percentile(&fences, 0.99),
        fences.len()
    );
    for e in &electors {
        e.shutdown().await.unwrap();
    }
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {q} CASCADE")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    if stale > 0 {
        std::process::exit(1);
    }
}
