//! What an election reports: its events as values (the observer), whether it reaches its store
//! (`store_health`), and its metrics through the `metrics` facade (feature `metrics`), on a throwaway
//! PostgreSQL that the test stops and starts again.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use leaderlease::events::Level;
use leaderlease::metrics_names as names;
use leaderlease::{Event, EventKind};
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata};
use metrics::{Recorder, SharedString, Unit};

/// A recorder that keeps the last value of every gauge, the total of every counter, and the number of
/// samples of every histogram, by `name{label=value,...}`.
#[derive(Default, Clone)]
struct Store(Arc<Mutex<HashMap<String, f64>>>);

struct Handle {
    key: String,
    store: Store,
}

impl Handle {
    fn update(&self, f: impl FnOnce(&mut f64)) {
        f(self
            .store
            .0
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default());
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.update(|v| *v += value as f64);
    }
    fn absolute(&self, value: u64) {
        self.update(|v| *v = value as f64);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.update(|v| *v += value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| *v -= value);
    }
    fn set(&self, value: f64) {
        self.update(|v| *v = value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, _value: f64) {
        self.update(|v| *v += 1.0);
    }
}

impl Store {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        Arc::new(Handle {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
            store: self.clone(),
        })
    }
    fn get(&self, key: &str) -> Option<f64> {
        self.0.lock().unwrap().get(key).copied()
    }
}

impl Recorder for Store {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_store_health_and_metrics_through_an_outage() {
    let store = Store::default();
    metrics::set_global_recorder(store.clone()).unwrap();
    let pg = ThrowawayPg::start();
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let seen = events.clone();
    let a = fast()
        .with_instance_id("a")
        .with_lock_id(61)
        .with_metrics_name("job")
        .with_observer(move |e| seen.lock().unwrap().push(e.clone()))
        .connect(&pg.url())
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "a to lead", || a.is_leader()).await;
    let b = fast()
        .with_instance_id("b")
        .with_lock_id(61)
        .connect(&pg.url())
        .await
        .unwrap();
    let term = a.term().unwrap();
    let has = |kind: EventKind| events.lock().unwrap().iter().any(|e| e.kind == kind);
    wait_until(Duration::from_secs(3), "a renewal", || {
        has(EventKind::Renewed)
    })
    .await;
    {
        let list = events.lock().unwrap();
        let elected = list.iter().find(|e| e.kind == EventKind::Elected).unwrap();
        assert_eq!((elected.level, elected.term), (Level::INFO, Some(term)));
        let renewed = list.iter().find(|e| e.kind == EventKind::Renewed).unwrap();
        assert_eq!(renewed.level, Level::DEBUG);
        assert!(renewed.latency.is_some());
    }
    assert!(a.store_health().connected && b.store_health().connected);
    assert_eq!(
        store.get(&format!("{}{{name=job}}", names::MASTER_STATUS)),
        Some(1.0)
    );
    assert!(
        store
            .get(&format!("{}{{name=job,outcome=success}}", names::RENEWALS))
            .unwrap()
            >= 1.0
    );
    assert!(
        store
            .get(&format!("{}{{name=job}}", names::RENEWAL_DURATION))
            .unwrap()
            >= 1.0
    );
    let left = store
        .get(&format!("{}{{name=job}}", names::LEASE_REMAINING))
        .unwrap();
    assert!(left > 0.0 && left <= 1.5, "{left}");
    // b is named by its lock id.
    assert_eq!(
        store.get(&format!("{}{{name=61}}", names::MASTER_STATUS)),
        Some(0.0)
    );

    pg.stop();
    let stopped = Instant::now();
    // Both notice: the leader at its next renewal, the follower when the LISTEN connection breaks (it
    // then tries at once) or at the latest when the lease it saw expires.
    wait_until(Duration::from_secs(3), "a to see the outage", || {
        !a.store_health().connected
    })
    .await;
    wait_until(Duration::from_secs(3), "b to see the outage", || {
        !b.store_health().connected
    })
    .await;
    let noticed = stopped.elapsed();
    assert!(noticed < Duration::from_millis(2500), "{noticed:?}");
    wait_until(Duration::from_secs(3), "a to step down", || {
        has(EventKind::SteppedDown)
    })
    .await;
    {
        let list = events.lock().unwrap();
        let failed = list
            .iter()
            .find(|e| e.kind == EventKind::RenewalFailed)
            .unwrap();
        assert_eq!((failed.level, failed.term), (Level::WARN, Some(term)));
        assert!(failed.error.is_some() && failed.error_code.is_some());
        assert_eq!(EventKind::RenewalFailed.failed_operation(), Some("renew"));
        let down = list
            .iter()
            .find(|e| e.kind == EventKind::SteppedDown)
            .unwrap();
        assert_eq!((down.level, down.term), (Level::WARN, Some(term)));
        assert!(down.reason.as_deref().unwrap().contains("deadline"));
    }
    let health = a.store_health();
    assert!(health.last_error.is_some());
    assert!(health.since >= stopped);
    assert_eq!(
        store.get(&format!("{}{{name=job}}", names::MASTER_STATUS)),
        Some(0.0)
    );
    assert!(
        store
            .get(&format!("{}{{name=job,outcome=failure}}", names::RENEWALS))
            .unwrap()
            >= 1.0
    );
    assert!(
        store
            .get(&format!(
                "{}{{name=job,operation=renew}}",
                names::STORE_ERRORS
            ))
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        store.get(&format!(
            "{}{{name=job,transition=stepped_down}}",
            names::LEADERSHIP_CHANGES
        )),
        Some(1.0)
    );

    pg.restart();
    wait_until(
        Duration::from_secs(10),
        "both to reach the store again",
        || a.store_health().connected && b.store_health().connected,
    )
    .await;
    wait_until(Duration::from_secs(5), "a leader again", || {
        a.is_leader() || b.is_leader()
    })
    .await;
    // The last error stays for the record.
    assert!(a.store_health().last_error.is_some());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert!(has(EventKind::Stopped));
}
