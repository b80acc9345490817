//! The PostgreSQL backend: one row per lock id in `"schema".leader_lease`, terms from a sequence.
//!
//! Every statement that changes a lease is a single conditional statement judged by the database clock
//! (`clock_timestamp()`), so no read-then-write race exists between candidates, and no client clock is
//! ever compared with another. Acquisition also takes a transaction-scoped advisory lock
//! (`pg_try_advisory_xact_lock(namespace, lock_id)`) so contenders give up at once instead of queueing on
//! the row lock; it ends with the statement, whatever happens to the connection, so no lock is ever
//! stranded on a pooled connection.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Row};
use tokio::time::{Instant, timeout_at};

use crate::backend::{AcquireOutcome, Backend, BoxFuture, ObservedLease};
use crate::config::{CLEANUP_GRACE, ElectorConfig};
use crate::schema::{self, quote_ident};
use crate::{Error, Result};

/// Connections a pool opened by [`PgBackend::connect`] may hold: one for the election loop, one spare for
/// a release or cleanup racing with it.
pub const OWNED_POOL_MAX_CONNECTIONS: u32 = 2;

/// How long the first connection at start may take (the operation timeout applies if it is longer).
pub const START_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// SQL of one election, rendered once for its schema.
#[derive(Debug)]
struct Statements {
    sequence: String,
    observe: Arc<str>,
    acquire: Arc<str>,
    renew: Arc<str>,
    release: Arc<str>,
    cleanup: Arc<str>,
}

impl Statements {
    fn new(schema: &str) -> Self {
        let t = schema::qualified_table(schema);
        let seq = format!("{}.{}", quote_ident(schema), schema::TERM_SEQUENCE);
        let grace_ms = CLEANUP_GRACE.as_millis();
        Self {
            sequence: seq,
            observe: format!(
                "SELECT leader_id, term, (EXTRACT(EPOCH FROM (LEAST(GREATEST(expires_at, \
                   clock_timestamp() - interval '1 day'), clock_timestamp() + interval '1 day') \
                   - clock_timestamp())) * 1000)::float8 AS remaining_ms \
                 FROM {t} WHERE id = $1"
            )
            .into(),
            // One statement: the advisory lock turns concurrent attempts away at once, the NOT EXISTS
            // keeps the sequence from advancing when a live lease stands, and ON CONFLICT .. WHERE
            // re-checks expiry on the latest row version under its row lock.
            acquire: format!(
                "WITH lk AS (SELECT pg_try_advisory_xact_lock($4, $1) AS got), \
                      n AS (SELECT clock_timestamp() AS t) \
                 INSERT INTO {t} AS l (id, leader_id, expires_at, created_at, renewed_at, term) \
                 SELECT $1, $2, n.t + $3 * interval '1 millisecond', n.t, n.t, nextval($5::regclass) \
                 FROM lk, n \
                 WHERE lk.got AND NOT EXISTS (SELECT 1 FROM {t} c WHERE c.id = $1 AND c.expires_at > n.t) \
                 ON CONFLICT (id) DO UPDATE SET leader_id = EXCLUDED.leader_id, \
                     expires_at = EXCLUDED.expires_at, created_at = EXCLUDED.created_at, \
                     renewed_at = EXCLUDED.renewed_at, term = EXCLUDED.term \
                 WHERE l.expires_at <= EXCLUDED.created_at \
                 RETURNING term"
            )
            .into(),
            renew: format!(
                "UPDATE {t} SET expires_at = clock_timestamp() + $4 * interval '1 millisecond', \
                 renewed_at = clock_timestamp() \
                 WHERE id = $1 AND leader_id = $2 AND term = $3 AND expires_at > clock_timestamp()"
            )
            .into(),
            release: format!("DELETE FROM {t} WHERE id = $1 AND leader_id = $2 AND term = $3").into(),
            cleanup: format!(
                "DELETE FROM {t} WHERE expires_at < clock_timestamp() - {grace_ms} * interval '1 millisecond'"
            )
            .into(),
        }
    }
}

/// Lease storage in PostgreSQL. Build it from a connection string ([`PgBackend::connect`]) or from a
/// pool the application already has ([`PgBackend::with_pool`]); many elections may share one pool.
#[derive(Debug)]
pub struct PgBackend {
    pool: PgPool,
    owns_pool: bool,
    schema: String,
    lock_id: i32,
    namespace: i32,
    instance_id: String,
    lease_ms: f64,
    timeout: Duration,
    create_table_on_init: bool,
    sql: Statements,
}

/// Runs `$body` (which uses the connection bound to `$c`) within the operation timeout, the wait for a
/// connection included. A connection whose statement timed out or broke is closed, not pooled again, so
/// a half-finished exchange is never reused.
macro_rules! with_conn {
    ($self:ident, $op:literal, |$c:ident| $body:expr) => {
        with_conn!($self, $op, $self.timeout, |$c| $body)
    };
    ($self:ident, $op:literal, $timeout:expr, |$c:ident| $body:expr) => {{
        let timeout: Duration = $timeout;
        let deadline = Instant::now() + timeout;
        let mut conn = match timeout_at(deadline, $self.pool.acquire()).await {
            Err(_) => {
                return Err(Error::Timeout {
                    operation: $op,
                    after: timeout,
                });
            }
            Ok(Err(source)) => {
                return Err(Error::Database {
                    operation: $op,
                    source,
                });
            }
            Ok(Ok(conn)) => conn,
        };
        let outcome = {
            let $c = &mut *conn;
            timeout_at(deadline, $body).await
        };
        match outcome {
            Err(_) => {
                conn.close_on_drop();
                Err(Error::Timeout {
                    operation: $op,
                    after: timeout,
                })
            }
            Ok(Err(source)) => {
                if !matches!(source, sqlx::Error::Database(_)) {
                    conn.close_on_drop();
                }
                Err(Error::Database {
                    operation: $op,
                    source,
                })
            }
            Ok(Ok(v)) => Ok(v),
        }
    }};
}

impl PgBackend {
    /// Opens a small pool of its own (at most [`OWNED_POOL_MAX_CONNECTIONS`]) to `url` and checks that the
    /// database answers. Its sessions get `statement_timeout` and `idle_in_transaction_session_timeout`
    /// from the operation timeout, and `application_name` `leaderlease` unless the URL sets one.
    pub async fn connect(url: &str, config: &ElectorConfig) -> Result<Self> {
        let mut options = PgConnectOptions::from_str(url).map_err(|e| Error::Unreachable {
            message: format!("invalid connection string: {e}"),
            source: Some(e),
        })?;
        if options.get_application_name().is_none() {
            options = options.application_name("leaderlease");
        }
        let timeout_ms = config.operation_timeout().as_millis().to_string();
        options = options.options([
            ("statement_timeout", timeout_ms.as_str()),
            ("idle_in_transaction_session_timeout", timeout_ms.as_str()),
        ]);
        Self::connect_with(options, config).await
    }

    /// Like [`connect`](Self::connect), from parsed options (used as given).
    pub async fn connect_with(options: PgConnectOptions, config: &ElectorConfig) -> Result<Self> {
        let target = match options.get_socket() {
            Some(dir) => format!("socket in {}", dir.display()),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        // One direct connection first: a pool only reports "timed out" when the server refuses, while this
        // says why (refused, unknown host, authentication, no such database).
        let wait = config.operation_timeout().max(START_CONNECT_TIMEOUT);
        match tokio::time::timeout(wait, PgConnection::connect_with(&options)).await {
            Err(_) => return Err(unreachable_error(sqlx::Error::PoolTimedOut, &target, wait)),
            Ok(Err(e)) => return Err(unreachable_error(e, &target, wait)),
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(OWNED_POOL_MAX_CONNECTIONS)
            .min_connections(0)
            // Every runtime operation is bounded by `with_conn!`; this only bounds opening a connection,
            // which may take longer than one operation on a loaded machine.
            .acquire_timeout(START_CONNECT_TIMEOUT)
            .idle_timeout(Some(config.lease_duration() * 6))
            .test_before_acquire(false)
            .connect_lazy_with(options);
        let mut backend = Self::with_pool(pool, config);
        backend.owns_pool = true;
        Ok(backend)
    }

    /// Uses a pool the application owns; [`Backend::close`] leaves it open. Statement timeouts then rest on
    /// the client side (the operation timeout); set `statement_timeout` on the pool's sessions to bound them
    /// on the server too.
    pub fn with_pool(pool: PgPool, config: &ElectorConfig) -> Self {
        Self {
            pool,
            owns_pool: false,
            schema: config.schema().to_owned(),
            lock_id: config.lock_id(),
            namespace: schema::lock_namespace(config.schema()),
            instance_id: config.instance_id().to_owned(),
            lease_ms: config.lease_duration().as_secs_f64() * 1000.0,
            timeout: config.operation_timeout(),
            create_table_on_init: config.create_table_on_init(),
            sql: Statements::new(config.schema()),
        }
    }

    /// The pool this backend uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn sequence(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), schema::TERM_SEQUENCE)
    }

    /// What of the schema is missing, or `None` when the table is complete.
    async fn missing_parts(&self) -> Result<Option<String>> {
        let table = schema::qualified_table(&self.schema);
        let row = with_conn!(self, "prepare", START_CONNECT_TIMEOUT, |c| sqlx::query(
            "SELECT to_regclass($1) IS NOT NULL AS has_table, \
                    to_regclass($2) IS NOT NULL AS has_seq, \
                    (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass($1) \
                       AND attname IN ('term', 'renewed_at') AND NOT attisdropped) AS new_columns"
        )
        .bind(&table)
        .bind(self.sequence())
        .fetch_one(c))?;
        let has_table: bool = row.get(0);
        let has_seq: bool = row.get(1);
        let new_columns: i64 = row.get(2);
        Ok(if !has_table {
            Some("does not exist".to_owned())
        } else if new_columns < 2 || !has_seq {
            Some("lacks the term column or sequence (it predates leaderlease)".to_owned())
        } else {
            None
        })
    }

    /// Checks that this database user may use the table and the sequence.
    async fn check_privileges(&self) -> Result<()> {
        let table = schema::qualified_table(&self.schema);
        let ok: bool = with_conn!(self, "prepare", START_CONNECT_TIMEOUT, |c| {
            sqlx::query_scalar(
                "SELECT has_table_privilege($1, 'SELECT, INSERT, UPDATE, DELETE') \
                AND has_sequence_privilege($2, 'USAGE')",
            )
            .bind(&table)
            .bind(self.sequence())
            .fetch_one(c)
        })?;
        if ok {
            Ok(())
        } else {
            Err(Error::PermissionDenied {
                object: table,
                needs: "SELECT, INSERT, UPDATE, DELETE on the table and USAGE on its sequence \
                        leader_lease_term_seq"
                    .to_owned(),
            })
        }
    }

    /// Runs the up migration, then moves the term sequence past any term already in the table (in case
    /// the sequence was dropped and recreated while rows remained), so terms keep growing.
    async fn migrate(&self) -> Result<()> {
        // A bounded wait for the table's lock, so the election's own statements never queue behind a
        // long transaction holding it (SET LOCAL: only for this run of the script).
        let sql = format!(
            "SET LOCAL lock_timeout = '10s';\n{}",
            schema::up_sql(&self.schema)
        );
        // The DDL may wait on the DDL advisory lock of a concurrent starter, so it gets a longer bound.
        let bound = self.timeout.max(Duration::from_secs(30));
        with_conn!(self, "migrate", bound, |c| sqlx::raw_sql(AssertSqlSafe(
            sql
        ))
        .execute(c))?;
        let table = schema::qualified_table(&self.schema);
        let seq = self.sequence();
        let resync = format!(
            "SELECT setval($1::regclass, m) FROM (SELECT max(term) AS m FROM {table}) x \
             WHERE m > (SELECT last_value FROM {seq})"
        );
        with_conn!(self, "migrate", bound, |c| sqlx::query(AssertSqlSafe(
            resync
        ))
        .bind(&seq)
        .execute(c))?;
        Ok(())
    }
}

fn unreachable_error(e: sqlx::Error, target: &str, timeout: Duration) -> Error {
    let message = match &e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused by {target}: is PostgreSQL running there?")
        }
        sqlx::Error::PoolTimedOut => format!(
            "no connection to {target} within {timeout:?} (server down, unreachable or too slow)"
        ),
        other => format!("cannot connect to {target}: {other}"),
    };
    Error::Unreachable {
        message,
        source: Some(e),
    }
}

impl Backend for PgBackend {
    fn prepare(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let Some(problem) = self.missing_parts().await? else {
                return self.check_privileges().await;
            };
            if !self.create_table_on_init {
                return Err(Error::TableMissing {
                    table: schema::qualified_table(&self.schema),
                    problem,
                });
            }
            self.migrate().await?;
            if let Some(problem) = self.missing_parts().await? {
                return Err(Error::TableMissing {
                    table: schema::qualified_table(&self.schema),
                    problem: format!("{problem} even after the migration ran"),
                });
            }
            self.check_privileges().await
        })
    }

    fn observe(&self) -> BoxFuture<'_, Result<Option<ObservedLease>>> {
        Box::pin(async move {
            let row = with_conn!(self, "observe", |c| sqlx::query(AssertSqlSafe(
                self.sql.observe.clone()
            ))
            .bind(self.lock_id)
            .fetch_optional(c))?;
            Ok(row.map(|row| {
                let remaining_ms: f64 = row.get(2);
                ObservedLease {
                    leader_id: row.get(0),
                    term: u64::try_from(row.get::<i64, _>(1)).unwrap_or(0),
                    expires_in: (remaining_ms > 0.0)
                        .then(|| Duration::try_from_secs_f64(remaining_ms / 1000.0).ok())
                        .flatten(),
                }
            }))
        })
    }

    fn try_acquire(&self) -> BoxFuture<'_, Result<AcquireOutcome>> {
        Box::pin(async move {
            let row = with_conn!(self, "acquire", |c| sqlx::query(AssertSqlSafe(
                self.sql.acquire.clone()
            ))
            .bind(self.lock_id)
            .bind(&self.instance_id)
            .bind(self.lease_ms)
            .bind(self.namespace)
            .bind(&self.sql.sequence)
            .fetch_optional(c))?;
            match row {
                Some(row) => Ok(AcquireOutcome::Acquired {
                    term: u64::try_from(row.get::<i64, _>(0)).unwrap_or(0),
                }),
                None => Ok(AcquireOutcome::NotAcquired {
                    current: self.observe().await.ok().flatten(),
                }),
            }
        })
    }

    fn renew(&self, term: u64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let done = with_conn!(self, "renew", |c| sqlx::query(AssertSqlSafe(
                self.sql.renew.clone()
            ))
            .bind(self.lock_id)
            .bind(&self.instance_id)
            .bind(term_param(term))
            .bind(self.lease_ms)
            .execute(c))?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn release(&self, term: u64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let done = with_conn!(self, "release", |c| sqlx::query(AssertSqlSafe(
                self.sql.release.clone()
            ))
            .bind(self.lock_id)
            .bind(&self.instance_id)
            .bind(term_param(term))
            .execute(c))?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn cleanup(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let done = with_conn!(self, "cleanup", |c| sqlx::query(AssertSqlSafe(
                self.sql.cleanup.clone()
            ))
            .execute(c))?;
            Ok(done.rows_affected())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.owns_pool {
                // Waits for checked-out connections; bounded so a hung socket cannot hold shutdown.
                let _ = tokio::time::timeout(self.timeout, self.pool.close()).await;
            }
        })
    }
}

fn term_param(term: u64) -> i64 {
    i64::try_from(term).unwrap_or(i64::MAX)
}
