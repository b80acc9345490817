//! The cost of `Elector::is_leader()` and `Elector::term()` in a leader, without a database (a backend
//! that always grants): `cargo run --profile release-fast -p leaderlease --example is_leader_bench`.
//! Prints nanoseconds per call, the best of 5 rounds of 20 million calls each.

#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use leaderlease::backend::{AcquireOutcome, Backend, BoxFuture, ObservedLease};
use leaderlease::{Elector, Result};

struct Granting;

impl Backend for Granting {
    fn prepare(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn observe(&self) -> BoxFuture<'_, Result<Option<ObservedLease>>> {
        Box::pin(async { Ok(None) })
    }
    fn try_acquire(&self) -> BoxFuture<'_, Result<AcquireOutcome>> {
        Box::pin(async { Ok(AcquireOutcome::Acquired { term: 1 }) })
    }
    fn renew(&self, _term: u64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async { Ok(true) })
    }
    fn release(&self, _term: u64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async { Ok(true) })
    }
    fn cleanup(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async { Ok(0) })
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<()> {
    let elector = Elector::builder()
        .with_lease_duration(Duration::from_secs(60))
        .with_renewal_interval(Duration::from_secs(20))
        .with_jitter_range(Duration::from_secs(1))
        .start(|_| Granting)
        .await?;
    while !elector.is_leader() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    const N: u32 = 20_000_000;
    let (mut best_leader, mut best_term) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0u32;
        for _ in 0..N {
            n += u32::from(black_box(&elector).is_leader());
        }
        assert_eq!(n, N);
        best_leader = best_leader.min(t.elapsed().as_nanos() as f64 / f64::from(N));
        let t = Instant::now();
        for _ in 0..N {
            black_box(black_box(&elector).term());
        }
        best_term = best_term.min(t.elapsed().as_nanos() as f64 / f64::from(N));
    }
    println!("is_leader: {best_leader:.2} ns/call, term: {best_term:.2} ns/call (best of 5 x {N})");
    elector.shutdown().await
}
