//! Mapping throughput: the Gewerbeanmeldung → XGewerbeanzeige 2.2 mapping
//! on its fixture, (a) evaluated in this process, which is the cost per
//! document on one core, and (b) through the sandbox process as the
//! workers use it, which adds the round trip over a pipe.
//!
//!     cargo bench --bench mapping
//!
//! Criterion reports "thrpt" in documents per second (elements/s).

use std::path::Path;
use std::time::Duration;

use amtsbote::mapping::sandbox::{Sandbox, SandboxSettings};
use amtsbote::mapping::{Mapping, fixtures};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jaq_json::Val;

// As in the binary: the allocator belongs to the cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn gewerbeanmeldung() -> (Mapping, Vec<u8>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let mapping = Mapping::load(&root, Path::new("xgewerbeanzeige-2.2/gewerbeanmeldung.yaml")).unwrap();
    let input: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("xgewerbeanzeige-2.2/fixtures/gewerbeanmeldung.input.json")).unwrap(),
    )
    .unwrap();
    let input = serde_json::to_vec(&fixtures::prepare_input(input).unwrap()).unwrap();
    (mapping, input)
}

fn mapping_throughput(c: &mut Criterion) {
    let (mapping, input) = gewerbeanmeldung();
    let mut group = c.benchmark_group("gewerbeanmeldung");
    group.throughput(Throughput::Elements(1));
    group.bench_function("in_process", |b| {
        b.iter(|| {
            // Parsing belongs to the cost: the worker gets bytes.
            let value: Val = serde_json::from_slice(&input).unwrap();
            mapping.render(&value, 1_700_000_000).unwrap()
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Sandbox::new(SandboxSettings {
        processes: Some(1),
        program: Some(env!("CARGO_BIN_EXE_amtsbote").into()),
        ..SandboxSettings::default()
    })
    .unwrap();
    group.bench_function("sandbox", |b| {
        b.iter(|| runtime.block_on(sandbox.render(&mapping, &input, &[], 1_700_000_000)).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = mapping_throughput
}
criterion_main!(benches);
