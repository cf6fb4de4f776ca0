//! Proxy tokens: stripped before egress, refused when unknown, never written anywhere.

use crate::common::{Gateway, GatewayOptions, Upstream};

const TOKEN: &str = "ptok-live-9f8e7d6c5b4a";
const WRONG: &str = "ptok-live-9f8e7d6c5b4b";

const CONFIG: &str = r#"
identities:
  - {name: agent, token: {env: AGENT_TOKEN}, tags: [agent:claude-code]}
policies:
  - {name: agents, match_tags: [agent:claude-code], action: allow, rules: [{host: 127.0.0.1}]}
  - {name: anyone-public, action: allow, rules: [{host: 127.0.0.1, paths: ["/public/*"]}]}
"#;

fn gateway() -> Gateway {
    Gateway::start(
        CONFIG,
        GatewayOptions {
            env: vec![("AGENT_TOKEN".into(), TOKEN.into())],
            ..GatewayOptions::default()
        },
    )
}

#[test]
fn proxy_authorization_never_reaches_the_upstream() {
    let upstream = Upstream::start(None);
    let gw = gateway();
    let url = format!("http://127.0.0.1:{}/private/x", upstream.port());
    let basic = gw.via_proxy(&["--proxy-user", &format!("agent:{TOKEN}"), &url]);
    let bearer = gw.via_proxy(&["-H", &format!("Proxy-Authorization: Bearer {TOKEN}"), &url]);
    assert_eq!(
        (basic.status, bearer.status),
        (200, 200),
        "{}",
        gw.portcullis_log()
    );
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.header("proxy-authorization"), None, "{request:?}");
        assert!(
            request.headers.iter().all(|(_, v)| !v.contains(TOKEN)),
            "token leaked upstream: {request:?}"
        );
    }
    let record = gw.audit_for(|r| r["identity"]["name"] == "agent");
    assert_eq!(record["identity"]["kind"], "token");
}

#[test]
fn unknown_or_malformed_tokens_get_407_and_reach_nothing() {
    let upstream = Upstream::start(None);
    let gw = gateway();
    let url = format!("http://127.0.0.1:{}/public/x", upstream.port());
    for header in [
        format!("Bearer {WRONG}"),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        "Digest abc".into(),
    ] {
        let reply = gw.via_proxy(&["-H", &format!("Proxy-Authorization: {header}"), &url]);
        assert_eq!(reply.status, 407, "{header}: {reply:?}");
        assert_eq!(
            reply.header("proxy-authenticate"),
            Some("Basic realm=\"portcullis\"")
        );
        assert_eq!(reply.json()["error"]["type"], "proxy_auth_required");
    }
    assert_eq!(upstream.hits(), 0);
    let record = gw.audit_for(|r| r["reason"] == "unknown_proxy_token");
    assert_eq!(record["decision"], "DENIED");
    assert_eq!(record["status"], 407);
    assert_eq!(record["identity"]["kind"], "refused");
    assert_eq!(record["transform"], "identity");
}

#[test]
fn tokens_never_appear_in_logs_audit_or_responses() {
    let upstream = Upstream::start(None);
    let gw = gateway();
    let url = format!("http://127.0.0.1:{}/x", upstream.port());
    let mut bodies = String::new();
    for auth in [TOKEN, WRONG] {
        let reply = gw.via_proxy(&["--proxy-user", &format!("u:{auth}"), &url]);
        bodies.push_str(&reply.body);
        bodies.push_str(&format!("{:?}", reply.headers));
        let reply = gw.via_proxy(&["-H", &format!("Proxy-Authorization: Bearer {auth}"), &url]);
        bodies.push_str(&reply.body);
    }
    gw.audit_for(|r| r["reason"] == "unknown_proxy_token");
    let output = gw.all_output();
    assert!(!output.is_empty());
    for secret in [TOKEN, WRONG] {
        assert!(
            !output.contains(secret),
            "{secret} appears in gateway output"
        );
        assert!(!bodies.contains(secret), "{secret} appears in a response");
    }
    // The metrics page is public to scrapers: nothing there either.
    assert!(!gw.admin("/metrics").body.contains(TOKEN));
}
