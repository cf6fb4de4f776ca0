//! Agent-aware policy conditions through Envoy: prompt content, action types, headers and
//! CEL on the agent's tags, and a gated policy — each checked by what the upstream saw,
//! what the workload got, and how many ext_proc messages Envoy sent (headers only, or the
//! body too).

use crate::common::{Gateway, GatewayOptions, Reply, Upstream};

const CLAUDE: &str = "SENTINEL-agent-token-claude-41f0";
const CURSOR: &str = "SENTINEL-agent-token-cursor-7a2c";

const CONFIG: &str = r#"
gateway: {max_body_bytes: 65536}
identities:
  - {name: claude, token: {env: CLAUDE_TOKEN}, tags: [agent:claude-code, team:infra]}
  - {name: cursor, token: {env: CURSOR_TOKEN}, tags: [agent:cursor]}
policies:
  - name: no-credentials-in-prompts
    priority: 10
    action: deny
    message: "prompt carries an AWS secret key name"
    rules:
      - host: "*"
        action_types: [chat_completion]
        prompt: {contains: [aws_secret_access_key]}
  - name: claude-may-not-embed
    priority: 20
    action: deny
    rules:
      - host: "*"
        action_types: [embedding]
        cel: 'agent.slug == "claude-code"'
  - name: session-header-required
    priority: 30
    action: deny
    rules:
      - host: "*"
        paths: ["/v1/*"]
        headers: [{name: x-agent-session, present: false}]
  - name: admin-for-infra-only
    priority: 40
    action: gated
    condition: 'identity.labels.team == "infra"'
    rules:
      - host: "*"
        paths: ["/admin/*"]
  - name: flag-sensitive-intents
    priority: 50
    action: flag
    rules:
      - host: "*"
        prompt: {contains: [salary, customer list, production database]}
  - name: default-allow
    priority: 1000
    action: allow
    rules: [{host: "*"}]
"#;

fn start() -> (Upstream, Gateway) {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(
        CONFIG,
        GatewayOptions {
            env: vec![
                ("CLAUDE_TOKEN".into(), CLAUDE.into()),
                ("CURSOR_TOKEN".into(), CURSOR.into()),
            ],
            ..GatewayOptions::default()
        },
    );
    // Envoy's ext_proc counters settle after the first stream; count from the second.
    let warm_up = format!("http://127.0.0.1:{}/warm-up", upstream.port());
    send(&gw, CURSOR, &[&warm_up]);
    (upstream, gw)
}

/// Sends one request and returns the reply and the ext_proc messages Envoy sent for it:
/// 1 when it was decided on its headers, 2 when its body was buffered too.
fn send(gw: &Gateway, token: &str, args: &[&str]) -> (Reply, u64) {
    let auth = format!("Proxy-Authorization: Bearer {token}");
    let mut all = vec!["-H", &auth, "-H", "X-Agent-Session: s-1"];
    all.extend_from_slice(args);
    gw.via_proxy_counting_messages(&all)
}

fn post<'a>(url: &'a str, body: &'a str) -> Vec<&'a str> {
    vec![
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
        url,
    ]
}

#[test]
fn prompt_content_denies_a_credential_leak_and_flags_sensitive_intents() {
    let (upstream, gw) = start();
    let chat = format!("http://127.0.0.1:{}/v1/chat/completions", upstream.port());

    let leak = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"here is my aws_secret_access_key = SENTINEL-prompt-aws-93ab"}]}"#;
    let (denied, messages) = send(&gw, CLAUDE, &post(&chat, leak));
    assert_eq!(denied.status, 403, "{denied:?}\n{}", gw.portcullis_log());
    assert_eq!(
        denied.json()["error"]["policy"],
        "no-credentials-in-prompts"
    );
    assert_eq!(messages, 2, "the prompt rule needs the body");
    assert_eq!(upstream.hits(), 1, "only the warm-up");

    // The same words outside the prompt (the model name, a metadata field) are not prompt.
    let elsewhere = r#"{"model":"aws_secret_access_key","metadata":{"note":"aws_secret_access_key"},"messages":[{"role":"user","content":"hello"}]}"#;
    let (passed, _) = send(&gw, CLAUDE, &post(&chat, elsewhere));
    assert_eq!(passed.status, 200, "{passed:?}");
    let record =
        gw.audit_for(|r| r["decision"] == "ALLOWED" && r["path"] == "/v1/chat/completions");
    assert_eq!(record["policy"], "default-allow");

    // Anthropic's shape: the system prompt and content blocks are prompt too.
    let anthropic = format!("http://127.0.0.1:{}/v1/messages", upstream.port());
    let body = r#"{"model":"claude","system":"the production database password is hunter2","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#;
    let (flagged, _) = send(&gw, CLAUDE, &post(&anthropic, body));
    assert_eq!(flagged.status, 200, "{flagged:?}");
    let record = gw.audit_for(|r| r["path"] == "/v1/messages");
    assert_eq!(record["decision"], "FLAGGED");
    assert_eq!(record["policy"], "flag-sensitive-intents");
    assert_eq!(upstream.hits(), 3);

    let records = serde_json::to_string(&gw.audit()).unwrap();
    assert!(
        !records.contains("SENTINEL-prompt"),
        "no prompt text in audit"
    );
    assert!(
        !gw.all_output().contains("SENTINEL-prompt"),
        "no prompt text in logs"
    );
}

#[test]
fn action_types_and_cel_on_the_agent_tag_decide_on_headers() {
    let (upstream, gw) = start();
    let base = format!("http://127.0.0.1:{}", upstream.port());
    let embeddings = format!("{base}/v1/embeddings");
    let chat = format!("{base}/v1/chat/completions");
    let body = r#"{"model":"text-embedding-3-small","input":"hello"}"#;

    let (denied, messages) = send(&gw, CLAUDE, &post(&embeddings, body));
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json()["error"]["policy"], "claude-may-not-embed");
    assert_eq!(
        messages, 1,
        "action type by path and CEL on tags need no body"
    );

    let (allowed, messages) = send(&gw, CURSOR, &post(&embeddings, body));
    assert_eq!(allowed.status, 200, "another agent may embed: {allowed:?}");
    assert_eq!(
        messages, 2,
        "for this agent the flag rule on the prompt (an embedding's `input`) ranks next"
    );
    let record = gw.audit_for(|r| r["path"] == "/v1/embeddings" && r["decision"] == "ALLOWED");
    assert_eq!(record["policy"], "default-allow");

    let chat_body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#;
    let (chatted, _) = send(&gw, CLAUDE, &post(&chat, chat_body));
    assert_eq!(chatted.status, 200, "chat is not embedding: {chatted:?}");
    assert_eq!(upstream.hits(), 3);
}

#[test]
fn a_header_condition_denies_a_request_without_the_session_header() {
    let (upstream, gw) = start();
    let url = format!("http://127.0.0.1:{}/v1/models", upstream.port());
    let auth = format!("Proxy-Authorization: Bearer {CLAUDE}");
    let denied = gw.via_proxy(&["-H", &auth, &url]);
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json()["error"]["policy"], "session-header-required");
    let (allowed, messages) = send(&gw, CLAUDE, &[&url]);
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(messages, 1);
    assert_eq!(upstream.hits(), 2);
}

#[test]
fn a_gated_policy_allows_only_when_its_condition_holds() {
    let (upstream, gw) = start();
    let url = format!("http://127.0.0.1:{}/admin/users", upstream.port());
    let (allowed, _) = send(&gw, CLAUDE, &[&url]);
    assert_eq!(
        allowed.status, 200,
        "team:infra passes the gate: {allowed:?}"
    );
    let record = gw.audit_for(|r| r["path"] == "/admin/users" && r["decision"] == "ALLOWED");
    assert_eq!(record["policy"], "admin-for-infra-only");

    let (denied, _) = send(&gw, CURSOR, &[&url]);
    assert_eq!(denied.status, 403, "{denied:?}");
    let error = &denied.json()["error"];
    assert_eq!(error["policy"], "admin-for-infra-only");
    // The workload has no `team:` label: the condition cannot be evaluated, and a gate
    // fails closed (issue 13, item 10).
    assert_eq!(error["reason"], "condition_error");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(r#"identity.labels.team == "infra""#) && message.contains("no such key"),
        "the reason names the condition and the error: {message}"
    );
    assert_eq!(upstream.hits(), 2);
    gw.assert_no_leaks_checked(&[CLAUDE, CURSOR], &[(&allowed, 200), (&denied, 403)]);
}

const DLP_CONFIG: &str = r#"
dlp:
  custom:
    - {name: internal_ticket_secret, regex: 'TKS-[0-9]{6}-[A-Z]{4}'}
policies:
  - name: no-leaked-credentials
    priority: 10
    action: deny
    rules:
      - host: "*"
        methods: [POST]
        dlp: [aws_access_key, private_key, credit_card, internal_ticket_secret]
  - name: default-allow
    priority: 1000
    action: allow
    rules: [{host: "*"}]
"#;

#[test]
fn dlp_conditions_deny_what_a_detector_finds_and_nothing_else() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(DLP_CONFIG, GatewayOptions::default());
    let chat = format!("http://127.0.0.1:{}/v1/chat/completions", upstream.port());
    let body = |content: &str| {
        serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})
            .to_string()
    };
    let post = |content: &str| {
        let body = body(content);
        gw.via_proxy(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
            &chat,
        ])
    };
    let mut replies = Vec::new();
    for (content, denied) in [
        ("my key is AKIAIOSFODNN7EXAMPLE, is that ok?", true),
        ("card 4111 1111 1111 1111 exp 12/29", true),
        ("ticket TKS-123456-ABCD needs a reset", true),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
            true,
        ),
        // Luhn-invalid, a near-miss key, an ordinary question.
        ("card 4111 1111 1111 1112 exp 12/29", false),
        ("AKIA is the prefix of AWS access key ids", false),
        ("how do I rotate credentials safely?", false),
    ] {
        let reply = post(content);
        let want = if denied { 403 } else { 200 };
        assert_eq!(
            reply.status,
            want,
            "{content:?}: {reply:?}\n{}",
            gw.portcullis_log()
        );
        if denied {
            assert_eq!(reply.json()["error"]["policy"], "no-leaked-credentials");
        }
        replies.push((reply, want));
    }
    assert_eq!(
        upstream.hits(),
        3,
        "only the clean bodies reached the upstream"
    );
    let leaked: Vec<(&Reply, u16)> = replies.iter().map(|(r, status)| (r, *status)).collect();
    gw.assert_no_leaks_checked(
        &[
            "AKIAIOSFODNN7EXAMPLE",
            "4111 1111 1111 1111",
            "TKS-123456-ABCD",
            "MIIEowIBAAKCAQEA",
        ],
        &leaked,
    );
}
