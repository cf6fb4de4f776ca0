//! Formats for injected values: literal text with `{{ var }}` and `{{ base64 var }}`
//! placeholders. `value` is the credential; request variables feed HMAC messages.
//! Go-template spellings (`{{ .Value }}`, `{{ base64 .Value }}`) are accepted, as the
//! seeds' users write them.

use std::fmt;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// A template variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Value,
    Method,
    Path,
    Query,
    PathAndQuery,
    Host,
    Timestamp,
    BodySha256,
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        Some(
            match name.trim_start_matches('.').to_ascii_lowercase().as_str() {
                "value" => Var::Value,
                "method" => Var::Method,
                "path" => Var::Path,
                "query" => Var::Query,
                "path_and_query" | "pathandquery" => Var::PathAndQuery,
                "host" => Var::Host,
                "timestamp" => Var::Timestamp,
                "body_sha256" | "bodysha256" => Var::BodySha256,
                _ => return None,
            },
        )
    }

    pub fn is_request_var(self) -> bool {
        self != Var::Value
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var { var: Var, base64: bool },
}

/// A parsed template; keeps its source text.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl From<Template> for String {
    fn from(t: Template) -> String {
        t.source
    }
}

impl TryFrom<String> for Template {
    type Error = String;

    fn try_from(source: String) -> Result<Self, String> {
        Template::parse(&source)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// What a rendered `value` becomes.
pub enum Fill<'a> {
    /// The credential.
    Secret(&'a str),
    /// A visible marker instead of the credential (previews).
    Marker(&'a str),
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("template {source:?}: `{{{{` without `}}}}`"))?;
            let words: Vec<&str> = after[..close].split_whitespace().collect();
            let (helper, name) = match words.as_slice() {
                [name] => (None, *name),
                [helper, name] => (Some(*helper), *name),
                _ => {
                    return Err(format!(
                        "template {source:?}: expected `{{{{ var }}}}` or `{{{{ base64 var }}}}`, \
                         found `{{{{{}}}}}`",
                        &after[..close]
                    ));
                }
            };
            let var = Var::parse(name).ok_or_else(|| {
                format!(
                    "template {source:?}: unknown variable {name:?} (value, method, path, query, \
                     path_and_query, host, timestamp, body_sha256)"
                )
            })?;
            let base64 = match helper {
                None => false,
                Some("base64") => true,
                Some(other) => {
                    return Err(format!(
                        "template {source:?}: unknown helper {other:?} (only base64)"
                    ));
                }
            };
            parts.push(Part::Var { var, base64 });
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("template {source:?}: `}}}}` without `{{{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The variables the template uses.
    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Var { var, .. } => Some(*var),
            Part::Text(_) => None,
        })
    }

    /// Renders with `value` filled as given and request variables from `request`.
    pub fn render(&self, value: &Fill<'_>, request: &dyn Fn(Var) -> String) -> String {
        let mut out = String::with_capacity(self.source.len() + 64);
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var {
                    var: Var::Value,
                    base64,
                } => match (value, base64) {
                    (Fill::Secret(v), false) => out.push_str(v),
                    (Fill::Secret(v), true) => {
                        out.push_str(&base64::engine::general_purpose::STANDARD.encode(v))
                    }
                    (Fill::Marker(m), false) => out.push_str(m),
                    (Fill::Marker(m), true) => {
                        out.push_str("base64(");
                        out.push_str(m);
                        out.push(')');
                    }
                },
                Part::Var { var, base64 } => {
                    let text = request(*var);
                    if *base64 {
                        out.push_str(&base64::engine::general_purpose::STANDARD.encode(text));
                    } else {
                        out.push_str(&text);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, fill: Fill<'_>) -> String {
        Template::try_from(t.to_owned())
            .unwrap()
            .render(&fill, &|v| format!("<{v:?}>"))
    }

    #[test]
    fn values_helpers_and_go_spellings() {
        assert_eq!(render("token {{ value }}", Fill::Secret("s")), "token s");
        assert_eq!(render("{{.Value}}", Fill::Secret("s")), "s");
        assert_eq!(
            render("Basic {{ base64 .Value }}", Fill::Secret("u:p")),
            "Basic dTpw"
        );
        assert_eq!(render("x{{value}}y{{ value }}", Fill::Secret("s")), "xsys");
        assert_eq!(
            render("{{ base64 value }}", Fill::Marker("«k»")),
            "base64(«k»)"
        );
        assert_eq!(
            render("{{ method }} {{ path }}", Fill::Secret("s")),
            "<Method> <Path>"
        );
    }

    #[test]
    fn mistakes_are_explained() {
        for (t, expect) in [
            ("{{ value", "without"),
            ("{{ nope }}", "unknown variable"),
            ("{{ upper value }}", "unknown helper"),
            ("{{ a b c }}", "expected"),
            ("value }}", "without"),
        ] {
            let err = Template::try_from(t.to_owned()).unwrap_err();
            assert!(err.contains(expect), "{t}: {err}");
        }
    }
}
