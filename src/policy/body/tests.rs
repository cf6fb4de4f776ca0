use super::*;
use crate::config::parse_str;
use crate::policy::PolicyConfig;
use crate::policy::rule::RuleConfig;

fn condition(yaml: &str) -> BodyCondition {
    serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

/// The errors `parse_str` reports for a config, as `path: message` lines.
fn config_errors(yaml: &str) -> Vec<String> {
    match parse_str(yaml, None) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .0
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect(),
    }
}

fn one_policy(body: &str) -> String {
    format!(
        "policies:\n  - name: p\n    action: deny\n    rules:\n      - host: \"*\"\n        body: {body}\n"
    )
}

#[test]
fn contains_is_ascii_case_insensitive_over_bytes() {
    let matcher = condition("contains: [aws_secret_access_key, customer list]").matcher;
    for (body, want) in [
        (&b"{\"aws_secret_access_key\": \"x\"}"[..], true),
        (b"AWS_SECRET_ACCESS_KEY=x", true),
        (b"the Customer List for Q3", true),
        (b"customer  list", false),
        (b"aws_secret", false),
        (b"", false),
        // Raw bytes, not text: a match after invalid UTF-8 still counts.
        (b"\xff\xfe customer list", true),
    ] {
        assert_eq!(
            matcher.matches(body),
            want,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn case_folding_is_ascii_only() {
    let matcher = condition("contains: [straße]").matcher;
    assert!(matcher.matches("Die STRAßE".as_bytes()));
    assert!(
        !matcher.matches("STRASSE".as_bytes()),
        "no Unicode case folding"
    );
}

#[test]
fn regexes_match_anywhere_in_the_body() {
    let matcher =
        condition(r"regex: ['(?i)ssn:\s*\d{3}-\d{2}-\d{4}', '^BEGIN [A-Z]+ KEY']").matcher;
    assert!(matcher.matches(b"{\"note\": \"SSN: 123-45-6789\"}"));
    assert!(matcher.matches(b"BEGIN RSA KEY\n..."));
    assert!(!matcher.matches(b"ssn: 123-45-678"));
    assert!(
        !matcher.matches(b"x BEGIN RSA KEY"),
        "^ anchors at the start"
    );
    assert!(!matcher.matches(b""));
}

#[test]
fn either_list_is_enough() {
    let matcher = condition("{contains: [salary], regex: ['\\d{16}']}").matcher;
    assert!(matcher.matches(b"salary band"));
    assert!(matcher.matches(b"card 4111111111111111"));
    assert!(!matcher.matches(b"nothing here"));
}

#[test]
fn a_condition_needs_something_to_look_for() {
    for body in ["{}", "{contains: []}", "{contains: [], regex: []}"] {
        let errors = config_errors(&one_policy(body));
        assert_eq!(errors.len(), 1, "{body}: {errors:?}");
        assert!(
            errors[0].starts_with("policies[0].rules[0].body: a body condition needs at least one"),
            "{body}: {errors:?}"
        );
    }
}

#[test]
fn an_empty_substring_is_rejected_at_its_index() {
    let errors = config_errors(&one_policy("{contains: [salary, '']}"));
    assert_eq!(
        errors,
        ["policies[0].rules[0].body.contains[1]: a `contains` entry must not be empty"]
    );
}

#[test]
fn an_invalid_regex_is_named_with_its_path_and_the_regex_message() {
    let errors = config_errors(&one_policy(r"{regex: ['ok', 'ssn:\s*\d{3']}"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0],
        r#"policies[0].rules[0].body.regex[1]: regex "ssn:\\s*\\d{3" is not valid: unclosed counted repetition"#
    );
    assert!(!errors[0].contains('\n'), "one line per error");
}

#[test]
fn unknown_fields_under_body_are_rejected() {
    let errors = config_errors(&one_policy("{contains: [x], regexes: ['y']}"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("policies[0].rules[0].body.regexes: unknown field `regexes`"),
        "{errors:?}"
    );
}

#[test]
fn body_conditions_are_refused_outside_policy_rules() {
    let errors = config_errors(
        r#"
secrets:
  - name: s
    source: {type: env, var: S}
    inject: {style: bearer}
    rules: [{host: a.example}, {host: b.example, body: {contains: [x]}}]
transforms:
  - allowlist
  - secrets
  - name: header_allowlist
    rules: [{host: "*", body: {contains: [x]}}]
    config: {allow: [accept]}
"#,
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e
            .starts_with("secrets[0].rules[1].body: `body` conditions apply to policy rules only")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with(
            "transforms[2].rules[0].body: `body` conditions apply to policy rules only"
        )),
        "{errors:?}"
    );
}

#[test]
fn a_rule_serializes_back_to_what_was_written() {
    let rule: RuleConfig = serde_norway::from_str(
        r"{host: '*', methods: [POST], body: {contains: [Salary], regex: ['(?i)ssn:\s*\d+']}}",
    )
    .unwrap();
    let json = serde_json::to_string(&rule).unwrap();
    assert_eq!(
        json,
        r#"{"host":"*","methods":["POST"],"body":{"contains":["Salary"],"regex":["(?i)ssn:\\s*\\d+"]}}"#
    );
    let only_regex: RuleConfig = serde_norway::from_str("{host: '*', body: {regex: [x]}}").unwrap();
    assert_eq!(
        serde_json::to_string(&only_regex).unwrap(),
        r#"{"host":"*","body":{"regex":["x"]}}"#,
        "an empty list is left out, as written"
    );
}

/// The store keeps policies as JSON: what it writes must read back as the same policy.
#[test]
fn a_policy_with_a_body_condition_round_trips_through_json() {
    let loaded = parse_str(
        r#"
policies:
  - name: flag-sensitive
    priority: 50
    action: flag
    rules:
      - host: "*"
        body:
          contains: [salary, customer list, production database]
          regex: ['(?i)ssn:\s*\d{3}-\d{2}-\d{4}']
      - host: api.example.com
        methods: [POST]
        body: {contains: [aws_secret_access_key]}
"#,
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let policy = &loaded.config.policies[0];
    let json = serde_json::to_string(policy).unwrap();
    let back: PolicyConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, policy);
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    let body = back.rules[0].body.as_ref().unwrap();
    assert!(body.matcher().matches(b"SSN: 123-45-6789"), "recompiled");
    // Equality is by the text written: a different pattern is a different policy.
    let mut other = back.clone();
    other.rules[1].body = Some(condition("contains: [AWS_SECRET_ACCESS_KEY]"));
    assert_ne!(&other, policy);
}
