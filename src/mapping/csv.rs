//! CSV output, written with the csv crate.
//!
//! The document is a mapping of column header → expression, in column
//! order. Without `$each` the submission makes one row; `$each: <expr>` on
//! the document makes one row per value (e.g. one per dog). A cell's
//! expression yields at most one value: no value or `null` is an empty
//! cell, strings are written as they are, numbers and booleans as text.

use serde::Deserialize;

use super::template::{Template, TemplateError};
use super::{Place, RenderError, Scope};

const DOCUMENT: Place = Place::At("document");

/// How the CSV is written. The defaults suit German spreadsheet and tax
/// software: `;` between fields, CRLF line ends, UTF-8.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSettings {
    /// Field separator, one ASCII character (default `;`).
    #[serde(default = "default_separator")]
    pub separator: char,
    /// Write the column headers as the first line (default true).
    #[serde(default = "yes")]
    pub header: bool,
    /// `crlf` (default) or `lf`.
    #[serde(default)]
    pub line_ending: LineEnding,
    /// Start with a UTF-8 byte order mark, which spreadsheet programs need
    /// to recognise UTF-8 (default false).
    #[serde(default)]
    pub bom: bool,
    /// Prefix cells that start with `=`, `+`, `-` or `@` with `'`, so that
    /// a spreadsheet does not run form input as a formula (default false:
    /// import software gets the values unchanged).
    #[serde(default)]
    pub escape_formulas: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEnding {
    #[default]
    Crlf,
    Lf,
}

impl Default for CsvSettings {
    fn default() -> Self {
        Self { separator: ';', header: true, line_ending: LineEnding::Crlf, bom: false, escape_formulas: false }
    }
}

fn default_separator() -> char {
    ';'
}
fn yes() -> bool {
    true
}

pub fn check(settings: &CsvSettings, document: &Template) -> Result<(), TemplateError> {
    if !settings.separator.is_ascii() || settings.separator == '"' || settings.separator.is_ascii_alphanumeric() {
        return Err(TemplateError::new(0, "csv/separator", "the separator must be one ASCII punctuation or whitespace character"));
    }
    let Template::Map(map) = document else {
        return Err(TemplateError::new(document.line(), "document", "the CSV document must be a mapping of column header → expression"));
    };
    if map.text.is_some() {
        return Err(TemplateError::new(map.line, "document", "$text is only for XML output"));
    }
    for (header, cell) in &map.entries {
        if !matches!(cell, Template::Expr(_) | Template::Constant(..)) {
            return Err(TemplateError::new(
                map.line,
                format!("document/{header}"),
                "a column is one expression or constant",
            ));
        }
    }
    Ok(())
}

pub fn render(settings: &CsvSettings, document: &Template, scope: &Scope) -> Result<Vec<u8>, RenderError> {
    let Template::Map(map) = document else { unreachable!("checked at load") };
    let mut out = Vec::new();
    if settings.bom {
        out.extend_from_slice("\u{feff}".as_bytes());
    }
    let mut writer = csv::WriterBuilder::new()
        .delimiter(settings.separator as u8)
        .terminator(match settings.line_ending {
            LineEnding::Crlf => csv::Terminator::CRLF,
            LineEnding::Lf => csv::Terminator::Any(b'\n'),
        })
        .from_writer(out);
    let io = |e: csv::Error| scope.plain_error("document", &format!("writing CSV failed: {e}"));
    if settings.header {
        writer.write_record(map.entries.iter().map(|(h, _)| h.as_str())).map_err(io)?;
    }
    let rows = match &map.each {
        Some(each) => scope.each(each, &DOCUMENT)?,
        None => vec![scope.clone()],
    };
    for row in &rows {
        let mut record = Vec::with_capacity(map.entries.len());
        for (header, cell) in &map.entries {
            let path = Place::Key(&DOCUMENT, header);
            let mut text = match cell {
                Template::Constant(v, _) => super::xml::constant_text(v),
                Template::Expr(expr) => {
                    let values = row.eval(expr, &path)?;
                    match values.as_slice() {
                        [] => String::new(),
                        [value] => super::xml::text_of(value).map_err(|m| row.error(&path, expr, m))?.map(std::borrow::Cow::into_owned).unwrap_or_default(),
                        _ => return Err(row.error(&path, expr, format!("yields {} values where one is expected", values.len()))),
                    }
                }
                _ => unreachable!("checked at load"),
            };
            if settings.escape_formulas && text.starts_with(['=', '+', '-', '@']) {
                text.insert(0, '\'');
            }
            record.push(text);
        }
        writer.write_record(&record).map_err(io)?;
    }
    writer.into_inner().map_err(|e| scope.plain_error("document", &format!("writing CSV failed: {e}")))
}
