//! A primary failover with synchronous replication: a throwaway primary and a hot standby of the test's
//! own (initdb, pg_basebackup, streaming replication, `synchronous_standby_names`), the standby promoted
//! while a leader renews. The candidates reach the database through a proxy that moves to the promoted
//! standby (what a virtual IP, a DNS name or a failover proxy does: sqlx has no multi-host URLs).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use leaderlease::Elector;

/// What [`watch`] saw.
struct Seen {
    /// Samples with two leaders at once.
    overlaps: u64,
    /// Samples where a leader's term was below one seen before.
    regressions: u64,
    /// The longest time without a leader after the first one.
    longest_gap: Duration,
}

/// Samples the electors every millisecond until `stop`.
fn watch(electors: Vec<Arc<Elector>>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen {
            overlaps: 0,
            regressions: 0,
            longest_gap: Duration::ZERO,
        };
        let mut max_term = 0;
        let mut last_led: Option<Instant> = None;
        while !stop.load(Ordering::Acquire) {
            let leading: Vec<u64> = electors.iter().filter_map(|e| e.term()).collect();
            if leading.len() > 1 {
                seen.overlaps += 1;
            }
            if let Some(at) = last_led {
                seen.longest_gap = seen.longest_gap.max(at.elapsed());
            }
            if !leading.is_empty() {
                last_led = Some(Instant::now());
            }
            for t in leading {
                if t < max_term {
                    seen.regressions += 1;
                }
                max_term = max_term.max(t);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen
    })
}

/// The primary crashes while a leader renews; the standby is promoted and the proxy moves to it after
/// `reroute_after` (how long the failover tool takes). With synchronous replication the promoted standby
/// has every lease change that was acknowledged: never two leaders, terms never go down, and a leader
/// again within lease + 1 s.
async fn promote_synchronous_standby(reroute_after: Duration) {
    let primary = ThrowawayPg::start_with(&["-c", "synchronous_standby_names=standby1"]);
    let standby = primary.standby(&[
        "-c",
        "cluster_name=standby1",
        "-c",
        "synchronous_standby_names=",
    ]);
    let admin = admin_pool(&primary.url()).await;
    let start = Instant::now();
    loop {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'",
        )
        .fetch_optional(&admin)
        .await
        .unwrap();
        if state.as_deref() == Some("sync") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the standby did not become a synchronous standby ({state:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin.close().await;

    let proxy = SwitchProxy::start(primary.port).await;
    let lease = Duration::from_millis(1500);
    let mut electors = Vec::new();
    for id in ["a", "b", "c"] {
        electors.push(Arc::new(
            fast()
                .with_instance_id(id)
                .connect(&proxy.url())
                .await
                .unwrap(),
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(electors.clone(), stop.clone());
    wait_until(Duration::from_secs(5), "a leader", || {
        electors.iter().any(|e| e.is_leader())
    })
    .await;
    // Let the leader renew a few times (each renewal waits for the standby).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let old_term = electors.iter().find_map(|e| e.term()).expect("one leads");

    // The primary crashes; the standby is promoted; the proxy moves to it.
    let crashed = Instant::now();
    let standby = tokio::task::spawn_blocking(move || {
        primary.stop();
        standby.promote();
        (primary, standby)
    })
    .await
    .unwrap();
    let (_old_primary, standby) = standby;
    let promoted = crashed.elapsed();
    tokio::time::sleep(reroute_after).await;
    proxy.switch(standby.port);
    let rerouted = Instant::now();
    // The lease, replicated synchronously, is on the promoted standby: the leader may renew it there
    // (same term) if it gets through before its local deadline, or another candidate takes it over
    // after its expiry (greater term).
    // A lease confirmed by the promoted standby: sent after the reroute (its local deadline is send time
    // + lease - safety margin, 150 ms here).
    let confirmed_after = rerouted + lease - Duration::from_millis(150);
    let took = wait_until(
        lease + Duration::from_secs(1),
        "a lease from the promoted standby",
        || {
            electors.iter().any(|e| {
                e.is_leader() && e.leader().is_some_and(|l| l.expires_at >= confirmed_after)
            })
        },
    )
    .await;
    // Renewals on the new primary for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);
    let seen = watcher.await.unwrap();
    let new_term = electors.iter().find_map(|e| e.term()).expect("one leads");
    eprintln!(
        "crash and promotion {} ms, rerouted {} ms later; a lease from the promoted standby {} ms after \
         the reroute; longest time without a leader {} ms; term {new_term} (before: {old_term})",
        promoted.as_millis(),
        reroute_after.as_millis(),
        took.as_millis(),
        seen.longest_gap.as_millis()
    );
    assert_eq!(seen.overlaps, 0, "samples with two leaders at once");
    assert_eq!(seen.regressions, 0, "samples where a term went down");
    assert!(new_term >= old_term, "term {new_term} after {old_term}");
    assert!(
        seen.longest_gap <= promoted + reroute_after + lease + Duration::from_secs(1),
        "no leader for {:?}",
        seen.longest_gap
    );
    if reroute_after > lease {
        assert!(
            new_term > old_term,
            "a takeover after the lease ran out has a new term"
        );
    }

    // The new primary holds the lease of the new term: the leadership is in the promoted database.
    let new_admin = admin_pool(&standby.url()).await;
    let (in_recovery, row_term): (bool, i64) = sqlx::query_as(
        "SELECT pg_is_in_recovery(), (SELECT term FROM public.leader_lease WHERE id = 1)",
    )
    .fetch_one(&new_admin)
    .await
    .unwrap();
    assert!(!in_recovery);
    let leader_term = electors.iter().find_map(|e| e.term()).expect("one leads");
    assert_eq!(row_term as u64, leader_term);
    for e in &electors {
        e.shutdown().await.unwrap();
    }
    new_admin.close().await;
}

/// The failover is quicker than the lease: the leader renews its lease on the promoted standby (same
/// term) or another takes it over after it ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_standby_promoted_quickly_while_a_leader_renews() {
    promote_synchronous_standby(Duration::ZERO).await;
}

/// The failover takes longer than the lease: the leader has stepped down by its local deadline, and a
/// candidate takes the expired lease over on the promoted standby with a greater term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_standby_promoted_slowly_after_the_lease_ran_out() {
    promote_synchronous_standby(Duration::from_millis(2000)).await;
}

/// Connected to a standby, the start fails with a typed error that names the server, instead of a
/// misleading permission or database error (or a candidate that never wins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_on_a_standby_is_a_read_only_error() {
    let primary = ThrowawayPg::start();
    let standby = primary.standby(&[]);
    for create_table_on_init in [true, false] {
        let err = fast()
            .with_create_table_on_init(create_table_on_init)
            .connect(&standby.url())
            .await
            .expect_err("a standby cannot hold leases");
        assert_eq!(err.code(), "ERR_READ_ONLY", "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("127.0.0.1:{}", standby.port)) && text.contains("standby"),
            "{text}"
        );
    }
}
