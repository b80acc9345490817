//! `leaderlease migrate up|down`: the SQL of `migrations/`, rendered for a schema.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use leaderlease::schema::{down_sql, qualified_table, up_sql};

use crate::args::Db;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Create the schema, table, term sequence and index, or upgrade them in place (idempotent)
    Up,
    /// Drop the table and the term sequence (the schema is kept)
    Down,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    direction: Direction,
    #[command(flatten)]
    db: Db,
    /// `down` only: drop the table even while some lock id has a live lease
    #[arg(long)]
    force: bool,
}

pub async fn main(a: MigrateArgs) -> ExitCode {
    if let Err(m) = a.db.check_schema() {
        eprintln!("leaderlease: {m}");
        return ExitCode::from(2);
    }
    let hub = match a.db.connect(Duration::from_secs(30)).await {
        Ok(hub) => hub,
        Err(e) => return crate::fail("migrate", &e),
    };
    let result = match a.direction {
        Direction::Up => up(&hub, &a.db.schema).await,
        Direction::Down => down(&hub, &a.db.schema, a.force).await,
    };
    hub.close().await;
    match result {
        Ok(message) => {
            eprintln!("leaderlease: {message}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("leaderlease: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn up(hub: &leaderlease::PgHub, schema: &str) -> Result<String, String> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(up_sql(schema)))
        .execute(hub.pool())
        .await
        .map_err(|e| format!("migrate up failed: {e}"))?;
    Ok(format!(
        "{} is ready (created or already up to date)",
        qualified_table(schema)
    ))
}

/// Drops the table in one transaction that first locks it and looks for live leases, so that no leader
/// can acquire or renew between the check and the drop.
async fn down(hub: &leaderlease::PgHub, schema: &str, force: bool) -> Result<String, String> {
    let table = qualified_table(schema);
    let err = |e: sqlx::Error| format!("migrate down failed: {e}");
    let mut tx = hub.pool().begin().await.map_err(err)?;
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&table)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
    if exists.is_some() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
        )))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        let live: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM {table} WHERE expires_at > clock_timestamp() ORDER BY id"
        )))
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        if !live.is_empty() && !force {
            let ids: Vec<String> = live.iter().map(i32::to_string).collect();
            return Err(format!(
                "not dropping {table}: lock id {} has a live lease (its leader would keep acting \
                 until its deadline while another could be elected on a new table); stop those \
                 candidates first, or pass --force",
                ids.join(", ")
            ));
        }
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(down_sql(schema)))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(format!(
        "dropped {table} and its term sequence (terms issued after the next `migrate up` still grow: they carry the database clock)"
    ))
}
