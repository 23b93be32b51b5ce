//! XML form data, read into the JSON tree that mappings see.
//!
//! Many form servers send the form as XML. amtsbote reads it into JSON by
//! one fixed convention, so that a mapping is written the same way for
//! both:
//!
//! * the document becomes `{ "<root>": <content> }`;
//! * element and attribute names lose their namespace prefix (`xf:name`
//!   → `name`); namespace declarations are dropped;
//! * an element with only text becomes that string (an empty one `""`);
//!   numbers stay strings, as XML has no types;
//! * an element with attributes or child elements becomes an object:
//!   attributes under `"@name"`, children under their names, and its own
//!   non-blank text under `"#text"`;
//! * a name that occurs more than once among siblings becomes an array in
//!   document order; once, a single value. `items` in a mapping handles
//!   both (`.antrag.hund | items`);
//! * comments and processing instructions are skipped; CDATA is text.
//!
//! Refused: DTDs (`<!DOCTYPE`), so no external entities and no entity
//! expansion; entities other than the five predefined ones and character
//! references; nesting deeper than [`MAX_DEPTH`].

use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Value};

/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 100;

/// Why XML form data was refused; never quotes the data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct XmlDataError(pub String);

struct Open {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<(String, Value)>,
    text: String,
}

/// Reads XML form data into its JSON tree.
pub fn to_json(xml: &str) -> Result<Value, XmlDataError> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    let at = |reader: &Reader<&[u8]>| reader.buffer_position();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlDataError(format!("not well-formed XML at byte {}: {}", at(&reader), kind_of(&e))))?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(XmlDataError("more than one root element".into()));
            }
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlDataError(format!("elements nested deeper than {MAX_DEPTH}")));
                }
                stack.push(open(&start)?);
            }
            Event::Empty(start) => {
                let element = open(&start)?;
                close(element, &mut stack, &mut root);
            }
            Event::End(_) => {
                let element = stack.pop().ok_or_else(|| XmlDataError("unexpected end tag".into()))?;
                close(element, &mut stack, &mut root);
            }
            Event::Text(text) => {
                let content = text.xml10_content();
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None => return Err(XmlDataError("text outside the root element".into())),
                }
            }
            Event::CData(data) => {
                let content = data.xml10_content().into_owned();
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&content),
                    None => return Err(XmlDataError("text outside the root element".into())),
                }
            }
            Event::GeneralRef(reference) => {
                let resolved = if reference.is_char_ref() {
                    reference.resolve_char_ref().ok().flatten()
                } else {
                    match &*reference.xml10_content() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        _ => None,
                    }
                };
                let c = resolved.ok_or_else(|| XmlDataError("an entity other than &amp; &lt; &gt; &quot; &apos; or a character reference".into()))?;
                match stack.last_mut() {
                    Some(open) => open.text.push(c),
                    None => return Err(XmlDataError("text outside the root element".into())),
                }
            }
            Event::DocType(_) => return Err(XmlDataError("a DOCTYPE; DTDs are not accepted".into())),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlDataError("the document ends inside an element".into()));
    }
    let (name, content) = root.ok_or_else(|| XmlDataError("no root element".into()))?;
    let mut map = Map::new();
    map.insert(name, content);
    Ok(Value::Object(map))
}

fn kind_of(e: &quick_xml::Error) -> String {
    // quick-xml's messages can quote names from the document; keep the
    // kind only.
    let text = e.to_string();
    text.split(':').next().unwrap_or("syntax error").to_owned()
}

fn local(name: &str) -> String {
    name.rsplit(':').next().unwrap_or(name).to_owned()
}

fn open(start: &quick_xml::events::BytesStart) -> Result<Open, XmlDataError> {
    let name = local(start.name().as_ref());
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|_| XmlDataError("a malformed attribute".into()))?;
        let key = attribute.key.as_ref();
        if key == "xmlns" || key.starts_with("xmlns:") {
            continue;
        }
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|_| XmlDataError("an attribute value with an unknown entity".into()))?;
        attributes.push((format!("@{}", local(key)), value.into_owned()));
    }
    Ok(Open { name, attributes, children: Vec::new(), text: String::new() })
}

fn close(element: Open, stack: &mut [Open], root: &mut Option<(String, Value)>) {
    let Open { name, attributes, children, text } = element;
    let value = if attributes.is_empty() && children.is_empty() {
        Value::String(text)
    } else {
        let mut map = Map::new();
        for (k, v) in attributes {
            map.insert(k, Value::String(v));
        }
        for (k, v) in children {
            match map.get_mut(&k) {
                // Element values are strings or objects, never arrays: an
                // array here is one this loop made for a repeated name.
                Some(Value::Array(items)) => items.push(v),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, v]);
                }
                None => {
                    map.insert(k, v);
                }
            }
        }
        if !text.trim().is_empty() {
            map.insert("#text".into(), Value::String(text));
        }
        Value::Object(map)
    };
    match stack.last_mut() {
        Some(parent) => parent.children.push((name, value)),
        None => *root = Some((name, value)),
    }
}
