//! The NATS backend on a three-server JetStream cluster, the bucket with three replicas: the server that
//! leads the bucket's stream is killed, then the server the leading elector is connected to, while three
//! electors (one per server) campaign. Through both: never two leaders, terms only grow, and a leader
//! again within the lease + 1 s of the kill.
#![cfg(feature = "nats")]

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::*;
use leaderlease::{Elector, NatsBackend};

/// Longer than a JetStream stream takes to elect a new leader after its leader dies (NATS's Raft waits 4 to
/// 9 s for a lost leader before it campaigns): the leader rides out the stream's leader change.
const LEASE: Duration = Duration::from_secs(12);
const RENEWAL: Duration = Duration::from_secs(2);
const JITTER: Duration = Duration::from_millis(500);

/// One server of the cluster.
struct Node {
    name: String,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Three nats-server processes (the pinned version, [`nats_server_bin`]) on free loopback ports, routed
/// into one JetStream cluster, each with a store directory of its own in a temporary directory. Killed
/// and removed on drop, a failing test included.
struct Cluster {
    bin: String,
    dir: PathBuf,
    nodes: Vec<Node>,
}

fn free_ports(n: usize) -> Vec<u16> {
    // All bound at once so that no two are the same.
    let listeners: Vec<_> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl Cluster {
    fn start() -> Self {
        let bin = nats_server_bin();
        let dir = std::env::temp_dir().join(unique("ll_nats_cluster"));
        std::fs::create_dir_all(&dir).unwrap();
        let ports = free_ports(6);
        let routes: Vec<String> = ports[3..]
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        let nodes = (0..3)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let config = dir.join(format!("{name}.conf"));
                let text = format!(
                    "server_name: \"{name}\"\n\
                     listen: \"127.0.0.1:{port}\"\n\
                     jetstream {{ store_dir: \"{store}\" }}\n\
                     cluster {{\n  name: \"leaderlease\"\n  listen: \"127.0.0.1:{route}\"\n  \
                     routes: [{routes}]\n}}\n",
                    port = ports[i],
                    store = dir.join(&name).display(),
                    route = ports[3 + i],
                    routes = routes.join(", "),
                );
                std::fs::write(&config, text).unwrap();
                Node {
                    log: dir.join(format!("{name}.log")),
                    name,
                    port: ports[i],
                    config,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self { bin, dir, nodes };
        for i in 0..3 {
            cluster.start_node(i);
        }
        cluster
    }

    fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin));
        node.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
            assert!(
                Instant::now() < until,
                "nats-server {} did not start",
                node.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no goodbye to the cluster, no leadership handed over, no flush.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no server named {name:?}"))
    }

    /// Waits until the cluster's JetStream answers (a meta leader is elected) through server `i`.
    async fn wait_for_jetstream(&self, i: usize) {
        let client = async_nats::connect(self.url(i)).await.unwrap();
        let js = jetstream::new(client);
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match js.query_account().await {
                Ok(_) => return,
                Err(e) => assert!(
                    Instant::now() < until,
                    "the cluster's JetStream did not come up: {e}\n{}",
                    self.logs()
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {} ---\n{}", n.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the sampler saw: each sample is the leading electors (index, term), taken every millisecond.
#[derive(Default)]
struct Seen {
    samples: u64,
    overlaps: u64,
    /// (index, term) of every change of the leader, with the time since the test's start.
    changes: Vec<(Duration, Option<(usize, u64)>)>,
    /// A term lower than one sampled before, or a new leader whose term is not greater.
    regressions: Vec<String>,
}

fn sample(electors: &[Arc<Elector>], start: Instant, seen: &Mutex<Seen>) {
    let leading: Vec<(usize, u64)> = electors
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_leader())
        .map(|(i, e)| (i, e.term().unwrap_or(0)))
        .collect();
    let mut s = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    s.samples += 1;
    if leading.len() > 1 {
        s.overlaps += 1;
    }
    let now = leading.first().copied();
    let before = s.changes.iter().rev().find_map(|(_, l)| *l);
    if s.changes.last().map(|(_, l)| *l) != Some(now) {
        if let (Some((i, term)), Some((j, prev))) = (now, before) {
            let ok = if i == j { term >= prev } else { term > prev };
            if !ok {
                s.regressions.push(format!(
                    "elector {i} leads with term {term} after elector {j}'s {prev}"
                ));
            }
        }
        s.changes.push((start.elapsed(), now));
    }
}

impl Seen {
    /// The longest stretch without a leader in the samples after `from` (one still running counts up
    /// to the last sample).
    fn longest_lapse_after(&self, from: Duration) -> Duration {
        let mut longest = Duration::ZERO;
        let mut leading = self
            .changes
            .iter()
            .rev()
            .find(|(t, _)| *t <= from)
            .is_some_and(|(_, l)| l.is_some());
        let mut lapse_start = (!leading).then_some(from);
        for (t, l) in self.changes.iter().filter(|(t, _)| *t > from) {
            match (leading, l.is_some()) {
                (true, false) => lapse_start = Some(*t),
                (false, true) => {
                    longest = longest.max(*t - lapse_start.take().unwrap_or(from));
                }
                _ => {}
            }
            leading = l.is_some();
        }
        longest
    }

    fn history_since(&self, from: Duration) -> String {
        self.changes
            .iter()
            .filter(|(t, _)| *t + Duration::from_millis(1) >= from)
            .map(|(t, l)| match l {
                Some((i, term)) => format!("{:?}: e{i} term {term}", t.saturating_sub(from)),
                None => format!("{:?}: none", t.saturating_sub(from)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A client of elector `i`: its own server first, then the others (kept in that order), reconnecting
/// with a cap of an eighth of the lease (50 ms to 1 s), as `NatsBackend::connect` does. The test makes
/// the clients itself to know which server each is connected to.
async fn client_for(cluster: &Cluster, i: usize) -> async_nats::Client {
    let addrs: Vec<async_nats::ServerAddr> = (0..3)
        .map(|k| cluster.url((i + k) % 3).parse().unwrap())
        .collect();
    let cap = (LEASE / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
    async_nats::ConnectOptions::new()
        .retain_servers_order()
        .request_timeout(Some(RENEWAL / 2))
        .reconnect_delay_callback(move |attempts| {
            if attempts <= 1 {
                Duration::ZERO
            } else {
                Duration::from_millis(1 << attempts.min(20)).min(cap)
            }
        })
        .connect(addrs.as_slice())
        .await
        .unwrap()
}

async fn stream_leader(js: &jetstream::Context, stream: &str) -> String {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await
            && let Ok(info) = s.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return leader;
        }
        assert!(Instant::now() < until, "no leader of the stream {stream}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a leader that holds a lease written after `kill`: its local deadline (counted from the send
/// of its last confirmed write, lease - safety margin) lies further than the lease - safety margin from
/// `kill`, which no lease sent before `kill` reaches. Returns the time from `kill` and the elector.
async fn leader_after(electors: &[Arc<Elector>], kill: Instant) -> (Duration, usize) {
    let limit = LEASE + Duration::from_secs(20);
    loop {
        for (i, e) in electors.iter().enumerate() {
            let since = kill.elapsed();
            if e.is_leader()
                && let Some(left) = e.lease_remaining()
                && left + since > LEASE - e.config().safety_margin()
            {
                return (since, i);
            }
        }
        assert!(
            kill.elapsed() < limit,
            "no leader with a lease written after the kill within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Releases elector `leader`'s lease and waits for another to lead with a greater term: the followers'
/// watch works on the changed cluster. Returns how long the handover took.
async fn hand_over(electors: &[Arc<Elector>], leader: usize) -> Duration {
    let term = electors[leader].term().expect("it leads");
    let released = Instant::now();
    electors[leader].release().await.unwrap();
    wait_until(
        Duration::from_secs(5),
        "another elector to take over",
        || {
            electors
                .iter()
                .enumerate()
                .any(|(i, e)| i != leader && e.is_leader())
        },
    )
    .await;
    let new = electors
        .iter()
        .find(|e| e.is_leader())
        .and_then(|e| e.term());
    assert!(
        new.is_some_and(|t| t > term),
        "term {new:?} after the released {term}"
    );
    released.elapsed()
}

/// Waits until the stream has a leader and its two other replicas are current.
async fn wait_for_replicas(js: &jetstream::Context, stream: &str, cluster: &Cluster) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await
            && let Ok(info) = s.info().await
            && let Some(c) = info.cluster.as_ref()
            && c.leader.is_some()
            && c.replicas.len() == 2
            && c.replicas.iter().all(|p| p.current && !p.offline)
        {
            return;
        }
        assert!(
            Instant::now() < until,
            "the stream {stream} did not get three current replicas again\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_server_cluster_loses_its_stream_leader_and_the_leaders_server() {
    if skip_nats_bin() {
        return;
    }
    let mut cluster = Cluster::start();
    cluster.wait_for_jetstream(0).await;
    let bucket = unique("ll_cluster");

    // Three electors, each connected to a server of its own; the first to start creates the bucket with
    // three replicas (`with_replicas`). A start may meet the cluster still placing its first streams:
    // tried again for a few seconds.
    let mut electors = Vec::new();
    let mut clients = Vec::new();
    for i in 0..3 {
        let client = client_for(&cluster, i).await;
        let until = Instant::now() + Duration::from_secs(15);
        let elector = loop {
            let c = client.clone();
            let b = bucket.clone();
            let started = Elector::builder()
                .with_instance_id(format!("e{i}"))
                .with_lease_duration(LEASE)
                .with_renewal_interval(RENEWAL)
                .with_jitter_range(JITTER)
                .start(move |config| NatsBackend::new(c, &b, config).with_replicas(3))
                .await;
            match started {
                Ok(e) => break e,
                Err(e) => {
                    assert!(
                        Instant::now() < until,
                        "elector {i} did not start: {e}\n{}",
                        cluster.logs()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        electors.push(Arc::new(elector));
        clients.push(client);
    }
    let admin = jetstream::new(client_for(&cluster, 0).await);
    let stream = format!("KV_{bucket}");
    let info = admin
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3, "the bucket's replicas");

    let start = Instant::now();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (electors, seen, stop) = (electors.clone(), seen.clone(), stop.clone());
        // A thread of its own: a millisecond sleep of the runtime's timer is nearer two.
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sample(&electors, start, &seen);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let any_leader = || electors.iter().position(|e| e.is_leader());
    wait_until(Duration::from_secs(10), "a first leader", || {
        any_leader().is_some()
    })
    .await;

    // (a) The server that leads the bucket's stream.
    let leader_name = stream_leader(&admin, &stream).await;
    let victim = cluster.index_of(&leader_name);
    let term_before = electors[any_leader().unwrap()].term().unwrap();
    let killed_a = start.elapsed();
    let kill_a = Instant::now();
    cluster.kill(victim);
    eprintln!(
        "killed the stream leader {leader_name} at {killed_a:?} (leading term {term_before})"
    );
    let (recovery_a, leader) = leader_after(&electors, kill_a).await;
    let new_leader_name = stream_leader(&admin, &stream).await;
    let (lapse_a, history_a) = {
        let s = seen.lock().unwrap();
        (s.longest_lapse_after(killed_a), s.history_since(killed_a))
    };
    let term_a = electors[leader].term().unwrap();
    eprintln!(
        "after killing the stream leader: e{leader} leads with a lease written {recovery_a:?} after the \
         kill (term {term_a}); longest stretch without a leader {lapse_a:?}; the stream's new leader \
         {new_leader_name}; leaders: {history_a}"
    );
    assert!(term_a >= term_before, "term {term_a} after {term_before}");
    assert!(
        recovery_a <= LEASE + Duration::from_secs(1),
        "a leader again only {recovery_a:?} after the stream leader was killed: {history_a}"
    );

    let handover_a = hand_over(&electors, leader).await;
    eprintln!("after it, a release handed over in {handover_a:?}");

    // The killed server comes back and catches up, so that the stream has three current replicas again
    // (with one of three down, losing another would leave no majority).
    cluster.start_node(victim);
    let back = Instant::now();
    wait_for_replicas(&admin, &stream, &cluster).await;
    eprintln!("{leader_name} back and current after {:?}", back.elapsed());

    // (b) The server the leading elector is connected to.
    let leader = any_leader().expect("a leader");
    let term_before_b = electors[leader].term().unwrap();
    let server = clients[leader].server_info().server_name;
    let victim_b = cluster.index_of(&server);
    let stream_leader_b = stream_leader(&admin, &stream).await;
    let killed_b = start.elapsed();
    let kill_b = Instant::now();
    cluster.kill(victim_b);
    eprintln!(
        "killed {server}, elector e{leader}'s server, at {killed_b:?} (term {term_before_b}; the stream \
         leader was {stream_leader_b})"
    );
    let (recovery_b, leader_b) = leader_after(&electors, kill_b).await;
    let (lapse_b, history_b) = {
        let s = seen.lock().unwrap();
        (s.longest_lapse_after(killed_b), s.history_since(killed_b))
    };
    let term_b = electors[leader_b].term().unwrap();
    eprintln!(
        "after killing the leader's server: e{leader_b} leads with a lease written {recovery_b:?} after \
         the kill (term {term_b}); longest stretch without a leader {lapse_b:?}; leaders: {history_b}"
    );
    assert!(
        term_b >= term_before_b,
        "term {term_b} after {term_before_b}"
    );
    assert!(
        recovery_b <= LEASE + Duration::from_secs(1),
        "a leader again only {recovery_b:?} after the leader's server was killed: {history_b}"
    );
    let handover_b = hand_over(&electors, leader_b).await;
    eprintln!("after it, a release handed over in {handover_b:?}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    {
        let s = seen.lock().unwrap();
        eprintln!(
            "{} samples over {:?}, {} with two leaders; {} changes of the sampled leader; term \
             regressions: {:?}",
            s.samples,
            start.elapsed(),
            s.overlaps,
            s.changes.len(),
            s.regressions
        );
        assert_eq!(s.overlaps, 0, "two leaders at once");
        assert!(s.regressions.is_empty(), "{:?}", s.regressions);
    }
    for e in &electors {
        let _ = tokio::time::timeout(Duration::from_secs(5), e.shutdown()).await;
    }
}
