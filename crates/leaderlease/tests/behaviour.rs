//! One behavioural suite, run against every backend: PostgreSQL always, NATS JetStream KV with the
//! `nats` feature, in both of its expiry modes (a bucket with per-key TTL, as new buckets are made, and
//! one whose `max_age` is the lease, as older buckets are). Each test isolates itself (a schema, or a
//! bucket, of its own).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use leaderlease::{Elector, ElectorBuilder};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Postgres,
    /// A bucket made by the backend: per-key TTL with limit markers (NATS 2.11+).
    #[cfg(feature = "nats")]
    Nats,
    /// A bucket without per-message TTL whose `max_age` is the lease (as on NATS 2.10).
    #[cfg(feature = "nats")]
    NatsMaxAge,
}

/// The lease of every test in this suite.
const LEASE: Duration = Duration::from_millis(1500);

/// Where one test's electors keep their lease.
struct Env {
    kind: Kind,
    schema: TestSchema,
    /// The bucket of the NATS kinds.
    #[cfg(feature = "nats")]
    bucket: Option<Bucket>,
}

impl Env {
    async fn new(kind: Kind, name: &str) -> Self {
        let env = Self {
            kind,
            schema: TestSchema::new(name).await,
            #[cfg(feature = "nats")]
            bucket: matches!(kind, Kind::Nats | Kind::NatsMaxAge)
                .then(|| Bucket::new(&format!("ll_{name}"))),
        };
        #[cfg(feature = "nats")]
        if let Kind::NatsMaxAge = kind {
            let client = async_nats::connect(nats_url()).await.unwrap();
            async_nats::jetstream::new(client)
                .create_key_value(async_nats::jetstream::kv::Config {
                    bucket: env.bucket().to_owned(),
                    history: 1,
                    max_age: LEASE,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        env
    }

    fn builder(&self) -> ElectorBuilder {
        self.schema.builder()
    }

    /// The name of the bucket (NATS kinds only).
    #[cfg(feature = "nats")]
    fn bucket(&self) -> &str {
        &self.bucket.as_ref().expect("a bucket of a NATS kind").name
    }

    async fn start(&self, builder: ElectorBuilder) -> Elector {
        match self.kind {
            Kind::Postgres => builder.connect(&database_url()).await.unwrap(),
            #[cfg(feature = "nats")]
            Kind::Nats | Kind::NatsMaxAge => builder
                .connect_nats(&nats_url(), self.bucket())
                .await
                .unwrap(),
        }
    }

    /// Writes the lease of a node that will never renew it ("dead-node"), as a crashed leader leaves it;
    /// returns its term.
    async fn plant_dead_lease(&self) -> u64 {
        let lease = LEASE;
        match self.kind {
            Kind::Postgres => {
                let s = &self.schema;
                s.exec(leaderlease::schema::up_sql(&s.name)).await;
                let term: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {} (id, leader_id, expires_at, term) \
                     VALUES (1, 'dead-node', clock_timestamp() + $2 * interval '1 millisecond', \
                             nextval($1::regclass)) RETURNING term",
                    s.table()
                )))
                .bind(s.sequence())
                .bind(lease.as_millis() as f64)
                .fetch_one(&s.pool)
                .await
                .unwrap();
                term as u64
            }
            #[cfg(feature = "nats")]
            Kind::Nats | Kind::NatsMaxAge => {
                use leaderlease::nats::{Expiry, NatsBackend};
                let client = async_nats::connect(nats_url()).await.unwrap();
                let js = async_nats::jetstream::new(client);
                let (store, expiry) = NatsBackend::open_bucket(&js, self.bucket(), lease)
                    .await
                    .unwrap();
                match (self.kind, expiry) {
                    // As the backend writes it: the lease rounded up to a second.
                    (Kind::Nats, Expiry::KeyTtl { ttl, markers: true }) => store
                        .create_with_ttl("lock-1", "0 dead-node".into(), ttl)
                        .await
                        .unwrap(),
                    (Kind::NatsMaxAge, Expiry::BucketMaxAge) => {
                        store.create("lock-1", "0 dead-node".into()).await.unwrap()
                    }
                    other => panic!("unexpected bucket mode {other:?}"),
                }
            }
        }
    }

    async fn candidates(&self, n: usize) -> Vec<Elector> {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(
                self.start(self.builder().with_instance_id(format!("node-{i}")))
                    .await,
            );
        }
        out
    }
}

async fn one_leader_among_several(kind: Kind) {
    let env = Env::new(kind, "b_one").await;
    let electors = env.candidates(5).await;
    let leader = wait_for_leader(&electors, Duration::from_secs(5)).await;
    assert_never_two_leaders(&electors, Duration::from_secs(3)).await;
    assert!(
        electors[leader].is_leader(),
        "the leader kept its lease through its renewals"
    );
    let term = electors[leader].term().unwrap();
    wait_until(
        Duration::from_secs(3),
        "followers to see the leader",
        || {
            electors.iter().all(|e| {
                e.leader()
                    .is_some_and(|l| l.term == term && l.leader_id == format!("node-{leader}"))
            })
        },
    )
    .await;
    for e in &electors {
        e.shutdown().await.unwrap();
    }
}

async fn takeover_after_the_leader_stops_renewing(kind: Kind) {
    let env = Env::new(kind, "b_crash").await;
    // A leader that stopped renewing (crashed) leaves its lease behind: it lives one lease (1.5 s).
    let planted = Instant::now();
    let dead_term = env.plant_dead_lease().await;
    let e = env.start(env.builder().with_instance_id("survivor")).await;
    wait_until(
        Duration::from_secs(3),
        "the dead lease to be observed",
        || e.leader().is_some(),
    )
    .await;
    assert_eq!(e.leader().unwrap().leader_id, "dead-node");
    let took = wait_until(Duration::from_secs(5), "takeover", || e.is_leader()).await;
    let since_plant = planted.elapsed();
    assert!(
        since_plant >= Duration::from_millis(1400),
        "took the lease {since_plant:?} after it was written"
    );
    assert!(
        since_plant < Duration::from_millis(1500 + 1000),
        "takeover {since_plant:?} after the write"
    );
    assert!(
        e.term().unwrap() > dead_term,
        "a new leadership gets a larger term"
    );
    let _ = took;
    e.shutdown().await.unwrap();
}

async fn release_hands_over_and_the_node_stays_a_candidate(kind: Kind) {
    let env = Env::new(kind, "b_release").await;
    let a = env.start(env.builder().with_instance_id("a")).await;
    wait_until(Duration::from_secs(5), "a to lead", || a.is_leader()).await;
    let b = env.start(env.builder().with_instance_id("b")).await;
    wait_until(Duration::from_secs(3), "b to see a", || {
        b.leader().is_some()
    })
    .await;
    let term_a = a.term().unwrap();

    let released = Instant::now();
    a.release().await.unwrap();
    assert!(!a.is_leader(), "release steps down at once");
    let took = wait_until(Duration::from_secs(3), "b to take over", || {
        assert!(!(a.is_leader() && b.is_leader()), "two leaders");
        b.is_leader()
    })
    .await;
    let _ = released;
    // Within one follower poll (400 ± 100 ms) at most; at once where the store notifies releases.
    assert!(took < Duration::from_millis(1200), "handover took {took:?}");
    let term_b = b.term().unwrap();
    assert!(term_b > term_a, "term {term_b} after {term_a}");

    b.shutdown().await.unwrap();
    wait_until(Duration::from_secs(5), "a to lead again", || a.is_leader()).await;
    assert!(a.term().unwrap() > term_b);
    a.shutdown().await.unwrap();
}

async fn same_instance_id_never_gives_two_leaders(kind: Kind) {
    let env = Env::new(kind, "b_twin").await;
    let a = env.start(env.builder().with_instance_id("twin")).await;
    let b = env.start(env.builder().with_instance_id("twin")).await;
    wait_until(Duration::from_secs(5), "a leader", || {
        a.is_leader() || b.is_leader()
    })
    .await;
    assert_never_two_leaders(&[&a, &b], Duration::from_secs(2)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn leadership_moves_on_shutdown_with_growing_terms(kind: Kind) {
    let env = Env::new(kind, "b_terms").await;
    let electors = env.candidates(3).await;
    let mut alive: Vec<Elector> = electors;
    let mut last_term = 0;
    while !alive.is_empty() {
        let i = wait_for_leader(&alive, Duration::from_secs(5)).await;
        let term = alive[i].term().unwrap();
        assert!(term > last_term, "term {term} after {last_term}");
        last_term = term;
        let e = alive.remove(i);
        e.shutdown().await.unwrap();
        assert!(!e.is_leader());
    }
}

async fn work_token_is_cancelled_when_leadership_is_released(kind: Kind) {
    let env = Env::new(kind, "b_work").await;
    let e = Arc::new(env.start(env.builder()).await);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let runner = {
        let e = e.clone();
        tokio::spawn(async move {
            e.run_while_leader(|token| {
                let (tx, term) = (tx.clone(), e.term());
                async move {
                    tx.send(("started", term)).unwrap();
                    token.cancelled().await;
                    tx.send(("cancelled", term)).unwrap();
                    Ok::<_, std::convert::Infallible>(())
                }
            })
            .await
        })
    };
    let (what, term) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((what, term.is_some()), ("started", true));
    e.release().await.unwrap();
    assert_eq!(
        rx.try_recv().unwrap(),
        ("cancelled", term),
        "release returned after the work stopped"
    );
    e.shutdown().await.unwrap();
    runner.await.unwrap().unwrap();
}

/// True when the tests of `kind` must be skipped: NATS with no server to run them on (see
/// [`skip_nats`]).
fn skipped(kind: Kind) -> bool {
    match kind {
        Kind::Postgres => false,
        #[cfg(feature = "nats")]
        Kind::Nats | Kind::NatsMaxAge => skip_nats(),
    }
}

macro_rules! suite {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn one_leader_among_several() {
                if super::skipped($kind) {
                    return;
                }
                super::one_leader_among_several($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn takeover_after_the_leader_stops_renewing() {
                if super::skipped($kind) {
                    return;
                }
                super::takeover_after_the_leader_stops_renewing($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn release_hands_over_and_the_node_stays_a_candidate() {
                if super::skipped($kind) {
                    return;
                }
                super::release_hands_over_and_the_node_stays_a_candidate($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn same_instance_id_never_gives_two_leaders() {
                if super::skipped($kind) {
                    return;
                }
                super::same_instance_id_never_gives_two_leaders($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn leadership_moves_on_shutdown_with_growing_terms() {
                if super::skipped($kind) {
                    return;
                }
                super::leadership_moves_on_shutdown_with_growing_terms($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn work_token_is_cancelled_when_leadership_is_released() {
                if super::skipped($kind) {
                    return;
                }
                super::work_token_is_cancelled_when_leadership_is_released($kind).await
            }
        }
    };
}

suite!(postgres, Kind::Postgres);
#[cfg(feature = "nats")]
suite!(nats, Kind::Nats);
#[cfg(feature = "nats")]
suite!(nats_max_age, Kind::NatsMaxAge);
