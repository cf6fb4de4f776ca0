//! header_allowlist through Envoy: what it must strip is gone upstream.

use crate::common::{Gateway, GatewayOptions, Upstream};

#[test]
fn header_allowlist_strips_everything_not_allowed() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(
        r#"
policies:
  - {name: echo, action: allow, rules: [{host: 127.0.0.1}]}
transforms:
  - allowlist
  - name: header_allowlist
    rules: [{host: 127.0.0.1, paths: ["/strict/*"]}]
    config:
      allow: [accept, user-agent, content-type, "/^x-allowed-/"]
"#,
        GatewayOptions::default(),
    );
    let url = format!("http://127.0.0.1:{}", upstream.port());
    let args = |path: &str| {
        vec![
            "-H".to_owned(),
            "X-Allowed-Trace: t1".into(),
            "-H".into(),
            "X-Internal-Session: s3ss10n".into(),
            "-H".into(),
            "Cookie: c=1".into(),
            "-H".into(),
            "Authorization: Bearer workload-own".into(),
            "-X".into(),
            "POST".into(),
            "-d".into(),
            "{\"a\":1}".into(),
            "-H".into(),
            "Content-Type: application/json".into(),
            format!("{url}{path}"),
        ]
    };
    let strict: Vec<String> = args("/strict/x");
    let strict: Vec<&str> = strict.iter().map(String::as_str).collect();
    assert_eq!(gw.via_proxy(&strict).status, 200);
    let loose: Vec<String> = args("/loose/x");
    let loose: Vec<&str> = loose.iter().map(String::as_str).collect();
    assert_eq!(gw.via_proxy(&loose).status, 200);

    let seen = upstream.seen();
    let strict_seen = seen.iter().find(|s| s.path == "/strict/x").unwrap();
    for gone in [
        "x-internal-session",
        "cookie",
        "authorization",
        "x-request-id",
    ] {
        assert_eq!(
            strict_seen.header(gone),
            None,
            "{gone} must be stripped: {strict_seen:?}"
        );
    }
    assert_eq!(strict_seen.header("x-allowed-trace"), Some("t1"));
    assert_eq!(strict_seen.header("content-type"), Some("application/json"));
    assert_eq!(strict_seen.header("accept"), Some("*/*"));
    assert!(
        strict_seen
            .header("user-agent")
            .unwrap()
            .starts_with("curl/")
    );
    assert_eq!(strict_seen.body, b"{\"a\":1}", "the body is untouched");
    // Out of the transform's scope nothing is stripped.
    let loose_seen = seen.iter().find(|s| s.path == "/loose/x").unwrap();
    assert_eq!(loose_seen.header("cookie"), Some("c=1"));

    // No identities use tokens here: proxy credentials still never leave the gateway.
    let with_creds = gw.via_proxy(&[
        "--proxy-user",
        "user:not-a-configured-token",
        &format!("{url}/loose/creds"),
    ]);
    assert_eq!(with_creds.status, 200);
    let creds_seen = upstream
        .seen()
        .into_iter()
        .find(|s| s.path == "/loose/creds")
        .unwrap();
    assert_eq!(creds_seen.header("proxy-authorization"), None);

    let record = gw.audit_for(|r| r["path"] == "/strict/x");
    let trace = &record["transforms"][1];
    assert_eq!(trace["name"], "header_allowlist");
    let stripped: Vec<&str> = trace["annotations"]["stripped_headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for name in ["x-internal-session", "cookie", "authorization"] {
        assert!(stripped.contains(&name), "{name} recorded in {stripped:?}");
    }
    assert!(
        !record.to_string().contains("s3ss10n"),
        "values are never audited"
    );
    let loose_record = gw.audit_for(|r| r["path"] == "/loose/x");
    assert_eq!(loose_record["transforms"][1]["action"], "skip");
}
