//! Packages: the rendered document together with the submission's files,
//! as a zip (xdomea: `{ProzessID}_{message}.xml` plus the primary files)
//! or as a folder per case (transfer directories: the XML, the form PDF,
//! `anlagen/...`).
//!
//! ```yaml
//! package:
//!   format: zip                  # or folder
//!   document: '"\(.id)_Geschaeftsgang.Geschaeftsgang.0201.xml"'
//!   files:
//!     - each: attachments("form")
//!       path: '"antrag.pdf"'
//!     - each: attachments("attachment")
//!       path: '"anlagen/" + .file'
//! ```
//!
//! `each` yields attachments of the submission (objects with `content` in
//! base64, or `blob` for one kept in the blob store); each is written under
//! the path its `path` expression gives. Attachment bytes are decoded once
//! and written as they are; a stored attachment never passes through the
//! mapping (its `content` is absent there): the worker reads it in when it
//! finishes the package ([`Rendition::into_payload`]). Paths are checked:
//! relative, no `..`, no empty or hidden parts, no two alike.

use std::io::Write as _;

use amtsbote_connector::PackageFile;
use base64::Engine as _;
use jaq_json::Val;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::expr::Expr;
use super::template::{TemplateError, compile_expr};
use super::{PackedContent, PackedFile, Place, RenderError, Rendition, Scope};
use crate::domain::BlobId;

/// The `package` section of a mapping file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSettings {
    /// `zip` (one `application/zip` document) or `folder` (a case folder,
    /// for the transfer-directory and SFTP connectors).
    pub format: PackageFormat,
    /// Expression for the document's path inside the package.
    pub document: Spanned<String>,
    /// The files that travel with the document.
    #[serde(default)]
    pub files: Vec<FileSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageFormat {
    Zip,
    Folder,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// Expression yielding attachments, e.g. `attachments("attachment")`.
    pub each: Spanned<String>,
    /// Expression for the file's path, evaluated on each attachment.
    pub path: Spanned<String>,
}

#[derive(Debug)]
pub struct Package {
    pub format: PackageFormat,
    document: Expr,
    files: Vec<(Expr, Expr)>,
}

impl Package {
    pub fn compile(settings: &PackageSettings) -> Result<Self, TemplateError> {
        let expr = |code: &Spanned<String>, path: &str| compile_expr(&code.value, code.referenced.line(), path);
        let document = expr(&settings.document, "package/document")?;
        let files = settings
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| Ok((expr(&f.each, &format!("package/files[{i}]/each"))?, expr(&f.path, &format!("package/files[{i}]/path"))?)))
            .collect::<Result<_, TemplateError>>()?;
        Ok(Self { format: settings.format, document, files })
    }

    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        std::iter::once(&self.document).chain(self.files.iter().flat_map(|(a, b)| [a, b]))
    }

    /// Packs `document` with the files; `modified` (seconds since 1970) is
    /// the time stamp of every zip entry, so the same submission always
    /// packs to the same bytes.
    pub fn pack(&self, document: Vec<u8>, scope: &Scope, modified: i64) -> Result<Rendition, RenderError> {
        let path = self.path_of(&self.document, scope, &Place::At("package/document"))?;
        let mut files = vec![PackedFile { path, content: PackedContent::Bytes(document.into()) }];
        for (i, (each, path)) in self.files.iter().enumerate() {
            let files_at = Place::Item(&Place::At("package/files"), i);
            let (each_at, path_at) = (Place::Key(&files_at, "each"), Place::Key(&files_at, "path"));
            for item in scope.each(each, &files_at)? {
                let field = |name: &str| match &item.current {
                    Val::Obj(o) => o.get(&Val::from(name.to_owned())).cloned(),
                    _ => None,
                };
                let not_an_attachment = || {
                    scope.error(&each_at, each, "yields something that is not an attachment (an object with base64 content)".into())
                };
                let content = match (field("content"), field("blob")) {
                    (Some(Val::TStr(base64)), _) => PackedContent::Bytes(
                        base64::engine::general_purpose::STANDARD
                            .decode(&**base64)
                            .map_err(|_| scope.error(&each_at, each, "an attachment's content is not base64".into()))?
                            .into(),
                    ),
                    (None, Some(Val::TStr(blob))) => {
                        PackedContent::Stored(std::str::from_utf8(&blob).ok().and_then(BlobId::parse).ok_or_else(not_an_attachment)?)
                    }
                    _ => return Err(not_an_attachment()),
                };
                files.push(PackedFile { path: self.path_of(path, &item, &path_at)?, content });
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (index, file) in files.iter().enumerate() {
            if !seen.insert(file.path.as_str()) {
                return Err(scope.plain_error("package", &format!("file {} of the package has the path of an earlier one", index + 1)));
            }
        }
        Ok(Rendition::Package { format: self.format, modified, files })
    }

    fn path_of(&self, expr: &Expr, scope: &Scope, at: &Place) -> Result<String, RenderError> {
        let values = scope.eval(expr, at)?;
        let path = match values.as_slice() {
            [Val::TStr(s)] => String::from_utf8_lossy(s).into_owned(),
            _ => return Err(scope.error(at, expr, "must yield one string, the file's path".into())),
        };
        check_path(&path).map_err(|m| scope.error(at, expr, m.into()))?;
        Ok(path)
    }
}

/// A package path must stay inside the package on every file system.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path.len() > 1024 {
        return Err("yields a path longer than 1024 bytes");
    }
    if path.starts_with('/') || path.contains('\\') || path.chars().any(char::is_control) {
        return Err("yields a path that is absolute or has a backslash or control character");
    }
    for part in path.split('/') {
        if part.is_empty() || part.starts_with('.') || part.len() > 255 {
            return Err("yields a path with an empty, hidden ('.'-leading) or over-long part");
        }
    }
    Ok(())
}

pub(super) fn zip(files: &[PackageFile], modified: i64) -> Result<Vec<u8>, String> {
    let time = jiff::Timestamp::from_second(modified).unwrap_or(jiff::Timestamp::UNIX_EPOCH).to_zoned(jiff::tz::TimeZone::UTC);
    let stamp = zip::DateTime::from_date_and_time(
        time.year().clamp(1980, 2107) as u16,
        time.month() as u8,
        time.day() as u8,
        time.hour() as u8,
        time.minute() as u8,
        time.second() as u8,
    )
    .unwrap_or_default();
    // Room for every file and the zip's headers up front: growing by
    // doubling would copy a large package over and over.
    let room = files.iter().map(|f| f.content.len() as usize + 2 * f.path.len() + 128).sum::<usize>() + 1024;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::with_capacity(room)));
    for file in files {
        // Text compresses well; PDFs and images are compressed already.
        let text = [".xml", ".json", ".csv", ".txt"].iter().any(|ext| file.path.to_ascii_lowercase().ends_with(ext));
        let method = if text { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .last_modified_time(stamp)
            .unix_permissions(0o644)
            .large_file(file.content.len() >= u32::MAX as u64);
        let bytes = file.content.in_memory().ok_or_else(|| format!("{} was not read in for the zip", file.path))?;
        writer.start_file(file.path.as_str(), options).map_err(|e| format!("writing the zip failed: {e}"))?;
        writer.write_all(bytes).map_err(|e| format!("writing the zip failed: {e}"))?;
    }
    let cursor = writer.finish().map_err(|e| format!("writing the zip failed: {e}"))?;
    Ok(cursor.into_inner())
}
