//! The control plane on the embedded store, driven through the admin API as a user would,
//! with requests through the real Envoy showing that every change decides the next request:
//! versions, diff and rollback, disable and delete, bad input, authentication, enrollment
//! tokens, audit search, fire counts and impact previews.

use serde_json::{Value, json};

use crate::common::{Gateway, GatewayOptions, Reply, Upstream, run_portcullis, wait_until};

pub const EDITOR: &str = "editor-token-7d1c";
pub const VIEWER: &str = "viewer-token-29ab";

/// A gateway whose policies live in `store_url`, with an admin token (`EDITOR`: it also
/// changes secrets, which may read the variables the tests set aside) and a viewer token.
/// What an editor may not do is in `redteam::control`.
pub fn config(store_url: &str) -> String {
    format!(
        r#"
store: {{url: "{store_url}", secret_sources: {{env_prefixes: [GH, UPSTREAM_, LATE_]}}}}
gateway: {{tags: [env:test]}}
admin:
  tokens:
    - {{name: alice, role: admin, token: {{env: EDITOR_TOKEN}}}}
    - {{name: dashboards, role: viewer, token: {{env: VIEWER_TOKEN}}}}
"#
    )
}

pub fn options() -> GatewayOptions {
    GatewayOptions {
        env: vec![
            ("EDITOR_TOKEN".into(), EDITOR.into()),
            ("VIEWER_TOKEN".into(), VIEWER.into()),
        ],
        ..GatewayOptions::default()
    }
}

fn sqlite_gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}", dir.join("store.db").display());
    Gateway::start(&config(&url), options())
}

/// A policy allowing GET on `paths` of the loopback upstream.
pub fn allow(name: &str, priority: i32, paths: &[&str]) -> Value {
    json!({"name": name, "priority": priority, "action": "allow",
           "rules": [{"host": "127.0.0.1", "paths": paths, "methods": ["GET"]}]})
}

pub fn create(gw: &Gateway, policy: &Value) -> Reply {
    let body = json!({"policy": policy, "reason": "test"}).to_string();
    gw.api("POST", "/v1/policies", Some(EDITOR), Some(&body))
}

pub fn update(gw: &Gateway, name: &str, version: i64, policy: &Value) -> Reply {
    let body = json!({"version": version, "policy": policy}).to_string();
    gw.api(
        "PUT",
        &format!("/v1/policies/{name}"),
        Some(EDITOR),
        Some(&body),
    )
}

pub fn post(gw: &Gateway, path: &str, body: Value) -> Reply {
    gw.api("POST", path, Some(EDITOR), Some(&body.to_string()))
}

pub fn get(gw: &Gateway, path: &str) -> Value {
    let reply = gw.api("GET", path, Some(VIEWER), None);
    assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
    reply.json()
}

pub fn status_of(gw: &Gateway, upstream: &Upstream, path: &str) -> u16 {
    gw.via_proxy(&[&format!("http://127.0.0.1:{}{path}", upstream.port())])
        .status
}

#[test]
fn every_change_through_the_api_decides_the_next_request_and_is_versioned() {
    let upstream = Upstream::start(None);
    let gw = sqlite_gateway();
    // Nothing stored yet: the default action (deny) decides.
    assert_eq!(status_of(&gw, &upstream, "/repo/a"), 403);

    let created = create(&gw, &allow("repos", 10, &["/repo/*"]));
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["version"], 1);
    // Live on this instance when the answer arrives: no waiting.
    assert_eq!(status_of(&gw, &upstream, "/repo/a"), 200);
    let record = gw.audit_for(|r| r["path"] == "/repo/a" && r["decision"] == "ALLOWED");
    assert_eq!(record["policy"], "repos");
    assert_eq!(
        record["policy_version"], 1,
        "the audit names the deciding version"
    );

    let narrowed = update(&gw, "repos", 1, &allow("repos", 10, &["/repo/public/*"]));
    assert_eq!(narrowed.status, 200, "{narrowed:?}");
    assert_eq!(status_of(&gw, &upstream, "/repo/a"), 403);
    assert_eq!(status_of(&gw, &upstream, "/repo/public/x"), 200);
    let record = gw.audit_for(|r| r["path"] == "/repo/public/x");
    assert_eq!(record["policy_version"], 2);

    // Disabled: stops firing at once, stays listed with its status.
    let disabled = post(
        &gw,
        "/v1/policies/repos/disable",
        json!({"version": 2, "reason": "incident"}),
    );
    assert_eq!(disabled.status, 200, "{disabled:?}");
    assert_eq!(status_of(&gw, &upstream, "/repo/public/x"), 403);
    let listed = get(&gw, "/v1/policies");
    assert_eq!(listed["policies"][0]["policy"]["status"], "disabled");
    let enabled = post(&gw, "/v1/policies/repos/enable", json!({"version": 3}));
    assert_eq!(enabled.status, 200, "{enabled:?}");
    assert_eq!(status_of(&gw, &upstream, "/repo/public/x"), 200);

    // History names operator and reason; the diff is by field path.
    let history = get(&gw, "/v1/policies/repos/history");
    let versions = history["versions"].as_array().unwrap();
    let operations: Vec<&str> = versions
        .iter()
        .map(|v| v["operation"].as_str().unwrap())
        .collect();
    assert_eq!(operations, ["create", "update", "disable", "enable"]);
    assert_eq!(versions[2]["operator"], "alice");
    assert_eq!(versions[2]["reason"], "incident");
    let diff = get(&gw, "/v1/policies/repos/diff?from=1&to=2");
    assert_eq!(
        diff["changes"],
        json!([{"path": "rules[0].paths[0]", "before": "/repo/*", "after": "/repo/public/*"}])
    );

    // Rollback to version 1: a new version (5) equal to it; decisions follow.
    let rolled = post(
        &gw,
        "/v1/policies/repos/rollback",
        json!({"to_version": 1, "version": 4}),
    );
    assert_eq!(rolled.status, 200, "{rolled:?}");
    assert_eq!(rolled.json()["version"], 5);
    assert_eq!(status_of(&gw, &upstream, "/repo/a"), 200);
    let back = get(&gw, "/v1/policies/repos");
    assert_eq!(
        back["policy"],
        get(&gw, "/v1/policies/repos/history")["versions"][0]["policy"]
    );
    assert!(
        get(&gw, "/v1/policies/repos/diff?from=1&to=5")["changes"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Delete: out of decisions and the list, not out of history.
    let deleted = gw.api(
        "DELETE",
        "/v1/policies/repos?version=5&reason=gone",
        Some(EDITOR),
        None,
    );
    assert_eq!(deleted.status, 200, "{deleted:?}");
    assert_eq!(status_of(&gw, &upstream, "/repo/a"), 403);
    assert!(
        get(&gw, "/v1/policies")["policies"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        gw.api("GET", "/v1/policies/repos", Some(VIEWER), None)
            .status,
        404
    );
    let history = get(&gw, "/v1/policies/repos/history");
    assert_eq!(history["versions"].as_array().unwrap().len(), 6);
    assert_eq!(history["versions"][5]["operation"], "delete");
}

#[test]
fn bad_input_gets_a_precise_error_and_changes_nothing() {
    let gw = sqlite_gateway();
    assert_eq!(create(&gw, &allow("base", 10, &["/a/*"])).status, 201);
    let before = get(&gw, "/v1/policies");
    let revision = get(&gw, "/v1/status")["store_revision"].clone();

    let raw = |method: &str, path: &str, token: Option<&str>, body: &str| {
        gw.api(method, path, token, Some(body))
    };
    // Malformed JSON: 400 with where it broke.
    let reply = raw(
        "POST",
        "/v1/policies",
        Some(EDITOR),
        r#"{"policy": {"name": "x""#,
    );
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.json()["error"]["type"], "malformed_json");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1 column")
    );
    // An unknown field: 422 at its path.
    let mut policy = allow("x", 10, &["/x/*"]);
    policy["colour"] = json!("red");
    let reply = create(&gw, &policy);
    assert_eq!(reply.status, 422, "{reply:?}");
    assert_eq!(reply.json()["error"]["errors"][0]["path"], "policy.colour");
    let reply = raw(
        "POST",
        "/v1/policies",
        Some(EDITOR),
        r#"{"policy": {}, "why": "because"}"#,
    );
    assert_eq!(reply.status, 422);
    let paths: Vec<String> = reply.json()["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(paths.contains(&"why".to_owned()), "{paths:?}");
    // An invalid glob, and a rule list that is empty: each at its path, with the input.
    let reply = create(
        &gw,
        &json!({"name": "x", "action": "allow", "rules": [{"host": "api.*.[x"}]}),
    );
    assert_eq!(reply.status, 422, "{reply:?}");
    let error = &reply.json()["error"]["errors"][0];
    assert_eq!(error["path"], "policy.rules[0].host");
    assert!(
        error["message"].as_str().unwrap().contains("api.*.[x"),
        "{error}"
    );
    let reply = create(&gw, &json!({"name": "x", "action": "allow", "rules": []}));
    assert_eq!(reply.json()["error"]["errors"][0]["path"], "policy.rules");
    let reply = create(
        &gw,
        &json!({"name": "x", "action": "allow", "rules": [{"host": "a", "paths": ["nope"]}]}),
    );
    assert_eq!(
        reply.json()["error"]["errors"][0]["path"],
        "policy.rules[0].paths[0]"
    );
    // A duplicate name: 409.
    let reply = create(&gw, &allow("base", 1, &["/b/*"]));
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(reply.json()["error"]["type"], "conflict");
    // A stale version: 409 naming the live one.
    assert_eq!(
        update(&gw, "base", 1, &allow("base", 5, &["/a/*"])).status,
        200
    );
    let reply = update(&gw, "base", 1, &allow("base", 6, &["/a/*"]));
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(reply.json()["error"]["type"], "stale_version");
    assert_eq!(reply.json()["error"]["live_version"], 2);
    // A rename through PUT, a missing version.
    let reply = update(&gw, "base", 2, &allow("other", 5, &["/a/*"]));
    assert_eq!(reply.status, 422, "{reply:?}");
    let reply = raw(
        "PUT",
        "/v1/policies/base",
        Some(EDITOR),
        &json!({"policy": allow("base", 5, &["/a/*"])}).to_string(),
    );
    assert_eq!(reply.json()["error"]["errors"][0]["path"], "version");
    let reply = gw.api("DELETE", "/v1/policies/base", Some(EDITOR), None);
    assert_eq!(
        reply.status, 422,
        "a delete needs the version read: {reply:?}"
    );
    // A secret the gateway's pipeline could not use: refused before it is written.
    let secret = json!({"secret": {"name": "gh", "rules": [{"host": "api.github.com"}],
        "source": {"type": "env", "var": "GH"}, "inject": {"style": "bearer"}}});
    let reply = post(&gw, "/v1/secrets", secret);
    assert_eq!(
        reply.status, 201,
        "the default pipeline takes secrets: {reply:?}"
    );
    let reply = post(
        &gw,
        "/v1/secrets",
        json!({"secret": {"name": "bad", "rules": [{"host": "x"}],
        "source": {"type": "vaullt"}, "inject": {"style": "bearer"}}}),
    );
    assert_eq!(reply.status, 422, "{reply:?}");
    assert!(
        reply.json()["error"]["errors"][0]["path"]
            .as_str()
            .unwrap()
            .starts_with("secret.source")
    );

    // No token, a wrong token, a viewer: 401, 401, 403 — for every changing call.
    let body = json!({"policy": allow("sneaky", 1, &["/*"])}).to_string();
    for (token, status) in [(None, 401), (Some("not-a-token"), 401), (Some(VIEWER), 403)] {
        for (method, path) in [
            ("POST", "/v1/policies"),
            ("PUT", "/v1/policies/base"),
            ("DELETE", "/v1/policies/base?version=2"),
            ("POST", "/v1/policies/base/disable"),
            ("POST", "/v1/policies/base/rollback"),
            ("POST", "/v1/tokens"),
        ] {
            let reply = gw.api(method, path, token, Some(&body));
            assert_eq!(
                reply.status, status,
                "{method} {path} with {token:?}: {reply:?}"
            );
        }
    }
    assert_eq!(gw.api("GET", "/v1/policies", None, None).status, 401);

    // Nothing of the refused calls was written.
    let after = get(&gw, "/v1/policies");
    assert_eq!(after["policies"].as_array().unwrap().len(), 1);
    assert_eq!(after["policies"][0]["version"], 2);
    assert_ne!(before, after, "only the one accepted update changed it");
    let revision_after = get(&gw, "/v1/status")["store_revision"].as_i64().unwrap();
    assert_eq!(
        revision_after,
        revision.as_i64().unwrap() + 2,
        "one update and one secret"
    );
    // The admin tokens never appear in what the gateway wrote.
    gw.assert_no_leaks(&[EDITOR, VIEWER], &[]);
}

#[test]
fn the_openapi_document_lists_every_endpoint_and_each_wants_a_token() {
    let gw = sqlite_gateway();
    let doc = gw.api("GET", "/v1/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["components"]["schemas"]["PolicyConfig"]["properties"]["rules"].is_object());
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let concrete = path.replace("{name}", "p").replace("{id}", "t");
            let reply = gw.api(&method.to_uppercase(), &concrete, None, Some("{}"));
            if operation.get("security").is_some() {
                assert_eq!(
                    reply.status, 401,
                    "{method} {path} without a token: {reply:?}"
                );
            } else if path == "/v1/session" {
                // The console's sign-in: public, and `{}` holds no token.
                assert_eq!(reply.status, 422, "{method} {path}: {reply:?}");
            } else if path.starts_with("/v1/session/oidc") {
                // Single sign-on: public, and not configured here.
                assert_eq!(reply.status, 404, "{method} {path}: {reply:?}");
            } else {
                assert_eq!(reply.status, 200, "{method} {path}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 25, "{checked} endpoints documented");
    // And an endpoint that is not documented does not exist.
    let reply = gw.api("GET", "/v1/nothing-here", Some(EDITOR), None);
    assert_eq!(reply.status, 404);
}

#[test]
fn enrollment_tokens_give_workloads_their_tags_until_revoked() {
    let upstream = Upstream::start(None);
    let gw = sqlite_gateway();
    let mut policy = allow("acme-only", 10, &["/acme/*"]);
    policy["match_tags"] = json!(["tenant:acme"]);
    assert_eq!(create(&gw, &policy).status, 201);
    let minted = post(
        &gw,
        "/v1/tokens",
        json!({"name": "acme-ci", "tags": ["tenant:acme"]}),
    );
    assert_eq!(minted.status, 201, "{minted:?}");
    let minted = minted.json();
    let value = minted["value"].as_str().unwrap().to_owned();
    let id = minted["token"]["id"].as_str().unwrap().to_owned();
    assert!(value.starts_with("ptk_"));

    let url = format!("http://127.0.0.1:{}/acme/x", upstream.port());
    let auth = format!("Proxy-Authorization: Bearer {value}");
    assert_eq!(
        gw.via_proxy(&[&url]).status,
        403,
        "without the token: no tenant tag"
    );
    let reply = gw.via_proxy(&["-H", &auth, &url]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let record = gw.audit_for(|r| r["path"] == "/acme/x" && r["decision"] == "ALLOWED");
    assert_eq!(record["identity"]["kind"], "token");
    assert_eq!(record["identity"]["name"], "acme-ci");
    assert!(
        record["tags"]
            .as_array()
            .unwrap()
            .contains(&json!("tenant:acme"))
    );
    assert!(
        upstream
            .seen()
            .iter()
            .all(|s| s.header("proxy-authorization").is_none())
    );

    // Listed without its value; revoked: refused (407) at once.
    let listed = gw.api("GET", "/v1/tokens", Some(VIEWER), None);
    assert!(listed.body.contains("acme-ci") && !listed.body.contains(&value));
    let revoked = gw.api("DELETE", &format!("/v1/tokens/{id}"), Some(EDITOR), None);
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert_eq!(gw.via_proxy(&["-H", &auth, &url]).status, 407);
    // The value was shown once, to its minter; nothing the gateway wrote holds it.
    gw.assert_no_leaks_checked(&[&value], &[(&listed, 200)]);
}

#[test]
fn audit_search_fire_counts_and_impact_read_what_the_gateway_decided() {
    let upstream = Upstream::start(None);
    let gw = sqlite_gateway();
    assert_eq!(create(&gw, &allow("docs", 100, &["/docs/*"])).status, 201);
    let mut deny = json!({"name": "no-admin", "priority": 10, "action": "deny",
                          "rules": [{"host": "127.0.0.1", "paths": ["/docs/admin*"]}]});
    assert_eq!(create(&gw, &deny).status, 201);
    for path in ["/docs/a", "/docs/b", "/docs/c", "/docs/admin", "/elsewhere"] {
        status_of(&gw, &upstream, path);
    }
    // The store's copy of the audit trail is written in batches.
    let mut page = Value::Null;
    assert!(
        wait_until(std::time::Duration::from_secs(5), || {
            page = get(&gw, "/v1/audit?limit=10");
            page["events"].as_array().is_some_and(|e| e.len() == 5)
        }),
        "{page}"
    );
    assert_eq!(page["events"][0]["path"], "/elsewhere", "newest first");

    let denied = get(&gw, "/v1/audit?decision=denied");
    assert_eq!(denied["events"].as_array().unwrap().len(), 2);
    let by_policy = get(&gw, "/v1/audit?policy=no-admin");
    assert_eq!(by_policy["events"][0]["path"], "/docs/admin");
    assert_eq!(by_policy["events"][0]["policy_version"], 1);
    assert_eq!(
        get(&gw, "/v1/audit?tag=env:test")["events"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert!(
        get(&gw, "/v1/audit?tag=env:prod")["events"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        get(&gw, "/v1/audit?since=2099-01-01T00:00:00Z")["events"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let first = get(&gw, "/v1/audit?limit=2");
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = get(&gw, &format!("/v1/audit?limit=2&cursor={cursor}"));
    assert_ne!(
        first["events"][0]["request_id"],
        second["events"][0]["request_id"]
    );
    assert_eq!(
        gw.api("GET", "/v1/audit?decision=maybe", Some(VIEWER), None)
            .status,
        400
    );
    assert_eq!(
        gw.api("GET", "/v1/audit?colour=red", Some(VIEWER), None)
            .status,
        400
    );

    let fires = get(&gw, "/v1/fire-counts?window=1h");
    let policies = fires["policies"].as_array().unwrap();
    assert_eq!(policies[0]["policy"], "docs", "busiest first");
    assert_eq!(policies[0]["ALLOWED"], 3);
    assert_eq!(policies[1]["DENIED"], 1);
    assert_eq!(fires["no_policy"]["DENIED"], 1);
    let listed = get(&gw, "/v1/policies?window=1h");
    let docs = listed["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "docs")
        .unwrap();
    assert_eq!(docs["fires"]["total"], 3);

    // Impact: widening the deny to all of /docs would change the three allowed requests.
    deny["rules"][0]["paths"] = json!(["/docs/*"]);
    let impact = post(&gw, "/v1/impact", json!({"policy": deny, "since": "1h"}));
    assert_eq!(impact.status, 200, "{impact:?}");
    let impact = impact.json();
    assert_eq!(impact["replayed"], 5);
    assert_eq!(impact["changed"], 3);
    for changed in impact["requests"].as_array().unwrap() {
        assert_eq!(
            changed["before"],
            json!({"decision": "ALLOWED", "policy": "docs"})
        );
        assert_eq!(
            changed["after"],
            json!({"decision": "DENIED", "policy": "no-admin"})
        );
    }
    // Impact previews change nothing.
    assert_eq!(status_of(&gw, &upstream, "/docs/a"), 200);
}

#[test]
fn without_a_store_the_api_says_the_policies_are_in_the_file() {
    let gw = Gateway::start(
        &format!(
            "{}\npolicies:\n  - {{name: p, action: allow, rules: [{{host: example.com}}]}}\n",
            r#"
admin:
  tokens:
    - {name: alice, role: editor, token: {env: EDITOR_TOKEN}}"#
        ),
        options(),
    );
    let reply = create(&gw, &allow("x", 1, &["/*"]));
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(reply.json()["error"]["type"], "no_store");
    // The playground works on the file's policies.
    let reply = post(
        &gw,
        "/v1/playground",
        json!({"method": "GET", "url": "http://example.com/"}),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["deciding"]["policy"], "p");
}

#[test]
fn a_file_with_a_store_and_its_own_policies_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.yaml");
    std::fs::write(
        &file,
        format!(
            "store: {{url: 'sqlite://{}/s.db'}}\npolicies:\n  - {{name: p, action: allow, rules: [{{host: a}}]}}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let served = run_portcullis(
        &[
            "serve",
            "-c",
            file.to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let err = &served.stderr;
    assert_eq!(served.code, 1, "{err}");
    assert!(
        err.contains("gw.yaml:2") && err.contains("portcullis apply"),
        "{err}"
    );
    // `validate` says so too, without starting anything.
    let validated = run_portcullis(&["validate", file.to_str().unwrap()], &[]);
    let printed = &validated.stdout;
    assert_eq!(validated.code, 1, "{printed}");
    assert!(
        printed.contains("gw.yaml:2") && printed.contains("policies"),
        "{printed}"
    );
}

/// The seeds' common patterns, as JSON for the API.
fn seed_patterns() -> Vec<Value> {
    let file: Value = serde_norway::from_str(&crate::common::seed_policies()).unwrap();
    file["policies"].as_array().unwrap().clone()
}

#[test]
fn the_playground_answers_what_the_gateway_does_for_the_seed_patterns() {
    let upstream = Upstream::start(None);
    let gw = sqlite_gateway();
    for policy in seed_patterns() {
        assert_eq!(create(&gw, &policy).status, 201);
    }
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", upstream.port());
    let cases = [
        (
            "POST",
            r#"{"messages":[{"role":"user","content":"my aws_secret_access_key is AKIA..."}]}"#,
            "DENIED",
            "block-credential-leaks",
            vec!["block-credential-leaks", "default-allow"],
        ),
        (
            "POST",
            r#"{"messages":[{"role":"user","content":"export the Customer List please"}]}"#,
            "FLAGGED",
            "flag-sensitive",
            vec!["flag-sensitive", "default-allow"],
        ),
        (
            "POST",
            r#"{"messages":[{"role":"user","content":"aws_secret_access_key and salary"}]}"#,
            "DENIED",
            "block-credential-leaks",
            vec!["block-credential-leaks", "flag-sensitive", "default-allow"],
        ),
        (
            "POST",
            r#"{"messages":[{"role":"user","content":"what is the weather"}]}"#,
            "ALLOWED",
            "default-allow",
            vec!["default-allow"],
        ),
        ("GET", "", "ALLOWED", "default-allow", vec!["default-allow"]),
    ];
    for (i, (method, body, decision, policy, matching)) in cases.into_iter().enumerate() {
        let path = format!("/v1/chat/completions?case={i}");
        let full = format!("http://127.0.0.1:{}{path}", upstream.port());
        let mut args = vec![
            "-X",
            method,
            full.as_str(),
            "-H",
            "content-type: application/json",
        ];
        if !body.is_empty() {
            args.extend(["--data-binary", body]);
        }
        let through_envoy = gw.via_proxy(&args);
        // The query is not recorded: the i-th record for the chat path is this case's.
        let mut chat: Vec<Value> = Vec::new();
        assert!(wait_until(std::time::Duration::from_secs(5), || {
            chat = gw
                .audit()
                .into_iter()
                .filter(|r| r["path"] == "/v1/chat/completions")
                .collect();
            chat.len() > i
        }));
        let record = chat[i].clone();
        let played = post(
            &gw,
            "/v1/playground",
            json!({
            "method": method, "url": url.clone() + &format!("?case={i}"),
            "headers": {"content-type": "application/json"}, "body": body}),
        );
        assert_eq!(played.status, 200, "{played:?}");
        let played = played.json();
        // The same decision and deciding policy as the gateway's, through Envoy.
        assert_eq!(record["decision"], decision, "case {i}: {record}");
        assert_eq!(record["policy"], policy, "case {i}");
        assert_eq!(played["decision"], decision, "case {i}: {played}");
        assert_eq!(played["deciding"]["policy"], policy, "case {i}");
        assert_eq!(played["audit"]["policy_version"], record["policy_version"]);
        let listed: Vec<&str> = played["matching_policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["policy"].as_str().unwrap())
            .collect();
        assert_eq!(listed, matching, "case {i}: in priority order");
        let expected_status = if decision == "DENIED" { 403 } else { 200 };
        assert_eq!(
            through_envoy.status, expected_status,
            "case {i}: {through_envoy:?}"
        );
        if decision == "DENIED" {
            assert_eq!(through_envoy.json()["error"]["policy"], policy);
        }
    }
    assert_eq!(upstream.hits(), 3, "the two denied requests never left");
}

#[test]
fn secrets_written_through_the_api_are_injected_and_never_read_back() {
    const VALUE: &str = "SENTINEL-api-secret-4b1f";
    let upstream = Upstream::start(None);
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}", dir.join("store.db").display());
    let mut options = options();
    options.env.push(("UPSTREAM_KEY".into(), VALUE.into()));
    let gw = Gateway::start(&config(&url), options);
    assert_eq!(create(&gw, &allow("api", 10, &["/api/*"])).status, 201);
    let secret = json!({"name": "upstream-key", "rules": [{"host": "127.0.0.1", "paths": ["/api/keyed/*"]}],
                        "source": {"type": "env", "var": "UPSTREAM_KEY"}, "inject": {"style": "bearer"},
                        "allow_plaintext": true});
    let created = post(
        &gw,
        "/v1/secrets",
        json!({"secret": secret, "reason": "upstream key"}),
    );
    assert_eq!(created.status, 201, "{created:?}");

    let keyed = format!("http://127.0.0.1:{}/api/keyed/x", upstream.port());
    assert_eq!(gw.via_proxy(&[&keyed]).status, 200);
    let seen = upstream.seen();
    let authorization = seen
        .last()
        .unwrap()
        .header("authorization")
        .map(str::to_owned);
    assert_eq!(authorization, Some(format!("Bearer {VALUE}")));
    let record = gw.audit_for(|r| r["path"] == "/api/keyed/x");
    assert_eq!(
        record["transforms"][1]["annotations"]["injected"]["secret"],
        "upstream-key"
    );

    // Narrowing its rules through the API: the next request leaves without it.
    let mut narrowed = secret.clone();
    narrowed["rules"][0]["paths"] = json!(["/api/other/*"]);
    let body = json!({"version": 1, "secret": narrowed}).to_string();
    let reply = gw.api("PUT", "/v1/secrets/upstream-key", Some(EDITOR), Some(&body));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(gw.via_proxy(&[&keyed]).status, 200);
    assert!(
        upstream
            .seen()
            .last()
            .unwrap()
            .header("authorization")
            .is_none()
    );

    // What the API returns is the source reference, never the value.
    let read = gw.api("GET", "/v1/secrets/upstream-key", Some(VIEWER), None);
    assert_eq!(
        read.json()["secret"]["source"],
        json!({"type": "env", "var": "UPSTREAM_KEY"})
    );
    let history = gw.api(
        "GET",
        "/v1/secrets/upstream-key/history",
        Some(VIEWER),
        None,
    );
    let played = post(
        &gw,
        "/v1/playground",
        json!({"method": "GET", "url": keyed}),
    );
    let audit = gw.api("GET", "/v1/audit?limit=100", Some(VIEWER), None);
    gw.assert_no_leaks_checked(
        &[VALUE],
        &[(&read, 200), (&history, 200), (&played, 200), (&audit, 200)],
    );
    // Nor the store's files (the database, its WAL, its journal).
    for file in std::fs::read_dir(&dir).unwrap() {
        let path = file.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
            "the value reached {}",
            path.display()
        );
    }
}

#[test]
fn a_reorder_writes_every_priority_as_one_change_or_none_of_them() {
    let upstream = Upstream::start(None);
    let gw = sqlite_gateway();
    assert_eq!(
        create(&gw, &allow("broad-allow", 10, &["/r/*"])).status,
        201
    );
    let deny = json!({"name": "narrow-deny", "priority": 20, "action": "deny",
                      "rules": [{"host": "127.0.0.1", "paths": ["/r/*"]}]});
    assert_eq!(create(&gw, &deny).status, 201);
    let url = format!("http://127.0.0.1:{}/r/x", upstream.port());
    assert_eq!(
        gw.via_proxy(&[&url]).status,
        200,
        "broad-allow decides first"
    );
    let revision = || get(&gw, "/v1/status")["store_revision"].as_i64().unwrap();
    let before = revision();
    let reorder = |order: Value| {
        post(
            &gw,
            "/v1/policy-order",
            json!({"order": order, "reason": "deny first"}),
        )
    };

    // One stale version refuses the whole change: nothing moves.
    let stale = reorder(
        json!([{"name": "narrow-deny", "version": 1, "priority": 10},
                               {"name": "broad-allow", "version": 7, "priority": 20}]),
    );
    assert_eq!(stale.status, 409, "{stale:?}");
    assert_eq!(
        get(&gw, "/v1/policies/narrow-deny")["policy"]["priority"],
        20
    );
    assert_eq!(get(&gw, "/v1/policies/narrow-deny")["version"], 1);
    assert_eq!(revision(), before);
    assert_eq!(gw.via_proxy(&[&url]).status, 200);
    // Listed twice, or by a viewer: refused.
    let twice = reorder(json!([{"name": "narrow-deny", "version": 1, "priority": 1},
                               {"name": "narrow-deny", "version": 1, "priority": 2}]));
    assert_eq!(twice.status, 422, "{twice:?}");
    assert!(twice.body.contains("order[1].name"), "{twice:?}");
    let by_viewer = gw.api(
        "POST",
        "/v1/policy-order",
        Some(VIEWER),
        Some(&json!({"order": [{"name": "narrow-deny", "version": 1, "priority": 1}]}).to_string()),
    );
    assert_eq!(by_viewer.status, 403, "{by_viewer:?}");

    let done = reorder(
        json!([{"name": "narrow-deny", "version": 1, "priority": 10},
                              {"name": "broad-allow", "version": 1, "priority": 20}]),
    );
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(
        done.json()["reordered"],
        json!([{"name": "narrow-deny", "version": 2}, {"name": "broad-allow", "version": 2}])
    );
    assert_eq!(revision(), before + 1, "one change, one store revision");
    for name in ["narrow-deny", "broad-allow"] {
        let history = get(&gw, &format!("/v1/policies/{name}/history"));
        let newest = &history["versions"][1];
        assert_eq!(newest["operation"], "reorder", "{history}");
        assert_eq!(newest["reason"], "deny first");
        assert_eq!(newest["operator"], "alice");
    }
    assert_eq!(
        gw.via_proxy(&[&url]).status,
        403,
        "narrow-deny now decides first"
    );
}
