//! One planning step for a rollout over 1,000 clusters in four stages (target: ≤ 1 ms).
//!
//! `cargo bench -p fleet --bench planner`

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use fleet::{
    health::Health,
    planner::{ClusterObservation, MemberCluster, PlanInput, plan},
};
use overseer_crds::fleet::{FleetRolloutSpec, FleetRolloutStatus};
use serde_json::json;

const CLUSTERS: usize = 1_000;

fn spec() -> FleetRolloutSpec {
    serde_json::from_value(json!({
        "source": {"inline": []},
        "targets": {"clusterSelector": {"matchLabels": {"app": "payments"}}},
        "stages": [
            {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "0"}}, "sortingLabelKey": "order"},
            {"name": "early", "clusterSelector": {"matchLabels": {"ring": "1"}}, "sortingLabelKey": "order", "maxConcurrency": "10%"},
            {"name": "cloud", "clusterSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["cloud"]}]}, "sortingLabelKey": "order", "maxConcurrency": "25%", "maxUnavailable": 2},
            {"name": "edge", "sortingLabelKey": "order", "maxConcurrency": "25%", "maxUnavailable": "5%",
             "gate": {"minBakeTime": "10m"}}
        ]
    }))
    .expect("valid spec")
}

fn clusters() -> Vec<MemberCluster> {
    (0..CLUSTERS)
        .map(|i| MemberCluster {
            name: format!("cluster-{i:04}"),
            labels: BTreeMap::from([
                ("app".to_string(), "payments".to_string()),
                (
                    "ring".to_string(),
                    (if i < 5 {
                        "0"
                    } else if i < 100 {
                        "1"
                    } else {
                        "2"
                    })
                    .to_string(),
                ),
                (
                    "tier".to_string(),
                    (if i % 3 == 0 { "edge" } else { "cloud" }).to_string(),
                ),
                ("order".to_string(), ((i * 7919) % 1000).to_string()),
            ]),
            reachable: !(i >= 100 && i % 97 == 0),
            paused: false,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let spec = spec();
    let clusters = clusters();
    let now: DateTime<Utc> = "2026-06-01T12:00:00Z".parse().expect("time");
    let approvals = Vec::new();

    // Drive the rollout into the `cloud` stage with every earlier cluster healthy and half the
    // current stage in flight, so the measured step does real work.
    let mut status = FleetRolloutStatus::default();
    let mut observations: HashMap<String, ClusterObservation> = HashMap::new();
    for step in 0..60 {
        let input = PlanInput {
            rollout: "payments",
            generation: Some(1),
            spec: &spec,
            target_revision: "sha256:abc",
            clusters: &clusters,
            status: &status,
            observations: &observations,
            approvals: &approvals,
            now: now + chrono::Duration::minutes(step),
        };
        let p = plan(&input);
        status = p.status;
        if status.current_stage.as_deref() == Some("cloud") {
            break;
        }
        for c in status.stages.iter().flat_map(|s| &s.clusters) {
            if c.applied_revision.is_some() {
                observations.insert(
                    c.name.clone(),
                    ClusterObservation {
                        revision: "sha256:abc".into(),
                        health: Health::current("ok"),
                    },
                );
            }
        }
    }
    assert_eq!(
        status.current_stage.as_deref(),
        Some("cloud"),
        "bench setup reached the cloud stage"
    );

    let later = now + chrono::Duration::minutes(61);
    c.bench_function("plan_step_1000_clusters", |b| {
        b.iter(|| {
            let input = PlanInput {
                rollout: "payments",
                generation: Some(1),
                spec: &spec,
                target_revision: "sha256:abc",
                clusters: &clusters,
                status: &status,
                observations: &observations,
                approvals: &approvals,
                now: later,
            };
            std::hint::black_box(plan(std::hint::black_box(&input)))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
