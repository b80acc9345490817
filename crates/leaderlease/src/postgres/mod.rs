//! The PostgreSQL backend: one row per lock id in `"schema".leader_lease`; terms from the database clock,
//! a sequence and the row (docs/design.md, "Terms").
//!
//! Every statement that changes a lease is a single conditional statement judged by the database clock
//! (`clock_timestamp()`), so no read-then-write race exists between candidates, and no client clock is
//! ever compared with another. Acquisition also takes a transaction-scoped advisory lock
//! (`pg_try_advisory_xact_lock(namespace, lock_id)`) so contenders give up at once instead of queueing on
//! the row lock; it ends with the statement, whatever happens to the connection, so no lock is ever
//! stranded on a pooled connection.
//!
//! The backend's parts: [`hub`] (what the elections of one process share: the pool, the registry of
//! shared hubs, each election's membership), [`listen`] (the `LISTEN` connection that announces releases,
//! and its probe), [`batch`] (renewals and lease reads of many elections in one statement each) and
//! [`conn`] (connection settings, TLS, the pooler, and the bounded run of one statement).

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, PgPool, Row};

use crate::START_CONNECT_TIMEOUT;
use crate::backend::{AcquireOutcome, Backend, BoxFuture, ObservedLease};
use crate::config::{CLEANUP_GRACE, ElectorConfig};
use crate::schema::{self, quote_ident};
use crate::{Error, Result};

mod batch;
pub(crate) mod conn;
mod hub;
mod listen;
mod members;

pub use batch::{BatchStats, MAX_BATCH_WINDOW};
pub use conn::{PgSettings, Pooler, TlsSettings};
use conn::{SessionSetup, with_conn};
use hub::Member;
pub use hub::{OWNED_POOL_MAX_CONNECTIONS, PgHub};
pub use listen::{LISTEN_PROBE_INTERVAL, RELEASE_CHANNEL};
pub use members::{MEMBER_TABLE, list_members};

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
            observe: format!("SELECT {} FROM {t} WHERE id = $1", LEASE_COLUMNS).into(),
            // One statement: the advisory lock turns concurrent attempts away at once, the NOT EXISTS
            // keeps the sequence from advancing when a live lease stands, and ON CONFLICT .. WHERE
            // re-checks expiry on the latest row version under its row lock. The term is the largest of
            // the sequence's next value, the database clock in epoch microseconds and (on a takeover)
            // the row's term + 1; it is issued under the schema's term lock (CASE evaluates the lock
            // first), and written back to the sequence, so the sequence only moves forward and holds
            // the largest term issued. See docs/design.md, "Terms".
            acquire: format!(
                "WITH lk AS (SELECT pg_try_advisory_xact_lock($4, $1) AS got), \
                      n AS (SELECT clock_timestamp() AS t) \
                 INSERT INTO {t} AS l (id, leader_id, expires_at, created_at, renewed_at, term) \
                 SELECT $1, $2, n.t + $3 * interval '1 millisecond', n.t, n.t, \
                     CASE WHEN pg_advisory_xact_lock($6, 0)::text IS NOT NULL \
                          THEN setval($5::regclass, GREATEST(nextval($5::regclass), \
                              (extract(epoch FROM n.t) * 1000000)::bigint)) END \
                 FROM lk, n \
                 WHERE lk.got AND NOT EXISTS (SELECT 1 FROM {t} c WHERE c.id = $1 AND c.expires_at > n.t) \
                 ON CONFLICT (id) DO UPDATE SET leader_id = EXCLUDED.leader_id, \
                     expires_at = EXCLUDED.expires_at, created_at = EXCLUDED.created_at, \
                     renewed_at = EXCLUDED.renewed_at, \
                     term = CASE WHEN l.term < EXCLUDED.term THEN EXCLUDED.term \
                                 ELSE setval($5::regclass, l.term + 1) END \
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
            // The notification goes out when the statement commits, and only if a row was deleted.
            release: format!(
                "WITH d AS (DELETE FROM {t} WHERE id = $1 AND leader_id = $2 AND term = $3 RETURNING id) \
                 SELECT pg_notify($4, $5)::text FROM d"
            )
            .into(),
            cleanup: format!(
                "DELETE FROM {t} WHERE expires_at < clock_timestamp() - {grace_ms} * interval '1 millisecond'"
            )
            .into(),
        }
    }
}

/// What the start-up checks of an election depend on besides the hub: the schema, whether the table may be
/// created, whether the failover quarantine is on.
pub(crate) type StartKey = (String, bool, bool);

/// What an election keeps of the start-up checks ([`PgHub::start_checks`]): how the server's identity is
/// read (`None`: the quarantine is off, or neither part may be read), and the identity read then.
#[derive(Debug, Clone, Default)]
pub(crate) struct StartFacts {
    identity_sql: Option<Arc<str>>,
    identity: Option<ServerIdentity>,
}

/// What identifies the server a backend talks to: its system identifier (`pg_control_system()`: the
/// same on a primary and its physical standbys, another for another cluster) and its WAL timeline (the
/// first 8 hex digits of `pg_walfile_name(pg_current_wal_lsn())`; a promotion starts a new one at once,
/// where `pg_control_checkpoint()` shows it only after the next checkpoint). Either is `None` where it
/// cannot be read: no `EXECUTE` on the function, or (the timeline) a standby in recovery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ServerIdentity {
    system_id: Option<i64>,
    timeline: Option<String>,
}

impl ServerIdentity {
    /// What differs from `known` among the parts both have, for the log.
    fn changed_from(&self, known: &ServerIdentity) -> Option<String> {
        let mut changes = Vec::new();
        if let (Some(was), Some(is)) = (&known.timeline, &self.timeline)
            && was != is
        {
            changes.push(format!("WAL timeline {was} -> {is}"));
        }
        if let (Some(was), Some(is)) = (known.system_id, self.system_id)
            && was != is
        {
            changes.push(format!("system identifier {was} -> {is}"));
        }
        (!changes.is_empty()).then(|| changes.join(", "))
    }
}

/// The failover quarantine of one election (see
/// [`ElectorBuilder::with_failover_quarantine`](crate::ElectorBuilder::with_failover_quarantine)).
#[derive(Debug, Default)]
struct Quarantine {
    /// The server identity last seen (at start, then before each acquisition).
    known: Option<ServerIdentity>,
    /// No acquisition before this: one lease after a change was first seen.
    until: Option<Instant>,
    /// What changed, for the log.
    reason: String,
}

/// One acquisition: tried, or deferred by the failover quarantine.
enum AcquireStep {
    Tried(Option<sqlx::postgres::PgRow>),
    Deferred(Duration, String),
}

/// Lease storage in PostgreSQL. Build it from a connection string ([`PgBackend::connect`]), from a
/// pool the application already has ([`PgBackend::with_pool`]), or on a [`PgHub`] that many elections
/// of the process share ([`PgBackend::with_hub`]).
#[derive(Debug)]
pub struct PgBackend {
    pool: PgPool,
    hub: PgHub,
    /// How the hub's sessions get their settings (a copy, for `with_conn!`).
    setup: SessionSetup,
    member: OnceLock<Member>,
    schema: String,
    lock_id: i32,
    namespace: i32,
    term_lock: i32,
    instance_id: Arc<str>,
    lease_ms: f64,
    timeout: Duration,
    batch_window: Duration,
    clean_interval: Duration,
    create_table_on_init: bool,
    sql: Statements,
    observer: crate::config::Observer,
    lease: Duration,
    /// The statement that reads the server's identity, decided at start from the privileges held
    /// (`None`: the quarantine is off, or neither part may be read).
    identity_sql: OnceLock<Option<Arc<str>>>,
    quarantine_on: bool,
    quarantine: Mutex<Quarantine>,
}

impl PgBackend {
    /// Opens a hub of its own for this election (a pool of at most
    /// [`OWNED_POOL_MAX_CONNECTIONS`](crate::OWNED_POOL_MAX_CONNECTIONS) connections plus one `LISTEN`
    /// connection) to `url` and checks that the database answers; both close with the election. See
    /// [`PgHub::connect`] for the session settings.
    pub async fn connect(url: &str, config: &ElectorConfig) -> Result<Self> {
        Self::connect_settings(&PgSettings::from_url(url), config).await
    }

    /// Like [`connect`](Self::connect), from settings given field by field (see [`PgSettings`]).
    pub async fn connect_settings(settings: &PgSettings, config: &ElectorConfig) -> Result<Self> {
        let hub = PgHub::open(settings, config.operation_timeout(), true, None).await?;
        Ok(Self::on_hub(hub, config, false))
    }

    /// Like [`connect`](Self::connect), on the process's shared hub for `url` and the operation timeout
    /// ([`PgHub::shared`]): every election of the process on the same URL shares one pool, one `LISTEN`
    /// connection and batched renewals; the hub closes when the last of them stops.
    pub async fn connect_shared(url: &str, config: &ElectorConfig) -> Result<Self> {
        Self::connect_shared_settings(&PgSettings::from_url(url), config).await
    }

    /// Like [`connect_shared`](Self::connect_shared), from settings given field by field.
    pub async fn connect_shared_settings(
        settings: &PgSettings,
        config: &ElectorConfig,
    ) -> Result<Self> {
        let hub = PgHub::shared_settings(settings, config.operation_timeout()).await?;
        Ok(Self::on_hub(hub, config, true))
    }

    /// Like [`connect`](Self::connect), from parsed options (used as given).
    pub async fn connect_with(options: PgConnectOptions, config: &ElectorConfig) -> Result<Self> {
        let hub = PgHub::open_with(options, config.operation_timeout(), true, None).await?;
        Ok(Self::on_hub(hub, config, false))
    }

    /// Uses a pool the application owns (which may serve many elections); [`Backend::close`] leaves it
    /// open. All elections on the same pool (and operation timeout) share one hub: one `LISTEN`
    /// connection, opened with the pool's settings, and batched renewals. Statement timeouts then rest on
    /// the client side (the operation timeout); set `statement_timeout` on the pool's sessions to bound
    /// them on the server too.
    pub fn with_pool(pool: PgPool, config: &ElectorConfig) -> Self {
        let hub = PgHub::shared_for_pool(pool, config.operation_timeout());
        Self::on_hub(hub, config, true)
    }

    /// Runs on `hub`, with the other elections on it. The hub stays open when the election stops.
    pub fn with_hub(hub: &PgHub, config: &ElectorConfig) -> Self {
        Self::on_hub(hub.clone(), config, false)
    }

    /// `counted`: the hub already counts this election as a user (a reservation of [`PgHub::shared`]).
    fn on_hub(hub: PgHub, config: &ElectorConfig, counted: bool) -> Self {
        if !counted {
            hub.enter();
        }
        Self {
            pool: hub.pool().clone(),
            setup: hub.inner.setup.clone(),
            hub,
            member: OnceLock::new(),
            schema: config.schema().to_owned(),
            lock_id: config.lock_id(),
            namespace: schema::lock_namespace(config.schema()),
            term_lock: schema::term_lock_namespace(config.schema()),
            instance_id: config.instance_id().into(),
            lease_ms: config.lease_duration().as_secs_f64() * 1000.0,
            timeout: config.operation_timeout(),
            batch_window: (config.renewal_interval() / 10).min(MAX_BATCH_WINDOW),
            clean_interval: config.clean_interval(),
            create_table_on_init: config.create_table_on_init(),
            sql: Statements::new(config.schema()),
            observer: config.observer.clone(),
            lease: config.lease_duration(),
            identity_sql: OnceLock::new(),
            quarantine_on: config.failover_quarantine(),
            quarantine: Mutex::default(),
        }
    }

    /// The hub this backend runs on.
    pub fn hub(&self) -> &PgHub {
        &self.hub
    }

    /// The member registration, when batching pays off (other elections share the hub's batcher).
    fn batched(&self) -> Option<&Member> {
        self.member.get().filter(|m| m.batched())
    }

    /// The pool this backend uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Refuses a server that cannot write: a standby in recovery, or one whose transactions are
    /// read-only. Returns whether the server's system identifier and timeline may be read (`EXECUTE`
    /// on `pg_control_system()`, and on `pg_walfile_name(pg_lsn)` and `pg_current_wal_lsn()`: granted to
    /// PUBLIC by default; a provider may revoke them).
    async fn check_writable(&self) -> Result<(bool, bool)> {
        let row = with_conn!(self, "prepare", START_CONNECT_TIMEOUT, |c| {
            sqlx::query(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on', \
                    coalesce(host(inet_server_addr()) || ':' || inet_server_port(), 'on a local socket'), \
                    has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE'), \
                    has_function_privilege('pg_catalog.pg_walfile_name(pg_lsn)', 'EXECUTE') \
                      AND has_function_privilege('pg_catalog.pg_current_wal_lsn()', 'EXECUTE')"
        )
        .persistent(self.setup.persistent())
        .fetch_one(c)
        })?;
        let (recovery, read_only, server): (bool, bool, String) =
            (row.get(0), row.get(1), row.get(2));
        let readable: (bool, bool) = (row.get(3), row.get(4));
        if recovery || read_only {
            return Err(Error::ReadOnly {
                server,
                why: if recovery {
                    "a standby in recovery, pg_is_in_recovery()".to_owned()
                } else {
                    "transaction_read_only is on".to_owned()
                },
            });
        }
        Ok(readable)
    }

    /// Decides how the server's identity is read (from what may be read) and reads it once: the
    /// identity the failover quarantine compares with.
    async fn start_quarantine(&self, (system_id, timeline): (bool, bool)) -> Result<StartFacts> {
        let sql = (self.quarantine_on && (system_id || timeline)).then(|| {
            Arc::<str>::from(format!(
                "SELECT {}, {}",
                if system_id {
                    "(SELECT system_identifier FROM pg_catalog.pg_control_system())"
                } else {
                    "NULL::bigint"
                },
                if timeline {
                    "CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL \
                     ELSE substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8) END"
                } else {
                    "NULL::text"
                }
            ))
        });
        if self.quarantine_on && sql.is_none() {
            tracing::warn!(
                "the failover quarantine is off: this database user may not read the server's system \
                 identifier nor its timeline (EXECUTE on pg_control_system(), pg_walfile_name(pg_lsn) \
                 and pg_current_wal_lsn())"
            );
        }
        let Some(sql) = sql else {
            return Ok(StartFacts::default());
        };
        match self.read_identity(&sql).await {
            Ok(seen) => Ok(StartFacts {
                identity_sql: Some(sql),
                identity: Some(seen),
            }),
            // A server that refuses the functions although the privileges allow them (a managed
            // service's fork may lack WAL functions): the election runs without the quarantine rather
            // than failing every acquisition.
            Err(Error::Database { source, .. }) => {
                tracing::warn!(
                    error = %source,
                    "the failover quarantine is off: the server's system identifier and timeline \
                     cannot be read"
                );
                Ok(StartFacts::default())
            }
            Err(e) => Err(e),
        }
    }

    async fn read_identity(&self, sql: &Arc<str>) -> Result<ServerIdentity> {
        let row = with_conn!(self, "prepare", START_CONNECT_TIMEOUT, |c| sqlx::query(
            AssertSqlSafe(sql.clone())
        )
        .persistent(self.setup.persistent())
        .fetch_one(c))?;
        Ok(ServerIdentity {
            system_id: row.get(0),
            timeline: row.get(1),
        })
    }

    /// Compares the server's identity with the one seen before: `Some((retry_in, reason))` while
    /// acquiring must wait, one lease from the moment a change was first seen.
    fn judge_identity(&self, seen: ServerIdentity) -> Option<(Duration, String)> {
        let now = Instant::now();
        let mut q = self
            .quarantine
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &q.known {
            None => q.known = Some(seen),
            // A standby in recovery shows no timeline: nothing to judge (the acquisition fails there).
            Some(known) if seen.timeline.is_none() && known.timeline.is_some() => return None,
            Some(known) => {
                if let Some(change) = seen.changed_from(known) {
                    q.until = Some(now + self.lease);
                    q.reason = format!(
                        "the database server changed ({change}): a failover; a lease acknowledged by \
                         the old server may be lost with it while its holder still leads, so no \
                         acquisition until one lease ({:?}) after the change was first seen",
                        self.lease
                    );
                    q.known = Some(seen);
                }
            }
        }
        match q.until {
            Some(until) if now < until => Some((until - now, q.reason.clone())),
            _ => None,
        }
    }

    /// What of the schema is missing, or `None` when the table is complete. The fence function
    /// ([`crate::fence`]) counts only when `with_fence`: the election itself does not need it, so a table
    /// migrated before it existed is not refused when `create_table_on_init` is off; with it on, the
    /// migration adds it.
    async fn missing_parts(&self, with_fence: bool) -> Result<Option<String>> {
        let table = schema::qualified_table(&self.schema);
        let fence = format!(
            "{}.leader_lease_fence(integer, bigint)",
            schema::quote_ident(&self.schema)
        );
        let row = with_conn!(self, "prepare", START_CONNECT_TIMEOUT, |c| sqlx::query(
            "SELECT to_regclass($1) IS NOT NULL AS has_table, \
                    to_regclass($2) IS NOT NULL AS has_seq, \
                    (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass($1) \
                       AND attname IN ('term', 'renewed_at') AND NOT attisdropped) AS new_columns, \
                    to_regprocedure($3) IS NOT NULL AS has_fence"
        )
        .persistent(self.setup.persistent())
        .bind(&table)
        .bind(&self.sql.sequence)
        .bind(&fence)
        .fetch_one(c))?;
        let has_table: bool = row.get(0);
        let has_seq: bool = row.get(1);
        let new_columns: i64 = row.get(2);
        let has_fence: bool = row.get(3);
        Ok(if !has_table {
            Some("does not exist".to_owned())
        } else if new_columns < 2 || !has_seq {
            Some("lacks the term column or sequence (it predates leaderlease)".to_owned())
        } else if with_fence && !has_fence {
            Some("lacks the fence function leader_lease_fence".to_owned())
        } else {
            None
        })
    }

    /// Checks that this database user may use the table and the sequence (UPDATE: an acquisition calls
    /// `nextval` and `setval` on it).
    async fn check_privileges(&self) -> Result<()> {
        let table = schema::qualified_table(&self.schema);
        let ok: bool = with_conn!(self, "prepare", START_CONNECT_TIMEOUT, |c| {
            sqlx::query_scalar(
                // One privilege a call: with a list, has_*_privilege is true if ANY of them is held.
                "SELECT has_table_privilege($1, 'SELECT') AND has_table_privilege($1, 'INSERT') \
                AND has_table_privilege($1, 'UPDATE') AND has_table_privilege($1, 'DELETE') \
                AND has_sequence_privilege($2, 'UPDATE')",
            )
            .persistent(self.setup.persistent())
            .bind(&table)
            .bind(&self.sql.sequence)
            .fetch_one(c)
        })?;
        if ok {
            Ok(())
        } else {
            Err(Error::PermissionDenied {
                object: table,
                needs: "SELECT, INSERT, UPDATE, DELETE on the table and UPDATE on its sequence \
                        leader_lease_term_seq"
                    .to_owned(),
            })
        }
    }

    /// The checks before an election's first acquisition, shared by the elections that start together on
    /// the hub ([`PgHub::start_checks`]): the server is writable, the quarantine's first reading of its
    /// identity, the table is complete (migrated first if `create_table_on_init`), the privileges.
    async fn check_start(&self) -> Result<StartFacts> {
        let readable = self.check_writable().await?;
        let facts = self.start_quarantine(readable).await?;
        let Some(problem) = self.missing_parts(self.create_table_on_init).await? else {
            self.check_privileges().await?;
            return Ok(facts);
        };
        if !self.create_table_on_init {
            return Err(Error::TableMissing {
                table: schema::qualified_table(&self.schema),
                problem,
            });
        }
        self.migrate().await?;
        if let Some(problem) = self.missing_parts(true).await? {
            return Err(Error::TableMissing {
                table: schema::qualified_table(&self.schema),
                problem: format!("{problem} even after the migration ran"),
            });
        }
        self.check_privileges().await?;
        Ok(facts)
    }

    /// Runs the up migration. Terms need no step after it: a sequence created afresh (or set back) is
    /// overtaken by the clock and by a remaining row's own term in the acquisition itself.
    async fn migrate(&self) -> Result<()> {
        let (bound, sql) = bounded_up_sql(&self.schema, self.timeout);
        with_conn!(self, "migrate", bound, |c| sqlx::raw_sql(AssertSqlSafe(
            sql
        ))
        .execute(c))?;
        Ok(())
    }
}

/// The up migration of `schema` as run at start, with the time it may take (at least 30 s, more with a
/// longer operation timeout). The DDL may wait on the DDL advisory lock of a concurrent starter, so it gets
/// a longer bound, on the server too: the hub's sessions have statement_timeout = the operation timeout. A
/// bounded wait for the table's lock, so the elections' own statements never queue behind a long
/// transaction holding it. SET LOCAL: only for this run of the script.
pub(crate) fn bounded_up_sql(schema: &str, operation_timeout: Duration) -> (Duration, String) {
    let bound = operation_timeout.max(Duration::from_secs(30));
    let sql = format!(
        "SET LOCAL statement_timeout = {};\nSET LOCAL lock_timeout = '10s';\n{}",
        bound.as_millis(),
        schema::up_sql(schema)
    );
    (bound, sql)
}

impl Backend for PgBackend {
    fn prepare(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.member.get_or_init(|| {
                self.hub
                    .join(&self.schema, self.lock_id, self.observer.0.as_ref())
            });
            let key = (
                self.schema.clone(),
                self.create_table_on_init,
                self.quarantine_on,
            );
            let facts = self.hub.start_checks(key, || self.check_start()).await?;
            if let Some(seen) = facts.identity {
                self.judge_identity(seen);
            }
            self.identity_sql.get_or_init(|| facts.identity_sql);
            Ok(())
        })
    }

    fn observe(&self) -> BoxFuture<'_, Result<Option<ObservedLease>>> {
        Box::pin(async move {
            if let Some(member) = self.batched() {
                return member.observe(self.batch_window).await;
            }
            let row = with_conn!(self, "observe", |c| sqlx::query(AssertSqlSafe(
                self.sql.observe.clone()
            ))
            .persistent(self.setup.persistent())
            .bind(self.lock_id)
            .fetch_optional(c))?;
            Ok(row.map(|row| observed_from(&row, 0)))
        })
    }

    fn try_acquire(&self) -> BoxFuture<'_, Result<AcquireOutcome>> {
        Box::pin(async move {
            let identity_sql = self.identity_sql.get().cloned().flatten();
            // The identity is read on the connection the acquisition then uses (the same server), and
            // only here: renewals and reads never pay for it.
            let step = with_conn!(self, "acquire", |c| async {
                if let Some(sql) = identity_sql {
                    let row = sqlx::query(AssertSqlSafe(sql))
                        .persistent(self.setup.persistent())
                        .fetch_one(&mut *c)
                        .await?;
                    if let Some((retry_in, reason)) = self.judge_identity(ServerIdentity {
                        system_id: row.get(0),
                        timeline: row.get(1),
                    }) {
                        return Ok(AcquireStep::Deferred(retry_in, reason));
                    }
                }
                let row = sqlx::query(AssertSqlSafe(self.sql.acquire.clone()))
                    .persistent(self.setup.persistent())
                    .bind(self.lock_id)
                    .bind(&*self.instance_id)
                    .bind(self.lease_ms)
                    .bind(self.namespace)
                    .bind(&self.sql.sequence)
                    .bind(self.term_lock)
                    .fetch_optional(&mut *c)
                    .await?;
                Ok::<_, sqlx::Error>(AcquireStep::Tried(row))
            })?;
            let row = match step {
                AcquireStep::Deferred(retry_in, reason) => {
                    return Ok(AcquireOutcome::Deferred { retry_in, reason });
                }
                AcquireStep::Tried(row) => row,
            };
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
            if let Some(member) = self.batched() {
                return member
                    .renew(
                        self.instance_id.clone(),
                        term_param(term),
                        self.lease_ms,
                        self.batch_window,
                    )
                    .await;
            }
            let done = with_conn!(self, "renew", |c| sqlx::query(AssertSqlSafe(
                self.sql.renew.clone()
            ))
            .persistent(self.setup.persistent())
            .bind(self.lock_id)
            .bind(&*self.instance_id)
            .bind(term_param(term))
            .bind(self.lease_ms)
            .execute(c))?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn release(&self, term: u64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let payload = listen::payload(self.namespace, self.lock_id);
            let rows = with_conn!(self, "release", |c| sqlx::query(AssertSqlSafe(
                self.sql.release.clone()
            ))
            .persistent(self.setup.persistent())
            .bind(self.lock_id)
            .bind(&*self.instance_id)
            .bind(term_param(term))
            .bind(RELEASE_CHANNEL)
            .bind(&payload)
            .fetch_all(c))?;
            Ok(rows.len() == 1)
        })
    }

    fn cleanup(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            if let Some(member) = self.batched()
                && !member.claim_cleanup(self.clean_interval)
            {
                return Ok(0);
            }
            let done = with_conn!(self, "cleanup", |c| sqlx::query(AssertSqlSafe(
                self.sql.cleanup.clone()
            ))
            .persistent(self.setup.persistent())
            .execute(c))?;
            Ok(done.rows_affected())
        })
    }

    fn released(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match self.member.get() {
                Some(member) => member.released().await,
                None => std::future::pending().await,
            }
        })
    }

    fn wakes_on_release(&self) -> bool {
        self.hub.listening()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(member) = self.member.get() {
                member.unregister();
            }
            self.hub.leave().await;
        })
    }
}

fn term_param(term: u64) -> i64 {
    i64::try_from(term).unwrap_or(i64::MAX)
}

/// The columns [`observed_from`] reads: holder, term, and the time left by the database clock (clamped to
/// a day either way, so an absurd `expires_at` cannot overflow the client's duration).
pub(crate) const LEASE_COLUMNS: &str = "leader_id, term, (EXTRACT(EPOCH FROM (LEAST(GREATEST(expires_at, \
     clock_timestamp() - interval '1 day'), clock_timestamp() + interval '1 day') \
     - clock_timestamp())) * 1000)::float8 AS remaining_ms";

/// A lease from a row whose columns from `at` on are [`LEASE_COLUMNS`].
pub(crate) fn observed_from(row: &sqlx::postgres::PgRow, at: usize) -> ObservedLease {
    let remaining_ms: f64 = row.get(at + 2);
    ObservedLease {
        leader_id: row.get(at),
        term: u64::try_from(row.get::<i64, _>(at + 1)).unwrap_or(0),
        expires_in: (remaining_ms > 0.0)
            .then(|| Duration::try_from_secs_f64(remaining_ms / 1000.0).ok())
            .flatten(),
    }
}
