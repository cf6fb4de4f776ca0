use super::*;

fn errors(yaml: &str) -> Vec<String> {
    match parse_str(yaml, Some(Path::new("gw.yaml"))) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn every_broken_element_is_reported_with_line_path_and_policy() {
    let yaml = "\
policies:
  - name: first
    action: allow
    rules: [{host: a.example}]
  - name: typo
    priorty: 5
    action: allow
    rules: [{host: b.example}]
  - name: bad-host
    action: deny
    rules:
      - host: 10.0.0.0/99
  - name: no-rules
    action: allow
    rules: []
identities:
  - source_cidr: 10.1.0.0/16
    token: {env: X}
transforms:
  - nope
";
    let found = errors(yaml);
    assert_eq!(found.len(), 5, "{found:#?}");
    assert!(
        found[0].starts_with(
            "gw.yaml:6:5: policies[1].priorty (policy \"typo\"): unknown field `priorty`"
        ),
        "{}",
        found[0]
    );
    assert!(found[1].starts_with("gw.yaml:12:9: policies[2].rules[0].host (policy \"bad-host\"): host \"10.0.0.0/99\" is not a valid CIDR"), "{}", found[1]);
    assert!(found[2].starts_with("gw.yaml:15:5: policies[3].rules (policy \"no-rules\"): a policy needs at least one rule"), "{}", found[2]);
    assert!(
        found[3].starts_with("gw.yaml:17:5: identities[0]: an identity needs exactly one of"),
        "{}",
        found[3]
    );
    assert!(
        found[4].starts_with("gw.yaml:20:5: transforms[0].name: unknown transform `nope`"),
        "{}",
        found[4]
    );
}

#[test]
fn syntax_errors_point_at_the_line() {
    let found = errors("policies:\n  - name: a\n    rules: [\n");
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("gw.yaml:"), "{}", found[0]);
    assert!(found[0].contains("invalid YAML"), "{}", found[0]);
}

#[test]
fn unknown_top_level_sections_are_rejected() {
    let found = errors("gateway: {tags: [a]}\npolicys: []\n");
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("gw.yaml:2:1: policys: unknown field `policys`"),
        "{}",
        found[0]
    );
}

#[test]
fn secrets_parse_and_join_the_default_pipeline() {
    let loaded = parse_str(
        "secrets:\n  - {name: gh, source: {type: env, var: GH}, rules: [{host: api.github.com}], inject: {style: bearer}}\n",
        None,
    )
    .unwrap();
    assert_eq!(loaded.config.secrets[0].name, "gh");
    assert_eq!(
        loaded.config.transforms,
        vec![TransformEntry::allowlist(), TransformEntry::secrets()]
    );
}

#[test]
fn empty_document_is_a_deny_everything_config() {
    let loaded = parse_str("", None).unwrap();
    assert!(loaded.config.policies.is_empty());
    assert_eq!(
        loaded.config.default_action,
        crate::policy::DefaultAction::Deny
    );
    assert_eq!(loaded.config.transforms, vec![TransformEntry::allowlist()]);
}

#[test]
fn wrong_types_name_the_field() {
    let found = errors(
        "policies:\n  - name: a\n    priority: high\n    action: allow\n    rules: [{host: x}]\n",
    );
    assert!(
        found[0].starts_with("gw.yaml:3:5: policies[0].priority (policy \"a\"): invalid type"),
        "{}",
        found[0]
    );
    let found = errors("default_action: maybe\n");
    assert!(
        found[0].contains("default_action: unknown variant `maybe`"),
        "{}",
        found[0]
    );
    let found = errors("policies: {a: 1}\n");
    assert!(
        found[0].contains("policies: expected a list"),
        "{}",
        found[0]
    );
}

#[test]
fn later_errors_are_placed_by_path() {
    let loaded = parse_str(
        "policies:\n  - name: a\n    action: allow\n    rules: [{host: x}]\n",
        Some(Path::new("p.yaml")),
    )
    .unwrap();
    let placed = loaded.place(vec![FieldError::new("policies[0].name", "duplicate")]);
    assert_eq!(
        placed.to_string(),
        "p.yaml:2:5: policies[0].name (policy \"a\"): duplicate"
    );
}

#[test]
fn version_is_a_content_hash() {
    assert_eq!(version_of("a"), version_of("a"));
    assert_ne!(version_of("a"), version_of("b"));
    assert_eq!(version_of("a").len(), 12);
}

#[test]
fn duplicate_names_point_at_the_later_use_and_name_the_first() {
    let errors = crate::vocab::duplicate_names("policies", "policy", ["a", "b", "a", "a"]);
    let found: Vec<(String, String)> = errors.into_iter().map(|e| (e.path, e.message)).collect();
    assert_eq!(
        found,
        [
            (
                "policies[2].name".into(),
                "duplicate policy name \"a\" (first used at policies[0])".into()
            ),
            (
                "policies[3].name".into(),
                "duplicate policy name \"a\" (first used at policies[0])".into()
            ),
        ]
    );
}

#[test]
fn telemetry_otlp_parses_and_defaults_to_off() {
    assert_eq!(
        parse_str("gateway: {}\n", None).unwrap().config.telemetry,
        crate::config::TelemetryConfig::default()
    );
    let loaded = parse_str(
        "telemetry:\n  otlp: {endpoint: \"http://127.0.0.1:4317\", service_name: gw-a, sample_ratio: 0.25}\n",
        None,
    )
    .unwrap();
    let otlp = loaded.config.telemetry.otlp.unwrap();
    assert_eq!(otlp.endpoint.unwrap().as_str(), "http://127.0.0.1:4317");
    assert_eq!(otlp.service_name.as_deref(), Some("gw-a"));
    assert_eq!(otlp.sample_ratio, Some(0.25));
}

#[test]
fn telemetry_errors_name_the_field_and_line() {
    let found = errors(
        "\
gateway: {}
telemetry:
  otlp:
    endpoint: 127.0.0.1:4317
",
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(
            "gw.yaml:4:5: telemetry.otlp.endpoint: invalid OTLP endpoint \"127.0.0.1:4317\""
        ),
        "{}",
        found[0]
    );
    for (yaml, path, message) in [
        (
            "telemetry: {otlp: {endpoint: \"ftp://c:4317\"}}\n",
            "telemetry.otlp.endpoint",
            "expected http://host:port",
        ),
        (
            "telemetry: {otlp: {endpoint: \"http://c:4317/?k=v\"}}\n",
            "telemetry.otlp.endpoint",
            "expected http://host:port",
        ),
        (
            "telemetry: {otlp: {sample_ratio: 1.5}}\n",
            "telemetry.otlp.sample_ratio",
            "between 0.0 and 1.0",
        ),
        (
            "telemetry: {otlp: {endpont: \"http://c:4317\"}}\n",
            "telemetry.otlp.endpont",
            "unknown field",
        ),
        (
            "telemetry: {jaeger: {}}\n",
            "telemetry.jaeger",
            "unknown field",
        ),
    ] {
        let found = errors(yaml);
        assert_eq!(found.len(), 1, "{yaml}: {found:#?}");
        assert!(
            found[0].contains(&format!("{path}: ")) && found[0].contains(message),
            "{yaml}: {}",
            found[0]
        );
    }
}

#[test]
fn telemetry_endpoint_credentials_are_refused_without_being_echoed() {
    let found =
        errors("telemetry: {otlp: {endpoint: \"https://user:s3cr3t-pw@otel.example:4317\"}}\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("telemetry.otlp.endpoint: an OTLP endpoint must not carry credentials"),
        "{}",
        found[0]
    );
    assert!(!found[0].contains("s3cr3t-pw"), "{}", found[0]);
}

#[test]
fn a_partial_parse_keeps_what_parsed_and_places_later_errors_in_the_file() {
    let text = "policies:\n  - {name: bad, action: nope, rules: [{host: a.test}]}\n  - {name: good, action: allow, rules: [{host: b.test}]}\n";
    let partial = parse_partial(text, None).unwrap();
    assert_eq!(partial.loaded.config.policies.len(), 1);
    assert_eq!(partial.loaded.config.policies[0].name, "good");
    assert_eq!(partial.errors.len(), 1, "{:?}", partial.errors);
    assert!(!partial.section_failed);
    // A compile error about the first kept policy is about the file's second.
    let later = partial.in_file(FieldError::new("policies[0].rules[0].dlp[0]", "x"));
    assert_eq!(later.path, "policies[1].rules[0].dlp[0]");
    let placed = partial.loaded.place(vec![later]);
    assert_eq!(placed.0[0].line, Some(3));
    assert_eq!(placed.0[0].policy.as_deref(), Some("good"));
    // Other paths are left alone.
    let other = partial.in_file(FieldError::new("audit.path", "x"));
    assert_eq!(other.path, "audit.path");
    // A whole section failing is told apart from list entries failing.
    let broken = parse_partial("dlp: 3\npolicies: []\n", None).unwrap();
    assert!(broken.section_failed);
}

/// A long policy list parsed in pieces (`split`) reads exactly as the whole file does:
/// the same policies, the same errors at the same paths, the same names for them.
#[test]
fn a_list_parsed_in_pieces_reads_as_the_whole_file() {
    let mut text = String::from(
        "# a fleet\ngateway:\n  tags: [env:prod]\nsecrets: []\npolicies:  # tenants\n",
    );
    for i in 0..3_000 {
        let item = match i % 7 {
            0 => format!(
                "  - name: \"t{i}\"\n    match_tags: [tenant:t{i}]\n    action: allow\n    rules:\n      - host: api{i}.example.com\n        paths: ['/v1/{i}/*', \"/v2/x y\"]\n        methods: [GET, POST]\n"
            ),
            1 => format!(
                "  - name: t{i}\n    description: |\n      line one\n        - not an item\n      # not a comment\n    action: deny\n    message: >\n      folded\n      text\n    rules: [{{host: \"*.t{i}.example\"}}]\n\n  # a comment between items\n"
            ),
            2 => format!(
                "  -   name: t{i}\n      priority: {i}\n      action: flag\n      rules:\n      - host: 10.{}.0.0/16\n",
                i % 250
            ),
            3 => format!(
                "  - {{name: t{i}, action: allow, rules: [{{host: 'q{i}.example:8443'}}]}}\n"
            ),
            // Errors: an unknown field, a bad method, a missing action.
            4 => format!(
                "  - name: t{i}\n    action: allow\n    colour: red\n    rules: [{{host: b{i}.example, methods: [FETCH]}}]\n"
            ),
            5 => format!("  - name: t{i}\n    rules: [{{host: c{i}.example}}]\n"),
            _ => format!(
                "  - name: t{i}\n    warn: true\n    status: disabled\n    action: allow\n    rules:\n      - host: \"d{i}.example\"\n        headers: [{{name: x-tenant, equals: \"t{i}\"}}]\n"
            ),
        };
        text.push_str(&item);
    }
    text.push_str("default_action: deny\nidentities: []\n");
    let split = split::policies(&text).expect("the file is cut");
    assert!(parse_split(&split).is_some(), "the pieces parse");
    let pieces = parse_partial_as(&text, None, true).unwrap();
    let whole = parse_partial_as(&text, None, false).unwrap();
    assert!(pieces.loaded.config.policies.len() > 1_500);
    assert_eq!(pieces.loaded.config.policies, whole.loaded.config.policies);
    assert_eq!(pieces.errors, whole.errors);
    assert!(!pieces.errors.is_empty());
    assert_eq!(pieces.kept, whole.kept);
    assert_eq!(pieces.loaded.policy_names, whole.loaded.policy_names);
    assert_eq!(pieces.section_failed, whole.section_failed);
    assert_eq!(pieces.loaded.version, whole.loaded.version);
    assert_eq!(
        pieces.loaded.config.gateway.tags,
        whole.loaded.config.gateway.tags
    );
    assert_eq!(
        pieces.loaded.config.default_action,
        whole.loaded.config.default_action
    );
    // Placed in the file at the same lines.
    assert_eq!(
        pieces.loaded.place_in_order(pieces.errors.clone()),
        whole.loaded.place_in_order(whole.errors.clone())
    );
}

/// Where a piece cannot be read on its own, or the `policies:` line was inside a string,
/// the whole file is parsed: the answer is the whole file's.
#[test]
fn a_file_the_pieces_would_misread_is_parsed_whole() {
    let item = |i: usize| {
        format!("  - name: t{i}\n    action: allow\n    rules: [{{host: a{i}.example}}]\n")
    };
    let items: String = (0..3_000).map(item).collect();
    // An alias in the list to an anchor in another section.
    let alias = format!(
        "gateway:\n  tags: &tags [env:x]\npolicies:\n{items}  - name: last\n    match_tags: *tags\n    action: allow\n    rules: [{{host: z.example}}]\n"
    );
    // `policies:` inside a quoted string that runs over several lines.
    let quoted = format!(
        "gateway:\n  tags: [\"a\n{}\"]\n",
        format_args!("policies:\n{items}")
    );
    // A string in the list that runs onto a line at the items' indent.
    let broken = format!(
        "policies:\n{}  - name: \"open\n  - name: x\"\n    action: allow\n    rules: [{{host: q.example}}]\n{}",
        &items[..items.len() / 2],
        &items[items.len() / 2..]
    );
    for text in [alias, quoted, broken] {
        let whole = parse_partial_as(&text, None, false);
        let pieces = parse_partial_as(&text, None, true);
        match (whole, pieces) {
            (Ok(whole), Ok(pieces)) => {
                assert_eq!(pieces.loaded.config.policies, whole.loaded.config.policies);
                assert_eq!(pieces.errors, whole.errors);
                assert_eq!(
                    pieces.loaded.config.gateway.tags,
                    whole.loaded.config.gateway.tags
                );
            }
            (Err(whole), Err(pieces)) => assert_eq!(pieces, whole),
            (whole, pieces) => panic!("whole {whole:?}\npieces {pieces:?}"),
        }
    }
}
