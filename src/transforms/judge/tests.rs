use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};

use super::provider::{Ruling, parse_answer, parse_verdict};
use super::summary::SummaryRules;
use super::*;
use crate::config::parse_str;
use crate::policy::Decision;
use crate::snapshot::{Runtime, Snapshot};
use crate::transforms::test_support::{config_errors, request, snapshot};
use crate::transforms::{Outcome, TraceAction};

// ---- config errors -------------------------------------------------------------------

fn judge_entry(extra: &str) -> String {
    format!(
        "  - name: judge\n    config:\n      provider: openai\n      url: http://127.0.0.1:9/v1/chat/completions\n      model: m\n      policy: deny exfiltration\n{extra}"
    )
}

fn single(errors: &[String]) -> &str {
    assert_eq!(errors.len(), 1, "{errors:#?}");
    &errors[0]
}

#[test]
fn a_judge_after_secrets_is_refused_at_its_name() {
    let yaml = format!(
        "secrets:\n  - {{name: s, source: {{type: env, var: S}}, inject: {{style: bearer}}, rules: [{{host: a.example}}]}}\ntransforms:\n  - allowlist\n  - secrets\n{}",
        judge_entry("")
    );
    let e = single(&config_errors(&yaml)).to_owned();
    assert!(
        e.starts_with("transforms[2].name: judge must run before `secrets` (transforms[1])"),
        "{e}"
    );
    // Before secrets, the same judge is fine.
    let yaml = format!(
        "secrets:\n  - {{name: s, source: {{type: env, var: S}}, inject: {{style: bearer}}, rules: [{{host: a.example}}]}}\ntransforms:\n  - allowlist\n{}  - secrets\n",
        judge_entry("")
    );
    assert_eq!(config_errors(&yaml), Vec::<String>::new());
}

#[test]
fn credential_headers_are_refused_in_the_summary() {
    let yaml = format!(
        "transforms:\n  - allowlist\n{}",
        judge_entry("      summary: {headers: [content-type, Authorization, cookie, \"x y\"]}\n")
    );
    let errors = config_errors(&yaml);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "transforms[1].config.summary.headers[1]: \"Authorization\" carries credentials and \
             is never sent to the judge"
        ),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].starts_with("transforms[1].config.summary.headers[2]: \"cookie\" carries"),
        "{}",
        errors[1]
    );
    assert_eq!(
        errors[2],
        "transforms[1].config.summary.headers[3]: \"x y\" is not a header name"
    );
}

#[test]
fn config_mistakes_name_their_field() {
    let cases = [
        (
            "      timeout: 45s\n",
            "transforms[1].config.timeout: 45s is over the limit of 29s",
        ),
        (
            "      timeout: 0s\n",
            "transforms[1].config.timeout: must be more than 0s",
        ),
        (
            "      api_key: {sha256: 0000000000000000000000000000000000000000000000000000000000000000}\n",
            "transforms[1].config.api_key.sha256: the judge sends its API key",
        ),
        (
            "      api_key: {env: A, file: /b}\n",
            "transforms[1].config.api_key: an api_key needs exactly one of `env`, `file`",
        ),
        (
            "      max_concurrency: 0\n",
            "transforms[1].config.max_concurrency: must be at least 1",
        ),
        (
            "      circuit_breaker: {failures: 0}\n",
            "transforms[1].config.circuit_breaker.failures: must be at least 1",
        ),
        (
            "      fallback: allow\n",
            "transforms[1].config.fallback: unknown variant `allow`",
        ),
        (
            "      temperature: 0\n",
            "transforms[1].config.temperature: unknown field `temperature`",
        ),
        (
            "      cache: {ttl: soon}\n",
            "transforms[1].config.cache.ttl: \"soon\" is not a duration",
        ),
    ];
    for (extra, expected) in cases {
        let yaml = format!("transforms:\n  - allowlist\n{}", judge_entry(extra));
        let errors = config_errors(&yaml);
        let e = single(&errors);
        assert!(e.starts_with(expected), "{extra}: {e}");
    }
    let yaml = "transforms:\n  - allowlist\n  - name: judge\n    config: {provider: gemini, url: 'http://x', model: m, policy: p}\n";
    let e = single(&config_errors(yaml)).to_owned();
    assert!(
        e.starts_with("transforms[1].config.provider: unknown variant `gemini`"),
        "{e}"
    );
    let yaml = "transforms:\n  - allowlist\n  - judge\n";
    let e = single(&config_errors(yaml)).to_owned();
    assert!(
        e.starts_with("transforms[1].config: judge needs a `config`"),
        "{e}"
    );
    let yaml = "transforms:\n  - allowlist\n  - name: judge\n    config: {provider: openai, url: 'ftp://x/y', model: ' ', policy: ''}\n";
    let errors = config_errors(yaml);
    assert_eq!(
        errors,
        [
            "transforms[1].config.url: \"ftp://x/y\" is not an http(s) URL",
            "transforms[1].config.model: a model name is required",
            "transforms[1].config.policy: the policy text is empty: say what the judge should deny",
        ]
    );
}

#[test]
fn judges_that_together_could_outwait_envoy_are_refused() {
    let yaml = format!(
        "transforms:\n  - allowlist\n{}{}",
        judge_entry("      timeout: 15s\n"),
        judge_entry("      timeout: 15s\n")
    );
    let e = single(&config_errors(&yaml)).to_owned();
    assert!(
        e.starts_with("transforms: the judges' and grpc processors' timeouts add up to 30s"),
        "{e}"
    );
}

// ---- verdicts and provider answers ---------------------------------------------------

#[test]
fn verdicts_are_read_strictly() {
    let good = |text: &str, ruling: Ruling, reason: &str| {
        let v = parse_verdict(text).unwrap_or_else(|| panic!("{text:?} is a verdict"));
        assert_eq!((v.verdict, v.reason.as_str()), (ruling, reason), "{text:?}");
    };
    good(
        r#"{"verdict":"allow","reason":"fine"}"#,
        Ruling::Allow,
        "fine",
    );
    good(
        " \n{\"reason\": \"leaks keys\", \"verdict\": \"deny\"}\n",
        Ruling::Deny,
        "leaks keys",
    );
    good(
        "```json\n{\"verdict\":\"deny\",\"reason\":\"r\"}\n```",
        Ruling::Deny,
        "r",
    );
    good(
        "```\n{\"verdict\":\"allow\",\"reason\":\"\"}\n```",
        Ruling::Allow,
        "",
    );
    for bad in [
        "",
        "allow",
        r#"Sure! {"verdict":"allow","reason":"x"}"#,
        r#"{"verdict":"allow","reason":"x"} Hope this helps."#,
        r#"{"verdict":"allow","reason":"x"}{"verdict":"deny","reason":"y"}"#,
        r#"{"verdict":"Allow","reason":"x"}"#,
        r#"{"verdict":"maybe","reason":"x"}"#,
        r#"{"verdict":"flag","reason":"x"}"#,
        r#"{"verdict":true,"reason":"x"}"#,
        r#"{"verdict":"deny","reason":42}"#,
        r#"{"verdict":"deny"}"#,
        r#"{"verdict":"deny","reason":"x","confidence":0.9}"#,
        r#"{"verdict":"deny","verdict":"allow","reason":"x"}"#,
        r#"["deny","x"]"#,
        "```json\n{\"verdict\":\"deny\",\"reason\":\"r\"}\n``` and more",
        "```json {\"verdict\":\"deny\",\"reason\":\"r\"}```",
        "Here:\n```json\n{\"verdict\":\"deny\",\"reason\":\"r\"}\n```",
    ] {
        assert_eq!(parse_verdict(bad), None, "{bad:?} must not be a verdict");
    }
}

#[test]
fn provider_answers_give_text_and_tokens() {
    let openai = json!({
        "choices": [{"message": {"role": "assistant", "content": "{\"verdict\":\"allow\",\"reason\":\"ok\"}"}}],
        "usage": {"prompt_tokens": 90, "completion_tokens": 12, "total_tokens": 102},
    });
    let a = parse_answer(Provider::Openai, openai.to_string().as_bytes());
    assert_eq!(a.tokens, Some(102));
    assert_eq!(
        a.text.as_deref(),
        Some("{\"verdict\":\"allow\",\"reason\":\"ok\"}")
    );
    let anthropic = json!({
        "content": [{"type": "text", "text": "{\"verdict\":\"deny\","}, {"type": "text", "text": "\"reason\":\"no\"}"}],
        "usage": {"input_tokens": 80, "output_tokens": 9},
    });
    let a = parse_answer(Provider::Anthropic, anthropic.to_string().as_bytes());
    assert_eq!(a.tokens, Some(89));
    assert_eq!(
        parse_verdict(a.text.as_deref().unwrap()).unwrap().verdict,
        Ruling::Deny
    );
    // Wrong shapes: no text, but the tokens billed are still read.
    let two_choices = json!({"choices": [{"message": {"content": "a"}}, {"message": {"content": "b"}}],
                             "usage": {"total_tokens": 5}});
    let a = parse_answer(Provider::Openai, two_choices.to_string().as_bytes());
    assert_eq!((a.text, a.tokens), (None, Some(5)));
    let null_content = json!({"choices": [{"message": {"content": null, "refusal": "no"}}]});
    assert_eq!(
        parse_answer(Provider::Openai, null_content.to_string().as_bytes()).text,
        None
    );
    assert_eq!(
        parse_answer(Provider::Anthropic, openai.to_string().as_bytes()).text,
        None
    );
    assert_eq!(parse_answer(Provider::Openai, b"<html>").text, None);
}

#[test]
fn reasons_are_cleaned_and_cut() {
    assert_eq!(
        printable("  bad\nidea\t\u{7}now  ", MAX_REASON_CHARS).as_deref(),
        Some("bad idea now")
    );
    assert_eq!(printable(" \n ", MAX_REASON_CHARS), None);
    let long = "é".repeat(300);
    let cut = printable(&long, MAX_REASON_CHARS).unwrap();
    assert_eq!(cut.chars().count(), MAX_REASON_CHARS + 1);
    assert!(cut.ends_with('…'));
}

// ---- the summary ---------------------------------------------------------------------

#[test]
fn the_summary_is_bounded_and_carries_no_credential_header() {
    let rules = SummaryRules::compile(&config::SummaryConfig {
        // `authorization` cannot pass validation; even if it did, it is not sent.
        headers: vec![
            "Content-Type".into(),
            "authorization".into(),
            "x-multi".into(),
            "x-absent".into(),
        ],
        max_body_bytes: 9,
    });
    let r = request(
        "POST https://API.example.com:8443/v1/chat?x=1&y=2",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer SENTINEL-workload"),
            ("cookie", "session=SENTINEL-cookie"),
            ("proxy-authorization", "Bearer SENTINEL-proxy"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("user-agent", "curl"),
        ],
    );
    let body = "héllo wörld, this is long".as_bytes();
    let s = rules.summarize(&r, Some(body));
    let text = s.to_json();
    assert!(!text.contains("SENTINEL"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!({
            "method": "POST",
            "url": "https://api.example.com:8443/v1/chat?x=1&y=2",
            "headers": {"content-type": "application/json", "x-multi": "a, b"},
            // 9 bytes cut inside `ö`: the partial character is dropped, never a panic.
            "body": "héllo w",
            "body_bytes": body.len(),
            "body_truncated": true,
        })
    );

    // The workload's proxy token, quoted in a header or the body, is redacted.
    let quoting = request(
        "POST https://api.example.com/v1/chat",
        &[
            ("proxy-authorization", "Bearer SENTINEL-proxy-0042"),
            ("x-multi", "tok SENTINEL-proxy-0042"),
        ],
    );
    let s = rules.summarize(&quoting, Some(b"k=SENTINEL-proxy-0042"));
    assert_eq!(s.headers["x-multi"], "tok <redacted>");
    assert_eq!(s.body.as_deref(), Some("k=<redact"));
    assert!(!s.to_json().contains("SENTINEL"));

    let small = rules.summarize(&r, Some(b"tiny"));
    assert_eq!(small.body.as_deref(), Some("tiny"));
    assert!(!small.body_truncated);
    let none = rules.summarize(&request("GET http://a.example/", &[]), Some(b""));
    assert_eq!(
        none.to_json(),
        r#"{"method":"GET","url":"http://a.example/","headers":{}}"#
    );
    let connect = rules.summarize(&request("CONNECT a.example:443", &[]), Some(b""));
    assert_eq!(connect.url, "a.example:443");

    let headers_only = SummaryRules::compile(&config::SummaryConfig {
        headers: vec![],
        max_body_bytes: 0,
    });
    let s = headers_only.summarize(&r, Some(body));
    assert_eq!(
        (s.body, s.body_bytes, s.body_truncated),
        (None, Some(body.len()), true)
    );
    let long = "x".repeat(5000);
    let s = rules.summarize(
        &request("GET http://a.example/", &[("x-multi", &long)]),
        None,
    );
    assert!(s.headers["x-multi"].len() < 2100);
    assert_eq!(
        Summary::key(&rules.summarize(&r, Some(body)).to_json()),
        Summary::key(&text),
        "equal requests, equal keys"
    );
}

// ---- the transform against a local stand-in ------------------------------------------

/// A scripted judge: `answer(n, request body)` gives the n-th call's status, body and
/// delay.
type Script = dyn Fn(usize, &Value) -> (u16, String, Duration) + Send + Sync;

/// What the stand-in received: each call's headers and JSON body.
type Received = Arc<Mutex<Vec<(Vec<(String, String)>, Value)>>>;

struct StandIn {
    url: String,
    calls: Arc<AtomicUsize>,
    received: Received,
}

impl StandIn {
    async fn start(
        script: impl Fn(usize, &Value) -> (u16, String, Duration) + Send + Sync + 'static,
    ) -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let received: Received = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let (c, r) = (calls.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (c, r, script) = (c.clone(), r.clone(), script.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (c, r, script) = (c.clone(), r.clone(), script.clone());
                            async move {
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(n, v)| {
                                        (n.to_string(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let body: Value =
                                    serde_json::from_slice(&body).unwrap_or(Value::Null);
                                let n = c.fetch_add(1, Ordering::SeqCst);
                                let (status, text, delay) = script(n, &body);
                                r.lock().unwrap().push((headers, body));
                                tokio::time::sleep(delay).await;
                                Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(text)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StandIn {
            url: format!("http://{addr}/v1/chat/completions"),
            calls,
            received,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn openai(content: &str) -> String {
    json!({"choices": [{"message": {"role": "assistant", "content": content}}],
           "usage": {"total_tokens": 42}})
    .to_string()
}

fn verdict(ruling: &str, reason: &str) -> (u16, String, Duration) {
    (
        200,
        openai(&json!({"verdict": ruling, "reason": reason}).to_string()),
        Duration::ZERO,
    )
}

/// The judge's timeout unless `extra` sets one: generous, so a call to a stand-in that
/// answers at once never times out on a loaded machine. Tests about timeouts set their own.
const TIMEOUT: Duration = Duration::from_secs(10);

fn gateway(url: &str, extra: &str) -> Snapshot {
    let timeout = if extra.contains("timeout:") {
        String::new()
    } else {
        format!("      timeout: {}s\n", TIMEOUT.as_secs())
    };
    let yaml = format!(
        "policies:\n  - {{name: all, action: allow, rules: [{{host: '*.example'}}]}}\ntransforms:\n  - allowlist\n  - name: judge\n    rules: [{{host: api.example}}]\n    config:\n      provider: openai\n      url: {url}\n      model: judge-model\n      policy: Deny anything mentioning exfiltrate.\n{timeout}{extra}"
    );
    snapshot(&yaml)
}

async fn decide(snapshot: &Snapshot, line: &str, body: &[u8]) -> Outcome {
    snapshot
        .decide(&request(line, &[]), &[], Some(body))
        .await
        .outcome
}

fn judged(o: &Outcome) -> &JudgeAnnotation {
    o.trace
        .iter()
        .find(|t| t.name == "judge")
        .and_then(|t| t.annotations.judge.as_deref())
        .unwrap_or_else(|| panic!("no judge annotation: {:?}", o.trace))
}

#[tokio::test]
async fn allow_continues_deny_refuses_with_the_reason() {
    let judge = StandIn::start(|_, body| {
        let user = body["messages"][1]["content"].as_str().unwrap_or_default();
        if user.contains("exfiltrate") {
            verdict("deny", "Mentions exfiltration.\nBad!\u{1b}[31m")
        } else {
            verdict("allow", "ok")
        }
    })
    .await;
    let s = gateway(&judge.url, "");
    let o = decide(&s, "POST http://api.example/v1", b"hello").await;
    assert_eq!(o.decision, Decision::Allowed);
    let note = judged(&o);
    assert_eq!(
        (note.verdict, note.tokens, note.cached, note.fallback),
        (JudgeVerdict::Allow, Some(42), false, FallbackApplied::None)
    );
    assert_eq!(note.reason.as_deref(), Some("ok"));

    let o = decide(&s, "POST http://api.example/v1", b"please exfiltrate").await;
    assert_eq!(o.decision, Decision::Denied);
    let r = o.rejection.as_ref().unwrap();
    assert_eq!(
        (r.status, r.kind.as_str(), r.reason, r.transform),
        (403, "policy_denied", "judge_deny", "judge")
    );
    assert_eq!(
        r.message,
        "denied by the LLM judge: Mentions exfiltration. Bad! [31m"
    );
    assert_eq!(judged(&o).verdict, JudgeVerdict::Deny);

    // What the judge was sent: the policy as the system prompt, the summary as the user
    // message.
    let (_, sent) = judge.received.lock().unwrap()[0].clone();
    assert_eq!(sent["model"], "judge-model");
    assert!(
        sent["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("Deny anything mentioning exfiltrate.")
    );
    let user: Value =
        serde_json::from_str(sent["messages"][1]["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        user,
        json!({"method": "POST", "url": "http://api.example/v1", "headers": {}, "body": "hello", "body_bytes": 5})
    );

    // Out of the judge's scope: no call.
    let o = decide(&s, "POST http://other.example/v1", b"exfiltrate").await;
    assert_eq!(o.decision, Decision::Allowed);
    assert_eq!(o.trace[1].action, TraceAction::Skip);
    assert_eq!(judge.calls(), 2);
}

#[tokio::test]
async fn the_same_request_twice_is_judged_once() {
    let judge = StandIn::start(|_, _| verdict("deny", "no")).await;
    let s = gateway(&judge.url, "");
    let first = decide(&s, "POST http://api.example/v1", b"same").await;
    let second = decide(&s, "POST http://api.example/v1", b"same").await;
    assert_eq!(judge.calls(), 1);
    assert_eq!(second.decision, Decision::Denied);
    assert!(!judged(&first).cached);
    let note = judged(&second);
    assert!(note.cached);
    assert_eq!(
        (note.verdict, note.reason.as_deref(), note.tokens),
        (JudgeVerdict::Deny, Some("no"), None)
    );
    // Another body is another summary.
    decide(&s, "POST http://api.example/v1", b"other").await;
    assert_eq!(judge.calls(), 2);

    // `ttl: 0s`: no cache.
    let judge = StandIn::start(|_, _| verdict("allow", "ok")).await;
    let s = gateway(&judge.url, "      cache: {ttl: 0s}\n");
    decide(&s, "POST http://api.example/v1", b"same").await;
    decide(&s, "POST http://api.example/v1", b"same").await;
    assert_eq!(judge.calls(), 2);
}

#[tokio::test]
async fn no_verdict_applies_the_fallback_with_its_cause() {
    let judge = StandIn::start(|n, _| match n {
        0 => (200, openai("I think this is fine: allow"), Duration::ZERO),
        1 => (500, "{}".into(), Duration::ZERO),
        2 => verdict("allow", "slow"),
        _ => (200, openai("{}"), Duration::ZERO),
    })
    .await;
    let s = gateway(&judge.url, "      cache: {ttl: 0s}\n");
    let o = decide(&s, "POST http://api.example/v1", b"a").await;
    let r = o.rejection.as_ref().unwrap();
    assert_eq!(
        (r.status, r.kind.as_str(), r.reason),
        (503, "judge_unavailable", "judge_malformed")
    );
    let note = judged(&o);
    assert_eq!(
        (note.verdict, note.fallback, note.cause, note.tokens),
        (
            JudgeVerdict::None,
            FallbackApplied::Deny,
            Some(FallbackCause::Malformed),
            Some(42)
        )
    );
    let o = decide(&s, "POST http://api.example/v1", b"a").await;
    assert_eq!(judged(&o).cause, Some(FallbackCause::Status(500)));
    assert_eq!(
        serde_json::to_value(judged(&o)).unwrap()["cause"],
        "status_500"
    );
    assert_eq!(o.rejection.unwrap().reason, "judge_error");

    // The judge answers long after the 300 ms timeout: whether the gateway gave up at its
    // timeout is read from the order of events (it was back before the answer could be),
    // not from a window around 300 ms.
    let late = Duration::from_secs(30);
    let skip = StandIn::start(move |_, _| (200, verdict("deny", "late").1, late)).await;
    let s = gateway(&skip.url, "      timeout: 300ms\n      fallback: skip\n");
    let o = decide(&s, "POST http://api.example/v1", b"a").await;
    assert_eq!(
        o.decision,
        Decision::Allowed,
        "skip: the late deny is ignored"
    );
    let note = judged(&o);
    assert_eq!(
        (note.fallback, note.cause),
        (FallbackApplied::Skip, Some(FallbackCause::Timeout))
    );
    assert!(
        note.duration_ms >= 300 && u128::from(note.duration_ms) < late.as_millis(),
        "waited out its timeout, not the answer: {note:?}"
    );

    // Nothing listening: an error.
    let s = gateway("http://127.0.0.1:9/v1", "");
    let o = decide(&s, "POST http://api.example/v1", b"a").await;
    assert_eq!(judged(&o).cause, Some(FallbackCause::Error));
}

#[tokio::test]
async fn failures_open_the_breaker_and_a_probe_closes_it() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = healthy.clone();
    let judge = StandIn::start(move |_, _| {
        if h.load(Ordering::SeqCst) {
            verdict("allow", "ok")
        } else {
            (503, "{}".into(), Duration::ZERO)
        }
    })
    .await;
    let s = gateway(
        &judge.url,
        "      circuit_breaker: {failures: 2, cooldown: 2s}\n      cache: {ttl: 0s}\n",
    );
    // The cooldown is generous so the three decisions below fall inside it however slow
    // the machine (their "breaker open" shows they did); the sleep after them outlasts it.
    for _ in 0..2 {
        let o = decide(&s, "POST http://api.example/v1", b"a").await;
        assert_eq!(judged(&o).cause, Some(FallbackCause::Status(503)));
    }
    for _ in 0..3 {
        let o = decide(&s, "POST http://api.example/v1", b"a").await;
        assert_eq!(judged(&o).cause, Some(FallbackCause::BreakerOpen));
        assert_eq!(o.rejection.unwrap().reason, "judge_breaker_open");
    }
    assert_eq!(judge.calls(), 2, "no calls while open");
    tokio::time::sleep(Duration::from_millis(2050)).await;
    healthy.store(true, Ordering::SeqCst);
    let o = decide(&s, "POST http://api.example/v1", b"a").await;
    assert_eq!(judged(&o).verdict, JudgeVerdict::Allow, "the probe");
    decide(&s, "POST http://api.example/v1", b"a").await;
    assert_eq!(judge.calls(), 4, "closed again");
}

#[tokio::test]
async fn over_the_concurrency_cap_is_busy() {
    // The first call is held 2 s by the judge; the second is made once the judge has
    // received the first (not after a fixed pause), so it finds the only slot taken.
    let judge =
        StandIn::start(|_, _| (200, verdict("allow", "ok").1, Duration::from_secs(2))).await;
    let s = gateway(&judge.url, "      max_concurrency: 1\n");
    let (a, b) = tokio::join!(decide(&s, "POST http://api.example/v1", b"a"), async {
        while judge.calls() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        decide(&s, "POST http://api.example/v1", b"b").await
    });
    assert_eq!(judged(&a).verdict, JudgeVerdict::Allow);
    assert_eq!(judged(&b).cause, Some(FallbackCause::Busy));
    assert_eq!(b.rejection.unwrap().reason, "judge_busy");
    assert_eq!(judge.calls(), 1);
}

#[tokio::test]
async fn an_allow_never_widens_the_allowlist() {
    let judge = StandIn::start(|_, _| verdict("allow", "fine by me")).await;
    let yaml = format!(
        "transforms:\n  - name: judge\n    config: {{provider: openai, url: '{}', model: m, policy: p}}\n  - allowlist\n",
        judge.url
    );
    let loaded = parse_str(&yaml, None).unwrap();
    let s = Snapshot::compile(&loaded.config, "v", &|_| None, &Runtime::default()).unwrap();
    let o = decide(&s, "GET http://nowhere.example/", b"").await;
    assert_eq!(judged(&o).verdict, JudgeVerdict::Allow);
    assert_eq!(o.decision, Decision::Denied);
    assert_eq!(o.rejection.unwrap().reason, "no_matching_policy");
}

#[tokio::test]
async fn the_api_key_is_sent_the_providers_way() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "SENTINEL-judge-key\n").unwrap();
    let judge = StandIn::start(|_, _| {
        (
            200,
            json!({"content": [{"type": "text", "text": "{\"verdict\":\"allow\",\"reason\":\"ok\"}"}],
                   "usage": {"input_tokens": 3, "output_tokens": 4}})
            .to_string(),
            Duration::ZERO,
        )
    })
    .await;
    let yaml = format!(
        "policies:\n  - {{name: all, action: allow, rules: [{{host: '*.example'}}]}}\ntransforms:\n  - allowlist\n  - name: judge\n    config: {{provider: anthropic, url: '{}', model: claude, policy: p, api_key: {{file: {}}}}}\n",
        judge.url,
        key.display()
    );
    let loaded = parse_str(&yaml, None).unwrap();
    let s = Snapshot::compile(&loaded.config, "v", &|_| None, &Runtime::default()).unwrap();
    assert_eq!(
        s.pipeline.sources().len(),
        1,
        "the key is refreshed like a secret"
    );
    let o = decide(&s, "GET http://a.example/", b"").await;
    assert_eq!(judged(&o).tokens, Some(7));
    let (headers, body) = judge.received.lock().unwrap()[0].clone();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-api-key").as_deref(), Some("SENTINEL-judge-key"));
    assert_eq!(header("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(header("authorization"), None);
    assert_eq!(body["model"], "claude");
    assert!(
        body["system"]
            .as_str()
            .unwrap()
            .contains("<policy>\np\n</policy>")
    );
    assert_eq!(body["messages"][0]["role"], "user");
    let audit = serde_json::to_string(&o.trace).unwrap();
    assert!(!audit.contains("SENTINEL"), "{audit}");
}

#[test]
fn only_requests_in_a_judges_scope_wait_for_it() {
    let s = gateway("http://127.0.0.1:9/v1", "");
    let r = |line| request(line, &[]);
    assert_eq!(
        s.pipeline.longest_wait(&r("GET http://api.example/x")),
        Some(TIMEOUT)
    );
    assert_eq!(
        s.pipeline.longest_wait(&r("GET http://other.example/x")),
        None
    );
    assert!(s.needs_body(&r("POST http://api.example/x"), &[]));
    assert!(!s.needs_body(&r("POST http://other.example/x"), &[]));
}

#[tokio::test]
async fn a_reload_keeps_the_breaker_and_the_cache() {
    let judge = StandIn::start(|_, _| verdict("allow", "ok")).await;
    let runtime = Runtime::default();
    let compile = |policy: &str| {
        let yaml = format!(
            "policies:\n  - {{name: {policy}, action: allow, rules: [{{host: '*.example'}}]}}\ntransforms:\n  - allowlist\n  - name: judge\n    config: {{provider: openai, url: '{}', model: m, policy: p}}\n",
            judge.url
        );
        let loaded = parse_str(&yaml, None).unwrap();
        Snapshot::compile(&loaded.config, "v", &|_| None, &runtime).unwrap()
    };
    let before = compile("a");
    decide(&before, "GET http://a.example/", b"").await;
    let after = compile("b");
    drop(before);
    let o = decide(&after, "GET http://a.example/", b"").await;
    assert!(judged(&o).cached, "the policy changed, the judge did not");
    assert_eq!(judge.calls(), 1);
}
