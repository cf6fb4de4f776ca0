//! A structural diff between two JSON values (two versions of a policy): one entry per
//! changed leaf, keyed by its field path.

use serde::Serialize;
use serde_json::Value;

/// One difference: the value at `path` before and after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffEntry {
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Every difference between `before` and `after`, in path order. Objects compare by key,
/// arrays by index; anything else compares whole.
pub fn diff(before: &Value, after: &Value) -> Vec<DiffEntry> {
    let mut entries = Vec::new();
    walk("", Some(before), Some(after), &mut entries);
    entries
}

fn walk(path: &str, before: Option<&Value>, after: Option<&Value>, out: &mut Vec<DiffEntry>) {
    match (before, after) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                walk(&child, a.get(key), b.get(key), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                walk(&format!("{path}[{i}]"), a.get(i), b.get(i), out);
            }
        }
        (a, b) if a != b => out.push(DiffEntry {
            path: path.to_owned(),
            before: a.cloned(),
            after: b.cloned(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_added_and_removed_leaves_by_path() {
        let before = json!({"name": "p", "priority": 10, "rules": [{"host": "a"}, {"host": "b"}]});
        let after = json!({"name": "p", "priority": 5, "rules": [{"host": "a", "paths": ["/x"]}], "warn": true});
        let entries = diff(&before, &after);
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["priority", "rules[0].paths", "rules[1]", "warn"]);
        assert_eq!(entries[0].before, Some(json!(10)));
        assert_eq!(entries[0].after, Some(json!(5)));
        assert_eq!(entries[2].after, None);
        assert!(diff(&before, &before).is_empty());
    }
}
