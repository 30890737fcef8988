//! Rendering speed per backend (target: ≤ 100 µs for any backend's objects).

#[path = "../tests/fixtures/mod.rs"]
mod fixtures;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use overseer_crds::runway::BackendKind;
use runway_api::{backend_for, revision_hash};

fn render(c: &mut Criterion) {
    let owner = fixtures::owner();
    let mut group = c.benchmark_group("render");
    let cases = [
        ("vllm", fixtures::gpu(BackendKind::Vllm), 2),
        ("vllm-cpu", fixtures::cpu(BackendKind::Vllm), 1),
        ("kaito-workspace", fixtures::gpu(BackendKind::Kaito), 1),
        ("kaito-inferenceset", fixtures::gpu(BackendKind::Kaito), 3),
        ("llm-d", fixtures::gpu(BackendKind::LlmD), 2),
        (
            "llm-d-disaggregated",
            fixtures::disaggregated(BackendKind::LlmD),
            2,
        ),
        ("dynamo", fixtures::gpu(BackendKind::Dynamo), 2),
        (
            "dynamo-disaggregated",
            fixtures::disaggregated(BackendKind::Dynamo),
            2,
        ),
        ("kserve", fixtures::gpu(BackendKind::Kserve), 2),
    ];
    for (name, spec, replicas) in &cases {
        let minted = fixtures::mint(spec);
        let input = fixtures::input(spec, &minted, *replicas, &owner);
        let backend = backend_for(spec.engine.backend);
        group.bench_function(*name, |b| b.iter(|| backend.render(black_box(&input))));
    }
    let spec = fixtures::gpu(BackendKind::Vllm);
    group.bench_function("revision_hash", |b| {
        b.iter(|| revision_hash(black_box(&spec)))
    });
    group.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
