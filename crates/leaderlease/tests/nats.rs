//! What is particular to the NATS JetStream KV backend: per-key TTL (the lease belongs to the key, expiry
//! seen through the server's marker) or, in older buckets, the bucket's max_age as the lease; releases
//! are seen through a watch, revisions guard every write, the server restarting is survived, a server
//! too old is refused.
#![cfg(feature = "nats")]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use common::*;
use leaderlease::nats::{Expiry, MARKER_TTL, key_ttl};
use leaderlease::{Elector, Error, NatsBackend};

#[tokio::test]
async fn a_bucket_without_max_age_or_with_another_lease_is_refused() {
    if skip_nats() {
        return;
    }
    let b = Bucket::new("ll_noage");
    b.js()
        .await
        .create_key_value(kv::Config {
            bucket: b.name.clone(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let err = fast().connect_nats(&nats_url(), &b.name).await.unwrap_err();
    assert_eq!(err.code(), "ERR_INVALID_BUCKET", "{err}");
    assert!(
        err.to_string()
            .contains("neither per-message TTL nor max_age"),
        "{err}"
    );

    let b = Bucket::new("ll_otherage");
    b.js()
        .await
        .create_key_value(kv::Config {
            bucket: b.name.clone(),
            history: 1,
            max_age: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = fast().connect_nats(&nats_url(), &b.name).await.unwrap_err();
    assert!(matches!(err, Error::InvalidBucket { .. }), "{err}");
    assert!(
        err.to_string().contains("60000 ms") && err.to_string().contains("1500 ms"),
        "{err}"
    );
}

#[tokio::test]
async fn a_new_bucket_gets_per_key_ttl_with_limit_markers_and_no_max_age() {
    if skip_nats() {
        return;
    }
    let b = Bucket::new("ll_create");
    let (store, expiry) =
        NatsBackend::open_bucket(&b.js().await, &b.name, Duration::from_millis(1500))
            .await
            .unwrap();
    let status = store.status().await.unwrap();
    let config = &status.info.config;
    assert!(config.allow_message_ttl);
    assert_eq!(config.subject_delete_marker_ttl, Some(MARKER_TTL));
    assert_eq!(config.max_age, Duration::ZERO);
    assert_eq!(status.history(), 1);
    // NATS TTLs are whole seconds: the lease rounded up.
    assert_eq!(
        expiry,
        Expiry::KeyTtl {
            ttl: Duration::from_secs(2),
            markers: true
        }
    );
    assert_eq!(key_ttl(Duration::from_millis(999)), Duration::from_secs(1));
    assert_eq!(key_ttl(Duration::from_secs(3)), Duration::from_secs(3));
    assert_eq!(key_ttl(Duration::from_millis(3001)), Duration::from_secs(4));
    // The same bucket serves an election of another lease.
    let (_, expiry) = NatsBackend::open_bucket(&b.js().await, &b.name, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(expiry, Expiry::KeyTtl { ttl, .. } if ttl == Duration::from_secs(30)));
}

#[tokio::test]
async fn a_ttl_bucket_whose_max_age_is_shorter_than_the_key_ttl_is_refused() {
    if skip_nats() {
        return;
    }
    let b = Bucket::new("ll_shortage");
    b.js()
        .await
        .create_key_value(kv::Config {
            bucket: b.name.clone(),
            history: 1,
            max_age: Duration::from_secs(1),
            limit_markers: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    // Lease 1.5 s: the key's TTL is 2 s, but max_age would remove it after 1 s, before the leader's
    // local deadline: another node could lead beside it.
    let err = fast().connect_nats(&nats_url(), &b.name).await.unwrap_err();
    assert_eq!(err.code(), "ERR_INVALID_BUCKET", "{err}");
    assert!(
        err.to_string()
            .contains("max_age 1000 ms, shorter than the key's TTL of 2 s"),
        "{err}"
    );
}

/// The lease belongs to the key: one bucket holds elections of different lease durations, and a key
/// expires after its own TTL, whatever the lease of the node that looks at it. The expiry is seen through
/// the marker the server writes, not found by polling: the followers here look again only every 3 s or
/// at the expiry they estimate from their own lease (6 s), yet take over within tens of milliseconds of
/// the key's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bucket_holds_elections_of_different_leases_and_expiry_is_seen_through_the_marker() {
    if skip_nats() {
        return;
    }
    let b = Bucket::new("ll_ttl");
    let short = || fast().with_lock_id(1);
    let long = || {
        Elector::builder()
            .with_lock_id(2)
            .with_lease_duration(Duration::from_secs(6))
            .with_renewal_interval(Duration::from_secs(3))
            .with_jitter_range(Duration::from_millis(200))
    };
    // Leases left behind by crashed leaders: lock-1 by a node of lease 1.5 s (TTL 2 s), lock-2 by a node
    // whose lease was 1 s (TTL 1 s).
    NatsBackend::create_bucket(&b.js().await, &b.name, Duration::from_secs(6))
        .await
        .unwrap();
    let planted = Instant::now();
    let dead_short = b.put_with_ttl("lock-1", "0 dead-short", 2).await;
    let dead_long = b.put_with_ttl("lock-2", "0 dead-long", 1).await;
    let x = b.start(short().with_instance_id("x")).await;
    let y = b.start(long().with_instance_id("y")).await;
    let (mut x_took, mut y_took) = (None, None);
    while x_took.is_none() || y_took.is_none() {
        assert!(
            planted.elapsed() < Duration::from_secs(5),
            "no takeover: x {x_took:?}, y {y_took:?}"
        );
        if x_took.is_none() && x.is_leader() {
            x_took = Some(planted.elapsed());
        }
        if y_took.is_none() && y.is_leader() {
            y_took = Some(planted.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (x_took, y_took) = (x_took.unwrap(), y_took.unwrap());
    eprintln!(
        "takeover after the key's expiry: lock-1 (TTL 2 s) {x_took:?}, lock-2 (TTL 1 s) {y_took:?}"
    );
    assert!(
        x_took >= Duration::from_millis(1950) && x_took < Duration::from_millis(2400),
        "lock-1 taken {x_took:?} after a write with TTL 2 s"
    );
    assert!(
        y_took >= Duration::from_millis(950) && y_took < Duration::from_millis(1400),
        "lock-2 taken {y_took:?} after a write with TTL 1 s (its follower polls every 3 s)"
    );
    assert!(x.term().unwrap() > dead_short && y.term().unwrap() > dead_long);
    // Each keeps its own lease by its renewals, past the other's TTL.
    let (tx, ty) = (x.term(), y.term());
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(x.term() == tx && y.term() == ty, "a leadership ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    x.shutdown().await.unwrap();
    y.shutdown().await.unwrap();
}

/// A bucket made by `noleader` (max_age 60 s, limit markers 60 s, per-message TTL) works with any lease
/// up to 60 s, and a key that a `noleader` node holds (16 bytes of UUID, TTL of its own) is respected until
/// it expires, then taken over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_noleader_bucket_works_and_its_holder_is_respected() {
    if skip_nats() {
        return;
    }
    let b = Bucket::new("ll_noleader");
    b.js()
        .await
        .create_key_value(kv::Config {
            bucket: b.name.clone(),
            description: "leadership bucket for noleader".into(),
            limit_markers: Some(Duration::from_secs(60)),
            max_age: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap();
    let uuid: [u8; 16] = [
        0x67, 0xe5, 0x50, 0x44, 0x10, 0xb1, 0x42, 0x6f, 0x92, 0x47, 0xbb, 0x68, 0x0e, 0x5f, 0xe0,
        0xc8,
    ];
    let planted = Instant::now();
    b.put_with_ttl("election_key", bytes::Bytes::copy_from_slice(&uuid), 2)
        .await;
    let client = async_nats::connect(&b.url).await.unwrap();
    let c = fast()
        .with_instance_id("c")
        .start(|config| NatsBackend::new(client, &b.name, config).with_key("election_key"))
        .await
        .unwrap();
    wait_until(Duration::from_secs(1), "c to see the holder", || {
        c.leader().is_some()
    })
    .await;
    assert_eq!(
        c.leader().unwrap().leader_id,
        "67e55044-10b1-426f-9247-bb680e5fe0c8"
    );
    assert!(!c.is_leader());
    wait_until(Duration::from_secs(4), "c to take over", || c.is_leader()).await;
    let took = planted.elapsed();
    assert!(
        took >= Duration::from_millis(1950) && took < Duration::from_millis(2400),
        "took over {took:?} after a write with TTL 2 s"
    );
    // Its own key lives 2 s per write; the bucket's max_age (60 s) does not shorten it.
    let term = c.term();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(c.term(), term, "c's leadership ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_is_seen_through_the_watch_not_the_next_poll() {
    if skip_nats() {
        return;
    }
    let b = Bucket::new("ll_watch");
    // Followers poll every 4 s: a handover much faster than that comes from the watch.
    let a = b.start(slow_poller().with_instance_id("a")).await;
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let f = b.start(slow_poller().with_instance_id("f")).await;
    wait_until(Duration::from_secs(3), "f to see a", || {
        f.leader().is_some()
    })
    .await;
    let term_a = a.term().unwrap();
    let released = Instant::now();
    a.release().await.unwrap();
    wait_until(Duration::from_secs(6), "f to take over", || f.is_leader()).await;
    let took = released.elapsed();
    assert!(took < Duration::from_millis(1000), "handover took {took:?}");
    assert!(f.term().unwrap() > term_a);
    a.shutdown().await.unwrap();
    f.shutdown().await.unwrap();
}

/// A follower's watch can go silent while its client stays connected: its consumer lives on one server
/// (in a cluster, a server the client is not connected to may die with it), and the client only notices
/// after missed idle heartbeats, 10 s later. A release must still reach the follower at once, not at the
/// lease's expiry. Here the consumers of the bucket's stream are deleted, as a dead server takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_seen_at_once_when_the_watch_consumer_is_gone() {
    if skip_nats() {
        return;
    }
    let b = Bucket::new("ll_lostwatch");
    // Followers would wait 6 s for the expiry: a handover much faster than that is not the expiry.
    let a = b.start(slow_poller().with_instance_id("a")).await;
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let f = b.start(slow_poller().with_instance_id("f")).await;
    wait_until(Duration::from_secs(3), "f to see a", || {
        f.leader().is_some()
    })
    .await;
    let stream = b
        .js()
        .await
        .get_stream(format!("KV_{}", b.name))
        .await
        .unwrap();
    let names: Vec<String> = {
        use futures_util::StreamExt;
        stream
            .consumer_names()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect()
    };
    assert!(!names.is_empty(), "the watches have consumers");
    for name in &names {
        stream.delete_consumer(name).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term_a = a.term().unwrap();
    let released = Instant::now();
    a.release().await.unwrap();
    wait_until(Duration::from_secs(8), "f to take over", || f.is_leader()).await;
    let took = released.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "handover took {took:?} with the watch's consumer gone"
    );
    assert!(f.term().unwrap() > term_a);
    a.shutdown().await.unwrap();
    f.shutdown().await.unwrap();
}

/// While its watch works, a follower does not poll: it reads the key about once per lease (at the expiry
/// it saw), not at every renewal interval. Counted on the server's side: a client of the test listens on
/// the subjects of the bucket's read requests (direct gets and message gets), which reach every subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_does_not_poll_while_its_watch_works() {
    if skip_nats() {
        return;
    }
    let b = Bucket::new("ll_nopoll");
    // Lease (and key TTL) 4 s, renewal every 300 ms: a follower polling at the renewal interval would read
    // the key about 20 times in the 6 s counted (twice per attempt), one waiting for the expiry 2 or 3 times.
    let timing = || {
        Elector::builder()
            .with_lease_duration(Duration::from_secs(4))
            .with_renewal_interval(Duration::from_millis(300))
            .with_jitter_range(Duration::from_millis(100))
    };
    let a = b.start(timing().with_instance_id("a")).await;
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let f = b.start(timing().with_instance_id("f")).await;
    wait_until(Duration::from_secs(3), "f to see a", || {
        f.leader().is_some()
    })
    .await;
    let client = async_nats::connect(&b.url).await.unwrap();
    let mut subs = Vec::new();
    for subject in [
        format!("$JS.API.DIRECT.GET.KV_{}", b.name),
        format!("$JS.API.DIRECT.GET.KV_{}.>", b.name),
        format!("$JS.API.STREAM.MSG.GET.KV_{}", b.name),
    ] {
        subs.push(client.subscribe(subject).await.unwrap());
    }
    client.flush().await.unwrap();
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counters: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            let reads = reads.clone();
            tokio::spawn(async move {
                use futures_util::StreamExt;
                while sub.next().await.is_some() {
                    reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    // The listener sees requests: check it on one read of the test's own.
    let own = b.js().await.get_key_value(&b.name).await.unwrap();
    own.entry("lock-1").await.unwrap();
    wait_until(Duration::from_secs(2), "the listener to see a read", || {
        reads.load(std::sync::atomic::Ordering::Relaxed) >= 1
    })
    .await;
    reads.store(0, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let n = reads.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("the follower read the key {n} times in 6 s (renewal interval 300 ms, lease 4 s)");
    assert!(a.is_leader() && !f.is_leader(), "the leadership changed");
    assert!(
        n <= 10,
        "the follower read the key {n} times in 6 s: it polls while its watch works"
    );
    for c in counters {
        c.abort();
    }
    a.shutdown().await.unwrap();
    f.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_write_to_the_key_ends_leadership_and_never_gives_two_leaders() {
    if skip_nats() {
        return;
    }
    let b = Bucket::new("ll_conflict");
    let a = b.start(fast().with_instance_id("a")).await;
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    // Someone else overwrites the key (with a TTL of 2 s, as a node of lease 1.5 s writes it): a's next
    // compare-and-set renewal fails on the revision.
    b.put_with_ttl("lock-1", "0 intruder", 2).await;
    wait_until(Duration::from_secs(2), "a to step down", || !a.is_leader()).await;
    let o = b.start(fast().with_instance_id("o")).await;
    // Nobody leads until the intruder's key expires (TTL 2 s); then exactly one does.
    wait_until(Duration::from_secs(5), "a new leader", || {
        a.is_leader() || o.is_leader()
    })
    .await;
    assert_never_two_leaders(&[&a, &o], Duration::from_secs(1)).await;
    a.shutdown().await.unwrap();
    o.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_or_another_term_in_the_leaders_name_ends_leadership() {
    if skip_nats() {
        return;
    }
    let b = Bucket::new("ll_gone");
    let a = b.start(fast().with_instance_id("a")).await;
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let store = b.js().await.get_key_value(&b.name).await.unwrap();
    let first = a.term().unwrap();
    // Deleted behind a's back (not by a release of its own): its next renewal finds no lease of its own,
    // which ends that term (a may take the free key again at once, with a new term).
    store.delete("lock-1").await.unwrap();
    wait_until(Duration::from_secs(3), "a's term to end", || {
        a.term().is_some_and(|t| t != first)
    })
    .await;
    let term = a.term().unwrap();
    // a's instance id with another term (a twin with the same fixed id): not a's own lease either.
    store
        .put("lock-1", format!("{} a", term + 1000).into())
        .await
        .unwrap();
    wait_until(Duration::from_secs(2), "a to step down", || !a.is_leader()).await;
    a.shutdown().await.unwrap();
}

/// The log lines of the current thread's subscriber (set with [`tracing::subscriber::set_default`]).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl tracing_subscriber::fmt::MakeWriter<'_> for Logs {
    type Writer = Logs;
    fn make_writer(&self) -> Logs {
        self.clone()
    }
}

/// A renewal the server applied but whose acknowledgement was lost (a timeout, a stream leader change):
/// the key holds the leader's own term and id at a revision the leader never heard of. Simulated by a side
/// client writing exactly that value at the current revision between two renewals. The retry's
/// compare-and-set fails on the revision; the leader must go on from the revision that holds its own
/// lease rather than step down, lock itself out until `max_age`, and blame a duplicate instance id.
// One thread: the log subscriber set for this thread sees every task of the test.
#[tokio::test]
async fn a_renewal_applied_without_its_acknowledgement_keeps_the_lease() {
    if skip_nats() {
        return;
    }
    let logs = Logs::default();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    let b = Bucket::new("ll_lostack");
    let a = b.start(fast().with_instance_id("a")).await;
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let term = a.term().unwrap();
    let f = b.start(fast().with_instance_id("f")).await;
    let mut status = a.subscribe();
    status.borrow_and_update();
    let store = b.js().await.get_key_value(&b.name).await.unwrap();
    // What a's renewals write.
    let value = format!("{term} a");
    let mut lost_acks = 0;
    let mut next = Instant::now();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert!(
            a.is_leader() && a.term() == Some(term),
            "a lost its lease after {lost_acks} renewals whose acknowledgement was lost\n{}",
            logs.text()
        );
        assert!(!f.is_leader(), "f leads beside a");
        if Instant::now() >= next {
            let entry = store.entry("lock-1").await.unwrap().unwrap();
            // Fails if a renewed in between; then the next round tries again.
            if store
                .update("lock-1", value.clone().into(), entry.revision)
                .await
                .is_ok()
            {
                lost_acks += 1;
                next = Instant::now() + Duration::from_millis(700);
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(lost_acks >= 4, "only {lost_acks} lost acknowledgements");
    assert!(
        !status.has_changed().unwrap(),
        "a's status changed to {:?}",
        *status.borrow()
    );
    let text = logs.text();
    assert!(
        !text.contains("instance ids must be unique") && !text.contains("stepped down"),
        "{text}"
    );
    a.shutdown().await.unwrap();
    f.shutdown().await.unwrap();
}

/// A NATS server of the test's own, on a free port, with JetStream in a temporary directory.
struct ThrowawayNats {
    bin: String,
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl ThrowawayNats {
    /// The pinned server version ([`nats_server_bin`]).
    fn start() -> Self {
        Self::start_bin(nats_server_bin())
    }
    fn start_bin(bin: String) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("ll_nats"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Self {
            bin,
            port,
            dir,
            child: None,
        };
        s.restart();
        s
    }
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
    fn restart(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin));
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ThrowawayNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_server_restarting_is_survived() {
    if skip_nats_bin() {
        return;
    }
    let mut server = ThrowawayNats::start();
    let b = Bucket::on("ll_restart", server.url());
    let a = b.start(fast().with_instance_id("a")).await;
    wait_until(Duration::from_secs(5), "a to lead", || a.is_leader()).await;
    let f = b.start(fast().with_instance_id("f")).await;
    let first_term = a.term().unwrap();

    // Down for 5 s: well past the lease (every lease expires meanwhile), and long enough for a client's
    // reconnect attempts to have backed off, as in an outage users meet.
    server.stop();
    let stopped = Instant::now();
    wait_until(
        Duration::from_secs(3),
        "a to step down without its server",
        || !a.is_leader(),
    )
    .await;
    while stopped.elapsed() < Duration::from_secs(5) {
        assert!(
            !a.is_leader() && !f.is_leader(),
            "a leader without a server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.restart();
    let back = Instant::now();
    wait_until(
        Duration::from_secs(15),
        "a leader after the restart",
        || a.is_leader() || f.is_leader(),
    )
    .await;
    // A leader again soon: within the lease + 1 s of the server being back (the lease is 1.5 s here).
    let took = back.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "a leader only {took:?} after the server was back"
    );
    assert_never_two_leaders(&[&a, &f], Duration::from_secs(1)).await;
    let leader = if a.is_leader() { &a } else { &f };
    let follower = if a.is_leader() { &f } else { &a };
    let term = leader.term().unwrap();
    // The term never goes back, and a term is never another node's. The same term again is a's own lease
    // resumed: a kept renewing its term after stepping down at its local deadline, and a server back from
    // a restart may still hold the key past its TTL until it processes the expiry (nobody else can take it
    // in between), so the compare-and-set of a's renewal can succeed.
    assert!(term >= first_term, "term {term} after {first_term}");
    if term == first_term {
        assert_eq!(
            leader.config().instance_id(),
            "a",
            "a's term {term} led by another node"
        );
    }

    // The key watch works again after the restart: a release is taken at once, not at the next poll.
    wait_until(
        Duration::from_secs(3),
        "the follower to see the leader",
        || follower.leader().is_some(),
    )
    .await;
    let released = Instant::now();
    leader.release().await.unwrap();
    wait_until(Duration::from_secs(5), "the follower to take over", || {
        follower.is_leader()
    })
    .await;
    let handover = released.elapsed();
    eprintln!("leader again {took:?} after the restart; handover after it {handover:?}");
    assert!(
        handover < Duration::from_millis(700),
        "handover after the restart took {handover:?}"
    );
    a.shutdown().await.unwrap();
    f.shutdown().await.unwrap();
}

/// Debian 12's NATS server is 2.9, whose JetStream answers the client cannot read: the elector must fail at
/// start with a typed error that names the server's version, not with a parse error from deep in a request.
/// Uses the Debian package's binary (.ci/run installs it), started as a throwaway server of the test's own.
#[tokio::test]
async fn a_server_older_than_2_10_is_refused_at_start_naming_its_version() {
    let bin = "/usr/sbin/nats-server";
    // CI (.ci/run) installs it; a bare `cargo test` on a machine without it says so once and goes on.
    if !std::path::Path::new(bin).exists() && std::env::var_os("NATS_URL").is_none() {
        note(&format!(
            "leaderlease tests: SKIPPING the old-server test: {bin} (Debian 12's nats-server 2.9) is not \
             installed; `apt-get install nats-server` to run it"
        ));
        return;
    }
    let version = Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!("{bin} (Debian 12's nats-server 2.9, `apt-get install nats-server`): {e}")
        });
    let version = String::from_utf8_lossy(&version.stdout)
        .trim()
        .trim_start_matches("nats-server: v")
        .to_owned();
    assert!(
        version.starts_with("2.9."),
        "this test needs a NATS 2.9 server at {bin}, found {version}"
    );
    let server = ThrowawayNats::start_bin(bin.to_owned());
    let b = Bucket::on("ll_old", server.url());
    let err = fast()
        .connect_nats(&server.url(), &b.name)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ERR_UNSUPPORTED_SERVER", "{err}");
    assert!(
        matches!(&err, Error::UnsupportedServer { version: v, .. } if *v == version),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("version {version}")) && text.contains("NATS 2.10.0 or newer"),
        "{text}"
    );
    // An application's own client: the same check.
    let client = async_nats::connect(server.url()).await.unwrap();
    let err = fast()
        .start(|config| NatsBackend::new(client, &b.name, config))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ERR_UNSUPPORTED_SERVER", "{err}");
}

/// No server at the address: a typed error of its own (not the PostgreSQL one) that names the address and
/// keeps the client's error as its source.
#[tokio::test]
async fn no_server_at_the_address_is_store_unreachable_with_the_clients_error() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let err = fast()
        .connect_nats(&url, "ll_nowhere")
        .await
        .expect_err("no server there");
    assert_eq!(err.code(), "ERR_STORE_UNREACHABLE", "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    let source = std::error::Error::source(&err).expect("the client's error");
    assert!(
        source.downcast_ref::<async_nats::ConnectError>().is_some(),
        "source: {source:?}"
    );
    // An address that does not parse names itself too.
    let err = fast()
        .connect_nats(&format!("{url},nats://[bad"), "ll_nowhere")
        .await
        .expect_err("a bad address");
    assert_eq!(err.code(), "ERR_STORE_UNREACHABLE", "{err}");
    assert!(err.to_string().contains("nats://[bad"), "{err}");
}
