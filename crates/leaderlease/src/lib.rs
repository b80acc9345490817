//! # leaderlease
//!
//! Lease-based leader election on PostgreSQL for singleton work: cron jobs, migrations, one-per-cluster
//! workers. One row per election (lock id) in a `leader_lease` table; the database clock decides expiry,
//! the local monotonic clock decides how long this node may act.
//!
//! What it promises:
//! - **Never two leaders.** [`Elector::is_leader`] is true only before `send time + lease duration -
//!   safety margin` of this node's last *confirmed* acquire or renew, measured with the monotonic clock
//!   from when the request was sent. A paused, stalled or partitioned leader therefore stops saying it
//!   leads before the database lets anyone else in. Expiry in the database is judged by the database
//!   clock only.
//! - **A fencing token.** Each leadership gets a term, the largest of the database clock in microseconds,
//!   a sequence and its row's previous term + 1: it only grows for a lock id, even after the row is
//!   deleted, the table and sequence are dropped and created again, or the sequence is set back.
//!   [`Elector::term`] returns it while leading.
//! - **Bounded failover.** Followers wake just after the lease they saw is due to expire and take an
//!   expired lease over directly (no cleanup needed). A release is announced with `NOTIFY` and waiting
//!   candidates (one `LISTEN` connection per [`PgHub`]) try at once; without `LISTEN` they poll.
//! - **Many elections, one process.** Elections on one [`PgHub`] share its pool and batch their
//!   renewals and lease reads, so the database load stays nearly flat as they grow.
//! - **Errors are not loss.** A failed renewal is retried quickly; leadership is kept until the local
//!   deadline and no longer. A database outage means "not leader", then recovery.
//! - **A stalled worker can let go.** With
//!   [`ElectorBuilder::with_liveness_check`](crate::ElectorBuilder::with_liveness_check), renewals and
//!   acquisitions are tied to a check of the application's own (typically the age of a heartbeat that
//!   its work loop stores in an atomic): a leader whose check fails deletes its lease so that another
//!   node takes over at once, and campaigns again once the check passes. Without it, the elector renews
//!   as long as its Tokio runtime runs.
//!
//! Its limits: the local deadline assumes the monotonic clock runs at about the database's rate (the
//! safety margin covers drift and scheduling) and stops counting while the whole machine is suspended, so
//! suspend-to-RAM of a leader's host is not covered. Work that must never overlap should also pass
//! [`Elector::term`] to the resource it changes (fencing).
//!
//! ```no_run
//! use std::time::Duration;
//! use leaderlease::Elector;
//!
//! #[tokio::main]
//! async fn main() -> leaderlease::Result<()> {
//!     let elector = Elector::builder()
//!         .with_lock_id(42)
//!         .with_lease_duration(Duration::from_secs(3))
//!         .with_renewal_interval(Duration::from_secs(1))
//!         .with_jitter_range(Duration::from_millis(500))
//!         .connect("postgres://postgres@127.0.0.1:5432/test")
//!         .await?;
//!
//!     // Runs the closure whenever this node leads; the token is cancelled when leadership ends.
//!     let run = elector.run_while_leader(|token| async move {
//!         while !token.is_cancelled() {
//!             tokio::select! {
//!                 _ = token.cancelled() => {}
//!                 _ = tokio::time::sleep(Duration::from_millis(500)) => { /* singleton work */ }
//!             }
//!         }
//!         Ok::<_, std::io::Error>(())
//!     });
//!     tokio::select! {
//!         _ = run => {}
//!         _ = tokio::signal::ctrl_c() => {}
//!     }
//!     elector.shutdown().await
//! }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The crate README's example is compiled as a doctest too.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod backend;
mod campaign;
mod clock;
mod config;
mod elector;
mod error;
pub mod events;
mod fence;
pub mod fleet;
pub mod leases;
pub mod metrics_names;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "noleader")]
pub mod noleader;
mod postgres;
pub mod schema;
mod seam;
#[cfg(feature = "sim")]
#[doc(hidden)]
pub mod sim;
mod state;

pub use backend::{AcquireOutcome, Backend, ObservedLease, START_CONNECT_TIMEOUT};
pub use campaign::{ERROR_RETRY_DELAY, EXPIRY_WAKE_MARGIN, LIVENESS_RECHECK_INTERVAL};
pub use config::*;
pub use elector::{Elector, LivenessCheck};
pub use error::{BoxError, Error, Result};
pub use events::{Event, EventKind, EventObserver};
pub use fence::{FENCE_SQLSTATE, fence};
#[cfg(feature = "nats")]
pub use nats::NatsBackend;
pub use postgres::{
    BatchStats, LISTEN_PROBE_INTERVAL, MAX_BATCH_WINDOW, MEMBER_TABLE, OWNED_POOL_MAX_CONNECTIONS,
    PgBackend, PgHub, PgSettings, Pooler, RELEASE_CHANNEL, TlsSettings, list_members,
};
#[cfg(feature = "sim")]
#[doc(hidden)]
pub use seam::{Mutant, sim_hooks};
pub use sqlx::PgPool;
pub use sqlx::postgres::{PgConnectOptions, PgSslMode};
pub use state::{LeaderInfo, Lease, Snapshot, Status, StoreHealth};
pub use tokio_util::sync::CancellationToken;

/// Locks `m`, taking the data as it is when a thread panicked while holding the lock (poisoning is
/// ignored).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
