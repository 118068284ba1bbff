//! `ResourceMonitor`: checks every registered resource on an interval.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::report::{
    MonitorSection, ProblemResource, ResourceReport, ResourceSummary, problems_of,
};
use super::stats::format_time;
use super::{Resource, ResourceRegistry, ResourceSnapshot};

/// The outcome of the latest check round.
#[derive(Debug, Clone, Default)]
pub struct MonitorStats {
    /// Rounds completed so far; 0 before the first.
    pub round: u64,
    pub checked_at: Option<SystemTime>,
    pub summary: ResourceSummary,
    pub problems: Vec<ProblemResource>,
}

/// Watches the health of every resource in a registry. A resource itself: initialize
/// starts the interval task, cleanup stops it.
pub struct ResourceMonitor {
    registry: Arc<ResourceRegistry>,
    interval: Duration,
    latest: watch::Sender<MonitorStats>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ResourceMonitor {
    pub const KIND: &'static str = "resource_monitor";

    pub fn new(registry: Arc<ResourceRegistry>, interval: Duration) -> Arc<Self> {
        Arc::new(ResourceMonitor {
            registry,
            interval,
            latest: watch::channel(MonitorStats::default()).0,
            task: Mutex::new(None),
        })
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Runs one round now: checks the health of every initialized resource (all at once,
    /// each bounded by its own health timeout) and publishes the result.
    pub async fn check_now(&self) -> MonitorStats {
        let resources = self.registry.list();
        let checks = resources
            .iter()
            .filter(|r| r.kind() != Self::KIND && r.state().is_usable())
            .map(|r| r.check_health());
        join_all(checks).await;
        let snapshots: Vec<ResourceSnapshot> = resources.iter().map(|r| r.snapshot()).collect();
        let mut stats = MonitorStats {
            round: 0,
            checked_at: Some(SystemTime::now()),
            summary: ResourceSummary::of(&snapshots),
            problems: problems_of(&snapshots),
        };
        self.latest.send_modify(|latest| {
            stats.round = latest.round + 1;
            *latest = stats.clone();
        });
        stats
    }

    /// The latest round's outcome.
    pub fn latest(&self) -> MonitorStats {
        self.latest.borrow().clone()
    }

    /// Each round's outcome as it is published: wait on it rather than polling.
    pub fn subscribe(&self) -> watch::Receiver<MonitorStats> {
        self.latest.subscribe()
    }

    /// Degraded and Error resources as of the latest round.
    pub fn problem_resources(&self) -> Vec<ProblemResource> {
        self.latest.borrow().problems.clone()
    }

    /// The full report: every resource as it is now, and the monitor's latest round.
    pub fn report(&self) -> ResourceReport {
        let latest = self.latest.borrow().clone();
        ResourceReport::of_registry(
            &self.registry,
            Some(MonitorSection {
                round: latest.round,
                interval_ms: self.interval.as_secs_f64() * 1000.0,
                last_check_at: latest.checked_at.map(format_time),
            }),
        )
    }

    pub fn report_json(&self) -> serde_json::Value {
        self.report().to_json()
    }

    pub fn report_text(&self) -> String {
        self.report().to_text()
    }

    fn task(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `Arc<ResourceMonitor>` is the managed thing, so that the interval task can hold it.
impl Resource for Arc<ResourceMonitor> {
    const KIND: &'static str = ResourceMonitor::KIND;

    async fn initialize(&self) -> anyhow::Result<()> {
        let monitor = self.clone();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let task = tokio::spawn(async move {
            loop {
                ticker.tick().await;
                monitor.check_now().await;
            }
        });
        if let Some(previous) = self.task().replace(task) {
            previous.abort();
        }
        Ok(())
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        let task = self.task().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        Ok(())
    }

    async fn health(&self) -> anyhow::Result<()> {
        match &*self.task() {
            Some(task) if !task.is_finished() => Ok(()),
            _ => anyhow::bail!("the monitor's interval task is not running"),
        }
    }

    fn info(&self) -> serde_json::Value {
        let latest = self.latest();
        serde_json::json!({
            "interval_ms": self.interval.as_secs_f64() * 1000.0,
            "round": latest.round,
            "problems": latest.problems.len(),
        })
    }
}
