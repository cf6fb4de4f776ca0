//! Every error of one definition, not only the first. serde stops at the first field that
//! does not fit; a user fixing a policy wants the bad method *and* the unknown field in one
//! go. So the value is deserialized, the offending part set aside (an unknown key or a bad
//! list element removed, a bad field left out), and deserialized again, until it parses or
//! nothing more can be set aside. Paths are reported as in the original value: list
//! indices after a removed element are mapped back.

use serde::de::DeserializeOwned;
use serde_norway::Value;

use super::{FieldError, join_path};

/// How many errors of one definition are reported at most.
const MAX_ERRORS: usize = 64;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Deserializes `value`, or returns every error found, each at its path in `value`;
/// `validate` runs on a value that parses once its bad parts are set aside, so checks
/// beyond the types are reported in the same pass.
pub fn deserialize_every_error<T: DeserializeOwned>(
    value: Value,
    validate: impl Fn(&T) -> Vec<FieldError>,
) -> Result<T, Vec<FieldError>> {
    // Nearly every definition parses: read it from the value in place, without the copy
    // and the path tracking the hunt for every error below needs (at 100,000 policies,
    // most of the time a config took to load).
    if let Ok(parsed) = T::deserialize(&value) {
        let problems = validate(&parsed);
        return if problems.is_empty() {
            Ok(parsed)
        } else {
            Err(problems)
        };
    }
    let mut current = value;
    let mut errors: Vec<FieldError> = Vec::new();
    // Removed list elements: (the list's original path, the element's original index).
    let mut removed: Vec<(Vec<Step>, usize)> = Vec::new();
    // Fields left out of a mapping (original paths): their absence is our doing.
    let mut left_out: Vec<Vec<Step>> = Vec::new();
    loop {
        let error = match super::from_value::<T>(current.clone()) {
            Ok(parsed) if errors.is_empty() => {
                let problems = validate(&parsed);
                return if problems.is_empty() {
                    Ok(parsed)
                } else {
                    Err(problems)
                };
            }
            Ok(parsed) => {
                // Checks beyond the types, on what is left; paths mapped back.
                for problem in validate(&parsed) {
                    let steps = original(&parse_path(&problem.path), &removed);
                    if !is_left_out_consequence(&steps, &left_out) {
                        errors.push(FieldError::new(render(&steps), problem.message));
                    }
                }
                return Err(errors);
            }
            Err(error) => error,
        };
        let at = parse_path(&error.path);
        let original_at = original(&at, &removed);
        if let Some(field) = missing_field(&error.message) {
            // A required field we left out ourselves: its own error is already reported.
            let mut missing = original_at.clone();
            missing.push(Step::Key(field.to_owned()));
            if left_out.contains(&missing) {
                return Err(errors);
            }
        }
        errors.push(FieldError::new(render(&original_at), error.message));
        if errors.len() >= MAX_ERRORS || at.is_empty() || !set_aside(&mut current, &at) {
            return Err(errors);
        }
        match at.last() {
            Some(Step::Index(_)) => {
                let list = original_at[..original_at.len() - 1].to_vec();
                let Some(Step::Index(index)) = original_at.last() else {
                    unreachable!("an index maps to an index")
                };
                removed.push((list, *index));
            }
            _ => left_out.push(original_at),
        }
    }
}

/// Whether a check's error is about a field we left out (`rules` missing after a bad
/// rule list was set aside): the real error is already reported.
fn is_left_out_consequence(steps: &[Step], left_out: &[Vec<Step>]) -> bool {
    left_out.iter().any(|out| steps.starts_with(out))
}

/// `missing field `action`` → `action`.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Removes what is at `at` in `value`: a mapping key, or a list element. Whether anything
/// was removed.
fn set_aside(value: &mut Value, at: &[Step]) -> bool {
    let Some((last, parents)) = at.split_last() else {
        return false;
    };
    let mut node = value;
    for step in parents {
        let next = match (step, node) {
            (Step::Key(key), Value::Mapping(map)) => map.get_mut(key.as_str()),
            (Step::Index(i), Value::Sequence(items)) => items.get_mut(*i),
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    match (last, node) {
        (Step::Key(key), Value::Mapping(map)) => map.remove(key.as_str()).is_some(),
        (Step::Index(i), Value::Sequence(items)) if *i < items.len() => {
            items.remove(*i);
            true
        }
        _ => false,
    }
}

/// A path in the current value, as a path in the original one: each index counts the
/// elements removed before it from the same list.
fn original(at: &[Step], removed: &[(Vec<Step>, usize)]) -> Vec<Step> {
    let mut mapped: Vec<Step> = Vec::with_capacity(at.len());
    for step in at {
        let step = match step {
            Step::Index(i) => {
                let mut gone: Vec<usize> = removed
                    .iter()
                    .filter(|(list, _)| *list == mapped)
                    .map(|(_, index)| *index)
                    .collect();
                gone.sort_unstable();
                let mut index = *i;
                for g in gone {
                    if g <= index {
                        index += 1;
                    }
                }
                Step::Index(index)
            }
            key => key.clone(),
        };
        mapped.push(step);
    }
    mapped
}

/// `rules[0].methods[1]` → steps; `` → none.
fn parse_path(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            steps.push(Step::Key(key.to_owned()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            match inner[..end].parse() {
                Ok(i) => steps.push(Step::Index(i)),
                Err(_) => steps.push(Step::Key(inner[..end].to_owned())),
            }
            rest = &inner[end + 1..];
        }
    }
    steps
}

fn render(steps: &[Step]) -> String {
    steps.iter().fold(String::new(), |path, step| match step {
        Step::Key(key) => join_path(&path, key),
        Step::Index(i) => format!("{path}[{i}]"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicyConfig, validate_policy};

    fn errors_of(yaml: &str) -> Vec<(String, String)> {
        let value: Value = serde_norway::from_str(yaml).unwrap();
        match deserialize_every_error::<PolicyConfig>(value, validate_policy) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    #[test]
    fn a_bad_method_and_an_unknown_field_are_both_reported() {
        let errors = errors_of(
            "{name: p, action: allow, colour: red, \
              rules: [{host: a.example, methods: [GET, FETCH, PUTT]}, {host: b.example, pths: [/x]}]}",
        );
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "colour",
                "rules[0].methods[1]",
                "rules[0].methods[2]",
                "rules[1].pths"
            ],
            "{errors:?}"
        );
        assert!(errors[1].1.contains("FETCH"), "{errors:?}");
    }

    #[test]
    fn a_bad_required_field_is_reported_once_with_the_others() {
        let errors = errors_of("{name: p, action: alow, priority: high, rules: [{host: a}]}");
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["action", "priority"], "{errors:?}");
    }

    #[test]
    fn checks_beyond_the_types_are_reported_with_the_type_errors() {
        // `rules: []` passes the types; its check runs once `prio` is set aside.
        let errors = errors_of("{name: p, action: allow, prio: 1, rules: []}");
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["prio", "rules"], "{errors:?}");
        assert!(errors_of("{name: p, action: allow, rules: [{host: a}]}").is_empty());
    }

    proptest::proptest! {
        /// Whatever mix of bad methods and unknown keys, each is reported once, at its own
        /// path in the value as written.
        #[test]
        fn each_error_is_reported_once_at_its_own_path(
            rules in proptest::collection::vec(
                (
                    proptest::collection::vec(
                        proptest::prop_oneof![
                            proptest::strategy::Just("GET"),
                            proptest::strategy::Just("POST"),
                            proptest::strategy::Just("FETCH"),
                            proptest::strategy::Just("PUTT"),
                        ],
                        0..4,
                    ),
                    proptest::arbitrary::any::<bool>(),
                ),
                1..5,
            ),
            colour in proptest::arbitrary::any::<bool>(),
        ) {
            let mut expected = Vec::new();
            let mut listed = Vec::new();
            if colour {
                expected.push("colour".to_owned());
            }
            for (i, (methods, unknown)) in rules.iter().enumerate() {
                let mut rule = serde_json::json!({"host": "a.example", "methods": methods});
                for (j, method) in methods.iter().enumerate() {
                    if matches!(*method, "FETCH" | "PUTT") {
                        expected.push(format!("rules[{i}].methods[{j}]"));
                    }
                }
                if *unknown {
                    rule["pths"] = serde_json::json!(["/x"]);
                    expected.push(format!("rules[{i}].pths"));
                }
                listed.push(rule);
            }
            let mut policy = serde_json::json!({"name": "p", "action": "allow", "rules": listed});
            if colour {
                policy["colour"] = serde_json::json!("red");
            }
            let value = serde_norway::to_value(&policy).unwrap();
            let mut reported: Vec<String> =
                match deserialize_every_error::<PolicyConfig>(value, validate_policy) {
                    Ok(_) => Vec::new(),
                    Err(errors) => errors.into_iter().map(|e| e.path).collect(),
                };
            reported.sort();
            expected.sort();
            proptest::prop_assert_eq!(reported, expected);
        }
    }

    #[test]
    fn paths_map_back_over_removed_elements() {
        let steps = original(
            &parse_path("rules[1].methods[0]"),
            &[(vec![Step::Key("rules".into())], 0)],
        );
        assert_eq!(render(&steps), "rules[2].methods[0]");
        assert_eq!(render(&parse_path("a.b[3][1].c")), "a.b[3][1].c");
    }
}
