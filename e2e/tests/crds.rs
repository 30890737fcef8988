//! The v1alpha1 API on a real API server: the CRDs install and become Established, every valid
//! sample in `examples/` is accepted (and reads back through the Rust types), and every invalid
//! sample is rejected with the message its `# expect:` line names.
//!
//! Skipped (saying so) without a cluster; `OVERSEER_E2E_REQUIRED=1` makes that a failure.

use std::time::Duration;

use e2e::{ApplyError, Cluster, Sample, load_samples};
use kube::{api::DynamicObject, discovery::Scope};
use overseer_crds::{agents, fleet, runway};

/// The admission policy of config/admission forbids creating AgentApprovals to anyone but the
/// operator; when it is installed in the cluster under test, that rejection is what we expect.
const APPROVAL_CREATE_MESSAGE: &str =
    "AgentApproval objects are created only by the Overseer decision service";

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: OVERSEER_E2E_REQUIRED=1 cargo test -p e2e -- --ignored"]
async fn crds_install_and_become_established() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("crds_install_and_become_established").await?
    else {
        return Ok(());
    };
    let names = cluster.install_crds().await?;
    let expected = e2e::yaml_files(&e2e::repo_root().join("config/crd/bases"))?.len();
    assert_eq!(
        names.len(),
        expected,
        "every file in config/crd/bases is a CRD"
    );
    // Installing again is a no-op for server-side apply with the same field manager.
    let again = cluster.install_crds().await?;
    assert_eq!(names, again);
    Ok(())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: OVERSEER_E2E_REQUIRED=1 cargo test -p e2e -- --ignored"]
async fn valid_samples_are_accepted() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("valid_samples_are_accepted").await? else {
        return Ok(());
    };
    cluster.install_crds().await?;
    let ns = cluster.temp_namespace().await?;
    let (valid, _) = load_samples()?;
    let mut failures = Vec::new();
    for sample in &valid {
        if let Err(problem) = check_valid(&cluster, ns.name(), sample).await {
            failures.push(format!("{}: {problem}", sample.path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "valid samples failed:\n{}",
        failures.join("\n")
    );
    eprintln!("{} valid samples accepted", valid.len());
    Ok(())
}

/// Namespaced samples are created for real in the temporary namespace (removed with it) and read
/// back through the Rust types; cluster-scoped ones are applied with `dryRun=All`, so the test
/// leaves nothing behind outside its namespace.
async fn check_valid(cluster: &Cluster, namespace: &str, sample: &Sample) -> anyhow::Result<()> {
    let (_, scope) = cluster.api_for(&sample.object, namespace).await?;
    let dry_run = matches!(scope, Scope::Cluster);
    match cluster.apply(&sample.object, namespace, dry_run).await {
        Ok(stored) => parse_typed(&stored),
        Err(ApplyError::Rejected(message))
            if is_kind(sample, "AgentApproval") && message.contains(APPROVAL_CREATE_MESSAGE) =>
        {
            eprintln!(
                "{}: rejected by the installed admission policy as expected for a user other than the operator",
                sample.path.display()
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: OVERSEER_E2E_REQUIRED=1 cargo test -p e2e -- --ignored"]
async fn invalid_samples_are_rejected_with_their_message() -> anyhow::Result<()> {
    let Some(cluster) =
        Cluster::connect_or_skip("invalid_samples_are_rejected_with_their_message").await?
    else {
        return Ok(());
    };
    cluster.install_crds().await?;
    let ns = cluster.temp_namespace().await?;
    let (_, invalid) = load_samples()?;
    let mut failures = Vec::new();
    for sample in &invalid {
        let expect = sample.expect.as_deref().unwrap_or_default();
        match cluster.apply(&sample.object, ns.name(), true).await {
            Ok(_) => failures.push(format!(
                "{}: accepted, expected a rejection with {expect:?}",
                sample.path.display()
            )),
            Err(ApplyError::Rejected(message)) if message.contains(expect) => {}
            Err(ApplyError::Rejected(message)) => failures.push(format!(
                "{}: rejected, but the message does not contain {expect:?}: {message}",
                sample.path.display()
            )),
            Err(e) => failures.push(format!("{}: {e}", sample.path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "invalid samples:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "{} invalid samples rejected with their messages",
        invalid.len()
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: OVERSEER_E2E_REQUIRED=1 cargo test -p e2e -- --ignored"]
async fn temp_namespace_is_labelled_and_deleted() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::{Api, runtime::wait::conditions};

    let Some(cluster) = Cluster::connect_or_skip("temp_namespace_is_labelled_and_deleted").await?
    else {
        return Ok(());
    };
    let api = Api::<Namespace>::all(cluster.client().clone());
    let ns = cluster.temp_namespace().await?;
    let name = ns.name().to_string();
    let created = api.get(&name).await?;
    let label = created
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(e2e::E2E_LABEL))
        .map(String::as_str);
    assert_eq!(label, Some("true"));
    let uid = created.metadata.uid.unwrap_or_default();
    drop(ns);
    // Deletion finishes asynchronously; wait (by watch) until the namespace is gone.
    e2e::with_timeout(
        Duration::from_secs(120),
        kube::runtime::wait::await_condition(api, &name, conditions::is_deleted(&uid)),
    )
    .await??;
    Ok(())
}

fn is_kind(sample: &Sample, kind: &str) -> bool {
    sample.object.types.as_ref().is_some_and(|t| t.kind == kind)
}

/// What the API server stored must deserialize into the Rust type of its kind.
fn parse_typed(object: &DynamicObject) -> anyhow::Result<()> {
    let kind = object
        .types
        .as_ref()
        .map(|t| t.kind.as_str())
        .unwrap_or_default();
    let value = serde_json::to_value(object)?;
    match kind {
        "AgentPolicy" => serde_json::from_value::<agents::AgentPolicy>(value).map(|_| ())?,
        "ClusterAgentPolicy" => {
            serde_json::from_value::<agents::ClusterAgentPolicy>(value).map(|_| ())?
        }
        "AgentApproval" => serde_json::from_value::<agents::AgentApproval>(value).map(|_| ())?,
        "EphemeralIdentity" => {
            serde_json::from_value::<agents::EphemeralIdentity>(value).map(|_| ())?
        }
        "EphemeralIdentityClass" => {
            serde_json::from_value::<agents::EphemeralIdentityClass>(value).map(|_| ())?
        }
        "MCPServer" => serde_json::from_value::<agents::MCPServer>(value).map(|_| ())?,
        "InferenceRuntime" => {
            serde_json::from_value::<runway::InferenceRuntime>(value).map(|_| ())?
        }
        "FleetCluster" => serde_json::from_value::<fleet::FleetCluster>(value).map(|_| ())?,
        "FleetRollout" => serde_json::from_value::<fleet::FleetRollout>(value).map(|_| ())?,
        "FleetApproval" => serde_json::from_value::<fleet::FleetApproval>(value).map(|_| ())?,
        other => anyhow::bail!("not an Overseer kind: {other}"),
    }
    Ok(())
}
