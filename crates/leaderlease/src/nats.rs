//! The NATS JetStream key-value backend (feature `nats`): one key per election in a KV bucket.
//!
//! - **Acquire** = create the key only if absent (a key that expired or was deleted counts as absent).
//! - **Renew** = rewrite the key only if its revision is still the one this node wrote last
//!   (compare-and-set through the expected-last-subject-sequence header).
//! - **Release** = delete the key only if its revision is still ours (same header on the delete).
//! - **Term** = the KV revision of the acquiring write: it only grows within a bucket. Renewals write the
//!   term into the value, so observers read it there.
//! - **Expiry** is the server's, in one of two modes, chosen by the bucket:
//!   - **Per-key TTL** (NATS 2.11+, a bucket with per-message TTL, `allow_msg_ttl`): every write of the
//!     key carries the lease as its `Nats-TTL` header, so the lease belongs to the key and one bucket holds
//!     elections of different lease durations. NATS TTLs are whole seconds: the key lives the lease
//!     rounded up to a second (the local deadline still runs from the lease itself). With limit markers
//!     (`subject_delete_marker_ttl`), the server writes a marker when the key expires, and the followers'
//!     watch sees the expiry as it happens. New buckets on 2.11+ are made this way.
//!   - **Bucket `max_age`** (a bucket without per-message TTL, e.g. made on NATS 2.10 or by an older
//!     leaderlease): a key not rewritten for `max_age` disappears, so the lease is the bucket's `max_age`
//!     and an existing bucket must have exactly that; followers learn of an expiry by looking again.
//! - Followers **watch** the key, so a release (and, with limit markers, an expiry) is seen at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{self, Operation, Store, UpdateErrorKind};
use async_nats::{HeaderMap, HeaderValue, header};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The NATS client this backend is built with: pass an `async_nats::Client` of this version (0.51).
pub use async_nats;

use crate::backend::{AcquireOutcome, Backend, BoxFuture, ObservedLease};
use crate::config::ElectorConfig;
use crate::{Error, Result};

/// Default bucket name of [`NatsBackend::connect`].
pub const DEFAULT_BUCKET: &str = "leaderlease";

/// How long the server keeps the marker it writes when a key expires, in buckets this backend creates
/// (`limit_markers`). The followers' watch sees the marker when it is written; it only has to outlive a
/// look at the key that races with its writing.
pub const MARKER_TTL: Duration = Duration::from_secs(60);

/// The oldest server version with per-message TTL and limit markers.
const TTL_SERVER_VERSION: &str = "2.11.0";

/// How a bucket makes a dead leader's key disappear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Each write carries its own TTL (`Nats-TTL`, whole seconds): the lease rounded up to a second.
    KeyTtl {
        /// The TTL this node's writes carry.
        ttl: Duration,
        /// The server writes a marker when a key expires (`subject_delete_marker_ttl` is set), which the
        /// followers' watch sees.
        markers: bool,
    },
    /// The bucket's `max_age`, which is the lease.
    BucketMaxAge,
}

/// The per-message TTL of a lease: whole seconds (the server's unit; it truncates a finer one, which
/// would make the key outlive less than the lease), at least one.
pub fn key_ttl(lease: Duration) -> Duration {
    Duration::from_secs(lease.as_nanos().div_ceil(1_000_000_000).max(1) as u64)
}

/// Lease storage in a NATS JetStream KV bucket.
pub struct NatsBackend {
    js: async_nats::jetstream::Context,
    bucket: String,
    key: String,
    instance_id: String,
    lease: Duration,
    timeout: Duration,
    store: tokio::sync::OnceCell<(Store, Expiry)>,
    /// Revision of this node's last confirmed write (acquire or renew).
    last_revision: Mutex<Option<u64>>,
    released: Arc<Notify>,
    /// The key watch is known to deliver (see [`watch_key`]).
    watching: Arc<AtomicBool>,
    watcher: Mutex<Option<JoinHandle<()>>>,
    /// Replicas of a bucket this backend creates.
    replicas: usize,
}

impl std::fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackend")
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .finish()
    }
}

pub(crate) fn store_error(
    operation: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Store {
        operation,
        source: Box::new(e),
    }
}

/// How long [`NatsBackend::connect`] waits for a NATS server to accept the connection, and
/// [`prepare`](Backend::prepare) for the bucket to be opened or created. A start, not an operation of the
/// election: it may take longer than the operation timeout (a JetStream cluster that is still electing
/// its meta leader answers bucket requests only once it has one), but a server that is down or a wrong
/// address must fail the start in seconds, with a typed error, rather than hang the application's boot.
pub const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most replicas a JetStream stream (so a KV bucket) can have.
pub const MAX_REPLICAS: usize = 5;

/// The server addresses of `servers`: one URL (`nats://host:port`, `host:port`) or several separated by
/// commas, as NATS tools take them. The client reconnects to any of them (and to the servers of the
/// cluster that the first one it reaches announces).
fn server_addrs(servers: &str) -> Result<Vec<async_nats::ServerAddr>> {
    let addrs: Result<Vec<_>> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| Error::StoreUnreachable {
                    store: "NATS",
                    message: format!("{s:?} is not a NATS server address: {e}"),
                    source: Box::new(e),
                })
        })
        .collect();
    let addrs = addrs?;
    if addrs.is_empty() {
        return Err(crate::ConfigError::new(
            "url",
            "must name at least one NATS server (e.g. nats://127.0.0.1:4222)",
        )
        .into());
    }
    Ok(addrs)
}

impl NatsBackend {
    /// Connects to the NATS servers at `url` (e.g. `nats://127.0.0.1:4222`, or several separated by
    /// commas: `nats://a:4222,nats://b:4222`) and uses `bucket`. A server that cannot be reached within
    /// [`NATS_CONNECT_TIMEOUT`] fails with [`Error::StoreUnreachable`], whose source is the client's
    /// `async_nats::ConnectError`.
    pub async fn connect(url: &str, bucket: &str, config: &ElectorConfig) -> Result<Self> {
        let addrs = server_addrs(url)?;
        let cap = reconnect_cap(config.lease_duration());
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(NATS_CONNECT_TIMEOUT)
            .request_timeout(Some(config.operation_timeout()))
            .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, cap));
        let client =
            options
                .connect(addrs.as_slice())
                .await
                .map_err(|e| Error::StoreUnreachable {
                    store: "NATS",
                    message: format!("cannot connect to NATS at {url}: {e}"),
                    source: Box::new(e),
                })?;
        Ok(Self::new(client, bucket, config))
    }

    /// Uses an application's NATS client. The key is `lock-<lock id>` unless set with
    /// [`with_key`](Self::with_key).
    ///
    /// After an outage the client's reconnect back-off decides how soon this node campaigns again:
    /// `async_nats`'s default waits up to 4 s between attempts, longer than a short lease. Give the
    /// client a `reconnect_delay_callback` with a cap of a fraction of the lease (a client made by
    /// [`connect`](Self::connect) caps it at an eighth of the lease, 50 ms to 1 s).
    pub fn new(client: async_nats::Client, bucket: &str, config: &ElectorConfig) -> Self {
        Self {
            js: async_nats::jetstream::new(client),
            bucket: bucket.to_owned(),
            key: format!("lock-{}", config.lock_id()),
            instance_id: config.instance_id().to_owned(),
            lease: config.lease_duration(),
            timeout: config.operation_timeout(),
            store: tokio::sync::OnceCell::new(),
            last_revision: Mutex::new(None),
            released: Arc::new(Notify::new()),
            watching: Arc::new(AtomicBool::new(false)),
            watcher: Mutex::new(None),
            replicas: 1,
        }
    }

    /// Creates a missing bucket with `replicas` copies of its stream (1 to [`MAX_REPLICAS`]; default 1),
    /// for a JetStream cluster: with 3, the leases survive the loss of any one server (see docs/design.md,
    /// "NATS durability"). An existing bucket keeps the replicas it has. The setting is checked in
    /// [`prepare`](Backend::prepare): out of range is [`Error::Config`] naming `replicas`.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Uses `key` for this election instead of `lock-<lock id>` (letters, digits, `-_/=.`).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Opens `bucket`, creating it if it does not exist, and checks that it can hold leases of `lease`.
    ///
    /// A new bucket keeps one value per key and, on NATS 2.11 and newer, per-message TTL with limit
    /// markers ([`MARKER_TTL`]) and no `max_age`: each election's key carries its own lease. On 2.10 it
    /// gets `max_age = lease` instead.
    ///
    /// An existing bucket with per-message TTL (one made by this function, or by `noleader`) is refused
    /// only when its `max_age` is shorter than the key's TTL (the server would remove a live lease). One
    /// without is used in `max_age` mode, and refused when it has no `max_age` (a dead leader's key would
    /// never expire) or another one than the lease.
    pub async fn create_bucket(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        lease: Duration,
    ) -> Result<Store> {
        Ok(Self::open_bucket(js, bucket, lease).await?.0)
    }

    /// [`create_bucket`](Self::create_bucket), and the bucket's [`Expiry`] mode for `lease`.
    pub async fn open_bucket(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        lease: Duration,
    ) -> Result<(Store, Expiry)> {
        Self::open_bucket_with_replicas(js, bucket, lease, 1).await
    }

    /// [`open_bucket`](Self::open_bucket), creating a missing bucket with `replicas` copies of its stream
    /// (1 to [`MAX_REPLICAS`]) on a JetStream cluster. An existing bucket keeps the replicas it has.
    pub async fn open_bucket_with_replicas(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        lease: Duration,
        replicas: usize,
    ) -> Result<(Store, Expiry)> {
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(crate::ConfigError::new(
                "replicas",
                format!("must be between 1 and {MAX_REPLICAS} (got {replicas})"),
            )
            .into());
        }
        check_server_version(&js.client())?;
        let with_ttl = server_version(&js.client())
            .zip(parse_version(TTL_SERVER_VERSION))
            .is_some_and(|(found, ttl)| found >= ttl);
        // Up to three tries: a JetStream request can time out on a busy server, and a bucket created by
        // another candidate at the same moment is found by the next look.
        let mut attempt = 0;
        let store = loop {
            attempt += 1;
            if let Ok(store) = js.get_key_value(bucket).await {
                break store;
            }
            let config = if with_ttl {
                kv::Config {
                    bucket: bucket.to_owned(),
                    description: "leaderlease leases (per-key TTL)".to_owned(),
                    history: 1,
                    limit_markers: Some(MARKER_TTL),
                    num_replicas: replicas,
                    ..Default::default()
                }
            } else {
                kv::Config {
                    bucket: bucket.to_owned(),
                    description: "leaderlease leases".to_owned(),
                    history: 1,
                    max_age: lease,
                    num_replicas: replicas,
                    ..Default::default()
                }
            };
            match js.create_key_value(config).await {
                Ok(store) => break store,
                Err(e) if attempt < 3 => {
                    tracing::debug!(error = %e, attempt, "could not create the bucket; trying again");
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                }
                Err(e) => return Err(store_error("create bucket", e)),
            }
        };
        let status = store
            .status()
            .await
            .map_err(|e| store_error("read bucket", e))?;
        let config = &status.info.config;
        let expiry = bucket_expiry(
            bucket,
            lease,
            config.max_age,
            config.allow_message_ttl,
            config
                .subject_delete_marker_ttl
                .is_some_and(|d| !d.is_zero()),
        )?;
        Ok((store, expiry))
    }

    fn store(&self) -> Result<&Store> {
        self.store
            .get()
            .map(|(store, _)| store)
            .ok_or_else(|| Error::Store {
                operation: "use bucket",
                source: "the backend was not prepared".into(),
            })
    }

    fn expiry(&self) -> Option<Expiry> {
        self.store.get().map(|(_, expiry)| *expiry)
    }

    /// Writes `value` to the key if its last revision is `expected` (0: the key has never been written
    /// or its history is gone), with the key TTL in per-key TTL mode; returns the new revision, or `None`
    /// when the key's revision is another.
    async fn write(
        &self,
        store: &Store,
        value: bytes::Bytes,
        expected: u64,
        operation: &'static str,
    ) -> Result<Option<u64>> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(expected),
        );
        if let Some(Expiry::KeyTtl { ttl, .. }) = self.expiry() {
            headers.insert(header::NATS_MESSAGE_TTL, HeaderValue::from(ttl.as_secs()));
        }
        let subject = format!(
            "{}{}",
            store.put_prefix.as_deref().unwrap_or(&store.prefix),
            self.key
        );
        let ack = async {
            self.js
                .publish_with_headers(subject, headers, value)
                .await?
                .await
        };
        match ack.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(store_error(operation, e)),
        }
    }

    /// The time left of a key written at `created`, by this machine's clock: it only decides when to look
    /// again, never who leads.
    fn time_left(&self, created: SystemTime) -> Option<Duration> {
        let lives = match self.expiry() {
            Some(Expiry::KeyTtl { ttl, .. }) => ttl,
            _ => self.lease,
        };
        let age = SystemTime::now()
            .duration_since(created)
            .unwrap_or_default();
        lives.checked_sub(age).filter(|d| !d.is_zero())
    }

    fn set_revision(&self, rev: Option<u64>) {
        *self
            .last_revision
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = rev;
    }

    fn revision(&self) -> Option<u64> {
        *self
            .last_revision
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn bounded<T>(
        &self,
        operation: &'static str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Error::Timeout {
                operation,
                after: self.timeout,
            })?
    }

    /// The revision of the key when it holds this node's own lease of `term` written after revision
    /// `after` (a renewal of ours whose acknowledgement was lost); `None` when it holds anything else, was
    /// deleted or has expired.
    async fn own_revision_after(
        &self,
        store: &Store,
        term: u64,
        after: u64,
    ) -> Result<Option<u64>> {
        let entry = store
            .entry(&self.key)
            .await
            .map_err(|e| store_error("renew", e))?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put && e.revision > after)
            .filter(|e| parse_value(e) == (term, self.instance_id.clone()))
            .map(|e| e.revision))
    }

    /// `"<term> <instance id>"`; the acquiring write has term 0, meaning "the revision of this entry".
    fn value(term: u64, instance_id: &str) -> bytes::Bytes {
        format!("{term} {instance_id}").into()
    }
}

/// The longest wait between two reconnect attempts of a client this backend creates: an eighth of the
/// lease, between 50 ms and 1 s. The client's own default backs off to 4 s, so after an outage of a few
/// seconds every candidate could stay away from a server that is back for up to 4 s, longer than the
/// lease: the cluster would be leaderless for that long.
fn reconnect_cap(lease: Duration) -> Duration {
    (lease / 8).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Waits before reconnect attempt `attempts` (1 = the first): none for the first, then doubling from
/// 2 ms up to `cap`, with up to a quarter of random spread so that many clients do not come back in step.
fn reconnect_delay(attempts: usize, cap: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(20);
    let base = Duration::from_millis(1u64 << exp).min(cap);
    base - base.mul_f64(rand::random::<f64>() / 4.0)
}

/// The expiry mode of a bucket with these settings for `lease`, or why it cannot hold such leases.
fn bucket_expiry(
    bucket: &str,
    lease: Duration,
    max_age: Duration,
    allow_message_ttl: bool,
    markers: bool,
) -> Result<Expiry> {
    let invalid = |problem: String| Error::InvalidBucket {
        bucket: bucket.to_owned(),
        problem,
    };
    if allow_message_ttl {
        let ttl = key_ttl(lease);
        if !max_age.is_zero() && max_age < ttl {
            return Err(invalid(format!(
                "has max_age {} ms, shorter than the key's TTL of {} s (the lease of {} ms rounded up \
                 to a second): the server would remove a live lease",
                max_age.as_millis(),
                ttl.as_secs(),
                lease.as_millis()
            )));
        }
        return Ok(Expiry::KeyTtl { ttl, markers });
    }
    if max_age.is_zero() {
        return Err(invalid(
            "has neither per-message TTL nor max_age, so a dead leader's key would never expire"
                .to_owned(),
        ));
    }
    if max_age != lease {
        return Err(invalid(format!(
            "has max_age {} ms but the lease duration is {} ms (a bucket without per-message TTL \
             expires keys by its max_age, which must be the lease)",
            max_age.as_millis(),
            lease.as_millis()
        )));
    }
    Ok(Expiry::BucketMaxAge)
}

/// The term and holder of a lease entry: `"<term> <instance id>"`, term 0 meaning the entry's revision.
/// A value that is not text (a `noleader` node's, 16 bytes of UUID) is shown in hex, as a UUID when it
/// has 16 bytes.
fn parse_value(entry: &kv::Entry) -> (u64, String) {
    let Ok(text) = std::str::from_utf8(&entry.value) else {
        return (entry.revision, hex_id(&entry.value));
    };
    match text.split_once(' ') {
        Some((term, id)) => {
            let term = term.parse().unwrap_or(0);
            (if term == 0 { entry.revision } else { term }, id.to_owned())
        }
        None => (entry.revision, text.to_owned()),
    }
}

fn hex_id(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if bytes.len() == 16 {
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    } else {
        hex
    }
}

/// How often the key watcher checks the client's connection.
const WATCH_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Whether a message published on the key's subject is a delete or a purge (`KV-Operation` header).
fn is_delete(message: &async_nats::Message) -> bool {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
}

/// Runs the key watch: notifies `released` on a delete or an expiry marker, and keeps `watching` true
/// only while the watch is known to deliver. A watch made before the client lost its connection may stay
/// silent for seconds after the reconnect (its consumer is gone with the server's state, and the client
/// notices only after missed heartbeats), so after every reconnect the watch is made anew; until then,
/// and after any watch error, `watching` is false and followers poll.
///
/// A watch can also go silent while the client stays connected: its consumer lives on one server, which
/// in a cluster may die while the client is connected to another (the client notices after 10 s of missed
/// heartbeats). So releases are also taken from `writes`, a plain subscription to the subject the key is
/// written on: a delete reaches every subscriber through whichever server, with no state on any one of
/// them, and the client subscribes again after a reconnect. (Expiry markers are the server's own and come
/// only through the watch; a follower whose watch is silent still wakes at the expiry it estimated.)
async fn watch_key(
    store: Store,
    key: String,
    mut watch: kv::Watch,
    mut writes: async_nats::Subscriber,
    client: async_nats::Client,
    released: Arc<Notify>,
    watching: Arc<AtomicBool>,
) {
    use async_nats::connection::State;
    let mut check = tokio::time::interval(WATCH_CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stale = false;
    let mut writes_open = true;
    loop {
        tokio::select! {
            message = writes.next(), if writes_open => match message {
                Some(message) => {
                    if is_delete(&message) {
                        released.notify_one();
                    }
                }
                None => writes_open = false,
            },
            entry = watch.next(), if !stale => match entry {
                Some(Ok(entry)) => {
                    watching.store(true, Ordering::Relaxed);
                    if matches!(entry.operation, Operation::Delete | Operation::Purge) {
                        released.notify_one();
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "the key watch reported an error");
                    watching.store(false, Ordering::Relaxed);
                }
                None => {
                    tracing::debug!("the key watch ended; making it anew");
                    watching.store(false, Ordering::Relaxed);
                    stale = true;
                }
            },
            _ = check.tick() => {
                if client.connection_state() != State::Connected {
                    watching.store(false, Ordering::Relaxed);
                    stale = true;
                } else if stale {
                    match store.watch(&key).await {
                        Ok(fresh) => {
                            watch = fresh;
                            stale = false;
                            watching.store(true, Ordering::Relaxed);
                            // Anything may have happened while the watch was away: look once.
                            released.notify_one();
                        }
                        Err(e) => tracing::debug!(error = %e, "could not watch the key again"),
                    }
                }
            }
        }
    }
}

/// The oldest NATS server the backend supports: the client library (`async-nats` 0.51) cannot read
/// JetStream's answers from 2.9 servers. Per-key TTL needs 2.11.
pub const MINIMUM_SERVER_VERSION: &str = "2.10.0";

/// `(major, minor, patch)` of a server version such as `2.11.4` or `2.12.0-RC.1`; `None` when it is not one.
fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Refuses a server older than [`MINIMUM_SERVER_VERSION`], with its version in the error. A client that
/// has not connected yet (no version known) passes: the bucket requests then tell.
fn check_server_version(client: &async_nats::Client) -> Result<()> {
    let (Some(found), Some(minimum)) = (
        server_version(client),
        parse_version(MINIMUM_SERVER_VERSION),
    ) else {
        return Ok(());
    };
    if found < minimum {
        return Err(Error::UnsupportedServer {
            store: "NATS",
            version: client.server_info().version,
            minimum: MINIMUM_SERVER_VERSION,
        });
    }
    Ok(())
}

/// The version of the server `client` is connected to, if known.
fn server_version(client: &async_nats::Client) -> Option<(u64, u64, u64)> {
    parse_version(&client.server_info().version)
}

impl Backend for NatsBackend {
    fn prepare(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            check_server_version(&self.js.client())?;
            let (store, expiry) = tokio::time::timeout(
                NATS_CONNECT_TIMEOUT,
                Self::open_bucket_with_replicas(&self.js, &self.bucket, self.lease, self.replicas),
            )
            .await
            .map_err(|_| Error::Timeout {
                operation: "prepare",
                after: NATS_CONNECT_TIMEOUT,
            })??;
            // Watch the key so that a release (a delete) or, with limit markers, an expiry (the server's
            // marker) wakes the followers at once.
            let watch = store
                .watch(&self.key)
                .await
                .map_err(|e| store_error("watch", e))?;
            let subject = format!(
                "{}{}",
                store.put_prefix.as_deref().unwrap_or(&store.prefix),
                self.key
            );
            let writes = self
                .js
                .client()
                .subscribe(subject)
                .await
                .map_err(|e| store_error("watch", e))?;
            self.watching.store(true, Ordering::Relaxed);
            let watcher = tokio::spawn(watch_key(
                store.clone(),
                self.key.clone(),
                watch,
                writes,
                self.js.client(),
                self.released.clone(),
                self.watching.clone(),
            ));
            *self.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(watcher);
            tracing::debug!(bucket = %self.bucket, ?expiry, "NATS bucket ready");
            let _ = self.store.set((store, expiry));
            Ok(())
        })
    }

    fn observe(&self) -> BoxFuture<'_, Result<Option<ObservedLease>>> {
        Box::pin(self.bounded("observe", async move {
            let entry = self
                .store()?
                .entry(&self.key)
                .await
                .map_err(|e| store_error("observe", e))?;
            Ok(entry.filter(|e| e.operation == Operation::Put).map(|e| {
                let (term, leader_id) = parse_value(&e);
                ObservedLease {
                    leader_id,
                    term,
                    expires_in: self.time_left(SystemTime::from(e.created)),
                }
            }))
        }))
    }

    fn try_acquire(&self) -> BoxFuture<'_, Result<AcquireOutcome>> {
        Box::pin(async move {
            let created = self
                .bounded("acquire", async {
                    let store = self.store()?;
                    let value = Self::value(0, &self.instance_id);
                    if let Some(rev) = self.write(store, value.clone(), 0, "acquire").await? {
                        return Ok(Some(rev));
                    }
                    // The key has a history: free if its last entry is a delete or the server's expiry
                    // marker, then taken by a write that expects exactly that entry.
                    let entry = store
                        .entry(&self.key)
                        .await
                        .map_err(|e| store_error("acquire", e))?;
                    match entry {
                        Some(e) if matches!(e.operation, Operation::Delete | Operation::Purge) => {
                            self.write(store, value, e.revision, "acquire").await
                        }
                        _ => Ok(None),
                    }
                })
                .await?;
            match created {
                Some(term) => {
                    self.set_revision(Some(term));
                    Ok(AcquireOutcome::Acquired { term })
                }
                None => Ok(AcquireOutcome::NotAcquired {
                    current: self.observe().await.ok().flatten(),
                }),
            }
        })
    }

    fn renew(&self, term: u64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.bounded("renew", async move {
            let Some(rev) = self.revision() else {
                return Ok(false);
            };
            let store = self.store()?;
            let value = Self::value(term, &self.instance_id);
            if let Some(new_rev) = self.write(store, value.clone(), rev, "renew").await? {
                self.set_revision(Some(new_rev));
                return Ok(true);
            }
            // The key changed since our last confirmed write. It may have been our own renewal, applied by
            // the server but with its acknowledgement lost (a timeout, a stream leader change): then the
            // key still holds this term and instance id, at a later revision. Continue from there with a
            // new write, so that the lease, and the local deadline timed from this attempt, run from a
            // write sent now. Anything else (another value, a delete, no key) ends the lease.
            let Some(current) = self.own_revision_after(store, term, rev).await? else {
                self.set_revision(None);
                return Ok(false);
            };
            self.set_revision(Some(current));
            match self.write(store, value, current, "renew").await? {
                Some(new_rev) => {
                    tracing::debug!(
                        term,
                        "a renewal's acknowledgement was lost; continued from it"
                    );
                    self.set_revision(Some(new_rev));
                    Ok(true)
                }
                None => {
                    self.set_revision(None);
                    Ok(false)
                }
            }
        }))
    }

    fn release(&self, _term: u64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.bounded("release", async move {
            let Some(rev) = self.revision() else {
                return Ok(false);
            };
            self.set_revision(None);
            match self
                .store()?
                .delete_expect_revision(&self.key, Some(rev))
                .await
            {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(store_error("release", e)),
            }
        }))
    }

    fn cleanup(&self) -> BoxFuture<'_, Result<u64>> {
        // The server removes expired keys (their TTL, or the bucket's max_age).
        Box::pin(async { Ok(0) })
    }

    fn released(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.released.notified())
    }

    /// True while the key watch runs and the client is connected, on a bucket whose server writes a
    /// marker when a key expires: then the watch reports releases and expiries alike (releases also come
    /// through a subscription to the key's subject, see [`watch_key`]), and followers need not poll.
    /// Without markers (`max_age` mode) the followers keep polling.
    fn wakes_on_release(&self) -> bool {
        matches!(self.expiry(), Some(Expiry::KeyTtl { markers: true, .. }))
            && self.watching.load(Ordering::Relaxed)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(w) = self
                .watcher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                w.abort();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_are_compared_by_number() {
        assert_eq!(parse_version("2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.12.0-RC.1"), Some((2, 12, 0)));
        assert_eq!(parse_version("2.10"), Some((2, 10, 0)));
        assert_eq!(parse_version(""), None);
        assert!(parse_version("2.9.10") < parse_version(MINIMUM_SERVER_VERSION));
        assert!(parse_version("2.10.0") >= parse_version(MINIMUM_SERVER_VERSION));
    }
}
