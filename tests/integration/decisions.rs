//! Allow, deny, flag, tags, priority, tie-break, status, dry run, CIDR — through Envoy.

use crate::common::{Gateway, GatewayOptions, Upstream};

const CONFIG: &str = r#"
gateway: {tags: [env:test]}
identities:
  - {name: alice, token: {env: ALICE_TOKEN}, tags: [user:alice]}
  - {name: bob, token: {env: BOB_TOKEN}, tags: [user:bob]}
policies:
  - {name: allow-echo, priority: 100, action: allow, rules: [{host: 127.0.0.1, paths: ["/allowed/*"]}]}
  - {name: deny-secret, priority: 50, action: deny, message: "secrets are off limits",
     rules: [{host: 127.0.0.1, paths: ["/allowed/secret*"]}]}
  - {name: flag-review, priority: 100, action: flag, rules: [{host: 127.0.0.1, paths: ["/review/*"]}]}
  - {name: alice-only, priority: 100, match_tags: [user:alice], action: allow,
     rules: [{host: 127.0.0.1, paths: ["/team/*"]}]}
  - {name: bob-denied, priority: 100, match_tags: [user:bob], action: deny,
     rules: [{host: 127.0.0.1, paths: ["/team/*"]}]}
  - {name: tie-allow, priority: 20, action: allow, rules: [{host: 127.0.0.1, paths: ["/tie/*"]}]}
  - {name: tie-flag, priority: 20, action: flag, rules: [{host: 127.0.0.1, paths: ["/tie/*"]}]}
  - {name: tie-deny, priority: 20, action: deny, rules: [{host: 127.0.0.1, paths: ["/tie/deny/*"]}]}
  - {name: low-number-allow, priority: 5, action: allow, rules: [{host: 127.0.0.1, paths: ["/prio/*"]}]}
  - {name: high-number-deny, priority: 6, action: deny, rules: [{host: 127.0.0.1, paths: ["/prio/*"]}]}
  - {name: disabled-allow, priority: 1, status: disabled, action: allow,
     rules: [{host: 127.0.0.1, paths: ["/disabled/*"]}]}
  - {name: draft-allow, priority: 1, status: draft, action: allow,
     rules: [{host: 127.0.0.1, paths: ["/disabled/*"]}]}
  - {name: dry-deny, priority: 1, action: deny, warn: true,
     rules: [{host: 127.0.0.1, paths: ["/allowed/canary*"]}]}
  - {name: loopback-net, priority: 100, action: allow, rules: [{host: 127.0.0.0/8, paths: ["/cidr/*"]}]}
"#;

fn gateway() -> Gateway {
    Gateway::start(
        CONFIG,
        GatewayOptions {
            env: vec![
                ("ALICE_TOKEN".into(), "alice-token-5f2a".into()),
                ("BOB_TOKEN".into(), "bob-token-81c9".into()),
            ],
            ..GatewayOptions::default()
        },
    )
}

#[test]
fn allowed_requests_reach_the_upstream_and_are_audited() {
    let upstream = Upstream::start(None);
    let gw = gateway();
    let reply = gw.via_proxy(&[&format!(
        "http://127.0.0.1:{}/allowed/x?q=1",
        upstream.port()
    )]);
    assert_eq!(reply.status, 200, "{reply:?}\n{}", gw.portcullis_log());
    assert_eq!(reply.header("x-upstream"), Some("echo"));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/allowed/x?q=1")
    );

    let record = gw.audit_for(|r| r["path"] == "/allowed/x");
    assert_eq!(record["decision"], "ALLOWED");
    assert_eq!(record["policy"], "allow-echo");
    assert_eq!(record["rule"], 0);
    assert_eq!(record["host"], "127.0.0.1");
    assert_eq!(record["method"], "GET");
    assert_eq!(
        record["tags"],
        serde_json::json!(["env:test", "listener:forward-proxy"])
    );
    assert_eq!(record["identity"]["kind"], "gateway");
    assert!(
        record["identity"]["source"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{record}"
    );
    assert!(record["request_id"].as_str().unwrap().len() >= 16);
    assert!(record["decision_us"].as_f64().unwrap() > 0.0);
    assert_eq!(record["transforms"][0]["name"], "allowlist");
    assert_eq!(record["transforms"][0]["action"], "continue");
}

#[test]
fn denied_requests_get_a_json_403_and_never_reach_the_upstream() {
    let upstream = Upstream::start(None);
    let gw = gateway();
    let base = format!("http://127.0.0.1:{}", upstream.port());

    let reply = gw.via_proxy(&[&format!("{base}/allowed/secret-stuff")]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let request_id = reply
        .header("x-portcullis-request-id")
        .expect("request id header")
        .to_owned();
    let body = reply.json();
    assert_eq!(body["error"]["type"], "policy_denied");
    assert_eq!(body["error"]["policy"], "deny-secret");
    assert_eq!(body["error"]["message"], "secrets are off limits");
    assert_eq!(body["error"]["transform"], "allowlist");
    assert_eq!(body["error"]["request_id"], request_id.as_str());

    let reply = gw.via_proxy(&[&format!("{base}/nothing/allows/this")]);
    assert_eq!(reply.status, 403);
    let body = reply.json();
    assert_eq!(body["error"]["reason"], "no_matching_policy");
    assert!(body["error"]["policy"].is_null());
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "no policy allows GET 127.0.0.1:{}/nothing/allows/this",
                upstream.port()
            )),
        "the port is named when it is not the scheme's own: {body}"
    );

    assert_eq!(
        upstream.hits(),
        0,
        "a denied request never reaches the upstream"
    );
    let record = gw.audit_for(|r| r["request_id"] == request_id.as_str());
    assert_eq!(record["decision"], "DENIED");
    assert_eq!(record["status"], 403);
    assert_eq!(record["reason"], "policy_deny");
    assert_eq!(record["policy"], "deny-secret");
    assert_eq!(record["transform"], "allowlist");
    let metric = gw.metric(r#"portcullis_decisions_total{decision="DENIED",policy="deny-secret"}"#);
    assert_eq!(metric, Some(1.0));
}

#[test]
fn flagged_requests_are_forwarded_and_marked() {
    let upstream = Upstream::start(None);
    let gw = gateway();
    let reply = gw.via_proxy(&[
        "-X",
        "POST",
        "-d",
        "x=1",
        &format!("http://127.0.0.1:{}/review/1", upstream.port()),
    ]);
    assert_eq!(reply.status, 200);
    assert_eq!(upstream.hits(), 1);
    let record = gw.audit_for(|r| r["path"] == "/review/1");
    assert_eq!(record["decision"], "FLAGGED");
    assert_eq!(record["policy"], "flag-review");
    assert_eq!(
        gw.metric(r#"portcullis_decisions_total{decision="FLAGGED",policy="flag-review"}"#),
        Some(1.0)
    );
}

#[test]
fn same_request_two_identities_two_outcomes() {
    let upstream = Upstream::start(None);
    let gw = gateway();
    let url = format!("http://127.0.0.1:{}/team/plans", upstream.port());
    let alice = gw.via_proxy(&["--proxy-user", "alice:alice-token-5f2a", &url]);
    let bob = gw.via_proxy(&["-H", "Proxy-Authorization: Bearer bob-token-81c9", &url]);
    let nobody = gw.via_proxy(&[&url]);
    assert_eq!((alice.status, bob.status, nobody.status), (200, 403, 403));
    assert_eq!(bob.json()["error"]["policy"], "bob-denied");
    assert_eq!(nobody.json()["error"]["reason"], "no_matching_policy");
    assert_eq!(upstream.hits(), 1);
    let alice_record = gw.audit_for(|r| r["identity"]["name"] == "alice");
    assert_eq!(alice_record["identity"]["kind"], "token");
    assert_eq!(
        alice_record["tags"],
        serde_json::json!(["env:test", "listener:forward-proxy", "user:alice"])
    );
    assert_eq!(alice_record["policy"], "alice-only");
}

#[test]
fn priority_tie_break_status_and_dry_run() {
    let upstream = Upstream::start(None);
    let gw = gateway();
    let get = |path: &str| gw.via_proxy(&[&format!("http://127.0.0.1:{}{path}", upstream.port())]);

    // Lower priority number wins even though deny usually beats allow.
    assert_eq!(get("/prio/x").status, 200);
    assert_eq!(
        gw.audit_for(|r| r["path"] == "/prio/x")["policy"],
        "low-number-allow"
    );
    // Equal priority: flag beats allow, deny beats both.
    assert_eq!(get("/tie/x").status, 200);
    assert_eq!(
        gw.audit_for(|r| r["path"] == "/tie/x")["decision"],
        "FLAGGED"
    );
    assert_eq!(get("/tie/deny/x").status, 403);
    assert_eq!(
        gw.audit_for(|r| r["path"] == "/tie/deny/x")["policy"],
        "tie-deny"
    );
    // Disabled and draft policies never act.
    assert_eq!(get("/disabled/x").status, 403);
    assert_eq!(
        gw.audit_for(|r| r["path"] == "/disabled/x")["reason"],
        "no_matching_policy"
    );
    // A dry-run deny is recorded, not enforced.
    assert_eq!(get("/allowed/canary-1").status, 200);
    let record = gw.audit_for(|r| r["path"] == "/allowed/canary-1");
    assert_eq!(record["decision"], "ALLOWED");
    assert_eq!(record["policy"], "allow-echo");
    assert_eq!(
        record["dry_run"],
        serde_json::json!({"policy": "dry-deny", "rule": 0, "action": "deny"})
    );
    assert_eq!(
        gw.metric(r#"portcullis_dry_run_total{action="deny",policy="dry-deny"}"#),
        Some(1.0)
    );
    assert!(
        gw.portcullis_log()
            .contains("dry-run policy would have denied")
    );
}

#[test]
fn cidr_rules_match_ip_literal_destinations() {
    let upstream = Upstream::start(None);
    let gw = gateway();
    let by_ip = gw.via_proxy(&[&format!("http://127.0.0.1:{}/cidr/x", upstream.port())]);
    assert_eq!(by_ip.status, 200);
    assert_eq!(
        gw.audit_for(|r| r["path"] == "/cidr/x")["policy"],
        "loopback-net"
    );
    // The same upstream by name is not an IP literal: the CIDR rule does not apply.
    let by_name = gw.via_proxy(&[&format!("http://localhost:{}/cidr/y", upstream.port())]);
    assert_eq!(by_name.status, 403);
    assert_eq!(upstream.hits(), 1);
}

#[test]
fn source_cidr_identities_tag_requests() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(
        r#"
identities:
  - {name: loopback, source_cidr: 127.0.0.0/8, tags: [net:loopback]}
  - {name: elsewhere, source_cidr: 10.0.0.0/8, tags: [net:ten]}
policies:
  - {name: loopback-only, match_tags: [net:loopback], action: allow, rules: [{host: 127.0.0.1}]}
  - {name: ten-only, match_tags: [net:ten], action: allow, rules: [{host: localhost}]}
"#,
        GatewayOptions::default(),
    );
    let allowed = gw.via_proxy(&[&format!("http://127.0.0.1:{}/a", upstream.port())]);
    let denied = gw.via_proxy(&[&format!("http://localhost:{}/b", upstream.port())]);
    assert_eq!((allowed.status, denied.status), (200, 403));
    let record = gw.audit_for(|r| r["path"] == "/a");
    assert_eq!(record["identity"]["kind"], "source_cidr");
    assert_eq!(record["identity"]["name"], "loopback");
}

#[test]
fn workloads_cannot_choose_their_audit_request_id() {
    let upstream = Upstream::start(None);
    let gw = gateway();
    let reply = gw.via_proxy(&[
        "-H",
        "X-Request-Id: forged-id-1234",
        &format!("http://127.0.0.1:{}/nothing", upstream.port()),
    ]);
    assert_eq!(reply.status, 403);
    let id = reply.header("x-portcullis-request-id").unwrap();
    assert_ne!(
        id, "forged-id-1234",
        "Envoy (use_remote_address) generates the id"
    );
    let record = gw.audit_for(|r| r["path"] == "/nothing");
    assert_eq!(record["request_id"], id);
}
