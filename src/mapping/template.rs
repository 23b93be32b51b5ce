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

use serde_json::Value;

use super::expr::{Expr, ExprError};

#[derive(Debug)]
pub enum Template {
    Expr(Expr),
    /// A YAML number or boolean, rendered as written.
    Constant(Value),
    Map(MapTemplate),
    List(Vec<Template>),
}

#[derive(Debug)]
pub struct MapTemplate {
    pub each: Option<Expr>,
    pub text: Option<Box<Template>>,
    /// Entries in document order, `$`-keys removed.
    pub entries: Vec<(String, Template)>,
}

/// Where a problem sits in the document, e.g. `document/xga:kopf/@version`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {path}: {message}")]
pub struct TemplateError {
    pub path: String,
    pub message: String,
}

impl Template {
    pub fn compile(value: &Value, path: &str) -> Result<Self, TemplateError> {
        let err = |message: String| TemplateError { path: path.to_owned(), message };
        let compile_expr = |code: &str| {
            Expr::compile(code).map_err(|ExprError(m)| err(format!("{m} in expression {code:?}")))
        };
        match value {
            Value::String(code) => Ok(Template::Expr(compile_expr(code)?)),
            Value::Number(_) | Value::Bool(_) => Ok(Template::Constant(value.clone())),
            Value::Null => Err(err("empty value; write an expression such as `null` or `\"\"` in quotes".into())),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| Template::compile(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()
                .map(Template::List),
            Value::Object(map) => {
                let mut node = MapTemplate { each: None, text: None, entries: Vec::new() };
                for (key, value) in map {
                    let child_path = format!("{path}/{key}");
                    match key.as_str() {
                        "$each" => match value {
                            Value::String(code) => node.each = Some(compile_expr(code)?),
                            _ => return Err(err("$each must be a jq expression".into())),
                        },
                        "$text" => {
                            node.text = Some(Box::new(Template::compile(value, &child_path)?))
                        }
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
            Template::Expr(_) | Template::Constant(_) => {}
        }
        Ok(())
    }
}
