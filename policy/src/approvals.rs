//! Approvals: a `require_approval` answer opens a pending approval bound to the SHA-256 digest
//! of the exact request ([`crate::request::DecisionRequest::digest`]). A human reviews it; once
//! approved, the same request (same digest) is allowed exactly once. An approval nobody answered
//! expires at `expiresAt`, after which it can no longer be approved or used (the call is denied).
//!
//! [`ApprovalStore`] is the storage seam: [`InMemoryApprovals`] ships here; the operator backs it
//! with `AgentApproval` objects.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where an approval stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", tag = "phase")]
pub enum ApprovalState {
    /// Waiting for a reviewer.
    Pending,
    /// Approved; the next identical request is allowed.
    Approved {
        /// Who approved.
        reviewer: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Denied by a reviewer.
    Denied {
        /// Who denied.
        reviewer: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Nobody approved (or the approval was not used) before it expired; the call is denied.
    Expired,
    /// Approved and used by the request it was bound to.
    Consumed {
        /// Who approved.
        reviewer: String,
        /// When the approved call was decided.
        at: DateTime<Utc>,
    },
}

/// One approval request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// Approval id.
    pub id: String,
    /// The decision that opened it.
    pub decision_id: Uuid,
    /// Digest of the exact request it is bound to.
    pub request_digest: String,
    /// The agent that asked.
    pub principal_id: String,
    /// The agent's Kubernetes username, when it runs as a ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_username: Option<String>,
    /// The tool.
    pub tool: String,
    /// The MCP server, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The target, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// End user of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Tenant of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Why approval is required (the deciding rules' messages).
    pub reasons: Vec<String>,
    /// Users who may review (from the deciding policies' `approval.users`).
    pub approver_users: Vec<String>,
    /// Groups whose members may review (from the deciding policies' `approval.groups`).
    pub approver_groups: Vec<String>,
    /// When it was opened.
    pub created_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// Where it stands.
    pub state: ApprovalState,
}

impl Approval {
    /// The state at `now`: a pending or approved (unused) approval past `expires_at` is expired.
    pub fn state_at(&self, now: DateTime<Utc>) -> ApprovalState {
        match &self.state {
            ApprovalState::Pending | ApprovalState::Approved { .. } if now >= self.expires_at => {
                ApprovalState::Expired
            }
            s => s.clone(),
        }
    }

    /// Check that `reviewer` (a user with `groups`) may review this approval: it is listed in
    /// `approver_users` or belongs to one of `approver_groups`, and it is not the agent itself.
    pub fn check_reviewer(&self, reviewer: &str, groups: &[String]) -> Result<(), ApprovalError> {
        if reviewer.is_empty() {
            return Err(ApprovalError::NotAllowed {
                reviewer: reviewer.into(),
                reason: "the reviewer is anonymous".into(),
            });
        }
        if reviewer == self.principal_id || self.principal_username.as_deref() == Some(reviewer) {
            return Err(ApprovalError::SelfApproval {
                reviewer: reviewer.into(),
            });
        }
        let by_user = self.approver_users.iter().any(|u| u == reviewer);
        let by_group = groups.iter().any(|g| self.approver_groups.contains(g));
        if by_user || by_group {
            Ok(())
        } else {
            Err(ApprovalError::NotAllowed {
                reviewer: reviewer.into(),
                reason: format!(
                    "only users {:?} or members of groups {:?} may review this request",
                    self.approver_users, self.approver_groups
                ),
            })
        }
    }
}

/// Why an approval operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// No approval with this id.
    #[error("approval {0} not found")]
    NotFound(String),
    /// The agent tried to approve its own request.
    #[error("{reviewer} cannot review its own request")]
    SelfApproval {
        /// The reviewer.
        reviewer: String,
    },
    /// The reviewer is not allowed by the policy's approval settings.
    #[error("{reviewer} may not review this request: {reason}")]
    NotAllowed {
        /// The reviewer.
        reviewer: String,
        /// Why.
        reason: String,
    },
    /// The approval is no longer pending (already reviewed, used or expired).
    #[error("approval {id} is not pending (it is {state})")]
    NotPending {
        /// The approval.
        id: String,
        /// Its state.
        state: String,
    },
    /// The store holds as many open approvals as it may.
    #[error("too many open approvals ({0}); try again later")]
    Full(usize),
}

impl ApprovalError {
    /// A short, stable label for metrics and HTTP error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::SelfApproval { .. } => "self_approval",
            Self::NotAllowed { .. } => "not_allowed",
            Self::NotPending { .. } => "not_pending",
            Self::Full(_) => "full",
        }
    }
}

/// A reviewer's verdict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Verdict {
    /// Allow the exact request once.
    Approve,
    /// Deny it.
    Deny,
}

/// Storage of approvals. Implementations must make [`consume`](Self::consume) atomic: an
/// approval is used at most once even under concurrent identical requests.
pub trait ApprovalStore: Send + Sync + fmt::Debug {
    /// Open `approval` (state `Pending`) unless a pending, unexpired approval for the same digest
    /// exists, in which case that one is returned and nothing is created.
    fn open(&self, approval: Approval, now: DateTime<Utc>) -> Result<Approval, ApprovalError>;
    /// The pending, unexpired approval bound to `digest`, if any.
    fn pending(&self, digest: &str, now: DateTime<Utc>) -> Option<Approval>;
    /// The approval with this id, with its state as of `now`.
    fn get(&self, id: &str, now: DateTime<Utc>) -> Option<Approval>;
    /// Record a review of a pending, unexpired approval. The caller has checked the reviewer
    /// with [`Approval::check_reviewer`].
    fn review(
        &self,
        id: &str,
        reviewer: &str,
        verdict: Verdict,
        now: DateTime<Utc>,
    ) -> Result<Approval, ApprovalError>;
    /// Atomically take an approved, unexpired, unused approval bound to `digest`, marking it
    /// consumed. `None` when there is none.
    fn consume(&self, digest: &str, now: DateTime<Utc>) -> Option<Approval>;
    /// Undo a [`consume`](Self::consume) whose call was then refused for another reason (a rate
    /// limit), so the approval can still be used.
    fn release(&self, id: &str);
}

/// Default number of approvals an [`InMemoryApprovals`] keeps.
pub const DEFAULT_MAX_APPROVALS: usize = 100_000;

/// Finished approvals are kept this long after they expire, so their state can still be read.
const RETENTION: chrono::TimeDelta = chrono::TimeDelta::hours(1);

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Approval>,
    by_digest: HashMap<String, Vec<String>>,
}

/// An in-memory [`ApprovalStore`] (single replica; lost on restart).
#[derive(Debug)]
pub struct InMemoryApprovals {
    inner: Mutex<Inner>,
    max: usize,
}

impl Default for InMemoryApprovals {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_APPROVALS)
    }
}

impl InMemoryApprovals {
    /// A store holding at most `max` approvals (finished ones are pruned first).
    pub fn new(max: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of approvals held.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn prune(inner: &mut Inner, now: DateTime<Utc>) {
        let dead: Vec<String> = inner
            .by_id
            .values()
            .filter(|a| {
                let finished = !matches!(
                    a.state_at(now),
                    ApprovalState::Pending | ApprovalState::Approved { .. }
                );
                finished && now >= a.expires_at + RETENTION
            })
            .map(|a| a.id.clone())
            .collect();
        for id in dead {
            if let Some(a) = inner.by_id.remove(&id)
                && let Some(ids) = inner.by_digest.get_mut(&a.request_digest)
            {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    inner.by_digest.remove(&a.request_digest);
                }
            }
        }
    }
}

impl ApprovalStore for InMemoryApprovals {
    fn open(&self, mut approval: Approval, now: DateTime<Utc>) -> Result<Approval, ApprovalError> {
        let mut inner = self.lock();
        if let Some(ids) = inner.by_digest.get(&approval.request_digest) {
            for id in ids {
                if let Some(a) = inner.by_id.get(id)
                    && a.state_at(now) == ApprovalState::Pending
                {
                    return Ok(a.clone());
                }
            }
        }
        if inner.by_id.len() >= self.max {
            Self::prune(&mut inner, now);
            if inner.by_id.len() >= self.max {
                return Err(ApprovalError::Full(self.max));
            }
        }
        approval.state = ApprovalState::Pending;
        inner
            .by_digest
            .entry(approval.request_digest.clone())
            .or_default()
            .push(approval.id.clone());
        inner.by_id.insert(approval.id.clone(), approval.clone());
        Ok(approval)
    }

    fn pending(&self, digest: &str, now: DateTime<Utc>) -> Option<Approval> {
        let inner = self.lock();
        inner
            .by_digest
            .get(digest)?
            .iter()
            .filter_map(|id| inner.by_id.get(id))
            .find(|a| a.state_at(now) == ApprovalState::Pending)
            .cloned()
    }

    fn get(&self, id: &str, now: DateTime<Utc>) -> Option<Approval> {
        self.lock().by_id.get(id).map(|a| {
            let mut a = a.clone();
            a.state = a.state_at(now);
            a
        })
    }

    fn review(
        &self,
        id: &str,
        reviewer: &str,
        verdict: Verdict,
        now: DateTime<Utc>,
    ) -> Result<Approval, ApprovalError> {
        let mut inner = self.lock();
        let a = inner
            .by_id
            .get_mut(id)
            .ok_or_else(|| ApprovalError::NotFound(id.into()))?;
        let state = a.state_at(now);
        if state != ApprovalState::Pending {
            return Err(ApprovalError::NotPending {
                id: id.into(),
                state: state_name(&state).into(),
            });
        }
        a.state = match verdict {
            Verdict::Approve => ApprovalState::Approved {
                reviewer: reviewer.into(),
                at: now,
            },
            Verdict::Deny => ApprovalState::Denied {
                reviewer: reviewer.into(),
                at: now,
            },
        };
        Ok(a.clone())
    }

    fn consume(&self, digest: &str, now: DateTime<Utc>) -> Option<Approval> {
        let mut inner = self.lock();
        let ids = inner.by_digest.get(digest)?.clone();
        for id in ids {
            if let Some(a) = inner.by_id.get_mut(&id)
                && let ApprovalState::Approved { reviewer, .. } = a.state_at(now)
            {
                a.state = ApprovalState::Consumed { reviewer, at: now };
                return Some(a.clone());
            }
        }
        None
    }

    fn release(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(a) = inner.by_id.get_mut(id)
            && let ApprovalState::Consumed { reviewer, at } = &a.state
        {
            a.state = ApprovalState::Approved {
                reviewer: reviewer.clone(),
                at: *at,
            };
        }
    }
}

/// The name of a state (`Pending`, `Approved`, ...).
pub fn state_name(s: &ApprovalState) -> &'static str {
    match s {
        ApprovalState::Pending => "Pending",
        ApprovalState::Approved { .. } => "Approved",
        ApprovalState::Denied { .. } => "Denied",
        ApprovalState::Expired => "Expired",
        ApprovalState::Consumed { .. } => "Consumed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(id: &str, digest: &str, now: DateTime<Utc>) -> Approval {
        Approval {
            id: id.into(),
            decision_id: Uuid::nil(),
            request_digest: digest.into(),
            principal_id: "agent".into(),
            principal_username: Some("system:serviceaccount:ns:agent".into()),
            tool: "t".into(),
            server: None,
            target: None,
            user: None,
            tenant: None,
            reasons: vec![],
            approver_users: vec!["alice".into()],
            approver_groups: vec!["security-team".into()],
            created_at: now,
            expires_at: now + chrono::TimeDelta::minutes(15),
            state: ApprovalState::Pending,
        }
    }

    #[test]
    fn reviewer_rules() {
        let a = approval("1", "d", Utc::now());
        assert!(a.check_reviewer("alice", &[]).is_ok());
        assert!(a.check_reviewer("bob", &["security-team".into()]).is_ok());
        assert!(matches!(
            a.check_reviewer("bob", &["devs".into()]),
            Err(ApprovalError::NotAllowed { .. })
        ));
        assert!(matches!(
            a.check_reviewer("agent", &["security-team".into()]),
            Err(ApprovalError::SelfApproval { .. })
        ));
        assert!(matches!(
            a.check_reviewer("system:serviceaccount:ns:agent", &["security-team".into()]),
            Err(ApprovalError::SelfApproval { .. })
        ));
    }

    #[test]
    fn single_use_and_expiry() {
        let store = InMemoryApprovals::default();
        let now = Utc::now();
        let opened = store.open(approval("1", "d", now), now).unwrap();
        // A second identical request reuses the pending approval.
        assert_eq!(
            store.open(approval("2", "d", now), now).unwrap().id,
            opened.id
        );
        assert!(store.consume("d", now).is_none());
        store.review("1", "alice", Verdict::Approve, now).unwrap();
        assert!(store.review("1", "alice", Verdict::Approve, now).is_err());
        assert!(store.consume("other", now).is_none());
        assert!(store.consume("d", now).is_some());
        assert!(store.consume("d", now).is_none());
        store.release("1");
        assert!(store.consume("d", now).is_some());

        let later = now + chrono::TimeDelta::minutes(16);
        store.open(approval("3", "e", now), now).unwrap();
        store.review("3", "alice", Verdict::Approve, now).unwrap();
        assert!(
            store.consume("e", later).is_none(),
            "expired approvals cannot be used"
        );
        assert_eq!(store.get("3", later).unwrap().state, ApprovalState::Expired);
        store.open(approval("4", "f", now), now).unwrap();
        assert!(matches!(
            store.review("4", "alice", Verdict::Approve, later),
            Err(ApprovalError::NotPending { .. })
        ));
    }

    #[test]
    fn store_is_bounded() {
        let store = InMemoryApprovals::new(1);
        let now = Utc::now();
        store.open(approval("1", "a", now), now).unwrap();
        assert_eq!(
            store.open(approval("2", "b", now), now),
            Err(ApprovalError::Full(1))
        );
        // Long after expiry the finished one is pruned and there is room again.
        let later = now + chrono::TimeDelta::hours(3);
        assert!(store.open(approval("3", "c", later), later).is_ok());
    }
}
