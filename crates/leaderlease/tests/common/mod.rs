//! Helpers shared by the integration tests: the database to use, a schema per test, throwaway servers.
#![allow(dead_code)]

use std::borrow::Borrow;
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use leaderlease::{Elector, ElectorBuilder, PgPool};
use sqlx::postgres::PgPoolOptions;

#[cfg(feature = "nats")]
mod bucket;
mod nats_server;
#[cfg(feature = "nats")]
#[allow(unused_imports)]
pub use bucket::Bucket;
#[allow(unused_imports)]
pub use nats_server::{nats_server_bin, nats_url, skip_nats, skip_nats_bin};

/// `DATABASE_URL`, or the machine's server on 127.0.0.1:5432 (the test scripts start a throwaway one and
/// set `DATABASE_URL` when neither is there).
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Writes `line` to stderr past the test harness's capture (which holds a passing test's output back), so
/// that a skipped part of the suite says so in the run's output.
pub fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `url` with `application_name` set (replacing one it has), so a test can find (and terminate) its
/// elector's connections. Edited with a URL parser, so credentials, other parameters and encodings in
/// `DATABASE_URL` are kept.
pub fn url_with_app(url: &str, app: &str) -> String {
    let mut parsed = parse_url(url);
    let others: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != "application_name")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(others)
        .append_pair("application_name", app);
    parsed.into()
}

/// `url` with another user and no password (for roles a test creates; the test servers trust local
/// connections). Edited with a URL parser, so it holds for any valid `DATABASE_URL`.
pub fn url_as_user(url: &str, user: &str) -> String {
    let mut parsed = parse_url(url);
    parsed
        .set_username(user)
        .and_then(|()| parsed.set_password(None))
        .unwrap_or_else(|()| panic!("{url} cannot carry a user name"));
    parsed.into()
}

fn parse_url(url: &str) -> url::Url {
    url::Url::parse(url).unwrap_or_else(|e| panic!("DATABASE_URL {url:?} is not a valid URL: {e}"))
}

/// Short settings for tests: lease 1.5 s, renewal 0.4 s ± 0.1 s.
pub fn fast() -> ElectorBuilder {
    Elector::builder()
        .with_lease_duration(Duration::from_millis(1500))
        .with_renewal_interval(Duration::from_millis(400))
        .with_jitter_range(Duration::from_millis(200))
}

/// Settings of a follower that polls rarely: lease 6 s, renewal 4 s ± 0.1 s.
pub fn slow_poller() -> ElectorBuilder {
    Elector::builder()
        .with_lease_duration(Duration::from_secs(6))
        .with_renewal_interval(Duration::from_secs(4))
        .with_jitter_range(Duration::from_millis(200))
}

/// A free TCP port on 127.0.0.1 (free when probed: nothing listens on it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test run and call.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}_{}_{n}_{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// A schema of its own for one test, dropped (with everything in it) when the value is dropped.
pub struct TestSchema {
    pub name: String,
    pub pool: PgPool,
    url: String,
}

impl TestSchema {
    pub async fn new(prefix: &str) -> Self {
        Self::with_name(unique(&format!("ll_{prefix}"))).await
    }

    pub async fn with_name(name: String) -> Self {
        let url = database_url();
        let pool = admin_pool(&url).await;
        Self { name, pool, url }
    }

    /// Elector settings for this schema, with short timings.
    pub fn builder(&self) -> ElectorBuilder {
        fast().with_schema(self.name.clone())
    }

    /// [`slow_poller`] settings for this schema, without cleanup: a takeover sooner than 4 s can only
    /// come from waking at the observed expiry or a release notification.
    pub fn slow_poller(&self) -> ElectorBuilder {
        slow_poller()
            .with_schema(self.name.clone())
            .with_clean_interval(Duration::from_secs(3600))
    }

    /// An elector of [`builder`](Self::builder) with instance id `id`, started on [`database_url`].
    pub async fn elector(&self, id: &str) -> Elector {
        self.builder()
            .with_instance_id(id)
            .connect(&database_url())
            .await
            .unwrap()
    }

    pub fn table(&self) -> String {
        leaderlease::schema::qualified_table(&self.name)
    }

    /// The schema's term sequence, quoted (`"schema".leader_lease_term_seq`).
    pub fn sequence(&self) -> String {
        format!(
            "{}.leader_lease_term_seq",
            leaderlease::schema::quote_ident(&self.name)
        )
    }

    /// Runs `sql` (one or more statements) on the schema's pool.
    pub async fn exec(&self, sql: impl Into<String>) {
        exec(&self.pool, sql).await;
    }
}

/// Runs `sql` (one or more statements, as one simple query: `ALTER SYSTEM` refuses a transaction block).
pub async fn exec(pool: &PgPool, sql: impl Into<String>) {
    let sql = sql.into();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// How many connections of application `app` the server has.
pub async fn connections_of(pool: &PgPool, app: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(app)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Terminates the connections of application `app`; returns how many there were.
pub async fn terminate_app(pool: &PgPool, app: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1) t",
    )
    .bind(app)
    .fetch_one(pool)
    .await
    .unwrap()
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let sql = format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            leaderlease::schema::quote_ident(&self.name)
        );
        // Drop runs outside async context: a short-lived runtime on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(pool) = PgPoolOptions::new().max_connections(1).connect(&url).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

pub async fn admin_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {url}: {e}. Set DATABASE_URL, or run the tests through \
                 scripts/test.sh, which starts a throwaway server when none is reachable"
            )
        })
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns the time it took.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// Waits up to `limit` for one of `electors` to lead; returns its index.
pub async fn wait_for_leader<E: Borrow<Elector>>(electors: &[E], limit: Duration) -> usize {
    let leader = || electors.iter().position(|e| e.borrow().is_leader());
    wait_until(limit, "a leader", || leader().is_some()).await;
    leader().unwrap()
}

/// Samples the electors every millisecond for `duration` and fails if two ever lead at once.
pub async fn assert_never_two_leaders<E: Borrow<Elector>>(electors: &[E], duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        let leading: Vec<_> = electors
            .iter()
            .map(Borrow::borrow)
            .filter(|e: &&Elector| e.is_leader())
            .map(|e| e.config().instance_id().to_owned())
            .collect();
        assert!(leading.len() <= 1, "two leaders at once: {leading:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The project's one throwaway-PostgreSQL script (also used by the shell scripts and the chaos harness).
const THROWAWAY_PG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/throwaway-pg.sh");

fn throwaway_pg(args: &[&str]) -> std::process::Output {
    let out = Command::new("bash")
        .arg(THROWAWAY_PG)
        .args(args)
        .output()
        .expect("bash runs scripts/throwaway-pg.sh");
    assert!(
        out.status.success(),
        "throwaway-pg.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A PostgreSQL server of the test's own (for tests that stop and start the database), on a free port,
/// in a temporary directory (scripts/throwaway-pg.sh: initdb, as `postgres` when root); removed on drop.
pub struct ThrowawayPg {
    pub port: u16,
    dir: String,
}

impl ThrowawayPg {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With `ssl = on` and test certificates in `DIR/tls` (see scripts/throwaway-pg.sh `--tls`).
    pub fn start_tls() -> Self {
        Self::start_with(&["--tls"])
    }

    /// With more arguments of `throwaway-pg.sh start` (`-c name=value`, `--tls`).
    pub fn start_with(args: &[&str]) -> Self {
        let port = free_port();
        let port_arg = port.to_string();
        let mut all = vec!["start", "--port", &port_arg];
        all.extend_from_slice(args);
        let out = throwaway_pg(&all);
        let dir = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Self { port, dir }
    }

    /// A file the server's `--tls` made (`ca.pem`, `other-ca.pem`, `client.pem`, `client.key`).
    pub fn tls_path(&self, name: &str) -> String {
        format!("{}/tls/{name}", self.dir)
    }

    /// The text of [`tls_path`](Self::tls_path).
    pub fn tls_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.tls_path(name)).expect("a file of the server's --tls")
    }

    /// The server's directory (for its log, `DIR/log`).
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// A hot standby of this server (scripts/throwaway-pg.sh `standby`: pg_basebackup, streaming
    /// replication), with more settings (`-c name=value`).
    pub fn standby(&self, args: &[&str]) -> Self {
        let port = free_port();
        let port_arg = port.to_string();
        let mut all = vec!["standby", self.dir.as_str(), "--port", &port_arg];
        all.extend_from_slice(args);
        let out = throwaway_pg(&all);
        let dir = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Self { port, dir }
    }

    /// Promotes this standby to a primary (waits until it accepts writes).
    pub fn promote(&self) {
        throwaway_pg(&["promote", &self.dir]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): sessions are cut, nothing is flushed.
    pub fn stop(&self) {
        throwaway_pg(&["stop", &self.dir, "immediate"]);
    }

    /// Starts the stopped server again, same port and settings.
    pub fn restart(&self) {
        throwaway_pg(&["start-again", &self.dir]);
    }
}

impl Drop for ThrowawayPg {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(THROWAWAY_PG)
            .args(["destroy", &self.dir])
            .output();
    }
}

/// The project's throwaway-PgBouncer script.
const THROWAWAY_PGBOUNCER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/throwaway-pgbouncer.sh"
);

/// A PgBouncer of the test's own in front of `pg` (scripts/throwaway-pgbouncer.sh), on a free port, in
/// `mode` (`transaction` or `session`) with `pool_size` server connections per user and database;
/// removed on drop.
pub struct ThrowawayPgBouncer {
    pub port: u16,
    dir: String,
}

impl ThrowawayPgBouncer {
    pub fn start(pg: &ThrowawayPg, mode: &str, pool_size: u32) -> Self {
        let port = free_port();
        let out = Command::new("bash")
            .arg(THROWAWAY_PGBOUNCER)
            .args([
                "start",
                "--to",
                &pg.port.to_string(),
                "--mode",
                mode,
                "--port",
                &port.to_string(),
                "--pool-size",
                &pool_size.to_string(),
            ])
            .output()
            .expect("bash runs scripts/throwaway-pgbouncer.sh");
        assert!(
            out.status.success(),
            "throwaway-pgbouncer.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Self { port, dir }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for ThrowawayPgBouncer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(THROWAWAY_PGBOUNCER)
            .args(["destroy", &self.dir])
            .output();
    }
}

/// A TCP proxy on 127.0.0.1 whose target can be switched, as a virtual IP or a failover proxy moves to a
/// promoted standby: [`switch`](Self::switch) sends new connections to the new target and cuts the open
/// ones.
pub struct SwitchProxy {
    pub port: u16,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl SwitchProxy {
    pub async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(target));
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let to = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let port = to.load(Ordering::SeqCst);
                let mut cut = cut_rx.clone();
                cut.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            target,
            cut,
            task,
        }
    }

    /// New connections go to `port`; open ones are cut.
    pub fn switch(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
        self.cut.send_modify(|g| *g += 1);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for SwitchProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The ids of the members `m` lists now.
pub fn member_ids(m: &leaderlease::fleet::Membership) -> Vec<String> {
    m.members().into_iter().map(|m| m.id).collect()
}

/// Waits until `m` lists exactly `want`; returns how long that took.
pub async fn wait_for_members(
    m: &leaderlease::fleet::Membership,
    want: &[&str],
    limit: Duration,
) -> Duration {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let start = std::time::Instant::now();
    loop {
        if member_ids(m) == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{} lists {:?}, not {want:?}, after {limit:?}",
            m.id(),
            member_ids(m)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
