//! A hub's `LISTEN` connection: it wakes the hub's waiting elections the moment a lease is released,
//! and a probe (a notification sent through the hub's pool) tells whether it can be trusted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{Level, debug};

use crate::START_CONNECT_TIMEOUT;
use crate::events::{Event, EventKind, deliver};
use crate::lock;

/// The `NOTIFY` channel on which a release is announced. The payload is `<namespace>:<lock id>`, where
/// the namespace is the schema's advisory-lock namespace
/// ([`schema::lock_namespace`](crate::schema::lock_namespace)).
pub const RELEASE_CHANNEL: &str = "leaderlease_release";

/// How often a hub checks that its `LISTEN` connection still delivers notifications (see
/// [`PgHub::listening`](super::PgHub::listening)).
pub const LISTEN_PROBE_INTERVAL: Duration = Duration::from_secs(15);

/// The wake-up of each election of a hub, by `(namespace, lock id)`.
pub(super) type Waiters = Arc<Mutex<HashMap<(i32, i32), Vec<Weak<Notify>>>>>;
/// An election's event observer, held weakly by the hub.
pub(super) type WeakFn = Weak<dyn Fn(&Event) + Send + Sync>;
/// The event observers of the hub's elections, for the events of the shared `LISTEN` connection.
pub(super) type Observers = Arc<Mutex<Vec<WeakFn>>>;

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
pub(super) async fn listen(
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
pub(super) fn payload(namespace: i32, lock_id: i32) -> String {
    format!("{namespace}:{lock_id}")
}

fn parse_payload(p: &str) -> Option<(i32, i32)> {
    let (ns, id) = p.split_once(':')?;
    Some((ns.parse().ok()?, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        assert_eq!(parse_payload(&payload(-5, 42)), Some((-5, 42)));
        assert_eq!(parse_payload("x:1"), None);
        assert_eq!(parse_payload("1"), None);
    }
}
