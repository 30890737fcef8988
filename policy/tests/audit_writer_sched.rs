//! The audit writer thread's scheduling, read from `/proc`. A test binary of its own: no other
//! test's writer thread can start or stop while this one looks at the threads.
#![cfg(target_os = "linux")]

use overseer_policy::audit::{
    AuditConfig, AuditEvent, AuditInput, AuditLog, AuditMode, AuditResult, FileSinkConfig,
};

/// The writer thread runs `SCHED_BATCH` (its wake-ups do not preempt request threads), at the
/// default niceness. Read from `/proc/self/task/*/stat`: field 19 is the niceness, 41 the policy.
#[test]
fn the_writer_thread_is_scheduled_batch_at_default_niceness() {
    const SCHED_BATCH: &str = "3";
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open(AuditConfig {
        file: Some(FileSinkConfig::new(dir.path().join("audit.jsonl"))),
        ..AuditConfig::default()
    })
    .expect("open audit log");
    // Once a flush is answered the writer has named and scheduled itself.
    log.append(AuditEvent::decision(
        "decision-1",
        chrono::Utc::now(),
        AuditInput::default(),
        AuditResult::Allow,
        AuditMode::Enforce,
    ))
    .expect("append");
    log.flush().expect("flush");
    let mut writers = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let task = task.expect("task entry").path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() != "audit-writer" {
            continue;
        }
        let stat = std::fs::read_to_string(task.join("stat")).expect("stat");
        // The command name (field 2) is parenthesized; count the fields after it.
        let after = &stat[stat.rfind(')').expect("comm in stat") + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        writers.push((fields[19 - 3].to_owned(), fields[41 - 3].to_owned()));
    }
    log.shutdown().expect("shutdown");
    assert_eq!(writers.len(), 1, "one audit-writer thread: {writers:?}");
    let (nice, policy) = &writers[0];
    assert_eq!(policy, SCHED_BATCH, "the writer's scheduling policy");
    assert_eq!(nice, "0", "the writer's niceness");
}
