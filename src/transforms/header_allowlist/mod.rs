//! `header_allowlist`: default-deny on request headers. Every header whose name is not
//! allowed is removed before the request leaves, including headers that earlier transforms
//! added — which is why it belongs after credential-injecting transforms.

use std::collections::HashSet;

use regex::RegexSet;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::kind::{Applied, CompileContext, Kind, Transform, TransformConfig, required_config};
use super::{Annotations, Exchange, Step};
use crate::vocab::FieldError;

/// `config` of a `header_allowlist` transform.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderAllowlistConfig {
    /// Header names that may leave: literal names (case-insensitive) or `/regex/` matched
    /// against the lower-case name (unanchored: write `/^x-amz-/`). Pseudo-headers, `host`,
    /// `content-length` and `transfer-encoding` are never stripped.
    pub allow: Vec<HeaderNamePattern>,
}

/// A literal header name or a `/regex/`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum HeaderNamePattern {
    Literal(String),
    Regex { source: String },
}

impl PartialEq for HeaderNamePattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl HeaderNamePattern {
    fn as_str(&self) -> &str {
        match self {
            HeaderNamePattern::Literal(s) => s,
            HeaderNamePattern::Regex { source } => source,
        }
    }
}

impl From<HeaderNamePattern> for String {
    fn from(pattern: HeaderNamePattern) -> String {
        pattern.as_str().to_owned()
    }
}

impl TryFrom<String> for HeaderNamePattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.len() >= 2 && text.starts_with('/') && text.ends_with('/') {
            let body = &text[1..text.len() - 1];
            regex::Regex::new(body)
                .map_err(|e| format!("{text:?} is not a valid regex: {}", regex_problem(&e)))?;
            return Ok(HeaderNamePattern::Regex { source: text });
        }
        let name = text.trim().to_ascii_lowercase();
        if !crate::request::is_header_name(&name) {
            return Err(format!(
                "{text:?} is not a header name (write a regex between slashes: \"/^x-.*/\")"
            ));
        }
        Ok(HeaderNamePattern::Literal(name))
    }
}

/// The one-line gist of a regex error (its Display spans several lines with a caret).
pub fn regex_problem(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .unwrap_or(text.lines().next().unwrap_or_default())
        .to_owned()
}

/// Headers the allowlist never strips: they carry the request itself, not metadata.
fn is_protected(name: &str) -> bool {
    name.starts_with(':') || matches!(name, "host" | "content-length" | "transfer-encoding")
}

/// The compiled transform.
pub struct HeaderAllowlist {
    literals: HashSet<String>,
    regexes: RegexSet,
}

impl HeaderAllowlist {
    pub fn compile(config: &HeaderAllowlistConfig) -> Result<HeaderAllowlist, Vec<FieldError>> {
        let mut literals = HashSet::new();
        let mut sources = Vec::new();
        for pattern in &config.allow {
            match pattern {
                HeaderNamePattern::Literal(name) => {
                    literals.insert(name.clone());
                }
                HeaderNamePattern::Regex { source } => {
                    sources.push(format!("(?i){}", &source[1..source.len() - 1]))
                }
            }
        }
        let regexes = RegexSet::new(&sources).map_err(|e| {
            vec![FieldError::new(
                "allow",
                format!("regexes do not compile together: {e}"),
            )]
        })?;
        Ok(HeaderAllowlist { literals, regexes })
    }

    fn allows(&self, name: &str) -> bool {
        is_protected(name) || self.literals.contains(name) || self.regexes.is_match(name)
    }

    pub(super) fn run(&self, exchange: &mut Exchange<'_>) -> Step {
        let mut stripped: Vec<String> = Vec::new();
        let mutations = &exchange.mutations;
        let candidates = exchange
            .request
            .headers
            .iter()
            .map(|(name, _)| name)
            .filter(|name| !mutations.remove.contains(name))
            .chain(mutations.set.iter().map(|(name, _)| name));
        for name in candidates {
            if !self.allows(name) && !stripped.contains(name) {
                stripped.push(name.clone());
            }
        }
        for name in &stripped {
            exchange.mutations.remove(name);
        }
        Step::Continue(Annotations {
            stripped_headers: stripped,
            ..Annotations::default()
        })
    }
}

/// `- {name: header_allowlist, config: {allow: […]}}`.
pub(super) const KIND: Kind = Kind {
    name: "header_allowlist",
    parse: |_, config| {
        let config: HeaderAllowlistConfig = required_config(
            config,
            "header_allowlist needs a `config` with an `allow` list of header names",
        )?;
        Ok(Arc::new(config))
    },
};

impl TransformConfig for HeaderAllowlistConfig {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn compile(&self, ctx: &CompileContext<'_>) -> Result<Box<dyn Transform>, Vec<FieldError>> {
        match HeaderAllowlist::compile(self) {
            Ok(compiled) => Ok(Box::new(compiled)),
            Err(errors) => Err(ctx.under_config(errors)),
        }
    }
}

impl Transform for HeaderAllowlist {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn apply<'a>(&'a self, exchange: &'a mut Exchange<'_>) -> Applied<'a> {
        Applied::Done(self.run(exchange))
    }
}

#[cfg(test)]
mod tests;
