//! The submission as the value mappings read, parsed from its JSON.
//!
//! As jaq_json's serde support parses it, value for value, with one
//! difference: a string without escapes shares the input's bytes instead
//! of being copied. A form is mostly such strings, and copying them was
//! a fifth of a document's cost. The input stays in memory as long as a
//! value shares it, which for a rendering is the rendering.

use bytes::Bytes;
use jaq_json::{Map, Num, Val};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Parses `json`, which must be one JSON value (surrounding whitespace
/// allowed), with serde_json's limits (nesting depth among them).
pub fn parse(json: &Bytes) -> Result<Val, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value = Shared(json).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// The visitor, holding the input whose bytes strings share.
#[derive(Clone, Copy)]
struct Shared<'b>(&'b Bytes);

impl<'de> DeserializeSeed<'de> for Shared<'_> {
    type Value = Val;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Val, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shared<'_> {
    type Value = Val;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Val, E> {
        Ok(Val::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Val, E> {
        Ok(Val::Num(Num::from_integral(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Val, E> {
        Ok(Val::Num(Num::from_integral(value)))
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<Val, E> {
        Ok(Val::Num(Num::from_integral(value)))
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<Val, E> {
        Ok(Val::Num(Num::from_integral(value)))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Val, E> {
        Ok(Val::Num(Num::Float(value)))
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Val, E> {
        let input = self.0.as_ptr_range();
        let text = value.as_bytes().as_ptr_range();
        if input.start <= text.start && text.end <= input.end {
            Ok(Val::TStr(Box::new(self.0.slice_ref(value.as_bytes()))))
        } else {
            self.visit_str(value)
        }
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Val, E> {
        self.visit_string(String::from(value))
    }

    fn visit_string<E>(self, value: String) -> Result<Val, E> {
        Ok(Val::utf8_str(value.into_bytes()))
    }

    fn visit_none<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Val, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_unit<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Val, A::Error> {
        let mut values = Vec::with_capacity(items.size_hint().unwrap_or(0));
        while let Some(value) = items.next_element_seed(self)? {
            values.push(value);
        }
        Ok(values.into_iter().collect())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Val, A::Error> {
        // A key given twice keeps its first place and its last value, as
        // collecting into the map does in jaq_json.
        let mut map = Map::default();
        while let Some((key, value)) = entries.next_entry_seed(self, self)? {
            map.insert(key, value);
        }
        Ok(Val::obj(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_jaq_json_does_and_shares_plain_strings() {
        let json = r#" {"a": "plain", "b": "esc\"aped \u00e4", "c": [1, -2, 3.5, 1e300, 18446744073709551615, 123456789012345678901234567890,
            true, false, null, {}, []], "a": "again", "d": {"nested": ["x", {"y": "z"}]}, "ü": "ß"} "#;
        let bytes = Bytes::from(json);
        let shared = parse(&bytes).unwrap();
        let copied: Val = serde_json::from_str(json).unwrap();
        assert_eq!(shared, copied);
        assert_eq!(shared.to_string(), copied.to_string());
        let Val::Obj(object) = &shared else { panic!("an object") };
        let keys: Vec<String> = object.keys().map(ToString::to_string).collect();
        assert_eq!(keys, [r#""a""#, r#""b""#, r#""c""#, r#""d""#, r#""ü""#]);
        let Some(Val::TStr(plain)) = object.get(&Val::from("a".to_owned())) else { panic!("a string") };
        assert!(bytes.as_ptr_range().contains(&plain.as_ptr()), "a plain string shares the input");
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for json in ["", "{", "[1,]", "{\"a\" 1}", "1 2", "\"\\x\"", &("[".repeat(200) + &"]".repeat(200))] {
            assert!(parse(&Bytes::copy_from_slice(json.as_bytes())).is_err(), "{json}");
            assert!(serde_json::from_str::<Val>(json).is_err(), "{json}");
        }
    }
}
