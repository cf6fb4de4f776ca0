//! The web console in a real browser: Debian's Chromium, driven by Playwright
//! (`tests/browser/console.mjs`, installed by `scripts/browser`), against the real
//! `portcullis serve` with an embedded store, after real requests through the real Envoy.
//! Screenshots of every page land in `target/console-screenshots/`.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::common::postgres::TestDatabase;
use crate::common::{Upstream, repo, wait_until};
use crate::console::{ADMIN, EDITOR, VIEWER, issuer, sso_gateway};

/// The value of the secret the wizard creates: read by the gateway from its environment,
/// never sent to the browser.
const WIZARD_SECRET: &str = "wizard-upstream-credential-91b2e7";

#[test]
fn the_console_signs_in_changes_a_policy_as_previewed_and_never_holds_a_token() {
    // The console's whole journey on PostgreSQL, with a single sign-on issuer beside the
    // admin tokens.
    let node_modules = repo().join("tests/browser/node_modules/playwright-core");
    assert!(
        node_modules.exists() && std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser tests need Chromium and tests/browser's packages: run scripts/browser \
         (scripts/test does)"
    );
    let upstream = Upstream::start(None);
    let db = TestDatabase::create();
    let issuer = issuer();
    let gw = sso_gateway(
        &db.url,
        &issuer,
        vec![("PORTCULLIS_SECRET_UPSTREAM".into(), WIZARD_SECRET.into())],
    );
    for policy in [
        json!({"name": "allow-upstream", "priority": 20, "action": "allow", "match_tags": [],
               "rules": [{"host": "127.0.0.1", "paths": ["/ok/*", "/x/*"]}]}),
        json!({"name": "deny-secrets", "priority": 10, "action": "deny",
               "rules": [{"host": "127.0.0.1", "paths": ["/secret/*"]}]}),
        json!({"name": "flag-uploads", "priority": 30, "action": "flag",
               "rules": [{"host": "127.0.0.1", "paths": ["/upload/*"]}]}),
        json!({"name": "payouts-need-a-person", "priority": 5, "action": "approve",
               "rules": [{"host": "127.0.0.1", "paths": ["/payouts/*"]}]}),
    ] {
        let body = json!({"policy": policy, "reason": "browser test"}).to_string();
        let reply = gw.api("POST", "/v1/policies", Some(EDITOR), Some(&body));
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    let base = format!("http://127.0.0.1:{}", upstream.port());
    for n in 0..6 {
        let reply = gw.via_proxy(&[&format!("{base}/ok/{n}")]);
        assert_eq!(reply.status, 200, "{reply:?}\n{}", gw.portcullis_log());
    }
    for n in 0..2 {
        assert_eq!(gw.via_proxy(&[&format!("{base}/secret/{n}")]).status, 403);
    }
    // A workload chooses its path: markup in it must stay text on the page.
    // A request waiting for approval, which the script approves in the console.
    let payouts = format!("{base}/payouts/run");
    let waiting = gw.via_proxy(&[&payouts]);
    assert_eq!(waiting.status, 403, "{waiting:?}");
    let approval = waiting.json()["error"]["approval"]["id"]
        .as_str()
        .expect("an approval id")
        .to_owned();
    let hostile = gw.via_proxy(&[&format!("{base}/x/%3Cimg%20src=x%20onerror=alert(1)%3E")]);
    assert_eq!(hostile.status, 200, "{hostile:?}");
    let record = gw.audit_for(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/x/")));
    let hostile_path = record["path"].as_str().unwrap().to_owned();
    // The console reads the store's audit events, which the gateway writes in batches.
    let stored = wait_until(Duration::from_secs(30), || {
        let reply = gw.api("GET", "/v1/audit?limit=100", Some(VIEWER), None);
        reply.status == 200 && reply.json()["events"].as_array().map_or(0, Vec::len) >= 9
    });
    assert!(stored, "the audit events never reached the store");

    let shots = repo().join("target/console-screenshots");
    run_browser_script(
        "console.mjs",
        &[
            ("CONSOLE_URL", format!("http://127.0.0.1:{}", gw.admin_port)),
            ("CONSOLE_TOKEN", EDITOR.to_owned()),
            ("CONSOLE_VIEWER", VIEWER.to_owned()),
            ("CONSOLE_HOSTILE", hostile_path),
            ("CONSOLE_SHOTS", shots.display().to_string()),
            ("CONSOLE_PROXY", gw.proxy_port.to_string()),
            ("CONSOLE_REPORTS", format!("{base}/reports/q1")),
            ("CONSOLE_ADMIN", ADMIN.to_owned()),
            ("CONSOLE_SSO_PERSON", "ana@example.com".to_owned()),
            (
                "CONSOLE_SECRET_ENV",
                "PORTCULLIS_SECRET_UPSTREAM".to_owned(),
            ),
            ("CONSOLE_SECRET_VALUE", WIZARD_SECRET.to_owned()),
            ("CONSOLE_APPROVAL", approval),
            ("CONSOLE_PAYOUTS", payouts),
        ],
    );
    // The request the script sent after the wizard arrived with the credential.
    let wizard = upstream
        .seen()
        .into_iter()
        .find(|seen| seen.path == "/ok/wizard")
        .expect("the request sent after the wizard reached the upstream");
    assert_eq!(
        wizard.header("authorization"),
        Some(format!("Bearer {WIZARD_SECRET}").as_str())
    );
    assert!(issuer.rejections().is_empty(), "{:?}", issuer.rejections());
    assert!(!gw.portcullis_log().contains(WIZARD_SECRET));
    for page in [
        "sign-in",
        "overview",
        "policies",
        "audit",
        "playground",
        "policy",
        "builder",
        "tokens",
        "approvals",
        "approvals-granted",
        "issuer",
        "sso",
        "secrets",
        "secret-wizard-inject",
        "secret-wizard-source",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}

#[test]
fn an_expired_session_is_refused_and_the_console_asks_to_sign_in_again() {
    let db = TestDatabase::create();
    let gw = crate::console::console_gateway(
        &db.url,
        "  sessions: {idle_timeout: 2s, absolute_timeout: 1h}\n",
        Vec::new(),
    );
    run_browser_script(
        "expiry.mjs",
        &[
            ("CONSOLE_URL", format!("http://127.0.0.1:{}", gw.admin_port)),
            ("CONSOLE_TOKEN", EDITOR.to_owned()),
            (
                "CONSOLE_SHOTS",
                repo()
                    .join("target/console-screenshots")
                    .display()
                    .to_string(),
            ),
        ],
    );
}

/// The policies page with 10,000 policies in the store: a benchmark (times, not a pass or
/// fail); BENCHMARKS.md records its output.
#[test]
#[ignore = "a benchmark: cargo test --test integration browser::policies_page_bench -- --ignored --nocapture"]
fn policies_page_bench() {
    const POLICIES: usize = 10_000;
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}", dir.join("store.db").display());
    let mut file = String::from("policies:\n");
    for n in 0..POLICIES {
        file.push_str(&format!(
            "  - {{name: bench-{n:05}, priority: {p}, action: allow, match_tags: [team:t{t}], \
             rules: [{{host: h{n}.example.com, paths: [/v1/*], methods: [GET]}}]}}\n",
            p = n % 1000,
            t = n % 50
        ));
    }
    let path = dir.join("policies.yaml");
    std::fs::write(&path, file).unwrap();
    let path = path.to_str().unwrap();
    for args in [
        &["migrate", "--store", url.as_str()][..],
        &["apply", "-f", path, "--store", url.as_str()][..],
    ] {
        let run = crate::common::run_portcullis(args, &[]);
        assert_eq!(run.code, 0, "{args:?}: {}", run.printed());
    }
    let gw = crate::common::Gateway::start(
        &format!(
            "store: {{url: \"{url}\"}}\nadmin:\n  tokens:\n    - {{name: alice, role: editor, token: {{env: EDITOR_TOKEN}}}}\n"
        ),
        crate::common::GatewayOptions {
            env: vec![("EDITOR_TOKEN".into(), EDITOR.into())],
            ..crate::common::GatewayOptions::default()
        },
    );
    run_browser_script(
        "policies-bench.mjs",
        &[
            ("CONSOLE_URL", format!("http://127.0.0.1:{}", gw.admin_port)),
            ("CONSOLE_TOKEN", EDITOR.to_owned()),
            ("CONSOLE_POLICIES", POLICIES.to_string()),
        ],
    );
}

/// Runs `tests/browser/SCRIPT` with Node.js and `env`; prints what it printed and fails the
/// test when it fails.
fn run_browser_script(script: &str, env: &[(&str, String)]) {
    let out = Command::new("node")
        .arg(repo().join("tests/browser").join(script))
        .envs(env.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("node runs (Node.js 20)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{printed}");
    assert!(out.status.success(), "{script} failed:\n{printed}");
}
