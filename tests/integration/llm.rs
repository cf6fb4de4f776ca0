//! LLM calls through the real Envoy: budgets crossed by a stand-in LLM's streamed answers
//! (and the call refused with 429 `budget_exceeded` before it leaves), the usage in the
//! audit trail, the metrics and `/v1/budgets`; and `response_dlp` redacting what an
//! upstream reflects, in a JSON body and in a stream that stays a stream, or refusing it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::llm::{INPUT_TOKENS, LlmOptions, LlmServer, OUTPUT_TOKENS};
use crate::common::{Gateway, GatewayOptions, wait_until};

const ALPHA: &str = "ptok-llm-alpha-1c5e9a";
const BETA: &str = "ptok-llm-beta-7f20d4";
const VIEWER: &str = "llm-viewer-token-88b1";
/// What the "model" is made to say: a credential-shaped value (AWS's documented example).
const LEAKED: &str = "AKIAIOSFODNN7EXAMPLE";

fn gateway(transforms: &str) -> Gateway {
    let config = format!(
        r#"
identities:
  - {{name: alpha, token: {{env: ALPHA_TOKEN}}, tags: ["team:ml"]}}
  - {{name: beta, token: {{env: BETA_TOKEN}}, tags: ["team:web"]}}
admin: {{tokens: [{{name: ops, role: viewer, token: {{env: VIEWER_TOKEN}}}}]}}
policies:
  - {{name: llm, action: allow, rules: [{{host: 127.0.0.1}}]}}
transforms:
{transforms}
"#
    );
    Gateway::start(
        &config,
        GatewayOptions {
            env: vec![
                ("ALPHA_TOKEN".into(), ALPHA.into()),
                ("BETA_TOKEN".into(), BETA.into()),
                ("VIEWER_TOKEN".into(), VIEWER.into()),
            ],
            ..GatewayOptions::default()
        },
    )
}

/// POSTs `body` to `path` on the stand-in through the gateway as `token`'s workload,
/// reading a stream as it comes (`-N`).
fn call(
    gw: &Gateway,
    llm: &LlmServer,
    token: &str,
    path: &str,
    body: &Value,
) -> crate::common::Reply {
    let auth = format!("Proxy-Authorization: Bearer {token}");
    let url = format!("http://127.0.0.1:{}{path}", llm.port());
    let body = body.to_string();
    gw.via_proxy(&[
        "-N",
        "-H",
        &auth,
        "-H",
        "content-type: application/json",
        "-H",
        "accept-encoding: gzip",
        "-d",
        &body,
        &url,
    ])
}

fn chat(text: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "stream": stream,
           "messages": [{"role": "user", "content": text}]})
}

#[test]
fn a_budget_is_crossed_by_streamed_answers_and_the_next_call_is_refused_before_it_leaves() {
    let llm = LlmServer::start(LlmOptions::default());
    // 400 tokens a day per identity: each call uses 150, so the third crosses it.
    let gw = gateway(
        "  - allowlist\n  - {name: budget, rules: [{host: 127.0.0.1}], \
         config: {per: day, tokens: 400, key: identity}}",
    );
    for n in 1..=3 {
        let streamed = call(
            &gw,
            &llm,
            ALPHA,
            "/v1/chat/completions",
            &chat("one two three four five", true),
        );
        assert_eq!(
            streamed.status,
            200,
            "call {n}: {streamed:?}\n{}",
            gw.portcullis_log()
        );
        assert!(
            streamed.body.contains("\"content\":\"one \""),
            "{}",
            streamed.body
        );
        assert!(
            streamed.body.ends_with("data: [DONE]\n\n"),
            "{}",
            streamed.body
        );
    }
    // The workload streamed without asking for usage: the gateway asked for it, and for
    // an answer it can read.
    let calls = llm.calls();
    assert_eq!(calls.len(), 3);
    for c in &calls {
        assert_eq!(c.path, "/v1/chat/completions");
        assert_eq!(
            c.body["stream_options"]["include_usage"], true,
            "{:?}",
            c.body
        );
        assert_eq!(c.accept_encoding.as_deref(), Some("identity"));
    }
    // Each call's usage, charged, in the audit trail.
    let charged = |identity: &str| -> Vec<Value> {
        gw.audit_lines()
            .into_iter()
            .filter(|l| l["event"] == "llm_usage" && l["identity"] == identity)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || charged("alpha").len() == 3),
        "{:?}\n{}",
        gw.audit_lines(),
        gw.portcullis_log()
    );
    let last = charged("alpha").pop().unwrap();
    assert_eq!(last["input_tokens"], INPUT_TOKENS, "{last}");
    assert_eq!(last["output_tokens"], OUTPUT_TOKENS);
    assert_eq!(last["model"], "gpt-4o-mini");
    assert_eq!(last["window_tokens"], 3 * (INPUT_TOKENS + OUTPUT_TOKENS));
    assert_eq!(last["key"], "alpha");

    // Over budget: refused with 429 and the contract's body, before reaching the LLM.
    let refused = call(
        &gw,
        &llm,
        ALPHA,
        "/v1/chat/completions",
        &chat("again", false),
    );
    assert_eq!(refused.status, 429, "{refused:?}");
    let error = &refused.json()["error"];
    assert_eq!(error["type"], "budget_exceeded", "{error}");
    assert_eq!(error["transform"], "budget");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("450 of 400 tokens"),
        "{error}"
    );
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    assert_eq!(llm.calls().len(), 3);

    // Another identity has its own budget; Anthropic's and Gemini's streams are read too.
    let anthropic = json!({"model": "claude-sonnet-4", "stream": true, "max_tokens": 64,
                           "messages": [{"role": "user", "content": "hello there"}]});
    let streamed = call(&gw, &llm, BETA, "/v1/messages", &anthropic);
    assert_eq!(streamed.status, 200, "{streamed:?}");
    assert!(
        streamed.body.contains("event: message_stop"),
        "{}",
        streamed.body
    );
    let gemini = json!({"contents": [{"role": "user", "parts": [{"text": "hi you"}]}]});
    let streamed = call(
        &gw,
        &llm,
        BETA,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        &gemini,
    );
    assert_eq!(streamed.status, 200, "{streamed:?}");
    assert!(wait_until(Duration::from_secs(5), || charged("beta").len() == 2));
    let models: Vec<Value> = charged("beta").iter().map(|l| l["model"].clone()).collect();
    assert_eq!(
        models,
        vec![json!("claude-sonnet-4"), json!("gemini-2.5-flash")]
    );
    assert_eq!(
        charged("beta")[1]["window_tokens"],
        2 * (INPUT_TOKENS + OUTPUT_TOKENS)
    );

    // What each key spent, as the API and the metrics report it.
    let budgets = gw.api("GET", "/v1/budgets", Some(VIEWER), None);
    assert_eq!(budgets.status, 200, "{budgets:?}");
    let budget = &budgets.json()["budgets"][0];
    assert_eq!(budget["transform"], "transforms[1]", "{budget}");
    assert_eq!(budget["per"], "day");
    assert_eq!(budget["tokens"], 400);
    assert_eq!(
        budget["keys"][0],
        json!({"key": "alpha", "tokens": 450, "cost": 0.0})
    );
    let output = gw
        .metric("portcullis_llm_tokens_total{budget=\"transforms[1]\",kind=\"output\"}")
        .unwrap_or_default();
    assert_eq!(output, (5 * OUTPUT_TOKENS) as f64);
    gw.assert_no_leaks(&[ALPHA, BETA, VIEWER], &[]);
}

#[test]
fn hanging_up_before_the_end_of_a_stream_still_charges_what_it_reported() {
    let llm = LlmServer::start(LlmOptions {
        first_delay: Duration::from_millis(10),
        chunk_delay: Duration::from_millis(400),
        chunks: 5,
    });
    let gw = gateway(
        "  - allowlist\n  - {name: budget, config: {per: hour, tokens: 1000, key: identity}}",
    );
    let auth = format!("Proxy-Authorization: Bearer {ALPHA}");
    let url = format!("http://127.0.0.1:{}/v1/messages", llm.port());
    let body = json!({"model": "claude-sonnet-4", "stream": true,
                      "messages": [{"role": "user", "content": "a b c d e"}]})
    .to_string();
    // The workload reads message_start (with its input tokens) and hangs up.
    let cut = gw.via_proxy(&["-N", "--max-time", "0.3", "-H", &auth, "-d", &body, &url]);
    assert!(cut.body.contains("message_start"), "{cut:?}");
    let charged = wait_until(Duration::from_secs(5), || {
        gw.audit_lines().iter().any(|l| {
            l["event"] == "llm_usage"
                && l["identity"] == "alpha"
                && l["input_tokens"] == INPUT_TOKENS
        })
    });
    assert!(charged, "{}", gw.portcullis_log());
}

const SECRET_TEXT: &str = "the deploy key is AKIAIOSFODNN7EXAMPLE and that is all";

#[test]
fn responses_are_redacted_in_json_and_in_streams_or_refused() {
    let llm = LlmServer::start(LlmOptions {
        chunks: 4,
        ..LlmOptions::default()
    });
    // OpenAI's answers are redacted; Anthropic's refused.
    let gw = gateway(
        "  - allowlist\n  - {name: response_dlp, rules: [{host: 127.0.0.1, paths: [/v1/chat/*]}], \
         config: {action: redact}}\n  - {name: response_dlp, rules: [{host: 127.0.0.1, paths: [/v1/messages]}], \
         config: {action: deny}}",
    );
    // A JSON answer: the upstream reflects the credential, the workload reads it redacted.
    let whole = call(
        &gw,
        &llm,
        ALPHA,
        "/v1/chat/completions",
        &chat(SECRET_TEXT, false),
    );
    assert_eq!(whole.status, 200, "{whole:?}\n{}", gw.portcullis_log());
    assert!(!whole.body.contains(LEAKED), "{}", whole.body);
    let content = whole.json()["choices"][0]["message"]["content"].clone();
    assert_eq!(
        content,
        "the deploy key is [REDACTED:aws_access_key] and that is all"
    );
    // A stream: still a stream of events, the one holding the credential redacted.
    let streamed = call(
        &gw,
        &llm,
        ALPHA,
        "/v1/chat/completions",
        &chat(SECRET_TEXT, true),
    );
    assert_eq!(streamed.status, 200, "{streamed:?}");
    assert!(!streamed.body.contains(LEAKED), "{}", streamed.body);
    assert!(
        streamed.body.contains("[REDACTED:aws_access_key]"),
        "{}",
        streamed.body
    );
    let events = streamed.body.matches("data: ").count();
    // Nine words in pieces of three, and [DONE].
    assert_eq!(events, 4, "{:?}", streamed.body);
    // Refused: a JSON answer becomes a 502 with the contract's body, not a cut one.
    let anthropic = |stream: bool| {
        json!({"model": "claude-sonnet-4", "stream": stream,
               "messages": [{"role": "user", "content": SECRET_TEXT}]})
    };
    let refused = call(&gw, &llm, ALPHA, "/v1/messages", &anthropic(false));
    assert_eq!(refused.status, 502, "{refused:?}");
    assert_eq!(refused.json()["error"]["type"], "response_refused");
    assert!(!refused.body.contains(LEAKED));
    // A refused stream ends with an error event where the credential would have been.
    let stream = call(&gw, &llm, ALPHA, "/v1/messages", &anthropic(true));
    assert_eq!(stream.status, 200, "{stream:?}");
    assert!(!stream.body.contains(LEAKED), "{}", stream.body);
    assert!(
        stream.body.contains("event: message_start"),
        "{}",
        stream.body
    );
    assert!(stream.body.trim_end().ends_with("}}"), "{}", stream.body);
    assert!(
        stream.body.contains("event: error\ndata: {\"error\""),
        "{}",
        stream.body
    );
    assert!(!stream.body.contains("message_stop"), "{}", stream.body);
    // What was found, by detector and action, never the value.
    let inspected: Vec<Value> = gw
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "response_inspected")
        .collect();
    let outcomes: Vec<&str> = inspected
        .iter()
        .filter_map(|l| l["outcome"].as_str())
        .collect();
    assert_eq!(
        outcomes,
        ["redacted", "redacted", "denied", "denied"],
        "{inspected:?}"
    );
    assert_eq!(
        inspected[0]["findings"],
        json!([{"detector": "aws_access_key", "count": 1}])
    );
    assert!(
        gw.metric(
            "portcullis_response_findings_total{action=\"redact\",detector=\"aws_access_key\"}"
        )
        .is_some_and(|n| n == 2.0)
    );
    gw.assert_no_leaks(&[LEAKED, ALPHA], &[]);
}

/// Time to first token and total time of a streamed answer (100 events, 2 ms apart) direct,
/// through Envoy and Portcullis with nothing watching the response, and with a budget and
/// `response_dlp` reading it: medians and p90 of 40 interleaved runs each. A benchmark
/// (times, not a pass or fail); BENCHMARKS.md records its output.
#[test]
#[ignore = "a benchmark: cargo test --test integration llm::time_to_first_token_bench -- --ignored --nocapture"]
fn time_to_first_token_bench() {
    use std::time::Instant;
    let llm = LlmServer::start(LlmOptions {
        first_delay: Duration::from_millis(5),
        chunk_delay: Duration::from_millis(2),
        chunks: 100,
    });
    let plain = gateway("  - allowlist");
    let watched = gateway(
        "  - allowlist\n  - {name: budget, config: {per: day, tokens: 1000000000}}\n  - response_dlp",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = |proxy: Option<u16>| {
        let mut builder = reqwest::Client::builder().no_proxy();
        if let Some(port) = proxy {
            let auth = format!("Bearer {ALPHA}");
            builder = builder.proxy(
                reqwest::Proxy::http(format!("http://127.0.0.1:{port}"))
                    .unwrap()
                    .custom_http_auth(auth.parse().unwrap()),
            );
        }
        builder.build().unwrap()
    };
    let words: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    let body = chat(&words.join(" "), true).to_string();
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", llm.port());
    let paths = [
        ("direct", client(None)),
        ("Envoy + Portcullis", client(Some(plain.proxy_port))),
        (
            "… + budget + response_dlp",
            client(Some(watched.proxy_port)),
        ),
    ];
    let mut times: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); paths.len()];
    runtime.block_on(async {
        for round in 0..45 {
            for (i, (_, client)) in paths.iter().enumerate() {
                let started = Instant::now();
                let mut response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let mut first = None;
                let mut bytes = 0;
                while let Some(chunk) = response.chunk().await.unwrap() {
                    if first.is_none() && !chunk.is_empty() {
                        first = Some(started.elapsed());
                    }
                    bytes += chunk.len();
                }
                assert!(bytes > 100 * 50, "{bytes}");
                // The first rounds warm connections and caches.
                if round >= 5 {
                    times[i].0.push(first.unwrap().as_secs_f64() * 1000.0);
                    times[i].1.push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
    });
    let stat = |values: &mut Vec<f64>, q: f64| {
        values.sort_by(f64::total_cmp);
        values[((values.len() - 1) as f64 * q).round() as usize]
    };
    println!("| path | TTFT p50 | TTFT p90 | total p50 | total p90 |");
    println!("|---|---:|---:|---:|---:|");
    for ((name, _), (first, total)) in paths.iter().zip(times.iter_mut()) {
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.1} ms | {:.1} ms |",
            stat(first, 0.5),
            stat(first, 0.9),
            stat(total, 0.5),
            stat(total, 0.9)
        );
    }
}
