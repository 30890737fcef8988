//! Runtime authorization on a real cluster: the AgentPolicy controller and the decision API of
//! `overseer run`, in-process and wired by the code `operator::runtime::run` uses
//! (`agentpolicy::service::in_cluster`) — one engine that
//! the policy controller keeps equal to the cluster's AgentPolicy objects, approvals kept as
//! AgentApproval objects (`KubeApprovals`, its driver and the approval ledger), the identity gate
//! over a watch of every EphemeralIdentity, TokenReview authentication of Kubernetes tokens and
//! the kill switch. Each test applies AgentPolicy objects to a temporary namespace, waits (with
//! watches) for the status the controller writes, and asks the decision router for decisions.
//!
//! The router is called through a `kube::Client` built over it (`Client::new(router, ..)`): an
//! in-process HTTP client, like axum's `oneshot`, with nothing bound to a port.
//!
//! The decision engine is in memory, so it has no watch: after a status is observed, decisions
//! are retried every 50 ms until the engine serves what the status says (the controller swaps the
//! engine before it writes the status, so the first try normally answers; the retry covers
//! another writer of the same status, such as an installed operator, having been first).
//!
//! Without a cluster each test prints `SKIPPED` and returns (see the crate's README).

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, anyhow, bail, ensure};
use e2e::{Cluster, DEFAULT_TIMEOUT, FIELD_MANAGER, TempNamespace, apply_params, wait_for};
use k8s_openapi::{
    api::{
        admissionregistration::v1::ValidatingAdmissionPolicy,
        authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec},
        core::v1::{Secret, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::Condition as StatusCondition,
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::wait::Condition,
};
use operator::{
    agentpolicy::{
        controller::PolicyController,
        service::{self, ClusterClients, DecisionArgs, DecisionRuntime},
    },
    controller::{Context, Controller as _, Diagnostics, EventRecorder},
    health::Readiness,
    identity::controller::IdentityController,
    leader::LeaderState,
    metrics::Metrics,
};
use overseer_crds::agents::{
    AgentApproval, AgentPolicy, AgentPolicyStatus, ApprovalPhase, EphemeralIdentity,
    EphemeralIdentityClass, IdentityPhase,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// API keys of the decision service under test.
const KEYS: &str = r#"
keys:
  - {name: e2e-gateway, role: gateway, key: "e2e-gateway-key-0123456789"}
  - {name: alice, role: approver, key: "e2e-approver-key-0123456789"}
"#;
/// A trusted gateway: may ask on behalf of any agent.
const GATEWAY_KEY: &str = "e2e-gateway-key-0123456789";
/// The approver `alice`.
const APPROVER_KEY: &str = "e2e-approver-key-0123456789";
/// The audience Kubernetes tokens must be minted for to reach the decision service.
const AUDIENCE: &str = "overseer-decisions";
/// How often in-process state without a watch (the engine, readiness flags) is looked at.
const POLL: Duration = Duration::from_millis(50);

const REFUND_REASON: &str = "refunds are issued by a human, not by an agent";
/// A `when` condition that does not parse: the compiler reports where.
const BROKEN_WHEN: &str = "context.amount <";

/// Cancels the in-process controllers and watches when dropped.
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A directory for the decision service's key file and audit log; removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{name}-decisions"));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a leftover file in the temp directory harms nothing.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cluster-scoped EphemeralIdentityClass that outlives no test: deleted when dropped (the
/// namespace's deletion does not take it), on a thread of its own like the namespace guard.
struct ClassGuard(String);

impl Drop for ClassGuard {
    fn drop(&mut self) {
        let name = self.0.clone();
        let outcome = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let api: Api<EphemeralIdentityClass> = Api::all(Client::try_default().await?);
                let params = DeleteParams::default();
                let delete = api.delete(&name, &params);
                match tokio::time::timeout(Duration::from_secs(30), delete).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(kube::Error::Api(status))) if status.code == 404 => Ok(()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(anyhow!("timed out")),
                }
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not delete EphemeralIdentityClass {}: {e:#}", self.0),
            Err(_) => eprintln!("could not delete EphemeralIdentityClass {}", self.0),
        }
    }
}

/// The cluster, a temporary namespace, the controllers and the decision API, in-process.
struct Fixture {
    cluster: Cluster,
    decisions: DecisionRuntime,
    /// An HTTP client whose transport is the decision router itself.
    http: Client,
    scratch: Scratch,
    _stop: StopOnDrop,
    // Last: the namespace is deleted after the controllers stopped.
    namespace: TempNamespace,
}

/// Connect (or skip), install the CRDs, create the namespace and start the policy controller and
/// the decision API; with `identities`, the identity controller too.
async fn fixture(test: &str, identities: bool) -> anyhow::Result<Option<Fixture>> {
    let Some(cluster) = Cluster::connect_or_skip(test).await? else {
        return Ok(None);
    };
    cluster.install_crds().await?;
    let namespace = cluster.temp_namespace().await?;
    let scratch = Scratch::new(namespace.name())?;
    let keys = scratch.0.join("keys.yaml");
    std::fs::write(&keys, KEYS).context("writing the API keys")?;
    let args = DecisionArgs {
        // Recorded, never bound: the router is called in-process.
        decision_listen: Some(([127, 0, 0, 1], 0).into()),
        decision_api_keys: Some(keys),
        decision_token_audiences: vec![AUDIENCE.to_owned()],
        // The longest the flag allows: a test can then tell the identity gate's denial of a
        // revoked identity from its token's invalidation (the review is still cached).
        decision_token_cache_seconds: 300,
        decision_approval_namespace: Some(namespace.name().to_owned()),
        decision_audit_file: Some(scratch.0.join("audit.jsonl")),
        ..DecisionArgs::default()
    };

    let client = cluster.client().clone();
    let shutdown = CancellationToken::new();
    let stop = StopOnDrop(shutdown.clone());
    let readiness = Readiness::new();
    let leader = LeaderState::fixed(true);
    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), "e2e", leader.clone()),
        client: client.clone(),
        metrics: Arc::new(Metrics::new()),
        leader,
        readiness: readiness.clone(),
        diagnostics: Diagnostics::default(),
    });

    // Wired by the same code as `overseer run`: one engine, kept current by the policy
    // controller and answered from by the decision API; approvals are AgentApproval objects; the
    // identity gate is asked before any policy; Kubernetes tokens are reviewed with TokenReview.
    let mut metrics = Metrics::new();
    let (engine, decisions) = service::in_cluster(
        &args,
        ClusterClients {
            client: client.clone(),
            approvals: approvals_client(&cluster).await?,
            default_approval_namespace: namespace.name().to_owned(),
        },
        &readiness,
        metrics.registry_mut(),
        &shutdown,
    )?;
    let decisions = decisions.ok_or_else(|| anyhow!("the decision API is not enabled"))?;

    let policies_ready = readiness.register("controller/agentpolicy");
    tokio::spawn(Box::new(PolicyController::new(engine)).run(
        ctx.clone(),
        policies_ready,
        shutdown.clone(),
    ));
    if identities {
        let ready = readiness.register("controller/ephemeralidentity");
        tokio::spawn(Box::new(IdentityController).run(ctx, ready, shutdown.clone()));
    }
    eventually(
        "the controllers' and the identity gate's caches to sync",
        || {
            let readiness = readiness.clone();
            async move { Ok(readiness.is_ready().then_some(())) }
        },
    )
    .await
    .with_context(|| format!("still not ready: {:?}", readiness.failing()))?;

    let http = Client::new(decisions.router(), namespace.name());
    Ok(Some(Fixture {
        cluster,
        decisions,
        http,
        scratch,
        _stop: stop,
        namespace,
    }))
}

/// Poll `check` every [`POLL`] until it yields `Some`, for at most [`DEFAULT_TIMEOUT`]. Only for
/// in-process state that no watch can report; the API server's objects are waited for with
/// watches ([`wait_for`]).
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if start.elapsed() > DEFAULT_TIMEOUT {
            bail!("waiting for {what}: timed out after {DEFAULT_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The admission policy of `config/admission` (see the crate's README).
const ADMISSION_POLICY: &str = "overseer-agentapproval-review";
/// The only user that admission policy lets create AgentApprovals.
const OPERATOR_USER: &str = "system:serviceaccount:overseer-system:overseer";

/// The client the in-process decision service writes AgentApprovals with: the test's own, or,
/// when the admission policy of `config/admission` is installed (which lets only the operator
/// create AgentApprovals), the operator's ServiceAccount, impersonated (the full install of
/// `config/default` gives it the RBAC it needs).
async fn approvals_client(cluster: &Cluster) -> anyhow::Result<Client> {
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(cluster.client().clone());
    if policies.get_opt(ADMISSION_POLICY).await?.is_none() {
        return Ok(cluster.client().clone());
    }
    e2e::report(&format!(
        "the admission policy {ADMISSION_POLICY} is installed: the decision service creates AgentApprovals as {OPERATOR_USER}"
    ));
    let mut config = Config::infer().await?;
    config.auth_info.impersonate = Some(OPERATOR_USER.to_owned());
    let client = Client::try_from(config)?;
    let probe: Api<AgentApproval> = Api::all(client.clone());
    probe
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
        .with_context(|| {
            format!(
                "the admission policy {ADMISSION_POLICY} is installed, so the decision service must act as {OPERATOR_USER}, \
                 but that user cannot list AgentApprovals: install config/default (its RBAC) or remove the admission policy"
            )
        })?;
    Ok(client)
}

/// The username the API server authenticates `client` as.
async fn whoami(client: &Client) -> anyhow::Result<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review: SelfSubjectReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {},
    }))?;
    api.create(&PostParams::default(), &review)
        .await
        .context("SelfSubjectReview")?
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .ok_or_else(|| anyhow!("the SelfSubjectReview named no user"))
}

impl Fixture {
    fn ns(&self) -> &str {
        self.namespace.name()
    }

    fn policies(&self) -> Api<AgentPolicy> {
        Api::namespaced(self.cluster.client().clone(), self.ns())
    }

    /// Server-side apply the AgentPolicy `name` with `spec`; returns it as stored.
    async fn apply_policy(&self, name: &str, spec: Value) -> anyhow::Result<AgentPolicy> {
        let body = json!({
            "apiVersion": "agents.overseer.dev/v1alpha1",
            "kind": "AgentPolicy",
            "metadata": {"name": name},
            "spec": spec,
        });
        self.policies()
            .patch(name, &apply_params(false), &Patch::Apply(&body))
            .await
            .with_context(|| format!("applying AgentPolicy {name}"))
    }

    /// Wait (watch) until the policy's status describes `generation` with `Ready=<ready>`.
    async fn wait_ready(
        &self,
        name: &str,
        generation: i64,
        ready: &'static str,
    ) -> anyhow::Result<AgentPolicyStatus> {
        let policy = wait_for(
            &self.policies(),
            name,
            ready_at(generation, ready),
            DEFAULT_TIMEOUT,
        )
        .await
        .with_context(|| format!("AgentPolicy {name}: Ready={ready} at generation {generation}"))?;
        policy.status.ok_or_else(|| anyhow!("{name} has no status"))
    }

    /// POST `body` to `path` of the decision API; returns the status code and the JSON answer.
    async fn post(
        &self,
        path: &str,
        credential: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = kube::core::Request::new(path)
            .create(&PostParams::default(), body.to_string().into())?;
        if let Some(credential) = credential {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {credential}").parse()?);
        }
        let response = self
            .http
            .send(request.map(kube::client::Body::from))
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect_bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Ask for a decision; the answer must be a 200.
    async fn decide(&self, credential: &str, request: &Value) -> anyhow::Result<Value> {
        let (status, answer) = self
            .post("/v1/decisions", Some(credential), request)
            .await?;
        ensure!(
            status == 200,
            "decision request answered {status}: {answer}"
        );
        Ok(answer)
    }

    /// Ask until the decision is `outcome` (the engine follows the watched policies; see the
    /// module docs); returns that answer.
    async fn decide_until(
        &self,
        credential: &str,
        request: &Value,
        outcome: &str,
    ) -> anyhow::Result<Value> {
        let start = tokio::time::Instant::now();
        loop {
            let answer = self.decide(credential, request).await?;
            if answer["decision"] == outcome {
                return Ok(answer);
            }
            if start.elapsed() > DEFAULT_TIMEOUT {
                bail!(
                    "no decision {outcome} for {request} within {DEFAULT_TIMEOUT:?}; the last answer was {answer}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The audit log's records so far.
    fn audit(&self) -> anyhow::Result<Vec<Value>> {
        self.decisions
            .service
            .audit
            .flush()
            .map_err(|e| anyhow!("flushing the audit log: {e}"))?;
        let path = self.scratch.0.join("audit.jsonl");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .map(|line| serde_json::from_str(line).context("an audit line is not JSON"))
            .collect()
    }

    /// The audit record of `answer` (by its decision id); it must say `result`.
    fn assert_audited(&self, answer: &Value, result: &str) -> anyhow::Result<Value> {
        let id = &answer["decisionId"];
        let record = self
            .audit()?
            .into_iter()
            .find(|r| &r["decision_id"] == id)
            .ok_or_else(|| anyhow!("decision {id} is not in the audit log"))?;
        ensure!(
            record["result"] == result,
            "decision {id} audited as {}, expected {result}: {record}",
            record["result"]
        );
        Ok(record)
    }
}

fn ready_condition(status: &AgentPolicyStatus) -> anyhow::Result<&StatusCondition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .ok_or_else(|| anyhow!("no Ready condition in {status:?}"))
}

/// The policy's status describes `generation` and its `Ready` condition is `ready`.
fn ready_at(generation: i64, ready: &'static str) -> impl Condition<AgentPolicy> {
    move |policy: Option<&AgentPolicy>| {
        policy.and_then(|p| p.status.as_ref()).is_some_and(|s| {
            s.observed_generation == Some(generation)
                && s.conditions.iter().any(|c| {
                    c.type_ == "Ready"
                        && c.status == ready
                        && c.observed_generation == Some(generation)
                })
        })
    }
}

fn approval_phase_is(phase: ApprovalPhase) -> impl Condition<AgentApproval> {
    move |obj: Option<&AgentApproval>| {
        obj.and_then(|o| o.status.as_ref()).and_then(|s| s.phase) == Some(phase)
    }
}

fn phase_is(phase: IdentityPhase) -> impl Condition<EphemeralIdentity> {
    move |obj: Option<&EphemeralIdentity>| {
        obj.and_then(|o| o.status.as_ref()).and_then(|s| s.phase) == Some(phase)
    }
}

/// A request a gateway makes on behalf of agent `support-bot` of namespace `ns`.
fn as_agent(ns: &str, tool: &str, arguments: Value) -> Value {
    json!({
        "principal": {"id": "support-bot", "namespace": ns},
        "tool": tool,
        "arguments": arguments,
    })
}

/// The support policy: tickets may be read, refunds are denied with a reason; `read_when` puts a
/// condition on the read rule (`tools[0]`).
fn support_policy(read_when: Option<&str>) -> Value {
    let mut read = json!({"name": "read-tickets", "tools": ["tickets_*"], "effect": "Allow"});
    if let Some(when) = read_when {
        read["when"] = json!(when);
    }
    json!({
        "tools": [
            read,
            {"name": "no-refunds", "tools": ["refund_issue"], "effect": "Deny", "reason": REFUND_REASON},
        ],
    })
}

/// The first reason of `answer` names `policy` and `rule`, with `code`.
fn assert_reason(answer: &Value, policy: &str, rule: &str, code: &str) -> anyhow::Result<()> {
    let reason = &answer["reasons"][0];
    ensure!(
        reason["policy"] == policy && reason["rule"] == rule && reason["code"] == code,
        "expected the first reason to be {policy}#{rule} ({code}): {answer}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: OVERSEER_E2E_REQUIRED=1 cargo test -p e2e -- --ignored"]
async fn policies_compile_into_status_and_decisions() -> anyhow::Result<()> {
    let Some(f) = fixture("policies_compile_into_status_and_decisions", false).await? else {
        return Ok(());
    };
    let ns = f.ns();
    let applied = f.apply_policy("support", support_policy(None)).await?;
    let generation = applied.metadata.generation.context("no generation")?;
    let status = f.wait_ready("support", generation, "True").await?;
    let revision = status
        .policy_revision
        .clone()
        .ok_or_else(|| anyhow!("no policyRevision: {status:?}"))?;
    ensure!(
        revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit()),
        "policyRevision {revision:?} is not 12 hex digits"
    );
    assert_eq!(status.rule_count, Some(2));
    let ready = ready_condition(&status)?;
    assert_eq!(ready.reason, "Compiled");
    assert_eq!(
        ready.message,
        format!("compiled 2 rules; revision {revision} serves decisions")
    );

    let policy = format!("{ns}/support");
    let allow = f
        .decide_until(
            GATEWAY_KEY,
            &as_agent(ns, "tickets_search", json!({"query": "refund"})),
            "allow",
        )
        .await?;
    assert_reason(&allow, &policy, "read-tickets", "allow")?;
    let deny = f
        .decide(
            GATEWAY_KEY,
            &as_agent(ns, "refund_issue", json!({"amount": 5})),
        )
        .await?;
    assert_eq!(deny["decision"], "deny", "{deny}");
    assert_reason(&deny, &policy, "no-refunds", "deny")?;
    ensure!(
        deny["reasons"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(REFUND_REASON)),
        "the deny carries the rule's reason: {deny}"
    );
    // No rule covers it: default deny.
    let unknown = f
        .decide(GATEWAY_KEY, &as_agent(ns, "shell_exec", json!({})))
        .await?;
    assert_eq!(unknown["decision"], "deny", "{unknown}");
    assert_eq!(unknown["reasons"][0]["code"], "default_deny", "{unknown}");
    // Another namespace's agent is not governed by this policy.
    let elsewhere = f
        .decide(
            GATEWAY_KEY,
            &as_agent("default", "tickets_search", json!({"query": "refund"})),
        )
        .await?;
    assert_eq!(elsewhere["decision"], "deny", "{elsewhere}");

    f.assert_audited(&allow, "allow")?;
    let record = f.assert_audited(&deny, "deny")?;
    ensure!(
        record["reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("{policy}#no-refunds: "))),
        "the audit record names the policy and rule: {record}"
    );
    f.assert_audited(&unknown, "deny")?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: OVERSEER_E2E_REQUIRED=1 cargo test -p e2e -- --ignored"]
async fn an_invalid_policy_reports_the_compiler_error_and_the_last_good_revision_keeps_serving()
-> anyhow::Result<()> {
    let Some(f) = fixture(
        "an_invalid_policy_reports_the_compiler_error_and_the_last_good_revision_keeps_serving",
        false,
    )
    .await?
    else {
        return Ok(());
    };
    let ns = f.ns();
    let policy = format!("{ns}/support");
    let read = as_agent(ns, "tickets_search", json!({"query": "refund"}));
    let refund = as_agent(ns, "refund_issue", json!({"amount": 5}));

    let good = f.apply_policy("support", support_policy(None)).await?;
    let good_generation = good.metadata.generation.context("no generation")?;
    let good_revision = f
        .wait_ready("support", good_generation, "True")
        .await?
        .policy_revision
        .ok_or_else(|| anyhow!("no policyRevision"))?;
    f.decide_until(GATEWAY_KEY, &read, "allow").await?;

    // A broken update, then a second, valid policy. The controller's watch delivers them in this
    // order, so once the second one decides, the engine has seen the broken update too.
    let broken = f
        .apply_policy("support", support_policy(Some(BROKEN_WHEN)))
        .await?;
    let broken_generation = broken.metadata.generation.context("no generation")?;
    ensure!(
        broken_generation > good_generation,
        "the update is a new generation"
    );
    f.apply_policy(
        "sentinel",
        json!({"tools": [{"name": "ping", "tools": ["sentinel_ping"], "effect": "Allow"}]}),
    )
    .await?;

    let status = f.wait_ready("support", broken_generation, "False").await?;
    let ready = ready_condition(&status)?;
    assert_eq!(ready.reason, "InvalidPolicy");
    ensure!(
        ready
            .message
            .starts_with("spec.tools[0].when (line 1, column 17): unexpected end of input"),
        "the compiler's message and location: {}",
        ready.message
    );
    ensure!(
        ready.message.ends_with(&format!(
            "the last good revision {good_revision} keeps serving decisions until this is fixed"
        )),
        "names the revision that keeps serving: {}",
        ready.message
    );
    assert_eq!(
        status.policy_revision.as_deref(),
        Some(good_revision.as_str()),
        "the status reports the revision that serves"
    );
    assert_eq!(status.rule_count, Some(2));

    f.decide_until(
        GATEWAY_KEY,
        &as_agent(ns, "sentinel_ping", json!({})),
        "allow",
    )
    .await?;
    let allow = f.decide(GATEWAY_KEY, &read).await?;
    assert_eq!(
        allow["decision"], "allow",
        "the last good revision serves: {allow}"
    );
    assert_reason(&allow, &policy, "read-tickets", "allow")?;
    let deny = f.decide(GATEWAY_KEY, &refund).await?;
    assert_eq!(deny["decision"], "deny", "{deny}");
    assert_reason(&deny, &policy, "no-refunds", "deny")?;

    // Fixed, differently: Ready=True at a new revision, and decisions follow it.
    let fixed = f
        .apply_policy(
            "support",
            json!({"tools": [
                {"name": "read-tickets", "tools": ["tickets_*"], "effect": "Deny", "reason": "tickets are frozen"},
                {"name": "no-refunds", "tools": ["refund_issue"], "effect": "Deny", "reason": REFUND_REASON},
            ]}),
        )
        .await?;
    let fixed_generation = fixed.metadata.generation.context("no generation")?;
    let status = f.wait_ready("support", fixed_generation, "True").await?;
    ensure!(
        status.policy_revision.is_some()
            && status.policy_revision.as_deref() != Some(&good_revision),
        "a new revision serves: {status:?}"
    );
    let frozen = f.decide_until(GATEWAY_KEY, &read, "deny").await?;
    assert_reason(&frozen, &policy, "read-tickets", "deny")?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: OVERSEER_E2E_REQUIRED=1 cargo test -p e2e -- --ignored"]
async fn approval_flow_through_agent_approval_objects() -> anyhow::Result<()> {
    let Some(f) = fixture("approval_flow_through_agent_approval_objects", false).await? else {
        return Ok(());
    };
    let ns = f.ns();
    let policy = format!("{ns}/payments");
    // The reviewer is the test's own user, as the admission policy (when installed) requires;
    // `alice` is an approver too, but has only an API key of the decision service.
    let me = whoami(f.cluster.client()).await?;
    let applied = f
        .apply_policy(
            "payments",
            json!({
                "tools": [{"name": "refunds", "tools": ["refund_issue"], "effect": "RequireApproval",
                           "reason": "refunds need a human"}],
                "approval": {"users": [me, "alice"], "timeout": "10m"},
            }),
        )
        .await?;
    f.wait_ready(
        "payments",
        applied.metadata.generation.context("no generation")?,
        "True",
    )
    .await?;

    let refund = as_agent(ns, "refund_issue", json!({"amount": 5}));
    let first = f
        .decide_until(GATEWAY_KEY, &refund, "require_approval")
        .await?;
    assert_reason(&first, &policy, "refunds", "require_approval")?;
    f.assert_audited(&first, "require_approval")?;
    let id = first["approval"]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no approval id: {first}"))?
        .to_owned();

    // The approval is an AgentApproval object in the agent's namespace, Pending.
    let approvals: Api<AgentApproval> = Api::namespaced(f.cluster.client().clone(), ns);
    let pending = wait_for(
        &approvals,
        &id,
        approval_phase_is(ApprovalPhase::Pending),
        DEFAULT_TIMEOUT,
    )
    .await?;
    let spec = &pending.spec;
    assert_eq!(spec.tool, "refund_issue");
    assert_eq!(spec.principal.id, "support-bot");
    assert_eq!(spec.approver_users, vec![me.clone(), "alice".to_owned()]);
    assert_eq!(first["decisionId"], spec.decision_id.as_str());
    ensure!(
        spec.request_digest.len() == 64
            && spec
                .reasons
                .iter()
                .any(|r| r.contains("refunds need a human")),
        "bound to the request, with the rule's reason: {spec:?}"
    );
    ensure!(spec.review.is_none(), "not reviewed yet: {spec:?}");
    let labels = pending.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("agents.overseer.dev/approval-for")
            .map(String::as_str),
        Some("tool-call")
    );
    let again = f.decide(GATEWAY_KEY, &refund).await?;
    assert_eq!(again["decision"], "require_approval", "{again}");
    assert_eq!(
        again["approval"]["id"],
        id.as_str(),
        "still the same pending approval"
    );

    // In a cluster nobody reviews through the decision API, not even an approver the policy
    // names (`alice`, by API key): the reviewer's identity must come from the API server.
    let (status, body) = f
        .post(
            &format!("/v1/approvals/{id}/review"),
            Some(APPROVER_KEY),
            &json!({"verdict": "Approve"}),
        )
        .await?;
    assert_eq!(status, 403, "{body}");
    ensure!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("kubectl")),
        "says how to review instead: {body}"
    );

    // Approve as a human does: `kubectl patch agentapproval ID --type merge -p
    // '{"spec":{"review":{"decision":"Approved","reviewer":"<you>"}}}'`.
    let review = |decision: &str| json!({"spec": {"review": {"decision": decision, "reviewer": me, "comment": "e2e"}}});
    let patch = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    approvals
        .patch(&id, &patch, &Patch::Merge(&review("Approved")))
        .await
        .context("approving")?;
    let approved = wait_for(
        &approvals,
        &id,
        approval_phase_is(ApprovalPhase::Approved),
        DEFAULT_TIMEOUT,
    )
    .await?;
    assert_eq!(
        approved.status.and_then(|s| s.reviewed_by).as_deref(),
        Some(me.as_str())
    );

    // Bound to the exact request: other arguments need an approval of their own.
    let other = f
        .decide(
            GATEWAY_KEY,
            &as_agent(ns, "refund_issue", json!({"amount": 500})),
        )
        .await?;
    assert_eq!(other["decision"], "require_approval", "{other}");
    assert_ne!(other["approval"]["id"], id.as_str());

    // The approved request is allowed once, and the use is recorded on the object.
    let allowed = f.decide_until(GATEWAY_KEY, &refund, "allow").await?;
    assert_eq!(
        allowed["reasons"][0]["code"], "approval_granted",
        "{allowed}"
    );
    assert_eq!(allowed["reasons"][0]["rule"], id.as_str(), "{allowed}");
    f.assert_audited(&allowed, "allow")?;
    let consumed = wait_for(
        &approvals,
        &id,
        approval_phase_is(ApprovalPhase::Consumed),
        DEFAULT_TIMEOUT,
    )
    .await?;
    ensure!(
        consumed.status.and_then(|s| s.consumed_at).is_some(),
        "consumedAt is recorded"
    );

    // A second time it is not: a new approval is requested.
    let used = f.decide(GATEWAY_KEY, &refund).await?;
    assert_eq!(
        used["decision"], "require_approval",
        "used once only: {used}"
    );
    let next = used["approval"]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no approval id: {used}"))?;
    assert_ne!(next, id.as_str());
    wait_for(
        &approvals,
        next,
        approval_phase_is(ApprovalPhase::Pending),
        DEFAULT_TIMEOUT,
    )
    .await?;

    // A review is final: the CRD refuses to change it.
    match approvals
        .patch(&id, &patch, &Patch::Merge(&review("Denied")))
        .await
    {
        Err(kube::Error::Api(status)) => ensure!(
            status.message.contains("a review is final"),
            "rejected for its finality: {}",
            status.message
        ),
        Ok(_) => bail!("a final review was changed"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: OVERSEER_E2E_REQUIRED=1 cargo test -p e2e -- --ignored"]
async fn a_revoked_ephemeral_identity_is_denied_at_once() -> anyhow::Result<()> {
    let Some(f) = fixture("a_revoked_ephemeral_identity_is_denied_at_once", true).await? else {
        return Ok(());
    };
    let ns = f.ns().to_owned();
    let client = f.cluster.client().clone();

    // A class for this namespace whose tokens may be minted for the decision service.
    let class = ClassGuard(ns.clone());
    let classes: Api<EphemeralIdentityClass> = Api::all(client.clone());
    let body = json!({
        "apiVersion": "agents.overseer.dev/v1alpha1",
        "kind": "EphemeralIdentityClass",
        "metadata": {"name": class.0},
        "spec": {
            "maxTtl": "1h",
            "namespaces": [ns],
            "allowedRules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
            "allowedAudiences": [AUDIENCE],
            "recordRetention": "1h",
        },
    });
    classes
        .patch(&class.0, &apply_params(false), &Patch::Apply(&body))
        .await
        .context("applying the class")?;

    let identities: Api<EphemeralIdentity> = Api::namespaced(client.clone(), &ns);
    let identity_body = |revoked: bool| {
        json!({
            "apiVersion": "agents.overseer.dev/v1alpha1",
            "kind": "EphemeralIdentity",
            "metadata": {"name": "task-42"},
            "spec": {
                "className": class.0,
                "agent": "coder",
                "ttl": "15m",
                "audiences": [AUDIENCE],
                "grants": {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]},
                "revoked": revoked,
            },
        })
    };
    identities
        .patch(
            "task-42",
            &apply_params(false),
            &Patch::Apply(&identity_body(false)),
        )
        .await
        .context("issuing the identity")?;
    let identity = wait_for(
        &identities,
        "task-42",
        phase_is(IdentityPhase::Active),
        DEFAULT_TIMEOUT,
    )
    .await?;
    let status = identity.status.ok_or_else(|| anyhow!("no status"))?;
    let sa = status
        .service_account_name
        .ok_or_else(|| anyhow!("no serviceAccountName"))?;
    let secret = status.secret_name.ok_or_else(|| anyhow!("no secretName"))?;
    let token = Api::<Secret>::namespaced(client.clone(), &ns)
        .get(&secret)
        .await?
        .data
        .and_then(|d| d.get("token").cloned())
        .ok_or_else(|| anyhow!("the Secret holds no token"))?;
    let token = String::from_utf8(token.0)?;
    let username = format!("system:serviceaccount:{ns}:{sa}");

    // A policy allowing the identity's ServiceAccount to read pods.
    let applied = f
        .apply_policy(
            "coder",
            json!({
                "subjects": {"serviceAccounts": [{"name": sa}]},
                "tools": [{"name": "read-pods", "tools": ["pods_*"], "effect": "Allow"}],
            }),
        )
        .await?;
    f.wait_ready(
        "coder",
        applied.metadata.generation.context("no generation")?,
        "True",
    )
    .await?;

    // Asked by a gateway naming the identity, and by the agent itself with the identity's token.
    let by_gateway = json!({
        "principal": {"id": username, "namespace": ns, "serviceAccount": sa,
                      "ephemeralIdentity": "task-42"},
        "tool": "pods_list",
        "arguments": {},
    });
    let by_itself = json!({"principal": {"id": username}, "tool": "pods_list", "arguments": {}});
    let allow = f.decide_until(GATEWAY_KEY, &by_gateway, "allow").await?;
    assert_reason(&allow, &format!("{ns}/coder"), "read-pods", "allow")?;
    let allow = f.decide(&token, &by_itself).await?;
    assert_eq!(
        allow["decision"], "allow",
        "the identity's own token: {allow}"
    );

    // Revoke it, and wait until the identity controller has ended it.
    identities
        .patch(
            "task-42",
            &apply_params(false),
            &Patch::Apply(&identity_body(true)),
        )
        .await
        .context("revoking the identity")?;
    wait_for(
        &identities,
        "task-42",
        phase_is(IdentityPhase::Revoked),
        DEFAULT_TIMEOUT,
    )
    .await?;

    let message = format!("EphemeralIdentity {ns}/task-42 is revoked");
    let deny = f.decide(GATEWAY_KEY, &by_gateway).await?;
    assert_eq!(deny["decision"], "deny", "{deny}");
    assert_eq!(deny["reasons"][0]["rule"], "identity-revoked", "{deny}");
    assert_eq!(deny["reasons"][0]["message"], message.as_str(), "{deny}");
    let record = f.assert_audited(&deny, "deny")?;
    assert_eq!(record["reasons"][0], format!("identity-revoked: {message}"));
    // The token's review is still cached, so the caller authenticates: the identity gate, not
    // the token's invalidation, denies.
    let deny = f.decide(&token, &by_itself).await?;
    assert_eq!(deny["decision"], "deny", "{deny}");
    assert_eq!(deny["reasons"][0]["rule"], "identity-revoked", "{deny}");
    assert_eq!(deny["reasons"][0]["message"], message.as_str(), "{deny}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: OVERSEER_E2E_REQUIRED=1 cargo test -p e2e -- --ignored"]
async fn a_service_account_token_decides_only_for_itself() -> anyhow::Result<()> {
    let Some(f) = fixture("a_service_account_token_decides_only_for_itself", false).await? else {
        return Ok(());
    };
    let ns = f.ns();
    let accounts: Api<ServiceAccount> = Api::namespaced(f.cluster.client().clone(), ns);
    for name in ["reporter", "other"] {
        let body =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        accounts
            .patch(name, &apply_params(false), &Patch::Apply(&body))
            .await
            .with_context(|| format!("creating ServiceAccount {name}"))?;
    }
    let token_for = |audience: &'static str| {
        let accounts = accounts.clone();
        async move {
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![audience.to_owned()],
                    expiration_seconds: Some(600),
                    bound_object_ref: None,
                },
                ..TokenRequest::default()
            };
            let answer = accounts
                .create_token_request("reporter", &PostParams::default(), &request)
                .await
                .context("TokenRequest")?;
            answer
                .status
                .map(|s| s.token)
                .ok_or_else(|| anyhow!("the TokenRequest returned no token"))
        }
    };
    let token = token_for(AUDIENCE).await?;
    let wrong_audience = token_for("someone-else").await?;

    let applied = f
        .apply_policy(
            "reporting",
            json!({
                "subjects": {"serviceAccounts": [{"name": "reporter"}]},
                "tools": [{"name": "read-reports", "tools": ["read_*"], "effect": "Allow"}],
            }),
        )
        .await?;
    f.wait_ready(
        "reporting",
        applied.metadata.generation.context("no generation")?,
        "True",
    )
    .await?;

    // For itself: the namespace and ServiceAccount come from the token, so the policy governs it.
    let me = format!("system:serviceaccount:{ns}:reporter");
    let itself = json!({"principal": {"id": me}, "tool": "read_report", "arguments": {}});
    let allow = f.decide_until(&token, &itself, "allow").await?;
    assert_reason(&allow, &format!("{ns}/reporting"), "read-reports", "allow")?;
    f.assert_audited(&allow, "allow")?;
    let deny = f
        .decide(
            &token,
            &json!({"principal": {"id": me}, "tool": "delete_report", "arguments": {}}),
        )
        .await?;
    assert_eq!(deny["decision"], "deny", "{deny}");

    // For anyone else, or in another namespace, or with a claim it cannot prove: 403, audited.
    for (request, why) in [
        (
            json!({"principal": {"id": format!("system:serviceaccount:{ns}:other")}, "tool": "read_report"}),
            "another ServiceAccount",
        ),
        (
            json!({"principal": {"id": me, "namespace": "default"}, "tool": "read_report"}),
            "another namespace",
        ),
        (
            json!({"principal": {"id": me, "serviceAccount": "other"}, "tool": "read_report"}),
            "another ServiceAccount name",
        ),
        (
            json!({"principal": {"id": me, "labels": {"tier": "trusted"}}, "tool": "read_report"}),
            "labels it cannot prove",
        ),
    ] {
        let (status, body) = f.post("/v1/decisions", Some(&token), &request).await?;
        assert_eq!(status, 403, "{why}: {body}");
        assert_eq!(body["code"], "forbidden", "{why}: {body}");
        ensure!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("may only ask for itself")),
            "{why}: {body}"
        );
        f.assert_audited(&body, "deny")?;
    }

    // A token minted for another audience, and no token at all: 401.
    let (status, body) = f
        .post("/v1/decisions", Some(&wrong_audience), &itself)
        .await?;
    assert_eq!(status, 401, "another audience: {body}");
    assert_eq!(body["code"], "unauthenticated", "{body}");
    let (status, body) = f
        .post("/v1/decisions", Some("not-a-token-at-all"), &itself)
        .await?;
    assert_eq!(status, 401, "garbage: {body}");
    let (status, _) = f.post("/v1/decisions", None, &itself).await?;
    assert_eq!(status, 401, "no credential");

    // Tokens never reach the audit log.
    let audit = std::fs::read_to_string(f.scratch.0.join("audit.jsonl"))?;
    ensure!(
        !audit.contains(&token) && !audit.contains(&wrong_audience),
        "a token was written to the audit log"
    );
    Ok(())
}
