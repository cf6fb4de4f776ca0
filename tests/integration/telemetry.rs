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
    gateway_with(endpoint, schedule_delay_ms, &[])
}

/// [`gateway`], with more (numeric) `OTEL_*` variables for its exporter.
fn gateway_with(endpoint: &str, schedule_delay_ms: u64, otel: &[(&str, u64)]) -> Gateway {
    let mut env: Vec<(String, String)> = vec![
        ("GITHUB_TOKEN".into(), SECRET.into()),
        ("CI_PROXY_TOKEN".into(), PROXY_TOKEN.into()),
        (
            "OTEL_BSP_SCHEDULE_DELAY".into(),
            schedule_delay_ms.to_string(),
        ),
    ];
    env.extend(
        otel.iter()
            .map(|(name, value)| ((*name).into(), value.to_string())),
    );
    Gateway::start(
        &config(endpoint),
        GatewayOptions {
            env,
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

const EXPORT_FAILED: &str = "cannot export spans to the OTLP collector";

#[test]
fn a_collector_that_is_down_never_fails_a_request_and_is_logged_once() {
    /// Batches go every 100 ms, one export at a time, and an export, retries included,
    /// gives up after 1 s.
    const SCHEDULE_DELAY_MS: u64 = 100;
    const EXPORT_TIMEOUT_MS: u64 = 1_000;
    let upstream = Upstream::start(None);
    let nothing_there = format!("http://127.0.0.1:{}", free_port());
    let gw = gateway_with(
        &nothing_there,
        SCHEDULE_DELAY_MS,
        &[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", EXPORT_TIMEOUT_MS),
            ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", 1),
        ],
    );
    let url = format!("http://127.0.0.1:{}/ok/down", upstream.port());
    let answered = || {
        let reply = gw.via_proxy(&["--proxy-user", &format!("ci:{PROXY_TOKEN}"), &url]);
        assert_eq!(reply.status, 200, "{reply:?}");
    };

    // Requests, one after another, until an export has failed and been logged: every one
    // is answered, those sent while that export was failing included.
    let started = Instant::now();
    let mut before = 0;
    let logged = wait_until(Duration::from_secs(30), || {
        answered();
        before += 1;
        gw.portcullis_log().contains(EXPORT_FAILED)
    });
    assert!(logged, "the failure is logged: {}", gw.portcullis_log());
    eprintln!(
        "the failed export was logged after {} ms and {before} answered requests",
        started.elapsed().as_millis()
    );
    // With exports known to fail, requests are still answered; their spans make batches
    // that fail in turn.
    let after = 5;
    let since = Instant::now();
    for _ in 0..after {
        answered();
    }
    eprintln!(
        "{after} more requests answered in {} ms, exports failing",
        since.elapsed().as_millis()
    );
    // Those failures must not be logged again (at most one line a minute). A failure is
    // not observable until it is logged, so this waits a bounded time derived from the
    // settings above: exports go one at a time, so the last spans' batch has at most one
    // export ahead of it; each starts within the schedule delay and ends within the export
    // timeout. On a machine too slow for that, the check passes without proving anything;
    // it can never fail wrongly.
    std::thread::sleep(2 * Duration::from_millis(SCHEDULE_DELAY_MS + EXPORT_TIMEOUT_MS));
    assert_eq!(
        gw.portcullis_log().matches(EXPORT_FAILED).count(),
        1,
        "{}",
        gw.portcullis_log()
    );
    let requests = before + after;
    assert!(
        wait_until(Duration::from_secs(30), || gw.audit().len() >= requests),
        "{} audit records for {requests} requests",
        gw.audit().len()
    );
    assert_eq!(gw.audit().len(), requests);
    gw.assert_no_leaks(&[SECRET, PROXY_TOKEN], &[]);
}

/// Requests never wait on the exporter: while an export is pending at a collector that
/// never answers, requests are answered. Shown by the order of events, not a clock.
#[test]
fn a_collector_that_never_answers_holds_no_request() {
    let collector = Collector::start_unanswering();
    let upstream = Upstream::start(None);
    // An export waits ten minutes for its answer (one that started outlives the test), and
    // exports go one at a time.
    let gw = gateway_with(
        &collector.endpoint(),
        100,
        &[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", 600_000),
            ("OTEL_BSP_EXPORT_TIMEOUT", 600_000),
            ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", 1),
        ],
    );
    let answered = |n: usize| {
        let url = format!("http://127.0.0.1:{}/ok/held/{n}", upstream.port());
        let reply = gw.via_proxy(&["--proxy-user", &format!("ci:{PROXY_TOKEN}"), &url]);
        assert_eq!(reply.status, 200, "{reply:?}");
    };
    answered(0);
    assert!(
        wait_until(Duration::from_secs(30), || !collector.requests().is_empty()),
        "no export reached the collector; log:\n{}",
        gw.portcullis_log()
    );
    // That export is pending, and exports go one at a time: a request that waited on the
    // exporter would never be answered.
    let since = Instant::now();
    let held = 5;
    for n in 1..=held {
        answered(n);
    }
    eprintln!(
        "{held} requests answered in {} ms while an export was pending",
        since.elapsed().as_millis()
    );
    assert_eq!(
        collector.requests().len(),
        1,
        "the first export is still pending: no other started"
    );
    assert!(
        !gw.portcullis_log().contains(EXPORT_FAILED),
        "the first export is still pending: {}",
        gw.portcullis_log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || gw.audit().len() > held),
        "{} audit records for {} requests",
        gw.audit().len(),
        held + 1
    );
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
