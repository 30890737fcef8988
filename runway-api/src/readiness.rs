//! Reading live objects' status.

use serde_json::Value;

use crate::RevisionReadiness;

/// The live object of `kind` named `name`.
pub(crate) fn find<'a>(live: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    live.iter().find(|o| {
        o.get("kind").and_then(Value::as_str) == Some(kind)
            && o.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
    })
}

/// An integer field.
pub(crate) fn int(obj: &Value, pointer: &str) -> Option<i64> {
    obj.pointer(pointer).and_then(Value::as_i64)
}

/// An integer field as `i32` (absent or out of range: 0).
pub(crate) fn int32(obj: &Value, pointer: &str) -> i32 {
    int(obj, pointer)
        .and_then(|v| i32::try_from(v).ok())
        .unwrap_or(0)
}

/// A condition of `status.conditions`: `(status, reason, message)`.
pub(crate) fn condition<'a>(obj: &'a Value, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find_map(|c| {
            (c.get("type").and_then(Value::as_str) == Some(type_)).then(|| {
                (
                    c.get("status").and_then(Value::as_str).unwrap_or("Unknown"),
                    c.get("reason").and_then(Value::as_str).unwrap_or(""),
                    c.get("message").and_then(Value::as_str).unwrap_or(""),
                )
            })
        })
}

/// Whether the controller of `obj` has seen its latest spec: `status.observedGeneration` ≥
/// `metadata.generation` where the kind reports one (true when either is absent: KAITO's kinds,
/// for one, do not).
pub(crate) fn generation_observed(obj: &Value) -> bool {
    match (
        int(obj, "/metadata/generation"),
        int(obj, "/status/observedGeneration"),
    ) {
        (Some(generation), Some(observed)) => observed >= generation,
        _ => true,
    }
}

/// Whether condition `type_` of `obj` is `True` and, where it carries an `observedGeneration`,
/// describes the latest spec.
pub(crate) fn condition_true_and_current(obj: &Value, type_: &str) -> bool {
    let Some(cond) = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
        })
    else {
        return false;
    };
    let generation = int(obj, "/metadata/generation");
    let observed = cond.get("observedGeneration").and_then(Value::as_i64);
    let current = match (generation, observed) {
        (Some(generation), Some(observed)) => observed >= generation,
        _ => true,
    };
    cond.get("status").and_then(Value::as_str) == Some("True") && current
}

/// A workload's judgement, to be combined into a revision's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    pub ready: bool,
    pub failed: bool,
    pub desired: i32,
    pub ready_replicas: i32,
    pub message: String,
}

impl Part {
    pub(crate) fn missing(kind: &str, name: &str, desired: i32) -> Self {
        Self {
            ready: false,
            failed: false,
            desired,
            ready_replicas: 0,
            message: format!("waiting for {kind} {name} to be created"),
        }
    }
}

/// A Deployment's readiness: its latest generation observed, every replica updated and
/// available (`status.availableReplicas`), no old replicas left; a `Progressing=False` with
/// reason `ProgressDeadlineExceeded` is a failure.
pub(crate) fn deployment(live: &[Value], name: &str, desired: i32) -> Part {
    let Some(obj) = find(live, "Deployment", name) else {
        return Part::missing("Deployment", name, desired);
    };
    let desired = int(obj, "/spec/replicas")
        .and_then(|v| i32::try_from(v).ok())
        .unwrap_or(desired);
    let available = int32(obj, "/status/availableReplicas");
    let updated = int32(obj, "/status/updatedReplicas");
    let total = int32(obj, "/status/replicas");
    if let Some(("False", "ProgressDeadlineExceeded", msg)) = condition(obj, "Progressing") {
        return Part {
            ready: false,
            failed: true,
            desired,
            ready_replicas: available,
            message: format!("Deployment {name} exceeded its progress deadline: {msg}"),
        };
    }
    let (ready, message) = if !generation_observed(obj) {
        (
            false,
            format!("Deployment {name}: waiting for the controller to observe the latest spec"),
        )
    } else if desired == 0 {
        (false, format!("Deployment {name} is scaled to zero"))
    } else if updated < desired {
        (
            false,
            format!("Deployment {name}: {updated} of {desired} replicas updated"),
        )
    } else if total > updated {
        (
            false,
            format!(
                "Deployment {name}: {} old replicas still terminating",
                total - updated
            ),
        )
    } else if available < desired {
        (
            false,
            format!("Deployment {name}: {available} of {desired} replicas available"),
        )
    } else {
        (
            true,
            format!("Deployment {name}: {available}/{desired} available"),
        )
    };
    Part {
        ready,
        failed: false,
        desired,
        ready_replicas: available,
        message,
    }
}

/// Combines the parts of a revision: ready when every part is; the replica counts are those of
/// `serving` (the part whose pods serve the endpoint).
pub(crate) fn combine(parts: Vec<Part>, serving: usize) -> RevisionReadiness {
    let ready = !parts.is_empty() && parts.iter().all(|p| p.ready);
    let failed = parts.iter().any(|p| p.failed);
    let (replicas, ready_replicas) = parts
        .get(serving)
        .map_or((0, 0), |p| (p.desired, p.ready_replicas));
    let message = if ready {
        parts
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        parts
            .iter()
            .filter(|p| !p.ready)
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    RevisionReadiness {
        ready,
        failed,
        replicas,
        ready_replicas,
        message,
    }
}
