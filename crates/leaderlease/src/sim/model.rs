//! The model store: the lease table's statements (acquire, renew, release with its notification,
//! observe, cleanup) as the SQL in `postgres/` and docs/design.md define them, judged by a server clock
//! of its own (offset and rate per server), with an asynchronous standby that a failover promotes.
//! Lock ids are keys of a `BTreeMap` (no hash order anywhere).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// The store's microseconds since 1970 at the simulation's start (about 2027): terms look like the
/// production ones (the acquisition's clock in microseconds).
const EPOCH_US: f64 = 1.8e15;

/// How long after expiry the cleanup deletes a row (as `cleanup` in `postgres/`).
const CLEANUP_AFTER_US: i64 = 5_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) leader: String,
    pub(crate) term: u64,
    /// `expires_at`, in the writing server's clock (microseconds since 1970).
    pub(crate) expires_us: i64,
}

/// One server's data: the lease rows and the term sequence.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    pub(crate) rows: BTreeMap<i32, Row>,
    pub(crate) seq: u64,
}

/// The outcome of one statement, as the backend returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Acquired(u64),
    /// Not acquired: the live row that stands.
    Held(Row, Duration),
    Renewed(bool),
    Released(bool),
    Observed(Option<(Row, Option<Duration>)>),
    Cleaned(u64),
    Identity(u64),
}

/// The server clock: `EPOCH_US + offset + elapsed * rate`.
#[derive(Debug, Clone)]
pub(crate) struct ServerClock {
    pub(crate) offset_us: f64,
    pub(crate) rate: f64,
}

/// The store: the primary that answers, and what its asynchronous standby has received.
pub(crate) struct Store {
    start: Instant,
    /// The primary's identity (system identifier and timeline in one number): a promotion changes it.
    pub(crate) identity: u64,
    pub(crate) clock: ServerClock,
    pub(crate) table: Table,
    /// The primary's table after each write, for the standby's lag: (commit instant, table).
    history: VecDeque<(Instant, Table)>,
    /// The oldest lag a failover may use.
    max_lag: Duration,
    /// No statement is served before this (an outage or a promotion in progress).
    pub(crate) down_until: Instant,
    /// Until then every answer takes up to one operation timeout longer (a store stalled by I/O or a
    /// checkpoint).
    pub(crate) slow_until: Instant,
    /// When the last failover promoted the standby.
    pub(crate) promoted_at: Option<Instant>,
    /// Model mutant: terms without the clock part.
    pub(crate) term_without_clock: bool,
}

impl Store {
    pub(crate) fn new(start: Instant, clock: ServerClock, max_lag: Duration) -> Self {
        Self {
            start,
            identity: 1,
            clock,
            table: Table::default(),
            history: VecDeque::new(),
            max_lag,
            down_until: start,
            slow_until: start,
            promoted_at: None,
            term_without_clock: false,
        }
    }

    /// The server's `clock_timestamp()` at `now`, in microseconds.
    pub(crate) fn clock_us(&self, now: Instant) -> i64 {
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64() * 1e6;
        (EPOCH_US + self.clock.offset_us + elapsed * self.clock.rate) as i64
    }

    /// The instant at which this server's clock shows `us` (for the checker's grants).
    pub(crate) fn instant_of(&self, now: Instant, us: i64) -> Instant {
        let ahead = (us - self.clock_us(now)) as f64 / self.clock.rate;
        if ahead <= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(ahead / 1e6)
        }
    }

    fn remaining(&self, row: &Row, t: i64) -> Option<Duration> {
        (row.expires_us > t).then(|| Duration::from_micros((row.expires_us - t) as u64))
    }

    fn wrote(&mut self, now: Instant) {
        self.history.push_back((now, self.table.clone()));
        // Keep one entry older than the longest lag, so that a failover finds the state it had then.
        while self.history.len() > 1
            && now.saturating_duration_since(self.history[1].0) > self.max_lag
        {
            self.history.pop_front();
        }
    }

    /// `INSERT .. ON CONFLICT DO UPDATE .. WHERE expired`, term = max(nextval, clock_us, row.term + 1).
    pub(crate) fn acquire(&mut self, now: Instant, lock: i32, me: &str, lease: Duration) -> Answer {
        let t = self.clock_us(now);
        let old = self.table.rows.get(&lock).cloned();
        if let Some(row) = &old
            && let Some(left) = self.remaining(row, t)
        {
            return Answer::Held(row.clone(), left);
        }
        let mut term = self.table.seq + 1;
        if !self.term_without_clock {
            term = term.max(t as u64);
        }
        if let Some(row) = &old {
            term = term.max(row.term + 1);
        }
        self.table.seq = term;
        self.table.rows.insert(
            lock,
            Row {
                leader: me.to_owned(),
                term,
                expires_us: t + lease.as_micros() as i64,
            },
        );
        self.wrote(now);
        Answer::Acquired(term)
    }

    /// `UPDATE .. SET expires_at = clock + lease WHERE id, leader_id, term AND expires_at > clock`.
    pub(crate) fn renew(
        &mut self,
        now: Instant,
        lock: i32,
        me: &str,
        term: u64,
        lease: Duration,
    ) -> Answer {
        let t = self.clock_us(now);
        let ok = match self.table.rows.get_mut(&lock) {
            Some(row) if row.leader == me && row.term == term && row.expires_us > t => {
                row.expires_us = t + lease.as_micros() as i64;
                true
            }
            _ => false,
        };
        if ok {
            self.wrote(now);
        }
        Answer::Renewed(ok)
    }

    /// `DELETE .. WHERE id, leader_id, term` (expired or not); the caller sends the notification when it
    /// deleted a row.
    pub(crate) fn release(&mut self, now: Instant, lock: i32, me: &str, term: u64) -> Answer {
        let ok = self
            .table
            .rows
            .get(&lock)
            .is_some_and(|row| row.leader == me && row.term == term);
        if ok {
            self.table.rows.remove(&lock);
            self.wrote(now);
        }
        Answer::Released(ok)
    }

    pub(crate) fn observe(&self, now: Instant, lock: i32) -> Answer {
        let t = self.clock_us(now);
        Answer::Observed(
            self.table
                .rows
                .get(&lock)
                .map(|row| (row.clone(), self.remaining(row, t))),
        )
    }

    /// `DELETE .. WHERE expires_at < clock - 5 s`.
    pub(crate) fn cleanup(&mut self, now: Instant) -> Answer {
        let t = self.clock_us(now);
        let before = self.table.rows.len();
        self.table
            .rows
            .retain(|_, row| row.expires_us >= t - CLEANUP_AFTER_US);
        let n = (before - self.table.rows.len()) as u64;
        if n > 0 {
            self.wrote(now);
        }
        Answer::Cleaned(n)
    }

    /// Promotes the standby: it has what the primary had `lag` ago (nothing lost with `lag` zero, a
    /// synchronous standby), a new identity, and a clock `clock_step_us` away from the old one's (and a
    /// rate of its own). Returns the number of rows that differ from the old primary's.
    pub(crate) fn fail_over(
        &mut self,
        now: Instant,
        lag: Duration,
        clock_step_us: f64,
        rate: f64,
    ) -> usize {
        let cut = now.checked_sub(lag).unwrap_or(self.start);
        let kept = self
            .history
            .iter()
            .rev()
            .find(|(at, _)| *at <= cut)
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        let lost = self
            .table
            .rows
            .iter()
            .filter(|(k, r)| kept.rows.get(k) != Some(r))
            .count();
        // The new server's clock continues from the old one's, stepped and at its own rate.
        let old_us = self.clock_us(now);
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64() * 1e6;
        self.clock.rate = rate;
        self.clock.offset_us = old_us as f64 + clock_step_us - EPOCH_US - elapsed * rate;
        self.table = kept;
        self.identity += 1;
        self.promoted_at = Some(now);
        self.history.clear();
        self.wrote(now);
        lost
    }
}
