//! `ResourceMonitor`: interval checks, problem resources, the report and its schema.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use exo::resource::{Managed, ResourceMonitor, ResourceRegistry, ResourceState::*};

use crate::probe::{Probe, WAIT, registered};

fn monitor(
    registry: &Arc<ResourceRegistry>,
    interval: Duration,
) -> Arc<Managed<Arc<ResourceMonitor>>> {
    Managed::builder("monitor", ResourceMonitor::new(registry.clone(), interval))
        .register_in(registry)
        .build()
}

#[tokio::test]
async fn an_unhealthy_resource_shows_in_problem_resources_within_one_interval() {
    let registry = ResourceRegistry::new();
    let healthy = registered("healthy", Probe::new(), &registry);
    let sick = Probe::new();
    let knobs = sick.knobs();
    let sick = registered("sick", sick, &registry);
    healthy.initialize().await.unwrap();
    sick.initialize().await.unwrap();

    let monitor = monitor(&registry, Duration::from_millis(50));
    let view = monitor.ensure_ready().await.unwrap().clone();
    let mut rounds = view.subscribe();
    // A round with everything healthy first.
    let first = rounds.wait_for(|s| s.round >= 1).await.unwrap().clone();
    assert!(first.problems.is_empty());
    assert_eq!(first.summary.by_state["ready"], 3);

    // It turns unhealthy after round `turned`; the round after that must show it.
    knobs.unhealthy.store(true, SeqCst);
    let turned = view.latest().round;
    let seen = tokio::time::timeout(WAIT, rounds.wait_for(|s| !s.problems.is_empty()))
        .await
        .expect("the monitor must notice")
        .unwrap()
        .clone();
    assert!(
        seen.round <= turned + 2,
        "seen in round {} but unhealthy since round {turned}",
        seen.round
    );
    assert_eq!(seen.problems.len(), 1);
    assert_eq!(seen.problems[0].id, "sick");
    assert_eq!(seen.problems[0].state, Degraded);
    assert!(
        seen.problems[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("unhealthy")
    );
    assert_eq!(view.problem_resources(), seen.problems);
    assert_eq!(healthy.state(), Ready);

    // Recovered: the problem goes away on a later round.
    knobs.unhealthy.store(false, SeqCst);
    tokio::time::timeout(WAIT, rounds.wait_for(|s| s.problems.is_empty()))
        .await
        .unwrap()
        .unwrap();
    monitor.cleanup().await.unwrap();
    assert_eq!(monitor.state(), Closed);
}

#[tokio::test]
async fn the_json_report_matches_its_documented_schema() {
    let registry = ResourceRegistry::new();
    let ok = registered("ok", Probe::network(), &registry);
    let failing = Probe::new();
    failing.knobs().fail_init.store(true, SeqCst);
    let failing = registered("failing", failing, &registry);
    let _untouched = registered("untouched", Probe::new(), &registry);
    ok.initialize().await.unwrap();
    failing.initialize().await.unwrap_err();

    let monitor = monitor(&registry, Duration::from_secs(3600));
    let view = monitor.ensure_ready().await.unwrap().clone();
    view.check_now().await;
    let report = view.report_json();

    let schema: serde_json::Value = serde_json::from_str(include_str!(
        "../../docs/schemas/resource-report.schema.json"
    ))
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&report)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "report does not match its schema: {errors:#?}\n{report:#}"
    );

    // And the schema is not vacuous: a broken report fails it.
    let mut broken = report.clone();
    broken["resources"][0]["state"] = "sleepy".into();
    assert!(!validator.is_valid(&broken));
    broken = report.clone();
    broken.as_object_mut().unwrap().remove("summary");
    assert!(!validator.is_valid(&broken));

    assert_eq!(report["summary"]["total"], 4);
    assert_eq!(report["summary"]["by_state"]["error"], 1);
    assert_eq!(report["problems"][0]["id"], "failing");
    let text = view.report_text();
    assert!(
        text.contains("failing") && text.contains("error") && text.contains("untouched"),
        "{text}"
    );
}

#[tokio::test]
async fn dropped_resources_leave_the_registry() {
    let registry = ResourceRegistry::new();
    let kept = registered("kept", Probe::new(), &registry);
    {
        let _gone = registered("gone", Probe::new(), &registry);
        assert_eq!(registry.list().len(), 2);
    }
    let ids: Vec<String> = registry.list().iter().map(|r| r.id().to_string()).collect();
    assert_eq!(ids, vec!["kept"]);
    assert_eq!(registry.find("kept", Some("probe")).len(), 1);
    assert!(registry.find("kept", Some("peer_handle")).is_empty());
    drop(kept);
}
