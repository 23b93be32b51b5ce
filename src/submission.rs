//! Submissions: the intake envelope and its validation; what travels
//! through the broker is written by [`crate::message`].
//!
//! Validation happens once, at intake, and names the offending field as a
//! JSON pointer. What goes onto the queue is the envelope with amtsbote's
//! id and receive time added; form data and attachment contents are copied
//! through as received (no re-encoding of base64, no re-serialization of
//! the form data), except that a large attachment is named by its blob
//! (`"blob": "<sha256>"`) instead of carried (see [`crate::blobs`]).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::domain::{Region, ServiceKey};
use crate::message::{Attachment, Purpose, Queued};

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON pointer (RFC 6901) to the field, e.g. `#/attachments/0/content`.
    pub pointer: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { pointer: pointer.into(), detail: detail.into() }
    }
}

/// Why a request body is not a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidSubmission {
    /// Not JSON at all.
    Malformed(String),
    /// JSON, but fields are missing, mistyped or invalid.
    Fields(Vec<FieldError>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope<'a> {
    service: String,
    region: String,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    submitted_at: Option<String>,
    /// The form as JSON (an object)...
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    /// ...or as XML, read into JSON by the convention of [`xml`].
    #[serde(default)]
    data_xml: Option<String>,
    #[serde(default, borrow)]
    attachments: Vec<AttachmentIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AttachmentIn<'a> {
    name: String,
    media_type: String,
    purpose: Purpose,
    /// Borrowed from the body unless the sender escaped characters (PHP's
    /// `json_encode` writes `/` as `\/`, and base64 has many).
    #[serde(borrow)]
    content: Cow<'a, str>,
}

/// A validated submission, borrowing the request body.
#[derive(Debug)]
pub struct Submission<'a> {
    pub service: ServiceKey,
    pub region: Region,
    pub reference: Option<String>,
    pub submitted_at: Option<String>,
    data: FormData<'a>,
    attachments: Vec<Attachment<'a>>,
    /// For a submission received through FIT-Connect: its ids there and
    /// what its metadata says beyond the form (see
    /// [`crate::fit_connect`]); mappings read it as `.fitConnect`.
    pub fit_connect: Option<Box<RawValue>>,
}

/// The form data as it came: JSON, or XML with the JSON read from it.
#[derive(Debug)]
enum FormData<'a> {
    Json(&'a RawValue),
    Xml { tree: Box<RawValue>, xml: String },
}

const MAX_REFERENCE_LEN: usize = 200;
const MAX_ATTACHMENT_NAME_LEN: usize = 255;

/// What one submission may hold beyond the body size (which the HTTP layer
/// bounds): each limit is refused naming the field, before anything is
/// stored or published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Attachments per submission.
    pub attachments: usize,
    /// Decoded bytes of one attachment.
    pub attachment_bytes: usize,
    /// Nesting of arrays and objects in the JSON form data. serde_json
    /// stops at 128 for the whole body anyway; mappings and schemas walk
    /// the tree recursively, so the form gets a tighter bound of its own.
    pub json_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { attachments: 100, attachment_bytes: 25 * 1024 * 1024, json_depth: 32 }
    }
}

impl<'a> Submission<'a> {
    /// Parses and validates a request body.
    pub fn parse(body: &'a [u8], limits: &Limits) -> Result<Self, InvalidSubmission> {
        // serde would read a struct from an array, too, and then name
        // array positions: say what is wrong instead.
        if body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|&b| b != b'{') {
            return Err(InvalidSubmission::Fields(vec![FieldError::new("#", "a submission is a JSON object")]));
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        // Tracking the path makes the parse a third slower (1.8 against
        // 1.3 µs for the demo's Gewerbeanmeldung): it is done only to word
        // an error, by parsing the refused envelope once more.
        let envelope = match Envelope::deserialize(&mut de) {
            Ok(e) => e,
            Err(plain) => {
                let mut again = serde_json::Deserializer::from_slice(body);
                return Err(match serde_path_to_error::deserialize::<_, Envelope<'a>>(&mut again) {
                    Err(located) => from_serde(located),
                    Ok(_) => InvalidSubmission::Malformed(plain.to_string()),
                });
            }
        };
        if let Err(e) = de.end() {
            return Err(InvalidSubmission::Malformed(e.to_string()));
        }

        let mut errors = Vec::new();
        let service = ServiceKey::parse(&envelope.service)
            .map_err(|e| errors.push(FieldError::new("#/service", e.0)))
            .ok();
        let region = Region::parse(&envelope.region)
            .map_err(|e| errors.push(FieldError::new("#/region", e.0)))
            .ok();
        if let Some(reference) = &envelope.reference
            && (reference.is_empty() || reference.chars().count() > MAX_REFERENCE_LEN || reference.chars().any(char::is_control)) {
                errors.push(FieldError::new(
                    "#/reference",
                    format!("must be 1 to {MAX_REFERENCE_LEN} characters without control characters"),
                ));
            }
        if let Some(at) = &envelope.submitted_at
            && OffsetDateTime::parse(at, &Rfc3339).is_err() {
                errors.push(FieldError::new("#/submittedAt", "must be an RFC 3339 timestamp such as 2026-11-20T09:14:00Z"));
            }
        let data = match (envelope.data, envelope.data_xml) {
            (Some(json), None) if json.get().starts_with('{') => {
                if json_depth(json.get()) > limits.json_depth {
                    errors.push(FieldError::new("#/data", format!("is nested deeper than {} levels", limits.json_depth)));
                }
                if has_lone_surrogate(json.get()) {
                    errors.push(FieldError::new(
                        "#/data",
                        "holds a \\u escape of half a UTF-16 surrogate pair without its other half, which is no character",
                    ));
                }
                Some(FormData::Json(json))
            }
            (Some(_), None) => {
                errors.push(FieldError::new("#/data", "must be a JSON object"));
                None
            }
            (None, Some(xml)) => match xml::to_json(&xml) {
                Ok(tree) => {
                    // Repeated elements become arrays: the tree can be
                    // deeper than the XML, and must stay readable by
                    // serde_json (128 levels).
                    let tree = tree.to_string();
                    if json_depth(&tree) > limits.json_depth {
                        errors.push(FieldError::new(
                            "#/dataXml",
                            format!("is nested deeper than {} levels once read as JSON", limits.json_depth),
                        ));
                        None
                    } else {
                        let tree = RawValue::from_string(tree).expect("a JSON value is valid JSON");
                        Some(FormData::Xml { tree, xml })
                    }
                }
                Err(e) => {
                    errors.push(FieldError::new("#/dataXml", format!("must be well-formed XML form data: {e}")));
                    None
                }
            },
            (Some(_), Some(_)) => {
                errors.push(FieldError::new("#/dataXml", "give the form as data (JSON) or as dataXml, not both"));
                None
            }
            (None, None) => {
                errors.push(FieldError::new("#/data", "is required (or dataXml for a form in XML)"));
                None
            }
        };
        if envelope.attachments.len() > limits.attachments {
            errors.push(FieldError::new(
                "#/attachments",
                format!("holds {} attachments; at most {} are accepted", envelope.attachments.len(), limits.attachments),
            ));
        }
        let mut attachments = Vec::with_capacity(envelope.attachments.len());
        for (i, a) in envelope.attachments.into_iter().enumerate() {
            let at = |field: &str| format!("#/attachments/{i}/{field}");
            if !is_safe_file_name(&a.name) {
                errors.push(FieldError::new(
                    at("name"),
                    attachment_name_rule(),
                ));
            }
            if !is_media_type(&a.media_type) {
                errors.push(FieldError::new(at("mediaType"), "must be a media type such as application/pdf"));
            }
            if !is_base64(&a.content) {
                errors.push(FieldError::new(at("content"), "must be standard base64 (RFC 4648, with padding)"));
                continue;
            }
            let size = decoded_len(&a.content);
            if size > limits.attachment_bytes {
                errors.push(FieldError::new(
                    at("content"),
                    format!("is {size} bytes; an attachment may have at most {}", limits.attachment_bytes),
                ));
            } else {
                attachments.push(Attachment {
                    size,
                    file: String::new(),
                    name: a.name,
                    media_type: a.media_type,
                    purpose: a.purpose,
                    content: Some(a.content),
                    blob: None,
                });
            }
        }
        let files = unique_file_names(attachments.iter().map(|a| a.name.as_str()));
        for (attachment, file) in attachments.iter_mut().zip(files) {
            attachment.file = file;
        }
        match (service, region, data) {
            (Some(service), Some(region), Some(data)) if errors.is_empty() => Ok(Submission {
                service,
                region,
                reference: envelope.reference,
                submitted_at: envelope.submitted_at,
                data,
                attachments,
                fit_connect: None,
            }),
            _ => Err(InvalidSubmission::Fields(errors)),
        }
    }

    /// The form data as a JSON value (for schema checks).
    pub fn data_value(&self) -> serde_json::Value {
        let raw = match &self.data {
            FormData::Json(raw) => *raw,
            FormData::Xml { tree, .. } => tree,
        };
        serde_json::from_str(raw.get()).expect("validated JSON")
    }

    /// The attachments of at least `bytes` decoded bytes that still travel
    /// in the message: their index and base64 content, a slice of `body`
    /// (the body this submission was parsed from) where it can be.
    pub fn attachments_from(&self, bytes: usize, body: &bytes::Bytes) -> Vec<(usize, bytes::Bytes)> {
        self.attachments
            .iter()
            .enumerate()
            .filter(|(_, a)| a.size >= bytes)
            .filter_map(|(index, a)| {
                let content = match a.content.as_ref()? {
                    Cow::Borrowed(base64) => body.slice_ref(base64.as_bytes()),
                    Cow::Owned(base64) => bytes::Bytes::copy_from_slice(base64.as_bytes()),
                };
                Some((index, content))
            })
            .collect()
    }

    /// From now on the message names attachment `index` by `blob` instead
    /// of carrying its content.
    pub fn keep_out(&mut self, index: usize, blob: crate::domain::BlobId) {
        let attachment = &mut self.attachments[index];
        attachment.content = None;
        attachment.blob = Some(blob);
    }

    /// The message body for the queue.
    pub fn to_message(&self, id: Uuid, received_at: OffsetDateTime) -> Vec<u8> {
        let queued = Queued {
            id,
            service: &self.service,
            region: &self.region,
            reference: &self.reference,
            submitted_at: &self.submitted_at,
            received_at: crate::domain::timestamp(received_at),
            data: match &self.data {
                FormData::Json(raw) => raw,
                FormData::Xml { tree, .. } => tree,
            },
            data_xml: match &self.data {
                FormData::Json(_) => None,
                FormData::Xml { xml, .. } => Some(xml),
            },
            attachments: &self.attachments,
            fit_connect: self.fit_connect.as_deref(),
        };
        queued.to_vec()
    }
}

fn from_serde(e: serde_path_to_error::Error<serde_json::Error>) -> InvalidSubmission {
    let inner = e.inner();
    if inner.is_syntax() || inner.is_eof() || inner.is_io() {
        return InvalidSubmission::Malformed(inner.to_string());
    }
    let mut pointer = String::from("#");
    for segment in e.path().iter() {
        use serde_path_to_error::Segment;
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } | Segment::Enum { variant: key } => pointer.push_str(&format!("/{}", escape_pointer(key))),
            Segment::Unknown => {}
        }
    }
    // serde reports a missing field and an unknown field at the enclosing
    // object; point at the field itself.
    let message = strip_position(&inner.to_string());
    let named = |prefix: &str| message.strip_prefix(prefix).and_then(|rest| rest.split('`').next().map(str::to_owned));
    if let Some(field) = named("missing field `") {
        pointer.push_str(&format!("/{}", escape_pointer(&field)));
        return InvalidSubmission::Fields(vec![FieldError::new(pointer, "is required")]);
    }
    if let Some(field) = named("unknown field `") {
        if pointer.ends_with(&format!("/{}", escape_pointer(&field))) {
            // serde_path_to_error already descended into it.
        } else {
            pointer.push_str(&format!("/{}", escape_pointer(&field)));
        }
        return InvalidSubmission::Fields(vec![FieldError::new(pointer, "is not a field of a submission")]);
    }
    InvalidSubmission::Fields(vec![FieldError::new(pointer, message)])
}

/// serde_json appends " at line 1 column 20"; the pointer says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// What an attachment's name must be, as intake says it.
pub fn attachment_name_rule() -> String {
    format!("must be a file name of 1 to {MAX_ATTACHMENT_NAME_LEN} bytes without path separators or control characters")
}

/// Whether intake takes `name` as an attachment's name (and so a mapping
/// may meet it, also in a fixture).
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ATTACHMENT_NAME_LEN
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

/// File names for attachments in a package: each name as it is, with
/// ` (2)`, ` (3)`, ... before the extension where a name repeats, and a
/// leading dot replaced (hidden files get lost in transfer directories).
pub fn unique_file_names<'n>(names: impl Iterator<Item = &'n str>) -> Vec<String> {
    let mut taken = std::collections::HashSet::new();
    let mut files = Vec::new();
    for name in names {
        let name = match name.strip_prefix('.') {
            Some(rest) => format!("_{rest}"),
            None => name.to_owned(),
        };
        let (stem, extension) = match name.rfind('.') {
            Some(i) if i > 0 => (&name[..i], &name[i..]),
            _ => (name.as_str(), ""),
        };
        let mut candidate = name.clone();
        let mut n = 1;
        while !taken.insert(candidate.to_lowercase()) {
            n += 1;
            candidate = format!("{stem} ({n}){extension}");
        }
        files.push(candidate);
    }
    files
}

fn is_media_type(s: &str) -> bool {
    let token = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    let essence = s.split(';').next().unwrap_or("").trim();
    matches!(essence.split_once('/'), Some((t, sub)) if token(t) && token(sub))
}

fn is_base64(s: &str) -> bool {
    // Validates without allocating the decoded bytes (attachments can be
    // many megabytes): alphabet, length and padding per RFC 4648.
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let padding = b.iter().rev().take_while(|&&c| c == b'=').count();
    if padding > 2 {
        return false;
    }
    let body = &b[..b.len() - padding];
    if !body.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/') {
        return false;
    }
    // The unused bits of the last symbol must be zero (canonical encoding).
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    match (padding, body.last()) {
        (1, Some(&c)) => value(c) & 0b11 == 0,
        (2, Some(&c)) => value(c) & 0b1111 == 0,
        _ => true,
    }
}

/// The deepest nesting of arrays and objects in valid JSON, counted on
/// the raw text without building the tree.
fn json_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Whether `json` (JSON text, already found well-formed) holds a `\u`
/// escape of half a UTF-16 surrogate pair without the other half. The
/// form data is kept as the sender wrote it, and serde_json keeps such an
/// escape in it; but every reader that decodes the data (the mapping
/// sandbox, a schema check) refuses it, so intake refuses it first.
fn has_lone_surrogate(json: &str) -> bool {
    let bytes = json.as_bytes();
    let unit = |at: usize| {
        let hex = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        u16::from_str_radix(hex, 16).ok()
    };
    let high = |u: u16| (0xD800..0xDC00).contains(&u);
    let low = |u: u16| (0xDC00..0xE000).contains(&u);
    // A backslash is only ever inside a string, where it starts an escape.
    let mut at = 0;
    while let Some(found) = bytes[at..].iter().position(|&b| b == b'\\') {
        let escape = at + found;
        at = escape + 2;
        if bytes.get(escape + 1) != Some(&b'u') {
            continue;
        }
        let Some(first) = unit(escape + 2) else { return true };
        at = escape + 6;
        if low(first) {
            return true;
        }
        if high(first) {
            match (bytes.get(at..at + 2), unit(at + 2)) {
                (Some(b"\\u"), Some(second)) if low(second) => at += 6,
                _ => return true,
            }
        }
    }
    false
}

fn decoded_len(s: &str) -> usize {
    let padding = s.bytes().rev().take_while(|&c| c == b'=').count();
    s.len() / 4 * 3 - padding
}

#[cfg(test)]
mod tests;
pub mod xml;
