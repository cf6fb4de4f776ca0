use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;

use super::rule::{HostPattern, MethodName, PathPattern, RuleConfig, Tag};
use super::*;
use crate::check::{CheckRequest, build_request};
use crate::config::parse_str;
use crate::inspect::Body;
use crate::policy::RequestFacts;

fn policy_set(yaml: &str) -> PolicySet {
    let loaded = parse_str(yaml, None).unwrap_or_else(|e| panic!("{e}"));
    PolicySet::compile(&loaded.config.policies, loaded.config.default_action)
}

fn tags(list: &[&str]) -> Vec<Tag> {
    list.iter().map(|t| Tag::parse(t).unwrap()).collect()
}

/// Decides "METHOD URL" for a workload with `workload` tags: (action, deciding policy,
/// dry-run policy).
fn decide(
    set: &PolicySet,
    request: &str,
    workload: &[&str],
) -> (Action, Option<String>, Option<String>) {
    decide_with_body(set, request, workload, None)
}

/// [`decide`] with the body the gateway would have buffered.
fn decide_with_body(
    set: &PolicySet,
    request: &str,
    workload: &[&str],
    body: Option<&[u8]>,
) -> (Action, Option<String>, Option<String>) {
    let request = build_request(&CheckRequest {
        request_line: request.into(),
        ..CheckRequest::default()
    })
    .unwrap();
    let ids = set.tag_ids(&tags(workload));
    let body = body.map(|b| Body::new(b, None));
    let facts = RequestFacts {
        body: body.as_ref(),
        ..request.facts()
    };
    let verdict = set.evaluate(&facts, &ids);
    let name = |r: Option<RuleRef>| r.map(|r| set.policy(r.policy).name.to_string());
    (
        verdict.action,
        name(verdict.decided_by),
        name(verdict.dry_run),
    )
}

const FLEET: &str = r#"
default_action: deny
policies:
  - name: baseline-registries
    priority: 100
    action: allow
    rules:
      - host: registry.npmjs.org
        methods: [GET, HEAD]
      - host: "*.pypi.org"
  - name: acme-openai
    priority: 10
    match_tags: [tenant:acme]
    action: allow
    rules:
      - host: api.openai.com
        paths: ["/v1/*"]
        methods: [POST]
  - name: acme-prod-only
    priority: 10
    match_tags: [tenant:acme, env:prod]
    action: allow
    rules:
      - host: db.acme.internal
  - name: globex-openai
    priority: 10
    match_tags: [tenant:globex]
    action: deny
    message: globex may not call OpenAI
    rules:
      - host: api.openai.com
  - name: block-admin
    priority: 5
    action: deny
    rules:
      - host: "*.acme.internal"
        paths: ["/admin/*"]
  - name: disabled-allow-all
    priority: 1
    status: disabled
    action: allow
    rules: [{host: "*"}]
  - name: draft-allow-all
    priority: 1
    status: draft
    action: allow
    rules: [{host: "*"}]
"#;

#[test]
fn tag_selection_and_defaults() {
    let set = policy_set(FLEET);
    let cases: &[(&str, &[&str], Action, Option<&str>)] = &[
        // fleet-wide policy applies to everyone, tagged or not
        (
            "GET https://registry.npmjs.org/left-pad",
            &[],
            Action::Allow,
            Some("baseline-registries"),
        ),
        (
            "GET https://registry.npmjs.org/left-pad",
            &["tenant:acme"],
            Action::Allow,
            Some("baseline-registries"),
        ),
        (
            "POST https://registry.npmjs.org/left-pad",
            &[],
            Action::Deny,
            None,
        ),
        (
            "GET https://files.pypi.org/x",
            &[],
            Action::Allow,
            Some("baseline-registries"),
        ),
        ("GET https://pypi.org/x", &[], Action::Deny, None),
        // same request, two identities, two outcomes
        (
            "POST https://api.openai.com/v1/chat",
            &["tenant:acme"],
            Action::Allow,
            Some("acme-openai"),
        ),
        (
            "POST https://api.openai.com/v1/chat",
            &["tenant:globex"],
            Action::Deny,
            Some("globex-openai"),
        ),
        (
            "POST https://api.openai.com/v1/chat",
            &[],
            Action::Deny,
            None,
        ),
        // every match tag is needed
        (
            "GET https://db.acme.internal/x",
            &["tenant:acme"],
            Action::Deny,
            None,
        ),
        (
            "GET https://db.acme.internal/x",
            &["tenant:acme", "env:prod"],
            Action::Allow,
            Some("acme-prod-only"),
        ),
        (
            "GET https://db.acme.internal/x",
            &["env:prod", "tenant:acme", "extra:tag"],
            Action::Allow,
            Some("acme-prod-only"),
        ),
        // lower priority number wins across policies
        (
            "GET https://db.acme.internal/admin/users",
            &["tenant:acme", "env:prod"],
            Action::Deny,
            Some("block-admin"),
        ),
        // disabled and draft never act
        ("GET https://nowhere.example/", &[], Action::Deny, None),
    ];
    for (request, workload, action, policy) in cases {
        let (got_action, got_policy, _) = decide(&set, request, workload);
        assert_eq!(
            (got_action, got_policy.as_deref()),
            (*action, *policy),
            "{request} for {workload:?}"
        );
    }
}

#[test]
fn tie_break_at_equal_priority_is_deny_gated_flag_allow_then_config_order() {
    let set = policy_set(
        r#"
policies:
  - {name: allow-1, priority: 7, action: allow, rules: [{host: t.example}]}
  - {name: flag-1, priority: 7, action: flag, rules: [{host: t.example}]}
  - {name: allow-2, priority: 7, action: allow, rules: [{host: t.example, paths: ["/a"]}]}
  - {name: deny-1, priority: 7, action: deny, rules: [{host: t.example, paths: ["/d/*"]}]}
  - {name: flag-2, priority: 7, action: flag, rules: [{host: "*.example"}]}
  - {name: allow-0, priority: 6, action: allow, rules: [{host: t.example, paths: ["/early"]}]}
"#,
    );
    let at = |path: &str| decide(&set, &format!("GET http://t.example{path}"), &[]);
    assert_eq!(at("/x").1.as_deref(), Some("flag-1"), "flag beats allow");
    assert_eq!(at("/x").0, Action::Flag);
    assert_eq!(
        at("/a").1.as_deref(),
        Some("flag-1"),
        "flag beats allow, first flag in config order"
    );
    assert_eq!(
        at("/d/1").1.as_deref(),
        Some("deny-1"),
        "deny beats flag and allow"
    );
    assert_eq!(
        at("/early").1.as_deref(),
        Some("allow-0"),
        "priority before action"
    );
}

#[test]
fn default_action_is_configurable() {
    let set = policy_set("default_action: allow\npolicies: []");
    assert_eq!(
        decide(&set, "GET http://a.example/", &[]),
        (Action::Allow, None, None)
    );
    let set = policy_set("policies: []");
    assert_eq!(
        decide(&set, "GET http://a.example/", &[]).0,
        Action::Deny,
        "deny by default"
    );
}

#[test]
fn dry_run_policies_are_recorded_not_enforced() {
    let set = policy_set(
        r#"
policies:
  - {name: canary-deny, priority: 1, action: deny, warn: true, rules: [{host: api.example, paths: ["/beta/*"]}]}
  - {name: allow-api, priority: 10, action: allow, rules: [{host: api.example}]}
  - {name: late-warn, priority: 20, action: deny, warn: true, rules: [{host: api.example}]}
"#,
    );
    assert_eq!(
        decide(&set, "GET http://api.example/beta/x", &[]),
        (
            Action::Allow,
            Some("allow-api".into()),
            Some("canary-deny".into())
        )
    );
    // A dry-run policy ranked after the decider would not have decided: not recorded.
    assert_eq!(
        decide(&set, "GET http://api.example/ga", &[]),
        (Action::Allow, Some("allow-api".into()), None)
    );
    // Nothing enforced matches: the default decides, the dry run is still reported.
    assert_eq!(
        decide(&set, "POST http://other.example/beta/x", &[]),
        (Action::Deny, None, None)
    );
}

#[test]
fn connect_is_decided_on_the_tunnel_target() {
    let set = policy_set(
        r#"
policies:
  - {name: npm-get-only, priority: 10, action: allow, rules: [{host: registry.npmjs.org, methods: [GET]}]}
  - {name: github-tunnel, priority: 10, action: allow, rules: [{host: api.github.com, methods: [CONNECT]}]}
  - {name: gitlab-all, priority: 10, action: allow, rules: [{host: gitlab.com}]}
  - {name: gitlab-no-admin, priority: 20, action: deny, rules: [{host: gitlab.com, paths: ["/admin/*"]}]}
  - {name: example-no-admin, priority: 5, action: deny, rules: [{host: example.org, paths: ["/admin/*"]}]}
  - {name: example-all, priority: 10, action: allow, rules: [{host: example.org}]}
"#,
    );
    let connect = |target: &str| decide(&set, &format!("CONNECT {target}"), &[]);
    assert_eq!(
        connect("api.github.com:443").1.as_deref(),
        Some("github-tunnel")
    );
    assert_eq!(
        connect("registry.npmjs.org:443").0,
        Action::Deny,
        "a GET-only rule opens no tunnel"
    );
    assert_eq!(
        connect("gitlab.com:443").1.as_deref(),
        Some("gitlab-all"),
        "a lower-ranked deny does not decide"
    );
    assert_eq!(
        connect("example.org:443").1.as_deref(),
        Some("example-no-admin"),
        "a higher-ranked path deny closes the tunnel it cannot inspect"
    );
    // Plain requests still see paths.
    assert_eq!(
        decide(&set, "GET http://example.org/ok", &[]).1.as_deref(),
        Some("example-all")
    );
}

#[test]
fn explain_lists_every_match_in_decision_order() {
    let set = policy_set(FLEET);
    let request = build_request(&CheckRequest {
        request_line: "GET https://db.acme.internal/admin/x".into(),
        ..CheckRequest::default()
    })
    .unwrap();
    let ids = set.tag_ids(&tags(&["tenant:acme", "env:prod"]));
    let names: Vec<_> = set
        .explain(&request.facts(), &ids)
        .iter()
        .map(|m| set.policy(m.policy).name.to_string())
        .collect();
    assert_eq!(names, ["block-admin", "acme-prod-only"]);
}

#[test]
fn unknown_workload_tags_are_ignored() {
    let set = policy_set(FLEET);
    assert_eq!(
        decide(
            &set,
            "GET https://registry.npmjs.org/x",
            &["never:mentioned"]
        )
        .0,
        Action::Allow
    );
}

// ---------------------------------------------------------------------------------------
// Property test: the indexed engine agrees with a naive evaluator written independently
// from the SPEC's wording (string matching, no index, no globset).

/// `*` matches any run of characters (including `/` and `.`).
fn wildcard(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.starts_with(head)
                && (head.len()..=text.len())
                    .any(|i| text.is_char_boundary(i) && wildcard(tail, &text[i..]))
        }
    }
}

fn naive_host(pattern: &str, host: &str, port: u16, ip: Option<IpAddr>) -> bool {
    let (name, rule_port) = match pattern.rsplit_once(':') {
        Some((name, p)) if !pattern.contains('/') => (name, p.parse::<u16>().ok()),
        _ => (pattern, None),
    };
    if rule_port.is_some_and(|p| p != port) {
        return false;
    }
    if name.contains('/') {
        let net: ipnet::IpNet = name.parse().unwrap();
        return ip.is_some_and(|ip| net.contains(&ip));
    }
    if let Ok(rule_ip) = name.parse::<IpAddr>() {
        return ip == Some(rule_ip);
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "*" {
        return true;
    }
    if let Some(suffix) = name.strip_prefix("*.")
        && !suffix.contains('*')
    {
        return host.ends_with(&format!(".{suffix}"));
    }
    wildcard(&name, host)
}

fn naive_rule(rule: &RuleConfig, action: Action, req: &crate::policy::RequestFacts<'_>) -> bool {
    if !naive_host(rule.host.as_str(), req.host, req.port, req.ip) {
        return false;
    }
    let method_names: Vec<String> = rule
        .methods
        .iter()
        .map(|m| {
            serde_json::to_value(m)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let any_method = method_names.is_empty() || method_names.iter().any(|m| m == "ALL");
    let any_path =
        rule.paths.is_empty() || rule.paths.iter().any(|p| matches!(p.as_str(), "*" | "/*"));
    if req.is_connect() {
        return match action {
            Action::Deny => true,
            _ => {
                any_path
                    && (any_method || method_names.iter().any(|m| m == "CONNECT"))
                    && rule.condition_fields().is_empty()
            }
        };
    }
    let method_ok = any_method || method_names.iter().any(|m| m == req.method.as_str());
    let path_ok = any_path || rule.paths.iter().any(|p| wildcard(p.as_str(), req.path));
    method_ok && path_ok && naive_body(rule, req.body.map(Body::bytes).unwrap_or_default())
}

/// The body condition as the docs word it: any substring, ignoring ASCII case, or any
/// regex; no condition always holds.
fn naive_body(rule: &RuleConfig, body: &[u8]) -> bool {
    let Some(condition) = &rule.body else {
        return true;
    };
    let lower = body.to_ascii_lowercase();
    condition.contains().iter().any(|needle| {
        let needle = needle.as_str().to_ascii_lowercase().into_bytes();
        lower.windows(needle.len()).any(|w| w == needle)
    }) || condition
        .regex()
        .iter()
        .any(|r| regex::bytes::Regex::new(r.as_str()).unwrap().is_match(body))
}

type Key = (i32, u8, usize, usize);
/// (action, deciding (policy, rule), dry-run (policy, rule))
type NaiveVerdict = (Action, Option<(usize, usize)>, Option<(usize, usize)>);

/// (action, deciding (policy, rule), dry-run (policy, rule))
fn naive_decide(
    policies: &[PolicyConfig],
    default: DefaultAction,
    req: &crate::policy::RequestFacts<'_>,
    workload: &[Tag],
) -> NaiveVerdict {
    let mut matches: Vec<(Key, bool)> = Vec::new();
    for (pi, p) in policies.iter().enumerate() {
        if p.status != PolicyStatus::Active || !p.match_tags.iter().all(|t| workload.contains(t)) {
            continue;
        }
        for (ri, rule) in p.rules.iter().enumerate() {
            if naive_rule(rule, p.action, req) {
                matches.push(((p.priority, p.action.rank(), pi, ri), p.warn));
            }
        }
    }
    matches.sort();
    let enforced = matches.iter().find(|(_, warn)| !warn).map(|(k, _)| *k);
    let dry = matches
        .iter()
        .find(|(k, warn)| *warn && enforced.is_none_or(|e| *k < e))
        .map(|(k, _)| (k.2, k.3));
    match enforced {
        Some(k) => (policies[k.2].action, Some((k.2, k.3)), dry),
        None => (default.action(), None, dry),
    }
}

const TAG_POOL: &[&str] = &["tenant:a", "tenant:b", "env:prod", "team:x"];
const HOST_POOL: &[&str] = &[
    "x.com",
    "api.x.com",
    "y.org",
    "*.x.com",
    "*.api.x.com",
    "*.y.org",
    "*",
    "10.0.0.0/8",
    "10.0.0.1",
    "10.2.0.0/16",
    "10.0.0.0/12",
    "fd00:1::/32",
    "fd00::/20",
    "x.com:8443",
    "*.x.com:443",
    "api-*.x.com",
    "127.0.0.1:80",
];
const PATH_POOL: &[&str] = &["/*", "/a/*", "/a/b", "/b*", "/a/*/c", "*"];
const METHOD_POOL: &[&str] = &["GET", "POST", "DELETE", "CONNECT", "ALL"];
/// Body conditions as (contains, regex).
const BODY_CONDITION_POOL: &[(&[&str], &[&str])] = &[
    (&["secret"], &[]),
    (&[], &["k[0-9]+"]),
    (&["Customer List", "zz"], &["^ssn"]),
];
const BODY_POOL: &[Option<&str>] = &[
    None,
    Some(""),
    Some("my SECRET key"),
    Some("k42"),
    Some("ssn 1"),
    Some("the customer list"),
    Some("nothing to see"),
];

fn body_condition((contains, regex): (&[&str], &[&str])) -> body::BodyCondition {
    body::BodyCondition::try_from(body::BodyFields {
        contains: contains
            .iter()
            .map(|c| body::BodyText::try_from((*c).to_owned()).unwrap())
            .collect(),
        regex: regex
            .iter()
            .map(|r| body::BodyRegex::try_from((*r).to_owned()).unwrap())
            .collect(),
    })
    .unwrap()
}

fn rule_strategy() -> impl Strategy<Value = RuleConfig> {
    (
        prop::sample::select(HOST_POOL),
        prop::sample::subsequence(PATH_POOL, 0..=2),
        prop::sample::subsequence(METHOD_POOL, 0..=2),
        prop::option::weighted(0.3, prop::sample::select(BODY_CONDITION_POOL)),
    )
        .prop_map(|(host, paths, methods, body)| RuleConfig {
            body: body.map(body_condition),
            ..RuleConfig::scope(
                HostPattern::try_from(host.to_owned()).unwrap(),
                paths
                    .iter()
                    .map(|p| PathPattern::try_from((*p).to_owned()).unwrap())
                    .collect(),
                methods
                    .iter()
                    .map(|m| MethodName::try_from((*m).to_owned()).unwrap())
                    .collect(),
            )
        })
}

fn policy_strategy() -> impl Strategy<Value = PolicyConfig> {
    (
        0i32..4,
        prop::sample::select(&[Action::Allow, Action::Flag, Action::Deny][..]),
        prop::sample::subsequence(TAG_POOL, 0..=2),
        prop::sample::select(
            &[
                PolicyStatus::Active,
                PolicyStatus::Active,
                PolicyStatus::Disabled,
                PolicyStatus::Draft,
            ][..],
        ),
        prop::bool::weighted(0.2),
        prop::collection::vec(rule_strategy(), 1..=3),
    )
        .prop_map(
            |(priority, action, match_tags, status, warn, rules)| PolicyConfig {
                name: String::new(),
                priority,
                status,
                match_tags: tags(&match_tags),
                action,
                warn,
                description: None,
                message: None,
                rules,
                condition: None,
                when_condition_fails: Default::default(),
                grant: None,
            },
        )
}

const REQUEST_POOL: &[&str] = &[
    "GET http://x.com/",
    "GET http://x.com/a/b",
    "POST http://X.COM./a/b/c",
    "DELETE https://api.x.com/a/q/c",
    "GET https://a.api.x.com/b",
    "GET https://api-eu.x.com/bc",
    "GET http://y.org/a",
    "GET http://z.net/a/b",
    "GET http://10.0.0.1/a",
    "POST http://10.2.3.4/b",
    "GET http://10.0.3.4/a/b",
    "GET http://[fd00:1::5]/a",
    "GET http://[fd00:2::5]/b",
    "GET http://127.0.0.1/a/b",
    "GET http://x.com:8443/a/b",
    "CONNECT x.com:443",
    "CONNECT api.x.com:443",
    "CONNECT x.com:8443",
    "CONNECT 10.0.0.1:443",
    "CONNECT z.net:443",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiled_engine_agrees_with_naive_reference(
        mut policies in prop::collection::vec(policy_strategy(), 0..24),
        default in prop::sample::select(&[DefaultAction::Allow, DefaultAction::Flag, DefaultAction::Deny][..]),
        requests in prop::collection::vec(
            (
                prop::sample::select(REQUEST_POOL),
                prop::sample::subsequence(TAG_POOL, 0..=3),
                prop::sample::select(BODY_POOL),
            ),
            1..16,
        ),
    ) {
        for (i, p) in policies.iter_mut().enumerate() {
            p.name = format!("p{i}");
        }
        let set = PolicySet::compile(&policies, default);
        let verdict_of = |facts: &RequestFacts<'_>, workload: &[Tag]| {
            let verdict = set.evaluate(facts, &set.tag_ids(workload));
            (
                verdict.action,
                verdict.decided_by.map(|r| (r.policy as usize, r.rule as usize)),
                verdict.dry_run.map(|r| (r.policy as usize, r.rule as usize)),
            )
        };
        for (line, workload, body) in requests {
            let request = build_request(&CheckRequest { request_line: line.into(), ..CheckRequest::default() }).unwrap();
            let headers_only = request.facts();
            let body = body.map(|b| Body::new(b.as_bytes(), None));
            let facts = RequestFacts { body: body.as_ref(), ..headers_only };
            let workload = tags(&workload);
            let want = naive_decide(&policies, default, &facts, &workload);
            prop_assert_eq!(verdict_of(&facts, &workload), want, "request {} tags {:?} body {:?}", line, workload, body);
            // When host, path and method decide alone (the fast path's test), they decide
            // as the full evaluation does, whatever the body.
            if !headers_only.is_connect()
                && let Ok(scoped) = set.scope_verdict(&headers_only, &set.tag_ids(&workload))
            {
                prop_assert_eq!(
                    (
                        scoped.action,
                        scoped.decided_by.map(|r| (r.policy as usize, r.rule as usize)),
                        None,
                    ),
                    want,
                    "scope verdict: request {} tags {:?} body {:?}", line, workload, body
                );
            }
            // A body the engine does not ask for cannot change the decision.
            if !set.needs_body(&headers_only, &set.tag_ids(&workload)) {
                prop_assert_eq!(
                    verdict_of(&headers_only, &workload), want,
                    "unbuffered: request {} tags {:?} body {:?}", line, workload, body
                );
            }
        }
    }
}

/// An intercepted CONNECT opens when some request inside could be allowed; only a deny
/// covering every path and method keeps it shut. An opaque one needs a whole-tunnel grant.
#[test]
fn intercepted_connect_opens_for_any_grant_naming_the_host() {
    let set = policy_set(
        r#"
policies:
  - {name: get-docs, action: allow, rules: [{host: api.example.com, paths: ["/docs/*"], methods: [GET]}]}
  - {name: no-admin, priority: 1, action: deny, rules: [{host: api.example.com, paths: ["/admin/*"]}]}
  - {name: blocked, priority: 1, action: deny, rules: [{host: blocked.example.com}]}
  - {name: blocked-grant, action: allow, rules: [{host: blocked.example.com}]}
"#,
    );
    let connect = |host: &str, intercepted: bool| {
        let mut request = build_request(&CheckRequest {
            request_line: format!("CONNECT {host}:443"),
            ..CheckRequest::default()
        })
        .unwrap();
        request.intercepted = intercepted;
        let verdict = set.evaluate(&request.facts(), &set.tag_ids(&[]));
        (
            verdict.action,
            verdict
                .decided_by
                .map(|r| set.policy(r.policy).name.to_string()),
        )
    };
    assert_eq!(
        connect("api.example.com", true),
        (Action::Allow, Some("get-docs".into()))
    );
    // Opaque: a partial deny names the host, and no rule grants the whole tunnel.
    assert_eq!(
        connect("api.example.com", false),
        (Action::Deny, Some("no-admin".into()))
    );
    assert_eq!(
        connect("blocked.example.com", true),
        (Action::Deny, Some("blocked".into()))
    );
    assert_eq!(connect("other.example.com", true), (Action::Deny, None));
}

#[test]
fn certificates_only_for_hosts_a_reachable_policy_could_allow() {
    let set = policy_set(
        r#"
policies:
  - {name: ci, match_tags: [env:ci], action: allow, rules: [{host: "*.ci.example"}]}
  - {name: prod, match_tags: [env:prod], action: allow, rules: [{host: prod.example}]}
  - {name: dry, warn: true, action: allow, rules: [{host: dry.example}]}
  - {name: off, status: disabled, action: allow, rules: [{host: off.example}]}
  - {name: no, action: deny, rules: [{host: denied.example}]}
  - {name: ip, action: allow, rules: [{host: 10.0.0.0/8}]}
"#,
    );
    let reachable = tags(&["env:ci"]);
    let may = |host: &str| set.could_allow_host(host, |t| reachable.contains(t));
    assert!(may("a.ci.example"));
    assert!(!may("ci.example"), "the glob needs a subdomain");
    assert!(!may("prod.example"), "no workload here carries env:prod");
    assert!(!may("dry.example"), "a dry-run policy never allows");
    assert!(!may("off.example"));
    assert!(!may("denied.example"));
    assert!(
        !may("10.1.2.3"),
        "CIDR rules match addresses, not server names"
    );
    let open = policy_set("default_action: allow\n");
    assert!(open.could_allow_host("anything.example", |_| false));
}

/// The "common patterns" the body condition exists for, as the integration tests run them.
const SEEDS: &str = include_str!("../../tests/fixtures/seed-policies.yaml");

#[test]
fn body_conditions_decide_the_seed_patterns() {
    let set = policy_set(SEEDS);
    let cases: &[(&str, Option<&str>, Action, &str)] = &[
        (
            "POST https://api.example.com/upload",
            Some(r#"{"aws_secret_access_key": "x"}"#),
            Action::Deny,
            "block-credential-leaks",
        ),
        (
            "PUT https://api.example.com/upload",
            Some("AWS_Secret_Access_Key=x"),
            Action::Deny,
            "block-credential-leaks",
        ),
        // The credential rule is for writes only; a GET with the same body is not one.
        (
            "GET https://api.example.com/upload",
            Some("aws_secret_access_key=x"),
            Action::Allow,
            "default-allow",
        ),
        (
            "POST https://api.example.com/upload",
            Some("the Customer List, attached"),
            Action::Flag,
            "flag-sensitive",
        ),
        (
            "GET https://api.example.com/q",
            Some("ssn: 123-45-6789"),
            Action::Flag,
            "flag-sensitive",
        ),
        // Both conditions hold: the lower priority number wins.
        (
            "POST https://api.example.com/upload",
            Some("salary and aws_secret_access_key"),
            Action::Deny,
            "block-credential-leaks",
        ),
        (
            "POST https://api.example.com/upload",
            Some(r#"{"hello": "world"}"#),
            Action::Allow,
            "default-allow",
        ),
        // No body is an empty body: no condition holds.
        (
            "POST https://api.example.com/upload",
            Some(""),
            Action::Allow,
            "default-allow",
        ),
        (
            "POST https://api.example.com/upload",
            None,
            Action::Allow,
            "default-allow",
        ),
    ];
    for (request, body, action, policy) in cases {
        let (got, by, _) = decide_with_body(&set, request, &[], body.map(str::as_bytes));
        assert_eq!(
            (got, by.as_deref()),
            (*action, Some(*policy)),
            "{request} with {body:?}"
        );
    }
}

#[test]
fn explain_takes_the_body_into_account() {
    let set = policy_set(SEEDS);
    let request = build_request(&CheckRequest {
        request_line: "POST https://api.example.com/upload".into(),
        ..CheckRequest::default()
    })
    .unwrap();
    let explain = |body: &[u8]| -> Vec<String> {
        let body = Body::new(body, None);
        let facts = RequestFacts {
            body: Some(&body),
            ..request.facts()
        };
        set.explain(&facts, &set.tag_ids(&[]))
            .iter()
            .map(|m| set.policy(m.policy).name.to_string())
            .collect()
    };
    assert_eq!(
        explain(b"salary, aws_secret_access_key"),
        ["block-credential-leaks", "flag-sensitive", "default-allow"]
    );
    assert_eq!(explain(b"benign"), ["default-allow"]);
}

#[test]
fn needs_body_only_when_a_body_rule_could_decide() {
    let set = policy_set(
        r#"
policies:
  - {name: trusted, priority: 1, action: allow, rules: [{host: trusted.example}]}
  - {name: leak, priority: 10, action: deny,
     rules: [{host: "*.example", methods: [POST], body: {contains: [secret]}}]}
  - {name: tenant-scan, priority: 10, match_tags: [tenant:a], action: flag,
     rules: [{host: other.net, body: {regex: ["x+"]}}]}
  - {name: canary, priority: 5, action: deny, warn: true,
     rules: [{host: dry.example, paths: ["/d/*"], body: {contains: [y]}}]}
  - {name: off, status: disabled, action: deny, rules: [{host: off.net, body: {contains: [z]}}]}
  - {name: late, priority: 200, action: flag, rules: [{host: late.net, body: {contains: [z]}}]}
  - {name: allow-all, priority: 100, action: allow, rules: [{host: "*"}]}
"#,
    );
    assert!(set.has_body_conditions());
    let needs = |line: &str, workload: &[&str]| {
        let request = build_request(&CheckRequest {
            request_line: line.into(),
            ..CheckRequest::default()
        })
        .unwrap();
        set.needs_body(&request.facts(), &set.tag_ids(&tags(workload)))
    };
    assert!(needs("POST https://api.example/x", &[]));
    assert!(!needs("GET https://api.example/x", &[]), "method");
    assert!(!needs("POST https://elsewhere.org/x", &[]), "host");
    assert!(
        !needs("POST https://trusted.example/x", &[]),
        "a header-only rule decides first"
    );
    assert!(!needs("POST https://other.net/x", &[]), "tags not carried");
    assert!(needs("POST https://other.net/x", &["tenant:a"]));
    assert!(
        needs("GET https://dry.example/d/1", &[]),
        "a dry-run rule is recorded"
    );
    assert!(!needs("GET https://dry.example/e", &[]), "path");
    assert!(!needs("POST https://off.net/x", &[]), "disabled policy");
    assert!(
        !needs("POST https://late.net/x", &[]),
        "ranks after the allow-all that decides anyway"
    );
    assert!(
        !needs("CONNECT api.example:443", &[]),
        "a tunnel has no body"
    );

    let headers_only = policy_set(
        r#"
policies:
  - {name: off, status: draft, action: deny, rules: [{host: "*", body: {contains: [z]}}]}
  - {name: allow-all, action: allow, rules: [{host: "*"}]}
"#,
    );
    assert!(
        !headers_only.has_body_conditions(),
        "only active policies count"
    );
}

#[test]
fn body_conditions_never_grant_an_opaque_tunnel() {
    let set = policy_set(
        r#"
policies:
  - {name: leak-deny, priority: 1, action: deny,
     rules: [{host: leaky.example, body: {contains: [secret]}}]}
  - {name: leaky-allow, action: allow, rules: [{host: leaky.example}]}
  - {name: body-allow, action: allow, rules: [{host: gated.example, body: {contains: [ok]}}]}
  - {name: body-flag, action: flag, rules: [{host: flagged.example, body: {regex: [ok]}}]}
"#,
    );
    let connect = |host: &str, intercepted: bool| {
        let mut request = build_request(&CheckRequest {
            request_line: format!("CONNECT {host}:443"),
            ..CheckRequest::default()
        })
        .unwrap();
        request.intercepted = intercepted;
        let verdict = set.evaluate(&request.facts(), &set.tag_ids(&[]));
        (
            verdict.action,
            verdict
                .decided_by
                .map(|r| set.policy(r.policy).name.to_string()),
        )
    };
    // Opaque: what the tunnel carries cannot be checked, so a body deny closes it and a
    // body grant does not open it.
    assert_eq!(
        connect("leaky.example", false),
        (Action::Deny, Some("leak-deny".into()))
    );
    assert_eq!(connect("gated.example", false), (Action::Deny, None));
    assert_eq!(connect("flagged.example", false), (Action::Deny, None));
    // Intercepted: each request inside is decided with its body, so the tunnel opens for
    // a grant naming the host, and a body deny does not cover every request.
    assert_eq!(
        connect("leaky.example", true),
        (Action::Allow, Some("leaky-allow".into()))
    );
    assert_eq!(
        connect("gated.example", true),
        (Action::Allow, Some("body-allow".into()))
    );
    // Inside the tunnel, requests are decided on their bodies.
    assert_eq!(
        decide_with_body(&set, "POST https://gated.example/", &[], Some(b"ok")).0,
        Action::Allow
    );
    assert_eq!(
        decide_with_body(&set, "POST https://gated.example/", &[], Some(b"no")).0,
        Action::Deny
    );
}

/// Issue 13, item 11: deciding the messages of a batch one by one never reads the whole
/// body again per message — each content matcher runs once per body, so the work is linear
/// in the body, not in messages × body. (A CEL expression reading `request.body` is the
/// exception: the `cel` crate converts a bound value on every evaluation; `mcp.max_batch`
/// bounds that.)
#[test]
fn a_batch_is_decided_without_rescanning_the_body_per_message() {
    let set = policy_set(
        r#"
policies:
  - name: no-keys
    priority: 1
    action: deny
    rules:
      - {host: mcp.example, body: {contains: [aws_secret_access_key]}}
      - {host: mcp.example, prompt: {contains: [password]}}
  - name: no-big
    priority: 2
    action: deny
    rules: [{host: mcp.example, cel: 'request.args.n > 5'}]
  - name: mcp
    priority: 10
    action: allow
    rules: [{host: mcp.example, tools: ["list_*"]}]
"#,
    );
    let request = build_request(&CheckRequest {
        request_line: "POST http://mcp.example/mcp".into(),
        ..CheckRequest::default()
    })
    .unwrap();
    let ids = set.tag_ids(&tags(&[]));
    for n in [10, 1000] {
        let messages: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"list_things","arguments":{{"n":1}}}}}}"#
                )
            })
            .collect();
        let bytes = format!("[{}]", messages.join(","));
        let body = Body::new(bytes.as_bytes(), None);
        let Some(Ok(crate::mcp::Inbound::Batch(batch))) = body.mcp() else {
            panic!("not a batch");
        };
        for message in batch {
            let facts = RequestFacts {
                body: Some(&body),
                message: Some(message),
                ..request.facts()
            };
            assert_eq!(set.evaluate(&facts, &ids).action, Action::Allow);
        }
        assert_eq!(
            body.matchers_run(),
            2,
            "the body and prompt matchers ran once each for {n} messages"
        );
    }
}

/// Issue 13, item 10: an expression that fails on what the workload sent fails closed — a
/// deny or gated policy refuses (and says it was an error), an allow rule does not match.
#[test]
fn condition_errors_refuse_in_deny_and_gated_policies_and_grant_nothing_in_allow() {
    let set = policy_set(
        r#"
default_action: deny
policies:
  - name: big-payments
    priority: 1
    action: deny
    rules: [{host: pay.example, paths: ["/deny"], cel: 'request.body.amount > 1000'}]
  - name: small-refunds
    priority: 2
    action: gated
    condition: 'request.body.amount < 100'
    rules: [{host: pay.example, paths: ["/gated"]}]
  - name: vip
    priority: 3
    action: allow
    rules: [{host: pay.example, paths: ["/allow"], cel: 'request.body.vip == true'}]
"#,
    );
    let ids = set.tag_ids(&tags(&[]));
    let verdict = |path: &str, body: &[u8]| {
        let request = build_request(&CheckRequest {
            request_line: format!("POST http://pay.example{path}"),
            ..CheckRequest::default()
        })
        .unwrap();
        let body = Body::new(body, None);
        let facts = RequestFacts {
            body: Some(&body),
            ..request.facts()
        };
        let verdict = set.evaluate(&facts, &ids);
        let error = verdict
            .decided_by
            .and_then(|rule| set.condition_error(rule, &facts));
        (verdict.decision(), verdict.condition_error, error)
    };

    let (decision, errored, error) = verdict("/deny", br#"{"amount": "999999"}"#);
    assert_eq!((decision, errored), (Decision::Denied, true));
    let error = error.unwrap();
    assert!(error.contains("(string, int)"), "{error}");
    assert!(!error.contains("999999"), "no request data: {error}");
    let (decision, errored, _) = verdict("/deny", br#"{"amount": 5}"#);
    assert_eq!(
        (decision, errored),
        (Decision::Denied, false),
        "a deny that does not hold falls to the default, without an error"
    );

    let (decision, errored, error) = verdict("/gated", br#"{"amount": "5"}"#);
    assert_eq!((decision, errored), (Decision::Denied, true));
    assert!(
        error
            .unwrap()
            .starts_with("`condition` `request.body.amount < 100`")
    );
    assert_eq!(verdict("/gated", br#"{"amount": 5}"#).0, Decision::Allowed);

    // A byte order mark before the JSON: the same JSON.
    assert_eq!(
        verdict("/gated", b"\xef\xbb\xbf{\"amount\": 5}").0,
        Decision::Allowed
    );

    // An allow rule whose expression fails grants nothing: the default denies, and not
    // because of an error.
    let (decision, errored, _) = verdict("/allow", br#"{"name": "x"}"#);
    assert_eq!((decision, errored), (Decision::Denied, false));
    assert_eq!(verdict("/allow", br#"{"vip": true}"#).0, Decision::Allowed);
}

/// Past a few thousand policies their definitions are digested on every core, a batch at
/// a time: each digest and version must still land on its own policy, so exactly the
/// changed one is compiled anew, in the second batch as in the first.
#[test]
fn a_large_recompile_digests_in_parallel_and_takes_exactly_the_unchanged_policies() {
    let template = parse_str(FLEET, None).unwrap().config.policies[0].clone();
    let before: Vec<PolicyConfig> = (0..9000)
        .map(|i| {
            let mut policy = template.clone();
            policy.name = format!("tenant-{i}");
            policy.priority = i % 97;
            policy
        })
        .collect();
    let versions: Vec<i64> = (0..9000).map(|i| i % 7 + 1).collect();
    let earlier = PolicySet::compile_versioned(&before, &versions, DefaultAction::Deny);
    let mut after = before.clone();
    after[4321].priority += 1000;
    after[8500].priority += 1000;
    let reused = PolicySet::compile_reusing(&after, &versions, DefaultAction::Deny, Some(&earlier));
    let compiled_anew: Vec<usize> = (reused.policies().iter().zip(earlier.policies()))
        .enumerate()
        .filter(|(_, (now, then))| !Arc::ptr_eq(now, then))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(compiled_anew, vec![4321, 8500]);
    assert_eq!(reused.policies()[8500].priority, after[8500].priority);
    for (i, policy) in reused.policies().iter().enumerate() {
        assert_eq!(policy.version, Some(versions[i]), "policy {i}");
        assert_eq!(*policy.name, after[i].name);
    }
}

/// A recompile takes every unchanged policy from the earlier set as it was compiled there,
/// compiles the changed one, and decides exactly as a compile from scratch.
#[test]
fn a_recompile_takes_unchanged_policies_from_the_earlier_set() {
    let before = parse_str(FLEET, None).unwrap().config.policies;
    let earlier = PolicySet::compile(&before, DefaultAction::Deny);
    let mut after = before.clone();
    // One policy changes; one is added ahead of the rest (positions shift); one goes.
    after[1].priority -= 1;
    let mut added = after[0].clone();
    added.name = "added".into();
    after.insert(0, added);
    after.pop();
    let reused = PolicySet::compile_reusing(&after, &[], DefaultAction::Deny, Some(&earlier));
    let fresh = PolicySet::compile(&after, DefaultAction::Deny);
    for (i, policy) in reused.policies().iter().enumerate() {
        let taken = earlier.policies().iter().any(|e| Arc::ptr_eq(e, policy));
        let unchanged = before.contains(&after[i]);
        assert_eq!(taken, unchanged, "policy {} taken: {taken}", policy.name);
    }
    assert!(reused.policies().len() > 2);
    for request in [
        "GET https://registry.npmjs.org/left-pad",
        "POST https://api.openai.com/v1/chat/completions",
        "GET http://10.1.2.3/",
        "DELETE https://api.github.com/repos/x",
    ] {
        for workload in [&["team:ci"][..], &["team:ml", "env:prod"], &[]] {
            assert_eq!(
                decide(&reused, request, workload),
                decide(&fresh, request, workload),
                "{request} for {workload:?}"
            );
        }
    }
}

/// A stored policy set aside as a fault stands in under its own name and version: when its
/// definition compiles again, the stand-in is not taken for it. Nor is a policy compiled
/// at another store version.
#[test]
fn a_recompile_does_not_take_a_policy_compiled_from_another_definition() {
    let before = parse_str(FLEET, None).unwrap().config.policies;
    let mut stand_in = before.clone();
    stand_in[0].action = Action::Deny;
    let earlier = PolicySet::compile_versioned(&stand_in, &[7; 64], DefaultAction::Deny);
    let reused = PolicySet::compile_reusing(&before, &[7; 64], DefaultAction::Deny, Some(&earlier));
    assert!(!Arc::ptr_eq(&reused.policies()[0], &earlier.policies()[0]));
    assert_eq!(reused.policies()[0].action, before[0].action);
    assert!(Arc::ptr_eq(&reused.policies()[1], &earlier.policies()[1]));
    let moved =
        PolicySet::compile_reusing(&stand_in, &[8; 64], DefaultAction::Deny, Some(&earlier));
    assert!(!Arc::ptr_eq(&moved.policies()[1], &earlier.policies()[1]));
    assert_eq!(moved.policies()[1].version, Some(8));
}

/// A definition held as shared JSON (the store's contents) is known again by identity:
/// the same JSON is taken as compiled, an equal one held apart is compiled anew, and a
/// compile known by digest is never taken for a held one.
#[test]
fn a_recompile_knows_a_held_definition_by_identity() {
    use crate::store::Held;
    let configs = parse_str(FLEET, None).unwrap().config.policies;
    let before: Vec<Held<PolicyConfig>> = configs.iter().map(|c| Held::new(1, c)).collect();
    let versions = vec![1; before.len()];
    let earlier = PolicySet::compile_reusing(&before, &versions, DefaultAction::Deny, None);
    let mut after = before.clone();
    after[0] = Held::new(1, &configs[0]);
    let reused = PolicySet::compile_reusing(&after, &versions, DefaultAction::Deny, Some(&earlier));
    assert!(!Arc::ptr_eq(&reused.policies()[0], &earlier.policies()[0]));
    for (i, policy) in reused.policies().iter().enumerate().skip(1) {
        assert!(Arc::ptr_eq(policy, &earlier.policies()[i]), "policy {i}");
    }
    let by_digest = PolicySet::compile_versioned(&configs, &versions, DefaultAction::Deny);
    let shared =
        PolicySet::compile_reusing(&before, &versions, DefaultAction::Deny, Some(&by_digest));
    assert!((shared.policies().iter().zip(by_digest.policies())).all(|(s, d)| !Arc::ptr_eq(s, d)));
}
