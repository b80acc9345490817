//! Fleet membership on NATS (feature `nats`): one key per member, `member.<id>`, in the bucket of the
//! fleet's elections, rewritten at every renewal with the member lease as its TTL (per-key TTL buckets;
//! in a `max_age` bucket the member lease must be the bucket's `max_age`). A watch of `member.>` keeps
//! the list: a put adds or refreshes a member, a delete, a purge or the server's expiry marker removes
//! it. Where no marker comes (a `max_age` bucket, or a watch that was away), a member whose last write is
//! older than its TTL by the server's timestamp is left out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::{Operation, Store};
use async_nats::{HeaderMap, HeaderValue, header};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{MemberConfig, MemberStore, MemberView, Membership};
use crate::backend::BoxFuture;
use crate::nats::{Expiry, NATS_CONNECT_TIMEOUT, NatsBackend, store_error};
use crate::{ConfigError, Error, Result, lock};

/// The prefix of member keys in a bucket.
pub const MEMBER_KEY_PREFIX: &str = "member.";

/// How often the member watch checks the client's connection.
const CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// What the watch last saw of a member.
#[derive(Debug, Clone)]
struct Seen {
    version: Option<String>,
    started_at_us: i64,
    written: SystemTime,
}

type SeenMap = Arc<Mutex<HashMap<String, Seen>>>;

struct NatsMembers {
    js: Context,
    store: Store,
    ttl: Duration,
    key_ttl: bool,
    key: String,
    id: String,
    version: Option<String>,
    timeout: Duration,
    /// This member's start (the server's timestamp of its first write), once known.
    started_at_us: Mutex<Option<i64>>,
    seen: SeenMap,
    changed: Arc<Notify>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl Membership {
    /// Joins the fleet kept in the NATS KV bucket `bucket` (created as for the elections if missing) as a
    /// member, with `client`, and keeps the membership renewed. The member id must be a valid key part
    /// (letters, digits, `-_/=`).
    pub async fn join_nats(
        client: async_nats::Client,
        bucket: &str,
        config: MemberConfig,
    ) -> Result<Membership> {
        let id = config.id();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_/=".contains(c))
        {
            return Err(ConfigError::new(
                "id",
                format!("must consist of letters, digits and `-_/=` to be a NATS key (got {id:?})"),
            )
            .into());
        }
        let js = async_nats::jetstream::new(client.clone());
        let (store, expiry) = tokio::time::timeout(
            NATS_CONNECT_TIMEOUT,
            NatsBackend::open_bucket(&js, bucket, config.lease_duration()),
        )
        .await
        .map_err(|_| Error::Timeout {
            operation: "join fleet",
            after: NATS_CONNECT_TIMEOUT,
        })??;
        let (ttl, key_ttl) = match expiry {
            Expiry::KeyTtl { ttl, .. } => (ttl, true),
            Expiry::BucketMaxAge => (config.lease_duration(), false),
        };
        let seen: SeenMap = Arc::default();
        let changed = Arc::new(Notify::new());
        let watch = store
            .watch_with_history(format!("{MEMBER_KEY_PREFIX}>"))
            .await
            .map_err(|e| store_error("watch members", e))?;
        let watcher = tokio::spawn(watch_members(
            store.clone(),
            watch,
            client,
            seen.clone(),
            changed.clone(),
        ));
        let members = NatsMembers {
            js,
            store,
            ttl,
            key_ttl,
            key: format!("{MEMBER_KEY_PREFIX}{id}"),
            id: id.to_owned(),
            version: config.version().map(str::to_owned),
            timeout: config.renewal_interval().min(Duration::from_secs(5)),
            started_at_us: Mutex::new(None),
            seen,
            changed,
            watcher: Mutex::new(Some(watcher)),
        };
        Membership::start(members, config).await
    }
}

/// `"<start µs> <version>"`; start 0 means "the timestamp of this entry".
fn value(started_at_us: i64, version: Option<&str>) -> bytes::Bytes {
    match version {
        Some(v) => format!("{started_at_us} {v}").into(),
        None => started_at_us.to_string().into(),
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn parse(value: &[u8], written: SystemTime) -> Seen {
    let text = String::from_utf8_lossy(value);
    let (start, version) = match text.split_once(' ') {
        Some((s, v)) => (s, Some(v.to_owned())),
        None => (text.as_ref(), None),
    };
    let started = start.parse::<i64>().unwrap_or(0);
    Seen {
        version,
        started_at_us: if started == 0 {
            micros(written)
        } else {
            started
        },
        written,
    }
}

impl NatsMembers {
    async fn write(&self) -> Result<u64> {
        let started = *lock(&self.started_at_us);
        let mut headers = HeaderMap::new();
        if self.key_ttl {
            headers.insert(
                header::NATS_MESSAGE_TTL,
                HeaderValue::from(self.ttl.as_secs()),
            );
        }
        let subject = format!(
            "{}{}",
            self.store
                .put_prefix
                .as_deref()
                .unwrap_or(&self.store.prefix),
            self.key
        );
        let ack = async {
            self.js
                .publish_with_headers(
                    subject,
                    headers,
                    value(started.unwrap_or(0), self.version.as_deref()),
                )
                .await?
                .await
        };
        ack.await
            .map(|a| a.sequence)
            .map_err(|e| store_error("renew member", e))
    }

    async fn renew_once(&self) -> Result<Vec<MemberView>> {
        self.write().await?;
        if lock(&self.started_at_us).is_none() {
            // The first write: its server timestamp is this member's start, carried by later writes.
            let entry = self
                .store
                .entry(&self.key)
                .await
                .map_err(|e| store_error("join fleet", e))?;
            if let Some(e) = entry {
                let at = micros(SystemTime::from(e.created));
                *lock(&self.started_at_us) = Some(at);
                lock(&self.seen).insert(
                    self.id.clone(),
                    parse(&e.value, SystemTime::from(e.created)),
                );
            }
        }
        let now = SystemTime::now();
        let mut list: Vec<MemberView> = lock(&self.seen)
            .iter()
            .filter_map(|(id, s)| {
                let age = now.duration_since(s.written).unwrap_or_default();
                let left = self.ttl.checked_sub(age).filter(|d| !d.is_zero())?;
                Some(MemberView {
                    id: id.clone(),
                    version: s.version.clone(),
                    started_at_us: s.started_at_us,
                    expires_in: left,
                })
            })
            .collect();
        // This member's own write was just acknowledged: it is live for its lease from now.
        list.retain(|m| m.id != self.id);
        list.push(MemberView {
            id: self.id.clone(),
            version: self.version.clone(),
            started_at_us: lock(&self.started_at_us).unwrap_or(0),
            expires_in: self.ttl,
        });
        Ok(list)
    }
}

impl MemberStore for NatsMembers {
    fn renew(&self, _prompt: bool) -> BoxFuture<'_, Result<Vec<MemberView>>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.renew_once())
                .await
                .map_err(|_| Error::Timeout {
                    operation: "renew member",
                    after: self.timeout,
                })?
        })
    }

    fn changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.changed.notified())
    }

    fn leave(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let purge = async {
                if self.key_ttl {
                    // The purge marker expires too, so departed members leave nothing behind.
                    self.store
                        .purge_with_ttl(&self.key, crate::nats::MARKER_TTL)
                        .await
                } else {
                    self.store.purge(&self.key).await
                }
            };
            tokio::time::timeout(self.timeout, purge)
                .await
                .map_err(|_| Error::Timeout {
                    operation: "leave fleet",
                    after: self.timeout,
                })?
                .map_err(|e| store_error("leave fleet", e))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(w) = lock(&self.watcher).take() {
                w.abort();
            }
        })
    }
}

/// Keeps `seen` from the watch of `member.>`, and notifies `changed` when a member appears or goes. The
/// watch is made anew (with history: every member's last write) after it ends or errs and after every
/// reconnection of the client, since a watch from before may stay silent.
async fn watch_members(
    store: Store,
    mut watch: async_nats::jetstream::kv::Watch,
    client: async_nats::Client,
    seen: SeenMap,
    changed: Arc<Notify>,
) {
    use async_nats::connection::State;
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stale = false;
    loop {
        tokio::select! {
            entry = watch.next(), if !stale => match entry {
                Some(Ok(e)) => {
                    let Some(id) = e.key.strip_prefix(MEMBER_KEY_PREFIX).map(str::to_owned) else {
                        continue;
                    };
                    let appeared = match e.operation {
                        Operation::Put => {
                            let s = parse(&e.value, SystemTime::from(e.created));
                            lock(&seen).insert(id, s).is_none()
                        }
                        Operation::Delete | Operation::Purge => lock(&seen).remove(&id).is_some(),
                    };
                    if appeared {
                        changed.notify_one();
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "the member watch reported an error");
                    stale = true;
                }
                None => stale = true,
            },
            _ = check.tick() => {
                if client.connection_state() != State::Connected {
                    stale = true;
                } else if stale {
                    match store.watch_with_history(format!("{MEMBER_KEY_PREFIX}>")).await {
                        Ok(fresh) => {
                            watch = fresh;
                            stale = false;
                        }
                        Err(e) => tracing::debug!(error = %e, "could not watch the members again"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(7);
        let s = parse(&value(0, Some("1.2 beta")), t);
        assert_eq!(
            (s.started_at_us, s.version.as_deref()),
            (7_000_000, Some("1.2 beta"))
        );
        let s = parse(&value(42, None), t);
        assert_eq!((s.started_at_us, s.version), (42, None));
    }
}
