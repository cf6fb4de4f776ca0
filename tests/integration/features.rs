//! Documented features driven through the real Envoy as a workload would use them: the
//! `file` audit sink, `default_action`, header matchers, the `tool_call` / `mcp_request` /
//! `http_request` action types, path normalisation under a path-restricted allow, proxy
//! tokens read from a file or given as a digest, and `portcullis migrate` / `apply` against
//! PostgreSQL. Each negative case checks the status, that the upstream received nothing,
//! and the audit record.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::postgres::TestDatabase;
use crate::common::{
    Gateway, GatewayOptions, RawReply, Reply, Upstream, run_portcullis, wait_until,
};

/// How long a record, a change or a file may take to show up: generous, polled.
const DEADLINE: Duration = Duration::from_secs(15);

/// `GET http://127.0.0.1:<port><path>` through the forward proxy, with `headers` (each a
/// full `Name: value` line) exactly as written.
fn raw_get(gw: &Gateway, upstream: &Upstream, path: &str, headers: &[&str]) -> RawReply {
    let port = upstream.port();
    let mut request =
        format!("GET http://127.0.0.1:{port}{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    gw.send_raw(request.as_bytes())
}

/// Runs the `portcullis` binary; its exit code and everything it printed.
fn portcullis(args: &[&str]) -> (i32, String) {
    let run = run_portcullis(args, &[]);
    (run.code, run.printed())
}

// ------------------------------------------------------------------ 1. the file audit sink

const FILE_SINK_KEY: &str = "SENTINEL-file-sink-bearer-3e7d";

/// Every complete line of an audit file (a line still being written is left for the next
/// read), each checked to be one JSON object.
fn file_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line:?}"));
            assert!(record.is_object(), "one JSON object per line: {line}");
            record
        })
        .collect()
}

/// Waits for the record in the audit file that `predicate` picks.
fn file_record(path: &Path, predicate: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    wait_until(DEADLINE, || {
        found = file_records(path).into_iter().find(|r| predicate(r));
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no matching record in {}:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        )
    })
}

#[test]
fn the_file_sink_gets_one_json_record_per_line_and_never_the_injected_credential() {
    let upstream = Upstream::start(None);
    let sink_dir = tempfile::tempdir().unwrap();
    // Parent directories are created (docs/config.md, `audit.path`).
    let sink = sink_dir.path().join("nested/audit/portcullis.jsonl");
    let config = format!(
        r#"
audit: {{sink: file, path: "{}"}}
policies:
  - {{name: with-credential, action: allow, rules: [{{host: 127.0.0.1, paths: ["/api/*"]}}]}}
  - {{name: no-admin, priority: 1, action: deny, rules: [{{host: 127.0.0.1, paths: ["/api/admin/*"]}}]}}
secrets:
  - name: api-key
    source: {{type: env, var: FILE_SINK_KEY}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: [{{host: 127.0.0.1, paths: ["/api/*"]}}]
"#,
        sink.display()
    );
    let gw = Gateway::start(
        &config,
        GatewayOptions {
            env: vec![("FILE_SINK_KEY".into(), FILE_SINK_KEY.into())],
            ..GatewayOptions::default()
        },
    );
    let base = format!("http://127.0.0.1:{}", upstream.port());

    let allowed = gw.via_proxy(&[&format!("{base}/api/items?page=2")]);
    assert_eq!(allowed.status, 200, "{allowed:?}\n{}", gw.portcullis_log());
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {FILE_SINK_KEY}").as_str()),
        "the secret was injected"
    );

    let denied = gw.via_proxy(&[&format!("{base}/api/admin/users")]);
    assert_eq!(denied.status, 403, "{denied:?}");
    let unmatched = gw.via_proxy(&[&format!("{base}/elsewhere")]);
    assert_eq!(unmatched.status, 403, "{unmatched:?}");
    assert_eq!(
        upstream.hits(),
        1,
        "refused requests never reach the upstream"
    );

    let record = file_record(&sink, |r| r["path"] == "/api/items");
    assert_eq!(record["decision"], "ALLOWED", "{record}");
    assert_eq!(record["policy"], "with-credential", "{record}");
    assert_eq!(record["host"], "127.0.0.1", "{record}");
    assert!(
        record["request_id"]
            .as_str()
            .is_some_and(|id| id.len() >= 16),
        "{record}"
    );
    let secrets = record["transforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "secrets")
        .unwrap_or_else(|| panic!("a secrets entry: {record}"));
    assert_eq!(
        secrets["annotations"]["injected"]["secret"], "api-key",
        "{record}"
    );

    let denied_id = denied.header("x-portcullis-request-id").unwrap();
    let record = file_record(&sink, |r| r["request_id"] == denied_id);
    assert_eq!(record["decision"], "DENIED", "{record}");
    assert_eq!(record["policy"], "no-admin", "{record}");
    assert_eq!(record["reason"], "policy_deny", "{record}");
    assert_eq!(record["host"], "127.0.0.1", "{record}");
    assert_eq!(record["path"], "/api/admin/users", "{record}");

    let unmatched_id = unmatched.header("x-portcullis-request-id").unwrap();
    let record = file_record(&sink, |r| r["request_id"] == unmatched_id);
    assert_eq!(record["decision"], "DENIED", "{record}");
    assert_eq!(record["reason"], "no_matching_policy", "{record}");
    assert!(record["policy"].is_null(), "{record}");

    // Envoy's access log record of the allowed request goes to the same sink.
    let allowed_id = file_record(&sink, |r| r["path"] == "/api/items")["request_id"].clone();
    let upstream_record = file_record(&sink, |r| {
        r["event"] == "upstream" && r["request_id"] == allowed_id
    });
    assert_eq!(upstream_record["status"], 200, "{upstream_record}");

    // The file has the whole trail (no query string), stdout none of it, and nothing
    // anywhere holds the credential.
    let text = std::fs::read_to_string(&sink).unwrap();
    assert!(text.ends_with('\n'), "every record is a whole line");
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok_and(|r| r.is_object())),
        "one JSON object per line:\n{text}"
    );
    assert!(
        !text.contains(FILE_SINK_KEY),
        "credential in the audit file"
    );
    assert!(!text.contains("page=2"), "query string in the audit file");
    assert!(
        gw.audit_lines().is_empty(),
        "the file sink writes nothing to stdout"
    );
    gw.assert_no_leaks_checked(
        &[FILE_SINK_KEY],
        &[(&allowed, 200), (&denied, 403), (&unmatched, 403)],
    );
}

// ------------------------------------------------------------------- 2. default_action

fn default_action_gateway(action: &str) -> Gateway {
    let config = format!(
        "default_action: {action}\npolicies:\n  - {{name: no-admin, action: deny, \
         rules: [{{host: 127.0.0.1, paths: [\"/admin/*\"]}}]}}\n"
    );
    Gateway::start(&config, GatewayOptions::default())
}

#[test]
fn default_action_allow_and_flag_forward_what_no_policy_matches_and_deny_refuses_it() {
    for (action, status, decision) in [
        ("allow", 200, "ALLOWED"),
        ("flag", 200, "FLAGGED"),
        ("deny", 403, "DENIED"),
    ] {
        let upstream = Upstream::start(None);
        let gw = default_action_gateway(action);
        let base = format!("http://127.0.0.1:{}", upstream.port());

        let reply = gw.via_proxy(&["-X", "POST", "-d", "x=1", &format!("{base}/unmatched/x")]);
        assert_eq!(reply.status, status, "default_action {action}: {reply:?}");
        assert_eq!(
            upstream.hits(),
            usize::from(status == 200),
            "default_action {action}: {:?}",
            upstream.seen()
        );
        let record = gw.audit_for(|r| r["path"] == "/unmatched/x");
        assert_eq!(record["decision"], decision, "{action}: {record}");
        // The default decided: no policy, no rule.
        assert!(record["policy"].is_null(), "{action}: {record}");
        assert!(record["rule"].is_null(), "{action}: {record}");
        if status == 403 {
            assert_eq!(reply.json()["error"]["reason"], "no_matching_policy");
            assert_eq!(record["reason"], "no_matching_policy", "{record}");
            assert_eq!(record["status"], 403, "{record}");
        }
        assert_eq!(
            gw.metric(&format!(
                r#"portcullis_decisions_total{{decision="{decision}",policy=""}}"#
            )),
            Some(1.0),
            "{action}"
        );

        // A deny policy still refuses under a permissive default.
        let denied = gw.via_proxy(&[&format!("{base}/admin/users")]);
        assert_eq!(denied.status, 403, "default_action {action}: {denied:?}");
        assert_eq!(denied.json()["error"]["policy"], "no-admin");
        assert_eq!(
            upstream.hits(),
            usize::from(status == 200),
            "default_action {action}: the deny policy's request never left"
        );
        let record = gw.audit_for(|r| r["path"] == "/admin/users");
        assert_eq!(record["decision"], "DENIED", "{record}");
        assert_eq!(record["policy"], "no-admin", "{record}");
    }
}

// -------------------------------------------------------------------- 3. header matchers

const HEADERS_CONFIG: &str = r#"
policies:
  - {name: tenant-exact, action: allow,
     rules: [{host: 127.0.0.1, paths: ["/exact/*"], headers: [{name: X-Tenant, exact: acme}]}]}
  - {name: team-prefix, action: allow,
     rules: [{host: 127.0.0.1, paths: ["/prefix/*"], headers: [{name: x-team, prefix: "team-"}]}]}
  - {name: channel-regex, action: allow,
     rules: [{host: 127.0.0.1, paths: ["/regex/*"], headers: [{name: x-channel, regex: 'v[0-9]+|stable'}]}]}
  - {name: not-prod, action: allow,
     rules: [{host: 127.0.0.1, paths: ["/invert/*"], headers: [{name: x-env, exact: prod, invert: true}]}]}
  - {name: no-admin-role, priority: 5, action: deny,
     rules: [{host: 127.0.0.1, paths: ["/roles/*"], headers: [{name: x-role, exact: admin}]}]}
  - {name: roles-open, priority: 100, action: allow, rules: [{host: 127.0.0.1, paths: ["/roles/*"]}]}
  - {name: approval-required, priority: 5, action: deny,
     rules: [{host: 127.0.0.1, paths: ["/guarded/*"], headers: [{name: x-approved, exact: "yes", invert: true}]}]}
  - {name: guarded-open, priority: 100, action: allow, rules: [{host: 127.0.0.1, paths: ["/guarded/*"]}]}
"#;

/// Sends each `(path, headers)` and checks the status, the deciding policy, and that
/// exactly the allowed ones arrived.
fn expect_header_decisions(
    gw: &Gateway,
    upstream: &Upstream,
    cases: &[(&str, &[&str], u16, Option<&str>)],
) {
    let mut failures = Vec::new();
    for (path, headers, status, policy) in cases {
        let before = upstream.hits();
        let reply = raw_get(gw, upstream, path, headers);
        let arrived = upstream.hits() - before;
        let got_policy = reply.json()["error"]["policy"].as_str().map(str::to_owned);
        let expected_arrivals = usize::from(*status == 200);
        if reply.status != *status
            || arrived != expected_arrivals
            || (*status != 200 && got_policy.as_deref() != *policy)
        {
            failures.push(format!(
                "{path} {headers:?}: got {} (policy {got_policy:?}, {arrived} arrived), \
                 want {status} (policy {policy:?}): {}",
                reply.status, reply.body
            ));
        }
        if *status == 200 {
            let record = gw.audit_for(|r| r["path"] == *path && r["decision"] == "ALLOWED");
            if record["policy"].as_str() != *policy {
                failures.push(format!("{path} {headers:?}: allowed by {record}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn header_matchers_allow_what_they_match_and_nothing_else() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(HEADERS_CONFIG, GatewayOptions::default());
    expect_header_decisions(
        &gw,
        &upstream,
        &[
            // exact: the rule's name is case-insensitive, the value is not.
            ("/exact/1", &["X-Tenant: acme"], 200, Some("tenant-exact")),
            ("/exact/2", &["x-tenant: acme"], 200, Some("tenant-exact")),
            ("/exact/3", &["X-TENANT: acme"], 200, Some("tenant-exact")),
            ("/exact/4", &["X-Tenant: ACME"], 403, None),
            ("/exact/5", &["X-Tenant: acme-corp"], 403, None),
            ("/exact/6", &["X-Tenant: xacme"], 403, None),
            ("/exact/7", &["X-Tenant-Id: acme"], 403, None),
            ("/exact/8", &[], 403, None),
            // prefix: at the start of the value only.
            (
                "/prefix/1",
                &["X-Team: team-infra"],
                200,
                Some("team-prefix"),
            ),
            ("/prefix/2", &["X-Team: my-team-infra"], 403, None),
            ("/prefix/3", &["X-Team: Team-infra"], 403, None),
            ("/prefix/4", &["X-Team: team"], 403, None),
            // regex: anchored around the whole alternation, not `^v[0-9]+|stable$`.
            ("/regex/1", &["X-Channel: v12"], 200, Some("channel-regex")),
            (
                "/regex/2",
                &["X-Channel: stable"],
                200,
                Some("channel-regex"),
            ),
            ("/regex/3", &["X-Channel: v12-evil"], 403, None),
            ("/regex/4", &["X-Channel: evil-stable"], 403, None),
            ("/regex/5", &["X-Channel: stablex"], 403, None),
            ("/regex/6", &["X-Channel: xv1"], 403, None),
            // invert: holds when no value matches, including when the header is absent.
            ("/invert/1", &[], 200, Some("not-prod")),
            ("/invert/2", &["X-Env: dev"], 200, Some("not-prod")),
            ("/invert/3", &["X-Env: prod"], 403, None),
            ("/invert/4", &["x-ENV: prod"], 403, None),
            // an inverted deny: absent, or any other value, is refused.
            ("/guarded/1", &[], 403, Some("approval-required")),
            (
                "/guarded/2",
                &["X-Approved: no"],
                403,
                Some("approval-required"),
            ),
            (
                "/guarded/3",
                &["X-Approved: YES"],
                403,
                Some("approval-required"),
            ),
            (
                "/guarded/4",
                &["X-Approved: yes"],
                200,
                Some("guarded-open"),
            ),
        ],
    );
    let record = gw.audit_for(|r| r["path"] == "/guarded/1");
    assert_eq!(record["decision"], "DENIED", "{record}");
    assert_eq!(record["reason"], "policy_deny", "{record}");
}

#[test]
fn header_matchers_against_whitespace_and_repeated_headers() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(HEADERS_CONFIG, GatewayOptions::default());
    expect_header_decisions(
        &gw,
        &upstream,
        &[
            // HTTP trims optional whitespace around a value before anyone reads it: the
            // prefix matches the value the upstream receives.
            (
                "/prefix/ws",
                &["X-Team:    team-infra   "],
                200,
                Some("team-prefix"),
            ),
            (
                "/prefix/tab",
                &["X-Team:\tteam-infra"],
                200,
                Some("team-prefix"),
            ),
            // Whitespace inside the value is kept, and so is the mismatch.
            ("/exact/inner", &["X-Tenant: ac me"], 403, None),
            // A deny matches when any of the values does, in either order.
            (
                "/roles/1",
                &["X-Role: user", "X-Role: admin"],
                403,
                Some("no-admin-role"),
            ),
            (
                "/roles/2",
                &["X-Role: admin", "x-role: user"],
                403,
                Some("no-admin-role"),
            ),
            ("/roles/3", &["X-Role: user"], 200, Some("roles-open")),
            // The same two values folded into one line, as HTTP allows for a list.
            (
                "/roles/4",
                &["X-Role: user, admin"],
                403,
                Some("no-admin-role"),
            ),
            (
                "/roles/5",
                &["X-Role: admin,user"],
                403,
                Some("no-admin-role"),
            ),
            // An element that only contains `admin` is not `admin`.
            (
                "/roles/6",
                &["X-Role: user, sysadmin"],
                200,
                Some("roles-open"),
            ),
        ],
    );
    let seen = upstream.seen();
    let trimmed = seen.iter().find(|s| s.path == "/prefix/ws").unwrap();
    assert_eq!(
        trimmed.header("x-team"),
        Some("team-infra"),
        "the upstream reads the value that was decided"
    );
}

/// A second, conflicting value of a header a rule names (which the upstream may read instead
/// of the first) never helps: it does not pass an allow rule, in either order (every value
/// must satisfy it), nor lift an inverted deny (one value is enough for a deny) — sent as
/// a second line or folded into the first as a comma-separated list.
#[test]
fn conflicting_repeated_header_values_do_not_satisfy_an_allow_rule() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(HEADERS_CONFIG, GatewayOptions::default());
    for (path, headers) in [
        ("/exact/dup-1", ["X-Tenant: acme", "X-Tenant: evil"]),
        ("/exact/dup-2", ["X-Tenant: evil", "X-Tenant: acme"]),
        // The allow-if-not-prod rule: a harmless value beside `prod` does not pass it.
        ("/invert/dup", ["X-Env: dev", "X-Env: prod"]),
        // The deny-unless-approved policy: an approving value beside a refusing one does
        // not lift it.
        ("/guarded/dup", ["X-Approved: yes", "X-Approved: no"]),
    ] {
        let reply = raw_get(&gw, &upstream, path, &headers);
        assert!(
            matches!(reply.status, 400 | 403),
            "{path} {headers:?}: {reply:?}"
        );
    }
    // The same values folded into one line: an allow rule needs the whole value (`exact`
    // fails on a list) and, inverted, every element; a deny needs one element.
    for (path, header) in [
        ("/exact/folded", "X-Tenant: acme, evil"),
        ("/invert/folded", "X-Env: dev, prod"),
        ("/guarded/folded", "X-Approved: yes,no"),
    ] {
        let headers = [header];
        let reply = raw_get(&gw, &upstream, path, &headers);
        assert!(
            matches!(reply.status, 400 | 403),
            "{path} {headers:?}: {reply:?}"
        );
    }
    assert_eq!(upstream.hits(), 0, "{:?}", upstream.seen());
}

// ----------------------------------------------------------------------- 4. action types

const ACTION_TYPES_CONFIG: &str = r#"
policies:
  - {name: tool-calls-only, action: allow,
     rules: [{host: 127.0.0.1, paths: ["/mcp"], methods: [POST], action_types: [tool_call]}]}
  - {name: mcp-sessions, action: allow,
     rules: [{host: 127.0.0.1, paths: ["/session"], action_types: [mcp_request]}]}
  - {name: plain-http-only, action: allow,
     rules: [{host: 127.0.0.1, paths: ["/api/*"], action_types: [http_request]}]}
"#;

const TOOLS_CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"q":"x"}}}"#;
const TOOLS_LIST: &str = r#"{"jsonrpc":"2.0","id":8,"method":"tools/list"}"#;

fn post_body(gw: &Gateway, url: &str, content_type: &str, body: &str, extra: &[&str]) -> Reply {
    let content_type = format!("Content-Type: {content_type}");
    let mut args = vec![
        "-X",
        "POST",
        "-H",
        content_type.as_str(),
        "--data-binary",
        body,
    ];
    args.extend_from_slice(extra);
    args.push(url);
    gw.via_proxy(&args)
}

/// A JSON-RPC message refused by the default action: what MCP clients get (HTTP 200, a
/// JSON-RPC error with the message's id), never from the upstream, and audited as denied.
fn assert_jsonrpc_refused(gw: &Gateway, reply: &Reply, id: i64, what: &str) {
    assert_eq!(reply.status, 200, "{what}: {reply:?}");
    assert_eq!(reply.header("x-upstream"), None, "{what}: {reply:?}");
    let body = reply.json();
    assert_eq!(body["jsonrpc"], "2.0", "{what}: {body}");
    assert_eq!(body["id"], id, "{what}: {body}");
    assert_eq!(body["error"]["code"], -32001, "{what}: {body}");
    assert_eq!(
        body["error"]["data"]["type"], "policy_denied",
        "{what}: {body}"
    );
    assert_eq!(
        body["error"]["data"]["reason"], "no_matching_policy",
        "{what}: {body}"
    );
    let request_id = body["error"]["data"]["request_id"].as_str().unwrap();
    let record = gw.audit_for(|r| r["request_id"] == request_id);
    assert_eq!(record["decision"], "DENIED", "{what}: {record}");
}

#[test]
fn a_tool_call_rule_allows_tools_call_and_nothing_else() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(ACTION_TYPES_CONFIG, GatewayOptions::default());
    let mcp = format!("http://127.0.0.1:{}/mcp", upstream.port());
    let json = "application/json";

    let allowed = post_body(&gw, &mcp, json, TOOLS_CALL, &[]);
    assert_eq!(allowed.status, 200, "{allowed:?}\n{}", gw.portcullis_log());
    assert_eq!(allowed.header("x-upstream"), Some("echo"));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body,
        TOOLS_CALL.as_bytes(),
        "the body arrives as sent"
    );
    let record = gw.audit_for(|r| r["path"] == "/mcp" && r["decision"] == "ALLOWED");
    assert_eq!(record["policy"], "tool-calls-only", "{record}");

    // The content type is not what decides: the body is.
    let as_text = post_body(&gw, &mcp, "text/plain", TOOLS_CALL, &[]);
    assert_eq!(as_text.status, 200, "{as_text:?}");
    // A batch with a tools/call in it is a tool call.
    let batch = format!("[{TOOLS_CALL}]");
    let batched = post_body(&gw, &mcp, json, &batch, &[]);
    assert_eq!(batched.status, 200, "{batched:?}");
    assert_eq!(upstream.hits(), 3);

    // A plain POST, another JSON-RPC method, a JSON body without `jsonrpc`, and a GET are
    // not tool calls.
    let plain = post_body(&gw, &mcp, "application/x-www-form-urlencoded", "x=1", &[]);
    assert_eq!(plain.status, 403, "{plain:?}");
    assert_eq!(plain.json()["error"]["reason"], "no_matching_policy");
    let listed = post_body(&gw, &mcp, json, TOOLS_LIST, &[]);
    assert_jsonrpc_refused(&gw, &listed, 8, "tools/list");
    let no_jsonrpc = r#"{"id":7,"method":"tools/call","params":{"name":"search"}}"#;
    let reply = post_body(&gw, &mcp, json, no_jsonrpc, &[]);
    assert_eq!(
        reply.status, 403,
        "JSON without `jsonrpc` is no MCP: {reply:?}"
    );
    let get = gw.via_proxy(&[&mcp]);
    assert_eq!(get.status, 403, "{get:?}");
    assert_eq!(upstream.hits(), 3, "{:?}", upstream.seen());
    let record = gw.audit_for(|r| r["path"] == "/mcp" && r["method"] == "GET");
    assert_eq!(record["decision"], "DENIED", "{record}");
    assert_eq!(record["reason"], "no_matching_policy", "{record}");
}

#[test]
fn an_http_request_rule_does_not_carry_mcp_and_mcp_request_covers_sessions() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(ACTION_TYPES_CONFIG, GatewayOptions::default());
    let base = format!("http://127.0.0.1:{}", upstream.port());
    let api = format!("{base}/api/items");
    let json = "application/json";

    let plain = post_body(&gw, &api, json, r#"{"name":"widget"}"#, &[]);
    assert_eq!(plain.status, 200, "{plain:?}\n{}", gw.portcullis_log());
    let get = gw.via_proxy(&[&api]);
    assert_eq!(get.status, 200, "{get:?}");
    assert_eq!(upstream.hits(), 2);
    let record = gw.audit_for(|r| r["path"] == "/api/items" && r["decision"] == "ALLOWED");
    assert_eq!(record["policy"], "plain-http-only", "{record}");

    // An agent cannot send MCP through an allowance for plain HTTP: not as JSON-RPC, not
    // with the `jsonrpc` key escaped, not as a plain body on an MCP session.
    let called = post_body(&gw, &api, json, TOOLS_CALL, &[]);
    assert_jsonrpc_refused(&gw, &called, 7, "tools/call");
    let listed = post_body(&gw, &api, json, TOOLS_LIST, &[]);
    assert_jsonrpc_refused(&gw, &listed, 8, "tools/list");
    let escaped = TOOLS_CALL.replace(r#""jsonrpc""#, r#""jsonrp\u0063""#);
    let escaped = post_body(&gw, &api, json, &escaped, &[]);
    assert_jsonrpc_refused(&gw, &escaped, 7, "escaped jsonrpc");
    let on_session = post_body(
        &gw,
        &api,
        "text/plain",
        "hello",
        &["-H", "Mcp-Session-Id: s-1"],
    );
    assert_eq!(on_session.status, 403, "{on_session:?}");
    let versioned = gw.via_proxy(&["-H", "MCP-Protocol-Version: 2025-06-18", &api]);
    assert_eq!(versioned.status, 403, "{versioned:?}");
    assert_eq!(upstream.hits(), 2, "{:?}", upstream.seen());
    let record = gw.audit_for(|r| r["path"] == "/api/items" && r["decision"] == "DENIED");
    assert_eq!(record["transform"], "allowlist", "{record}");

    // `mcp_request`: JSON-RPC other than tools/call, or a session's GET; not a tool call.
    let session = format!("{base}/session");
    let listed = post_body(&gw, &session, json, TOOLS_LIST, &[]);
    assert_eq!(listed.status, 200, "{listed:?}");
    let stream = gw.via_proxy(&["-H", "Mcp-Session-Id: s-1", &session]);
    assert_eq!(stream.status, 200, "{stream:?}");
    assert_eq!(upstream.hits(), 4);
    let called = post_body(&gw, &session, json, TOOLS_CALL, &[]);
    assert_jsonrpc_refused(&gw, &called, 7, "tools/call on a session");
    let bare = gw.via_proxy(&[&session]);
    assert_eq!(bare.status, 403, "a GET without MCP headers: {bare:?}");
    assert_eq!(upstream.hits(), 4, "{:?}", upstream.seen());
    let record = gw.audit_for(|r| r["path"] == "/session" && r["decision"] == "ALLOWED");
    assert_eq!(record["policy"], "mcp-sessions", "{record}");
}

/// A body can be a JSON-RPC `tools/call` and a chat completion at once, and a path can
/// name an LLM API while the body is MCP: a deny on `tool_call` holds on any action type the
/// request may be taken for, so posting the call to a chat-completions path does not escape
/// it. A plain chat completion on that path is still allowed.
#[test]
fn a_tool_call_deny_holds_on_a_chat_completions_path() {
    let upstream = Upstream::start(None);
    let config = r#"
policies:
  - {name: no-tool-calls, priority: 5, action: deny,
     rules: [{host: 127.0.0.1, action_types: [tool_call]}]}
  - {name: loopback-open, priority: 100, action: allow, rules: [{host: 127.0.0.1}]}
"#;
    let gw = Gateway::start(config, GatewayOptions::default());
    let json = "application/json";
    let chat = format!("http://127.0.0.1:{}/v1/chat/completions", upstream.port());

    let completion = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let allowed = post_body(&gw, &chat, json, completion, &[]);
    assert_eq!(allowed.status, 200, "{allowed:?}\n{}", gw.portcullis_log());
    assert_eq!(upstream.hits(), 1);

    let both = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"search","arguments":{}},"model":"m","messages":[]}"#;
    for (what, body) in [("tools/call", TOOLS_CALL), ("chat and tools/call", both)] {
        let reply = post_body(&gw, &chat, json, body, &[]);
        assert_ne!(
            reply.header("x-upstream"),
            Some("echo"),
            "{what}: {reply:?}"
        );
        let text = reply.body.to_string();
        assert!(text.contains("no-tool-calls"), "{what}: {reply:?}");
    }
    assert_eq!(upstream.hits(), 1, "{:?}", upstream.seen());
    let record = gw.audit_for(|r| r["decision"] == "DENIED");
    assert_eq!(record["policy"], "no-tool-calls", "{record}");
}

// --------------------------------------------------------------- 5. path normalisation

#[test]
fn dot_segments_and_their_encodings_cannot_leave_a_path_restricted_allow() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(
        r#"
policies:
  - {name: allowed-area, action: allow, rules: [{host: 127.0.0.1, paths: ["/allowed/*"]}]}
"#,
        GatewayOptions::default(),
    );
    let port = upstream.port();
    let mut escapes = Vec::new();
    for path in [
        "/allowed/../secret",
        "/allowed/%2e%2e/secret",
        "/allowed/%2E%2E/secret",
        "/allowed/%2e%2E/secret",
        "/allowed/.%2e/secret",
        "/allowed/%2e./secret",
        "/allowed/x/../../secret",
        "/allowed/%2e%2e/%2e%2e/allowed/../secret",
        "/allowed/..%2fsecret",
        "/allowed/..%2Fsecret",
        "/allowed%2f..%2fsecret",
        "/allowed/%2e%2e%2fsecret",
        "/allowed/..%5csecret",
        "/allowed/..;/secret",
        "/allowed/..\\secret",
        "/Allowed/x",
    ] {
        // Absolute form, as a forward-proxy client sends, and origin form with `Host`.
        for request in [
            format!(
                "GET http://127.0.0.1:{port}{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
                 Connection: close\r\n\r\n"
            ),
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
        ] {
            let reply = gw.send_raw(request.as_bytes());
            eprintln!("{path} -> {} {}", reply.status, reply.body);
            let kind = reply.json()["error"]["type"].as_str().map(str::to_owned);
            let refused = matches!(
                (reply.status, kind.as_deref()),
                (400, Some("invalid_request")) | (403, Some("policy_denied"))
            );
            if !refused {
                escapes.push(format!("{path}: {} {}", reply.status, reply.body));
            }
        }
    }
    assert!(
        escapes.is_empty(),
        "escaped the allowed area:\n{}",
        escapes.join("\n")
    );
    assert_eq!(upstream.hits(), 0, "{:?}", upstream.seen());
    let record = gw.audit_for(|r| r["path"] == "/secret");
    assert_eq!(
        record["decision"], "DENIED",
        "decided on the resolved path: {record}"
    );
    assert_eq!(record["reason"], "no_matching_policy", "{record}");

    // What stays inside the area is allowed, and the upstream receives the path that was
    // decided (one decoding pass: `%252e` stays the text `%2e`).
    for (sent, decided) in [
        ("/allowed/x/../y", "/allowed/y"),
        ("/allowed/%2e%2e/allowed/z", "/allowed/z"),
        ("/allowed/./%2E/w", "/allowed/w"),
        ("/allowed/%252e%252e/secret", "/allowed/%252e%252e/secret"),
    ] {
        let before = upstream.hits();
        let reply = gw.send_raw(
            &format!(
                "GET http://127.0.0.1:{port}{sent} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
                 Connection: close\r\n\r\n"
            )
            .into_bytes(),
        );
        assert_eq!(reply.status, 200, "{sent}: {reply:?}");
        let seen = upstream.seen();
        assert_eq!(seen.len(), before + 1, "{sent}");
        assert_eq!(
            seen[before].path, decided,
            "{sent}: the upstream got another path"
        );
        let record = gw.audit_for(|r| r["path"] == decided);
        assert_eq!(record["decision"], "ALLOWED", "{sent}: {record}");
        assert_eq!(record["policy"], "allowed-area", "{sent}: {record}");
    }
}

// ------------------------------------------------------- 6. tokens from a file or digest

const FILE_TOKEN: &str = "SENTINEL-file-proxy-token-a19c";
const DIGEST_TOKEN: &str = "SENTINEL-digest-proxy-token-5be0";

fn sha256_hex(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn tokens_from_a_file_or_a_digest_give_their_tags_and_wrong_ones_get_407() {
    let upstream = Upstream::start(None);
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("proxy-token");
    // As `echo "$TOKEN" > file` writes it: with a newline.
    std::fs::write(&token_file, format!("{FILE_TOKEN}\n")).unwrap();
    let digest = sha256_hex(DIGEST_TOKEN);
    let config = format!(
        r#"
identities:
  - {{name: file-agent, token: {{file: "{}"}}, tags: [team:files]}}
  - {{name: digest-agent, token: {{sha256: "{digest}"}}, tags: [team:digest]}}
policies:
  - {{name: files-team, match_tags: [team:files], action: allow,
     rules: [{{host: 127.0.0.1, paths: ["/files/*"]}}]}}
  - {{name: digest-team, match_tags: [team:digest], action: allow,
     rules: [{{host: 127.0.0.1, paths: ["/digest/*"]}}]}}
"#,
        token_file.display()
    );
    let gw = Gateway::start(&config, GatewayOptions::default());
    let base = format!("http://127.0.0.1:{}", upstream.port());
    let bearer = |token: &str| format!("Proxy-Authorization: Bearer {token}");
    let mut replies = Vec::new();

    // Each token gets its identity's tags, and so its policy.
    let files = gw.via_proxy(&["-H", &bearer(FILE_TOKEN), &format!("{base}/files/a")]);
    assert_eq!(files.status, 200, "{files:?}\n{}", gw.portcullis_log());
    let basic = gw.via_proxy(&[
        "--proxy-user",
        &format!("anyone:{DIGEST_TOKEN}"),
        &format!("{base}/digest/b"),
    ]);
    assert_eq!(basic.status, 200, "{basic:?}");
    assert_eq!(upstream.hits(), 2);
    for seen in upstream.seen() {
        assert_eq!(seen.header("proxy-authorization"), None, "{seen:?}");
    }
    let record = gw.audit_for(|r| r["path"] == "/files/a");
    assert_eq!(record["identity"]["kind"], "token", "{record}");
    assert_eq!(record["identity"]["name"], "file-agent", "{record}");
    assert!(
        record["tags"]
            .as_array()
            .unwrap()
            .contains(&"team:files".into()),
        "{record}"
    );
    assert_eq!(record["policy"], "files-team", "{record}");
    let record = gw.audit_for(|r| r["path"] == "/digest/b");
    assert_eq!(record["identity"]["name"], "digest-agent", "{record}");
    assert_eq!(record["policy"], "digest-team", "{record}");

    // The other identity's area stays shut (403, its tags do not match).
    let crossed = gw.via_proxy(&["-H", &bearer(FILE_TOKEN), &format!("{base}/digest/c")]);
    assert_eq!(crossed.status, 403, "{crossed:?}");
    assert_eq!(crossed.json()["error"]["reason"], "no_matching_policy");
    replies.extend([files, basic, crossed]);

    // Wrong tokens get 407: near misses either side, and the digest itself (the config
    // holds nothing that grants access). No token at all is the gateway identity: 403.
    for wrong in [
        FILE_TOKEN[..FILE_TOKEN.len() - 1].to_owned(),
        format!("{FILE_TOKEN}x"),
        digest.clone(),
        digest.to_uppercase(),
    ] {
        let reply = gw.via_proxy(&["-H", &bearer(&wrong), &format!("{base}/files/a")]);
        assert_eq!(reply.status, 407, "{wrong}: {reply:?}");
        assert_eq!(reply.json()["error"]["type"], "proxy_auth_required");
        replies.push(reply);
    }
    let anonymous = gw.via_proxy(&[&format!("{base}/files/a")]);
    assert_eq!(anonymous.status, 403, "{anonymous:?}");
    replies.push(anonymous);
    assert_eq!(upstream.hits(), 2, "{:?}", upstream.seen());
    let record = gw.audit_for(|r| r["reason"] == "unknown_proxy_token");
    assert_eq!(record["decision"], "DENIED", "{record}");
    assert_eq!(record["status"], 407, "{record}");
    assert_eq!(record["identity"]["kind"], "refused", "{record}");

    // No token value in the audit trail, the logs, or any answer.
    let audit = serde_json::to_string(&gw.audit_lines()).unwrap();
    assert!(!audit.contains(FILE_TOKEN) && !audit.contains(DIGEST_TOKEN));
    let replies: Vec<&Reply> = replies.iter().collect();
    gw.assert_no_leaks(&[FILE_TOKEN, DIGEST_TOKEN], &replies);
}

// ----------------------------------------------- 7. migrate and apply against PostgreSQL

/// The migrations sqlx recorded as applied, in order.
fn applied_migrations(db: &TestDatabase) -> Vec<(i64, bool)> {
    crate::common::postgres::connected(&db.url, async |conn| {
        sqlx::query_as::<_, (i64, bool)>(
            "SELECT version, success FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(conn)
        .await
        .unwrap()
    })
}

#[test]
fn migrate_twice_then_apply_decides_requests_through_envoy_on_postgres() {
    let db = TestDatabase::create();
    let migrations = std::fs::read_dir(crate::common::repo().join("migrations"))
        .unwrap()
        .count();
    for run in 1..=2 {
        let (code, out) = portcullis(&["migrate", "--store", &db.url]);
        assert_eq!(code, 0, "migrate run {run}: {out}");
        assert!(out.contains("store schema is current"), "run {run}: {out}");
        let applied = applied_migrations(&db);
        assert_eq!(applied.len(), migrations, "run {run}: {applied:?}");
        assert!(applied.iter().all(|(_, ok)| *ok), "run {run}: {applied:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    let path = file.to_str().unwrap();
    std::fs::write(
        &file,
        r#"
policies:
  - {name: repos, priority: 100, action: allow, rules: [{host: 127.0.0.1, paths: ["/repos/*"]}]}
  - {name: no-private, priority: 10, action: deny, rules: [{host: 127.0.0.1, paths: ["/repos/private/*"]}]}
"#,
    )
    .unwrap();
    let (code, out) = portcullis(&["apply", "-f", path, "--store", &db.url, "--operator", "ci"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 created, 0 updated, 0 unchanged, 0 deleted"),
        "{out}"
    );

    let upstream = Upstream::start(None);
    let gw = Gateway::start(&crate::control::config(&db.url), crate::control::options());
    let get = |path: &str| gw.via_proxy(&[&format!("http://127.0.0.1:{}{path}", upstream.port())]);
    let allowed = get("/repos/public/a");
    assert_eq!(allowed.status, 200, "{allowed:?}\n{}", gw.portcullis_log());
    let denied = get("/repos/private/b");
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json()["error"]["policy"], "no-private");
    let unmatched = get("/elsewhere");
    assert_eq!(unmatched.status, 403, "{unmatched:?}");
    assert_eq!(upstream.hits(), 1, "{:?}", upstream.seen());
    let record = gw.audit_for(|r| r["path"] == "/repos/public/a");
    assert_eq!(record["policy"], "repos", "{record}");
    assert_eq!(record["policy_version"], 1, "{record}");
    assert!(
        record["config_version"]
            .as_str()
            .is_some_and(|v| v.contains("+r")),
        "decided at a store revision: {record}"
    );
    let record = gw.audit_for(|r| r["path"] == "/repos/private/b");
    assert_eq!(record["decision"], "DENIED", "{record}");
    assert_eq!(record["policy"], "no-private", "{record}");

    // A second apply, narrowing the allow, decides the next requests of the running
    // gateway (LISTEN/NOTIFY), and is version 2.
    std::fs::write(
        &file,
        r#"
policies:
  - {name: repos, priority: 100, action: allow, rules: [{host: 127.0.0.1, paths: ["/repos/public/*"]}]}
  - {name: no-private, priority: 10, action: deny, rules: [{host: 127.0.0.1, paths: ["/repos/private/*"]}]}
"#,
    )
    .unwrap();
    let (code, out) = portcullis(&["apply", "-f", path, "--store", &db.url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("updated  policy repos (version 2)"), "{out}");
    assert!(out.contains("1 unchanged"), "{out}");
    assert!(
        wait_until(DEADLINE, || get("/repos/other/c").status == 403),
        "the applied change never decided; log:\n{}",
        gw.portcullis_log()
    );
    let hits = upstream.hits();
    let narrowed = get("/repos/other/c");
    assert_eq!(narrowed.status, 403, "{narrowed:?}");
    assert_eq!(narrowed.json()["error"]["reason"], "no_matching_policy");
    assert_eq!(upstream.hits(), hits, "{:?}", upstream.seen());
    let allowed = get("/repos/public/d");
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let record = gw.audit_for(|r| r["path"] == "/repos/public/d");
    assert_eq!(record["policy_version"], 2, "{record}");

    // Migrating the live database again changes nothing.
    let (code, out) = portcullis(&["migrate", "--store", &db.url]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(applied_migrations(&db).len(), migrations);
    assert_eq!(get("/repos/public/e").status, 200);
    drop(gw);
}
