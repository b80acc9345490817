//! Fleets: the processes of an application announce themselves as members of a store (a row of the
//! member table next to the lease table on PostgreSQL, a key under `member.` in the bucket on NATS),
//! each with a lease of its own, so that every member sees the same list of live members and can plan
//! from it which names each one campaigns for.
//!
//! - [`Membership`]: this process's membership: joined with [`PgHub::join_fleet`](crate::PgHub::join_fleet)
//!   or [`Membership::join_nats`], renewed in the background, left with [`Membership::leave`]. It holds
//!   the live member list ([`Membership::members`], [`Membership::subscribe`]).
//! - [`MemberConfig`]: the member's id, its optional `version`, its lease and renewal interval.
//! - [`Fleet`]: this process's named elections planned over the live members: each campaigns only for
//!   the names the plan gives its member, and a leader hands a name over when the plan moves it.
//! - [`assign`]: the plan, a pure function of the names and the live members (rendezvous hashing with
//!   bounded load, newest version preferred).
//!
//! Membership decides nothing about leadership: a member that has dropped out of the list (stopped
//! renewing for one member lease, by the store's clock) may still hold leases until they expire, and a
//! plan made from a stale list only makes a member campaign in vain; the lease rows still decide.

pub mod assign;
mod config;
mod membership;
#[cfg(feature = "nats")]
mod nats;
mod plan;

pub use config::{
    DEFAULT_MEMBER_LEASE, DEFAULT_MEMBER_RENEWAL, MAX_VERSION_LEN, MemberBuilder, MemberConfig,
};
pub use membership::{MemberInfo, Membership};
pub(crate) use membership::{MemberStore, MemberView};
#[cfg(feature = "nats")]
pub use nats::MEMBER_KEY_PREFIX;
pub(crate) use plan::Seat;
pub use plan::{Fleet, Placement};
