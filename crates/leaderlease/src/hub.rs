//! What the PostgreSQL elections of one process share: one pool, one `LISTEN` connection that wakes
//! waiting candidates the moment a lease is released, and a batcher that folds the renewals and lease
//! reads of many elections into one statement each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Row};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Level, debug, info_span};

use crate::events::{Event, EventKind, EventObserver, deliver};

use crate::backend::ObservedLease;
use crate::conn::{PgSettings, Pooler, SYNC_COMMIT_WEAK_SQL, SessionSetup};
use crate::schema;
use crate::{Error, Result};

/// Connections a pool opened by [`PgHub::connect`] (or [`crate::PgBackend::connect`]) may hold, besides
/// the one `LISTEN` connection: enough for the election loops, a release or cleanup racing with them,
/// and the batched statements of many elections.
pub const OWNED_POOL_MAX_CONNECTIONS: u32 = 4;

/// How long the first connection at start may take (the operation timeout applies if it is longer).
pub const START_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `NOTIFY` channel on which a release is announced. The payload is `<namespace>:<lock id>`, where
/// the namespace is the schema's advisory-lock namespace ([`schema::lock_namespace`]).
pub const RELEASE_CHANNEL: &str = "leaderlease_release";

/// How often a hub checks that its `LISTEN` connection still delivers notifications (see
/// [`PgHub::listening`]).
pub const LISTEN_PROBE_INTERVAL: Duration = Duration::from_secs(15);

/// Longest a renewal or lease read waits to be batched with those of other elections of the same hub
/// (it is also at most a tenth of the election's renewal interval). A lone election never waits.
pub const MAX_BATCH_WINDOW: Duration = Duration::from_millis(100);

/// Most rows one batched statement carries.
const MAX_BATCH: usize = 1000;

/// Runs `$body` (which uses the connection bound to `$c`) within the operation timeout, the wait for a
/// connection included. A connection whose statement timed out or broke is closed, not pooled again, so
/// a half-finished exchange is never reused. Behind a transaction pooler the statement runs in a
/// transaction of its own, opened with the `SET LOCAL`s of [`SessionSetup`](crate::conn::SessionSetup)
/// and committed after it (any failure closes the connection, which ends that transaction). `$self`
/// needs `pool`, `timeout` and `setup` fields.
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
        let begin = $self.setup.begin.clone();
        let in_transaction = begin.is_some();
        let outcome = timeout_at(deadline, async {
            if let Some(begin) = begin {
                sqlx::raw_sql(AssertSqlSafe(begin.to_string()))
                    .execute(&mut *conn)
                    .await?;
            }
            let value = {
                let $c = &mut *conn;
                $body.await?
            };
            if in_transaction {
                sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
            }
            Ok::<_, sqlx::Error>(value)
        })
        .await;
        match outcome {
            Err(_) => {
                conn.close_on_drop();
                Err(Error::Timeout {
                    operation: $op,
                    after: timeout,
                })
            }
            Ok(Err(source)) => {
                if in_transaction || !matches!(source, sqlx::Error::Database(_)) {
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

/// The wake-up of each election of a hub, by `(namespace, lock id)`.
type Waiters = Arc<Mutex<HashMap<(i32, i32), Vec<Weak<Notify>>>>>;
/// An election's event observer, held weakly by the hub.
type WeakFn = Weak<dyn Fn(&Event) + Send + Sync>;
/// The event observers of the hub's elections, for the events of the shared `LISTEN` connection.
type Observers = Arc<Mutex<Vec<WeakFn>>>;

/// Logs a hub event once and hands it to every live observer of the hub's elections.
fn hub_report(observers: &Observers, event: Event) {
    event.trace();
    let live: Vec<_> = {
        let mut list = lock(observers);
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    };
    for observer in live {
        deliver(&observer, &event);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection to PostgreSQL that many elections of one process share: one pool, one `LISTEN`
/// connection for release notifications, and batched renewals and lease reads, so that the database
/// load of a process stays nearly flat as its elections grow.
///
/// Build one with [`PgHub::connect`] or [`PgHub::with_pool`] and start elections on it with
/// [`crate::Elector::with_hub`]; close it with [`PgHub::close`] after their shutdown. Everything that
/// uses a hub must run on the Tokio runtime it was created on. [`crate::Elector::connect`] and
/// [`crate::Elector::with_pool`] give each election a hub of its own.
///
/// ```no_run
/// # async fn demo() -> leaderlease::Result<()> {
/// use std::time::Duration;
/// use leaderlease::{Elector, PgHub};
///
/// let hub = PgHub::connect("postgres://postgres@127.0.0.1/test", Duration::from_secs(2)).await?;
/// let mut electors = Vec::new();
/// for lock_id in 1..=100 {
///     electors.push(Elector::builder().with_lock_id(lock_id).start_with_hub(&hub).await?);
/// }
/// for e in &electors {
///     e.shutdown().await?;
/// }
/// hub.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgHub {
    pub(crate) inner: Arc<HubInner>,
}

pub(crate) struct HubInner {
    pub(crate) pool: PgPool,
    owns_pool: bool,
    /// Operation timeout of the batched statements.
    pub(crate) timeout: Duration,
    /// How the sessions get their settings, by pooler.
    pub(crate) setup: SessionSetup,
    /// Closed by the last election that leaves it (hubs made for one election, and shared ones).
    close_when_unused: bool,
    users: AtomicUsize,
    closed: AtomicBool,
    listening: Arc<AtomicBool>,
    waiters: Waiters,
    observers: Observers,
    batchers: Mutex<HashMap<String, Batcher>>,
    stats: Arc<Counters>,
    stop: CancellationToken,
    /// Where the `LISTEN` task connects; taken when it starts (at the first election's start).
    listen_options: Mutex<Option<PgConnectOptions>>,
    /// The `LISTEN` task, awaited at shutdown so that its connection is closed when the hub is.
    listen_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Key in the process-wide registry of [`PgHub::shared`].
    shared_key: Option<String>,
}

impl std::fmt::Debug for HubInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgHub")
            .field("users", &self.users.load(Ordering::Relaxed))
            .field("listening", &self.listening.load(Ordering::Relaxed))
            .field("owns_pool", &self.owns_pool)
            .finish()
    }
}

impl Drop for HubInner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

static SHARED: LazyLock<Mutex<HashMap<String, Weak<HubInner>>>> = LazyLock::new(Default::default);

impl PgHub {
    /// Opens a pool of its own (at most [`OWNED_POOL_MAX_CONNECTIONS`] connections, plus one for `LISTEN`)
    /// to `url`, after checking with one direct connection that the database answers (so that the error
    /// says why it does not: refused, unknown host, authentication, no such database). Its sessions get
    /// `statement_timeout` and `idle_in_transaction_session_timeout` = `operation_timeout`, and
    /// `application_name` `leaderlease` unless the URL sets one.
    pub async fn connect(url: &str, operation_timeout: Duration) -> Result<Self> {
        Self::open(&PgSettings::from_url(url), operation_timeout, false, None).await
    }

    /// Like [`connect`](Self::connect), from settings given field by field (TLS certificates as values,
    /// a pooler in between; see [`PgSettings`]).
    pub async fn connect_settings(
        settings: &PgSettings,
        operation_timeout: Duration,
    ) -> Result<Self> {
        Self::open(settings, operation_timeout, false, None).await
    }

    /// The hub of this process for `url` and `operation_timeout`, opened on first use and closed when the
    /// last election on it has stopped. Every election of the process that asks for the same URL and
    /// timeout shares its pool, its `LISTEN` connection and its batches. All must run on one Tokio
    /// runtime (as in a Node.js process, or an application with one runtime).
    pub async fn shared(url: &str, operation_timeout: Duration) -> Result<Self> {
        Self::shared_settings(&PgSettings::from_url(url), operation_timeout).await
    }

    /// Like [`shared`](Self::shared), from settings given field by field: elections share a hub when
    /// all their settings are equal.
    pub async fn shared_settings(
        settings: &PgSettings,
        operation_timeout: Duration,
    ) -> Result<Self> {
        let key = format!(
            "{}\n{}",
            operation_timeout.as_millis(),
            settings.sharing_key()
        );
        let found = Self::reserve(&mut lock(&SHARED), &key);
        if let Some(hub) = found {
            return Ok(hub);
        }
        let hub = Self::open(settings, operation_timeout, true, Some(key.clone())).await?;
        // Another caller may have opened one meanwhile: use the first, close ours.
        let existing = {
            let mut map = lock(&SHARED);
            let existing = Self::reserve(&mut map, &key);
            if existing.is_none() {
                hub.register(&mut map, key);
            }
            existing
        };
        match existing {
            Some(first) => {
                hub.close().await;
                Ok(first)
            }
            None => Ok(hub),
        }
    }

    /// The live hub registered under `key`, with one user reserved for the caller.
    fn reserve(map: &mut HashMap<String, Weak<HubInner>>, key: &str) -> Option<Self> {
        map.retain(|_, w| w.strong_count() > 0);
        let inner = map.get(key).and_then(Weak::upgrade)?;
        if inner.closed.load(Ordering::Acquire) {
            return None;
        }
        inner.users.fetch_add(1, Ordering::AcqRel);
        Some(Self { inner })
    }

    /// Registers this new hub under `key`, with one user reserved for the caller.
    fn register(&self, map: &mut HashMap<String, Weak<HubInner>>, key: String) {
        self.inner.users.fetch_add(1, Ordering::AcqRel);
        map.insert(key, Arc::downgrade(&self.inner));
    }

    pub(crate) async fn open(
        settings: &PgSettings,
        timeout: Duration,
        close_when_unused: bool,
        shared_key: Option<String>,
    ) -> Result<Self> {
        let mut options = settings.connect_options()?;
        if options.get_application_name().is_none() {
            options = options.application_name("leaderlease");
        }
        if settings.pooler == Pooler::None {
            // Startup options: no statement to run. A pooler refuses them; it gets `SET`s instead.
            let timeout_ms = timeout.as_millis().to_string();
            options = options.options([
                ("statement_timeout", timeout_ms.as_str()),
                ("idle_in_transaction_session_timeout", timeout_ms.as_str()),
            ]);
        }
        let setup = SessionSetup::new(settings.pooler, timeout);
        Self::open_setup(options, setup, timeout, close_when_unused, shared_key).await
    }

    /// Like [`connect`](Self::connect), from parsed options (used as given).
    pub async fn connect_with(
        options: PgConnectOptions,
        operation_timeout: Duration,
    ) -> Result<Self> {
        Self::open_with(options, operation_timeout, false, None).await
    }

    pub(crate) async fn open_with(
        options: PgConnectOptions,
        timeout: Duration,
        close_when_unused: bool,
        shared_key: Option<String>,
    ) -> Result<Self> {
        let setup = SessionSetup::new(Pooler::None, timeout);
        Self::open_setup(options, setup, timeout, close_when_unused, shared_key).await
    }

    async fn open_setup(
        options: PgConnectOptions,
        setup: SessionSetup,
        timeout: Duration,
        close_when_unused: bool,
        shared_key: Option<String>,
    ) -> Result<Self> {
        let target = match options.get_socket() {
            Some(dir) => format!("socket in {}", dir.display()),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        let wait = timeout.max(START_CONNECT_TIMEOUT);
        let after_connect = setup.after_connect.clone();
        let direct = setup.pooler == Pooler::None;
        let check = async {
            let mut conn = PgConnection::connect_with(&options).await?;
            if let Some(sql) = &after_connect {
                sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                    .execute(&mut conn)
                    .await?;
            }
            // What the sessions' synchronous_commit will be (role, database, server, URL options).
            let weak: bool = if direct {
                sqlx::query_scalar(SYNC_COMMIT_WEAK_SQL)
                    .fetch_one(&mut conn)
                    .await?
            } else {
                false
            };
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(weak)
        };
        let options = match tokio::time::timeout(wait, check).await {
            Err(_) => return Err(unreachable_error(sqlx::Error::PoolTimedOut, &target, wait)),
            Ok(Err(e)) => return Err(unreachable_error(e, &target, wait)),
            // A later `-c` wins over an earlier one (the URL's own `options`).
            Ok(Ok(true)) => options.options([("synchronous_commit", "on")]),
            Ok(Ok(false)) => options,
        };
        let pool = PgPoolOptions::new()
            .after_connect(move |conn, _| {
                let sql = after_connect.clone();
                Box::pin(async move {
                    if let Some(sql) = sql {
                        sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .max_connections(OWNED_POOL_MAX_CONNECTIONS)
            .min_connections(0)
            // Every runtime operation is bounded by the operation timeout; this only bounds opening a
            // connection, which may take longer than one operation on a loaded machine.
            .acquire_timeout(START_CONNECT_TIMEOUT)
            .idle_timeout(Some(Duration::from_secs(60)))
            .test_before_acquire(false)
            .connect_lazy_with(options.clone());
        Ok(Self::build(
            pool,
            true,
            options,
            setup,
            timeout,
            close_when_unused,
            shared_key,
        ))
    }

    /// A hub on a pool the application owns: its batched statements use that pool, and one extra
    /// connection (opened with the pool's settings) listens for releases. [`close`](Self::close) leaves
    /// the pool open. Statement timeouts rest on the client side (`operation_timeout`).
    pub fn with_pool(pool: PgPool, operation_timeout: Duration) -> Self {
        let options = (*pool.connect_options()).clone();
        Self::build(
            pool,
            false,
            options,
            SessionSetup::untouched(),
            operation_timeout,
            false,
            None,
        )
    }

    /// The process's hub for an application pool (keyed by the pool's identity and the timeout), with
    /// one user reserved for the caller; it closes (leaving the pool open) with its last election.
    pub(crate) fn shared_for_pool(pool: PgPool, timeout: Duration) -> Self {
        let options = pool.connect_options();
        let key = format!("{}\npool:{:p}", timeout.as_millis(), Arc::as_ptr(&options));
        let mut map = lock(&SHARED);
        if let Some(hub) = Self::reserve(&mut map, &key) {
            return hub;
        }
        let hub = Self::build(
            pool,
            false,
            (*options).clone(),
            SessionSetup::untouched(),
            timeout,
            true,
            Some(key.clone()),
        );
        hub.register(&mut map, key);
        hub
    }

    fn build(
        pool: PgPool,
        owns_pool: bool,
        options: PgConnectOptions,
        setup: SessionSetup,
        timeout: Duration,
        close_when_unused: bool,
        shared_key: Option<String>,
    ) -> Self {
        // Behind a transaction pooler a LISTEN holds nothing: no LISTEN connection, candidates poll.
        let listen_options = (setup.pooler != Pooler::Transaction).then_some(options);
        let inner = Arc::new(HubInner {
            pool,
            owns_pool,
            timeout,
            setup,
            close_when_unused,
            users: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            listening: Arc::new(AtomicBool::new(false)),
            waiters: Arc::default(),
            observers: Arc::default(),
            batchers: Mutex::default(),
            stats: Arc::default(),
            stop: CancellationToken::new(),
            listen_options: Mutex::new(listen_options),
            listen_task: Mutex::new(None),
            shared_key,
        });
        Self { inner }
    }

    /// The pooler the hub's connections go through, as it was told.
    pub fn pooler(&self) -> Pooler {
        self.inner.setup.pooler
    }

    /// The pool the hub's elections use.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// True while the `LISTEN` connection is up and its last probe (a notification sent through the
    /// pool, at connection and every [`LISTEN_PROBE_INTERVAL`]) came back: a release then wakes this hub's
    /// waiting candidates at once, and they sleep until the observed lease's expiry instead of polling.
    /// While it is down, or where notifications do not arrive (e.g. PgBouncer in transaction mode), they
    /// poll.
    pub fn listening(&self) -> bool {
        self.inner.listening.load(Ordering::Acquire)
    }

    /// How much batching has saved so far: statements run by the batchers, the renewals and lease reads
    /// they carried, and the shared cleanups.
    pub fn batch_stats(&self) -> BatchStats {
        BatchStats {
            statements: self.inner.stats.statements.load(Ordering::Relaxed),
            requests: self.inner.stats.requests.load(Ordering::Relaxed),
            cleanups: self.inner.stats.cleanups.load(Ordering::Relaxed),
        }
    }

    /// Stops the `LISTEN` connection and the batchers, and closes the pool if the hub opened it. Call
    /// it after the elections on it have shut down.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.shutdown_now().await;
    }

    async fn shutdown_now(&self) {
        self.inner.stop.cancel();
        self.inner.listening.store(false, Ordering::Release);
        lock(&self.inner.batchers).clear();
        // The LISTEN task closes its connection as it ends; bounded like the pool below.
        let listen_task = lock(&self.inner.listen_task).take();
        if let Some(task) = listen_task {
            let _ = tokio::time::timeout(self.inner.timeout, task).await;
        }
        if self.inner.owns_pool {
            // Waits for checked-out connections; bounded so a hung socket cannot hold shutdown.
            let _ = tokio::time::timeout(self.inner.timeout, self.inner.pool.close()).await;
        }
    }

    /// Registers an election of `lock_id` in `schema`: its wake-up on release, and its place in the
    /// batches.
    /// Must be called within the hub's Tokio runtime.
    pub(crate) fn join(
        &self,
        schema: &str,
        lock_id: i32,
        observer: Option<&EventObserver>,
    ) -> Member {
        let observer = observer.map(Arc::downgrade);
        if let Some(o) = &observer {
            lock(&self.inner.observers).push(o.clone());
        }
        if let Some(options) = lock(&self.inner.listen_options).take() {
            let listener = listen(
                options,
                self.inner.pool.clone(),
                self.inner.timeout,
                self.inner.waiters.clone(),
                self.inner.listening.clone(),
                self.inner.observers.clone(),
                self.inner.stop.clone(),
            );
            let task = tokio::spawn(listener.instrument(info_span!("leaderlease_listener")));
            *lock(&self.inner.listen_task) = Some(task);
        }
        let namespace = schema::lock_namespace(schema);
        let released = Arc::new(Notify::new());
        lock(&self.inner.waiters)
            .entry((namespace, lock_id))
            .or_default()
            .push(Arc::downgrade(&released));
        let batcher = {
            let mut batchers = lock(&self.inner.batchers);
            batchers
                .entry(schema.to_owned())
                .or_insert_with(|| Batcher::spawn(&self.inner, schema))
                .clone()
        };
        batcher.members.fetch_add(1, Ordering::AcqRel);
        Member {
            hub: self.clone(),
            key: (namespace, lock_id),
            released,
            batcher,
            observer: WeakObserver(observer),
        }
    }

    /// One more election uses the hub (until its [`leave`](Self::leave)).
    pub(crate) fn enter(&self) {
        self.inner.users.fetch_add(1, Ordering::AcqRel);
    }

    /// One election has stopped: closes the hub when it was the last and the hub closes when unused.
    pub(crate) async fn leave(&self) {
        let last = {
            let mut map = lock(&SHARED);
            let left = self.inner.users.fetch_sub(1, Ordering::AcqRel) - 1;
            let last = left == 0 && self.inner.close_when_unused;
            if last {
                self.inner.closed.store(true, Ordering::Release);
                if let Some(key) = &self.inner.shared_key
                    && map
                        .get(key)
                        .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.inner)))
                {
                    map.remove(key);
                }
            }
            last
        };
        if last {
            self.shutdown_now().await;
        }
    }
}

/// Counts of a hub's batchers (see [`PgHub::batch_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batched statements run.
    pub statements: u64,
    /// Renewals and lease reads they carried.
    pub requests: u64,
    /// Cleanups run by elections that shared the hub with others (at most one per schema per half
    /// cleanup interval).
    pub cleanups: u64,
}

#[derive(Debug, Default)]
struct Counters {
    statements: AtomicU64,
    requests: AtomicU64,
    cleanups: AtomicU64,
}

/// One election's membership in a hub.
#[derive(Debug)]
pub(crate) struct Member {
    hub: PgHub,
    key: (i32, i32),
    released: Arc<Notify>,
    batcher: Batcher,
    observer: WeakObserver,
}

/// The election's observer as the hub's list holds it (weakly), shown in `Debug` as present or not.
struct WeakObserver(Option<WeakFn>);

impl std::fmt::Debug for WeakObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

impl Member {
    /// Resolves when this election's lease is announced as released (or the `LISTEN` connection came
    /// back after an outage, when a release may have been missed).
    pub(crate) async fn released(&self) {
        self.released.notified().await;
    }

    /// True when other elections share the batcher, so that waiting a moment for a batch pays off.
    pub(crate) fn batched(&self) -> bool {
        self.batcher.members.load(Ordering::Acquire) > 1
    }

    /// Whether this election should run the cleanup now: the cleanup deletes long-expired leases of every
    /// lock id in the schema, so among the elections of one hub and schema it runs at most once per half
    /// `interval`; the others skip their turn.
    pub(crate) fn claim_cleanup(&self, interval: Duration) -> bool {
        let mut last = lock(&self.batcher.last_cleanup);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < interval / 2) {
            return false;
        }
        *last = Some(now);
        self.hub
            .inner
            .stats
            .cleanups
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    pub(crate) async fn renew(
        &self,
        leader_id: Arc<str>,
        term: i64,
        lease_ms: f64,
        window: Duration,
    ) -> Result<bool> {
        let (reply, rx) = oneshot::channel();
        self.batcher.send(Request::Renew {
            lock_id: self.key.1,
            leader_id,
            term,
            lease_ms,
            window,
            reply,
        })?;
        rx.await.unwrap_or(Err(Error::Shutdown))
    }

    pub(crate) async fn observe(&self, window: Duration) -> Result<Option<ObservedLease>> {
        let (reply, rx) = oneshot::channel();
        self.batcher.send(Request::Observe {
            lock_id: self.key.1,
            window,
            reply,
        })?;
        rx.await.unwrap_or(Err(Error::Shutdown))
    }

    /// Unregisters the election (the hub itself is left by its backend).
    pub(crate) fn unregister(&self) {
        {
            let mut waiters = lock(&self.hub.inner.waiters);
            if let Some(list) = waiters.get_mut(&self.key) {
                list.retain(|w| {
                    w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.released))
                });
                if list.is_empty() {
                    waiters.remove(&self.key);
                }
            }
        }
        if let Some(o) = &self.observer.0 {
            lock(&self.hub.inner.observers).retain(|w| !w.ptr_eq(o));
        }
        self.batcher.members.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps one `LISTEN` connection up while the hub lives, and wakes the elections named by each release
/// notification. After every (re)connection all elections of the hub are woken once, since a release may
/// have been missed while the connection was down.
///
/// The connection is trusted (`listening`) only while a probe gets through: at once after connecting and
/// every [`LISTEN_PROBE_INTERVAL`], a notification sent through the hub's pool must come back within
/// the probe timeout (twice the operation timeout, at least 2 s). Behind a pooler that does not keep a
/// session (PgBouncer in transaction mode), or on a connection that silently stopped delivering, the probe
/// fails, the candidates poll, and the connection is opened again after a pause (1 s, doubling up to
/// [`LISTEN_PROBE_INTERVAL`] while probes keep failing).
async fn listen(
    options: PgConnectOptions,
    main: PgPool,
    timeout: Duration,
    waiters: Waiters,
    listening: Arc<AtomicBool>,
    observers: Observers,
    stop: CancellationToken,
) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(START_CONNECT_TIMEOUT)
        .connect_lazy_with(options);
    let wake_all = || {
        for w in lock(&waiters).values().flatten() {
            if let Some(n) = w.upgrade() {
                n.notify_one();
            }
        }
    };
    let probe_timeout = (timeout * 2).max(Duration::from_secs(2));
    let mut failed_probes: u32 = 0;
    let hub_id: u32 = rand::random();
    let mut probes: u64 = 0;
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    'connect: while !stop.is_cancelled() {
        let connected = tokio::select! {
            _ = stop.cancelled() => break,
            r = async {
                let mut l = PgListener::connect_with(&pool).await?;
                l.listen(RELEASE_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            } => r,
        };
        let mut listener = match connected {
            Ok(l) => l,
            Err(e) => {
                if !warned {
                    hub_report(
                        &observers,
                        Event::new(
                            EventKind::ListenFailed,
                            Level::WARN,
                            "cannot LISTEN for releases; candidates poll until it works",
                        )
                        .error_text(&e),
                    );
                    warned = true;
                } else {
                    debug!(error = %e, "LISTEN connection failed; retrying");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        debug!("LISTEN connection open");
        backoff = Duration::from_millis(100);
        wake_all();
        // The reader owns the connection, so that waiting for a notification is never cancelled halfway
        // through a message; it ends with the connection or when dropped below.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                let next = listener.try_recv().await;
                let end = next.is_err();
                let item = next
                    .map(|n| n.map(|n| n.payload().to_owned()))
                    .map_err(|e| e.to_string());
                if tx.send(item).is_err() || end {
                    break;
                }
            }
        });
        let mut next_probe = Instant::now();
        let mut awaiting: Option<(String, Instant)> = None;
        let pause = loop {
            let wake = awaiting.as_ref().map_or(next_probe, |(_, until)| *until);
            tokio::select! {
                _ = stop.cancelled() => {
                    reader.abort();
                    break 'connect;
                }
                _ = tokio::time::sleep_until(wake) => {
                    if awaiting.take().is_some() {
                        let was = listening.swap(false, Ordering::AcqRel);
                        if was {
                            // Followers sleeping until an expiry plan again, now polling.
                            wake_all();
                        }
                        if was || !warned {
                            hub_report(
                                &observers,
                                Event::new(
                                    EventKind::ListenFailed,
                                    Level::WARN,
                                    "a probe notification did not come back on the LISTEN connection; \
                                     candidates poll until it does (behind a pooler in transaction mode \
                                     they always will)",
                                )
                                .reason(format!(
                                    "no probe notification within {probe_timeout:?}"
                                )),
                            );
                            warned = true;
                        }
                        failed_probes += 1;
                        break (Duration::from_secs(1) * (1 << failed_probes.min(4)) / 2)
                            .min(LISTEN_PROBE_INTERVAL);
                    }
                    probes += 1;
                    let token = format!("probe:{hub_id}:{probes}");
                    awaiting = Some((token.clone(), Instant::now() + probe_timeout));
                    next_probe = Instant::now() + LISTEN_PROBE_INTERVAL;
                    let main = main.clone();
                    let give_up = Instant::now() + probe_timeout;
                    // Sent through the pool, whose connections may just have been cut like the LISTEN
                    // one: a failed send is retried (on a fresh connection) until the probe's deadline.
                    tokio::spawn(async move {
                        while Instant::now() < give_up {
                            let send = sqlx::query("SELECT pg_notify($1, $2)")
                                .bind(RELEASE_CHANNEL)
                                .bind(&token)
                                .execute(&main);
                            match timeout_at(give_up, send).await {
                                Ok(Ok(_)) | Err(_) => return,
                                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                            }
                        }
                    });
                }
                item = rx.recv() => match item {
                    Some(Ok(Some(payload))) => {
                        if awaiting.as_ref().is_some_and(|(t, _)| *t == payload) {
                            awaiting = None;
                            failed_probes = 0;
                            if !listening.swap(true, Ordering::AcqRel) {
                                hub_report(
                                    &observers,
                                    Event::new(
                                        EventKind::Listening,
                                        Level::DEBUG,
                                        "listening for releases",
                                    ),
                                );
                                warned = false;
                            }
                        } else if let Some(key) = parse_payload(&payload)
                            && let Some(list) = lock(&waiters).get(&key)
                        {
                            for n in list.iter().filter_map(Weak::upgrade) {
                                n.notify_one();
                            }
                        }
                    }
                    // The connection was lost and has been opened again: probe it again.
                    Some(Ok(None)) => {
                        debug!("LISTEN connection reopened");
                        listening.store(false, Ordering::Release);
                        next_probe = Instant::now();
                        awaiting = None;
                        wake_all();
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "LISTEN connection lost");
                        break Duration::ZERO;
                    }
                    None => break Duration::ZERO,
                },
            }
        };
        reader.abort();
        if listening.swap(false, Ordering::AcqRel) {
            // Followers sleeping until an expiry (trusting the notifications) plan again, now polling.
            wake_all();
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    listening.store(false, Ordering::Release);
    pool.close().await;
}

/// The payload of a release notification for `lock_id` in the schema of `namespace`.
pub(crate) fn payload(namespace: i32, lock_id: i32) -> String {
    format!("{namespace}:{lock_id}")
}

fn parse_payload(p: &str) -> Option<(i32, i32)> {
    let (ns, id) = p.split_once(':')?;
    Some((ns.parse().ok()?, id.parse().ok()?))
}

enum Request {
    Renew {
        lock_id: i32,
        leader_id: Arc<str>,
        term: i64,
        lease_ms: f64,
        window: Duration,
        reply: oneshot::Sender<Result<bool>>,
    },
    Observe {
        lock_id: i32,
        window: Duration,
        reply: oneshot::Sender<Result<Option<ObservedLease>>>,
    },
}

impl Request {
    fn window(&self) -> Duration {
        match self {
            Request::Renew { window, .. } | Request::Observe { window, .. } => *window,
        }
    }
}

/// The batcher of one schema in a hub: a task that collects requests for up to the smallest window
/// among them, then runs one renewal statement and one read statement for all.
#[derive(Clone, Debug)]
struct Batcher {
    tx: mpsc::UnboundedSender<Request>,
    members: Arc<AtomicUsize>,
    /// When an election of this schema and hub last ran the cleanup (which covers every lock id).
    last_cleanup: Arc<Mutex<Option<Instant>>>,
}

impl Batcher {
    fn spawn(hub: &Arc<HubInner>, schema: &str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let runner = BatchRunner {
            pool: hub.pool.clone(),
            timeout: hub.timeout,
            setup: hub.setup.clone(),
            renew: renew_batch_sql(schema),
            observe: observe_batch_sql(schema),
            stats: hub.stats.clone(),
        };
        let stop = hub.stop.clone();
        tokio::spawn(
            runner
                .run(rx, stop)
                .instrument(info_span!("leaderlease_batcher")),
        );
        Self {
            tx,
            members: Arc::default(),
            last_cleanup: Arc::default(),
        }
    }

    fn send(&self, request: Request) -> Result<()> {
        self.tx.send(request).map_err(|_| Error::Shutdown)
    }
}

fn renew_batch_sql(schema: &str) -> String {
    let t = schema::qualified_table(schema);
    format!(
        "UPDATE {t} AS l SET expires_at = clock_timestamp() + r.ms * interval '1 millisecond', \
         renewed_at = clock_timestamp() \
         FROM unnest($1::int4[], $2::text[], $3::int8[], $4::float8[]) AS r(id, leader_id, term, ms) \
         WHERE l.id = r.id AND l.leader_id = r.leader_id AND l.term = r.term \
           AND l.expires_at > clock_timestamp() \
         RETURNING l.id, l.leader_id, l.term"
    )
}

fn observe_batch_sql(schema: &str) -> String {
    let t = schema::qualified_table(schema);
    format!("SELECT id, {LEASE_COLUMNS} FROM {t} WHERE id = ANY($1::int4[])")
}

struct BatchRunner {
    pool: PgPool,
    timeout: Duration,
    setup: SessionSetup,
    renew: String,
    observe: String,
    stats: Arc<Counters>,
}

/// What identifies a renewal in a batch: lock id, leader id and term. Two elections of one hub may share
/// the lock id and the leader id (a fixed instance id given to two workers, an election restarted inside
/// the process); only the term tells the holder of the row from the one retrying an earlier lease.
type RenewKey = (i32, Arc<str>, i64);
type RenewReply = (RenewKey, oneshot::Sender<Result<bool>>);
type ObserveReply = (i32, oneshot::Sender<Result<Option<ObservedLease>>>);

impl BatchRunner {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Request>, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            };
            let mut until = Instant::now() + first.window();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                tokio::select! {
                    biased;
                    r = rx.recv() => match r {
                        Some(r) => {
                            until = until.min(Instant::now() + r.window());
                            batch.push(r);
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
            let mut renews = Vec::new();
            let mut observes = Vec::new();
            let (mut ids, mut leaders, mut terms, mut ms) = (vec![], vec![], vec![], vec![]);
            for r in batch {
                match r {
                    Request::Renew {
                        lock_id,
                        leader_id,
                        term,
                        lease_ms,
                        reply,
                        ..
                    } => {
                        ids.push(lock_id);
                        leaders.push(leader_id.to_string());
                        terms.push(term);
                        ms.push(lease_ms);
                        renews.push(((lock_id, leader_id, term), reply));
                    }
                    Request::Observe { lock_id, reply, .. } => observes.push((lock_id, reply)),
                }
            }
            let statements = u64::from(!renews.is_empty()) + u64::from(!observes.is_empty());
            let requests = (renews.len() + observes.len()) as u64;
            self.stats
                .statements
                .fetch_add(statements, Ordering::Relaxed);
            self.stats.requests.fetch_add(requests, Ordering::Relaxed);
            let renewed = async {
                if !renews.is_empty() {
                    let out = self.renew_all(&ids, &leaders, &terms, &ms).await;
                    answer_renewals(renews, out);
                }
            };
            let read = async {
                if !observes.is_empty() {
                    let wanted: Vec<i32> = observes.iter().map(|(id, _)| *id).collect();
                    let out = self.observe_all(&wanted).await;
                    answer_reads(observes, out);
                }
            };
            tokio::join!(renewed, read);
        }
    }

    async fn renew_all(
        &self,
        ids: &[i32],
        leaders: &[String],
        terms: &[i64],
        ms: &[f64],
    ) -> Result<Vec<(i32, String, i64)>> {
        let rows = with_conn!(self, "renew", |c| sqlx::query(AssertSqlSafe(
            self.renew.as_str()
        ))
        .persistent(self.setup.persistent())
        .bind(ids)
        .bind(leaders)
        .bind(terms)
        .bind(ms)
        .fetch_all(c))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn observe_all(&self, ids: &[i32]) -> Result<Vec<(i32, ObservedLease)>> {
        let rows = with_conn!(self, "observe", |c| sqlx::query(AssertSqlSafe(
            self.observe.as_str()
        ))
        .persistent(self.setup.persistent())
        .bind(ids)
        .fetch_all(c))?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), observed_from(row, 1)))
            .collect())
    }
}

/// Tells each renewal whether its row was renewed: the row of its lock id, leader id and term.
fn answer_renewals(renews: Vec<RenewReply>, out: Result<Vec<(i32, String, i64)>>) {
    match out {
        Ok(done) => {
            for ((id, leader, term), reply) in renews {
                let ok = done
                    .iter()
                    .any(|(i, l, t)| *i == id && **l == *leader && *t == term);
                let _ = reply.send(Ok(ok));
            }
        }
        Err(e) => {
            for (_, reply) in renews {
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
    }
}

fn answer_reads(observes: Vec<ObserveReply>, out: Result<Vec<(i32, ObservedLease)>>) {
    match out {
        Ok(rows) => {
            for (id, reply) in observes {
                let lease = rows.iter().find(|(i, _)| *i == id).map(|(_, l)| l.clone());
                let _ = reply.send(Ok(lease));
            }
        }
        Err(e) => {
            for (_, reply) in observes {
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
    }
}

/// An error of a batched statement, for each election in the batch (the driver's error cannot be
/// cloned: its message is kept).
fn copy_error(e: &Error) -> Error {
    match e {
        Error::Timeout { operation, after } => Error::Timeout {
            operation,
            after: *after,
        },
        Error::Database { operation, source } => Error::Database {
            operation,
            source: sqlx::Error::Protocol(format!("batched statement failed: {source}")),
        },
        other => Error::Store {
            operation: "batch",
            source: other.to_string().into(),
        },
    }
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

pub(crate) fn unreachable_error(e: sqlx::Error, target: &str, timeout: Duration) -> Error {
    let message = match &e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused by {target}: is PostgreSQL running there?")
        }
        sqlx::Error::PoolTimedOut => format!(
            "no connection to {target} within {timeout:?} (server down, unreachable or too slow)"
        ),
        sqlx::Error::Tls(tls) => format!(
            "TLS with {target} failed: {tls}{}",
            tls_hint(&tls.to_string())
        ),
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            // rustls reports a certificate it rejects as invalid data on the socket.
            format!(
                "TLS with {target} failed: {io}{}",
                tls_hint(&io.to_string())
            )
        }
        sqlx::Error::Database(db) if db.message().contains("unsupported startup parameter") => {
            format!(
                "{target} refused a startup parameter ({}): a pooler such as PgBouncer is in between; \
             set `pooler` to `session` or `transaction` (its pool_mode)",
                db.message()
            )
        }
        other => format!("cannot connect to {target}: {other}"),
    };
    Error::Unreachable {
        message,
        source: Some(e),
    }
}

/// What to do about a TLS failure, from the words of the TLS library's error.
fn tls_hint(error: &str) -> &'static str {
    if error.contains("UnknownIssuer") || error.contains("unknown issuer") {
        " (the server's certificate is not signed by a trusted CA: give the CA that signed it, \
         `ssl.ca` or `sslrootcert`)"
    } else if error.contains("NotValidForName") || error.contains("not valid for name") {
        " (the server's certificate does not name this host: connect by a name it lists, or use \
         sslmode=verify-ca to check the CA only)"
    } else if error.contains("does not support TLS") {
        " (the server has TLS off: turn `ssl` on there, or connect without TLS)"
    } else if error.contains("Expired") {
        " (the server's certificate has expired)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batcher on a real PostgreSQL (`DATABASE_URL`, or the machine's server), in a schema of its own.
    #[tokio::test]
    async fn a_batched_renewal_succeeds_only_for_the_term_the_row_holds() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let hub = PgHub::connect(&url, Duration::from_secs(2)).await.unwrap();
        let name = format!(
            "ll_batch_term_{}_{:04x}",
            std::process::id(),
            rand::random::<u16>()
        );
        sqlx::raw_sql(AssertSqlSafe(schema::up_sql(&name)))
            .execute(hub.pool())
            .await
            .unwrap();
        // Two elections of one hub with the same lock id and instance id ("twin"): the row holds the
        // newer one's term 12, the other still retries the renewal of its earlier term 11.
        let t = schema::qualified_table(&name);
        sqlx::raw_sql(AssertSqlSafe(format!(
            "INSERT INTO {t} (id, leader_id, expires_at, term) \
             VALUES (5, 'twin', clock_timestamp() + interval '1 minute', 12)"
        )))
        .execute(hub.pool())
        .await
        .unwrap();
        let stale_member = hub.join(&name, 5, None);
        let current_member = hub.join(&name, 5, None);
        let twin: Arc<str> = "twin".into();
        let window = Duration::from_millis(50);
        let before = hub.batch_stats();
        let (stale, current) = tokio::join!(
            stale_member.renew(twin.clone(), 11, 60_000.0, window),
            current_member.renew(twin.clone(), 12, 60_000.0, window),
        );
        let after = hub.batch_stats();
        let outcome = (stale.unwrap(), current.unwrap());
        stale_member.unregister();
        current_member.unregister();
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            schema::quote_ident(&name)
        )))
        .execute(hub.pool())
        .await
        .unwrap();
        hub.close().await;
        assert_eq!(
            (
                after.statements - before.statements,
                after.requests - before.requests
            ),
            (1, 2),
            "both renewals went out in one statement"
        );
        assert_eq!(
            outcome,
            (false, true),
            "(renewal of term 11, renewal of term 12): only the term the row holds is renewed"
        );
    }

    #[test]
    fn payload_round_trips() {
        assert_eq!(parse_payload(&payload(-5, 42)), Some((-5, 42)));
        assert_eq!(parse_payload("x:1"), None);
        assert_eq!(parse_payload("1"), None);
    }
}
