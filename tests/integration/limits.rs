//! Rate limits through the real Envoy: a `rate_limit` transform counting per identity, its
//! 429 with `Retry-After` and the contract's JSON body, and the audit record of a refusal.

use crate::common::{Gateway, GatewayOptions, Upstream};

const ALPHA: &str = "ptok-alpha-5e1c7b9d2a";
const BETA: &str = "ptok-beta-8c2e4f6a1b";
const VIEWER: &str = "limits-viewer-token-3f9a";

const CONFIG: &str = r#"
identities:
  - {name: alpha, token: {env: ALPHA_TOKEN}}
  - {name: beta, token: {env: BETA_TOKEN}}
admin: {tokens: [{name: ops, role: viewer, token: {env: VIEWER_TOKEN}}]}
policies:
  - {name: upstream, action: allow, rules: [{host: 127.0.0.1}]}
transforms:
  - allowlist
  - {name: rate_limit, rules: [{host: 127.0.0.1, paths: ["/api/*"]}],
     config: {requests: 2, per: 1m, key: identity}}
"#;

#[test]
fn a_spent_identity_gets_429_with_retry_after_and_the_others_do_not() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(
        CONFIG,
        GatewayOptions {
            env: vec![
                ("ALPHA_TOKEN".into(), ALPHA.into()),
                ("BETA_TOKEN".into(), BETA.into()),
                ("VIEWER_TOKEN".into(), VIEWER.into()),
            ],
            ..GatewayOptions::default()
        },
    );
    let url = format!("http://127.0.0.1:{}/api/items", upstream.port());
    let as_identity = |token: &str| {
        let auth = format!("Proxy-Authorization: Bearer {token}");
        gw.via_proxy(&["-H", &auth, &url])
    };
    for n in 0..2 {
        let passed = as_identity(ALPHA);
        assert_eq!(passed.status, 200, "alpha's request {n}: {passed:?}");
    }
    let limited = as_identity(ALPHA);
    assert_eq!(limited.status, 429, "{limited:?}\n{}", gw.portcullis_log());
    // One token every 30 s: a retry after Retry-After finds one.
    let retry: u64 = limited
        .header("retry-after")
        .expect("a Retry-After header")
        .parse()
        .unwrap();
    assert!((29..=30).contains(&retry), "Retry-After: {retry}");
    let body = limited.json();
    assert_eq!(body["error"]["type"], "rate_limited", "{body}");
    assert_eq!(body["error"]["reason"], "rate_limited");
    assert_eq!(body["error"]["transform"], "rate_limit");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("identity \"alpha\""),
        "{body}"
    );
    // Only the passed requests reached the upstream.
    assert_eq!(upstream.hits(), 2);
    // beta has its own bucket; a request outside the limit's scope is not counted.
    assert_eq!(as_identity(BETA).status, 200);
    let outside = format!("http://127.0.0.1:{}/health", upstream.port());
    let auth = format!("Proxy-Authorization: Bearer {ALPHA}");
    assert_eq!(gw.via_proxy(&["-H", &auth, &outside]).status, 200);

    // The limit's use now: alpha has spent both tokens, beta one.
    let limits = gw.api("GET", "/v1/limits", Some(VIEWER), None);
    assert_eq!(limits.status, 200, "{limits:?}");
    let limit = &limits.json()["limits"][0];
    assert_eq!(limit["transform"], "transforms[1]");
    assert_eq!(limit["backend"], "memory");
    assert_eq!(limit["key"], "identity");
    assert_eq!(
        limit["keys"],
        serde_json::json!([{"key": "alpha", "used": 2, "capacity": 2},
                           {"key": "beta", "used": 1, "capacity": 2}])
    );
    let record = gw.audit_for(|r| r["status"] == 429);
    assert_eq!(record["decision"], "DENIED", "{record}");
    assert_eq!(record["identity"]["name"], "alpha");
    assert_eq!(record["reason"], "rate_limited");
    // The proxy tokens are written nowhere.
    gw.assert_no_leaks(&[ALPHA, BETA], &[]);
}

fn fleet_config(redis_url: &str) -> String {
    format!(
        r#"
identities:
  - {{name: alpha, token: {{env: ALPHA_TOKEN}}}}
admin: {{tokens: [{{name: ops, role: viewer, token: {{env: VIEWER_TOKEN}}}}]}}
policies:
  - {{name: upstream, action: allow, rules: [{{host: 127.0.0.1}}]}}
transforms:
  - allowlist
  - {{name: rate_limit, rules: [{{host: 127.0.0.1, paths: ["/api/*"]}}],
     config: {{requests: 2, per: 1m, redis: {{url: "{redis_url}", fail: closed}}}}}}
  - {{name: rate_limit, rules: [{{host: 127.0.0.1, paths: ["/open/*"]}}],
     config: {{requests: 100, per: 1m, redis: {{url: "{redis_url}", fail: open}}}}}}
"#
    )
}

#[test]
fn two_instances_share_one_limit_in_redis_and_its_fail_mode_decides_when_redis_is_down() {
    let redis = crate::common::redis::RedisServer::start();
    let upstream = Upstream::start(None);
    let options = || GatewayOptions {
        env: vec![
            ("ALPHA_TOKEN".into(), ALPHA.into()),
            ("VIEWER_TOKEN".into(), VIEWER.into()),
        ],
        ..GatewayOptions::default()
    };
    let config = fleet_config(&redis.url());
    let (a, b) = (
        Gateway::start(&config, options()),
        Gateway::start(&config, options()),
    );
    let auth = format!("Proxy-Authorization: Bearer {ALPHA}");
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", upstream.port());
    let via = |gw: &Gateway, path: &str| gw.via_proxy(&["-H", &auth, &url(path)]);
    assert_eq!(via(&a, "/api/1").status, 200, "{}", a.portcullis_log());
    assert_eq!(via(&b, "/api/2").status, 200, "{}", b.portcullis_log());
    // The two instances counted into one bucket: the third request is refused on either.
    let limited = via(&a, "/api/3");
    assert_eq!(limited.status, 429, "{limited:?}\n{}", a.portcullis_log());
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "Retry-After: {retry}");
    assert_eq!(via(&b, "/api/4").status, 429);
    assert_eq!(via(&b, "/open/1").status, 200);
    // Either instance reports the fleet's use, read from Redis.
    let limits = a.api("GET", "/v1/limits", Some(VIEWER), None).json();
    assert_eq!(limits["limits"][0]["backend"], "redis", "{limits}");
    assert_eq!(
        limits["limits"][0]["keys"],
        serde_json::json!([{"key": "alpha", "used": 2, "capacity": 2}]),
        "{limits}"
    );

    // Redis down: the closed limit refuses, the open one forwards and says why.
    redis.stop();
    let refused = via(&a, "/api/5");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.json()["error"]["type"], "rate_limit_unavailable");
    assert!(refused.header("retry-after").is_none());
    let down = a.api("GET", "/v1/limits", Some(VIEWER), None).json();
    assert!(
        down["limits"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    let forwarded = via(&b, "/open/2");
    assert_eq!(forwarded.status, 200, "{forwarded:?}");
    let record = b.audit_for(|r| r["path"] == "/open/2");
    let rate_limit = record["transforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "rate_limit" && t["action"] == "continue")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        rate_limit["annotations"]["reason"], "rate_limit_unavailable",
        "{record}"
    );
    assert!(
        !a.portcullis_log().contains(ALPHA) && !b.portcullis_log().contains(ALPHA),
        "the proxy token in a log"
    );
}
