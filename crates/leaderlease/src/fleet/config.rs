//! A member's settings: a builder with named defaults, validated once.

use std::time::Duration;

use crate::ConfigError;
use crate::config::{DEFAULT_SCHEMA, MAX_INSTANCE_ID_LEN, default_instance_id};

/// Default member lease: how long a member stays in the list without renewing (by the store's clock).
pub const DEFAULT_MEMBER_LEASE: Duration = Duration::from_millis(10_000);
/// Default time between two renewals of the member's row (or key).
pub const DEFAULT_MEMBER_RENEWAL: Duration = Duration::from_millis(3_000);
/// Longest accepted `version`, in bytes.
pub const MAX_VERSION_LEN: usize = 255;

/// Validated settings of a member. Build them with [`MemberConfig::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    pub(crate) id: String,
    pub(crate) version: Option<String>,
    pub(crate) lease: Duration,
    pub(crate) renewal: Duration,
    pub(crate) schema: String,
    pub(crate) create_table_on_init: bool,
}

impl MemberConfig {
    /// A builder holding the defaults.
    pub fn builder() -> MemberBuilder {
        MemberBuilder::default()
    }
    /// The member's id (its row's key; what its elections write as `leader_id`).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The member's version, if set: members of the newest version are preferred by the plan.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
    /// How long the member stays listed without renewing.
    pub fn lease_duration(&self) -> Duration {
        self.lease
    }
    /// Time between two renewals.
    pub fn renewal_interval(&self) -> Duration {
        self.renewal
    }
    /// Schema of the member table (PostgreSQL; unquoted).
    pub fn schema(&self) -> &str {
        &self.schema
    }
    /// Whether a missing member table is created at join (PostgreSQL).
    pub fn create_table_on_init(&self) -> bool {
        self.create_table_on_init
    }
}

/// Builds a [`MemberConfig`]; [`build`](Self::build) checks every setting.
///
/// ```
/// use std::time::Duration;
/// use leaderlease::fleet::MemberConfig;
///
/// let config = MemberConfig::builder().with_id("worker-1").with_version("2.4.0").build()?;
/// assert_eq!(config.version(), Some("2.4.0"));
///
/// let err = MemberConfig::builder()
///     .with_lease_duration(Duration::from_secs(2))
///     .with_renewal_interval(Duration::from_secs(2))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field, "renewal_interval");
/// # Ok::<(), leaderlease::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct MemberBuilder {
    id: Option<String>,
    version: Option<String>,
    lease: Duration,
    renewal: Duration,
    schema: String,
    create_table_on_init: bool,
}

impl Default for MemberBuilder {
    fn default() -> Self {
        Self {
            id: None,
            version: None,
            lease: DEFAULT_MEMBER_LEASE,
            renewal: DEFAULT_MEMBER_RENEWAL,
            schema: DEFAULT_SCHEMA.to_owned(),
            create_table_on_init: crate::DEFAULT_CREATE_TABLE_ON_INIT,
        }
    }
}

impl MemberBuilder {
    /// The member's id (default: hostname, process id and a random suffix). Use the same id as the
    /// `instance_id` of the member's elections, so that the plan can tell who leads what.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
    /// The member's version (default none): names prefer members of the newest version, so that a
    /// rolling deploy moves each name once. Compared piecewise, numbers by value (`1.10` > `1.9`); a
    /// member without a version counts as older than any with one.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }
    /// Member lease (default [`DEFAULT_MEMBER_LEASE`]).
    pub fn with_lease_duration(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }
    /// Renewal interval (default [`DEFAULT_MEMBER_RENEWAL`]); must be at most half the lease.
    pub fn with_renewal_interval(mut self, d: Duration) -> Self {
        self.renewal = d;
        self
    }
    /// Schema of the member table on PostgreSQL (default [`DEFAULT_SCHEMA`]): the schema of the lease
    /// table of the fleet's elections.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
    /// Whether a missing member table is created (with the lease table) at join (default true).
    pub fn with_create_table_on_init(mut self, on: bool) -> Self {
        self.create_table_on_init = on;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<MemberConfig, ConfigError> {
        if self.lease < Duration::from_millis(100) || self.lease > crate::MAX_LEASE_DURATION {
            return Err(ConfigError::new(
                "lease_duration",
                format!(
                    "must be between 100 ms and {} s (got {} ms)",
                    crate::MAX_LEASE_DURATION.as_secs(),
                    self.lease.as_millis()
                ),
            ));
        }
        if self.renewal.is_zero() || self.renewal * 2 > self.lease {
            return Err(ConfigError::new(
                "renewal_interval",
                format!(
                    "must be above 0 and at most half of `lease_duration` ({} ms), so that one lost \
                     renewal does not drop the member (got {} ms)",
                    self.lease.as_millis(),
                    self.renewal.as_millis()
                ),
            ));
        }
        // The elector's rules for the schema name, once.
        crate::ElectorConfig::builder()
            .with_schema(self.schema.clone())
            .build()?;
        let id = match self.id {
            Some(id) => {
                check_text("id", &id, MAX_INSTANCE_ID_LEN)?;
                id
            }
            None => default_instance_id(),
        };
        if let Some(v) = &self.version {
            check_text("version", v, MAX_VERSION_LEN)?;
        }
        Ok(MemberConfig {
            id,
            version: self.version,
            lease: self.lease,
            renewal: self.renewal,
            schema: self.schema,
            create_table_on_init: self.create_table_on_init,
        })
    }
}

fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), ConfigError> {
    if s.trim().is_empty() {
        return Err(ConfigError::new(field, "must not be empty or blank"));
    }
    if s.len() > max {
        return Err(ConfigError::new(
            field,
            format!("must be at most {max} bytes (got {})", s.len()),
        ));
    }
    if s.contains('\0') {
        return Err(ConfigError::new(field, "must not contain a NUL character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_field() {
        let field = |b: MemberBuilder| b.build().unwrap_err().field;
        assert_eq!(field(MemberConfig::builder().with_id(" ")), "id");
        assert_eq!(field(MemberConfig::builder().with_version("")), "version");
        assert_eq!(field(MemberConfig::builder().with_schema("pg_x")), "schema");
        assert_eq!(
            field(MemberConfig::builder().with_lease_duration(Duration::from_millis(10))),
            "lease_duration"
        );
        assert_eq!(
            field(MemberConfig::builder().with_renewal_interval(Duration::ZERO)),
            "renewal_interval"
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = MemberConfig::builder().build().unwrap();
        assert_eq!(c.lease_duration(), DEFAULT_MEMBER_LEASE);
        assert_eq!(c.renewal_interval(), DEFAULT_MEMBER_RENEWAL);
        assert_eq!(c.schema(), "public");
        assert_eq!(c.version(), None);
        assert!(c.id().contains(&std::process::id().to_string()));
    }
}
