//! Mapping files: how a submission becomes the document a back office
//! takes.
//!
//! A mapping file (YAML, under `mappings/`) names its output format and
//! holds a target-shaped `document` whose leaves are jq expressions over
//! the submission (see [`template`] for the directives, [`xml`] and
//! [`json`] for the format rules). Mappings are compiled once at load;
//! rendering never touches the file system or the network.
//!
//! ```yaml
//! description: Gewerbeanmeldung as XGewerbeanzeige 2.2
//! output: xml
//! root: xga:abh.gewerbemeldung.0500
//! namespaces:
//!   xga: http://www.xgewerbeanzeige.de/spezifikation/2.2
//! document:
//!   "@version": '"2.2"'
//!   xga:nachrichtenkopf:
//!     xga:identifikation.nachricht:
//!       xga:nachrichtenUUID: .id
//! ```

pub mod expr;
pub mod fixtures;
mod json;
mod template;
mod xml;

use std::path::Path;

use jaq_json::Val;
use serde::Deserialize;

use expr::Expr;
pub use template::TemplateError;
use template::Template;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Xml,
    Json,
}

/// The mapping file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    /// What the mapping produces, for people reading it.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    /// `xml` or `json`.
    output: OutputFormat,
    /// Media type sent with the document; defaults to `application/xml`
    /// or `application/json`.
    #[serde(default)]
    content_type: Option<String>,
    /// XML only: name of the root element.
    #[serde(default)]
    root: Option<String>,
    /// XML only: prefix → namespace URI, declared on the root element.
    /// The prefix `""` declares the default namespace.
    #[serde(default)]
    namespaces: serde_json::Map<String, serde_json::Value>,
    /// The target-shaped document.
    document: serde_json::Value,
}

/// A compiled mapping.
#[derive(Debug)]
pub struct Mapping {
    file: String,
    format: Format,
    content_type: String,
    document: Template,
}

#[derive(Debug)]
enum Format {
    Xml { root: String, namespaces: Vec<(String, String)> },
    Json,
}

/// A mapping file that cannot be used; names the file and the place.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

/// A mapping that failed on one submission: names file, place and
/// expression, never the data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: at {path}: {message}{}", expression.as_ref().map(|e| format!(" (expression {e:?})")).unwrap_or_default())]
pub struct RenderError {
    pub file: String,
    pub path: String,
    pub expression: Option<String>,
    pub message: String,
}

/// The rendered document for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Mapping {
    /// Loads and compiles `path`; `name` is how errors refer to the file.
    pub fn load(path: &Path, name: &str) -> Result<Self, MappingError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| MappingError::Read { file: name.to_owned(), source })?;
        Self::parse(&text, name)
    }

    pub fn parse(text: &str, name: &str) -> Result<Self, MappingError> {
        let invalid = |message: String| MappingError::Invalid { file: name.to_owned(), message };
        let file: MappingFile = crate::config::parse_yaml(text).map_err(invalid)?;
        let document = Template::compile(&file.document, "document").map_err(|e| invalid(e.to_string()))?;
        let format = match file.output {
            OutputFormat::Xml => {
                let root = file.root.ok_or_else(|| invalid("XML output needs `root`, the root element's name".into()))?;
                let namespaces = file
                    .namespaces
                    .into_iter()
                    .map(|(prefix, uri)| match uri {
                        serde_json::Value::String(uri) => Ok((prefix, uri)),
                        _ => Err(invalid(format!("namespace {prefix:?} must be a URI string"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                xml::check(&root, &namespaces, &document).map_err(|e| invalid(e.to_string()))?;
                Format::Xml { root, namespaces }
            }
            OutputFormat::Json => {
                if file.root.is_some() || !file.namespaces.is_empty() {
                    return Err(invalid("`root` and `namespaces` are only for XML output".into()));
                }
                json::check(&document).map_err(|e| invalid(e.to_string()))?;
                Format::Json
            }
        };
        let content_type = file.content_type.unwrap_or_else(|| match format {
            Format::Xml { .. } => "application/xml".into(),
            Format::Json => "application/json".into(),
        });
        Ok(Self { file: name.to_owned(), format, content_type, document })
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// Renders the document for one submission (as the JSON the worker
    /// receives, see [`crate::submission`]).
    pub fn render(&self, submission: &Val) -> Result<Rendered, RenderError> {
        let scope = Scope { current: submission.clone(), submission, file: &self.file };
        let body = match &self.format {
            Format::Xml { root, namespaces } => xml::render(root, namespaces, &self.document, &scope)?,
            Format::Json => json::render(&self.document, &scope)?,
        };
        Ok(Rendered { content_type: self.content_type.clone(), body })
    }
}

/// Where an expression is evaluated: the current value and the submission.
#[derive(Clone)]
pub(crate) struct Scope<'a> {
    current: Val,
    submission: &'a Val,
    file: &'a str,
}

impl<'a> Scope<'a> {
    fn eval(&self, expr: &Expr, path: &str) -> Result<Vec<Val>, RenderError> {
        expr.eval(&self.current, self.submission).map_err(|e| self.error(path, expr, e.0))
    }

    fn each(&self, expr: &Expr, path: &str) -> Result<Vec<Scope<'a>>, RenderError> {
        Ok(self
            .eval(expr, &format!("{path}/$each"))?
            .into_iter()
            .map(|current| Scope { current, submission: self.submission, file: self.file })
            .collect())
    }

    fn error(&self, path: &str, expr: &Expr, message: String) -> RenderError {
        RenderError { file: self.file.into(), path: path.into(), expression: Some(expr.code().into()), message }
    }

    fn plain_error(&self, path: &str, message: &str) -> RenderError {
        RenderError { file: self.file.into(), path: path.into(), expression: None, message: message.into() }
    }
}

#[cfg(test)]
mod tests;
