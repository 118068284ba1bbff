//! What every resource records about itself, and the serialisable snapshot of it.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::ResourceState;

/// Lifetime counters of one resource. Counts never go down, not even on reset, so an
/// operator can see that a resource has been flapping.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResourceStats {
    pub initialize_attempts: u64,
    pub initialize_failures: u64,
    pub cleanups: u64,
    pub cleanup_failures: u64,
    pub resets: u64,
    pub health_checks: u64,
    pub health_failures: u64,
    /// Failed health checks since the last pass; reaching the threshold means Error.
    pub consecutive_health_failures: u32,
    pub reconnects: u64,
    pub reconnect_failures: u64,
    /// Errors of every kind recorded as `last_error`.
    pub errors: u64,
    /// Successful `ensure_ready` calls: how often the resource was used.
    pub ready_calls: u64,
    /// `ensure_ready` calls that ended in an error.
    pub failed_ready_calls: u64,
    /// Operation errors that `with_connection` retried.
    pub transient_errors: u64,
    #[serde(rename = "last_initialize_ms", serialize_with = "millis")]
    pub last_initialize_duration: Option<Duration>,
    #[serde(rename = "last_cleanup_ms", serialize_with = "millis")]
    pub last_cleanup_duration: Option<Duration>,
}

/// One entry of a resource's state history.
#[derive(Debug, Clone, Serialize)]
pub struct StateChange {
    pub from: ResourceState,
    pub to: ResourceState,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// Why, when something more than the transition itself is known (an error message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A bounded history: the oldest entries fall off.
#[derive(Debug, Clone)]
pub(crate) struct History {
    entries: VecDeque<StateChange>,
    limit: usize,
}

impl History {
    pub(crate) fn new(limit: usize) -> Self {
        History {
            entries: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    pub(crate) fn push(&mut self, change: StateChange) {
        if self.entries.len() == self.limit {
            self.entries.pop_front();
        }
        self.entries.push_back(change);
    }

    pub(crate) fn to_vec(&self) -> Vec<StateChange> {
        self.entries.iter().cloned().collect()
    }
}

/// Everything known about one resource at one moment, as the monitor, the admin API and
/// the CLI show it. Its JSON form is part of the report schema (docs/resource-report.md).
#[derive(Debug, Clone, Serialize)]
pub struct ResourceSnapshot {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub state: ResourceState,
    /// When the resource entered its current state.
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
    pub last_error: Option<String>,
    pub stats: ResourceStats,
    pub history: Vec<StateChange>,
    /// Resource-specific details (`Resource::info`).
    pub info: serde_json::Value,
}

/// The outcome of one health check.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// False when the resource was not in a state that can be checked (not initialized,
    /// closing...): then `healthy` is false and `message` says why.
    pub checked: bool,
    pub healthy: bool,
    /// The state after the check.
    pub state: ResourceState,
    pub message: Option<String>,
    #[serde(rename = "duration_ms", serialize_with = "millis_plain")]
    pub duration: Duration,
}

/// Formats a time as RFC 3339 (UTC, millisecond precision).
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

fn millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64() * 1000.0),
        None => s.serialize_none(),
    }
}

fn millis_plain<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}
