//! Fleet membership on a real PostgreSQL: members join and see each other, a leave is seen at once, a
//! member that stops renewing drops out after its lease (and not before), fleets of two schemas never
//! see each other, and the leases of the hub keep being renewed even when the member table is dropped
//! under a running membership (the member renewal rides on the lease renewal statement).

mod common;

use std::time::{Duration, Instant};

use common::*;
use leaderlease::fleet::MemberConfig;
use leaderlease::{Error, PgHub};

async fn hub() -> PgHub {
    PgHub::connect(&database_url(), Duration::from_secs(2))
        .await
        .unwrap()
}

fn member(schema: &TestSchema, id: &str) -> leaderlease::fleet::MemberBuilder {
    MemberConfig::builder()
        .with_id(id)
        .with_schema(schema.name.clone())
        .with_lease_duration(Duration::from_millis(2000))
        .with_renewal_interval(Duration::from_millis(500))
}

#[tokio::test]
async fn members_join_see_each_other_and_a_leave_is_seen_at_once() {
    let s = TestSchema::new("fleet_join").await;
    let (ha, hb) = (hub().await, hub().await);
    let a = ha
        .join_fleet(member(&s, "a").with_version("1.9").build().unwrap())
        .await
        .unwrap();
    assert_eq!(member_ids(&a), ["a"], "a member lists itself at once");
    // A long renewal interval: b's join and a's leave must be seen through the announcement, not at the
    // next renewal.
    let b = hb
        .join_fleet(
            member(&s, "b")
                .with_version("1.10")
                .with_lease_duration(Duration::from_secs(20))
                .with_renewal_interval(Duration::from_secs(10))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        member_ids(&b),
        ["a", "b"],
        "the joining member reads the list"
    );
    let seen = wait_for_members(&a, &["a", "b"], Duration::from_secs(5)).await;
    eprintln!("a saw b join after {seen:?}");
    let list = b.members();
    assert_eq!(list[0].version.as_deref(), Some("1.9"));
    assert_eq!(list[1].version.as_deref(), Some("1.10"));
    assert!(
        list[0].started_at_us <= list[1].started_at_us,
        "start times by the database clock, a before b: {list:?}"
    );
    let mut changes = b.subscribe();
    changes.borrow_and_update();
    a.leave().await;
    let gone = wait_for_members(&b, &["b"], Duration::from_secs(5)).await;
    eprintln!("b saw a leave after {gone:?}");
    assert!(
        gone < Duration::from_secs(5),
        "a leave is announced, well before b's next renewal in 10 s: {gone:?}"
    );
    assert!(
        changes.has_changed().unwrap(),
        "the list stream told of the change"
    );
    assert_eq!(
        member_ids(&a),
        Vec::<String>::new(),
        "a left member lists nobody"
    );
    b.leave().await;
    ha.close().await;
    hb.close().await;
}

#[tokio::test]
async fn a_member_that_stops_renewing_drops_out_after_its_lease_and_not_before() {
    let s = TestSchema::new("fleet_dropout").await;
    // The member that will stop runs on a runtime of its own, dropped without leaving: its renewal
    // task and connections simply stop, as in a process that is killed or frozen.
    let name = s.name.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let runner = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let h = PgHub::connect(&database_url(), Duration::from_secs(2))
                .await
                .unwrap();
            let m = h
                .join_fleet(
                    MemberConfig::builder()
                        .with_id("frozen")
                        .with_schema(name)
                        .with_lease_duration(Duration::from_millis(2000))
                        .with_renewal_interval(Duration::from_millis(500))
                        .build()
                        .unwrap(),
                )
                .await
                .unwrap();
            ready_tx.send(()).unwrap();
            std::mem::forget(m);
            std::mem::forget(h);
        });
        rx.recv().unwrap();
        rt.shutdown_background();
    });
    ready_rx.await.unwrap();
    let hb = hub().await;
    let b = hb
        .join_fleet(member(&s, "b").build().unwrap())
        .await
        .unwrap();
    wait_for_members(&b, &["b", "frozen"], Duration::from_secs(5)).await;
    // Let the frozen member renew a few times, then stop it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    tx.send(()).unwrap();
    runner.join().unwrap();
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        member_ids(&b),
        ["b", "frozen"],
        "a member is listed until its lease (2 s) ends, even when it renews no more"
    );
    wait_for_members(&b, &["b"], Duration::from_secs(6)).await;
    let after = stopped.elapsed();
    eprintln!("the frozen member dropped out {after:?} after it stopped");
    assert!(
        after >= Duration::from_millis(1000),
        "dropped out no earlier than its lease from its last renewal allows: {after:?}"
    );
    b.leave().await;
    hb.close().await;
}

#[tokio::test]
async fn fleets_of_two_schemas_do_not_see_each_other() {
    let (s1, s2) = (
        TestSchema::new("fleet_iso1").await,
        TestSchema::new("fleet_iso2").await,
    );
    let h = hub().await;
    let a = h
        .join_fleet(member(&s1, "same").build().unwrap())
        .await
        .unwrap();
    let b = h
        .join_fleet(member(&s2, "other").build().unwrap())
        .await
        .unwrap();
    let c = h
        .join_fleet(member(&s2, "same").build().unwrap())
        .await
        .unwrap();
    wait_for_members(&b, &["other", "same"], Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(member_ids(&a), ["same"], "schema 1 holds one member");
    assert_eq!(member_ids(&b), ["other", "same"]);
    let listed = leaderlease::list_members(&s1.pool, &s1.name).await.unwrap();
    assert_eq!(
        listed.map(|l| l.into_iter().map(|m| m.id).collect::<Vec<_>>()),
        Some(vec!["same".to_owned()])
    );
    for m in [&a, &b, &c] {
        m.leave().await;
    }
    h.close().await;
}

#[tokio::test]
async fn a_missing_member_table_is_a_clear_error_without_create_on_init() {
    let s = TestSchema::new("fleet_missing").await;
    let h = hub().await;
    let err = h
        .join_fleet(
            member(&s, "x")
                .with_create_table_on_init(false)
                .build()
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TableMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("leader_lease_member"), "{err}");
    let listed = leaderlease::list_members(&s.pool, &s.name).await.unwrap();
    assert_eq!(listed, None, "no member table: None");
    h.close().await;
}

#[tokio::test]
async fn leases_keep_renewing_when_the_member_table_is_dropped_under_the_membership() {
    let s = TestSchema::new("fleet_dropped").await;
    let h = hub().await;
    let m = h
        .join_fleet(member(&s, "me").build().unwrap())
        .await
        .unwrap();
    // Three elections on the hub, so that their renewals are batched (and the member renewal rides on
    // them).
    let mut electors = Vec::new();
    for lock_id in 1..=3 {
        electors.push(
            s.builder()
                .with_lock_id(lock_id)
                .with_instance_id("me")
                .start_with_hub(&h)
                .await
                .unwrap(),
        );
    }
    wait_until(Duration::from_secs(10), "all three lead", || {
        electors.iter().all(|e| e.is_leader())
    })
    .await;
    let before = h.batch_stats();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE {}",
        leaderlease::schema::quote_ident(&s.name) + ".leader_lease_member"
    )))
    .execute(&s.pool)
    .await
    .unwrap();
    let terms: Vec<_> = electors.iter().map(|e| e.term()).collect();
    // Three lease durations (1.5 s each): a lease whose renewals failed would have been lost by then.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(4500) {
        for e in &electors {
            assert!(e.is_leader(), "lost leadership after the member table went");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        terms,
        electors.iter().map(|e| e.term()).collect::<Vec<_>>(),
        "same terms: renewed, never lost and taken again"
    );
    assert!(
        h.batch_stats().statements > before.statements,
        "renewals went on through the batcher"
    );
    for e in &electors {
        e.shutdown().await.unwrap();
    }
    m.leave().await;
    h.close().await;
}

/// `leaderlease status` shows the live members, in its table and its JSON.
#[cfg(feature = "cli")]
#[tokio::test]
async fn status_shows_the_members() {
    let s = TestSchema::new("fleet_status").await;
    let h = hub().await;
    let a = h
        .join_fleet(member(&s, "status-m1").with_version("3.1").build().unwrap())
        .await
        .unwrap();
    let b = h
        .join_fleet(member(&s, "status-m2").build().unwrap())
        .await
        .unwrap();
    let url = database_url();
    let run = |json: bool| {
        let mut args = vec!["status", "--url", &url, "--schema", &s.name];
        if json {
            args.push("--json");
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_leaderlease"))
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let human = run(false);
    assert!(
        human
            .lines()
            .any(|l| l == "members: 2 live: status-m1 (3.1), status-m2"),
        "{human}"
    );
    let doc: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    assert_eq!(doc["members"][0]["id"], "status-m1", "{doc}");
    assert_eq!(doc["members"][0]["version"], "3.1", "{doc}");
    assert_eq!(
        doc["members"][1]["version"],
        serde_json::Value::Null,
        "{doc}"
    );
    a.leave().await;
    b.leave().await;
    let human = run(false);
    assert!(human.lines().any(|l| l == "members: none"), "{human}");
    h.close().await;
}
