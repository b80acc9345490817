//! A live demo cluster: three candidate processes on one PostgreSQL, a leader killed (SIGKILL) and
//! replaced, then a leader shut down gracefully and handed over; prints who leads, the terms and the
//! measured times.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example cluster -- [--rounds N]
//! cargo run --features nats --example cluster -- --nats nats://127.0.0.1:4222 [--rounds N] [--max-age-bucket]
//! ```
//!
//! On NATS the bucket is made by the backend (per-key TTL on NATS 2.11+), or, with `--max-age-bucket`,
//! beforehand without per-message TTL and with `max_age` = the lease (the mode of older buckets). The
//! conductor also watches the key and reports, by the server's timestamps, how long after the dead
//! leader's key expired (its last write + the key's lifetime) the new leader's acquiring write came.
//!
//! The same binary is the candidate process (`--candidate ID --schema NAME`): it reports every change of
//! `is_leader()` on stdout as `<id> <leader|follower> <term> <monotonic-ns>` and reads `release` or
//! `shutdown` on stdin.
// A command-line program: printing to stdout is its job.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use leaderlease::Elector;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

const LEASE: Duration = Duration::from_millis(2000);
const RENEWAL: Duration = Duration::from_millis(600);
const JITTER: Duration = Duration::from_millis(200);

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match arg("--candidate") {
        Some(id) => candidate(id, arg("--schema").unwrap_or_else(|| "public".into())).await,
        None => conductor(arg("--rounds").and_then(|r| r.parse().ok()).unwrap_or(1)).await,
    }
}

/// One candidate process.
async fn candidate(id: String, schema: String) -> Result<(), Box<dyn std::error::Error>> {
    let builder = Elector::builder()
        .with_instance_id(id.clone())
        .with_schema(schema)
        .with_lease_duration(LEASE)
        .with_renewal_interval(RENEWAL)
        .with_jitter_range(JITTER);
    let elector = match arg("--nats") {
        #[cfg(feature = "nats")]
        Some(url) => {
            builder
                .connect_nats(&url, &arg("--bucket").unwrap_or_default())
                .await?
        }
        #[cfg(not(feature = "nats"))]
        Some(_) => return Err("built without the `nats` feature".into()),
        None => builder.connect(&database_url()).await?,
    };
    let base = Instant::now();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut was = None;
    loop {
        // Sample is_leader() itself (the authority, honouring the local deadline) every millisecond.
        let now = (elector.is_leader(), elector.term());
        if Some(now) != was {
            was = Some(now);
            let (leads, term) = now;
            let role = if leads { "leader" } else { "follower" };
            println!(
                "{id} {role} {} {}",
                term.unwrap_or(0),
                base.elapsed().as_nanos()
            );
        }
        tokio::select! {
            line = stdin.next_line() => match line?.as_deref() {
                Some("release") => elector.release().await?,
                Some("shutdown") | None => break,
                Some(_) => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
    elector.shutdown().await?;
    println!("{id} stopped 0 {}", base.elapsed().as_nanos());
    Ok(())
}

struct Node {
    child: Child,
    stdin: ChildStdin,
}

/// Starts three candidates, shows who leads, kills the leader, hands over gracefully, prints a summary.
async fn conductor(rounds: usize) -> Result<(), Box<dyn std::error::Error>> {
    let schema = format!("leaderlease_demo_{}", std::process::id());
    println!(
        "leaderlease demo: 3 candidates, lease {LEASE:?}, renewal {RENEWAL:?} ± {:?}",
        JITTER / 2
    );
    let nats = arg("--nats");
    match &nats {
        Some(url) => println!("NATS {url}, bucket {schema}\n"),
        None => println!("PostgreSQL {}, schema {schema}\n", database_url()),
    }
    #[cfg(feature = "nats")]
    let key_log = match &nats {
        Some(url) => Some(nats_key_log(url, &schema).await?),
        None => None,
    };
    #[cfg(feature = "nats")]
    let mut expiry_gaps: Vec<Duration> = Vec::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Option<bool>, u64, Instant)>();
    let mut nodes = BTreeMap::new();
    let mut next_id = 1;
    let mut spawn = |tx: mpsc::UnboundedSender<_>| -> Result<(String, Node), std::io::Error> {
        let id = format!("node-{next_id}");
        next_id += 1;
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["--candidate", &id, "--schema", &schema]);
        if let Some(url) = &nats {
            command.args(["--nats", url, "--bucket", &schema]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let [id, role, term, _] = f[..] {
                    let role = match role {
                        "leader" => Some(true),
                        "follower" => Some(false),
                        _ => None, // stopped
                    };
                    let term = term.parse().unwrap_or(0);
                    let _ = tx.send((id.to_owned(), role, term, Instant::now()));
                }
            }
        });
        Ok((id, Node { child, stdin }))
    };
    for _ in 0..3 {
        let (id, node) = spawn(tx.clone())?;
        nodes.insert(id, node);
    }

    let start = Instant::now();
    let mut view: BTreeMap<String, (bool, u64)> = BTreeMap::new();
    let mut crash_times = Vec::new();
    let mut handover_times = Vec::new();

    // Waits until someone other than `old` leads; returns (leader, term, when).
    macro_rules! next_leader {
        ($old:expr, $limit:expr) => {{
            let deadline = Instant::now() + $limit;
            loop {
                let msg = tokio::time::timeout_at(deadline.into(), rx.recv()).await;
                let Ok(Some((id, role, term, at))) = msg else {
                    break None;
                };
                let Some(leads) = role else {
                    view.remove(&id); // stopped
                    continue;
                };
                view.insert(id.clone(), (leads, term));
                show(&view, start);
                if leads && Some(&id) != $old {
                    break Some((id, term, at));
                }
            }
        }};
    }

    let Some((mut leader, mut term, _)) = next_leader!(None::<&String>, Duration::from_secs(15))
    else {
        return Err("no candidate became leader within 15 s".into());
    };
    println!("\n{leader} leads with term {term}\n");
    for round in 1..=rounds {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // 1. Crash: SIGKILL, no release. The others wait for the lease to expire in the database.
        println!("round {round}: SIGKILL {leader} (term {term})");
        let mut node = nodes.remove(&leader).expect("leader is a child");
        node.child.start_kill()?;
        let killed = Instant::now();
        node.child.wait().await?;
        view.remove(&leader);
        let (id, t, at) = next_leader!(Some(&leader), Duration::from_secs(15))
            .ok_or("no takeover within 15 s")?;
        let took = at - killed;
        println!(
            "\n{id} took over with term {t} after {} ms (lease {} ms)\n",
            took.as_millis(),
            LEASE.as_millis()
        );
        crash_times.push(took);
        #[cfg(feature = "nats")]
        if let Some((log, lives)) = &key_log {
            // The new leader's acquiring write, and the dead leader's last write before it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let log = log.lock().expect("log");
            let new = log
                .iter()
                .position(|(_, value, _)| *value == format!("0 {id}"));
            if let Some(new) = new
                && let Some((_, _, last)) = log[..new]
                    .iter()
                    .rev()
                    .find(|(put, value, _)| *put && value.ends_with(&format!(" {leader}")))
            {
                let expired = *last + *lives;
                let gap = log[new].2.duration_since(expired).unwrap_or_default();
                println!(
                    "   the dead leader's key expired {} ms after its last write; the new term was written {} ms after that (server clock)\n",
                    lives.as_millis(),
                    gap.as_millis()
                );
                expiry_gaps.push(gap);
            }
        }
        (leader, term) = (id, t);
        let (id, node) = spawn(tx.clone())?;
        nodes.insert(id, node);

        tokio::time::sleep(Duration::from_secs(2)).await;
        // 2. Graceful: the leader shuts down, deleting its lease; a follower takes over at its next poll.
        println!("round {round}: graceful shutdown of {leader} (term {term})");
        let mut node = nodes.remove(&leader).expect("leader is a child");
        let asked = Instant::now();
        node.stdin.write_all(b"shutdown\n").await?;
        view.remove(&leader); // it steps down before deleting its lease
        let (id, t, at) = next_leader!(Some(&leader), Duration::from_secs(15))
            .ok_or("no handover within 15 s")?;
        let took = at - asked;
        println!(
            "\n{id} took over with term {t} after {} ms\n",
            took.as_millis()
        );
        handover_times.push(took);
        node.child.wait().await?;
        view.remove(&leader);
        (leader, term) = (id, t);
        let (id, node) = spawn(tx.clone())?;
        nodes.insert(id, node);
    }

    for (_, mut node) in nodes {
        let _ = node.stdin.write_all(b"shutdown\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), node.child.wait()).await;
    }
    match &nats {
        #[cfg(feature = "nats")]
        Some(url) => {
            if let Ok(client) = async_nats::connect(url.as_str()).await {
                let _ = async_nats::jetstream::new(client)
                    .delete_key_value(&schema)
                    .await;
            }
        }
        #[cfg(not(feature = "nats"))]
        Some(_) => {}
        None => drop_schema(&schema).await,
    }

    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let ms = |d: &Duration| d.as_millis();
        format!(
            "median {} ms, max {} ms over {} run(s)",
            ms(&v[v.len() / 2]),
            ms(v.last().expect("non-empty")),
            v.len()
        )
    };
    println!(
        "summary (lease {} ms, renewal {} ± {} ms):",
        LEASE.as_millis(),
        RENEWAL.as_millis(),
        JITTER.as_millis() / 2
    );
    println!(
        "  takeover after SIGKILL of the leader: {}",
        stats(&mut crash_times)
    );
    println!(
        "  handover after a graceful shutdown:   {}",
        stats(&mut handover_times)
    );
    #[cfg(feature = "nats")]
    if !expiry_gaps.is_empty() {
        println!(
            "  dead leader's key expiry -> new term written (server clock): {}",
            stats(&mut expiry_gaps)
        );
    }
    Ok(())
}

/// Entries of the election's key as the server wrote them: (a put?, value, server time).
#[cfg(feature = "nats")]
type KeyLog = std::sync::Arc<std::sync::Mutex<Vec<(bool, String, std::time::SystemTime)>>>;

/// Creates the bucket (with `--max-age-bucket` without per-message TTL, `max_age` = the lease) and
/// watches the key of lock id 1; returns the log of its entries and how long a key lives in this bucket.
#[cfg(feature = "nats")]
async fn nats_key_log(
    url: &str,
    bucket: &str,
) -> Result<(KeyLog, Duration), Box<dyn std::error::Error>> {
    use futures_util::StreamExt;
    use leaderlease::nats::{Expiry, NatsBackend};
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    if std::env::args().any(|a| a == "--max-age-bucket") {
        js.create_key_value(async_nats::jetstream::kv::Config {
            bucket: bucket.to_owned(),
            history: 1,
            max_age: LEASE,
            ..Default::default()
        })
        .await?;
    }
    let (store, expiry) = NatsBackend::open_bucket(&js, bucket, LEASE).await?;
    let lives = match expiry {
        Expiry::KeyTtl { ttl, .. } => ttl,
        Expiry::BucketMaxAge => LEASE,
    };
    println!("bucket mode: {expiry:?}\n");
    let log = KeyLog::default();
    let mut watch = store.watch("lock-1").await?;
    let sink = log.clone();
    tokio::spawn(async move {
        while let Some(Ok(entry)) = watch.next().await {
            sink.lock().expect("log").push((
                entry.operation == async_nats::jetstream::kv::Operation::Put,
                String::from_utf8_lossy(&entry.value).into_owned(),
                std::time::SystemTime::from(entry.created),
            ));
        }
    });
    Ok((log, lives))
}

fn show(view: &BTreeMap<String, (bool, u64)>, start: Instant) {
    let cells: Vec<String> = view
        .iter()
        .map(|(id, (leads, term))| {
            if *leads {
                format!("{id}: LEADER (term {term})")
            } else {
                format!("{id}: follower")
            }
        })
        .collect();
    println!(
        "t={:>6.2}s  {}",
        start.elapsed().as_secs_f64(),
        cells.join(" | ")
    );
}

async fn drop_schema(schema: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(&database_url()).await {
        let sql = format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            leaderlease::schema::quote_ident(schema)
        );
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
        pool.close().await;
    }
}
