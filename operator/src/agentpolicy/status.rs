//! The status of an `AgentPolicy` / `ClusterAgentPolicy`, computed purely from its compile
//! report: `Ready`, `observedGeneration`, and the `policyRevision` and `ruleCount` of the version
//! that serves decisions (the last good one while the current one is broken).

use k8s_openapi::jiff::Timestamp;
use overseer_crds::agents::AgentPolicyStatus;
use overseer_policy::compile::PolicyReport;

use crate::controller::conditions::{ConditionStatus, DesiredCondition, Transition, set_condition};

/// The condition type kstatus, Flux and Argo read.
pub const READY: &str = "Ready";
/// `Ready=True`: the current version compiled and serves.
pub const REASON_COMPILED: &str = "Compiled";
/// `Ready=False`: the current version does not compile.
pub const REASON_INVALID: &str = "InvalidPolicy";

/// Longest condition message written (the compiler's messages are short; this bounds a policy
/// with very many errors).
const MESSAGE_LIMIT: usize = 4096;

/// The desired status of a policy at `generation`, from the report of its current version and
/// the report of the version that serves (equal when the current one compiled). Other
/// conditions of `current` are kept; `lastTransitionTime` moves only when `Ready` flips.
pub fn desired_status(
    current: Option<&AgentPolicyStatus>,
    generation: Option<i64>,
    report: &PolicyReport,
    serving: Option<&PolicyReport>,
    now: Timestamp,
) -> (AgentPolicyStatus, Transition) {
    let mut conditions = current.map(|s| s.conditions.clone()).unwrap_or_default();
    let condition = if report.is_ok() {
        DesiredCondition::new(
            READY,
            ConditionStatus::True,
            REASON_COMPILED,
            format!(
                "compiled {} rule{}; revision {} serves decisions",
                report.rule_count,
                if report.rule_count == 1 { "" } else { "s" },
                report.revision
            ),
        )
    } else {
        let serving_note = match serving {
            Some(good) => format!(
                "the last good revision {} keeps serving decisions until this is fixed",
                good.revision
            ),
            None => "no version of this policy ever compiled here, so it serves no decisions \
                     until this is fixed"
                .to_owned(),
        };
        DesiredCondition::new(
            READY,
            ConditionStatus::False,
            REASON_INVALID,
            truncate(format!("{}; {serving_note}", report.message())),
        )
    };
    let transition = set_condition(&mut conditions, condition, generation, now);
    let status = AgentPolicyStatus {
        observed_generation: generation,
        policy_revision: serving.map(|s| s.revision.clone()),
        rule_count: serving.map(|s| i32::try_from(s.rule_count).unwrap_or(i32::MAX)),
        conditions,
    };
    (status, transition)
}

fn truncate(mut message: String) -> String {
    if message.len() > MESSAGE_LIMIT {
        let mut end = MESSAGE_LIMIT - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use overseer_policy::compile::CompileError;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("timestamp")
    }

    fn good(revision: &str, rules: usize) -> PolicyReport {
        PolicyReport {
            policy: "agents/support".into(),
            generation: Some(1),
            revision: revision.into(),
            rule_count: rules,
            errors: vec![],
        }
    }

    fn bad() -> PolicyReport {
        PolicyReport {
            errors: vec![CompileError {
                field: "spec.tools[0].when".into(),
                message: "unexpected token".into(),
                line: Some(1),
                column: Some(9),
            }],
            ..good("bbbbbbbbbbbb", 1)
        }
    }

    #[test]
    fn valid_invalid_and_fixed_again() {
        let g = good("aaaaaaaaaaaa", 3);
        let (status, t) = desired_status(None, Some(1), &g, Some(&g), at(100));
        assert_eq!(t, Transition::Added);
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.policy_revision.as_deref(), Some("aaaaaaaaaaaa"));
        assert_eq!(status.rule_count, Some(3));
        assert_eq!(status.conditions[0].status, "True");
        assert_eq!(
            status.conditions[0].message,
            "compiled 3 rules; revision aaaaaaaaaaaa serves decisions"
        );

        let (broken, t) = desired_status(Some(&status), Some(2), &bad(), Some(&g), at(200));
        assert!(t.is_transition());
        assert_eq!(broken.observed_generation, Some(2));
        assert_eq!(
            broken.policy_revision.as_deref(),
            Some("aaaaaaaaaaaa"),
            "what serves"
        );
        assert_eq!(broken.conditions[0].reason, REASON_INVALID);
        assert_eq!(
            broken.conditions[0].message,
            "spec.tools[0].when (line 1, column 9): unexpected token; the last good revision \
             aaaaaaaaaaaa keeps serving decisions until this is fixed"
        );
        assert_eq!(broken.conditions[0].last_transition_time.0, at(200));

        let never = desired_status(None, Some(1), &bad(), None, at(200)).0;
        assert_eq!(never.policy_revision, None);
        assert_eq!(never.rule_count, None);
        assert!(never.conditions[0].message.contains("serves no decisions"));

        let (fixed, t) = desired_status(
            Some(&broken),
            Some(3),
            &good("cccccccccccc", 1),
            Some(&good("cccccccccccc", 1)),
            at(300),
        );
        assert!(t.is_transition());
        assert_eq!(
            fixed.conditions[0].message,
            "compiled 1 rule; revision cccccccccccc serves decisions"
        );
        assert_eq!(fixed.conditions[0].observed_generation, Some(3));
    }

    #[test]
    fn recomputing_changes_nothing_but_keeps_the_transition_time() {
        let g = good("aaaaaaaaaaaa", 3);
        let (first, _) = desired_status(None, Some(1), &g, Some(&g), at(100));
        let (again, t) = desired_status(Some(&first), Some(1), &g, Some(&g), at(500));
        assert_eq!(t, Transition::Unchanged);
        assert_eq!(again, first);
    }

    #[test]
    fn long_messages_are_bounded() {
        let mut many = bad();
        many.errors = vec![many.errors[0].clone(); 500];
        let (status, _) = desired_status(None, Some(1), &many, None, at(1));
        assert!(status.conditions[0].message.len() <= MESSAGE_LIMIT);
        assert!(status.conditions[0].message.ends_with("..."));
    }
}
