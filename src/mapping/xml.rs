//! XML output.
//!
//! The document maps onto the root element named by the mapping's `root`.
//! Keys are element names (`prefix:local`, the prefix declared under
//! `namespaces`, or unprefixed), `"@name"` keys are attributes. An
//! expression yields one element per value; no value or `null` leaves the
//! element out, and so does an element that ends up with no attributes, no
//! text and no children, which makes optional groups disappear as a whole.
//! Output is deterministic: UTF-8, declaration, two-space indentation, the
//! namespace declarations on the root in the order written, a final newline.

use std::borrow::Cow;
use std::collections::HashSet;

use jaq_json::Val;

use super::template::{MapTemplate, Template, TemplateError};
use super::{Place, RenderError, Scope};

/// Load-time checks: names are XML names, prefixes are declared, `$text`
/// and attributes are leaves.
pub fn check(root: &str, root_line: u64, namespaces: &[(String, String, u64)], document: &Template) -> Result<(), TemplateError> {
    let declared: HashSet<&str> = namespaces.iter().map(|(p, _, _)| p.as_str()).collect();
    let check_name = |name: &str, path: &str, line: u64| -> Result<(), TemplateError> {
        let err = |message: String| Err(TemplateError::new(line, path, message));
        let (prefix, local) = match name.split_once(':') {
            Some((p, l)) => (Some(p), l),
            None => (None, name),
        };
        if !is_ncname(local) || prefix.is_some_and(|p| !is_ncname(p)) {
            return err(format!("{name:?} is not a valid XML name"));
        }
        if let Some(p) = prefix
            && p != "xml" && !declared.contains(p) {
                return err(format!("namespace prefix {p:?} is not declared under namespaces"));
            }
        Ok(())
    };
    for (prefix, uri, line) in namespaces {
        if !(prefix.is_empty() || is_ncname(prefix)) || uri.is_empty() {
            return Err(TemplateError::new(*line, format!("namespaces/{prefix}"), "a namespace needs a valid prefix (or \"\" for the default) and a URI"));
        }
    }
    check_name(root, "root", root_line)?;
    let Template::Map(_) = document else {
        return Err(TemplateError::new(document.line(), "document", "the XML document must be a mapping of the root element's content"));
    };
    document.walk("document", &mut |path, node| {
        if let Template::Map(map) = node {
            if let Some(text) = &map.text
                && !matches!(**text, Template::Expr(_) | Template::Constant(..)) {
                    return Err(TemplateError::new(map.line, format!("{path}/$text"), "$text must be an expression or constant"));
                }
            for (key, child) in &map.entries {
                let child_path = format!("{path}/{key}");
                match key.strip_prefix('@') {
                    Some(attr) => {
                        check_name(attr, &child_path, child.line().max(map.line))?;
                        if !matches!(child, Template::Expr(_) | Template::Constant(..)) {
                            return Err(TemplateError::new(map.line, child_path, "an attribute must be an expression or constant"));
                        }
                    }
                    None => check_name(key, &child_path, child.line().max(map.line))?,
                }
            }
        }
        Ok(())
    })
}

fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The document as it is written: elements go out as they are evaluated,
/// and one that ends up empty is taken back. Line breaks and indentation
/// follow quick-xml's indenting writer, which wrote these documents
/// before: a tag starts on a new line, indented two spaces per level,
/// unless it follows text.
struct Out {
    bytes: Vec<u8>,
    /// Whether the next tag starts on a new line.
    line_break: bool,
}

impl Out {
    /// A new line, indented to `depth`, if one is due.
    fn break_line(&mut self, depth: usize) {
        if self.line_break {
            self.bytes.push(b'\n');
            self.bytes.resize(self.bytes.len() + 2 * depth, b' ');
        }
    }

    fn tag_start(&mut self, depth: usize, name: &str) {
        self.break_line(depth);
        self.bytes.push(b'<');
        self.bytes.extend_from_slice(name.as_bytes());
    }

    fn end_tag(&mut self, depth: usize, name: &str) {
        self.break_line(depth);
        self.bytes.extend_from_slice(b"</");
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(b'>');
        self.line_break = true;
    }

    /// Text: only `<`, `>`, `&` (and `\r`, which a parser would turn into
    /// a line feed) need escaping; quotes stay readable.
    fn text(&mut self, text: &str) {
        escape_into(&mut self.bytes, text, |b| matches!(b, b'<' | b'>' | b'&' | b'\r'));
        self.line_break = false;
    }

    fn leaf(&mut self, depth: usize, name: &str, text: &str) {
        self.tag_start(depth, name);
        self.bytes.push(b'>');
        self.text(text);
        self.end_tag(depth, name);
    }
}

/// ` name="value"`, the value escaped as quick-xml escapes attributes
/// (whitespace other than spaces too, so that a parser keeps it).
fn attribute(name: &str, value: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(name.len() + value.len() + 4);
    bytes.push(b' ');
    bytes.extend_from_slice(name.as_bytes());
    bytes.extend_from_slice(b"=\"");
    escape_into(&mut bytes, value, |b| matches!(b, b'<' | b'>' | b'&' | b'\'' | b'"' | b'\t' | b'\n' | b'\r'));
    bytes.push(b'"');
    bytes
}

fn escape_into(out: &mut Vec<u8>, text: &str, escaped: impl Fn(u8) -> bool) {
    let mut rest = text.as_bytes();
    while let Some(at) = rest.iter().position(|&b| escaped(b)) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(match rest[at] {
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'&' => b"&amp;",
            b'\'' => b"&apos;",
            b'"' => b"&quot;",
            b'\t' => b"&#9;",
            b'\n' => b"&#10;",
            _ => b"&#13;",
        });
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

pub fn render(root: &str, namespaces: &[(String, String)], document: &Template, scope: &Scope) -> Result<Vec<u8>, RenderError> {
    let Template::Map(map) = document else { unreachable!("checked at load") };
    let mut out = Out { bytes: Vec::with_capacity(4096), line_break: false };
    out.bytes.extend_from_slice(br#"<?xml version="1.0" encoding="UTF-8"?>"#);
    out.line_break = true;
    let declarations: Vec<u8> = namespaces
        .iter()
        .flat_map(|(prefix, uri)| match prefix.as_str() {
            "" => attribute("xmlns", uri),
            prefix => attribute(&format!("xmlns:{prefix}"), uri),
        })
        .collect();
    match write_map(&mut out, 0, root, map, scope, &Place::At("document"), &declarations)? {
        0 => {
            out.tag_start(0, root);
            out.bytes.extend_from_slice(&declarations);
            out.bytes.extend_from_slice(b"/>");
        }
        1 => {}
        _ => return Err(scope.plain_error("document", "the root element must not repeat ($each on the document)")),
    }
    out.bytes.push(b'\n');
    Ok(out.bytes)
}

/// Writes the elements that `name: template` yields in `scope`.
fn build(out: &mut Out, depth: usize, name: &str, template: &Template, scope: &Scope, path: &Place) -> Result<(), RenderError> {
    match template {
        Template::Constant(v, _) => out.leaf(depth, name, &constant_text(v)),
        Template::Expr(expr) => scope.each_value(expr, path, |value| {
            if let Some(text) = text_of(value).map_err(|m| scope.error(path, expr, m))? {
                out.leaf(depth, name, &text);
            }
            Ok(())
        })?,
        Template::List(items) => {
            for (i, item) in items.iter().enumerate() {
                build(out, depth, name, item, scope, &Place::Item(path, i))?;
            }
        }
        Template::Map(map) => {
            write_map(out, depth, name, map, scope, path, &[])?;
        }
    }
    Ok(())
}

/// Writes the element `name` once per scope of the map's `$each` and
/// says how many were written: one without attributes, text or children
/// is taken back. `declarations` (the root's namespaces) go first in the
/// start tag and do not count.
fn write_map(out: &mut Out, depth: usize, name: &str, map: &MapTemplate, scope: &Scope, path: &Place, declarations: &[u8]) -> Result<usize, RenderError> {
    let each_scopes;
    let scopes = match &map.each {
        Some(each) => {
            each_scopes = scope.each(each, path)?;
            each_scopes.as_slice()
        }
        None => std::slice::from_ref(scope),
    };
    let mut written = 0;
    for scope in scopes {
        let (start, line_break) = (out.bytes.len(), out.line_break);
        out.tag_start(depth, name);
        out.bytes.extend_from_slice(declarations);
        // Where the start tag's `>` goes (or went).
        let mut tag_end = out.bytes.len();
        let (mut opened, mut attributes, mut content) = (false, false, false);
        if let Some(text) = &map.text
            && let Some(text) = single_text(text, scope, &Place::Key(path, "$text"))?
        {
            out.bytes.push(b'>');
            opened = true;
            out.text(&text);
            content = true;
        }
        for (key, child) in &map.entries {
            let child_path = Place::Key(path, key);
            match key.strip_prefix('@') {
                Some(attr) => {
                    if let Some(value) = single_text(child, scope, &child_path)? {
                        // Written after a child in the mapping, it still
                        // belongs in the start tag.
                        let attribute = attribute(attr, &value);
                        let length = attribute.len();
                        out.bytes.splice(tag_end..tag_end, attribute);
                        tag_end += length;
                        attributes = true;
                    }
                }
                None => {
                    if !opened {
                        out.bytes.push(b'>');
                        out.line_break = true;
                        opened = true;
                    }
                    let before = out.bytes.len();
                    build(out, depth + 1, key, child, scope, &child_path)?;
                    content |= out.bytes.len() > before;
                }
            }
        }
        if content {
            out.end_tag(depth, name);
        } else if attributes {
            out.bytes.truncate(tag_end);
            out.bytes.extend_from_slice(b"/>");
            out.line_break = true;
        } else {
            out.bytes.truncate(start);
            out.line_break = line_break;
            continue;
        }
        written += 1;
    }
    Ok(written)
}

/// Text of an attribute or `$text`: at most one value.
fn single_text(template: &Template, scope: &Scope, path: &Place) -> Result<Option<String>, RenderError> {
    match template {
        Template::Constant(v, _) => Ok(Some(constant_text(v))),
        Template::Expr(expr) => {
            let values = scope.eval(expr, path)?;
            match values.as_slice() {
                [] => Ok(None),
                [value] => Ok(text_of(value).map_err(|m| scope.error(path, expr, m))?.map(Cow::into_owned)),
                _ => Err(scope.error(path, expr, format!("yields {} values where one is expected", values.len()))),
            }
        }
        _ => unreachable!("checked at load"),
    }
}

pub(super) fn constant_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The text an expression's value stands for; `None` for null.
pub(super) fn text_of(value: &Val) -> Result<Option<Cow<'_, str>>, String> {
    let text = match value {
        Val::Null => return Ok(None),
        Val::Bool(b) => Cow::Owned(b.to_string()),
        Val::Num(n) => Cow::Owned(n.to_string()),
        Val::TStr(s) => String::from_utf8_lossy(s),
        Val::BStr(_) => return Err("yields a byte string; XML text needs a string".into()),
        Val::Arr(_) => return Err("yields an array; XML text needs a string or number (use $each or .[] to repeat)".into()),
        Val::Obj(_) => return Err("yields an object; XML text needs a string or number".into()),
    };
    // Printable ASCII needs no look at its characters.
    let plain = |b: &u8| (0x20..0x80).contains(b) || matches!(b, b'\t' | b'\n' | b'\r');
    if !text.as_bytes().iter().all(plain)
        && let Some(c) = text.chars().find(|&c| !is_xml_char(c))
    {
        return Err(format!("yields text with a character XML 1.0 cannot carry (U+{:04X})", c as u32));
    }
    Ok(Some(text))
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}
