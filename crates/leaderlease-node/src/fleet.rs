//! The fleet of the core (`leaderlease::fleet`) for JavaScript: a membership on PostgreSQL, the plan of
//! this process's named elections, and elections started by plan.

use std::time::Duration;

use leaderlease::ConfigError;
use leaderlease::fleet::MemberConfig;
use napi::bindgen_prelude::Result;
use napi_derive::napi;

use super::{
    Elector, ElectorEvent, ElectorOptions, NapiStatus, PgConnection, millis, prepare, to_js,
    with_js_names,
};

/// Settings of this process's membership. Durations in milliseconds.
#[napi(object)]
#[derive(Debug, Default)]
pub struct MemberOptions {
    /// The member's id (default: hostname, process id and a random suffix). The elections of the fleet
    /// take it as their instance id.
    pub id: Option<String>,
    /// The member's version: names prefer members of the newest (compared piecewise, numbers by value).
    pub version: Option<String>,
    /// How long the membership lives without renewal (default 10000).
    pub lease_duration: Option<f64>,
    /// Time between renewals (default 3000); also how long a leader waits before handing a name over.
    pub renewal_interval: Option<f64>,
    /// Schema of the member table (default `public`): the elections' schema.
    pub schema: Option<String>,
    /// Create the member table at start if missing (default true).
    pub create_table_on_init: Option<bool>,
    /// The operation timeout of the hub the membership uses (default 1500: the elections' default, so
    /// that they share one hub).
    pub operation_timeout: Option<f64>,
}

impl MemberOptions {
    fn into_config(self) -> std::result::Result<(MemberConfig, Duration), ConfigError> {
        let mut b = MemberConfig::builder();
        if let Some(id) = self.id {
            b = b.with_id(id);
        }
        if let Some(v) = self.version {
            b = b.with_version(v);
        }
        if let Some(d) = millis("leaseDuration", self.lease_duration)? {
            b = b.with_lease_duration(d);
        }
        if let Some(d) = millis("renewalInterval", self.renewal_interval)? {
            b = b.with_renewal_interval(d);
        }
        if let Some(s) = self.schema {
            b = b.with_schema(s);
        }
        if let Some(on) = self.create_table_on_init {
            b = b.with_create_table_on_init(on);
        }
        let timeout = millis("operationTimeout", self.operation_timeout)?
            .unwrap_or(Duration::from_millis(1500));
        Ok((b.build().map_err(with_js_names)?, timeout))
    }
}

/// A live member of the fleet.
#[napi(object)]
#[derive(Debug)]
pub struct FleetMember {
    /// Its id.
    pub id: String,
    /// Its version, if it declared one.
    pub version: Option<String>,
    /// When it joined, by the store's clock, in milliseconds since the Unix epoch.
    pub started_at: f64,
}

/// One name of this process's plan.
#[napi(object)]
#[derive(Debug)]
pub struct PlannedName {
    /// The name.
    pub name: String,
    /// The member that should lead it (null while the member list is empty).
    pub owner: Option<String>,
}

/// This process's membership in a fleet, and the plan of its named elections (the core's
/// `leaderlease::fleet::Fleet`). Create it with `Fleet.joinPg(connection, options)`.
#[napi]
pub struct Fleet {
    inner: leaderlease::fleet::Fleet,
}

#[napi]
impl Fleet {
    /// Joins the fleet of `options.schema` on PostgreSQL (the process's shared hub for the connection),
    /// creating the member table if missing.
    #[napi(factory)]
    pub async fn join_pg(connection: PgConnection, options: Option<MemberOptions>) -> Result<Self> {
        let settings = connection.into_settings().map_err(|e| to_js(e.into()))?;
        let (config, timeout) = options
            .unwrap_or_default()
            .into_config()
            .map_err(|e| to_js(e.into()))?;
        let membership = leaderlease::PgHub::join_fleet_shared(&settings, timeout, config)
            .await
            .map_err(to_js)?;
        Ok(Self {
            inner: leaderlease::fleet::Fleet::new(membership),
        })
    }

    /// This member's id.
    #[napi(catch_unwind)]
    pub fn id(&self) -> String {
        self.inner.membership().id().to_owned()
    }

    /// The live members.
    #[napi(catch_unwind)]
    pub fn members(&self) -> Vec<FleetMember> {
        self.inner
            .members()
            .into_iter()
            .map(|m| FleetMember {
                id: m.id,
                version: m.version,
                started_at: m.started_at_us as f64 / 1000.0,
            })
            .collect()
    }

    /// The plan of this process's names.
    #[napi(catch_unwind)]
    pub fn plan(&self) -> Vec<PlannedName> {
        self.inner
            .plan()
            .into_iter()
            .map(|(name, owner)| PlannedName { name, owner })
            .collect()
    }

    /// The names the plan gives this member.
    #[napi(catch_unwind)]
    pub fn owned(&self) -> Vec<String> {
        self.inner.owned()
    }

    /// Starts the fleet's election of `name` on PostgreSQL (as `Elector.connectPg`): it campaigns only
    /// while the plan gives `name` to this member, or when the name has had no leader for one lease, and
    /// hands it over when the plan moves it. Its instance id is the member id.
    #[napi]
    pub async fn connect_pg(
        &self,
        connection: PgConnection,
        name: String,
        options: Option<ElectorOptions>,
        on_event: Option<
            napi::threadsafe_function::ThreadsafeFunction<
                ElectorEvent,
                (),
                ElectorEvent,
                NapiStatus,
                false,
                true,
            >,
        >,
    ) -> Result<Elector> {
        let settings = connection.into_settings().map_err(|e| to_js(e.into()))?;
        let p = prepare(options, on_event, Some((&self.inner, name)))?;
        let inner = leaderlease::Elector::connect_shared_settings(&settings, p.config)
            .await
            .map_err(to_js)?;
        Ok(Elector::new(inner, p.heartbeat, p.events))
    }

    /// Leaves the fleet: the other members replan at once. Shut the elections down afterwards: each
    /// release is then taken at once by the name's new owner.
    #[napi]
    pub async fn leave(&self) -> Result<()> {
        self.inner.leave().await;
        Ok(())
    }
}
