//! Approvals through the real Envoy: a request a policy sends to a person is refused with
//! an approval id, a stand-in Slack webhook hears of it, an approver decides through the
//! API or the CLI, the grant lets the retry (and nothing beside it) pass until it expires,
//! and the audit trail links request, approval and grant. MCP tool calls get a JSON-RPC
//! error naming the approval, and a grant covers only the approved arguments.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Gateway, GatewayOptions, Upstream, run_portcullis, wait_until};

const ALPHA: &str = "ptok-approvals-alpha-6b1f0c";
const BETA: &str = "ptok-approvals-beta-93d2aa";
const EDITOR: &str = "approvals-editor-token-51e7";
const VIEWER: &str = "approvals-viewer-token-0c4d";

fn gateway(dir: &std::path::Path, hook_port: u16) -> Gateway {
    let config = format!(
        r#"
store:
  url: "sqlite://{}"
identities:
  - {{name: alpha, token: {{env: ALPHA_TOKEN}}, tags: ["team:ops"]}}
  - {{name: beta, token: {{env: BETA_TOKEN}}, tags: ["team:ops"]}}
admin:
  tokens:
    - {{name: ana, role: editor, token: {{env: EDITOR_TOKEN}}}}
    - {{name: dashboards, role: viewer, token: {{env: VIEWER_TOKEN}}}}
approvals:
  console_url: "https://portcullis.example.com"
  max_grant_for: 1h
  webhook: {{url: "http://127.0.0.1:{hook_port}/slack/hook"}}
"#,
        dir.join("store.db").display()
    );
    Gateway::start(
        &config,
        GatewayOptions {
            env: vec![
                ("ALPHA_TOKEN".into(), ALPHA.into()),
                ("BETA_TOKEN".into(), BETA.into()),
                ("EDITOR_TOKEN".into(), EDITOR.into()),
                ("VIEWER_TOKEN".into(), VIEWER.into()),
            ],
            ..GatewayOptions::default()
        },
    )
}

fn create_policy(gw: &Gateway, policy: Value) {
    let body = json!({"policy": policy, "reason": "approvals test"}).to_string();
    let created = gw.api("POST", "/v1/policies", Some(EDITOR), Some(&body));
    assert_eq!(created.status, 201, "{created:?}");
}

fn as_workload(gw: &Gateway, token: &str, args: &[&str]) -> crate::common::Reply {
    let auth = format!("Proxy-Authorization: Bearer {token}");
    let mut all = vec!["-H", auth.as_str()];
    all.extend_from_slice(args);
    gw.via_proxy(&all)
}

fn approval_of(reply: &crate::common::Reply) -> String {
    let body = reply.json();
    body["error"]["approval"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no approval id in {body}"))
        .to_owned()
}

#[test]
fn an_approval_round_trip_passes_the_retry_until_the_grant_expires() {
    let upstream = Upstream::start(None);
    let hook = Upstream::start(None);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), hook.port());
    let port = upstream.port();
    create_policy(
        &gw,
        json!({"name": "reads", "action": "allow",
               "rules": [{"host": "127.0.0.1", "paths": ["/ok/*"]}]}),
    );
    create_policy(
        &gw,
        json!({"name": "payouts-need-a-person", "priority": 5, "action": "approve",
               "rules": [{"host": "127.0.0.1", "paths": ["/payouts/*"], "methods": ["POST"]}]}),
    );
    let url = format!("http://127.0.0.1:{port}/payouts/run?batch=7");
    let post = ["-X", "POST", "-d", "{\"amount\": 10}", url.as_str()];

    // Refused at once with an id and the console link; nothing reached the upstream.
    let refused = as_workload(&gw, ALPHA, &post);
    assert_eq!(refused.status, 403, "{refused:?}\n{}", gw.portcullis_log());
    let body = refused.json();
    assert_eq!(body["error"]["type"], "approval_required", "{body}");
    assert_eq!(body["error"]["policy"], "payouts-need-a-person");
    let id = approval_of(&refused);
    assert!(id.starts_with("ap-"), "{id}");
    assert_eq!(
        body["error"]["approval"]["url"],
        format!("https://portcullis.example.com/#/approvals?id={id}")
    );
    assert!(body["error"]["message"].as_str().unwrap().contains(&id));
    // Asking again waits on the same approval; another workload asks for its own.
    let again = as_workload(&gw, ALPHA, &post);
    assert_eq!(approval_of(&again), id);
    let betas = approval_of(&as_workload(&gw, BETA, &post));
    assert_ne!(betas, id);
    assert_eq!(upstream.hits(), 0);

    // The channel heard of each new approval once, in Slack's shape, without the query.
    assert!(
        wait_until(Duration::from_secs(5), || hook.hits() == 2),
        "{}",
        gw.portcullis_log()
    );
    let posts: Vec<Value> = hook
        .seen()
        .iter()
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .collect();
    let alpha_post = posts
        .iter()
        .find(|p| p["text"].as_str().unwrap().contains(&id))
        .expect("the webhook names alpha's approval");
    let text = alpha_post["text"].as_str().unwrap();
    assert!(
        text.contains("alpha") && text.contains("POST http://127.0.0.1"),
        "{text}"
    );
    assert!(
        text.contains("/payouts/run") && !text.contains("batch=7"),
        "{text}"
    );
    assert_eq!(
        alpha_post["blocks"][1]["elements"][0]["url"],
        format!("https://portcullis.example.com/#/approvals?id={id}")
    );

    // The queue as an approver reads it.
    let pending = gw.api("GET", "/v1/approvals?status=pending", Some(VIEWER), None);
    assert_eq!(pending.status, 200, "{pending:?}");
    let listed = pending.json()["approvals"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let mine = listed.iter().find(|a| a["id"] == id.as_str()).unwrap();
    assert_eq!(mine["asked"], 2);
    assert_eq!(mine["identity"], "alpha");
    assert_eq!(mine["request"]["path"], "/payouts/run");
    // A viewer may read but not decide.
    let forbidden = gw.api(
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(VIEWER),
        Some("{}"),
    );
    assert_eq!(forbidden.status, 403, "{forbidden:?}");
    // A grant longer than approvals.max_grant_for is refused, and nothing changes.
    let too_long = gw.api(
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(EDITOR),
        Some(r#"{"for": "2h"}"#),
    );
    assert_eq!(too_long.status, 422, "{too_long:?}");
    assert!(too_long.body.contains("max_grant_for"), "{too_long:?}");

    // Approved through the API for a few seconds: the retry passes, only for alpha.
    let approved = gw.api(
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(EDITOR),
        Some(r#"{"for": "4s", "note": "payout run 7 is expected"}"#),
    );
    assert_eq!(approved.status, 200, "{approved:?}");
    let grant = approved.json()["grant"].clone();
    let grant_name = grant["name"].as_str().unwrap().to_owned();
    assert_eq!(grant_name, format!("grant-{id}"));
    assert_eq!(grant["priority"], 4);
    assert_eq!(grant["grant"]["identity"], "alpha");
    let passed = as_workload(&gw, ALPHA, &post);
    assert_eq!(passed.status, 200, "{passed:?}\n{}", gw.portcullis_log());
    assert_eq!(upstream.hits(), 1);
    assert_eq!(as_workload(&gw, BETA, &post).status, 403);
    // Beside the approved request, nothing passes: another path, another method.
    let other_path = format!("http://127.0.0.1:{port}/payouts/all");
    let sideways = as_workload(&gw, ALPHA, &["-X", "POST", "-d", "{}", &other_path]);
    assert_eq!(sideways.status, 403, "{sideways:?}");
    assert_ne!(approval_of(&sideways), id);
    // A decided approval cannot be decided again.
    let twice = gw.api(
        "POST",
        &format!("/v1/approvals/{id}/deny"),
        Some(EDITOR),
        Some("{}"),
    );
    assert_eq!(twice.status, 409, "{twice:?}");

    // The grant is a versioned policy, its operator the approver.
    let history = gw.api(
        "GET",
        &format!("/v1/policies/{grant_name}/history"),
        Some(VIEWER),
        None,
    );
    assert_eq!(history.status, 200, "{history:?}");
    assert_eq!(
        history.json()["versions"][0]["operator"],
        "ana",
        "{history:?}"
    );

    // The audit trail links the refusal, the approval and the grant's pass.
    let asked =
        gw.audit_for(|r| r["reason"] == "approval_required" && r["approval"] == id.as_str());
    assert_eq!(asked["decision"], "DENIED");
    let granted = gw.audit_for(|r| r["policy"] == grant_name.as_str());
    assert_eq!(granted["decision"], "ALLOWED", "{granted}");
    assert_eq!(granted["approval"], id.as_str());

    // It expires by itself — nobody touches it — and the same retry is refused again and
    // asks anew.
    let expired = wait_until(Duration::from_secs(8), || {
        let shown = gw.api("GET", &format!("/v1/approvals/{id}"), Some(VIEWER), None);
        shown.json()["approval"]["status"] == "expired"
    });
    assert!(expired, "the grant never expired");
    let after = as_workload(&gw, ALPHA, &post);
    assert_eq!(after.status, 403, "{after:?}");
    assert_eq!(after.json()["error"]["type"], "approval_required");
    assert_ne!(approval_of(&after), id);
    assert_eq!(upstream.hits(), 1);

    // Denied through the CLI: beta stays refused; approved through the CLI, then revoked.
    let server = format!("http://127.0.0.1:{}", gw.admin_port);
    let cli = |args: &[&str]| {
        run_portcullis(
            args,
            &[
                ("PORTCULLIS_SERVER", &server),
                ("PORTCULLIS_ADMIN_TOKEN", EDITOR),
            ],
        )
    };
    let list = cli(&["approvals", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(
        list.stdout.contains(&betas) && list.stdout.contains("beta"),
        "{list:?}"
    );
    let denied = cli(&["approvals", "deny", &betas, "--note", "not beta's job"]);
    assert_eq!(denied.code, 0, "{denied:?}");
    assert!(denied.stdout.contains("stays refused"), "{denied:?}");
    let beta_again = as_workload(&gw, BETA, &post);
    assert_eq!(beta_again.status, 403);
    let betas_next = approval_of(&beta_again);
    assert_ne!(betas_next, betas);
    let approved = cli(&["approvals", "approve", &betas_next, "--for", "10m"]);
    assert_eq!(approved.code, 0, "{approved:?}");
    assert!(
        approved.stdout.contains(&format!("grant-{betas_next}")),
        "{approved:?}"
    );
    assert_eq!(as_workload(&gw, BETA, &post).status, 200);
    let revoked = cli(&["approvals", "revoke", &betas_next]);
    assert_eq!(revoked.code, 0, "{revoked:?}");
    let after_revoke = as_workload(&gw, BETA, &post);
    assert_eq!(after_revoke.status, 403, "{after_revoke:?}");

    gw.assert_no_leaks(&[ALPHA, BETA, EDITOR], &[]);
}

#[test]
fn a_workload_cannot_flood_the_queue() {
    let upstream = Upstream::start(None);
    let hook = Upstream::start(None);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), hook.port());
    create_policy(
        &gw,
        json!({"name": "ask", "action": "approve", "rules": [{"host": "127.0.0.1"}]}),
    );
    // approvals.max_pending is 20 by default: each distinct path is a new approval.
    for n in 0..20 {
        let url = format!("http://127.0.0.1:{}/p/{n}", upstream.port());
        let reply = as_workload(&gw, ALPHA, &[url.as_str()]);
        assert_eq!(
            reply.json()["error"]["type"],
            "approval_required",
            "{n}: {reply:?}"
        );
    }
    let url = format!("http://127.0.0.1:{}/p/21", upstream.port());
    let full = as_workload(&gw, ALPHA, &[url.as_str()]);
    assert_eq!(full.status, 429, "{full:?}");
    assert_eq!(full.json()["error"]["reason"], "approval_queue_full");
    assert!(full.header("retry-after").is_some());
    // Another workload still gets through to a person.
    assert_eq!(
        as_workload(&gw, BETA, &[url.as_str()]).json()["error"]["type"],
        "approval_required"
    );
    let pending = gw.api(
        "GET",
        "/v1/approvals?status=pending&limit=1000",
        Some(VIEWER),
        None,
    );
    assert_eq!(pending.json()["approvals"].as_array().unwrap().len(), 21);
    assert_eq!(upstream.hits(), 0);
}

fn tool_call(id: u64, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": arguments}})
    .to_string()
}

#[test]
fn an_mcp_tool_call_waits_for_approval_and_its_grant_covers_those_arguments_only() {
    let upstream = Upstream::start(None);
    let hook = Upstream::start(None);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), hook.port());
    create_policy(
        &gw,
        json!({"name": "mcp", "action": "allow",
               "rules": [{"host": "127.0.0.1", "paths": ["/mcp"]}]}),
    );
    create_policy(
        &gw,
        json!({"name": "email-needs-a-person", "priority": 5, "action": "approve",
               "rules": [{"host": "127.0.0.1", "paths": ["/mcp"], "tools": ["send_email"]}]}),
    );
    let url = format!("http://127.0.0.1:{}/mcp", upstream.port());
    let call = |body: &str| {
        as_workload(
            &gw,
            ALPHA,
            &[
                "-H",
                "content-type: application/json",
                "-d",
                body,
                url.as_str(),
            ],
        )
    };
    let arguments = json!({"to": "ops@example.com", "subject": "deploy done",
                           "api_key": "AKIAIOSFODNN7EXAMPLE"});
    let refused = call(&tool_call(7, "send_email", arguments.clone()));
    // An MCP client reads a JSON-RPC error for its call, carrying the approval.
    assert_eq!(refused.status, 200, "{refused:?}\n{}", gw.portcullis_log());
    let answer = refused.json();
    assert_eq!(answer["id"], 7, "{answer}");
    let data = &answer["error"]["data"];
    assert_eq!(data["type"], "approval_required", "{answer}");
    let id = data["approval"]["id"].as_str().unwrap().to_owned();
    assert!(data["approval"]["url"].as_str().unwrap().ends_with(&id));
    // Other tools are not held.
    let list = call(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string());
    assert_eq!(list.status, 200);
    assert_eq!(upstream.hits(), 1);

    // The approver sees the tool and its arguments, the credential-shaped one masked.
    let shown = gw.api("GET", &format!("/v1/approvals/{id}"), Some(VIEWER), None);
    let request = &shown.json()["approval"]["request"];
    assert_eq!(request["tool"], "send_email", "{shown:?}");
    let preview = request["arguments_preview"].as_str().unwrap();
    assert!(preview.contains("ops@example.com"), "{preview}");
    assert!(!shown.body.contains("AKIAIOSFODNN7EXAMPLE"), "{shown:?}");

    let approved = gw.api(
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(EDITOR),
        Some("{}"),
    );
    assert_eq!(approved.status, 200, "{approved:?}");
    // The same call (another id, keys in another order) passes; other arguments do not.
    let mut reordered = serde_json::Map::new();
    for key in ["api_key", "subject", "to"] {
        reordered.insert(key.into(), arguments[key].clone());
    }
    let passed = call(&tool_call(8, "send_email", Value::Object(reordered)));
    assert_eq!(passed.status, 200, "{passed:?}");
    assert_eq!(upstream.hits(), 2, "{passed:?}");
    let mut changed = arguments.clone();
    changed["to"] = json!("eve@attacker.example");
    let other = call(&tool_call(9, "send_email", changed));
    assert_eq!(
        other.json()["error"]["data"]["type"],
        "approval_required",
        "{other:?}"
    );
    assert_eq!(upstream.hits(), 2);
    gw.assert_no_leaks(&["AKIAIOSFODNN7EXAMPLE", ALPHA], &[]);
}

#[test]
fn a_gated_policy_asks_for_approval_only_when_its_condition_fails() {
    let upstream = Upstream::start(None);
    let hook = Upstream::start(None);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), hook.port());
    create_policy(
        &gw,
        json!({"name": "mail-outside-needs-a-person", "action": "gated",
               "condition": "request.args.to.endsWith(\"@example.com\")",
               "when_condition_fails": "approve",
               "rules": [{"host": "127.0.0.1", "paths": ["/mcp"], "tools": ["send_email"]}]}),
    );
    let url = format!("http://127.0.0.1:{}/mcp", upstream.port());
    let send = |to: &str| {
        let body = tool_call(3, "send_email", json!({"to": to, "subject": "hi"}));
        as_workload(
            &gw,
            ALPHA,
            &[
                "-H",
                "content-type: application/json",
                "-d",
                &body,
                url.as_str(),
            ],
        )
    };
    // Inside the company: the condition holds, the call leaves.
    let inside = send("ops@example.com");
    assert_eq!(inside.status, 200, "{inside:?}");
    assert_eq!(upstream.hits(), 1);
    // Outside: it waits for a person instead of being denied.
    let outside = send("someone@elsewhere.example");
    let data = &outside.json()["error"]["data"];
    assert_eq!(data["type"], "approval_required", "{outside:?}");
    assert!(
        data["message"]
            .as_str()
            .unwrap()
            .contains("condition `request.args.to.endsWith(\"@example.com\")` does not hold"),
        "{data}"
    );
    assert_eq!(upstream.hits(), 1);
}
