//! Status conditions following the Kubernetes API conventions: stable `type`s, per-condition
//! `observedGeneration`, a `lastTransitionTime` that only moves when `status` changes, and a
//! comparison that ignores timestamps so a reconcile that changed nothing writes nothing.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use serde::Serialize;

/// The `status` of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It is not known (yet) whether the condition holds.
    Unknown,
}

impl ConditionStatus {
    /// The wire form: `True`, `False` or `Unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }
}

/// The desired state of one condition, without the fields [`set_condition`] fills in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    /// The condition type, e.g. `Ready` (UpperCamelCase, stable).
    pub type_: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// A machine-readable UpperCamelCase reason.
    pub reason: String,
    /// A human-readable message: what is wrong and what to change.
    pub message: String,
}

impl DesiredCondition {
    /// A condition of `type_` with the given status, reason and message.
    pub fn new(
        type_: impl Into<String>,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// What [`set_condition`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The condition was not present and was added.
    Added,
    /// The condition's `status` changed from the given value; `lastTransitionTime` moved.
    StatusChanged {
        /// The previous status.
        from: String,
    },
    /// Reason, message or observed generation changed; the status and its transition time did not.
    Updated,
    /// Nothing changed.
    Unchanged,
}

impl Transition {
    /// Whether the condition's status is new (added or changed): worth an Event.
    pub fn is_transition(&self) -> bool {
        matches!(self, Self::Added | Self::StatusChanged { .. })
    }

    /// Whether anything changed.
    pub fn is_change(&self) -> bool {
        !matches!(self, Self::Unchanged)
    }
}

/// Set the condition of `desired.type_` in `conditions`.
///
/// `lastTransitionTime` becomes `now` only when the condition is added or its status changes;
/// `observedGeneration` is set to `observed_generation` (the object's `metadata.generation`).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    desired: DesiredCondition,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Transition {
    let status = desired.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == desired.type_) {
        None => {
            conditions.push(Condition {
                type_: desired.type_,
                status: status.to_owned(),
                reason: desired.reason,
                message: desired.message,
                observed_generation,
                last_transition_time: Time(now),
            });
            Transition::Added
        }
        Some(existing) => {
            let transition = if existing.status != status {
                Transition::StatusChanged {
                    from: std::mem::replace(&mut existing.status, status.to_owned()),
                }
            } else if existing.reason != desired.reason
                || existing.message != desired.message
                || existing.observed_generation != observed_generation
            {
                Transition::Updated
            } else {
                return Transition::Unchanged;
            };
            if transition.is_transition() {
                existing.last_transition_time = Time(now);
            }
            existing.reason = desired.reason;
            existing.message = desired.message;
            existing.observed_generation = observed_generation;
            transition
        }
    }
}

/// Remove the condition of `type_`; returns whether one was present.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// Whether two condition lists say the same, ignoring `lastTransitionTime` and order.
pub fn conditions_equivalent(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            b.iter().any(|y| {
                x.type_ == y.type_
                    && x.status == y.status
                    && x.reason == y.reason
                    && x.message == y.message
                    && x.observed_generation == y.observed_generation
            })
        })
}

/// Whether writing `desired` over `current` would change nothing but timestamps: compares the two
/// statuses as JSON with every `lastTransitionTime` removed. A `None` current status always needs
/// a write.
pub fn status_unchanged<S: Serialize>(current: Option<&S>, desired: &S) -> bool {
    let Some(current) = current else {
        return false;
    };
    match (serde_json::to_value(current), serde_json::to_value(desired)) {
        (Ok(mut current), Ok(mut desired)) => {
            strip_transition_times(&mut current);
            strip_transition_times(&mut desired);
            current == desired
        }
        // Not comparable: write, the API server will tell.
        _ => false,
    }
}

fn strip_transition_times(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("lastTransitionTime");
            map.values_mut().for_each(strip_transition_times);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_transition_times),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overseer_crds::common::CONDITION_READY;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("valid timestamp")
    }

    fn ready(status: ConditionStatus, reason: &str, message: &str) -> DesiredCondition {
        DesiredCondition::new(CONDITION_READY, status, reason, message)
    }

    #[test]
    fn adding_sets_transition_time_and_generation() {
        let mut conditions = Vec::new();
        let transition = set_condition(
            &mut conditions,
            ready(ConditionStatus::False, "Compiling", "compiling"),
            Some(3),
            t(100),
        );
        assert_eq!(transition, Transition::Added);
        assert!(transition.is_transition());
        assert_eq!(conditions.len(), 1);
        let c = &conditions[0];
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("Ready", "False"));
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(c.last_transition_time, Time(t(100)));
    }

    #[test]
    fn transition_time_is_stable_while_status_is() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ready(ConditionStatus::True, "Compiled", "ok"),
            Some(1),
            t(100),
        );

        // Same everything: nothing changes, not even the time.
        let transition = set_condition(
            &mut conditions,
            ready(ConditionStatus::True, "Compiled", "ok"),
            Some(1),
            t(200),
        );
        assert_eq!(transition, Transition::Unchanged);
        assert!(!transition.is_change());
        assert_eq!(conditions[0].last_transition_time, Time(t(100)));

        // A new message and generation with the same status: updated, time kept.
        let transition = set_condition(
            &mut conditions,
            ready(ConditionStatus::True, "Compiled", "12 rules"),
            Some(2),
            t(300),
        );
        assert_eq!(transition, Transition::Updated);
        assert!(!transition.is_transition());
        assert_eq!(conditions[0].last_transition_time, Time(t(100)));
        assert_eq!(conditions[0].message, "12 rules");
        assert_eq!(conditions[0].observed_generation, Some(2));

        // The status flips: the time moves.
        let transition = set_condition(
            &mut conditions,
            ready(ConditionStatus::False, "Invalid", "line 3: unknown tool"),
            Some(3),
            t(400),
        );
        assert_eq!(
            transition,
            Transition::StatusChanged {
                from: "True".into()
            }
        );
        assert_eq!(conditions[0].last_transition_time, Time(t(400)));
        assert_eq!(conditions[0].status, "False");
        assert_eq!(conditions[0].reason, "Invalid");
        assert_eq!(conditions.len(), 1);
    }

    #[test]
    fn other_types_are_untouched() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            DesiredCondition::new("Degraded", ConditionStatus::Unknown, "Pending", ""),
            None,
            t(1),
        );
        set_condition(
            &mut conditions,
            ready(ConditionStatus::True, "Ok", ""),
            None,
            t(2),
        );
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0].status, "Unknown");
        assert!(remove_condition(&mut conditions, "Degraded"));
        assert!(!remove_condition(&mut conditions, "Degraded"));
        assert_eq!(conditions.len(), 1);
        assert_eq!(ConditionStatus::from(false), ConditionStatus::False);
    }

    #[test]
    fn equivalence_ignores_timestamps_and_order() {
        let mut a = Vec::new();
        set_condition(
            &mut a,
            ready(ConditionStatus::True, "Ok", "m"),
            Some(1),
            t(1),
        );
        set_condition(
            &mut a,
            DesiredCondition::new("X", ConditionStatus::False, "R", ""),
            Some(1),
            t(1),
        );
        let mut b = Vec::new();
        set_condition(
            &mut b,
            DesiredCondition::new("X", ConditionStatus::False, "R", ""),
            Some(1),
            t(9),
        );
        set_condition(
            &mut b,
            ready(ConditionStatus::True, "Ok", "m"),
            Some(1),
            t(9),
        );
        assert!(conditions_equivalent(&a, &b));

        set_condition(
            &mut b,
            ready(ConditionStatus::True, "Ok", "other"),
            Some(1),
            t(9),
        );
        assert!(!conditions_equivalent(&a, &b));
        assert!(!conditions_equivalent(&a, &a[..1]));
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Status {
        observed_generation: Option<i64>,
        conditions: Vec<Condition>,
    }

    #[test]
    fn no_op_status_writes_are_detected() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ready(ConditionStatus::True, "Ok", "m"),
            Some(1),
            t(1),
        );
        let current = Status {
            observed_generation: Some(1),
            conditions: conditions.clone(),
        };
        // Recomputed from scratch at a later time: only the timestamp differs.
        let mut fresh = Vec::new();
        set_condition(
            &mut fresh,
            ready(ConditionStatus::True, "Ok", "m"),
            Some(1),
            t(50),
        );
        let desired = Status {
            observed_generation: Some(1),
            conditions: fresh,
        };
        assert!(status_unchanged(Some(&current), &desired));

        let newer = Status {
            observed_generation: Some(2),
            conditions,
        };
        assert!(!status_unchanged(Some(&current), &newer));
        assert!(!status_unchanged(None, &desired));
    }
}
