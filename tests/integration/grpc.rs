//! The `grpc` transform through the real Envoy, against a real tonic processor
//! (`common::processor`): it is asked only about what the policies allow, its `reject` and
//! its headers take effect, it never sees a credential nor sets one, a slow one is waited
//! for, and one that is down fails closed — or open, when configured.

use std::time::Duration;

use crate::common::processor::DecisionProcessor;
use crate::common::session::Session;
use crate::common::{Gateway, GatewayOptions, Upstream, wait_until};

/// The credential `secrets` injects after the processor ran.
const BEARER: &str = "SENTINEL-grpc-bearer-71c0";
/// The workload's token towards the gateway.
const PROXY_TOKEN: &str = "SENTINEL-grpc-proxytok-5e2d";
/// What the processor tries to set as `authorization` on `/mint/*`.
const MINTED: &str = "SENTINEL-processor-minted";

fn config(endpoint: &str, fail: &str) -> String {
    config_with_timeout(endpoint, fail, "1500ms")
}

fn config_with_timeout(endpoint: &str, fail: &str, timeout: &str) -> String {
    format!(
        r#"
identities:
  - {{name: agent, token: {{env: AGENT_TOKEN}}, tags: [team:agents]}}
policies:
  - name: processor-paths
    action: allow
    rules: [{{host: 127.0.0.1, paths: ["/api/*", "/reject/*", "/slow/*", "/mint/*"]}}]
secrets:
  - name: upstream-key
    source: {{type: env, var: UPSTREAM_KEY}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: [{{host: 127.0.0.1}}]
transforms:
  - allowlist
  - name: grpc
    config:
      endpoint: {endpoint}
      timeout: {timeout}
      fail: {fail}
      send_body: true
      max_body_bytes: 8
      headers: [content-type, x-agent]
  - secrets
"#
    )
}

fn start(processor: &DecisionProcessor, fail: &str) -> Session {
    start_with(&config(&processor.endpoint(), fail))
}

fn start_with(config: &str) -> Session {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(
        config,
        GatewayOptions {
            env: vec![
                ("AGENT_TOKEN".to_owned(), PROXY_TOKEN.to_owned()),
                ("UPSTREAM_KEY".to_owned(), BEARER.to_owned()),
            ],
            ..GatewayOptions::default()
        },
    );
    Session::new(gw, upstream)
}

fn grpc_stage(record: &serde_json::Value) -> &serde_json::Value {
    record["transforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "grpc")
        .unwrap_or_else(|| panic!("no grpc stage in {record:#}"))
}

#[test]
fn a_processor_narrows_what_the_policies_allow_and_never_sees_a_credential() {
    let processor = DecisionProcessor::start();
    let mut s = start(&processor, "closed");
    let proxy_user = format!("agent:{PROXY_TOKEN}");

    // Continue: the processor's header is added, the one it removes is gone, and the
    // credential is injected after it.
    let url = s.url("/api/items?page=2");
    let status = s.send(&[
        "--proxy-user",
        &proxy_user,
        "-H",
        "Content-Type: application/json",
        "-H",
        "X-Agent: claude-code",
        "-H",
        "X-Internal-Debug: 1",
        "-H",
        "Authorization: Bearer workload-own-value",
        "--data-binary",
        r#"{"query": "widgets"}"#,
        &url,
    ]);
    assert_eq!(status, 200, "{:?}\n{}", s.last(), s.gw.portcullis_log());
    let seen = s.seen("/api/items?page=2");
    assert_eq!(seen.header("x-risk-score"), Some("low"));
    assert_eq!(seen.header("x-internal-debug"), None);
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
    let [asked] = processor.asked().try_into().unwrap();
    assert_eq!(
        (
            asked.method.as_str(),
            asked.host.as_str(),
            asked.path.as_str()
        ),
        ("POST", "127.0.0.1", "/api/items")
    );
    assert_eq!(asked.query, "page=2");
    let headers: Vec<(&str, &str)> = asked
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(
        headers,
        [
            ("content-type", "application/json"),
            ("x-agent", "claude-code")
        ],
        "only the configured headers; never authorization"
    );
    assert_eq!(
        (asked.body.as_slice(), asked.body_size, asked.body_truncated),
        (&br#"{"query""#[..], 20, true)
    );
    let workload = asked.workload.clone().unwrap();
    assert_eq!(
        (workload.identity_kind.as_str(), workload.name.as_str()),
        ("token", "agent")
    );
    assert!(
        workload.tags.contains(&"team:agents".to_owned()),
        "{workload:?}"
    );
    assert_eq!(asked.policy.clone().unwrap().name, "processor-paths");
    assert_eq!(
        asked.request_id,
        seen.header("x-request-id").unwrap_or_default()
    );
    let record = s.gw.audit_for(|r| r["path"] == "/api/items");
    let note = &grpc_stage(&record)["annotations"]["grpc"];
    assert_eq!(note["outcome"], "continue", "{record:#}");
    assert_eq!(note["set_headers"], serde_json::json!(["x-risk-score"]));
    assert_eq!(
        note["removed_headers"],
        serde_json::json!(["x-internal-debug"])
    );

    // Reject: the workload gets the processor's status and message; the upstream nothing.
    let url = s.url("/reject/export");
    assert_eq!(s.send(&["--proxy-user", &proxy_user, &url]), 429);
    let error = s.last().json();
    assert_eq!(error["error"]["type"], "policy_denied", "{error:#}");
    assert_eq!(
        error["error"]["message"],
        "refused by the decision processor: this agent spent its budget for today"
    );
    let record = s.gw.audit_for(|r| r["path"] == "/reject/export");
    assert_eq!(record["decision"], "DENIED");
    let stage = grpc_stage(&record);
    assert_eq!(stage["action"], "reject");
    assert_eq!(
        stage["annotations"]["grpc"]["reason"],
        "agent_budget_exceeded"
    );
    assert!(
        s.upstream
            .seen()
            .iter()
            .all(|r| !r.path.starts_with("/reject"))
    );
    assert_eq!(
        s.gw.metric(r#"portcullis_rejections_total{reason="grpc_reject",transform="grpc"}"#),
        Some(1.0)
    );

    // A processor that tries to set a credential broke the contract: fail closed.
    let url = s.url("/mint/token");
    assert_eq!(s.send(&["--proxy-user", &proxy_user, &url]), 503);
    assert_eq!(s.last().json()["error"]["type"], "processor_unavailable");
    let record = s.gw.audit_for(|r| r["path"] == "/mint/token");
    assert_eq!(
        grpc_stage(&record)["annotations"]["grpc"]["failure"],
        "invalid_response"
    );
    assert!(
        s.upstream
            .seen()
            .iter()
            .all(|r| !r.path.starts_with("/mint"))
    );

    // Slower than Envoy's 0.5 s message timeout, within the processor's: waited for.
    let url = s.url("/slow/report");
    assert_eq!(
        s.send(&["--proxy-user", &proxy_user, &url]),
        200,
        "{:?}\n{}",
        s.last(),
        s.gw.envoy_log()
    );
    assert!(s.gw.envoy_counter("ext_proc.portcullis.override_message_timeout_received") >= 1);

    // What no policy allows is refused by the allowlist; the processor is not asked.
    let asked_before = processor.asked().len();
    let url = s.url("/elsewhere");
    assert_eq!(s.send(&["--proxy-user", &proxy_user, &url]), 403);
    assert_eq!(processor.asked().len(), asked_before);

    for asked in processor.asked() {
        let text = format!("{asked:?}");
        assert!(
            !text.contains(BEARER) && !text.contains(PROXY_TOKEN),
            "{text}"
        );
    }
    s.assert_no_leaks(&[BEARER, PROXY_TOKEN, MINTED]);
}

#[test]
fn a_processor_that_is_down_fails_closed_unless_configured_open() {
    let mut processor = DecisionProcessor::start();
    let endpoint = processor.endpoint();
    processor.stop();
    let mut s = start(&processor, "closed");
    let proxy_user = format!("agent:{PROXY_TOKEN}");
    let url = s.url("/api/items");
    assert_eq!(s.send(&["--proxy-user", &proxy_user, &url]), 503);
    let error = s.last().json();
    assert_eq!(error["error"]["type"], "processor_unavailable", "{error:#}");
    let record = s.gw.audit_for(|r| r["path"] == "/api/items");
    assert_eq!(record["reason"], "grpc_unavailable", "{record:#}");
    let note = &grpc_stage(&record)["annotations"]["grpc"];
    assert_eq!(
        (&note["failure"], &note["fail_mode"]),
        (
            &serde_json::json!("unavailable"),
            &serde_json::json!("closed")
        )
    );
    assert!(s.upstream.seen().is_empty());

    s.gw.write_config(&config(&endpoint, "open"));
    assert!(
        wait_until(Duration::from_secs(5), || {
            s.gw.via_proxy(&["--proxy-user", &proxy_user, &url]).status == 200
        }),
        "{}",
        s.gw.portcullis_log()
    );
    let seen = s.seen("/api/items");
    assert_eq!(seen.header("x-risk-score"), None, "no processor, no header");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
    let record =
        s.gw.audit()
            .into_iter()
            .rev()
            .find(|r| r["path"] == "/api/items")
            .unwrap();
    assert_eq!(record["decision"], "ALLOWED");
    assert_eq!(
        grpc_stage(&record)["annotations"]["grpc"]["fail_mode"],
        "open"
    );
    let failed = |mode: &str| {
        s.gw.metric(&format!(
            r#"portcullis_grpc_decisions_total{{fail_mode="{mode}",failure="unavailable",outcome="failed"}}"#
        ))
    };
    assert!(failed("closed").is_some_and(|n| n >= 1.0));
    assert!(failed("open").is_some_and(|n| n >= 1.0));
    s.assert_no_leaks(&[BEARER, PROXY_TOKEN]);
}

#[test]
fn a_processor_whose_timeout_fits_envoys_is_asked_without_an_extension() {
    let processor = DecisionProcessor::start();
    let mut s = start_with(&config_with_timeout(
        &processor.endpoint(),
        "closed",
        "200ms",
    ));
    let proxy_user = format!("agent:{PROXY_TOKEN}");
    let url = s.url("/api/quick");
    assert_eq!(s.send(&["--proxy-user", &proxy_user, &url]), 200);
    assert_eq!(
        s.header("/api/quick", "x-risk-score").as_deref(),
        Some("low")
    );
    assert_eq!(
        s.gw.envoy_counter("ext_proc.portcullis.override_message_timeout_received"),
        0,
        "200 ms fits in Envoy's 0.5 s message timeout: no extra round trip"
    );
}
