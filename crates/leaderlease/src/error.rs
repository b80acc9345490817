//! The crate's error type.

use std::time::Duration;

use crate::config::ConfigError;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The client error kept as the source of [`Error::Store`] and [`Error::StoreUnreachable`]: downcast it
/// to the store client's own type (for NATS, e.g. `async_nats::ConnectError` or
/// `async_nats::jetstream::context::PublishError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong. Losing or not winning an election is never an error: see [`crate::Status`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting broke a rule.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The PostgreSQL database could not be reached at start (refused, unknown host, bad credentials,
    /// timeout). NATS reports [`Error::StoreUnreachable`] instead.
    #[error("database unreachable: {message}")]
    Unreachable {
        /// What the driver said, e.g. "connection refused".
        message: String,
        /// The driver error, where there is one.
        #[source]
        source: Option<sqlx::Error>,
    },
    /// The lease table is missing or older than this version, and `create_table_on_init` is off.
    #[error(
        "the lease table {table} {problem}: run the leaderlease migration \
         (or enable create_table_on_init)"
    )]
    TableMissing {
        /// The table, quoted as in SQL.
        table: String,
        /// What is missing.
        problem: String,
    },
    /// The database user lacks a privilege the election needs.
    #[error("the database user may not use {object}: it needs {needs}")]
    PermissionDenied {
        /// The table, quoted as in SQL.
        object: String,
        /// The privileges needed.
        needs: String,
    },
    /// The server is a read-only standby (`pg_is_in_recovery()`) or refuses writes
    /// (`default_transaction_read_only`): leases need the primary.
    #[error(
        "the database server {server} is read-only ({why}): leases are written, connect to the primary \
         (after a failover, to the promoted server)"
    )]
    ReadOnly {
        /// Address and port of the server, as it reports them.
        server: String,
        /// Why: a standby in recovery, or read-only transactions.
        why: String,
    },
    /// A database operation did not finish within the operation timeout.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// The operation (`acquire`, `renew`, ...).
        operation: &'static str,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// A database error.
    #[error("database error during {operation}: {source}")]
    Database {
        /// The operation (`acquire`, `renew`, ...).
        operation: &'static str,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// A store other than PostgreSQL (NATS) could not be reached at start: refused, unknown host, no
    /// server answering within the connect timeout, a bad server address.
    #[error("{store} unreachable: {message}")]
    StoreUnreachable {
        /// The store (`NATS`).
        store: &'static str,
        /// What went wrong, naming the server address.
        message: String,
        /// The client's error (for NATS an `async_nats::ConnectError`, or the `std::io::Error` of an
        /// address that does not parse).
        #[source]
        source: BoxError,
    },
    /// An operation of a store other than PostgreSQL (NATS) failed: the server answered with an error, or
    /// the request could not be sent.
    #[error("store error during {operation}: {source}")]
    Store {
        /// The operation (`acquire`, `renew`, ...).
        operation: &'static str,
        /// The store client's error, kept whole: downcast it (for NATS, e.g. to
        /// `async_nats::jetstream::context::PublishError` or `async_nats::jetstream::kv::EntryError`).
        #[source]
        source: BoxError,
    },
    /// A NATS KV bucket cannot hold leases as configured.
    #[error("the NATS KV bucket {bucket:?} {problem}")]
    InvalidBucket {
        /// The bucket name.
        bucket: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The server is a version the backend does not support (e.g. NATS older than 2.10).
    #[error(
        "the {store} server is version {version}; leaderlease needs {store} {minimum} or newer"
    )]
    UnsupportedServer {
        /// The store (`NATS`).
        store: &'static str,
        /// The version the server reported.
        version: String,
        /// The oldest supported version.
        minimum: &'static str,
    },
    /// The elector has been shut down.
    #[error("the leader elector has been shut down")]
    Shutdown,
    /// The database refused a fenced transaction: the term does not hold an unexpired lease (see
    /// [`fence`](crate::fence)). Roll the transaction back; the work belongs to the next leader.
    #[error("fenced: {reason}")]
    Fenced {
        /// The lock id of the election.
        lock_id: i32,
        /// The term the fence was asked for (`None`: this node did not lead when asked).
        term: Option<u64>,
        /// Why, as the database (or the local deadline) said.
        reason: String,
    },
}

impl Error {
    /// Every code [`code`](Self::code) can return.
    pub const CODES: &'static [&'static str] = &[
        "ERR_INVALID_CONFIG",
        "ERR_DATABASE_UNREACHABLE",
        "ERR_TABLE_MISSING",
        "ERR_PERMISSION_DENIED",
        "ERR_READ_ONLY",
        "ERR_TIMEOUT",
        "ERR_DATABASE",
        "ERR_STORE_UNREACHABLE",
        "ERR_STORE",
        "ERR_INVALID_BUCKET",
        "ERR_UNSUPPORTED_SERVER",
        "ERR_SHUT_DOWN",
        "ERR_FENCED",
    ];

    /// A stable code for this kind of error, as the Node binding exposes it (`ERR_INVALID_CONFIG`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config(_) => "ERR_INVALID_CONFIG",
            Error::Unreachable { .. } => "ERR_DATABASE_UNREACHABLE",
            Error::TableMissing { .. } => "ERR_TABLE_MISSING",
            Error::PermissionDenied { .. } => "ERR_PERMISSION_DENIED",
            Error::ReadOnly { .. } => "ERR_READ_ONLY",
            Error::Timeout { .. } => "ERR_TIMEOUT",
            Error::Database { .. } => "ERR_DATABASE",
            Error::StoreUnreachable { .. } => "ERR_STORE_UNREACHABLE",
            Error::Store { .. } => "ERR_STORE",
            Error::InvalidBucket { .. } => "ERR_INVALID_BUCKET",
            Error::UnsupportedServer { .. } => "ERR_UNSUPPORTED_SERVER",
            Error::Shutdown => "ERR_SHUT_DOWN",
            Error::Fenced { .. } => "ERR_FENCED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_listed_code() {
        let all = [
            Error::Config(ConfigError::new("lock_id", "x")),
            Error::Unreachable {
                message: String::new(),
                source: None,
            },
            Error::TableMissing {
                table: String::new(),
                problem: String::new(),
            },
            Error::PermissionDenied {
                object: String::new(),
                needs: String::new(),
            },
            Error::ReadOnly {
                server: String::new(),
                why: String::new(),
            },
            Error::Timeout {
                operation: "x",
                after: Duration::ZERO,
            },
            Error::Database {
                operation: "x",
                source: sqlx::Error::PoolClosed,
            },
            Error::StoreUnreachable {
                store: "x",
                message: String::new(),
                source: "x".into(),
            },
            Error::Store {
                operation: "x",
                source: "x".into(),
            },
            Error::InvalidBucket {
                bucket: String::new(),
                problem: String::new(),
            },
            Error::UnsupportedServer {
                store: "x",
                version: String::new(),
                minimum: "x",
            },
            Error::Shutdown,
            Error::Fenced {
                lock_id: 0,
                term: None,
                reason: String::new(),
            },
        ];
        let codes: Vec<_> = all.iter().map(Error::code).collect();
        assert_eq!(codes, Error::CODES);
    }
}
