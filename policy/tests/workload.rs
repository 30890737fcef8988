//! The shared workload (`../shared/bench/policy-workload/`): the policy mapped into AgentPolicy
//! form must reproduce every one of the 210,000 expected decisions, rate-limited ones included.

use chrono::{DateTime, Utc};
use overseer_policy::compile::compile;
use overseer_policy::engine::Engine;
use overseer_policy::request::{Outcome, ReasonCode};
use overseer_policy::workload::{self, WorkloadError};

#[test]
fn every_workload_decision_agrees_with_the_oracle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let w = match workload::generate(dir.path()) {
        Ok(w) => w,
        Err(WorkloadError::Unavailable(why)) => {
            println!("SKIPPED every_workload_decision_agrees_with_the_oracle: {why}");
            eprintln!("SKIPPED every_workload_decision_agrees_with_the_oracle: {why}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(w.requests.len(), 210_000);
    assert_eq!(w.policy.rules.len(), 100);

    let source = workload::to_policy_source(&w.policy).unwrap();
    let compiled = compile(&[source]);
    assert!(compiled.is_ok(), "{:?}", compiled.reports);
    assert_eq!(compiled.compiled.rule_count(), 100);
    let engine = Engine::new(compiled.compiled);

    // The stream is far shorter than the rate limit's hour: one fixed instant is faithful.
    let now: DateTime<Utc> = DateTime::from_timestamp(1_750_000_000, 0).unwrap();
    let mut agree = 0usize;
    let mut rate_limited = 0usize;
    let mut counts = [0usize; 3];
    let mut failures = Vec::new();
    for line in &w.requests {
        let d = engine
            .decide(&line.to_decision_request(), now)
            .expect("valid request");
        match line.check(&d) {
            Ok(()) => agree += 1,
            Err(e) if failures.len() < 10 => failures.push(e),
            Err(_) => {}
        }
        if d.reasons.first().map(|r| r.code) == Some(ReasonCode::RateLimited) {
            rate_limited += 1;
        }
        counts[match d.decision {
            Outcome::Allow => 0,
            Outcome::Deny => 1,
            Outcome::RequireApproval => 2,
        }] += 1;
    }
    assert!(
        failures.is_empty(),
        "{} disagreements, first: {failures:#?}",
        w.requests.len() - agree
    );
    assert_eq!(agree, 210_000);
    assert_eq!(rate_limited, 831);
    // Warm-up + measured expectations from WORKLOAD.md.
    assert_eq!(counts, [8_028 + 159_344, 1_501 + 30_774, 471 + 9_882]);
}
