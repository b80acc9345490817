//! What an election publishes: who leads, this node's lease and status, each decision as a numbered
//! snapshot, the store's health; and the state its campaign task and its [`Elector`] handle share.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[cfg(doc)]
use crate::Elector;
use crate::clock::LeaseClock;
use crate::config::ElectorConfig;

/// Who leads, as this node last knew it.
#[derive(Debug, Clone)]
pub struct LeaderInfo {
    /// The leader's instance id.
    pub leader_id: String,
    /// The leader's fencing term.
    pub term: u64,
    /// When the lease ends, as a local monotonic instant estimated from the database's answer (for this
    /// node's own lease: its local deadline).
    pub expires_at: Instant,
}

/// This node's lease: its term and the local monotonic deadline until which it may act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The fencing term.
    pub term: u64,
    /// `send time + lease duration - safety margin` of the last confirmed acquire or renew.
    pub deadline: Instant,
}

/// Leadership state of this node, as published on [`Elector::subscribe`].
///
/// Changes are published when this node is elected, steps down, or sees another leader (a new leader id
/// or term); renewals do not publish. The stream may skip states that lasted less than a poll. For the
/// authoritative answer at the moment of acting, use [`Elector::is_leader`] or [`Elector::term`], which
/// honour the local deadline even when this node's runtime is stalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Campaigning; `leader` is the other leader last observed, if any.
    Candidate {
        /// `(leader_id, term)` of the last observed live lease of another holder.
        leader: Option<(String, u64)>,
    },
    /// This node leads with this fencing term.
    Leader {
        /// The fencing token of this leadership.
        term: u64,
    },
    /// The elector has been shut down.
    Stopped,
}

impl Status {
    /// True for [`Status::Leader`].
    pub fn is_leader(&self) -> bool {
        matches!(self, Status::Leader { .. })
    }
}

/// One decision of the election, complete: published on [`Elector::subscribe_state`] every time the
/// background task changes anything a reader could see (elected, renewed, stepped down, another leader
/// observed, stopped), in the order it decided them.
///
/// It is what a binding that keeps its own copy of leadership needs, in one value: the status, this
/// node's lease (term and local deadline) while it leads, the generation of that leadership, and a
/// sequence number. A `watch` receiver may skip snapshots it did not read in time, never reorder them;
/// a skipped step-down still shows as a changed [`generation`](Self::generation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Numbers the snapshots of this elector from 0 (the initial one), one per decision.
    pub seq: u64,
    /// The status decided.
    pub status: Status,
    /// This node's lease while it leads (`Some` exactly when `status` is [`Status::Leader`]).
    pub lease: Option<Lease>,
    /// The value of [`Elector::generation`] when this was decided: every step-down changes it, so two
    /// leader snapshots with the same generation belong to one leadership.
    pub generation: u32,
}

impl Snapshot {
    /// True when this snapshot decided that this node leads (its deadline may have passed since).
    pub fn is_leader(&self) -> bool {
        self.status.is_leader()
    }
}

/// Whether this election can reach its store, judged from the outcome of its own operations (acquire,
/// renew, read, release, cleanup): see [`Elector::store_health`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// The last operation on the store got an answer (any answer: "not acquired" and "lease lost" are
    /// answers). True after a successful start.
    pub connected: bool,
    /// The error of the last failed operation, if any (kept after the store answers again).
    pub last_error: Option<String>,
    /// When `connected` took its current value (the start, for an election that never lost its store).
    pub since: Instant,
}

/// What an election's campaign task and its [`Elector`] handle share: the configuration, the local
/// deadline, and every state the task publishes.
pub(crate) struct Shared {
    pub(crate) config: ElectorConfig,
    pub(crate) clock: LeaseClock,
    pub(crate) status: watch::Sender<Status>,
    pub(crate) lease: watch::Sender<Option<Lease>>,
    /// Every decision, complete and numbered; `status` and `lease` are updated before it.
    pub(crate) state: watch::Sender<Snapshot>,
    pub(crate) leader: Mutex<Option<LeaderInfo>>,
    /// Token of the current leadership, cancelled when it ends.
    pub(crate) work: Mutex<Option<CancellationToken>>,
    /// Number of `run_while_leader` closures running.
    pub(crate) active_work: watch::Sender<usize>,
    /// Reachability of the store, from the outcomes of the campaign's operations.
    pub(crate) health: Mutex<StoreHealth>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics_name: String,
}
