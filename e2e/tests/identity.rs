//! Ephemeral identities on a real cluster, with the identity controller running in-process:
//! the issued token authenticates (SelfSubjectReview), may do exactly what was granted
//! (SelfSubjectAccessReview), and stops authenticating within a second of revocation or expiry.
//!
//! Without a cluster each test prints `SKIPPED` and returns (see the crate's README).

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use e2e::{Cluster, DEFAULT_TIMEOUT, apply_params, wait_for};
use k8s_openapi::api::{
    authentication::v1::SelfSubjectReview,
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::Secret,
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, Patch, PostParams},
    config::AuthInfo,
    runtime::wait::Condition,
};
use operator::{
    controller::{Context, Controller as _, Diagnostics, EventRecorder},
    health::Readiness,
    identity::{controller::IdentityController, revoke::revoke_agent},
    leader::LeaderState,
    metrics::Metrics,
};
use overseer_crds::agents::{EphemeralIdentity, EphemeralIdentityClass, IdentityPhase};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The in-process controller; stopped when dropped.
struct RunningController(CancellationToken);

impl Drop for RunningController {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn start_controller(client: Client) -> RunningController {
    let leader = LeaderState::fixed(true);
    let readiness = Readiness::new();
    let ready = readiness.register("controller/ephemeralidentity");
    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), "e2e", leader.clone()),
        client,
        metrics: Arc::new(Metrics::new()),
        leader,
        readiness,
        diagnostics: Diagnostics::default(),
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(Box::new(IdentityController).run(ctx, ready, shutdown.clone()));
    RunningController(shutdown)
}

fn phase_is(phase: IdentityPhase) -> impl Condition<EphemeralIdentity> {
    move |obj: Option<&EphemeralIdentity>| {
        obj.and_then(|o| o.status.as_ref()).and_then(|s| s.phase) == Some(phase)
    }
}

/// A client that authenticates with `token` only.
async fn client_with_token(token: &str) -> anyhow::Result<Client> {
    let mut config = Config::infer().await?;
    config.auth_info = AuthInfo {
        token: Some(token.to_owned().into()),
        ..AuthInfo::default()
    };
    Ok(Client::try_from(config)?)
}

/// The username the token authenticates as, or `None` when the API server rejects it (401).
async fn whoami(client: &Client) -> anyhow::Result<Option<String>> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review: SelfSubjectReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {},
    }))?;
    match api.create(&PostParams::default(), &review).await {
        Ok(r) => Ok(r.status.and_then(|s| s.user_info).and_then(|u| u.username)),
        Err(kube::Error::Api(s)) if s.code == 401 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn can(client: &Client, namespace: &str, verb: &str, resource: &str) -> anyhow::Result<bool> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                verb: Some(verb.to_owned()),
                resource: Some(resource.to_owned()),
                ..ResourceAttributes::default()
            }),
            non_resource_attributes: None,
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Ask until the token is rejected; fails if that takes longer than `limit`.
async fn rejected_within(client: &Client, limit: Duration) -> anyhow::Result<Duration> {
    let start = tokio::time::Instant::now();
    loop {
        if whoami(client).await?.is_none() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("the token still authenticates {limit:?} after revocation");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Fixture {
    cluster: Cluster,
    namespace: e2e::TempNamespace,
    class: String,
    _controller: RunningController,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let api: Api<EphemeralIdentityClass> = Api::all(self.cluster.client().clone());
        let name = self.class.clone();
        // Best effort: the class is cluster-scoped, so the namespace's deletion does not take it.
        tokio::spawn(async move {
            let _ = api.delete(&name, &DeleteParams::default()).await;
        });
    }
}

async fn fixture(test: &str) -> anyhow::Result<Option<Fixture>> {
    let Some(cluster) = Cluster::connect_or_skip(test).await? else {
        return Ok(None);
    };
    cluster.install_crds().await?;
    let namespace = cluster.temp_namespace().await?;
    let class = namespace.name().to_owned();
    let classes: Api<EphemeralIdentityClass> = Api::all(cluster.client().clone());
    let body: EphemeralIdentityClass = serde_json::from_value(json!({
        "apiVersion": "agents.overseer.dev/v1alpha1",
        "kind": "EphemeralIdentityClass",
        "metadata": {"name": class},
        "spec": {
            "maxTtl": "1h",
            "namespaces": [namespace.name()],
            "allowedRules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
            "recordRetention": "1h",
        },
    }))?;
    classes
        .patch(&class, &apply_params(false), &Patch::Apply(&body))
        .await
        .context("applying the class")?;
    let controller = start_controller(cluster.client().clone());
    Ok(Some(Fixture {
        cluster,
        namespace,
        class,
        _controller: controller,
    }))
}

/// Create an identity for agent `agent` and wait until it is Active; returns it and its token.
async fn issue(
    f: &Fixture,
    name: &str,
    agent: &str,
    ttl: &str,
) -> anyhow::Result<(EphemeralIdentity, String)> {
    let api: Api<EphemeralIdentity> =
        Api::namespaced(f.cluster.client().clone(), f.namespace.name());
    let body: EphemeralIdentity = serde_json::from_value(json!({
        "apiVersion": "agents.overseer.dev/v1alpha1",
        "kind": "EphemeralIdentity",
        "metadata": {"name": name},
        "spec": {
            "className": f.class,
            "agent": agent,
            "ttl": ttl,
            "grants": {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]},
        },
    }))?;
    api.patch(name, &apply_params(false), &Patch::Apply(&body))
        .await?;
    let identity = wait_for(&api, name, phase_is(IdentityPhase::Active), DEFAULT_TIMEOUT).await?;
    let status = identity
        .status
        .clone()
        .ok_or_else(|| anyhow!("no status"))?;
    let secret_name = status.secret_name.ok_or_else(|| anyhow!("no secretName"))?;
    let secrets: Api<Secret> = Api::namespaced(f.cluster.client().clone(), f.namespace.name());
    let secret = secrets.get(&secret_name).await?;
    let token = secret
        .data
        .and_then(|d| d.get("token").cloned())
        .ok_or_else(|| anyhow!("the Secret holds no token"))?;
    Ok((identity, String::from_utf8(token.0)?))
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: OVERSEER_E2E_REQUIRED=1 cargo test -p e2e -- --ignored"]
async fn token_authenticates_is_scoped_and_dies_on_revocation() -> anyhow::Result<()> {
    let Some(f) = fixture("token_authenticates_is_scoped_and_dies_on_revocation").await? else {
        return Ok(());
    };
    let (identity, token) = issue(&f, "reader", "e2e-agent", "15m").await?;
    let sa = identity
        .status
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .ok_or_else(|| anyhow!("no serviceAccountName"))?;
    let agent = client_with_token(&token).await?;
    let ns = f.namespace.name();

    assert_eq!(
        whoami(&agent).await?,
        Some(format!("system:serviceaccount:{ns}:{sa}"))
    );
    assert!(can(&agent, ns, "get", "pods").await?, "granted: get pods");
    assert!(can(&agent, ns, "list", "pods").await?, "granted: list pods");
    assert!(
        !can(&agent, ns, "delete", "pods").await?,
        "not granted: delete pods"
    );
    assert!(
        !can(&agent, ns, "get", "secrets").await?,
        "not granted: get secrets"
    );
    assert!(
        !can(&agent, "default", "get", "pods").await?,
        "not granted outside its namespace"
    );

    // The kill switch marks it; the controller deletes the Secret first.
    assert_eq!(
        revoke_agent(f.cluster.client(), Some(ns), "e2e-agent").await?,
        1
    );
    let api: Api<EphemeralIdentity> = Api::namespaced(f.cluster.client().clone(), ns);
    wait_for(
        &api,
        "reader",
        phase_is(IdentityPhase::Revoked),
        DEFAULT_TIMEOUT,
    )
    .await?;
    let took = rejected_within(&agent, Duration::from_secs(1)).await?;
    e2e::report(&format!(
        "token rejected {took:?} after the identity was marked Revoked"
    ));
    Ok(())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: OVERSEER_E2E_REQUIRED=1 cargo test -p e2e -- --ignored"]
async fn token_dies_within_a_second_of_expiry() -> anyhow::Result<()> {
    let Some(f) = fixture("token_dies_within_a_second_of_expiry").await? else {
        return Ok(());
    };
    // Far below the API server's 10-minute token minimum: the Secret's deletion ends it.
    let (identity, token) = issue(&f, "short", "e2e-agent-2", "5s").await?;
    let agent = client_with_token(&token).await?;
    assert!(
        whoami(&agent).await?.is_some(),
        "authenticates while active"
    );
    let expires: k8s_openapi::jiff::Timestamp = identity
        .status
        .as_ref()
        .and_then(|s| s.expires_at.as_deref())
        .ok_or_else(|| anyhow!("no expiresAt"))?
        .parse()?;
    let until = expires.duration_since(k8s_openapi::jiff::Timestamp::now());
    let until = Duration::try_from(until).unwrap_or(Duration::ZERO);
    tokio::time::sleep(until).await;
    let took = rejected_within(&agent, Duration::from_secs(1)).await?;
    e2e::report(&format!("token rejected {took:?} after expiresAt"));
    let api: Api<EphemeralIdentity> =
        Api::namespaced(f.cluster.client().clone(), f.namespace.name());
    let ended = wait_for(
        &api,
        "short",
        phase_is(IdentityPhase::Expired),
        DEFAULT_TIMEOUT,
    )
    .await?;
    assert!(ended.status.and_then(|s| s.ended_at).is_some());
    Ok(())
}
