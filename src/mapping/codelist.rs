//! Code lists: files beside the mappings that translate what a form says
//! into what a back office's format expects (legal forms, nationalities,
//! ...). `lookup("name")` in an expression reads
//! `<mappings>/codelists/<name>.yaml`:
//!
//! ```yaml
//! description: Rechtsform (form value) → XGewerbeanzeige Rechtsform code
//! source: urn:xoev-de:xgewerbeanzeige:codeliste:rechtsform, version 2
//! codes:
//!   einzelunternehmen: "110"
//!   gmbh: "310"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A code list as loaded: form value → target code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeList {
    pub codes: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeListFile {
    /// What the list translates, for people reading it.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    /// Where the target codes come from (a code list URN and version).
    #[serde(default)]
    #[allow(dead_code)]
    source: Option<String>,
    /// Form value → target code. Numbers are read as their text.
    codes: BTreeMap<String, Scalar>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// The file a code list name refers to.
pub fn path_of(mappings_root: &Path, name: &str) -> Result<PathBuf, String> {
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) && !name.starts_with('.');
    if !valid {
        return Err(format!("code list name {name:?} must be letters, digits, '-', '_' or '.'"));
    }
    Ok(mappings_root.join("codelists").join(format!("{name}.yaml")))
}

/// Reads and checks the code list `name`.
pub fn load(mappings_root: &Path, name: &str) -> Result<CodeList, String> {
    let path = path_of(mappings_root, name)?;
    let (_, file): (String, CodeListFile) =
        crate::yaml::read_yaml(&path).map_err(|e| format!("code list {name:?}: {e}"))?;
    Ok(CodeList { codes: file.codes.into_iter().map(|(k, v)| (k, v.into_text())).collect() })
}
