//! A fence the database enforces: a leader's write commits only while its term still holds an unexpired
//! lease, judged inside the writing transaction by the database itself.
//!
//! The migration installs `<schema>.leader_lease_fence(lock_id, term)`. Called in a transaction, it
//! share-locks the lease row and raises SQLSTATE [`FENCE_SQLSTATE`] unless the row holds that term with
//! an expiry ahead of the database clock. The share lock lasts until the transaction ends, so nobody can
//! take the lease over in between: a write that passed the fence commits before any later leadership
//! begins, and a leader that was paused past its lease has its commit refused instead of landing beside
//! the next leader's writes.
//!
//! Call it as the last statement before `COMMIT`: the lease row stays share-locked until then, which
//! holds back the next leader's takeover and this leader's own renewal, so keep what follows it short.

use sqlx::PgConnection;

use crate::schema::quote_ident;
use crate::{Error, Result};

/// The SQLSTATE the fence function raises when the term does not hold an unexpired lease.
pub const FENCE_SQLSTATE: &str = "LLF01";

/// Runs the fence for `lock_id` and `term` of the lease table in `schema` on `conn`, which should be
/// inside a transaction (`&mut *tx`); returns the term. [`Error::Fenced`] when the database refuses it:
/// roll the transaction back.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool, elector: leaderlease::Elector) -> Result<(), Box<dyn std::error::Error>> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO reports (day) VALUES (current_date)").execute(&mut *tx).await?;
/// elector.fence(&mut tx).await?; // refused if this node no longer leads
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn fence(conn: &mut PgConnection, schema: &str, lock_id: i32, term: u64) -> Result<u64> {
    let Ok(sql_term) = i64::try_from(term) else {
        return Err(Error::Fenced {
            lock_id,
            term: Some(term),
            reason: format!("term {term} is out of the database's range"),
        });
    };
    let sql = format!("SELECT {}.leader_lease_fence($1, $2)", quote_ident(schema));
    match sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
        .bind(lock_id)
        .bind(sql_term)
        .fetch_one(conn)
        .await
    {
        Ok(_) => Ok(term),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(FENCE_SQLSTATE) => {
            Err(Error::Fenced {
                lock_id,
                term: Some(term),
                reason: db.message().to_owned(),
            })
        }
        Err(source) => Err(Error::Database {
            operation: "fence",
            source,
        }),
    }
}
