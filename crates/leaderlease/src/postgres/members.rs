//! Fleet membership on PostgreSQL: one row per member in `"schema".leader_lease_member`, renewed through
//! the hub's batcher, so that a member renewal rides on the statement that renews the hub's leases when
//! one is going out (no statement of its own, no statement per name); a hub that renews no lease sends
//! one statement per member renewal interval. Joins and leaves are announced on the release channel
//! (payload `<member namespace>:0`), so the other hubs read the list again at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool, Row};
use tokio::sync::Notify;

use super::batch::Batcher;
use super::conn::{PgSettings, SessionSetup, with_conn};
use super::hub::PgHub;
use super::listen::{self, RELEASE_CHANNEL};
use crate::backend::BoxFuture;
use crate::config::CLEANUP_GRACE;
use crate::fleet::{MemberConfig, MemberStore, MemberView, Membership};
use crate::schema::{self, quote_ident};
use crate::{Error, Result};

/// Name of the member table inside its schema.
pub const MEMBER_TABLE: &str = "leader_lease_member";

/// Longest a member renewal waits for a lease renewal of its hub to ride on.
const MEMBER_WINDOW: Duration = Duration::from_millis(1000);

/// `"schema".leader_lease_member`, quoted.
pub(crate) fn member_table(schema: &str) -> String {
    format!("{}.{MEMBER_TABLE}", quote_ident(schema))
}

/// The common table expressions of a member renewal whose parameters start at `$p`: id, version and
/// lease in milliseconds. `me` upserts this member's row (a row that had expired gets a new start time),
/// `gone` deletes rows expired for longer than the cleanup grace, `mm` is the live members, this one
/// included (the statement's snapshot does not see its own upsert, hence the union).
pub(super) fn member_ctes(schema: &str, p: usize) -> String {
    let m = member_table(schema);
    let (id, version, ms) = (p, p + 1, p + 2);
    let grace_ms = CLEANUP_GRACE.as_millis();
    format!(
        "me AS (INSERT INTO {m} AS x (id, version, started_at, renewed_at, expires_at) \
             SELECT ${id}::text, ${version}::text, n.t, n.t, n.t + ${ms}::float8 * interval '1 millisecond' \
             FROM (SELECT clock_timestamp() AS t) n \
             ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, renewed_at = EXCLUDED.renewed_at, \
                 expires_at = EXCLUDED.expires_at, \
                 started_at = CASE WHEN x.expires_at > EXCLUDED.renewed_at THEN x.started_at \
                                   ELSE EXCLUDED.started_at END \
             RETURNING x.id, x.version, x.started_at, x.expires_at), \
         gone AS (DELETE FROM {m} g WHERE g.id <> ${id}::text \
             AND g.expires_at < clock_timestamp() - {grace_ms} * interval '1 millisecond' RETURNING 1), \
         mm AS (SELECT id, version, started_at, expires_at FROM me \
             UNION ALL SELECT o.id, o.version, o.started_at, o.expires_at FROM {m} o \
             WHERE o.id <> ${id}::text AND o.expires_at > clock_timestamp())"
    )
}

/// The member columns a renewal returns: id, version, start (µs since the epoch) and time left (ms).
pub(super) const MEMBER_COLUMNS: &str = "mm.id, mm.version, \
     (extract(epoch FROM mm.started_at) * 1000000)::int8, \
     (extract(epoch FROM (mm.expires_at - clock_timestamp())) * 1000)::float8";

/// A member renewal on its own.
pub(super) fn member_sql(schema: &str) -> String {
    format!(
        "WITH {} SELECT {MEMBER_COLUMNS} FROM mm",
        member_ctes(schema, 1)
    )
}

/// A member from a row whose columns from `at` on are [`MEMBER_COLUMNS`].
pub(super) fn member_from(row: &sqlx::postgres::PgRow, at: usize) -> MemberView {
    let ms: f64 = row.get(at + 3);
    MemberView {
        id: row.get(at),
        version: row.get(at + 1),
        started_at_us: row.get(at + 2),
        expires_in: Duration::try_from_secs_f64(ms.max(0.0) / 1000.0).unwrap_or_default(),
    }
}

/// Every live member of `schema`, for tools looking from outside (`leaderlease status`); `None` when the
/// member table does not exist (a schema migrated before fleets).
pub async fn list_members(
    pool: &PgPool,
    schema: &str,
) -> Result<Option<Vec<crate::fleet::MemberInfo>>> {
    let table = member_table(schema);
    let db = |source| Error::Database {
        operation: "list members",
        source,
    };
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(pool)
        .await
        .map_err(db)?;
    if !exists {
        return Ok(None);
    }
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, version, (extract(epoch FROM started_at) * 1000000)::int8 FROM {table} \
         WHERE expires_at > clock_timestamp() ORDER BY id"
    )))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    Ok(Some(
        rows.iter()
            .map(|r| crate::fleet::MemberInfo {
                id: r.get(0),
                version: r.get(1),
                started_at_us: r.get(2),
            })
            .collect(),
    ))
}

/// The member store of one hub and schema.
pub(crate) struct PgMembers {
    hub: PgHub,
    pub(super) pool: PgPool,
    pub(super) setup: SessionSetup,
    pub(super) timeout: Duration,
    batcher: Batcher,
    schema: String,
    create_table_on_init: bool,
    id: Arc<str>,
    version: Option<Arc<str>>,
    lease_ms: f64,
    window: Duration,
    join_sql: String,
    leave_sql: String,
    payload: String,
    joined: AtomicBool,
    changed: Arc<Notify>,
    key: (i32, i32),
}

impl PgHub {
    /// Joins the fleet of `config.schema()` as a member (creating the member table with the lease table if
    /// it is missing and `create_table_on_init`), and keeps the membership renewed, riding on this hub's
    /// batched lease renewals. The hub stays open until the membership is left.
    pub async fn join_fleet(&self, config: MemberConfig) -> Result<Membership> {
        let store = PgMembers::new(self, &config);
        if let Err(e) = store.prepare().await {
            store.close().await;
            return Err(e);
        }
        Membership::start(store, config).await
    }

    /// Joins the fleet on the process's shared hub for `settings` and `operation_timeout` (the hub of
    /// [`Elector::connect_shared_settings`](crate::Elector::connect_shared_settings) with the same
    /// operation timeout), which stays open while the membership lasts.
    pub async fn join_fleet_shared(
        settings: &PgSettings,
        operation_timeout: Duration,
        config: MemberConfig,
    ) -> Result<Membership> {
        let hub = PgHub::shared_settings(settings, operation_timeout).await?;
        let joined = hub.join_fleet(config).await;
        // The reservation of `shared_settings`: the membership counts as a user of its own.
        hub.leave().await;
        joined
    }
}

impl PgMembers {
    fn new(hub: &PgHub, config: &MemberConfig) -> Self {
        hub.enter();
        let schema = config.schema().to_owned();
        let key = (schema::member_namespace(&schema), 0);
        let changed = hub.wake_on(key);
        let ctes = member_ctes(&schema, 1);
        Self {
            pool: hub.pool().clone(),
            setup: hub.inner.setup.clone(),
            timeout: hub.inner.timeout,
            batcher: hub.batcher_for(&schema),
            hub: hub.clone(),
            create_table_on_init: config.create_table_on_init(),
            id: config.id().into(),
            version: config.version().map(Into::into),
            lease_ms: config.lease_duration().as_secs_f64() * 1000.0,
            window: (config.renewal_interval() / 3).min(MEMBER_WINDOW),
            join_sql: format!(
                "WITH {ctes} SELECT {MEMBER_COLUMNS} FROM mm, (SELECT pg_notify($4::text, $5::text)) n"
            ),
            leave_sql: format!(
                "WITH d AS (DELETE FROM {} WHERE id = $1 RETURNING 1) SELECT pg_notify($2, $3)::text FROM d",
                member_table(&schema)
            ),
            payload: listen::payload(key.0, key.1),
            schema,
            joined: AtomicBool::new(false),
            changed,
            key,
        }
    }

    /// Makes sure the member table exists (running the migration when allowed).
    async fn prepare(&self) -> Result<()> {
        let table = member_table(&self.schema);
        let exists: bool = with_conn!(self, "join fleet", |c| sqlx::query_scalar(
            "SELECT to_regclass($1) IS NOT NULL"
        )
        .persistent(self.setup.persistent())
        .bind(&table)
        .fetch_one(c))?;
        if exists {
            return Ok(());
        }
        if !self.create_table_on_init {
            return Err(Error::TableMissing {
                table,
                problem:
                    "does not exist (a schema migrated before fleets: run the migration again)"
                        .to_owned(),
            });
        }
        let (bound, sql) = super::bounded_up_sql(&self.schema, self.timeout);
        with_conn!(self, "migrate", bound, |c| sqlx::raw_sql(AssertSqlSafe(
            sql
        ))
        .execute(c))?;
        Ok(())
    }
}

impl MemberStore for PgMembers {
    fn renew(&self, prompt: bool) -> BoxFuture<'_, Result<Vec<MemberView>>> {
        Box::pin(async move {
            if self.joined.load(Ordering::Acquire) {
                return self
                    .batcher
                    .member(
                        self.id.clone(),
                        self.version.clone(),
                        self.lease_ms,
                        if prompt { Duration::ZERO } else { self.window },
                    )
                    .await;
            }
            // The first renewal joins, on a statement of its own that announces it.
            let rows = with_conn!(self, "join fleet", |c| sqlx::query(AssertSqlSafe(
                self.join_sql.as_str()
            ))
            .persistent(self.setup.persistent())
            .bind(&*self.id)
            .bind(self.version.as_deref())
            .bind(self.lease_ms)
            .bind(RELEASE_CHANNEL)
            .bind(&self.payload)
            .fetch_all(c))?;
            self.joined.store(true, Ordering::Release);
            Ok(rows.iter().map(|r| member_from(r, 0)).collect())
        })
    }

    fn changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.changed.notified())
    }

    fn leave(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if !self.joined.load(Ordering::Acquire) {
                return Ok(());
            }
            with_conn!(self, "leave fleet", |c| sqlx::query(AssertSqlSafe(
                self.leave_sql.as_str()
            ))
            .persistent(self.setup.persistent())
            .bind(&*self.id)
            .bind(RELEASE_CHANNEL)
            .bind(&self.payload)
            .fetch_all(c))?;
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.hub.unwake(self.key, &self.changed);
            self.hub.leave().await;
        })
    }
}
