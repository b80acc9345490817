//! Lease changes commit synchronously even where the application turned `synchronous_commit` off, on a
//! throwaway server of the test's own (the test changes a role's settings).

mod common;

use std::time::Duration;

use common::*;
use leaderlease::PgHub;

async fn show(pool: &leaderlease::PgPool) -> String {
    sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubs_sessions_raise_a_weaker_synchronous_commit_and_keep_a_stronger_one() {
    let pg = ThrowawayPg::start();
    let admin = admin_pool(&pg.url()).await;
    for (role_setting, expected) in [
        ("off", "on"),
        ("local", "on"),
        ("remote_write", "on"),
        ("on", "on"),
        ("remote_apply", "remote_apply"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER ROLE postgres SET synchronous_commit = {role_setting}"
        )))
        .execute(&admin)
        .await
        .unwrap();
        // A new session of the application gets the role's setting ...
        let app = admin_pool(&pg.url()).await;
        assert_eq!(show(&app).await, role_setting, "the role's setting applies");
        app.close().await;
        // ... the hub's sessions commit at least synchronously.
        let hub = PgHub::connect(&pg.url(), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(
            show(hub.pool()).await,
            expected,
            "the hub's session, with the role's synchronous_commit = {role_setting}"
        );
        hub.close().await;
    }
    admin.close().await;
}
