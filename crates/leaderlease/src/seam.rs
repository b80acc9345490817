//! The seam between the election logic and the world it runs in: the monotonic clock and the jitter's
//! randomness. In a normal build these are `std::time::Instant::now()` and `rand::random()`, inlined.
//! With the test-only cargo feature `sim`, the clock is Tokio's (which the simulator pauses and
//! advances: virtual time) and the randomness comes from a per-thread generator the simulator seeds,
//! so that the same seed replays the same run; planted defects ("mutants", see [`Mutant`]) can be
//! switched on per thread.

use std::time::Instant;

/// The local monotonic clock of the election logic.
#[cfg(not(feature = "sim"))]
#[inline(always)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// The local monotonic clock of the election logic: Tokio's clock, which follows the virtual time of a
/// paused runtime (outside a runtime, or in one that is not paused, it is the system's monotonic clock).
#[cfg(feature = "sim")]
#[inline]
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A uniform sample of [0, 1) for the jitter.
#[cfg(not(feature = "sim"))]
#[inline]
pub(crate) fn unit_random() -> f64 {
    rand::random::<f64>()
}

/// A uniform sample of [0, 1) for the jitter: from the thread's seeded generator while the simulator has
/// set one ([`sim_hooks::seed`]), else from `rand`.
#[cfg(feature = "sim")]
pub(crate) fn unit_random() -> f64 {
    sim_hooks::next_unit().unwrap_or_else(rand::random::<f64>)
}

/// Whether the planted defect `m` is switched on (always false without the feature `sim`).
#[cfg(not(feature = "sim"))]
#[inline(always)]
pub(crate) fn mutant(_m: Mutant) -> bool {
    false
}

/// Whether the planted defect `m` is switched on for this thread.
#[cfg(feature = "sim")]
#[inline]
pub(crate) fn mutant(m: Mutant) -> bool {
    sim_hooks::active_mutant() == Some(m)
}

/// Planted defects in the election logic, for proving that the simulator finds what it should. Each is
/// compiled in only with the feature `sim` and switched on per thread by the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "sim"), allow(dead_code))]
pub enum Mutant {
    /// The local deadline is `send time + lease` (no safety margin for clock drift).
    NoSafetyMargin,
    /// The local deadline counts from when the answer arrived, not from when the request was sent.
    DeadlineFromReply,
    /// After an acquisition whose reply was lost, a lease found in this node's name is adopted as held,
    /// counted from the moment it was read.
    AdoptLostAcquire,
    /// The liveness check is not consulted before a renewal.
    SkipStallCheck,
    /// On release, the lease is deleted first and the step-down comes after the store's answer.
    ReleaseBeforeStepDown,
    /// A renewal that failed with an error (no answer) is taken as confirmed.
    ErrorAsRenewed,
}

/// The simulator's handles on the seam (feature `sim` only).
#[cfg(feature = "sim")]
pub mod sim_hooks {
    use std::cell::Cell;

    use super::Mutant;

    thread_local! {
        static RNG: Cell<Option<u64>> = const { Cell::new(None) };
        static MUTANT: Cell<Option<Mutant>> = const { Cell::new(None) };
    }

    /// Seeds this thread's jitter generator (`None`: back to `rand`).
    pub fn seed(seed: Option<u64>) {
        RNG.with(|r| r.set(seed.map(|s| s ^ 0x9E37_79B9_7F4A_7C15)));
    }

    /// Switches a planted defect on for this thread (`None`: the real code).
    pub fn set_mutant(m: Option<Mutant>) {
        MUTANT.with(|c| c.set(m));
    }

    pub(crate) fn active_mutant() -> Option<Mutant> {
        MUTANT.with(Cell::get)
    }

    /// One step of splitmix64: advances `state` and returns the next 64 random bits. The one generator
    /// of the simulator (the jitter here, the fault draws of `sim`, the model test's statements).
    pub fn splitmix64(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// splitmix64, in [0, 1) with 53 bits.
    pub(crate) fn next_unit() -> Option<f64> {
        RNG.with(|r| {
            let mut s = r.get()?;
            let z = splitmix64(&mut s);
            r.set(Some(s));
            Some((z >> 11) as f64 / (1u64 << 53) as f64)
        })
    }

    /// Initialises the process-wide base of the lease clock with the real monotonic clock. The
    /// simulator calls it before it builds a paused runtime, whose virtual instants start at the real
    /// clock of that moment and so never fall before the base.
    pub fn init_clock_base() {
        crate::clock::init_base();
    }
}
