//! Schemas a mapping's output must satisfy: an XSD (checked with libxml2)
//! or a JSON Schema. Output that fails is a mapping error and is parked,
//! never delivered.
//!
//! libxml2 is used without network access (imports are read from disk
//! only), without DTDs and without recovery from malformed XML. Messages
//! name elements and rules but not values: libxml2 quotes the offending
//! value, which is form data, and those quotes are masked here.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use serde::{Deserialize, Serialize};

/// Why a schema could not be read or compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("schema {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("schema {path}: not UTF-8")]
    NotUtf8 { path: String },
    #[error("schema {path}: path is not UTF-8")]
    PathNotUtf8 { path: String },
    #[error("schema {path}: must be an .xsd or a JSON Schema .json file")]
    UnknownKind { path: String },
    #[error("schema {path}: not JSON: {reason}")]
    NotJson { path: String, reason: String },
    /// A JSON Schema that does not compile (a remote `$ref` among others).
    #[error("schema {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("schema {path} does not load: {reason}")]
    XsdDoesNotLoad { path: String, reason: String },
}

/// Why a rendered document failed its schema. Names elements, rules and
/// JSON pointers, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    #[error("the output is not JSON ({0})")]
    NotJson(String),
    #[error("the output has a DOCTYPE; DTDs are not accepted")]
    Doctype,
    #[error("the output is not well-formed XML: {0}")]
    NotWellFormed(String),
    #[error("the output does not match its schema: {0}")]
    Mismatch(String),
    /// The XSD did not load in this thread (it did when the mapping was
    /// compiled: a file changed or vanished since).
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// Where a mapping's schema comes from, as carried in its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaSource {
    /// An XSD file; its imports are resolved relative to it, on disk.
    Xsd { path: PathBuf, sha256: String },
    /// A JSON Schema, held in full.
    Json { path: PathBuf, text: String },
}

impl SchemaSource {
    /// Reads the schema a mapping names (`.xsd` or `.json`).
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let read = |e: std::io::Error| SchemaError::Read { path: path.display().to_string(), reason: e.to_string() };
        let bytes = std::fs::read(path).map_err(read)?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("xsd") => {
                let sha256 = crate::domain::sha256_hex(&bytes);
                let path = path.canonicalize().map_err(read)?;
                Ok(SchemaSource::Xsd { path, sha256 })
            }
            Some("json") => {
                let text = String::from_utf8(bytes).map_err(|_| SchemaError::NotUtf8 { path: path.display().to_string() })?;
                Ok(SchemaSource::Json { path: path.to_owned(), text })
            }
            _ => Err(SchemaError::UnknownKind { path: path.display().to_string() }),
        }
    }
}

/// A compiled output schema.
pub enum OutputSchema {
    /// Compiled per thread on first use (libxml2's schema objects are not
    /// `Send`).
    Xsd(PathBuf),
    Json(Box<jsonschema::Validator>),
}

impl std::fmt::Debug for OutputSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputSchema::Xsd(p) => write!(f, "Xsd({})", p.display()),
            OutputSchema::Json(_) => f.write_str("Json"),
        }
    }
}

impl OutputSchema {
    pub fn compile(source: &SchemaSource) -> Result<Self, SchemaError> {
        match source {
            SchemaSource::Xsd { path, .. } => {
                with_xsd(path, |_| Ok::<_, SchemaError>(()))?;
                Ok(OutputSchema::Xsd(path.clone()))
            }
            SchemaSource::Json { path, text } => json_schema(path, text).map(|v| OutputSchema::Json(Box::new(v))),
        }
    }

    /// Checks a rendered document; the error lists the first problems.
    pub fn validate(&self, document: &[u8]) -> Result<(), OutputError> {
        match self {
            OutputSchema::Xsd(path) => validate_xml(path, document),
            OutputSchema::Json(validator) => {
                let value: serde_json::Value =
                    serde_json::from_slice(document).map_err(|e| OutputError::NotJson(format!("{:?}", e.classify())))?;
                let problems = json_problems(validator, &value);
                if problems.is_empty() {
                    Ok(())
                } else {
                    let list = problems.into_iter().map(|(p, m)| format!("at {p}: {m}")).collect::<Vec<_>>().join("; ");
                    Err(OutputError::Mismatch(list))
                }
            }
        }
    }
}

/// Compiles the JSON Schema `text` (read from `path`, which errors name)
/// into a validator that never fetches a remote `$ref`.
pub fn json_schema(path: &Path, text: &str) -> Result<jsonschema::Validator, SchemaError> {
    let schema: serde_json::Value =
        serde_json::from_str(text).map_err(|e| SchemaError::NotJson { path: path.display().to_string(), reason: e.to_string() })?;
    // Built without the crate's resolve-http/resolve-file features: a
    // `$ref` to anything outside the schema fails here, at load.
    jsonschema::validator_for(&schema).map_err(|e| SchemaError::Invalid { path: path.display().to_string(), reason: e.masked().to_string() })
}

/// The instance paths (JSON pointers) and value-free messages of the
/// first problems, at most ten.
pub fn json_problems(validator: &jsonschema::Validator, value: &serde_json::Value) -> Vec<(String, String)> {
    validator
        .iter_errors(value)
        .take(10)
        .map(|e| (e.instance_path().to_string(), e.masked().to_string()))
        .collect()
}

thread_local! {
    static XSD_CACHE: RefCell<HashMap<PathBuf, libxml::schemas::SchemaValidationContext>> = RefCell::new(HashMap::new());
}

fn init_libxml() {
    static INIT: Once = Once::new();
    INIT.call_once(|| unsafe {
        // SAFETY: called once, before any parsing in this process; the
        // loader is libxml2's own, which refuses http:// and ftp://.
        libxml::bindings::xmlInitParser();
        libxml::bindings::xmlSetExternalEntityLoader(Some(libxml::bindings::xmlNoNetExternalEntityLoader));
    });
}

fn with_xsd<T, E: From<SchemaError>>(
    path: &Path,
    f: impl FnOnce(&mut libxml::schemas::SchemaValidationContext) -> Result<T, E>,
) -> Result<T, E> {
    init_libxml();
    XSD_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(path) {
            let file = path.to_str().ok_or_else(|| SchemaError::PathNotUtf8 { path: path.display().to_string() })?;
            let mut parser = libxml::schemas::SchemaParserContext::from_file(file);
            let context = libxml::schemas::SchemaValidationContext::from_parser(&mut parser).map_err(|errors| {
                SchemaError::XsdDoesNotLoad { path: path.display().to_string(), reason: describe(&errors, false) }
            })?;
            cache.insert(path.to_owned(), context);
        }
        f(cache.get_mut(path).expect("inserted above"))
    })
}

fn validate_xml(path: &Path, document: &[u8]) -> Result<(), OutputError> {
    init_libxml();
    if document.windows(9).any(|w| w.eq_ignore_ascii_case(b"<!DOCTYPE")) {
        return Err(OutputError::Doctype);
    }
    let options = libxml::parser::ParserOptions { recover: false, no_net: true, no_def_dtd: true, ..Default::default() };
    let doc = libxml::parser::Parser::default()
        .parse_string_with_options(document, options)
        .map_err(|e| OutputError::NotWellFormed(format!("{e:?}")))?;
    with_xsd(path, |context| {
        context.validate_document(&doc).map_err(|errors| OutputError::Mismatch(describe(&errors, true)))
    })
}

fn describe(errors: &[libxml::error::StructuredError], mask: bool) -> String {
    let mut lines: Vec<String> = errors
        .iter()
        .take(5)
        .map(|e| {
            let message = e.message.as_deref().unwrap_or("unknown error").trim().to_owned();
            let message = if mask { mask_values(&message) } else { message };
            match e.line {
                Some(line) if line > 0 => format!("line {line}: {message}"),
                _ => message,
            }
        })
        .collect();
    if errors.len() > 5 {
        lines.push(format!("and {} more", errors.len() - 5));
    }
    lines.join("; ")
}

/// libxml2 quotes values in single quotes (`The value 'Anna' ...`,
/// `'x' is not a valid value`); element, attribute and type names are
/// quoted the same way but follow `Element `, `attribute ` or `type `.
fn mask_values(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(open) = rest.find('\'') {
        let (before, after) = rest.split_at(open);
        let Some(close) = after[1..].find('\'') else { break };
        let quoted = &after[1..=close];
        out.push_str(before);
        let context = out.trim_end().to_ascii_lowercase();
        let is_name = ["element", "attribute", "type", "facet", "pattern", "element:", "elements"].iter().any(|w| context.ends_with(w))
            || quoted.starts_with('{')
            || quoted.starts_with("xs:");
        if is_name {
            out.push('\'');
            out.push_str(quoted);
            out.push('\'');
        } else {
            out.push_str("'…'");
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_values_but_keeps_names() {
        let m = mask_values("Element '{urn:x}geburtsdatum': 'Anna Müller' is not a valid value of the atomic type 'xs:date'.");
        assert_eq!(m, "Element '{urn:x}geburtsdatum': '…' is not a valid value of the atomic type 'xs:date'.");
        let m = mask_values("Element 'plz': [facet 'pattern'] The value '1234x' is not accepted by the pattern '[0-9]{5}'.");
        assert!(!m.contains("1234x"), "{m}");
        assert!(m.contains("'plz'"), "{m}");
    }

    #[test]
    fn validates_against_an_xsd_without_echoing_values() {
        let dir = tempfile::tempdir().unwrap();
        let xsd = dir.path().join("s.xsd");
        std::fs::write(
            &xsd,
            r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:t" xmlns="urn:t" elementFormDefault="qualified">
  <xs:element name="r"><xs:complexType><xs:sequence><xs:element name="d" type="xs:date"/></xs:sequence></xs:complexType></xs:element>
</xs:schema>"#,
        )
        .unwrap();
        let schema = OutputSchema::compile(&SchemaSource::load(&xsd).unwrap()).unwrap();
        schema.validate(br#"<r xmlns="urn:t"><d>2015-08-09</d></r>"#).unwrap();
        let err = schema.validate(br#"<r xmlns="urn:t"><d>Geheim</d></r>"#).unwrap_err().to_string();
        assert!(err.contains("line 1") && !err.contains("Geheim"), "{err}");
        let err = schema.validate(b"<r xmlns=\"urn:t\"><d>").unwrap_err().to_string();
        assert!(err.contains("not well-formed"), "{err}");
        let err = schema.validate(b"<!DOCTYPE r [<!ENTITY e \"x\">]><r xmlns=\"urn:t\"><d>&e;</d></r>").unwrap_err().to_string();
        assert!(err.contains("DTD"), "{err}");
    }

    #[test]
    fn json_schema_problems_name_paths_not_values() {
        let schema = serde_json::json!({"type":"object","required":["a"],"properties":{"b":{"type":"integer"}}});
        let validator = json_schema(Path::new("s.json"), &schema.to_string()).unwrap();
        let problems = json_problems(&validator, &serde_json::json!({"b":"Geheim"}));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|(p, _)| p == "/b"));
        assert!(problems.iter().all(|(_, m)| !m.contains("Geheim")), "{problems:?}");
    }

    #[test]
    fn remote_references_are_refused() {
        let schema = serde_json::json!({"$ref": "https://example.org/schema.json"});
        assert!(json_schema(Path::new("s.json"), &schema.to_string()).is_err());
    }
}
