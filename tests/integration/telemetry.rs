//! Traces through the real Envoy into a real OTLP/gRPC receiver: the `ext_proc` span
//! continues the workload's `traceparent`, transforms are its children, the audit record
//! names the same trace, and no credential reaches a span.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::common::collector::{Collector, attribute, hex};
use crate::common::{Gateway, GatewayOptions, Upstream, free_port, wait_until};

const SECRET: &str = "SENTINEL-ghp-otel-7d21";
const PROXY_TOKEN: &str = "SENTINEL-proxy-token-5e1f";
const QUERY: &str = "SENTINEL-query-9a0c";
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

fn config(endpoint: &str) -> String {
    format!(
        r#"
gateway: {{tags: [env:test]}}
identities:
  - {{name: ci, token: {{env: CI_PROXY_TOKEN}}, tags: [team:ci]}}
policies:
  - {{name: upstream, action: allow, rules: [{{host: 127.0.0.1, paths: ["/ok/*"]}}]}}
secrets:
  - name: github
    source: {{type: env, var: GITHUB_TOKEN}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: [{{host: 127.0.0.1, paths: ["/ok/*"]}}]
transforms: [allowlist, secrets]
telemetry:
  otlp: {{endpoint: "{endpoint}", service_name: portcullis-test}}
"#
    )
}

/// The gateway exporting to `endpoint`, its batches sent every `schedule_delay_ms`.
fn gateway(endpoint: &str, schedule_delay_ms: u64) -> Gateway {
    Gateway::start(
        &config(endpoint),
        GatewayOptions {
            env: vec![
                ("GITHUB_TOKEN".into(), SECRET.into()),
                ("CI_PROXY_TOKEN".into(), PROXY_TOKEN.into()),
                (
                    "OTEL_BSP_SCHEDULE_DELAY".into(),
                    schedule_delay_ms.to_string(),
                ),
            ],
            ..GatewayOptions::default()
        },
    )
}

/// Waits for the `ext_proc` span of trace `trace_id`.
fn stream_span(collector: &Collector, trace_id: &str) -> Span {
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        found = collector
            .spans()
            .into_iter()
            .map(|(_, span)| span)
            .find(|s| s.name == "ext_proc" && hex(&s.trace_id) == trace_id);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no ext_proc span of trace {trace_id}; received: {:#?}",
            collector.spans()
        )
    })
}

/// Every span of the trace, once `count` arrived.
fn trace_spans(collector: &Collector, trace_id: &str, count: usize) -> Vec<Span> {
    let spans = || -> Vec<Span> {
        collector
            .spans()
            .into_iter()
            .map(|(_, span)| span)
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect()
    };
    wait_until(Duration::from_secs(15), || spans().len() >= count);
    spans()
}

fn assert_nothing_secret_in_spans(collector: &Collector) {
    let exported = format!("{:?}", collector.requests());
    assert!(exported.contains("ext_proc"), "spans were received");
    for sentinel in [SECRET, PROXY_TOKEN, QUERY, "Bearer "] {
        assert!(
            !exported.contains(sentinel),
            "{sentinel:?} reached the collector: {exported}"
        );
    }
}

#[test]
fn a_traceparent_parents_the_stream_span_and_names_the_audit_trace() {
    let collector = Collector::start();
    let upstream = Upstream::start(None);
    let gw = gateway(&collector.endpoint(), 100);
    let url = format!("http://127.0.0.1:{}/ok/traced?q={QUERY}", upstream.port());
    let reply = gw.via_proxy(&[
        "--proxy-user",
        &format!("ci:{PROXY_TOKEN}"),
        "-H",
        &format!("traceparent: 00-{TRACE}-{PARENT}-01"),
        &url,
    ]);
    assert_eq!(reply.status, 200, "{reply:?}\n{}", gw.portcullis_log());
    let seen = upstream.seen();
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str()),
        "the secret was injected: there was something to leak"
    );

    let record = gw.audit_for(|r| r["path"] == "/ok/traced");
    assert_eq!(record["trace_id"], TRACE, "{record}");

    let stream = stream_span(&collector, TRACE);
    assert_eq!(
        hex(&stream.parent_span_id),
        PARENT,
        "child of the caller's span"
    );
    assert_eq!(stream.kind, SpanKind::Server as i32);
    let attr = |key| attribute(&stream, key);
    assert_eq!(
        attr("portcullis.request_id"),
        record["request_id"].as_str().map(str::to_owned)
    );
    assert_eq!(attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        attr("url.path").as_deref(),
        Some("/ok/traced"),
        "no query string"
    );
    assert_eq!(attr("portcullis.decision").as_deref(), Some("ALLOWED"));
    assert_eq!(attr("portcullis.policy").as_deref(), Some("upstream"));
    assert_eq!(
        attr("portcullis.config_version"),
        record["config_version"].as_str().map(str::to_owned)
    );
    assert_eq!(
        attr("http.response.status_code"),
        None,
        "only refusals have one"
    );

    let spans = trace_spans(&collector, TRACE, 3);
    let transforms: Vec<(String, String)> = spans
        .iter()
        .filter(|s| s.name == "transform")
        .map(|s| {
            assert_eq!(
                s.parent_span_id, stream.span_id,
                "a child of the stream span"
            );
            (
                attribute(s, "transform.name").unwrap(),
                attribute(s, "transform.action").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        transforms,
        [
            ("allowlist".to_owned(), "continue".to_owned()),
            ("secrets".to_owned(), "continue".to_owned())
        ]
    );
    assert!(
        collector
            .spans()
            .iter()
            .all(|(service, _)| service == "portcullis-test"),
        "service.name from the config"
    );

    assert_nothing_secret_in_spans(&collector);
    gw.assert_no_leaks_checked(&[SECRET, PROXY_TOKEN], &[(&reply, 200)]);
}

#[test]
fn without_a_traceparent_a_new_trace_starts_and_the_audit_names_it() {
    let collector = Collector::start();
    let upstream = Upstream::start(None);
    let gw = gateway(&collector.endpoint(), 100);
    let allowed = gw.via_proxy(&[
        "--proxy-user",
        &format!("ci:{PROXY_TOKEN}"),
        &format!("http://127.0.0.1:{}/ok/fresh", upstream.port()),
    ]);
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let record = gw.audit_for(|r| r["path"] == "/ok/fresh");
    let trace_id = record["trace_id"].as_str().expect("a trace id").to_owned();
    assert_eq!(trace_id.len(), 32, "{record}");
    assert!(
        trace_id
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    );
    assert_ne!(trace_id, "0".repeat(32));
    let stream = stream_span(&collector, &trace_id);
    assert!(stream.parent_span_id.is_empty(), "a root span");
    assert_eq!(
        attribute(&stream, "portcullis.request_id"),
        record["request_id"].as_str().map(str::to_owned)
    );

    // A refusal: decision, reason and status on the span.
    let denied = gw.via_proxy(&[&format!("http://127.0.0.1:{}/elsewhere", upstream.port())]);
    assert_eq!(denied.status, 403);
    let record = gw.audit_for(|r| r["path"] == "/elsewhere");
    let denied_trace = record["trace_id"].as_str().expect("a trace id").to_owned();
    assert_ne!(denied_trace, trace_id, "one trace per request");
    let stream = stream_span(&collector, &denied_trace);
    let attr = |key| attribute(&stream, key);
    assert_eq!(attr("portcullis.decision").as_deref(), Some("DENIED"));
    assert_eq!(
        attr("portcullis.reason").as_deref(),
        Some("no_matching_policy")
    );
    assert_eq!(attr("portcullis.transform").as_deref(), Some("allowlist"));
    assert_eq!(attr("http.response.status_code").as_deref(), Some("403"));
    let spans = trace_spans(&collector, &denied_trace, 2);
    let allowlist = spans
        .iter()
        .find(|s| s.name == "transform")
        .expect("the allowlist span");
    assert_eq!(
        attribute(allowlist, "transform.action").as_deref(),
        Some("reject")
    );
    assert!(
        !spans
            .iter()
            .any(|s| attribute(s, "transform.name").as_deref() == Some("secrets")),
        "nothing runs after a reject"
    );
    assert_nothing_secret_in_spans(&collector);
}

#[test]
fn sigterm_exports_the_spans_still_queued() {
    let collector = Collector::start();
    let upstream = Upstream::start(None);
    // Batches would wait ten minutes: only the shutdown flush can deliver them.
    let mut gw = gateway(&collector.endpoint(), 600_000);
    let reply = gw.via_proxy(&[
        "-H",
        &format!("traceparent: 00-{TRACE}-{PARENT}-01"),
        &format!("http://127.0.0.1:{}/ok/last", upstream.port()),
    ]);
    assert_eq!(reply.status, 200);
    gw.audit_for(|r| r["path"] == "/ok/last");
    assert!(collector.spans().is_empty(), "nothing exported yet");

    gw.portcullis.terminate();
    let exited = gw.portcullis.child.wait().unwrap();
    assert!(exited.success(), "SIGTERM is a clean exit: {exited:?}");
    let stream = stream_span(&collector, TRACE);
    assert_eq!(hex(&stream.parent_span_id), PARENT);
}

#[test]
fn a_collector_that_is_down_never_fails_a_request_and_is_logged_once() {
    let upstream = Upstream::start(None);
    let nothing_there = format!("http://127.0.0.1:{}", free_port());
    let gw = gateway(&nothing_there, 100);
    let url = format!("http://127.0.0.1:{}/ok/down", upstream.port());
    let started = Instant::now();
    for _ in 0..5 {
        let reply = gw.via_proxy(&["--proxy-user", &format!("ci:{PROXY_TOKEN}"), &url]);
        assert_eq!(reply.status, 200, "{reply:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "requests are not slowed: {:?}",
        started.elapsed()
    );
    let warning = "cannot export spans to the OTLP collector";
    assert!(
        wait_until(Duration::from_secs(15), || gw
            .portcullis_log()
            .contains(warning)),
        "the failure is logged: {}",
        gw.portcullis_log()
    );
    // More batches fail meanwhile; the log says so once a minute at most.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        gw.portcullis_log().matches(warning).count(),
        1,
        "{}",
        gw.portcullis_log()
    );
    assert_eq!(gw.audit().len(), 5);
    gw.assert_no_leaks(&[SECRET, PROXY_TOKEN], &[]);
}

#[test]
fn malformed_endpoints_are_refused_with_where_they_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(
        &file,
        "policies: []\ntelemetry:\n  otlp:\n    endpoint: collector:4317\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["validate", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{}:4:5: telemetry.otlp.endpoint: invalid OTLP endpoint \"collector:4317\"",
            file.display()
        )),
        "{stdout}"
    );

    std::fs::write(&file, "policies: []\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config", file.to_str().unwrap()])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT: invalid OTLP endpoint \"collector:4317\""),
        "{stderr}"
    );
}
