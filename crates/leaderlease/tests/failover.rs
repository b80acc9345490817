//! A primary failover: a throwaway primary and a hot standby of the test's own (initdb, pg_basebackup,
//! streaming replication), the standby promoted while a leader renews. With synchronous replication
//! (`synchronous_standby_names`) the promoted standby has every lease change anyone acted on; with
//! asynchronous replication it can lack the last ones, and the candidates' failover quarantine keeps
//! the election safe. The candidates reach the database through a proxy that moves to the promoted
//! standby (what a virtual IP, a DNS name or a failover proxy does: sqlx has no multi-host URLs). Also: a
//! leader whose server turns read-only steps down at once, with a typed reason.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use leaderlease::{Elector, ElectorBuilder, Event, EventKind};

/// What [`watch`] saw.
struct Seen {
    /// Samples with two leaders at once.
    overlaps: u64,
    /// How long two or more led at once (the sum of the sampling intervals that ended with two leaders).
    overlap_time: Duration,
    /// Samples where a leadership began with a term below one seen before (a term already seen, still
    /// held by a leader that has not noticed a newer one yet, is not counted here but as an overlap).
    regressions: u64,
    /// The longest time without a leader after the first one.
    longest_gap: Duration,
}

/// Samples the electors every millisecond until `stop`.
fn watch(electors: Vec<Arc<Elector>>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen {
            overlaps: 0,
            overlap_time: Duration::ZERO,
            regressions: 0,
            longest_gap: Duration::ZERO,
        };
        let mut max_term = 0;
        let mut terms = std::collections::HashSet::new();
        let mut last_led: Option<Instant> = None;
        let mut last_sample = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let leading: Vec<u64> = electors.iter().filter_map(|e| e.term()).collect();
            let now = Instant::now();
            if leading.len() > 1 {
                seen.overlaps += 1;
                seen.overlap_time += now - last_sample;
            }
            last_sample = now;
            if let Some(at) = last_led {
                seen.longest_gap = seen.longest_gap.max(at.elapsed());
            }
            if !leading.is_empty() {
                last_led = Some(Instant::now());
            }
            for t in leading {
                if t < max_term && !terms.contains(&t) {
                    seen.regressions += 1;
                }
                terms.insert(t);
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
    wait_for_leader(&electors, Duration::from_secs(5)).await;
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

/// Every event of an elector, with its instance id.
type Events = Arc<Mutex<Vec<(String, Event)>>>;

/// `builder` with an observer that keeps its events in `events`, under `id`.
fn observed(builder: ElectorBuilder, id: &str, events: &Events) -> ElectorBuilder {
    let events = events.clone();
    let me = id.to_owned();
    builder.with_instance_id(id).with_observer(move |e| {
        events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((me.clone(), e.clone()))
    })
}

/// Waits until the primary's `pg_stat_replication` has `streaming` rows (`true`) or none (`false`).
async fn wait_for_replication(primary: &leaderlease::PgPool, streaming: bool) {
    let start = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        )
        .fetch_one(primary)
        .await
        .unwrap();
        if (n > 0) == streaming {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "replication did not become {}",
            if streaming { "streaming" } else { "cut" }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lease 4 s, renewal 1 s ± 0.1 s (local deadline: send time + 3.6 s): long enough that the old leader
/// still leads when a candidate reaches the promoted standby, however long the promotion takes here.
fn slow() -> ElectorBuilder {
    Elector::builder()
        .with_lease_duration(Duration::from_millis(4000))
        .with_renewal_interval(Duration::from_millis(1000))
        .with_jitter_range(Duration::from_millis(200))
}

/// What [`promote_asynchronous_standby`] measured.
struct AsyncFailover {
    seen: Seen,
    /// The lost term (acknowledged by the old primary only) and the promoted server's sequence.
    lost_term: u64,
    sequence_after_promotion: i64,
    /// The term of the leadership after the failover.
    new_term: u64,
    /// From the reroute to the first leader on the promoted server.
    new_leader_after: Duration,
    promoted: Duration,
}

/// An asynchronous standby loses the last acquisition: replication is cut (the standby's
/// `primary_conninfo` emptied, as a network fault or a lagging standby would), a leader acquires on
/// the primary (acknowledged, never replicated) and renews; the primary crashes; the standby is
/// promoted without the lease row and with its term sequence behind. The candidates' route moves to
/// the promoted standby at once; the leader's route `leader_late` later (one lease: a DNS cache, or a
/// process busy elsewhere, reaches the promoted server only after its own local deadline; zero: one
/// route for all). `builder` sets the failover quarantine on or off.
async fn promote_asynchronous_standby(
    builder: fn() -> ElectorBuilder,
    leader_late: Duration,
) -> AsyncFailover {
    let primary = ThrowawayPg::start();
    let standby = primary.standby(&[]);
    let admin = admin_pool(&primary.url()).await;
    wait_for_replication(&admin, true).await;
    // The table, replicated to the standby (as in any election running for a while).
    sqlx::raw_sql(sqlx::AssertSqlSafe(leaderlease::schema::up_sql("public")))
        .execute(&admin)
        .await
        .unwrap();
    let standby_admin = admin_pool(&standby.url()).await;
    let start = Instant::now();
    loop {
        let has: bool =
            sqlx::query_scalar("SELECT to_regclass('public.leader_lease_term_seq') IS NOT NULL")
                .fetch_one(&standby_admin)
                .await
                .unwrap();
        if has {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "table not replicated"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Replication is cut: from now on the primary acknowledges what the standby never gets.
    exec(&standby_admin, "ALTER SYSTEM SET primary_conninfo = ''").await;
    exec(&standby_admin, "SELECT pg_reload_conf()").await;
    wait_for_replication(&admin, false).await;
    standby_admin.close().await;
    admin.close().await;

    let lease = Duration::from_millis(4000);
    let leader_route = SwitchProxy::start(primary.port).await;
    let route = SwitchProxy::start(primary.port).await;
    let a = Arc::new(
        builder()
            .with_instance_id("a")
            .connect(&leader_route.url())
            .await
            .unwrap(),
    );
    wait_until(Duration::from_secs(5), "a leads", || a.is_leader()).await;
    let lost_term = a.term().expect("a leads");
    let mut electors = vec![a.clone()];
    for id in ["b", "c"] {
        electors.push(Arc::new(
            builder()
                .with_instance_id(id)
                .connect(&route.url())
                .await
                .unwrap(),
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(electors.clone(), stop.clone());
    // a renews (acknowledged by the primary alone).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.term(), Some(lost_term), "a still leads");

    let crashed = Instant::now();
    let (primary, standby) = tokio::task::spawn_blocking(move || {
        primary.stop();
        standby.promote();
        (primary, standby)
    })
    .await
    .unwrap();
    let promoted = crashed.elapsed();
    // The acknowledged acquisition is not on the promoted server: no row, the sequence behind the term.
    let new_admin = admin_pool(&standby.url()).await;
    let (rows, sequence_after_promotion): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM public.leader_lease WHERE id = 1), \
                (SELECT last_value FROM public.leader_lease_term_seq)",
    )
    .fetch_one(&new_admin)
    .await
    .unwrap();
    route.switch(standby.port);
    let rerouted = Instant::now();
    if leader_late.is_zero() {
        leader_route.switch(standby.port);
    }
    // With one route for all (`leader_late` zero), the old leader campaigns on the promoted server too
    // once it has stepped down, and may win it with a new term: any member leading with a term other
    // than the lost one leads there.
    let new_leader_after = wait_until(
        3 * lease + Duration::from_secs(4),
        "a leader on the promoted server",
        || {
            electors
                .iter()
                .any(|e| e.is_leader() && e.term().is_some_and(|t| t != lost_term))
        },
    )
    .await;
    let until = rerouted + leader_late.max(lease);
    if let Some(left) = until.checked_duration_since(Instant::now()) {
        tokio::time::sleep(left).await;
    }
    leader_route.switch(standby.port);
    // Renewals on the new primary for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);
    let seen = watcher.await.unwrap();
    let new_term = electors
        .iter()
        .find_map(|e| e.term())
        .expect("one leads on the promoted server");
    let row_term: i64 = sqlx::query_scalar("SELECT term FROM public.leader_lease WHERE id = 1")
        .fetch_one(&new_admin)
        .await
        .unwrap();
    assert_eq!(row_term as u64, new_term);
    for e in &electors {
        e.shutdown().await.unwrap();
    }
    new_admin.close().await;
    drop(primary);
    assert_eq!(rows, 0, "the promoted standby lacks the lost acquisition");
    AsyncFailover {
        seen,
        lost_term,
        sequence_after_promotion,
        new_term,
        new_leader_after,
        promoted,
    }
}

/// The hazard of asynchronous replication, with the failover quarantine on (the default): a candidate
/// that finds the promoted server (a new timeline) does not acquire until one full lease after it first
/// saw it, by which time the old leader's local deadline has passed. Never two leaders; the new term is
/// above the lost one although the promoted server lost it and its sequence is behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_standby_promoted_without_the_last_acquisition_quarantine_on() {
    let r = promote_asynchronous_standby(slow, Duration::from_millis(4000)).await;
    eprintln!(
        "quarantine on: crash and promotion {} ms; a leader on the promoted server {} ms after the \
         reroute; {} samples with two leaders ({} ms); longest time without a leader {} ms; lost term \
         {}, promoted sequence {}, new term {}",
        r.promoted.as_millis(),
        r.new_leader_after.as_millis(),
        r.seen.overlaps,
        r.seen.overlap_time.as_millis(),
        r.seen.longest_gap.as_millis(),
        r.lost_term,
        r.sequence_after_promotion,
        r.new_term,
    );
    assert!(
        (r.sequence_after_promotion as u64) < r.lost_term,
        "the promoted sequence ({}) lacks the lost term {}",
        r.sequence_after_promotion,
        r.lost_term
    );
    assert_eq!(r.seen.regressions, 0, "samples where a term went down");
    assert!(
        r.new_term > r.lost_term,
        "terms never repeat across the promotion"
    );
    assert_eq!(
        r.seen.overlaps, 0,
        "samples with two leaders at once ({:?})",
        r.seen.overlap_time
    );
}

/// The same without the failover quarantine: the hazard, measured. A candidate takes the lease on the
/// promoted server (it has no row) while the old leader still leads by its local deadline: two leaders
/// until that deadline. Terms still grow: the new term comes from the promoted server's clock, above
/// the lost term although its sequence lost it. This test fails if the hazard could not be reproduced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_standby_promoted_without_the_last_acquisition_quarantine_off() {
    let r = promote_asynchronous_standby(
        || slow().with_failover_quarantine(false),
        Duration::from_millis(4000),
    )
    .await;
    eprintln!(
        "quarantine off: crash and promotion {} ms; a leader on the promoted server {} ms after the \
         reroute; {} samples with two leaders ({} ms); longest time without a leader {} ms; lost term \
         {}, promoted sequence {}, new term {}",
        r.promoted.as_millis(),
        r.new_leader_after.as_millis(),
        r.seen.overlaps,
        r.seen.overlap_time.as_millis(),
        r.seen.longest_gap.as_millis(),
        r.lost_term,
        r.sequence_after_promotion,
        r.new_term,
    );
    assert!((r.sequence_after_promotion as u64) < r.lost_term);
    assert_eq!(r.seen.regressions, 0, "samples where a term went down");
    assert!(
        r.new_term > r.lost_term,
        "terms never repeat across the promotion"
    );
    assert!(
        r.seen.overlaps > 0,
        "without the quarantine, two lead at once after losing an acknowledged acquisition"
    );
}

/// One route for all: the old leader reaches the promoted server as soon as the candidates do, and its
/// next renewal there finds no row (it steps down). With the quarantine on, never two leaders; with it
/// off, an overlap until that renewal, or none when the renewal comes first (printed, not asserted:
/// which comes first is a race).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_standby_promoted_one_route_for_all() {
    for on in [false, true] {
        let r = promote_asynchronous_standby(
            if on {
                slow
            } else {
                || slow().with_failover_quarantine(false)
            },
            Duration::ZERO,
        )
        .await;
        eprintln!(
            "one route, quarantine {}: crash and promotion {} ms; a leader on the promoted server {} ms \
             after the reroute; {} samples with two leaders ({} ms); longest time without a leader {} ms",
            if on { "on" } else { "off" },
            r.promoted.as_millis(),
            r.new_leader_after.as_millis(),
            r.seen.overlaps,
            r.seen.overlap_time.as_millis(),
            r.seen.longest_gap.as_millis(),
        );
        assert_eq!(r.seen.regressions, 0, "samples where a term went down");
        assert!(
            r.new_term > r.lost_term,
            "terms never repeat across the promotion"
        );
        if on {
            assert_eq!(r.seen.overlaps, 0, "samples with two leaders at once");
        }
    }
}

/// A leader whose server turns read-only steps down at its next renewal, with a typed reason
/// (`ERR_READ_ONLY`), not at its local deadline; the candidates' acquisitions fail with the same code,
/// nobody leads while it lasts, and a leader is elected once the server takes writes again.
/// `to_standby`: the route moves to a hot standby of the server (a failover tool or DNS name pointing
/// at a replica); otherwise the server itself turns read-only (`default_transaction_read_only`, as a
/// server being demoted or fenced is set).
async fn leader_on_a_server_turning_read_only(to_standby: bool) {
    let primary = ThrowawayPg::start();
    let standby = to_standby.then(|| primary.standby(&[]));
    let route = SwitchProxy::start(primary.port).await;
    let admin = admin_pool(&primary.url()).await;
    let events: Events = Arc::default();
    let lease = Duration::from_millis(4000);
    let mut electors = Vec::new();
    for id in ["a", "b"] {
        electors.push(
            observed(slow(), id, &events)
                .connect(&route.url())
                .await
                .unwrap(),
        );
        if id == "a" {
            wait_until(Duration::from_secs(5), "a leads", || {
                electors[0].is_leader()
            })
            .await;
        }
    }
    // Let the table and a's renewals reach the standby.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let generation = electors[0].generation();
    let deadline = electors[0]
        .subscribe_lease()
        .borrow()
        .expect("a leads")
        .deadline;
    let turned = Instant::now();
    match &standby {
        Some(standby) => route.switch(standby.port),
        None => {
            exec(
                &admin,
                "ALTER SYSTEM SET default_transaction_read_only = on",
            )
            .await;
            exec(&admin, "SELECT pg_reload_conf()").await;
        }
    }
    let took = wait_until(lease, "a steps down", || {
        electors[0].generation() != generation
    })
    .await;
    let stepped_down_at = Instant::now();
    let why = {
        let events = events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        events
            .iter()
            .find(|(id, e)| id == "a" && e.kind == EventKind::SteppedDown)
            .map(|(_, e)| (e.reason.clone(), e.error_code))
    };
    eprintln!(
        "read-only ({}): a stepped down {} ms after, its local deadline was {} ms after: {why:?}",
        if to_standby { "standby" } else { "setting" },
        took.as_millis(),
        deadline.saturating_duration_since(turned).as_millis()
    );
    let (reason, code) = why.expect("a stepped-down event");
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("read-only")),
        "the step-down says why: {reason:?}"
    );
    assert_eq!(code, Some("ERR_READ_ONLY"), "{reason:?}");
    assert!(
        stepped_down_at < deadline,
        "stepped down before the local deadline"
    );
    // While the server is read-only nobody leads; once the old lease has run out, the acquisitions fail
    // with the read-only error.
    let quiet_until = turned + lease + Duration::from_millis(2000);
    while Instant::now() < quiet_until {
        assert!(
            electors.iter().all(|e| !e.is_leader()),
            "a leader on a read-only server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The last failed acquisition of each candidate says why (earlier ones may be the connections the
    // reroute cut).
    let last_failures: Vec<(String, Option<&str>, Option<String>)> = {
        let events = events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ["a", "b"]
            .iter()
            .filter_map(|id| {
                events
                    .iter()
                    .rev()
                    .find(|(who, e)| who == id && e.kind == EventKind::AcquireFailed)
                    .map(|(who, e)| (who.clone(), e.error_code, e.error.clone()))
            })
            .collect()
    };
    assert!(
        last_failures.len() == 2
            && last_failures
                .iter()
                .all(|(_, code, _)| *code == Some("ERR_READ_ONLY")),
        "acquisitions on the read-only server fail with ERR_READ_ONLY: {last_failures:?}"
    );
    // Writable again: a leader soon.
    match &standby {
        Some(_) => route.switch(primary.port),
        None => {
            exec(&admin, "ALTER SYSTEM RESET default_transaction_read_only").await;
            exec(&admin, "SELECT pg_reload_conf()").await;
        }
    }
    wait_until(Duration::from_secs(5), "a leader once writable", || {
        electors.iter().any(|e| e.is_leader())
    })
    .await;
    for e in &electors {
        e.shutdown().await.unwrap();
    }
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_server_turns_read_only_steps_down_at_once() {
    leader_on_a_server_turning_read_only(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_rerouted_to_a_standby_steps_down_at_once() {
    leader_on_a_server_turning_read_only(true).await;
}

/// A database user that may not read the server's identity (a provider revoked `EXECUTE` on
/// `pg_control_system()`, or on the WAL functions too) still starts and leads: the quarantine compares
/// what it may read, or runs without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_privilege_to_read_the_server_identity_the_election_still_runs() {
    let pg = ThrowawayPg::start();
    let admin = admin_pool(&pg.url()).await;
    exec(&admin, "CREATE ROLE ll_plain LOGIN").await;
    exec(&admin, "CREATE SCHEMA ll_plain AUTHORIZATION ll_plain").await;
    exec(&admin, "GRANT CREATE ON DATABASE postgres TO ll_plain").await;
    exec(
        &admin,
        "REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC",
    )
    .await;
    let url = url_as_user(&pg.url(), "ll_plain");
    let plain = admin_pool(&url).await;
    let may: bool = sqlx::query_scalar(
        "SELECT has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')",
    )
    .fetch_one(&plain)
    .await
    .unwrap();
    assert!(!may, "the role may not read the system identifier");
    plain.close().await;
    for revoke_wal in [false, true] {
        if revoke_wal {
            exec(
                &admin,
                "REVOKE EXECUTE ON FUNCTION pg_walfile_name(pg_lsn), pg_current_wal_lsn() FROM PUBLIC",
            )
            .await;
        }
        let elector = fast()
            .with_schema("ll_plain")
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!("start without EXECUTE (WAL functions too: {revoke_wal}): {e}")
            });
        wait_until(Duration::from_secs(5), "it leads", || elector.is_leader()).await;
        elector.shutdown().await.unwrap();
    }
    admin.close().await;
}
