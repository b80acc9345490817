//! The deterministic simulator (test-only cargo feature `sim`): the real election logic (`Elector`,
//! its campaign task, the local deadline) runs against the model store of [`model`] on a paused,
//! single-threaded Tokio runtime, under faults drawn from a seed: lost requests, lost replies after a
//! commit, delays, late (reordered) notifications, dropped connections, store outages, failovers to an
//! asynchronous standby whose clock is offset, process pauses, stalled liveness checks, crashes and
//! restarts. Invariants are checked at every decision of every candidate. docs/simulation.md says
//! what is and is not modelled.

mod model;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use self::model::{Answer, Row, ServerClock, Store};
use crate::backend::{AcquireOutcome, Backend, BoxFuture, ObservedLease};
use crate::events::{Event, EventKind};
use crate::seam::Mutant;
use crate::{Elector, Error, Result, lock};

const LOCK_ID: i32 = 1;
/// How many trace records a failing seed prints.
const TRACE_TAIL: usize = 60;

/// A planted defect: in the election logic ([`Mutant`]) or in the model store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planted {
    /// A defect of the election logic.
    Core(Mutant),
    /// The model store issues terms without the clock part (`max(nextval, row.term + 1)`).
    StoreTermWithoutClock,
    /// The model backend has no failover quarantine.
    NoFailoverQuarantine,
    /// The model store sends no notification on release (the release check must see the delay).
    NoReleaseNotification,
}

/// Every planted defect, by name.
pub const MUTANTS: &[(&str, Planted)] = &[
    ("no-safety-margin", Planted::Core(Mutant::NoSafetyMargin)),
    (
        "deadline-from-reply",
        Planted::Core(Mutant::DeadlineFromReply),
    ),
    (
        "adopt-lost-acquire",
        Planted::Core(Mutant::AdoptLostAcquire),
    ),
    ("skip-stall-check", Planted::Core(Mutant::SkipStallCheck)),
    (
        "release-before-step-down",
        Planted::Core(Mutant::ReleaseBeforeStepDown),
    ),
    ("error-as-renewed", Planted::Core(Mutant::ErrorAsRenewed)),
    ("store-term-without-clock", Planted::StoreTermWithoutClock),
    ("no-failover-quarantine", Planted::NoFailoverQuarantine),
    ("no-release-notification", Planted::NoReleaseNotification),
];

/// Looks a planted defect up by name.
pub fn mutant_by_name(name: &str) -> Option<Planted> {
    MUTANTS.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
}

/// What one seed runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The seed: every choice of the run follows from it.
    pub seed: u64,
    /// Simulated time of the run (faults in the first part, then a quiet part that checks recovery).
    pub duration: Duration,
    /// A planted defect to switch on.
    pub mutant: Option<Planted>,
    /// Keep the whole trace (for the determinism check and `--trace`), not only its hash and tail.
    pub full_trace: bool,
}

/// What one seed did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Simulated seconds.
    pub simulated_seconds: f64,
    /// Simulated lease-seconds: simulated seconds times the number of contested leases (one per seed).
    pub lease_seconds: f64,
    /// Elections won.
    pub leadership_changes: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Invariant violations (the first few, described).
    pub violations: Vec<String>,
    /// Number of violations.
    pub violation_count: u64,
    /// FNV-1a hash of the whole trace.
    pub trace_hash: u64,
    /// The last trace lines (all of them with `full_trace`).
    pub trace: Vec<String>,
    /// The run's parameters, for the replay line.
    pub setup: String,
}

/// Runs one seed on a paused current-thread runtime of its own.
pub fn run_seed(opts: &Options) -> Report {
    crate::seam::sim_hooks::init_clock_base();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    crate::seam::sim_hooks::seed(Some(opts.seed.wrapping_mul(0x2545_F491_4F6C_DD1D)));
    crate::seam::sim_hooks::set_mutant(match opts.mutant {
        Some(Planted::Core(m)) => Some(m),
        _ => None,
    });
    let report = rt.block_on(simulate(opts.clone()));
    drop(rt);
    crate::seam::sim_hooks::seed(None);
    crate::seam::sim_hooks::set_mutant(None);
    report
}

/// splitmix64.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        crate::seam::sim_hooks::splitmix64(&mut self.0)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + (hi.saturating_sub(lo)).mul_f64(self.unit())
    }
}

/// One trace record (formatted only when printed).
#[derive(Debug, Clone, Copy)]
struct Rec {
    at_us: u64,
    what: &'static str,
    cand: i64,
    a: u64,
    b: u64,
}

/// The parameters drawn for a seed.
#[derive(Debug, Clone)]
struct Setup {
    lease: Duration,
    renewal: Duration,
    jitter: Duration,
    op_timeout: Duration,
    candidates: usize,
    /// Faults stop here; the rest of the run is quiet.
    quiet_from: Instant,
    end: Instant,
    mean_fault_gap: Duration,
    /// The chance of each message fault (drop, lost request, lost reply; twice it for a long delay) on
    /// a good network: drawn per seed, 0.2 % to 5 %.
    loss: f64,
    /// Which fault kinds (bands of [`KIND_BANDS`]) this seed injects.
    enabled: [bool; KIND_BANDS.len()],
}

/// The upper ends of the fault kinds' bands in the injector's draw of 0..100 (pause, stall, crash,
/// shutdown, release, outage, slow store, failover, listen drop, network burst).
const KIND_BANDS: [usize; 10] = [15, 27, 37, 42, 52, 57, 60, 67, 80, 100];

struct Cand {
    name: String,
    incarnation: u64,
    elector: Option<Arc<Elector>>,
    /// Running (not crashed or shut down).
    up: bool,
    /// A start is under way.
    starting: bool,
    /// Requests leave and answers are read only from this instant (a paused process).
    paused_until: Instant,
    stalled: Arc<AtomicBool>,
    stalled_since: Option<Instant>,
    listen_up: bool,
    notify: Arc<Notify>,
    /// A bad network for this candidate until then (many lost and slow messages).
    bad_until: Instant,
    restarts: u64,
}

/// What the store granted a term: its holder and the instant (virtual) its lease ends on the server
/// that granted it; `until` moves to the release instant when the row is deleted.
#[derive(Debug, Clone)]
struct Grant {
    holder: String,
    until: Instant,
}

struct World {
    start: Instant,
    setup: Setup,
    rng: Rng,
    store: Store,
    cands: Vec<Cand>,
    mutant: Option<Planted>,
    trace_hash: u64,
    tail: std::collections::VecDeque<Rec>,
    full: Option<Vec<Rec>>,
    violations: Vec<String>,
    violation_count: u64,
    after_violation: u32,
    faults: BTreeMap<&'static str, u64>,
    changes: u64,
    max_term_issued: u64,
    last_elected: (u64, String),
    grants: BTreeMap<u64, Grant>,
    failovers: u32,
    /// No candidate (re)starts before this: one lease after a failover (a process started within a
    /// lease of a failover is outside the quarantine's cover, docs/design.md).
    no_start_before: Instant,
    /// The candidate whose release the quiet part checks, and the bound.
    release_probe: Option<(usize, Duration)>,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl World {
    fn rec(&mut self, what: &'static str, cand: i64, a: u64, b: u64) {
        let at_us = now().saturating_duration_since(self.start).as_micros() as u64;
        let r = Rec {
            at_us,
            what,
            cand,
            a,
            b,
        };
        let mut h = self.trace_hash;
        for x in [at_us, cand as u64, a, b]
            .into_iter()
            .chain(what.bytes().map(u64::from))
        {
            h = (h ^ x).wrapping_mul(0x0100_0000_01b3);
        }
        self.trace_hash = h;
        // The tail stops a few records after the first violation, so that it shows what led to it.
        if self.violation_count == 0 || self.after_violation < 8 {
            if self.violation_count > 0 {
                self.after_violation += 1;
            }
            if self.tail.len() == TRACE_TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(r);
        }
        if let Some(full) = &mut self.full {
            full.push(r);
        }
    }

    fn fault(&mut self, kind: &'static str, cand: i64, a: u64) {
        *self.faults.entry(kind).or_default() += 1;
        self.rec(kind, cand, a, 0);
    }

    fn violation(&mut self, what: String) {
        self.violation_count += 1;
        self.rec("VIOLATION", -1, self.violation_count, 0);
        if self.violations.len() < 5 {
            let at = now().saturating_duration_since(self.start);
            self.violations.push(format!("at {at:?}: {what}"));
        }
    }

    fn quiet(&self) -> bool {
        now() >= self.setup.quiet_from
    }

    /// The invariants that hold at every instant; called at every decision of every candidate.
    fn check(&mut self) {
        let t = now();
        let mut leaders = Vec::new();
        for (i, c) in self.cands.iter().enumerate() {
            if let Some(e) = &c.elector
                && let Some(term) = e.term()
            {
                leaders.push((i, term));
            }
        }
        if leaders.len() > 1 {
            let who: Vec<String> = leaders
                .iter()
                .map(|(i, term)| format!("{} (term {term})", self.cands[*i].name))
                .collect();
            self.violation(format!("two leaders at once: {}", who.join(", ")));
        }
        for &(i, term) in &leaders {
            let name = self.cands[i].name.clone();
            match self.grants.get(&term) {
                None => {
                    let m = format!("{name} leads with term {term}, which the store never granted");
                    self.violation(m);
                }
                Some(g) if g.holder != name => {
                    let m = format!("{name} leads with term {term}, granted to {}", g.holder);
                    self.violation(m);
                }
                Some(g) if g.until <= t => {
                    let m = format!(
                        "{name} leads with term {term} {:?} after the store's lease ended",
                        t - g.until
                    );
                    self.violation(m);
                }
                Some(_) => {}
            }
            if let Some(since) = self.cands[i].stalled_since
                && t.saturating_duration_since(since) > self.stall_bound()
            {
                let m = format!(
                    "{name} still leads {:?} after its liveness check began failing",
                    t - since
                );
                self.violation(m);
            }
        }
    }

    /// A leader whose liveness check fails lets go within one renewal (the latest, jittered) plus the
    /// operation timeout.
    fn stall_bound(&self) -> Duration {
        let s = &self.setup;
        s.renewal + s.jitter / 2 + s.op_timeout + Duration::from_millis(50)
    }

    /// Time after the faults end by which a leader must exist: one lease (the last leader's lease may
    /// still stand in the store) plus one renewal interval (a follower's poll), the operation timeout
    /// and the expiry wake margin; one more lease when a failover happened (the quarantine).
    fn heal_bound(&self) -> Duration {
        let s = &self.setup;
        let mut b = s.lease
            + s.renewal
            + s.jitter / 2
            + s.op_timeout
            + crate::EXPIRY_WAKE_MARGIN
            + Duration::from_millis(50);
        if self.failovers > 0 {
            b += s.lease;
        }
        b
    }

    /// Draws the fate of one request of `cand`.
    fn plan(&mut self, cand: usize) -> Plan {
        let t = now();
        if self.quiet() {
            return Plan {
                request_delay: self
                    .rng
                    .between(Duration::from_micros(100), Duration::from_millis(2)),
                reply_delay: self
                    .rng
                    .between(Duration::from_micros(100), Duration::from_millis(2)),
                ..Plan::default()
            };
        }
        let bad = self.cands[cand].bad_until > t;
        let p = if bad { 0.15 } else { self.setup.loss };
        let mut plan = Plan {
            request_delay: self
                .rng
                .between(Duration::from_micros(100), Duration::from_millis(3)),
            reply_delay: self
                .rng
                .between(Duration::from_micros(100), Duration::from_millis(3)),
            ..Plan::default()
        };
        let c = cand as i64;
        if self.rng.chance(p) {
            plan.dropped = true;
            self.fault("connection_drop", c, 0);
        } else if self.rng.chance(p) {
            plan.lost_request = true;
            self.fault("lost_request", c, 0);
        } else if self.rng.chance(p) {
            plan.lost_reply = true;
            self.fault("lost_reply", c, 0);
        }
        if self.store.slow_until > t {
            let d = self.rng.between(Duration::ZERO, self.setup.op_timeout);
            plan.reply_delay += d;
        }
        if self.rng.chance(p * 2.0) {
            let long = self.setup.op_timeout.mul_f64(1.5);
            let d = self.rng.between(Duration::from_millis(3), long);
            if self.rng.chance(0.5) {
                plan.request_delay = d;
            } else {
                plan.reply_delay = d;
            }
            self.fault("delay", c, d.as_micros() as u64);
        }
        plan
    }

    /// Runs one statement at the store, now.
    fn execute(&mut self, cand: usize, me: &str, stmt: Stmt) -> Result<Answer> {
        let t = now();
        self.rec(stmt.name(), cand as i64, 0, 0);
        if t < self.store.down_until {
            return Err(refused(stmt.name()));
        }
        // A request of an earlier incarnation (sent before a crash) still counts, in that incarnation's
        // name.
        let me = me.to_owned();
        let lease = self.setup.lease;
        let answer = match stmt {
            Stmt::Identity => Answer::Identity(self.store.identity),
            // A process whose first contact with the store is a server promoted less than one lease ago
            // never saw the old one: outside the quarantine's cover (docs/design.md "Failover"), so the
            // simulated operator does not start it yet (the start fails and is tried again).
            Stmt::Prepare
                if self
                    .store
                    .promoted_at
                    .is_some_and(|p| t < p + self.setup.lease) =>
            {
                return Err(refused("prepare"));
            }
            Stmt::Prepare => Answer::Identity(self.store.identity),
            Stmt::Observe => self.store.observe(t, LOCK_ID),
            Stmt::Cleanup => self.store.cleanup(t),
            // The acquisition runs on the connection that read the identity (as in `PgBackend`): a
            // connection does not survive its server, so after a failover in between it fails.
            Stmt::Acquire(Some(id)) if id != self.store.identity => {
                return Err(Error::Store {
                    operation: "acquire",
                    source: "connection lost: its server was replaced (simulated failover)".into(),
                });
            }
            Stmt::Acquire(_) => {
                let a = self.store.acquire(t, LOCK_ID, &me, lease);
                if let Answer::Acquired(term) = a {
                    if term <= self.max_term_issued {
                        let m = format!(
                            "the store issued term {term} to {me}, not above the earlier term {}",
                            self.max_term_issued
                        );
                        self.violation(m);
                    }
                    self.max_term_issued = self.max_term_issued.max(term);
                    let until = self.until_of(t);
                    self.grants.insert(
                        term,
                        Grant {
                            holder: me.clone(),
                            until,
                        },
                    );
                    self.rec("store_acquired", cand as i64, term, 0);
                }
                a
            }
            Stmt::Renew(term) => {
                let a = self.store.renew(t, LOCK_ID, &me, term, lease);
                if a == Answer::Renewed(true) {
                    let until = self.until_of(t);
                    if let Some(g) = self.grants.get_mut(&term) {
                        g.until = until;
                    }
                    self.rec("store_renewed", cand as i64, term, 0);
                }
                a
            }
            Stmt::Release(term) => {
                let a = self.store.release(t, LOCK_ID, &me, term);
                if a == Answer::Released(true) {
                    if let Some(g) = self.grants.get_mut(&term) {
                        g.until = t;
                    }
                    self.rec("store_released", cand as i64, term, 0);
                    self.announce_release();
                    if let Some((probe, bound)) = self.release_probe
                        && probe == cand
                    {
                        self.release_probe = None;
                        spawn_check_at(t + bound, move |w| {
                            if !w.cands.iter().enumerate().any(|(i, c)| {
                                i != probe && c.elector.as_ref().is_some_and(|e| e.is_leader())
                            }) {
                                let m = format!(
                                    "no other candidate led {bound:?} after a release while \
                                     notifications flowed"
                                );
                                w.violation(m);
                            }
                        });
                    }
                }
                a
            }
        };
        Ok(answer)
    }

    /// The instant at which the current server's lease written now ends.
    fn until_of(&self, t: Instant) -> Instant {
        let us = self.store.clock_us(t) + self.setup.lease.as_micros() as i64;
        self.store.instant_of(t, us)
    }

    /// `NOTIFY` after a committed release: to every candidate whose `LISTEN` connection is up, each
    /// after a delay of its own (in the faulted part sometimes long: it then arrives after later
    /// events, out of order).
    fn announce_release(&mut self) {
        if self.mutant == Some(Planted::NoReleaseNotification) {
            return;
        }
        for i in 0..self.cands.len() {
            let c = &self.cands[i];
            if !c.up || !c.listen_up {
                continue;
            }
            let (incarnation, notify) = (c.incarnation, c.notify.clone());
            let delay = if !self.quiet() && self.rng.chance(0.1) {
                let d = self
                    .rng
                    .between(Duration::from_millis(20), self.setup.lease.mul_f64(1.5));
                self.fault("late_notification", i as i64, d.as_micros() as u64);
                d
            } else {
                self.rng
                    .between(Duration::from_micros(100), Duration::from_millis(5))
            };
            let world = WORLD.with(|w| w.borrow().clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let Some(world) = world.upgrade() else { return };
                let mut w = lock(&world);
                let c = &w.cands[i];
                if c.incarnation == incarnation && c.up && c.listen_up {
                    notify.notify_one();
                    w.rec("notified", i as i64, 0, 0);
                }
            });
        }
    }
}

thread_local! {
    /// The world of the seed running on this thread (for tasks spawned from inside it).
    static WORLD: std::cell::RefCell<Weak<Mutex<World>>> = const { std::cell::RefCell::new(Weak::new()) };
}

fn world() -> Option<Arc<Mutex<World>>> {
    WORLD.with(|w| w.borrow().upgrade())
}

/// Runs `f` on the world at `at`.
fn spawn_check_at(at: Instant, f: impl FnOnce(&mut World) + Send + 'static) {
    tokio::spawn(async move {
        tokio::time::sleep_until(at.into()).await;
        if let Some(world) = world() {
            f(&mut lock(&world));
        }
    });
}

fn refused(operation: &'static str) -> Error {
    Error::Store {
        operation,
        source: "connection refused (simulated store down)".into(),
    }
}

#[derive(Debug, Clone, Copy)]
enum Stmt {
    Prepare,
    Identity,
    Observe,
    /// The acquisition, on the connection that read this server identity (if it read one).
    Acquire(Option<u64>),
    Renew(u64),
    Release(u64),
    Cleanup,
}

impl Stmt {
    fn name(self) -> &'static str {
        match self {
            Stmt::Prepare => "prepare",
            Stmt::Identity => "acquire",
            Stmt::Observe => "observe",
            Stmt::Acquire(_) => "acquire",
            Stmt::Renew(_) => "renew",
            Stmt::Release(_) => "release",
            Stmt::Cleanup => "cleanup",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Plan {
    dropped: bool,
    lost_request: bool,
    lost_reply: bool,
    request_delay: Duration,
    reply_delay: Duration,
}

/// Waits while `cand`'s process is paused.
async fn while_paused(world: &Arc<Mutex<World>>, cand: usize) {
    loop {
        let until = lock(world).cands[cand].paused_until;
        if now() >= until {
            return;
        }
        tokio::time::sleep_until(until.into()).await;
    }
}

#[derive(Debug, Default)]
struct Quarantine {
    known: Option<u64>,
    until: Option<Instant>,
}

/// One candidate's connection to the model store: a [`Backend`].
struct SimBackend {
    world: Arc<Mutex<World>>,
    cand: usize,
    incarnation: u64,
    name: Arc<str>,
    op_timeout: Duration,
    lease: Duration,
    notify: Arc<Notify>,
    quarantine_on: bool,
    quarantine: Mutex<Quarantine>,
}

impl SimBackend {
    async fn op(&self, stmt: Stmt) -> Result<Answer> {
        let plan = lock(&self.world).plan(self.cand);
        if plan.dropped {
            tokio::time::sleep(Duration::from_millis(1)).await;
            return Err(Error::Store {
                operation: stmt.name(),
                source: "connection reset (simulated)".into(),
            });
        }
        let (tx, rx) = oneshot::channel();
        let (world, cand, name) = (self.world.clone(), self.cand, self.name.clone());
        tokio::spawn(async move {
            // A process paused before its request left sends it when it resumes.
            while_paused(&world, cand).await;
            tokio::time::sleep(plan.request_delay).await;
            if plan.lost_request {
                return;
            }
            let answer = lock(&world).execute(cand, &name, stmt);
            tokio::time::sleep(plan.reply_delay).await;
            while_paused(&world, cand).await;
            if !plan.lost_reply {
                let _ = tx.send(answer);
            }
        });
        match tokio::time::timeout(self.op_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            _ => Err(Error::Timeout {
                operation: stmt.name(),
                after: self.op_timeout,
            }),
        }
    }

    /// The failover quarantine's judgement (as `PgBackend::judge_identity`).
    fn judge(&self, seen: u64) -> Option<Duration> {
        let t = now();
        let mut q = lock(&self.quarantine);
        match q.known {
            None => q.known = Some(seen),
            Some(known) if known != seen => {
                q.until = Some(t + self.lease);
                q.known = Some(seen);
            }
            Some(_) => {}
        }
        match q.until {
            Some(until) if t < until => Some(until - t),
            _ => None,
        }
    }
}

fn observed(row: Row, expires_in: Option<Duration>) -> ObservedLease {
    ObservedLease {
        leader_id: row.leader,
        term: row.term,
        expires_in,
    }
}

impl Backend for SimBackend {
    fn prepare(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if let Answer::Identity(id) = self.op(Stmt::Prepare).await? {
                lock(&self.quarantine).known = Some(id);
            }
            Ok(())
        })
    }

    fn observe(&self) -> BoxFuture<'_, Result<Option<ObservedLease>>> {
        Box::pin(async move {
            match self.op(Stmt::Observe).await? {
                Answer::Observed(o) => Ok(o.map(|(row, left)| observed(row, left))),
                other => unreachable!("observe answered {other:?}"),
            }
        })
    }

    fn try_acquire(&self) -> BoxFuture<'_, Result<AcquireOutcome>> {
        Box::pin(async move {
            let mut on = None;
            if self.quarantine_on
                && let Answer::Identity(id) = self.op(Stmt::Identity).await?
            {
                if let Some(retry_in) = self.judge(id) {
                    return Ok(AcquireOutcome::Deferred {
                        retry_in,
                        reason: format!("the store's server changed (identity {id})"),
                    });
                }
                on = Some(id);
            }
            match self.op(Stmt::Acquire(on)).await? {
                Answer::Acquired(term) => Ok(AcquireOutcome::Acquired { term }),
                Answer::Held(..) => Ok(AcquireOutcome::NotAcquired {
                    current: self.observe().await.ok().flatten(),
                }),
                other => unreachable!("acquire answered {other:?}"),
            }
        })
    }

    fn renew(&self, term: u64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            match self.op(Stmt::Renew(term)).await? {
                Answer::Renewed(ok) => Ok(ok),
                other => unreachable!("renew answered {other:?}"),
            }
        })
    }

    fn release(&self, term: u64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            match self.op(Stmt::Release(term)).await? {
                Answer::Released(ok) => Ok(ok),
                other => unreachable!("release answered {other:?}"),
            }
        })
    }

    fn cleanup(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            match self.op(Stmt::Cleanup).await? {
                Answer::Cleaned(n) => Ok(n),
                other => unreachable!("cleanup answered {other:?}"),
            }
        })
    }

    fn released(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.notify.notified())
    }

    fn wakes_on_release(&self) -> bool {
        let w = lock(&self.world);
        let c = &w.cands[self.cand];
        c.incarnation == self.incarnation && c.listen_up
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A candidate's decision: check the invariants at this instant.
fn on_event(world: &Weak<Mutex<World>>, cand: usize, incarnation: u64, e: &Event) {
    let Some(world) = world.upgrade() else { return };
    let mut w = lock(&world);
    if w.cands[cand].incarnation != incarnation {
        return;
    }
    let term = e.term.unwrap_or(0);
    let what = match e.kind {
        EventKind::Elected => "elected",
        EventKind::Renewed => "renewed",
        EventKind::SteppedDown => "stepped_down",
        EventKind::LeaseLost => "lease_lost",
        EventKind::Released => "released",
        EventKind::ObservedLeader => "observed_leader",
        EventKind::ServerChanged => "server_changed",
        EventKind::RenewalFailed => "renewal_failed",
        EventKind::AcquireFailed => "acquire_failed",
        EventKind::LivenessFailed => "liveness_failed",
        _ => "event",
    };
    let remaining = w.cands[cand]
        .elector
        .as_ref()
        .and_then(|e| e.lease_remaining())
        .map_or(0, |d| d.as_micros() as u64);
    w.rec(what, cand as i64, term, remaining);
    if e.kind == EventKind::Elected {
        w.changes += 1;
        // The same term again is the same leadership resumed (a renewal retried past the local
        // deadline found the lease still in the store): allowed for its own holder only.
        let name = w.cands[cand].name.clone();
        let (last, last_holder) = w.last_elected.clone();
        if term < last || (term == last && name != last_holder) {
            let m = format!(
                "{name} elected with term {term}, not above the earlier leadership's {last} ({last_holder})"
            );
            w.violation(m);
        }
        if term >= last {
            w.last_elected = (term, name);
        }
    }
    w.check();
    // Every local deadline lies inside the lease the store granted (it counts from the send time; the
    // store's from the arrival, by a clock whose rate differs by less than the safety margin allows):
    // otherwise this node would answer true after the store let others in, unless something ended its
    // leadership first. Looked at again at the moment the grant ends, when the answer must be false.
    if matches!(e.kind, EventKind::Elected | EventKind::Renewed)
        && remaining > 0
        && let Some(g) = w.grants.get(&term).cloned()
    {
        let deadline = now() + Duration::from_micros(remaining);
        if deadline > g.until + Duration::from_millis(1) {
            let m = format!(
                "{} holds term {term} until {:?} after the store's lease of it ends",
                w.cands[cand].name,
                deadline - g.until
            );
            w.violation(m);
            spawn_check_at(g.until, World::check);
        }
    }
}

/// Starts (or restarts) candidate `i`; false when its start failed (the store did not answer).
async fn start_candidate(world: &Arc<Mutex<World>>, i: usize) -> bool {
    let (config, backend) = {
        let mut w = lock(world);
        let c = &mut w.cands[i];
        c.starting = true;
        c.incarnation += 1;
        c.name = format!("c{i}.{}", c.incarnation);
        c.notify = Arc::new(Notify::new());
        c.stalled.store(false, Ordering::Relaxed);
        c.stalled_since = None;
        c.listen_up = true;
        let (incarnation, name, stalled, notify) = (
            c.incarnation,
            c.name.clone(),
            c.stalled.clone(),
            c.notify.clone(),
        );
        let s = w.setup.clone();
        let weak = Arc::downgrade(world);
        let config = Elector::builder()
            .with_lock_id(i64::from(LOCK_ID))
            .with_instance_id(name.clone())
            .with_lease_duration(s.lease)
            .with_renewal_interval(s.renewal)
            .with_jitter_range(s.jitter)
            .with_operation_timeout(s.op_timeout)
            .with_liveness_check(move || !stalled.load(Ordering::Relaxed))
            .with_observer(move |e| on_event(&weak, i, incarnation, e))
            .build()
            .expect("a valid simulated configuration");
        let backend = SimBackend {
            world: world.clone(),
            cand: i,
            incarnation,
            name: Arc::from(name.as_str()),
            op_timeout: s.op_timeout,
            lease: s.lease,
            notify,
            quarantine_on: w.mutant != Some(Planted::NoFailoverQuarantine),
            quarantine: Mutex::default(),
        };
        (config, backend)
    };
    let started = Elector::start(backend, config).await;
    lock(world).cands[i].starting = false;
    match started {
        Ok(e) => {
            let mut w = lock(world);
            w.cands[i].elector = Some(Arc::new(e));
            w.cands[i].up = true;
            let incarnation = w.cands[i].incarnation;
            w.rec("started", i as i64, incarnation, 0);
            true
        }
        Err(_) => {
            lock(world).rec("start_failed", i as i64, 0, 0);
            false
        }
    }
}

/// Restarts candidate `i` at `at` (or later: not within a lease of a failover, and
/// again after a failed start), unless the run ends first.
fn restart_at(world: Arc<Mutex<World>>, i: usize, at: Instant) {
    tokio::spawn(async move {
        let mut at = at;
        loop {
            // Started meanwhile by another restart (a crash during a shutdown): nothing to do.
            if lock(&world).cands[i].up || lock(&world).cands[i].starting {
                return;
            }
            let not_before = lock(&world).no_start_before;
            tokio::time::sleep_until(at.max(not_before).into()).await;
            if lock(&world).no_start_before > now() {
                at = now();
                continue;
            }
            if start_candidate(&world, i).await {
                return;
            }
            at = now() + Duration::from_millis(200);
        }
    });
}

fn draw_setup(rng: &mut Rng, start: Instant, duration: Duration) -> Setup {
    let lease = [1000u64, 2000, 3000, 5000][rng.below(4)];
    let lease = Duration::from_millis(lease);
    let renewal = lease.mul_f64(0.2 + 0.2 * rng.unit());
    let jitter = renewal.mul_f64(0.5 * rng.unit());
    let op_timeout = (renewal / 2).min(Duration::from_secs(2));
    let quiet_len = lease * 4 + renewal * 2 + Duration::from_secs(2);
    let quiet_len = quiet_len.min(duration);
    Setup {
        lease,
        renewal,
        jitter,
        op_timeout,
        candidates: 2 + rng.below(3),
        quiet_from: start + (duration - quiet_len),
        end: start + duration,
        mean_fault_gap: lease.mul_f64(0.3 + rng.unit()),
        enabled: std::array::from_fn(|_| rng.chance(0.6)),
        loss: 0.002 * 25f64.powf(rng.unit()),
    }
}

async fn simulate(opts: Options) -> Report {
    let start = now();
    let mut rng = Rng(opts.seed);
    let setup = draw_setup(&mut rng, start, opts.duration);
    let rate = 1.0 + (rng.unit() - 0.5) * 0.02;
    let mut store = Store::new(
        start,
        ServerClock {
            offset_us: 0.0,
            rate,
        },
        Duration::from_secs(3),
    );
    store.term_without_clock = opts.mutant == Some(Planted::StoreTermWithoutClock);
    let setup_line = format!(
        "lease {:?}, renewal {:?} ± {:?}, operation timeout {:?}, {} candidates, store clock rate {rate:.4}",
        setup.lease,
        setup.renewal,
        setup.jitter / 2,
        setup.op_timeout,
        setup.candidates
    );
    let cands = (0..setup.candidates)
        .map(|_| Cand {
            name: String::new(),
            incarnation: 0,
            elector: None,
            up: false,
            starting: false,
            paused_until: start,
            stalled: Arc::new(AtomicBool::new(false)),
            stalled_since: None,
            listen_up: true,
            notify: Arc::new(Notify::new()),
            bad_until: start,
            restarts: 0,
        })
        .collect();
    let world = Arc::new(Mutex::new(World {
        start,
        setup: setup.clone(),
        rng,
        store,
        cands,
        mutant: opts.mutant,
        trace_hash: 0xcbf2_9ce4_8422_2325,
        tail: std::collections::VecDeque::with_capacity(TRACE_TAIL),
        full: opts.full_trace.then(Vec::new),
        violations: Vec::new(),
        violation_count: 0,
        after_violation: 0,
        faults: BTreeMap::new(),
        changes: 0,
        max_term_issued: 0,
        last_elected: (0, String::new()),
        grants: BTreeMap::new(),
        failovers: 0,
        no_start_before: start,
        release_probe: None,
    }));
    WORLD.with(|w| *w.borrow_mut() = Arc::downgrade(&world));
    for i in 0..setup.candidates {
        // Staggered starts, as processes do.
        let at = start + Duration::from_millis(lock(&world).rng.below(300) as u64);
        restart_at(world.clone(), i, at);
    }
    tokio::spawn(inject_faults(world.clone()));
    // Recovery: a leader within the bound after the faults end; then a release is taken at once.
    let w2 = world.clone();
    tokio::spawn(async move {
        let heal = lock(&w2).setup.quiet_from;
        tokio::time::sleep_until(heal.into()).await;
        // Decided when the faults end (it depends on whether a failover happened).
        let bound = lock(&w2).heal_bound();
        tokio::time::sleep_until((heal + bound).into()).await;
        let leader = {
            let mut w = lock(&w2);
            w.check();
            let leader = w
                .cands
                .iter()
                .position(|c| c.elector.as_ref().is_some_and(|e| e.is_leader()));
            if leader.is_none() {
                let m = format!("no leader {bound:?} after the faults ended");
                w.violation(m);
            }
            leader
        };
        let Some(leader) = leader else { return };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let elector = {
            let mut w = lock(&w2);
            let up = w.cands.iter().filter(|c| c.up).count();
            if w.failovers > 0 || up < 2 || !w.cands[leader].up {
                return;
            }
            // Notification delay + the follower's acquisition round trip + slack.
            w.release_probe = Some((leader, Duration::from_millis(60)));
            w.rec("release_probe", leader as i64, 0, 0);
            w.cands[leader].elector.clone()
        };
        if let Some(e) = elector {
            let _ = e.release().await;
        }
    });
    tokio::time::sleep_until(setup.end.into()).await;
    let mut w = lock(&world);
    w.check();
    let cands: Vec<_> = w
        .cands
        .iter_mut()
        .filter_map(|c| c.elector.take())
        .collect();
    let report = Report {
        seed: opts.seed,
        simulated_seconds: opts.duration.as_secs_f64(),
        lease_seconds: opts.duration.as_secs_f64(),
        leadership_changes: w.changes,
        faults: std::mem::take(&mut w.faults),
        violations: std::mem::take(&mut w.violations),
        violation_count: w.violation_count,
        trace_hash: w.trace_hash,
        trace: match &w.full {
            Some(full) => full.iter().map(|r| format_rec(&w, r)).collect(),
            None => w.tail.iter().map(|r| format_rec(&w, r)).collect(),
        },
        setup: setup_line,
    };
    drop(w);
    for e in &cands {
        e.sim_crash();
    }
    drop(cands);
    report
}

fn format_rec(w: &World, r: &Rec) -> String {
    let mut s = format!("{:>12.6}s ", r.at_us as f64 / 1e6);
    if r.cand >= 0 {
        let _ = write!(s, "c{} ", r.cand);
    } else {
        s.push_str("-- ");
    }
    s.push_str(r.what);
    if r.a != 0 || r.b != 0 {
        let _ = write!(s, " {} {}", r.a, r.b);
    }
    let _ = w;
    s
}

/// The fault injector: until the quiet part, a fault every `mean_fault_gap` or so.
async fn inject_faults(world: Arc<Mutex<World>>) {
    loop {
        let (gap, quiet_from, lease) = {
            let mut w = lock(&world);
            let mean = w.setup.mean_fault_gap;
            let gap = mean.mul_f64(-(1.0 - w.rng.unit()).ln());
            (gap, w.setup.quiet_from, w.setup.lease)
        };
        tokio::time::sleep(gap).await;
        let t = now();
        if t >= quiet_from {
            return;
        }
        let left = quiet_from - t;
        let mut w = lock(&world);
        let n = w.cands.len();
        let c = w.rng.below(n);
        let d = w
            .rng
            .between(Duration::from_millis(10), lease * 2)
            .min(left);
        // Swarm testing: each seed injects only some kinds of fault (drawn at its start), so that
        // rare combinations, and runs without a given fault (a release check needs no failover), occur.
        let kind = w.rng.below(100);
        if !w.setup.enabled[KIND_BANDS.iter().position(|&b| kind < b).unwrap_or(0)] {
            continue;
        }
        match kind {
            0..15 => {
                w.cands[c].paused_until = t + d;
                w.fault("process_pause", c as i64, d.as_micros() as u64);
            }
            15..27 => {
                if w.cands[c].stalled_since.is_none() {
                    w.cands[c].stalled.store(true, Ordering::Relaxed);
                    w.cands[c].stalled_since = Some(t);
                    w.fault("liveness_stall", c as i64, d.as_micros() as u64);
                    let incarnation = w.cands[c].incarnation;
                    spawn_check_at(t + d, move |w| {
                        if w.cands[c].incarnation == incarnation {
                            w.cands[c].stalled.store(false, Ordering::Relaxed);
                            w.cands[c].stalled_since = None;
                        }
                    });
                }
            }
            27..37 => {
                if w.cands[c].up
                    && let Some(e) = w.cands[c].elector.take()
                {
                    w.cands[c].up = false;
                    w.cands[c].restarts += 1;
                    w.fault("crash", c as i64, 0);
                    drop(w);
                    e.sim_crash();
                    drop(e);
                    restart_at(world.clone(), c, t + d);
                }
            }
            37..42 => {
                if w.cands[c].up
                    && let Some(e) = w.cands[c].elector.clone()
                {
                    w.fault("shutdown", c as i64, 0);
                    let world = world.clone();
                    let incarnation = w.cands[c].incarnation;
                    tokio::spawn(async move {
                        let _ = e.shutdown().await;
                        {
                            let mut w = lock(&world);
                            // Crashed (and restarted) while shutting down: that restart stands.
                            if w.cands[c].incarnation != incarnation || !w.cands[c].up {
                                return;
                            }
                            w.cands[c].up = false;
                            w.cands[c].elector = None;
                        }
                        restart_at(world, c, now() + d);
                    });
                }
            }
            42..52 => {
                if let Some(e) = w.cands[c].elector.clone() {
                    w.fault("release", c as i64, 0);
                    tokio::spawn(async move {
                        let _ = e.release().await;
                    });
                }
            }
            52..57 => {
                w.store.down_until = w.store.down_until.max(t + d);
                w.fault("store_outage", -1, d.as_micros() as u64);
            }
            57..60 => {
                w.store.slow_until = w.store.slow_until.max(t + d);
                w.fault("store_slow", -1, d.as_micros() as u64);
            }
            60..67 => {
                // Failovers only early enough that the quarantine's lease ends before the quiet part.
                if left > lease * 3 {
                    let promote = w
                        .rng
                        .between(Duration::from_millis(50), Duration::from_millis(800));
                    let lag = if w.rng.chance(0.3) {
                        Duration::ZERO
                    } else {
                        w.rng.between(Duration::ZERO, Duration::from_secs(3))
                    };
                    // The promoted server's clock: up to half a lease away (docs/design.md: terms stay
                    // above the lost ones while the step is below one lease).
                    let step_us = (w.rng.unit() - 0.5) * lease.as_micros() as f64;
                    let rate = 1.0 + (w.rng.unit() - 0.5) * 0.02;
                    w.store.down_until = w.store.down_until.max(t + promote);
                    w.failovers += 1;
                    w.fault("failover", -1, lag.as_micros() as u64);
                    let world = world.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(promote).await;
                        let mut w = lock(&world);
                        let t = now();
                        let lost = w.store.fail_over(t, lag, step_us, rate);
                        // Replacement processes start no sooner than one lease after a failover
                        // (docs/design.md "Failover": a process that never saw the old server is outside
                        // the quarantine's cover, when the failover lost writes or stepped the clock).
                        w.no_start_before = w.no_start_before.max(t + w.setup.lease);
                        if lost > 0 {
                            w.fault("failover_lost_writes", -1, lost as u64);
                        }
                        let identity = w.store.identity;
                        w.rec("promoted", -1, identity, step_us.abs() as u64);
                    });
                }
            }
            67..80 => {
                w.cands[c].listen_up = false;
                w.fault("listen_drop", c as i64, d.as_micros() as u64);
                let incarnation = w.cands[c].incarnation;
                spawn_check_at(t + d, move |w| {
                    if w.cands[c].incarnation == incarnation {
                        w.cands[c].listen_up = true;
                    }
                });
            }
            _ => {
                w.cands[c].bad_until = t + d;
                w.fault("network_burst", c as i64, d.as_micros() as u64);
            }
        }
    }
}

/// The model store's lease statements, driven from outside with real instants: for the test that runs
/// the same operations on the model and on a real PostgreSQL lease table and compares every answer
/// (tests/sim_model_pg.rs).
pub struct ModelLeases {
    store: Store,
    lease: Duration,
    lock_id: i32,
}

impl ModelLeases {
    /// An empty model table whose clock starts at `start`, for leases of `lease` on `lock_id`.
    pub fn new(start: Instant, lease: Duration, lock_id: i32) -> Self {
        Self {
            store: Store::new(
                start,
                ServerClock {
                    offset_us: 0.0,
                    rate: 1.0,
                },
                Duration::from_secs(1),
            ),
            lease,
            lock_id,
        }
    }
    /// The acquire statement at `at`: the new term, or `None` while a live lease stands.
    pub fn acquire(&mut self, at: Instant, me: &str) -> Option<u64> {
        match self.store.acquire(at, self.lock_id, me, self.lease) {
            Answer::Acquired(term) => Some(term),
            _ => None,
        }
    }
    /// The renew statement at `at`.
    pub fn renew(&mut self, at: Instant, me: &str, term: u64) -> bool {
        self.store.renew(at, self.lock_id, me, term, self.lease) == Answer::Renewed(true)
    }
    /// The release statement at `at` (true: a row was deleted, and a notification sent).
    pub fn release(&mut self, at: Instant, me: &str, term: u64) -> bool {
        self.store.release(at, self.lock_id, me, term) == Answer::Released(true)
    }
    /// The lease row at `at`: holder, term, and whether it is live.
    pub fn observe(&self, at: Instant) -> Option<(String, u64, bool)> {
        match self.store.observe(at, self.lock_id) {
            Answer::Observed(Some((row, left))) => Some((row.leader, row.term, left.is_some())),
            _ => None,
        }
    }
    /// The cleanup statement at `at`: rows deleted.
    pub fn cleanup(&mut self, at: Instant) -> u64 {
        match self.store.cleanup(at) {
            Answer::Cleaned(n) => n,
            _ => 0,
        }
    }
    /// Seconds from `at` until the row's lease ends (negative once it has), if there is a row.
    pub fn expires_in(&self, at: Instant) -> Option<f64> {
        self.store
            .table
            .rows
            .get(&self.lock_id)
            .map(|row| (row.expires_us - self.store.clock_us(at)) as f64 / 1e6)
    }
}
