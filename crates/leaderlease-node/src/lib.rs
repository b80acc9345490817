//! Node.js binding of the `leaderlease` core: a thin adapter that converts options, results and errors.
//! The public JavaScript API is the TypeScript in `ts/`, which wraps this addon.
//!
//! Errors cross the boundary as JS `Error`s whose message starts with the core's stable code in brackets
//! (`[ERR_INVALID_CONFIG] invalid leader election config: ...`); the TypeScript layer turns that prefix
//! into a named `Error` subclass with a `code` property. The prefix is used instead of napi's `code`
//! because napi only carries its own status codes through rejected promises.
//!
//! Nothing here waits on the network on the JS thread: connecting, releasing and shutting down return
//! Promises; the sync calls read local state only.

mod fleet;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use leaderlease::events::Level;
use leaderlease::{ConfigError, ElectorConfig, Event};
use napi::Status as NapiStatus;
use napi::bindgen_prelude::{Result, Uint32Array, spawn};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

/// The JS names of the settings, by the core's Rust names, so that errors name what the JS user wrote.
const JS_FIELDS: [(&str, &str); 11] = [
    ("lease_duration", "leaseDuration"),
    ("renewal_interval", "renewalInterval"),
    ("jitter_range", "jitterRange"),
    ("clean_interval", "baseCleanInterval"),
    ("lock_id", "lockId"),
    ("instance_id", "instanceId"),
    ("schema", "schema"),
    ("create_table_on_init", "createTableOnInit"),
    ("failover_quarantine", "failoverQuarantine"),
    ("safety_margin", "safetyMargin"),
    ("operation_timeout", "operationTimeout"),
];

/// Converts a core error into a JS error whose message is `[CODE] message`.
fn to_js(e: leaderlease::Error) -> napi::Error {
    let e = match e {
        leaderlease::Error::Config(c) => leaderlease::Error::Config(with_js_names(c)),
        other => other,
    };
    napi::Error::new(NapiStatus::GenericFailure, format!("[{}] {e}", e.code()))
}

/// Renames the field (and the fields the rule mentions) from the Rust names to the JS names.
fn with_js_names(e: ConfigError) -> ConfigError {
    let field = JS_FIELDS
        .iter()
        .find(|(rust, _)| *rust == e.field)
        .map_or(e.field, |(_, js)| *js);
    let rule = JS_FIELDS.iter().fold(e.rule, |rule, (rust, js)| {
        rule.replace(&format!("`{rust}`"), &format!("`{js}`"))
    });
    ConfigError::new(field, rule)
}

/// Settings of one election. Every field is optional; the defaults are the core's (`leaderlease`'s
/// `DEFAULT_*` constants). Durations are in milliseconds.
#[napi(object)]
#[derive(Debug, Default)]
pub struct ElectorOptions {
    /// How long a lease lives in the database without renewal (default 10000).
    pub lease_duration: Option<f64>,
    /// Mean time between renewals (leader) and polls (follower) (default 3000).
    pub renewal_interval: Option<f64>,
    /// Width of the uniform jitter around each interval (default 2000).
    pub jitter_range: Option<f64>,
    /// Mean time between cleanups of long-expired rows (default 6 x leaseDuration).
    pub base_clean_interval: Option<f64>,
    /// The lease row this election uses (default 1).
    pub lock_id: Option<f64>,
    /// This candidate's identity (default: hostname, process id and a random suffix).
    pub instance_id: Option<String>,
    /// Schema of the lease table (default `public`).
    pub schema: Option<String>,
    /// Create or upgrade the table at start (default true).
    pub create_table_on_init: Option<bool>,
    /// After a database failover (a new timeline or system identifier), a candidate waits one lease
    /// before acquiring (default true; PostgreSQL).
    pub failover_quarantine: Option<bool>,
    /// The leader considers its lease over this long before it ends (default leaseDuration / 10, at
    /// least 50).
    pub safety_margin: Option<f64>,
    /// Upper bound of one database operation (default renewalInterval / 2, at most 2000).
    pub operation_timeout: Option<f64>,
    /// Longest time the JavaScript event loop may go without a `heartbeat()` while this node acquires or
    /// renews: past it, a leader deletes its lease and steps down, and a candidate waits (default
    /// leaseDuration - safetyMargin; 0 turns the check off; otherwise at least 10).
    pub max_event_loop_stall: Option<f64>,
}

/// TLS settings given as values (a TypeORM DataSource's `ssl` object, normalised by the TypeScript
/// layer): `mode` is an `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`; default
/// `verify-full`), `ca`, `cert` and `key` are PEM text.
#[napi(object)]
#[derive(Debug, Default)]
pub struct PgSsl {
    /// The `sslmode`.
    pub mode: Option<String>,
    /// Trusted CA certificate(s), PEM.
    pub ca: Option<String>,
    /// Client certificate chain, PEM.
    pub cert: Option<String>,
    /// Client private key, PEM, unencrypted.
    pub key: Option<String>,
}

/// Where and how to connect to PostgreSQL, field by field (the core's `PgSettings`). A `url` is read
/// as libpq reads it; the other fields fill in what it does not say.
#[napi(object)]
#[derive(Debug, Default)]
pub struct PgConnection {
    /// A connection string.
    pub url: Option<String>,
    /// Host name, IP address, or a Unix socket directory.
    pub host: Option<String>,
    /// Port.
    pub port: Option<f64>,
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Database name.
    pub database: Option<String>,
    /// `application_name` of the sessions.
    pub application_name: Option<String>,
    /// Startup `options` (`-c name=value ...`).
    pub options: Option<String>,
    /// TLS settings given as values.
    pub ssl: Option<PgSsl>,
    /// `none`, `session` or `transaction` (default `none`).
    pub pooler: Option<String>,
}

impl PgConnection {
    fn into_settings(self) -> std::result::Result<leaderlease::PgSettings, ConfigError> {
        let port = match self.port {
            None => None,
            Some(p) if p.fract() == 0.0 && (1.0..=65535.0).contains(&p) => Some(p as u16),
            Some(p) => {
                return Err(ConfigError::new(
                    "port",
                    format!("must be an integer from 1 to 65535 (got {p})"),
                ));
            }
        };
        let tls = match self.ssl {
            None => None,
            Some(ssl) => Some(leaderlease::TlsSettings {
                mode: match ssl.mode.as_deref() {
                    None => None,
                    Some(m) => Some(m.parse::<leaderlease::PgSslMode>().map_err(|_| {
                        ConfigError::new(
                            "ssl.mode",
                            format!(
                                "must be disable, allow, prefer, require, verify-ca or verify-full \
                                 (got {m:?})"
                            ),
                        )
                    })?),
                },
                ca: ssl.ca,
                cert: ssl.cert,
                key: ssl.key,
            }),
        };
        Ok(leaderlease::PgSettings {
            url: self.url,
            host: self.host,
            port,
            username: self.user,
            password: self.password,
            database: self.database,
            application_name: self.application_name,
            options: self.options,
            tls,
            pooler: match self.pooler.as_deref() {
                None => leaderlease::Pooler::None,
                Some(p) => p.parse()?,
            },
        })
    }
}

/// Smallest accepted non-zero `maxEventLoopStall`.
const MIN_EVENT_LOOP_STALL: Duration = Duration::from_millis(10);

/// The JavaScript event loop's last sign of life, stored by `heartbeat()` from a JS timer.
#[derive(Debug)]
struct Heartbeat {
    base: Instant,
    /// Microseconds since `base` at the last beat.
    last: AtomicU64,
    bound: Duration,
}

impl Heartbeat {
    fn new(bound: Duration) -> Self {
        Self {
            base: Instant::now(),
            last: AtomicU64::new(0),
            bound,
        }
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn beat(&self) {
        self.last.store(self.micros(), Ordering::Release);
    }

    /// The loop beat within the bound.
    fn fresh(&self) -> bool {
        let age = self
            .micros()
            .saturating_sub(self.last.load(Ordering::Acquire));
        u128::from(age) <= self.bound.as_micros()
    }
}

fn millis(
    field: &'static str,
    value: Option<f64>,
) -> std::result::Result<Option<Duration>, ConfigError> {
    let Some(ms) = value else {
        return Ok(None);
    };
    if !ms.is_finite() || ms < 0.0 {
        return Err(ConfigError::new(
            field,
            format!("must be a finite, non-negative number of milliseconds (got {ms})"),
        ));
    }
    Duration::try_from_secs_f64(ms / 1000.0)
        .map(Some)
        .map_err(|_| ConfigError::new(field, format!("is too large (got {ms} ms)")))
}

impl ElectorOptions {
    /// Applies the given options on top of the core's defaults and validates the result; with the event
    /// loop check on, the heartbeat that the config's liveness check reads.
    fn into_config(
        self,
        sink: Option<Arc<EventSink>>,
        fleet: Option<(&leaderlease::fleet::Fleet, String)>,
    ) -> std::result::Result<(ElectorConfig, Option<Arc<Heartbeat>>), ConfigError> {
        let mut b = ElectorConfig::builder();
        if let Some(sink) = sink {
            b = b.with_observer(move |e| sink.deliver(e));
        }
        if let Some(d) = millis("leaseDuration", self.lease_duration)? {
            b = b.with_lease_duration(d);
        }
        if let Some(d) = millis("renewalInterval", self.renewal_interval)? {
            b = b.with_renewal_interval(d);
        }
        if let Some(d) = millis("jitterRange", self.jitter_range)? {
            b = b.with_jitter_range(d);
        }
        if let Some(d) = millis("baseCleanInterval", self.base_clean_interval)? {
            b = b.with_clean_interval(d);
        }
        if let Some(d) = millis("safetyMargin", self.safety_margin)? {
            b = b.with_safety_margin(d);
        }
        if let Some(d) = millis("operationTimeout", self.operation_timeout)? {
            b = b.with_operation_timeout(d);
        }
        if let Some(id) = self.lock_id {
            if !id.is_finite() || id.fract() != 0.0 {
                return Err(ConfigError::new(
                    "lockId",
                    format!("must be an integer (got {id})"),
                ));
            }
            // Out-of-range values saturate here and are rejected by the core's INT range check.
            b = b.with_lock_id(id as i64);
        }
        if let Some(id) = self.instance_id {
            b = b.with_instance_id(id);
        }
        if let Some(schema) = self.schema {
            b = b.with_schema(schema);
        }
        if let Some(yes) = self.create_table_on_init {
            b = b.with_create_table_on_init(yes);
        }
        if let Some(on) = self.failover_quarantine {
            b = b.with_failover_quarantine(on);
        }
        if let Some((fleet, name)) = fleet {
            b = b.with_fleet(fleet, name);
        }
        let stall = millis("maxEventLoopStall", self.max_event_loop_stall)?;
        let config = b.clone().build().map_err(with_js_names)?;
        let stall = stall.unwrap_or(config.lease_duration() - config.safety_margin());
        if stall.is_zero() {
            return Ok((config, None));
        }
        if stall < MIN_EVENT_LOOP_STALL || stall > leaderlease::MAX_LEASE_DURATION {
            return Err(ConfigError::new(
                "maxEventLoopStall",
                format!(
                    "must be 0 (off) or between {} ms and 24 h (got {} ms)",
                    MIN_EVENT_LOOP_STALL.as_millis(),
                    stall.as_secs_f64() * 1000.0
                ),
            ));
        }
        let heartbeat = Arc::new(Heartbeat::new(stall));
        let check = heartbeat.clone();
        let config = b
            .with_liveness_check(move || check.fresh())
            .build()
            .map_err(with_js_names)?;
        Ok((config, Some(heartbeat)))
    }
}

/// One line of the election's log, as values (the core's `leaderlease::Event`).
#[napi(object)]
#[derive(Debug)]
pub struct ElectorEvent {
    /// What happened: `elected`, `renewed`, `renewal_failed`, `lease_lost`, `stepped_down`, `released`,
    /// `release_failed`, `observed_leader`, `read_failed`, `acquire_failed`, `contended`, `server_changed`,
    /// `duplicate_instance_id`, `liveness_failed`, `work_overran`, `cleaned`, `cleanup_failed`,
    /// `listen_failed`, `listening`, `handing_over`, `taking_over`, `started`, `stopped` (more may come).
    pub kind: String,
    /// The election's lock id.
    pub lock_id: i32,
    /// The election's instance id.
    pub instance_id: String,
    /// `error`, `warn`, `info` or `debug`.
    pub level: String,
    /// The message, without the fields.
    pub message: String,
    /// The fencing term concerned.
    pub term: Option<f64>,
    /// Why this node stepped down (or why `LISTEN` is not trusted).
    pub reason: Option<String>,
    /// The error of a failed operation, as text.
    pub error: Option<String>,
    /// Its stable code (`ERR_DATABASE_UNREACHABLE`, ...).
    pub error_code: Option<String>,
    /// For a failed store operation: `renew`, `acquire`, `read`, `release` or `cleanup`.
    pub operation: Option<String>,
    /// The leader observed.
    pub leader_id: Option<String>,
    /// Milliseconds the store operation took.
    pub latency_ms: Option<f64>,
    /// Milliseconds until a failed operation is tried again.
    pub retry_in_ms: Option<f64>,
    /// Rows deleted by a cleanup.
    pub rows: Option<f64>,
}

/// `Level` as a number: 0 error, 1 warn, 2 info, 3 debug, 4 trace.
fn level_rank(level: Level) -> u8 {
    [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG]
        .iter()
        .position(|l| *l == level)
        .map_or(4, |i| i as u8)
}

fn level_name(level: Level) -> &'static str {
    ["error", "warn", "info", "debug"]
        .get(usize::from(level_rank(level)))
        .copied()
        .unwrap_or("debug")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn js_event(e: &Event, lock_id: i32, instance_id: &str) -> ElectorEvent {
    ElectorEvent {
        kind: e.kind.as_str().to_owned(),
        lock_id,
        instance_id: instance_id.to_owned(),
        level: level_name(e.level).to_owned(),
        message: e.message.to_owned(),
        term: e.term.map(|t| t as f64),
        reason: e.reason.clone(),
        error: e.error.clone(),
        error_code: e.error_code.map(str::to_owned),
        operation: e.kind.failed_operation().map(str::to_owned),
        leader_id: e.leader_id.clone(),
        latency_ms: e.latency.map(ms),
        retry_in_ms: e.retry_in.map(ms),
        rows: e.rows.map(|n| n as f64),
    }
}

type EventCallback = ThreadsafeFunction<ElectorEvent, (), ElectorEvent, NapiStatus, false, true>;

/// Forwards the core's events of one election to its JavaScript callback, up to a level JavaScript sets
/// (default `info`: the debug events, one per renewal, cross only when asked for). The election's task
/// only queues an event; a task of its own hands it to the callback after yielding once, so that the
/// state snapshot published just before (the leadership change itself) reaches JavaScript first. The
/// callback is weak: it never keeps the process alive.
struct EventSink {
    queue: tokio::sync::mpsc::UnboundedSender<ElectorEvent>,
    /// Highest `level_rank` forwarded.
    max_rank: AtomicU8,
    /// The election's lock id and instance id, set once its config is built.
    identity: std::sync::OnceLock<(i32, String)>,
}

impl EventSink {
    fn deliver(&self, e: &Event) {
        if level_rank(e.level) > self.max_rank.load(Ordering::Relaxed) {
            return;
        }
        let Some((lock_id, instance_id)) = self.identity.get() else {
            return;
        };
        let _ = self.queue.send(js_event(e, *lock_id, instance_id));
    }
}

/// Leadership state of this node.
#[napi(string_enum = "lowercase")]
#[derive(Debug, PartialEq, Eq)]
pub enum LeaderState {
    /// Campaigning (another node may lead).
    Candidate,
    /// This node leads.
    Leader,
    /// The elector has been shut down.
    Stopped,
}

/// A status change: the state, and the leader with its term where known.
#[napi(object)]
#[derive(Debug)]
pub struct StatusInfo {
    /// `candidate`, `leader` or `stopped`.
    pub state: LeaderState,
    /// The leader's instance id (this node's own while it leads), if known.
    pub leader_id: Option<String>,
    /// The leader's fencing term, if known.
    pub term: Option<f64>,
}

fn status_info(status: &leaderlease::Status, own_id: &str) -> StatusInfo {
    match status {
        leaderlease::Status::Leader { term } => StatusInfo {
            state: LeaderState::Leader,
            leader_id: Some(own_id.to_owned()),
            term: Some(*term as f64),
        },
        leaderlease::Status::Candidate { leader } => StatusInfo {
            state: LeaderState::Candidate,
            leader_id: leader.as_ref().map(|(id, _)| id.clone()),
            term: leader.as_ref().map(|(_, term)| *term as f64),
        },
        leaderlease::Status::Stopped => StatusInfo {
            state: LeaderState::Stopped,
            leader_id: None,
            term: None,
        },
    }
}

/// The leader this node last observed (itself while it leads).
#[napi(object)]
#[derive(Debug)]
pub struct LeaderInfo {
    /// The leader's instance id.
    pub leader_id: String,
    /// The leader's fencing term.
    pub term: f64,
    /// Estimated milliseconds until that lease ends (0 once past), by this node's monotonic clock.
    pub expires_in: f64,
}

/// One decision of the election, complete, as `onStateChange` reports it and `state()` returns it.
#[napi(object)]
#[derive(Debug)]
pub struct StateSnapshot {
    /// Numbers the decisions of this elector in the order they were made (0 is the initial state).
    pub seq: f64,
    /// `candidate`, `leader` or `stopped`.
    pub state: LeaderState,
    /// The leader's instance id (this node's own while it leads), if known.
    pub leader_id: Option<String>,
    /// The leader's fencing term, if known.
    pub term: Option<f64>,
    /// While leading: the local lease deadline in milliseconds on the clock of `Elector.clockNow()`
    /// (the core's monotonic clock, not `performance.now()`'s: compare it only with `clockNow()`).
    pub deadline: Option<f64>,
    /// `generation()` when this was decided: a leader snapshot is this node's lease only while
    /// `generation()` still returns this value.
    pub generation: u32,
}

fn state_snapshot(s: &leaderlease::Snapshot, own_id: &str) -> StateSnapshot {
    let info = status_info(&s.status, own_id);
    StateSnapshot {
        seq: s.seq as f64,
        state: info.state,
        leader_id: info.leader_id,
        term: info.term,
        deadline: s.lease.map(|l| clock_ms(l.deadline)),
        generation: s.generation,
    }
}

/// `at` on the binding's deadline clock: milliseconds of `Instant` (the core's monotonic clock) since the
/// addon first read it. JavaScript never assumes this shares a time base with `performance.now()` (it does
/// not on macOS, where `Instant` reads CLOCK_UPTIME_RAW and libuv `mach_continuous_time`): it converts a
/// deadline by reading `performance.now()` and then `Elector.clockNow()` (see ts/deadline.ts).
fn clock_ms(at: Instant) -> f64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    if at >= base {
        (at - base).as_secs_f64() * 1000.0
    } else {
        -((base - at).as_secs_f64() * 1000.0)
    }
}

/// A running election. Create it with `Elector.connect(url, options)`.
#[napi]
pub struct Elector {
    inner: Arc<leaderlease::Elector>,
    /// The event loop heartbeat, when `maxEventLoopStall` is on.
    heartbeat: Option<Arc<Heartbeat>>,
    /// The generation view has been handed out (at most one external buffer per memory location).
    view_taken: AtomicBool,
    /// Set when the view's memory was let go by JavaScript: collected, or copied at once by a runtime
    /// without external buffers (then the view would never change, and must not be trusted).
    view_released: Arc<AtomicBool>,
    /// Where the core's events go, when a callback was given.
    events: Option<Arc<EventSink>>,
}

impl Elector {
    fn new(
        inner: leaderlease::Elector,
        heartbeat: Option<Arc<Heartbeat>>,
        events: Option<Arc<EventSink>>,
    ) -> Self {
        Self {
            inner: Arc::new(inner),
            heartbeat,
            view_taken: AtomicBool::new(false),
            view_released: Arc::new(AtomicBool::new(false)),
            events,
        }
    }
}

/// The sink of `on_event`, and its forwarding task (which ends, dropping the callback, when the election's
/// config, holding the sink, is dropped).
fn event_sink(on_event: Option<EventCallback>) -> Option<Arc<EventSink>> {
    let callback = on_event?;
    let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<ElectorEvent>();
    spawn(async move {
        while let Some(event) = rx.recv().await {
            tokio::task::yield_now().await;
            callback.call(event, ThreadsafeFunctionCallMode::NonBlocking);
        }
    });
    Some(Arc::new(EventSink {
        queue,
        max_rank: AtomicU8::new(level_rank(Level::INFO)),
        identity: std::sync::OnceLock::new(),
    }))
}

/// What the factories (`connect`, `connectPg`, `connectNats`) build before they connect.
struct Prepared {
    config: ElectorConfig,
    heartbeat: Option<Arc<Heartbeat>>,
    events: Option<Arc<EventSink>>,
}

/// The part the factories share: the sink of `on_event` (and its forwarding task), the config from
/// `options` (a typed error naming the JavaScript field), the sink's lock id and instance id, and the
/// first beat of the event loop heartbeat, if on.
fn prepare(
    options: Option<ElectorOptions>,
    on_event: Option<EventCallback>,
    fleet: Option<(&leaderlease::fleet::Fleet, String)>,
) -> Result<Prepared> {
    let events = event_sink(on_event);
    let (config, heartbeat) = options
        .unwrap_or_default()
        .into_config(events.clone(), fleet)
        .map_err(|e| to_js(e.into()))?;
    if let Some(sink) = &events {
        let _ = sink
            .identity
            .set((config.lock_id(), config.instance_id().to_owned()));
    }
    if let Some(h) = &heartbeat {
        h.beat();
    }
    Ok(Prepared {
        config,
        heartbeat,
        events,
    })
}

/// Whether the elector can reach its store (see `Elector.storeHealth()`).
#[napi(object)]
#[derive(Debug)]
pub struct StoreHealth {
    /// The last store operation got an answer.
    pub connected: bool,
    /// The error of the last failed operation, if any (kept after the store answers again).
    pub last_error: Option<String>,
    /// When `connected` took its current value, in milliseconds since the Unix epoch (`Date.now()`).
    pub since: f64,
}

/// A JavaScript `Uint32Array` of length 1 whose memory is the core's step-down counter itself, so that
/// JavaScript reads it with `Atomics.load` without calling into native code.
#[allow(unsafe_code)]
fn shared_counter(cell: Arc<AtomicU32>, released: Arc<AtomicBool>) -> Uint32Array {
    let ptr = cell.as_ptr();
    // SAFETY: `ptr` points to the `u32` inside the `AtomicU32` (same size and alignment) of the `Arc`'s
    // allocation, which stays alive as long as the clone moved into the finalizer below: that clone is
    // dropped only when the JavaScript buffer is collected, or at once when the runtime refuses external
    // buffers and copies the data (then `released` says so). Length 1. The core writes it only with
    // atomic operations; JavaScript reads it with `Atomics.load` (a 32-bit atomic load) and never writes.
    unsafe {
        Uint32Array::with_external_data(ptr, 1, move |_, _| {
            released.store(true, Ordering::SeqCst);
            drop(cell);
        })
    }
}

#[napi]
impl Elector {
    /// Connects to PostgreSQL at `url`, prepares the table (unless `createTableOnInit` is false) and
    /// starts campaigning. All elections of the process on the same URL and operation timeout share one
    /// small pool, one `LISTEN` connection (a release wakes the waiting candidates at once) and batched
    /// renewals; the connections close when the last of them shuts down.
    /// `onEvent` receives the election's log events (see `ElectorEvent`, `setEventLevel`); it must not
    /// throw, and never keeps the process alive.
    #[napi(factory)]
    pub async fn connect(
        url: String,
        options: Option<ElectorOptions>,
        on_event: Option<
            ThreadsafeFunction<ElectorEvent, (), ElectorEvent, NapiStatus, false, true>,
        >,
    ) -> Result<Self> {
        let p = prepare(options, on_event, None)?;
        let inner = leaderlease::Elector::connect_shared(&url, p.config)
            .await
            .map_err(to_js)?;
        Ok(Self::new(inner, p.heartbeat, p.events))
    }

    /// Like `connect`, with the connection given field by field (a TypeORM DataSource's settings, TLS
    /// certificates as PEM text, a pooler in between). Elections whose connection and operation timeout
    /// are equal share one hub.
    #[napi(factory)]
    pub async fn connect_pg(
        connection: PgConnection,
        options: Option<ElectorOptions>,
        on_event: Option<
            ThreadsafeFunction<ElectorEvent, (), ElectorEvent, NapiStatus, false, true>,
        >,
    ) -> Result<Self> {
        let settings = connection.into_settings().map_err(|e| to_js(e.into()))?;
        let p = prepare(options, on_event, None)?;
        let inner = leaderlease::Elector::connect_shared_settings(&settings, p.config)
            .await
            .map_err(to_js)?;
        Ok(Self::new(inner, p.heartbeat, p.events))
    }

    /// Connects to NATS at `url` (e.g. `nats://127.0.0.1:4222`, or several servers separated by commas)
    /// and campaigns in the JetStream KV bucket `bucket` (default `leaderlease`; created with per-key TTL
    /// if missing, see `NatsBackend::open_bucket`). The key is `lock-<lockId>`. No server reachable:
    /// `ERR_STORE_UNREACHABLE`.
    #[napi(factory)]
    pub async fn connect_nats(
        url: String,
        bucket: Option<String>,
        options: Option<ElectorOptions>,
        on_event: Option<
            ThreadsafeFunction<ElectorEvent, (), ElectorEvent, NapiStatus, false, true>,
        >,
    ) -> Result<Self> {
        let p = prepare(options, on_event, None)?;
        let bucket = bucket.unwrap_or_else(|| leaderlease::nats::DEFAULT_BUCKET.to_owned());
        let backend = leaderlease::NatsBackend::connect(&url, &bucket, &p.config)
            .await
            .map_err(to_js)?;
        let inner = leaderlease::Elector::start(backend, p.config)
            .await
            .map_err(to_js)?;
        Ok(Self::new(inner, p.heartbeat, p.events))
    }

    /// A leader job of the JavaScript layer began: a release, shutdown or fleet handover waits for it (at
    /// most one lease) until `workFinished()`.
    #[napi(catch_unwind)]
    pub fn work_started(&self) {
        self.inner.work_started();
    }

    /// The leader job counted by `workStarted()` ended.
    #[napi(catch_unwind)]
    pub fn work_finished(&self) {
        self.inner.work_finished();
    }

    /// True only while this node holds an unexpired lease (local deadline included). No database
    /// access, no allocation.
    #[napi(catch_unwind)]
    pub fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }

    /// The fencing term of the current leadership, or null when not leader.
    #[napi(catch_unwind)]
    pub fn term(&self) -> Option<f64> {
        self.inner.term().map(|t| t as f64)
    }

    /// The leader this node last observed (itself while it leads), or null.
    #[napi(catch_unwind)]
    pub fn leader(&self) -> Option<LeaderInfo> {
        let now = Instant::now();
        self.inner.leader().map(|l| LeaderInfo {
            leader_id: l.leader_id,
            term: l.term as f64,
            expires_in: l.expires_at.saturating_duration_since(now).as_secs_f64() * 1000.0,
        })
    }

    /// The current status.
    #[napi(catch_unwind)]
    pub fn status(&self) -> StatusInfo {
        status_info(&self.inner.status(), self.inner.config().instance_id())
    }

    /// Whether this election reaches its store, from the outcomes of its own operations.
    #[napi(catch_unwind)]
    pub fn store_health(&self) -> StoreHealth {
        let h = self.inner.store_health();
        let age = h.since.elapsed();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        StoreHealth {
            connected: h.connected,
            last_error: h.last_error,
            since: ms(now.saturating_sub(age)).floor(),
        }
    }

    /// The highest level of the events handed to `onEvent`: `error`, `warn`, `info` (the default) or
    /// `debug` (adds one event per renewal). Unknown names count as `info`.
    #[napi(catch_unwind)]
    pub fn set_event_level(&self, level: String) {
        let rank = match level.as_str() {
            "error" => 0,
            "warn" => 1,
            "debug" => 3,
            "trace" => 4,
            _ => 2,
        };
        if let Some(sink) = &self.events {
            sink.max_rank.store(rank, Ordering::Relaxed);
        }
    }

    /// The lease duration in milliseconds.
    #[napi(getter, catch_unwind)]
    pub fn lease_duration(&self) -> f64 {
        ms(self.inner.config().lease_duration())
    }

    /// This candidate's instance id.
    #[napi(getter, catch_unwind)]
    pub fn instance_id(&self) -> String {
        self.inner.config().instance_id().to_owned()
    }

    /// The lock id (lease row) of this election.
    #[napi(getter, catch_unwind)]
    pub fn lock_id(&self) -> i32 {
        self.inner.config().lock_id()
    }

    /// The schema of the lease table (PostgreSQL), where the fence function lives.
    #[napi(getter, catch_unwind)]
    pub fn schema(&self) -> String {
        self.inner.config().schema().to_owned()
    }

    /// The effective `maxEventLoopStall` in milliseconds; 0 when the event loop check is off.
    #[napi(getter, catch_unwind)]
    pub fn max_event_loop_stall(&self) -> f64 {
        self.heartbeat
            .as_ref()
            .map_or(0.0, |h| h.bound.as_secs_f64() * 1000.0)
    }

    /// Records that the JavaScript event loop is alive (call it from a timer, more often than
    /// `maxEventLoopStall`). Does nothing when the check is off.
    #[napi(catch_unwind)]
    pub fn heartbeat(&self) {
        if let Some(h) = &self.heartbeat {
            h.beat();
        }
    }

    /// Counts this node's step-downs; it changes before `isLeader()` turns false (except by the deadline
    /// passing), so a leader snapshot holds only while this still equals its `generation`.
    #[napi(catch_unwind)]
    pub fn generation(&self) -> u32 {
        self.inner.generation()
    }

    /// The memory of `generation()` as a `Uint32Array` of length 1, to read with `Atomics.load(view, 0)`
    /// instead of calling `generation()`; null after the first call. Check `generationViewIsLive()` right
    /// after taking it: a runtime without external buffers (Electron) hands out a copy, which never
    /// changes.
    #[napi(catch_unwind)]
    pub fn generation_view(&self) -> Option<Uint32Array> {
        if self.view_taken.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(shared_counter(
            self.inner.generation_cell(),
            self.view_released.clone(),
        ))
    }

    /// True while the view of `generationView()` is the counter's own memory (false if it was copied).
    #[napi(catch_unwind)]
    pub fn generation_view_is_live(&self) -> bool {
        self.view_taken.load(Ordering::SeqCst) && !self.view_released.load(Ordering::SeqCst)
    }

    /// Now on the clock of `StateSnapshot.deadline`, in milliseconds: `deadline - clockNow()` is how long
    /// the lease has left. Read `performance.now()` before calling it, so that a deadline converted to
    /// `performance.now()` comes out early, never late.
    #[napi(catch_unwind)]
    pub fn clock_now() -> f64 {
        clock_ms(Instant::now())
    }

    /// The latest decision (see `onStateChange`).
    #[napi(catch_unwind)]
    pub fn state(&self) -> StateSnapshot {
        state_snapshot(&self.inner.snapshot(), self.inner.config().instance_id())
    }

    /// Calls `callback` with the current state and then with every decision of the core, complete
    /// (state, leader, term, deadline, generation) and in the order it made them, renewals included,
    /// until the elector stops (the last call reports `stopped`). Decisions made faster than the
    /// callback runs may be skipped, never reordered (`seq` grows). The callback must not throw. The
    /// subscription is weak: it never keeps the Node process alive.
    #[napi(catch_unwind)]
    pub fn on_state_change(
        &self,
        callback: ThreadsafeFunction<StateSnapshot, (), StateSnapshot, NapiStatus, false, true>,
    ) {
        let mut rx = self.inner.subscribe_state();
        let own_id = self.inner.config().instance_id().to_owned();
        spawn(async move {
            loop {
                let snapshot = state_snapshot(&rx.borrow_and_update(), &own_id);
                let stopped = snapshot.state == LeaderState::Stopped;
                callback.call(snapshot, ThreadsafeFunctionCallMode::NonBlocking);
                if stopped || rx.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    /// Gives up leadership now, if held, and stays a candidate (standing back briefly so another node
    /// takes over). Does nothing on a follower. Resolves with the `seq` of the latest decision once the
    /// release is done: every snapshot up to it was decided before the release completed.
    #[napi]
    pub async fn release(&self) -> Result<f64> {
        self.inner.release().await.map_err(to_js)?;
        Ok(self.inner.snapshot().seq as f64)
    }

    /// Stops campaigning for good: releases the lease if held and closes the connections. Idempotent.
    #[napi]
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown().await.map_err(to_js)
    }
}

/// The SQL that creates (or upgrades) the lease table in `schema` (default `public`).
#[napi(catch_unwind)]
pub fn up_sql(schema: Option<String>) -> String {
    leaderlease::schema::up_sql(schema.as_deref().unwrap_or(leaderlease::DEFAULT_SCHEMA))
}

/// The SQL that drops the lease table and its sequence from `schema` (default `public`).
#[napi(catch_unwind)]
pub fn down_sql(schema: Option<String>) -> String {
    leaderlease::schema::down_sql(schema.as_deref().unwrap_or(leaderlease::DEFAULT_SCHEMA))
}

/// Every error code the native layer can put on an error (`ERR_INVALID_CONFIG`, ...).
#[napi(catch_unwind)]
pub fn error_codes() -> Vec<String> {
    leaderlease::Error::CODES
        .iter()
        .map(|c| (*c).to_owned())
        .collect()
}
