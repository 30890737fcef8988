//! The check of one `MCPServer`, and the pure status it computes.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{Api, Resource, ResourceExt as _, runtime::controller::Action};
use overseer_crds::{
    agents::{MCPServer, MCPServerStatus},
    common::{CONDITION_READY, find_condition},
};

use crate::{
    controller::{
        Context, Error, Result,
        apply::{FieldManager, apply_status_if_changed},
        conditions::{ConditionStatus, DesiredCondition, Transition, set_condition},
        instrumented,
    },
    gateway::{
        mcpservers::{secret_refs, secret_value, upstream_of},
        routes::{REASON_ACCEPTED, Unavailable},
    },
};

/// The controller's name (metric label, readiness check).
pub const CONTROLLER: &str = "mcpserver";
/// Field manager of the status.
pub const STATUS_MANAGER: FieldManager = FieldManager::new("overseer-mcpserver-status");
/// How soon an object that is not ready is checked again (a Secret created since is noticed).
pub const NOT_READY_RECHECK: Duration = Duration::from_secs(30);
/// How soon a ready object is checked again (a Secret deleted since is noticed).
pub const READY_RECHECK: Duration = Duration::from_secs(300);
/// The `action` of the Events this controller publishes.
const ACTION: &str = "Validate";

/// Reconcile one object: the entry point given to `kube::runtime::Controller::run`.
pub async fn reconcile(server: Arc<MCPServer>, ctx: Arc<Context>) -> Result<Action> {
    let regarding = server.object_ref(&());
    instrumented(
        &ctx,
        CONTROLLER,
        &regarding,
        check_at(&server, &ctx, Timestamp::now()),
    )
    .await
}

/// Check `server` and write its status, as of `now`.
pub async fn check_at(server: &MCPServer, ctx: &Context, now: Timestamp) -> Result<Action> {
    let namespace = server
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = server
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    // Read the Secrets it references (credential, CA, client certificate; each once) and keep
    // only the verdict: the values and the rest of the Secrets are dropped at the end of this
    // block.
    let verdict = {
        let api = Api::<Secret>::namespaced(ctx.client.clone(), &namespace);
        let mut secrets: BTreeMap<String, Option<Secret>> = BTreeMap::new();
        for reference in secret_refs(&server.spec) {
            if let std::collections::btree_map::Entry::Vacant(entry) =
                secrets.entry(reference.name.clone())
            {
                entry.insert(api.get_opt(&reference.name).await?);
            }
        }
        upstream_of(&namespace, &name, &server.spec, |reference| {
            secret_value(
                reference,
                secrets
                    .get(reference.name.as_str())
                    .and_then(Option::as_ref),
            )
        })
        .map(|_| ())
    };
    let previous = server.status.clone().unwrap_or_default();
    let (status, transition) =
        desired_status(&previous, server.meta().generation, &name, &verdict, now);
    let api: Api<MCPServer> = Api::namespaced(ctx.client.clone(), &namespace);
    apply_status_if_changed(&api, &ctx.leader, STATUS_MANAGER, server, &status).await?;
    if let Some(condition) = find_condition(&status.conditions, CONDITION_READY) {
        ctx.recorder
            .condition_changed(&server.object_ref(&()), condition, &transition, ACTION)
            .await;
    }
    Ok(Action::requeue(if verdict.is_ok() {
        READY_RECHECK
    } else {
        NOT_READY_RECHECK
    }))
}

/// The status for `verdict` (`Ok`: a gateway can serve the object `name`), and what happened to
/// `Ready`.
pub fn desired_status(
    previous: &MCPServerStatus,
    generation: Option<i64>,
    name: &str,
    verdict: &std::result::Result<(), Unavailable>,
    now: Timestamp,
) -> (MCPServerStatus, Transition) {
    let mut status = previous.clone();
    status.observed_generation = generation;
    let ready = match verdict {
        Ok(()) => DesiredCondition::new(
            CONDITION_READY,
            ConditionStatus::True,
            REASON_ACCEPTED,
            format!(
                "URL, agents, credential and TLS settings are valid: gateways watching this \
                 namespace serve it at /mcp/{name}"
            ),
        ),
        Err(why) => DesiredCondition::new(
            CONDITION_READY,
            ConditionStatus::False,
            why.reason,
            why.message.clone(),
        ),
    };
    let transition = set_condition(&mut status.conditions, ready, generation, now);
    (status, transition)
}
