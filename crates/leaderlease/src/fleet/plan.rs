//! A fleet's plan in one process: the names this process runs elections for, the owner of each by
//! [`assign::plan`](super::assign::plan) over the live members, and each election's [`Placement`], kept
//! current as the membership changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{MemberInfo, Membership, assign};
use crate::lock;

/// Who should campaign for a name, by the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This member: it campaigns as a lone election does.
    Own,
    /// Another live member, by id: this member does not take the name while it is led, nor for one lease
    /// after it was first seen without a leader, and a leader of it hands it over (drains its work and
    /// releases, so that the owner takes it at the release notification).
    Other(String),
}

/// How long the plan waits after a holder changed before replanning, so that the changes of a start-up or
/// a handover are taken in one replan.
const HOLDER_SETTLE: Duration = Duration::from_millis(20);

/// One name's registration: its placement, and who holds it as this process last saw (the plan keeps
/// names with their holders where it can).
struct Name {
    placement: watch::Sender<Placement>,
    holder: Arc<Mutex<Option<String>>>,
}

/// An election's side of its name's registration (in its config).
#[derive(Debug, Clone)]
pub(crate) struct Seat {
    pub(crate) placement: watch::Receiver<Placement>,
    holder: Arc<Mutex<Option<String>>>,
    replan: Arc<Notify>,
    /// How long a leader waits, after the plan gave its name to another member, before it hands the
    /// name over: one member renewal interval, time for a member that just joined to start its
    /// elections, so that it takes the name at the release instead of after its own start-up.
    pub(crate) handover_delay: Duration,
    /// Until when this member does not take a name that has no leader, even its own: one member renewal
    /// interval after the fleet was made, so that the members that start together see each other before
    /// any of them takes the names (instead of the first one up taking them all, to hand most over).
    pub(crate) settle_until: tokio::time::Instant,
}

impl Seat {
    /// The election saw `holder` lead the name (`None`: no one, or not known): the plan is redone if
    /// that changed what this process knows.
    pub(crate) fn set_holder(&self, holder: Option<&str>) {
        let mut h = lock(&self.holder);
        if h.as_deref() != holder {
            *h = holder.map(Into::into);
            drop(h);
            self.replan.notify_one();
        }
    }
}

struct Inner {
    membership: Membership,
    /// When the fleet was made (see [`Seat::settle_until`]).
    made_at: tokio::time::Instant,
    names: Mutex<BTreeMap<String, Name>>,
    replan: Arc<Notify>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Named elections spread over a fleet by membership (see [the module](crate::fleet)): each member runs
/// the same names, and campaigns only for those the plan gives it; the plan is recomputed when the member
/// list changes (a join, a leave, a member dropping out), never at steady state.
///
/// Start the elections with [`ElectorBuilder::with_fleet`](crate::ElectorBuilder::with_fleet). Safety
/// stays with the lease rows: two members whose lists differ may both campaign for a name, and one leads.
/// A name is never left without a leader because of the plan: a member takes a name planned for another
/// once it has seen it without a leader for one lease.
///
/// ```no_run
/// # async fn demo() -> leaderlease::Result<()> {
/// use std::time::Duration;
/// use leaderlease::{Elector, PgHub};
/// use leaderlease::fleet::{Fleet, MemberConfig};
///
/// let hub = PgHub::connect("postgres://postgres@127.0.0.1/test", Duration::from_secs(2)).await?;
/// let fleet = Fleet::new(hub.join_fleet(MemberConfig::builder().build()?).await?);
/// let mut electors = Vec::new();
/// for (lock_id, name) in ["billing", "reports", "emails"].into_iter().enumerate() {
///     let builder = Elector::builder().with_lock_id(lock_id as i64).with_fleet(&fleet, name);
///     electors.push(builder.start_with_hub(&hub).await?);
/// }
/// // ...
/// for e in &electors {
///     e.shutdown().await?;
/// }
/// fleet.leave().await;
/// hub.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("member", &self.inner.membership.id())
            .field("names", &lock(&self.inner.names).len())
            .finish()
    }
}

impl Fleet {
    /// Plans this process's named elections over `membership`'s live members. Must be called within a
    /// Tokio runtime: a task replans at each membership change until [`leave`](Self::leave).
    pub fn new(membership: Membership) -> Self {
        let inner = Arc::new(Inner {
            made_at: tokio::time::Instant::now(),
            membership,
            names: Mutex::default(),
            replan: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(run(
            Arc::downgrade(&inner),
            inner.replan.clone(),
            inner.stop.clone(),
        ));
        *lock(&inner.task) = Some(task);
        Self { inner }
    }

    /// This process's membership.
    pub fn membership(&self) -> &Membership {
        &self.inner.membership
    }

    /// The live members, as the plan sees them.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.inner.membership.members()
    }

    /// The current plan of this process's names: each name with the id of the member that should lead
    /// it (this member's own id for every name while it is not in its own list yet: it then campaigns
    /// for all of them).
    pub fn plan(&self) -> BTreeMap<String, Option<String>> {
        let me = self.inner.membership.id().to_owned();
        lock(&self.inner.names)
            .iter()
            .filter(|(_, n)| !n.placement.is_closed())
            .map(|(name, n)| {
                let owner = match &*n.placement.borrow() {
                    Placement::Own => Some(me.clone()),
                    Placement::Other(id) => Some(id.clone()),
                };
                (name.clone(), owner)
            })
            .collect()
    }

    /// The names the plan gives this member.
    pub fn owned(&self) -> Vec<String> {
        lock(&self.inner.names)
            .iter()
            .filter(|(_, n)| !n.placement.is_closed() && *n.placement.borrow() == Placement::Own)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Registers `name` and returns its seat: its placement, kept current, and where the election says
    /// who holds it (the election's side of
    /// [`ElectorBuilder::with_fleet`](crate::ElectorBuilder::with_fleet)). The name leaves the plan when
    /// every election of it has stopped.
    pub(crate) fn register(&self, name: String) -> Seat {
        let seat = {
            let mut names = lock(&self.inner.names);
            let n = names.entry(name).or_insert_with(|| Name {
                placement: watch::channel(Placement::Own).0,
                holder: Arc::default(),
            });
            Seat {
                placement: n.placement.subscribe(),
                holder: n.holder.clone(),
                replan: self.inner.replan.clone(),
                handover_delay: self.inner.membership.config().renewal_interval(),
                settle_until: self.inner.made_at
                    + self.inner.membership.config().renewal_interval(),
            }
        };
        self.inner.replan_now();
        seat
    }

    /// Stops planning and leaves the membership (the other members replan at once). Elections started
    /// with this fleet campaign as lone elections afterwards; shut them down first to hand their names
    /// over with a drained release.
    pub async fn leave(&self) {
        self.inner.stop.cancel();
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        lock(&self.inner.names).clear();
        self.inner.membership.leave().await;
    }
}

impl Inner {
    /// Recomputes the plan from the live members and sends each name's placement if it changed. Names
    /// whose elections all stopped are dropped first. While this member is not in its own list (not
    /// joined yet by the store's clock, or its renewals fail), every name is its own: campaigning as a
    /// lone election is never wrong, the lease rows decide.
    fn replan_now(&self) {
        let members = self.membership.members();
        let me = self.membership.id();
        let mut names = lock(&self.names);
        names.retain(|_, n| !n.placement.is_closed());
        let keys: Vec<&String> = names.keys().collect();
        let holders: Vec<Option<String>> =
            names.values().map(|n| lock(&n.holder).clone()).collect();
        let holders: Vec<Option<&str>> = holders.iter().map(|h| h.as_deref()).collect();
        let owners = if members.iter().any(|m| m.id == me) {
            assign::plan_from(&keys, &members, &holders)
        } else {
            vec![None; keys.len()]
        };
        let placements: Vec<Placement> = owners
            .iter()
            .map(|o| match o {
                Some(i) if members[*i].id != me => Placement::Other(members[*i].id.clone()),
                _ => Placement::Own,
            })
            .collect();
        for (n, placement) in names.values().zip(placements) {
            n.placement.send_if_modified(|p| {
                if *p == placement {
                    false
                } else {
                    *p = placement;
                    true
                }
            });
        }
    }
}

/// Replans at each change of the member list, and shortly after a holder changed, until stopped or
/// until the fleet is dropped.
async fn run(inner: std::sync::Weak<Inner>, replan: Arc<Notify>, stop: CancellationToken) {
    let Some(mut list) = inner.upgrade().map(|i| i.membership.subscribe()) else {
        return;
    };
    loop {
        match inner.upgrade() {
            Some(strong) => strong.replan_now(),
            None => return,
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = list.changed() => if changed.is_err() { return },
            _ = replan.notified() => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(HOLDER_SETTLE) => {}
                }
            }
        }
    }
}
