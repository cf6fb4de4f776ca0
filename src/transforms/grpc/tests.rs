use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::server::TcpIncoming;

use super::proto::decide_response::Decision as Answer;
use super::proto::processor_server::{Processor, ProcessorServer};
use super::proto::{self, DecideRequest, DecideResponse};
use super::*;
use crate::policy::Decision;
use crate::snapshot::Snapshot;
use crate::transforms::test_support::{config_errors, request, snapshot, transform_mutations};
use crate::transforms::{Outcome, TraceAction};

// ---- config errors -------------------------------------------------------------------

fn with_entry(entry: &str) -> String {
    format!("transforms:\n  - allowlist\n  - name: grpc\n    config:\n{entry}")
}

#[test]
fn config_mistakes_name_their_field() {
    let cases = [
        (
            "      endpoint: 127.0.0.1:9100\n",
            "transforms[1].config.endpoint: \"127.0.0.1:9100\" is not an http:// or https:// address",
        ),
        (
            "      endpoint: http://127.0.0.1:9100/decide\n",
            "transforms[1].config.endpoint: \"http://127.0.0.1:9100/decide\" has a path",
        ),
        (
            "      endpoint: http://127.0.0.1:9\n      timeout: 0s\n",
            "transforms[1].config.timeout: must be more than 0s",
        ),
        (
            "      endpoint: http://127.0.0.1:9\n      timeout: 30s\n",
            "transforms[1].config.timeout: 30s is over the limit of 29s",
        ),
        (
            "      endpoint: http://127.0.0.1:9\n      send_body: true\n      max_body_bytes: 0\n",
            "transforms[1].config.max_body_bytes: 0 is out of range",
        ),
        (
            "      endpoint: http://127.0.0.1:9\n      fail: maybe\n",
            "transforms[1].config.fail: unknown variant `maybe`",
        ),
        (
            "      endpoint: http://127.0.0.1:9\n      headers: [content-type, Authorization, \"x y\"]\n",
            "transforms[1].config.headers[1]: \"Authorization\" carries credentials and is never \
             sent to a processor",
        ),
        (
            "      endpoint: http://127.0.0.1:9\n      send: true\n",
            "transforms[1].config.send: unknown field `send`, expected one of `endpoint`",
        ),
    ];
    for (entry, expected) in cases {
        let errors = config_errors(&with_entry(entry));
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{entry}: expected {expected:?}, got {errors:#?}"
        );
    }
    let errors = config_errors("transforms:\n  - allowlist\n  - name: grpc\n");
    assert_eq!(
        errors,
        ["transforms[1].config: grpc needs a `config` with at least `endpoint` (http://host:port)"]
    );
}

#[test]
fn credentials_in_the_endpoint_are_refused_without_being_repeated() {
    let errors = config_errors(&with_entry(
        "      endpoint: http://svc:SENTINEL-pw@127.0.0.1:9100\n",
    ));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("transforms[1].config.endpoint: the endpoint carries credentials")
    );
    assert!(!errors[0].contains("SENTINEL"), "{}", errors[0]);
}

#[test]
fn a_processor_after_secrets_is_refused_and_timeouts_add_up() {
    let yaml = "secrets:\n  - {name: s, source: {type: env, var: S}, inject: {style: bearer}, rules: [{host: a.example}]}\ntransforms:\n  - allowlist\n  - secrets\n  - {name: grpc, config: {endpoint: 'http://127.0.0.1:9'}}\n";
    let errors = config_errors(yaml);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "transforms[2].name: grpc must run before `secrets` (transforms[1]): after it, the \
             processor would be sent the credentials"
        ),
        "{}",
        errors[0]
    );
    let yaml = "transforms:\n  - allowlist\n  - {name: grpc, config: {endpoint: 'http://127.0.0.1:9', timeout: 20s}}\n  - {name: judge, config: {provider: openai, url: 'http://127.0.0.1:9/v1', model: m, policy: p, timeout: 10s}}\n";
    let errors = config_errors(yaml);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0]
            .starts_with("transforms: the judges' and grpc processors' timeouts add up to 30s"),
        "{}",
        errors[0]
    );
}

// ---- a real processor ------------------------------------------------------------------

type Script = dyn Fn(&DecideRequest) -> Result<DecideResponse, tonic::Status> + Send + Sync;

/// A processor on loopback that answers with `script`, after `delay`, and keeps what it was
/// asked.
struct StandIn {
    endpoint: String,
    received: Arc<Mutex<Vec<DecideRequest>>>,
}

struct Scripted {
    script: Box<Script>,
    delay: Duration,
    received: Arc<Mutex<Vec<DecideRequest>>>,
}

#[tonic::async_trait]
impl Processor for Scripted {
    async fn decide(
        &self,
        request: tonic::Request<DecideRequest>,
    ) -> Result<tonic::Response<DecideResponse>, tonic::Status> {
        let request = request.into_inner();
        self.received.lock().unwrap().push(request.clone());
        tokio::time::sleep(self.delay).await;
        (self.script)(&request).map(tonic::Response::new)
    }
}

impl StandIn {
    async fn start(
        delay: Duration,
        script: impl Fn(&DecideRequest) -> Result<DecideResponse, tonic::Status> + Send + Sync + 'static,
    ) -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<DecideRequest>>> = Arc::default();
        let service = Scripted {
            script: Box::new(script),
            delay,
            received: received.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ProcessorServer::new(service))
                .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
        );
        StandIn { endpoint, received }
    }

    fn received(&self) -> Vec<DecideRequest> {
        self.received.lock().unwrap().clone()
    }
}

fn proceed(set: &[(&str, &str)], remove: &[&str]) -> Result<DecideResponse, tonic::Status> {
    Ok(DecideResponse {
        decision: Some(Answer::ContinueRequest(proto::Continue {
            set_headers: set
                .iter()
                .map(|(n, v)| proto::Header {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            remove_headers: remove.iter().map(|n| (*n).into()).collect(),
        })),
    })
}

fn reject(status: u32, reason: &str, message: &str) -> Result<DecideResponse, tonic::Status> {
    Ok(DecideResponse {
        decision: Some(Answer::Reject(proto::Reject {
            status,
            reason: reason.into(),
            message: message.into(),
        })),
    })
}

/// Policies allow `*.example` for everyone, except `denied.example`; the processor is asked
/// about `api.example`, and sent `content-type` and `x-agent`.
/// The processor's timeout unless `extra` sets one: generous, so a call to a stand-in that
/// answers at once never times out on a loaded machine. Tests about timeouts set their own.
const TIMEOUT: Duration = Duration::from_secs(10);

fn gateway(endpoint: &str, extra: &str) -> Snapshot {
    let timeout = if extra.contains("timeout:") {
        String::new()
    } else {
        format!("      timeout: {}s\n", TIMEOUT.as_secs())
    };
    snapshot(&format!(
        "policies:\n  - {{name: no-denied, action: deny, rules: [{{host: denied.example}}]}}\n  - {{name: examples, action: allow, rules: [{{host: '*.example'}}]}}\ntransforms:\n  - allowlist\n  - name: grpc\n    rules: [{{host: api.example}}]\n    config:\n      endpoint: {endpoint}\n{timeout}      headers: [content-type, X-Agent]\n{extra}"
    ))
}

/// The outcome, its mutations without the network guard's routing header.
async fn decide(snapshot: &Snapshot, line: &str, headers: &[(&str, &str)], body: &[u8]) -> Outcome {
    let mut outcome = snapshot
        .decide(&request(line, headers), &[], Some(body))
        .await
        .outcome;
    outcome.mutations = transform_mutations(&outcome);
    outcome
}

fn processed(o: &Outcome) -> &GrpcAnnotation {
    o.trace
        .iter()
        .find(|t| t.name == "grpc")
        .and_then(|t| t.annotations.grpc.as_deref())
        .unwrap_or_else(|| panic!("no grpc annotation: {:?}", o.trace))
}

const WORKLOAD_HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("x-agent", "claude-code"),
    ("authorization", "Bearer SENTINEL-workload-token"),
    ("cookie", "session=SENTINEL-cookie"),
    ("x-other", "not sent"),
];

#[tokio::test]
async fn the_processor_sees_the_request_bounded_and_without_credentials() {
    let processor = StandIn::start(Duration::ZERO, |_| proceed(&[], &[])).await;
    let s = gateway(
        &processor.endpoint,
        "      send_body: true\n      max_body_bytes: 4\n",
    );
    let o = decide(
        &s,
        "POST https://api.example/v1/chat/completions?stream=1",
        WORKLOAD_HEADERS,
        b"{\"messages\": []}",
    )
    .await;
    assert_eq!(o.decision, Decision::Allowed, "{:?}", o.trace);
    let [asked] = processor.received().try_into().unwrap();
    assert_eq!(
        (
            asked.method.as_str(),
            asked.scheme.as_str(),
            asked.host.as_str(),
            asked.port,
            asked.path.as_str(),
            asked.query.as_str()
        ),
        (
            "POST",
            "https",
            "api.example",
            443,
            "/v1/chat/completions",
            "stream=1"
        )
    );
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
        ]
    );
    assert_eq!(
        (asked.body.as_slice(), asked.body_size, asked.body_truncated),
        (&b"{\"me"[..], 16, true)
    );
    assert_eq!(asked.action_type, "chat_completion");
    let policy = asked.policy.as_ref().unwrap();
    assert_eq!(
        (policy.name.as_str(), policy.rule, policy.action.as_str()),
        ("examples", 0, "allow")
    );
    assert_eq!(asked.workload.as_ref().unwrap().identity_kind, "gateway");
    assert!(!format!("{asked:?}").contains("SENTINEL"));
    assert!(!asked.request_id.is_empty());
}

#[tokio::test]
async fn the_workloads_proxy_token_is_redacted_wherever_it_quotes_it() {
    let processor = StandIn::start(Duration::ZERO, |_| proceed(&[], &[])).await;
    let s = gateway(
        &processor.endpoint,
        "      send_body: true\n      max_body_bytes: 20\n",
    );
    let token = "SENTINEL-ptok-5512aa";
    let auth = format!("Bearer {token}");
    let quoted = format!("run {token}");
    decide(
        &s,
        "POST http://api.example/x",
        &[("proxy-authorization", &auth), ("x-agent", &quoted)],
        format!("key={token}&more").as_bytes(),
    )
    .await;
    let [asked] = processor.received().try_into().unwrap();
    assert_eq!(asked.headers[0].value, "run <redacted>");
    // Redacted before the cut: no prefix of the token survives it either.
    assert_eq!(asked.body, b"key=<redacted>&more");
    assert!(!asked.body_truncated);
    assert!(!format!("{asked:?}").contains("SENTINEL"));
}

#[test]
fn bytes_are_redacted_before_the_cut() {
    use crate::transforms::capture::capture_bytes;
    let token = Some("ptok-0123456789");
    assert_eq!(
        capture_bytes(b"ab ptok-0123456789 ptok-0123456789!", 64, token),
        (b"ab <redacted> <redacted>!".to_vec(), false)
    );
    // The token straddles the cut.
    assert_eq!(
        capture_bytes(b"abcdefgh ptok-0123456789 tail", 12, token),
        (b"abcdefgh <re".to_vec(), true)
    );
    assert_eq!(
        capture_bytes(b"abcd ptok-0123456789", 4, token),
        (b"abcd".to_vec(), true)
    );
    assert_eq!(
        capture_bytes(b"\xff\x00binary", 3, None),
        (b"\xff\x00b".to_vec(), true)
    );
}

#[tokio::test]
async fn without_send_body_no_body_is_sent_or_buffered() {
    let processor = StandIn::start(Duration::ZERO, |_| proceed(&[], &[])).await;
    let s = gateway(&processor.endpoint, "");
    let r = request("POST http://api.example/x", &[]);
    assert!(!s.needs_body(&r, &[]));
    decide(&s, "POST http://api.example/x", &[], b"payload").await;
    let [asked] = processor.received().try_into().unwrap();
    assert!(asked.body.is_empty());
    assert_eq!((asked.body_size, asked.body_truncated), (0, false));
    let s = gateway(&processor.endpoint, "      send_body: true\n");
    assert!(s.needs_body(&r, &[]));
}

#[tokio::test]
async fn reject_refuses_with_the_processors_status_reason_and_message() {
    let processor = StandIn::start(Duration::ZERO, |asked| {
        if asked.headers.iter().any(|h| h.value == "rogue") {
            reject(
                429,
                "agent_budget_exceeded",
                "budget\nexceeded\u{1b}[31m for today",
            )
        } else {
            proceed(&[], &[])
        }
    })
    .await;
    let s = gateway(&processor.endpoint, "");
    let o = decide(&s, "GET http://api.example/x", &[("x-agent", "rogue")], b"").await;
    assert_eq!(o.decision, Decision::Denied);
    let r = o.rejection.as_ref().unwrap();
    assert_eq!(
        (r.status, r.kind.as_str(), r.reason, r.transform),
        (429, "policy_denied", "grpc_reject", "grpc")
    );
    assert_eq!(
        r.message,
        "refused by the decision processor: budget exceeded [31m for today"
    );
    let note = processed(&o);
    assert_eq!(note.outcome, GrpcOutcome::Reject);
    assert_eq!(note.reason.as_deref(), Some("agent_budget_exceeded"));
    // Status 0 means 403.
    let processor = StandIn::start(Duration::ZERO, |_| reject(0, "", "")).await;
    let s = gateway(&processor.endpoint, "");
    let o = decide(&s, "GET http://api.example/x", &[], b"").await;
    let r = o.rejection.unwrap();
    assert_eq!(
        (r.status, r.message.as_str()),
        (403, "refused by the decision processor")
    );
}

#[tokio::test]
async fn continue_sets_and_removes_headers_and_records_only_their_names() {
    let processor = StandIn::start(Duration::ZERO, |_| {
        proceed(&[("X-Risk-Score", "SENTINEL-score-12")], &["x-debug"])
    })
    .await;
    let s = gateway(&processor.endpoint, "");
    let o = decide(&s, "GET http://api.example/x", &[("x-debug", "1")], b"").await;
    assert_eq!(o.decision, Decision::Allowed);
    assert_eq!(
        o.mutations.set,
        [(
            "x-risk-score".to_owned(),
            crate::secrets::SecretValue::new("SENTINEL-score-12")
        )]
    );
    assert_eq!(o.mutations.remove, ["x-debug"]);
    let note = processed(&o);
    assert_eq!(
        (
            note.outcome,
            note.set_headers.as_slice(),
            note.removed_headers.as_slice()
        ),
        (
            GrpcOutcome::Continue,
            &["x-risk-score".to_owned()][..],
            &["x-debug".to_owned()][..]
        )
    );
    let audit = serde_json::to_string(&o.trace).unwrap();
    assert!(!audit.contains("SENTINEL"), "{audit}");
}

#[tokio::test]
async fn a_processor_may_not_set_credentials_or_routing_headers() {
    /// Headers a processor sets, and names it removes.
    type Changes<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let refused: &[Changes] = &[
        (&[("authorization", "Bearer SENTINEL-minted")], &[]),
        (&[("Proxy-Authorization", "x")], &[]),
        (&[("cookie", "a=b")], &[]),
        (&[("host", "evil.example")], &[]),
        (&[(":path", "/elsewhere")], &[]),
        (&[("x-ok", "line\r\nx-injected: 1")], &[]),
        (&[("bad header", "v")], &[]),
        (&[], &["authorization"]),
        (&[], &["x-request-id"]),
    ];
    for (set, remove) in refused {
        let (set, remove): (Vec<(String, String)>, Vec<String>) = (
            set.iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
            remove.iter().map(|n| (*n).into()).collect(),
        );
        let processor = StandIn::start(Duration::ZERO, move |_| {
            let set: Vec<(&str, &str)> =
                set.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let remove: Vec<&str> = remove.iter().map(String::as_str).collect();
            proceed(&set, &remove)
        })
        .await;
        for (fail, decision) in [("closed", Decision::Denied), ("open", Decision::Allowed)] {
            let s = gateway(&processor.endpoint, &format!("      fail: {fail}\n"));
            let o = decide(&s, "GET http://api.example/x", &[], b"").await;
            assert_eq!(o.decision, decision, "{:?}", o.trace);
            // Nothing of a refused answer is applied, not even its valid parts.
            assert!(o.mutations.is_empty(), "{:?}", o.mutations);
            let note = processed(&o);
            assert_eq!(note.failure, Some(GrpcFailure::InvalidResponse));
            if decision == Decision::Denied {
                let r = o.rejection.unwrap();
                assert_eq!(
                    (r.status, r.kind.as_str(), r.reason),
                    (503, "processor_unavailable", "grpc_invalid_response")
                );
            }
            let audit = serde_json::to_string(&o.trace).unwrap();
            assert!(!audit.contains("SENTINEL"), "{audit}");
        }
    }
}

#[tokio::test]
async fn an_answer_without_a_decision_or_with_a_bad_status_fails() {
    for answer in [
        DecideResponse { decision: None },
        reject(302, "", "").unwrap(),
        reject(403, "Not A Reason", "").unwrap(),
    ] {
        let processor = StandIn::start(Duration::ZERO, move |_| Ok(answer.clone())).await;
        let s = gateway(&processor.endpoint, "");
        let o = decide(&s, "GET http://api.example/x", &[], b"").await;
        assert_eq!(o.rejection.unwrap().reason, "grpc_invalid_response");
    }
}

#[tokio::test]
async fn unreachable_slow_and_failing_processors_apply_the_fail_mode() {
    // Nothing listens on port 9 of loopback. The slow processor answers long after the
    // 300 ms timeout: that the call was given up at the timeout is read from the order of
    // events (the outcome was back before the answer could be), not from a stopwatch.
    let late = Duration::from_secs(30);
    let slow = StandIn::start(late, |_| proceed(&[], &[])).await;
    let failing = StandIn::start(Duration::ZERO, |_| {
        Err(tonic::Status::internal(
            "SENTINEL-processor-internal-detail",
        ))
    })
    .await;
    // Only the slow one runs with a tight timeout: the others must not time out instead of
    // failing as they do, however slow the machine.
    let cases = [
        (
            "http://127.0.0.1:9".to_owned(),
            "",
            GrpcFailure::Unavailable,
            "grpc_unavailable",
        ),
        (
            slow.endpoint.clone(),
            "      timeout: 300ms\n",
            GrpcFailure::Timeout,
            "grpc_timeout",
        ),
        (
            failing.endpoint.clone(),
            "",
            GrpcFailure::Error,
            "grpc_error",
        ),
    ];
    for (endpoint, timeout, failure, reason) in cases {
        let s = gateway(&endpoint, timeout);
        let o = decide(&s, "GET http://api.example/x", &[], b"").await;
        assert_eq!(o.decision, Decision::Denied, "{endpoint}: {:?}", o.trace);
        let r = o.rejection.as_ref().unwrap();
        assert_eq!((r.status, r.reason), (503, reason), "{endpoint}");
        assert!(!r.message.contains("SENTINEL"), "{}", r.message);
        let note = processed(&o);
        assert_eq!(
            (note.outcome, note.failure, note.fail_mode),
            (GrpcOutcome::Failed, Some(failure), Some(FailMode::Closed))
        );
        assert!(
            u128::from(note.duration_ms) < late.as_millis(),
            "never waits for an answer past the timeout: {note:?}"
        );
        let s = gateway(&endpoint, &format!("{timeout}      fail: open\n"));
        let o = decide(&s, "GET http://api.example/x", &[], b"").await;
        assert_eq!(o.decision, Decision::Allowed, "{endpoint}: {:?}", o.trace);
        assert_eq!(processed(&o).fail_mode, Some(FailMode::Open));
        let audit = serde_json::to_string(&o.trace).unwrap();
        assert!(!audit.contains("SENTINEL"), "{audit}");
    }
}

#[tokio::test]
async fn it_only_narrows_and_only_in_scope() {
    let processor = StandIn::start(Duration::ZERO, |_| proceed(&[], &[])).await;
    let s = gateway(&processor.endpoint, "");
    // Denied by the policies: the processor is not asked.
    let o = decide(&s, "GET http://denied.example/x", &[], b"").await;
    assert_eq!(o.decision, Decision::Denied);
    assert_eq!(o.rejection.unwrap().transform, "allowlist");
    // Out of its scope: skipped.
    let o = decide(&s, "GET http://other.example/x", &[], b"").await;
    assert_eq!(o.decision, Decision::Allowed);
    let stage = o.trace.iter().find(|t| t.name == "grpc").unwrap();
    assert_eq!(stage.action, TraceAction::Skip);
    assert!(processor.received().is_empty());
    // Requests in scope wait for it; others do not.
    assert_eq!(
        s.pipeline
            .longest_wait(&request("GET http://api.example/x", &[])),
        Some(TIMEOUT)
    );
    assert_eq!(
        s.pipeline
            .longest_wait(&request("GET http://other.example/x", &[])),
        None
    );
}

#[tokio::test]
async fn check_previews_without_calling_it() {
    let processor = StandIn::start(Duration::ZERO, |_| reject(403, "", "")).await;
    let s = gateway(&processor.endpoint, "");
    let o = s
        .preview(&request("GET http://api.example/x", &[]), &[], None)
        .await
        .outcome;
    assert_eq!(o.decision, Decision::Allowed, "{:?}", o.trace);
    assert!(processor.received().is_empty());
}
