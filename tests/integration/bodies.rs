//! Body conditions through Envoy: the seed patterns (deny a credential leak, flag sensitive
//! content, allow the rest), the body buffered only when a body rule could decide, the
//! size limit, and no body content in anything the gateway writes.

use crate::common::{Gateway, GatewayOptions, Reply, Upstream};

/// The seeds' common patterns, with a small body limit.
fn seeds() -> String {
    format!(
        "gateway: {{max_body_bytes: 4096}}\n{}",
        crate::common::seed_policies()
    )
}

/// Sends one request through the proxy and counts the ext_proc messages Envoy sent for
/// it, by Envoy's own stats: 1 when it was decided on its headers, 2 when its body was
/// buffered and sent too. Envoy counts a stream's messages by the time it closes it.
fn post_json(gw: &Gateway, url: &str, body: &str) -> Reply {
    gw.via_proxy(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
        url,
    ])
}

#[test]
fn the_seed_body_policies_deny_flag_and_allow() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(&seeds(), GatewayOptions::default());
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", upstream.port());
    let mut replies = Vec::new();

    let leak = r#"{"aws_secret_access_key": "SENTINEL-body-aws-5d1f"}"#;
    let denied = post_json(&gw, &url("/upload/keys"), leak);
    assert_eq!(denied.status, 403, "{denied:?}\n{}", gw.portcullis_log());
    assert_eq!(denied.header("content-type"), Some("application/json"));
    let error = &denied.json()["error"];
    assert_eq!(error["type"], "policy_denied");
    assert_eq!(error["policy"], "block-credential-leaks");
    assert_eq!(
        error["message"],
        "request body carries an AWS secret key name"
    );
    assert_eq!(
        upstream.hits(),
        0,
        "a denied body never reaches the upstream"
    );
    let record = gw.audit_for(|r| r["path"] == "/upload/keys");
    assert_eq!(record["decision"], "DENIED");
    assert_eq!(record["policy"], "block-credential-leaks");
    assert_eq!(record["rule"], 0);
    replies.push((denied, 403));

    let sensitive = r#"{"attachment": "the customer list, SENTINEL-body-cust-82aa"}"#;
    let flagged = post_json(&gw, &url("/upload/crm"), sensitive);
    assert_eq!(flagged.status, 200, "{flagged:?}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body,
        sensitive.as_bytes(),
        "a flagged body is forwarded unchanged"
    );
    let record = gw.audit_for(|r| r["path"] == "/upload/crm");
    assert_eq!(record["decision"], "FLAGGED");
    assert_eq!(record["policy"], "flag-sensitive");
    replies.push((flagged, 200));

    let benign = r#"{"greeting": "SENTINEL-body-hello-19b0"}"#;
    let (allowed, messages) = gw.via_proxy_counting_messages(&[
        "-X",
        "POST",
        "--data-binary",
        benign,
        &url("/upload/hello"),
    ]);
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(
        messages, 2,
        "a body a body rule could match is buffered: headers, then body"
    );
    let record = gw.audit_for(|r| r["path"] == "/upload/hello");
    assert_eq!(record["decision"], "ALLOWED");
    assert_eq!(record["policy"], "default-allow");
    assert_eq!(upstream.seen()[1].body, benign.as_bytes());
    replies.push((allowed, 200));

    let (get, messages) = gw.via_proxy_counting_messages(&[&url("/page")]);
    assert_eq!(get.status, 200, "{get:?}");
    assert_eq!(
        messages, 1,
        "a request without a body is decided on its headers alone"
    );
    let record = gw.audit_for(|r| r["path"] == "/page");
    assert_eq!(
        (&record["decision"], &record["policy"]),
        (&"ALLOWED".into(), &"default-allow".into())
    );
    replies.push((get, 200));

    let file = gw.dir.path().join("big.json");
    let big = format!(
        "{{\"pad\": \"{}\", \"note\": \"SENTINEL-body-big-c3e7\"}}",
        "z".repeat(5000)
    );
    std::fs::write(&file, &big).unwrap();
    let hits = upstream.hits();
    let too_large = gw.via_proxy(&[
        "-X",
        "POST",
        "--data-binary",
        &format!("@{}", file.display()),
        &url("/upload/big"),
    ]);
    assert_eq!(too_large.status, 413, "{too_large:?}");
    assert_eq!(too_large.json()["error"]["reason"], "body_too_large");
    assert_eq!(upstream.hits(), hits, "nothing over the limit is forwarded");
    replies.push((too_large, 413));

    gw.assert_no_leaks_checked(
        &[
            "SENTINEL-body-aws-5d1f",
            "SENTINEL-body-cust-82aa",
            "SENTINEL-body-hello-19b0",
            "SENTINEL-body-big-c3e7",
            "customer list",
        ],
        &replies
            .iter()
            .map(|(r, status)| (r, *status))
            .collect::<Vec<_>>(),
    );
}

#[test]
fn bodies_no_body_rule_could_match_stream_through_unbuffered() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(
        r#"
gateway: {max_body_bytes: 1024}
policies:
  - {name: scan-uploads, priority: 10, action: deny,
     rules: [{host: 127.0.0.1, paths: ["/scan/*"], body: {regex: ['BEGIN [A-Z ]*PRIVATE KEY']}}]}
  - {name: allow-all, priority: 100, action: allow, rules: [{host: "*"}]}
"#,
        GatewayOptions::default(),
    );
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", upstream.port());
    let file = gw.dir.path().join("upload.txt");
    let upload = "y".repeat(4096);
    std::fs::write(&file, &upload).unwrap();
    let data = format!("@{}", file.display());

    // Over the limit, but no body rule names /plain: never buffered, so never refused.
    let (plain, messages) =
        gw.via_proxy_counting_messages(&["-X", "POST", "--data-binary", &data, &url("/plain")]);
    assert_eq!(plain.status, 200, "{plain:?}\n{}", gw.portcullis_log());
    assert_eq!(messages, 1, "headers only");
    assert_eq!(upstream.seen()[0].body.len(), upload.len());

    // The same body where a body rule could decide must be buffered: over the limit.
    let scanned = gw.via_proxy(&["-X", "POST", "--data-binary", &data, &url("/scan/a")]);
    assert_eq!(scanned.status, 413, "{scanned:?}");
    let key = gw.via_proxy(&[
        "-X",
        "POST",
        "--data-binary",
        "-----BEGIN RSA PRIVATE KEY-----",
        &url("/scan/b"),
    ]);
    assert_eq!(key.status, 403, "{key:?}");
    assert_eq!(key.json()["error"]["policy"], "scan-uploads");
    let clean = gw.via_proxy(&["-X", "POST", "--data-binary", "hello", &url("/scan/c")]);
    assert_eq!(clean.status, 200, "{clean:?}");
    assert_eq!(upstream.hits(), 2);
    assert_eq!(
        gw.metric(r#"portcullis_rejections_total{reason="body_too_large",transform="request"}"#),
        Some(1.0),
        "an oversized body is counted"
    );
}
