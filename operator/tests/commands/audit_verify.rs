//! `overseer audit verify` as a process, on logs written by the real audit writer: a rotated log
//! checked as one chain, where the chain starts (`--from-genesis`, `--since`), a deleted or
//! changed file named, `--json`, and bad invocations.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use chrono::{DateTime, Utc};
use overseer_policy::audit::{
    AuditConfig, AuditEvent, AuditInput, AuditLog, AuditMode, AuditResult, ChainHead,
    FileSinkConfig,
};
use serde_json::Value;

/// Appends `n` records to the log at `path` (resuming its chain), rotating past 4,000 bytes —
/// about eight records a file.
fn append_records(path: &Path, from: u64, n: u64) -> ChainHead {
    let log = AuditLog::open(AuditConfig {
        file: Some(FileSinkConfig {
            max_bytes: 4_000,
            ..FileSinkConfig::new(path)
        }),
        stdout: false,
        queue_capacity: 8,
        ..AuditConfig::default()
    })
    .expect("open the audit log");
    for i in from..from + n {
        let mut event = AuditEvent::decision(
            format!("decision-{i:06}"),
            DateTime::<Utc>::from_timestamp(1_800_000_000 + i as i64, 0).unwrap_or_default(),
            AuditInput {
                principal: Some("system:serviceaccount:support:agent".into()),
                tool: Some("refund".into()),
                target: Some(format!("order/{i}")),
                ..AuditInput::default()
            },
            AuditResult::Allow,
            AuditMode::Enforce,
        );
        event.reasons = vec![format!("policy support/refunds rule refund-small ({i})")];
        log.append(event).expect("append");
    }
    log.shutdown().expect("shut the audit log down")
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", self.stdout))
    }
}

fn verify(file: &Path, flags: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_overseer"))
        .args(["audit", "verify"])
        .args(flags)
        .arg(file)
        .env_remove("RUST_LOG")
        .output()
        .expect("run overseer");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn rotated(path: &Path, index: u32) -> PathBuf {
    let name = format!(
        "{}.{index:06}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    );
    path.with_file_name(name)
}

fn rotated_count(path: &Path) -> u32 {
    (1..).take_while(|i| rotated(path, *i).exists()).count() as u32
}

#[test]
fn a_rotated_log_is_verified_as_one_chain_from_the_genesis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let head = append_records(&path, 0, 60);
    let rotated_files = rotated_count(&path);
    assert!(rotated_files >= 4, "the log rotated: {rotated_files} files");

    let run = verify(&path, &[]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let files = rotated_files + 1;
    assert!(
        run.stdout.contains(&format!(
            "chain intact: 60 records in {files} files (seq 1 to 60), last hash {}",
            head.last_hash
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("it starts at the genesis"),
        "{}",
        run.stdout
    );

    let run = verify(&path, &["--from-genesis", "--json"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let json = run.json();
    assert_eq!(json["ok"], true);
    assert_eq!(json["intact"], true);
    assert_eq!(json["records"], 60);
    assert_eq!(json["firstSeq"], 1);
    assert_eq!(json["lastSeq"], 60);
    assert_eq!(json["startsAtGenesis"], true);
    assert_eq!(json["lastHash"], head.last_hash.as_str());
    assert_eq!(json["files"].as_array().map(Vec::len), Some(files as usize));

    // The active file alone starts mid-chain, and says so.
    let run = verify(&path, &["--only-this-file"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("in 1 file ("), "{}", run.stdout);
    assert!(run.stdout.contains("not at the genesis"), "{}", run.stdout);
    let run = verify(&path, &["--only-this-file", "--from-genesis"]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("does not start at the genesis"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_deleted_file_is_seen_and_from_genesis_fails_on_a_cut_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    append_records(&path, 0, 60);

    // A file gone from the middle breaks the chain, and the first file after the gap is named.
    let middle = dir.path().join("middle");
    std::fs::create_dir(&middle).expect("mkdir");
    for name in ["audit.jsonl", "audit.jsonl.000001", "audit.jsonl.000003"] {
        std::fs::copy(dir.path().join(name), middle.join(name)).expect("copy");
    }
    let gap = middle.join("audit.jsonl");
    let run = verify(&gap, &[]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("chain NOT intact")
            && run.stderr.contains("audit.jsonl.000003:1: record seq")
            && run.stderr.contains("chain broken"),
        "{}",
        run.stderr
    );

    // The oldest file gone: what is left still links up, but starts after the genesis. That
    // looks the same as pruning, so it passes unless a start is required.
    std::fs::remove_file(rotated(&path, 1)).expect("remove the oldest file");
    let run = verify(&path, &[]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("not at the genesis: the records before it are not in these files"),
        "{}",
        run.stdout
    );
    let run = verify(&path, &["--from-genesis"]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("does not start at the genesis: its first record is seq"),
        "{}",
        run.stderr
    );
    let json = verify(&path, &["--from-genesis", "--json"]).json();
    assert_eq!(json["ok"], false);
    assert_eq!(json["intact"], true);
    assert_eq!(json["startsAtGenesis"], false);
    assert!(json["firstSeq"].as_u64().is_some_and(|s| s > 1), "{json}");

    // The active file gone: the rotated files are checked, and the output says the newest
    // records are missing.
    std::fs::remove_file(&path).expect("remove the active file");
    let run = verify(&path, &[]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("the active file is missing"),
        "{}",
        run.stdout
    );
}

#[test]
fn since_a_kept_hash_proves_the_records_after_it_are_all_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    // A checkpoint after 30 records: the last hash an earlier check printed.
    let checkpoint = append_records(&path, 0, 30);
    let run = verify(&path, &["--json"]);
    assert_eq!(run.json()["lastHash"], checkpoint.last_hash.as_str());
    let head = append_records(&path, 30, 30);

    let run = verify(&path, &["--since", &checkpoint.last_hash]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("it holds everything since seq 30"),
        "{}",
        run.stdout
    );
    // Hashes are matched whatever their case.
    let upper = checkpoint.last_hash.to_ascii_uppercase();
    assert_eq!(verify(&path, &["--since", &upper]).code, Some(0));
    // The newest record is a checkpoint too.
    let json = verify(&path, &["--since", &head.last_hash, "--json"]).json();
    assert_eq!(json["ok"], true);
    assert_eq!(json["sinceSeq"], 60);

    // Pruning the files before the checkpoint keeps --since passing ...
    let mut pruned = 0;
    for i in 1..=rotated_count(&path) {
        let file = rotated(&path, i);
        let last_seq = std::fs::read_to_string(&file)
            .expect("read")
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
            .and_then(|r| r["seq"].as_u64())
            .expect("a last record");
        if last_seq < 30 {
            std::fs::remove_file(&file).expect("prune");
            pruned += 1;
        }
    }
    assert!(pruned >= 2, "pruned {pruned} files");
    let run = verify(&path, &["--since", &checkpoint.last_hash]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("not at the genesis"), "{}", run.stdout);

    // ... and cutting records after it from the front does not.
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        let file = entry.expect("entry").path();
        if file != path {
            std::fs::remove_file(&file).expect("remove a rotated file");
        }
    }
    let run = verify(&path, &["--since", &checkpoint.last_hash]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "no record of the chain has hash {}",
            checkpoint.last_hash
        )),
        "{}",
        run.stderr
    );
    let json = verify(&path, &["--since", &checkpoint.last_hash, "--json"]).json();
    assert_eq!(
        (&json["ok"], &json["intact"]),
        (&Value::Bool(false), &Value::Bool(true))
    );
    assert!(json["sinceSeq"].is_null(), "{json}");
}

#[test]
fn a_changed_record_is_named_by_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    append_records(&path, 0, 40);
    let second = rotated(&path, 2);
    let text = std::fs::read_to_string(&second).expect("read");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[1] = lines[1].replacen("\"result\":\"allow\"", "\"result\":\"deny\"", 1);
    assert_ne!(
        lines[1],
        text.lines().nth(1).unwrap_or_default(),
        "the record changed"
    );
    std::fs::write(&second, lines.join("\n") + "\n").expect("write");

    let run = verify(&path, &[]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("audit.jsonl.000002:2: record seq")
            && run.stderr.contains("hash mismatch"),
        "{}",
        run.stderr
    );
    let json = verify(&path, &["--json"]).json();
    assert_eq!(json["ok"], false);
    assert_eq!(json["intact"], false);
    assert_eq!(json["broken"]["line"], 2);
    assert_eq!(json["broken"]["reason"], "HashMismatch");
    assert!(
        json["broken"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("audit.jsonl.000002")),
        "{json}"
    );
}

#[test]
fn bad_invocations_fail_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nothing.jsonl");
    let run = verify(&path, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("no such file, and no rotated files"),
        "{}",
        run.stderr
    );
    let json = verify(&path, &["--json"]).json();
    assert_eq!(
        (&json["ok"], &json["intact"]),
        (&Value::Bool(false), &Value::Bool(false))
    );

    // Usage errors exit with EX_USAGE (64), as every `overseer` subcommand does.
    let run = verify(&path, &["--since", "not-a-hash"]);
    assert_eq!(run.code, Some(64));
    assert!(run.stderr.contains("64 hex digits"), "{}", run.stderr);
    let hash = "ab".repeat(32);
    let run = verify(&path, &["--since", &hash, "--from-genesis"]);
    assert_eq!(run.code, Some(64));
    assert!(run.stderr.contains("cannot be used with"), "{}", run.stderr);
}
