//! Health of live objects: the kstatus rules (`sigs.k8s.io/cli-utils/pkg/kstatus`) for built-in
//! workloads and `Ready`-conditioned custom resources, plus a stage gate's CEL health expressions.
//!
//! Everything here is pure: the caller reads the live objects from a member cluster and passes them
//! in as JSON.
//!
//! Rules, in order, for every object (kstatus' generic checks):
//! 1. `metadata.deletionTimestamp` set → `InProgress` (being deleted).
//! 2. `status.observedGeneration` present and different from `metadata.generation` → `InProgress`.
//! 3. A `Stalled` condition `True` → `Failed`; a `Reconciling` condition `True` → `InProgress`.
//!
//! Then per kind: `apps/v1` `Deployment`, `StatefulSet`, `DaemonSet` and `batch/v1` `Job` follow
//! kstatus' replica and condition rules; any other object with a `Ready` condition is `Current` when
//! it is `True` (and the condition's own `observedGeneration`, if any, is current), `InProgress`
//! otherwise; objects without a `Ready` condition (`ConfigMap`, `Service`, `Secret`, ...) are
//! `Current` as soon as they exist.

use std::{collections::HashMap, fmt, sync::Arc};

use kube_cel::{
    KubeCelExt,
    cel::{self, Context, Program},
};
use overseer_crds::fleet::{HealthExpression, StageGate};
use serde_json::Value;

/// kstatus' status of an object (or of a set of objects).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HealthStatus {
    /// Fully reconciled and healthy.
    Current,
    /// Still converging.
    InProgress,
    /// The status cannot be read (malformed object or status).
    Unknown,
    /// Failed and will not recover by itself.
    Failed,
}

impl HealthStatus {
    /// The name used in `status.stages[].clusters[].health`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Current => "Healthy",
            HealthStatus::InProgress => "Progressing",
            HealthStatus::Unknown => "Unknown",
            HealthStatus::Failed => "Unhealthy",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Current => "Current",
            HealthStatus::InProgress => "InProgress",
            HealthStatus::Unknown => "Unknown",
            HealthStatus::Failed => "Failed",
        })
    }
}

/// A health verdict with a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The verdict.
    pub status: HealthStatus,
    /// Why, e.g. `Updated: 1/3`.
    pub message: String,
}

impl Health {
    /// A `Current` verdict.
    pub fn current(message: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Current,
            message: message.into(),
        }
    }
    /// An `InProgress` verdict.
    pub fn in_progress(message: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::InProgress,
            message: message.into(),
        }
    }
    /// A `Failed` verdict.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Failed,
            message: message.into(),
        }
    }
    /// An `Unknown` verdict.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Unknown,
            message: message.into(),
        }
    }
    /// Whether the verdict is `Current`.
    pub fn is_current(&self) -> bool {
        self.status == HealthStatus::Current
    }
}

/// Errors from compiling a gate's CEL health expressions.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// A CEL expression does not parse.
    #[error("health expression {index} ({kind}) `{field}` does not compile: {message}")]
    Compile {
        /// Position in `gate.healthExpressions`.
        index: usize,
        /// The kind the expression is for.
        kind: String,
        /// `healthy` or `failed`.
        field: &'static str,
        /// The parser's message.
        message: String,
    },
}

impl HealthError {
    /// A short label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            HealthError::Compile { .. } => "InvalidHealthExpression",
        }
    }
}

/// The kstatus health of one live object.
pub fn object_health(obj: &Value) -> Health {
    let Some(map) = obj.as_object() else {
        return Health::unknown("object is not a JSON object");
    };
    let Some(kind) = map.get("kind").and_then(Value::as_str) else {
        return Health::unknown("object has no kind");
    };
    let group = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(|v| v.rsplit_once('/').map_or("", |(g, _)| g))
        .unwrap_or("");
    match generic(obj) {
        Ok(Some(h)) => return h,
        Ok(None) => {}
        Err(e) => return Health::unknown(e),
    }
    let result = match (group, kind) {
        ("apps", "Deployment") => deployment(obj),
        ("apps", "StatefulSet") => statefulset(obj),
        ("apps", "DaemonSet") => daemonset(obj),
        ("batch", "Job") => job(obj),
        _ => ready_condition(obj),
    };
    result.unwrap_or_else(Health::unknown)
}

type Rule = Result<Health, String>;

fn path<'a>(obj: &'a Value, p: &[&str]) -> Option<&'a Value> {
    p.iter().try_fold(obj, |v, k| v.get(k))
}

/// An integer field, or `default` when absent; an error when present with another type.
fn int(obj: &Value, p: &[&str], default: i64) -> Result<i64, String> {
    match path(obj, p) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| format!(".{} is not an integer", p.join("."))),
    }
}

fn string<'a>(obj: &'a Value, p: &[&str]) -> Option<&'a str> {
    path(obj, p).and_then(Value::as_str)
}

/// A condition as kstatus reads it.
struct Cond<'a> {
    type_: &'a str,
    status: &'a str,
    reason: &'a str,
    message: &'a str,
    observed_generation: Option<i64>,
}

fn conditions(obj: &Value) -> Result<Vec<Cond<'_>>, String> {
    match path(obj, &["status", "conditions"]) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .filter_map(|c| {
                Some(Cond {
                    type_: c.get("type")?.as_str()?,
                    status: c.get("status").and_then(Value::as_str).unwrap_or("Unknown"),
                    reason: c.get("reason").and_then(Value::as_str).unwrap_or(""),
                    message: c.get("message").and_then(Value::as_str).unwrap_or(""),
                    observed_generation: c.get("observedGeneration").and_then(Value::as_i64),
                })
            })
            .collect()),
        Some(_) => Err(".status.conditions is not a list".into()),
    }
}

fn cond_text(c: &Cond<'_>) -> String {
    match (c.reason.is_empty(), c.message.is_empty()) {
        (true, true) => format!("{} is {}", c.type_, c.status),
        (false, true) => format!("{} is {}: {}", c.type_, c.status, c.reason),
        (_, false) => format!("{} is {}: {}", c.type_, c.status, c.message),
    }
}

/// kstatus' checks common to every kind; `None` when they say nothing.
fn generic(obj: &Value) -> Result<Option<Health>, String> {
    if path(obj, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null()) {
        return Ok(Some(Health::in_progress("resource is being deleted")));
    }
    let generation = int(obj, &["metadata", "generation"], 0)?;
    if let Some(observed) = path(obj, &["status", "observedGeneration"]).filter(|v| !v.is_null()) {
        let observed = observed
            .as_i64()
            .ok_or_else(|| ".status.observedGeneration is not an integer".to_string())?;
        if observed != generation {
            return Ok(Some(Health::in_progress(format!(
                "generation is {generation}, but latest observed generation is {observed}"
            ))));
        }
    }
    let conds = conditions(obj)?;
    if let Some(c) = conds
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")
    {
        return Ok(Some(Health::failed(cond_text(c))));
    }
    if let Some(c) = conds
        .iter()
        .find(|c| c.type_ == "Reconciling" && c.status == "True")
    {
        return Ok(Some(Health::in_progress(cond_text(c))));
    }
    Ok(None)
}

fn deployment(obj: &Value) -> Rule {
    // Without progressDeadlineSeconds the controller never sets `Progressing`.
    let deadline = int(
        obj,
        &["spec", "progressDeadlineSeconds"],
        i64::from(i32::MAX),
    )?;
    let mut progressing = deadline == i64::from(i32::MAX);
    let mut available = false;
    for c in conditions(obj)? {
        match c.type_ {
            "Progressing" => {
                if c.reason == "ProgressDeadlineExceeded" {
                    return Ok(Health::failed("Progress deadline exceeded"));
                }
                if c.status == "True" && c.reason == "NewReplicaSetAvailable" {
                    progressing = true;
                }
            }
            "Available" if c.status == "True" => available = true,
            _ => {}
        }
    }
    let spec = int(obj, &["spec", "replicas"], 1)?;
    let replicas = int(obj, &["status", "replicas"], 0)?;
    let updated = int(obj, &["status", "updatedReplicas"], 0)?;
    let ready = int(obj, &["status", "readyReplicas"], 0)?;
    let avail = int(obj, &["status", "availableReplicas"], 0)?;
    Ok(if spec > replicas {
        Health::in_progress(format!("Replicas: {replicas}/{spec}"))
    } else if spec > updated {
        Health::in_progress(format!("Updated: {updated}/{spec}"))
    } else if replicas > spec {
        Health::in_progress(format!("Pending termination: {}", replicas - spec))
    } else if updated > avail {
        Health::in_progress(format!("Available: {avail}/{updated}"))
    } else if spec > ready {
        Health::in_progress(format!("Ready: {ready}/{spec}"))
    } else if !progressing {
        Health::in_progress("ReplicaSet not Available")
    } else if !available {
        Health::in_progress("Deployment not Available")
    } else {
        Health::current(format!("Deployment is available. Replicas: {replicas}"))
    })
}

fn statefulset(obj: &Value) -> Rule {
    if string(obj, &["spec", "updateStrategy", "type"]) == Some("OnDelete") {
        return Ok(Health::current(
            "StatefulSet is using the OnDelete update strategy",
        ));
    }
    let spec = int(obj, &["spec", "replicas"], 1)?;
    let replicas = int(obj, &["status", "replicas"], 0)?;
    let ready = int(obj, &["status", "readyReplicas"], 0)?;
    let current = int(obj, &["status", "currentReplicas"], 0)?;
    let updated = int(obj, &["status", "updatedReplicas"], 0)?;
    let partition = int(
        obj,
        &["spec", "updateStrategy", "rollingUpdate", "partition"],
        -1,
    )?;
    if spec > replicas {
        return Ok(Health::in_progress(format!("Replicas: {replicas}/{spec}")));
    }
    if spec > ready {
        return Ok(Health::in_progress(format!("Ready: {ready}/{spec}")));
    }
    if replicas > spec {
        return Ok(Health::in_progress(format!(
            "Pending termination: {}",
            replicas - spec
        )));
    }
    if partition != -1 {
        let want = spec - partition;
        if updated < want {
            return Ok(Health::in_progress(format!("Updated: {updated}/{want}")));
        }
        return Ok(Health::current(format!(
            "Partitioned roll out complete. Updated: {updated}"
        )));
    }
    if spec > current {
        return Ok(Health::in_progress(format!("Current: {current}/{spec}")));
    }
    let current_rev = string(obj, &["status", "currentRevision"]).unwrap_or("");
    let update_rev = string(obj, &["status", "updateRevision"]).unwrap_or("");
    if current_rev != update_rev {
        return Ok(Health::in_progress(format!(
            "Waiting for updated revision {update_rev} to be current"
        )));
    }
    Ok(Health::current(format!(
        "All replicas scheduled as expected. Replicas: {spec}"
    )))
}

fn daemonset(obj: &Value) -> Rule {
    let desired = int(obj, &["status", "desiredNumberScheduled"], -1)?;
    if desired == -1 {
        return Ok(Health::in_progress(
            "Missing .status.desiredNumberScheduled",
        ));
    }
    let current = int(obj, &["status", "currentNumberScheduled"], 0)?;
    let updated = int(obj, &["status", "updatedNumberScheduled"], 0)?;
    let available = int(obj, &["status", "numberAvailable"], 0)?;
    let ready = int(obj, &["status", "numberReady"], 0)?;
    Ok(if desired > current {
        Health::in_progress(format!("Current: {current}/{desired}"))
    } else if desired > updated {
        Health::in_progress(format!("Updated: {updated}/{desired}"))
    } else if desired > available {
        Health::in_progress(format!("Available: {available}/{desired}"))
    } else if desired > ready {
        Health::in_progress(format!("Ready: {ready}/{desired}"))
    } else {
        Health::current(format!(
            "All replicas scheduled as expected. Replicas: {desired}"
        ))
    })
}

fn job(obj: &Value) -> Rule {
    let parallelism = int(obj, &["spec", "parallelism"], 1)?;
    let completions = int(obj, &["spec", "completions"], parallelism)?;
    let succeeded = int(obj, &["status", "succeeded"], 0)?;
    let active = int(obj, &["status", "active"], 0)?;
    let failed = int(obj, &["status", "failed"], 0)?;
    for c in conditions(obj)? {
        match (c.type_, c.status) {
            ("Complete", "True") => {
                return Ok(Health::current(format!(
                    "Job Completed. succeeded: {succeeded}/{completions}"
                )));
            }
            ("Failed", "True") => {
                return Ok(Health::failed(format!(
                    "Job Failed. failed: {failed}/{completions}"
                )));
            }
            _ => {}
        }
    }
    if string(obj, &["status", "startTime"]).is_none_or(str::is_empty) {
        return Ok(Health::in_progress("Job not started"));
    }
    Ok(Health::in_progress(format!(
        "Job in progress. success: {succeeded}, active: {active}, failed: {failed}"
    )))
}

fn ready_condition(obj: &Value) -> Rule {
    let conds = conditions(obj)?;
    let Some(ready) = conds.iter().find(|c| c.type_ == "Ready") else {
        return Ok(Health::current("Resource is current"));
    };
    let generation = int(obj, &["metadata", "generation"], 0)?;
    if let Some(observed) = ready.observed_generation
        && observed != generation
    {
        return Ok(Health::in_progress(format!(
            "Ready condition describes generation {observed}, not {generation}"
        )));
    }
    Ok(if ready.status == "True" {
        Health::current(cond_text(ready))
    } else {
        Health::in_progress(cond_text(ready))
    })
}

/// `Kind/namespace/name` (or `Kind/name`) of an object, for messages.
pub fn object_ref(obj: &Value) -> String {
    let kind = string(obj, &["kind"]).unwrap_or("?");
    let name = string(obj, &["metadata", "name"]).unwrap_or("?");
    match string(obj, &["metadata", "namespace"]) {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// Converts JSON into a CEL value. Integers become `int` when they fit, `uint` otherwise. Field
/// names are not escaped: read keys with dots or dashes by index, e.g.
/// `self.metadata.labels['app.kubernetes.io/name']` (as Flux' `healthCheckExprs` do).
pub fn json_to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(map) => {
            let map: HashMap<String, cel::Value> = map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_cel(v)))
                .collect();
            cel::Value::from(map)
        }
    }
}

/// One compiled [`HealthExpression`].
struct CompiledExpression {
    api_version: String,
    kind: String,
    name: Option<String>,
    healthy_src: String,
    healthy: Program,
    failed: Option<(String, Program)>,
}

impl CompiledExpression {
    fn matches(&self, obj: &Value) -> bool {
        string(obj, &["apiVersion"]) == Some(self.api_version.as_str())
            && string(obj, &["kind"]) == Some(self.kind.as_str())
            && self
                .name
                .as_deref()
                .is_none_or(|n| string(obj, &["metadata", "name"]) == Some(n))
    }
}

/// A stage gate's health judgment, compiled once: kstatus rules (unless `requireHealthy: false`)
/// and the gate's CEL health expressions, each evaluated with `self` bound to the live object and
/// the Kubernetes CEL extension functions available.
pub struct GateEvaluator {
    require_healthy: bool,
    expressions: Vec<CompiledExpression>,
    context: Context<'static>,
}

impl fmt::Debug for GateEvaluator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateEvaluator")
            .field("require_healthy", &self.require_healthy)
            .field(
                "expressions",
                &self
                    .expressions
                    .iter()
                    .map(|e| e.healthy_src.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl GateEvaluator {
    /// Compiles the gate's expressions; the first that does not parse is reported.
    pub fn new(gate: &StageGate) -> Result<Self, HealthError> {
        let expressions = gate
            .health_expressions
            .iter()
            .enumerate()
            .map(|(index, e)| compile(index, e))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            require_healthy: gate.require_healthy.unwrap_or(true),
            expressions,
            context: Context::default().with_all(),
        })
    }

    /// Health of one live object: the worst of its kstatus health (when the gate requires it)
    /// and every expression that matches it. A `failed` expression that holds makes it `Failed`;
    /// a `healthy` expression that does not hold makes it `InProgress`; an expression that
    /// cannot be evaluated (a missing field, a non-boolean result) makes it `InProgress` for
    /// `healthy` and is ignored for `failed`.
    pub fn object_health(&self, obj: &Value) -> Health {
        let mut worst = if self.require_healthy {
            object_health(obj)
        } else {
            Health::current("health not required")
        };
        let mut cel_self: Option<cel::Value> = None;
        for expr in self.expressions.iter().filter(|e| e.matches(obj)) {
            let this = cel_self.get_or_insert_with(|| json_to_cel(obj)).clone();
            let mut ctx = self.context.new_inner_scope();
            ctx.add_variable_from_value("self", this);
            let verdict = if let Some((src, program)) = &expr.failed
                && matches!(program.execute(&ctx), Ok(cel::Value::Bool(true)))
            {
                Health::failed(format!("failed expression holds: {src}"))
            } else {
                match expr.healthy.execute(&ctx) {
                    Ok(cel::Value::Bool(true)) => Health::current("healthy expression holds"),
                    Ok(cel::Value::Bool(false)) => Health::in_progress(format!(
                        "waiting for healthy expression: {}",
                        expr.healthy_src
                    )),
                    Ok(other) => Health::in_progress(format!(
                        "healthy expression `{}` returned {:?}, not a bool",
                        expr.healthy_src,
                        other.type_of()
                    )),
                    Err(e) => Health::in_progress(format!(
                        "healthy expression `{}` cannot be evaluated yet: {e}",
                        expr.healthy_src
                    )),
                }
            };
            if severity(verdict.status) > severity(worst.status) {
                worst = verdict;
            }
        }
        worst
    }

    /// Health of a cluster's applied objects: the worst object's verdict, its message prefixed
    /// with the object (`Deployment/pay/api: Updated: 1/3`). No objects is `Current`.
    pub fn cluster_health<'a>(&self, objects: impl IntoIterator<Item = &'a Value>) -> Health {
        let mut worst: Option<(Health, &Value)> = None;
        for obj in objects {
            let h = self.object_health(obj);
            if worst
                .as_ref()
                .is_none_or(|(w, _)| severity(h.status) > severity(w.status))
            {
                worst = Some((h, obj));
            }
        }
        match worst {
            None => Health::current("no objects"),
            Some((h, _)) if h.is_current() => Health::current("all objects are current"),
            Some((h, obj)) => Health {
                status: h.status,
                message: format!("{}: {}", object_ref(obj), h.message),
            },
        }
    }
}

/// Ordering used to combine verdicts: Failed > Unknown > InProgress > Current.
fn severity(s: HealthStatus) -> u8 {
    match s {
        HealthStatus::Current => 0,
        HealthStatus::InProgress => 1,
        HealthStatus::Unknown => 2,
        HealthStatus::Failed => 3,
    }
}

fn compile(index: usize, e: &HealthExpression) -> Result<CompiledExpression, HealthError> {
    let err = |field: &'static str, msg: String| HealthError::Compile {
        index,
        kind: e.kind.clone(),
        field,
        message: msg,
    };
    let healthy = Program::compile(&e.healthy).map_err(|m| err("healthy", m.to_string()))?;
    let failed = match &e.failed {
        Some(src) => Some((
            src.clone(),
            Program::compile(src).map_err(|m| err("failed", m.to_string()))?,
        )),
        None => None,
    };
    Ok(CompiledExpression {
        api_version: e.api_version.clone(),
        kind: e.kind.clone(),
        name: e.name.clone(),
        healthy_src: e.healthy.clone(),
        healthy,
        failed,
    })
}
