//! Release notifications (`LISTEN`/`NOTIFY`) and many elections sharing one hub, on a real PostgreSQL.

mod common;

use std::time::Duration;

use common::*;
use leaderlease::{Elector, ElectorBuilder, OWNED_POOL_MAX_CONNECTIONS, PgHub};

/// A follower that would poll only every 4 s and whose leader's lease lasts 6 s: a takeover within a
/// second of a release can only come from the release notification.
fn slow(s: &TestSchema) -> ElectorBuilder {
    s.builder()
        .with_lease_duration(Duration::from_secs(6))
        .with_renewal_interval(Duration::from_secs(4))
        .with_jitter_range(Duration::from_millis(200))
        .with_clean_interval(Duration::from_secs(3600))
}

async fn connections_of(s: &TestSchema, app: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(app)
        .fetch_one(&s.pool)
        .await
        .unwrap()
}

async fn terminate(s: &TestSchema, app: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1) t",
    )
    .bind(app)
    .fetch_one(&s.pool)
    .await
    .unwrap()
}

/// Starts `a` (leading) and `b` (following, having seen a's lease), each on its own hub.
async fn leader_and_waiting_follower(s: &TestSchema, app_b: &str) -> (Elector, Elector) {
    let a = slow(s)
        .with_instance_id("a")
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let b = slow(s)
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
        connections_of(&s, &app).await,
        0,
        "b's pool and LISTEN connection are closed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_connection_comes_back_after_it_was_terminated() {
    let s = TestSchema::new("relisten").await;
    let app = unique("ll_relisten");
    let a = slow(&s)
        .with_instance_id("a")
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let hub = PgHub::connect(&url_with_app(&database_url(), &app), Duration::from_secs(1))
        .await
        .unwrap();
    let b = slow(&s)
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
        terminate(&s, &app).await >= 2,
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
        let n = connections_of(&s, app).await;
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
            connections_of(&s, app).await,
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
    let n = connections_of(&s, &app).await;
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
    assert_eq!(
        connections_of(&s, &app).await,
        0,
        "the shared hub closed with its last election"
    );
}
