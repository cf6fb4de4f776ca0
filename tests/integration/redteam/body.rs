//! Requests whose decision needs the body: no forward without a decision, JSON-RPC recognised by
//! parsing, conditions that fail closed.

use std::convert::Infallible;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{HeaderMap, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::common::{Gateway, GatewayOptions, Upstream};

/// A body rule that denies, ahead of an allow-all for the test upstream.
const DENY_AWS_KEYS: &str = "
policies:
  - name: no-aws-keys
    priority: 1
    action: deny
    rules: [{host: 127.0.0.1, body: {contains: [aws_secret_access_key]}}]
  - name: upstream
    priority: 10
    action: allow
    rules: [{host: 127.0.0.1}]
";

#[derive(Debug, Clone, Copy)]
enum Framing {
    Http1Chunked,
    Http2PriorKnowledge,
}

/// POSTs `body` to `url` through the forward proxy with a trailer after it, as curl cannot:
/// HTTP/1.1 chunked, or HTTP/2 over cleartext with prior knowledge. Returns the status and
/// the response body.
fn post_with_trailer(gw: &Gateway, framing: Framing, url: &str, body: &str) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let proxy = format!("127.0.0.1:{}", gw.proxy_port);
    let url = url.to_owned();
    let body = Bytes::from(body.to_owned());
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&proxy).await.unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "c0ffee".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Infallible>> =
            vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
        let request = Request::post(url.as_str())
            .header("content-type", "application/json")
            .header("trailer", "x-checksum")
            .body(StreamBody::new(futures::stream::iter(frames)))
            .unwrap();
        let io = TokioIo::new(tcp);
        let response = match framing {
            Framing::Http1Chunked => {
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(connection);
                sender.send_request(request).await
            }
            Framing::Http2PriorKnowledge => {
                let (mut sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(connection);
                sender.send_request(request).await
            }
        };
        let response = response.unwrap_or_else(|e| panic!("{framing:?}: {e}"));
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    })
}

/// Issue 13, item 2: a body a deny rule matches, sent with a trailer, is refused over HTTP/2
/// exactly as over HTTP/1.1 — Envoy's buffered body then comes with `end_of_stream: false`,
/// which is the whole body, not a first chunk to wave through.
#[test]
fn h2_trailer_does_not_skip_the_body_decision() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(DENY_AWS_KEYS, GatewayOptions::default());
    let leak = r#"{"aws_secret_access_key": "SENTINEL-trailer-7e1a"}"#;
    for framing in [Framing::Http1Chunked, Framing::Http2PriorKnowledge] {
        let url = format!("http://127.0.0.1:{}/upload/{framing:?}", upstream.port());
        let (status, body) = post_with_trailer(&gw, framing, &url, leak);
        assert_eq!(
            status,
            403,
            "{framing:?}: a denied body with a trailer was answered {status} {body}\n{}",
            gw.portcullis_log()
        );
        assert!(body.contains("no-aws-keys"), "{framing:?}: {body}");
    }
    assert_eq!(
        upstream.hits(),
        0,
        "a denied body never reaches the upstream"
    );

    // A body nothing denies still goes through whole, trailer and all, on both framings.
    for framing in [Framing::Http1Chunked, Framing::Http2PriorKnowledge] {
        let url = format!("http://127.0.0.1:{}/ok/{framing:?}", upstream.port());
        let (status, body) = post_with_trailer(&gw, framing, &url, r#"{"greeting": "hi"}"#);
        assert_eq!(status, 200, "{framing:?}: {body}\n{}", gw.envoy_log());
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body == br#"{"greeting": "hi"}"#));
    assert_eq!(gw.metric("portcullis_stream_errors_total"), Some(0.0));
}

const MCP_POLICIES: &str = r#"
policies:
  - name: no-deletes
    priority: 10
    action: deny
    rules: [{host: 127.0.0.1, paths: ["/mcp"], tools: ["delete_*"]}]
  - name: mcp
    priority: 100
    action: allow
    rules: [{host: 127.0.0.1}]
"#;

/// POSTs a raw MCP body through the proxy as a Streamable HTTP client would.
fn post_mcp(gw: &Gateway, url: &str, body: &str) -> crate::common::Reply {
    let file = gw
        .dir
        .path()
        .join(format!("body-{}.json", body.len() ^ body.as_ptr() as usize));
    std::fs::write(&file, body).unwrap();
    let data = format!("@{}", file.display());
    gw.via_proxy(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Accept: application/json, text/event-stream",
        "-H",
        "MCP-Protocol-Version: 2025-06-18",
        "--data-binary",
        &data,
        url,
    ])
}

/// Issue 13, item 1: `"jsonrp\u0063"` is `"jsonrpc"` to the server (the official SDK), so
/// it is to Portcullis: the `tools/call` of a denied tool is refused and never executed, and
/// a repeated `method` key is malformed JSON-RPC however it is spelt.
#[test]
fn unicode_escaped_jsonrpc_key_is_still_mcp() {
    let server = crate::common::mcp::McpServer::start(crate::common::mcp::ServerOptions {
        json: true,
        stateless: true,
        ..Default::default()
    });
    let gw = Gateway::start(MCP_POLICIES, GatewayOptions::default());
    let escaped = r#"{"jsonrp\u0063": "2.0", "id": 41, "method": "tools/call", "params": {"name": "delete_channel", "arguments": {"channel_id": "C_GENERAL"}}}"#;
    let reply = post_mcp(&gw, &server.url(), escaped);
    assert_eq!(
        server.called_tools(),
        Vec::<String>::new(),
        "the denied tool was executed: {reply:?}\n{}",
        server.log()
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let error = &reply.json()["error"];
    assert_eq!(error["code"], -32001, "{reply:?}");
    assert_eq!(reply.json()["id"], 41, "{reply:?}");
    assert_eq!(error["data"]["policy"], "no-deletes", "{reply:?}");

    // The method name escaped too, and the tool's.
    let all_escaped = r#"{"jsonrp\u0063": "2.0", "id": 42, "m\u0065thod": "tools\/call", "params": {"n\u0061me": "d\u0065lete_channel", "arguments": {"channel_id": "C_GENERAL"}}}"#;
    let reply = post_mcp(&gw, &server.url(), all_escaped);
    assert_eq!(reply.json()["error"]["code"], -32001, "{reply:?}");

    // Two `method` keys: servers disagree on which counts, so neither is guessed.
    let twice = r#"{"jsonrpc": "2.0", "id": 43, "method": "tools/list", "m\u0065thod": "tools/call", "params": {"name": "delete_channel", "arguments": {"channel_id": "C_GENERAL"}}}"#;
    let reply = post_mcp(&gw, &server.url(), twice);
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.json()["error"]["code"], -32600, "{reply:?}");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate key"),
        "{reply:?}"
    );
    assert_eq!(server.called_tools(), Vec::<String>::new());

    // An allowed call, escaped, still goes through.
    let allowed = r#"{"jsonrp\u0063": "2.0", "id": 44, "method": "tools/call", "params": {"name": "list_channels", "arguments": {}}}"#;
    let reply = post_mcp(&gw, &server.url(), allowed);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(server.called_tools(), ["list_channels"], "{reply:?}");
}

/// Issue 13, item 11: a batch is bounded (`mcp.max_batch`, default 100); one over the bound is
/// refused whole with a JSON-RPC error before any message is decided or forwarded.
#[test]
fn oversized_jsonrpc_batch_is_refused_with_a_jsonrpc_error() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(MCP_POLICIES, GatewayOptions::default());
    let url = format!("http://127.0.0.1:{}/mcp", upstream.port());
    let batch = |n: usize| {
        let messages: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"list_channels","arguments":{{"pad":"{}"}}}}}}"#,
                    "x".repeat(64)
                )
            })
            .collect();
        format!("[{}]", messages.join(","))
    };
    let reply = post_mcp(&gw, &url, &batch(101));
    assert_eq!(reply.status, 400, "{reply:?}\n{}", gw.portcullis_log());
    assert_eq!(reply.json()["error"]["code"], -32600, "{reply:?}");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than the 100 allowed"),
        "{reply:?}"
    );
    assert_eq!(
        upstream.hits(),
        0,
        "an oversized batch never reaches the upstream"
    );
    let record = gw.audit_for(|r| r["reason"] == "jsonrpc_batch_too_large");
    assert_eq!(record["status"], 400);

    let reply = post_mcp(&gw, &url, &batch(100));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.hits(), 1);
}

const CEL_POLICIES: &str = r#"
policies:
  - name: big-payments
    priority: 10
    action: deny
    rules:
      - host: 127.0.0.1
        paths: ["/mcp"]
        tools: [pay]
        cel: 'request.args.amount > 1000'
  - name: small-refunds-only
    priority: 20
    action: gated
    condition: 'request.args.amount < 100'
    rules: [{host: 127.0.0.1, paths: ["/mcp"], tools: [refund]}]
  - name: big-json-payments
    priority: 30
    action: deny
    rules: [{host: 127.0.0.1, paths: ["/pay"], cel: 'request.body.amount > 1000'}]
  - name: upstream
    priority: 100
    action: allow
    rules: [{host: 127.0.0.1}]
"#;

/// Issue 13, item 10: a condition that errors on what the workload chose to send (a string
/// amount; a byte order mark before the JSON) no longer counts as "does not hold": a deny or
/// gated policy refuses, with reason `condition_error` and the error — not the value — in
/// the audit record.
#[test]
fn string_amount_does_not_escape_a_cel_deny() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(CEL_POLICIES, GatewayOptions::default());
    let mcp = format!("http://127.0.0.1:{}/mcp", upstream.port());

    let pay = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"pay","arguments":{"amount":"999999"}}}"#;
    let reply = post_mcp(&gw, &mcp, pay);
    assert_eq!(upstream.hits(), 0, "the payment was forwarded: {reply:?}");
    assert_eq!(reply.json()["error"]["code"], -32001, "{reply:?}");
    assert_eq!(reply.json()["error"]["data"]["reason"], "condition_error");
    let record =
        gw.audit_for(|r| r["reason"] == "condition_error" && r["policy"] == "big-payments");
    let text = record.to_string();
    assert!(
        text.contains("\"condition_error\":\"rule 0 `cel`: "),
        "{text}"
    );
    assert!(
        text.contains("(string, int)"),
        "the error names the types: {text}"
    );
    assert!(
        !text.contains("999999"),
        "request data in the audit record: {text}"
    );

    let refund = r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"refund","arguments":{"amount":"5"}}}"#;
    let reply = post_mcp(&gw, &mcp, refund);
    assert_eq!(upstream.hits(), 0, "the refund was forwarded: {reply:?}");
    assert_eq!(reply.json()["error"]["data"]["reason"], "condition_error");

    // A byte order mark before the JSON: read as the JSON it is.
    let bom = "\u{feff}{\"amount\": 5000}";
    let reply = post_mcp(
        &gw,
        &format!("http://127.0.0.1:{}/pay", upstream.port()),
        bom,
    );
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(upstream.hits(), 0, "{reply:?}");

    // What the conditions allow still goes through.
    let small = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"pay","arguments":{"amount":10}}}"#;
    let reply = post_mcp(&gw, &mcp, small);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.hits(), 1);
}

/// An Envoy whose ext_proc filter ignores `mode_override` and streams the body: the decision
/// that needs the whole body is not made on a first piece — the request is refused, loudly
/// (a 500 `body_not_buffered`, an audit record, an error log line, a metric).
#[test]
fn envoy_streaming_what_it_was_asked_to_buffer_fails_closed() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(
        DENY_AWS_KEYS,
        GatewayOptions {
            envoy_edits: vec![
                (
                    "allow_mode_override: true".into(),
                    "allow_mode_override: false".into(),
                ),
                (
                    "request_body_mode: NONE".into(),
                    "request_body_mode: STREAMED".into(),
                ),
            ],
            ..GatewayOptions::default()
        },
    );
    let mut body = "x".repeat(400_000);
    body.push_str("aws_secret_access_key");
    let file = gw.dir.path().join("streamed.txt");
    std::fs::write(&file, &body).unwrap();
    let data = format!("@{}", file.display());
    let url = format!("http://127.0.0.1:{}/upload", upstream.port());
    // Sent slowly, so that Envoy has answered the headers before the body is complete (a
    // body complete by then is sent whole even in STREAMED mode).
    let reply = gw.via_proxy(&[
        "-X",
        "POST",
        "--limit-rate",
        "200k",
        "--data-binary",
        &data,
        &url,
    ]);
    // The request never leaves with less than a decision on the whole body. Since the network
    // guard, Envoy has no upstream address until a decision names one: a streamed request
    // whose headers were continued undecided finds no upstream (Envoy's 503) before its first
    // body piece reaches Portcullis. When a piece does reach Portcullis first, it refuses
    // loudly (500 `body_not_buffered`, audited, logged, counted).
    assert!(
        upstream
            .seen()
            .iter()
            .all(|seen| seen.body.len() < body.len()),
        "the whole body reached the upstream"
    );
    match reply.status {
        503 => assert!(
            upstream.seen().is_empty(),
            "a request without a decision reached the upstream: {reply:?}"
        ),
        500 => {
            assert_eq!(
                reply.json()["error"]["type"],
                "body_not_buffered",
                "{reply:?}"
            );
            let record = gw.audit_for(|r| r["reason"] == "body_not_buffered");
            assert_eq!(record["status"], 500);
            assert!(
                gw.portcullis_log()
                    .contains("Envoy streamed a request body"),
                "{}",
                gw.portcullis_log()
            );
            assert_eq!(
                gw.metric(
                    "portcullis_rejections_total{reason=\"body_not_buffered\",transform=\"request\"}"
                ),
                Some(1.0),
                "{}",
                gw.admin("/metrics").body
            );
        }
        _ => panic!("{reply:?}\n{}", gw.portcullis_log()),
    }
}
