//! The web console's sign-in, played by an attacker: the real binary with an embedded store
//! and its admin server, driven with curl as a browser (and a hostile page) would. The
//! console's pages are driven in a real browser elsewhere; here, what the server enforces
//! whichever page asks: sessions, their cookie, CSRF, cross-site refusals, expiry, roles.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::issuer::{Forgery, Issuer, Person};
use crate::common::{Gateway, GatewayOptions, Reply, curl, wait_until};

pub const EDITOR: &str = "console-editor-token-5c1e";
pub const VIEWER: &str = "console-viewer-token-8f0a";
pub const ADMIN: &str = "console-admin-token-27d4";

/// A gateway with an embedded store, an editor (`alice`), a viewer (`dashboards`) and an
/// admin (`root`) token, and `admin.sessions` as given (`{}`: the defaults).
pub fn gateway(sessions: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}", dir.join("store.db").display());
    console_gateway(&url, &format!("  sessions: {sessions}\n"), Vec::new())
}

/// The console's gateway on the store at `store_url`, with the two admin tokens and
/// `admin_extra` (more of the `admin:` section, indented) and `env`.
pub fn console_gateway(store_url: &str, admin_extra: &str, env: Vec<(String, String)>) -> Gateway {
    Gateway::start(
        &console_config(store_url, admin_extra),
        console_options(env),
    )
}

fn console_config(store_url: &str, admin_extra: &str) -> String {
    format!(
        r#"
store:
  url: "{store_url}"
  secret_sources: {{env_prefixes: [PORTCULLIS_SECRET_]}}
transforms:
  - allowlist
  - {{name: rate_limit, rules: [{{host: 127.0.0.1, paths: ["/ok/*"]}}],
     config: {{requests: 1000, per: 30d}}}}
  - {{name: budget, rules: [{{host: 127.0.0.1}}], config: {{per: day, tokens: 100000}}}}
  - secrets
admin:
  tokens:
    - {{name: alice, role: editor, token: {{env: EDITOR_TOKEN}}}}
    - {{name: dashboards, role: viewer, token: {{env: VIEWER_TOKEN}}}}
    - {{name: root, role: admin, token: {{env: ADMIN_TOKEN}}}}
{admin_extra}"#
    )
}

fn console_options(mut env: Vec<(String, String)>) -> GatewayOptions {
    env.extend([
        ("EDITOR_TOKEN".into(), EDITOR.into()),
        ("VIEWER_TOKEN".into(), VIEWER.into()),
        ("ADMIN_TOKEN".into(), ADMIN.into()),
    ]);
    GatewayOptions {
        env,
        ..GatewayOptions::default()
    }
}

/// The stand-in issuer's client secret.
pub const SSO_SECRET: &str = "sso-client-secret-3d9b71";

/// `admin.oidc` for `issuer`, with `security` → editor and `auditors` → viewer, and the
/// console's callback on `port`.
fn oidc_section(issuer: &Issuer, port: u16, roles: &str) -> String {
    format!(
        r#"  oidc:
    issuer: "{}"
    client_id: portcullis-console
    client_secret: {{env: SSO_SECRET}}
    redirect_url: "http://127.0.0.1:{port}/v1/session/oidc/callback"
    label: the stand-in issuer
    roles: {roles}
"#,
        issuer.url()
    )
}

const SSO_ROLES: &str = "{security: editor, auditors: viewer}";

/// A console gateway on `store_url` signing in with `issuer`. The callback's port is known
/// once the gateway has started: the config is rewritten with it, and the issuer told.
pub fn sso_gateway(store_url: &str, issuer: &Issuer, mut env: Vec<(String, String)>) -> Gateway {
    env.push(("SSO_SECRET".to_owned(), SSO_SECRET.to_owned()));
    let gw = Gateway::start(
        &console_config(store_url, &oidc_section(issuer, 9, SSO_ROLES)),
        console_options(env),
    );
    set_sso_roles(&gw, store_url, issuer, SSO_ROLES);
    gw
}

/// Rewrites `admin.oidc.roles` and the callback's port; waits for the gateway to use the
/// port (a change of roles alone is waited for by the caller).
fn set_sso_roles(gw: &Gateway, store_url: &str, issuer: &Issuer, roles: &str) {
    let redirect = format!(
        "http://127.0.0.1:{}/v1/session/oidc/callback",
        gw.admin_port
    );
    issuer.set_redirect_uri(&redirect);
    let config = console_config(store_url, &oidc_section(issuer, gw.admin_port, roles));
    gw.write_config(&config);
    let marker = crate::common::backends::url_form_encode(&redirect);
    let reloaded = wait_until(Duration::from_secs(10), || {
        let begun = call(gw, "GET", "/v1/session/oidc", &[], None);
        begun
            .header("location")
            .is_some_and(|l| l.contains(&format!("redirect_uri={marker}")))
    });
    assert!(
        reloaded,
        "the gateway never used the new admin.oidc\n{}",
        gw.portcullis_log()
    );
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

// ---- Single sign-on ----

/// The `name=value` of each `Set-Cookie` of a reply.
fn set_cookies(reply: &Reply) -> Vec<String> {
    reply
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, value)| value.clone())
        .collect()
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_owned()
}

/// A browser's single sign-on up to the issuer's redirect back: the binding cookie the
/// console set (`portcullis_oidc=…`) and the callback URL the issuer sent the browser to.
fn sso_until_callback(gw: &Gateway, issuer: &Issuer, email: &str) -> (String, String) {
    let begun = call(gw, "GET", "/v1/session/oidc", &[], None);
    assert_eq!(begun.status, 303, "{begun:?}");
    let binding = set_cookies(&begun)
        .into_iter()
        .find(|c| c.starts_with("portcullis_oidc="))
        .expect("a cookie binding the sign-in to this browser");
    let attributes = binding.to_ascii_lowercase();
    for attribute in ["httponly", "samesite=lax", "path=/v1/session/oidc"] {
        assert!(attributes.contains(attribute), "{binding}");
    }
    let authorize = begun.header("location").unwrap().to_owned();
    assert!(authorize.starts_with(&format!("{}/authorize?", issuer.url())));
    assert!(
        authorize.contains("code_challenge_method=S256"),
        "{authorize}"
    );
    let page = curl(gw.dir.path(), &[&authorize]);
    assert_eq!(page.status, 200, "{page:?} {:?}", issuer.rejections());
    let request = page
        .body
        .split("name=\"request\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the issuer's sign-in page")
        .to_owned();
    let chosen = curl(
        gw.dir.path(),
        &[
            "-X",
            "POST",
            &format!("{}/authorize", issuer.url()),
            "--data-urlencode",
            &format!("request={request}"),
            "--data-urlencode",
            &format!("person={email}"),
        ],
    );
    assert_eq!(chosen.status, 303, "{chosen:?} {:?}", issuer.rejections());
    (
        cookie_pair(&binding),
        chosen.header("location").unwrap().to_owned(),
    )
}

/// The issuer's redirect followed, with `cookie` (or none).
fn follow_callback(gw: &Gateway, callback: &str, cookie: Option<&str>) -> Reply {
    let header = cookie.map(|c| format!("Cookie: {c}"));
    let mut args = vec![callback];
    if let Some(header) = &header {
        args.extend(["-H", header.as_str()]);
    }
    curl(gw.dir.path(), &args)
}

/// A whole single sign-on as `email`: the callback's reply, and the session cookie header
/// it set (when it did).
fn sso_sign_in(gw: &Gateway, issuer: &Issuer, email: &str) -> (Reply, Option<String>) {
    let (binding, callback) = sso_until_callback(gw, issuer, email);
    let reply = follow_callback(gw, &callback, Some(&binding));
    let session = set_cookies(&reply)
        .into_iter()
        .find(|c| c.starts_with("portcullis_session=") && !c.starts_with("portcullis_session=;"))
        .map(|c| format!("Cookie: {}", cookie_pair(&c)));
    (reply, session)
}

fn people() -> Vec<Person> {
    vec![
        Person::new("ana@example.com", &["security", "everyone"]),
        Person::new("vic@example.com", &["auditors"]),
        Person::new("eve@example.com", &["contractors"]),
    ]
}

pub fn issuer() -> Issuer {
    Issuer::start("portcullis-console", Some(SSO_SECRET), "unset", people())
}

fn embedded_store() -> String {
    let dir = tempfile::tempdir().unwrap().keep();
    format!("sqlite://{}", dir.join("store.db").display())
}

#[test]
fn single_sign_on_opens_a_session_with_the_role_its_groups_map_to() {
    let issuer = issuer();
    let store = embedded_store();
    let gw = sso_gateway(&store, &issuer, Vec::new());
    let providers = call(&gw, "GET", "/v1/session/providers", &[], None);
    assert_eq!(providers.status, 200, "{providers:?}");
    assert_eq!(providers.json()["oidc"]["label"], "the stand-in issuer");

    let (reply, session) = sso_sign_in(&gw, &issuer, "ana@example.com");
    assert_eq!(reply.status, 303, "{reply:?}\n{}", gw.portcullis_log());
    assert_eq!(reply.header("location"), Some("/"));
    let session = session.expect("a session cookie");
    let set = set_cookies(&reply).join("\n").to_ascii_lowercase();
    assert!(
        set.contains("httponly") && set.contains("samesite=strict"),
        "{set}"
    );
    assert!(
        set.contains("portcullis_oidc=;") && set.contains("max-age=0"),
        "the binding cookie is cleared: {set}"
    );
    let me = call(&gw, "GET", "/v1/session", &[&session], None);
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.json()["name"], "ana@example.com");
    assert_eq!(me.json()["role"], "editor");
    let csrf = format!(
        "X-CSRF-Token: {}",
        me.json()["csrf_token"].as_str().unwrap()
    );
    let created = call(
        &gw,
        "POST",
        "/v1/policies",
        &[&session, &csrf],
        Some(&policy_body("made-by-sso")),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let history = call(
        &gw,
        "GET",
        "/v1/policies/made-by-sso/history",
        &[&session],
        None,
    );
    assert_eq!(
        history.json()["versions"][0]["operator"],
        "ana@example.com",
        "{history:?}"
    );

    // The ID token and the client secret reach neither the browser nor the log.
    let id_tokens = issuer.id_tokens();
    assert_eq!(id_tokens.len(), 1);
    assert_eq!(
        crate::common::issuer::claim(&id_tokens[0], "email"),
        "ana@example.com"
    );
    let log = gw.portcullis_log();
    for secret in [id_tokens[0].as_str(), SSO_SECRET] {
        assert!(!reply.body.contains(secret) && !me.body.contains(secret));
        assert!(!log.contains(secret), "a secret in the log");
    }
    assert!(issuer.rejections().is_empty(), "{:?}", issuer.rejections());

    // A viewer reads and cannot write; a person whose groups map to nothing is refused.
    let (_, viewer) = sso_sign_in(&gw, &issuer, "vic@example.com");
    let viewer = viewer.expect("a viewer session");
    let me = call(&gw, "GET", "/v1/session", &[&viewer], None);
    assert_eq!(me.json()["role"], "viewer");
    assert_eq!(me.json()["can"]["edit_policies"], false);
    let csrf_v = format!(
        "X-CSRF-Token: {}",
        me.json()["csrf_token"].as_str().unwrap()
    );
    let refused = call(
        &gw,
        "POST",
        "/v1/policies",
        &[&viewer, &csrf_v],
        Some(&policy_body("by-a-viewer")),
    );
    assert_eq!(refused.status, 403, "{refused:?}");
    let (reply, none) = sso_sign_in(&gw, &issuer, "eve@example.com");
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(none.is_none());
    assert!(
        reply.body.contains("contractors") && reply.body.contains("admin.oidc.roles"),
        "{}",
        reply.body
    );

    // Demoting a group in the config demotes its open sessions at their next call.
    set_sso_roles(&gw, &store, &issuer, "{security: viewer, auditors: viewer}");
    let demoted = wait_until(Duration::from_secs(10), || {
        call(&gw, "GET", "/v1/session", &[&session], None).json()["role"] == "viewer"
    });
    assert!(demoted, "{}", gw.portcullis_log());
    let refused = call(
        &gw,
        "POST",
        "/v1/policies",
        &[&session, &csrf],
        Some(&policy_body("after-demotion")),
    );
    assert_eq!(refused.status, 403, "{refused:?}");
}

#[test]
fn single_sign_on_refuses_a_planted_code_a_replay_and_every_forged_id_token() {
    let issuer = issuer();
    let gw = sso_gateway(&embedded_store(), &issuer, Vec::new());
    let refused = |reply: &Reply, status: u16, words: &str| {
        assert_eq!(reply.status, status, "{reply:?}");
        assert!(reply.body.contains(words), "{words:?} in {}", reply.body);
        assert!(
            set_cookies(reply)
                .iter()
                .all(|c| !c.starts_with("portcullis_session=")),
            "no session: {reply:?}"
        );
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    };

    // The attacker's own sign-in, its callback planted in the victim's browser (a link or
    // an image): the victim's browser began no sign-in, or another one.
    let (_, planted) = sso_until_callback(&gw, &issuer, "eve@example.com");
    refused(
        &follow_callback(&gw, &planted, None),
        400,
        "no sign-in under way",
    );
    let (victims, _) = sso_until_callback(&gw, &issuer, "ana@example.com");
    let (_, attackers) = sso_until_callback(&gw, &issuer, "ana@example.com");
    refused(
        &follow_callback(&gw, &attackers, Some(&victims)),
        400,
        "state mismatch",
    );
    // A callback completes once.
    let (binding, callback) = sso_until_callback(&gw, &issuer, "ana@example.com");
    assert_eq!(follow_callback(&gw, &callback, Some(&binding)).status, 303);
    refused(
        &follow_callback(&gw, &callback, Some(&binding)),
        400,
        "no sign-in under way",
    );
    // The issuer's own refusal: only its error code is repeated, never its description.
    let (binding, callback) = sso_until_callback(&gw, &issuer, "ana@example.com");
    let state = callback.split("state=").nth(1).unwrap();
    let denied = format!(
        "http://127.0.0.1:{}/v1/session/oidc/callback?error=access_denied&error_description=Call+555-0100&state={state}",
        gw.admin_port
    );
    let reply = follow_callback(&gw, &denied, Some(&binding));
    refused(&reply, 401, "access_denied");
    assert!(!reply.body.contains("555"), "{}", reply.body);

    for (forgery, words) in [
        (Forgery::OtherAudience, "InvalidAudience"),
        (Forgery::OtherNonce, "nonce"),
        (Forgery::Expired, "ExpiredSignature"),
        (Forgery::UnknownKey, "InvalidSignature"),
        (
            Forgery::SymmetricWithClientSecret,
            "only asymmetric algorithms",
        ),
    ] {
        issuer.forge(Some(forgery));
        let (reply, session) = sso_sign_in(&gw, &issuer, "ana@example.com");
        assert!(session.is_none(), "{forgery:?} opened a session");
        refused(&reply, 401, words);
        assert!(
            reply.body.contains("ID token is refused"),
            "{forgery:?}: {}",
            reply.body
        );
    }
    issuer.forge(None);
    let (reply, session) = sso_sign_in(&gw, &issuer, "ana@example.com");
    assert_eq!(reply.status, 303, "{reply:?}");
    assert!(session.is_some());
    // Every code was exchanged with its verifier: the issuer refused nothing.
    assert!(issuer.rejections().is_empty(), "{:?}", issuer.rejections());
}

#[test]
fn a_single_sign_on_config_is_checked_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sso.yaml");
    std::fs::write(
        &file,
        "admin:\n  oidc:\n    issuer: http://idp.example.com\n    client_id: console\n    \
         redirect_url: https://console.example.com/callback\n    scopes: [email]\n    \
         roles: {}\n",
    )
    .unwrap();
    let run = crate::common::run_portcullis(&["validate", file.to_str().unwrap()], &[]);
    assert_eq!(run.code, 1, "{}", run.printed());
    let out = run.printed();
    for expected in [
        ":3:5: admin.oidc.issuer: \"http://idp.example.com\" is not https",
        ":5:5: admin.oidc.redirect_url: \"https://console.example.com/callback\": the \
         callback's path is /v1/session/oidc/callback",
        ":6:5: admin.oidc.scopes: sign-in needs the `openid` scope",
        ":7:5: admin.oidc.roles: map at least one value",
    ] {
        assert!(out.contains(expected), "{expected:?} in\n{out}");
    }
}

// ---- Testing a secret's source ----

#[test]
fn testing_a_secret_source_says_whether_it_reads_and_never_what_it_read() {
    const VALUE: &str = "deploy-key-value-0e4a9c71";
    let gw = console_gateway(
        &embedded_store(),
        "",
        vec![("PORTCULLIS_SECRET_DEPLOY_KEY".into(), VALUE.into())],
    );
    let test = |token: &str, source: Value| {
        gw.api(
            "POST",
            "/v1/secret-sources/test",
            Some(token),
            Some(&json!({"source": source}).to_string()),
        )
    };
    let deploy_key = json!({"type": "env", "var": "PORTCULLIS_SECRET_DEPLOY_KEY"});
    let readable = test(ADMIN, deploy_key.clone());
    assert_eq!(readable.status, 200, "{readable:?}");
    assert_eq!(readable.json()["readable"], true);
    assert_eq!(
        readable.json()["source"],
        "env PORTCULLIS_SECRET_DEPLOY_KEY"
    );
    // Not read: an unset variable; a value that is not the JSON its json_key expects.
    let unset = test(
        ADMIN,
        json!({"type": "env", "var": "PORTCULLIS_SECRET_NOT_SET"}),
    );
    assert_eq!(unset.json()["readable"], false, "{unset:?}");
    assert!(
        unset.json()["error"]
            .as_str()
            .unwrap()
            .contains("PORTCULLIS_SECRET_NOT_SET"),
        "{unset:?}"
    );
    let not_json = test(
        ADMIN,
        json!({"type": "env", "var": "PORTCULLIS_SECRET_DEPLOY_KEY", "json_key": "token"}),
    );
    assert_eq!(not_json.json()["readable"], false, "{not_json:?}");
    assert!(not_json.body.contains("not a JSON object"), "{not_json:?}");
    // Outside store.secret_sources, nothing is read: the test is no oracle for the other
    // variables and files of the gateway host (its admin tokens among them).
    let mut outside = Vec::new();
    for source in [
        json!({"type": "env", "var": "ADMIN_TOKEN"}),
        json!({"type": "file", "path": "/etc/hostname"}),
    ] {
        let refused = test(ADMIN, source);
        assert_eq!(refused.status, 422, "{refused:?}");
        assert!(refused.body.contains("secret_sources"), "{refused:?}");
        outside.push(refused);
    }
    // A source that is not one: every problem at its field, nothing read.
    let invalid = test(ADMIN, json!({"type": "env"}));
    assert_eq!(invalid.status, 422, "{invalid:?}");
    assert!(invalid.body.contains("source"), "{invalid:?}");
    // Only an admin (who may change secrets) may make the gateway host read a source.
    for token in [EDITOR, VIEWER] {
        let refused = test(token, deploy_key.clone());
        assert_eq!(refused.status, 403, "{refused:?}");
    }
    for reply in [&readable, &unset, &not_json, &invalid]
        .into_iter()
        .chain(&outside)
    {
        assert!(
            !reply.body.contains(VALUE),
            "the value in an answer: {reply:?}"
        );
    }
    for secret in [VALUE, ADMIN] {
        assert!(!gw.portcullis_log().contains(secret), "a secret in the log");
    }
}
