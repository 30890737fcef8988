//! Kubernetes Events (`events.k8s.io/v1`) for what a human should see in `kubectl describe`:
//! condition transitions and reconcile errors. Events are best effort: a failure to publish one is
//! logged, never turned into a reconcile error. Only the leader publishes.

use k8s_openapi::{api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tracing::warn;

use super::{conditions::Transition, error::Error};
use crate::leader::LeaderState;

/// The `reportingController` of every Event Overseer publishes.
pub const REPORTING_CONTROLLER: &str = "overseer.dev/operator";

/// Publishes Events on behalf of one replica of the operator.
#[derive(Clone)]
pub struct EventRecorder {
    recorder: Recorder,
    leader: LeaderState,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("leader", &self.leader.is_leader())
            .finish_non_exhaustive()
    }
}

impl EventRecorder {
    /// A recorder reporting as [`REPORTING_CONTROLLER`] with this replica's `instance` name.
    pub fn new(client: Client, instance: impl Into<String>, leader: LeaderState) -> Self {
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.to_owned(),
            instance: Some(instance.into()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            leader,
        }
    }

    /// Publish one Event about `regarding`. Returns whether it was published (followers and
    /// failures publish nothing).
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: Option<String>,
    ) -> bool {
        if !self.leader.is_leader() {
            return false;
        }
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: note.map(|n| truncate_note(n, NOTE_LIMIT)),
            action: action.to_owned(),
            secondary: None,
        };
        match self.recorder.publish(&event, regarding).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, reason, kind = ?regarding.kind, name = ?regarding.name, "cannot publish Event");
                false
            }
        }
    }

    /// Publish an Event for a condition whose status is new (see [`Transition::is_transition`]):
    /// `Normal` when it is `True`, `Warning` otherwise, with the condition's reason and message.
    /// Returns whether an Event was published.
    pub async fn condition_changed(
        &self,
        regarding: &ObjectReference,
        condition: &Condition,
        transition: &Transition,
        action: &str,
    ) -> bool {
        if !transition.is_transition() {
            return false;
        }
        let type_ = if condition.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let note = format!(
            "{}={}: {}",
            condition.type_, condition.status, condition.message
        );
        self.publish(regarding, type_, &condition.reason, action, Some(note))
            .await
    }

    /// Publish a `Warning` Event for a failed reconcile, with the error's reason. A skipped write
    /// on a follower is not reported.
    pub async fn error(&self, regarding: &ObjectReference, error: &Error, action: &str) -> bool {
        if error.is_not_leader() {
            return false;
        }
        self.publish(
            regarding,
            EventType::Warning,
            error.reason(),
            action,
            Some(error.to_string()),
        )
        .await
    }
}

/// The API server rejects Event notes over 1 kB.
const NOTE_LIMIT: usize = 1024;

fn truncate_note(mut note: String, limit: usize) -> String {
    if note.len() > limit {
        let mut end = limit.saturating_sub(3);
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{
        conditions::{ConditionStatus, DesiredCondition, set_condition},
        test_support::{ApiServerVerifier, ExpectedRequest, timeout_after_1s},
    };
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn reference() -> ObjectReference {
        ObjectReference {
            api_version: Some("agents.overseer.dev/v1alpha1".into()),
            kind: Some("AgentPolicy".into()),
            name: Some("support".into()),
            namespace: Some("team-a".into()),
            uid: Some("1234".into()),
            ..ObjectReference::default()
        }
    }

    #[tokio::test]
    async fn transitions_publish_events_and_repeats_do_not() {
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(vec![
            ExpectedRequest::post_containing(
                "/apis/events.k8s.io/v1/namespaces/team-a/events?",
                json!({
                    "apiVersion": "events.k8s.io/v1",
                    "kind": "Event",
                    "type": "Warning",
                    "reason": "Invalid",
                    "action": "Reconcile",
                    "note": "Ready=False: rule 3: unknown tool",
                    "reportingController": "overseer.dev/operator",
                    "reportingInstance": "overseer-0",
                    "regarding": {"kind": "AgentPolicy", "name": "support", "namespace": "team-a", "uid": "1234"},
                    "metadata": {"namespace": "team-a"},
                }),
            )
            .respond(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "support.1"}, "eventTime": null})),
        ]);
        let recorder = EventRecorder::new(client, "overseer-0", LeaderState::fixed(true));
        let mut conditions = Vec::new();
        let now = Timestamp::from_second(1).expect("timestamp");
        let desired = DesiredCondition::new(
            "Ready",
            ConditionStatus::False,
            "Invalid",
            "rule 3: unknown tool",
        );
        let added = set_condition(&mut conditions, desired.clone(), Some(1), now);
        assert!(
            recorder
                .condition_changed(&reference(), &conditions[0], &added, "Reconcile")
                .await
        );
        let same = set_condition(&mut conditions, desired, Some(1), now);
        assert!(
            !recorder
                .condition_changed(&reference(), &conditions[0], &same, "Reconcile")
                .await
        );
        drop(recorder);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn errors_become_warnings_but_followers_stay_quiet() {
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(vec![
            ExpectedRequest::post_containing(
                "/apis/events.k8s.io/v1/namespaces/team-a/events?",
                json!({"type": "Warning", "reason": "MissingObjectKey", "note": "object has no namespace"}),
            )
            .respond(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null})),
        ]);
        let leader = EventRecorder::new(client.clone(), "overseer-0", LeaderState::fixed(true));
        assert!(
            leader
                .error(
                    &reference(),
                    &Error::MissingObjectKey("namespace"),
                    "Reconcile"
                )
                .await
        );
        assert!(
            !leader
                .error(&reference(), &Error::NotLeader, "Reconcile")
                .await
        );
        let follower = EventRecorder::new(client, "overseer-1", LeaderState::fixed(false));
        assert!(
            !follower
                .error(
                    &reference(),
                    &Error::MissingObjectKey("namespace"),
                    "Reconcile"
                )
                .await
        );
        drop((leader, follower));
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn a_rejected_event_is_not_an_error() {
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(vec![
            ExpectedRequest::post_containing("/apis/events.k8s.io/v1/namespaces/team-a/events?", json!({"reason": "X"}))
                .respond(403, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "forbidden"})),
        ]);
        let recorder = EventRecorder::new(client, "overseer-0", LeaderState::fixed(true));
        assert!(
            !recorder
                .publish(&reference(), EventType::Normal, "X", "Reconcile", None)
                .await
        );
        drop(recorder);
        timeout_after_1s(scenario).await;
    }

    #[test]
    fn long_notes_are_truncated_on_a_char_boundary() {
        assert_eq!(truncate_note("short".into(), 10), "short");
        let long = "é".repeat(600);
        let cut = truncate_note(long, NOTE_LIMIT);
        assert!(cut.len() <= NOTE_LIMIT);
        assert!(cut.ends_with("..."));
    }
}
