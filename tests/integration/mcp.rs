//! MCP interception through Envoy + Portcullis, with the official SDK's client and server
//! (Streamable HTTP): allowed calls reach the server, denied ones come back as JSON-RPC
//! errors carrying the call's id, `tools/list` shows only the tools the agent may call,
//! argument-level rules and gated calls decide on `request.args`, a batch with a denied
//! entry is refused whole, and malformed JSON-RPC gets a JSON-RPC parse error.

use serde_json::json;

use crate::common::mcp::{ClientOptions, McpServer, Report, ServerOptions, run_client};
use crate::common::{Gateway, GatewayOptions};

const TOKEN: &str = "SENTINEL-mcp-agent-token-5c21";

const CONFIG: &str = r#"
identities:
  - {name: agent, token: {env: AGENT_TOKEN}, tags: [agent:claude-code]}
mcp: {deny_code: -32001, deny_message: "denied by policy"}
policies:
  - name: no-deletes
    priority: 10
    action: deny
    message: deleting channels is not allowed
    rules: [{host: 127.0.0.1, paths: ["/mcp"], tools: ["delete_*"]}]
  - name: post-to-general-only
    priority: 20
    action: gated
    condition: 'request.args.channel_id == "C_GENERAL"'
    rules: [{host: 127.0.0.1, paths: ["/mcp"], tools: ["send_*"]}]
  - name: no-system-files
    priority: 30
    action: deny
    rules:
      - host: 127.0.0.1
        paths: ["/mcp"]
        tools: [read_file]
        cel: 'request.args.path.startsWith("/etc/")'
  - name: mcp-for-agents
    priority: 100
    match_tags: [agent:claude-code]
    action: allow
    rules: [{host: 127.0.0.1, paths: ["/mcp"], methods: [GET, POST, DELETE]}]
"#;

fn start() -> Gateway {
    Gateway::start(
        CONFIG,
        GatewayOptions {
            env: vec![("AGENT_TOKEN".into(), TOKEN.into())],
            ..GatewayOptions::default()
        },
    )
}

fn client(gw: &Gateway) -> ClientOptions {
    ClientOptions {
        token: Some(TOKEN.into()),
        ..ClientOptions::via_proxy(gw.proxy_port)
    }
}

/// A step's JSON-RPC error, which must have come from Portcullis: our code, our data, and
/// the id of the call it answers.
fn denied_by<'r>(report: &'r Report, step: usize, policy: &str) -> &'r serde_json::Value {
    let error = report
        .error(step)
        .unwrap_or_else(|| panic!("step {step} was not refused: {:#}", report.0));
    assert_eq!(error["code"], -32001, "{error:#}");
    assert_eq!(error["message"], "denied by policy", "{error:#}");
    assert_eq!(
        error["http_status"], 200,
        "a refusal is a JSON-RPC answer: {error:#}"
    );
    assert!(
        error["id"].is_i64(),
        "the error carries the call's id, not null: {error:#}"
    );
    assert_eq!(error["data"]["policy"], policy, "{error:#}");
    assert_eq!(error["data"]["type"], "policy_denied", "{error:#}");
    error
}

#[test]
fn tool_calls_are_checked_by_name_and_arguments_and_tools_list_is_filtered() {
    for options in [
        ServerOptions::default(),
        ServerOptions {
            json: true,
            ..ServerOptions::default()
        },
    ] {
        let style = if options.json { "json" } else { "sse" };
        let gw = start();
        let server = McpServer::start(options);
        let script = json!([
            {"op": "list_tools"},
            {"op": "call", "tool": "send_message", "args": {"channel_id": "C_GENERAL", "text": "hi"}},
            {"op": "call", "tool": "send_message", "args": {"channel_id": "C_RANDOM", "text": "psst"}},
            {"op": "call", "tool": "delete_channel", "args": {"channel_id": "C_GENERAL"}},
            {"op": "call", "tool": "read_file", "args": {"path": "/etc/shadow"}},
            {"op": "call", "tool": "read_file", "args": {"path": "/srv/notes.txt"}},
            {"op": "call", "tool": "list_channels", "args": {}},
        ]);
        let report = run_client(&server.url(), &script, &client(&gw));
        assert!(
            report.connected(),
            "{style}: {:#}\n{}",
            report.0,
            gw.portcullis_log()
        );

        // delete_* may never be called: hidden. send_message and read_file depend on
        // their arguments: listed, and checked per call.
        assert_eq!(
            report.tools(0),
            ["send_message", "list_channels", "read_file"],
            "{style}: {:#}",
            report.0
        );

        assert_eq!(report.error(1), None, "{style}: {:#}", report.0);
        assert_eq!(report.text(1), "sent to C_GENERAL: hi");
        let gated = denied_by(&report, 2, "post-to-general-only");
        assert_eq!(gated["data"]["reason"], "gate_condition_failed");
        assert!(
            gated["data"]["message"]
                .as_str()
                .unwrap()
                .contains(r#"request.args.channel_id == "C_GENERAL""#),
            "{gated:#}"
        );
        let deleted = denied_by(&report, 3, "no-deletes");
        assert_eq!(
            deleted["data"]["message"],
            "deleting channels is not allowed"
        );
        denied_by(&report, 4, "no-system-files");
        assert_eq!(report.error(5), None, "{style}: {:#}", report.0);
        assert!(!report.text(6).is_empty());

        assert_eq!(
            server.called_tools(),
            ["send_message", "read_file", "list_channels"],
            "{style}: the server ran only the allowed calls"
        );
        let record = gw.audit_for(|r| r["policy"] == "no-deletes" && r["decision"] == "DENIED");
        assert_eq!(record["path"], "/mcp");
        gw.assert_no_leaks(&[TOKEN], &[]);
    }
}

#[test]
fn batches_are_refused_whole_and_malformed_json_rpc_gets_a_parse_error() {
    let gw = start();
    let server = McpServer::start(ServerOptions {
        json: true,
        ..ServerOptions::default()
    });
    let script = json!([
        {"op": "raw", "body": {"jsonrpc": "2.0", "id": "call-7", "method": "tools/call",
                               "params": {"name": "delete_channel", "arguments": {"channel_id": "C1"}}}},
        {"op": "raw", "body": [
            {"jsonrpc": "2.0", "id": 41, "method": "tools/call",
             "params": {"name": "list_channels", "arguments": {}}},
            {"jsonrpc": "2.0", "id": 42, "method": "tools/call",
             "params": {"name": "delete_channel", "arguments": {"channel_id": "C1"}}}
        ]},
        {"op": "raw", "body": "{\"jsonrpc\": \"2.0\", \"id\": 9, \"method\": "},
    ]);
    let report = run_client(&server.url(), &script, &client(&gw));
    assert!(report.connected(), "{:#}", report.0);

    // A single denied call: its string id comes back as it was sent.
    let single = report.step(0);
    assert_eq!(single["status"], 200, "{single:#}");
    let answer: serde_json::Value = serde_json::from_str(single["body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["id"], "call-7");
    assert_eq!(answer["error"]["code"], -32001);

    // A batch with one denied entry: every request in it gets an error, none runs.
    let batch = report.step(1);
    assert_eq!(batch["status"], 200, "{batch:#}");
    let answers: serde_json::Value = serde_json::from_str(batch["body"].as_str().unwrap()).unwrap();
    let ids: Vec<_> = answers
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].clone(), a["error"]["code"].clone()))
        .collect();
    assert_eq!(
        ids,
        [(json!(41), json!(-32001)), (json!(42), json!(-32001))]
    );

    // Not JSON-RPC that can be read: a JSON-RPC parse error, with HTTP 400.
    let malformed = report.step(2);
    assert_eq!(malformed["status"], 400, "{malformed:#}");
    let answer: serde_json::Value =
        serde_json::from_str(malformed["body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["error"]["code"], -32700, "{answer:#}");
    assert_eq!(answer["id"], serde_json::Value::Null);

    assert!(
        server.calls().is_empty(),
        "nothing reached the server: {:?}",
        server.calls()
    );
    let record = gw.audit_for(|r| r["reason"] == "malformed_jsonrpc");
    assert_eq!(record["transform"], "mcp");
}
