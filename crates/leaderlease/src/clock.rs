//! The local lease deadline: two atomics read without locks or allocation by `is_leader()`, and a
//! step-down counter that changes before `is_leader()` turns false.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::seam::now;

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(now)
}

/// Sets the base now if it is not set yet (the simulator, before it builds a paused runtime).
#[cfg(feature = "sim")]
pub(crate) fn init_base() {
    base();
}

/// Nanoseconds of the monotonic clock since a process-wide base, plus one, so that 0 can mean "none".
fn ticks(at: Instant) -> u64 {
    let nanos = at.saturating_duration_since(base()).as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
}

/// The term this node holds and the monotonic instant until which it may act on it.
#[derive(Debug)]
pub(crate) struct LeaseClock {
    deadline: AtomicU64,
    term: AtomicU64,
    /// Bumped by every [`clear`](Self::clear), before the deadline is cleared: whoever sees the clock
    /// cleared also sees the new generation. Shared (an `Arc`) so that a binding can read it directly.
    generation: Arc<AtomicU32>,
}

impl LeaseClock {
    pub(crate) fn new() -> Self {
        base();
        Self {
            deadline: AtomicU64::new(0),
            term: AtomicU64::new(0),
            generation: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Starts or extends leadership of `term` until `deadline`.
    pub(crate) fn set(&self, term: u64, deadline: Instant) {
        self.term.store(term, Ordering::Release);
        self.deadline.store(ticks(deadline), Ordering::Release);
    }

    /// Ends leadership now: bumps the generation, then clears the deadline.
    pub(crate) fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.deadline.store(0, Ordering::SeqCst);
    }

    /// The number of [`clear`](Self::clear)s so far (wrapping).
    pub(crate) fn generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The generation counter itself, for readers that cannot call [`generation`](Self::generation).
    pub(crate) fn generation_cell(&self) -> Arc<AtomicU32> {
        self.generation.clone()
    }

    /// True while a deadline is set and has not passed.
    #[inline]
    pub(crate) fn is_valid(&self) -> bool {
        let d = self.deadline.load(Ordering::Acquire);
        d != 0 && ticks(now()) < d
    }

    /// The held term while valid. The deadline is read on both sides of the term so that a term from
    /// another leadership is never paired with this one's deadline.
    pub(crate) fn term(&self) -> Option<u64> {
        loop {
            let before = self.deadline.load(Ordering::Acquire);
            let term = self.term.load(Ordering::Acquire);
            let after = self.deadline.load(Ordering::Acquire);
            if before != after {
                continue;
            }
            return (after != 0 && ticks(now()) < after).then_some(term);
        }
    }

    /// Time left before the deadline, while valid.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        let d = self.deadline.load(Ordering::Acquire);
        let now = ticks(now());
        (d != 0 && now < d).then(|| Duration::from_nanos(d - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_only_before_the_deadline() {
        let c = LeaseClock::new();
        assert!(!c.is_valid());
        c.set(7, Instant::now() + Duration::from_secs(60));
        assert!(c.is_valid());
        assert_eq!(c.term(), Some(7));
        c.set(7, Instant::now() - Duration::from_millis(1));
        assert!(!c.is_valid());
        assert_eq!(c.term(), None);
        c.set(8, Instant::now() + Duration::from_secs(60));
        let generation = c.generation();
        c.clear();
        assert!(!c.is_valid());
        assert_eq!(c.generation(), generation.wrapping_add(1));
        assert_eq!(c.remaining(), None);
    }
}
