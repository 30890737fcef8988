//! `overseer check` as a process, the way a CI pipeline runs it: the exit status is the decision
//! (0 allow, 1 deny, 2 approval required, 3 could not decide), with the reasons printed.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn check(policies: &Path, request: &str, flags: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_overseer"))
        .arg("check")
        .arg("--policies")
        .arg(policies)
        .args(["--request", "-"])
        .args(flags)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run overseer");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.as_bytes())
        .expect("write the request");
    let out = child.wait_with_output().expect("wait");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn support_bot(tool: &str) -> String {
    format!(
        r#"{{"principal": {{"id": "support-bot-7", "namespace": "default"}}, "tool": "{tool}", "arguments": {{"query": "refund"}}}}"#
    )
}

#[test]
fn the_exit_status_is_the_decision_and_the_reasons_are_printed() {
    let run = check(&examples(), &support_bot("tickets_search"), &[]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with("allow (policy revision "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("default/support-agent#read-tickets: Support agents may read tickets."),
        "{}",
        run.stdout
    );

    let run = check(&examples(), &support_bot("billing_read"), &[]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("#no-billing-data"), "{}", run.stdout);

    let run = check(&examples(), &support_bot("payments_refund"), &[]);
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("#refunds-need-approval"),
        "{}",
        run.stdout
    );

    let run = check(&examples(), &support_bot("payments_refund"), &["--json"]);
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    let decision: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(decision["decision"], "require_approval");
    assert_eq!(decision["reasons"][0]["rule"], "refunds-need-approval");
    assert!(
        decision["policyRevision"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
}

#[test]
fn what_cannot_be_decided_exits_3_and_says_why() {
    // A request that is not JSON, or not a valid request.
    let run = check(&examples(), "{bad", &[]);
    assert_eq!(run.code, Some(3), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("is not a valid decision request"),
        "{}",
        run.stderr
    );
    let run = check(
        &examples(),
        r#"{"principal": {"id": "support-bot-7"}, "tool": ""}"#,
        &[],
    );
    assert_eq!(run.code, Some(3), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("tool must not be empty"),
        "{}",
        run.stderr
    );

    // A policy directory with one broken file is not decided from the rest: CI must not pass
    // on a policy set that would not load.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        examples().join("support-agent.yaml"),
        dir.path().join("support-agent.yaml"),
    )
    .expect("copy");
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: agents.overseer.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: broken, namespace: default}\nspec:\n  tools: [{name: x, tools: [a], effect: Sometimes}]\n",
    )
    .expect("write");
    let run = check(dir.path(), &support_bot("tickets_search"), &[]);
    assert_eq!(run.code, Some(3), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("broken.yaml") && run.stderr.contains("unknown variant `Sometimes`"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "no decision printed: {}", run.stdout);

    let run = check(
        &dir.path().join("missing"),
        &support_bot("tickets_search"),
        &[],
    );
    assert_eq!(run.code, Some(3), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("cannot read directory"),
        "{}",
        run.stderr
    );
}
