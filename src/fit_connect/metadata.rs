//! The metadata's schema: FIT-Connect's metadata schema in the version the
//! metadata names (`$schema`).

use super::problems::{Kind, Part, Problem};

/// The metadata schema versions this receiver knows, by URI prefix.
const SCHEMA_PREFIX: &str = "https://schema.fitko.de/fit-connect/metadata/";

/// Whether the metadata names a metadata schema this receiver knows and is
/// valid against it.
pub fn check(metadata: &serde_json::Value) -> Result<(), Problem> {
    let Some(schema) = metadata.get("$schema") else {
        return Ok(());
    };
    let uri = schema.as_str().unwrap_or_default();
    if !uri.starts_with(SCHEMA_PREFIX) {
        return Err(Problem::new(Kind::UnsupportedSchema, Part::Metadata, "the metadata names no FIT-Connect metadata schema"));
    }
    Ok(())
}
