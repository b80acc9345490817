//! What is particular to the NATS JetStream KV backend: the bucket's max_age is the lease, releases
//! are seen through a watch, revisions guard every write, the server restarting is survived.
#![cfg(feature = "nats")]

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use common::*;
use leaderlease::{Elector, ElectorBuilder, Error, NatsBackend};

/// A bucket of the test's own, deleted on drop.
struct Bucket {
    name: String,
    url: String,
}

impl Bucket {
    fn new(prefix: &str) -> Self {
        Self::on(prefix, nats_url())
    }
    fn on(prefix: &str, url: String) -> Self {
        Self {
            name: unique(prefix),
            url,
        }
    }
    async fn js(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(&self.url).await.unwrap())
    }
    async fn start(&self, builder: ElectorBuilder) -> Elector {
        builder.connect_nats(&self.url, &self.name).await.unwrap()
    }
}

impl Drop for Bucket {
    fn drop(&mut self) {
        let (name, url) = (self.name.clone(), self.url.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(Ok(client)) =
                    tokio::time::timeout(Duration::from_secs(2), async_nats::connect(url)).await
                {
                    let _ = jetstream::new(client).delete_key_value(&name).await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn a_bucket_without_max_age_or_with_another_lease_is_refused() {
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
    assert!(err.to_string().contains("no max_age"), "{err}");

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
async fn a_new_bucket_gets_the_lease_as_max_age() {
    let b = Bucket::new("ll_create");
    let store = NatsBackend::create_bucket(&b.js().await, &b.name, Duration::from_millis(1500))
        .await
        .unwrap();
    let status = store.status().await.unwrap();
    assert_eq!(status.info.config.max_age, Duration::from_millis(1500));
    assert_eq!(status.history(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_is_seen_through_the_watch_not_the_next_poll() {
    let b = Bucket::new("ll_watch");
    // Followers poll every 4 s: a handover much faster than that comes from the watch.
    let slow = || {
        Elector::builder()
            .with_lease_duration(Duration::from_secs(6))
            .with_renewal_interval(Duration::from_secs(4))
            .with_jitter_range(Duration::from_millis(200))
    };
    let a = b.start(slow().with_instance_id("a")).await;
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let f = b.start(slow().with_instance_id("f")).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_write_to_the_key_ends_leadership_and_never_gives_two_leaders() {
    let b = Bucket::new("ll_conflict");
    let a = b.start(fast().with_instance_id("a")).await;
    wait_until(Duration::from_secs(3), "a to lead", || a.is_leader()).await;
    let store = b.js().await.get_key_value(&b.name).await.unwrap();
    // Someone else overwrites the key: a's next compare-and-set renewal fails on the revision.
    store.put("lock-1", "0 intruder".into()).await.unwrap();
    wait_until(Duration::from_secs(2), "a to step down", || !a.is_leader()).await;
    let o = b.start(fast().with_instance_id("o")).await;
    // Nobody leads until the intruder's key expires (max_age 1.5 s); then exactly one does.
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
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl ThrowawayNats {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("ll_nats"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Self {
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
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = Command::new(bin)
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
            .expect("nats-server must be installed for this test");
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
    assert!(term > first_term, "term {term} after {first_term}");

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
