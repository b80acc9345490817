//! Named elections spread by membership on a real PostgreSQL (issue 22): members, each a process of its
//! own (a hub), run the same 30 names; each campaigns only for the names the plan gives it. Asserted at
//! every sample (every few ms): never two leaders of a name; at steady state no name moves; a join moves
//! only the names the new member owns, a leave only the departed member's, each once, and the loads stay
//! within one name of each other.

mod common;

use std::time::{Duration, Instant};

use common::*;
use leaderlease::fleet::{Fleet, MemberConfig};
use leaderlease::{Elector, PgHub};

const NAMES: usize = 30;

struct Member {
    id: String,
    hub: PgHub,
    fleet: Fleet,
    electors: Vec<Elector>,
}

/// A member process: a hub, its membership, and the elections of all names (started concurrently, as a
/// process starting its jobs does).
async fn member(s: &TestSchema, id: &str) -> Member {
    let app = format!("{}_{id}", s.name);
    let hub = PgHub::connect(&url_with_app(&database_url(), &app), Duration::from_secs(2))
        .await
        .unwrap();
    let config = MemberConfig::builder()
        .with_id(id)
        .with_schema(s.name.clone())
        .with_lease_duration(Duration::from_millis(2000))
        .with_renewal_interval(Duration::from_millis(500))
        .build()
        .unwrap();
    let fleet = Fleet::new(hub.join_fleet(config).await.unwrap());
    let starts: Vec<_> = (0..NAMES)
        .map(|i| {
            let b = s
                .builder()
                .with_lock_id(i as i64)
                .with_instance_id(id)
                .with_fleet(&fleet, format!("job-{i}"));
            let hub = hub.clone();
            tokio::spawn(async move { b.start_with_hub(&hub).await })
        })
        .collect();
    let mut electors = Vec::new();
    for s in starts {
        electors.push(s.await.unwrap().unwrap());
    }
    Member {
        id: id.to_owned(),
        hub,
        fleet,
        electors,
    }
}

impl Member {
    /// Leaves the fleet first (the others replan at once), then stops the elections: each release is
    /// taken at once by the name's new owner.
    async fn stop(self) {
        self.fleet.leave().await;
        for e in &self.electors {
            e.shutdown().await.unwrap();
        }
        self.hub.close().await;
    }
}

/// What the samples saw, per name: the last leader, the moves (a leader other than the last one), the
/// longest time without a leader since tracking began.
struct Tracker {
    last: Vec<Option<String>>,
    moves: Vec<usize>,
    unled_since: Vec<Option<Instant>>,
    max_gap: Duration,
    gaps: Vec<Duration>,
}

impl Tracker {
    fn new() -> Self {
        Self {
            last: vec![None; NAMES],
            moves: vec![0; NAMES],
            unled_since: vec![None; NAMES],
            max_gap: Duration::ZERO,
            gaps: vec![Duration::ZERO; NAMES],
        }
    }

    /// Starts counting moves and gaps afresh (the leaders stay known).
    fn reset(&mut self) {
        self.moves = vec![0; NAMES];
        self.max_gap = Duration::ZERO;
        self.unled_since = vec![None; NAMES];
        self.gaps = vec![Duration::ZERO; NAMES];
    }

    fn sample(&mut self, members: &[&Member]) {
        let now = Instant::now();
        for i in 0..NAMES {
            let leaders: Vec<&str> = members
                .iter()
                .filter(|m| m.electors[i].is_leader())
                .map(|m| m.id.as_str())
                .collect();
            assert!(leaders.len() <= 1, "job-{i} has two leaders: {leaders:?}");
            match leaders.first() {
                Some(&id) => {
                    if let Some(since) = self.unled_since[i].take() {
                        self.max_gap = self.max_gap.max(now - since);
                        self.gaps[i] = self.gaps[i].max(now - since);
                    }
                    if let Some(last) = &self.last[i]
                        && last != id
                    {
                        self.moves[i] += 1;
                    }
                    self.last[i] = Some(id.to_owned());
                }
                None => {
                    self.unled_since[i].get_or_insert(now);
                }
            }
        }
    }

    /// Names led by each member, by id, counting only names with a leader now.
    fn loads(&self, members: &[&Member]) -> Vec<usize> {
        members
            .iter()
            .map(|m| m.electors.iter().filter(|e| e.is_leader()).count())
            .collect()
    }

    fn total_moves(&self) -> usize {
        self.moves.iter().sum()
    }

    /// Samples until every name has a leader and the loads differ by at most one, or panics after `limit`.
    async fn settle(&mut self, members: &[&Member], limit: Duration, what: &str) -> Duration {
        let start = Instant::now();
        loop {
            self.sample(members);
            let loads = self.loads(members);
            let led = loads.iter().sum::<usize>();
            let (max, min) = (loads.iter().max().unwrap(), loads.iter().min().unwrap());
            if led == NAMES && max - min <= 1 {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{what}: not settled after {limit:?}: loads {loads:?}, {led} of {NAMES} names led"
            );
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }

    /// Samples for `d`.
    async fn watch(&mut self, members: &[&Member], d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.sample(members);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_spread_by_membership_move_only_on_a_membership_change() {
    let s = TestSchema::new("fleet").await;
    let mut t = Tracker::new();
    let a = member(&s, "a").await;
    t.settle(&[&a], Duration::from_secs(10), "a alone").await;
    let b = member(&s, "b").await;
    t.settle(&[&a, &b], Duration::from_secs(10), "a and b")
        .await;
    let c = member(&s, "c").await;
    t.settle(&[&a, &b, &c], Duration::from_secs(10), "a, b and c")
        .await;
    let all = [&a, &b, &c];
    assert_eq!(t.loads(&all), [10, 10, 10]);
    note(&format!(
        "fleet: 30 names, members a, b, c started one after another: {} moves to settle",
        t.total_moves()
    ));

    // Steady state, several member and lease renewals (member 0.5 s, lease 0.4 s): nothing moves and
    // every name keeps its leader.
    t.reset();
    t.watch(&all, Duration::from_secs(4)).await;
    assert_eq!(
        t.total_moves(),
        0,
        "names moved at steady state: {:?}",
        t.moves
    );
    assert_eq!(
        t.max_gap,
        Duration::ZERO,
        "a name lost its leader at steady state"
    );

    // d joins: only the names the plan gives d move, each once, and each to d.
    t.reset();
    let before = t.last.clone();
    let d = member(&s, "d").await;
    let all = [&a, &b, &c, &d];
    let took = t.settle(&all, Duration::from_secs(10), "d joined").await;
    // A few more samples: a second move (or a move back) would show here.
    t.watch(&all, Duration::from_secs(2)).await;
    let loads = t.loads(&all);
    let moved: Vec<usize> = (0..NAMES).filter(|&i| t.moves[i] > 0).collect();
    assert!(
        t.moves.iter().all(|&m| m <= 1),
        "a name moved twice: {:?}",
        t.moves
    );
    assert!(
        moved.iter().all(|&i| t.last[i].as_deref() == Some("d")),
        "a join moved names to other members than the new one: {:?} -> {:?}",
        before,
        t.last
    );
    assert_eq!(moved.len(), loads[3], "only d's names moved");
    note(&format!(
        "fleet: d joined: gaps of the moved names {:?}",
        moved.iter().map(|&i| t.gaps[i]).collect::<Vec<_>>()
    ));
    note(&format!(
        "fleet: d joined: {} moves (optimum {}), balanced {loads:?} in {took:?}, longest leaderless gap \
         {:?}",
        moved.len(),
        loads[3],
        t.max_gap
    ));
    assert!(
        t.max_gap < Duration::from_millis(1500),
        "a planned move left a name without a leader for {:?} (at most one lease)",
        t.max_gap
    );

    // d leaves: only d's names move, to the three others, and the loads are 10 each again.
    t.reset();
    let of_d: Vec<usize> = (0..NAMES)
        .filter(|&i| t.last[i].as_deref() == Some("d"))
        .collect();
    // d's electors are sampled while it stops (each leads until its release).
    let started = Instant::now();
    let d = std::sync::Arc::new(d);
    let stopping = {
        let d = d.clone();
        tokio::spawn(async move {
            d.fleet.leave().await;
            for e in &d.electors {
                e.shutdown().await.unwrap();
            }
            d.hub.close().await;
        })
    };
    while !stopping.is_finished() {
        t.sample(&[&a, &b, &c, &d]);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    stopping.await.unwrap();
    let all = [&a, &b, &c];
    t.settle(&all, Duration::from_secs(10), "d left").await;
    let took = started.elapsed();
    t.watch(&all, Duration::from_secs(2)).await;
    let moved: Vec<usize> = (0..NAMES).filter(|&i| t.moves[i] > 0).collect();
    assert_eq!(
        moved, of_d,
        "a leave moved other names than the departed member's"
    );
    assert!(
        t.moves.iter().all(|&m| m <= 1),
        "a name moved twice: {:?}",
        t.moves
    );
    assert_eq!(t.loads(&all), [10, 10, 10]);
    note(&format!(
        "fleet: d left: {} moves, balanced in {took:?}, longest leaderless gap {:?}",
        moved.len(),
        t.max_gap
    ));
    assert!(
        t.max_gap < Duration::from_millis(1500),
        "a planned move left a name without a leader for {:?}",
        t.max_gap
    );
    for m in [a, b, c] {
        m.stop().await;
    }
}

/// Members that start together (within one member renewal interval, 0.5 s here; processes started at
/// once come up some 100 ms apart) see each other before any of them takes a name: each takes only its own
/// share, instead of the first one up taking them all and handing most of them over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_starting_together_take_only_their_own_names() {
    let s = TestSchema::new("fleet_together").await;
    let mut t = Tracker::new();
    let later = |ms: u64, id: &'static str| {
        let s = &s;
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            member(s, id).await
        }
    };
    let (a, b, c) = tokio::join!(later(0, "a"), later(150, "b"), later(300, "c"));
    let all = [&a, &b, &c];
    let took = t
        .settle(&all, Duration::from_secs(10), "a, b and c together")
        .await;
    t.watch(&all, Duration::from_secs(2)).await;
    note(&format!(
        "fleet: 30 names, a, b, c started 150 ms apart: {} moves, balanced {:?} in {took:?}",
        t.total_moves(),
        t.loads(&all)
    ));
    assert!(
        t.total_moves() <= 3,
        "members started together moved {} names: {:?}",
        t.total_moves(),
        t.moves
    );
    for m in [a, b, c] {
        m.stop().await;
    }
}
