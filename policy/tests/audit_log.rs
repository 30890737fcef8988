//! The audit log through its public API: backpressure without loss, the hash chain, tampering
//! and deletion detection, rotation and resuming after a restart.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use overseer_policy::audit::{
    AuditConfig, AuditError, AuditEvent, AuditInput, AuditLog, AuditMode, AuditRecord, AuditResult,
    BreakReason, FileSinkConfig, GENESIS_HASH, VerifyError, rotated_files, verify, verify_chain,
    verify_chain_visiting, verify_from,
};

fn event(i: u64) -> AuditEvent {
    let result = match i % 4 {
        0 => AuditResult::Allow,
        1 => AuditResult::Deny,
        2 => AuditResult::RequireApproval,
        _ => AuditResult::Malformed,
    };
    let mut e = AuditEvent::decision(
        format!("decision-{i:06}"),
        DateTime::from_timestamp(1_800_000_000 + i as i64, 123_456_000).unwrap_or_default(),
        AuditInput {
            principal: Some("system:serviceaccount:support:agent".into()),
            tool: Some("refund".into()),
            server: Some("payments".into()),
            target: Some(format!("order/{i}")),
            arguments_digest: Some("ab".repeat(32)),
            user: Some("alice".into()),
            tenant: Some("acme".into()),
            session: Some("s-1".into()),
            trace_id: None,
        },
        result,
        AuditMode::Enforce,
    );
    e.reasons = vec![format!("policy support/refunds rule refund-small ({i})")];
    e.policy_revision = Some("rev-7".into());
    e
}

fn file_log(path: &Path, queue: usize) -> AuditLog {
    AuditLog::open(AuditConfig {
        file: Some(FileSinkConfig::new(path)),
        stdout: false,
        queue_capacity: queue,
        ..AuditConfig::default()
    })
    .expect("open audit log")
}

fn write_records(path: &Path, n: u64) {
    let log = file_log(path, 16);
    for i in 0..n {
        log.append(event(i)).expect("append");
    }
    log.shutdown().expect("shutdown");
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read log")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write log");
}

fn broken(err: VerifyError) -> (u64, Option<u64>, BreakReason) {
    match err {
        VerifyError::Broken {
            line, seq, reason, ..
        } => (line, seq, reason),
        VerifyError::Io { source, .. } => {
            panic!("expected a broken record, got an IO error: {source}")
        }
    }
}

#[test]
fn n_decisions_from_many_threads_yield_n_records_with_a_valid_chain() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 250;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    // A queue of 2 keeps producers blocked on backpressure most of the time.
    let log = Arc::new(file_log(&path, 2));
    let max_depth = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (log, max_depth) = (log.clone(), max_depth.clone());
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    log.append(event(t * PER_THREAD + i))
                        .expect("append never fails");
                    max_depth.fetch_max(log.queue_depth(), std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("producer");
    }
    let head = log.flush().expect("flush");
    assert_eq!(head.next_seq, THREADS * PER_THREAD + 1);
    assert_eq!(log.records_written(), THREADS * PER_THREAD);
    assert!(
        max_depth.load(std::sync::atomic::Ordering::Relaxed) <= 2,
        "the queue is bounded"
    );
    assert_eq!(log.queue_capacity(), 2);

    let report = verify(&path).expect("valid chain");
    assert_eq!(report.records, THREADS * PER_THREAD);
    assert!(report.starts_at_genesis());
    assert_eq!(report.last_hash, head.last_hash);
    // Every decision is there exactly once.
    let ids: BTreeSet<String> = lines(&path)
        .iter()
        .map(|l| {
            serde_json::from_str::<AuditRecord>(l)
                .expect("record")
                .decision_id
        })
        .collect();
    assert_eq!(ids.len() as u64, THREADS * PER_THREAD);
    assert_eq!(
        ids,
        (0..THREADS * PER_THREAD)
            .map(|i| format!("decision-{i:06}"))
            .collect()
    );
}

#[test]
fn records_are_opa_shaped_and_never_hold_raw_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    write_records(&path, 3);
    let all = lines(&path);
    let value: serde_json::Value = serde_json::from_str(&all[2]).expect("json");
    // Fields in OPA's order, `hash` last (the hash covers the line without it).
    let order = [
        "decision_id",
        "timestamp",
        "path",
        "input",
        "result",
        "reasons",
        "policy_revision",
        "mode",
        "seq",
        "prev_hash",
        "hash",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|k| all[2].find(&format!("\"{k}\":")).expect("field present"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(value.as_object().expect("object").len(), order.len());
    assert_eq!(value["path"], "overseer/decision");
    assert_eq!(value["result"], "require_approval");
    assert_eq!(value["mode"], "enforce");
    assert_eq!(value["timestamp"], "2027-01-15T08:00:02.123456Z");
    assert_eq!(value["input"]["arguments_digest"], "ab".repeat(32));
    assert!(value["input"].get("arguments").is_none());
    assert_eq!(value["seq"], 3);
    let first: AuditRecord = serde_json::from_str(&all[0]).expect("record");
    let second: AuditRecord = serde_json::from_str(&all[1]).expect("record");
    assert_eq!(first.prev_hash, GENESIS_HASH);
    assert_eq!(second.prev_hash, first.hash);
    assert_eq!(first.result, AuditResult::Allow);
}

#[test]
fn tampering_one_byte_of_a_middle_record_is_detected_at_that_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    write_records(&path, 10);
    let original = lines(&path);
    // Every byte of the fifth record matters, whichever field it falls in.
    for position in [
        20,
        original[4].find("alice").unwrap_or(0),
        original[4].len() - 3,
    ] {
        let mut tampered = original.clone();
        let mut bytes = tampered[4].clone().into_bytes();
        bytes[position] = if bytes[position] == b'a' { b'b' } else { b'a' };
        tampered[4] = String::from_utf8(bytes).expect("ascii");
        write_lines(&path, &tampered);
        let (line, seq, reason) = broken(verify(&path).unwrap_err());
        assert_eq!((line, seq), (5, Some(5)), "byte {position}: {reason}");
        assert!(
            matches!(reason, BreakReason::HashMismatch { .. }),
            "{reason}"
        );
    }
    // Changing the decision while keeping the line well-formed is caught the same way.
    let mut tampered = original.clone();
    tampered[4] = tampered[4].replace("\"result\":\"allow\"", "\"result\":\"deny\"");
    assert_ne!(tampered[4], original[4]);
    write_lines(&path, &tampered);
    let err = verify(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains(":5: record seq 5 breaks the chain"),
        "{err}"
    );
    // A line that is no longer JSON.
    let mut tampered = original.clone();
    tampered[4].insert(0, 'x');
    write_lines(&path, &tampered);
    let (line, _, reason) = broken(verify(&path).unwrap_err());
    assert_eq!(line, 5);
    assert!(matches!(reason, BreakReason::Malformed(_)), "{reason}");
}

#[test]
fn deleting_or_reordering_records_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    write_records(&path, 10);
    let original = lines(&path);

    let mut deleted = original.clone();
    deleted.remove(4);
    write_lines(&path, &deleted);
    let (line, seq, reason) = broken(verify(&path).unwrap_err());
    assert_eq!((line, seq), (5, Some(6)));
    assert_eq!(
        reason,
        BreakReason::SeqGap {
            expected: 5,
            found: 6
        }
    );

    let mut swapped = original.clone();
    swapped.swap(3, 4);
    write_lines(&path, &swapped);
    let (line, seq, _) = broken(verify(&path).unwrap_err());
    assert_eq!((line, seq), (4, Some(5)));

    // Deleting the first record: the file no longer starts at genesis, which verify_from catches.
    write_lines(&path, &original[1..]);
    let report = verify(&path).expect("internally consistent");
    assert!(!report.starts_at_genesis());
    let (line, seq, reason) = broken(verify_from(&path, Some(GENESIS_HASH)).unwrap_err());
    assert_eq!((line, seq), (1, Some(2)));
    assert!(
        matches!(reason, BreakReason::ChainBroken { .. }),
        "{reason}"
    );

    // A torn last line.
    let mut torn = std::fs::read(dir.path().join("audit.log")).expect("read");
    torn.extend_from_slice(b"{\"decision_id\":\"x\"");
    std::fs::write(&path, torn).expect("write");
    let (line, _, reason) = broken(verify(&path).unwrap_err());
    assert_eq!((line, reason), (10, BreakReason::Unterminated));
}

#[test]
fn rotation_keeps_the_chain_across_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(AuditConfig {
        file: Some(FileSinkConfig {
            max_bytes: 4_000,
            ..FileSinkConfig::new(&path)
        }),
        stdout: false,
        queue_capacity: 8,
        ..AuditConfig::default()
    })
    .expect("open");
    for i in 0..60 {
        log.append(event(i)).expect("append");
    }
    let head = log.shutdown().expect("shutdown");

    let files = rotated_files(&path).expect("list");
    assert!(files.len() >= 4, "{files:?}");
    assert_eq!(files.last(), Some(&path));
    assert!(files[0].to_string_lossy().ends_with("audit.log.000001"));
    for f in &files {
        assert!(std::fs::metadata(f).expect("stat").len() <= 4_000);
    }
    let report = verify_chain(&files, Some(GENESIS_HASH)).expect("chain holds across rotation");
    assert_eq!(report.records, 60);
    assert_eq!(report.last_hash, head.last_hash);
    assert!(report.starts_at_genesis());

    // Visiting sees every record once, in chain order, with the hash the next one links to.
    let mut seen: Vec<(u64, String)> = Vec::new();
    verify_chain_visiting(&files, Some(GENESIS_HASH), |seq, hash| {
        seen.push((seq, hash.to_owned()))
    })
    .expect("visit");
    assert_eq!(
        seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=60).collect::<Vec<_>>()
    );
    assert_eq!(
        seen.last().map(|(_, h)| h.as_str()),
        Some(head.last_hash.as_str())
    );

    // Each rotated file verifies on its own, and links to the one before.
    let first = verify(&files[0]).expect("first file");
    let second = verify_from(&files[1], Some(&first.last_hash)).expect("second links to first");
    assert_eq!(
        second.first_prev_hash.as_deref(),
        Some(first.last_hash.as_str())
    );
    assert_eq!(second.first_seq, first.last_seq.map(|s| s + 1));
    let (line, _, reason) = broken(verify_from(&files[1], Some(GENESIS_HASH)).unwrap_err());
    assert_eq!(line, 1);
    assert!(matches!(reason, BreakReason::ChainBroken { .. }));

    // Losing a whole rotated file in the middle is detected.
    let mut missing: Vec<PathBuf> = files.clone();
    missing.remove(1);
    let err = verify_chain(&missing, None).unwrap_err();
    assert!(matches!(err, VerifyError::Broken { line: 1, .. }), "{err}");
}

#[test]
fn old_rotated_files_can_be_pruned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(AuditConfig {
        file: Some(FileSinkConfig {
            max_bytes: 2_000,
            max_rotated_files: Some(2),
            ..FileSinkConfig::new(&path)
        }),
        stdout: false,
        queue_capacity: 8,
        ..AuditConfig::default()
    })
    .expect("open");
    for i in 0..60 {
        log.append(event(i)).expect("append");
    }
    drop(log);
    let files = rotated_files(&path).expect("list");
    assert_eq!(files.len(), 3, "{files:?}");
    let report = verify_chain(&files, None).expect("what remains still verifies");
    assert!(!report.starts_at_genesis());
    assert_eq!(report.last_seq, Some(60));
}

#[test]
fn resuming_after_a_restart_keeps_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    write_records(&path, 5);
    let before = verify(&path).expect("valid");
    let log = file_log(&path, 4);
    for i in 5..9 {
        log.append(event(i)).expect("append");
    }
    let head = log.flush().expect("flush");
    assert_eq!(head.next_seq, 10);
    drop(log);
    let after = verify_from(&path, Some(GENESIS_HASH)).expect("one chain");
    assert_eq!(after.records, 9);
    let sixth: AuditRecord = serde_json::from_str(&lines(&path)[5]).expect("record");
    assert_eq!(sixth.prev_hash, before.last_hash);
    assert_eq!(sixth.seq, 6);
}

#[test]
fn a_torn_last_line_is_cut_on_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    write_records(&path, 3);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(b"{\"decision_id\":\"half-writ");
    std::fs::write(&path, bytes).expect("write");
    let log = file_log(&path, 4);
    log.append(event(3)).expect("append");
    drop(log);
    let report = verify_from(&path, Some(GENESIS_HASH)).expect("valid after the cut");
    assert_eq!(report.records, 4);
}

#[test]
fn a_broken_last_record_refuses_to_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    write_records(&path, 3);
    let mut all = lines(&path);
    all[2] = all[2].replace("alice", "mallory");
    write_lines(&path, &all);
    let err = AuditLog::open(AuditConfig {
        file: Some(FileSinkConfig::new(&path)),
        ..AuditConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, AuditError::Resume { line: 3, .. }), "{err}");
    assert!(err.to_string().contains("move it aside"), "{err}");
}

#[test]
fn resume_after_a_crash_between_rotation_steps() {
    // The active file was renamed away but the new one not yet written: the chain continues from
    // the newest rotated file.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    write_records(&path, 4);
    std::fs::rename(&path, dir.path().join("audit.log.000001")).expect("rename");
    let log = file_log(&path, 4);
    log.append(event(4)).expect("append");
    drop(log);
    let files = rotated_files(&path).expect("list");
    assert_eq!(files.len(), 2);
    let report = verify_chain(&files, Some(GENESIS_HASH)).expect("one chain");
    assert_eq!(report.records, 5);
}

#[test]
fn async_producers_are_recorded_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let log = Arc::new(file_log(&path, 3));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let head = runtime.block_on(async {
        let tasks: Vec<_> = (0..4u64)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    for i in 0..100 {
                        log.append_async(event(t * 100 + i)).await.expect("append");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        log.flush_async().await.expect("flush")
    });
    assert_eq!(head.next_seq, 401);
    assert_eq!(verify(&path).expect("valid").records, 400);
}

#[test]
fn try_append_and_closed_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let log = file_log(&path, 64);
    assert!(log.try_append(event(0)).is_ok());
    assert_eq!(log.flush().expect("flush").next_seq, 2);
    assert_eq!(log.last_error(), None);
    assert_eq!(log.write_errors(), 0);
    drop(log);
    assert_eq!(verify(&path).expect("valid").records, 1);
}

#[test]
fn bad_configuration_and_missing_files_are_errors_not_panics() {
    let err = AuditLog::open(AuditConfig::default()).unwrap_err();
    assert!(matches!(err, AuditError::Config(_)), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let err = AuditLog::open(AuditConfig {
        file: Some(FileSinkConfig::new(
            dir.path().join("no/such/dir/audit.log"),
        )),
        ..AuditConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, AuditError::Io { .. }), "{err}");
    let err = verify(&dir.path().join("missing.log")).unwrap_err();
    assert!(matches!(err, VerifyError::Io { .. }), "{err}");
    // An empty file is an empty, valid chain.
    let empty = dir.path().join("empty.log");
    std::fs::write(&empty, b"").expect("write");
    let report = verify(&empty).expect("empty is valid");
    assert_eq!(
        (report.records, report.last_hash.as_str()),
        (0, GENESIS_HASH)
    );
    // Arbitrary bytes never panic the verifier.
    std::fs::write(&empty, b"\xff\xfe\n{}\n").expect("write");
    assert!(matches!(
        verify(&empty).unwrap_err(),
        VerifyError::Broken { line: 1, .. }
    ));
}

#[test]
fn timestamps_are_rfc3339_utc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    write_records(&path, 1);
    let record: AuditRecord = serde_json::from_str(&lines(&path)[0]).expect("record");
    let expected: DateTime<Utc> = "2027-01-15T08:00:00.123456Z".parse().expect("time");
    assert_eq!(record.timestamp, expected);
}

#[test]
fn resume_finds_the_last_record_even_when_it_is_larger_than_the_read_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let log = file_log(&path, 4);
    let mut big = event(0);
    big.reasons = vec!["r".repeat(200_000)];
    log.append(event(0)).expect("append");
    log.append(big).expect("append");
    drop(log);
    let log = file_log(&path, 4);
    log.append(event(2)).expect("append");
    drop(log);
    assert_eq!(
        verify_from(&path, Some(GENESIS_HASH))
            .expect("one chain")
            .records,
        3
    );
}
