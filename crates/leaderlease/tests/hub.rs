//! Release notifications (`LISTEN`/`NOTIFY`) and many elections sharing one hub, on a real PostgreSQL.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use leaderlease::backend::BoxFuture;
use leaderlease::{
    AcquireOutcome, Backend, Elector, OWNED_POOL_MAX_CONNECTIONS, ObservedLease, PgBackend, PgHub,
    Result,
};
use tokio::sync::Notify;

/// Starts `a` (leading) and `b` (following, having seen a's lease), each on its own hub.
async fn leader_and_waiting_follower(s: &TestSchema, app_b: &str) -> (Elector, Elector) {
    let a = s
        .slow_poller()
        .with_instance_id("a")
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let b = s
        .slow_poller()
        .with_instance_id("b")
        .connect(&url_with_app(&database_url(), app_b))
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "b to see a", || {
        b.leader().is_some()
    })
    .await;
    // Let b's LISTEN connection come up and b settle into waiting for the lease's expiry.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_the_waiting_candidate_at_once() {
    let s = TestSchema::new("notify").await;
    let app = unique("ll_notify");
    let (a, b) = leader_and_waiting_follower(&s, &app).await;
    let term_a = a.term().unwrap();
    a.release().await.unwrap();
    let took = wait_until(Duration::from_secs(5), "b to take over", || b.is_leader()).await;
    assert!(
        took < Duration::from_millis(1000),
        "takeover after release took {took:?}: the notification did not wake b"
    );
    assert!(b.term().unwrap() > term_a);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert_eq!(
        connections_of(&s.pool, &app).await,
        0,
        "b's pool and LISTEN connection are closed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_connection_comes_back_after_it_was_terminated() {
    let s = TestSchema::new("relisten").await;
    let app = unique("ll_relisten");
    let a = s
        .slow_poller()
        .with_instance_id("a")
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let hub = PgHub::connect(&url_with_app(&database_url(), &app), Duration::from_secs(1))
        .await
        .unwrap();
    let b = s
        .slow_poller()
        .with_instance_id("b")
        .start_with_hub(&hub)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "b's LISTEN connection to be trusted",
        || hub.listening(),
    )
    .await;

    // Every connection of b's hub is cut: the LISTEN one and the pool's.
    assert!(
        terminate_app(&s.pool, &app).await >= 2,
        "b's LISTEN and pool connections were open"
    );
    // The listener reconnects at once and probes again through the pool (whose connections were cut
    // too): trusted again within a few seconds, not after the 15 s probe interval.
    wait_until(
        Duration::from_secs(3),
        "b's LISTEN connection to be lost",
        || !hub.listening(),
    )
    .await;
    let back = wait_until(
        Duration::from_secs(8),
        "b's LISTEN connection to be trusted again",
        || hub.listening(),
    )
    .await;
    assert!(
        back < Duration::from_secs(5),
        "trusted again after {back:?}"
    );
    a.release().await.unwrap();
    let took = wait_until(Duration::from_secs(5), "b to take over", || b.is_leader()).await;
    assert!(
        took < Duration::from_millis(1000),
        "takeover after release took {took:?} once the LISTEN connection had been cut"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    hub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_elections_on_one_hub_batch_renewals_and_share_connections() {
    const N: i64 = 200;
    let s = TestSchema::new("hub").await;
    let app_a = unique("ll_hub_a");
    let app_b = unique("ll_hub_b");
    let timeout = Duration::from_secs(2);
    let hub_started = std::time::Instant::now();
    let hub_a = PgHub::connect(&url_with_app(&database_url(), &app_a), timeout)
        .await
        .unwrap();
    let mut leaders = Vec::new();
    for lock_id in 0..N {
        let e = s
            .builder()
            .with_lock_id(lock_id)
            .with_clean_interval(Duration::from_millis(1000))
            .with_instance_id(format!("a{lock_id}"))
            .start_with_hub(&hub_a)
            .await
            .unwrap();
        leaders.push(e);
    }
    wait_until(Duration::from_secs(10), "all elections led", || {
        leaders.iter().all(|e| e.is_leader())
    })
    .await;
    wait_until(
        Duration::from_secs(5),
        "the LISTEN connection's probe to come back",
        || hub_a.listening(),
    )
    .await;
    let terms: Vec<_> = leaders.iter().map(|e| e.term().unwrap()).collect();

    // A second "process" with a follower for every election, on a hub of its own.
    let hub_b = PgHub::connect(&url_with_app(&database_url(), &app_b), timeout)
        .await
        .unwrap();
    let mut followers = Vec::new();
    for lock_id in 0..N {
        let e = s
            .builder()
            .with_lock_id(lock_id)
            .with_instance_id(format!("b{lock_id}"))
            .start_with_hub(&hub_b)
            .await
            .unwrap();
        followers.push(e);
    }
    // Several renewal intervals (0.4 s): every leader keeps its term, no follower leads.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        for (i, e) in leaders.iter().enumerate() {
            assert_eq!(e.term(), Some(terms[i]), "election {i} lost its leader");
        }
        assert!(
            followers.iter().all(|e| !e.is_leader()),
            "a follower leads while its leader holds the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = hub_a.batch_stats();
    assert!(
        stats.requests >= 5 * stats.statements && stats.statements > 0,
        "renewals of {N} elections were not batched: {stats:?}"
    );
    // Each of the 200 elections' cleanup timers fired every second or so; the hub ran the cleanup (which
    // covers every lock id of the schema) at most once per half interval.
    let elapsed = hub_started.elapsed();
    let most = elapsed.as_millis() / 500 + 2;
    assert!(
        stats.cleanups >= 2 && u128::from(stats.cleanups) <= most,
        "{} cleanups for {N} elections in {elapsed:?} with a 1 s interval (at most {most})",
        stats.cleanups
    );
    let max = i64::from(OWNED_POOL_MAX_CONNECTIONS) + 1;
    for app in [&app_a, &app_b] {
        let n = connections_of(&s.pool, app).await;
        assert!(n <= max, "{n} connections for {N} elections: at most {max}");
    }

    // The leaders' process stops: every follower takes over at once, woken by the releases.
    for e in &leaders {
        e.shutdown().await.unwrap();
    }
    let took = wait_until(Duration::from_secs(5), "all followers to lead", || {
        followers.iter().all(|e| e.is_leader())
    })
    .await;
    assert!(
        took < Duration::from_millis(2500),
        "{N} handovers took {took:?}"
    );
    for (i, e) in followers.iter().enumerate() {
        assert!(e.term().unwrap() > terms[i]);
    }
    for e in &followers {
        e.shutdown().await.unwrap();
    }
    hub_a.close().await;
    hub_b.close().await;
    for app in [&app_a, &app_b] {
        assert_eq!(
            connections_of(&s.pool, app).await,
            0,
            "hub {app} left connections open"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_hub_closes_with_its_last_election() {
    let s = TestSchema::new("shared").await;
    let app = unique("ll_shared");
    let url = url_with_app(&database_url(), &app);
    let mut electors = Vec::new();
    for lock_id in 0..10 {
        electors.push(
            s.builder()
                .with_lock_id(lock_id)
                .connect_shared(&url)
                .await
                .unwrap(),
        );
    }
    wait_until(Duration::from_secs(5), "all elections led", || {
        electors.iter().all(|e| e.is_leader())
    })
    .await;
    let n = connections_of(&s.pool, &app).await;
    assert!(
        n <= i64::from(OWNED_POOL_MAX_CONNECTIONS) + 1,
        "10 elections on one shared hub hold {n} connections"
    );
    let last = electors.pop().unwrap();
    for e in &electors {
        e.shutdown().await.unwrap();
    }
    assert!(
        last.is_leader(),
        "the hub stays open while an election uses it"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(last.is_leader(), "the remaining election keeps renewing");
    last.shutdown().await.unwrap();
    // The sockets are closed when shutdown returns; the server ends their backends a moment later.
    let mut left = connections_of(&s.pool, &app).await;
    let end = std::time::Instant::now() + Duration::from_secs(2);
    while left > 0 && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = connections_of(&s.pool, &app).await;
    }
    assert_eq!(left, 0, "the shared hub closed with its last election");
}

/// Lines up one renewal of one election with the next renewal of another election of the same hub, so
/// that both reach the hub's batcher together (as when a renewal is held up between being timed and being
/// sent: a stalled thread, a slow queue). Nothing is answered here: every call goes to the real backend.
#[derive(Default)]
struct Gate {
    /// The held election's next renewal waits at the gate.
    hold: AtomicBool,
    /// Set once it waits there.
    parked: AtomicBool,
    /// The other election's next renewal opens the gate and follows the held one.
    ready: AtomicBool,
    open: Notify,
}

/// A [`PgBackend`] whose renewals pass through a [`Gate`], as the held or as the releasing side.
struct Gated {
    inner: PgBackend,
    gate: Arc<Gate>,
    held: bool,
}

impl Backend for Gated {
    fn prepare(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.prepare()
    }
    fn observe(&self) -> BoxFuture<'_, Result<Option<ObservedLease>>> {
        self.inner.observe()
    }
    fn try_acquire(&self) -> BoxFuture<'_, Result<AcquireOutcome>> {
        self.inner.try_acquire()
    }
    fn renew(&self, term: u64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            if self.held {
                if self.gate.hold.load(Ordering::SeqCst) {
                    self.gate.parked.store(true, Ordering::SeqCst);
                    self.gate.open.notified().await;
                }
            } else if self.gate.ready.swap(false, Ordering::SeqCst) {
                self.gate.hold.store(false, Ordering::SeqCst);
                self.gate.open.notify_one();
                // The held renewal reaches the batcher first; this one joins its batch.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.inner.renew(term).await
        })
    }
    fn release(&self, term: u64) -> BoxFuture<'_, Result<bool>> {
        self.inner.release(term)
    }
    fn cleanup(&self) -> BoxFuture<'_, Result<u64>> {
        self.inner.cleanup()
    }
    fn released(&self) -> BoxFuture<'_, ()> {
        self.inner.released()
    }
    fn wakes_on_release(&self) -> bool {
        self.inner.wakes_on_release()
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }
}

/// Two elections of one hub with the same lock id and the same instance id (a fixed instance id given to
/// two workers of one process, or an election restarted inside it). The first one's renewals time out
/// until its lease has expired and the second has taken the lease with a new term; then the first one's
/// retry of its old term and the second's renewal go out in one batch. Only the term the row holds may be
/// renewed: the first must not lead again beside the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_renewal_batched_with_the_new_terms_renewal_does_not_lead_again() {
    let s = TestSchema::new("twin").await;
    let q = leaderlease::schema::quote_ident(&s.name);
    sqlx::raw_sql(sqlx::AssertSqlSafe(leaderlease::schema::up_sql(&s.name)))
        .execute(&s.pool)
        .await
        .unwrap();
    // While `failing`, every batched renewal (the statement over `unnest(..)`) sleeps until the hub's
    // statement timeout cancels it; the lease reads and the acquisitions are not slowed.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {q}.renewals (failing boolean NOT NULL);
         INSERT INTO {q}.renewals VALUES (false);
         CREATE FUNCTION {q}.slow_renewals() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF current_query() LIKE '%unnest(%' AND (SELECT failing FROM {q}.renewals) THEN
                 PERFORM pg_sleep(60);
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER slow_renewals BEFORE UPDATE ON {q}.leader_lease
             FOR EACH STATEMENT EXECUTE FUNCTION {q}.slow_renewals();"
    )))
    .execute(&s.pool)
    .await
    .unwrap();
    let set_failing = |on: bool| {
        let sql = format!("UPDATE {q}.renewals SET failing = {on}");
        let pool = s.pool.clone();
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
    };

    let hub = PgHub::connect(&database_url(), Duration::from_millis(300))
        .await
        .unwrap();
    let gate = Arc::new(Gate::default());
    let start = |held: bool| {
        let config = s
            .builder()
            .with_instance_id("twin")
            .with_clean_interval(Duration::from_secs(3600))
            .build()
            .unwrap();
        let backend = Gated {
            inner: PgBackend::with_hub(&hub, &config),
            gate: gate.clone(),
            held,
        };
        Elector::start(backend, config)
    };
    let a = start(true).await.unwrap();
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let stale = a.term().unwrap();
    let b = start(false).await.unwrap();
    wait_until(Duration::from_secs(3), "b to see a's lease", || {
        b.leader().is_some()
    })
    .await;

    // a's renewals time out: it steps down at its local deadline and keeps retrying its term, until its
    // lease expires in the database and b takes it with a new term.
    set_failing(true).await;
    wait_until(Duration::from_secs(3), "a to step down", || !a.is_leader()).await;
    wait_until(
        Duration::from_secs(5),
        "b to take the expired lease",
        || b.is_leader(),
    )
    .await;
    let current = b.term().unwrap();
    assert!(current > stale, "b's term {current} after a's {stale}");

    // a's next retry waits at the gate; the renewals work again; b's next renewal goes out with it.
    gate.hold.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(3), "a's next retry", || {
        gate.parked.load(Ordering::SeqCst)
    })
    .await;
    set_failing(false).await;
    let batches = hub.batch_stats();
    gate.ready.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(3), "b's renewal to release a's", || {
        !gate.hold.load(Ordering::SeqCst)
    })
    .await;
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        assert!(
            !a.is_leader(),
            "a leads again with its stale term {:?} beside b (term {current}, leading: {})",
            a.term(),
            b.is_leader()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        b.term(),
        Some(current),
        "b, which holds the row's term, leads"
    );
    let batched = hub.batch_stats();
    assert!(
        batched.requests > batches.requests,
        "the renewals went through the batcher: {batches:?} then {batched:?}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    hub.close().await;
}

/// Transactions the server counted in database `db`, read once the connections of application `app` are
/// gone (a backend flushes its counts when it exits).
async fn transactions_once_closed(admin: &sqlx::PgPool, db: &str, app: &str) -> i64 {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while connections_of(admin, app).await > 0 {
        assert!(
            std::time::Instant::now() < until,
            "connections of {app} stay open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// Issue 20, item 4: each election that started on a hub ran its own start-up checks (the server is
/// writable, its identity for the failover quarantine, the table is complete, the privileges): four
/// transactions an election, so 50 elections a process cost 200 at start-up. They are facts of the
/// hub's server and the schema: elections starting together, or soon after one another, on one hub share
/// one run of them. Counted by the server in a database of its own: 40 elections started at once and 40
/// one after another, each acquiring (an uncontended lock id) and releasing at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_starting_on_one_hub_share_the_start_up_checks() {
    const N: i64 = 40;
    let base = database_url();
    let admin = admin_pool(&base).await;
    let db = unique("ll_hubstart");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
        .execute(&admin)
        .await
        .unwrap();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&format!("/{db}"));
    let app = unique("ll_hubstart_app");
    url.query_pairs_mut().append_pair("application_name", &app);
    let url = url.to_string();
    let builder = |lock_id: i64| {
        Elector::builder()
            .with_schema("hubstart")
            .with_lock_id(lock_id)
            .with_lease_duration(Duration::from_secs(30))
            .with_renewal_interval(Duration::from_secs(10))
            .with_jitter_range(Duration::from_millis(100))
            .with_clean_interval(Duration::from_secs(3600))
    };
    // The schema is created first (its DDL is not what this counts).
    {
        let hub = PgHub::connect(&url, Duration::from_secs(5)).await.unwrap();
        let e = builder(1_000).start_with_hub(&hub).await.unwrap();
        e.shutdown().await.unwrap();
        hub.close().await;
    }
    let mut counts = Vec::new();
    for together in [true, false] {
        let before = transactions_once_closed(&admin, &db, &app).await;
        let hub = PgHub::connect(&url, Duration::from_secs(5)).await.unwrap();
        let electors: Vec<Elector> = if together {
            let starts: Vec<_> = (0..N)
                .map(|i| {
                    let hub = hub.clone();
                    let b = builder(i);
                    tokio::spawn(async move { b.start_with_hub(&hub).await })
                })
                .collect();
            let mut v = Vec::new();
            for s in starts {
                v.push(s.await.unwrap().unwrap());
            }
            v
        } else {
            let mut v = Vec::new();
            for i in 0..N {
                v.push(builder(100 + i).start_with_hub(&hub).await.unwrap());
            }
            v
        };
        wait_until(Duration::from_secs(10), "every election to lead", || {
            electors.iter().all(|e| e.is_leader())
        })
        .await;
        for e in &electors {
            e.shutdown().await.unwrap();
        }
        hub.close().await;
        counts.push(transactions_once_closed(&admin, &db, &app).await - before);
    }
    note(&format!(
        "{N} elections on one hub, started together / one after another: {counts:?} transactions \
         (start-up checks, acquisitions, releases, the hub's own)"
    ));
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
    // Per election: its acquisition (with the quarantine's identity read) and its release (3; 7 when each
    // ran the checks itself); the hub's part: its connections' start-up and the first preparation of each
    // statement on each (about 70 here), LISTEN, one run of the checks.
    let most = 3 * N + 100;
    for (how, n) in ["together", "one after another"].iter().zip(&counts) {
        assert!(
            *n <= most,
            "{N} elections started {how} on one hub cost {n} transactions: at most {most} (3 an \
             election and 100 for the hub)"
        );
    }
}
