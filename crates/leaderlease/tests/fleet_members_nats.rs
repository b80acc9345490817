//! Fleet membership on a real NATS JetStream KV bucket (2.11+: per-key TTL with limit markers): members
//! join and see each other, a leave is seen at once, a member that stops renewing drops out after its
//! lease (the server's expiry marker) and not before, and fleets of two buckets never see each other.
#![cfg(feature = "nats")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use leaderlease::fleet::{MemberConfig, Membership};

/// Joins the fleet kept in `bucket` as member `id` (version `v-<id>`).
async fn join(bucket: &Bucket, id: &str, lease: Duration, renewal: Duration) -> Membership {
    let client = async_nats::connect(&bucket.url).await.unwrap();
    let config = MemberConfig::builder()
        .with_id(id)
        .with_version(format!("v-{id}"))
        .with_lease_duration(lease)
        .with_renewal_interval(renewal)
        .build()
        .unwrap();
    Membership::join_nats(client, &bucket.name, config)
        .await
        .unwrap()
}

const LEASE: Duration = Duration::from_secs(2);
const RENEWAL: Duration = Duration::from_millis(500);

#[tokio::test]
async fn members_join_see_each_other_and_a_leave_is_seen_at_once() {
    if skip_nats() {
        return;
    }
    let bucket = Bucket::new("ll_fleet_join");
    let a = join(&bucket, "a", LEASE, RENEWAL).await;
    assert_eq!(member_ids(&a), ["a"]);
    // b renews rarely: a's leave must reach it through the watch, not its next renewal.
    let b = join(
        &bucket,
        "b",
        Duration::from_secs(20),
        Duration::from_secs(10),
    )
    .await;
    wait_for_members(&b, &["a", "b"], Duration::from_secs(5)).await;
    let seen = wait_for_members(&a, &["a", "b"], Duration::from_secs(5)).await;
    eprintln!("a saw b join after {seen:?}");
    let list = b.members();
    assert_eq!(list[0].version.as_deref(), Some("v-a"));
    assert!(
        list[0].started_at_us > 0 && list[0].started_at_us <= list[1].started_at_us,
        "{list:?}"
    );
    a.leave().await;
    let gone = wait_for_members(&b, &["b"], Duration::from_secs(5)).await;
    eprintln!("b saw a leave after {gone:?}");
    b.leave().await;
}

#[tokio::test]
async fn a_member_that_stops_renewing_drops_out_after_its_lease_and_not_before() {
    if skip_nats() {
        return;
    }
    let bucket = Bucket::new("ll_fleet_drop");
    let (name, url) = (bucket.name.clone(), bucket.url.clone());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let runner = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let b = Bucket { name, url };
            let m = join(&b, "frozen", LEASE, RENEWAL).await;
            std::mem::forget(b);
            ready_tx.send(()).unwrap();
            std::mem::forget(m);
        });
        rx.recv().unwrap();
        rt.shutdown_background();
    });
    ready_rx.await.unwrap();
    let b = join(&bucket, "b", LEASE, RENEWAL).await;
    wait_for_members(&b, &["b", "frozen"], Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    tx.send(()).unwrap();
    runner.join().unwrap();
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        member_ids(&b),
        ["b", "frozen"],
        "listed until its lease ends"
    );
    wait_for_members(&b, &["b"], Duration::from_secs(8)).await;
    let after = stopped.elapsed();
    eprintln!("the frozen member dropped out {after:?} after it stopped");
    assert!(after >= Duration::from_millis(1000), "{after:?}");
    b.leave().await;
}

#[tokio::test]
async fn fleets_of_two_buckets_do_not_see_each_other() {
    if skip_nats() {
        return;
    }
    let (b1, b2) = (Bucket::new("ll_fleet_iso1"), Bucket::new("ll_fleet_iso2"));
    let a = join(&b1, "same", LEASE, RENEWAL).await;
    let b = join(&b2, "other", LEASE, RENEWAL).await;
    let c = join(&b2, "same", LEASE, RENEWAL).await;
    wait_for_members(&b, &["other", "same"], Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(member_ids(&a), ["same"]);
    assert_eq!(member_ids(&c), ["other", "same"]);
    for m in [&a, &b, &c] {
        m.leave().await;
    }
}

#[tokio::test]
async fn an_id_that_is_no_key_is_refused_naming_the_field() {
    if skip_nats() {
        return;
    }
    let bucket = Bucket::new("ll_fleet_badid");
    let client = async_nats::connect(nats_url()).await.unwrap();
    let config = MemberConfig::builder().with_id("a b.c").build().unwrap();
    let err = Membership::join_nats(client, &bucket.name, config)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`id`"), "{err}");
}
