//! Fleet rollouts on real clusters, with the FleetCluster and FleetRollout controllers running
//! in-process against the hub (the cluster of `KUBECONFIG`).
//!
//! Members: the kubeconfig files listed in `OVERSEER_E2E_FLEET_KUBECONFIGS` (`path1:path2:...`),
//! used in turn when fewer are given than a test needs; without it, the hub's own kubeconfig, the
//! single cluster registered as several members. Every member gets its own namespace
//! (`<hub namespace>-<member>`, through an override using `${CLUSTER_NAME}`), so members sharing a
//! cluster never share objects. Kubeconfigs must carry inline credentials (as kind's and k3d's do).
//!
//! Run with `cargo test -p e2e --test fleet -- --ignored --test-threads=1`. Without a cluster each
//! test prints `SKIPPED` and returns.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use e2e::{Cluster, TempNamespace, apply_params, report, wait_for};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
    runtime::wait::Condition,
};
use operator::{
    controller::{Context, Controller as _, Diagnostics, EventRecorder},
    fleetcluster::controller::FleetClusterController,
    fleetrollout::{
        controller::FleetRolloutController,
        delivery::{Delivered, Delivery, GateEvaluator, RolloutKey},
        kube::KubeDelivery,
    },
    health::Readiness,
    leader::LeaderState,
    metrics::Metrics,
};
use overseer_crds::fleet::{
    FleetApproval, FleetCluster, FleetRollout, RolloutPhase, StageGate, TaskWhen,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Environment variable listing member kubeconfig files.
const KUBECONFIGS_ENV: &str = "OVERSEER_E2E_FLEET_KUBECONFIGS";
/// How long a rollout step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// The in-process controllers; stopped when dropped.
struct RunningControllers(CancellationToken);

impl Drop for RunningControllers {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn start_controllers(client: Client) -> RunningControllers {
    let leader = LeaderState::fixed(true);
    let readiness = Readiness::new();
    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), "e2e", leader.clone()),
        client,
        metrics: Arc::new(Metrics::new()),
        leader,
        readiness: readiness.clone(),
        diagnostics: Diagnostics::default(),
    });
    let shutdown = CancellationToken::new();
    let clusters = readiness.register("controller/fleetcluster");
    tokio::spawn(Box::new(FleetClusterController).run(ctx.clone(), clusters, shutdown.clone()));
    let rollouts = readiness.register("controller/fleetrollout");
    tokio::spawn(Box::new(FleetRolloutController::default()).run(ctx, rollouts, shutdown.clone()));
    RunningControllers(shutdown)
}

/// The kubeconfig (file contents) of every member source: the listed files, or the hub's own.
fn member_kubeconfigs() -> anyhow::Result<Vec<(String, String)>> {
    let listed = std::env::var(KUBECONFIGS_ENV).unwrap_or_default();
    let paths: Vec<PathBuf> = if listed.trim().is_empty() {
        let hub = std::env::var_os("KUBECONFIG")
            .filter(|v| !v.is_empty())
            .and_then(|v| std::env::split_paths(&v).next())
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config"))
            })
            .ok_or_else(|| anyhow!("no kubeconfig for the hub"))?;
        vec![hub]
    } else {
        std::env::split_paths(&listed).collect()
    };
    paths
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(&p)
                .map(|text| (p.display().to_string(), text))
                .with_context(|| format!("reading member kubeconfig {}", p.display()))
        })
        .collect()
}

/// Member `FleetCluster`s registered for one test; deleted (with their objects' namespaces on
/// the members) when dropped.
struct Members {
    hub: Client,
    names: Vec<String>,
    kubeconfigs: Vec<String>,
    namespace: String,
}

impl Members {
    /// Register `count` members named `<ns>-m<i>` labelled `e2e-run=<ns>` and `ring=<i % rings>`,
    /// their kubeconfigs in Secrets of the hub namespace, and wait until each is `Ready`.
    async fn register(
        hub: &Client,
        ns: &TempNamespace,
        count: usize,
        rings: usize,
    ) -> anyhow::Result<Self> {
        let sources = member_kubeconfigs()?;
        report(&format!(
            "fleet e2e: {count} members over {} cluster(s): {}",
            sources.len(),
            sources
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let secrets: Api<Secret> = Api::namespaced(hub.clone(), ns.name());
        let clusters: Api<FleetCluster> = Api::all(hub.clone());
        let mut members = Self {
            hub: hub.clone(),
            names: Vec::new(),
            kubeconfigs: Vec::new(),
            namespace: ns.name().to_owned(),
        };
        for i in 0..count {
            let (_, kubeconfig) = &sources[i % sources.len()];
            let name = format!("{}-m{i}", ns.name());
            let secret: Secret = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("{name}-kubeconfig"), "namespace": ns.name()},
                "stringData": {"value": kubeconfig},
            }))?;
            secrets
                .patch(
                    &secret.name_any(),
                    &apply_params(false),
                    &Patch::Apply(&secret),
                )
                .await
                .context("writing a member kubeconfig Secret")?;
            let cluster: FleetCluster = serde_json::from_value(json!({
                "apiVersion": "fleet.overseer.dev/v1alpha1", "kind": "FleetCluster",
                "metadata": {"name": name, "labels": {
                    "e2e-run": ns.name(), "ring": (i % rings.max(1)).to_string(),
                }},
                "spec": {
                    "kubeconfigSecretRef": {"namespace": ns.name(), "name": format!("{name}-kubeconfig")},
                    "heartbeatPeriod": "5s",
                },
            }))?;
            clusters
                .patch(&name, &apply_params(false), &Patch::Apply(&cluster))
                .await
                .with_context(|| format!("registering FleetCluster {name}"))?;
            members.names.push(name);
            members.kubeconfigs.push(kubeconfig.clone());
        }
        for name in &members.names {
            wait_for(&clusters, name, condition_true("Ready"), STEP_TIMEOUT)
                .await
                .with_context(|| format!("FleetCluster {name} becoming Ready"))?;
        }
        Ok(members)
    }

    /// The member's own client.
    async fn client(&self, i: usize) -> anyhow::Result<Client> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfigs[i])?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// The namespace member `i`'s objects are delivered to.
    fn target_namespace(&self, i: usize) -> String {
        format!("{}-{}", self.namespace, self.names[i])
    }

    /// The `version` of the `app` ConfigMap on member `i`, `None` when absent.
    async fn version_on(&self, i: usize) -> anyhow::Result<Option<String>> {
        let api: Api<ConfigMap> = Api::namespaced(self.client(i).await?, &self.target_namespace(i));
        Ok(api
            .get_opt("app")
            .await?
            .and_then(|cm| cm.data.and_then(|d| d.get("version").cloned())))
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        let hub = self.hub.clone();
        let names = self.names.clone();
        let kubeconfigs = self.kubeconfigs.clone();
        let targets: Vec<String> = (0..names.len()).map(|i| self.target_namespace(i)).collect();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let clusters: Api<FleetCluster> = Api::all(hub);
                for ((name, kubeconfig), target) in names.iter().zip(&kubeconfigs).zip(&targets) {
                    let _ = clusters.delete(name, &DeleteParams::background()).await;
                    let Ok(k) = kube::config::Kubeconfig::from_yaml(kubeconfig) else {
                        continue;
                    };
                    let Ok(config) =
                        kube::Config::from_custom_kubeconfig(k, &Default::default()).await
                    else {
                        continue;
                    };
                    if let Ok(client) = Client::try_from(config) {
                        let _ = Api::<Namespace>::all(client)
                            .delete(target, &DeleteParams::background())
                            .await;
                    }
                }
            });
        })
        .join();
    }
}

fn condition_true<K: kube::Resource + serde::Serialize>(type_: &'static str) -> impl Condition<K> {
    move |obj: Option<&K>| {
        obj.and_then(|o| serde_json::to_value(o).ok())
            .and_then(|v| v["status"]["conditions"].as_array().cloned())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == type_ && c["status"] == "True")
            })
    }
}

fn phase_is(phases: &'static [RolloutPhase]) -> impl Condition<FleetRollout> {
    move |obj: Option<&FleetRollout>| {
        obj.and_then(|o| o.status.as_ref())
            .and_then(|s| s.phase)
            .is_some_and(|p| phases.contains(&p))
    }
}

/// Objects of one revision: a Namespace and ConfigMaps (`app` carries `version`), placed per member
/// by the overrides of [`rollout`].
fn manifests(version: &str, extra_configmaps: usize) -> Vec<Value> {
    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "placeholder", "labels": {"overseer.dev/e2e": "true"}}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "app", "namespace": "placeholder"},
               "data": {"version": version}}),
    ];
    for i in 0..extra_configmaps {
        objects.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("extra-{i:02}"), "namespace": "placeholder"},
            "data": {"version": version, "index": i.to_string()}}));
    }
    objects
}

/// A rollout of `objects` to the members of this run, in `stages`, each member's objects in
/// `<hub namespace>-<member>`.
fn rollout(
    ns: &str,
    name: &str,
    objects: Vec<Value>,
    stages: Value,
) -> anyhow::Result<FleetRollout> {
    let place = format!("{ns}-${{CLUSTER_NAME}}");
    Ok(serde_json::from_value(json!({
        "apiVersion": "fleet.overseer.dev/v1alpha1", "kind": "FleetRollout",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "source": {"inline": objects},
            "targets": {"clusterSelector": {"matchLabels": {"e2e-run": ns}}},
            "stages": stages,
            "overrides": [
                {"name": "namespace-name", "clusterSelector": {},
                 "target": {"kind": "Namespace", "name": "placeholder"},
                 "jsonPatch": [{"op": "replace", "path": "/metadata/name", "value": place}]},
                {"name": "configmap-namespace", "clusterSelector": {},
                 "target": {"kind": "ConfigMap"},
                 "jsonPatch": [{"op": "replace", "path": "/metadata/namespace", "value": place}]},
            ],
            "failurePolicy": "Rollback",
        },
    }))?)
}

async fn approve(
    hub: &Client,
    ns: &str,
    rollout: &FleetRollout,
    stage: &str,
) -> anyhow::Result<String> {
    let revision = rollout
        .status
        .as_ref()
        .and_then(|s| s.target_revision.clone())
        .ok_or_else(|| anyhow!("no target revision"))?;
    let api: Api<FleetApproval> = Api::namespaced(hub.clone(), ns);
    let found = e2e::with_timeout(STEP_TIMEOUT, async {
        loop {
            let list = api.list(&ListParams::default()).await?;
            if let Some(a) = list.items.into_iter().find(|a| {
                a.spec.stage == stage
                    && a.spec.when == TaskWhen::Before
                    && a.spec.revision == revision
            }) {
                return Ok::<_, anyhow::Error>(a);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await??;
    let name = found.name_any();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"review": {
            "decision": "Approved", "reviewer": "e2e@example.com", "comment": "looks good"}}})),
    )
    .await
    .with_context(|| format!("approving {name}"))?;
    Ok(name)
}

#[tokio::test]
#[ignore = "needs a cluster: cargo test -p e2e --test fleet -- --ignored"]
async fn three_stages_with_an_approval_and_a_forced_failure_roll_back() -> anyhow::Result<()> {
    let Some(cluster) =
        Cluster::connect_or_skip("three_stages_with_an_approval_and_a_forced_failure_roll_back")
            .await?
    else {
        return Ok(());
    };
    cluster.install_crds().await?;
    let hub = cluster.client().clone();
    let ns = cluster.temp_namespace().await?;
    let _controllers = start_controllers(hub.clone());
    let members = Members::register(&hub, &ns, 3, 3).await?;
    // Revision 2 fails for good on the last stage's member (a `failed` health expression).
    let stages = json!([
        {"name": "one", "clusterSelector": {"matchLabels": {"ring": "0"}}},
        {"name": "two", "clusterSelector": {"matchLabels": {"ring": "1"}},
         "beforeTasks": [{"type": "Approval"}]},
        {"name": "three", "clusterSelector": {"matchLabels": {"ring": "2"}},
         "gate": {"timeout": "2m", "healthExpressions": [{
             "apiVersion": "v1", "kind": "ConfigMap", "name": "app",
             "healthy": "true", "failed": "self.data.version == '2'"}]}},
    ]);
    let rollouts: Api<FleetRollout> = Api::namespaced(hub.clone(), ns.name());
    let apply = |r: FleetRollout| {
        let rollouts = rollouts.clone();
        async move {
            rollouts
                .patch("web", &apply_params(false), &Patch::Apply(&r))
                .await
                .context("applying the rollout")
        }
    };

    // Revision 1: stage one, then the approval, then two and three.
    apply(rollout(
        ns.name(),
        "web",
        manifests("1", 0),
        stages.clone(),
    )?)
    .await?;
    let waiting = wait_for(
        &rollouts,
        "web",
        phase_is(&[RolloutPhase::WaitingForApproval]),
        STEP_TIMEOUT,
    )
    .await?;
    assert_eq!(members.version_on(0).await?.as_deref(), Some("1"));
    assert_eq!(
        members.version_on(1).await?,
        None,
        "stage two waits for its approval"
    );
    approve(&hub, ns.name(), &waiting, "two").await?;
    let done = wait_for(&rollouts, "web", condition_true("Ready"), STEP_TIMEOUT).await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(RolloutPhase::Succeeded));
    assert_eq!(status.progress.as_deref(), Some("3/3"));
    assert_eq!(
        status.stages[1].tasks[0].approved_by.as_deref(),
        Some("e2e@example.com")
    );
    for i in 0..3 {
        assert_eq!(
            members.version_on(i).await?.as_deref(),
            Some("1"),
            "member {i}"
        );
    }

    // Revision 2: approved again (an approval never carries over), fails on stage three and is
    // rolled back to revision 1 everywhere, last stage first.
    apply(rollout(ns.name(), "web", manifests("2", 0), stages)?).await?;
    let waiting = wait_for(
        &rollouts,
        "web",
        move |r: Option<&FleetRollout>| {
            phase_is(&[RolloutPhase::WaitingForApproval]).matches_object(r)
                && r.and_then(|r| r.status.as_ref())
                    .and_then(|s| s.target_revision.as_deref())
                    != status.target_revision.as_deref()
        },
        STEP_TIMEOUT,
    )
    .await?;
    assert_eq!(members.version_on(0).await?.as_deref(), Some("2"));
    approve(&hub, ns.name(), &waiting, "two").await?;
    let rolled = wait_for(
        &rollouts,
        "web",
        phase_is(&[RolloutPhase::RolledBack, RolloutPhase::Failed]),
        STEP_TIMEOUT,
    )
    .await?;
    let status = rolled.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(RolloutPhase::RolledBack), "{status:#?}");
    for stage in &status.stages {
        assert_eq!(stage.phase, "RolledBack", "{status:#?}");
    }
    for i in 0..3 {
        assert_eq!(
            members.version_on(i).await?.as_deref(),
            Some("1"),
            "member {i} rolled back"
        );
    }
    let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled");
    assert_eq!(stalled.map(|c| c.status.as_str()), Some("True"));
    Ok(())
}

#[tokio::test]
#[ignore = "needs a cluster: cargo test -p e2e --test fleet -- --ignored"]
async fn twenty_objects_to_fifty_members_without_gates_timing() -> anyhow::Result<()> {
    const MEMBERS: usize = 50;
    const OBJECTS: usize = 20; // the Namespace, `app` and 18 more ConfigMaps
    const CONCURRENCY: usize = 10;
    let Some(cluster) =
        Cluster::connect_or_skip("twenty_objects_to_fifty_members_without_gates_timing").await?
    else {
        return Ok(());
    };
    cluster.install_crds().await?;
    let hub = cluster.client().clone();
    let ns = cluster.temp_namespace().await?;
    let _controllers = start_controllers(hub.clone());
    // One more member for the one-cluster baseline, outside the rollout's targets.
    let members = Members::register(&hub, &ns, MEMBERS + 1, 1).await?;
    let baseline_member = MEMBERS;
    let objects = manifests("1", OBJECTS - 2);

    // Baseline: one member, the same objects, applied the way the controller applies them.
    let delivery = KubeDelivery::new(hub.clone(), std::env::temp_dir().join("overseer-e2e-git"))?;
    let fleet_clusters: Api<FleetCluster> = Api::all(hub.clone());
    let base = fleet_clusters.get(&members.names[baseline_member]).await?;
    let spec = rollout(
        ns.name(),
        "baseline",
        objects.clone(),
        json!([{"name": "all"}]),
    )?
    .spec;
    let rendered: Vec<DynamicObject> = objects
        .iter()
        .map(|v| serde_json::from_value(v.clone()))
        .collect::<Result<_, _>>()?;
    let per_member = delivery.render(&rendered, &spec.overrides, &base)?;
    let gate = GateEvaluator::new(&StageGate::default())?;
    let key = RolloutKey {
        namespace: ns.name().to_owned(),
        name: "baseline".into(),
    };
    let mut samples = Vec::new();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let outcome = delivery
            .apply(Delivered {
                cluster: &base,
                rollout: &key,
                revision: "sha256:baseline",
                objects: &per_member,
                prune: true,
                prune_kinds: &[],
                gate: &gate,
            })
            .await?;
        samples.push(started.elapsed());
        if !outcome.health.is_current() {
            bail!("baseline apply not healthy: {}", outcome.health.message);
        }
    }
    samples.sort();
    let one_apply = samples[1];

    // The rollout: one stage, no gates, CONCURRENCY clusters at a time; the baseline member is
    // not among the targeted names.
    let mut r = rollout(
        ns.name(),
        "timing",
        objects,
        json!([{"name": "all", "maxConcurrency": CONCURRENCY}]),
    )?;
    r.spec.targets.cluster_names = members.names[..MEMBERS].to_vec();
    r.spec.targets.cluster_selector = None;
    let rollouts: Api<FleetRollout> = Api::namespaced(hub.clone(), ns.name());
    let started = std::time::Instant::now();
    rollouts
        .patch("timing", &apply_params(false), &Patch::Apply(&r))
        .await?;
    let done = wait_for(&rollouts, "timing", condition_true("Ready"), STEP_TIMEOUT).await?;
    let rollout_time = started.elapsed();
    let status = done.status.unwrap_or_default();
    assert_eq!(status.progress.as_deref(), Some("50/50"));
    let waves = MEMBERS.div_ceil(CONCURRENCY);
    let bound = one_apply.mul_f64(1.5 * waves as f64);
    report(&format!(
        "fleet timing: {OBJECTS} objects x {MEMBERS} members, maxConcurrency {CONCURRENCY} ({waves} waves): \
         rollout {rollout_time:?}; one-member apply {one_apply:?} (median of 3); \
         bound 1.5 x apply x waves = {bound:?}; ratio {:.2}",
        rollout_time.as_secs_f64() / (one_apply.as_secs_f64() * waves as f64)
    ));
    assert!(
        rollout_time <= bound,
        "rollout took {rollout_time:?}, more than {bound:?}"
    );
    Ok(())
}
