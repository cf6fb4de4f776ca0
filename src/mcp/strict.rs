//! JSON parsing that refuses an object with the same key twice.
//!
//! JSON parsers disagree about `{"name":"a","name":"b"}` (last wins, first wins, or an
//! error), so a gateway that reads one `name` while the server reads the other could be
//! walked past. Portcullis refuses such a body instead of guessing which one the server sees.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a body could not be read as JSON.
pub(crate) enum StrictError {
    /// Not JSON at all (syntax, truncation, nesting too deep, a number out of range).
    Syntax(String),
    /// JSON, but refused: an object repeats a key.
    Refused(String),
}

/// The JSON text of a body as a server reading it as JSON would see it: without a UTF-8
/// byte order mark, and UTF-16 or UTF-32 (recognised by a byte order mark or by the zero
/// bytes of its first characters, as Python's `json.loads` does) decoded to UTF-8. A body in
/// none of these forms is returned as it is.
pub(crate) fn decode_text(body: &[u8]) -> Cow<'_, [u8]> {
    const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";
    if let Some(rest) = body.strip_prefix(UTF8_BOM) {
        return Cow::Borrowed(rest);
    }
    let decoded = match body {
        [0xff, 0xfe, 0, 0, rest @ ..] => utf32(rest, u32::from_le_bytes),
        [0, 0, 0xfe, 0xff, rest @ ..] => utf32(rest, u32::from_be_bytes),
        [0xff, 0xfe, rest @ ..] => utf16(rest, u16::from_le_bytes),
        [0xfe, 0xff, rest @ ..] => utf16(rest, u16::from_be_bytes),
        [0, 0, _, _, ..] => utf32(body, u32::from_be_bytes),
        [0, _, _, _, ..] | [0, _] => utf16(body, u16::from_be_bytes),
        [_, 0, 0, 0, ..] => utf32(body, u32::from_le_bytes),
        [_, 0, _, _, ..] | [_, 0] => utf16(body, u16::from_le_bytes),
        _ => None,
    };
    match decoded {
        Some(text) => Cow::Owned(text.into_bytes()),
        None => Cow::Borrowed(body),
    }
}

fn utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> Option<String> {
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let units = bytes.chunks_exact(2).map(|c| unit([c[0], c[1]]));
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .ok()
}

fn utf32(bytes: &[u8], unit: fn([u8; 4]) -> u32) -> Option<String> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    bytes
        .chunks_exact(4)
        .map(|c| char::from_u32(unit([c[0], c[1], c[2], c[3]])))
        .collect()
}

pub(crate) fn from_slice(body: &[u8]) -> Result<Value, StrictError> {
    match serde_json::from_slice::<Strict>(body) {
        Ok(Strict(value)) => Ok(value),
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err(StrictError::Refused(e.to_string()))
        }
        Err(e) => Err(StrictError::Syntax(e.to_string())),
    }
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}
