//! JSON output: the document's shape is the JSON's shape.
//!
//! A leaf expression yields the value of its key; no value (`empty`, or
//! `.x // empty` for an absent field) omits the key, `null` is written;
//! more than one value is an error (collect them with `[ ... ]`). `$each`
//! is allowed on the items of a sequence, where it yields one array item
//! per value.

use jaq_json::Val;
use serde_json::{Map, Value};

use super::template::{MapTemplate, Template, TemplateError};
use super::{Place, RenderError, Scope};

pub fn check(document: &Template) -> Result<(), TemplateError> {
    fn no_each_outside_lists(t: &Template, path: &str, in_list: bool) -> Result<(), TemplateError> {
        match t {
            Template::Map(m) => {
                if m.each.is_some() && !in_list {
                    return Err(TemplateError::new(m.line, path, "$each is only allowed on items of a sequence in this output"));
                }
                if m.text.is_some() {
                    return Err(TemplateError::new(m.line, path, "$text is only for XML output"));
                }
                for (k, c) in &m.entries {
                    no_each_outside_lists(c, &format!("{path}/{k}"), false)?;
                }
            }
            Template::List(items) => {
                for (i, c) in items.iter().enumerate() {
                    no_each_outside_lists(c, &format!("{path}[{i}]"), true)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    no_each_outside_lists(document, "document", false)
}

pub fn render(document: &Template, scope: &Scope) -> Result<Vec<u8>, RenderError> {
    let value = value_of(document, scope, &Place::At("document"))?.unwrap_or(Value::Null);
    let mut out = serde_json::to_vec_pretty(&value).expect("a JSON value serializes");
    out.push(b'\n');
    Ok(out)
}

/// `None` means "no value": the key is left out.
fn value_of(t: &Template, scope: &Scope, path: &Place) -> Result<Option<Value>, RenderError> {
    match t {
        Template::Constant(v, _) => Ok(Some(v.clone())),
        Template::Expr(expr) => {
            let mut values = scope.eval(expr, path)?;
            match values.len() {
                0 => Ok(None),
                1 => to_json(&values.remove(0)).map(Some).map_err(|m| scope.error(path, expr, m)),
                n => Err(scope.error(path, expr, format!("yields {n} values where one is expected; collect them with [ ... ]"))),
            }
        }
        Template::Map(map) => object_of(map, scope, path).map(Some),
        Template::List(items) => {
            let mut array = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let item_path = Place::Item(path, i);
                match item {
                    Template::Map(m) if m.each.is_some() => {
                        for inner in scope.each(m.each.as_ref().unwrap(), &item_path)? {
                            array.push(object_of(m, &inner, &item_path)?);
                        }
                    }
                    Template::Expr(expr) => {
                        for v in scope.eval(expr, &item_path)? {
                            array.push(to_json(&v).map_err(|m| scope.error(&item_path, expr, m))?);
                        }
                    }
                    _ => array.extend(value_of(item, scope, &item_path)?),
                }
            }
            Ok(Some(Value::Array(array)))
        }
    }
}

fn object_of(map: &MapTemplate, scope: &Scope, path: &Place) -> Result<Value, RenderError> {
    let mut object = Map::new();
    for (key, child) in &map.entries {
        if let Some(v) = value_of(child, scope, &Place::Key(path, key))? {
            object.insert(key.clone(), v);
        }
    }
    Ok(Value::Object(object))
}

/// Converts a jaq value to JSON; object keys must be strings.
pub fn to_json(v: &Val) -> Result<Value, String> {
    Ok(match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => {
            let text = n.to_string();
            serde_json::from_str::<Value>(&text)
                .ok()
                .filter(Value::is_number)
                .ok_or_else(|| "yields a number that JSON cannot hold (NaN or infinite)".to_owned())?
        }
        Val::TStr(s) => Value::String(String::from_utf8_lossy(s).into_owned()),
        Val::BStr(_) => return Err("yields a byte string; convert it to text first".into()),
        Val::Arr(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Val::Obj(map) => {
            let mut object = Map::new();
            for (k, v) in map.iter() {
                let Val::TStr(key) = k else {
                    return Err("yields an object with a non-string key".into());
                };
                object.insert(String::from_utf8_lossy(key).into_owned(), to_json(v)?);
            }
            Value::Object(object)
        }
    })
}
