//! The web console's sign-in, played by an attacker: the real binary with an embedded store
//! and its admin server, driven with curl as a browser (and a hostile page) would. The
//! console's pages are driven in a real browser elsewhere; here, what the server enforces
//! whichever page asks: sessions, their cookie, CSRF, cross-site refusals, expiry, roles.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Gateway, GatewayOptions, Reply, wait_until};

pub const EDITOR: &str = "console-editor-token-5c1e";
pub const VIEWER: &str = "console-viewer-token-8f0a";

/// A gateway with an embedded store, an editor (`alice`) and a viewer (`dashboards`) admin
/// token, and `admin.sessions` as given (`{}`: the defaults).
pub fn gateway(sessions: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}", dir.join("store.db").display());
    let config = format!(
        r#"
store: {{url: "{url}"}}
admin:
  tokens:
    - {{name: alice, role: editor, token: {{env: EDITOR_TOKEN}}}}
    - {{name: dashboards, role: viewer, token: {{env: VIEWER_TOKEN}}}}
  sessions: {sessions}
"#
    );
    Gateway::start(
        &config,
        GatewayOptions {
            env: vec![
                ("EDITOR_TOKEN".into(), EDITOR.into()),
                ("VIEWER_TOKEN".into(), VIEWER.into()),
            ],
            ..GatewayOptions::default()
        },
    )
}

/// A call to the admin server with exactly these headers (no bearer token).
fn call(gw: &Gateway, method: &str, path: &str, headers: &[&str], body: Option<&str>) -> Reply {
    gw.api_with_headers(method, path, headers, body)
}

/// A browser's console session: its cookie header and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
    set_cookie: String,
    body: Value,
}

fn sign_in(gw: &Gateway, token: &str) -> Session {
    let origin = format!("Origin: http://127.0.0.1:{}", gw.admin_port);
    let reply = call(
        gw,
        "POST",
        "/v1/session",
        &[&origin, "Sec-Fetch-Site: same-origin"],
        Some(&json!({"token": token}).to_string()),
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    let set_cookie = reply
        .header("set-cookie")
        .expect("a session cookie")
        .to_owned();
    let pair = set_cookie.split(';').next().unwrap().trim().to_owned();
    let body = reply.json();
    Session {
        cookie: format!("Cookie: {pair}"),
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
        set_cookie,
        body,
    }
}

fn policy_body(name: &str) -> String {
    json!({"policy": {"name": name, "priority": 10, "action": "allow",
                      "rules": [{"host": "example.com"}]},
           "reason": "console"})
    .to_string()
}

#[test]
fn the_console_is_served_from_the_binary_under_a_strict_content_security_policy() {
    let gw = gateway("{}");
    let page = call(&gw, "GET", "/", &[], None);
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert!(page.body.contains("/console/app.js"), "{}", page.body);
    let script = call(&gw, "GET", "/console/app.js", &[], None);
    assert_eq!(script.status, 200);
    assert!(
        script
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(script.body.contains("/v1/session"));
    let missing = call(&gw, "GET", "/console/../Cargo.toml", &[], None);
    assert_eq!(missing.status, 404, "{missing:?}");
}

#[test]
fn a_session_cookie_acts_as_its_token_and_a_write_needs_its_csrf_token() {
    let gw = gateway("{}");
    let session = sign_in(&gw, EDITOR);
    // The cookie cannot be read by a script, nor sent by another site's page.
    let attributes = session.set_cookie.to_ascii_lowercase();
    for attribute in ["httponly", "samesite=strict", "path=/"] {
        assert!(attributes.contains(attribute), "{}", session.set_cookie);
    }
    assert_eq!(session.body["name"], "alice");
    assert_eq!(session.body["role"], "editor");
    // The admin token is in neither the cookie nor the answer.
    assert!(!session.set_cookie.contains(EDITOR));
    assert!(!session.body.to_string().contains(EDITOR));

    let cookie = session.cookie.as_str();
    let me = call(&gw, "GET", "/v1/session", &[cookie], None);
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.json()["csrf_token"], session.csrf.as_str());
    let listed = call(&gw, "GET", "/v1/policies", &[cookie], None);
    assert_eq!(listed.status, 200, "{listed:?}");

    // A write with the cookie alone — what a forged form or a cross-site fetch would
    // carry — is refused; so is one with a wrong token.
    let body = policy_body("from-console");
    let bare = call(&gw, "POST", "/v1/policies", &[cookie], Some(&body));
    assert_eq!(bare.status, 403, "{bare:?}");
    assert!(bare.body.contains("X-CSRF-Token"), "{bare:?}");
    let wrong = call(
        &gw,
        "POST",
        "/v1/policies",
        &[cookie, "X-CSRF-Token: guessed"],
        Some(&body),
    );
    assert_eq!(wrong.status, 403, "{wrong:?}");
    let csrf = format!("X-CSRF-Token: {}", session.csrf);
    let created = call(&gw, "POST", "/v1/policies", &[cookie, &csrf], Some(&body));
    assert_eq!(created.status, 201, "{created:?}");
    // The change is recorded under the session's operator.
    let history = call(
        &gw,
        "GET",
        "/v1/policies/from-console/history",
        &[cookie],
        None,
    );
    assert!(history.body.contains("\"alice\""), "{history:?}");

    // Even with the CSRF token, a request the browser marks as cross-site is refused.
    let evil_origin = call(
        &gw,
        "POST",
        "/v1/policies",
        &[cookie, &csrf, "Origin: http://evil.example"],
        Some(&policy_body("from-evil")),
    );
    assert_eq!(evil_origin.status, 403, "{evil_origin:?}");
    let evil_fetch = call(
        &gw,
        "GET",
        "/v1/policies",
        &[cookie, "Sec-Fetch-Site: cross-site"],
        None,
    );
    assert_eq!(evil_fetch.status, 403, "{evil_fetch:?}");
    let absent = call(&gw, "GET", "/v1/policies/from-evil", &[cookie], None);
    assert_eq!(absent.status, 404, "{absent:?}");
}

#[test]
fn sign_in_refuses_unknown_tokens_and_other_sites() {
    let gw = gateway("{}");
    let wrong = call(
        &gw,
        "POST",
        "/v1/session",
        &[],
        Some(r#"{"token": "not-a-token"}"#),
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(wrong.header("set-cookie").is_none());
    assert!(!wrong.body.contains("not-a-token"), "{wrong:?}");
    // Login CSRF: another site's page signing the browser in with the attacker's token.
    let forged = call(
        &gw,
        "POST",
        "/v1/session",
        &["Origin: http://evil.example"],
        Some(&json!({"token": EDITOR}).to_string()),
    );
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(forged.header("set-cookie").is_none());
    let malformed = call(&gw, "POST", "/v1/session", &[], Some("{\"tok"));
    assert_eq!(malformed.status, 400, "{malformed:?}");
    let made_up = call(
        &gw,
        "GET",
        "/v1/policies",
        &["Cookie: portcullis_session=made-up"],
        None,
    );
    assert_eq!(made_up.status, 401, "{made_up:?}");
}

#[test]
fn a_viewer_session_reads_but_cannot_write() {
    let gw = gateway("{}");
    let session = sign_in(&gw, VIEWER);
    assert_eq!(session.body["role"], "viewer");
    assert_eq!(session.body["can"]["edit_policies"], false);
    let csrf = format!("X-CSRF-Token: {}", session.csrf);
    let listed = call(&gw, "GET", "/v1/policies", &[&session.cookie], None);
    assert_eq!(listed.status, 200, "{listed:?}");
    let refused = call(
        &gw,
        "POST",
        "/v1/policies",
        &[&session.cookie, &csrf],
        Some(&policy_body("by-viewer")),
    );
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.contains("needs an editor"), "{refused:?}");
}

#[test]
fn sign_out_ends_the_session() {
    let gw = gateway("{}");
    let session = sign_in(&gw, EDITOR);
    // Sign-out is a write: without the CSRF token, another site cannot sign you out.
    let forged = call(&gw, "DELETE", "/v1/session", &[&session.cookie], None);
    assert_eq!(forged.status, 403, "{forged:?}");
    let csrf = format!("X-CSRF-Token: {}", session.csrf);
    let out = call(
        &gw,
        "DELETE",
        "/v1/session",
        &[&session.cookie, &csrf],
        None,
    );
    assert_eq!(out.status, 204, "{out:?}");
    assert!(
        out.header("set-cookie").unwrap().contains("Max-Age=0"),
        "{out:?}"
    );
    let after = call(&gw, "GET", "/v1/policies", &[&session.cookie], None);
    assert_eq!(after.status, 401, "{after:?}");
}

#[test]
fn a_session_ends_when_idle_and_at_its_absolute_timeout() {
    let gw = gateway("{idle_timeout: 2s, absolute_timeout: 5s}");
    // Left alone longer than its idle timeout, a session is over.
    let idle = sign_in(&gw, EDITOR);
    assert_eq!(idle.body["idle_timeout_seconds"], 2);
    std::thread::sleep(Duration::from_millis(2500));
    let reply = call(&gw, "GET", "/v1/status", &[&idle.cookie], None);
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.body.contains("expired"), "{reply:?}");

    // Kept busy, it still ends at its absolute timeout.
    let busy = sign_in(&gw, EDITOR);
    let mut last = None;
    let ended = wait_until(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(300));
        let reply = call(&gw, "GET", "/v1/status", &[&busy.cookie], None);
        let ended = reply.status == 401;
        last = Some(reply);
        ended
    });
    let last = last.unwrap();
    assert!(ended, "still signed in: {last:?}");
    assert!(last.body.contains("expired"), "{last:?}");
}
