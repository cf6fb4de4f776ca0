use super::*;
use crate::check::{CheckRequest, build_request};
use crate::config::parse_str;
use crate::snapshot::Snapshot;
use crate::transforms::test_support::snapshot;

async fn outcome(snapshot: &Snapshot, line: &str, headers: &[(&str, &str)]) -> Outcome {
    let request = build_request(&CheckRequest {
        request_line: line.into(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        ..CheckRequest::default()
    })
    .unwrap();
    snapshot.decide(&request, &[], None).await.outcome
}

const PIPELINE: &str = r#"
policies:
  - {name: api, action: allow, rules: [{host: api.example}]}
  - {name: review, action: flag, rules: [{host: review.example}]}
transforms:
  - allowlist
  - name: header_allowlist
    rules: [{host: "*.example", paths: ["/scoped/*"]}]
    config: {allow: [accept, "/^x-keep-/"]}
"#;

#[tokio::test]
async fn reject_short_circuits_and_is_traced() {
    let s = snapshot(PIPELINE);
    let o = outcome(&s, "GET http://other.example/scoped/x", &[("x-drop", "1")]).await;
    assert_eq!(o.decision, Decision::Denied);
    let r = o.rejection.unwrap();
    assert_eq!(
        (r.status, r.kind.as_str(), r.reason, r.transform),
        (403, "policy_denied", "no_matching_policy", "allowlist")
    );
    assert_eq!(
        o.trace.len(),
        1,
        "header_allowlist never ran: {:?}",
        o.trace
    );
    assert_eq!(o.trace[0].action, TraceAction::Reject);
    assert!(o.mutations.is_empty());
}

#[tokio::test]
async fn scoped_transform_skips_out_of_scope_requests() {
    let s = snapshot(PIPELINE);
    let o = outcome(&s, "GET http://api.example/unscoped", &[("x-drop", "1")]).await;
    assert_eq!(o.decision, Decision::Allowed);
    assert_eq!(o.trace[1].action, TraceAction::Skip);
    assert!(o.mutations.remove.is_empty());

    let o = outcome(
        &s,
        "GET http://api.example/scoped/x",
        &[
            ("x-drop", "1"),
            ("Accept", "*/*"),
            ("X-Keep-Me", "1"),
            ("x-also-drop", "2"),
        ],
    )
    .await;
    assert_eq!(o.trace[1].action, TraceAction::Continue);
    assert_eq!(
        o.trace[1].annotations.stripped_headers,
        ["x-drop", "x-also-drop"]
    );
    assert_eq!(o.mutations.remove, ["x-drop", "x-also-drop"]);
}

#[tokio::test]
async fn flag_forwards_and_is_recorded() {
    let s = snapshot(PIPELINE);
    let o = outcome(&s, "POST http://review.example/x", &[]).await;
    assert_eq!(o.decision, Decision::Flagged);
    assert!(o.rejection.is_none());
    assert_eq!(o.trace[0].annotations.policy.as_deref(), Some("review"));
    assert_eq!(o.trace[0].annotations.decision, Some(Decision::Flagged));
}

#[tokio::test]
async fn proxy_authorization_is_always_removed() {
    let s = snapshot("default_action: allow");
    let o = outcome(
        &s,
        "GET http://a.example/",
        &[("proxy-authorization", "Bearer x")],
    )
    .await;
    assert_eq!(o.decision, Decision::Allowed);
    assert_eq!(o.mutations.remove, ["proxy-authorization"]);
}

#[test]
fn transform_entries_parse_names_and_maps() {
    let parse = |yaml: &str| TransformEntry::parse(serde_norway::from_str(yaml).unwrap());
    assert_eq!(parse("allowlist").unwrap(), TransformEntry::allowlist());
    assert_eq!(
        parse("{name: allowlist}").unwrap(),
        TransformEntry::allowlist()
    );
    let err = parse("{name: allowlist, rules: [{host: x}]}").unwrap_err();
    assert_eq!(err[0].path, "rules");
    let err = parse("header_allowlist").unwrap_err();
    assert_eq!(err[0].path, "config");
    let err = parse("{name: header_allowlist, config: {allow: [ok], nope: 1}}").unwrap_err();
    assert_eq!(err[0].path, "config.nope");
    assert_eq!(parse("secrets").unwrap(), TransformEntry::secrets());
    let err = parse("{name: secrets, config: {}}").unwrap_err();
    assert_eq!(err[0].path, "config");
    let err = parse("{name: judge}").unwrap_err();
    assert_eq!(err[0].path, "config");
    let err = parse("{name: grpc}").unwrap_err();
    assert_eq!(err[0].path, "config");
    let err = parse("{name: allowlist, extra: 1}").unwrap_err();
    assert_eq!(err[0].path, "extra");
}

#[test]
fn allowlist_twice_is_an_error() {
    let loaded = parse_str("transforms: [allowlist, allowlist]", None).unwrap();
    let errors = Pipeline::compile(
        &loaded.config.transforms,
        &[],
        &Default::default(),
        &Default::default(),
        &Default::default(),
        &Default::default(),
        &Default::default(),
    )
    .unwrap_err();
    assert_eq!(errors[0].path, "transforms[1].name");
}

const BODY_RULES: &str = r#"
gateway: {tags: [env:ci]}
policies:
  - {name: leak, priority: 1, match_tags: [env:ci], action: deny, message: no keys,
     rules: [{host: "*", methods: [POST], body: {contains: [aws_secret_access_key]}}]}
  - {name: allow-all, priority: 100, action: allow, rules: [{host: "*"}]}
"#;

#[tokio::test]
async fn the_allowlist_decides_on_the_buffered_body() {
    let s = snapshot(BODY_RULES);
    let request = build_request(&CheckRequest {
        request_line: "POST https://api.example/upload".into(),
        ..CheckRequest::default()
    })
    .unwrap();
    assert!(
        s.needs_body(&request, &[]),
        "the gateway's own tags select the rule"
    );
    let body = b"{\"AWS_SECRET_ACCESS_KEY\": \"SENTINEL-body-7f3e\"}";
    let o = s.decide(&request, &[], Some(body)).await.outcome;
    assert_eq!(o.decision, Decision::Denied);
    let r = o.rejection.unwrap();
    assert_eq!(
        (r.status, r.policy.as_deref(), r.rule, r.message.as_str()),
        (403, Some("leak"), Some(0), "no keys")
    );
    assert_eq!(o.trace[0].annotations.policy.as_deref(), Some("leak"));
    let traced = serde_json::to_string(&o.trace).unwrap();
    assert!(!traced.contains("SENTINEL"), "{traced}");

    let o = s.decide(&request, &[], Some(b"benign")).await.outcome;
    assert_eq!(o.decision, Decision::Allowed);
    assert_eq!(o.trace[0].annotations.policy.as_deref(), Some("allow-all"));
}

#[test]
fn without_an_allowlist_step_no_policy_needs_the_body() {
    let s = snapshot(&format!(
        "{BODY_RULES}transforms:\n  - {{name: header_allowlist, config: {{allow: [accept]}}}}\n"
    ));
    let request = build_request(&CheckRequest {
        request_line: "POST https://api.example/upload".into(),
        ..CheckRequest::default()
    })
    .unwrap();
    assert!(s.policies.has_body_conditions());
    assert!(!s.needs_body(&request, &[]));
}
