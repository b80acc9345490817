//! What an election reports while it runs, as structured values: every `tracing` event the elector
//! writes is also handed, as an [`Event`], to the observer of
//! [`ElectorBuilder::with_observer`](crate::ElectorBuilder::with_observer), so that a binding (the
//! Node.js addon) or an application can route it to its own logger, count it, or judge health from it,
//! without a `tracing` subscriber. With the cargo feature `metrics` the same events also feed the
//! [`metrics`](https://docs.rs/metrics) facade (see [`crate::metrics_names`]).

use std::sync::Arc;
use std::time::Duration;

pub use tracing::Level;

/// What happened. The list may grow (`#[non_exhaustive]`): match the kinds you need and ignore the rest.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The campaign started (debug).
    Started,
    /// This node became leader (info; `term`).
    Elected,
    /// This node's lease was renewed (debug; `term`, `latency`).
    Renewed,
    /// A renewal failed; it is retried while the local deadline allows (warn; `term`, `error`,
    /// `latency`, `retry_in`).
    RenewalFailed,
    /// A renewal matched no row: the lease expired or was taken over (debug; `term`, `latency`). It
    /// follows the [`SteppedDown`](Self::SteppedDown) warning that gives this reason.
    LeaseLost,
    /// This node stopped leading (warn, or info for a release or shutdown; `term`, `reason`).
    SteppedDown,
    /// This node deleted its lease (info; `term`).
    Released,
    /// Deleting the lease at release or shutdown failed; it expires by itself (warn; `error`).
    ReleaseFailed,
    /// Another leader, or a new term, was observed (info; `leader_id`, `term`).
    ObservedLeader,
    /// Reading the lease failed (warn; `error`, `retry_in`).
    ReadFailed,
    /// An acquisition failed (warn; `error`, `retry_in`).
    AcquireFailed,
    /// Another candidate was acquiring at the same moment (debug).
    Contended,
    /// The database server changed under the election (a failover: a new WAL timeline or system
    /// identifier): this candidate does not acquire until one lease after it first saw the change
    /// (warn; `reason`, `retry_in`). See
    /// [`ElectorBuilder::with_failover_quarantine`](crate::ElectorBuilder::with_failover_quarantine).
    ServerChanged,
    /// A lease in this node's instance id is held by another process (warn; `term`).
    DuplicateInstanceId,
    /// The liveness check failed while leading: the lease is given up (warn; `term`).
    LivenessFailed,
    /// Leader work still ran one lease after its cancellation; released anyway (warn).
    WorkOverran,
    /// Long-expired leases were deleted (debug; `rows`).
    Cleaned,
    /// The cleanup failed; tried again next interval (debug; `error`).
    CleanupFailed,
    /// The `LISTEN` connection for release notifications could not be opened, or stopped delivering;
    /// candidates poll until it works (warn; `error` or `reason`). Reported to every election of the hub.
    ListenFailed,
    /// The `LISTEN` connection works (again) (debug). Reported to every election of the hub.
    Listening,
    /// The fleet's plan gives this election's name to another live member: the leader drains its work
    /// and releases, for that member to take it (info; `leader_id`: the planned owner, `term`).
    HandingOver,
    /// A name the plan gives to another member has had no leader for one lease: this member takes it
    /// (info; `leader_id`: the planned owner).
    TakingOver,
    /// The elector stopped (info).
    Stopped,
}

impl EventKind {
    /// A stable snake-case name (`renewal_failed`, `stepped_down`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Elected => "elected",
            Self::Renewed => "renewed",
            Self::RenewalFailed => "renewal_failed",
            Self::LeaseLost => "lease_lost",
            Self::SteppedDown => "stepped_down",
            Self::Released => "released",
            Self::ReleaseFailed => "release_failed",
            Self::ObservedLeader => "observed_leader",
            Self::ReadFailed => "read_failed",
            Self::AcquireFailed => "acquire_failed",
            Self::Contended => "contended",
            Self::ServerChanged => "server_changed",
            Self::DuplicateInstanceId => "duplicate_instance_id",
            Self::LivenessFailed => "liveness_failed",
            Self::WorkOverran => "work_overran",
            Self::Cleaned => "cleaned",
            Self::CleanupFailed => "cleanup_failed",
            Self::ListenFailed => "listen_failed",
            Self::Listening => "listening",
            Self::HandingOver => "handing_over",
            Self::TakingOver => "taking_over",
            Self::Stopped => "stopped",
        }
    }

    /// For a failed operation of the election on its store, which one: `renew`, `acquire`, `read`,
    /// `release` or `cleanup` (the `operation` label of the store errors metric). `ListenFailed`, an event
    /// of the hub's shared connection, is not counted here.
    pub fn failed_operation(self) -> Option<&'static str> {
        match self {
            Self::RenewalFailed => Some("renew"),
            Self::AcquireFailed => Some("acquire"),
            Self::ReadFailed => Some("read"),
            Self::ReleaseFailed => Some("release"),
            Self::CleanupFailed => Some("cleanup"),
            _ => None,
        }
    }
}

/// One report of an election: a line of its log, with the fields as values. The lock id and instance id
/// are those of the election whose observer receives it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// Its severity (the level of the `tracing` event written with it).
    pub level: Level,
    /// The log message, without the fields (`renewal failed; retrying`).
    pub message: &'static str,
    /// The fencing term concerned (this node's while leading, the observed leader's otherwise).
    pub term: Option<u64>,
    /// Why this node stepped down (`SteppedDown`), or why the `LISTEN` connection is not trusted.
    pub reason: Option<String>,
    /// The error of a failed operation, as text.
    pub error: Option<String>,
    /// The error's stable code (`ERR_DATABASE_UNREACHABLE`, ...), with `error`.
    pub error_code: Option<&'static str>,
    /// The leader observed (`ObservedLeader`).
    pub leader_id: Option<String>,
    /// How long the store operation took, from the moment it was sent (queued, when batched).
    pub latency: Option<Duration>,
    /// When a failed operation is tried again.
    pub retry_in: Option<Duration>,
    /// Rows deleted by a cleanup.
    pub rows: Option<u64>,
}

impl Event {
    /// An event with no fields set.
    pub fn new(kind: EventKind, level: Level, message: &'static str) -> Self {
        Self {
            kind,
            level,
            message,
            term: None,
            reason: None,
            error: None,
            error_code: None,
            leader_id: None,
            latency: None,
            retry_in: None,
            rows: None,
        }
    }
    pub(crate) fn term(mut self, term: u64) -> Self {
        self.term = Some(term);
        self
    }
    pub(crate) fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
    pub(crate) fn error(mut self, e: &crate::Error) -> Self {
        self.error = Some(e.to_string());
        self.error_code = Some(e.code());
        self
    }
    pub(crate) fn error_text(mut self, e: impl std::fmt::Display) -> Self {
        self.error = Some(e.to_string());
        self
    }
    pub(crate) fn leader(mut self, id: &str) -> Self {
        self.leader_id = Some(id.to_owned());
        self
    }
    pub(crate) fn latency(mut self, d: Duration) -> Self {
        self.latency = Some(d);
        self
    }
    pub(crate) fn retry_in(mut self, d: Duration) -> Self {
        self.retry_in = Some(d);
        self
    }
    pub(crate) fn rows(mut self, n: u64) -> Self {
        self.rows = Some(n);
        self
    }

    /// Writes this event with `tracing`, in the current span (the election's `leaderlease` span carries
    /// `lock_id` and `candidate`).
    pub(crate) fn trace(&self) {
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    kind = self.kind.as_str(),
                    term = self.term,
                    reason = self.reason.as_deref(),
                    error = self.error.as_deref(),
                    leader = self.leader_id.as_deref(),
                    latency = self.latency.map(|d| tracing::field::debug(d)),
                    retry_in = self.retry_in.map(|d| tracing::field::debug(d)),
                    rows = self.rows,
                    "{}",
                    self.message
                )
            };
        }
        if self.level == Level::ERROR {
            emit!(Level::ERROR)
        } else if self.level == Level::WARN {
            emit!(Level::WARN)
        } else if self.level == Level::INFO {
            emit!(Level::INFO)
        } else if self.level == Level::DEBUG {
            emit!(Level::DEBUG)
        } else {
            emit!(Level::TRACE)
        }
    }
}

/// Receives every [`Event`] of an election, on the election's task: it must return quickly and must
/// not block (hand the event to a channel or a logger). A panic in it is caught and ignored.
pub type EventObserver = Arc<dyn Fn(&Event) + Send + Sync>;

/// Hands `event` to `observer`, catching a panic so that it cannot end the election's task.
pub(crate) fn deliver(observer: &EventObserver, event: &Event) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| observer(event)));
}
