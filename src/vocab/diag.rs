//! Errors located by field path, before a loader places them in a file.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_norway::Value;

/// A validation error at a field path (`policies[3].rules[0].host`), before it is placed
/// in a file. Compilers return these; the loader adds file, line and policy name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Places a relative error under `prefix` (`rules[0]` under `policies[3]`).
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = join_path(prefix, &self.path);
        self
    }
}

/// Joins field paths: `a` + `b` → `a.b`, `a` + `[0]` → `a[0]`, `a` + `` → `a`.
pub fn join_path(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty() || rest == ".") {
        (true, _) => rest.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if rest.starts_with('[') => format!("{prefix}{rest}"),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

/// One error per name used again in a list (`policies`, `secrets`), at the later use, naming
/// the first. Linear: reloads of large configs run it every time.
pub fn duplicate_names<'a>(
    section: &str,
    what: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Vec<FieldError> {
    let mut first_use: foldhash::HashMap<&str, usize> = foldhash::HashMap::default();
    let mut errors = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        match first_use.get(name) {
            Some(first) => errors.push(FieldError::new(
                format!("{section}[{i}].name"),
                format!("duplicate {what} name {name:?} (first used at {section}[{first}])"),
            )),
            None => {
                first_use.insert(name, i);
            }
        }
    }
    errors
}

/// Deserializes a value, reporting the field path of the first error relative to it.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // Unknown-field errors point at the containing object; name the field itself.
        let path = match unknown_field_name(&inner) {
            Some(field) if path != field && !path.ends_with(&format!(".{field}")) => {
                join_path(if path == "." { "" } else { &path }, field)
            }
            _ => path,
        };
        FieldError::new(if path == "." { String::new() } else { path }, inner)
    })
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}
