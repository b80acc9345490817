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
