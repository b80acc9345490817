//! The election itself: one background task per election that campaigns, renews, steps down and cleans
//! up, and a handle ([`Elector`]) to read leadership and to release or shut down.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Level, info_span};

use crate::backend::{AcquireOutcome, Backend, ObservedLease};
use crate::clock::LeaseClock;
use crate::config::{ElectorBuilder, ElectorConfig};
use crate::events::{Event, EventKind, deliver};
use crate::postgres::{PgBackend, PgHub, PgSettings};
use crate::{Error, Result, lock};

/// A follower wakes this long after the moment it computed for the observed lease's expiry, so that its
/// attempt reaches the database after the expiry, not just before.
pub const EXPIRY_WAKE_MARGIN: Duration = Duration::from_millis(20);
/// First retry delay after a failed database operation; it doubles per failure up to half the renewal
/// interval.
pub const ERROR_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Who leads, as this node last knew it.
#[derive(Debug, Clone)]
pub struct LeaderInfo {
    /// The leader's instance id.
    pub leader_id: String,
    /// The leader's fencing term.
    pub term: u64,
    /// When the lease ends, as a local monotonic instant estimated from the database's answer (for this
    /// node's own lease: its local deadline).
    pub expires_at: Instant,
}

/// This node's lease: its term and the local monotonic deadline until which it may act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The fencing term.
    pub term: u64,
    /// `send time + lease duration - safety margin` of the last confirmed acquire or renew.
    pub deadline: Instant,
}

/// Leadership state of this node, as published on [`Elector::subscribe`].
///
/// Changes are published when this node is elected, steps down, or sees another leader (a new leader id
/// or term); renewals do not publish. The stream may skip states that lasted less than a poll. For the
/// authoritative answer at the moment of acting, use [`Elector::is_leader`] or [`Elector::term`], which
/// honour the local deadline even when this node's runtime is stalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Campaigning; `leader` is the other leader last observed, if any.
    Candidate {
        /// `(leader_id, term)` of the last observed live lease of another holder.
        leader: Option<(String, u64)>,
    },
    /// This node leads with this fencing term.
    Leader {
        /// The fencing token of this leadership.
        term: u64,
    },
    /// The elector has been shut down.
    Stopped,
}

impl Status {
    /// True for [`Status::Leader`].
    pub fn is_leader(&self) -> bool {
        matches!(self, Status::Leader { .. })
    }
}

/// One decision of the election, complete: published on [`Elector::subscribe_state`] every time the
/// background task changes anything a reader could see (elected, renewed, stepped down, another leader
/// observed, stopped), in the order it decided them.
///
/// It is what a binding that keeps its own copy of leadership needs, in one value: the status, this
/// node's lease (term and local deadline) while it leads, the generation of that leadership, and a
/// sequence number. A `watch` receiver may skip snapshots it did not read in time, never reorder them;
/// a skipped step-down still shows as a changed [`generation`](Self::generation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Numbers the snapshots of this elector from 0 (the initial one), one per decision.
    pub seq: u64,
    /// The status decided.
    pub status: Status,
    /// This node's lease while it leads (`Some` exactly when `status` is [`Status::Leader`]).
    pub lease: Option<Lease>,
    /// The value of [`Elector::generation`] when this was decided: every step-down changes it, so two
    /// leader snapshots with the same generation belong to one leadership.
    pub generation: u32,
}

impl Snapshot {
    /// True when this snapshot decided that this node leads (its deadline may have passed since).
    pub fn is_leader(&self) -> bool {
        self.status.is_leader()
    }
}

/// Whether this election can reach its store, judged from the outcome of its own operations (acquire,
/// renew, read, release, cleanup): see [`Elector::store_health`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// The last operation on the store got an answer (any answer: "not acquired" and "lease lost" are
    /// answers). True after a successful start.
    pub connected: bool,
    /// The error of the last failed operation, if any (kept after the store answers again).
    pub last_error: Option<String>,
    /// When `connected` took its current value (the start, for an election that never lost its store).
    pub since: Instant,
}

/// Decides whether this node is fit to hold a lease: consulted before every acquire and renew is sent
/// (see [`ElectorBuilder::with_liveness_check`](crate::ElectorBuilder::with_liveness_check)).
pub type LivenessCheck = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// How often a candidate whose liveness check fails looks at it again (no database access meanwhile).
pub const LIVENESS_RECHECK_INTERVAL: Duration = Duration::from_millis(50);

enum Command {
    Release(oneshot::Sender<Result<()>>),
}

struct Shared {
    config: ElectorConfig,
    clock: LeaseClock,
    status: watch::Sender<Status>,
    lease: watch::Sender<Option<Lease>>,
    /// Every decision, complete and numbered; `status` and `lease` are updated before it.
    state: watch::Sender<Snapshot>,
    leader: Mutex<Option<LeaderInfo>>,
    /// Token of the current leadership, cancelled when it ends.
    work: Mutex<Option<CancellationToken>>,
    /// Number of `run_while_leader` closures running.
    active_work: watch::Sender<usize>,
    /// Reachability of the store, from the outcomes of the campaign's operations.
    health: Mutex<StoreHealth>,
    #[cfg(feature = "metrics")]
    metrics_name: String,
}

/// Counts a running `run_while_leader` closure.
struct ActiveWork<'a>(&'a watch::Sender<usize>);

impl<'a> ActiveWork<'a> {
    fn new(counter: &'a watch::Sender<usize>) -> Self {
        counter.send_modify(|n| *n += 1);
        Self(counter)
    }
}

impl Drop for ActiveWork<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A running election for one lock id.
///
/// Created with [`Elector::connect`], [`Elector::with_pool`] or [`Elector::start`] (or the same methods on
/// [`ElectorBuilder`]); it campaigns in a background task from then on, until [`Elector::shutdown`] or
/// until it is dropped (dropping releases the lease in the background, if the runtime is still running).
///
/// ```no_run
/// # async fn demo() -> leaderlease::Result<()> {
/// use leaderlease::Elector;
///
/// let elector = Elector::builder()
///     .with_lock_id(7)
///     .connect("postgres://postgres@127.0.0.1/test")
///     .await?;
/// // Cheap, synchronous, honours the local deadline:
/// if elector.is_leader() {
///     let term = elector.term(); // fencing token for the work about to be done
/// }
/// elector.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct Elector {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("lock_id", &self.shared.config.lock_id())
            .field("instance_id", &self.shared.config.instance_id())
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl ElectorBuilder {
    /// Builds the config, connects to `url` with a hub of its own (see [`Elector::connect`]) and starts
    /// campaigning.
    pub async fn connect(self, url: &str) -> Result<Elector> {
        Elector::connect(url, self.build()?).await
    }
    /// Builds the config, connects with settings given field by field (see [`PgSettings`]) with a hub of
    /// its own, and starts campaigning.
    pub async fn connect_settings(self, settings: &PgSettings) -> Result<Elector> {
        Elector::connect_settings(settings, self.build()?).await
    }
    /// Builds the config and starts campaigning on the process's shared hub for `settings`.
    pub async fn connect_shared_settings(self, settings: &PgSettings) -> Result<Elector> {
        Elector::connect_shared_settings(settings, self.build()?).await
    }
    /// Builds the config and starts campaigning on `hub`, with the other elections of the process on it.
    pub async fn start_with_hub(self, hub: &PgHub) -> Result<Elector> {
        Elector::with_hub(hub, self.build()?).await
    }
    /// Builds the config and starts campaigning on the process's shared hub for `url` (see
    /// [`Elector::connect_shared`]).
    pub async fn connect_shared(self, url: &str) -> Result<Elector> {
        Elector::connect_shared(url, self.build()?).await
    }
    /// Builds the config and starts campaigning on an application's pool.
    pub async fn start_with_pool(self, pool: PgPool) -> Result<Elector> {
        Elector::with_pool(pool, self.build()?).await
    }
    /// Builds the config, connects to NATS at `url` and starts campaigning in the KV bucket `bucket`
    /// (created with `max_age` = lease duration if missing).
    #[cfg(feature = "nats")]
    pub async fn connect_nats(self, url: &str, bucket: &str) -> Result<Elector> {
        let config = self.build()?;
        let backend = crate::NatsBackend::connect(url, bucket, &config).await?;
        Elector::start(backend, config).await
    }
    /// Builds the config and starts campaigning on any backend.
    pub async fn start<B: Backend>(
        self,
        backend: impl FnOnce(&ElectorConfig) -> B,
    ) -> Result<Elector> {
        let config = self.build()?;
        Elector::start(backend(&config), config).await
    }
}

impl Elector {
    /// A builder with the defaults (same as [`ElectorConfig::builder`]).
    pub fn builder() -> ElectorBuilder {
        ElectorConfig::builder()
    }

    /// Connects to PostgreSQL at `url` with a [`PgHub`] of its own (a small pool and a `LISTEN`
    /// connection, closed at shutdown), prepares the table and starts campaigning.
    pub async fn connect(url: &str, config: ElectorConfig) -> Result<Self> {
        let backend = PgBackend::connect(url, &config).await?;
        Self::start(backend, config).await
    }

    /// Like [`connect`](Self::connect), on the process's shared [`PgHub`] for `url` and the operation
    /// timeout: all elections of the process on that URL share one pool, one `LISTEN` connection and
    /// batched renewals, and the hub closes with the last of them. All must run on one Tokio runtime.
    pub async fn connect_shared(url: &str, config: ElectorConfig) -> Result<Self> {
        let backend = PgBackend::connect_shared(url, &config).await?;
        Self::start(backend, config).await
    }

    /// Like [`connect`](Self::connect), from settings given field by field: TLS certificates as values,
    /// a pooler in between (see [`PgSettings`]).
    pub async fn connect_settings(settings: &PgSettings, config: ElectorConfig) -> Result<Self> {
        let backend = PgBackend::connect_settings(settings, &config).await?;
        Self::start(backend, config).await
    }

    /// Like [`connect_shared`](Self::connect_shared), from settings given field by field: elections
    /// whose settings and operation timeout are equal share one hub.
    pub async fn connect_shared_settings(
        settings: &PgSettings,
        config: ElectorConfig,
    ) -> Result<Self> {
        let backend = PgBackend::connect_shared_settings(settings, &config).await?;
        Self::start(backend, config).await
    }

    /// Starts an election on `hub` (shared with the process's other elections on it): prepares the table
    /// and starts. The hub stays open after this election's shutdown.
    pub async fn with_hub(hub: &PgHub, config: ElectorConfig) -> Result<Self> {
        let backend = PgBackend::with_hub(hub, &config);
        Self::start(backend, config).await
    }

    /// Uses the application's pool (which may serve many elections), prepares the table and starts.
    pub async fn with_pool(pool: PgPool, config: ElectorConfig) -> Result<Self> {
        let backend = PgBackend::with_pool(pool, &config);
        Self::start(backend, config).await
    }

    /// Prepares `backend` and starts campaigning on it. Must be called within a Tokio runtime.
    pub async fn start<B: Backend>(backend: B, config: ElectorConfig) -> Result<Self> {
        if let Err(e) = backend.prepare().await {
            backend.close().await;
            return Err(e);
        }
        let (status, _) = watch::channel(Status::Candidate { leader: None });
        let (active_work, _) = watch::channel(0);
        let clock = LeaseClock::new();
        let state = watch::channel(Snapshot {
            seq: 0,
            status: Status::Candidate { leader: None },
            lease: None,
            generation: clock.generation(),
        })
        .0;
        let shared = Arc::new(Shared {
            clock,
            status,
            state,
            lease: watch::channel(None).0,
            leader: Mutex::new(None),
            work: Mutex::new(None),
            active_work,
            health: Mutex::new(StoreHealth {
                connected: true,
                last_error: None,
                since: Instant::now(),
            }),
            #[cfg(feature = "metrics")]
            metrics_name: config.metrics_name(),
            config,
        });
        let stop = match shared.config.cancellation() {
            Some(outer) => outer.child_token(),
            None => CancellationToken::new(),
        };
        let (commands, rx) = mpsc::channel(8);
        let span = info_span!(
            "leaderlease",
            lock_id = shared.config.lock_id(),
            candidate = %shared.config.instance_id(),
        );
        let campaign = Campaign::new(Arc::new(backend), shared.clone());
        let task = tokio::spawn(campaign.run(rx, stop.clone()).instrument(span));
        Ok(Self {
            shared,
            commands,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// True only while this node holds an unexpired lease: before `send time + lease duration - safety
    /// margin` of its last confirmed acquire or renew, by the monotonic clock. No database access, no
    /// allocation; safe to call in a hot loop.
    #[inline]
    pub fn is_leader(&self) -> bool {
        self.shared.clock.is_valid()
    }

    /// The fencing token of the current leadership, or `None` when not leader (same rule as
    /// [`is_leader`](Self::is_leader)). Terms only grow for a lock id: pass it to the resources the work
    /// touches so they can refuse a stale leader.
    pub fn term(&self) -> Option<u64> {
        self.shared.clock.term()
    }

    /// Runs the database's fence for this election's current term on `conn`, a connection inside the
    /// transaction that does the leader's work (`&mut tx` of a `sqlx::Transaction` works): the
    /// transaction can then commit only if this term still holds an unexpired lease, by the database's
    /// clock, and before anyone else can take the lease over. Call it right before committing (it
    /// share-locks the lease row until the transaction ends). [`Error::Fenced`] when this node does not
    /// lead or the database refuses: roll back. PostgreSQL only; see [`fence`](crate::fence).
    pub async fn fence(&self, conn: &mut sqlx::PgConnection) -> Result<u64> {
        let config = self.config();
        let Some(term) = self.term() else {
            return Err(Error::Fenced {
                lock_id: config.lock_id(),
                term: None,
                reason: "this node does not lead".to_owned(),
            });
        };
        crate::fence::fence(conn, config.schema(), config.lock_id(), term).await
    }

    /// Like [`fence`](Self::fence), for a term the work saved when it began (`term()` then): the
    /// transaction commits only if that very leadership still holds the lease, not a later one of this
    /// node. The database alone judges; this node's own state is not consulted.
    pub async fn fence_term(&self, conn: &mut sqlx::PgConnection, term: u64) -> Result<u64> {
        let config = self.config();
        crate::fence::fence(conn, config.schema(), config.lock_id(), term).await
    }

    /// Time left before this node's local lease deadline, while it leads.
    pub fn lease_remaining(&self) -> Option<Duration> {
        self.shared.clock.remaining()
    }

    /// The leader this node last observed (itself while it leads), with its term and expiry estimate.
    pub fn leader(&self) -> Option<LeaderInfo> {
        lock(&self.shared.leader).clone()
    }

    /// Current status (see [`Status`] for how it relates to [`is_leader`](Self::is_leader)).
    pub fn status(&self) -> Status {
        self.shared.status.borrow().clone()
    }

    /// Whether this election reaches its store, leader or follower alike: `connected` is false from the
    /// first failed operation until the next one that gets an answer; `since` says for how long. A
    /// leader finds out at its next renewal, a follower at its next read or acquisition (at the latest
    /// when the lease it saw expires, or at once when the `LISTEN` connection it relies on breaks).
    pub fn store_health(&self) -> StoreHealth {
        lock(&self.shared.health).clone()
    }

    /// A stream of this node's lease as the local deadline rule sees it: `Some` with the term and the
    /// local deadline after every confirmed acquire or renew, `None` the moment it steps down. For
    /// bindings that keep their own copy of the deadline (a copy that lags behind only ever holds an
    /// earlier deadline, so it errs on the side of "not leader").
    pub fn subscribe_lease(&self) -> watch::Receiver<Option<Lease>> {
        self.shared.lease.subscribe()
    }

    /// A stream of status changes: elected, stepped down, another leader seen, stopped.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// The stream of [`Snapshot`]s: every decision (renewals included), complete and in order. The
    /// status of each equals what [`subscribe`](Self::subscribe) held when it was published, and its
    /// lease what [`subscribe_lease`](Self::subscribe_lease) held.
    pub fn subscribe_state(&self) -> watch::Receiver<Snapshot> {
        self.shared.state.subscribe()
    }

    /// The latest [`Snapshot`].
    pub fn snapshot(&self) -> Snapshot {
        self.shared.state.borrow().clone()
    }

    /// Counts this node's step-downs (wrapping): it changes before [`is_leader`](Self::is_leader) turns
    /// false for any reason but the deadline passing. A binding that keeps a copy of the lease (from a
    /// [`Snapshot`]) can trust that copy only while this still equals the snapshot's `generation`; it
    /// learns of a loss this way before the snapshot reporting it reaches it.
    pub fn generation(&self) -> u32 {
        self.shared.clock.generation()
    }

    /// The counter behind [`generation`](Self::generation), for a binding that shares it with another
    /// runtime's memory (read it with an acquire or sequentially consistent load; never write it).
    pub fn generation_cell(&self) -> Arc<std::sync::atomic::AtomicU32> {
        self.shared.clock.generation_cell()
    }

    /// The settings this election runs with.
    pub fn config(&self) -> &ElectorConfig {
        &self.shared.config
    }

    /// Gives up leadership now, if held: cancels the work token of [`run_while_leader`](Self::run_while_leader)
    /// and waits for that work to return (at most one lease duration), steps down, and deletes this node's
    /// lease (only its own: lock id, leader id and term must match) so another candidate can take over.
    ///
    /// The node stays a candidate: it stands back for one renewal interval plus the jitter range, long
    /// enough for every other candidate to poll, and campaigns again afterwards, so that a cluster is never
    /// left without a candidate. Use [`shutdown`](Self::shutdown) to leave for good.
    /// On a follower this does nothing.
    pub async fn release(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Release(tx))
            .await
            .map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Stops campaigning for good: cancels and waits for leader work (at most one lease duration), releases
    /// the lease if held, stops the background task and closes the connections it owns. Idempotent.
    pub async fn shutdown(&self) -> Result<()> {
        self.stop.cancel();
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        Ok(())
    }

    /// Runs `work` each time this node becomes leader, handing it a token that is cancelled the moment
    /// leadership ends (lost, deadline passed, released, or shutdown). `work` should stop promptly once
    /// the token is cancelled; before acting on anything shared it can check [`is_leader`](Self::is_leader).
    ///
    /// If `work` returns `Ok` while still leading, it is not called again until the next leadership. An
    /// `Err` from `work` is returned at once (the election keeps running). Returns `Ok` once the elector
    /// is shut down.
    ///
    /// ```no_run
    /// # async fn demo(elector: leaderlease::Elector) -> Result<(), std::io::Error> {
    /// elector
    ///     .run_while_leader(|token| async move {
    ///         while !token.is_cancelled() {
    ///             // one unit of singleton work
    ///             tokio::select! {
    ///                 _ = token.cancelled() => {}
    ///                 _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
    ///             }
    ///         }
    ///         Ok(())
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn run_while_leader<F, Fut, E>(&self, mut work: F) -> Result<(), E>
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut status = self.shared.status.subscribe();
        loop {
            let token = loop {
                if *status.borrow_and_update() == Status::Stopped {
                    return Ok(());
                }
                let current = lock(&self.shared.work).clone();
                if let Some(token) = current
                    && !token.is_cancelled()
                    && self.is_leader()
                {
                    break token;
                }
                if status.changed().await.is_err() {
                    return Ok(());
                }
            };
            {
                let _active = ActiveWork::new(&self.shared.active_work);
                work(token.child_token()).await?;
            }
            token.cancelled().await;
        }
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Held {
    term: u64,
    /// Send time of the last confirmed acquire or renew.
    confirmed_at: Instant,
}

/// State of the background task.
struct Campaign {
    backend: Arc<dyn Backend>,
    shared: Arc<Shared>,
    held: Option<Held>,
    leading: bool,
    next_renew: Instant,
    next_poll: Instant,
    next_cleanup: Instant,
    stand_back_until: Option<Instant>,
    failures: u32,
    acquire_outcome_unknown: bool,
    warned_same_id: bool,
    /// A release was announced: the next poll tries to acquire without reading the lease first.
    announced: bool,
    /// The reason of the failover quarantine last reported (reported once per change of server).
    deferred_for: Option<String>,
}

impl Campaign {
    fn new(backend: Arc<dyn Backend>, shared: Arc<Shared>) -> Self {
        let now = Instant::now();
        let c = &shared.config;
        let next_cleanup = now + jittered(c.clean_interval(), c.jitter_range());
        Self {
            backend,
            shared,
            held: None,
            leading: false,
            next_renew: now,
            next_poll: now,
            next_cleanup,
            stand_back_until: None,
            failures: 0,
            acquire_outcome_unknown: false,
            warned_same_id: false,
            announced: false,
            deferred_for: None,
        }
    }

    fn config(&self) -> &ElectorConfig {
        &self.shared.config
    }

    /// Logs `event` with `tracing`, hands it to the observer and records it in the metrics.
    fn report(&self, event: Event) {
        report(&self.shared, event);
    }

    /// The store answered.
    fn reachable(&self) {
        let mut h = lock(&self.shared.health);
        if !h.connected {
            h.connected = true;
            h.since = Instant::now();
        }
    }

    /// An operation on the store failed.
    fn unreachable(&self, e: &Error) {
        let mut h = lock(&self.shared.health);
        h.last_error = Some(e.to_string());
        if h.connected {
            h.connected = false;
            h.since = Instant::now();
        }
    }

    /// The local deadline of the held lease.
    fn deadline(&self) -> Option<Instant> {
        let c = self.config();
        self.held
            .as_ref()
            .map(|h| h.confirmed_at + c.lease_duration() - c.safety_margin())
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>, stop: CancellationToken) {
        self.report(Event::new(
            EventKind::Started,
            Level::DEBUG,
            "campaign started",
        ));
        let released = self.backend.clone();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                cmd = commands.recv() => match cmd {
                    Some(Command::Release(reply)) => {
                        self.drain_work().await;
                        let _ = reply.send(self.release().await);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(self.next_wake().into()) => self.tick().await,
                _ = released.released(), if self.held.is_none() => {
                    tracing::debug!("the lease was released; trying at once");
                    self.next_poll = Instant::now();
                    self.announced = true;
                }
            }
        }
        // Shutdown (explicit, by the external token, or by dropping the handle): the same order as a
        // release, so the lease is never deleted under running leader work.
        self.drain_work().await;
        if self.held.is_some()
            && let Err(e) = self.release().await
        {
            self.report(
                Event::new(
                    EventKind::ReleaseFailed,
                    Level::WARN,
                    "could not delete the lease at shutdown; it will expire by itself",
                )
                .error(&e),
            );
        }
        self.step_down("shutdown");
        self.backend.close().await;
        self.shared.status.send_replace(Status::Stopped);
        self.publish();
        self.report(Event::new(
            EventKind::Stopped,
            Level::INFO,
            "elector stopped",
        ));
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.next_cleanup.min(if self.held.is_some() {
            self.next_renew
        } else {
            self.next_poll
        });
        if self.leading
            && let Some(d) = self.deadline()
        {
            wake = wake.min(d);
        }
        wake
    }

    /// Cancels the current leadership's work token and waits, at most one lease duration, for the
    /// closures of `run_while_leader` to return, renewing the lease meanwhile. Releasing afterwards can
    /// therefore not let another node in while this one's work still runs.
    async fn drain_work(&mut self) {
        if let Some(token) = lock(&self.shared.work).as_ref() {
            token.cancel();
        }
        let mut active = self.shared.active_work.subscribe();
        let give_up = Instant::now() + self.config().lease_duration();
        loop {
            if *active.borrow_and_update() == 0 {
                return;
            }
            tokio::select! {
                changed = active.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(give_up.into()) => {
                    self.report(Event::new(
                        EventKind::WorkOverran,
                        Level::WARN,
                        "leader work still running one lease after its cancellation; releasing anyway",
                    ));
                    return;
                }
                _ = tokio::time::sleep_until(self.next_wake().into()) => self.tick().await,
            }
        }
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        if self.leading && self.deadline().is_some_and(|d| now >= d) {
            self.step_down("local lease deadline passed before a renewal was confirmed");
        }
        if now >= self.next_cleanup {
            self.cleanup().await;
        }
        if self.held.is_some() {
            if Instant::now() >= self.next_renew {
                self.renew().await;
            }
        } else if Instant::now() >= self.next_poll {
            self.poll().await;
        }
    }

    /// Awaits a backend call; while leading, steps down at the local deadline even if the call is still
    /// in flight.
    async fn guarded<T>(&mut self, call: impl Future<Output = T>) -> T {
        tokio::pin!(call);
        loop {
            let deadline = self.deadline().filter(|_| self.leading);
            tokio::select! {
                out = &mut call => return out,
                _ = sleep_until_opt(deadline) => {
                    self.step_down("local lease deadline passed while the database did not answer");
                }
            }
        }
    }

    async fn renew(&mut self) {
        let Some(term) = self.held.as_ref().map(|h| h.term) else {
            return;
        };
        if !self.config().is_alive() {
            self.report(
                Event::new(
                    EventKind::LivenessFailed,
                    Level::WARN,
                    "liveness check failed: stepping down and deleting the lease so that another node takes over",
                )
                .term(term),
            );
            if let Err(e) = self.release().await {
                self.report(
                    Event::new(
                        EventKind::ReleaseFailed,
                        Level::WARN,
                        "could not delete the lease; it will expire by itself",
                    )
                    .error(&e),
                );
            }
            return;
        }
        let backend = self.backend.clone();
        let sent = Instant::now();
        let outcome = self.guarded(backend.renew(term)).await;
        let latency = sent.elapsed();
        match outcome {
            Ok(true) => {
                self.failures = 0;
                self.reachable();
                self.confirmed(term, sent);
                self.report(
                    Event::new(EventKind::Renewed, Level::DEBUG, "lease renewed")
                        .term(term)
                        .latency(latency),
                );
            }
            Ok(false) => {
                self.reachable();
                self.step_down("lease lost: renewal matched no row (expired or taken over)");
                self.held = None;
                self.next_poll = Instant::now();
                // After the step-down (whose warning carries the reason), so that reporting it never
                // delays the step-down's snapshot.
                self.report(
                    Event::new(
                        EventKind::LeaseLost,
                        Level::DEBUG,
                        "renewal matched no row: the lease expired or was taken over",
                    )
                    .term(term)
                    .latency(latency),
                );
            }
            Err(e @ Error::ReadOnly { .. }) => {
                // The server refuses writes (a standby, or read-only transactions): no renewal can
                // succeed there, so waiting for the local deadline gains nothing. Step down now; the lease
                // in this node's name is left to expire (its holder is this node: no duplicate warning).
                self.unreachable(&e);
                self.step_down_because(
                    "the database server is read-only (a standby, or default_transaction_read_only): \
                     it refused the renewal",
                    Some(&e),
                );
                self.held = None;
                self.acquire_outcome_unknown = true;
                let delay = self.failure_delay();
                self.next_poll = Instant::now() + delay;
                self.report(
                    Event::new(
                        EventKind::RenewalFailed,
                        Level::WARN,
                        "renewal refused by a read-only server; stepped down",
                    )
                    .term(term)
                    .error(&e)
                    .latency(latency)
                    .retry_in(delay),
                );
            }
            Err(e) => {
                // Keep the term and retry: leadership is kept until the local deadline (then `guarded` or
                // `tick` steps down), and the retries go on after it, because a renewal whose answer was
                // lost may have extended the lease. Only the database saying "no row" ends the term.
                let delay = self.failure_delay();
                self.unreachable(&e);
                self.report(
                    Event::new(
                        EventKind::RenewalFailed,
                        Level::WARN,
                        "renewal failed; retrying",
                    )
                    .term(term)
                    .error(&e)
                    .latency(latency)
                    .retry_in(delay),
                );
                self.next_renew = Instant::now() + delay;
            }
        }
    }

    /// Records a confirmed acquire or renew of `term` sent at `sent`.
    fn confirmed(&mut self, term: u64, sent: Instant) {
        let c = self.config();
        let deadline = sent + c.lease_duration() - c.safety_margin();
        let next_renew = sent + jittered(c.renewal_interval(), c.jitter_range());
        let instance_id = c.instance_id().to_owned();
        self.held = Some(Held {
            term,
            confirmed_at: sent,
        });
        self.next_renew = next_renew;
        *lock(&self.shared.leader) = Some(LeaderInfo {
            leader_id: instance_id,
            term,
            expires_at: deadline,
        });
        if Instant::now() >= deadline {
            // Confirmed too late to act on (the runtime stalled): renew again at once.
            self.next_renew = Instant::now();
            return;
        }
        self.shared.clock.set(term, deadline);
        self.shared
            .lease
            .send_replace(Some(Lease { term, deadline }));
        let elected = !self.leading;
        if elected {
            self.leading = true;
            *lock(&self.shared.work) = Some(CancellationToken::new());
            self.shared.status.send_replace(Status::Leader { term });
        }
        self.publish();
        // Reported after the snapshot is published, so that reporting never delays it.
        if elected {
            self.report(Event::new(EventKind::Elected, Level::INFO, "elected leader").term(term));
        }
    }

    /// Publishes the current decision as the next [`Snapshot`].
    fn publish(&self) {
        let status = self.shared.status.borrow().clone();
        let lease = if status.is_leader() {
            *self.shared.lease.borrow()
        } else {
            None
        };
        let generation = self.shared.clock.generation();
        self.shared.state.send_modify(|s| {
            *s = Snapshot {
                seq: s.seq + 1,
                status,
                lease,
                generation,
            }
        });
    }

    fn step_down(&mut self, reason: &str) {
        self.step_down_because(reason, None);
    }

    /// Steps down for `reason`; the step-down event carries `error` when one caused it.
    fn step_down_because(&mut self, reason: &str, error: Option<&Error>) {
        self.shared.clock.clear();
        let term = self
            .held
            .as_ref()
            .map(|h| h.term)
            .or_else(|| self.shared.lease.borrow().map(|l| l.term));
        let had_lease = self.shared.lease.send_if_modified(|l| l.take().is_some());
        if let Some(token) = lock(&self.shared.work).take() {
            token.cancel();
        }
        let stepped_down = self.leading;
        if stepped_down {
            self.leading = false;
            self.shared
                .status
                .send_replace(Status::Candidate { leader: None });
        }
        if had_lease || self.shared.state.borrow().is_leader() {
            self.publish();
        }
        // Reported after the snapshot is published, so that reporting never delays it.
        if stepped_down {
            let level = if reason == "released" || reason == "shutdown" {
                Level::INFO
            } else {
                Level::WARN
            };
            let mut event =
                Event::new(EventKind::SteppedDown, level, "stepped down").reason(reason);
            if let Some(e) = error {
                event = event.error(e);
            }
            event.term = term;
            self.report(event);
        }
    }

    async fn poll(&mut self) {
        let now = Instant::now();
        if let Some(until) = self.stand_back_until {
            if now < until {
                self.next_poll = until;
                return;
            }
            self.stand_back_until = None;
        }
        if !self.config().is_alive() {
            // Unfit to lead: neither read nor acquire until the check passes again.
            self.next_poll = now + LIVENESS_RECHECK_INTERVAL;
            return;
        }
        if std::mem::take(&mut self.announced) {
            self.acquire().await;
            return;
        }
        match self.backend.observe().await {
            Ok(Some(lease)) if lease.expires_in.is_some() => {
                self.failures = 0;
                self.reachable();
                self.observed(&lease);
            }
            Ok(_) => {
                self.failures = 0;
                self.reachable();
                self.acquire().await;
            }
            Err(e) => {
                let delay = self.failure_delay();
                self.unreachable(&e);
                self.report(
                    Event::new(
                        EventKind::ReadFailed,
                        Level::WARN,
                        "could not read the lease",
                    )
                    .error(&e)
                    .retry_in(delay),
                );
                self.next_poll = Instant::now() + delay;
            }
        }
    }

    async fn acquire(&mut self) {
        let sent = Instant::now();
        let outcome = self.backend.try_acquire().await;
        if outcome.is_ok() {
            self.reachable();
        }
        match outcome {
            Ok(AcquireOutcome::Acquired { term }) => {
                self.acquire_outcome_unknown = false;
                self.deferred_for = None;
                self.confirmed(term, sent);
            }
            Ok(AcquireOutcome::Deferred { retry_in, reason }) => {
                // The failover quarantine: look again (reading the lease meanwhile) at the next poll
                // or when it ends.
                self.failures = 0;
                if self.deferred_for.as_ref() != Some(&reason) {
                    self.report(
                        Event::new(
                            EventKind::ServerChanged,
                            Level::WARN,
                            "the database server changed (a failover): not acquiring until one lease \
                             after the change was first seen",
                        )
                        .reason(reason.clone())
                        .retry_in(retry_in),
                    );
                    self.deferred_for = Some(reason);
                }
                let c = self.config();
                let poll = jittered(c.renewal_interval(), c.jitter_range());
                self.next_poll = Instant::now() + retry_in.min(poll);
            }
            Ok(AcquireOutcome::NotAcquired {
                current: Some(lease),
            }) if lease.expires_in.is_some() => self.observed(&lease),
            Ok(AcquireOutcome::NotAcquired { .. }) => {
                // Another candidate was acquiring at the same moment: look again shortly.
                self.report(Event::new(
                    EventKind::Contended,
                    Level::DEBUG,
                    "lease contended; looking again shortly",
                ));
                self.next_poll = Instant::now()
                    + jittered(Duration::from_millis(100), Duration::from_millis(100));
            }
            Err(e) => {
                // The statement may have committed without us hearing back: we do not lead (no
                // confirmation), and a lease in our name with an unknown term is left to expire.
                self.acquire_outcome_unknown = true;
                let delay = if matches!(e, Error::ReadOnly { .. }) {
                    // A read-only server answers the same until it is promoted or the route moves:
                    // look again at the poll interval, not in a tight retry.
                    let c = self.config();
                    jittered(c.renewal_interval(), c.jitter_range())
                } else {
                    self.failure_delay()
                };
                self.unreachable(&e);
                self.report(
                    Event::new(EventKind::AcquireFailed, Level::WARN, "acquire failed")
                        .error(&e)
                        .retry_in(delay),
                );
                self.next_poll = Instant::now() + delay;
            }
        }
    }

    /// Notes a live lease held by someone else and schedules the next look: just after the lease's
    /// expiry when the backend announces releases (its `LISTEN` connection is up), otherwise at the next
    /// jittered poll or just after the expiry, whichever comes first.
    fn observed(&mut self, lease: &ObservedLease) {
        let now = Instant::now();
        let expires_in = lease.expires_in.unwrap_or_default();
        let expires_at = now + expires_in;
        let shared = self.shared.clone();
        let c = &shared.config;
        if lease.leader_id == c.instance_id() {
            if !self.acquire_outcome_unknown && !self.warned_same_id {
                self.report(
                    Event::new(
                        EventKind::DuplicateInstanceId,
                        Level::WARN,
                        "a lease in this node's instance id is held by another process: \
                         instance ids must be unique; this node waits for that lease to end",
                    )
                    .term(lease.term),
                );
                self.warned_same_id = true;
            }
        } else {
            self.acquire_outcome_unknown = false;
        }
        let at_expiry = expires_at + EXPIRY_WAKE_MARGIN;
        self.next_poll = if self.backend.wakes_on_release() {
            at_expiry
        } else {
            at_expiry.min(now + jittered(c.renewal_interval(), c.jitter_range()))
        };
        let changed = lock(&self.shared.leader)
            .as_ref()
            .is_none_or(|l| l.leader_id != lease.leader_id || l.term != lease.term);
        *lock(&self.shared.leader) = Some(LeaderInfo {
            leader_id: lease.leader_id.clone(),
            term: lease.term,
            expires_at,
        });
        if changed {
            self.report(
                Event::new(EventKind::ObservedLeader, Level::INFO, "observed leader")
                    .leader(&lease.leader_id)
                    .term(lease.term),
            );
        }
        let status = Status::Candidate {
            leader: Some((lease.leader_id.clone(), lease.term)),
        };
        let modified = self.shared.status.send_if_modified(|s| {
            if *s == status {
                false
            } else {
                *s = status;
                true
            }
        });
        if modified {
            self.publish();
        }
    }

    async fn release(&mut self) -> Result<()> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        self.step_down("released");
        let c = self.config();
        self.stand_back_until = Some(Instant::now() + c.renewal_interval() + c.jitter_range());
        self.next_poll = Instant::now();
        *lock(&self.shared.leader) = None;
        match self.backend.release(held.term).await {
            Ok(true) => {
                self.reachable();
                self.report(
                    Event::new(EventKind::Released, Level::INFO, "lease released").term(held.term),
                );
                Ok(())
            }
            Ok(false) => {
                self.reachable();
                self.report(
                    Event::new(
                        EventKind::Released,
                        Level::DEBUG,
                        "lease was already gone at release",
                    )
                    .term(held.term),
                );
                Ok(())
            }
            Err(e) => {
                self.unreachable(&e);
                Err(e)
            }
        }
    }

    async fn cleanup(&mut self) {
        let c = self.config();
        self.next_cleanup = Instant::now() + jittered(c.clean_interval(), c.jitter_range());
        let backend = self.backend.clone();
        match self.guarded(backend.cleanup()).await {
            Ok(0) => self.reachable(),
            Ok(n) => {
                self.reachable();
                self.report(
                    Event::new(
                        EventKind::Cleaned,
                        Level::DEBUG,
                        "deleted long-expired leases",
                    )
                    .rows(n),
                );
            }
            Err(e) => {
                self.unreachable(&e);
                self.report(
                    Event::new(
                        EventKind::CleanupFailed,
                        Level::DEBUG,
                        "cleanup failed; trying again next interval",
                    )
                    .error(&e),
                );
            }
        }
    }

    fn failure_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let cap = self.config().renewal_interval() / 2;
        let exp = ERROR_RETRY_DELAY.saturating_mul(1 << self.failures.min(16).saturating_sub(1));
        let base = exp.min(cap).max(Duration::from_millis(10));
        jittered(base, base / 2)
    }
}

/// Logs `event` with `tracing`, hands it to the election's observer and records it in the metrics.
fn report(shared: &Shared, event: Event) {
    event.trace();
    if let Some(observer) = shared.config.observer() {
        deliver(observer, &event);
    }
    #[cfg(feature = "metrics")]
    crate::metrics_names::record(&shared.metrics_name, &event, shared.clock.remaining());
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// `base` ± `range`/2, uniformly.
fn jittered(base: Duration, range: Duration) -> Duration {
    let offset = range.mul_f64(rand::random::<f64>());
    (base + offset).saturating_sub(range / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_range() {
        let base = Duration::from_millis(3000);
        let range = Duration::from_millis(2000);
        let samples: Vec<_> = (0..2000).map(|_| jittered(base, range)).collect();
        assert!(samples.iter().all(|d| *d >= Duration::from_millis(2000)));
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(4000)));
        assert!(samples.iter().any(|d| *d < Duration::from_millis(2500)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(3500)));
    }
}
