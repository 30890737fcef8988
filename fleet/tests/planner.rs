//! Pure tests of the rollout planner: each drives a small fleet through planning steps, playing
//! the apply shell (observations, approvals, the clock).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use fleet::{
    health::{Health, HealthStatus, object_health},
    planner::{
        Action, ClusterObservation, EventType, MemberCluster, Plan, PlanInput, approval_name, plan,
        scaled_value,
    },
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use overseer_crds::fleet::{
    FleetApproval, FleetApprovalSpec, FleetDecision, FleetReview, FleetRollout, FleetRolloutSpec,
    FleetRolloutStatus, RolloutPhase, TaskWhen,
};
use serde_json::{Value, json};

const V1: &str = "sha256:1111";
const V2: &str = "sha256:2222";
const V3: &str = "sha256:3333";

struct World {
    spec: FleetRolloutSpec,
    clusters: Vec<MemberCluster>,
    status: FleetRolloutStatus,
    obs: HashMap<String, ClusterObservation>,
    approvals: Vec<FleetApproval>,
    now: DateTime<Utc>,
    revision: String,
}

fn cluster(name: &str, labels: &[(&str, &str)]) -> MemberCluster {
    MemberCluster {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        reachable: true,
        paused: false,
    }
}

fn spec(stages: Value) -> FleetRolloutSpec {
    spec_with(stages, json!({}))
}

fn spec_with(stages: Value, extra: Value) -> FleetRolloutSpec {
    let mut v = json!({
        "source": {"inline": []},
        "targets": {"clusterSelector": {"matchLabels": {"app": "pay"}}},
        "stages": stages,
    });
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            m.insert(k.clone(), x.clone());
        }
    }
    serde_json::from_value(v).expect("valid spec")
}

impl World {
    fn new(spec: FleetRolloutSpec, clusters: Vec<MemberCluster>) -> Self {
        Self {
            spec,
            clusters,
            status: FleetRolloutStatus::default(),
            obs: HashMap::new(),
            approvals: Vec::new(),
            now: "2026-03-01T10:00:00Z".parse().expect("time"),
            revision: V1.into(),
        }
    }

    fn plan(&self) -> Plan {
        plan(&PlanInput {
            rollout: "payments",
            generation: Some(4),
            spec: &self.spec,
            target_revision: &self.revision,
            clusters: &self.clusters,
            status: &self.status,
            observations: &self.obs,
            approvals: &self.approvals,
            now: self.now,
        })
    }

    /// One step: plan, keep the status, return the actions.
    fn step(&mut self) -> Vec<Action> {
        let p = self.plan();
        self.status = p.status;
        p.actions
    }

    /// Plans again with the produced status and the same inputs (an operator restart) and checks
    /// that nothing is repeated and the status is stable.
    fn assert_resumes(&self) {
        let p = self.plan();
        let repeated: Vec<&Action> = p
            .actions
            .iter()
            .filter(|a| !matches!(a, Action::RequeueAfter(_)))
            .collect();
        assert!(
            repeated.is_empty(),
            "replanning repeated actions: {repeated:?}"
        );
        assert_eq!(
            serde_json::to_string_pretty(&p.status).expect("json"),
            serde_json::to_string_pretty(&self.status).expect("json"),
            "replanning changed the status"
        );
    }

    fn advance(&mut self, minutes: i64) {
        self.now += Duration::minutes(minutes);
    }

    fn observe(&mut self, cluster: &str, revision: &str, status: HealthStatus) {
        let health = Health {
            status,
            message: format!("{status}"),
        };
        self.obs.insert(
            cluster.into(),
            ClusterObservation {
                revision: revision.into(),
                health,
            },
        );
    }

    /// Everything applied so far (at its applied revision) becomes healthy.
    fn all_healthy(&mut self) {
        let applied: Vec<(String, String)> = self
            .status
            .stages
            .iter()
            .flat_map(|s| &s.clusters)
            .filter_map(|c| Some((c.name.clone(), c.applied_revision.clone()?)))
            .collect();
        for (c, r) in applied {
            self.observe(&c, &r, HealthStatus::Current);
        }
    }

    fn member(&mut self, name: &str) -> &mut MemberCluster {
        self.clusters
            .iter_mut()
            .find(|c| c.name == name)
            .expect("member")
    }

    fn phase(&self) -> RolloutPhase {
        self.status.phase.expect("phase")
    }

    fn stage_phase(&self, stage: &str) -> &str {
        &self
            .status
            .stages
            .iter()
            .find(|s| s.name == stage)
            .expect("stage")
            .phase
    }

    fn cluster_phase(&self, cluster: &str) -> &str {
        &self
            .status
            .stages
            .iter()
            .flat_map(|s| &s.clusters)
            .find(|c| c.name == cluster)
            .expect("cluster")
            .phase
    }

    fn condition(&self, type_: &str) -> (&str, &str) {
        let c = self
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition");
        (c.status.as_str(), c.reason.as_str())
    }

    fn approve(&mut self, stage: &str, when: TaskWhen, revision: &str, decision: FleetDecision) {
        let name = approval_name("payments", stage, when, revision);
        self.approvals
            .retain(|a| a.metadata.name.as_deref() != Some(&name));
        let mut a = FleetApproval::new(
            &name,
            FleetApprovalSpec {
                rollout: "payments".into(),
                stage: stage.into(),
                when,
                revision: revision.into(),
                review: Some(FleetReview {
                    decision,
                    reviewer: "alice".into(),
                    comment: None,
                }),
            },
        );
        a.metadata.namespace = Some("pay".into());
        self.approvals.push(a);
    }

    /// Runs steps, making applied clusters healthy, until the phase is terminal.
    fn run_to_end(&mut self) -> Vec<Action> {
        let mut all = Vec::new();
        for _ in 0..100 {
            let actions = self.step();
            all.extend(actions);
            if matches!(
                self.phase(),
                RolloutPhase::Succeeded | RolloutPhase::Failed | RolloutPhase::RolledBack
            ) {
                return all;
            }
            self.all_healthy();
            self.advance(1);
        }
        panic!("rollout did not finish: {:?}", self.status);
    }
}

fn applies(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Apply { cluster, .. } => Some(cluster.clone()),
            _ => None,
        })
        .collect()
}

fn rollbacks(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Rollback { cluster, revision } => {
                assert_eq!(
                    revision, V1,
                    "rollbacks restore the last succeeded revision"
                );
                Some(cluster.clone())
            }
            _ => None,
        })
        .collect()
}

fn events(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect()
}

fn requeue(actions: &[Action]) -> Option<std::time::Duration> {
    actions.iter().find_map(|a| match a {
        Action::RequeueAfter(d) => Some(*d),
        _ => None,
    })
}

fn pay(n: usize) -> Vec<MemberCluster> {
    (1..=n)
        .map(|i| cluster(&format!("c{i}"), &[("app", "pay")]))
        .collect()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn scaled_values_follow_kubernetes_int_or_percent_rules() {
    let cases: [(IntOrString, usize, bool, Result<usize, ()>); 9] = [
        (IntOrString::Int(3), 10, false, Ok(3)),
        (IntOrString::String("25%".into()), 10, false, Ok(2)),
        (IntOrString::String("25%".into()), 10, true, Ok(3)),
        (IntOrString::String("100%".into()), 7, false, Ok(7)),
        (IntOrString::String("0%".into()), 7, true, Ok(0)),
        (IntOrString::String("33%".into()), 3, false, Ok(0)),
        (IntOrString::Int(-1), 10, false, Err(())),
        (IntOrString::String("25".into()), 10, false, Err(())),
        (IntOrString::String("x%".into()), 10, false, Err(())),
    ];
    for (v, total, up, want) in cases {
        assert_eq!(
            scaled_value(&v, total, up).map_err(|_| ()),
            want,
            "{v:?} of {total}"
        );
    }
}

#[test]
fn max_concurrency_by_count() {
    let mut w = World::new(spec(json!([{"name": "all", "maxConcurrency": 2}])), pay(5));
    let a = w.step();
    assert_eq!(applies(&a), ["c1", "c2"]);
    assert_eq!(events(&a), ["RolloutStarted", "StageStarted"]);
    w.assert_resumes();
    // Nothing new while both are in flight, even when one has applied but is not healthy yet.
    w.observe("c1", V1, HealthStatus::InProgress);
    assert!(applies(&w.step()).is_empty());
    assert_eq!(w.cluster_phase("c1"), "Applied");
    w.observe("c1", V1, HealthStatus::Current);
    assert_eq!(applies(&w.step()), ["c3"]);
    assert_eq!(w.cluster_phase("c1"), "Healthy");
    assert_eq!(w.status.progress.as_deref(), Some("1/5"));
    w.assert_resumes();
}

#[test]
fn max_concurrency_by_percent_rounds_down_with_a_minimum_of_one() {
    // (clusters, maxConcurrency, applied in the first step)
    let cases = [
        (10, "25%", 2),
        (10, "5%", 1),
        (3, "50%", 1),
        (4, "100%", 4),
        (4, "250%", 4),
    ];
    for (n, pct, want) in cases {
        let mut w = World::new(
            spec(json!([{"name": "all", "maxConcurrency": pct}])),
            pay(n),
        );
        assert_eq!(applies(&w.step()).len(), want, "{pct} of {n}");
    }
}

#[test]
fn ordering_by_sorting_label_then_name() {
    let clusters = vec![
        cluster("a-text", &[("app", "pay"), ("order", "zeta")]),
        cluster("b-ten", &[("app", "pay"), ("order", "10")]),
        cluster("c-nine", &[("app", "pay"), ("order", "9")]),
        cluster("d-none", &[("app", "pay")]),
        cluster("e-two", &[("app", "pay"), ("order", "2")]),
        cluster("f-two", &[("app", "pay"), ("order", "2")]),
        cluster("0-none", &[("app", "pay")]),
        // "1a" vs "10" vs "9" would be a cycle under pairwise int-or-text comparison.
        cluster("g-mixed", &[("app", "pay"), ("order", "1a")]),
    ];
    let mut w = World::new(
        spec(json!([{"name": "all", "sortingLabelKey": "order", "maxConcurrency": 1}])),
        clusters,
    );
    let mut order = Vec::new();
    for _ in 0..8 {
        let a = applies(&w.step());
        assert_eq!(a.len(), 1);
        order.extend(a);
        w.all_healthy();
    }
    // 2, 2 (ties by name), 9, 10 numerically; then text values; missing labels last, by name.
    assert_eq!(
        order,
        [
            "e-two", "f-two", "c-nine", "b-ten", "g-mixed", "a-text", "0-none", "d-none"
        ]
    );
}

#[test]
fn stage_assignment_first_match_and_unstaged_clusters_are_reported() {
    let clusters = vec![
        cluster("canary", &[("app", "pay"), ("ring", "0")]),
        cluster("prod", &[("app", "pay"), ("ring", "1"), ("env", "prod")]),
        cluster("lab", &[("app", "pay"), ("ring", "9")]),
        cluster("other-app", &[("app", "web"), ("ring", "0")]),
        cluster("named", &[("ring", "1")]),
    ];
    let mut s = spec(json!([
        {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "0"}}},
        {"name": "prod", "clusterSelector": {"matchExpressions": [{"key": "ring", "operator": "In", "values": ["0", "1"]}]}, "maxConcurrency": 5},
    ]));
    s.targets.cluster_names = vec!["named".into(), "ghost".into()];
    let mut w = World::new(s, clusters);
    w.step();
    let stage_clusters = |w: &World, i: usize| -> Vec<String> {
        w.status.stages[i]
            .clusters
            .iter()
            .map(|c| c.name.clone())
            .collect()
    };
    assert_eq!(stage_clusters(&w, 0), ["canary"]);
    assert_eq!(stage_clusters(&w, 1), ["named", "prod"]);
    let c = w
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "TargetsResolved")
        .expect("condition");
    assert_eq!(c.status, "False");
    assert!(c.message.contains("not registered: ghost"), "{}", c.message);
    assert!(
        c.message.contains("matched by no stage (not updated): lab"),
        "{}",
        c.message
    );
    assert_eq!(w.status.summary.as_ref().map(|s| s.total), Some(3));
}

#[test]
fn selector_matching_no_cluster_stalls() {
    let mut w = World::new(
        spec(json!([{"name": "all"}])),
        vec![cluster("x", &[("app", "web")])],
    );
    let a = w.step();
    assert!(applies(&a).is_empty());
    assert_eq!(w.phase(), RolloutPhase::Pending);
    assert_eq!(w.condition("Stalled"), ("True", "NoClustersTargeted"));
    assert_eq!(w.condition("Ready").0, "False");
    // A matching cluster registering later starts the rollout.
    w.clusters.push(cluster("y", &[("app", "pay")]));
    assert_eq!(applies(&w.step()), ["y"]);
    assert_eq!(w.condition("Stalled").0, "False");
}

#[test]
fn gate_bake_clock_resets_on_flap() {
    let mut w = World::new(
        spec(json!([
            {"name": "one", "maxConcurrency": 2, "gate": {"minBakeTime": "10m", "timeout": "2h"}},
            {"name": "two"},
        ])),
        vec![
            cluster("a", &[("app", "pay"), ("s", "1")]),
            cluster("b", &[("app", "pay"), ("s", "1")]),
            cluster("z", &[("app", "pay")]),
        ],
    );
    w.spec.stages[0].cluster_selector =
        Some(serde_json::from_value(json!({"matchLabels": {"s": "1"}})).expect("selector"));
    assert_eq!(applies(&w.step()), ["a", "b"]);
    w.all_healthy();
    let t0 = w.now;
    let a = w.step();
    assert_eq!(w.stage_phase("one"), "Baking");
    assert_eq!(requeue(&a), Some(std::time::Duration::from_secs(600)));
    assert_eq!(
        w.status.stages[0].gate_satisfied_since.as_deref(),
        Some("2026-03-01T10:00:00Z")
    );
    w.assert_resumes();
    // Five minutes in, `b` flaps: the clock is cleared.
    w.advance(5);
    w.observe("b", V1, HealthStatus::InProgress);
    let a = w.step();
    assert_eq!(events(&a), ["GateFlapped"]);
    assert_eq!(w.stage_phase("one"), "Progressing");
    assert_eq!(w.status.stages[0].gate_satisfied_since, None);
    assert!(applies(&a).is_empty(), "a flap re-applies nothing");
    // Healthy again a minute later: the bake starts over from there.
    w.advance(1);
    w.observe("b", V1, HealthStatus::Current);
    w.step();
    assert_eq!(
        w.status.stages[0].gate_satisfied_since.as_deref(),
        Some("2026-03-01T10:06:00Z")
    );
    // Ten minutes after t0 the original bake would have ended; the stage still bakes.
    w.now = t0 + Duration::minutes(15);
    let a = w.step();
    assert_eq!(w.stage_phase("one"), "Baking");
    assert_eq!(requeue(&a), Some(std::time::Duration::from_secs(60)));
    w.now = t0 + Duration::minutes(16);
    let a = w.step();
    assert_eq!(w.stage_phase("one"), "Succeeded");
    assert_eq!(applies(&a), ["z"]);
    assert_eq!(events(&a), ["StageSucceeded", "StageStarted"]);
}

#[test]
fn gate_timeout_fails_the_stage_and_pauses() {
    let mut w = World::new(
        spec(json!([{"name": "one", "gate": {"timeout": "5m"}}, {"name": "two"}])),
        pay(1),
    );
    w.step();
    w.observe("c1", V1, HealthStatus::InProgress);
    w.advance(4);
    let a = w.step();
    assert_eq!(requeue(&a), Some(std::time::Duration::from_secs(60)));
    w.advance(1);
    let a = w.step();
    assert_eq!(events(&a), ["StageFailed"]);
    assert_eq!(w.phase(), RolloutPhase::Failed);
    assert_eq!(w.stage_phase("one"), "Failed");
    assert_eq!(w.condition("Stalled"), ("True", "Failed"));
    assert_eq!(w.condition("Ready"), ("False", "Failed"));
    assert_eq!(w.status.history[0].result, "Failed");
    w.assert_resumes();
    // Even if the cluster turns healthy, a paused failure stays put.
    w.all_healthy();
    assert!(applies(&w.step()).is_empty());
    assert_eq!(w.phase(), RolloutPhase::Failed);
}

#[test]
fn failed_cluster_beyond_max_unavailable_fails_at_once_and_continue_goes_on() {
    let mut w = World::new(
        spec_with(
            json!([
                {"name": "one", "clusterSelector": {"matchLabels": {"s": "1"}}, "maxConcurrency": 2},
                {"name": "two"},
            ]),
            json!({"failurePolicy": "Continue"}),
        ),
        vec![
            cluster("a", &[("app", "pay"), ("s", "1")]),
            cluster("b", &[("app", "pay"), ("s", "1")]),
            cluster("z", &[("app", "pay")]),
        ],
    );
    w.step();
    w.observe("a", V1, HealthStatus::Failed);
    let a = w.step();
    assert_eq!(w.stage_phase("one"), "Failed");
    assert_eq!(applies(&a), ["z"], "Continue goes on with the next stage");
    assert_eq!(events(&a), ["StageFailed", "StageStarted"]);
    w.all_healthy();
    w.observe("a", V1, HealthStatus::Failed);
    w.step();
    assert_eq!(
        w.phase(),
        RolloutPhase::Failed,
        "a failed stage keeps the rollout from succeeding"
    );
    assert_eq!(w.status.last_succeeded_revision, None);
    assert_eq!(w.condition("Ready").0, "False");
    let s = w.status.summary.clone().expect("summary");
    assert_eq!((s.total, s.updated, s.healthy, s.failed), (3, 3, 2, 1));
}

#[test]
fn max_unavailable_tolerates_unreachable_clusters() {
    for (max_unavailable, passes) in [(1, true), (0, false)] {
        let mut w = World::new(
            spec(
                json!([{"name": "one", "maxConcurrency": 3, "maxUnavailable": max_unavailable, "gate": {"timeout": "10m"}}]),
            ),
            pay(3),
        );
        w.member("c3").reachable = false;
        assert_eq!(
            applies(&w.step()),
            ["c1", "c2"],
            "unreachable clusters are not applied"
        );
        assert_eq!(w.cluster_phase("c3"), "Unreachable");
        w.all_healthy();
        w.step();
        assert_eq!(
            w.phase() == RolloutPhase::Succeeded,
            passes,
            "maxUnavailable {max_unavailable}"
        );
        if !passes {
            w.advance(10);
            w.step();
            assert_eq!(w.phase(), RolloutPhase::Failed);
            assert_eq!(w.status.summary.as_ref().map(|s| s.unreachable), Some(1));
        }
    }
}

#[test]
fn supersede_restarts_from_the_first_stage() {
    let mut w = World::new(
        spec(json!([
            {"name": "one", "clusterSelector": {"matchLabels": {"s": "1"}}},
            {"name": "two"},
        ])),
        vec![
            cluster("a", &[("app", "pay"), ("s", "1")]),
            cluster("z", &[("app", "pay")]),
        ],
    );
    w.step();
    w.all_healthy();
    let a = w.step();
    assert_eq!(applies(&a), ["z"]);
    assert_eq!(w.status.current_stage.as_deref(), Some("two"));
    // A new source revision mid-rollout.
    w.revision = V2.into();
    let a = w.step();
    assert_eq!(events(&a), ["Superseded", "RolloutStarted", "StageStarted"]);
    assert_eq!(
        a.iter().find(|x| matches!(x, Action::Apply { .. })),
        Some(&Action::Apply {
            cluster: "a".into(),
            revision: V2.into()
        })
    );
    assert_eq!(w.status.current_stage.as_deref(), Some("one"));
    assert_eq!(w.status.target_revision.as_deref(), Some(V2));
    assert_eq!(
        (
            w.status.history[0].revision.as_str(),
            w.status.history[0].result.as_str()
        ),
        (V1, "Superseded")
    );
    assert_eq!(w.stage_phase("two"), "Pending");
    // The old revision's health on `z` does not count for the new one.
    assert_eq!(w.cluster_phase("z"), "Pending");
    w.assert_resumes();
    w.run_to_end();
    assert_eq!(w.phase(), RolloutPhase::Succeeded);
    assert_eq!(w.status.last_succeeded_revision.as_deref(), Some(V2));
}

/// Three stages: v1 everywhere, then v2 fails in the third stage and rolls back, last stage first.
#[test]
fn rollback_in_reverse_stage_order_only_updated_clusters() {
    let clusters = vec![
        cluster("a1", &[("app", "pay"), ("s", "a")]),
        cluster("b1", &[("app", "pay"), ("s", "b")]),
        cluster("b2", &[("app", "pay"), ("s", "b")]),
        cluster("c1", &[("app", "pay"), ("s", "c")]),
        cluster("c2", &[("app", "pay"), ("s", "c")]),
        cluster("c3", &[("app", "pay"), ("s", "c")]),
    ];
    let mut w = World::new(
        spec_with(
            json!([
                {"name": "a", "clusterSelector": {"matchLabels": {"s": "a"}}},
                {"name": "b", "clusterSelector": {"matchLabels": {"s": "b"}}, "maxConcurrency": 2},
                {"name": "c", "clusterSelector": {"matchLabels": {"s": "c"}}, "maxConcurrency": 2},
            ]),
            json!({"failurePolicy": "Rollback"}),
        ),
        clusters,
    );
    w.run_to_end();
    assert_eq!(w.status.last_succeeded_revision.as_deref(), Some(V1));

    w.revision = V2.into();
    // Stages a and b get v2; in stage c, c1 and c2 get it and c1 fails; c3 never does.
    for _ in 0..2 {
        w.step();
        w.all_healthy();
    }
    assert_eq!(applies(&w.step()), ["c1", "c2"]);
    assert_eq!(w.status.current_stage.as_deref(), Some("c"));
    w.observe("c1", V2, HealthStatus::Failed);
    w.observe("c2", V2, HealthStatus::Current);
    let a = w.step();
    assert_eq!(w.phase(), RolloutPhase::RollingBack);
    assert_eq!(events(&a)[..2], ["StageFailed", "RollbackStarted"]);
    // Last stage first, its updated clusters only (within maxConcurrency 2).
    assert_eq!(rollbacks(&a), ["c1", "c2"]);
    w.assert_resumes();
    let mut order = vec![rollbacks(&a)];
    for _ in 0..5 {
        for c in ["a1", "b1", "b2", "c1", "c2"] {
            if w.cluster_phase(c) == "RollingBack" {
                w.observe(c, V1, HealthStatus::Current);
            }
        }
        let a = w.step();
        let r = rollbacks(&a);
        if !r.is_empty() {
            order.push(r);
        }
        if w.phase() == RolloutPhase::RolledBack {
            assert!(events(&a).contains(&"RolledBack"));
            break;
        }
    }
    assert_eq!(order, [vec!["c1", "c2"], vec!["b1", "b2"], vec!["a1"]]);
    assert_eq!(w.phase(), RolloutPhase::RolledBack);
    assert_eq!(
        w.cluster_phase("c3"),
        "Pending",
        "never updated, never rolled back"
    );
    assert_eq!(w.stage_phase("a"), "RolledBack");
    assert_eq!(
        (
            w.status.history[0].revision.as_str(),
            w.status.history[0].result.as_str()
        ),
        (V2, "RolledBack")
    );
    assert_eq!(w.status.last_succeeded_revision.as_deref(), Some(V1));
    assert_eq!(w.condition("Ready"), ("False", "RolledBack"));
    assert_eq!(w.condition("Stalled"), ("True", "RolledBack"));
    w.assert_resumes();
}

#[test]
fn rollback_without_an_earlier_success_pauses() {
    let mut w = World::new(
        spec_with(
            json!([{"name": "one"}]),
            json!({"failurePolicy": "Rollback"}),
        ),
        pay(1),
    );
    w.step();
    w.observe("c1", V1, HealthStatus::Failed);
    let a = w.step();
    assert_eq!(events(&a), ["StageFailed", "RollbackImpossible"]);
    assert!(rollbacks(&a).is_empty());
    assert_eq!(w.phase(), RolloutPhase::Failed);
}

#[test]
fn approvals_create_wait_ignore_other_revisions_then_proceed() {
    let mut w = World::new(
        spec(
            json!([{"name": "canary", "beforeTasks": [{"type": "Approval"}], "afterTasks": [{"type": "TimedWait", "waitTime": "1h"}]}]),
        ),
        pay(1),
    );
    let name = approval_name("payments", "canary", TaskWhen::Before, V1);
    assert_eq!(name, "payments-canary-before-1111");
    let a = w.step();
    assert_eq!(
        a.iter()
            .find(|x| matches!(x, Action::CreateApproval { .. })),
        Some(&Action::CreateApproval {
            name: name.clone(),
            stage: "canary".into(),
            when: TaskWhen::Before,
            revision: V1.into()
        })
    );
    assert!(applies(&a).is_empty());
    assert_eq!(w.phase(), RolloutPhase::WaitingForApproval);
    assert_eq!(w.stage_phase("canary"), "WaitingForApproval");
    assert_eq!(w.condition("Progressing"), ("True", "WaitingForApproval"));
    // Once the approval exists (unreviewed), waiting repeats nothing.
    w.approve("canary", TaskWhen::Before, V1, FleetDecision::Approved);
    w.approvals[0].spec.review = None;
    w.assert_resumes();
    // An approval of another revision, stage or side does not count.
    w.approve("canary", TaskWhen::Before, V2, FleetDecision::Approved);
    w.approve("canary", TaskWhen::After, V1, FleetDecision::Approved);
    assert!(applies(&w.step()).is_empty());
    assert_eq!(w.phase(), RolloutPhase::WaitingForApproval);
    // Approved: the stage starts and the approval is recorded.
    w.approve("canary", TaskWhen::Before, V1, FleetDecision::Approved);
    let a = w.step();
    assert_eq!(applies(&a), ["c1"]);
    assert_eq!(events(&a), ["Approved", "StageStarted"]);
    let task = &w.status.stages[0].tasks[0];
    assert_eq!(
        (task.phase.as_str(), task.approved_by.as_deref()),
        ("Completed", Some("alice"))
    );
    w.assert_resumes();
    // After the gate, the TimedWait runs from its recorded start, surviving a restart.
    w.all_healthy();
    let a = w.step();
    assert_eq!(requeue(&a), Some(std::time::Duration::from_secs(3600)));
    assert_eq!(w.stage_phase("canary"), "Waiting");
    w.advance(59);
    w.assert_resumes();
    w.step();
    assert_eq!(w.phase(), RolloutPhase::Progressing);
    w.advance(1);
    let a = w.step();
    assert_eq!(w.phase(), RolloutPhase::Succeeded);
    assert_eq!(events(&a), ["StageSucceeded", "RolloutSucceeded"]);
    assert_eq!(w.condition("Ready"), ("True", "Succeeded"));
    // Approvals already given are never asked again.
    w.approvals.clear();
    w.assert_resumes();
}

#[test]
fn rejected_approval_fails_per_policy() {
    for (policy, want) in [
        ("Pause", RolloutPhase::Failed),
        ("Continue", RolloutPhase::Progressing),
    ] {
        let mut w = World::new(
            spec_with(
                json!([
                    {"name": "one", "clusterSelector": {"matchLabels": {"s": "1"}}, "afterTasks": [{"type": "Approval"}]},
                    {"name": "two"},
                ]),
                json!({"failurePolicy": policy}),
            ),
            vec![
                cluster("a", &[("app", "pay"), ("s", "1")]),
                cluster("z", &[("app", "pay")]),
            ],
        );
        w.step();
        w.all_healthy();
        let a = w.step();
        assert!(a.iter().any(|x| matches!(
            x,
            Action::CreateApproval {
                when: TaskWhen::After,
                ..
            }
        )));
        w.approve("one", TaskWhen::After, V1, FleetDecision::Rejected);
        let a = w.step();
        assert_eq!(
            events(&a)[..2],
            ["ApprovalRejected", "StageFailed"],
            "{policy}"
        );
        assert_eq!(w.phase(), want, "{policy}");
        assert_eq!(w.status.stages[0].tasks[0].phase, "Rejected");
        assert_eq!(
            applies(&a),
            if policy == "Continue" {
                vec!["z".to_string()]
            } else {
                vec![]
            }
        );
    }
    // Under Rollback, a rejection rolls back the updated clusters.
    let mut w = World::new(
        spec_with(
            json!([{"name": "one"}]),
            json!({"failurePolicy": "Rollback"}),
        ),
        pay(1),
    );
    w.run_to_end();
    w.spec.stages[0].after_tasks =
        spec(json!([{"name": "one", "afterTasks": [{"type": "Approval"}]}])).stages[0]
            .after_tasks
            .clone();
    w.revision = V2.into();
    w.step();
    w.all_healthy();
    w.step();
    w.approve("one", TaskWhen::After, V2, FleetDecision::Rejected);
    let a = w.step();
    assert_eq!(rollbacks(&a), ["c1"]);
}

#[test]
fn pause_resume_and_abandon() {
    let mut w = World::new(
        spec(json!([{"name": "one", "maxConcurrency": 1, "gate": {"timeout": "10m"}}])),
        pay(3),
    );
    assert_eq!(applies(&w.step()), ["c1"]);
    w.spec.state = serde_json::from_value(json!("Pause")).expect("state");
    w.all_healthy();
    let a = w.step();
    assert_eq!(events(&a), ["Paused"]);
    assert!(
        applies(&a).is_empty(),
        "paused: nothing applied although a slot is free"
    );
    assert_eq!(w.phase(), RolloutPhase::Paused);
    assert_eq!(w.condition("Progressing"), ("False", "Paused"));
    assert_eq!(w.condition("Stalled").0, "False");
    // A long pause does not time the stage out.
    w.advance(60);
    w.assert_resumes();
    w.spec.state = serde_json::from_value(json!("Execute")).expect("state");
    let a = w.step();
    assert_eq!(events(&a), ["Resumed"]);
    assert_eq!(applies(&a), ["c2"]);
    assert_eq!(w.phase(), RolloutPhase::Progressing);
    w.assert_resumes();
    // Abandon: final for this revision.
    w.spec.state = serde_json::from_value(json!("Abandon")).expect("state");
    let a = w.step();
    assert_eq!(events(&a), ["Abandoned"]);
    assert_eq!(w.phase(), RolloutPhase::Abandoned);
    assert_eq!(w.condition("Stalled"), ("True", "Abandoned"));
    assert_eq!(w.status.history[0].result, "Abandoned");
    w.spec.state = serde_json::from_value(json!("Execute")).expect("state");
    w.all_healthy();
    assert!(w.step().iter().all(|a| !matches!(a, Action::Apply { .. })));
    assert_eq!(w.phase(), RolloutPhase::Abandoned);
    // A new revision starts a new rollout.
    w.revision = V2.into();
    assert_eq!(applies(&w.step()), ["c1"]);
}

#[test]
fn resume_after_a_paused_failure_retries_the_stage() {
    let mut w = World::new(
        spec(json!([{"name": "one", "gate": {"timeout": "5m"}}])),
        pay(1),
    );
    w.step();
    w.observe("c1", V1, HealthStatus::Failed);
    w.step();
    assert_eq!(w.phase(), RolloutPhase::Failed);
    w.spec.state = serde_json::from_value(json!("Pause")).expect("state");
    w.step();
    w.spec.state = serde_json::from_value(json!("Execute")).expect("state");
    w.obs.clear();
    let a = w.step();
    assert_eq!(applies(&a), ["c1"], "the failed cluster is applied again");
    w.all_healthy();
    w.step();
    assert_eq!(w.phase(), RolloutPhase::Succeeded);
}

#[test]
fn paused_member_is_not_delivered_to() {
    let mut w = World::new(
        spec(json!([{"name": "one", "maxConcurrency": 2, "maxUnavailable": 1}])),
        pay(2),
    );
    w.member("c2").paused = true;
    assert_eq!(applies(&w.step()), ["c1"]);
    assert_eq!(w.cluster_phase("c2"), "Paused");
    w.all_healthy();
    w.step();
    assert_eq!(
        w.phase(),
        RolloutPhase::Succeeded,
        "one paused cluster is within maxUnavailable"
    );
    // Unpaused later: the finished rollout delivers to it.
    w.member("c2").paused = false;
    assert_eq!(applies(&w.step()), ["c2"]);
}

#[test]
fn restart_mid_bake_does_not_serve_bake_time_again() {
    let mut w = World::new(
        spec(json!([{"name": "one", "gate": {"minBakeTime": "30m"}}])),
        pay(1),
    );
    w.step();
    w.all_healthy();
    w.step();
    // Persist the status through JSON (what the API server stores) and restart 30 minutes later.
    let stored = serde_json::to_value(&w.status).expect("serialize");
    w.status = serde_json::from_value(stored).expect("deserialize");
    w.advance(30);
    let a = w.step();
    assert_eq!(w.phase(), RolloutPhase::Succeeded);
    assert!(applies(&a).is_empty());
}

#[test]
fn restart_at_every_step_repeats_nothing() {
    let mut w = World::new(
        spec(json!([
            {"name": "a", "clusterSelector": {"matchLabels": {"s": "a"}}, "beforeTasks": [{"type": "TimedWait", "waitTime": "2m"}]},
            {"name": "b", "maxConcurrency": "50%", "gate": {"minBakeTime": "3m"}, "afterTasks": [{"type": "Approval"}]},
        ])),
        vec![
            cluster("a1", &[("app", "pay"), ("s", "a")]),
            cluster("b1", &[("app", "pay")]),
            cluster("b2", &[("app", "pay")]),
            cluster("b3", &[("app", "pay")]),
            cluster("b4", &[("app", "pay")]),
        ],
    );
    let mut applied = Vec::new();
    for _ in 0..30 {
        let a = w.step();
        applied.extend(applies(&a));
        // The shell executed the actions: a requested approval now exists, not yet reviewed.
        for x in &a {
            if let Action::CreateApproval {
                stage,
                when,
                revision,
                ..
            } = x
            {
                w.approve(stage, *when, revision, FleetDecision::Approved);
                if let Some(created) = w.approvals.last_mut() {
                    created.spec.review = None;
                }
            }
        }
        w.assert_resumes();
        if w.phase() == RolloutPhase::Succeeded {
            break;
        }
        if let Some(Action::CreateApproval {
            stage,
            when,
            revision,
            ..
        }) = a
            .iter()
            .find(|x| matches!(x, Action::CreateApproval { .. }))
        {
            w.approve(stage, *when, revision, FleetDecision::Approved);
        }
        w.all_healthy();
        w.advance(1);
    }
    assert_eq!(w.phase(), RolloutPhase::Succeeded);
    applied.sort();
    assert_eq!(
        applied,
        ["a1", "b1", "b2", "b3", "b4"],
        "each cluster applied exactly once"
    );
}

#[test]
fn prune_clusters_that_leave_the_targets() {
    for (prune, want) in [(None, true), (Some(false), false)] {
        let mut s = spec(json!([{"name": "one", "maxConcurrency": 2}]));
        s.apply_strategy.prune = prune;
        let mut w = World::new(s, pay(2));
        w.run_to_end();
        w.member("c2").labels.insert("app".into(), "web".into());
        let a = w.step();
        assert_eq!(
            a.contains(&Action::Prune {
                cluster: "c2".into()
            }),
            want,
            "prune {prune:?}"
        );
        assert_eq!(w.status.summary.as_ref().map(|s| s.total), Some(1));
        w.assert_resumes();
    }
}

#[test]
fn revision_history_is_limited_newest_first() {
    let mut w = World::new(
        spec_with(json!([{"name": "one"}]), json!({"revisionHistoryLimit": 2})),
        pay(1),
    );
    for rev in [V1, V2, V3] {
        w.revision = rev.into();
        w.run_to_end();
    }
    let h: Vec<(&str, &str)> = w
        .status
        .history
        .iter()
        .map(|h| (h.revision.as_str(), h.result.as_str()))
        .collect();
    assert_eq!(h, [(V3, "Succeeded"), (V2, "Succeeded")]);
}

#[test]
fn invalid_spec_is_a_stalled_condition_reported_once() {
    let mut w = World::new(
        spec(json!([{"name": "one", "maxConcurrency": "lots"}])),
        pay(1),
    );
    let a = w.step();
    assert!(applies(&a).is_empty());
    assert_eq!(events(&a), ["InvalidSpec"]);
    assert_eq!(w.condition("Stalled"), ("True", "InvalidSpec"));
    let msg = &w
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .expect("stalled")
        .message;
    assert!(msg.contains("stages[one].maxConcurrency"), "{msg}");
    w.assert_resumes();
    for stages in [
        json!([{"name": "one"}, {"name": "one"}]),
        json!([{"name": "one", "maxConcurrency": 0}]),
        json!([{"name": "one", "clusterSelector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}}]),
    ] {
        let mut w = World::new(spec(stages.clone()), pay(1));
        w.step();
        assert_eq!(w.condition("Stalled"), ("True", "InvalidSpec"), "{stages}");
    }
}

#[test]
fn conditions_keep_transition_times_and_generation() {
    let mut w = World::new(spec(json!([{"name": "one"}])), pay(1));
    w.step();
    let t = |w: &World| {
        w.status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("ready")
            .last_transition_time
            .clone()
    };
    let first = t(&w);
    w.advance(1);
    w.step();
    assert_eq!(t(&w), first, "unchanged status keeps lastTransitionTime");
    w.all_healthy();
    w.advance(1);
    w.step();
    assert_ne!(t(&w), first);
    assert!(
        w.status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(4))
    );
    assert_eq!(w.status.observed_generation, Some(4));
}

/// The rollout's own status reads right through kstatus (as Flux and Argo CD would read it).
#[test]
fn ready_condition_is_kstatus_compatible() {
    let as_object = |w: &World| -> Value {
        let mut r = FleetRollout::new("payments", w.spec.clone());
        r.metadata.generation = Some(4);
        r.status = Some(w.status.clone());
        serde_json::to_value(&r).expect("serialize")
    };
    let mut w = World::new(
        spec(json!([{"name": "one", "gate": {"timeout": "5m"}}])),
        pay(1),
    );
    w.step();
    assert_eq!(
        object_health(&as_object(&w)).status,
        HealthStatus::InProgress
    );
    w.all_healthy();
    w.step();
    assert_eq!(object_health(&as_object(&w)).status, HealthStatus::Current);

    let mut w = World::new(
        spec(json!([{"name": "one", "gate": {"timeout": "5m"}}])),
        pay(1),
    );
    w.step();
    w.advance(5);
    w.step();
    assert_eq!(object_health(&as_object(&w)).status, HealthStatus::Failed);
}

#[test]
fn events_have_types() {
    let mut w = World::new(
        spec(json!([{"name": "one", "gate": {"timeout": "1m"}}])),
        pay(1),
    );
    w.step();
    w.advance(1);
    let a = w.step();
    assert!(a.iter().any(|x| matches!(x, Action::Event { type_: EventType::Warning, reason, .. } if reason == "StageFailed")));
}

#[test]
fn large_fleet_assignment_counts() {
    let clusters: Vec<MemberCluster> = (0..1000)
        .map(|i| {
            let ring = (i % 4).to_string();
            let name = format!("c{i:04}");
            let mut m = cluster(&name, &[("app", "pay")]);
            m.labels.insert("ring".into(), ring);
            m
        })
        .collect();
    let mut w = World::new(
        spec(json!([
            {"name": "r0", "clusterSelector": {"matchLabels": {"ring": "0"}}, "maxConcurrency": "10%"},
            {"name": "rest"},
        ])),
        clusters,
    );
    let a = w.step();
    assert_eq!(applies(&a).len(), 25);
    let sizes: BTreeMap<&str, usize> = w
        .status
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.clusters.len()))
        .collect();
    assert_eq!(sizes, BTreeMap::from([("r0", 250), ("rest", 750)]));
    assert_eq!(w.status.progress.as_deref(), Some("0/1000"));
}
