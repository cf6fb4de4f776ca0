//! The `judge` transform through the real Envoy: a local OpenAI-compatible stand-in
//! answers scripted verdicts. Allow and deny, the cache, malformed answers and timeouts
//! with each fallback, a judge slower than Envoy's 0.5 s message timeout (Portcullis
//! extends it), the circuit breaker — and neither the secret injected after the judge nor
//! the judge's own API key shows up anywhere it must not.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::common::{Gateway, GatewayOptions, Reply, Upstream, loopback_server};

/// Injected by `secrets` after the judge ran: the judge must never see it.
const UPSTREAM_SECRET: &str = "SENTINEL-upstream-c0ffee91";
/// The judge's own key: the stand-in gets it, nothing the gateway writes may hold it.
const JUDGE_KEY: &str = "SENTINEL-judgekey-77ab";
/// A cookie the workload sends: never part of the summary.
const COOKIE: &str = "SENTINEL-cookie-5e1";
/// The `User-Agent` [`post`] sends (curl's own would name its version).
const USER_AGENT: &str = "portcullis-judge-test/1.0";

/// One call the stand-in received.
#[derive(Debug, Clone)]
struct Call {
    headers: Vec<(String, String)>,
    raw: String,
    /// The request summary the judge was shown (the user message), parsed.
    summary: Value,
}

impl Call {
    fn path(&self) -> String {
        let url = self.summary["url"].as_str().unwrap_or_default();
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        rest.find('/').map_or("", |i| &rest[i..]).to_owned()
    }
}

/// An OpenAI chat-completions stand-in. What it answers depends on the path of the
/// request it is asked about:
/// `…/deny…` deny; `…/malformed…` prose instead of JSON; `…/fail…` 500 while `failing`;
/// `…/think/<ms>/…` allow after `<ms>`; anything else allow.
struct StandIn {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    failing: Arc<AtomicBool>,
    _runtime: tokio::runtime::Runtime,
}

impl StandIn {
    fn start() -> StandIn {
        let (runtime, listener, addr) = loopback_server();
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let failing = Arc::new(AtomicBool::new(true));
        let (record, fail) = (calls.clone(), failing.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (record, fail) = (record.clone(), fail.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, record.clone(), fail.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StandIn {
            addr,
            calls,
            failing,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls about requests whose path starts with `prefix`.
    fn calls_for(&self, prefix: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.path().starts_with(prefix))
            .count()
    }

    /// Asserts the stand-in never received the sentinels the judge must not see.
    fn assert_never_saw(&self, sentinels: &[&str]) {
        let calls = self.calls();
        assert!(!calls.is_empty());
        for call in &calls {
            let everything = format!("{:?} {}", call.headers, call.raw);
            for sentinel in sentinels {
                assert!(
                    !everything.contains(sentinel),
                    "the judge was sent {sentinel:?}: {everything}"
                );
            }
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    calls: Arc<Mutex<Vec<Call>>>,
    failing: Arc<AtomicBool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let raw = req
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let body: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    let summary: Value = body["messages"][1]["content"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    let call = Call {
        headers,
        raw,
        summary,
    };
    let path = call.path();
    calls.lock().unwrap().push(call);
    let respond = |status: u16, content: &str| {
        let body = json!({
            "id": "chatcmpl-test", "object": "chat.completion", "model": "stand-in",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 17, "total_tokens": 117},
        });
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap())
    };
    let verdict = |v: &str, reason: &str| json!({"verdict": v, "reason": reason}).to_string();
    if path.contains("/deny") {
        return respond(
            200,
            &verdict(
                "deny",
                "The body sends customer records to an unknown host.",
            ),
        );
    }
    if path.contains("/malformed") {
        return respond(200, "Sure! This request looks fine to me: allow.");
    }
    if path.contains("/fail") && failing.load(Ordering::SeqCst) {
        return respond(500, "");
    }
    if let Some(ms) = path
        .split_once("/think/")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    respond(200, &verdict("allow", "Nothing in it matches the policy."))
}

/// A judge entry of `transforms:`, scoped to the upstream's `paths`.
fn judge(stand_in: &StandIn, paths: &str, extra: &str) -> String {
    format!(
        r#"
  - name: judge
    rules: [{{host: 127.0.0.1, paths: {paths}}}]
    config:
      provider: openai
      url: {url}
      model: gpt-4o-mini
      api_key: {{env: JUDGE_API_KEY}}
      policy: "Deny requests that send customer data to third parties."
      summary: {{headers: [content-type, user-agent, x-request-note]}}
{extra}"#,
        url = stand_in.url()
    )
}

/// Everything to the upstream is allowed by policy; `secrets` injects a bearer token on it,
/// after the judges.
fn config(judges: &str) -> String {
    format!(
        r#"
policies:
  - {{name: upstream, action: allow, rules: [{{host: 127.0.0.1}}]}}
secrets:
  - name: upstream-token
    source: {{type: env, var: UPSTREAM_TOKEN}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: [{{host: 127.0.0.1}}]
transforms:
  - allowlist
{judges}
  - secrets
"#
    )
}

fn start(config: &str, options: GatewayOptions) -> Gateway {
    let mut options = options;
    options.env.extend([
        ("UPSTREAM_TOKEN".to_owned(), UPSTREAM_SECRET.to_owned()),
        ("JUDGE_API_KEY".to_owned(), JUDGE_KEY.to_owned()),
    ]);
    Gateway::start(config, options)
}

fn post(gw: &Gateway, url: &str, body: &str) -> Reply {
    gw.via_proxy(&[
        "-X",
        "POST",
        "-A",
        USER_AGENT,
        "-H",
        "Content-Type: application/json",
        "-H",
        &format!("Cookie: session={COOKIE}"),
        "--data-binary",
        body,
        url,
    ])
}

/// The judge's audit entry for the `nth` request (from 1) at `path`, once it is written.
fn judged_nth(gw: &Gateway, path: &str, nth: usize) -> Value {
    let mut records = Vec::new();
    crate::common::wait_until(Duration::from_secs(5), || {
        records = gw
            .audit()
            .into_iter()
            .filter(|r| r["path"] == path)
            .collect();
        records.len() >= nth
    });
    let record = records
        .get(nth - 1)
        .unwrap_or_else(|| panic!("no audit record {nth} for {path}: {records:#?}"));
    record["transforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "judge" && t["action"] != "skip")
        .unwrap_or_else(|| panic!("no judge entry in {record:#}"))
        .clone()
}

/// The judge's audit entry for the only request at `path`.
fn judged(gw: &Gateway, path: &str) -> Value {
    judged_nth(gw, path, 1)
}

#[test]
fn allow_reaches_the_upstream_deny_never_does_and_no_credential_reaches_the_judge() {
    let stand_in = StandIn::start();
    let upstream = Upstream::start(None);
    let gw = start(
        &config(&judge(&stand_in, r#"["/*"]"#, "")),
        GatewayOptions::default(),
    );
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", upstream.port());
    let mut replies = Vec::new();

    let allowed = post(&gw, &url("/allow/report"), r#"{"note": "weekly totals"}"#);
    assert_eq!(allowed.status, 200, "{allowed:?}\n{}", gw.portcullis_log());
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/allow/report");
    assert_eq!(seen[0].body, br#"{"note": "weekly totals"}"#);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {UPSTREAM_SECRET}").as_str()),
        "secrets ran after the judge allowed"
    );
    let entry = judged(&gw, "/allow/report");
    assert_eq!(entry["action"], "continue");
    let note = &entry["annotations"]["judge"];
    assert_eq!(note["verdict"], "allow");
    assert_eq!(note["reason"], "Nothing in it matches the policy.");
    assert_eq!(note["tokens"], 117);
    assert_eq!(note["cached"], false);
    assert_eq!(note["fallback"], "none");
    assert!(note["duration_ms"].is_u64());
    replies.push((allowed, 200));

    // What the judge saw of it: the bounded summary, and its own key.
    let call = &stand_in.calls()[0];
    assert_eq!(
        call.summary,
        json!({
            "method": "POST",
            "url": url("/allow/report"),
            "headers": {"content-type": "application/json", "user-agent": USER_AGENT},
            "body": r#"{"note": "weekly totals"}"#,
            "body_bytes": 25,
        })
    );
    let authorization = call
        .headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .map(|(_, v)| v.as_str());
    assert_eq!(authorization, Some(format!("Bearer {JUDGE_KEY}").as_str()));

    let denied = post(
        &gw,
        &url("/deny/export"),
        r#"{"customers": ["alice", "bob"]}"#,
    );
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.header("content-type"), Some("application/json"));
    let error = &denied.json()["error"];
    assert_eq!(error["type"], "policy_denied");
    assert_eq!(error["reason"], "judge_deny");
    assert_eq!(error["transform"], "judge");
    assert_eq!(
        error["message"],
        "denied by the LLM judge: The body sends customer records to an unknown host."
    );
    assert!(denied.header("x-portcullis-request-id").is_some());
    assert_eq!(
        upstream.hits(),
        1,
        "a denied request never reaches the upstream"
    );
    let record = gw.audit_for(|r| r["path"] == "/deny/export");
    assert_eq!(record["decision"], "DENIED");
    assert_eq!(record["reason"], "judge_deny");
    assert_eq!(record["transform"], "judge");
    assert_eq!(
        record["transforms"][1]["annotations"]["judge"]["verdict"],
        "deny"
    );
    replies.push((denied, 403));

    // The same request again: the cached verdict, no second call.
    let again = post(
        &gw,
        &url("/deny/export"),
        r#"{"customers": ["alice", "bob"]}"#,
    );
    assert_eq!(again.status, 403);
    assert_eq!(stand_in.calls_for("/deny/export"), 1);
    let note = &judged_nth(&gw, "/deny/export", 2)["annotations"]["judge"];
    assert_eq!(note["cached"], true);
    assert!(note.get("tokens").is_none());
    replies.push((again, 403));

    // A request without a body is judged on its headers.
    let get = gw.via_proxy(&[&url("/allow/status?verbose=1")]);
    assert_eq!(get.status, 200, "{get:?}");
    let call = stand_in.calls().pop().unwrap();
    assert_eq!(call.summary["method"], "GET");
    assert_eq!(call.summary["url"], url("/allow/status?verbose=1"));
    assert!(call.summary.get("body").is_none());
    replies.push((get, 200));

    // Envoy was asked to wait longer before each call, and did.
    assert_eq!(
        gw.envoy_counter("ext_proc.portcullis.override_message_timeout_received"),
        4,
        "one extension per request in the judge's scope (the cached one too)"
    );
    assert_eq!(
        gw.envoy_counter("ext_proc.portcullis.override_message_timeout_ignored"),
        0
    );
    assert_eq!(
        gw.metric(r#"portcullis_judge_verdicts_total{outcome="judged",verdict="allow"}"#),
        Some(2.0)
    );
    assert_eq!(
        gw.metric(r#"portcullis_judge_verdicts_total{outcome="cached",verdict="deny"}"#),
        Some(1.0)
    );
    assert_eq!(gw.metric("portcullis_judge_tokens_total"), Some(351.0));

    stand_in.assert_never_saw(&[UPSTREAM_SECRET, COOKIE]);
    let replies: Vec<(&Reply, u16)> = replies.iter().map(|(r, status)| (r, *status)).collect();
    gw.assert_no_leaks_checked(&[UPSTREAM_SECRET, JUDGE_KEY, COOKIE], &replies);
}

#[test]
fn a_judge_slower_than_envoys_message_timeout_is_waited_for_and_timeouts_fall_back() {
    let stand_in = StandIn::start();
    let upstream = Upstream::start(None);
    let judges = [
        // Slower than Envoy's 0.5 s, well within its own timeout (generous: a shared
        // machine).
        judge(&stand_in, r#"["/think/*"]"#, "      timeout: 10s\n"),
        // A tight timeout, each fallback.
        judge(
            &stand_in,
            r#"["/strict/*"]"#,
            "      timeout: 300ms\n      fallback: deny\n",
        ),
        judge(
            &stand_in,
            r#"["/lenient/*"]"#,
            "      timeout: 300ms\n      fallback: skip\n",
        ),
    ]
    .concat();
    let gw = start(&config(&judges), GatewayOptions::default());
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", upstream.port());
    let mut replies = Vec::new();

    // Decided on the headers, and on the buffered body: both phases wait.
    for (path, body) in [
        ("/think/800/headers-only", None),
        ("/think/800/body", Some("x")),
    ] {
        let started = Instant::now();
        let reply = match body {
            None => gw.via_proxy(&[&url(path)]),
            Some(body) => post(&gw, &url(path), body),
        };
        assert_eq!(reply.status, 200, "{path}: {reply:?}\n{}", gw.envoy_log());
        assert!(started.elapsed() >= Duration::from_millis(800));
        assert_eq!(
            judged(&gw, path)["annotations"]["judge"]["verdict"],
            "allow"
        );
        replies.push((reply, 200));
    }

    // The judge takes 1 s, the timeout is 300 ms: the fallback applies, and Envoy (told to
    // wait 1.3 s) gets the answer.
    let strict = post(&gw, &url("/strict/think/1000/x"), "{}");
    assert_eq!(strict.status, 503, "{strict:?}");
    let error = &strict.json()["error"];
    assert_eq!(error["type"], "judge_unavailable");
    assert_eq!(error["reason"], "judge_timeout");
    let note = &judged(&gw, "/strict/think/1000/x")["annotations"]["judge"];
    assert_eq!(
        (&note["verdict"], &note["fallback"], &note["cause"]),
        (&json!("none"), &json!("deny"), &json!("timeout"))
    );
    replies.push((strict, 503));

    let lenient = post(&gw, &url("/lenient/think/1000/x"), "{}");
    assert_eq!(lenient.status, 200, "skip: the request goes on");
    let note = &judged(&gw, "/lenient/think/1000/x")["annotations"]["judge"];
    assert_eq!(
        (&note["fallback"], &note["cause"]),
        (&json!("skip"), &json!("timeout"))
    );
    replies.push((lenient, 200));

    // Prose instead of the JSON verdict: malformed, each fallback.
    let strict = post(&gw, &url("/strict/malformed"), "{}");
    assert_eq!(strict.status, 503);
    assert_eq!(strict.json()["error"]["reason"], "judge_malformed");
    let note = &judged(&gw, "/strict/malformed")["annotations"]["judge"];
    assert_eq!(note["cause"], "malformed");
    assert_eq!(note["tokens"], 117, "the tokens were billed anyway");
    replies.push((strict, 503));
    let lenient = post(&gw, &url("/lenient/malformed"), "{}");
    assert_eq!(lenient.status, 200);
    assert_eq!(
        judged(&gw, "/lenient/malformed")["annotations"]["judge"]["cause"],
        "malformed"
    );
    replies.push((lenient, 200));
    assert_eq!(
        upstream
            .seen()
            .iter()
            .filter(|s| s.path.starts_with("/strict"))
            .count(),
        0,
        "fallback deny: nothing reached the upstream"
    );
    assert_eq!(
        gw.metric(r#"portcullis_judge_fallbacks_total{cause="timeout"}"#),
        Some(2.0)
    );
    assert_eq!(
        gw.metric(r#"portcullis_judge_verdicts_total{outcome="fallback_skip",verdict="none"}"#),
        Some(2.0)
    );
    stand_in.assert_never_saw(&[UPSTREAM_SECRET, COOKIE]);
    let replies: Vec<(&Reply, u16)> = replies.iter().map(|(r, status)| (r, *status)).collect();
    gw.assert_no_leaks_checked(&[UPSTREAM_SECRET, JUDGE_KEY, COOKIE], &replies);
}

#[test]
fn without_the_timeout_extension_envoy_would_fail_a_slow_judge() {
    // The control for the test above: an Envoy that refuses the extension (its
    // max_message_timeout is below what Portcullis asks for) fails the same request.
    let stand_in = StandIn::start();
    let upstream = Upstream::start(None);
    let gw = start(
        &config(&judge(
            &stand_in,
            r#"["/think/*"]"#,
            "      timeout: 1500ms\n",
        )),
        GatewayOptions {
            envoy_edits: vec![(
                "max_message_timeout: 30s".into(),
                "max_message_timeout: 1s".into(),
            )],
            ..GatewayOptions::default()
        },
    );
    let reply = gw.via_proxy(&[&format!("http://127.0.0.1:{}/think/800/x", upstream.port())]);
    assert_eq!(
        reply.status, 504,
        "Envoy's message timeout fired: {reply:?}"
    );
    assert_eq!(upstream.hits(), 0);
    assert_eq!(
        gw.envoy_counter("ext_proc.portcullis.override_message_timeout_ignored"),
        1
    );
}

#[test]
fn failures_open_the_breaker_and_the_judge_is_left_alone_until_a_probe() {
    // The cooldown is generous, so the requests below are all made inside it however slow
    // the machine; the breaker's own answer ("breaker open", no call) shows they were.
    const COOLDOWN: Duration = Duration::from_secs(10);
    let stand_in = StandIn::start();
    let upstream = Upstream::start(None);
    let gw = start(
        &config(&judge(
            &stand_in,
            r#"["/fail/*"]"#,
            "      circuit_breaker: {failures: 3, cooldown: 10s}\n      cache: {ttl: 0s}\n",
        )),
        GatewayOptions::default(),
    );
    let url = format!("http://127.0.0.1:{}/fail/x", upstream.port());
    let mut replies = Vec::new();
    for n in 1..=3 {
        let reply = post(&gw, &url, "{}");
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(reply.json()["error"]["reason"], "judge_error");
        assert_eq!(
            judged_nth(&gw, "/fail/x", n)["annotations"]["judge"]["cause"],
            "status_500"
        );
        replies.push((reply, 503));
    }
    // The breaker opened while the third failure was answered: before this instant.
    let opened = Instant::now();
    for _ in 0..3 {
        let reply = post(&gw, &url, "{}");
        assert_eq!(reply.status, 503);
        assert_eq!(reply.json()["error"]["reason"], "judge_breaker_open");
        replies.push((reply, 503));
    }
    eprintln!(
        "judge: three requests refused by the open breaker within {} ms of its opening",
        opened.elapsed().as_millis()
    );
    assert_eq!(
        stand_in.calls_for("/fail/x"),
        3,
        "no calls while the breaker is open"
    );
    let note = &judged_nth(&gw, "/fail/x", 6)["annotations"]["judge"];
    assert_eq!(
        (&note["cause"], &note["fallback"], &note["verdict"]),
        (&json!("breaker_open"), &json!("deny"), &json!("none"))
    );
    assert!(
        gw.portcullis_log()
            .contains("LLM judge circuit breaker opened"),
        "{}",
        gw.portcullis_log()
    );

    // The judge recovers; after the cooldown (counted from `opened`, which is after the
    // breaker opened) one probe closes the breaker.
    stand_in.failing.store(false, Ordering::SeqCst);
    std::thread::sleep(COOLDOWN.saturating_sub(opened.elapsed()) + Duration::from_millis(100));
    let reply = post(&gw, &url, "{}");
    assert_eq!(reply.status, 200, "{reply:?}");
    replies.push((reply, 200));
    let reply = post(&gw, &url, "{}");
    assert_eq!(reply.status, 200);
    replies.push((reply, 200));
    assert_eq!(stand_in.calls_for("/fail/x"), 5);
    assert_eq!(
        gw.metric(r#"portcullis_judge_fallbacks_total{cause="breaker_open"}"#),
        Some(3.0)
    );
    assert_eq!(
        gw.metric(r#"portcullis_judge_fallbacks_total{cause="status"}"#),
        Some(3.0)
    );
    let replies: Vec<(&Reply, u16)> = replies.iter().map(|(r, status)| (r, *status)).collect();
    gw.assert_no_leaks_checked(&[UPSTREAM_SECRET, JUDGE_KEY, COOKIE], &replies);
}
