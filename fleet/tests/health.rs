//! kstatus rules per kind and CEL health expressions.

use fleet::health::{GateEvaluator, HealthError, HealthStatus, object_health};
use overseer_crds::fleet::{HealthExpression, StageGate};
use serde_json::{Value, json};

use HealthStatus::{Current, Failed, InProgress, Unknown};

fn deploy(spec_replicas: i64, status: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "pay", "generation": 2},
        "spec": {"replicas": spec_replicas, "progressDeadlineSeconds": 600},
        "status": status,
    })
}

fn available_conditions() -> Value {
    json!([
        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
    ])
}

#[test]
fn kstatus_table() {
    let cases: Vec<(&str, Value, HealthStatus, &str)> = vec![
        (
            "deployment rolled out",
            deploy(
                3,
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3, "conditions": available_conditions()}),
            ),
            Current,
            "Deployment is available. Replicas: 3",
        ),
        (
            "deployment generation not observed",
            deploy(
                3,
                json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3, "conditions": available_conditions()}),
            ),
            InProgress,
            "generation is 2, but latest observed generation is 1",
        ),
        (
            "deployment updating",
            deploy(
                3,
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 3, "availableReplicas": 3, "conditions": available_conditions()}),
            ),
            InProgress,
            "Updated: 1/3",
        ),
        (
            "deployment scaling up",
            deploy(
                3,
                json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}),
            ),
            InProgress,
            "Replicas: 2/3",
        ),
        (
            "deployment old pods terminating",
            deploy(
                3,
                json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3}),
            ),
            InProgress,
            "Pending termination: 1",
        ),
        (
            "deployment not available yet",
            deploy(
                3,
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 2}),
            ),
            InProgress,
            "Available: 2/3",
        ),
        (
            "deployment progress deadline exceeded",
            deploy(
                3,
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}),
            ),
            Failed,
            "Progress deadline exceeded",
        ),
        (
            "deployment without status",
            deploy(1, Value::Null),
            InProgress,
            "Replicas: 0/1",
        ),
        (
            "deployment replicas of the wrong type",
            deploy(1, json!({"replicas": "three"})),
            Unknown,
            ".status.replicas is not an integer",
        ),
        (
            "statefulset current",
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "generation": 1},
                   "spec": {"replicas": 2},
                   "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "currentReplicas": 2, "updatedReplicas": 2, "currentRevision": "db-1", "updateRevision": "db-1"}}),
            Current,
            "All replicas scheduled as expected. Replicas: 2",
        ),
        (
            "statefulset revision not current",
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "generation": 1},
                   "spec": {"replicas": 2},
                   "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "currentReplicas": 2, "updatedReplicas": 1, "currentRevision": "db-1", "updateRevision": "db-2"}}),
            InProgress,
            "Waiting for updated revision db-2 to be current",
        ),
        (
            "statefulset not ready",
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
                   "spec": {"replicas": 3}, "status": {"replicas": 3, "readyReplicas": 1}}),
            InProgress,
            "Ready: 1/3",
        ),
        (
            "statefulset partitioned rollout done",
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
                   "spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}},
                   "status": {"replicas": 3, "readyReplicas": 3, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "b"}}),
            Current,
            "Partitioned roll out complete. Updated: 1",
        ),
        (
            "daemonset current",
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
                   "status": {"desiredNumberScheduled": 4, "currentNumberScheduled": 4, "updatedNumberScheduled": 4, "numberAvailable": 4, "numberReady": 4}}),
            Current,
            "All replicas scheduled as expected. Replicas: 4",
        ),
        (
            "daemonset updating",
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
                   "status": {"desiredNumberScheduled": 4, "currentNumberScheduled": 4, "updatedNumberScheduled": 2, "numberAvailable": 4, "numberReady": 4}}),
            InProgress,
            "Updated: 2/4",
        ),
        (
            "daemonset unavailable",
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
                   "status": {"desiredNumberScheduled": 4, "currentNumberScheduled": 4, "updatedNumberScheduled": 4, "numberAvailable": 3, "numberReady": 4}}),
            InProgress,
            "Available: 3/4",
        ),
        (
            "daemonset without status",
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"}}),
            InProgress,
            "Missing .status.desiredNumberScheduled",
        ),
        (
            "job complete",
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
                   "spec": {"completions": 1},
                   "status": {"succeeded": 1, "startTime": "2026-01-01T00:00:00Z", "conditions": [{"type": "Complete", "status": "True"}]}}),
            Current,
            "Job Completed. succeeded: 1/1",
        ),
        (
            "job failed",
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
                   "status": {"failed": 6, "startTime": "2026-01-01T00:00:00Z", "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}),
            Failed,
            "Job Failed. failed: 6/1",
        ),
        (
            "job running",
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
                   "status": {"active": 1, "startTime": "2026-01-01T00:00:00Z"}}),
            InProgress,
            "Job in progress. success: 0, active: 1, failed: 0",
        ),
        (
            "job not started",
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"}}),
            InProgress,
            "Job not started",
        ),
        (
            "custom resource ready",
            json!({"apiVersion": "ai.overseer.dev/v1alpha1", "kind": "InferenceRuntime", "metadata": {"name": "llm", "generation": 3},
                   "status": {"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "serving"}]}}),
            Current,
            "Ready is True: serving",
        ),
        (
            "custom resource not ready",
            json!({"apiVersion": "ai.overseer.dev/v1alpha1", "kind": "InferenceRuntime", "metadata": {"name": "llm", "generation": 3},
                   "status": {"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "False", "reason": "Loading"}]}}),
            InProgress,
            "Ready is False: Loading",
        ),
        (
            "custom resource stalled",
            json!({"apiVersion": "ai.overseer.dev/v1alpha1", "kind": "InferenceRuntime", "metadata": {"name": "llm", "generation": 3},
                   "status": {"observedGeneration": 3, "conditions": [
                       {"type": "Ready", "status": "False", "reason": "ImagePullFailed"},
                       {"type": "Stalled", "status": "True", "reason": "ImagePullFailed", "message": "image not found"}]}}),
            Failed,
            "Stalled is True: image not found",
        ),
        (
            "custom resource reconciling",
            json!({"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"},
                   "status": {"conditions": [{"type": "Reconciling", "status": "True", "reason": "Working"}]}}),
            InProgress,
            "Reconciling is True: Working",
        ),
        (
            "custom resource ready for an older generation",
            json!({"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t", "generation": 5},
                   "status": {"conditions": [{"type": "Ready", "status": "True", "observedGeneration": 4}]}}),
            InProgress,
            "Ready condition describes generation 4, not 5",
        ),
        (
            "configmap has no status notion",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "b"}}),
            Current,
            "Resource is current",
        ),
        (
            "service has no status notion",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}}),
            Current,
            "Resource is current",
        ),
        (
            "object being deleted",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            InProgress,
            "resource is being deleted",
        ),
        (
            "not an object",
            json!([1, 2]),
            Unknown,
            "object is not a JSON object",
        ),
        (
            "no kind",
            json!({"metadata": {}}),
            Unknown,
            "object has no kind",
        ),
        (
            "conditions not a list",
            json!({"apiVersion": "example.com/v1", "kind": "Thing", "status": {"conditions": "yes"}}),
            Unknown,
            ".status.conditions is not a list",
        ),
    ];
    for (name, obj, status, message) in cases {
        let h = object_health(&obj);
        assert_eq!(
            (h.status, h.message.as_str()),
            (status, message),
            "case {name}"
        );
    }
}

/// A Deployment named like an `apps/v1` one in another group is not judged by Deployment rules.
#[test]
fn kind_rules_need_the_right_group() {
    let obj =
        json!({"apiVersion": "example.com/v1", "kind": "Deployment", "metadata": {"name": "x"}});
    assert_eq!(object_health(&obj).status, Current);
}

fn gate(exprs: Vec<HealthExpression>, require_healthy: Option<bool>) -> StageGate {
    StageGate {
        require_healthy,
        health_expressions: exprs,
        ..StageGate::default()
    }
}

fn runtime_expr(healthy: &str, failed: Option<&str>) -> HealthExpression {
    HealthExpression {
        api_version: "ai.overseer.dev/v1alpha1".into(),
        kind: "InferenceRuntime".into(),
        name: None,
        healthy: healthy.into(),
        failed: failed.map(str::to_string),
    }
}

fn runtime(phase: &str) -> Value {
    json!({"apiVersion": "ai.overseer.dev/v1alpha1", "kind": "InferenceRuntime",
           "metadata": {"name": "llm", "namespace": "ai", "labels": {"app.kubernetes.io/name": "llm"}},
           "status": {"phase": phase, "replicas": 2}})
}

#[test]
fn cel_expressions_table() {
    let eval = GateEvaluator::new(&gate(
        vec![runtime_expr(
            "self.status.phase == 'Serving' && self.status.replicas >= 2",
            Some("self.status.phase == 'Failed'"),
        )],
        Some(true),
    ))
    .expect("compiles");
    let cases = [
        ("Serving", Current),
        ("Loading", InProgress),
        ("Failed", Failed),
    ];
    for (phase, want) in cases {
        assert_eq!(
            eval.object_health(&runtime(phase)).status,
            want,
            "phase {phase}"
        );
    }
    // No status yet: `healthy` cannot be evaluated (in progress), `failed` is ignored.
    let bare = json!({"apiVersion": "ai.overseer.dev/v1alpha1", "kind": "InferenceRuntime", "metadata": {"name": "llm"}});
    let h = eval.object_health(&bare);
    assert_eq!(h.status, InProgress, "{h:?}");
    assert!(h.message.contains("cannot be evaluated"), "{}", h.message);
    // Other kinds are not matched by the expression.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    assert_eq!(eval.object_health(&cm).status, Current);
}

#[test]
fn cel_expression_combines_with_kstatus_and_uses_kube_functions() {
    // kstatus says Ready False (in progress) while the expression holds: the worst wins.
    let mut obj = runtime("Serving");
    obj["status"]["conditions"] =
        json!([{"type": "Ready", "status": "False", "reason": "Warming"}]);
    let strict = GateEvaluator::new(&gate(
        vec![runtime_expr("self.status.phase == 'Serving'", None)],
        None,
    ))
    .expect("compiles");
    assert_eq!(strict.object_health(&obj).status, InProgress);
    // requireHealthy: false leaves the expression alone to judge.
    let lenient = GateEvaluator::new(&gate(
        vec![runtime_expr("self.status.phase == 'Serving'", None)],
        Some(false),
    ))
    .expect("compiles");
    assert_eq!(lenient.object_health(&obj).status, Current);
    // Label keys with dots are read by index; Kubernetes CEL extension functions are available.
    let labels = GateEvaluator::new(&gate(
        vec![runtime_expr(
            "self.metadata.labels['app.kubernetes.io/name'].upperAscii() == 'LLM'",
            None,
        )],
        Some(false),
    ))
    .expect("compiles");
    assert_eq!(labels.object_health(&obj).status, Current);
}

#[test]
fn cel_expression_by_name_and_non_bool_result() {
    let mut e = runtime_expr("self.status.replicas", None);
    e.name = Some("llm".into());
    let eval = GateEvaluator::new(&gate(vec![e], Some(false))).expect("compiles");
    let h = eval.object_health(&runtime("Serving"));
    assert_eq!(h.status, InProgress);
    assert!(h.message.contains("not a bool"), "{}", h.message);
    let mut other = runtime("Serving");
    other["metadata"]["name"] = json!("other");
    assert_eq!(
        eval.object_health(&other).status,
        Current,
        "expression is for `llm` only"
    );
}

#[test]
fn cel_compile_errors_are_reported() {
    let err = GateEvaluator::new(&gate(
        vec![runtime_expr("self.status.phase ==", None)],
        None,
    ))
    .expect_err("does not compile");
    let HealthError::Compile {
        index,
        field,
        ref kind,
        ..
    } = err;
    assert_eq!(
        (index, field, kind.as_str()),
        (0, "healthy", "InferenceRuntime")
    );
    assert!(err.to_string().contains("does not compile"), "{err}");
    let err = GateEvaluator::new(&gate(
        vec![
            runtime_expr("true", None),
            runtime_expr("true", Some("self.status.((")),
        ],
        None,
    ))
    .expect_err("does not compile");
    let HealthError::Compile { index, field, .. } = err;
    assert_eq!((index, field), (1, "failed"));
}

#[test]
fn cluster_health_is_the_worst_object() {
    let eval = GateEvaluator::new(&StageGate::default()).expect("compiles");
    let ok = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "pay"}});
    let updating = deploy(
        3,
        json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1}),
    );
    let failed = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "namespace": "pay"},
                        "status": {"conditions": [{"type": "Failed", "status": "True"}]}});
    assert_eq!(eval.cluster_health([&ok]).status, Current);
    assert_eq!(eval.cluster_health(std::iter::empty()).status, Current);
    let h = eval.cluster_health([&ok, &updating]);
    assert_eq!(
        (h.status, h.message.as_str()),
        (InProgress, "Deployment/pay/api: Updated: 1/3")
    );
    let h = eval.cluster_health([&updating, &failed, &ok]);
    assert_eq!(h.status, Failed);
    assert!(h.message.starts_with("Job/pay/migrate: "), "{}", h.message);
}

/// The evaluator is compiled once per stage and shared across reconcile tasks.
#[test]
fn evaluator_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GateEvaluator>();
}
