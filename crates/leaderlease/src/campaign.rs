//! The campaign loop: one background task per election that campaigns (polls, acquires), renews,
//! steps down at the local deadline, releases and cleans up, and publishes each decision to the
//! [`Elector`](crate::Elector) handle through [`Shared`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Level;

use crate::backend::{AcquireOutcome, Backend, ObservedLease};
use crate::config::ElectorConfig;
use crate::events::{Event, EventKind, deliver};
use crate::fleet::{Placement, Seat};
use crate::seam::{self, Mutant, mutant};
use crate::state::{LeaderInfo, Lease, Shared, Snapshot, Status};
use crate::{Error, Result, lock};

/// A follower wakes this long after the moment it computed for the observed lease's expiry, so that its
/// attempt reaches the database after the expiry, not just before.
pub const EXPIRY_WAKE_MARGIN: Duration = Duration::from_millis(20);
/// First retry delay after a failed database operation; it doubles per failure up to half the renewal
/// interval.
pub const ERROR_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How long a fleet's candidate waits, after the planned owner of a name released it itself, before it
/// takes it: the time for the plan to follow when that owner is leaving the fleet (its leave and its
/// release are announced together), so that the name goes to its next owner and not to whoever heard the
/// release first.
pub const OWNER_RELEASE_SETTLE: Duration = Duration::from_millis(50);

/// How often a candidate whose liveness check fails looks at it again (no database access meanwhile).
pub const LIVENESS_RECHECK_INTERVAL: Duration = Duration::from_millis(50);

/// What the [`Elector`](crate::Elector) handle asks of its campaign task.
pub(crate) enum Command {
    /// Release the lease now (see [`Elector::release`](crate::Elector::release)); the reply says how
    /// it went.
    Release(oneshot::Sender<Result<()>>),
}

struct Held {
    term: u64,
    /// Send time of the last confirmed acquire or renew.
    confirmed_at: Instant,
}

/// State of the background task.
pub(crate) struct Campaign {
    backend: Arc<dyn Backend>,
    shared: Arc<Shared>,
    held: Option<Held>,
    leading: bool,
    next_renew: Instant,
    next_poll: Instant,
    next_cleanup: Instant,
    stand_back_until: Option<Instant>,
    failures: u32,
    acquire_outcome_unknown: bool,
    warned_same_id: bool,
    /// A release was announced: the next poll tries to acquire without reading the lease first.
    announced: bool,
    /// The reason of the failover quarantine last reported (reported once per change of server).
    deferred_for: Option<String>,
    /// The fleet's placement of this election's name ([`crate::fleet::Fleet`]); `None`: a lone election.
    placement: Option<Seat>,
    /// Since when this candidate, not the planned owner, has seen the name without a leader.
    unled_since: Option<Instant>,
    /// The planned owner that released the name itself (see [`OWNER_RELEASE_SETTLE`]).
    owner_released: Option<String>,
    /// When this leader hands its name over to the planned owner ([`Seat::handover_delay`] after the
    /// plan moved it), unless the plan moves it back first.
    handover_at: Option<Instant>,
}

impl Campaign {
    pub(crate) fn new(backend: Arc<dyn Backend>, shared: Arc<Shared>) -> Self {
        let now = seam::now();
        let c = &shared.config;
        let next_cleanup = now + jittered(c.clean_interval(), c.jitter_range());
        let placement = c.placement.clone();
        Self {
            backend,
            shared,
            held: None,
            leading: false,
            next_renew: now,
            next_poll: now,
            next_cleanup,
            stand_back_until: None,
            failures: 0,
            acquire_outcome_unknown: false,
            warned_same_id: false,
            announced: false,
            deferred_for: None,
            placement,
            unled_since: None,
            owner_released: None,
            handover_at: None,
        }
    }

    fn config(&self) -> &ElectorConfig {
        &self.shared.config
    }

    /// Logs `event` with `tracing`, hands it to the observer and records it in the metrics.
    fn report(&self, event: Event) {
        report(&self.shared, event);
    }

    /// The store answered.
    fn reachable(&self) {
        let mut h = lock(&self.shared.health);
        if !h.connected {
            h.connected = true;
            h.since = seam::now();
        }
    }

    /// An operation on the store failed.
    fn unreachable(&self, e: &Error) {
        let mut h = lock(&self.shared.health);
        h.last_error = Some(e.to_string());
        if h.connected {
            h.connected = false;
            h.since = seam::now();
        }
    }

    /// The local deadline of the held lease ([`ElectorConfig::local_deadline`]).
    fn deadline(&self) -> Option<Instant> {
        self.held
            .as_ref()
            .map(|h| self.config().local_deadline(h.confirmed_at))
    }

    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        stop: CancellationToken,
    ) {
        self.report(Event::new(
            EventKind::Started,
            Level::DEBUG,
            "campaign started",
        ));
        let released = self.backend.clone();
        let mut plan = self.placement.as_ref().map(|s| s.placement.clone());
        loop {
            let replanned = async {
                match plan.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                ok = replanned => {
                    if ok {
                        self.replanned().await;
                    } else {
                        // The fleet is gone: a lone election from now on.
                        plan = None;
                        self.placement = None;
                        self.replanned().await;
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Release(reply)) => {
                        self.drain_work().await;
                        let _ = reply.send(self.release().await);
                    }
                    None => break,
                },
                _ = sleep_until_opt(self.handover_at) => {
                    self.handover_at = None;
                    self.hand_over().await;
                }
                _ = tokio::time::sleep_until(self.next_wake().into()) => self.tick().await,
                _ = released.released(), if self.held.is_none() => {
                    tracing::debug!("the lease was released; trying at once");
                    self.next_poll = seam::now();
                    self.announced = true;
                }
            }
        }
        // Shutdown (explicit, by the external token, or by dropping the handle): the same order as a
        // release, so the lease is never deleted under running leader work.
        self.drain_work().await;
        if self.held.is_some()
            && let Err(e) = self.release().await
        {
            self.report(
                Event::new(
                    EventKind::ReleaseFailed,
                    Level::WARN,
                    "could not delete the lease at shutdown; it will expire by itself",
                )
                .error(&e),
            );
        }
        self.step_down("shutdown");
        self.backend.close().await;
        self.shared.status.send_replace(Status::Stopped);
        self.publish();
        self.report(Event::new(
            EventKind::Stopped,
            Level::INFO,
            "elector stopped",
        ));
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.next_cleanup.min(if self.held.is_some() {
            self.next_renew
        } else {
            self.next_poll
        });
        if self.leading
            && let Some(d) = self.deadline()
        {
            wake = wake.min(d);
        }
        wake
    }

    /// Cancels the current leadership's work token and waits, at most one lease duration, for the
    /// closures of `run_while_leader` to return, renewing the lease meanwhile. Releasing afterwards can
    /// therefore not let another node in while this one's work still runs.
    async fn drain_work(&mut self) {
        if let Some(token) = lock(&self.shared.work).as_ref() {
            token.cancel();
        }
        let mut active = self.shared.active_work.subscribe();
        let give_up = seam::now() + self.config().lease_duration();
        loop {
            if *active.borrow_and_update() == 0 {
                return;
            }
            tokio::select! {
                biased;
                changed = active.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(give_up.into()) => {
                    self.report(Event::new(
                        EventKind::WorkOverran,
                        Level::WARN,
                        "leader work still running one lease after its cancellation; releasing anyway",
                    ));
                    return;
                }
                _ = tokio::time::sleep_until(self.next_wake().into()) => self.tick().await,
            }
        }
    }

    async fn tick(&mut self) {
        let now = seam::now();
        if self.leading && self.deadline().is_some_and(|d| now >= d) {
            self.step_down("local lease deadline passed before a renewal was confirmed");
        }
        if now >= self.next_cleanup {
            self.cleanup().await;
        }
        if self.held.is_some() {
            if seam::now() >= self.next_renew {
                self.renew().await;
            }
        } else if seam::now() >= self.next_poll {
            self.poll().await;
        }
    }

    /// Awaits a backend call; while leading, steps down at the local deadline even if the call is still
    /// in flight.
    async fn guarded<T>(&mut self, call: impl Future<Output = T>) -> T {
        tokio::pin!(call);
        loop {
            let deadline = self.deadline().filter(|_| self.leading);
            tokio::select! {
                // In order: an answer that is ready counts before a deadline passing at the same moment
                // (either order is correct; a fixed one keeps a seeded run replayable).
                biased;
                out = &mut call => return out,
                _ = sleep_until_opt(deadline) => {
                    self.step_down("local lease deadline passed while the database did not answer");
                }
            }
        }
    }

    async fn renew(&mut self) {
        let Some(term) = self.held.as_ref().map(|h| h.term) else {
            return;
        };
        if !mutant(Mutant::SkipStallCheck) && !self.config().is_alive() {
            self.report(
                Event::new(
                    EventKind::LivenessFailed,
                    Level::WARN,
                    "liveness check failed: stepping down and deleting the lease so that another node takes over",
                )
                .term(term),
            );
            if let Err(e) = self.release().await {
                self.report(
                    Event::new(
                        EventKind::ReleaseFailed,
                        Level::WARN,
                        "could not delete the lease; it will expire by itself",
                    )
                    .error(&e),
                );
            }
            return;
        }
        let backend = self.backend.clone();
        let sent = seam::now();
        let outcome = self.guarded(backend.renew(term)).await;
        let latency = seam::now().saturating_duration_since(sent);
        match outcome {
            Ok(true) if self.deadline().is_some_and(|d| seam::now() >= d) => {
                // Answered after the local deadline (this node had stepped down): the term matched on the
                // server that answered, but that proves an unbroken lease only on one server's history.
                // After a failover to an asynchronous standby, the promoted server may lack a takeover
                // that the old one acknowledged (its holder leading now) and, by its clock, still see
                // this node's old row live. So the term is not resumed: the lease is deleted and this
                // node campaigns again, through the acquisition and its failover quarantine.
                self.failures = 0;
                self.reachable();
                self.step_down("renewal answered after the local deadline");
                self.held = None;
                self.acquire_outcome_unknown = self.backend.release(term).await.is_err();
                self.next_poll = seam::now();
                self.announced = true;
                self.report(
                    Event::new(
                        EventKind::LeaseLost,
                        Level::DEBUG,
                        "renewal answered after the local deadline: not resumed; lease deleted, \
                         campaigning again",
                    )
                    .term(term)
                    .latency(latency),
                );
            }
            Ok(true) => {
                self.failures = 0;
                self.reachable();
                self.confirmed(term, counted_from(sent));
                self.report(
                    Event::new(EventKind::Renewed, Level::DEBUG, "lease renewed")
                        .term(term)
                        .latency(latency),
                );
            }
            Ok(false) => {
                self.reachable();
                self.step_down("lease lost: renewal matched no row (expired or taken over)");
                self.held = None;
                self.next_poll = seam::now();
                // After the step-down (whose warning carries the reason), so that reporting it never
                // delays the step-down's snapshot.
                self.report(
                    Event::new(
                        EventKind::LeaseLost,
                        Level::DEBUG,
                        "renewal matched no row: the lease expired or was taken over",
                    )
                    .term(term)
                    .latency(latency),
                );
            }
            Err(e @ Error::ReadOnly { .. }) => {
                // The server refuses writes (a standby, or read-only transactions): no renewal can
                // succeed there, so waiting for the local deadline gains nothing. Step down now; the lease
                // in this node's name is left to expire (its holder is this node: no duplicate warning).
                self.unreachable(&e);
                self.step_down_because(
                    "the database server is read-only (a standby, or default_transaction_read_only): \
                     it refused the renewal",
                    Some(&e),
                );
                self.held = None;
                self.acquire_outcome_unknown = true;
                let delay = self.failure_delay();
                self.next_poll = seam::now() + delay;
                self.report(
                    Event::new(
                        EventKind::RenewalFailed,
                        Level::WARN,
                        "renewal refused by a read-only server; stepped down",
                    )
                    .term(term)
                    .error(&e)
                    .latency(latency)
                    .retry_in(delay),
                );
            }
            Err(_) if mutant(Mutant::ErrorAsRenewed) => self.confirmed(term, sent),
            Err(e) => {
                // Keep the term and retry: leadership is kept until the local deadline (then `guarded` or
                // `tick` steps down), and the retries go on after it, because a renewal whose answer was
                // lost may have extended the lease. Only the database saying "no row" ends the term.
                let delay = self.failure_delay();
                self.unreachable(&e);
                self.report(
                    Event::new(
                        EventKind::RenewalFailed,
                        Level::WARN,
                        "renewal failed; retrying",
                    )
                    .term(term)
                    .error(&e)
                    .latency(latency)
                    .retry_in(delay),
                );
                self.next_renew = seam::now() + delay;
            }
        }
    }

    /// Records a confirmed acquire or renew of `term` sent at `sent`.
    fn confirmed(&mut self, term: u64, sent: Instant) {
        let c = self.config();
        let deadline = c.local_deadline(sent);
        let next_renew = sent + jittered(c.renewal_interval(), c.jitter_range());
        let instance_id = c.instance_id().to_owned();
        self.held = Some(Held {
            term,
            confirmed_at: sent,
        });
        self.next_renew = next_renew;
        *lock(&self.shared.leader) = Some(LeaderInfo {
            leader_id: instance_id,
            term,
            expires_at: deadline,
        });
        if seam::now() >= deadline {
            // Confirmed too late to act on (the runtime stalled): renew again at once.
            self.next_renew = seam::now();
            return;
        }
        self.shared.clock.set(term, deadline);
        self.shared
            .lease
            .send_replace(Some(Lease { term, deadline }));
        let elected = !self.leading;
        if let Some(seat) = &self.placement {
            seat.set_holder(Some(self.shared.config.instance_id()));
        }
        if elected {
            self.leading = true;
            *lock(&self.shared.work) = Some(CancellationToken::new());
            self.shared.status.send_replace(Status::Leader { term });
        }
        self.publish();
        // Reported after the snapshot is published, so that reporting never delays it.
        if elected {
            self.report(Event::new(EventKind::Elected, Level::INFO, "elected leader").term(term));
        }
    }

    /// Publishes the current decision as the next [`Snapshot`].
    fn publish(&self) {
        let status = self.shared.status.borrow().clone();
        let lease = if status.is_leader() {
            *self.shared.lease.borrow()
        } else {
            None
        };
        let generation = self.shared.clock.generation();
        self.shared.state.send_modify(|s| {
            *s = Snapshot {
                seq: s.seq + 1,
                status,
                lease,
                generation,
            }
        });
    }

    fn step_down(&mut self, reason: &str) {
        self.step_down_because(reason, None);
    }

    /// Steps down for `reason`; the step-down event carries `error` when one caused it.
    fn step_down_because(&mut self, reason: &str, error: Option<&Error>) {
        self.shared.clock.clear();
        let term = self
            .held
            .as_ref()
            .map(|h| h.term)
            .or_else(|| self.shared.lease.borrow().map(|l| l.term));
        let had_lease = self.shared.lease.send_if_modified(|l| l.take().is_some());
        if let Some(token) = lock(&self.shared.work).take() {
            token.cancel();
        }
        let stepped_down = self.leading;
        if let Some(seat) = self.placement.as_ref().filter(|_| stepped_down) {
            seat.set_holder(None);
        }
        if stepped_down {
            self.leading = false;
            self.shared
                .status
                .send_replace(Status::Candidate { leader: None });
        }
        if had_lease || self.shared.state.borrow().is_leader() {
            self.publish();
        }
        // Reported after the snapshot is published, so that reporting never delays it.
        if stepped_down {
            let level = if reason == "released" || reason == "shutdown" {
                Level::INFO
            } else {
                Level::WARN
            };
            let mut event =
                Event::new(EventKind::SteppedDown, level, "stepped down").reason(reason);
            if let Some(e) = error {
                event = event.error(e);
            }
            event.term = term;
            self.report(event);
        }
    }

    async fn poll(&mut self) {
        let now = seam::now();
        if let Some(until) = self.stand_back_until {
            if now < until {
                self.next_poll = until;
                return;
            }
            self.stand_back_until = None;
        }
        if !self.config().is_alive() {
            // Unfit to lead: neither read nor acquire until the check passes again.
            self.next_poll = now + LIVENESS_RECHECK_INTERVAL;
            return;
        }
        if std::mem::take(&mut self.announced) {
            // Released by its planned owner itself (an explicit release, or its shutdown without
            // leaving the fleet first): nobody is entitled to it, so anyone takes it at once.
            // Looked at again a moment later (the owner may be leaving the fleet, and the plan about to
            // give the name to someone else): taken then if the releaser is still the planned owner.
            let by_owner = self.planned_owner().filter(|owner| {
                lock(&self.shared.leader)
                    .as_ref()
                    .is_some_and(|l| &l.leader_id == owner)
            });
            if let Some(owner) = by_owner {
                self.owner_released = Some(owner);
                self.next_poll = now + OWNER_RELEASE_SETTLE;
                return;
            }
            if self.may_take(now) {
                self.acquire().await;
            }
            return;
        }
        match self.backend.observe().await {
            Ok(Some(lease)) if lease.expires_in.is_some() => {
                self.failures = 0;
                self.reachable();
                self.observed(&lease);
            }
            Ok(_) => {
                self.failures = 0;
                self.reachable();
                if let Some(seat) = &self.placement {
                    seat.set_holder(None);
                }
                if self.may_take(seam::now()) {
                    self.acquire().await;
                }
            }
            Err(e) => {
                let delay = self.failure_delay();
                self.unreachable(&e);
                self.report(
                    Event::new(
                        EventKind::ReadFailed,
                        Level::WARN,
                        "could not read the lease",
                    )
                    .error(&e)
                    .retry_in(delay),
                );
                self.next_poll = seam::now() + delay;
            }
        }
    }

    async fn acquire(&mut self) {
        let sent = seam::now();
        let outcome = self.backend.try_acquire().await;
        if outcome.is_ok() {
            self.reachable();
        }
        match outcome {
            Ok(AcquireOutcome::Acquired { term }) => {
                self.acquire_outcome_unknown = false;
                self.deferred_for = None;
                self.confirmed(term, counted_from(sent));
            }
            Ok(AcquireOutcome::Deferred { retry_in, reason }) => {
                // The failover quarantine: look again (reading the lease meanwhile) at the next poll
                // or when it ends.
                self.failures = 0;
                if self.deferred_for.as_ref() != Some(&reason) {
                    self.report(
                        Event::new(
                            EventKind::ServerChanged,
                            Level::WARN,
                            "the database server changed (a failover): not acquiring until one lease \
                             after the change was first seen",
                        )
                        .reason(reason.clone())
                        .retry_in(retry_in),
                    );
                    self.deferred_for = Some(reason);
                }
                let c = self.config();
                let poll = jittered(c.renewal_interval(), c.jitter_range());
                self.next_poll = seam::now() + retry_in.min(poll);
            }
            Ok(AcquireOutcome::NotAcquired {
                current: Some(lease),
            }) if lease.expires_in.is_some() => self.observed(&lease),
            Ok(AcquireOutcome::NotAcquired { .. }) => {
                // Another candidate was acquiring at the same moment: look again shortly.
                self.report(Event::new(
                    EventKind::Contended,
                    Level::DEBUG,
                    "lease contended; looking again shortly",
                ));
                self.next_poll =
                    seam::now() + jittered(Duration::from_millis(100), Duration::from_millis(100));
            }
            Err(e) => {
                // The statement may have committed without us hearing back: we do not lead (no
                // confirmation), and a lease in our name with an unknown term is left to expire.
                self.acquire_outcome_unknown = true;
                let delay = if matches!(e, Error::ReadOnly { .. }) {
                    // A read-only server answers the same until it is promoted or the route moves:
                    // look again at the poll interval, not in a tight retry.
                    let c = self.config();
                    jittered(c.renewal_interval(), c.jitter_range())
                } else {
                    self.failure_delay()
                };
                self.unreachable(&e);
                self.report(
                    Event::new(EventKind::AcquireFailed, Level::WARN, "acquire failed")
                        .error(&e)
                        .retry_in(delay),
                );
                self.next_poll = seam::now() + delay;
            }
        }
    }

    /// Notes a live lease held by someone else and schedules the next look: just after the lease's
    /// expiry when the backend announces releases (its `LISTEN` connection is up), otherwise at the next
    /// jittered poll or just after the expiry, whichever comes first.
    fn observed(&mut self, lease: &ObservedLease) {
        let now = seam::now();
        self.unled_since = None;
        self.owner_released = None;
        if let Some(seat) = &self.placement {
            seat.set_holder(Some(&lease.leader_id));
        }
        let expires_in = lease.expires_in.unwrap_or_default();
        let expires_at = now + expires_in;
        let shared = self.shared.clone();
        let c = &shared.config;
        if lease.leader_id == c.instance_id() {
            if self.acquire_outcome_unknown && mutant(Mutant::AdoptLostAcquire) {
                self.acquire_outcome_unknown = false;
                self.confirmed(lease.term, now);
                return;
            }
            if !self.acquire_outcome_unknown && !self.warned_same_id {
                self.report(
                    Event::new(
                        EventKind::DuplicateInstanceId,
                        Level::WARN,
                        "a lease in this node's instance id is held by another process: \
                         instance ids must be unique; this node waits for that lease to end",
                    )
                    .term(lease.term),
                );
                self.warned_same_id = true;
            }
        } else {
            self.acquire_outcome_unknown = false;
        }
        let at_expiry = expires_at + EXPIRY_WAKE_MARGIN;
        self.next_poll = if self.backend.wakes_on_release() {
            at_expiry
        } else {
            at_expiry.min(now + jittered(c.renewal_interval(), c.jitter_range()))
        };
        let changed = lock(&self.shared.leader)
            .as_ref()
            .is_none_or(|l| l.leader_id != lease.leader_id || l.term != lease.term);
        *lock(&self.shared.leader) = Some(LeaderInfo {
            leader_id: lease.leader_id.clone(),
            term: lease.term,
            expires_at,
        });
        if changed {
            self.report(
                Event::new(EventKind::ObservedLeader, Level::INFO, "observed leader")
                    .leader(&lease.leader_id)
                    .term(lease.term),
            );
        }
        let status = Status::Candidate {
            leader: Some((lease.leader_id.clone(), lease.term)),
        };
        let modified = self.shared.status.send_if_modified(|s| {
            if *s == status {
                false
            } else {
                *s = status;
                true
            }
        });
        if modified {
            self.publish();
        }
    }

    /// The member the fleet's plan gives this name to, when it is not this one.
    fn planned_owner(&self) -> Option<String> {
        match self
            .placement
            .as_ref()
            .map(|s| s.placement.borrow().clone())
        {
            Some(Placement::Other(owner)) => Some(owner),
            _ => None,
        }
    }

    /// Whether this candidate may try to acquire the unled name now: always for a lone election or the
    /// planned owner; for another member, once it has seen the name without a leader for one lease (so
    /// that the plan never leaves a name leaderless). Otherwise schedules the next look.
    fn may_take(&mut self, now: Instant) -> bool {
        if let Some(seat) = &self.placement {
            let settle = Instant::from(seat.settle_until);
            if now < settle {
                // The fleet is new: other members starting together may not be listed yet.
                self.next_poll = settle;
                return false;
            }
        }
        let Some(owner) = self.planned_owner() else {
            self.unled_since = None;
            self.owner_released = None;
            return true;
        };
        if self.owner_released.take().as_ref() == Some(&owner) {
            self.unled_since = None;
            return true;
        }
        let since = *self.unled_since.get_or_insert(now);
        let c = self.config();
        let take_at = since + c.lease_duration();
        if now >= take_at {
            self.report(
                Event::new(
                    EventKind::TakingOver,
                    Level::INFO,
                    "the name's planned owner has not led it for one lease; taking it",
                )
                .leader(&owner),
            );
            self.unled_since = None;
            return true;
        }
        let next = (take_at + EXPIRY_WAKE_MARGIN)
            .min(now + jittered(c.renewal_interval(), c.jitter_range()));
        self.next_poll = next;
        false
    }

    /// The fleet's plan changed: a leader of a name now planned for another member hands it over after
    /// [`Seat::handover_delay`]; a candidate that now owns the name campaigns at once.
    async fn replanned(&mut self) {
        match self.planned_owner() {
            Some(_) => {
                self.unled_since = None;
                if self.leading && self.handover_at.is_none() {
                    let delay = self
                        .placement
                        .as_ref()
                        .map_or(Duration::ZERO, |s| s.handover_delay);
                    self.handover_at = Some(seam::now() + delay);
                }
            }
            None => {
                self.handover_at = None;
                if self.held.is_none() {
                    self.unled_since = None;
                    self.stand_back_until = None;
                    self.next_poll = seam::now();
                }
            }
        }
    }

    /// Hands the name over to its planned owner, if the plan still gives it to another member: the
    /// work drained, then the lease released (the owner takes it at the release notification).
    async fn hand_over(&mut self) {
        let Some(owner) = self.planned_owner() else {
            return;
        };
        let Some(term) = self.held.as_ref().filter(|_| self.leading).map(|h| h.term) else {
            return;
        };
        self.report(
            Event::new(
                EventKind::HandingOver,
                Level::INFO,
                "the plan gives this name to another member; handing it over",
            )
            .leader(&owner)
            .term(term),
        );
        self.drain_work().await;
        if let Err(e) = self.release().await {
            self.report(
                Event::new(
                    EventKind::ReleaseFailed,
                    Level::WARN,
                    "could not delete the lease to hand it over; it will expire by itself",
                )
                .error(&e),
            );
        }
    }

    async fn release(&mut self) -> Result<()> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        let late_step_down = mutant(Mutant::ReleaseBeforeStepDown);
        if !late_step_down {
            self.step_down("released");
        }
        let c = self.config();
        self.stand_back_until = Some(seam::now() + c.renewal_interval() + c.jitter_range());
        self.next_poll = seam::now();
        *lock(&self.shared.leader) = None;
        let outcome = self.backend.release(held.term).await;
        if late_step_down {
            self.step_down("released");
        }
        match outcome {
            Ok(true) => {
                self.reachable();
                self.report(
                    Event::new(EventKind::Released, Level::INFO, "lease released").term(held.term),
                );
                Ok(())
            }
            Ok(false) => {
                self.reachable();
                self.report(
                    Event::new(
                        EventKind::Released,
                        Level::DEBUG,
                        "lease was already gone at release",
                    )
                    .term(held.term),
                );
                Ok(())
            }
            Err(e) => {
                self.unreachable(&e);
                Err(e)
            }
        }
    }

    async fn cleanup(&mut self) {
        let c = self.config();
        self.next_cleanup = seam::now() + jittered(c.clean_interval(), c.jitter_range());
        let backend = self.backend.clone();
        match self.guarded(backend.cleanup()).await {
            Ok(0) => self.reachable(),
            Ok(n) => {
                self.reachable();
                self.report(
                    Event::new(
                        EventKind::Cleaned,
                        Level::DEBUG,
                        "deleted long-expired leases",
                    )
                    .rows(n),
                );
            }
            Err(e) => {
                self.unreachable(&e);
                self.report(
                    Event::new(
                        EventKind::CleanupFailed,
                        Level::DEBUG,
                        "cleanup failed; trying again next interval",
                    )
                    .error(&e),
                );
            }
        }
    }

    fn failure_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let cap = self.config().renewal_interval() / 2;
        let exp = ERROR_RETRY_DELAY.saturating_mul(1 << self.failures.min(16).saturating_sub(1));
        let base = exp.min(cap).max(Duration::from_millis(10));
        jittered(base, base / 2)
    }
}

/// Logs `event` with `tracing`, hands it to the election's observer and records it in the metrics.
fn report(shared: &Shared, event: Event) {
    event.trace();
    if let Some(observer) = shared.config.observer() {
        deliver(observer, &event);
    }
    #[cfg(feature = "metrics")]
    crate::metrics_names::record(&shared.metrics_name, &event, shared.clock.remaining());
}

/// The instant a confirmed lease counts from: its request's send time (the planted defect
/// [`Mutant::DeadlineFromReply`] counts from the answer instead).
fn counted_from(sent: Instant) -> Instant {
    if mutant(Mutant::DeadlineFromReply) {
        seam::now()
    } else {
        sent
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// `base` ± `range`/2, uniformly.
fn jittered(base: Duration, range: Duration) -> Duration {
    let offset = range.mul_f64(crate::seam::unit_random());
    (base + offset).saturating_sub(range / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_range() {
        let base = Duration::from_millis(3000);
        let range = Duration::from_millis(2000);
        let samples: Vec<_> = (0..2000).map(|_| jittered(base, range)).collect();
        assert!(samples.iter().all(|d| *d >= Duration::from_millis(2000)));
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(4000)));
        assert!(samples.iter().any(|d| *d < Duration::from_millis(2500)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(3500)));
    }
}
