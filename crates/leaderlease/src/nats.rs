//! The NATS JetStream key-value backend (feature `nats`): one key per election in a bucket whose
//! `max_age` is the lease.
//!
//! - **Acquire** = create the key only if absent (a key that expired or was deleted counts as absent).
//! - **Renew** = rewrite the key only if its revision is still the one this node wrote last
//!   (compare-and-set through the expected-last-subject-sequence header).
//! - **Release** = delete the key only if its revision is still ours (same header on the delete).
//! - **Term** = the KV revision of the acquiring write: it only grows within a bucket. Renewals write the
//!   term into the value, so observers read it there.
//! - **Expiry** is the server's: a key not rewritten for `max_age` disappears. NATS 2.9 has no per-key
//!   TTL, so the lease duration is the bucket's `max_age`; an existing bucket must have exactly that.
//! - Followers **watch** the key, so a release is seen at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, Store, UpdateErrorKind};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::backend::{AcquireOutcome, Backend, BoxFuture, ObservedLease};
use crate::config::ElectorConfig;
use crate::{Error, Result};

/// Default bucket name of [`NatsBackend::connect`].
pub const DEFAULT_BUCKET: &str = "leaderlease";

/// Lease storage in a NATS JetStream KV bucket.
pub struct NatsBackend {
    js: async_nats::jetstream::Context,
    bucket: String,
    key: String,
    instance_id: String,
    lease: Duration,
    timeout: Duration,
    store: tokio::sync::OnceCell<Store>,
    /// Revision of this node's last confirmed write (acquire or renew).
    last_revision: Mutex<Option<u64>>,
    released: Arc<Notify>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackend")
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .finish()
    }
}

fn store_error(operation: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Store {
        operation,
        message: e.to_string(),
    }
}

impl NatsBackend {
    /// Connects to the NATS servers at `url` (e.g. `nats://127.0.0.1:4222`) and uses `bucket`.
    pub async fn connect(url: &str, bucket: &str, config: &ElectorConfig) -> Result<Self> {
        let cap = reconnect_cap(config.lease_duration());
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(crate::START_CONNECT_TIMEOUT)
            .request_timeout(Some(config.operation_timeout()))
            .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, cap));
        let client = options.connect(url).await.map_err(|e| Error::Unreachable {
            message: format!("cannot connect to NATS at {url}: {e}"),
            source: None,
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
            watcher: Mutex::new(None),
        }
    }

    /// Uses `key` for this election instead of `lock-<lock id>` (letters, digits, `-_/=.`).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Creates `bucket` with `max_age = lease` and one value per key if it does not exist, and checks an
    /// existing one: a bucket without `max_age` (a dead leader's key would never expire) or with another
    /// `max_age` is refused.
    pub async fn create_bucket(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        lease: Duration,
    ) -> Result<Store> {
        // Up to three tries: a JetStream request can time out on a busy server, and a bucket created by
        // another candidate at the same moment is found by the next look.
        let mut attempt = 0;
        let store = loop {
            attempt += 1;
            if let Ok(store) = js.get_key_value(bucket).await {
                break store;
            }
            let created = js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    description: "leaderlease leases".to_owned(),
                    history: 1,
                    max_age: lease,
                    ..Default::default()
                })
                .await;
            match created {
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
        let max_age = status.info.config.max_age;
        if max_age.is_zero() {
            return Err(Error::InvalidBucket {
                bucket: bucket.to_owned(),
                problem: "has no max_age, so a dead leader's key would never expire".to_owned(),
            });
        }
        if max_age != lease {
            return Err(Error::InvalidBucket {
                bucket: bucket.to_owned(),
                problem: format!(
                    "has max_age {} ms but the lease duration is {} ms (on NATS the bucket's max_age is \
                     the lease)",
                    max_age.as_millis(),
                    lease.as_millis()
                ),
            });
        }
        Ok(store)
    }

    fn store(&self) -> Result<&Store> {
        self.store.get().ok_or(Error::Store {
            operation: "use bucket",
            message: "the backend was not prepared".to_owned(),
        })
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

fn parse_value(entry: &kv::Entry) -> (u64, String) {
    let text = String::from_utf8_lossy(&entry.value);
    match text.split_once(' ') {
        Some((term, id)) => {
            let term = term.parse().unwrap_or(0);
            (if term == 0 { entry.revision } else { term }, id.to_owned())
        }
        None => (entry.revision, text.into_owned()),
    }
}

impl Backend for NatsBackend {
    fn prepare(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let store = tokio::time::timeout(
                crate::START_CONNECT_TIMEOUT,
                Self::create_bucket(&self.js, &self.bucket, self.lease),
            )
            .await
            .map_err(|_| Error::Timeout {
                operation: "prepare",
                after: crate::START_CONNECT_TIMEOUT,
            })??;
            // Watch the key so that a release (a delete) wakes the followers at once.
            let mut watch = store
                .watch(&self.key)
                .await
                .map_err(|e| store_error("watch", e))?;
            let released = self.released.clone();
            let watcher = tokio::spawn(async move {
                while let Some(entry) = watch.next().await {
                    if let Ok(entry) = entry
                        && matches!(entry.operation, Operation::Delete | Operation::Purge)
                    {
                        released.notify_one();
                    }
                }
            });
            *self.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(watcher);
            let _ = self.store.set(store);
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
                // The expiry is the server's (write time + max_age); the time left is estimated with
                // this machine's clock, which only decides when to look again, never who leads.
                let written = SystemTime::from(e.created);
                let age = SystemTime::now()
                    .duration_since(written)
                    .unwrap_or_default();
                ObservedLease {
                    leader_id,
                    term,
                    expires_in: self.lease.checked_sub(age).filter(|d| !d.is_zero()),
                }
            }))
        }))
    }

    fn try_acquire(&self) -> BoxFuture<'_, Result<AcquireOutcome>> {
        Box::pin(async move {
            let created = self
                .bounded("acquire", async {
                    match self
                        .store()?
                        .create(&self.key, Self::value(0, &self.instance_id))
                        .await
                    {
                        Ok(rev) => Ok(Some(rev)),
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
                        Err(e) => Err(store_error("acquire", e)),
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
            match store.update(&self.key, value.clone(), rev).await {
                Ok(new_rev) => {
                    self.set_revision(Some(new_rev));
                    return Ok(true);
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(store_error("renew", e)),
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
            match store.update(&self.key, value, current).await {
                Ok(new_rev) => {
                    tracing::debug!(
                        term,
                        "a renewal's acknowledgement was lost; continued from it"
                    );
                    self.set_revision(Some(new_rev));
                    Ok(true)
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    self.set_revision(None);
                    Ok(false)
                }
                Err(e) => Err(store_error("renew", e)),
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
        // The bucket's max_age removes expired keys.
        Box::pin(async { Ok(0) })
    }

    fn released(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.released.notified())
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
