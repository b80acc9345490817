//! Reading every lease of a schema at once, for people and tools looking at an election from outside
//! (the `leaderlease status` command).

use sqlx::{PgPool, Row};

use crate::schema::qualified_table;
use crate::{Error, Result};

/// One row of the lease table, with its times measured by the database clock at the moment of reading.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRow {
    /// The lock id (the election).
    pub lock_id: i32,
    /// The holder's instance id.
    pub leader_id: String,
    /// The holder's fencing term (0 for a row written by nest-leader-election 1.1.2).
    pub term: i64,
    /// Milliseconds until the lease expires; zero or negative once it has (nobody leads then).
    pub expires_in_ms: f64,
    /// Milliseconds since the last acquire or renewal.
    pub renewed_ago_ms: f64,
    /// Milliseconds since this leadership began (`created_at`).
    pub held_for_ms: f64,
}

impl LeaseRow {
    /// True while the lease has not expired by the database clock.
    pub fn is_live(&self) -> bool {
        self.expires_in_ms > 0.0
    }
}

/// Every lease of a schema, read in one statement.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseTable {
    /// The table, quoted as in SQL.
    pub table: String,
    /// The database clock (`clock_timestamp()`) at the reading, as ISO 8601 in UTC.
    pub database_time: String,
    /// The rows, by lock id.
    pub leases: Vec<LeaseRow>,
}

/// Reads every lease row of `schema`'s lease table, with expiry and renewal ages computed by the database
/// clock. A missing table (or one older than this version) is [`Error::TableMissing`].
///
/// ```no_run
/// # async fn demo(pool: leaderlease::PgPool) -> leaderlease::Result<()> {
/// for lease in leaderlease::leases::list(&pool, "public").await?.leases {
///     println!("{} led by {} (term {})", lease.lock_id, lease.leader_id, lease.term);
/// }
/// # Ok(()) }
/// ```
pub async fn list(pool: &PgPool, schema: &str) -> Result<LeaseTable> {
    let table = qualified_table(schema);
    let db = |source| Error::Database {
        operation: "list leases",
        source,
    };
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&table)
        .fetch_one(pool)
        .await
        .map_err(db)?;
    if exists.is_none() {
        return Err(Error::TableMissing {
            table,
            problem: "does not exist".into(),
        });
    }
    let sql = format!(
        "SELECT l.id, l.leader_id, l.term, \
                (extract(epoch FROM l.expires_at - n.t) * 1000)::float8, \
                (extract(epoch FROM n.t - l.renewed_at) * 1000)::float8, \
                (extract(epoch FROM n.t - l.created_at) * 1000)::float8, \
                to_char(n.t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
         FROM {table} l, (SELECT clock_timestamp() AS t) n ORDER BY l.id"
    );
    let rows = match sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await {
        Ok(rows) => rows,
        // 42703 undefined_column: a table of nest-leader-election 1.1.2 not upgraded yet.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42703") => {
            return Err(Error::TableMissing {
                table,
                problem: "is older than this version (no term or renewed_at column)".into(),
            });
        }
        Err(e) => return Err(db(e)),
    };
    let database_time = match rows.first() {
        Some(row) => row.get(6),
        None => sqlx::query_scalar(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
        )
        .fetch_one(pool)
        .await
        .map_err(db)?,
    };
    let leases = rows
        .iter()
        .map(|r| LeaseRow {
            lock_id: r.get(0),
            leader_id: r.get(1),
            term: r.get(2),
            expires_in_ms: r.get(3),
            renewed_ago_ms: r.get(4),
            held_for_ms: r.get(5),
        })
        .collect();
    Ok(LeaseTable {
        table,
        database_time,
        leases,
    })
}
