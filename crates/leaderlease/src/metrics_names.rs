//! The metric names, the same in Rust (cargo feature `metrics`, through the
//! [`metrics`](https://docs.rs/metrics) facade, so any exporter works) and in the Node.js package
//! (`prom-client`). Every metric has the label `name`: the election's name (default: its lock id; see
//! [`ElectorBuilder::with_metrics_name`](crate::ElectorBuilder::with_metrics_name)).
//!
//! Without the feature, nothing is recorded and the `metrics` crate is not a dependency.

/// Gauge: 1 while this node leads, 0 otherwise (the name client-go uses).
pub const MASTER_STATUS: &str = "leader_election_master_status";
/// Counter: this node's leadership changes, label `transition`: `elected` or `stepped_down`.
pub const LEADERSHIP_CHANGES: &str = "leader_election_leadership_changes_total";
/// Counter: renewals, label `outcome`: `success`, `failure` (an error: retried) or `lost` (no row).
pub const RENEWALS: &str = "leader_election_renewals_total";
/// Histogram: seconds from sending (queueing, when batched) a renewal to its outcome, every outcome.
pub const RENEWAL_DURATION: &str = "leader_election_renewal_duration_seconds";
/// Gauge: seconds left to this node's local lease deadline (0 when not leading). In Rust it is set at
/// each decision (elected, renewed: the time left right then; stepped down: 0); in Node.js it is
/// computed at scrape time.
pub const LEASE_REMAINING: &str = "leader_election_lease_remaining_seconds";
/// Counter: failed store operations, label `operation`: `renew`, `acquire`, `read`, `release` or
/// `cleanup`.
pub const STORE_ERRORS: &str = "leader_election_store_errors_total";

#[cfg(feature = "metrics")]
pub(crate) fn record(name: &str, event: &crate::Event, remaining: Option<std::time::Duration>) {
    use crate::EventKind;
    let name = name.to_owned();
    match event.kind {
        EventKind::Elected => {
            metrics::gauge!(MASTER_STATUS, "name" => name.clone()).set(1.0);
            metrics::counter!(LEADERSHIP_CHANGES, "name" => name.clone(), "transition" => "elected")
                .increment(1);
        }
        EventKind::SteppedDown => {
            metrics::gauge!(MASTER_STATUS, "name" => name.clone()).set(0.0);
            metrics::gauge!(LEASE_REMAINING, "name" => name.clone()).set(0.0);
            metrics::counter!(LEADERSHIP_CHANGES, "name" => name.clone(), "transition" => "stepped_down")
                .increment(1);
        }
        EventKind::Started | EventKind::Stopped => {
            metrics::gauge!(MASTER_STATUS, "name" => name.clone()).set(0.0);
            metrics::gauge!(LEASE_REMAINING, "name" => name.clone()).set(0.0);
        }
        _ => {}
    }
    let outcome = match event.kind {
        EventKind::Renewed => Some("success"),
        EventKind::RenewalFailed => Some("failure"),
        EventKind::LeaseLost => Some("lost"),
        _ => None,
    };
    if let Some(outcome) = outcome {
        metrics::counter!(RENEWALS, "name" => name.clone(), "outcome" => outcome).increment(1);
        if let Some(latency) = event.latency {
            metrics::histogram!(RENEWAL_DURATION, "name" => name.clone())
                .record(latency.as_secs_f64());
        }
    }
    if matches!(event.kind, EventKind::Elected | EventKind::Renewed)
        && let Some(left) = remaining
    {
        metrics::gauge!(LEASE_REMAINING, "name" => name.clone()).set(left.as_secs_f64());
    }
    if let Some(operation) = event.kind.failed_operation() {
        metrics::counter!(STORE_ERRORS, "name" => name, "operation" => operation).increment(1);
    }
}
