//! The table: creation, upgrade from nest-leader-election 1.1.2, hostile schema names, clear errors.

mod common;

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;

use common::*;
use leaderlease::{Elector, Error, schema};

/// The DDL nest-leader-election 1.1.2 runs (see ORIGINALS: its table and index).
fn original_ddl(schema_name: &str) -> String {
    let s = schema::quote_ident(schema_name);
    format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.leader_lease (
             id INT PRIMARY KEY,
             leader_id TEXT NOT NULL,
             expires_at TIMESTAMPTZ NOT NULL,
             created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
             CHECK (expires_at > created_at));
         CREATE INDEX IF NOT EXISTS leader_lease_expires ON {s}.leader_lease (expires_at);"
    )
}

async fn columns(s: &TestSchema) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = 'leader_lease' ORDER BY ordinal_position",
    )
    .bind(&s.name)
    .fetch_all(&s.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn table_from_1_1_2_is_upgraded_in_place() {
    let s = TestSchema::new("upgrade").await;
    s.exec(original_ddl(&s.name)).await;
    // A row left by a 1.1.2 leader that has since stopped.
    s.exec(format!(
        "INSERT INTO {} (id, leader_id, expires_at, created_at) \
         VALUES (1, 'old-node', now() - interval '1 second', now() - interval '1 minute')",
        s.table()
    ))
    .await;

    // Without DDL rights (create_table_on_init off) the outdated table is a clear error.
    let err = s
        .builder()
        .with_create_table_on_init(false)
        .connect(&database_url())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TableMissing { .. }), "{err}");
    assert!(err.to_string().contains("predates leaderlease"), "{err}");
    assert!(err.to_string().contains("migration"), "{err}");

    let e = s.builder().connect(&database_url()).await.unwrap();
    assert_eq!(
        columns(&s).await,
        [
            "id",
            "leader_id",
            "expires_at",
            "created_at",
            "term",
            "renewed_at"
        ]
    );
    wait_until(Duration::from_secs(3), "takeover of the old row", || {
        e.is_leader()
    })
    .await;
    assert!(e.term().unwrap() >= 1);
    e.shutdown().await.unwrap();
    // Once upgraded, a runtime user without DDL rights can start.
    let e = s
        .builder()
        .with_create_table_on_init(false)
        .connect(&database_url())
        .await
        .unwrap();
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn missing_table_without_create_on_init_names_the_fix() {
    let s = TestSchema::new("missing").await;
    let err = s
        .builder()
        .with_create_table_on_init(false)
        .connect(&database_url())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ERR_TABLE_MISSING");
    let msg = err.to_string();
    assert!(
        msg.contains("does not exist") && msg.contains(&s.name) && msg.contains("migration"),
        "{msg}"
    );
}

#[tokio::test]
async fn migration_sql_is_idempotent_and_reversible() {
    let s = TestSchema::new("migrate").await;
    for _ in 0..2 {
        s.exec(schema::up_sql(&s.name)).await;
    }
    assert_eq!(columns(&s).await.len(), 6);
    s.exec(schema::down_sql(&s.name)).await;
    assert!(columns(&s).await.is_empty());

    // Concurrent first runs (several replicas starting at once on a fresh schema) serialise on the DDL
    // lock; without it, CREATE SCHEMA / TABLE IF NOT EXISTS race and fail with duplicate keys.
    let fresh = TestSchema::new("migrate_race").await;
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(sqlx::PgConnection::connect(&database_url()).await.unwrap());
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(conns.len()));
    let runs: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (barrier, sql) = (barrier.clone(), schema::up_sql(&fresh.name));
            tokio::spawn(async move {
                barrier.wait().await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
            })
        })
        .collect();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    assert_eq!(columns(&fresh).await.len(), 6);
    s.exec(schema::down_sql(&s.name)).await;
    assert!(columns(&s).await.is_empty());
    let seq: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(s.sequence())
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(seq, None);
}

#[tokio::test]
async fn hostile_and_mixed_case_schema_names_are_quoted_never_spliced() {
    let sentinel = unique("ll_sentinel");
    let admin = admin_pool(&database_url()).await;
    exec(&admin, format!("CREATE TABLE public.{sentinel} (x int)")).await;
    let names = [
        format!("MixedCase_{}", unique("m")),
        format!(
            "x\"; DROP TABLE public.{sentinel}; --{}",
            rand::random::<u16>()
        ),
        format!("o'neil {}", rand::random::<u16>()),
        format!("a\\b');DROP TABLE public.{sentinel};--"),
    ];
    for name in names {
        let s = TestSchema::with_name(name.clone()).await;
        let e = s.builder().connect(&database_url()).await.unwrap();
        wait_until(Duration::from_secs(3), "leadership", || e.is_leader()).await;
        e.shutdown().await.unwrap();
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
             WHERE table_schema = $1 AND table_name = 'leader_lease')",
        )
        .bind(&name)
        .fetch_one(&s.pool)
        .await
        .unwrap();
        assert!(exists, "table created in the schema named exactly {name:?}");
    }
    let still_there: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("public.{sentinel}"))
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(still_there.is_some(), "nothing was injected");
    exec(&admin, format!("DROP TABLE public.{sentinel}")).await;

    // A name PostgreSQL reserves fails cleanly, before any SQL runs.
    let err = fast()
        .with_schema("pg_evil")
        .connect(&database_url())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(c) if c.field == "schema"),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_database_is_a_clear_error_at_start() {
    let port = free_port();
    let started = std::time::Instant::now();
    let err = Elector::builder()
        .connect(&format!("postgres://postgres@127.0.0.1:{port}/test"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ERR_DATABASE_UNREACHABLE");
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = Elector::builder().connect("not a url").await.unwrap_err();
    assert!(
        err.to_string().contains("invalid connection string"),
        "{err}"
    );
}

#[tokio::test]
async fn runtime_user_without_privileges_gets_a_clear_error() {
    let s = TestSchema::new("privs").await;
    s.exec(schema::up_sql(&s.name)).await;
    let role = unique("ll_role");
    let q = schema::quote_ident(&s.name);
    s.exec(format!(
        "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {q} TO {role}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON {q}.leader_lease TO {role};"
    ))
    .await;
    let url = url_as_user(&database_url(), &role);
    let err = s
        .builder()
        .with_create_table_on_init(false)
        .connect(&url)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ERR_PERMISSION_DENIED", "{err}");
    assert!(err.to_string().contains("UPDATE on its sequence"), "{err}");
    // USAGE allows nextval but not the setval an acquisition also runs: still a clear error at start.
    s.exec(format!(
        "GRANT USAGE ON {q}.leader_lease_term_seq TO {role}"
    ))
    .await;
    let err = s
        .builder()
        .with_create_table_on_init(false)
        .connect(&url)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ERR_PERMISSION_DENIED", "{err}");
    assert!(err.to_string().contains("UPDATE on its sequence"), "{err}");
    // With UPDATE on the sequence too, the runtime user needs no DDL rights.
    s.exec(format!(
        "GRANT UPDATE ON {q}.leader_lease_term_seq TO {role}"
    ))
    .await;
    let e = s
        .builder()
        .with_create_table_on_init(false)
        .connect(&url)
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "leadership", || e.is_leader()).await;
    e.shutdown().await.unwrap();
    s.exec(format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await;
}

// Terms: for a lock id, every leadership's term is greater than every earlier one's, whatever happens to
// the row, the sequence or the table in between (docs/design.md, "Terms").

/// The table as a hand-written migration or TypeORM's `synchronize` creates it: every column, no sequence.
fn hand_made_ddl(s: &TestSchema) -> String {
    format!(
        "CREATE TABLE {} (
             id INT PRIMARY KEY,
             leader_id TEXT NOT NULL,
             expires_at TIMESTAMPTZ NOT NULL,
             created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
             term BIGINT NOT NULL DEFAULT 0,
             renewed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
             CHECK (expires_at > created_at))",
        s.table()
    )
}

/// Starts an election on `s`, waits for it to lead and returns it with its term.
async fn lead(s: &TestSchema, id: &str) -> (Elector, u64) {
    let e = s.elector(id).await;
    wait_until(Duration::from_secs(5), "leadership", || e.is_leader()).await;
    let term = e.term().unwrap();
    (e, term)
}

/// The term of lock id 1's row once a row is there.
async fn row_term(s: &TestSchema) -> i64 {
    let start = std::time::Instant::now();
    loop {
        let term: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT term FROM {} WHERE id = 1",
            s.table()
        )))
        .fetch_optional(&s.pool)
        .await
        .unwrap();
        if let Some(term) = term {
            return term;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no lease row after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_grow_across_down_then_up_under_a_live_leader() {
    let s = TestSchema::new("term_downup").await;
    let (a, t) = lead(&s, "a").await;
    // A leader with term t is still running (it could be paused, with writes in flight) when the table and
    // its sequence are dropped and created again.
    s.exec(schema::down_sql(&s.name)).await;
    s.exec(schema::up_sql(&s.name)).await;
    let b = s.elector("b").await;
    let next = row_term(&s).await;
    assert!(
        next > t as i64,
        "a leadership after DOWN then UP got term {next}, not above the live leader's {t}"
    );
    wait_until(Duration::from_secs(5), "the new leader", || {
        [&a, &b]
            .iter()
            .any(|e| e.is_leader() && e.term() == Some(next as u64))
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_sequence_never_issues_a_term_the_table_already_holds() {
    let s = TestSchema::new("term_fresh").await;
    s.exec(schema::up_sql(&s.name)).await;
    // An expired lease with term 1, and the sequence gone (dropped by hand, or by a DOWN of an older
    // version): the migration at start creates it afresh.
    s.exec(format!(
        "INSERT INTO {} (id, leader_id, expires_at, created_at, term) \
             VALUES (1, 'old-node', now() - interval '1 second', now() - interval '1 minute', 1)",
        s.table()
    ))
    .await;
    s.exec(format!("DROP SEQUENCE {}", s.sequence())).await;
    let (e, t) = lead(&s, "new").await;
    assert!(t > 1, "the takeover of term 1's lease issued term {t}");
    e.shutdown().await.unwrap();
    let (e, t2) = lead(&s, "next").await;
    assert!(t2 > t, "term {t2} after {t}");
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_grow_after_the_sequence_is_set_back_by_hand() {
    let s = TestSchema::new("term_setval").await;
    let mut last = 0;
    for round in 0..4 {
        if round >= 2 {
            // A restore of an older dump, or a hand-made fix, puts the sequence back.
            s.exec(format!("SELECT setval('{}', 1)", s.sequence()))
                .await;
        }
        let (e, t) = lead(&s, &format!("n{round}")).await;
        assert!(t > last, "round {round}: term {t} after {last}");
        last = t;
        e.shutdown().await.unwrap(); // deletes the row: only the sequence remembers
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_grow_after_the_table_is_dropped_and_recreated_by_hand() {
    for drop_sequence in [false, true] {
        let s = TestSchema::new("term_recreate").await;
        let (a, t) = lead(&s, "a").await;
        a.shutdown().await.unwrap();
        s.exec(format!("DROP TABLE {}", s.table())).await;
        if drop_sequence {
            s.exec(format!("DROP SEQUENCE {}", s.sequence())).await;
        }
        s.exec(hand_made_ddl(&s)).await;
        let (b, t2) = lead(&s, "b").await;
        assert!(
            t2 > t,
            "term {t2} after {t} (sequence dropped too: {drop_sequence})"
        );
        b.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_with_a_term_ahead_of_the_clock_and_sequence_is_still_overtaken() {
    let s = TestSchema::new("term_ahead").await;
    s.exec(schema::up_sql(&s.name)).await;
    // Written while the database clock was an hour ahead (since stepped back), or copied from elsewhere.
    let ahead: i64 = sqlx::query_scalar(
        "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint + 3600000000",
    )
    .fetch_one(&s.pool)
    .await
    .unwrap();
    s.exec(format!(
            "INSERT INTO {} (id, leader_id, expires_at, created_at, term) \
             VALUES (1, 'old-node', now() - interval '1 second', now() - interval '1 minute', {ahead})",
            s.table()
        ),
    )
    .await;
    let (e, t) = lead(&s, "a").await;
    assert!(t > ahead as u64, "takeover term {t}, the row had {ahead}");
    e.shutdown().await.unwrap(); // the row is gone: the next term must come from the sequence
    let (e, t2) = lead(&s, "b").await;
    assert!(t2 > t, "term {t2} after {t}");
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequence_holds_the_largest_term_after_concurrent_acquisitions() {
    const N: i64 = 32;
    let s = TestSchema::new("term_concurrent").await;
    s.exec(schema::up_sql(&s.name)).await;
    for round in 0..3 {
        // Elections of many lock ids on one shared hub (a pool of 4), acquiring at the same moment.
        let mut starts = tokio::task::JoinSet::new();
        for id in 1..=N {
            let builder = s
                .builder()
                .with_lock_id(id)
                .with_instance_id(format!("r{round}-{id}"));
            starts.spawn(async move { builder.connect_shared(&database_url()).await.unwrap() });
        }
        let electors: Vec<Elector> = starts.join_all().await;
        wait_until(Duration::from_secs(10), "all elections led", || {
            electors.iter().all(|e| e.is_leader())
        })
        .await;
        let (last_value, max_term): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT last_value FROM {}), (SELECT max(term) FROM {})",
            s.sequence(),
            s.table()
        )))
        .fetch_one(&s.pool)
        .await
        .unwrap();
        assert!(
            last_value >= max_term,
            "round {round}: the sequence is at {last_value}, below the term {max_term} it issued"
        );
        for e in &electors {
            e.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_after_a_1_1_2_upgrade_are_above_its_rows_term_0() {
    let s = TestSchema::new("term_upgrade").await;
    s.exec(original_ddl(&s.name)).await;
    s.exec(format!(
        "INSERT INTO {} (id, leader_id, expires_at, created_at) VALUES \
             (1, 'old-1', now() - interval '1 second', now() - interval '1 minute'), \
             (2, 'old-2', now() - interval '1 second', now() - interval '1 minute')",
        s.table()
    ))
    .await;
    s.exec(schema::up_sql(&s.name)).await;
    let terms: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT term FROM {} ORDER BY id",
        s.table()
    )))
    .fetch_all(&s.pool)
    .await
    .unwrap();
    assert_eq!(terms, [0, 0], "rows written by 1.1.2 have term 0");
    for lock_id in [1, 2] {
        let e = s
            .builder()
            .with_lock_id(lock_id)
            .connect(&database_url())
            .await
            .unwrap();
        wait_until(Duration::from_secs(5), "takeover of the 1.1.2 row", || {
            e.is_leader()
        })
        .await;
        assert!(e.term().unwrap() > 0);
        e.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_term_is_issued_only_under_the_schemas_term_lock() {
    let s = TestSchema::new("term_lock").await;
    s.exec(schema::up_sql(&s.name)).await;
    let sequence_state = || async {
        sqlx::query_as::<_, (i64, bool)>(sqlx::AssertSqlSafe(format!(
            "SELECT last_value, is_called FROM {}",
            s.sequence()
        )))
        .fetch_one(&s.pool)
        .await
        .unwrap()
    };
    // While another transaction holds the term lock, an acquisition waits before it touches the sequence.
    let mut holder = s.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(schema::term_lock_namespace(&s.name))
        .execute(&mut *holder)
        .await
        .unwrap();
    let e = s.builder().connect(&database_url()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!e.is_leader());
    assert_eq!(sequence_state().await, (1, false), "the sequence moved");
    holder.commit().await.unwrap();
    wait_until(Duration::from_secs(5), "leadership", || e.is_leader()).await;
    let (last_value, _) = sequence_state().await;
    assert_eq!(
        last_value as u64,
        e.term().unwrap(),
        "the sequence holds the term"
    );
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_runtime_user_with_only_some_table_rights_gets_a_clear_error_at_start() {
    let s = TestSchema::new("privs_partial").await;
    s.exec(schema::up_sql(&s.name)).await;
    let role = unique("ll_role");
    let q = schema::quote_ident(&s.name);
    // Reading is not enough: acquiring inserts or updates the row, releasing deletes it.
    s.exec(format!(
        "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {q} TO {role}; \
             GRANT SELECT ON {q}.leader_lease TO {role}; \
             GRANT USAGE, UPDATE ON {q}.leader_lease_term_seq TO {role};"
    ))
    .await;
    let url = database_url().replacen("postgres@", &format!("{role}@"), 1);
    let started = s
        .builder()
        .with_create_table_on_init(false)
        .connect(&url)
        .await;
    let outcome = match &started {
        Ok(_) => "started".to_owned(),
        Err(err) => format!("{} {err}", err.code()),
    };
    if let Ok(e) = started {
        e.shutdown().await.unwrap();
    }
    s.exec(format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await;
    assert!(
        outcome.starts_with("ERR_PERMISSION_DENIED") && outcome.contains("INSERT"),
        "{outcome}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waits_for_a_concurrent_migration_longer_than_the_operation_timeout() {
    let s = TestSchema::new("migrate_wait").await;
    // Another starter (or a migration user) is running the migration on the fresh schema, slowly.
    let mut other = s.pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(schema::up_sql(&s.name)))
        .execute(&mut *other)
        .await
        .unwrap();
    let builder = s
        .builder()
        .with_operation_timeout(Duration::from_millis(200));
    let start = tokio::spawn(async move { builder.connect(&database_url()).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    other.commit().await.unwrap();
    let e = start.await.unwrap().unwrap();
    wait_until(Duration::from_secs(5), "leadership", || e.is_leader()).await;
    e.shutdown().await.unwrap();
}
