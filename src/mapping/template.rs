//! The target-shaped document of a mapping file, compiled.
//!
//! A mapping's `document` is written in the shape of the output. Its leaves
//! are jq expressions; YAML numbers and booleans are constants. Keys that
//! start with `$` steer the rendering:
//!
//! * `$each: <expr>` on a mapping node renders the node once per value of
//!   the expression, with `.` bound to that value (`$submission` still
//!   holds the whole submission). `$each: select(<cond>)` is the way to
//!   make a whole element optional.
//! * `$text: <expr>` (XML) is the text of an element that also has
//!   attributes (`"@name": <expr>`).
//!
//! A sequence repeats its key (XML) or builds an array (JSON).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::expr::{Expr, ExprError};

/// A YAML node of a mapping's document as written, with the line of every
/// value so that errors can point at it.
#[derive(Debug, Clone)]
pub enum Node {
    Str(String),
    /// A number or boolean.
    Constant(Value),
    Null,
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(String, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Constant(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Constant(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Constant(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                serde_json::Number::from_f64(v)
                    .map(|n| Node::Constant(Value::Number(n)))
                    .ok_or_else(|| E::custom("numbers must be finite"))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries: Vec<(String, Spanned<Node>)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!("key {key:?} appears twice")));
                    }
                    entries.push((key, map.next_value()?));
                }
                Ok(Node::Map(entries))
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

#[derive(Debug)]
pub enum Template {
    Expr(Expr),
    /// A YAML number or boolean, rendered as written; and its line.
    Constant(Value, u64),
    Map(MapTemplate),
    List(Vec<Template>),
}

#[derive(Debug)]
pub struct MapTemplate {
    pub line: u64,
    pub each: Option<Expr>,
    pub text: Option<Box<Template>>,
    /// Entries in document order, `$`-keys removed.
    pub entries: Vec<(String, Template)>,
}

/// Where a problem sits in the document, e.g. `document/xga:kopf/@version`
/// on line 12.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: at {path}: {message}")]
pub struct TemplateError {
    pub line: u64,
    pub path: String,
    pub message: String,
}

impl TemplateError {
    pub fn new(line: u64, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { line, path: path.into(), message: message.into() }
    }
}

/// Compiles the expression written at `line`; an error names the line,
/// the place in the document and the expression.
pub fn compile_expr(code: &str, line: u64, path: &str) -> Result<Expr, TemplateError> {
    Expr::compile(code, line).map_err(|ExprError(m)| {
        // `Land: DE` reads as the jq filter `DE`: most likely a constant
        // meant as text.
        let bare_word = !code.is_empty() && code.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' ' | '.'))
            && m.starts_with("undefined filter");
        let hint = if bare_word {
            format!("; a string constant needs quotes inside the YAML string: '\"{code}\"'")
        } else {
            String::new()
        };
        TemplateError::new(line, path, format!("{m} in expression {code:?}{hint}"))
    })
}

impl Template {
    pub fn compile(node: &Spanned<Node>, path: &str) -> Result<Self, TemplateError> {
        let line = node.referenced.line();
        let err = |message: String| TemplateError::new(line, path, message);
        match &node.value {
            Node::Str(code) => Ok(Template::Expr(compile_expr(code, line, path)?)),
            Node::Constant(v) => Ok(Template::Constant(v.clone(), line)),
            Node::Null => Err(err("empty value; write an expression such as `null` or `\"\"` in quotes".into())),
            Node::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| Template::compile(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()
                .map(Template::List),
            Node::Map(map) => {
                let mut node = MapTemplate { line, each: None, text: None, entries: Vec::new() };
                for (key, value) in map {
                    let child_path = format!("{path}/{key}");
                    match key.as_str() {
                        "$each" => match &value.value {
                            Node::Str(code) => node.each = Some(compile_expr(code, value.referenced.line(), path)?),
                            _ => return Err(err("$each must be a jq expression".into())),
                        },
                        "$text" => node.text = Some(Box::new(Template::compile(value, &child_path)?)),
                        k if k.starts_with('$') => {
                            return Err(err(format!("unknown directive {k} (known: $each, $text)")));
                        }
                        _ => node.entries.push((key.clone(), Template::compile(value, &child_path)?)),
                    }
                }
                Ok(Template::Map(node))
            }
        }
    }

    /// The line the node is written on (0 if unknown).
    pub fn line(&self) -> u64 {
        match self {
            Template::Expr(e) => e.line(),
            Template::Map(m) => m.line,
            Template::List(items) => items.first().map_or(0, Template::line),
            Template::Constant(_, line) => *line,
        }
    }

    /// Every expression in the template, for load-time checks.
    pub fn expressions(&self) -> Vec<&Expr> {
        let mut out = Vec::new();
        fn collect<'a>(t: &'a Template, out: &mut Vec<&'a Expr>) {
            match t {
                Template::Expr(e) => out.push(e),
                Template::Constant(..) => {}
                Template::List(items) => items.iter().for_each(|i| collect(i, out)),
                Template::Map(m) => {
                    out.extend(m.each.iter());
                    if let Some(text) = &m.text {
                        collect(text, out);
                    }
                    m.entries.iter().for_each(|(_, c)| collect(c, out));
                }
            }
        }
        collect(self, &mut out);
        out
    }

    /// Visits every node with its path, for format-specific checks at load.
    pub fn walk<'a>(&'a self, path: &str, visit: &mut dyn FnMut(&str, &'a Template) -> Result<(), TemplateError>) -> Result<(), TemplateError> {
        visit(path, self)?;
        match self {
            Template::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    item.walk(&format!("{path}[{i}]"), visit)?;
                }
            }
            Template::Map(map) => {
                if let Some(text) = &map.text {
                    text.walk(&format!("{path}/$text"), visit)?;
                }
                for (key, child) in &map.entries {
                    child.walk(&format!("{path}/{key}"), visit)?;
                }
            }
            Template::Expr(_) | Template::Constant(..) => {}
        }
        Ok(())
    }
}
