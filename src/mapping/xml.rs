//! XML output, written with quick-xml.
//!
//! The document maps onto the root element named by the mapping's `root`.
//! Keys are element names (`prefix:local`, the prefix declared under
//! `namespaces`, or unprefixed), `"@name"` keys are attributes. An
//! expression yields one element per value; no value or `null` leaves the
//! element out, and so does an element that ends up with no attributes, no
//! text and no children, which makes optional groups disappear as a whole.
//! Output is deterministic: UTF-8, declaration, two-space indentation, the
//! namespace declarations on the root in the order written, a final newline.

use std::collections::HashSet;

use jaq_json::Val;
use quick_xml::Writer;
use quick_xml::escape::partial_escape;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

use super::template::{MapTemplate, Template, TemplateError};
use super::{Place, RenderError, Scope};

/// An element to write; names borrow the template's, text shares the
/// value's bytes where it can (a document has a few hundred of each).
struct Element<'t> {
    name: &'t str,
    attributes: Vec<(std::borrow::Cow<'t, str>, Text)>,
    text: Option<Text>,
    children: Vec<Element<'t>>,
}

/// The text of an element or attribute, valid for XML.
pub(super) enum Text {
    /// A string value's bytes, checked to be UTF-8.
    Shared(bytes::Bytes),
    Owned(String),
}

impl Text {
    pub(super) fn as_str(&self) -> &str {
        match self {
            Text::Shared(bytes) => std::str::from_utf8(bytes).expect("checked to be UTF-8 when made"),
            Text::Owned(text) => text,
        }
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        match text {
            Text::Owned(text) => text,
            shared => shared.as_str().to_owned(),
        }
    }
}

impl Element<'_> {
    fn is_empty(&self) -> bool {
        self.attributes.is_empty() && self.text.is_none() && self.children.is_empty()
    }
}

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

pub fn render(root: &str, namespaces: &[(String, String)], document: &Template, scope: &Scope) -> Result<Vec<u8>, RenderError> {
    let Template::Map(map) = document else { unreachable!("checked at load") };
    let mut elements = Vec::new();
    build_map(root, map, scope, &Place::At("document"), &mut elements)?;
    let mut root_element = match elements.pop() {
        Some(e) if elements.is_empty() => e,
        Some(_) => return Err(scope.plain_error("document", "the root element must not repeat ($each on the document)")),
        None => Element { name: root, attributes: Vec::new(), text: None, children: Vec::new() },
    };
    let declarations = namespaces.iter().map(|(prefix, uri)| {
        let name = if prefix.is_empty() { "xmlns".into() } else { format!("xmlns:{prefix}").into() };
        (name, Text::Owned(uri.clone()))
    });
    root_element.attributes.splice(0..0, declarations);

    let mut writer = Writer::new_with_indent(Vec::with_capacity(4096), b' ', 2);
    let io = |e: std::io::Error| scope.plain_error("document", &format!("writing XML failed: {e}"));
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None))).map_err(io)?;
    write_element(&mut writer, &root_element).map_err(io)?;
    let mut bytes = writer.into_inner();
    bytes.push(b'\n');
    Ok(bytes)
}

fn write_element(w: &mut Writer<Vec<u8>>, e: &Element) -> std::io::Result<()> {
    let mut start = BytesStart::new(e.name);
    for (k, v) in &e.attributes {
        start.push_attribute((k.as_ref(), v.as_str()));
    }
    if e.text.is_none() && e.children.is_empty() {
        return w.write_event(Event::Empty(start));
    }
    w.write_event(Event::Start(start))?;
    if let Some(text) = &e.text {
        // Only `<`, `>` and `&` need escaping in text; quotes stay readable.
        w.write_event(Event::Text(BytesText::from_escaped(partial_escape(text.as_str()))))?;
    }
    for child in &e.children {
        write_element(w, child)?;
    }
    w.write_event(Event::End(BytesEnd::new(e.name)))
}

/// Appends the elements that `name: template` yields in `scope`.
fn build<'t>(name: &'t str, template: &'t Template, scope: &Scope, path: &Place, out: &mut Vec<Element<'t>>) -> Result<(), RenderError> {
    match template {
        Template::Constant(v, _) => out.push(leaf(name, Text::Owned(constant_text(v)))),
        Template::Expr(expr) => {
            for value in scope.eval(expr, path)? {
                if let Some(text) = text_of(&value).map_err(|m| scope.error(path, expr, m))? {
                    out.push(leaf(name, text));
                }
            }
        }
        Template::List(items) => {
            for (i, item) in items.iter().enumerate() {
                build(name, item, scope, &Place::Item(path, i), out)?;
            }
        }
        Template::Map(map) => build_map(name, map, scope, path, out)?,
    }
    Ok(())
}

fn build_map<'t>(name: &'t str, map: &'t MapTemplate, scope: &Scope, path: &Place, out: &mut Vec<Element<'t>>) -> Result<(), RenderError> {
    let each_scopes;
    let scopes = match &map.each {
        Some(each) => {
            each_scopes = scope.each(each, path)?;
            each_scopes.as_slice()
        }
        None => std::slice::from_ref(scope),
    };
    for scope in scopes {
        let mut element = Element { name, attributes: Vec::new(), text: None, children: Vec::new() };
        if let Some(text) = &map.text {
            element.text = single_text(text, scope, &Place::Key(path, "$text"))?;
        }
        for (key, child) in &map.entries {
            let child_path = Place::Key(path, key);
            match key.strip_prefix('@') {
                Some(attr) => {
                    if let Some(value) = single_text(child, scope, &child_path)? {
                        element.attributes.push((attr.into(), value));
                    }
                }
                None => build(key, child, scope, &child_path, &mut element.children)?,
            }
        }
        if !element.is_empty() {
            out.push(element);
        }
    }
    Ok(())
}

/// Text of an attribute or `$text`: at most one value.
fn single_text(template: &Template, scope: &Scope, path: &Place) -> Result<Option<Text>, RenderError> {
    match template {
        Template::Constant(v, _) => Ok(Some(Text::Owned(constant_text(v)))),
        Template::Expr(expr) => {
            let values = scope.eval(expr, path)?;
            match values.as_slice() {
                [] => Ok(None),
                [value] => text_of(value).map_err(|m| scope.error(path, expr, m)),
                _ => Err(scope.error(path, expr, format!("yields {} values where one is expected", values.len()))),
            }
        }
        _ => unreachable!("checked at load"),
    }
}

fn leaf(name: &str, text: Text) -> Element<'_> {
    Element { name, attributes: Vec::new(), text: Some(text), children: Vec::new() }
}

pub(super) fn constant_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The text an expression's value stands for; `None` for null.
pub(super) fn text_of(value: &Val) -> Result<Option<Text>, String> {
    let text = match value {
        Val::Null => return Ok(None),
        Val::Bool(b) => Text::Owned(b.to_string()),
        Val::Num(n) => Text::Owned(n.to_string()),
        Val::TStr(s) => match std::str::from_utf8(s) {
            Ok(_) => Text::Shared((**s).clone()),
            Err(_) => Text::Owned(String::from_utf8_lossy(s).into_owned()),
        },
        Val::BStr(_) => return Err("yields a byte string; XML text needs a string".into()),
        Val::Arr(_) => return Err("yields an array; XML text needs a string or number (use $each or .[] to repeat)".into()),
        Val::Obj(_) => return Err("yields an object; XML text needs a string or number".into()),
    };
    if let Some(c) = text.as_str().chars().find(|&c| !is_xml_char(c)) {
        return Err(format!("yields text with a character XML 1.0 cannot carry (U+{:04X})", c as u32));
    }
    Ok(Some(text))
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}
