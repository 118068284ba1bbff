//! The resource report: counts, problems and every resource's snapshot, as JSON (with a
//! stable, versioned schema: docs/resource-report.md) and as text for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use serde::Serialize;

use super::stats::format_time;
use super::{ResourceRegistry, ResourceSnapshot, ResourceState};

/// Bumped whenever a field changes meaning or disappears; adding a field keeps it.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// Counts over a set of resources.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResourceSummary {
    pub total: usize,
    /// Every state appears, with 0 where no resource is in it.
    pub by_state: BTreeMap<String, usize>,
    pub by_type: BTreeMap<String, usize>,
    pub problems: usize,
}

/// A resource that is Degraded or in Error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProblemResource {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub state: ResourceState,
    pub last_error: Option<String>,
}

impl ResourceSummary {
    pub fn of(snapshots: &[ResourceSnapshot]) -> Self {
        let mut by_state: BTreeMap<String, usize> = ResourceState::ALL
            .iter()
            .map(|state| (state.as_str().to_string(), 0))
            .collect();
        let mut by_type = BTreeMap::new();
        for snapshot in snapshots {
            *by_state
                .entry(snapshot.state.as_str().to_string())
                .or_default() += 1;
            *by_type.entry(snapshot.kind.clone()).or_default() += 1;
        }
        ResourceSummary {
            total: snapshots.len(),
            by_state,
            by_type,
            problems: snapshots.iter().filter(|s| s.state.is_problem()).count(),
        }
    }
}

/// The problem resources among `snapshots`.
pub fn problems_of(snapshots: &[ResourceSnapshot]) -> Vec<ProblemResource> {
    snapshots
        .iter()
        .filter(|s| s.state.is_problem())
        .map(|s| ProblemResource {
            id: s.id.clone(),
            kind: s.kind.clone(),
            name: s.name.clone(),
            state: s.state,
            last_error: s.last_error.clone(),
        })
        .collect()
}

/// What the monitor adds to a report: when it last looked.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorSection {
    pub round: u64,
    pub interval_ms: f64,
    pub last_check_at: Option<String>,
}

/// A full report (schema version [`REPORT_SCHEMA_VERSION`]).
#[derive(Debug, Clone, Serialize)]
pub struct ResourceReport {
    pub schema_version: u32,
    pub generated_at: String,
    /// Absent when the report was made without a monitor.
    pub monitor: Option<MonitorSection>,
    pub summary: ResourceSummary,
    pub problems: Vec<ProblemResource>,
    pub resources: Vec<ResourceSnapshot>,
}

impl ResourceReport {
    /// A report of the registry as it is now.
    pub fn of_registry(registry: &ResourceRegistry, monitor: Option<MonitorSection>) -> Self {
        let resources: Vec<ResourceSnapshot> =
            registry.list().iter().map(|r| r.snapshot()).collect();
        ResourceReport {
            schema_version: REPORT_SCHEMA_VERSION,
            generated_at: format_time(SystemTime::now()),
            monitor,
            summary: ResourceSummary::of(&resources),
            problems: problems_of(&resources),
            resources,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|error| {
            serde_json::json!({ "schema_version": REPORT_SCHEMA_VERSION, "error": error.to_string() })
        })
    }

    /// A text rendering for people: the summary, the problems, then one line a resource.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Resource report ({})", self.generated_at);
        if let Some(monitor) = &self.monitor {
            let last = monitor.last_check_at.as_deref().unwrap_or("never");
            let _ = writeln!(
                out,
                "monitor: round {}, every {:.0} ms, last check {last}",
                monitor.round, monitor.interval_ms
            );
        }
        let states: Vec<String> = self
            .summary
            .by_state
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(state, n)| format!("{n} {state}"))
            .collect();
        let _ = writeln!(
            out,
            "{} resources: {}",
            self.summary.total,
            states.join(", ")
        );
        if self.problems.is_empty() {
            let _ = writeln!(out, "no problems");
        } else {
            let _ = writeln!(out, "{} problem(s):", self.problems.len());
            for p in &self.problems {
                let error = p.last_error.as_deref().unwrap_or("-");
                let _ = writeln!(out, "  {} ({}) is {}: {error}", p.id, p.kind, p.state);
            }
        }
        out.push('\n');
        out.push_str(&render_table(&self.resources));
        out
    }
}

/// One line per resource: id, type, state, errors, last error.
pub fn render_table(resources: &[ResourceSnapshot]) -> String {
    let rows: Vec<[String; 6]> = resources
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.kind.clone(),
                r.state.to_string(),
                r.stats.errors.to_string(),
                r.stats
                    .last_initialize_duration
                    .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
                    .unwrap_or_else(|| "-".into()),
                r.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["ID", "TYPE", "STATE", "ERRORS", "INIT_MS", "LAST ERROR"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row.iter()).take(5) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: [&str; 6]| {
        for (i, cell) in cells.iter().enumerate().take(5) {
            let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
        }
        let _ = writeln!(out, "{}", cells[5]);
    };
    line(&mut out, header);
    for row in &rows {
        line(
            &mut out,
            [&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]].map(String::as_str),
        );
    }
    out
}
