//! The storage behind an election. The election logic (local deadline, jittered renewal, wake-up at
//! expiry, release, run-while-leader, status stream) lives in [`crate::Elector`] and is written once;
//! a backend only stores the lease. [`crate::PgBackend`] is the PostgreSQL one.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::Result;

/// How long the first connection at start may take, on any backend (the operation timeout applies if it
/// is longer).
pub const START_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A boxed, sendable future (keeps [`Backend`] usable as a trait object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A lease as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLease {
    /// `leader_id` of the holder.
    pub leader_id: String,
    /// The holder's fencing term.
    pub term: u64,
    /// Time left until the lease expires, by the store's clock; `None` once it has expired.
    pub expires_in: Option<Duration>,
}

/// Result of one acquisition attempt. Losing is an outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// This candidate now holds the lease with a new term.
    Acquired {
        /// The new fencing term, greater than any earlier term of this lock id.
        term: u64,
    },
    /// Someone else holds a live lease (when it could be read), or another candidate was acquiring at the
    /// same moment.
    NotAcquired {
        /// The lease that stands, if it was read.
        current: Option<ObservedLease>,
    },
    /// Not tried: the store's server changed less than one lease ago (a failover), and a lease the old
    /// server acknowledged may have been lost with it while its holder still acts on it (see
    /// [`ElectorBuilder::with_failover_quarantine`](crate::ElectorBuilder::with_failover_quarantine)).
    Deferred {
        /// How long until the candidate may acquire.
        retry_in: Duration,
        /// What changed, for the log.
        reason: String,
    },
}

/// Storage of one election's lease (one lock id). Every method must return within the operation timeout
/// it was built with, and must judge expiry by the store's own clock. Implementations are used from one
/// task at a time per election.
pub trait Backend: Send + Sync + 'static {
    /// Makes sure the storage exists (creating or upgrading it when allowed), or says what is missing.
    fn prepare(&self) -> BoxFuture<'_, Result<()>>;
    /// Reads the current lease, live or expired; `None` when there is none.
    fn observe(&self) -> BoxFuture<'_, Result<Option<ObservedLease>>>;
    /// Takes the lease if it is free or expired, in one atomic step, with a new term.
    fn try_acquire(&self) -> BoxFuture<'_, Result<AcquireOutcome>>;
    /// Extends this candidate's lease of `term` if it still holds it unexpired; `false` means it is lost.
    fn renew(&self, term: u64) -> BoxFuture<'_, Result<bool>>;
    /// Ends this candidate's lease of `term` (only that one); `false` when it was not held any more.
    fn release(&self, term: u64) -> BoxFuture<'_, Result<bool>>;
    /// Deletes long-expired leases; returns how many. Never touches a live lease.
    fn cleanup(&self) -> BoxFuture<'_, Result<u64>>;
    /// Resolves when the store reports that the lease was released (deleted), so that followers try at
    /// once instead of at their next poll. A notification that arrives while nobody waits is kept for the
    /// next call. The default never resolves (followers then rely on polling).
    fn released(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
    /// True while [`released`](Self::released) is known to work (e.g. the PostgreSQL backend's `LISTEN`
    /// connection is up): followers then sleep until the observed lease's expiry instead of polling at
    /// the renewal interval. The default is `false`.
    fn wakes_on_release(&self) -> bool {
        false
    }
    /// Frees connections the backend owns. Called once, when the elector stops.
    fn close(&self) -> BoxFuture<'_, ()>;
}
