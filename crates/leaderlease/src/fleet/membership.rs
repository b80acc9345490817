//! A process's membership in a fleet: a background task that renews the member's row (or key) and keeps
//! the list of live members, written once for every store; a store only writes and reads rows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use super::MemberConfig;
use crate::backend::BoxFuture;
use crate::{Result, lock};

/// A member as its store returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberView {
    pub(crate) id: String,
    pub(crate) version: Option<String>,
    pub(crate) started_at_us: i64,
    /// Time left of its member lease, by the store's clock, at the read.
    pub(crate) expires_in: Duration,
}

/// Where members are kept. Every method must return within the store's operation timeout.
pub(crate) trait MemberStore: Send + Sync + 'static {
    /// Writes this member's row (the first call joins, creating it) with a fresh lease, and reads the
    /// live members, this one included. `prompt`: another member's join or leave was announced, so the
    /// read should not wait for a lease renewal to ride on.
    fn renew(&self, prompt: bool) -> BoxFuture<'_, Result<Vec<MemberView>>>;
    /// Resolves when the store announces that a member joined or left (the default never does; changes
    /// are then seen at the next renewal).
    fn changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
    /// Deletes this member's row (announcing it), so that the others replan at once.
    fn leave(&self) -> BoxFuture<'_, Result<()>>;
    /// Frees what the store holds. Called once, after [`leave`](Self::leave).
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A live member of a fleet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberInfo {
    /// The member's id.
    pub id: String,
    /// Its version, if it declared one.
    pub version: Option<String>,
    /// When it joined, by the store's clock: microseconds since the Unix epoch (on NATS, the server's
    /// timestamp of its first write).
    pub started_at_us: i64,
}

/// A member with the local deadline of its listing: the read's send time plus the time its lease had
/// left (so a list that is not read again ages out by itself).
#[derive(Debug, Clone)]
struct Entry {
    info: MemberInfo,
    until: Instant,
}

struct Inner {
    config: MemberConfig,
    entries: Mutex<Vec<Entry>>,
    list: watch::Sender<Arc<[MemberInfo]>>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// This process's membership in a fleet (see [the module](crate::fleet)): renewed in the background
/// until [`leave`](Self::leave) or until dropped (the member then leaves in the background, if the
/// runtime still runs, or drops out after its lease).
///
/// ```no_run
/// # async fn demo() -> leaderlease::Result<()> {
/// use std::time::Duration;
/// use leaderlease::PgHub;
/// use leaderlease::fleet::MemberConfig;
///
/// let hub = PgHub::connect("postgres://postgres@127.0.0.1/test", Duration::from_secs(2)).await?;
/// let me = hub.join_fleet(MemberConfig::builder().with_version("2.4.0").build()?).await?;
/// for m in me.members() {
///     println!("{} (version {:?})", m.id, m.version);
/// }
/// me.leave().await;
/// hub.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("id", &self.inner.config.id)
            .field("members", &self.inner.list.borrow().len())
            .finish()
    }
}

impl Membership {
    /// Joins with `store` (one renewal, whose error is returned) and starts renewing.
    pub(crate) async fn start(store: impl MemberStore, config: MemberConfig) -> Result<Self> {
        let store: Arc<dyn MemberStore> = Arc::new(store);
        let sent = Instant::now();
        let first = match store.renew(true).await {
            Ok(list) => list,
            Err(e) => {
                store.close().await;
                return Err(e);
            }
        };
        let inner = Arc::new(Inner {
            config,
            entries: Mutex::default(),
            list: watch::channel(Arc::from(Vec::new())).0,
            stop: CancellationToken::new(),
            task: Mutex::new(None),
        });
        inner.take(sent, first);
        let span = info_span!("leaderlease_member", member = %inner.config.id);
        let task = tokio::spawn(run(inner.clone(), store).instrument(span));
        *lock(&inner.task) = Some(task);
        Ok(Self { inner })
    }

    /// This member's id.
    pub fn id(&self) -> &str {
        &self.inner.config.id
    }

    /// This member's settings.
    pub fn config(&self) -> &MemberConfig {
        &self.inner.config
    }

    /// The live members (this one included while its own lease holds), by id: those whose lease had
    /// time left by the store's clock at the last read, and still has by the local clock since.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.inner.live(Instant::now())
    }

    /// The member list, as it changes: a new value only when a member joins, leaves or drops out (not
    /// at every renewal), so a plan made from it is recomputed only on a membership change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<[MemberInfo]>> {
        self.inner.list.subscribe()
    }

    /// Leaves the fleet: stops renewing and deletes this member's row, announcing it, so that the others
    /// replan at once. Idempotent.
    pub async fn leave(&self) {
        self.inner.stop.cancel();
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Inner {
    fn take(&self, sent: Instant, views: Vec<MemberView>) {
        let mut entries: Vec<Entry> = views
            .into_iter()
            .map(|v| Entry {
                until: sent + v.expires_in,
                info: MemberInfo {
                    id: v.id,
                    version: v.version,
                    started_at_us: v.started_at_us,
                },
            })
            .collect();
        entries.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        entries.dedup_by(|a, b| a.info.id == b.info.id);
        *lock(&self.entries) = entries;
        self.publish(Instant::now());
    }

    fn live(&self, now: Instant) -> Vec<MemberInfo> {
        lock(&self.entries)
            .iter()
            .filter(|e| e.until > now)
            .map(|e| e.info.clone())
            .collect()
    }

    /// The earliest local deadline among the listed members.
    fn next_expiry(&self) -> Option<Instant> {
        lock(&self.entries).iter().map(|e| e.until).min()
    }

    /// Publishes the live list if it differs from the last one published.
    fn publish(&self, now: Instant) {
        let live = self.live(now);
        self.list.send_if_modified(|current| {
            if **current == *live {
                false
            } else {
                *current = Arc::from(live);
                true
            }
        });
    }
}

/// The renewal period: the interval ± 10 %, so that members that started together spread out.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + rand::random::<f64>() * 0.2)
}

async fn run(inner: Arc<Inner>, store: Arc<dyn MemberStore>) {
    let renewal = inner.config.renewal;
    let mut next = Instant::now() + jittered(renewal);
    let mut failing = false;
    loop {
        let wake = inner
            .next_expiry()
            .filter(|t| *t > Instant::now())
            .map_or(next, |t| t.min(next));
        let (renew_now, prompt) = tokio::select! {
            _ = inner.stop.cancelled() => break,
            _ = store.changed() => (true, true),
            _ = tokio::time::sleep_until(wake) => (Instant::now() >= next, false),
        };
        if renew_now {
            next = Instant::now() + jittered(renewal);
            let sent = Instant::now();
            match store.renew(prompt).await {
                Ok(list) => {
                    if failing {
                        tracing::info!("member renewal works again");
                        failing = false;
                    }
                    inner.take(sent, list);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "member renewal failed; retrying");
                        failing = true;
                    } else {
                        tracing::debug!(error = %e, "member renewal failed again");
                    }
                    // Retry soon, well within the member lease.
                    next = Instant::now() + (renewal / 4).max(Duration::from_millis(50));
                }
            }
        }
        inner.publish(Instant::now());
    }
    if let Err(e) = store.leave().await {
        tracing::debug!(error = %e, "could not delete the member row; it drops out after its lease");
    }
    lock(&inner.entries).clear();
    inner.publish(Instant::now());
    store.close().await;
}
