//! A hub: what the PostgreSQL elections of one process share (one pool, one `LISTEN` connection, the
//! batchers), the process-wide registry of shared hubs, and each election's membership in its hub.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use super::batch::{BatchStats, Batcher, Counters};
use super::conn::{PgSettings, Pooler, SYNC_COMMIT_WEAK_SQL, SessionSetup, unreachable_error};
use super::listen::{Observers, Waiters, WeakFn, listen};
use super::{StartFacts, StartKey};
use crate::START_CONNECT_TIMEOUT;
use crate::backend::ObservedLease;
use crate::events::EventObserver;
use crate::{Result, lock, schema};

/// Connections a pool opened by [`PgHub::connect`] (or [`crate::PgBackend::connect`]) may hold, besides
/// the one `LISTEN` connection: enough for the election loops, a release or cleanup racing with them,
/// and the batched statements of many elections.
pub const OWNED_POOL_MAX_CONNECTIONS: u32 = 4;

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
    /// The start-up checks of the elections on this hub, by what they depend on ([`StartKey`]): one run
    /// serves the elections that start while it runs and within [`START_CHECKS_REUSE`] after it.
    start_checks: Mutex<StartRuns>,
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

/// The runs of the start-up checks by key, each with when it began.
type StartRuns = HashMap<StartKey, (Instant, Arc<OnceCell<StartFacts>>)>;

/// How long a successful run of the start-up checks (the server is writable, its identity, the table is
/// complete, the privileges) serves elections that start after it on the same hub and schema. They are
/// facts of the server and the schema, not of one election; one that changed since (a table dropped, a
/// server demoted) still shows at once as the failing statements of the election's first acquisition,
/// and a changed server identity puts the election into the failover quarantine.
pub(crate) const START_CHECKS_REUSE: Duration = Duration::from_secs(5);

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
            start_checks: Mutex::default(),
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
    /// pool, at connection and every [`LISTEN_PROBE_INTERVAL`](super::LISTEN_PROBE_INTERVAL)) came
    /// back: a release then wakes this hub's waiting candidates at once, and they sleep until the
    /// observed lease's expiry instead of polling. While it is down, or where notifications do not
    /// arrive (e.g. PgBouncer in transaction mode), they poll.
    pub fn listening(&self) -> bool {
        self.inner.listening.load(Ordering::Acquire)
    }

    /// How much batching has saved so far: statements run by the batchers, the renewals and lease reads
    /// they carried, and the shared cleanups.
    pub fn batch_stats(&self) -> BatchStats {
        self.inner.stats.snapshot()
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
        self.start_listening();
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
                .or_insert_with(|| {
                    let hub = &self.inner;
                    Batcher::spawn(
                        &hub.pool,
                        hub.timeout,
                        &hub.setup,
                        &hub.stats,
                        &hub.stop,
                        schema,
                    )
                })
                .clone()
        };
        batcher.enter();
        Member {
            hub: self.clone(),
            key: (namespace, lock_id),
            released,
            batcher,
            observer: WeakObserver(observer),
        }
    }

    /// The start-up checks for `key`: run by `run` unless a run for the same key is in flight (then its
    /// result is awaited) or succeeded within [`START_CHECKS_REUSE`]. A failed run is not kept: the next
    /// election to start runs the checks again.
    pub(crate) async fn start_checks<F, Fut>(&self, key: StartKey, run: F) -> Result<StartFacts>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<StartFacts>>,
    {
        let cell = {
            let mut runs = lock(&self.inner.start_checks);
            let now = Instant::now();
            runs.retain(|_, (at, cell)| !cell.initialized() || now - *at < START_CHECKS_REUSE);
            runs.entry(key)
                .or_insert_with(|| (now, Arc::new(OnceCell::new())))
                .1
                .clone()
        };
        let facts = cell.get_or_try_init(run).await?.clone();
        Ok(facts)
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

impl PgHub {
    /// The batcher of `schema` on this hub (started if none runs yet), for a fleet membership: it does
    /// not count as an election of the batcher.
    pub(super) fn batcher_for(&self, schema: &str) -> Batcher {
        let hub = &self.inner;
        lock(&hub.batchers)
            .entry(schema.to_owned())
            .or_insert_with(|| {
                Batcher::spawn(
                    &hub.pool,
                    hub.timeout,
                    &hub.setup,
                    &hub.stats,
                    &hub.stop,
                    schema,
                )
            })
            .clone()
    }

    /// A wake-up for the notifications of `key` on the release channel (and every reconnection of the
    /// `LISTEN` connection), starting that connection if it is not up yet. Undone by
    /// [`unwake`](Self::unwake).
    pub(super) fn wake_on(&self, key: (i32, i32)) -> Arc<Notify> {
        self.start_listening();
        let notify = Arc::new(Notify::new());
        lock(&self.inner.waiters)
            .entry(key)
            .or_default()
            .push(Arc::downgrade(&notify));
        notify
    }

    /// Removes a wake-up of [`wake_on`](Self::wake_on).
    pub(super) fn unwake(&self, key: (i32, i32), notify: &Arc<Notify>) {
        let mut waiters = lock(&self.inner.waiters);
        if let Some(list) = waiters.get_mut(&key) {
            list.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(notify)));
            if list.is_empty() {
                waiters.remove(&key);
            }
        }
    }

    /// Starts the `LISTEN` task unless it has started already.
    fn start_listening(&self) {
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
    }
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
        self.batcher.batched()
    }

    /// Whether this election should run the cleanup now: the cleanup deletes long-expired leases of every
    /// lock id in the schema, so among the elections of one hub and schema it runs at most once per half
    /// `interval`; the others skip their turn.
    pub(crate) fn claim_cleanup(&self, interval: Duration) -> bool {
        self.batcher.claim_cleanup(interval)
    }

    pub(crate) async fn renew(
        &self,
        leader_id: Arc<str>,
        term: i64,
        lease_ms: f64,
        window: Duration,
    ) -> Result<bool> {
        self.batcher
            .renew(self.key.1, leader_id, term, lease_ms, window)
            .await
    }

    pub(crate) async fn observe(&self, window: Duration) -> Result<Option<ObservedLease>> {
        self.batcher.observe(self.key.1, window).await
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
        self.batcher.leave();
    }
}
