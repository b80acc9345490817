//! The batcher of a hub: it folds the renewals and lease reads of the hub's elections (of one schema)
//! into one statement each, so that the database load stays nearly flat as elections grow.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool, Row};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use super::conn::{SessionSetup, with_conn};
use super::members::{MEMBER_COLUMNS, member_ctes, member_from, member_sql};
use super::{LEASE_COLUMNS, observed_from};
use crate::backend::ObservedLease;
use crate::fleet::MemberView;
use crate::{Error, Result, lock, schema};

/// Longest a renewal or lease read waits to be batched with those of other elections of the same hub
/// (it is also at most a tenth of the election's renewal interval). A lone election never waits.
pub const MAX_BATCH_WINDOW: Duration = Duration::from_millis(100);

/// Most rows one batched statement carries.
const MAX_BATCH: usize = 1000;

/// Counts of a hub's batchers (see [`PgHub::batch_stats`](super::PgHub::batch_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batched statements run.
    pub statements: u64,
    /// Renewals and lease reads they carried.
    pub requests: u64,
    /// Cleanups run by elections that shared the hub with others (at most one per schema per half
    /// cleanup interval).
    pub cleanups: u64,
}

/// The counters behind [`BatchStats`], shared by a hub and its batchers.
#[derive(Debug, Default)]
pub(super) struct Counters {
    statements: AtomicU64,
    requests: AtomicU64,
    cleanups: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> BatchStats {
        BatchStats {
            statements: self.statements.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            cleanups: self.cleanups.load(Ordering::Relaxed),
        }
    }
}

enum Request {
    Renew {
        lock_id: i32,
        leader_id: Arc<str>,
        term: i64,
        lease_ms: f64,
        window: Duration,
        reply: oneshot::Sender<Result<bool>>,
    },
    Observe {
        lock_id: i32,
        window: Duration,
        reply: oneshot::Sender<Result<Option<ObservedLease>>>,
    },
    /// A fleet member's renewal: rides on the batch's lease renewal statement when there is one.
    Member {
        member: MemberRenewal,
        window: Duration,
        reply: oneshot::Sender<Result<Vec<MemberView>>>,
    },
}

/// The parameters of a member renewal.
struct MemberRenewal {
    id: Arc<str>,
    version: Option<Arc<str>>,
    lease_ms: f64,
}

type MemberReply = (MemberRenewal, oneshot::Sender<Result<Vec<MemberView>>>);

impl Request {
    fn window(&self) -> Duration {
        match self {
            Request::Renew { window, .. }
            | Request::Observe { window, .. }
            | Request::Member { window, .. } => *window,
        }
    }
}

/// The batcher of one schema in a hub: a task that collects requests for up to the smallest window
/// among them, then runs one renewal statement and one read statement for all.
#[derive(Clone, Debug)]
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Request>,
    members: Arc<AtomicUsize>,
    /// When an election of this schema and hub last ran the cleanup (which covers every lock id).
    last_cleanup: Arc<Mutex<Option<Instant>>>,
    stats: Arc<Counters>,
}

impl Batcher {
    /// Starts the batcher of `schema` on the hub's `pool`; it ends with `stop`.
    pub(super) fn spawn(
        pool: &PgPool,
        timeout: Duration,
        setup: &SessionSetup,
        stats: &Arc<Counters>,
        stop: &CancellationToken,
        schema: &str,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let runner = BatchRunner {
            pool: pool.clone(),
            timeout,
            setup: setup.clone(),
            renew: renew_batch_sql(schema),
            observe: observe_batch_sql(schema),
            member: member_sql(schema),
            renew_with_member: renew_with_member_sql(schema),
            stats: stats.clone(),
        };
        tokio::spawn(
            runner
                .run(rx, stop.clone())
                .instrument(info_span!("leaderlease_batcher")),
        );
        Self {
            tx,
            members: Arc::default(),
            last_cleanup: Arc::default(),
            stats: stats.clone(),
        }
    }

    /// One more election of the hub uses this batcher.
    pub(super) fn enter(&self) {
        self.members.fetch_add(1, Ordering::AcqRel);
    }

    /// One election has stopped using this batcher.
    pub(super) fn leave(&self) {
        self.members.fetch_sub(1, Ordering::AcqRel);
    }

    /// True when more than one election uses the batcher, so that waiting a moment for a batch pays off.
    pub(super) fn batched(&self) -> bool {
        self.members.load(Ordering::Acquire) > 1
    }

    /// Whether an election should run the cleanup now: the cleanup deletes long-expired leases of every
    /// lock id in the schema, so among the elections of one hub and schema it runs at most once per half
    /// `interval`; the others skip their turn.
    pub(super) fn claim_cleanup(&self, interval: Duration) -> bool {
        let mut last = lock(&self.last_cleanup);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < interval / 2) {
            return false;
        }
        *last = Some(now);
        self.stats.cleanups.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Renews the lease of `lock_id` held by `leader_id` with `term`, in the next batch.
    pub(super) async fn renew(
        &self,
        lock_id: i32,
        leader_id: Arc<str>,
        term: i64,
        lease_ms: f64,
        window: Duration,
    ) -> Result<bool> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Renew {
            lock_id,
            leader_id,
            term,
            lease_ms,
            window,
            reply,
        })?;
        rx.await.unwrap_or(Err(Error::Shutdown))
    }

    /// Reads the lease of `lock_id`, in the next batch.
    pub(super) async fn observe(
        &self,
        lock_id: i32,
        window: Duration,
    ) -> Result<Option<ObservedLease>> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Observe {
            lock_id,
            window,
            reply,
        })?;
        rx.await.unwrap_or(Err(Error::Shutdown))
    }

    /// Renews the fleet member `id` and reads the live members, in the next batch: in the statement
    /// that renews the batch's leases when there are any, else in one of its own.
    pub(super) async fn member(
        &self,
        id: Arc<str>,
        version: Option<Arc<str>>,
        lease_ms: f64,
        window: Duration,
    ) -> Result<Vec<MemberView>> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Member {
            member: MemberRenewal {
                id,
                version,
                lease_ms,
            },
            window,
            reply,
        })?;
        rx.await.unwrap_or(Err(Error::Shutdown))
    }

    fn send(&self, request: Request) -> Result<()> {
        self.tx.send(request).map_err(|_| Error::Shutdown)
    }
}

fn renew_batch_sql(schema: &str) -> String {
    renew_update(schema, 1)
}

/// The batched renewal of leases, with its four arrays from `$p` on.
fn renew_update(schema: &str, p: usize) -> String {
    let t = schema::qualified_table(schema);
    let (a, b, c, d) = (p, p + 1, p + 2, p + 3);
    format!(
        "UPDATE {t} AS l SET expires_at = clock_timestamp() + r.ms * interval '1 millisecond', \
         renewed_at = clock_timestamp() \
         FROM unnest(${a}::int4[], ${b}::text[], ${c}::int8[], ${d}::float8[]) AS r(id, leader_id, term, ms) \
         WHERE l.id = r.id AND l.leader_id = r.leader_id AND l.term = r.term \
           AND l.expires_at > clock_timestamp() \
         RETURNING l.id, l.leader_id, l.term"
    )
}

/// The batched renewal of leases and one member's renewal in one statement: lease rows (id, leader id,
/// term) then member rows ([`MEMBER_COLUMNS`] from column 3 on); a member row has a non-null column 3.
fn renew_with_member_sql(schema: &str) -> String {
    format!(
        "WITH {}, r AS ({}) \
         SELECT r.id, r.leader_id, r.term, NULL::text, NULL::text, NULL::int8, NULL::float8 FROM r \
         UNION ALL SELECT NULL::int4, NULL::text, NULL::int8, {MEMBER_COLUMNS} FROM mm",
        member_ctes(schema, 5),
        renew_update(schema, 1)
    )
}

fn observe_batch_sql(schema: &str) -> String {
    let t = schema::qualified_table(schema);
    format!("SELECT id, {LEASE_COLUMNS} FROM {t} WHERE id = ANY($1::int4[])")
}

struct BatchRunner {
    pool: PgPool,
    timeout: Duration,
    setup: SessionSetup,
    renew: String,
    observe: String,
    member: String,
    renew_with_member: String,
    stats: Arc<Counters>,
}

/// What identifies a renewal in a batch: lock id, leader id and term. Two elections of one hub may share
/// the lock id and the leader id (a fixed instance id given to two workers, an election restarted inside
/// the process); only the term tells the holder of the row from the one retrying an earlier lease.
type RenewKey = (i32, Arc<str>, i64);
type RenewReply = (RenewKey, oneshot::Sender<Result<bool>>);
type ObserveReply = (i32, oneshot::Sender<Result<Option<ObservedLease>>>);

impl BatchRunner {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Request>, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            };
            let mut until = Instant::now() + first.window();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                tokio::select! {
                    biased;
                    r = rx.recv() => match r {
                        Some(r) => {
                            until = until.min(Instant::now() + r.window());
                            batch.push(r);
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
            let mut renews = Vec::new();
            let mut observes = Vec::new();
            let mut members: Vec<MemberReply> = Vec::new();
            let (mut ids, mut leaders, mut terms, mut ms) = (vec![], vec![], vec![], vec![]);
            for r in batch {
                match r {
                    Request::Renew {
                        lock_id,
                        leader_id,
                        term,
                        lease_ms,
                        reply,
                        ..
                    } => {
                        ids.push(lock_id);
                        leaders.push(leader_id.to_string());
                        terms.push(term);
                        ms.push(lease_ms);
                        renews.push(((lock_id, leader_id, term), reply));
                    }
                    Request::Observe { lock_id, reply, .. } => observes.push((lock_id, reply)),
                    Request::Member { member, reply, .. } => members.push((member, reply)),
                }
            }
            // The first member renewal rides on the lease renewal statement, if there is one.
            let riding = if renews.is_empty() || members.is_empty() {
                None
            } else {
                Some(members.remove(0))
            };
            let statements = u64::from(!renews.is_empty())
                + u64::from(!observes.is_empty())
                + members.len() as u64;
            let requests = (renews.len() + observes.len()) as u64;
            self.stats
                .statements
                .fetch_add(statements, Ordering::Relaxed);
            self.stats.requests.fetch_add(requests, Ordering::Relaxed);
            let renewed = async {
                if renews.is_empty() {
                    return;
                }
                let out = match riding {
                    None => self.renew_all(&ids, &leaders, &terms, &ms).await,
                    Some((member, reply)) => {
                        match self
                            .renew_all_with_member(&ids, &leaders, &terms, &ms, &member)
                            .await
                        {
                            Ok((leases, list)) => {
                                let _ = reply.send(Ok(list));
                                Ok(leases)
                            }
                            // The member table may be gone (dropped by hand): the leases must not
                            // suffer for it, so they are renewed again on their own.
                            Err(e) if is_missing_relation(&e) => {
                                let _ = reply.send(Err(copy_error(&e)));
                                self.renew_all(&ids, &leaders, &terms, &ms).await
                            }
                            Err(e) => {
                                let _ = reply.send(Err(copy_error(&e)));
                                Err(e)
                            }
                        }
                    }
                };
                answer_renewals(renews, out);
            };
            let alone = async {
                for (member, reply) in members {
                    let _ = reply.send(self.member_alone(&member).await);
                }
            };
            let read = async {
                if !observes.is_empty() {
                    let wanted: Vec<i32> = observes.iter().map(|(id, _)| *id).collect();
                    let out = self.observe_all(&wanted).await;
                    answer_reads(observes, out);
                }
            };
            tokio::join!(renewed, read, alone);
        }
    }

    async fn renew_all(
        &self,
        ids: &[i32],
        leaders: &[String],
        terms: &[i64],
        ms: &[f64],
    ) -> Result<Vec<(i32, String, i64)>> {
        let rows = with_conn!(self, "renew", |c| sqlx::query(AssertSqlSafe(
            self.renew.as_str()
        ))
        .persistent(self.setup.persistent())
        .bind(ids)
        .bind(leaders)
        .bind(terms)
        .bind(ms)
        .fetch_all(c))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn renew_all_with_member(
        &self,
        ids: &[i32],
        leaders: &[String],
        terms: &[i64],
        ms: &[f64],
        member: &MemberRenewal,
    ) -> Result<(Vec<(i32, String, i64)>, Vec<MemberView>)> {
        let rows = with_conn!(self, "renew", |c| sqlx::query(AssertSqlSafe(
            self.renew_with_member.as_str()
        ))
        .persistent(self.setup.persistent())
        .bind(ids)
        .bind(leaders)
        .bind(terms)
        .bind(ms)
        .bind(&*member.id)
        .bind(member.version.as_deref())
        .bind(member.lease_ms)
        .fetch_all(c))?;
        let mut leases = Vec::new();
        let mut list = Vec::new();
        for r in &rows {
            if r.get::<Option<String>, _>(3).is_some() {
                list.push(member_from(r, 3));
            } else {
                leases.push((r.get(0), r.get(1), r.get(2)));
            }
        }
        Ok((leases, list))
    }

    async fn member_alone(&self, member: &MemberRenewal) -> Result<Vec<MemberView>> {
        let rows = with_conn!(self, "renew member", |c| sqlx::query(AssertSqlSafe(
            self.member.as_str()
        ))
        .persistent(self.setup.persistent())
        .bind(&*member.id)
        .bind(member.version.as_deref())
        .bind(member.lease_ms)
        .fetch_all(c))?;
        Ok(rows.iter().map(|r| member_from(r, 0)).collect())
    }

    async fn observe_all(&self, ids: &[i32]) -> Result<Vec<(i32, ObservedLease)>> {
        let rows = with_conn!(self, "observe", |c| sqlx::query(AssertSqlSafe(
            self.observe.as_str()
        ))
        .persistent(self.setup.persistent())
        .bind(ids)
        .fetch_all(c))?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), observed_from(row, 1)))
            .collect())
    }
}

/// Tells each renewal whether its row was renewed: the row of its lock id, leader id and term.
fn answer_renewals(renews: Vec<RenewReply>, out: Result<Vec<(i32, String, i64)>>) {
    match out {
        Ok(done) => {
            for ((id, leader, term), reply) in renews {
                let ok = done
                    .iter()
                    .any(|(i, l, t)| *i == id && **l == *leader && *t == term);
                let _ = reply.send(Ok(ok));
            }
        }
        Err(e) => {
            for (_, reply) in renews {
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
    }
}

fn answer_reads(observes: Vec<ObserveReply>, out: Result<Vec<(i32, ObservedLease)>>) {
    match out {
        Ok(rows) => {
            for (id, reply) in observes {
                let lease = rows.iter().find(|(i, _)| *i == id).map(|(_, l)| l.clone());
                let _ = reply.send(Ok(lease));
            }
        }
        Err(e) => {
            for (_, reply) in observes {
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
    }
}

/// Whether a statement failed because a table it names does not exist (SQLSTATE 42P01).
fn is_missing_relation(e: &Error) -> bool {
    match e {
        Error::Database {
            source: sqlx::Error::Database(d),
            ..
        } => d.code().as_deref() == Some("42P01"),
        _ => false,
    }
}

/// An error of a batched statement, for each election in the batch (the driver's error cannot be
/// cloned: its message is kept).
fn copy_error(e: &Error) -> Error {
    match e {
        Error::Timeout { operation, after } => Error::Timeout {
            operation,
            after: *after,
        },
        Error::ReadOnly { server, why } => Error::ReadOnly {
            server: server.clone(),
            why: why.clone(),
        },
        Error::Database { operation, source } => Error::Database {
            operation,
            source: sqlx::Error::Protocol(format!("batched statement failed: {source}")),
        },
        other => Error::Store {
            operation: "batch",
            source: other.to_string().into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PgHub;

    /// The batcher on a real PostgreSQL (`DATABASE_URL`, or the machine's server), in a schema of its own.
    #[tokio::test]
    async fn a_batched_renewal_succeeds_only_for_the_term_the_row_holds() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let hub = PgHub::connect(&url, Duration::from_secs(2)).await.unwrap();
        let name = format!(
            "ll_batch_term_{}_{:04x}",
            std::process::id(),
            rand::random::<u16>()
        );
        sqlx::raw_sql(AssertSqlSafe(schema::up_sql(&name)))
            .execute(hub.pool())
            .await
            .unwrap();
        // Two elections of one hub with the same lock id and instance id ("twin"): the row holds the
        // newer one's term 12, the other still retries the renewal of its earlier term 11.
        let t = schema::qualified_table(&name);
        sqlx::raw_sql(AssertSqlSafe(format!(
            "INSERT INTO {t} (id, leader_id, expires_at, term) \
             VALUES (5, 'twin', clock_timestamp() + interval '1 minute', 12)"
        )))
        .execute(hub.pool())
        .await
        .unwrap();
        let stale_member = hub.join(&name, 5, None);
        let current_member = hub.join(&name, 5, None);
        let twin: Arc<str> = "twin".into();
        let window = Duration::from_millis(50);
        let before = hub.batch_stats();
        let (stale, current) = tokio::join!(
            stale_member.renew(twin.clone(), 11, 60_000.0, window),
            current_member.renew(twin.clone(), 12, 60_000.0, window),
        );
        let after = hub.batch_stats();
        let outcome = (stale.unwrap(), current.unwrap());
        stale_member.unregister();
        current_member.unregister();
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            schema::quote_ident(&name)
        )))
        .execute(hub.pool())
        .await
        .unwrap();
        hub.close().await;
        assert_eq!(
            (
                after.statements - before.statements,
                after.requests - before.requests
            ),
            (1, 2),
            "both renewals went out in one statement"
        );
        assert_eq!(
            outcome,
            (false, true),
            "(renewal of term 11, renewal of term 12): only the term the row holds is renewed"
        );
    }
}
