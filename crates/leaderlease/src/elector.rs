//! The handle of an election, [`Elector`]: it starts the election's campaign task (`campaign.rs`), reads
//! leadership without waiting (the local deadline), and releases or shuts down.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::backend::Backend;
use crate::campaign::{Campaign, Command};
use crate::clock::LeaseClock;
use crate::config::{ElectorBuilder, ElectorConfig};
use crate::postgres::{PgBackend, PgHub, PgSettings};
use crate::state::{LeaderInfo, Lease, Shared, Snapshot, Status, StoreHealth};
use crate::{Error, Result, lock};

/// Decides whether this node is fit to hold a lease: consulted before every acquire and renew is sent
/// (see [`ElectorBuilder::with_liveness_check`](crate::ElectorBuilder::with_liveness_check)).
pub type LivenessCheck = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

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
                since: crate::seam::now(),
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

    /// Counts leader work that runs outside [`run_while_leader`](Self::run_while_leader) (the Node
    /// layer's leader jobs), so that a release, a shutdown or a fleet's handover waits for it as for the
    /// closures of `run_while_leader` (at most one lease). Pair each call with [`work_finished`](Self::work_finished).
    #[doc(hidden)]
    pub fn work_started(&self) {
        self.shared.active_work.send_modify(|n| *n += 1);
    }

    /// Ends what [`work_started`](Self::work_started) began.
    #[doc(hidden)]
    pub fn work_finished(&self) {
        self.shared
            .active_work
            .send_modify(|n| *n = n.saturating_sub(1));
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

#[cfg(feature = "sim")]
impl Elector {
    /// The simulator's crash of this candidate's process: its campaign task is aborted where it stands
    /// (no release, no step-down; a request already sent still reaches the store).
    #[doc(hidden)]
    pub fn sim_crash(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
