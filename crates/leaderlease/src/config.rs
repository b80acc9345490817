//! Election settings: a builder with named defaults, validated once.

use std::fmt;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::LivenessCheck;
use crate::events::{Event, EventObserver};

/// Default lease duration: how long a lease lives in the database without renewal.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_millis(10_000);
/// Default time between two renewals by the leader (and between two polls by a follower).
pub const DEFAULT_RENEWAL_INTERVAL: Duration = Duration::from_millis(3_000);
/// Default width of the uniform jitter around every interval (the interval ± half of this).
pub const DEFAULT_JITTER_RANGE: Duration = Duration::from_millis(2_000);
/// Default lock id: the row of the lease table this election uses.
pub const DEFAULT_LOCK_ID: i32 = 1;
/// Default schema of the lease table.
pub const DEFAULT_SCHEMA: &str = "public";
/// By default the table (and schema, sequence, index) are created or upgraded at start.
pub const DEFAULT_CREATE_TABLE_ON_INIT: bool = true;
/// By default a candidate that finds the database server changed (a failover) waits one lease before
/// acquiring (see [`ElectorBuilder::with_failover_quarantine`]).
pub const DEFAULT_FAILOVER_QUARANTINE: bool = true;
/// The cleanup interval defaults to this many lease durations.
pub const DEFAULT_CLEAN_INTERVAL_LEASES: u32 = 6;
/// Rows expired for longer than this are deleted by cleanup.
pub const CLEANUP_GRACE: Duration = Duration::from_secs(5);
/// Longest accepted lease duration.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest accepted cleanup interval.
pub const MAX_CLEAN_INTERVAL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Longest accepted instance id, in bytes.
pub const MAX_INSTANCE_ID_LEN: usize = 255;
/// Longest schema name PostgreSQL keeps (NAMEDATALEN - 1), in bytes.
pub const MAX_SCHEMA_LEN: usize = 63;

/// A configuration value that breaks a rule. `field` names the setting, `rule` says what it must be;
/// other settings named in `rule` are written in backticks (`` `lease_duration` ``), so a binding can
/// rename them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting, by its Rust name (`lease_duration`, `lock_id`, ...).
    pub field: &'static str,
    /// The rule it broke, with the offending value.
    pub rule: String,
}

impl ConfigError {
    /// A new error for `field`.
    pub fn new(field: &'static str, rule: impl Into<String>) -> Self {
        Self {
            field,
            rule: rule.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid leader election config: `{}` {}",
            self.field, self.rule
        )
    }
}

impl std::error::Error for ConfigError {}

/// The liveness check of a config, if any, shown in `Debug` output as present or not.
#[derive(Clone, Default)]
pub(crate) struct Liveness(pub(crate) Option<LivenessCheck>);

impl fmt::Debug for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// The event observer of a config, if any, shown in `Debug` output as present or not.
#[derive(Clone, Default)]
pub(crate) struct Observer(pub(crate) Option<EventObserver>);

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// Validated settings of one election. Build it with [`ElectorConfig::builder`].
#[derive(Debug, Clone)]
pub struct ElectorConfig {
    pub(crate) lease_duration: Duration,
    pub(crate) renewal_interval: Duration,
    pub(crate) jitter_range: Duration,
    pub(crate) clean_interval: Duration,
    pub(crate) lock_id: i32,
    pub(crate) instance_id: String,
    pub(crate) schema: String,
    pub(crate) create_table_on_init: bool,
    pub(crate) failover_quarantine: bool,
    pub(crate) safety_margin: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) cancellation: Option<CancellationToken>,
    pub(crate) liveness: Liveness,
    pub(crate) observer: Observer,
    pub(crate) metrics_name: Option<String>,
    /// The plan's placement of this election's name ([`ElectorBuilder::with_fleet`]).
    pub(crate) placement: Option<crate::fleet::Seat>,
}

impl ElectorConfig {
    /// A builder holding the defaults.
    pub fn builder() -> ElectorBuilder {
        ElectorBuilder::default()
    }
    /// How long a lease lives in the database without renewal.
    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }
    /// Mean time between renewals (leader) and polls (follower).
    pub fn renewal_interval(&self) -> Duration {
        self.renewal_interval
    }
    /// Width of the uniform jitter around each interval.
    pub fn jitter_range(&self) -> Duration {
        self.jitter_range
    }
    /// Mean time between two cleanups of long-expired rows.
    pub fn clean_interval(&self) -> Duration {
        self.clean_interval
    }
    /// The lease row this election uses.
    pub fn lock_id(&self) -> i32 {
        self.lock_id
    }
    /// This candidate's identity, written to `leader_id`.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
    /// Schema of the lease table (unquoted).
    pub fn schema(&self) -> &str {
        &self.schema
    }
    /// Whether the table is created or upgraded at start.
    pub fn create_table_on_init(&self) -> bool {
        self.create_table_on_init
    }
    /// Whether a candidate that finds the database server changed waits one lease before acquiring
    /// ([`ElectorBuilder::with_failover_quarantine`]).
    pub fn failover_quarantine(&self) -> bool {
        self.failover_quarantine
    }
    /// How long before the lease's end, as measured from the request's send time, the leader steps down.
    pub fn safety_margin(&self) -> Duration {
        self.safety_margin
    }
    /// The local deadline of a lease whose acquire or renew was sent at `sent` and then confirmed:
    /// `sent + lease_duration - safety_margin`, on the local monotonic clock. Every local deadline of
    /// the crate ([`crate::Elector::is_leader`], [`crate::Lease::deadline`], the step-down) comes from
    /// here.
    ///
    /// It counts from the moment the request was *sent*, not from when the answer came back: the store
    /// began (or extended) the lease no earlier than it received the request, and judges its expiry by
    /// its own clock, so it lets nobody else in before `sent + lease_duration` (with both clocks running
    /// at about the same rate). Counting from the answer would add the round trip, and any stall before
    /// the answer was read, to this node's time, past the store's expiry. The safety margin covers the
    /// drift between the clocks and the delay between checking leadership and acting on it. The builder
    /// keeps `safety_margin + renewal_interval + jitter_range / 2` below `lease_duration`, so the
    /// deadline comes after the send time of the next renewal.
    pub(crate) fn local_deadline(&self, sent: Instant) -> Instant {
        if crate::seam::mutant(crate::seam::Mutant::NoSafetyMargin) {
            return sent + self.lease_duration;
        }
        sent + self.lease_duration - self.safety_margin
    }
    /// Upper bound of one database operation, connection included.
    pub fn operation_timeout(&self) -> Duration {
        self.operation_timeout
    }
    /// The external shutdown token, if one was given.
    pub fn cancellation(&self) -> Option<&CancellationToken> {
        self.cancellation.as_ref()
    }
    /// Whether a liveness check was set ([`ElectorBuilder::with_liveness_check`]).
    pub fn has_liveness_check(&self) -> bool {
        self.liveness.0.is_some()
    }
    /// The observer set with [`ElectorBuilder::with_observer`], if any.
    pub fn observer(&self) -> Option<&EventObserver> {
        self.observer.0.as_ref()
    }
    /// The `name` label of this election's metrics (feature `metrics`): the one set with
    /// [`ElectorBuilder::with_metrics_name`], else the lock id.
    pub fn metrics_name(&self) -> String {
        self.metrics_name
            .clone()
            .unwrap_or_else(|| self.lock_id.to_string())
    }
    /// Runs the liveness check: true when none is set.
    pub fn is_alive(&self) -> bool {
        self.liveness.0.as_ref().is_none_or(|check| check())
    }
}

/// Builds an [`ElectorConfig`]. Every setting has a default; [`build`](Self::build) checks them all.
///
/// ```
/// use std::time::Duration;
/// use leaderlease::ElectorConfig;
///
/// let config = ElectorConfig::builder()
///     .with_lock_id(42)
///     .with_lease_duration(Duration::from_secs(3))
///     .with_renewal_interval(Duration::from_secs(1))
///     .with_jitter_range(Duration::from_millis(400))
///     .build()?;
/// assert_eq!(config.lock_id(), 42);
///
/// let err = ElectorConfig::builder()
///     .with_renewal_interval(Duration::from_secs(20))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field, "renewal_interval");
/// # Ok::<(), leaderlease::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ElectorBuilder {
    lease_duration: Duration,
    renewal_interval: Duration,
    jitter_range: Duration,
    clean_interval: Option<Duration>,
    lock_id: i64,
    instance_id: Option<String>,
    schema: String,
    create_table_on_init: bool,
    failover_quarantine: bool,
    safety_margin: Option<Duration>,
    operation_timeout: Option<Duration>,
    cancellation: Option<CancellationToken>,
    liveness: Liveness,
    observer: Observer,
    metrics_name: Option<String>,
    placement: Option<crate::fleet::Seat>,
}

impl Default for ElectorBuilder {
    fn default() -> Self {
        Self {
            lease_duration: DEFAULT_LEASE_DURATION,
            renewal_interval: DEFAULT_RENEWAL_INTERVAL,
            jitter_range: DEFAULT_JITTER_RANGE,
            clean_interval: None,
            lock_id: DEFAULT_LOCK_ID as i64,
            instance_id: None,
            schema: DEFAULT_SCHEMA.to_owned(),
            create_table_on_init: DEFAULT_CREATE_TABLE_ON_INIT,
            failover_quarantine: DEFAULT_FAILOVER_QUARANTINE,
            safety_margin: None,
            operation_timeout: None,
            cancellation: None,
            liveness: Liveness::default(),
            observer: Observer::default(),
            metrics_name: None,
            placement: None,
        }
    }
}

impl ElectorBuilder {
    /// Lease duration (default [`DEFAULT_LEASE_DURATION`]).
    pub fn with_lease_duration(mut self, d: Duration) -> Self {
        self.lease_duration = d;
        self
    }
    /// Renewal and poll interval (default [`DEFAULT_RENEWAL_INTERVAL`]); must be below the lease.
    pub fn with_renewal_interval(mut self, d: Duration) -> Self {
        self.renewal_interval = d;
        self
    }
    /// Jitter range (default [`DEFAULT_JITTER_RANGE`]); must be below the renewal interval. Zero disables jitter.
    pub fn with_jitter_range(mut self, d: Duration) -> Self {
        self.jitter_range = d;
        self
    }
    /// Cleanup interval (default [`DEFAULT_CLEAN_INTERVAL_LEASES`] × lease duration).
    pub fn with_clean_interval(mut self, d: Duration) -> Self {
        self.clean_interval = Some(d);
        self
    }
    /// Lock id: which row of the lease table this election uses (default [`DEFAULT_LOCK_ID`]).
    /// Must fit the table's `INT` column.
    pub fn with_lock_id(mut self, id: i64) -> Self {
        self.lock_id = id;
        self
    }
    /// This candidate's identity (default: hostname, process id and a random suffix, unique per process).
    pub fn with_instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }
    /// Schema of the lease table (default [`DEFAULT_SCHEMA`]). Any name PostgreSQL accepts; it is always quoted.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
    /// Create or upgrade the table at start (default true). When false, a missing or outdated table is an
    /// error that asks for the migration.
    pub fn with_create_table_on_init(mut self, yes: bool) -> Self {
        self.create_table_on_init = yes;
        self
    }
    /// The failover quarantine (default on; PostgreSQL): a candidate remembers which database server it
    /// talks to (its system identifier and WAL timeline, read at start and before every acquisition,
    /// never on a renewal), and when that changes (a standby was promoted, or the name now points at
    /// another cluster) it does not acquire until one full lease duration after it first saw the change.
    ///
    /// Why: with asynchronous replication a promoted standby can lack the last acquisitions and
    /// renewals the old primary acknowledged; their holder still leads until its local deadline (at
    /// most one lease after its last acknowledged renewal, which came before the failover), while the
    /// promoted server shows the lease expired or absent. Waiting one lease from the moment the new
    /// server is first seen outlasts that deadline. The cost: after a failover the election has no
    /// leader for about one lease more (a leader whose lease the new server has, through synchronous
    /// replication, keeps renewing it meanwhile). Turn it off only where every failover target is a
    /// synchronous standby. See docs/design.md, "Failover".
    pub fn with_failover_quarantine(mut self, on: bool) -> Self {
        self.failover_quarantine = on;
        self
    }
    /// Safety margin: the leader considers its lease over this long before `send time + lease duration`
    /// (default: a tenth of the lease, at least 50 ms). Covers clock-rate drift and scheduling delay.
    pub fn with_safety_margin(mut self, d: Duration) -> Self {
        self.safety_margin = Some(d);
        self
    }
    /// Upper bound of one database operation including getting a connection (default: half the renewal
    /// interval, at most 2 s). Must be below the renewal interval.
    pub fn with_operation_timeout(mut self, d: Duration) -> Self {
        self.operation_timeout = Some(d);
        self
    }

    /// Shuts the elector down (releasing its lease) when `token` is cancelled, as
    /// [`Elector::shutdown`](crate::Elector::shutdown) does.
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.cancellation = Some(token);
        self
    }

    /// Ties this node's leadership to a liveness check of the application's own (default: none, the node
    /// campaigns and renews as long as its Tokio runtime runs).
    ///
    /// `check` is called before every acquire and every renewal is sent, on the elector's task; it must
    /// be cheap and must not block (read an atomic, compare a timestamp). When it returns false:
    /// - while leading, the node steps down (the work token of
    ///   [`run_while_leader`](crate::Elector::run_while_leader) is cancelled), deletes its lease (so
    ///   another candidate takes over at once, as after [`release`](crate::Elector::release), without
    ///   waiting for that work to return) and stands back as a released leader does;
    /// - as a candidate, it neither reads nor acquires the lease, and calls `check` again every
    ///   [`LIVENESS_RECHECK_INTERVAL`](crate::LIVENESS_RECHECK_INTERVAL) until it passes, then
    ///   campaigns as usual.
    ///
    /// The typical check is a heartbeat: the part of the application that does the leader's work stores a
    /// monotonic timestamp in an atomic from a periodic timer, and the check compares its age with a
    /// bound. A stalled work loop then hands its leadership over instead of holding it while doing
    /// nothing. Pick the bound below `lease_duration - safety_margin` so a stall is noticed while the
    /// lease still stands; `is_leader()` is not affected by the check, so code that reads it from the
    /// stalled part should also compare the heartbeat's age itself.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::time::{Duration, Instant};
    /// use leaderlease::ElectorConfig;
    ///
    /// let start = Instant::now();
    /// let last_beat = Arc::new(AtomicU64::new(0)); // ms since `start`, stored by the worker's timer
    /// let beat = last_beat.clone();
    /// let config = ElectorConfig::builder()
    ///     .with_liveness_check(move || {
    ///         let now = start.elapsed().as_millis() as u64;
    ///         now.saturating_sub(beat.load(Ordering::Acquire)) <= 5_000
    ///     })
    ///     .build()?;
    /// assert!(config.has_liveness_check());
    /// # Ok::<(), leaderlease::ConfigError>(())
    /// ```
    pub fn with_liveness_check(mut self, check: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.liveness = Liveness(Some(std::sync::Arc::new(check)));
        self
    }

    /// Hands every [`Event`](crate::Event) of the election (each line it logs with `tracing`, as a
    /// value: kind, level, message, term, reason, error, latency, ...) to `observer`, on the election's
    /// task. It must be cheap and must not block; a panic in it is caught. Events of the `LISTEN`
    /// connection that the election shares with others on its hub reach every election's observer.
    ///
    /// ```
    /// use leaderlease::{ElectorConfig, EventKind};
    ///
    /// let config = ElectorConfig::builder()
    ///     .with_observer(|e| {
    ///         if e.kind == EventKind::SteppedDown {
    ///             eprintln!("stepped down: {:?}", e.reason);
    ///         }
    ///     })
    ///     .build()?;
    /// assert!(config.observer().is_some());
    /// # Ok::<(), leaderlease::ConfigError>(())
    /// ```
    pub fn with_observer(mut self, observer: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.observer = Observer(Some(std::sync::Arc::new(observer)));
        self
    }

    /// The `name` label of this election's metrics (cargo feature `metrics`; default: the lock id).
    pub fn with_metrics_name(mut self, name: impl Into<String>) -> Self {
        self.metrics_name = Some(name.into());
        self
    }

    /// Makes this election the fleet's election of `name` (see [`Fleet`](crate::fleet::Fleet)): it
    /// campaigns only while the plan gives `name` to this member (or when the name has had no leader for
    /// one lease), and a leader of it hands it over when the plan moves it. Every member should run the
    /// same names, each on the same lock id. The election's instance id becomes the member's id (so
    /// that every member can tell who holds a name), unless [`with_instance_id`](Self::with_instance_id)
    /// comes after this.
    pub fn with_fleet(mut self, fleet: &crate::fleet::Fleet, name: impl Into<String>) -> Self {
        self.placement = Some(fleet.register(name.into()));
        self.instance_id = Some(fleet.membership().id().to_owned());
        self
    }

    /// Checks every rule and returns the settings, or the first rule broken.
    pub fn build(self) -> Result<ElectorConfig, ConfigError> {
        let ms = |d: Duration| d.as_millis();
        for (field, d) in [
            ("lease_duration", Some(self.lease_duration)),
            ("renewal_interval", Some(self.renewal_interval)),
            ("clean_interval", self.clean_interval),
            ("operation_timeout", self.operation_timeout),
        ] {
            if let Some(d) = d
                && d < Duration::from_millis(1)
            {
                return Err(ConfigError::new(
                    field,
                    format!("must be a positive duration of at least 1 ms (got {d:?})"),
                ));
            }
        }
        if self.lease_duration > MAX_LEASE_DURATION {
            return Err(ConfigError::new(
                "lease_duration",
                format!("must be at most 24 h (got {:?})", self.lease_duration),
            ));
        }
        if let Some(d) = self.clean_interval
            && d > MAX_CLEAN_INTERVAL
        {
            return Err(ConfigError::new(
                "clean_interval",
                format!("must be at most 30 days (got {d:?})"),
            ));
        }
        if self.renewal_interval >= self.lease_duration {
            return Err(ConfigError::new(
                "renewal_interval",
                format!(
                    "must be below `lease_duration` (got {} ms, `lease_duration` is {} ms)",
                    ms(self.renewal_interval),
                    ms(self.lease_duration)
                ),
            ));
        }
        if self.jitter_range >= self.renewal_interval {
            return Err(ConfigError::new(
                "jitter_range",
                format!(
                    "must be below `renewal_interval` (got {} ms, `renewal_interval` is {} ms)",
                    ms(self.jitter_range),
                    ms(self.renewal_interval)
                ),
            ));
        }
        let safety_margin = self
            .safety_margin
            .unwrap_or_else(|| (self.lease_duration / 10).max(Duration::from_millis(50)));
        // The latest renewal (interval + half the jitter) must be sent while the lease is still valid locally.
        let latest_renewal = self.renewal_interval + self.jitter_range / 2;
        if latest_renewal
            .checked_add(safety_margin)
            .is_none_or(|end| end >= self.lease_duration)
        {
            return Err(ConfigError::new(
                "safety_margin",
                format!(
                    "plus `renewal_interval` and half of `jitter_range` must stay below `lease_duration` \
                     (got {} + {} + {} ms >= {} ms)",
                    ms(safety_margin),
                    ms(self.renewal_interval),
                    ms(self.jitter_range / 2),
                    ms(self.lease_duration)
                ),
            ));
        }
        let operation_timeout = self
            .operation_timeout
            .unwrap_or_else(|| (self.renewal_interval / 2).min(Duration::from_secs(2)));
        if operation_timeout >= self.renewal_interval {
            return Err(ConfigError::new(
                "operation_timeout",
                format!(
                    "must be below `renewal_interval` (got {} ms, `renewal_interval` is {} ms)",
                    ms(operation_timeout),
                    ms(self.renewal_interval)
                ),
            ));
        }
        let lock_id = i32::try_from(self.lock_id).map_err(|_| {
            ConfigError::new(
                "lock_id",
                format!(
                    "must fit the lease table's INT column, {} ..= {} (got {})",
                    i32::MIN,
                    i32::MAX,
                    self.lock_id
                ),
            )
        })?;
        validate_schema(&self.schema)?;
        let instance_id = match self.instance_id {
            Some(id) => {
                validate_instance_id(&id)?;
                id
            }
            None => default_instance_id(),
        };
        let clean_interval = self
            .clean_interval
            .unwrap_or_else(|| self.lease_duration * DEFAULT_CLEAN_INTERVAL_LEASES);
        Ok(ElectorConfig {
            lease_duration: self.lease_duration,
            renewal_interval: self.renewal_interval,
            jitter_range: self.jitter_range,
            clean_interval,
            lock_id,
            instance_id,
            schema: self.schema,
            create_table_on_init: self.create_table_on_init,
            failover_quarantine: self.failover_quarantine,
            safety_margin,
            operation_timeout,
            cancellation: self.cancellation,
            liveness: self.liveness,
            observer: self.observer,
            metrics_name: self.metrics_name,
            placement: self.placement,
        })
    }
}

fn validate_schema(schema: &str) -> Result<(), ConfigError> {
    if schema.is_empty() {
        return Err(ConfigError::new("schema", "must not be empty"));
    }
    if schema.len() > MAX_SCHEMA_LEN {
        return Err(ConfigError::new(
            "schema",
            format!(
                "must be at most {MAX_SCHEMA_LEN} bytes, PostgreSQL's identifier limit (got {})",
                schema.len()
            ),
        ));
    }
    if schema.contains('\0') {
        return Err(ConfigError::new(
            "schema",
            "must not contain a NUL character",
        ));
    }
    if schema.starts_with("pg_") {
        return Err(ConfigError::new(
            "schema",
            format!("must not start with `pg_`, which PostgreSQL reserves (got {schema:?})"),
        ));
    }
    Ok(())
}

fn validate_instance_id(id: &str) -> Result<(), ConfigError> {
    if id.trim().is_empty() {
        return Err(ConfigError::new(
            "instance_id",
            "must not be empty or blank",
        ));
    }
    if id.len() > MAX_INSTANCE_ID_LEN {
        return Err(ConfigError::new(
            "instance_id",
            format!(
                "must be at most {MAX_INSTANCE_ID_LEN} bytes (got {})",
                id.len()
            ),
        ));
    }
    if id.contains('\0') {
        return Err(ConfigError::new(
            "instance_id",
            "must not contain a NUL character",
        ));
    }
    Ok(())
}

/// `hostname-pid-random`: unique per process even when replicas share a hostname.
pub fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let suffix: u32 = rand::random();
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: ElectorBuilder) -> ConfigError {
        b.build().expect_err("config should be rejected")
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = ElectorConfig::builder().build().unwrap();
        assert_eq!(c.lease_duration(), Duration::from_millis(10_000));
        assert_eq!(c.renewal_interval(), Duration::from_millis(3_000));
        assert_eq!(c.jitter_range(), Duration::from_millis(2_000));
        assert_eq!(c.clean_interval(), Duration::from_millis(60_000));
        assert_eq!(c.lock_id(), 1);
        assert_eq!(c.schema(), "public");
        assert!(c.create_table_on_init());
        assert!(c.failover_quarantine());
        assert_eq!(c.safety_margin(), Duration::from_millis(1_000));
        assert_eq!(c.operation_timeout(), Duration::from_millis(1_500));
    }

    #[test]
    fn default_instance_ids_differ() {
        let a = ElectorConfig::builder().build().unwrap();
        let b = ElectorConfig::builder().build().unwrap();
        assert_ne!(a.instance_id(), b.instance_id());
        assert!(a.instance_id().contains(&std::process::id().to_string()));
    }

    #[test]
    fn every_rule_names_its_field() {
        let b = ElectorConfig::builder;
        let cases: Vec<(ElectorBuilder, &str, &str)> = vec![
            (
                b().with_lease_duration(Duration::ZERO),
                "lease_duration",
                "positive",
            ),
            (
                b().with_renewal_interval(Duration::ZERO),
                "renewal_interval",
                "positive",
            ),
            (
                b().with_clean_interval(Duration::ZERO),
                "clean_interval",
                "positive",
            ),
            (
                b().with_operation_timeout(Duration::ZERO),
                "operation_timeout",
                "positive",
            ),
            (
                b().with_renewal_interval(Duration::from_secs(10)),
                "renewal_interval",
                "below `lease_duration`",
            ),
            (
                b().with_jitter_range(Duration::from_secs(3)),
                "jitter_range",
                "below `renewal_interval`",
            ),
            (
                b().with_safety_margin(Duration::from_secs(6)),
                "safety_margin",
                "below `lease_duration`",
            ),
            (
                b().with_operation_timeout(Duration::from_secs(3)),
                "operation_timeout",
                "below `renewal_interval`",
            ),
            (
                b().with_lock_id(i64::from(i32::MAX) + 1),
                "lock_id",
                "INT column",
            ),
            (
                b().with_lock_id(i64::from(i32::MIN) - 1),
                "lock_id",
                "INT column",
            ),
            (b().with_schema(""), "schema", "empty"),
            (b().with_schema("x".repeat(64)), "schema", "63 bytes"),
            (b().with_schema("a\0b"), "schema", "NUL"),
            (b().with_schema("pg_mine"), "schema", "pg_"),
            (b().with_instance_id(""), "instance_id", "empty"),
            (b().with_instance_id("  "), "instance_id", "blank"),
            (
                b().with_instance_id("x".repeat(256)),
                "instance_id",
                "255 bytes",
            ),
        ];
        for (builder, field, rule) in cases {
            let e = err(builder);
            assert_eq!(e.field, field, "{e}");
            assert!(
                e.rule.contains(rule),
                "rule of {field} should mention {rule:?}: {e}"
            );
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn extreme_but_valid_values_pass() {
        let c = ElectorConfig::builder()
            .with_lock_id(i64::from(i32::MIN))
            .with_schema("Mixed Case \"quoted\"; DROP TABLE x; --")
            .with_jitter_range(Duration::ZERO)
            .build()
            .unwrap();
        assert_eq!(c.lock_id(), i32::MIN);
    }
}
