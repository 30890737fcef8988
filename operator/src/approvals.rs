//! `overseer approvals …`: list, approve and deny `AgentApproval` requests from the command line.
//!
//! Approving is setting `spec.review` with the reviewer's own username, which the shipped
//! ValidatingAdmissionPolicy checks against the authenticated user; this command asks the API
//! server who the user is (SelfSubjectReview) so nobody has to type it, and refuses early — with
//! a message saying why — requests that are already reviewed or expired. `kubectl patch` does
//! exactly the same thing.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use overseer_crds::agents::{AgentApproval, ApprovalReview, ReviewDecision};
use serde_json::json;

/// Field manager of reviews written by this command.
pub const FIELD_MANAGER: &str = "overseer-cli";

/// Flags of `overseer approvals`.
#[derive(Debug, Clone, Args)]
pub struct ApprovalsArgs {
    /// What to do with approval requests.
    #[command(subcommand)]
    pub command: ApprovalsCommand,
}

/// The subcommands of `overseer approvals`.
#[derive(Debug, Clone, Subcommand)]
pub enum ApprovalsCommand {
    /// List approval requests (pending ones first).
    List {
        /// Only this namespace (default: the kubeconfig's namespace).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long, conflicts_with = "namespace")]
        all_namespaces: bool,
    },
    /// Approve one request: the exact call it describes may run once.
    Approve(ReviewArgs),
    /// Deny one request.
    Deny(ReviewArgs),
}

/// Flags of `overseer approvals approve|deny`.
#[derive(Debug, Clone, Args)]
pub struct ReviewArgs {
    /// The AgentApproval's name.
    pub name: String,
    /// Its namespace (default: the kubeconfig's namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// A comment recorded with the review and in the audit trail.
    #[arg(long)]
    pub comment: Option<String>,
}

/// Why a request cannot be reviewed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    /// It already has a review (reviews are final).
    #[error("AgentApproval {name} was already {decision} by {reviewer}; reviews are final")]
    AlreadyReviewed {
        /// The request.
        name: String,
        /// `approved` or `denied`.
        decision: &'static str,
        /// Who reviewed it.
        reviewer: String,
    },
    /// It expired.
    #[error("AgentApproval {name} expired at {expires_at}; the agent must ask again")]
    Expired {
        /// The request.
        name: String,
        /// When it expired.
        expires_at: String,
    },
    /// The API server did not say who the user is.
    #[error(
        "the API server did not return your username (SelfSubjectReview); cannot name the reviewer"
    )]
    UnknownUser,
}

/// The JSON merge patch that records `decision` by `reviewer` on `approval`, or why it cannot.
pub fn review_patch(
    approval: &AgentApproval,
    decision: ReviewDecision,
    reviewer: &str,
    comment: Option<&str>,
    now: DateTime<Utc>,
) -> Result<serde_json::Value, ReviewError> {
    let name = approval.name_any();
    if let Some(review) = &approval.spec.review {
        return Err(ReviewError::AlreadyReviewed {
            name,
            decision: match review.decision {
                ReviewDecision::Approved => "approved",
                ReviewDecision::Denied => "denied",
            },
            reviewer: review.reviewer.clone(),
        });
    }
    let expired = DateTime::parse_from_rfc3339(&approval.spec.expires_at)
        .map(|t| t.with_timezone(&Utc) <= now)
        .unwrap_or(true);
    if expired {
        return Err(ReviewError::Expired {
            name,
            expires_at: approval.spec.expires_at.clone(),
        });
    }
    let review = ApprovalReview {
        decision,
        reviewer: reviewer.to_owned(),
        comment: comment.map(str::to_owned),
    };
    Ok(json!({"spec": {"review": review}}))
}

/// One line of `overseer approvals list`.
pub fn list_line(approval: &AgentApproval, now: DateTime<Utc>) -> String {
    let phase = approval
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| {
            let expired = DateTime::parse_from_rfc3339(&approval.spec.expires_at)
                .map(|t| t.with_timezone(&Utc) <= now)
                .unwrap_or(true);
            if expired { "Expired" } else { "Pending" }.to_owned()
        });
    format!(
        "{:<20} {:<40} {:<24} {:<28} {:<9} {:<21} {}",
        approval.namespace().unwrap_or_default(),
        approval.name_any(),
        approval.spec.principal.id,
        approval.spec.tool,
        phase,
        approval.spec.expires_at,
        approval.spec.reasons.first().map_or("", String::as_str),
    )
}

async fn whoami(client: &Client) -> anyhow::Result<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ReviewError::UnknownUser.into())
}

/// Review one request as the current user; returns the message to print.
pub async fn review(
    client: &Client,
    args: &ReviewArgs,
    decision: ReviewDecision,
    now: DateTime<Utc>,
) -> anyhow::Result<String> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<AgentApproval> = Api::namespaced(client.clone(), &namespace);
    let approval = api.get_opt(&args.name).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "AgentApproval {} not found in namespace {namespace}",
            args.name
        )
    })?;
    let reviewer = whoami(client).await?;
    let patch = review_patch(&approval, decision, &reviewer, args.comment.as_deref(), now)?;
    api.patch(
        &args.name,
        &PatchParams::apply(FIELD_MANAGER).validation_strict(),
        &Patch::Merge(&patch),
    )
    .await?;
    let verb = match decision {
        ReviewDecision::Approved => "approved",
        ReviewDecision::Denied => "denied",
    };
    Ok(format!(
        "{verb} {namespace}/{} as {reviewer}: {} may {} {}",
        args.name,
        approval.spec.principal.id,
        if decision == ReviewDecision::Approved {
            "now make this exact call once:"
        } else {
            "not make this call:"
        },
        approval.spec.tool
    ))
}

/// Run `overseer approvals …` against the cluster in KUBECONFIG (or the in-cluster config).
pub async fn run(args: ApprovalsArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let now = Utc::now();
    match args.command {
        ApprovalsCommand::List {
            namespace,
            all_namespaces,
        } => {
            let api: Api<AgentApproval> = if all_namespaces {
                Api::all(client.clone())
            } else {
                let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
                Api::namespaced(client.clone(), &ns)
            };
            let mut approvals = api.list(&ListParams::default()).await?.items;
            // Pending (unreviewed) first, then by expiry.
            approvals.sort_by_key(|a| (a.spec.review.is_some(), a.spec.expires_at.clone()));
            println!(
                "{:<20} {:<40} {:<24} {:<28} {:<9} {:<21} REASON",
                "NAMESPACE", "NAME", "AGENT", "TOOL", "PHASE", "EXPIRES"
            );
            for approval in &approvals {
                println!("{}", list_line(approval, now));
            }
            Ok(())
        }
        ApprovalsCommand::Approve(review_args) => {
            println!(
                "{}",
                review(&client, &review_args, ReviewDecision::Approved, now).await?
            );
            Ok(())
        }
        ApprovalsCommand::Deny(review_args) => {
            println!(
                "{}",
                review(&client, &review_args, ReviewDecision::Denied, now).await?
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use overseer_crds::agents::{AgentApprovalSpec, ApprovalPrincipal};

    use super::*;
    use crate::controller::test_support::{ApiServerVerifier, ExpectedRequest, timeout_after_1s};

    fn approval(expires_at: &str) -> AgentApproval {
        let mut a = AgentApproval::new(
            "refund-42",
            AgentApprovalSpec {
                decision_id: "d-1".into(),
                request_digest: "a".repeat(64),
                principal: ApprovalPrincipal {
                    id: "support-bot".into(),
                    ..ApprovalPrincipal::default()
                },
                tool: "payments.refund".into(),
                expires_at: expires_at.into(),
                approver_users: vec!["alice".into()],
                ..AgentApprovalSpec::default()
            },
        );
        a.metadata.namespace = Some("support".into());
        a
    }

    fn now() -> DateTime<Utc> {
        "2030-01-01T00:00:00Z".parse().expect("time")
    }

    #[test]
    fn a_review_names_the_reviewer_and_is_refused_when_final_or_expired() {
        let pending = approval("2030-01-01T00:15:00Z");
        let patch = review_patch(
            &pending,
            ReviewDecision::Approved,
            "alice",
            Some("ok"),
            now(),
        )
        .expect("patch");
        assert_eq!(
            patch,
            json!({"spec": {"review": {"decision": "Approved", "reviewer": "alice", "comment": "ok"}}})
        );

        let mut reviewed = pending.clone();
        reviewed.spec.review = Some(ApprovalReview {
            decision: ReviewDecision::Denied,
            reviewer: "bob".into(),
            comment: None,
        });
        assert_eq!(
            review_patch(&reviewed, ReviewDecision::Approved, "alice", None, now())
                .expect_err("final")
                .to_string(),
            "AgentApproval refund-42 was already denied by bob; reviews are final"
        );
        let expired = approval("2029-12-31T23:59:59Z");
        assert!(matches!(
            review_patch(&expired, ReviewDecision::Approved, "alice", None, now()),
            Err(ReviewError::Expired { .. })
        ));
        // An unreadable expiry is treated as expired, never as open-ended.
        assert!(matches!(
            review_patch(
                &approval("soon"),
                ReviewDecision::Approved,
                "alice",
                None,
                now()
            ),
            Err(ReviewError::Expired { .. })
        ));
        assert!(list_line(&pending, now()).contains("Pending"));
        assert!(list_line(&expired, now()).contains("Expired"));
    }

    #[tokio::test]
    async fn approving_reads_the_request_asks_who_i_am_then_patches_the_review() {
        let (client, verifier) = ApiServerVerifier::new();
        let path = "/apis/agents.overseer.dev/v1alpha1/namespaces/support/agentapprovals/refund-42";
        let scenario = verifier.run(vec![
            ExpectedRequest::get(path).respond(
                200,
                serde_json::to_value(approval("2030-01-01T00:15:00Z")).expect("json"),
            ),
            ExpectedRequest::post_containing(
                "/apis/authentication.k8s.io/v1/selfsubjectreviews?",
                json!({"kind": "SelfSubjectReview"}),
            )
            .respond(
                201,
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {},
                       "status": {"userInfo": {"username": "alice", "groups": ["system:authenticated"]}}}),
            ),
            ExpectedRequest {
                content_type: Some("application/merge-patch+json"),
                body: crate::controller::test_support::BodyMatch::Exact(
                    json!({"spec": {"review": {"decision": "Approved", "reviewer": "alice"}}}),
                ),
                ..ExpectedRequest::new(
                    "PATCH",
                    "/apis/agents.overseer.dev/v1alpha1/namespaces/support/agentapprovals/refund-42?&fieldManager=overseer-cli&fieldValidation=Strict",
                )
            }
            .respond(
                200,
                serde_json::to_value(approval("2030-01-01T00:15:00Z")).expect("json"),
            ),
        ]);
        let args = ReviewArgs {
            name: "refund-42".into(),
            namespace: Some("support".into()),
            comment: None,
        };
        let message = review(&client, &args, ReviewDecision::Approved, now())
            .await
            .expect("approved");
        assert_eq!(
            message,
            "approved support/refund-42 as alice: support-bot may now make this exact call once: payments.refund"
        );
        drop(client);
        timeout_after_1s(scenario).await;
    }
}
