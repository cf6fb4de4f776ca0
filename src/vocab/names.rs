//! The spelling of names and tags, written once as a pattern the admin API's OpenAPI
//! document publishes and as the check the server runs, so the two cannot disagree.
//!
//! Both are printable ASCII: names appear in URL paths, metric labels, audit records and
//! deny bodies, and a rule shared by Rust, Python and ECMAScript regular expressions must
//! not depend on what each calls whitespace or a control character.

/// A policy, secret or enrollment-token name: 1 to [`NAME_MAX`] printable ASCII
/// characters, with no space at either end.
pub const NAME_PATTERN: &str = "^[!-~]([ -~]*[!-~])?$";
pub const NAME_MAX: usize = 128;

/// A tag such as `env:prod`: 1 to [`TAG_MAX`] printable ASCII characters other than a
/// space or a comma (tag lists are comma-separated in headers and flags).
pub const TAG_PATTERN: &str = "^[!-+\\--~]+$";
pub const TAG_MAX: usize = 256;

/// What is wrong with `name` as the name of a `kind` (`policy`, `secret`, `token`), if
/// anything.
pub fn name_problem(kind: &str, name: &str) -> Option<String> {
    if name.is_empty() {
        return Some(format!("a {kind} needs a name"));
    }
    if name.len() > NAME_MAX {
        return Some(format!("a {kind} name is at most {NAME_MAX} characters"));
    }
    if let Some(bad) = name.chars().find(|c| !matches!(c, ' '..='~')) {
        return Some(format!(
            "{kind} name {name:?} contains {bad:?}: a name is printable ASCII"
        ));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Some(format!("{kind} name {name:?} has a space at one end"));
    }
    None
}

/// What is wrong with `tag`, if anything.
pub fn tag_problem(tag: &str) -> Option<String> {
    if tag.is_empty() {
        return Some("a tag must not be empty".into());
    }
    if tag.len() > TAG_MAX {
        return Some(format!("tag {tag:?} is longer than {TAG_MAX} characters"));
    }
    if let Some(bad) = tag.chars().find(|c| !matches!(c, '!'..='~') || *c == ',') {
        return Some(format!(
            "tag {tag:?} contains {bad:?}: a tag is printable ASCII without spaces or commas"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published patterns and the checks agree, character by character.
    #[test]
    fn the_patterns_are_the_checks() {
        let name = regex::Regex::new(NAME_PATTERN).unwrap();
        let tag = regex::Regex::new(TAG_PATTERN).unwrap();
        let samples = [
            "a",
            "github-read",
            "a b",
            " a",
            "a ",
            "é",
            "a\tb",
            "a,b",
            "x\u{7f}",
            "env:prod",
            "a\n",
            "\u{85}",
            "tenant:acme corp",
            "~",
            " ",
            "",
        ];
        for s in samples {
            assert_eq!(
                name.is_match(s),
                name_problem("policy", s).is_none(),
                "name {s:?}"
            );
            assert_eq!(tag.is_match(s), tag_problem(s).is_none(), "tag {s:?}");
        }
        assert!(name_problem("policy", &"n".repeat(NAME_MAX)).is_none());
        assert!(name_problem("policy", &"n".repeat(NAME_MAX + 1)).is_some());
        assert!(tag_problem(&"t".repeat(TAG_MAX)).is_none());
        assert!(tag_problem(&"t".repeat(TAG_MAX + 1)).is_some());
    }
}
