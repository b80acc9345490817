//! Arguments shared by the subcommands, durations, and the monotonic clock shared with other processes.

use std::time::{Duration, Instant};

use clap::Args;
use leaderlease::{ConfigError, DEFAULT_SCHEMA, PgHub};

/// Where the lease table is.
#[derive(Args, Debug, Clone)]
pub struct Db {
    /// PostgreSQL connection string, e.g. postgres://user@host/db
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub url: String,
    /// Schema of the lease table
    #[arg(long, default_value = DEFAULT_SCHEMA)]
    pub schema: String,
}

impl Db {
    /// Checks the schema name with the crate's rule, so the error names `--schema`.
    pub fn check_schema(&self) -> Result<(), String> {
        leaderlease::ElectorConfig::builder()
            .with_schema(self.schema.clone())
            .build()
            .map(|_| ())
            .map_err(|e| config_message(&e))
    }

    /// A hub (pool) for a one-shot command; statements are bounded by `timeout`.
    pub async fn connect(&self, timeout: Duration) -> leaderlease::Result<PgHub> {
        PgHub::connect(&self.url, timeout).await
    }
}

/// The command-line flag of a builder field.
fn flag(field: &str) -> &str {
    match field {
        "lease_duration" => "--lease",
        "renewal_interval" => "--renewal",
        "jitter_range" => "--jitter",
        "lock_id" => "--lock-id",
        "instance_id" => "--instance-id",
        "schema" => "--schema",
        "safety_margin" => "--safety-margin",
        other => other,
    }
}

/// A configuration error in the words of the command line: the flag, then the rule (with the other
/// settings it names turned into their flags).
pub fn config_message(e: &ConfigError) -> String {
    let mut rule = e.rule.clone();
    for field in [
        "lease_duration",
        "renewal_interval",
        "jitter_range",
        "lock_id",
        "instance_id",
        "schema",
        "safety_margin",
    ] {
        rule = rule.replace(&format!("`{field}`"), &format!("`{}`", flag(field)));
    }
    format!("{}: {rule}", flag(e.field))
}

/// Parses `1500ms`, `10s`, `1.5s`, `2m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` needs a unit: ms, s, m or h (e.g. 10s or 1500ms)"))?;
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 10s or 1500ms)"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}`: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(n * scale).map_err(|e| format!("`{s}`: {e}"))
}

/// Human form of a number of milliseconds: `850 ms`, `4.2 s`, `3 min 12 s`, `2 h 5 min`.
pub fn human_ms(ms: f64) -> String {
    let ms = ms.abs();
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        let s = (ms / 1000.0).round() as u64;
        format!("{} min {} s", s / 60, s % 60)
    } else {
        let m = (ms / 60_000.0).round() as u64;
        format!("{} h {} min", m / 60, m % 60)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the machine, so this process, the
/// watchdog and the tests can compare instants.
pub fn mono_ns() -> i128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

/// An `Instant` (which is `CLOCK_MONOTONIC` on Linux) as [`mono_ns`].
pub fn instant_ns(at: Instant) -> i128 {
    let (mono, now) = (mono_ns(), Instant::now());
    if at >= now {
        mono + (at - now).as_nanos() as i128
    } else {
        mono - (now - at).as_nanos() as i128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("10d").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn config_errors_name_the_flag() {
        let e = leaderlease::ElectorConfig::builder()
            .with_renewal_interval(Duration::from_secs(20))
            .build()
            .unwrap_err();
        let m = config_message(&e);
        assert!(m.starts_with("--renewal: "), "{m}");
    }
}
