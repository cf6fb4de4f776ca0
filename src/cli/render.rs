//! Plain-text output: aligned tables, lists of tags, and definitions as a user writes them
//! in a config file.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Rows under a header, each column left-aligned and two spaces from the next.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table, one line per row; trailing spaces trimmed.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                line.push_str(cell);
                let pad = width - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Tags joined with commas, or `empty` for none.
/// `1 error`, `3 errors`.
pub fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub fn tag_list<S: AsRef<str>>(tags: &[S], empty: &str) -> String {
    if tags.is_empty() {
        return empty.to_owned();
    }
    tags.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(",")
}

/// One definition as a config file section (`policies:` or `secrets:` with one entry),
/// so the output can be edited and applied back with `policy apply -f`.
pub fn config_yaml<T: Serialize>(section: &str, definition: &T) -> Result<String, String> {
    let file = BTreeMap::from([(section, [definition])]);
    serde_norway::to_string(&file).map_err(|e| format!("cannot write YAML: {e}"))
}

/// A JSON value on one line, for diffs (`"/repo/*"`, `["GET"]`), or `(absent)`.
pub fn compact(value: Option<&Value>) -> String {
    match value {
        Some(value) => value.to_string(),
        None => "(absent)".to_owned(),
    }
}

/// The API's JSON, indented, for `--json`.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_by_their_widest_cell() {
        let mut table = Table::new(&["NAME", "VERSION", "TAGS"]);
        table.row(vec!["repos".into(), "12".into(), "env:ci".into()]);
        table.row(vec!["a-long-name".into(), "1".into(), String::new()]);
        assert_eq!(
            table.render(),
            "NAME         VERSION  TAGS\nrepos        12       env:ci\na-long-name  1\n"
        );
    }

    #[test]
    fn a_definition_is_written_as_a_config_section() {
        let policy: crate::policy::PolicyConfig = serde_json::from_value(serde_json::json!({
            "name": "repos", "action": "allow", "match_tags": ["env:ci"],
            "rules": [{"host": "api.github.com", "paths": ["/repos/*"]}]
        }))
        .unwrap();
        let yaml = config_yaml("policies", &policy).unwrap();
        assert!(
            yaml.starts_with("policies:\n- name: repos\n  priority: 10\n"),
            "{yaml}"
        );
        // It reads back as the same policy: `get` output can be applied.
        let back = crate::config::parse_str(&yaml, None)
            .unwrap()
            .config
            .policies;
        assert_eq!(back, [policy]);
    }

    #[test]
    fn empty_tag_lists_say_so() {
        assert_eq!(tag_list::<&str>(&[], "(all)"), "(all)");
        assert_eq!(tag_list(&["a:1", "b:2"], "-"), "a:1,b:2");
    }
}
