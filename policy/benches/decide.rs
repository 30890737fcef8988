//! Decision and compile benchmarks.
//!
//! * `decide/workload-100`: the shared 100-rule workload (`../shared/bench/policy-workload/`),
//!   mapped into AgentPolicy form, replayed in stream order.
//! * `decide/synthetic-1k`, `decide/synthetic-10k`: [`workload::synthetic`] rule sets.
//! * `compile/synthetic-10k`: compiling 10,000 rules.
//!
//! After Criterion's runs, the workload's in-process protocol (WORKLOAD.md §6a) is followed for
//! each set: every call timed on its own, warm-up discarded, nearest-rank percentiles printed,
//! and (for the workload) every decision checked against the oracle.
//!
//! Run: `taskset -c 0 cargo bench -p overseer-policy --bench decide`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::Criterion;
use overseer_policy::compile::compile;
use overseer_policy::engine::Engine;
use overseer_policy::request::{DecisionRequest, ReasonCode};
use overseer_policy::workload::{self, Workload};

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000, 0).unwrap_or_default()
}

fn engine_for(sources: &[overseer_policy::compile::PolicySource]) -> Engine {
    let c = compile(sources);
    assert!(c.is_ok(), "{:?}", c.failures().collect::<Vec<_>>());
    Engine::new(c.compiled)
}

fn load_workload(dir: &std::path::Path) -> Option<Workload> {
    match workload::generate(dir) {
        Ok(w) => Some(w),
        Err(e) => {
            println!("workload benchmark SKIPPED: {e}");
            None
        }
    }
}

fn criterion_benches(c: &mut Criterion, w: Option<&Workload>) {
    {
        use overseer_policy::schema::cedar_input;
        let mut g = c.benchmark_group("parts");
        if let Some(w) = w {
            let engine =
                engine_for(&[workload::to_policy_source(&w.policy).expect("workload maps")]);
            let cond = w
                .requests
                .iter()
                .find(|r| r.tool == "tool_005")
                .unwrap()
                .to_decision_request();
            let plain = w
                .requests
                .iter()
                .find(|r| r.tool == "tool_050")
                .unwrap()
                .to_decision_request();
            let appr = w
                .requests
                .iter()
                .find(|r| r.tool == "tool_097")
                .unwrap()
                .to_decision_request();
            g.bench_function("cedar_input", |b| {
                b.iter(|| black_box(cedar_input(black_box(&cond), now())))
            });
            g.bench_function("decide-cond", |b| {
                b.iter(|| black_box(engine.decide(black_box(&cond), now())))
            });
            g.bench_function("decide-plain", |b| {
                b.iter(|| black_box(engine.decide(black_box(&plain), now())))
            });
            g.bench_function("decide-approval", |b| {
                b.iter(|| black_box(engine.decide(black_box(&appr), now())))
            });
            g.bench_function("digest", |b| b.iter(|| black_box(appr.digest())));
            g.bench_function("validate", |b| b.iter(|| black_box(cond.validate())));
            g.bench_function("uuid", |b| b.iter(|| black_box(uuid::Uuid::now_v7())));
        }
        g.finish();
    }
    let mut g = c.benchmark_group("decide");
    if let Some(w) = w {
        let engine = engine_for(&[workload::to_policy_source(&w.policy).expect("workload maps")]);
        let reqs: Vec<DecisionRequest> =
            w.requests.iter().map(|r| r.to_decision_request()).collect();
        let mut i = 0;
        g.bench_function("workload-100", |b| {
            b.iter(|| {
                let d = engine.decide(black_box(&reqs[i % reqs.len()]), now());
                i += 1;
                black_box(d)
            })
        });
    }
    for (name, n) in [("synthetic-1k", 1_000), ("synthetic-10k", 10_000)] {
        let (sources, reqs) = workload::synthetic(n, 10_000);
        let engine = engine_for(&sources);
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                let d = engine.decide(black_box(&reqs[i % reqs.len()]), now());
                i += 1;
                black_box(d)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    let (sources, _) = workload::synthetic(10_000, 0);
    g.bench_function("synthetic-10k", |b| {
        b.iter(|| black_box(compile(black_box(&sources))))
    });
    g.finish();
}

/// Nearest-rank percentile of sorted nanoseconds.
fn pct(sorted: &[u64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1] as f64 / 1000.0
}

fn protocol(
    name: &str,
    engine: &Engine,
    reqs: &[DecisionRequest],
    warmup: usize,
    check: impl Fn(usize, &overseer_policy::request::Decision) -> bool,
) {
    let mut times = Vec::with_capacity(reqs.len());
    let mut agree = 0usize;
    let mut limited = 0usize;
    let mut measured_wall = Duration::ZERO;
    let mut wall_start = None;
    for (i, r) in reqs.iter().enumerate() {
        if i == warmup {
            wall_start = Some(Instant::now());
        }
        let t = Instant::now();
        let d = engine.decide(r, now());
        let el = t.elapsed();
        times.push(el.as_nanos() as u64);
        if let Ok(d) = d {
            if check(i, &d) {
                agree += 1;
            }
            if d.reasons.first().map(|r| r.code) == Some(ReasonCode::RateLimited) {
                limited += 1;
            }
        }
    }
    if let Some(s) = wall_start {
        measured_wall = s.elapsed();
    }
    let mut m: Vec<u64> = times[warmup.min(times.len())..].to_vec();
    m.sort_unstable();
    if m.is_empty() {
        return;
    }
    let mean = m.iter().sum::<u64>() as f64 / m.len() as f64 / 1000.0;
    println!(
        "protocol {name}: n={} p50={:.2}us p90={:.2}us p99={:.2}us p99.9={:.2}us min={:.2}us max={:.2}us mean={:.2}us ops/s={:.0} agree={agree}/{} rate_limited={limited}",
        m.len(),
        pct(&m, 50.0),
        pct(&m, 90.0),
        pct(&m, 99.0),
        pct(&m, 99.9),
        m[0] as f64 / 1000.0,
        m[m.len() - 1] as f64 / 1000.0,
        mean,
        m.len() as f64 / measured_wall.as_secs_f64().max(1e-9),
        reqs.len(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--test" || a == "--list");
    let dir = std::env::temp_dir().join(format!("overseer-policy-workload-{}", std::process::id()));
    let w = load_workload(&dir);

    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    criterion_benches(&mut c, w.as_ref());
    c.final_summary();

    if !quick {
        if let Some(w) = &w {
            // A fresh engine: rate-limit state starts empty, as the protocol requires.
            let engine =
                engine_for(&[workload::to_policy_source(&w.policy).expect("workload maps")]);
            let reqs: Vec<DecisionRequest> =
                w.requests.iter().map(|r| r.to_decision_request()).collect();
            protocol("workload-100", &engine, &reqs, 10_000, |i, d| {
                w.requests[i].check(d).is_ok()
            });
        }
        for (name, n) in [("synthetic-1k", 1_000), ("synthetic-10k", 10_000)] {
            let (sources, reqs) = workload::synthetic(n, 210_000);
            let engine = engine_for(&sources);
            protocol(name, &engine, &reqs, 10_000, |_, _| true);
        }
        let (sources, _) = workload::synthetic(10_000, 0);
        let t = Instant::now();
        let c = compile(&sources);
        println!(
            "compile synthetic-10k: {:.3}s ({} rules, ok={})",
            t.elapsed().as_secs_f64(),
            c.compiled.rule_count(),
            c.is_ok()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
