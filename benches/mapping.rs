//! Mapping throughput: the Gewerbeanmeldung → XGewerbeanzeige 2.2 mapping
//! on its fixture, (a) evaluated in this process, which is the cost per
//! document on one core, (b) through the sandbox process as the workers
//! use it, which adds the round trip over a pipe (one request at a time,
//! and as many at once as a process takes), and (c) the same
//! document written by a hand-written serializer
//! (`reference/gewerbeanmeldung.rs`: serde and quick-xml), checked to
//! write the mapping's bytes exactly. The last line is the mapping
//! engine's rate as a share of the hand-written one's.
//!
//!     cargo bench --bench mapping
//!
//! Criterion reports "thrpt" in documents per second (elements/s).

use std::path::Path;
use std::time::Duration;

use amtsbote::mapping::sandbox::{Sandbox, SandboxSettings};
use amtsbote::mapping::{Mapping, fixtures, input};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};

#[path = "reference/gewerbeanmeldung.rs"]
mod reference;

// As in the binary: the allocator belongs to the cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn gewerbeanmeldung() -> (Mapping, Bytes) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let mapping = Mapping::load(&root, Path::new("xgewerbeanzeige-2.2/gewerbeanmeldung.yaml")).unwrap();
    let input: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("xgewerbeanzeige-2.2/fixtures/gewerbeanmeldung.input.json")).unwrap(),
    )
    .unwrap();
    let input = serde_json::to_vec(&fixtures::prepare_input(input).unwrap()).unwrap();
    (mapping, input.into())
}

fn document(mapping: &Mapping, input: &Bytes) -> Vec<u8> {
    // Parsing belongs to the cost: the sandbox gets bytes.
    let value = input::parse(input).unwrap();
    match mapping.render(&value, 1_700_000_000).unwrap() {
        amtsbote_connector::Payload::Document { body, .. } => body.to_vec(),
        amtsbote_connector::Payload::Files(_) => unreachable!("an XML mapping"),
    }
}

fn code_lists() -> reference::CodeLists {
    reference::CodeLists::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/codelists"))
}

fn mapping_throughput(c: &mut Criterion) {
    let (mapping, input) = gewerbeanmeldung();
    let lists = code_lists();
    assert_eq!(
        String::from_utf8(reference::render(&input, &lists)).unwrap(),
        String::from_utf8(document(&mapping, &input)).unwrap(),
        "the hand-written serializer writes the mapping's document"
    );
    let mut group = c.benchmark_group("gewerbeanmeldung");
    group.throughput(Throughput::Elements(1));
    group.bench_function("in_process", |b| b.iter(|| document(&mapping, &input)));
    group.bench_function("hand_written", |b| b.iter(|| reference::render(&input, &lists)));

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
    // As the workers use it: four requests in the process's pipe at once
    // (the default `requests_per_process`).
    group.throughput(Throughput::Elements(4));
    group.bench_function("sandbox_pipelined", |b| {
        let render = || sandbox.render(&mapping, &input, &[], 1_700_000_000);
        b.iter(|| {
            let (a, b, c, d) = runtime.block_on(async { tokio::join!(render(), render(), render(), render()) });
            [a, b, c, d].into_iter().for_each(|r| {
                r.unwrap();
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = mapping_throughput
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratio_to_hand_written();
}

/// The mapping engine's documents per second as a share of the
/// hand-written serializer's, each the best of five timed rounds on this
/// core, one after the other.
fn ratio_to_hand_written() {
    let (mapping, input) = gewerbeanmeldung();
    let lists = code_lists();
    let best = |work: &dyn Fn()| {
        (0..5)
            .map(|_| {
                let started = std::time::Instant::now();
                for _ in 0..2_000 {
                    work();
                }
                started.elapsed()
            })
            .min()
            .unwrap()
    };
    let engine = best(&|| drop(std::hint::black_box(document(&mapping, &input))));
    let by_hand = best(&|| drop(std::hint::black_box(reference::render(&input, &lists))));
    println!(
        "gewerbeanmeldung mapping engine ÷ hand-written serializer: {:.1} % ({:.0} vs {:.0} documents/s)",
        100.0 * by_hand.as_secs_f64() / engine.as_secs_f64(),
        2_000.0 / engine.as_secs_f64(),
        2_000.0 / by_hand.as_secs_f64()
    );
}
