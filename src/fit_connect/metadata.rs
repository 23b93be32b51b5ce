//! The metadata's schema: FIT-Connect's metadata schema in the version the
//! metadata names (`$schema`).
//!
//! FITKO publishes the schemas at `schema.fitko.de` without stating a
//! licence for them, so amtsbote does not ship copies: an operator puts
//! the versions the destination accepts into `fit_connect.metadata_schemas`
//! (a folder; each file is found by its `$id`). Without it, the metadata is
//! held to what amtsbote reads of it (a FIT-Connect `$schema`,
//! `contentStructure` with hashes, the data's submission schema and media
//! type), which `verify` checks in any case.

use std::collections::HashMap;
use std::path::Path;

use super::problems::{Kind, Part, Problem};

/// Every FIT-Connect metadata schema's URI starts so.
const SCHEMA_PREFIX: &str = "https://schema.fitko.de/fit-connect/metadata/";

/// Metadata 1.0.0 named no `$schema`; metadata without one is of that version.
const FIRST_VERSION: &str = "https://schema.fitko.de/fit-connect/metadata/1.0.0/metadata.schema.json";

/// The metadata schemas an operator provided, by URI.
#[derive(Default)]
pub struct MetadataSchemas {
    by_uri: HashMap<String, jsonschema::Validator>,
}

impl MetadataSchemas {
    /// Every `*.json` in `dir` (and its subfolders) whose `$id` is a
    /// FIT-Connect metadata schema.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let mut schemas = Self::default();
        let mut pending = vec![dir.to_owned()];
        while let Some(folder) = pending.pop() {
            let entries = std::fs::read_dir(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
            for entry in entries {
                let path = entry.map_err(|e| format!("{}: {e}", folder.display()))?.path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let id = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|schema| schema.get("$id")?.as_str().map(str::to_owned))
                    .filter(|id| id.starts_with(SCHEMA_PREFIX));
                let Some(id) = id else { continue };
                let validator = crate::mapping::schema::json_schema(&path, &text).map_err(|e| e.to_string())?;
                schemas.by_uri.insert(id, validator);
            }
        }
        if schemas.by_uri.is_empty() {
            return Err(format!("{}: holds no FIT-Connect metadata schema (a JSON file whose $id starts with {SCHEMA_PREFIX})", dir.display()));
        }
        Ok(schemas)
    }

    /// How many versions were provided.
    pub fn len(&self) -> usize {
        self.by_uri.len()
    }

    /// Whether the metadata names a FIT-Connect metadata schema and — with
    /// schemas provided — one of them, and is valid against it.
    pub fn check(&self, metadata: &serde_json::Value) -> Result<(), Problem> {
        let named = match metadata.get("$schema") {
            None => None,
            Some(schema) => match schema.as_str().filter(|uri| uri.starts_with(SCHEMA_PREFIX)) {
                Some(uri) => Some(uri),
                None => return Err(Problem::new(Kind::UnsupportedSchema, Part::Metadata, "the metadata names no FIT-Connect metadata schema")),
            },
        };
        if self.by_uri.is_empty() {
            return Ok(());
        }
        let uri = named.unwrap_or(FIRST_VERSION);
        let Some(validator) = self.by_uri.get(uri) else {
            return Err(Problem::new(Kind::UnsupportedSchema, Part::Metadata, format!("the metadata schema {uri} is not one this destination takes")));
        };
        let problems = crate::mapping::schema::json_problems(validator, metadata);
        if problems.is_empty() {
            return Ok(());
        }
        let detail = problems.iter().map(|(pointer, message)| format!("{pointer} {message}")).collect::<Vec<_>>().join("; ");
        Err(Problem::new(Kind::SchemaViolation, Part::Metadata, format!("the metadata does not match its schema: {detail}")))
    }
}
