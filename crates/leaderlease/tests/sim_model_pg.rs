//! Keeping the simulator's model store honest (feature `sim`): the same seeded sequence of lease
//! statements (acquire, renew with current and stale terms, release, observe, cleanup) from three
//! candidates runs on a real PostgreSQL lease table, through `PgBackend`, and on the model
//! (`leaderlease::sim::ModelLeases`), and every answer must agree. Operations are kept 60 ms away from
//! a lease's expiry (the two clocks are read a few milliseconds apart). Terms are compared by their
//! order: both must grow with every acquisition.

mod common;

use std::time::{Duration, Instant};

use leaderlease::backend::{AcquireOutcome, Backend};
use leaderlease::sim::ModelLeases;
use leaderlease::{Elector, PgBackend, PgPool, sim_hooks};

/// The simulator's generator (splitmix64), seeded.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        sim_hooks::splitmix64(&mut self.0) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_answers_as_postgresql_does() -> anyhow::Result<()> {
    let url = common::database_url();
    let pool = PgPool::connect(&url).await?;
    let schema = format!("sim_model_{}", std::process::id());
    let lock_id = 4242;
    let lease = Duration::from_millis(500);
    let names = ["m0", "m1", "m2"];
    let mut pg = Vec::new();
    for name in names {
        let config = Elector::builder()
            .with_schema(&schema)
            .with_lock_id(lock_id)
            .with_instance_id(name)
            .with_lease_duration(lease)
            .with_renewal_interval(Duration::from_millis(150))
            .with_jitter_range(Duration::ZERO)
            .build()?;
        let b = PgBackend::with_pool(pool.clone(), &config);
        b.prepare().await?;
        pg.push(b);
    }
    let start = Instant::now();
    let mut model = ModelLeases::new(start, lease, lock_id as i32);
    // Per candidate: the terms it was granted, as (model, PostgreSQL).
    let mut held: Vec<Vec<(u64, u64)>> = vec![Vec::new(); names.len()];
    let mut pairs: Vec<(u64, u64)> = Vec::new();
    let mut rng = Rng(20261207);
    let (mut compared, mut acquired, mut renewed, mut released) = (0, 0, 0, 0);
    for step in 0..240 {
        // Keep away from the expiry: the model reads the client's clock just before the statement,
        // PostgreSQL its own while running it.
        if let Some(left) = model.expires_in(Instant::now())
            && left.abs() < 0.06
        {
            tokio::time::sleep(Duration::from_secs_f64(left.max(0.0) + 0.07)).await;
        }
        let c = rng.below(3) as usize;
        let me = names[c];
        let op = rng.below(100);
        let at = Instant::now();
        let what = match op {
            0..35 => {
                let m = model.acquire(at, me);
                let p = match pg[c].try_acquire().await? {
                    AcquireOutcome::Acquired { term } => Some(term),
                    _ => None,
                };
                assert_eq!(
                    m.is_some(),
                    p.is_some(),
                    "step {step}: acquire by {me}: model {m:?}, PostgreSQL {p:?}"
                );
                if let (Some(m), Some(p)) = (m, p) {
                    if let Some(&(lm, lp)) = pairs.last() {
                        assert!(
                            m > lm && p > lp,
                            "step {step}: terms must grow: model {lm} -> {m}, PostgreSQL {lp} -> {p}"
                        );
                    }
                    pairs.push((m, p));
                    held[c].push((m, p));
                    acquired += 1;
                }
                "acquire"
            }
            35..65 => {
                // Its latest term mostly, an earlier (stale) one sometimes, or one never granted to it.
                let (m, p) = match held[c].len() {
                    0 => pairs.last().copied().unwrap_or((1, 1)),
                    n if rng.below(4) == 0 => held[c][rng.below(n as u64) as usize],
                    n => held[c][n - 1],
                };
                let (mo, po) = (model.renew(at, me, m), pg[c].renew(p).await?);
                assert_eq!(
                    mo, po,
                    "step {step}: renew by {me} of term {p}: model {mo}, PostgreSQL {po}"
                );
                renewed += u32::from(mo);
                "renew"
            }
            65..78 => {
                let (m, p) = match held[c].last() {
                    Some(&t) => t,
                    None => pairs.last().copied().unwrap_or((1, 1)),
                };
                let (mo, po) = (model.release(at, me, m), pg[c].release(p).await?);
                assert_eq!(
                    mo, po,
                    "step {step}: release by {me} of term {p}: model {mo}, PostgreSQL {po}"
                );
                released += u32::from(mo);
                "release"
            }
            78..96 => {
                let m = model.observe(at);
                let p = pg[c].observe().await?;
                let m = m.map(|(who, term, live)| {
                    let pg_term = pairs.iter().find(|x| x.0 == term).map_or(0, |x| x.1);
                    (who, pg_term, live)
                });
                let p = p.map(|l| (l.leader_id, l.term, l.expires_in.is_some()));
                assert_eq!(m, p, "step {step}: observe: model {m:?}, PostgreSQL {p:?}");
                "observe"
            }
            _ => {
                let (mo, po) = (model.cleanup(at), pg[c].cleanup().await?);
                assert_eq!(mo, po, "step {step}: cleanup: model {mo}, PostgreSQL {po}");
                "cleanup"
            }
        };
        let _ = what;
        compared += 1;
        tokio::time::sleep(Duration::from_millis(rng.below(120))).await;
    }
    eprintln!(
        "{compared} statements agreed ({acquired} acquisitions, {renewed} renewals, {released} releases) in {:?}",
        start.elapsed()
    );
    assert!(
        acquired >= 10 && renewed >= 10 && released >= 3,
        "too few changes to compare"
    );
    for b in &pg {
        b.close().await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await?;
    Ok(())
}
