//! Behaviour users rely on, against a real PostgreSQL; each test in a schema of its own.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use leaderlease::{Elector, Error, Status};
use sqlx::Row;

async fn one_leader_within(electors: &[&Elector], limit: Duration) -> usize {
    wait_until(limit, "a leader", || electors.iter().any(|e| e.is_leader())).await;
    electors.iter().position(|e| e.is_leader()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_leader_among_several_candidates() {
    let s = TestSchema::new("one").await;
    let mut electors = Vec::new();
    for i in 0..6 {
        let e = s
            .builder()
            .with_instance_id(format!("node-{i}"))
            .connect(&database_url())
            .await
            .unwrap();
        electors.push(e);
    }
    let refs: Vec<&Elector> = electors.iter().collect();
    let leader = one_leader_within(&refs, Duration::from_secs(5)).await;
    assert_never_two_leaders(&refs, Duration::from_secs(3)).await;
    assert!(
        electors[leader].is_leader(),
        "the leader kept its lease across renewals"
    );
    let term = electors[leader].term().unwrap();
    // Followers see the same leader and term.
    wait_until(
        Duration::from_secs(3),
        "followers to observe the leader",
        || {
            electors.iter().all(|e| {
                e.leader()
                    .is_some_and(|l| l.leader_id == format!("node-{leader}") && l.term == term)
            })
        },
    )
    .await;
    for e in &electors {
        e.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_is_taken_over_without_cleanup() {
    let s = TestSchema::new("expired").await;
    // Create the table, then plant the lease of a dead node that expires in 800 ms.
    let probe = s
        .builder()
        .with_lock_id(99)
        .connect(&database_url())
        .await
        .unwrap();
    probe.shutdown().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {t} (id, leader_id, expires_at, term) \
         VALUES (1, 'dead-node', clock_timestamp() + interval '800 milliseconds', \
                 nextval('{seq}'))",
        t = s.table(),
        seq = format!(
            "{}.leader_lease_term_seq",
            leaderlease::schema::quote_ident(&s.name)
        )
        .replace('\'', "''"),
    )))
    .execute(&s.pool)
    .await
    .unwrap();
    let dead_term: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT term FROM {} WHERE id = 1",
        s.table()
    )))
    .fetch_one(&s.pool)
    .await
    .unwrap();

    // Cleanup would only run after an hour: the takeover must not depend on it.
    let e = s
        .builder()
        .with_clean_interval(Duration::from_secs(3600))
        .connect(&database_url())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!e.is_leader(), "the dead node's lease is still live");
    assert_eq!(
        e.leader().map(|l| l.leader_id).as_deref(),
        Some("dead-node")
    );
    let waited = wait_until(Duration::from_secs(3), "takeover", || e.is_leader()).await;
    assert!(
        e.term().unwrap() > dead_term as u64,
        "takeover takes a new, larger term"
    );
    // Takeover came from waking at the observed expiry, not from a later poll: well under a lease.
    assert!(
        waited < Duration::from_millis(1400),
        "takeover took {waited:?}"
    );
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_hands_over_and_terms_grow() {
    let s = TestSchema::new("release").await;
    let a = s
        .builder()
        .with_instance_id("a")
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let b = s
        .builder()
        .with_instance_id("b")
        .connect(&database_url())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let term_a = a.term().unwrap();
    assert!(!b.is_leader());

    a.release().await.unwrap();
    assert!(!a.is_leader(), "release steps down at once");
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

    let kill = |app: String, pool: leaderlease::PgPool| async move {
        sqlx::query("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1")
            .bind(app)
            .fetch_one(&pool)
            .await
            .unwrap();
    };
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let (stop, pool, app_a, app_b) =
            (stop.clone(), s.pool.clone(), app_a.clone(), app_b.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                kill(app_a.clone(), pool.clone()).await;
                kill(app_b.clone(), pool.clone()).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    assert_never_two_leaders(&[&a, &b], Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    killer.await.unwrap();
    // After the storm, exactly one of them leads again, without restarting anything.
    one_leader_within(&[&a, &b], Duration::from_secs(5)).await;
    assert_never_two_leaders(&[&a, &b], Duration::from_secs(1)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_steps_down_on_its_own_before_the_database_expiry() {
    let s = TestSchema::new("deadline").await;
    let e = s.builder().connect(&database_url()).await.unwrap();
    wait_until(Duration::from_secs(3), "leadership", || e.is_leader()).await;
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
    let blocked_at = Instant::now();
    let took = wait_until(Duration::from_secs(3), "step-down", || !e.is_leader()).await;
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
    assert!(
        took <= Duration::from_millis(1500),
        "stepped down after {took:?}"
    );
    assert!(!e.status().is_leader(), "status follows the deadline");

    // Let renewals through again after the lease has expired: the elector recovers with a new term.
    tokio::time::sleep(Duration::from_millis(1600).saturating_sub(blocked_at.elapsed())).await;
    blocker.rollback().await.unwrap();
    wait_until(Duration::from_secs(3), "leadership again", || e.is_leader()).await;
    assert!(e.term().unwrap() > first_term);
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
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {t} (id, leader_id, expires_at, created_at) VALUES \
           (2, 'live', clock_timestamp() + interval '1 hour', clock_timestamp()), \
           (3, 'long-dead', clock_timestamp() - interval '1 minute', clock_timestamp() - interval '2 minutes'), \
           (4, 'just-expired', clock_timestamp() - interval '1 second', clock_timestamp() - interval '1 minute')",
        t = s.table()
    )))
    .execute(&s.pool)
    .await
    .unwrap();
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
    let a = s
        .builder()
        .with_instance_id("twin")
        .connect(&database_url())
        .await
        .unwrap();
    let b = s
        .builder()
        .with_instance_id("twin")
        .connect(&database_url())
        .await
        .unwrap();
    one_leader_within(&[&a, &b], Duration::from_secs(3)).await;
    assert_never_two_leaders(&[&a, &b], Duration::from_secs(2)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_while_leader_token_is_cancelled_on_loss_and_on_release() {
    let s = TestSchema::new("work").await;
    let e = Arc::new(
        s.builder()
            .with_instance_id("worker")
            .connect(&database_url())
            .await
            .unwrap(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let runner = {
        let e = e.clone();
        tokio::spawn(async move {
            e.run_while_leader(|token| {
                let (e, tx) = (e.clone(), tx.clone());
                async move {
                    let term = e.term().unwrap_or(0);
                    token.cancelled().await;
                    tx.send((term, Instant::now())).unwrap();
                    Ok::<_, std::convert::Infallible>(())
                }
            })
            .await
        })
    };
    wait_until(Duration::from_secs(3), "leadership", || e.is_leader()).await;
    let term = e.term().unwrap();

    // Loss: another node's lease replaces ours behind the elector's back.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {} SET leader_id = 'usurper', term = term + 1000 WHERE id = 1",
        s.table()
    )))
    .execute(&s.pool)
    .await
    .unwrap();
    let lost_at = Instant::now();
    let (t, cancelled_at) = tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t, term);
    // Noticed at the next renewal (400 ± 100 ms).
    assert!(cancelled_at - lost_at < Duration::from_millis(1000));
    assert!(!e.is_leader());

    // Next leadership after the usurper's row is gone: the closure runs again; release cancels it.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DELETE FROM {}", s.table())))
        .execute(&s.pool)
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "leadership again", || e.is_leader()).await;
    let term2 = e.term().unwrap();
    assert!(term2 > term);
    tokio::time::sleep(Duration::from_millis(50)).await;
    e.release().await.unwrap();
    let (t, _) = rx
        .try_recv()
        .expect("release waits for the work to stop before returning");
    assert_eq!(t, term2);

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
async fn external_cancellation_shuts_down_and_releases() {
    let s = TestSchema::new("cancel").await;
    let token = leaderlease::CancellationToken::new();
    let e = s
        .builder()
        .with_cancellation(token.clone())
        .connect(&database_url())
        .await
        .unwrap();
    let mut status = e.subscribe();
    wait_until(Duration::from_secs(3), "leadership", || e.is_leader()).await;
    token.cancel();
    tokio::time::timeout(
        Duration::from_secs(3),
        status.wait_for(|s| *s == Status::Stopped),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!e.is_leader());
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}",
        s.table()
    )))
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(rows, 0);
}

/// A candidate in a process of its own, for the crash test (which spawns this test binary again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for crashed_leader_process_is_replaced_after_expiry, which spawns it"]
async fn child_candidate_process() {
    let schema = std::env::var("LL_CHILD_SCHEMA").expect("run by the crash test");
    let e = fast()
        .with_schema(schema)
        .with_instance_id("child")
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "leadership", || e.is_leader()).await;
    eprintln!("CHILD-LEADS");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_leader_process_is_replaced_after_expiry() {
    let s = TestSchema::new("crash").await;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_candidate_process",
            "--ignored",
            "--nocapture",
        ])
        .env("LL_CHILD_SCHEMA", &s.name)
        .env("DATABASE_URL", database_url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        use tokio::io::AsyncBufReadExt;
        let n = tokio::time::timeout(Duration::from_secs(20), stderr.read_line(&mut line))
            .await
            .expect("child did not lead")
            .unwrap();
        assert!(n > 0, "child exited before leading");
        if line.contains("CHILD-LEADS") {
            break;
        }
    }
    let follower = s
        .builder()
        .with_instance_id("survivor")
        .connect(&database_url())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!follower.is_leader());
    let child_term = follower.leader().expect("observed the child").term;

    child.start_kill().unwrap(); // SIGKILL: no release, no goodbye
    child.wait().await.unwrap();
    let killed = Instant::now();
    let took = wait_until(Duration::from_secs(5), "takeover", || follower.is_leader()).await;
    assert!(follower.term().unwrap() > child_term);
    // At most one lease (1.5 s) after the last renewal, plus the wake margin and a busy machine's slack.
    assert!(
        took < Duration::from_millis(2500),
        "takeover took {took:?} after the kill"
    );
    let _ = killed;
    follower.shutdown().await.unwrap();
}
