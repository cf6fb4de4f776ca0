use super::*;
use crate::transforms::test_support::{config_errors, request, snapshot, transform_mutations};

#[test]
fn prefix_text_cuts_at_a_character_boundary() {
    assert_eq!(prefix_text(b"hello", 10), ("hello".to_owned(), false));
    assert_eq!(prefix_text(b"hello", 3), ("hel".to_owned(), true));
    // "é" is two bytes: a cut inside it drops it instead of showing U+FFFD.
    assert_eq!(prefix_text("aé".as_bytes(), 2), ("a".to_owned(), true));
    assert_eq!(prefix_text(b"a\xffb", 10), ("a\u{fffd}b".to_owned(), false));
}

use crate::transforms::{Outcome, TraceAction, TransformTrace};

const SECRET: &str = "secrets:\n  - {name: gh, source: {type: env, var: S}, inject: {style: bearer}, rules: [{host: a.example}]}\n";

#[test]
fn a_capture_after_secrets_is_refused_at_its_name() {
    for entry in [
        "  - body_capture\n",
        "  - {name: header_capture, config: {headers: [user-agent]}}\n",
    ] {
        let yaml = format!("{SECRET}transforms:\n  - allowlist\n  - secrets\n{entry}");
        let errors = config_errors(&yaml);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].starts_with("transforms[2].name: ")
                && errors[0].contains("must run before `secrets` (transforms[1])")
                && errors[0].contains("instead of what the workload sent"),
            "{}",
            errors[0]
        );
        let yaml = format!("{SECRET}transforms:\n  - allowlist\n{entry}  - secrets\n");
        assert_eq!(config_errors(&yaml), Vec::<String>::new(), "{entry}");
    }
}

#[test]
fn credential_headers_are_refused_with_their_path() {
    let yaml = "transforms:\n  - allowlist\n  - name: header_capture\n    config: {headers: [user-agent, Authorization, proxy-authorization, Cookie, set-cookie, X-Api-Key, \"x y\", User-Agent]}\n";
    let errors = config_errors(yaml);
    assert_eq!(
        errors,
        [
            "transforms[1].config.headers[1]: \"Authorization\" carries credentials and is never captured",
            "transforms[1].config.headers[2]: \"proxy-authorization\" carries credentials and is never captured",
            "transforms[1].config.headers[3]: \"Cookie\" carries credentials and is never captured",
            "transforms[1].config.headers[4]: \"set-cookie\" carries credentials and is never captured",
            "transforms[1].config.headers[5]: \"X-Api-Key\" carries credentials and is never captured",
            "transforms[1].config.headers[6]: \"x y\" is not a header name",
            "transforms[1].config.headers[7]: \"User-Agent\" is listed twice",
        ]
    );
}

#[test]
fn a_header_a_secret_writes_into_is_refused() {
    let yaml = r#"
secrets:
  - {name: gh, source: {type: env, var: S}, inject: {style: bearer}, rules: [{host: a.example}]}
  - {name: tok, source: {type: env, var: T}, inject: {style: custom, header: X-Token}, rules: [{host: b.example}]}
  - {name: sig, source: {type: env, var: H}, inject: {style: hmac, header: X-Signature, message: "{{ path }}"}, rules: [{host: c.example}]}
  - {name: aws, source: {type: env, var: A}, inject: {style: aws_sigv4, service: s3, region: us-east-1}, rules: [{host: d.example}]}
transforms:
  - allowlist
  - name: header_capture
    config: {headers: [user-agent, x-token, X-Signature, x-amz-security-token]}
  - secrets
"#;
    assert_eq!(
        config_errors(yaml),
        [
            "transforms[1].config.headers[1]: secret `tok` (secrets[1]) writes its credential into \"x-token\": it is never captured",
            "transforms[1].config.headers[2]: secret `sig` (secrets[2]) writes its credential into \"x-signature\": it is never captured",
            "transforms[1].config.headers[3]: secret `aws` (secrets[3]) writes its credential into \"x-amz-security-token\": it is never captured",
        ]
    );
}

#[test]
fn config_mistakes_name_their_field() {
    let cases = [
        (
            "  - {name: body_capture, config: {max_bytes: 0}}\n",
            "transforms[1].config.max_bytes: 0 is out of range: capture between 1 and 65536 bytes",
        ),
        (
            "  - {name: body_capture, config: {max_bytes: 65537}}\n",
            "transforms[1].config.max_bytes: 65537 is out of range",
        ),
        (
            "  - {name: body_capture, config: {max: 10}}\n",
            "transforms[1].config.max: unknown field `max`",
        ),
        (
            "  - header_capture\n",
            "transforms[1].config: header_capture needs a `config` with a `headers` list",
        ),
        (
            "  - {name: header_capture, config: {headers: []}}\n",
            "transforms[1].config.headers: list at least one header name",
        ),
        (
            "  - {name: body_capture, rules: [{host: a.example, body: {contains: [x]}}]}\n",
            "transforms[1].rules[0].body: `body` conditions apply to policy rules only",
        ),
    ];
    for (entry, expected) in cases {
        let errors = config_errors(&format!("transforms:\n  - allowlist\n{entry}"));
        assert_eq!(errors.len(), 1, "{entry}: {errors:#?}");
        assert!(errors[0].starts_with(expected), "{entry}: {}", errors[0]);
    }
}

const PIPELINE: &str = r#"
policies:
  - {name: all, action: allow, rules: [{host: "*.example"}]}
transforms:
  - allowlist
  - name: body_capture
    rules: [{host: api.example}]
    config: {max_bytes: 16}
  - name: header_capture
    config: {headers: [user-agent, x-agent-session, x-absent]}
"#;

fn stage<'a>(outcome: &'a Outcome, name: &str) -> &'a TransformTrace {
    outcome
        .trace
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:#?}", outcome.trace))
}

#[tokio::test]
async fn the_body_is_captured_bounded_and_only_in_scope() {
    let s = snapshot(PIPELINE);
    let r = request("POST https://api.example/v1/chat", &[]);
    assert!(s.needs_body(&r, &[]));
    let other = request("POST https://other.example/v1/chat", &[]);
    assert!(!s.needs_body(&other, &[]));

    let body = br#"{"model": "gpt", "messages": []}"#;
    let o = s.decide(&r, &[], Some(body)).await.outcome;
    assert!(o.rejection.is_none());
    assert!(
        transform_mutations(&o).is_empty(),
        "capture changes nothing: {:?}",
        o.mutations
    );
    let t = stage(&o, "body_capture");
    assert_eq!(t.action, TraceAction::Continue);
    assert_eq!(
        t.annotations.captured_body.as_deref(),
        Some(&CapturedBody {
            bytes: body.len(),
            truncated: true,
            text: r#"{"model": "gpt","#.to_owned(),
        })
    );

    let small = s.decide(&r, &[], Some(b"short")).await.outcome;
    let captured = stage(&small, "body_capture")
        .annotations
        .captured_body
        .clone();
    assert_eq!(
        captured.as_deref(),
        Some(&CapturedBody {
            bytes: 5,
            truncated: false,
            text: "short".into()
        })
    );
    let empty = s.decide(&r, &[], Some(b"")).await.outcome;
    let t = stage(&empty, "body_capture");
    assert_eq!(t.annotations.captured_body, None);
    assert_eq!(t.annotations.reason, Some("no_body"));

    let o = s.decide(&other, &[], Some(body)).await.outcome;
    assert_eq!(stage(&o, "body_capture").action, TraceAction::Skip);
    assert_eq!(
        stage(&o, "body_capture").annotations,
        Annotations::default()
    );
}

#[tokio::test]
async fn listed_headers_are_captured_and_the_proxy_token_is_redacted() {
    let s = snapshot(PIPELINE);
    let r = request(
        "POST https://api.example/v1/chat",
        &[
            ("user-agent", "agent/1.0"),
            ("x-agent-session", "s-1"),
            ("x-agent-session", "s-2 ptok-workload-77aa9"),
            ("x-other", "not listed"),
            ("proxy-authorization", "Bearer ptok-workload-77aa9"),
        ],
    );
    let o = s
        .decide(&r, &[], Some(b"token=ptok-workload-77aa9&x=1"))
        .await
        .outcome;
    let headers = &stage(&o, "header_capture").annotations.captured_headers;
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("user-agent", "agent/1.0"),
            ("x-agent-session", "s-1"),
            ("x-agent-session", "s-2 <redacted>"),
        ]
    );
    let body = stage(&o, "body_capture")
        .annotations
        .captured_body
        .clone()
        .unwrap();
    // Redacted before the 16-byte cut: no prefix of the token survives it.
    assert_eq!(body.text, "token=<redacted>");
    assert!(body.truncated);
    let audit = serde_json::to_string(&o.trace).unwrap();
    assert!(!audit.contains("ptok-workload-77aa9"), "{audit}");
    assert!(!audit.contains("not listed"), "{audit}");
    // Only the proxy token's own removal: the capture transforms change nothing.
    assert_eq!(o.mutations.remove, ["proxy-authorization"]);
    let mutations = transform_mutations(&o);
    assert!(mutations.set.is_empty() && mutations.body.is_none());

    let none = s
        .decide(&request("GET https://api.example/", &[]), &[], None)
        .await
        .outcome;
    let t = stage(&none, "header_capture");
    assert!(t.annotations.captured_headers.is_empty());
    assert_eq!(t.annotations.reason, Some("no_listed_header"));
}

#[test]
fn the_token_is_redacted_before_the_cut() {
    let token = Some("ptok-0123456789");
    // The token straddles the cut.
    let (text, truncated) = capture_text(b"abcdefgh ptok-0123456789 tail", 12, token);
    assert_eq!((text.as_str(), truncated), ("abcdefgh <re", true));
    let (text, truncated) = capture_text(b"x ptok-0123456789", 64, token);
    assert_eq!((text.as_str(), truncated), ("x <redacted>", false));
    // The token past the window: nothing of it shows.
    let (text, truncated) = capture_text(b"abcd ptok-0123456789", 4, token);
    assert_eq!((text.as_str(), truncated), ("abcd", true));
}

#[test]
fn long_header_values_are_cut() {
    let capture = HeaderCapture::compile(
        &HeaderCaptureConfig {
            headers: vec!["X-Long".into()],
        },
        &[],
    )
    .unwrap();
    assert_eq!(capture.headers, ["x-long"]);
    let (text, truncated) = prefix_text("y".repeat(5000).as_bytes(), MAX_HEADER_VALUE);
    assert_eq!((text.len(), truncated), (MAX_HEADER_VALUE, true));
}
