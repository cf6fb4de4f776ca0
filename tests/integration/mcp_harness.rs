//! The MCP harness itself (`common::mcp`): the SDK's server and client talk to each other
//! directly, in each of the server's answer styles and the client's connect modes, and then
//! through the gateway with a policy that lets MCP through — so that an MCP test that fails
//! later fails on what Portcullis did, not on the harness.

use serde_json::json;

use crate::common::mcp::{ClientOptions, McpServer, ServerOptions, run_client};
use crate::common::{Gateway, GatewayOptions};

const TOOLS: [&str; 4] = [
    "send_message",
    "list_channels",
    "delete_channel",
    "read_file",
];

fn script() -> serde_json::Value {
    json!([
        {"op": "list_tools"},
        {"op": "call", "tool": "send_message", "args": {"channel_id": "C_GENERAL", "text": "hi"}},
        {"op": "call", "tool": "read_file", "args": {"path": "/etc/motd"}},
    ])
}

/// The script's results, as they must be when nothing stands in between.
fn assert_script_ran(server: &McpServer, report: &crate::common::mcp::Report) {
    assert!(report.connected(), "{:#}\n{}", report.0, server.log());
    assert_eq!(report.tools(0), TOOLS, "{:#}", report.0);
    assert_eq!(report.text(1), "sent to C_GENERAL: hi");
    assert_eq!(report.text(2), "contents of /etc/motd");
    assert_eq!(report.error(1), None);
    assert_eq!(
        server.calls(),
        [
            json!({"tool": "send_message", "args": {"channel_id": "C_GENERAL", "text": "hi"}}),
            json!({"tool": "read_file", "args": {"path": "/etc/motd"}}),
        ]
    );
}

#[test]
fn sse_stateful_server_and_handshake_client() {
    let server = McpServer::start(ServerOptions::default());
    let report = run_client(&server.url(), &script(), &ClientOptions::default());
    assert_script_ran(&server, &report);
    assert_eq!(report.protocol_version(), Some("2025-11-25"));
    // The tools/call POST was answered with SSE, inside the session.
    let post = report
        .http(1)
        .iter()
        .find(|e| e["rpc"] == json!(["tools/call"]))
        .unwrap_or_else(|| panic!("no tools/call POST: {:#}", report.0));
    assert_eq!(post["status"], 200);
    assert_eq!(post["content_type"], "text/event-stream");
    assert_eq!(post["session"], true);
}

#[test]
fn json_stateless_server_and_each_client_mode() {
    let server = McpServer::start(ServerOptions {
        json: true,
        stateless: true,
        extra_tools: 2,
    });
    for (mode, version) in [
        ("legacy", "2025-11-25"),
        ("auto", "2026-07-28"),
        ("2026-07-28", "2026-07-28"),
    ] {
        let options = ClientOptions {
            mode: mode.into(),
            ..ClientOptions::default()
        };
        let report = run_client(
            &server.url(),
            &json!([
                {"op": "list_tools"},
                {"op": "call", "tool": "delete_channel", "args": {"channel_id": "C_RANDOM"}},
            ]),
            &options,
        );
        assert!(report.connected(), "{mode}: {:#}", report.0);
        assert_eq!(report.protocol_version(), Some(version), "{mode}");
        assert_eq!(
            report.tools(0),
            [&TOOLS[..], &["extra_tool_0", "extra_tool_1"]].concat(),
            "{mode}"
        );
        assert_eq!(report.text(1), "deleted C_RANDOM", "{mode}");
        let post = &report.http(1)[0];
        assert_eq!(post["content_type"], "application/json", "{mode}");
        assert_eq!(post["session"], false, "{mode}");
    }
    assert_eq!(
        server.called_tools(),
        ["delete_channel", "delete_channel", "delete_channel"]
    );
}

#[test]
fn raw_posts_and_what_the_sdk_server_says_to_malformed_bodies() {
    let mut server = McpServer::start(ServerOptions {
        json: true,
        ..ServerOptions::default()
    });
    let report = run_client(
        &server.url(),
        &json!([
            {"op": "raw", "body": {"jsonrpc": "2.0", "id": "r1", "method": "tools/call",
                                   "params": {"name": "list_channels", "arguments": {}}}},
            {"op": "raw", "body": [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]},
            {"op": "raw", "body": "{not json"},
        ]),
        &ClientOptions::default(),
    );
    assert!(report.connected(), "{:#}", report.0);
    // A raw POST rides the client's session: the server runs it.
    let ok = report.step(0);
    assert_eq!(ok["status"], 200, "{ok:#}");
    assert_eq!(ok["messages"][0]["id"], "r1");
    assert_eq!(server.called_tools(), ["list_channels"]);
    // The SDK's server (2.x) takes no batches, and answers a bad body with a 400 JSON-RPC error.
    for i in [1, 2] {
        let step = report.step(i);
        assert_eq!(step["status"], 400, "{step:#}");
        assert_eq!(
            step["messages"][0]["id"],
            serde_json::Value::Null,
            "{step:#}"
        );
        assert!(step["messages"][0]["error"]["code"].is_i64(), "{step:#}");
    }
    assert_eq!(report.step(2)["messages"][0]["error"]["code"], -32700);
    assert!(server.is_running());
}

#[test]
fn a_client_that_cannot_connect_reports_it_and_exits_zero() {
    let port = crate::common::free_port();
    let report = run_client(
        &format!("http://127.0.0.1:{port}/mcp"),
        &script(),
        &ClientOptions {
            timeout_secs: 5.0,
            ..ClientOptions::default()
        },
    );
    assert!(!report.connected(), "{:#}", report.0);
    assert!(
        report.connect_error()["exception"]
            .as_str()
            .is_some_and(|e| e.contains("Connect")),
        "{:#}",
        report.0
    );
    assert!(report.steps().is_empty());
}

#[test]
fn through_the_gateway_with_a_policy_that_allows_mcp() {
    let config = r#"
gateway: {tags: [env:test]}
identities:
  - {name: agent, token: {env: AGENT_TOKEN}, tags: [agent:claude-code]}
policies:
  - {name: mcp-for-agents, match_tags: [agent:claude-code], action: allow,
     rules: [{host: 127.0.0.1, paths: ["/mcp"], methods: [GET, POST, DELETE]}]}
"#;
    let gateway = Gateway::start(
        config,
        GatewayOptions {
            env: vec![("AGENT_TOKEN".into(), "agent-token-7d41".into())],
            ..GatewayOptions::default()
        },
    );
    let server = McpServer::start(ServerOptions::default());
    let with_token = ClientOptions {
        token: Some("agent-token-7d41".into()),
        ..ClientOptions::via_proxy(gateway.proxy_port)
    };
    let report = run_client(&server.url(), &script(), &with_token);
    assert_script_ran(&server, &report);

    // Without the token the workload has no tags, and the default denies: the SDK client
    // sees Envoy's 403, which is no JSON-RPC error, as -32603.
    let report = run_client(
        &server.url(),
        &script(),
        &ClientOptions::via_proxy(gateway.proxy_port),
    );
    assert!(!report.connected(), "{:#}", report.0);
    assert_eq!(report.connect_error()["http_status"], 403, "{:#}", report.0);
    assert_eq!(report.connect_error()["code"], -32603, "{:#}", report.0);
    assert_eq!(server.calls().len(), 2, "the denied client reached nothing");
}
