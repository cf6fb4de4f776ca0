//! `body_capture` and `header_capture` through the real Envoy: what the workload sent lands
//! in the audit record, bounded; the upstream gets the request unchanged; the credential
//! `secrets` injects after the capture, and the workload's proxy token, appear nowhere.

use crate::common::session::Session;
use crate::common::{Gateway, GatewayOptions, Upstream};

/// The credential `secrets` injects into the same host the captures watch.
const BEARER: &str = "SENTINEL-capture-bearer-4e1a";
/// The workload's own token towards the gateway (`Proxy-Authorization`).
const PROXY_TOKEN: &str = "SENTINEL-capture-proxytok-90bd";
/// The credential a proxy-token placeholder in the body is swapped for.
const SWAPPED: &str = "SENTINEL-capture-swapped-2f6c";
const PLACEHOLDER: &str = "ptok_capture_Vb73qp";

fn config() -> String {
    format!(
        r#"
identities:
  - {{name: agent, token: {{env: AGENT_TOKEN}}, tags: [team:agents]}}
policies:
  - {{name: upstream, action: allow, rules: [{{host: 127.0.0.1}}, {{host: localhost}}]}}
secrets:
  - name: openai
    source: {{type: env, var: OPENAI_KEY}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: [{{host: 127.0.0.1, paths: ["/v1/*"]}}]
  - name: swapped
    source: {{type: env, var: SWAPPED_KEY}}
    allow_plaintext: true
    inject: {{style: proxy_token, placeholder: {PLACEHOLDER}, locations: [body]}}
    rules: [{{host: localhost, paths: ["/v1/*"]}}]
transforms:
  - allowlist
  - name: body_capture
    rules: [{{host: 127.0.0.1, paths: ["/v1/*"]}}, {{host: localhost}}]
    config: {{max_bytes: 64}}
  - name: header_capture
    config: {{headers: [user-agent, x-agent-session, openai-organization]}}
  - secrets
"#
    )
}

fn start() -> Session {
    let upstream = Upstream::start(None);
    let env = vec![
        ("AGENT_TOKEN".to_owned(), PROXY_TOKEN.to_owned()),
        ("OPENAI_KEY".to_owned(), BEARER.to_owned()),
        ("SWAPPED_KEY".to_owned(), SWAPPED.to_owned()),
    ];
    let gw = Gateway::start(
        &config(),
        GatewayOptions {
            env,
            ..GatewayOptions::default()
        },
    );
    Session::new(gw, upstream)
}

fn stage<'a>(record: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    record["transforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {record:#}"))
}

#[test]
fn body_and_headers_land_in_the_audit_bounded_and_the_request_leaves_unchanged() {
    let mut s = start();
    let proxy_user = format!("agent:{PROXY_TOKEN}");
    // The workload quotes its own proxy token in the body and a header: redacted.
    let body = format!(
        r#"{{"model":"gpt-4o","note":"tok {PROXY_TOKEN}","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(200)
    );
    let url = s.url("/v1/chat/completions");
    let session = format!("X-Agent-Session: run-7 {PROXY_TOKEN}");
    let status = s.send(&[
        "--proxy-user",
        &proxy_user,
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-H",
        "User-Agent: agent-sdk/2.1",
        "-H",
        &session,
        "-H",
        "X-Not-Captured: SENTINEL-capture-unlisted-77",
        "--data-binary",
        &body,
        &url,
    ]);
    assert_eq!(status, 200, "{:?}\n{}", s.last(), s.gw.portcullis_log());

    // The upstream gets the body and headers as sent, plus the injected credential.
    let seen = s.seen("/v1/chat/completions");
    assert_eq!(
        seen.body,
        body.as_bytes(),
        "the body is forwarded unchanged"
    );
    assert_eq!(seen.header("user-agent"), Some("agent-sdk/2.1"));
    assert_eq!(
        seen.header("x-agent-session"),
        Some(format!("run-7 {PROXY_TOKEN}").as_str())
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
    assert_eq!(seen.header("proxy-authorization"), None);

    let record = s.gw.audit_for(|r| r["path"] == "/v1/chat/completions");
    assert_eq!(record["decision"], "ALLOWED");
    let captured = &stage(&record, "body_capture")["annotations"]["captured_body"];
    assert_eq!(captured["bytes"], body.len(), "{record:#}");
    assert_eq!(captured["truncated"], true);
    let text = captured["text"].as_str().unwrap();
    assert_eq!(
        text,
        r#"{"model":"gpt-4o","note":"tok <redacted>","messages":[{"role":"u"#
    );
    assert_eq!(text.len(), 64, "bounded by max_bytes");
    let headers = &stage(&record, "header_capture")["annotations"]["captured_headers"];
    assert_eq!(
        headers,
        &serde_json::json!([
            {"name": "user-agent", "value": "agent-sdk/2.1"},
            {"name": "x-agent-session", "value": "run-7 <redacted>"},
        ]),
        "{record:#}"
    );

    // Out of body_capture's scope: skipped, and no body is buffered for it.
    let url = s.url("/other");
    assert_eq!(s.send(&["-X", "POST", "--data-binary", "plain", &url]), 200);
    let record = s.gw.audit_for(|r| r["path"] == "/other");
    assert_eq!(stage(&record, "body_capture")["action"], "skip");
    assert_eq!(s.seen("/other").body, b"plain");

    s.assert_no_leaks(&[BEARER, PROXY_TOKEN, "SENTINEL-capture-unlisted-77"]);
}

#[test]
fn a_placeholder_is_captured_never_the_credential_it_is_swapped_for() {
    let mut s = start();
    let body = format!(r#"{{"api_key":"{PLACEHOLDER}","q":1}}"#);
    let url = s.url_at("localhost", "/v1/embeddings");
    assert_eq!(
        s.send(&["-X", "POST", "--data-binary", &body, &url]),
        200,
        "{}",
        s.gw.portcullis_log()
    );
    let seen = s.seen("/v1/embeddings");
    assert_eq!(
        seen.body,
        format!(r#"{{"api_key":"{SWAPPED}","q":1}}"#).as_bytes(),
        "secrets swapped the placeholder after the capture"
    );
    let record = s.gw.audit_for(|r| r["path"] == "/v1/embeddings");
    let captured = &stage(&record, "body_capture")["annotations"]["captured_body"];
    assert_eq!(
        captured,
        &serde_json::json!({"bytes": body.len(), "truncated": false, "text": body}),
        "{record:#}"
    );
    assert_eq!(
        stage(&record, "secrets")["annotations"]["swapped"]["secret"],
        "swapped"
    );
    s.assert_no_leaks(&[SWAPPED, BEARER, PROXY_TOKEN]);
}
