//! The body content condition of a policy rule: `body: {contains: [..], regex: [..]}`.
//!
//! Like the other patterns, a condition is validated and compiled when it is deserialized,
//! so a bad regex is reported with its field path and a loaded condition is ready to match.
//! It keeps its original text, which is what it serializes back to and compares by.

use std::fmt;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use serde::{Deserialize, Serialize};

use crate::vocab::regex_error_summary;

/// `body:` as written: the condition holds when the request body contains any of
/// `contains` (ASCII case-insensitive) or matches any of `regex`. At least one list is
/// non-empty.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "BodyFields", into = "BodyFields")]
pub struct BodyCondition {
    fields: BodyFields,
    matcher: Arc<BodyMatcher>,
}

/// The fields of `body:`, before the non-empty check and compilation.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyFields {
    /// Substrings, compared ASCII case-insensitively against the raw body bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub contains: Vec<BodyText>,
    /// Regular expressions (Rust `regex` syntax) over the raw body bytes, unanchored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub regex: Vec<BodyRegex>,
}

// In JSON schemas a condition is its fields.
impl utoipa::PartialSchema for BodyCondition {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <BodyFields as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for BodyCondition {
    fn name() -> std::borrow::Cow<'static, str> {
        <BodyFields as utoipa::ToSchema>::name()
    }
}

impl BodyCondition {
    pub fn contains(&self) -> &[BodyText] {
        &self.fields.contains
    }

    pub fn regex(&self) -> &[BodyRegex] {
        &self.fields.regex
    }

    /// The compiled form, shared by every rule compiled from this condition.
    pub fn matcher(&self) -> &Arc<BodyMatcher> {
        &self.matcher
    }
}

impl PartialEq for BodyCondition {
    fn eq(&self, other: &Self) -> bool {
        self.fields == other.fields
    }
}

impl From<BodyCondition> for BodyFields {
    fn from(condition: BodyCondition) -> BodyFields {
        condition.fields
    }
}

impl TryFrom<BodyFields> for BodyCondition {
    type Error = String;

    fn try_from(fields: BodyFields) -> Result<Self, String> {
        if fields.contains.is_empty() && fields.regex.is_empty() {
            return Err(
                "a body condition needs at least one `contains` substring or `regex` \
                 (remove `body` to match any body)"
                    .into(),
            );
        }
        let matcher = BodyMatcher::compile(&fields)?;
        Ok(BodyCondition {
            fields,
            matcher: Arc::new(matcher),
        })
    }
}

/// One `contains` entry: a non-empty substring.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct BodyText(String);

impl BodyText {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<BodyText> for String {
    fn from(text: BodyText) -> String {
        text.0
    }
}

impl TryFrom<String> for BodyText {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.is_empty() {
            // It would be contained in every body, including an empty one.
            return Err("a `contains` entry must not be empty".into());
        }
        Ok(BodyText(text))
    }
}

/// One `regex` entry, compiled when read.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct BodyRegex {
    original: String,
    regex: regex::bytes::Regex,
}

impl BodyRegex {
    pub fn as_str(&self) -> &str {
        &self.original
    }
}

impl PartialEq for BodyRegex {
    fn eq(&self, other: &Self) -> bool {
        self.original == other.original
    }
}

impl fmt::Display for BodyRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl From<BodyRegex> for String {
    fn from(regex: BodyRegex) -> String {
        regex.original
    }
}

impl TryFrom<String> for BodyRegex {
    type Error = String;

    fn try_from(original: String) -> Result<Self, String> {
        match regex::bytes::Regex::new(&original) {
            Ok(regex) => Ok(BodyRegex { original, regex }),
            Err(e) => Err(format!(
                "regex {original:?} is not valid: {}",
                regex_error_summary(&e)
            )),
        }
    }
}

/// A compiled body condition.
#[derive(Debug)]
pub struct BodyMatcher {
    /// Every `contains` entry in one automaton; `None` when there are none.
    substrings: Option<AhoCorasick>,
    regexes: Box<[regex::bytes::Regex]>,
}

impl BodyMatcher {
    fn compile(fields: &BodyFields) -> Result<BodyMatcher, String> {
        let substrings = if fields.contains.is_empty() {
            None
        } else {
            let automaton = AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(fields.contains.iter().map(BodyText::as_str))
                .map_err(|e| format!("the `contains` list cannot be compiled: {e}"))?;
            Some(automaton)
        };
        Ok(BodyMatcher {
            substrings,
            regexes: fields.regex.iter().map(|r| r.regex.clone()).collect(),
        })
    }

    /// Whether `body` holds any substring or matches any regex.
    pub fn matches(&self, body: &[u8]) -> bool {
        self.substrings.as_ref().is_some_and(|a| a.is_match(body))
            || self.regexes.iter().any(|r| r.is_match(body))
    }
}

#[cfg(test)]
mod tests;
