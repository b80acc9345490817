//! Elections through a real PgBouncer (Debian package `pgbouncer`, started by the test on its own port in
//! front of a throwaway PostgreSQL), in transaction and in session mode. The kill and SIGTERM handovers
//! of whole processes through PgBouncer are measured by tests/pgbouncer.test.ts (Node, the demo's
//! cluster) and docs/benchmarks.md.

mod common;

use std::time::{Duration, Instant};

use common::*;
use leaderlease::{Elector, PgHub, PgSettings, Pooler};

const TIMEOUT: Duration = Duration::from_secs(2);

fn through(bouncer: &ThrowawayPgBouncer, pooler: Pooler) -> PgSettings {
    PgSettings {
        url: Some(bouncer.url()),
        pooler,
        ..Default::default()
    }
}

/// PgBouncer refuses startup options: without `pooler`, the error says what to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooler_that_refuses_startup_options_is_named_in_the_error() {
    let pg = ThrowawayPg::start();
    let bouncer = ThrowawayPgBouncer::start(&pg, "transaction", 2);
    let err = PgHub::connect(&bouncer.url(), TIMEOUT)
        .await
        .expect_err("PgBouncer refuses the startup options of a direct connection");
    let text = err.to_string();
    assert_eq!(err.code(), "ERR_DATABASE_UNREACHABLE");
    assert!(
        text.contains("unsupported startup parameter") && text.contains("set `pooler`"),
        "{text}"
    );
}

/// Three candidates, each with a hub of its own, through PgBouncer in `mode`: one leads; it keeps its
/// term (every renewal succeeded) while all share `pool_size` server connections; a release is taken over
/// within the bound of `mode`; the server never saw a statement fail on a prepared statement.
async fn three_candidates(mode: &str, pool_size: u32, pooler: Pooler, handover_bound: Duration) {
    let pg = ThrowawayPg::start();
    let bouncer = ThrowawayPgBouncer::start(&pg, mode, pool_size);
    let settings = through(&bouncer, pooler);
    let mut hubs = Vec::new();
    let mut electors: Vec<Elector> = Vec::new();
    for id in ["a", "b", "c"] {
        let hub = PgHub::connect_settings(&settings, TIMEOUT).await.unwrap();
        assert_eq!(hub.pooler(), pooler);
        let e = fast()
            .with_instance_id(id)
            .start_with_hub(&hub)
            .await
            .unwrap_or_else(|e| panic!("{id} starts through PgBouncer in {mode} mode: {e}"));
        hubs.push(hub);
        electors.push(e);
    }
    let leader = wait_for_leader(&electors, Duration::from_secs(5)).await;
    let term = electors[leader].term().unwrap();
    assert_never_two_leaders(&electors, Duration::from_secs(3)).await;
    assert_eq!(
        electors[leader].term(),
        Some(term),
        "the leader kept its term for 3 s: every renewal through PgBouncer succeeded"
    );
    match pooler {
        // No LISTEN behind a transaction pooler: the candidates poll.
        Pooler::Transaction => assert!(hubs.iter().all(|h| !h.listening())),
        // Session mode keeps the LISTEN session: its probe gets through.
        _ => {
            wait_until(Duration::from_secs(5), "LISTEN to be trusted", || {
                hubs.iter().all(PgHub::listening)
            })
            .await;
        }
    }

    // Handover after a release.
    let released = Instant::now();
    electors[leader].release().await.unwrap();
    let took = wait_until(Duration::from_secs(5), "another leader", || {
        electors
            .iter()
            .enumerate()
            .any(|(i, e)| i != leader && e.is_leader())
    })
    .await;
    eprintln!(
        "PgBouncer {mode} mode: handover after release() in {} ms",
        took.as_millis()
    );
    assert!(
        released.elapsed() <= handover_bound + Duration::from_millis(500),
        "handover took {took:?} (bound {handover_bound:?})"
    );
    assert_never_two_leaders(&electors, Duration::from_secs(1)).await;
    let new_term = electors.iter().find_map(|e| e.term()).expect("one leads");
    assert!(new_term > term, "term {new_term} after {term}");
    for e in &electors {
        e.shutdown().await.unwrap();
    }
    for h in &hubs {
        h.close().await;
    }
    let log = std::fs::read_to_string(format!("{}/log", pg.dir())).unwrap_or_default();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("prepared statement") || l.contains("ERROR"))
        .collect();
    assert!(
        failed.is_empty(),
        "the server saw failing statements:\n{}",
        failed.join("\n")
    );
}

/// Transaction mode with 2 server connections for 3 hubs: statements of different candidates run on
/// the same server sessions in turn. Candidates poll (renewal 400 ± 100 ms), so a release is taken
/// within one poll: `renewal_interval + jitter_range / 2` = 500 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_one_leader_of_three_and_a_handover_by_polling() {
    three_candidates(
        "transaction",
        2,
        Pooler::Transaction,
        Duration::from_millis(500),
    )
    .await;
}

/// Session mode: startup options refused, `SET` after connecting instead; LISTEN works, so a release
/// is taken at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_one_leader_of_three_and_a_handover_by_notify() {
    three_candidates("session", 20, Pooler::Session, Duration::from_millis(200)).await;
}
