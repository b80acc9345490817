//! The fence the database enforces (`leader_lease_fence`, `Elector::fence`): a leader's transaction
//! commits only while its term holds an unexpired lease, and nobody takes over before it ends.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use leaderlease::{Error, FENCE_SQLSTATE};

async fn work_table(t: &TestSchema) -> String {
    let table = format!("{}.work", leaderlease::schema::quote_ident(&t.name));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE {table} (term BIGINT NOT NULL, what TEXT NOT NULL)",
        leaderlease::schema::quote_ident(&t.name)
    )))
    .execute(&t.pool)
    .await
    .unwrap();
    table
}

async fn rows(t: &TestSchema, table: &str) -> Vec<(i64, String)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT term, what FROM {table} ORDER BY what"
    )))
    .fetch_all(&t.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leaders_commit_is_refused_and_a_live_one_commits() {
    // A schema name that would end a dollar-quoted function body spliced into SQL.
    let t = TestSchema::new("fence$fence$\"x").await;
    let table = work_table(&t).await;
    let alive = Arc::new(AtomicBool::new(true));
    let beat = alive.clone();
    let a = t
        .builder()
        .with_lock_id(5)
        .with_instance_id("a")
        .with_liveness_check(move || beat.load(Ordering::Acquire))
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "a to lead", || a.is_leader()).await;
    let term_a = a.term().unwrap();

    // A leader's fenced write commits.
    let mut tx = t.pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES ($1, 'live')"
    )))
    .bind(term_a as i64)
    .execute(&mut *tx)
    .await
    .unwrap();
    assert_eq!(a.fence(&mut tx).await.unwrap(), term_a);
    tx.commit().await.unwrap();

    // A transaction begun while a leads; then a stops renewing (as if paused) and b takes over.
    let mut stale = t.pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES ($1, 'stale')"
    )))
    .bind(term_a as i64)
    .execute(&mut *stale)
    .await
    .unwrap();
    alive.store(false, Ordering::Release);
    let b = t
        .builder()
        .with_lock_id(5)
        .with_instance_id("b")
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(6), "b to take over", || b.is_leader()).await;
    assert!(b.term().unwrap() > term_a);

    // The old leader's fence, with the term its work began under: the database refuses it.
    let err = a.fence_term(&mut stale, term_a).await.unwrap_err();
    match &err {
        Error::Fenced {
            lock_id,
            term,
            reason,
        } => {
            assert_eq!((*lock_id, *term), (5, Some(term_a)));
            assert!(reason.contains("held by term"), "{reason}");
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(err.code(), "ERR_FENCED");
    drop(stale); // rolled back
    // Without a term of its own, a non-leader is refused before asking the database.
    let mut tx = t.pool.begin().await.unwrap();
    assert!(matches!(
        a.fence(&mut tx).await,
        Err(Error::Fenced { term: None, .. })
    ));
    drop(tx);
    assert_eq!(rows(&t, &table).await, vec![(term_a as i64, "live".into())]);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_transaction_holds_off_a_takeover_until_it_ends() {
    let t = TestSchema::new("fence_hold").await;
    let a = t
        .builder()
        .with_lock_id(6)
        .with_instance_id("a")
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "a to lead", || a.is_leader()).await;
    let term = a.term().unwrap();
    let mut tx = t.pool.begin().await.unwrap();
    a.fence(&mut tx).await.unwrap();
    // Another session trying to take the row over (as an acquisition does, by updating it) waits for the
    // fenced transaction: here it gives up after its lock timeout.
    let mut other = t.pool.acquire().await.unwrap();
    let taken = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; SET LOCAL lock_timeout = '300ms'; \
         UPDATE {} SET leader_id = 'thief', term = term + 1 WHERE id = 6; COMMIT;",
        t.table()
    )))
    .execute(&mut *other)
    .await;
    let err = taken.unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("55P03"),
        "expected lock_not_available, got {err}"
    );
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *other).await;
    tx.commit().await.unwrap();
    assert_eq!(a.term(), Some(term), "a still leads after its commit");
    a.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_fence_sqlstate_is_raised_by_the_function_itself() {
    let t = TestSchema::new("fence_sql").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(leaderlease::schema::up_sql(&t.name)))
        .execute(&t.pool)
        .await
        .unwrap();
    let err = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {}.leader_lease_fence(1, 7)",
        leaderlease::schema::quote_ident(&t.name)
    )))
    .execute(&t.pool)
    .await
    .unwrap_err();
    let db = err.as_database_error().unwrap();
    assert_eq!(db.code().as_deref(), Some(FENCE_SQLSTATE));
    assert!(db.message().contains("has no lease"), "{}", db.message());
}

#[tokio::test]
async fn a_table_without_the_fence_gets_it_at_start_or_is_not_refused_without_create() {
    let t = TestSchema::new("fence_upgrade").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{} DROP FUNCTION {}.leader_lease_fence(INT, BIGINT);",
        leaderlease::schema::up_sql(&t.name),
        leaderlease::schema::quote_ident(&t.name)
    )))
    .execute(&t.pool)
    .await
    .unwrap();
    let has_fence = || async {
        sqlx::query_scalar::<_, bool>("SELECT to_regprocedure($1) IS NOT NULL")
            .bind(format!(
                "{}.leader_lease_fence(integer, bigint)",
                leaderlease::schema::quote_ident(&t.name)
            ))
            .fetch_one(&t.pool)
            .await
            .unwrap()
    };
    // create_table_on_init off: the election runs without the fence function.
    let e = t
        .builder()
        .with_lock_id(3)
        .with_create_table_on_init(false)
        .connect(&database_url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "to lead", || e.is_leader()).await;
    e.shutdown().await.unwrap();
    assert!(!has_fence().await);
    // On (the default): the migration adds it.
    let e = t
        .builder()
        .with_lock_id(3)
        .connect(&database_url())
        .await
        .unwrap();
    assert!(has_fence().await);
    e.shutdown().await.unwrap();
}
