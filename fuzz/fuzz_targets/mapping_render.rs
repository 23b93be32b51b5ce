//! The mapping evaluator: every shipped mapping renders any queued message
//! (seeded with the fixtures' inputs) to a document or to an error, and
//! never panics; the message parses as jaq_json parses it. Runaway mapping
//! programs are the sandbox's business (time, memory and output limits in
//! a child process), not this target's.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use amtsbote::mapping::Mapping;
use libfuzzer_sys::fuzz_target;

static MAPPINGS: LazyLock<Vec<Mapping>> = LazyLock::new(|| {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings");
    let mut mappings = Vec::new();
    for dir in std::fs::read_dir(&root).expect("the mappings directory") {
        let dir = dir.unwrap().path();
        if dir.ends_with("codelists") {
            continue;
        }
        for file in std::fs::read_dir(&dir).into_iter().flatten() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "yaml") {
                let relative = file.strip_prefix(&root).unwrap();
                mappings.push(Mapping::load(&root, relative).unwrap_or_else(|e| panic!("{}: {e}", relative.display())));
            }
        }
    }
    assert!(!mappings.is_empty());
    mappings
});

fuzz_target!(|message: &[u8]| {
    // The sandbox's parser, whose strings share the message's bytes,
    // parses as jaq_json's serde support does.
    let parsed = amtsbote::mapping::input::parse(&bytes::Bytes::copy_from_slice(message));
    let by_serde = serde_json::from_slice::<jaq_json::Val>(message);
    assert_eq!(parsed.as_ref().ok(), by_serde.as_ref().ok());
    let Ok(submission) = parsed else { return };
    for mapping in MAPPINGS.iter() {
        let _ = mapping.render(&submission, 1_763_630_040);
    }
});
