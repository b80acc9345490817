//! Helpers shared by the integration tests: the database to use, a schema per test, throwaway servers.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use leaderlease::{Elector, ElectorBuilder, PgPool};
use sqlx::postgres::PgPoolOptions;

/// `DATABASE_URL`, or the machine's server on 127.0.0.1:5432 (the test scripts start a throwaway one and
/// set `DATABASE_URL` when neither is there).
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// `NATS_URL`, or the machine's NATS server on 127.0.0.1:4222.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
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

    pub fn table(&self) -> String {
        leaderlease::schema::qualified_table(&self.name)
    }
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

/// Samples the electors every millisecond for `duration` and fails if two ever lead at once.
pub async fn assert_never_two_leaders(electors: &[&Elector], duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        let leading: Vec<_> = electors
            .iter()
            .filter(|e| e.is_leader())
            .map(|e| e.config().instance_id().to_owned())
            .collect();
        assert!(leading.len() <= 1, "two leaders at once: {leading:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub fn pg_bin(name: &str) -> PathBuf {
    for dir in [
        "/usr/lib/postgresql/15/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/17/bin",
    ] {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// A PostgreSQL server of the test's own (for tests that stop and start the database), on a free port,
/// in a temporary directory owned by `postgres`; stopped and removed on drop.
pub struct ThrowawayPg {
    pub port: u16,
    dir: PathBuf,
}

fn as_postgres(program: PathBuf, args: &[&str]) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

impl ThrowawayPg {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("ll_pg"));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        let data = dir.join("data");
        let out = as_postgres(
            pg_bin("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        )
        .output()
        .expect("initdb (package postgresql) must be installed for this test");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Self { port, dir };
        pg.pg_ctl_start();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl_start(&self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        let out = as_postgres(
            pg_bin("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &opts,
                "start",
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&self) {
        let data = self.dir.join("data");
        let _ = as_postgres(
            pg_bin("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
        .output();
    }

    pub fn restart(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for ThrowawayPg {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
