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
    sqlx::raw_sql(sqlx::AssertSqlSafe(original_ddl(&s.name)))
        .execute(&s.pool)
        .await
        .unwrap();
    // A row left by a 1.1.2 leader that has since stopped.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {} (id, leader_id, expires_at, created_at) \
         VALUES (1, 'old-node', now() - interval '1 second', now() - interval '1 minute')",
        s.table()
    )))
    .execute(&s.pool)
    .await
    .unwrap();

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
        sqlx::raw_sql(sqlx::AssertSqlSafe(schema::up_sql(&s.name)))
            .execute(&s.pool)
            .await
            .unwrap();
    }
    assert_eq!(columns(&s).await.len(), 6);
    sqlx::raw_sql(sqlx::AssertSqlSafe(schema::down_sql(&s.name)))
        .execute(&s.pool)
        .await
        .unwrap();
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
    sqlx::raw_sql(sqlx::AssertSqlSafe(schema::down_sql(&s.name)))
        .execute(&s.pool)
        .await
        .unwrap();
    assert!(columns(&s).await.is_empty());
    let seq: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!(
            "{}.leader_lease_term_seq",
            schema::quote_ident(&s.name)
        ))
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(seq, None);
}

#[tokio::test]
async fn hostile_and_mixed_case_schema_names_are_quoted_never_spliced() {
    let sentinel = unique("ll_sentinel");
    let admin = admin_pool(&database_url()).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE public.{sentinel} (x int)"
    )))
    .execute(&admin)
    .await
    .unwrap();
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
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE public.{sentinel}")))
        .execute(&admin)
        .await
        .unwrap();

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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
    sqlx::raw_sql(sqlx::AssertSqlSafe(schema::up_sql(&s.name)))
        .execute(&s.pool)
        .await
        .unwrap();
    let role = unique("ll_role");
    let q = schema::quote_ident(&s.name);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {q} TO {role}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON {q}.leader_lease TO {role};"
    )))
    .execute(&s.pool)
    .await
    .unwrap();
    let url = url_as_user(&database_url(), &role);
    let err = s
        .builder()
        .with_create_table_on_init(false)
        .connect(&url)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ERR_PERMISSION_DENIED", "{err}");
    assert!(err.to_string().contains("USAGE on its sequence"), "{err}");
    // With the sequence granted too, the runtime user needs no DDL rights.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT USAGE ON {q}.leader_lease_term_seq TO {role}"
    )))
    .execute(&s.pool)
    .await
    .unwrap();
    let e = s
        .builder()
        .with_create_table_on_init(false)
        .connect(&url)
        .await
        .unwrap();
    wait_until(Duration::from_secs(3), "leadership", || e.is_leader()).await;
    e.shutdown().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP OWNED BY {role}; DROP ROLE {role}"
    )))
    .execute(&s.pool)
    .await
    .unwrap();
}
