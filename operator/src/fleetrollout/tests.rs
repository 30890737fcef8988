//! Controller tests: the reconcile against a mock hub API server (kube's `tower-test` pattern) and
//! a fake [`Delivery`] standing in for the sources and member clusters. The hub records every
//! request (verb, path and query, with the field manager) and keeps what was written, so a test
//! can feed the written status back as the next reconcile's input, as the API server would.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    pin::pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use fleet::health::{GateEvaluator, Health};
use http::{Request, Response};
use kube::{
    Client,
    api::{DynamicObject, GroupVersionKind},
    client::Body,
    runtime::controller::Action,
};
use overseer_crds::fleet::{
    DriftAction, DriftedObject, FleetApproval, FleetApprovalSpec, FleetCluster, FleetClusterSpec,
    FleetClusterStatus, FleetDecision, FleetReview, FleetRollout, FleetRolloutSpec,
    FleetRolloutStatus, Override, RolloutPhase, TaskWhen,
};
use serde_json::{Value, json};

use super::{
    controller::targets,
    delivery::{ApplyOutcome, Delivered, Delivery, DeliveryError, Rendered, RolloutKey},
    reconcile::{Fleet, Limits, World, reconcile_at},
};
use crate::{
    controller::{Context, Diagnostics, EventRecorder},
    health::Readiness,
    leader::LeaderState,
    metrics::Metrics,
};

const NS: &str = "fleet";
const NAME: &str = "web";
const STATUS_PATCH: &str = "PATCH /apis/fleet.overseer.dev/v1alpha1/namespaces/fleet/fleetrollouts/web/status?&force=true&fieldManager=overseer-fleetrollout-status";

// ---------------------------------------------------------------------------------------------
// The mock hub
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct HubState {
    /// `VERB path?query` of every request, in order.
    log: Vec<String>,
    /// Objects written, by path (without query).
    objects: BTreeMap<String, Value>,
    /// The rollout the status subresource answers with.
    rollout: Value,
    /// Every status written.
    statuses: Vec<Value>,
    /// Reasons of the Events published.
    events: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Hub(Arc<Mutex<HubState>>);

fn status_response(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason}),
    )
}

impl Hub {
    fn start() -> (Client, Self) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let hub = Self::default();
        let state = hub.clone();
        tokio::spawn(async move {
            let mut handle = pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                let (code, body) = state.answer(request).await;
                send.send_response(
                    Response::builder()
                        .status(code)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Body::from(serde_json::to_vec(&body).expect("json")))
                        .expect("response"),
                );
            }
        });
        (Client::new(service, "default"), hub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn answer(&self, request: Request<Body>) -> (u16, Value) {
        let method = request.method().as_str().to_owned();
        let uri = request.uri().clone();
        let path = uri.path().to_owned();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut st = self.lock();
        st.log.push(format!(
            "{method} {}",
            uri.path_and_query().map_or("", |p| p.as_str())
        ));
        if path.contains("/events") {
            if method == "POST" || method == "PATCH" {
                st.events.push((
                    body["reason"].as_str().unwrap_or("").to_owned(),
                    body["note"].as_str().unwrap_or("").to_owned(),
                ));
            }
            return (
                201,
                json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": NS}, "eventTime": null}),
            );
        }
        match method.as_str() {
            "PATCH" if path.ends_with("/status") => {
                let mut rollout = st.rollout.clone();
                rollout["status"] = body["status"].clone();
                st.statuses.push(body["status"].clone());
                (200, rollout)
            }
            "PATCH" => {
                let mut obj = body.clone();
                obj["metadata"]["resourceVersion"] = json!("1");
                st.objects.insert(path, obj.clone());
                (200, obj)
            }
            "GET" if path.ends_with("/configmaps") => {
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(p, _)| p.starts_with(&format!("{path}/")))
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            "GET" => match st.objects.get(&path) {
                Some(v) => (200, v.clone()),
                None => status_response(404, "NotFound"),
            },
            "DELETE" => {
                st.objects.remove(&path);
                (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
            }
            _ => status_response(405, "MethodNotAllowed"),
        }
    }

    fn set_rollout(&self, rollout: &FleetRollout) {
        self.lock().rollout = serde_json::to_value(rollout).expect("json");
    }

    /// The requests since the last call, with Event writes left out.
    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().log)
            .into_iter()
            .filter(|l| !l.contains("/events"))
            .collect()
    }

    fn take_events(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().events)
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }

    fn last_status(&self) -> Option<FleetRolloutStatus> {
        self.lock()
            .statuses
            .last()
            .map(|s| serde_json::from_value(s.clone()).expect("status"))
    }

    fn object(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }
}

fn context(client: Client) -> Context {
    let leader = LeaderState::fixed(true);
    Context {
        recorder: EventRecorder::new(client.clone(), "overseer-0", leader.clone()),
        client,
        metrics: Arc::new(Metrics::new()),
        leader,
        readiness: Readiness::new(),
        diagnostics: Diagnostics::default(),
    }
}

// ---------------------------------------------------------------------------------------------
// The fake delivery
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct FakeState {
    source_error: Option<DeliveryError>,
    /// (cluster, version) whose objects report `Stalled` (failed for good).
    failing: HashSet<(String, String)>,
    /// Clusters whose apply never finishes.
    slow: HashSet<String>,
    /// Clusters whose render fails.
    unrenderable: HashSet<String>,
    /// (cluster, version) of every finished apply, in order.
    applied: Vec<(String, String)>,
    /// Live objects per cluster.
    live: HashMap<String, Vec<Value>>,
    /// Clusters pruned.
    pruned: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeDelivery(Arc<Mutex<FakeState>>);

impl FakeDelivery {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_applied(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().applied)
            .into_iter()
            .map(|(c, v)| format!("{c}@{v}"))
            .collect()
    }
}

fn version(objects: &[DynamicObject]) -> String {
    objects
        .first()
        .and_then(|o| o.data["data"]["version"].as_str())
        .unwrap_or("?")
        .to_owned()
}

impl FakeDelivery {
    fn live_of(&self, cluster: &str, objects: &[DynamicObject]) -> Vec<Option<Value>> {
        let st = self.lock();
        let on_member = st.live.get(cluster).cloned().unwrap_or_default();
        objects
            .iter()
            .map(|o| {
                on_member
                    .iter()
                    .find(|l| l["metadata"]["name"].as_str() == o.metadata.name.as_deref())
                    .cloned()
            })
            .collect()
    }
}

fn judge(gate: &GateEvaluator, live: &[Option<Value>]) -> Health {
    if live.iter().any(Option::is_none) {
        return Health::in_progress("not found on the cluster");
    }
    gate.cluster_health(live.iter().flatten())
}

fn name_of(cluster: &FleetCluster) -> String {
    cluster.metadata.name.clone().unwrap_or_default()
}

impl Delivery for FakeDelivery {
    async fn resolve(&self, rollout: &FleetRollout) -> Result<Rendered, DeliveryError> {
        if let Some(e) = self.lock().source_error.clone() {
            return Err(e);
        }
        let objects: Vec<DynamicObject> = rollout
            .spec
            .source
            .inline
            .iter()
            .flatten()
            .map(|v| serde_json::from_value(v.clone()))
            .collect::<Result<_, _>>()
            .map_err(|e| DeliveryError::permanent(format!("source.inline: {e}")))?;
        Ok(Rendered {
            revision: format!("sha256:v{}", version(&objects)),
            objects,
        })
    }

    fn render(
        &self,
        objects: &[DynamicObject],
        overrides: &[Override],
        cluster: &FleetCluster,
    ) -> Result<Vec<DynamicObject>, DeliveryError> {
        if self.lock().unrenderable.contains(&name_of(cluster)) {
            return Err(DeliveryError::permanent(
                "override pin-replicas: v1/ConfigMap/default/app: path /spec/replicas does not exist",
            ));
        }
        // The real per-cluster overrides, so the version a member gets shows which applied.
        fleet::overrides::render_for_cluster(
            objects,
            overrides,
            &name_of(cluster),
            cluster.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
        )
        .map_err(|e| DeliveryError::permanent(e.to_string()))
    }

    async fn apply(&self, req: Delivered<'_>) -> Result<ApplyOutcome, DeliveryError> {
        let name = name_of(req.cluster);
        let slow = self.lock().slow.contains(&name);
        if slow {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let v = version(req.objects);
        let failing = self.lock().failing.contains(&(name.clone(), v.clone()));
        let live: Vec<Value> = req
            .objects
            .iter()
            .map(|o| {
                let mut value = serde_json::to_value(o).expect("json");
                if failing {
                    value["status"] = json!({"conditions": [{"type": "Stalled", "status": "True", "reason": "CrashLoop", "message": "container exits 1"}]});
                }
                value
            })
            .collect();
        let health = req.gate.cluster_health(live.iter());
        let mut st = self.lock();
        st.applied.push((name.clone(), v));
        st.live.insert(name, live);
        Ok(ApplyOutcome::health(health))
    }

    async fn read_health(&self, req: Delivered<'_>) -> Result<Health, DeliveryError> {
        Ok(judge(
            req.gate,
            &self.live_of(&name_of(req.cluster), req.objects),
        ))
    }

    async fn check_drift(
        &self,
        req: Delivered<'_>,
        action: DriftAction,
    ) -> Result<ApplyOutcome, DeliveryError> {
        let name = name_of(req.cluster);
        let live = self.live_of(&name, req.objects);
        let mut drifted = Vec::new();
        for (obj, l) in req.objects.iter().zip(&live) {
            let want = serde_json::to_value(obj).expect("json");
            if l.as_ref().is_none_or(|l| l["data"] != want["data"]) {
                drifted.push(DriftedObject {
                    cluster: name.clone(),
                    object: format!(
                        "v1/ConfigMap/default/{}",
                        obj.metadata.name.as_deref().unwrap_or("?")
                    ),
                    corrected: action == DriftAction::Correct,
                });
            }
        }
        if action == DriftAction::Correct && !drifted.is_empty() {
            let fixed: Vec<Value> = req
                .objects
                .iter()
                .map(|o| serde_json::to_value(o).expect("json"))
                .collect();
            self.lock().live.insert(name.clone(), fixed);
        }
        let health = judge(req.gate, &self.live_of(&name, req.objects));
        Ok(ApplyOutcome {
            health,
            drifted,
            pruned: 0,
        })
    }

    async fn prune_all(
        &self,
        cluster: &FleetCluster,
        _rollout: &RolloutKey,
        _kinds: &[GroupVersionKind],
    ) -> Result<usize, DeliveryError> {
        let name = name_of(cluster);
        let mut st = self.lock();
        let n = st.live.remove(&name).map_or(0, |l| l.len());
        st.pruned.push(name);
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn t(offset_secs: i64) -> DateTime<Utc> {
    "2030-01-01T00:00:00Z"
        .parse::<DateTime<Utc>>()
        .expect("time")
        + chrono::Duration::seconds(offset_secs)
}

fn member(name: &str, ring: &str) -> FleetCluster {
    let mut c = FleetCluster::new(
        name,
        FleetClusterSpec {
            kubeconfig_secret_ref: serde_json::from_value(
                json!({"name": format!("{name}-kubeconfig"), "namespace": NS, "key": "value"}),
            )
            .expect("secret ref"),
            paused: false,
            heartbeat_period: None,
        },
    );
    c.metadata.labels = Some(BTreeMap::from([
        ("app".to_owned(), "web".to_owned()),
        ("ring".to_owned(), ring.to_owned()),
    ]));
    c.status = Some(FleetClusterStatus {
        conditions: vec![
            serde_json::from_value(json!({
                "type": "Reachable", "status": "True", "reason": "Heartbeat", "message": "",
                "lastTransitionTime": "2030-01-01T00:00:00Z"
            }))
            .expect("condition"),
        ],
        ..FleetClusterStatus::default()
    });
    c
}

fn fleet_members() -> Vec<FleetCluster> {
    vec![member("c0", "0"), member("p1", "1"), member("p2", "1")]
}

fn manifest(version: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "app", "namespace": "default"},
        "data": {"version": version},
    })
}

fn spec(version: &str, extra: Value) -> FleetRolloutSpec {
    let mut v = json!({
        "source": {"inline": [manifest(version)]},
        "targets": {"clusterSelector": {"matchLabels": {"app": "web"}}},
        "stages": [
            {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "0"}},
             "afterTasks": [{"type": "Approval"}]},
            {"name": "prod", "clusterSelector": {"matchLabels": {"ring": "1"}}, "maxConcurrency": 2},
        ],
    });
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            m.insert(k.clone(), x.clone());
        }
    }
    serde_json::from_value(v).expect("spec")
}

fn rollout(
    spec: FleetRolloutSpec,
    generation: i64,
    status: Option<FleetRolloutStatus>,
) -> FleetRollout {
    let mut r = FleetRollout::new(NAME, spec);
    r.metadata.namespace = Some(NS.into());
    r.metadata.uid = Some("uid-web".into());
    r.metadata.generation = Some(generation);
    r.status = status;
    r
}

fn approval(stage: &str, revision: &str, decision: FleetDecision) -> FleetApproval {
    let mut a = FleetApproval::new(
        &format!("{NAME}-{stage}-after"),
        FleetApprovalSpec {
            rollout: NAME.into(),
            stage: stage.into(),
            when: TaskWhen::After,
            revision: revision.into(),
            review: Some(FleetReview {
                decision,
                reviewer: "alice@example.com".into(),
                comment: Some("canary looks good".into()),
            }),
        },
    );
    a.metadata.namespace = Some(NS.into());
    a
}

/// One reconcile: feeds `rollout` to the hub, runs, and returns the action and the rollout with
/// the status the hub now holds.
async fn step(
    hub: &Hub,
    ctx: &Context,
    fleet: &Fleet<FakeDelivery>,
    rollout: &FleetRollout,
    clusters: &[FleetCluster],
    approvals: &[FleetApproval],
    now: DateTime<Utc>,
) -> (Action, FleetRollout) {
    hub.set_rollout(rollout);
    let world = World {
        clusters,
        approvals,
    };
    let action = tokio::time::timeout(
        Duration::from_secs(5),
        reconcile_at(rollout, world, fleet, ctx, now),
    )
    .await
    .expect("reconcile finishes")
    .expect("reconcile succeeds");
    let mut next = rollout.clone();
    if let Some(s) = hub.last_status() {
        next.status = Some(s);
    }
    (action, next)
}

fn cluster_phases(status: &FleetRolloutStatus) -> Vec<String> {
    status
        .stages
        .iter()
        .flat_map(|s| {
            s.clusters
                .iter()
                .map(move |c| format!("{}/{}={}", s.name, c.name, c.phase))
        })
        .collect()
}

fn condition<'a>(status: &'a FleetRolloutStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
        .unwrap_or(("", "", ""))
}

fn fast_fleet(delivery: FakeDelivery) -> Fleet<FakeDelivery> {
    let mut fleet = Fleet::new(delivery);
    fleet.limits = Limits {
        apply_timeout: Duration::from_millis(200),
        read_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    fleet
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stage_one_applies_waits_for_approval_then_stage_two_rolls_out() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    let fleet = fast_fleet(delivery.clone());
    let clusters = fleet_members();

    // 1. Canary applied, healthy at once: the gate passes and the approval is requested.
    let r0 = rollout(spec("1", json!({})), 1, None);
    let (action, r1) = step(&hub, &ctx, &fleet, &r0, &clusters, &[], t(0)).await;
    assert_eq!(delivery.take_applied(), ["c0@1"]);
    assert_eq!(
        hub.take_log(),
        [
            "PATCH /api/v1/namespaces/fleet/configmaps/web-rev-v1?&force=true&fieldManager=overseer-fleetrollout-snapshot",
            "GET /api/v1/namespaces/fleet/configmaps?&labelSelector=fleet.overseer.dev%2Frollout%3Dweb",
            "PATCH /apis/fleet.overseer.dev/v1alpha1/namespaces/fleet/fleetapprovals/web-canary-after-v1?&force=true&fieldManager=overseer-fleetrollout",
            STATUS_PATCH,
        ]
    );
    assert_eq!(
        hub.take_events(),
        ["RolloutStarted", "StageStarted", "ApprovalRequested"]
    );
    let approval_obj = hub
        .object(
            "/apis/fleet.overseer.dev/v1alpha1/namespaces/fleet/fleetapprovals/web-canary-after-v1",
        )
        .expect("approval written");
    assert_eq!(
        approval_obj["spec"],
        json!({"rollout": "web", "stage": "canary", "when": "After", "revision": "sha256:v1"})
    );
    assert_eq!(
        approval_obj["metadata"]["ownerReferences"][0]["uid"],
        "uid-web"
    );
    assert_eq!(
        approval_obj["metadata"]["ownerReferences"][0]["controller"],
        true
    );
    let snapshot = hub
        .object("/api/v1/namespaces/fleet/configmaps/web-rev-v1")
        .expect("snapshot written");
    assert_eq!(
        snapshot["metadata"]["annotations"]["fleet.overseer.dev/revision"],
        "sha256:v1"
    );
    let s1 = r1.status.clone().expect("status");
    assert_eq!(s1.phase, Some(RolloutPhase::WaitingForApproval));
    assert_eq!(s1.current_stage.as_deref(), Some("canary"));
    assert_eq!(s1.progress.as_deref(), Some("1/3"));
    assert_eq!(s1.observed_generation, Some(1));
    assert_eq!(
        cluster_phases(&s1),
        ["canary/c0=Healthy", "prod/p1=Pending", "prod/p2=Pending"]
    );
    assert_eq!(condition(&s1, "Ready").0, "False");
    assert_eq!(condition(&s1, "SourceReady").0, "True");
    // Nothing to wait for but a human: no polling.
    assert_eq!(action, Action::await_change());

    // 2. Still unreviewed (the cache now holds the approval as created): nothing is applied,
    //    the approval is not written again, nothing is written at all.
    let mut pending = approval("canary", "sha256:v1", FleetDecision::Approved);
    pending.spec.review = None;
    let (_, r2) = step(&hub, &ctx, &fleet, &r1, &clusters, &[pending], t(30)).await;
    assert!(delivery.take_applied().is_empty());
    assert_eq!(
        hub.take_log(),
        Vec::<String>::new(),
        "an unchanged rollout writes nothing"
    );
    assert!(hub.take_events().is_empty());
    assert_eq!(r2.status, r1.status);

    // 3. Approved: stage two rolls out (both at once, maxConcurrency 2) and the rollout succeeds.
    let approvals = [approval("canary", "sha256:v1", FleetDecision::Approved)];
    let (action, r3) = step(&hub, &ctx, &fleet, &r2, &clusters, &approvals, t(60)).await;
    let mut applied = delivery.take_applied();
    applied.sort();
    assert_eq!(applied, ["p1@1", "p2@1"]);
    assert_eq!(hub.take_log(), [STATUS_PATCH]);
    assert_eq!(
        hub.take_events(),
        [
            "Approved",
            "StageSucceeded",
            "StageStarted",
            "StageSucceeded",
            "RolloutSucceeded"
        ]
    );
    let s3 = r3.status.clone().expect("status");
    assert_eq!(s3.phase, Some(RolloutPhase::Succeeded));
    assert_eq!(s3.progress.as_deref(), Some("3/3"));
    assert_eq!(s3.last_succeeded_revision.as_deref(), Some("sha256:v1"));
    let task = &s3.stages[0].tasks[0];
    assert_eq!(task.phase, "Completed");
    assert_eq!(task.approved_by.as_deref(), Some("alice@example.com"));
    let ready = condition(&s3, "Ready");
    assert_eq!((ready.0, ready.1), ("True", "Succeeded"));
    // Finished: the next look is the drift check.
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn a_failure_rolls_back_in_reverse_stage_order() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    let clusters = fleet_members();
    let extra = json!({
        "failurePolicy": "Rollback",
        "stages": [
            {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "0"}}},
            {"name": "prod", "clusterSelector": {"matchLabels": {"ring": "1"}}},
        ],
    });

    // Revision 1 rolls out everywhere.
    let fleet = fast_fleet(delivery.clone());
    let (_, r1) = step(
        &hub,
        &ctx,
        &fleet,
        &rollout(spec("1", extra.clone()), 1, None),
        &clusters,
        &[],
        t(0),
    )
    .await;
    assert_eq!(
        r1.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Succeeded)
    );
    assert_eq!(delivery.take_applied(), ["c0@1", "p1@1", "p2@1"]);
    hub.take_log();
    hub.take_events();

    // Revision 2 fails on p2. A fresh process (no memory) must read revision 1 back from its
    // snapshot to roll back.
    delivery
        .lock()
        .failing
        .insert(("p2".to_owned(), "2".to_owned()));
    let fleet = fast_fleet(delivery.clone());
    let mut r1 = r1;
    r1.spec = spec("2", extra.clone());
    r1.metadata.generation = Some(2);
    let (action, r2) = step(&hub, &ctx, &fleet, &r1, &clusters, &[], t(100)).await;
    assert_eq!(
        delivery.take_applied(),
        // Forward: canary, then prod one at a time; p2 fails; back: prod (p1, p2), then canary.
        ["c0@2", "p1@2", "p2@2", "p1@1", "p2@1", "c0@1"]
    );
    assert_eq!(
        hub.take_log(),
        [
            "PATCH /api/v1/namespaces/fleet/configmaps/web-rev-v2?&force=true&fieldManager=overseer-fleetrollout-snapshot",
            "GET /api/v1/namespaces/fleet/configmaps?&labelSelector=fleet.overseer.dev%2Frollout%3Dweb",
            "GET /api/v1/namespaces/fleet/configmaps/web-rev-v1",
            STATUS_PATCH,
        ]
    );
    let events = hub.take_events();
    let rollback_at = events
        .iter()
        .position(|e| e == "RollbackStarted")
        .expect("rollback started");
    assert!(
        events[..rollback_at].contains(&"StageFailed".to_owned()),
        "{events:?}"
    );
    let stage_rolled_back: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| *e == "StageRolledBack")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stage_rolled_back.len(), 2, "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("RolledBack"));
    let s2 = r2.status.clone().expect("status");
    assert_eq!(s2.phase, Some(RolloutPhase::RolledBack));
    assert_eq!(
        cluster_phases(&s2),
        [
            "canary/c0=RolledBack",
            "prod/p1=RolledBack",
            "prod/p2=RolledBack"
        ]
    );
    assert!(
        s2.stages
            .iter()
            .flat_map(|s| &s.clusters)
            .all(|c| c.applied_revision.as_deref() == Some("sha256:v1"))
    );
    assert_eq!(s2.history[0].revision, "sha256:v2");
    assert_eq!(s2.history[0].result, "RolledBack");
    let stalled = condition(&s2, "Stalled");
    assert_eq!((stalled.0, stalled.1), ("True", "RolledBack"));
    assert_eq!(action, Action::await_change());
    // The live objects are revision 1's again.
    assert_eq!(delivery.lock().live["p2"][0]["data"]["version"], "1");
}

#[tokio::test]
async fn pause_holds_and_resume_continues() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    let fleet = fast_fleet(delivery.clone());
    let clusters = fleet_members();
    let (_, r1) = step(
        &hub,
        &ctx,
        &fleet,
        &rollout(spec("1", json!({})), 1, None),
        &clusters,
        &[],
        t(0),
    )
    .await;
    delivery.take_applied();
    hub.take_log();
    hub.take_events();

    // Paused: approved meanwhile, but nothing moves.
    let approvals = [approval("canary", "sha256:v1", FleetDecision::Approved)];
    let mut paused = r1.clone();
    paused.spec.state = overseer_crds::fleet::RolloutState::Pause;
    paused.metadata.generation = Some(2);
    let (action, r2) = step(&hub, &ctx, &fleet, &paused, &clusters, &approvals, t(60)).await;
    assert!(delivery.take_applied().is_empty());
    assert_eq!(hub.take_events(), ["Paused"]);
    let s2 = r2.status.clone().expect("status");
    assert_eq!(s2.phase, Some(RolloutPhase::Paused));
    assert_eq!(s2.stages[0].tasks[0].phase, "Waiting");
    assert_eq!(action, Action::await_change());

    // Resumed: the approval is taken and stage two runs.
    let mut resumed = r2.clone();
    resumed.spec.state = overseer_crds::fleet::RolloutState::Execute;
    resumed.metadata.generation = Some(3);
    let (_, r3) = step(&hub, &ctx, &fleet, &resumed, &clusters, &approvals, t(120)).await;
    let mut applied = delivery.take_applied();
    applied.sort();
    assert_eq!(applied, ["p1@1", "p2@1"]);
    assert_eq!(
        hub.take_events()[..2],
        ["Resumed".to_owned(), "Approved".to_owned()]
    );
    assert_eq!(
        r3.status.and_then(|s| s.phase),
        Some(RolloutPhase::Succeeded)
    );
}

#[tokio::test]
async fn a_source_error_names_the_object_and_applies_nothing() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    delivery.lock().source_error = Some(DeliveryError::permanent(
        "ConfigMap/fleet/manifests: key app.yaml: document 2: mapping values are not allowed here at line 3",
    ));
    let fleet = fast_fleet(delivery.clone());
    let (action, r1) = step(
        &hub,
        &ctx,
        &fleet,
        &rollout(spec("1", json!({})), 1, None),
        &fleet_members(),
        &[],
        t(0),
    )
    .await;
    assert!(delivery.take_applied().is_empty());
    assert_eq!(hub.take_log(), [STATUS_PATCH]);
    assert_eq!(hub.take_events(), ["SourceFailed"]);
    let s = r1.status.expect("status");
    let source = condition(&s, "SourceReady");
    assert_eq!((source.0, source.1), ("False", "SourceFailed"));
    assert!(
        source
            .2
            .starts_with("ConfigMap/fleet/manifests: key app.yaml"),
        "{}",
        source.2
    );
    assert_eq!(condition(&s, "Ready").0, "False");
    assert_eq!(condition(&s, "Stalled").0, "True");
    assert_eq!(s.observed_generation, Some(1));
    assert!(s.stages.is_empty());
    // An inline source changes only with the spec (which wakes the controller); the requeue is a
    // safety net, not a poll.
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));

    // The same error again: no new Event, no write.
    let (_, _) = step(
        &hub,
        &ctx,
        &fleet,
        &{
            let mut r = rollout(spec("1", json!({})), 1, None);
            r.status = Some(s);
            r
        },
        &fleet_members(),
        &[],
        t(30),
    )
    .await;
    assert!(hub.take_log().is_empty());
    assert!(hub.take_events().is_empty());
}

#[tokio::test]
async fn an_override_that_does_not_apply_stops_everything_before_any_apply() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    delivery.lock().unrenderable.insert("p2".to_owned());
    let fleet = fast_fleet(delivery.clone());
    let (_, r1) = step(
        &hub,
        &ctx,
        &fleet,
        &rollout(spec("1", json!({})), 1, None),
        &fleet_members(),
        &[],
        t(0),
    )
    .await;
    // p2 is in the last stage, yet nothing was applied anywhere.
    assert!(delivery.take_applied().is_empty());
    assert_eq!(hub.take_log(), [STATUS_PATCH]);
    let s = r1.status.expect("status");
    let source = condition(&s, "SourceReady");
    assert_eq!((source.0, source.1), ("False", "RenderFailed"));
    assert!(
        source.2.contains("cluster p2") && source.2.contains("v1/ConfigMap/default/app"),
        "{}",
        source.2
    );
}

#[tokio::test]
async fn a_selector_matching_no_cluster_is_a_condition() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    let fleet = fast_fleet(delivery.clone());
    let spec = spec(
        "1",
        json!({"targets": {"clusterSelector": {"matchLabels": {"app": "nothing"}}}}),
    );
    let (_, r1) = step(
        &hub,
        &ctx,
        &fleet,
        &rollout(spec, 1, None),
        &fleet_members(),
        &[],
        t(0),
    )
    .await;
    assert!(delivery.take_applied().is_empty());
    let s = r1.status.expect("status");
    let targets = condition(&s, "TargetsResolved");
    assert_eq!((targets.0, targets.1), ("False", "NoClustersTargeted"));
    assert_eq!(condition(&s, "Stalled").0, "True");
}

#[tokio::test]
async fn a_restart_resumes_without_re_approval_or_re_baking() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    let clusters = fleet_members();
    let extra = json!({
        "stages": [
            {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "0"}},
             "afterTasks": [{"type": "Approval"}], "gate": {"minBakeTime": "10m"}},
            {"name": "prod", "clusterSelector": {"matchLabels": {"ring": "1"}}, "maxConcurrency": 2,
             "gate": {"minBakeTime": "10m"}},
        ],
    });
    let approvals = [approval("canary", "sha256:v1", FleetDecision::Approved)];
    let fleet = fast_fleet(delivery.clone());
    // Canary applied and baking; the next wake-up is the health poll (flaps restart the bake).
    let (action, r1) = step(
        &hub,
        &ctx,
        &fleet,
        &rollout(spec("1", extra.clone()), 1, None),
        &clusters,
        &approvals,
        t(0),
    )
    .await;
    assert_eq!(
        r1.status.as_ref().map(|s| s.stages[0].phase.as_str()),
        Some("Baking")
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    // Bake served, approval taken (it was approved up front), prod applied and baking.
    let (_, r2) = step(&hub, &ctx, &fleet, &r1, &clusters, &approvals, t(600)).await;
    let s2 = r2.status.clone().expect("status");
    assert_eq!(s2.stages[0].phase, "Succeeded");
    assert_eq!(
        s2.stages[0].tasks[0].approved_by.as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(s2.stages[1].phase, "Baking");
    assert_eq!(
        s2.stages[1].gate_satisfied_since.as_deref(),
        Some("2030-01-01T00:10:00Z")
    );
    delivery.take_applied();
    hub.take_log();
    hub.take_events();

    // The operator restarts 9 minutes into prod's bake: a new process, the status as written.
    // It re-reads health (no re-apply of healthy clusters), creates no approval, and finishes the
    // bake one minute later instead of starting it again.
    let restarted = fast_fleet(delivery.clone());
    let (action, r3) = step(
        &hub,
        &ctx,
        &restarted,
        &r2,
        &clusters,
        &approvals,
        t(600 + 540),
    )
    .await;
    assert!(delivery.take_applied().is_empty());
    assert!(hub.take_log().iter().all(|l| !l.contains("fleetapprovals")));
    assert!(hub.take_events().is_empty());
    assert_eq!(
        r3.status.as_ref().map(|s| s.stages[1].phase.as_str()),
        Some("Baking")
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    let (_, r4) = step(
        &hub,
        &ctx,
        &restarted,
        &r3,
        &clusters,
        &approvals,
        t(600 + 600),
    )
    .await;
    assert!(delivery.take_applied().is_empty());
    assert_eq!(hub.take_events(), ["StageSucceeded", "RolloutSucceeded"]);
    assert_eq!(
        r4.status.and_then(|s| s.phase),
        Some(RolloutPhase::Succeeded)
    );
}

#[tokio::test]
async fn a_restart_mid_apply_applies_again() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    delivery.lock().slow.insert("c0".to_owned());
    let fleet = fast_fleet(delivery.clone());
    let clusters = fleet_members();
    // The apply to c0 times out: the cluster stays Applying and the reconcile retries soon.
    let (action, r1) = step(
        &hub,
        &ctx,
        &fleet,
        &rollout(spec("1", json!({})), 1, None),
        &clusters,
        &[],
        t(0),
    )
    .await;
    assert!(delivery.take_applied().is_empty());
    assert_eq!(
        cluster_phases(r1.status.as_ref().expect("status"))[0],
        "canary/c0=Applying"
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    // Later (or after a restart) the member answers: the apply is made again, not forgotten.
    delivery.lock().slow.clear();
    let (_, r2) = step(
        &hub,
        &ctx,
        &fast_fleet(delivery.clone()),
        &r1,
        &clusters,
        &[],
        t(20),
    )
    .await;
    assert_eq!(delivery.take_applied(), ["c0@1"]);
    assert_eq!(
        r2.status.and_then(|s| s.phase),
        Some(RolloutPhase::WaitingForApproval)
    );
}

#[tokio::test]
async fn one_slow_member_does_not_hold_up_the_others() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    delivery.lock().slow.insert("p1".to_owned());
    let fleet = fast_fleet(delivery.clone());
    let clusters = fleet_members();
    let spec = spec(
        "1",
        json!({"stages": [{"name": "all", "maxConcurrency": "100%", "maxUnavailable": 1}]}),
    );
    let started = std::time::Instant::now();
    let (_, r1) = step(
        &hub,
        &ctx,
        &fleet,
        &rollout(spec, 1, None),
        &clusters,
        &[],
        t(0),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let mut applied = delivery.take_applied();
    applied.sort();
    assert_eq!(applied, ["c0@1", "p2@1"]);
    assert_eq!(
        cluster_phases(r1.status.as_ref().expect("status")),
        ["all/c0=Healthy", "all/p1=Applying", "all/p2=Healthy"]
    );
}

#[tokio::test]
async fn a_member_leaving_the_targets_is_pruned() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    let fleet = fast_fleet(delivery.clone());
    let spec = spec(
        "1",
        json!({"stages": [{"name": "all", "maxConcurrency": 3}]}),
    );
    let (_, r1) = step(
        &hub,
        &ctx,
        &fleet,
        &rollout(spec, 1, None),
        &fleet_members(),
        &[],
        t(0),
    )
    .await;
    assert_eq!(
        r1.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Succeeded)
    );
    // p2 is relabelled out of the targets.
    let mut clusters = fleet_members();
    clusters[2].metadata.labels = Some(BTreeMap::from([("app".to_owned(), "other".to_owned())]));
    assert!(!targets(&rollout(r1.spec.clone(), 1, None), &clusters[2]));
    assert!(
        targets(&r1, &clusters[2]),
        "still listed in the status: it must be pruned"
    );
    hub.take_events();
    let (_, r2) = step(&hub, &ctx, &fleet, &r1, &clusters, &[], t(10)).await;
    assert_eq!(delivery.lock().pruned, ["p2"]);
    assert_eq!(hub.take_events(), ["Pruned"]);
    assert_eq!(
        cluster_phases(r2.status.as_ref().expect("status")),
        ["all/c0=Healthy", "all/p1=Healthy"]
    );
}

#[test]
fn targets_follow_names_and_selectors() {
    let r = rollout(
        spec("1", json!({"targets": {"clusterNames": ["p1"]}})),
        1,
        None,
    );
    let clusters = fleet_members();
    assert!(!targets(&r, &clusters[0]));
    assert!(targets(&r, &clusters[1]));
}

#[tokio::test]
async fn drift_on_a_finished_rollout_is_found_and_corrected() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    let clusters = fleet_members();
    let spec = spec(
        "1",
        json!({"stages": [{"name": "all", "maxConcurrency": 3}],
               "applyStrategy": {"driftCheckInterval": "1m"}}),
    );
    let fleet = fast_fleet(delivery.clone());
    let (action, r1) = step(
        &hub,
        &ctx,
        &fleet,
        &rollout(spec, 1, None),
        &clusters,
        &[],
        t(0),
    )
    .await;
    assert_eq!(
        r1.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Succeeded)
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    delivery.take_applied();
    // Someone edits the object on p1 by hand.
    delivery.lock().live.get_mut("p1").expect("p1")[0]["data"]["version"] = json!("edited");
    // A new process (the check is due at once): the drift is found, corrected and reported.
    let (_, r2) = step(
        &hub,
        &ctx,
        &fast_fleet(delivery.clone()),
        &r1,
        &clusters,
        &[],
        t(60),
    )
    .await;
    let s2 = r2.status.clone().expect("status");
    assert_eq!(
        s2.drifted,
        [DriftedObject {
            cluster: "p1".into(),
            object: "v1/ConfigMap/default/app".into(),
            corrected: true,
        }]
    );
    let drift = condition(&s2, "DriftDetected");
    assert_eq!((drift.0, drift.1), ("True", "Drifted"));
    assert_eq!(delivery.lock().live["p1"][0]["data"]["version"], "1");
    assert_eq!(s2.phase, Some(RolloutPhase::Succeeded));
    // The next check finds nothing: the condition clears.
    let (_, r3) = step(
        &hub,
        &ctx,
        &fast_fleet(delivery.clone()),
        &r2,
        &clusters,
        &[],
        t(120),
    )
    .await;
    let s3 = r3.status.expect("status");
    assert!(s3.drifted.is_empty());
    assert_eq!(condition(&s3, "DriftDetected").0, "False");
}

/// `spec.overrides` setting the manifest's `data.version` to `version` on every cluster.
fn version_override(version: &str) -> Value {
    json!([{
        "name": "pin-version",
        "clusterSelector": {},
        "target": {"kind": "ConfigMap", "name": "app"},
        "jsonPatch": [{"op": "replace", "path": "/data/version", "value": version}],
    }])
}

#[tokio::test]
async fn an_override_edit_is_a_new_revision_through_stages_and_approvals() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    let fleet = fast_fleet(delivery.clone());
    let clusters = fleet_members();
    let (_, r1) = step(
        &hub,
        &ctx,
        &fleet,
        &rollout(spec("1", json!({})), 1, None),
        &clusters,
        &[],
        t(0),
    )
    .await;
    let approvals = [approval("canary", "sha256:v1", FleetDecision::Approved)];
    let (_, r2) = step(&hub, &ctx, &fleet, &r1, &clusters, &approvals, t(60)).await;
    let s2 = r2.status.clone().expect("status");
    assert_eq!(s2.phase, Some(RolloutPhase::Succeeded));
    delivery.take_applied();

    // Only the overrides change: a new revision, applied to the canary alone, waiting for an
    // approval of its own (the approval of sha256:v1 does not count).
    let mut r2 = r2;
    r2.spec = spec("1", json!({"overrides": version_override("1-pinned")}));
    r2.metadata.generation = Some(2);
    let (_, r3) = step(&hub, &ctx, &fleet, &r2, &clusters, &approvals, t(400)).await;
    let s3 = r3.status.clone().expect("status");
    let revision = s3.target_revision.clone().expect("target revision");
    assert_ne!(revision, "sha256:v1");
    assert_eq!(delivery.take_applied(), ["c0@1-pinned"]);
    assert_eq!(s3.phase, Some(RolloutPhase::WaitingForApproval));
    assert_eq!(
        cluster_phases(&s3),
        ["canary/c0=Healthy", "prod/p1=Pending", "prod/p2=Pending"]
    );
    // The prod members still hold revision 1 as it was.
    assert_eq!(delivery.lock().live["p1"][0]["data"]["version"], "1");
}

#[tokio::test]
async fn a_rollback_renders_the_old_revision_with_its_old_overrides() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    let clusters = fleet_members();
    let extra = |version: &str| {
        json!({
            "failurePolicy": "Rollback",
            "stages": [
                {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "0"}}},
                {"name": "prod", "clusterSelector": {"matchLabels": {"ring": "1"}}},
            ],
            "overrides": version_override(version),
        })
    };
    let (_, r1) = step(
        &hub,
        &ctx,
        &fast_fleet(delivery.clone()),
        &rollout(spec("1", extra("old")), 1, None),
        &clusters,
        &[],
        t(0),
    )
    .await;
    assert_eq!(delivery.take_applied(), ["c0@old", "p1@old", "p2@old"]);

    // New overrides fail on p2. A fresh process (no memory) reads the old revision, and its
    // overrides, back from the snapshot.
    delivery
        .lock()
        .failing
        .insert(("p2".to_owned(), "new".to_owned()));
    let mut r1 = r1;
    r1.spec = spec("1", extra("new"));
    r1.metadata.generation = Some(2);
    let (_, r2) = step(
        &hub,
        &ctx,
        &fast_fleet(delivery.clone()),
        &r1,
        &clusters,
        &[],
        t(100),
    )
    .await;
    assert_eq!(
        delivery.take_applied(),
        ["c0@new", "p1@new", "p2@new", "p1@old", "p2@old", "c0@old"]
    );
    let s2 = r2.status.expect("status");
    assert_eq!(s2.phase, Some(RolloutPhase::RolledBack));
    assert_eq!(delivery.lock().live["p2"][0]["data"]["version"], "old");
}

#[tokio::test]
async fn a_timed_out_rollback_is_not_completed_by_an_old_observation() {
    let (client, hub) = Hub::start();
    let ctx = context(client);
    let delivery = FakeDelivery::default();
    let fleet = fast_fleet(delivery.clone());
    let clusters = fleet_members();
    let extra = json!({
        "failurePolicy": "Rollback",
        "stages": [
            {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "0"}}},
            {"name": "prod", "clusterSelector": {"matchLabels": {"ring": "1"}}, "maxConcurrency": 2},
        ],
    });
    // Revision 1 everywhere: this process remembers (p1, v1, Healthy).
    let (_, r1) = step(
        &hub,
        &ctx,
        &fleet,
        &rollout(spec("1", extra.clone()), 1, None),
        &clusters,
        &[],
        t(0),
    )
    .await;
    assert_eq!(
        r1.status.as_ref().and_then(|s| s.phase),
        Some(RolloutPhase::Succeeded)
    );
    delivery.take_applied();

    // Revision 2: p2 fails, p1's applies (forward, then the rollback to v1) all time out.
    {
        let mut st = delivery.lock();
        st.failing.insert(("p2".to_owned(), "2".to_owned()));
        st.slow.insert("p1".to_owned());
    }
    let mut r1 = r1;
    r1.spec = spec("2", extra.clone());
    r1.metadata.generation = Some(2);
    let (_, r2) = step(&hub, &ctx, &fleet, &r1, &clusters, &[], t(100)).await;
    let (_, r3) = step(&hub, &ctx, &fleet, &r2, &clusters, &[], t(200)).await;
    let s3 = r3.status.expect("status");
    // p1's rollback never finished: it is still rolling back, not done.
    assert!(
        cluster_phases(&s3).contains(&"prod/p1=RollingBack".to_owned()),
        "{:?}",
        cluster_phases(&s3)
    );
    assert_ne!(s3.phase, Some(RolloutPhase::RolledBack));
    assert!(
        !delivery.take_applied().iter().any(|a| a.starts_with("p1@")),
        "p1 never finished an apply"
    );
}

#[tokio::test]
async fn pause_and_abandon_hold_drift_correction_and_pruning_of_a_finished_rollout() {
    for state in ["Pause", "Abandon"] {
        let (client, hub) = Hub::start();
        let ctx = context(client);
        let delivery = FakeDelivery::default();
        let spec = spec(
            "1",
            json!({"stages": [{"name": "all", "maxConcurrency": 3}],
                   "applyStrategy": {"driftCheckInterval": "1m", "whenDrifted": "Correct"}}),
        );
        let (_, r1) = step(
            &hub,
            &ctx,
            &fast_fleet(delivery.clone()),
            &rollout(spec, 1, None),
            &fleet_members(),
            &[],
            t(0),
        )
        .await;
        assert_eq!(
            r1.status.as_ref().and_then(|s| s.phase),
            Some(RolloutPhase::Succeeded)
        );
        delivery.take_applied();
        // p1 is edited by hand, p2 leaves the targets, and the rollout is paused (abandoned).
        delivery.lock().live.get_mut("p1").expect("p1")[0]["data"]["version"] = json!("edited");
        let mut clusters = fleet_members();
        clusters[2].metadata.labels =
            Some(BTreeMap::from([("app".to_owned(), "other".to_owned())]));
        let mut held = r1.clone();
        held.spec.state = serde_json::from_value(json!(state)).expect("state");
        held.metadata.generation = Some(2);
        // A new process: a drift check would be due at once.
        let (_, r2) = step(
            &hub,
            &ctx,
            &fast_fleet(delivery.clone()),
            &held,
            &clusters,
            &[],
            t(120),
        )
        .await;
        assert_eq!(
            delivery.lock().live["p1"][0]["data"]["version"],
            "edited",
            "{state}: drift corrected"
        );
        assert!(delivery.lock().pruned.is_empty(), "{state}: pruned");
        assert!(delivery.take_applied().is_empty(), "{state}: applied");
        assert!(!hub.take_events().contains(&"Pruned".to_owned()), "{state}");
        // Executing again prunes the cluster that left.
        let mut again = r2.clone();
        again.spec.state = overseer_crds::fleet::RolloutState::Execute;
        again.metadata.generation = Some(3);
        step(
            &hub,
            &ctx,
            &fast_fleet(delivery.clone()),
            &again,
            &clusters,
            &[],
            t(240),
        )
        .await;
        assert_eq!(delivery.lock().pruned, ["p2"], "{state}");
    }
}
