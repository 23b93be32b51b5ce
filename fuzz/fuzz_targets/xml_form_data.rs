//! The XML form data reader: any text is read into a JSON tree or refused,
//! without DTDs, entity expansion or unbounded nesting.
#![no_main]

use amtsbote::submission::xml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(tree) = xml::to_json(text) {
        // One root element, read into `{ "<root>": ... }`.
        assert_eq!(tree.as_object().map(|o| o.len()), Some(1));
    }
});
