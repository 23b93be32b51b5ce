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

pub mod codelist;
mod csv;
pub mod expr;
pub mod fixtures;
pub mod functions;
pub mod input;
mod json;
mod native;
mod package;
pub mod sandbox;
pub mod schema;
mod template;
mod xml;

use std::collections::BTreeMap;
use std::path::Path;


use amtsbote_connector::{FileContent, PackageFile, Payload};
use bytes::Bytes;
use jaq_json::Val;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::domain::BlobId;
use crate::yaml::FileError;
use codelist::CodeList;
use expr::{Expr, Globals};
pub use package::PackageFormat;
use package::{Package, PackageSettings};
use schema::{OutputSchema, SchemaSource};
pub use template::TemplateError;
use template::{Node, Template};

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Xml,
    Json,
    Csv,
}

/// The mapping file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    /// What the mapping produces, for people reading it.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    /// `xml`, `json` or `csv`.
    output: OutputFormat,
    /// Media type sent with the document; defaults to `application/xml`,
    /// `application/json` or `text/csv; charset=utf-8`.
    #[serde(default)]
    content_type: Option<String>,
    /// XML only: name of the root element.
    #[serde(default)]
    root: Option<Spanned<String>>,
    /// XML only: prefix → namespace URI, declared on the root element.
    /// The prefix `""` declares the default namespace.
    #[serde(default)]
    namespaces: indexmap::IndexMap<String, Spanned<serde_json::Value>>,
    /// CSV only: separator, header, line ends; see [`csv::CsvSettings`].
    #[serde(default)]
    csv: Option<csv::CsvSettings>,
    /// A schema the document must satisfy, relative to this file: an
    /// `.xsd` (XML output) or a JSON Schema `.json` (JSON output).
    #[serde(default)]
    schema: Option<String>,
    /// Wraps the document with the submission's files; see [`package`].
    #[serde(default)]
    package: Option<PackageSettings>,
    /// The target-shaped document.
    document: Spanned<Node>,
}

/// Everything a mapping is compiled from: its text and the code lists and
/// schema it names. A source is self-contained, so that the sandbox
/// process and a later attempt compile exactly what was loaded, and its
/// hash is the mapping's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingSource {
    /// How errors refer to the mapping (its path).
    pub name: String,
    pub text: String,
    pub codelists: BTreeMap<String, CodeList>,
    pub schema: Option<SchemaSource>,
}

impl MappingSource {
    /// The content hash that identifies this version of the mapping.
    pub fn version(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("a mapping source serializes");
        format!("sha256:{}", &crate::domain::sha256_hex(&bytes)[..16])
    }
}

/// A compiled mapping.
#[derive(Debug)]
pub struct Mapping {
    source: MappingSource,
    version: String,
    compiled: Compiled,
    schema: Option<OutputSchema>,
}

/// What compiling the file itself gives, before code lists and schema.
#[derive(Debug)]
struct Compiled {
    format: Format,
    content_type: String,
    document: Template,
    package: Option<Package>,
}

impl Compiled {
    fn expressions(&self) -> impl Iterator<Item = &Expr> {
        self.document.expressions().into_iter().chain(self.package.iter().flat_map(Package::expressions))
    }

    fn codelists_used(&self) -> std::collections::BTreeSet<String> {
        self.expressions().flat_map(|e| e.codelists().iter().cloned()).collect()
    }
}

#[derive(Debug)]
enum Format {
    Xml { root: String, namespaces: Vec<(String, String)> },
    Json,
    Csv(csv::CsvSettings),
}

/// A mapping file that cannot be used; names the file and the place.
pub type MappingError = FileError;

/// A mapping that failed on one submission: names file, line, place and
/// expression, never the data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{file}{}: at {path}: {message}{}",
    if *line > 0 { format!(":{line}") } else { String::new() },
    expression.as_ref().map(|e| format!(" (expression {e:?})")).unwrap_or_default())]
pub struct RenderError {
    pub file: String,
    pub line: u64,
    pub path: String,
    pub expression: Option<String>,
    pub message: String,
}

fn compile_file(file: &MappingFile, name: &str) -> Result<Compiled, MappingError> {
    let invalid = |message: String| MappingError::Invalid { file: name.to_owned(), message };
    let document = Template::compile(&file.document, "document").map_err(|e| invalid(e.to_string()))?;
    let only_xml = file.root.is_some() || !file.namespaces.is_empty();
    let format = match file.output {
        OutputFormat::Xml => {
            let root = file.root.as_ref().ok_or_else(|| invalid("XML output needs `root`, the root element's name".into()))?;
            let namespaces = file
                .namespaces
                .iter()
                .map(|(prefix, uri)| match &uri.value {
                    serde_json::Value::String(text) => Ok((prefix.clone(), text.clone(), uri.referenced.line())),
                    _ => Err(invalid(format!("line {}: namespace {prefix:?} must be a URI string", uri.referenced.line()))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            xml::check(&root.value, root.referenced.line(), &namespaces, &document).map_err(|e| invalid(e.to_string()))?;
            let namespaces = namespaces.into_iter().map(|(prefix, uri, _)| (prefix, uri)).collect();
            Format::Xml { root: root.value.clone(), namespaces }
        }
        OutputFormat::Json => {
            if only_xml {
                return Err(invalid("`root` and `namespaces` are only for XML output".into()));
            }
            json::check(&document).map_err(|e| invalid(e.to_string()))?;
            Format::Json
        }
        OutputFormat::Csv => {
            if only_xml {
                return Err(invalid("`root` and `namespaces` are only for XML output".into()));
            }
            let settings = file.csv.clone().unwrap_or_default();
            csv::check(&settings, &document).map_err(|e| invalid(e.to_string()))?;
            Format::Csv(settings)
        }
    };
    if file.csv.is_some() && !matches!(format, Format::Csv(_)) {
        return Err(invalid("`csv` settings are only for CSV output".into()));
    }
    let package = file.package.as_ref().map(Package::compile).transpose().map_err(|e| invalid(e.to_string()))?;
    let content_type = file.content_type.clone().unwrap_or_else(|| {
        match format {
            Format::Xml { .. } => "application/xml",
            Format::Json => "application/json",
            Format::Csv(_) => "text/csv; charset=utf-8",
        }
        .into()
    });
    Ok(Compiled { format, content_type, document, package })
}

impl Mapping {
    /// Loads and compiles the mapping `relative` under the mappings
    /// directory `root`, with the code lists and schema it names.
    pub fn load(root: &Path, relative: &Path) -> Result<Self, MappingError> {
        let path = root.join(relative);
        let name = path.display().to_string();
        let (text, file): (String, MappingFile) = crate::yaml::read_yaml(&path)?;
        let invalid = |message: String| MappingError::Invalid { file: name.clone(), message };
        let compiled = compile_file(&file, &name)?;
        let codelists = compiled
            .codelists_used()
            .into_iter()
            .map(|list| codelist::load(root, &list).map(|loaded| (list, loaded)))
            .collect::<Result<_, _>>()
            .map_err(invalid)?;
        let schema = match &file.schema {
            Some(schema) => Some(SchemaSource::load(&path.parent().unwrap_or(Path::new(".")).join(schema)).map_err(|e| invalid(e.to_string()))?),
            None => None,
        };
        Self::assemble(MappingSource { name, text, codelists, schema }, compiled)
    }

    /// Compiles a source as loaded (here or in another process).
    pub fn compile(source: MappingSource) -> Result<Self, MappingError> {
        let invalid = |message: String| MappingError::Invalid { file: source.name.clone(), message };
        let file: MappingFile = crate::yaml::parse_yaml(&source.text).map_err(invalid)?;
        let compiled = compile_file(&file, &source.name)?;
        if let Some(missing) = compiled.codelists_used().into_iter().find(|l| !source.codelists.contains_key(l)) {
            return Err(invalid(format!("code list {missing:?} is not loaded")));
        }
        Self::assemble(source, compiled)
    }

    /// Adds the schema and the version to a compiled mapping.
    fn assemble(source: MappingSource, compiled: Compiled) -> Result<Self, MappingError> {
        let invalid = |message: String| MappingError::Invalid { file: source.name.clone(), message };
        let schema = source.schema.as_ref().map(OutputSchema::compile).transpose().map_err(|e| invalid(e.to_string()))?;
        match (&schema, &compiled.format) {
            (Some(OutputSchema::Xsd(_)), Format::Xml { .. }) | (Some(OutputSchema::Json(_)), Format::Json) | (None, _) => {}
            _ => return Err(invalid("an .xsd schema is for XML output, a JSON Schema for JSON output".into())),
        }
        let version = source.version();
        Ok(Self { source, version, compiled, schema })
    }

    /// Parses a mapping from text, for tests: code lists and schemas are
    /// not available.
    pub fn parse(text: &str, name: &str) -> Result<Self, MappingError> {
        Self::compile(MappingSource { name: name.into(), text: text.into(), codelists: BTreeMap::new(), schema: None })
    }

    pub fn file(&self) -> &str {
        &self.source.name
    }

    pub fn source(&self) -> &MappingSource {
        &self.source
    }

    /// The content hash of the mapping's source, recorded per delivery.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The file extension of the document the mapping writes.
    pub fn extension(&self) -> &'static str {
        match self.compiled.format {
            Format::Xml { .. } => "xml",
            Format::Json => "json",
            Format::Csv(_) => "csv",
        }
    }

    /// `Some(format)` if the mapping packs files with the document.
    pub fn package_format(&self) -> Option<PackageFormat> {
        self.compiled.package.as_ref().map(|p| p.format)
    }

    /// Renders one submission whose attachments all travel in it (as in
    /// fixtures and tests): [`rendition`](Self::rendition), finished.
    pub fn render(&self, submission: &Val, now: i64) -> Result<Payload, RenderError> {
        let rendition = self.rendition(submission, now)?;
        rendition.into_payload(|_| None).map_err(|message| mapping_error(self, message))
    }

    /// Renders the document for one submission (the JSON the worker
    /// receives, see [`crate::submission`]); `now` is what the `now`
    /// function returns, in seconds since 1970.
    pub fn rendition(&self, submission: &Val, now: i64) -> Result<Rendition, RenderError> {
        self.rendition_with(submission, now, self.code_lists())
    }

    /// The mapping's code lists as the value `lookup` reads: built once
    /// per mapping by those who render many submissions with it (a code
    /// list of all nationalities is some 250 entries).
    pub fn code_lists(&self) -> Val {
        Val::obj(
            self.source
                .codelists
                .iter()
                .map(|(name, list)| {
                    let codes = list.codes.iter().map(|(k, v)| (Val::from(k.clone()), Val::from(v.clone()))).collect();
                    (Val::from(name.clone()), Val::obj(codes))
                })
                .collect(),
        )
    }

    /// [`rendition`](Self::rendition) with the mapping's
    /// [`code_lists`](Self::code_lists) built before.
    pub fn rendition_with(&self, submission: &Val, now: i64, codelists: Val) -> Result<Rendition, RenderError> {
        let globals = Globals::new(submission.clone(), codelists, Val::from(now as isize));
        let scope = Scope { current: submission.clone(), globals: &globals, file: &self.source.name };
        let compiled = &self.compiled;
        let body = match &compiled.format {
            Format::Xml { root, namespaces } => xml::render(root, namespaces, &compiled.document, &scope)?,
            Format::Json => json::render(&compiled.document, &scope)?,
            Format::Csv(settings) => csv::render(settings, &compiled.document, &scope)?,
        };
        if let Some(schema) = &self.schema {
            schema.validate(&body).map_err(|e| scope.plain_error("document", &e.to_string()))?;
        }
        match &compiled.package {
            None => Ok(Rendition::Document { content_type: compiled.content_type.clone(), body: body.into() }),
            Some(package) => package.pack(body, &scope, received_at(submission).unwrap_or(now)),
        }
    }
}

/// An error of the mapping as a whole, not of one place in it.
pub(crate) fn mapping_error(mapping: &Mapping, message: String) -> RenderError {
    RenderError { file: mapping.file().to_owned(), line: 0, path: "document".into(), expression: None, message }
}

/// What a mapping made of a submission: a document, or a package whose
/// files may include attachments still in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendition {
    Document { content_type: String, body: Bytes },
    Package {
        format: PackageFormat,
        /// The time stamp of zip entries, seconds since 1970.
        modified: i64,
        files: Vec<PackedFile>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedFile {
    pub path: String,
    pub content: PackedContent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackedContent {
    Bytes(Bytes),
    /// An attachment of the submission in the blob store.
    Stored(BlobId),
}

impl Rendition {
    /// The attachments the package takes from the blob store.
    pub fn stored(&self) -> impl Iterator<Item = BlobId> + '_ {
        let files = match self {
            Rendition::Package { files, .. } => files.as_slice(),
            Rendition::Document { .. } => &[],
        };
        files.iter().filter_map(|f| match f.content {
            PackedContent::Stored(blob) => Some(blob),
            PackedContent::Bytes(_) => None,
        })
    }

    /// Bytes the rendition holds itself (stored attachments not counted).
    pub fn inline_len(&self) -> usize {
        match self {
            Rendition::Document { body, .. } => body.len(),
            Rendition::Package { files, .. } => files
                .iter()
                .map(|f| match &f.content {
                    PackedContent::Bytes(b) => b.len(),
                    PackedContent::Stored(_) => 0,
                })
                .sum(),
        }
    }

    /// The payload for the connector: stored attachments as `stored`
    /// gives them (read in for a zip, streamed into a folder), a zip
    /// package zipped.
    pub fn into_payload(self, stored: impl Fn(BlobId) -> Option<FileContent>) -> Result<Payload, String> {
        let (format, modified, files) = match self {
            Rendition::Document { content_type, body } => return Ok(Payload::Document { content_type, body }),
            Rendition::Package { format, modified, files } => (format, modified, files),
        };
        let files = files
            .into_iter()
            .map(|file| {
                let content = match file.content {
                    PackedContent::Bytes(bytes) => FileContent::Bytes(bytes),
                    PackedContent::Stored(blob) => {
                        stored(blob).ok_or_else(|| format!("attachment {blob} is kept in the blob store, which was not read"))?
                    }
                };
                Ok(PackageFile { path: file.path, content })
            })
            .collect::<Result<Vec<_>, String>>()?;
        match format {
            PackageFormat::Folder => Ok(Payload::Files(files)),
            PackageFormat::Zip => Ok(Payload::Document { content_type: "application/zip".into(), body: package::zip(&files, modified)?.into() }),
        }
    }
}

/// The submission's receive time in seconds, which stamps package entries.
fn received_at(submission: &Val) -> Option<i64> {
    let Val::Obj(o) = submission else { return None };
    let Some(Val::TStr(at)) = o.get(&Val::from("receivedAt".to_owned())) else { return None };
    std::str::from_utf8(at).ok()?.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// A place in the mapping's document, such as `document/xga:satz/xga:person[0]`,
/// for error messages. Rendering makes one per node it visits; the text is
/// put together only when an error names it.
#[derive(Clone, Copy)]
pub(crate) enum Place<'a> {
    At(&'a str),
    Key(&'a Place<'a>, &'a str),
    Item(&'a Place<'a>, usize),
}

impl std::fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::At(at) => f.write_str(at),
            Place::Key(parent, key) => write!(f, "{parent}/{key}"),
            Place::Item(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// Where an expression is evaluated: the current value and the globals.
#[derive(Clone)]
pub(crate) struct Scope<'a> {
    current: Val,
    globals: &'a Globals,
    file: &'a str,
}

impl<'a> Scope<'a> {
    fn eval(&self, expr: &Expr, path: &Place) -> Result<Vec<Val>, RenderError> {
        expr.eval(&self.current, self.globals).map_err(|e| self.error(path, expr, e.0))
    }

    /// Calls `f` with each value of `expr`, as [`Self::eval`] gives them;
    /// the value of a plain path (`.a.b`, most leaves) without a copy.
    fn each_value(&self, expr: &Expr, path: &Place, mut f: impl FnMut(&Val) -> Result<(), RenderError>) -> Result<(), RenderError> {
        match expr.plain_path(&self.current) {
            Some(found) => f(found.unwrap_or(&Val::Null)),
            None => self.eval(expr, path)?.iter().try_for_each(f),
        }
    }

    fn each(&self, expr: &Expr, path: &Place) -> Result<Vec<Scope<'a>>, RenderError> {
        Ok(self
            .eval(expr, &Place::Key(path, "$each"))?
            .into_iter()
            .map(|current| Scope { current, globals: self.globals, file: self.file })
            .collect())
    }

    fn error(&self, path: &Place, expr: &Expr, message: String) -> RenderError {
        RenderError { file: self.file.into(), line: expr.line(), path: path.to_string(), expression: Some(expr.code().into()), message }
    }

    fn plain_error(&self, path: &str, message: &str) -> RenderError {
        RenderError { file: self.file.into(), line: 0, path: path.into(), expression: None, message: message.into() }
    }
}

#[cfg(test)]
mod tests;
