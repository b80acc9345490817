//! The database going away and coming back, on a throwaway server of the test's own.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_means_not_leader_then_recovery() {
    let pg = ThrowawayPg::start();
    let a = fast()
        .with_instance_id("a")
        .connect(&pg.url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "a to lead", || a.is_leader()).await;
    let b = fast()
        .with_instance_id("b")
        .connect(&pg.url())
        .await
        .unwrap();
    let first_term = a.term().unwrap();

    pg.stop();
    let stopped = Instant::now();
    // Renewals fail: the leader keeps its lease only until the local deadline (lease 1.5 s - margin).
    wait_until(Duration::from_secs(3), "a to step down", || !a.is_leader()).await;
    assert!(
        stopped.elapsed() < Duration::from_millis(1600),
        "stepped down after {:?}",
        stopped.elapsed()
    );
    // While the database is down nobody leads.
    let down_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < down_until {
        assert!(
            !a.is_leader() && !b.is_leader(),
            "a leader without a database"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    pg.restart();
    // Both electors reconnect by themselves; exactly one leads, with a term above the old one.
    wait_until(
        Duration::from_secs(10),
        "a leader after the restart",
        || a.is_leader() || b.is_leader(),
    )
    .await;
    assert_never_two_leaders(&[&a, &b], Duration::from_secs(1)).await;
    let term = a.term().or(b.term()).expect("one leads");
    assert!(term > first_term, "term {term} after {first_term}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Sends `signal` to a process (the test runs as the server's owner or root).
fn signal(pid: i32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {signal} {pid}");
}

/// Resumes a stopped server process when dropped, also when the test fails.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_connection_that_stops_delivering_is_noticed_and_replaced() {
    let pg = ThrowawayPg::start();
    let app = unique("ll_probe");
    let settings = || {
        fast()
            .with_lease_duration(Duration::from_secs(8))
            .with_renewal_interval(Duration::from_millis(1000))
            .with_jitter_range(Duration::from_millis(200))
    };
    let a = settings()
        .with_instance_id("a")
        .connect(&pg.url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "a to lead", || a.is_leader()).await;
    let hub =
        leaderlease::PgHub::connect(&url_with_app(&pg.url(), &app), Duration::from_millis(500))
            .await
            .unwrap();
    let b = settings()
        .with_instance_id("b")
        .start_with_hub(&hub)
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "b's probe to come back", || {
        hub.listening()
    })
    .await;

    // The server process behind b's LISTEN connection stops: the connection stays open but delivers
    // nothing. The next probe (within 15 s) finds out, and b polls again.
    let admin = admin_pool(&pg.url()).await;
    let pid: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(&app)
    .fetch_one(&admin)
    .await
    .unwrap();
    signal(pid, "-STOP");
    let _resume = Resume(pid);
    wait_until(
        leaderlease::LISTEN_PROBE_INTERVAL + Duration::from_secs(5),
        "the failed probe to be noticed",
        || !hub.listening(),
    )
    .await;
    // b had been sleeping until the expiry of a's 8 s lease; now it polls every second, and within a
    // few seconds it has a new LISTEN connection (with a new server process) that delivers again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    a.release().await.unwrap();
    let took = wait_until(Duration::from_secs(9), "b to take over", || b.is_leader()).await;
    assert!(
        took < Duration::from_millis(3000),
        "takeover after release took {took:?}: the silent LISTEN connection was not noticed"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    drop(_resume);
    hub.close().await;
    admin.close().await;
}
