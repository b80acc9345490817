//! Where and how the PostgreSQL backend connects: a connection string with libpq's meaning, settings
//! given field by field (a TypeORM DataSource's), TLS from values (PEM text, not only files), and the
//! pooler between the elector and the database.
//!
//! [`PgSettings::connect_options`] turns them into sqlx's `PgConnectOptions` structurally: host, user,
//! password and database are never spliced into a string, and the certificates are handed over as they
//! are.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::config::ConfigError;
use crate::{Error, Result};

/// A pooler between the elector and PostgreSQL, and how it keeps server sessions. See docs/design.md,
/// "Production PostgreSQL".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Pooler {
    /// A direct connection (or a pooler that passes startup options through and keeps sessions):
    /// the session settings travel as startup options, statements are prepared once per connection, and
    /// the `LISTEN` connection is used (while its probe gets through).
    #[default]
    None,
    /// A pooler in session mode (PgBouncer `pool_mode = session`): a client connection keeps one server
    /// session, but startup options are refused (PgBouncer's "unsupported startup parameter"), so the
    /// session settings are set with `SET` once per connection after it opens.
    Session,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`, most managed "pooled" URLs): a
    /// server session is lent for one transaction at a time. Every statement then runs in a transaction
    /// of its own that begins with `SET LOCAL` of the settings, no prepared statement outlives its
    /// transaction (unnamed statements, which need no `max_prepared_statements`), and no `LISTEN`
    /// connection is opened: candidates poll, so a release is taken within `renewal_interval +
    /// jitter_range / 2` instead of milliseconds.
    Transaction,
}

impl Pooler {
    /// The name as [`FromStr`] takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooler::None => "none",
            Pooler::Session => "session",
            Pooler::Transaction => "transaction",
        }
    }
}

impl FromStr for Pooler {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "none" => Ok(Pooler::None),
            "session" => Ok(Pooler::Session),
            "transaction" => Ok(Pooler::Transaction),
            other => Err(ConfigError::new(
                "pooler",
                format!("must be `none`, `session` or `transaction` (got {other:?})"),
            )),
        }
    }
}

/// TLS settings given as values, as a TypeORM DataSource's `ssl` object holds them.
#[derive(Clone, Default)]
pub struct TlsSettings {
    /// The `sslmode` (default [`PgSslMode::VerifyFull`]: `ssl: true` in TypeORM checks the certificate
    /// and the host name, as Node.js does). A connection string's own `sslmode` wins over it.
    pub mode: Option<PgSslMode>,
    /// Trusted CA certificate(s), PEM. Used besides the public (webpki) roots that sqlx trusts. A
    /// connection string's `sslrootcert` wins over it.
    pub ca: Option<String>,
    /// Client certificate chain, PEM (with `key`).
    pub cert: Option<String>,
    /// Client private key, PEM, unencrypted (with `cert`).
    pub key: Option<String>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("mode", &self.mode)
            .field("ca", &self.ca.as_ref().map(|_| ".."))
            .field("cert", &self.cert.as_ref().map(|_| ".."))
            .field("key", &self.key.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

/// Connection settings, field by field. A `url` is read as libpq reads a connection string; the other
/// fields fill in what it does not set (as node-postgres merges a DataSource's `url` with its fields:
/// what the URL says wins). Unset fields fall back to the `PG*` environment variables and
/// `~/.pgpass`, as with libpq; the host to `localhost` when neither a URL nor a host is given.
///
/// ```
/// use leaderlease::{PgSettings, Pooler, TlsSettings};
///
/// let settings = PgSettings {
///     host: Some("db.internal".into()),
///     username: Some("app".into()),
///     database: Some("jobs".into()),
///     tls: Some(TlsSettings { ca: Some("-----BEGIN CERTIFICATE-----\n...".into()), ..Default::default() }),
///     pooler: Pooler::Transaction,
///     ..Default::default()
/// };
/// let options = settings.connect_options()?;
/// assert_eq!(options.get_host(), "db.internal");
/// # Ok::<(), leaderlease::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct PgSettings {
    /// A connection string (`postgres://user:password@host:port/db?sslmode=...`).
    pub url: Option<String>,
    /// Host name, IP address, or the directory of a Unix socket (starting with `/`).
    pub host: Option<String>,
    /// Port (default 5432).
    pub port: Option<u16>,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Database name.
    pub database: Option<String>,
    /// `application_name` of the sessions (default `leaderlease`).
    pub application_name: Option<String>,
    /// Startup `options`, as libpq's (`-c search_path=app`). A pooler may refuse them.
    pub options: Option<String>,
    /// TLS settings given as values.
    pub tls: Option<TlsSettings>,
    /// The pooler in between, if any.
    pub pooler: Pooler,
}

impl fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &self.url.as_ref().map(|u| redact_url(u)))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("database", &self.database)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("tls", &self.tls)
            .field("pooler", &self.pooler)
            .finish()
    }
}

/// The user when neither the URL nor the fields name one, as libpq and node-postgres take it: `PGUSER`,
/// else the login name (`$USER`; `%USERNAME%` on Windows). `None` leaves it to sqlx, whose own fallback
/// (the `whoami` crate) answers "anonymous" on some builds, a role no server has.
fn login_name(pguser: Option<String>, login: Option<String>) -> Option<String> {
    pguser
        .filter(|u| !u.is_empty())
        .or(login.filter(|u| !u.is_empty()))
}

fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("(hidden)"));
            }
            u.to_string()
        }
        Err(_) => "(unparsable)".to_owned(),
    }
}

/// The connection-string parameters that name the host, port, user, password and database.
const HOST_KEYS: [&str; 2] = ["host", "hostaddr"];
const ROOT_CERT_KEYS: [&str; 3] = ["sslrootcert", "ssl-root-cert", "ssl-ca"];
const CERT_KEYS: [&str; 2] = ["sslcert", "ssl-cert"];
const KEY_KEYS: [&str; 2] = ["sslkey", "ssl-key"];
const MODE_KEYS: [&str; 2] = ["sslmode", "ssl-mode"];

impl PgSettings {
    /// Settings from a connection string alone.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// The sqlx options these settings describe. A connection string is read as libpq reads it, also
    /// where sqlx differs: `sslmode=require` with an `sslrootcert` verifies the certificate against it
    /// (as `verify-ca`), and `sslrootcert=system` means the public roots with `verify-full`.
    pub fn connect_options(&self) -> Result<PgConnectOptions> {
        let invalid = |rule: String| Error::Config(ConfigError::new("url", rule));
        let mut url = match &self.url {
            Some(s) => url::Url::parse(s).map_err(|e| Error::Unreachable {
                message: format!("invalid connection string: {e}"),
                source: None,
            })?,
            None => url::Url::parse("postgres://").expect("a constant URL"),
        };
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(invalid(format!(
                "must start with postgres:// or postgresql:// (got {}://)",
                url.scheme()
            )));
        }
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let has = |keys: &[&str]| pairs.iter().any(|(k, _)| keys.contains(&k.as_str()));
        let value = |keys: &[&str]| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| keys.contains(&k.as_str()))
                .map(|(_, v)| v.clone())
        };
        let url_mode = value(&MODE_KEYS);
        let url_root = value(&ROOT_CERT_KEYS);
        // `sslrootcert=system` (libpq 16): the public roots, and verify-full unless said otherwise;
        // sqlx would look for a file named `system`.
        let system_roots = url_root.as_deref() == Some("system");
        if system_roots {
            if let Some(mode) = &url_mode
                && mode != "verify-full"
            {
                return Err(invalid(format!(
                    "sslrootcert=system needs sslmode=verify-full, as in libpq (got sslmode={mode})"
                )));
            }
            let kept: Vec<_> = pairs
                .iter()
                .filter(|(k, _)| !ROOT_CERT_KEYS.contains(&k.as_str()))
                .cloned()
                .collect();
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        let url_has_host = url.host_str().is_some_and(|h| !h.is_empty()) || has(&HOST_KEYS);
        let url_has_user = !url.username().is_empty() || has(&["user"]);
        let url_has_password = url.password().is_some() || has(&["password"]);
        let url_has_db = !url.path().trim_start_matches('/').is_empty() || has(&["dbname"]);
        let url_has_port = url.port().is_some() || has(&["port"]);
        {
            // The fields fill in what the URL does not say, as query parameters (encoded by the URL
            // library, and read by sqlx after the URL's own parts).
            let mut q = url.query_pairs_mut();
            if !url_has_host {
                let host = match &self.host {
                    Some(h) if !h.is_empty() => h.as_str(),
                    _ if self.url.is_none() => "localhost",
                    _ => "",
                };
                if !host.is_empty() {
                    q.append_pair("host", host);
                }
            }
            if !url_has_port && let Some(port) = self.port {
                q.append_pair("port", &port.to_string());
            }
            if !url_has_user {
                let user = self.username.clone().or_else(|| {
                    login_name(
                        std::env::var("PGUSER").ok(),
                        std::env::var(if cfg!(windows) { "USERNAME" } else { "USER" }).ok(),
                    )
                });
                if let Some(user) = user {
                    q.append_pair("user", &user);
                }
            }
            if !url_has_password && let Some(password) = &self.password {
                q.append_pair("password", password);
            }
            if !url_has_db && let Some(db) = &self.database {
                q.append_pair("dbname", db);
            }
            if !has(&["application_name"])
                && let Some(name) = &self.application_name
            {
                q.append_pair("application_name", name);
            }
            if !has(&["options"])
                && let Some(options) = &self.options
            {
                q.append_pair("options", options);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let mut options =
            PgConnectOptions::from_str(url.as_str()).map_err(|e| Error::Unreachable {
                message: format!("invalid connection string: {e}"),
                source: Some(e),
            })?;
        if system_roots && url_mode.is_none() {
            options = options.ssl_mode(PgSslMode::VerifyFull);
        }
        if let Some(tls) = &self.tls {
            if url_mode.is_none() && !system_roots {
                options = options.ssl_mode(tls.mode.unwrap_or(PgSslMode::VerifyFull));
            }
            if url_root.is_none()
                && let Some(ca) = &tls.ca
            {
                options = options.ssl_root_cert_from_pem(pem("ssl.ca", ca)?);
            }
            let cert = (!has(&CERT_KEYS)).then_some(tls.cert.as_ref()).flatten();
            let key = (!has(&KEY_KEYS)).then_some(tls.key.as_ref()).flatten();
            if let Some(cert) = cert {
                options = options.ssl_client_cert_from_pem(pem("ssl.cert", cert)?);
            }
            if let Some(key) = key {
                options = options.ssl_client_key_from_pem(pem("ssl.key", key)?);
            }
        }
        // libpq: "if a root CA file exists, the behavior of sslmode=require will be the same as that of
        // verify-ca". sqlx's `require` never verifies; a connection string means libpq's.
        if url_mode
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case("require"))
            && url_root.is_some()
            && !system_roots
        {
            options = options.ssl_mode(PgSslMode::VerifyCa);
        }
        if self.pooler != Pooler::None {
            // PgBouncer refuses startup parameters it does not know (this one is sqlx's own; the
            // binary results it reads do not depend on it).
            options = options.extra_float_digits(None);
        }
        Ok(options)
    }

    /// What identifies these settings for sharing a hub (the password and certificates included, so
    /// that different credentials never share connections). Kept in memory only.
    pub(crate) fn sharing_key(&self) -> String {
        let tls = self.tls.as_ref().map(|t| {
            (
                t.mode.map(|m| format!("{m:?}")),
                t.ca.clone(),
                t.cert.clone(),
                t.key.clone(),
            )
        });
        format!(
            "{:?}",
            (
                &self.url,
                &self.host,
                self.port,
                &self.username,
                &self.password,
                &self.database,
                &self.application_name,
                &self.options,
                tls,
                self.pooler,
            )
        )
    }
}

fn pem(field: &'static str, text: &str) -> Result<Vec<u8>> {
    if !text.trim_start().starts_with("-----BEGIN") {
        return Err(Error::Config(ConfigError::new(
            field,
            "must be PEM text (starting with -----BEGIN), not a file name or DER bytes",
        )));
    }
    Ok(text.as_bytes().to_vec())
}

/// How the hub's sessions get their settings (`statement_timeout`, `idle_in_transaction_session_timeout`
/// = the operation timeout; `synchronous_commit` raised to `on` where the server's is weaker), by pooler.
#[derive(Clone, Debug)]
pub(crate) struct SessionSetup {
    pub(crate) pooler: Pooler,
    /// Run after each connection opens (pooler `session`).
    pub(crate) after_connect: Option<Arc<str>>,
    /// Run before each statement, opening its transaction (pooler `transaction`).
    pub(crate) begin: Option<Arc<str>>,
}

/// Whether a session's `synchronous_commit` is weaker than `on` (then the hub raises it).
pub(crate) const SYNC_COMMIT_WEAK_SQL: &str =
    "SELECT current_setting('synchronous_commit') IN ('off', 'local', 'remote_write')";

/// Raises `synchronous_commit` to `on` for the session (`false`) or the transaction (`true`) when the
/// server's setting is weaker, so that an application that turned it off for speed (in postgresql.conf,
/// `ALTER ROLE .. SET`, or the URL's options) does not make lease changes lossy; a stronger setting
/// (`remote_apply`) is kept.
fn sync_commit_sql(local: bool) -> String {
    format!(
        "SELECT set_config('synchronous_commit', 'on', {local}) \
         WHERE current_setting('synchronous_commit') IN ('off', 'local', 'remote_write')"
    )
}

impl SessionSetup {
    pub(crate) fn new(pooler: Pooler, timeout: Duration) -> Self {
        let ms = timeout.as_millis();
        match pooler {
            // `synchronous_commit` goes with the startup options when the server's is weaker (the hub
            // reads it once, at start): no statement per connection.
            Pooler::None => Self {
                pooler,
                after_connect: None,
                begin: None,
            },
            Pooler::Session => Self {
                pooler,
                after_connect: Some(
                    format!(
                        "SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}; {}",
                        sync_commit_sql(false)
                    )
                    .into(),
                ),
                begin: None,
            },
            Pooler::Transaction => Self {
                pooler,
                after_connect: None,
                begin: Some(
                    format!(
                        "BEGIN; SET LOCAL statement_timeout = {ms}; \
                         SET LOCAL idle_in_transaction_session_timeout = {ms}; {}",
                        sync_commit_sql(true)
                    )
                    .into(),
                ),
            },
        }
    }

    /// For a pool the application owns: nothing is set on its sessions.
    pub(crate) fn untouched() -> Self {
        Self {
            pooler: Pooler::None,
            after_connect: None,
            begin: None,
        }
    }

    /// Whether statements may be prepared once per connection and kept (not behind a transaction
    /// pooler, whose next transaction may run on another server session).
    pub(crate) fn persistent(&self) -> bool {
        self.pooler != Pooler::Transaction
    }
}

/// Runs `$body` (which uses the connection bound to `$c`) within the operation timeout, the wait for a
/// connection included. A connection whose statement timed out or broke is closed, not pooled again, so
/// a half-finished exchange is never reused. Behind a transaction pooler the statement runs in a
/// transaction of its own, opened with the `SET LOCAL`s of [`SessionSetup`]
/// and committed after it (any failure closes the connection, which ends that transaction). `$self`
/// needs `pool`, `timeout` and `setup` fields.
macro_rules! with_conn {
    ($self:ident, $op:literal, |$c:ident| $body:expr) => {
        $crate::postgres::conn::with_conn!($self, $op, $self.timeout, |$c| $body)
    };
    ($self:ident, $op:literal, $timeout:expr, |$c:ident| $body:expr) => {{
        let timeout: ::std::time::Duration = $timeout;
        let deadline = ::tokio::time::Instant::now() + timeout;
        let mut conn = match ::tokio::time::timeout_at(deadline, $self.pool.acquire()).await {
            Err(_) => {
                return Err($crate::Error::Timeout {
                    operation: $op,
                    after: timeout,
                });
            }
            Ok(Err(source)) => {
                return Err($crate::Error::Database {
                    operation: $op,
                    source,
                });
            }
            Ok(Ok(conn)) => conn,
        };
        let begin = $self.setup.begin.clone();
        let in_transaction = begin.is_some();
        let outcome = ::tokio::time::timeout_at(deadline, async {
            if let Some(begin) = begin {
                ::sqlx::raw_sql(::sqlx::AssertSqlSafe(begin.to_string()))
                    .execute(&mut *conn)
                    .await?;
            }
            let value = {
                let $c = &mut *conn;
                $body.await?
            };
            if in_transaction {
                ::sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
            }
            Ok::<_, ::sqlx::Error>(value)
        })
        .await;
        match outcome {
            Err(_) => {
                conn.close_on_drop();
                Err($crate::Error::Timeout {
                    operation: $op,
                    after: timeout,
                })
            }
            Ok(Err(source)) => {
                if in_transaction || !matches!(source, ::sqlx::Error::Database(_)) {
                    conn.close_on_drop();
                }
                Err($crate::postgres::conn::database_error(
                    $op,
                    source,
                    &$self.pool,
                ))
            }
            Ok(Ok(v)) => Ok(v),
        }
    }};
}
pub(crate) use with_conn;

/// SQLSTATE `read_only_sql_transaction`: a write on a standby, or with `default_transaction_read_only`.
const READ_ONLY_SQLSTATE: &str = "25006";

/// A driver error of `operation` as the crate's error. A write refused because the server is read-only
/// (SQLSTATE 25006: a standby in recovery, or `default_transaction_read_only` on) is [`Error::ReadOnly`]
/// (`ERR_READ_ONLY`), naming the server the pool connects to, so that a leader steps down at once and a
/// candidate says why it cannot acquire.
pub(crate) fn database_error(
    operation: &'static str,
    source: sqlx::Error,
    pool: &sqlx::PgPool,
) -> Error {
    if let sqlx::Error::Database(db) = &source
        && db.code().as_deref() == Some(READ_ONLY_SQLSTATE)
    {
        let options = pool.connect_options();
        return Error::ReadOnly {
            server: match options.get_socket() {
                Some(dir) => format!("on the socket in {}", dir.display()),
                None => format!("{}:{}", options.get_host(), options.get_port()),
            },
            why: db.message().to_owned(),
        };
    }
    Error::Database { operation, source }
}

pub(crate) fn unreachable_error(e: sqlx::Error, target: &str, timeout: Duration) -> Error {
    let message = match &e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused by {target}: is PostgreSQL running there?")
        }
        sqlx::Error::PoolTimedOut => format!(
            "no connection to {target} within {timeout:?} (server down, unreachable or too slow)"
        ),
        sqlx::Error::Tls(tls) => format!(
            "TLS with {target} failed: {tls}{}",
            tls_hint(&tls.to_string())
        ),
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            // rustls reports a certificate it rejects as invalid data on the socket.
            format!(
                "TLS with {target} failed: {io}{}",
                tls_hint(&io.to_string())
            )
        }
        sqlx::Error::Database(db) if db.message().contains("unsupported startup parameter") => {
            format!(
                "{target} refused a startup parameter ({}): a pooler such as PgBouncer is in between; \
             set `pooler` to `session` or `transaction` (its pool_mode)",
                db.message()
            )
        }
        other => format!("cannot connect to {target}: {other}"),
    };
    Error::Unreachable {
        message,
        source: Some(e),
    }
}

/// What to do about a TLS failure, from the words of the TLS library's error.
fn tls_hint(error: &str) -> &'static str {
    if error.contains("UnknownIssuer") || error.contains("unknown issuer") {
        " (the server's certificate is not signed by a trusted CA: give the CA that signed it, \
         `ssl.ca` or `sslrootcert`)"
    } else if error.contains("NotValidForName") || error.contains("not valid for name") {
        " (the server's certificate does not name this host: connect by a name it lists, or use \
         sslmode=verify-ca to check the CA only)"
    } else if error.contains("does not support TLS") {
        " (the server has TLS off: turn `ssl` on there, or connect without TLS)"
    } else if error.contains("Expired") {
        " (the server's certificate has expired)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: PgSettings) -> PgConnectOptions {
        s.connect_options().unwrap()
    }

    #[test]
    fn fields_fill_in_what_the_url_does_not_say() {
        let o = opts(PgSettings {
            url: Some("postgres://alice@db.example:6543/app".into()),
            host: Some("ignored".into()),
            port: Some(1),
            username: Some("ignored".into()),
            database: Some("ignored".into()),
            application_name: Some("mine".into()),
            ..Default::default()
        });
        assert_eq!(o.get_host(), "db.example");
        assert_eq!(o.get_port(), 6543);
        assert_eq!(o.get_username(), "alice");
        assert_eq!(o.get_database(), Some("app"));
        assert_eq!(o.get_application_name(), Some("mine"));
    }

    #[test]
    fn fields_alone_need_no_url_and_are_not_spliced() {
        let o = opts(PgSettings {
            host: Some("/var/run/postgresql".into()),
            port: Some(5433),
            username: Some("we@ird:/?&=user".into()),
            password: Some("p@ss word/&".into()),
            database: Some("d b?x".into()),
            ..Default::default()
        });
        assert_eq!(
            o.get_socket().map(|p| p.to_string_lossy().into_owned()),
            Some("/var/run/postgresql".into())
        );
        assert_eq!(o.get_port(), 5433);
        assert_eq!(o.get_username(), "we@ird:/?&=user");
        assert_eq!(o.get_database(), Some("d b?x"));
        let o = opts(PgSettings::default());
        assert_eq!(o.get_host(), "localhost");
    }

    #[test]
    fn with_no_user_given_the_login_name_is_the_user() {
        assert_eq!(
            login_name(Some("pg".into()), Some("me".into())).as_deref(),
            Some("pg")
        );
        assert_eq!(login_name(None, Some("me".into())).as_deref(), Some("me"));
        assert_eq!(
            login_name(Some(String::new()), Some("me".into())).as_deref(),
            Some("me")
        );
        assert_eq!(login_name(None, None), None);
    }

    #[test]
    fn tls_modes_follow_libpq_and_typeorm() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_owned();
        // `ssl: { ca }` in TypeORM: verify the chain and the host name.
        let o = opts(PgSettings {
            host: Some("h".into()),
            tls: Some(TlsSettings {
                ca: Some(ca.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(matches!(o.get_ssl_mode(), PgSslMode::VerifyFull));
        // `rejectUnauthorized: false`: encrypt, verify nothing, even with a CA given.
        let o = opts(PgSettings {
            tls: Some(TlsSettings {
                mode: Some(PgSslMode::Require),
                ca: Some(ca.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(matches!(o.get_ssl_mode(), PgSslMode::Require));
        // The URL's sslmode wins over the ssl object's.
        let o = opts(PgSettings {
            url: Some("postgres://h/db?sslmode=verify-ca".into()),
            tls: Some(TlsSettings::default()),
            ..Default::default()
        });
        assert!(matches!(o.get_ssl_mode(), PgSslMode::VerifyCa));
        // libpq: require with a root certificate verifies it.
        let o = opts(PgSettings::from_url(
            "postgres://h/db?sslmode=require&sslrootcert=/x/ca.pem",
        ));
        assert!(matches!(o.get_ssl_mode(), PgSslMode::VerifyCa));
        let o = opts(PgSettings::from_url("postgres://h/db?sslmode=require"));
        assert!(matches!(o.get_ssl_mode(), PgSslMode::Require));
        let o = opts(PgSettings::from_url("postgres://h/db?sslrootcert=system"));
        assert!(matches!(o.get_ssl_mode(), PgSslMode::VerifyFull));
        let e = PgSettings::from_url("postgres://h/db?sslrootcert=system&sslmode=require")
            .connect_options()
            .unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
        let e = PgSettings {
            tls: Some(TlsSettings {
                ca: Some("/etc/ssl/ca.pem".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
        .connect_options()
        .unwrap_err();
        assert!(
            e.to_string().contains("ssl.ca") && e.to_string().contains("PEM"),
            "{e}"
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let s = PgSettings {
            url: Some("postgres://u:secret1@h/db".into()),
            password: Some("secret2".into()),
            tls: Some(TlsSettings {
                key: Some("secret3".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let shown = format!("{s:?}");
        for secret in ["secret1", "secret2", "secret3"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn pooler_names() {
        for p in [Pooler::None, Pooler::Session, Pooler::Transaction] {
            assert_eq!(p.as_str().parse::<Pooler>().unwrap(), p);
        }
        assert_eq!("bouncer".parse::<Pooler>().unwrap_err().field, "pooler");
    }
}
