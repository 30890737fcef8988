//! Audit log append throughput: events appended from one producer and written, hash-chained, to
//! a temporary file (flushed with fsync at the end of every batch of 10,000).
//!
//! `cargo bench -p overseer-policy --bench audit`

use std::hint::black_box;

use chrono::{DateTime, Utc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use overseer_policy::audit::{
    AuditConfig, AuditEvent, AuditInput, AuditLog, AuditMode, AuditResult, FileSinkConfig,
};

const BATCH: u64 = 10_000;

fn event(i: u64) -> AuditEvent {
    let mut e = AuditEvent::decision(
        format!("0190f3a2-7c1e-7b3a-9d4e-{i:012}"),
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
        AuditInput {
            principal: Some("system:serviceaccount:support:support-agent".into()),
            tool: Some("refund_order".into()),
            server: Some("payments".into()),
            target: Some("order/12345".into()),
            arguments_digest: Some("5f".repeat(32)),
            user: Some("alice@example.com".into()),
            tenant: Some("acme".into()),
            session: Some("sess-42".into()),
            trace_id: None,
        },
        AuditResult::Allow,
        AuditMode::Enforce,
    );
    e.reasons = vec!["AgentPolicy support/support-agent rule refund-small allowed the call".into()];
    e.policy_revision = Some("support/support-agent@17".into());
    e
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open(AuditConfig {
        file: Some(FileSinkConfig::new(dir.path().join("audit.log"))),
        stdout: false,
        queue_capacity: 8192,
        ..AuditConfig::default()
    })
    .expect("open audit log");
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(20);
    group.bench_function("append_10k_then_flush", |b| {
        b.iter_batched(
            || (0..BATCH).map(event).collect::<Vec<_>>(),
            |events| {
                for e in events {
                    log.append(e).expect("append");
                }
                black_box(log.flush().expect("flush"))
            },
            BatchSize::PerIteration,
        );
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_one", |b| {
        b.iter_batched(
            || event(7),
            |e| log.append(e).expect("append"),
            BatchSize::SmallInput,
        );
    });
    group.finish();
    drop(log);
}

criterion_group!(benches, append);
criterion_main!(benches);
