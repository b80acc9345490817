//! Behaviour users rely on, against a real PostgreSQL; each test in a schema of its own.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use leaderlease::{Error, Status};
use sqlx::Row;

/// Milliseconds, by the database clock, between the lease's expiry `expired_epoch` and the creation of
/// the lease that now stands.
async fn takeover_delay_ms(s: &TestSchema, expired_epoch: f64) -> f64 {
    let created: f64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT EXTRACT(EPOCH FROM created_at)::float8 FROM {} WHERE id = 1",
        s.table()
    )))
    .fetch_one(&s.pool)
    .await
    .unwrap();
    (created - expired_epoch) * 1000.0
}

async fn expiry_epoch(s: &TestSchema) -> f64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT EXTRACT(EPOCH FROM expires_at)::float8 FROM {} WHERE id = 1",
        s.table()
    )))
    .fetch_one(&s.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_is_taken_over_right_after_expiry_without_cleanup() {
    let s = TestSchema::new("expired").await;
    s.exec(leaderlease::schema::up_sql(&s.name)).await;
    // The lease of a dead node, expiring in 2 s.
    let dead_term: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {} (id, leader_id, expires_at, term) \
         VALUES (1, 'dead-node', clock_timestamp() + interval '2 seconds', nextval($1::regclass)) \
         RETURNING term",
        s.table()
    )))
    .bind(s.sequence())
    .fetch_one(&s.pool)
    .await
    .unwrap();
    let expires = expiry_epoch(&s).await;

    let e = s.slow_poller().connect(&database_url()).await.unwrap();
    wait_until(
        Duration::from_secs(5),
        "the follower to observe the dead lease",
        || e.leader().is_some(),
    )
    .await;
    assert_eq!(e.leader().unwrap().leader_id, "dead-node");
    assert!(!e.is_leader());
    wait_until(Duration::from_secs(6), "takeover", || e.is_leader()).await;
    assert!(
        e.term().unwrap() > dead_term as u64,
        "takeover takes a new, larger term"
    );
    let delay = takeover_delay_ms(&s, expires).await;
    eprintln!("takeover {delay:.1} ms after the expiry, by the database clock");
    assert!(delay >= 0.0, "took over {delay} ms before the expiry");
    // The follower's poll is 4 s; it woke at the expiry it had observed.
    assert!(delay < 500.0, "took over {delay} ms after the expiry");
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_hands_over_and_terms_grow() {
    let s = TestSchema::new("release").await;
    let a = s.elector("a").await;
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let b = s.elector("b").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let term_a = a.term().unwrap();
    assert!(!b.is_leader());

    let lease = *a.subscribe_lease().borrow();
    let lease = lease.expect("the lease stream holds the current lease");
    assert_eq!(Some(lease.term), a.term());
    assert!(
        lease.deadline > Instant::now()
            && lease.deadline < Instant::now() + Duration::from_millis(1500)
    );

    a.release().await.unwrap();
    assert!(!a.is_leader(), "release steps down at once");
    assert_eq!(
        *a.subscribe_lease().borrow(),
        None,
        "the lease stream is cleared at once"
    );
    assert_eq!(a.term(), None);
    // b polls every 400 ± 100 ms: it takes over within one poll, and a stands back meanwhile.
    let took = wait_until(Duration::from_secs(2), "b to take over", || {
        assert!(!(a.is_leader() && b.is_leader()), "two leaders");
        b.is_leader()
    })
    .await;
    assert!(took < Duration::from_millis(900), "handover took {took:?}");
    let term_b = b.term().unwrap();
    assert!(term_b > term_a);

    // a stays a candidate: when b leaves, a leads again with a larger term.
    b.shutdown().await.unwrap();
    wait_until(Duration::from_secs(3), "a to lead again", || a.is_leader()).await;
    assert!(a.term().unwrap() > term_b);
    a.shutdown().await.unwrap();
    assert_eq!(a.status(), Status::Stopped);
    assert!(matches!(a.release().await, Err(Error::Shutdown)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_grows_even_after_the_row_is_deleted() {
    let s = TestSchema::new("term").await;
    let mut last = 0;
    for _ in 0..3 {
        let e = s.builder().connect(&database_url()).await.unwrap();
        wait_until(Duration::from_secs(3), "leadership", || e.is_leader()).await;
        let t = e.term().unwrap();
        assert!(t > last, "term {t} after {last}");
        last = t;
        e.shutdown().await.unwrap(); // deletes the row
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            s.table()
        )))
        .fetch_one(&s.pool)
        .await
        .unwrap();
        assert_eq!(rows, 0, "shutdown deleted the lease");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_never_give_two_leaders_and_recover() {
    let s = TestSchema::new("term_conn").await;
    let app_a = unique("llta");
    let app_b = unique("lltb");
    let a = s
        .builder()
        .with_instance_id("a")
        .connect(&url_with_app(&database_url(), &app_a))
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let b = s
        .builder()
        .with_instance_id("b")
        .connect(&url_with_app(&database_url(), &app_b))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let (stop, pool, app_a, app_b) =
            (stop.clone(), s.pool.clone(), app_a.clone(), app_b.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                terminate_app(&pool, &app_a).await;
                terminate_app(&pool, &app_b).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    assert_never_two_leaders(&[&a, &b], Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    killer.await.unwrap();
    // After the storm, exactly one of them leads again, without restarting anything.
    wait_for_leader(&[&a, &b], Duration::from_secs(5)).await;
    assert_never_two_leaders(&[&a, &b], Duration::from_secs(1)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_steps_down_on_its_own_before_the_database_expiry() {
    let s = TestSchema::new("deadline").await;
    // Lease 4 s, so the safety margin (400 ms) dwarfs a loaded machine's scheduling delays.
    let e = Arc::new(
        s.builder()
            .with_lease_duration(Duration::from_secs(4))
            .with_renewal_interval(Duration::from_secs(1))
            .connect(&database_url())
            .await
            .unwrap(),
    );
    let (cancelled_tx, mut cancelled_rx) = tokio::sync::mpsc::unbounded_channel();
    let runner = {
        let e = e.clone();
        tokio::spawn(async move {
            e.run_while_leader(|token| {
                let tx = cancelled_tx.clone();
                async move {
                    token.cancelled().await;
                    tx.send(Instant::now()).unwrap();
                    Ok::<_, std::convert::Infallible>(())
                }
            })
            .await
        })
    };
    wait_until(Duration::from_secs(5), "leadership", || e.is_leader()).await;
    let first_term = e.term().unwrap();

    // Block renewals: hold the row lock from another transaction, so every UPDATE waits and times out.
    let mut blocker = s.pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM {} WHERE id = 1 FOR UPDATE",
        s.table()
    )))
    .execute(&mut *blocker)
    .await
    .unwrap();
    wait_until(Duration::from_secs(6), "step-down", || !e.is_leader()).await;
    // At that moment the database still considers the lease live: nobody else could have been let in.
    let live: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT expires_at > clock_timestamp() FROM {} WHERE id = 1",
        s.table()
    )))
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert!(
        live,
        "the leader stepped down only after the database expiry"
    );
    // The work token is cancelled at the deadline too, and the status follows.
    tokio::time::timeout(Duration::from_secs(1), cancelled_rx.recv())
        .await
        .expect("work token cancelled at the local deadline")
        .unwrap();
    assert!(!e.status().is_leader(), "status follows the deadline");

    // Let renewals through again after the lease has expired: the elector recovers with a new term.
    let expired_at = expiry_epoch(&s).await;
    loop {
        let now: f64 = sqlx::query_scalar("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        if now > expired_at {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A renewal sent before the expiry and still waiting on the row lock would go through on rollback
    // (PostgreSQL does not re-check a row that did not change) and keep the term, safely: nobody could
    // take the locked row meanwhile. Let such renewals time out (operation timeout 500 ms) first.
    tokio::time::sleep(Duration::from_millis(800)).await;
    blocker.rollback().await.unwrap();
    wait_until(Duration::from_secs(5), "leadership again", || e.is_leader()).await;
    assert!(e.term().unwrap() > first_term);
    e.shutdown().await.unwrap();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_renewal_does_not_cost_leadership() {
    let s = TestSchema::new("transient").await;
    let app = unique("lltr");
    let e = s
        .builder()
        .connect(&url_with_app(&database_url(), &app))
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "leadership", || e.is_leader()).await;
    let term = e.term().unwrap();
    let killed = terminate_app(&s.pool, &app).await;
    assert!(killed >= 1, "the elector's connection was terminated");
    // The next renewal fails on the dead connection and is retried at once on a new one.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(
            e.term(),
            Some(term),
            "leadership was dropped on a single error"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_deletes_only_long_expired_leases() {
    let s = TestSchema::new("cleanup").await;
    let e = s
        .builder()
        .with_lock_id(1)
        .with_clean_interval(Duration::from_millis(300))
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "leadership", || e.is_leader()).await;
    s.exec(format!(
        "INSERT INTO {t} (id, leader_id, expires_at, created_at) VALUES \
           (2, 'live', clock_timestamp() + interval '1 hour', clock_timestamp()), \
           (3, 'long-dead', clock_timestamp() - interval '1 minute', clock_timestamp() - interval '2 minutes'), \
           (4, 'just-expired', clock_timestamp() - interval '1 second', clock_timestamp() - interval '1 minute')",
        t = s.table()
    ))
    .await;
    let ids = || async {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM {} ORDER BY id",
            s.table()
        )))
        .fetch_all(&s.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<i32, _>(0))
        .collect::<Vec<_>>()
    };
    let start = Instant::now();
    while ids().await.contains(&3) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "cleanup never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ids().await,
        vec![1, 2, 4],
        "only the long-expired row is gone"
    );
    assert!(e.is_leader());
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_instance_id_never_gives_two_leaders() {
    let s = TestSchema::new("sameid").await;
    let a = s.elector("twin").await;
    let b = s.elector("twin").await;
    wait_for_leader(&[&a, &b], Duration::from_secs(3)).await;
    assert_never_two_leaders(&[&a, &b], Duration::from_secs(2)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_while_leader_token_is_cancelled_on_loss_and_on_release() {
    let s = TestSchema::new("work").await;
    let e = Arc::new(s.elector("worker").await);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Option<Instant>)>();
    let runner = {
        let e = e.clone();
        tokio::spawn(async move {
            e.run_while_leader(|token| {
                let (e, tx) = (e.clone(), tx.clone());
                async move {
                    let term = e.term().unwrap_or(0);
                    tx.send((term, None)).unwrap();
                    token.cancelled().await;
                    tx.send((term, Some(Instant::now()))).unwrap();
                    Ok::<_, std::convert::Infallible>(())
                }
            })
            .await
        })
    };
    let (term, started) = tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(started.is_none(), "work started");

    // Loss: another node's lease replaces ours behind the elector's back.
    s.exec(format!(
        "UPDATE {} SET leader_id = 'usurper', term = term + 1000 WHERE id = 1",
        s.table()
    ))
    .await;
    let lost_at = Instant::now();
    let (t, cancelled_at) = tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t, term);
    // Noticed at the next renewal (400 ± 100 ms).
    assert!(cancelled_at.unwrap() - lost_at < Duration::from_millis(1500));
    assert!(!e.is_leader());

    // Next leadership after the usurper's row is gone: the closure runs again; release cancels it.
    s.exec(format!("DELETE FROM {}", s.table())).await;
    let (term2, started) = tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(started.is_none(), "work started again");
    assert!(term2 > term);
    e.release().await.unwrap();
    let (t, stopped) = rx
        .try_recv()
        .expect("release waits for the work to stop before returning");
    assert_eq!(t, term2);
    assert!(stopped.is_some());

    e.shutdown().await.unwrap();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_elections_share_one_small_pool() {
    let s = TestSchema::new("pool").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect(&database_url())
        .await
        .unwrap();
    let mut electors = Vec::new();
    for lock_id in 0..20 {
        electors.push(
            s.builder()
                .with_lock_id(lock_id)
                .start_with_pool(pool.clone())
                .await
                .unwrap(),
        );
    }
    wait_until(Duration::from_secs(5), "all 20 elections led", || {
        electors.iter().all(|e| e.is_leader())
    })
    .await;
    let terms: std::collections::BTreeSet<_> = electors.iter().map(|e| e.term().unwrap()).collect();
    assert_eq!(terms.len(), 20, "every leadership has its own term");
    for e in &electors {
        e.shutdown().await.unwrap();
    }
    assert!(!pool.is_closed(), "the application's pool is left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_cancellation_waits_for_work_then_releases() {
    let s = TestSchema::new("cancel").await;
    let token = leaderlease::CancellationToken::new();
    let a = Arc::new(
        s.builder()
            .with_instance_id("a")
            .with_cancellation(token.clone())
            .connect(&database_url())
            .await
            .unwrap(),
    );
    let work_done = Arc::new(AtomicBool::new(false));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let runner = {
        let (a, work_done) = (a.clone(), work_done.clone());
        tokio::spawn(async move {
            a.run_while_leader(|t| {
                let (work_done, started_tx) = (work_done.clone(), started_tx.clone());
                async move {
                    started_tx.send(()).unwrap();
                    t.cancelled().await;
                    // Winding down takes a while after cancellation.
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    work_done.store(true, Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(())
                }
            })
            .await
        })
    };
    tokio::time::timeout(Duration::from_secs(3), started_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let b = s.elector("b").await;
    let mut status = a.subscribe();
    token.cancel();
    // b may lead only once a's work has returned.
    wait_until(Duration::from_secs(5), "b to take over", || {
        assert!(
            !b.is_leader() || work_done.load(Ordering::SeqCst),
            "b leads while a's work runs"
        );
        b.is_leader()
    })
    .await;
    tokio::time::timeout(
        Duration::from_secs(3),
        status.wait_for(|s| *s == Status::Stopped),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!a.is_leader());
    runner.await.unwrap().unwrap();
    b.shutdown().await.unwrap();
}

/// A candidate in a process of its own, for the crash and pause tests (which spawn this test binary
/// again). Prints `LEADER <term>` or `FOLLOWER` on stderr at every change of `is_leader()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for the crash and pause tests, which spawn it"]
async fn child_candidate_process() {
    let schema = std::env::var("LL_CHILD_SCHEMA").expect("run by the crash test");
    let e = fast()
        .with_schema(schema)
        .with_instance_id("child")
        .connect(&database_url())
        .await
        .unwrap();
    let mut was = None;
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let now = e.term();
        if Some(now) != was {
            match now {
                Some(term) => eprintln!("LEADER {term}"),
                None => eprintln!("FOLLOWER"),
            }
            was = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

struct ChildCandidate {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
}

impl ChildCandidate {
    fn spawn(schema: &str) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_candidate_process",
                "--ignored",
                "--nocapture",
            ])
            .env("LL_CHILD_SCHEMA", schema)
            .env("DATABASE_URL", database_url())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        Self { child, lines }
    }

    /// The next `LEADER <term>` / `FOLLOWER` line, as `Some(term)` / `None`.
    async fn next_change(&mut self, limit: Duration) -> Option<u64> {
        loop {
            let line = tokio::time::timeout(limit, self.lines.next_line())
                .await
                .expect("no change reported by the child in time")
                .unwrap()
                .expect("child exited");
            if let Some(term) = line.strip_prefix("LEADER ") {
                return Some(term.trim().parse().unwrap());
            }
            if line.starts_with("FOLLOWER") {
                return None;
            }
        }
    }

    async fn wait_leading(&mut self) -> u64 {
        loop {
            if let Some(term) = self.next_change(Duration::from_secs(20)).await {
                return term;
            }
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_leader_process_is_replaced_right_after_expiry() {
    let s = TestSchema::new("crash").await;
    let mut child = ChildCandidate::spawn(&s.name);
    let child_term = child.wait_leading().await;
    let follower = s
        .slow_poller()
        .with_instance_id("survivor")
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the follower to observe the child",
        || follower.leader().is_some(),
    )
    .await;
    assert!(!follower.is_leader());

    child.child.start_kill().unwrap(); // SIGKILL: no release, no goodbye
    child.child.wait().await.unwrap();
    let expires = expiry_epoch(&s).await; // the dead leader's last renewal decides this
    wait_until(Duration::from_secs(6), "takeover", || follower.is_leader()).await;
    assert!(follower.term().unwrap() > child_term);
    let delay = takeover_delay_ms(&s, expires).await;
    eprintln!("takeover {delay:.1} ms after the expiry, by the database clock");
    assert!(
        (0.0..500.0).contains(&delay),
        "took over {delay} ms after the dead leader's expiry"
    );
    follower.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_process_has_stepped_down_when_it_resumes() {
    let s = TestSchema::new("pause").await;
    let mut child = ChildCandidate::spawn(&s.name);
    let child_term = child.wait_leading().await;
    let follower = s.elector("other").await;

    child.signal("-STOP");
    // Paused past its lease (1.5 s): the follower takes over.
    wait_until(
        Duration::from_secs(5),
        "takeover from the paused leader",
        || follower.is_leader(),
    )
    .await;
    let new_term = follower.term().unwrap();
    assert!(new_term > child_term);
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.signal("-CONT");
    // The first thing the resumed process reports is that it no longer leads: its deadline passed
    // while it was stopped, whatever its tasks had not yet done.
    assert_eq!(
        child.next_change(Duration::from_secs(2)).await,
        None,
        "resumed leader still claimed leadership"
    );
    assert_never_two_leaders(&[&follower], Duration::from_millis(300)).await;
    assert_eq!(
        follower.term(),
        Some(new_term),
        "the new leader kept its lease"
    );
    follower.shutdown().await.unwrap();
}

/// The snapshot stream: every decision (renewals included) numbered in order, each complete and consistent
/// with `status`/`lease`; a loss the database decides (a renewal that finds no row) changes the generation
/// by the time `is_leader()` is false.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_stream_numbers_every_decision_and_a_loss_changes_the_generation() {
    let s = TestSchema::new("snapshots").await;
    let a = s.elector("a").await;
    let mut rx = a.subscribe_state();
    let collector = tokio::spawn(async move {
        let mut seen = vec![rx.borrow_and_update().clone()];
        while rx.changed().await.is_ok() {
            let snapshot = rx.borrow_and_update().clone();
            let stopped = snapshot.status == Status::Stopped;
            seen.push(snapshot);
            if stopped {
                break;
            }
        }
        seen
    });
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let snapshot = a.snapshot();
    assert!(snapshot.is_leader());
    assert_eq!(snapshot.lease.map(|l| l.term), a.term());
    assert_eq!(snapshot.generation, a.generation());
    // Renewals publish: wait for two more decisions of the same leadership.
    let first = snapshot.seq;
    wait_until(Duration::from_secs(3), "two renewals", || {
        a.snapshot().seq >= first + 2
    })
    .await;
    let generation = a.generation();

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {} WHERE id = 1",
        s.table()
    )))
    .execute(&s.pool)
    .await
    .unwrap();
    // The step-down and the new acquisition can both fall between two 5 ms samples of is_leader() (the
    // row is gone, so it acquires again at once): wait for the generation, which a step-down changes for
    // good, and check on the way that a false is_leader() never comes with the old generation.
    wait_until(Duration::from_secs(3), "the renewal to find no row", || {
        // is_leader() first: once it is false by a step-down, the generation read after it has changed.
        let leader = a.is_leader();
        let now = a.generation();
        if !leader {
            assert_ne!(now, generation, "not leader, same generation");
        }
        now != generation
    })
    .await;
    assert_ne!(
        a.generation(),
        generation,
        "a step-down changes the generation"
    );
    // It re-acquires at once (the row is gone) with a new leadership.
    wait_until(Duration::from_secs(3), "a to lead again", || a.is_leader()).await;
    a.shutdown().await.unwrap();
    let seen = collector.await.unwrap();

    assert!(
        seen.windows(2).all(|w| w[1].seq > w[0].seq),
        "seq grows: {:?}",
        seen.iter().map(|s| s.seq).collect::<Vec<_>>()
    );
    assert_eq!(seen.last().unwrap().status, Status::Stopped);
    for snap in &seen {
        match &snap.status {
            Status::Leader { term } => {
                assert_eq!(snap.lease.map(|l| l.term), Some(*term), "{snap:?}");
            }
            _ => assert_eq!(snap.lease, None, "{snap:?}"),
        }
    }
    let leaderships: Vec<u32> = seen
        .iter()
        .filter(|s| s.is_leader())
        .map(|s| s.generation)
        .collect();
    assert!(
        leaderships.iter().filter(|g| **g == generation).count() >= 3,
        "elected and renewed in one generation: {leaderships:?}"
    );
    assert!(
        leaderships.iter().any(|g| *g != generation),
        "the next leadership has another generation: {leaderships:?}"
    );
}

/// `with_liveness_check`: a leader whose check fails steps down and deletes its lease at its next
/// renewal, so another candidate takes over at once; it campaigns again once the check passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_liveness_check_hands_the_lease_over_and_rejoins_when_it_passes() {
    let s = TestSchema::new("liveness").await;
    let alive = Arc::new(AtomicBool::new(true));
    let check = alive.clone();
    let a = s
        .builder()
        .with_instance_id("a")
        .with_liveness_check(move || check.load(Ordering::SeqCst))
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let b = s.elector("b").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        a.is_leader() && !b.is_leader(),
        "a keeps leading while its check passes"
    );

    alive.store(false, Ordering::SeqCst);
    let failed_at = Instant::now();
    wait_until(Duration::from_secs(2), "a to step down", || !a.is_leader()).await;
    // The lease was deleted, not left to expire: b (polling every 400 ± 100 ms, or woken by the
    // release notification) leads well before a's lease could have run out.
    let took = wait_until(Duration::from_secs(2), "b to take over", || {
        assert!(!(a.is_leader() && b.is_leader()), "two leaders");
        b.is_leader()
    })
    .await;
    let handover = failed_at.elapsed();
    assert!(
        handover < Duration::from_millis(1200),
        "handover {handover:?} after the check failed ({took:?} after a stepped down)"
    );
    // While the check fails, a does not campaign, even with the lease free (b leaves for good).
    b.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!a.is_leader(), "a campaigned while its check failed");
    alive.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(3), "a to lead again", || a.is_leader()).await;
    a.shutdown().await.unwrap();
}
