//! The `secrets` transform through the real Envoy: every injection style with env and file
//! sources, scope and `require`, body buffering, rotation and outages. Every credential is
//! a sentinel, and every test ends by checking that no sentinel leaked.

use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::common::session::Session;
use crate::common::{Gateway, GatewayOptions, Upstream, wait_until};

const GITHUB: &str = "SENTINEL-ghp-7f3a9c2e";
const BASIC: &str = "SENTINEL-basic-91be";
const API_KEY: &str = "SENTINEL-apikey+/=&x";
const TELEGRAM: &str = "SENTINEL-123456:AAE-tg";
const OPENAI: &str = "SENTINEL-sk-proj-55d1";
const HMAC_KEY: &str = "SENTINEL-hmac-key-0c";
const ALL: &[&str] = &[GITHUB, BASIC, API_KEY, TELEGRAM, OPENAI, HMAC_KEY];

fn env() -> Vec<(String, String)> {
    [
        ("GITHUB_TOKEN", GITHUB),
        ("BASIC_PASSWORD", BASIC),
        ("API_KEY", API_KEY),
        ("TELEGRAM_TOKEN", TELEGRAM),
        ("HMAC_KEY", HMAC_KEY),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// Policies allow everything to the upstream; the secrets differ per path.
fn config(openai_file: &str) -> String {
    format!(
        r#"
gateway: {{tags: [env:test]}}
identities:
  - {{name: ci, token: {{env: CI_PROXY_TOKEN}}, tags: [team:ci]}}
policies:
  - {{name: upstream, action: allow, rules: [{{host: 127.0.0.1}}, {{host: localhost}}]}}
secrets:
  - name: github
    match_tags: [team:ci]
    source: {{type: env, var: GITHUB_TOKEN}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: [{{host: 127.0.0.1, paths: ["/bearer/*"], methods: [GET, POST]}}]
  - name: github-shadowed
    source: {{type: env, var: GITHUB_TOKEN}}
    allow_plaintext: true
    inject: {{style: custom, header: X-Shadow, format: "{{{{ value }}}}"}}
    rules: [{{host: 127.0.0.1, paths: ["/bearer/*"]}}]
  - name: registry
    source: {{type: env, var: BASIC_PASSWORD}}
    allow_plaintext: true
    inject: {{style: basic, username: x-access-token}}
    rules: [{{host: 127.0.0.1, paths: ["/basic/*"]}}]
  - name: api-header
    source: {{type: env, var: API_KEY}}
    allow_plaintext: true
    inject: {{style: custom, header: X-Api-Key, format: "token {{{{ value }}}} b64={{{{ base64 .Value }}}}"}}
    rules: [{{host: 127.0.0.1, paths: ["/custom-header/*"]}}]
  - name: api-query
    source: {{type: env, var: API_KEY}}
    allow_plaintext: true
    inject: {{style: custom, query: key}}
    rules: [{{host: 127.0.0.1, paths: ["/custom-query/*"]}}]
  - name: telegram
    source: {{type: env, var: TELEGRAM_TOKEN}}
    allow_plaintext: true
    inject: {{style: path_token, placeholder: TELEGRAM_PLACEHOLDER}}
    rules: [{{host: 127.0.0.1, paths: ["/bot*"]}}]
  - name: openai
    source: {{type: file, path: {openai_file}, ttl: 1s, failure_ttl: 1s}}
    allow_plaintext: true
    inject: {{style: proxy_token, placeholder: ptok_openai_Zq81xk, locations: [header:authorization, query:api_key, path, body], require: true}}
    rules: [{{host: localhost, paths: ["/v1/*"]}}]
  - name: webhook
    source: {{type: env, var: HMAC_KEY}}
    allow_plaintext: true
    inject:
      style: hmac
      header: X-Signature
      prefix: "sha256="
      timestamp_header: X-Timestamp
      message: "{{{{ method }}}}\n{{{{ path_and_query }}}}\n{{{{ timestamp }}}}\n{{{{ body_sha256 }}}}"
    rules: [{{host: 127.0.0.1, paths: ["/hooks/*"]}}]
transforms: [allowlist, secrets]
"#
    )
}

struct Setup {
    s: Session,
    openai_file: std::path::PathBuf,
}

impl std::ops::Deref for Setup {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.s
    }
}

impl std::ops::DerefMut for Setup {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.s
    }
}

impl Setup {
    fn start() -> Setup {
        let upstream = Upstream::start(None);
        let dir = tempfile::tempdir().unwrap().keep();
        let openai_file = dir.join("openai-key");
        std::fs::write(&openai_file, format!("{OPENAI}\n")).unwrap();
        let mut env = env();
        env.push(("CI_PROXY_TOKEN".into(), "ci-proxy-token-1".into()));
        let gw = Gateway::start(
            &config(&openai_file.display().to_string()),
            GatewayOptions {
                env,
                ..GatewayOptions::default()
            },
        );
        Setup {
            s: Session::new(gw, upstream),
            openai_file,
        }
    }

    fn no_leaks(&self) {
        self.s.assert_no_leaks(ALL);
    }
}

#[test]
fn bearer_basic_and_custom_reach_the_upstream_exactly() {
    let mut s = Setup::start();
    let bearer = s.url("/bearer/repos");
    assert_eq!(
        s.send(&[
            "--proxy-user",
            "ci:ci-proxy-token-1",
            "-H",
            "Authorization: Bearer workload-own",
            &bearer
        ]),
        200
    );
    let seen = s.seen("/bearer/repos");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {GITHUB}").as_str())
    );
    assert_eq!(
        seen.header("x-shadow"),
        None,
        "only the first matching secret applies"
    );
    let record = s.gw.audit_for(|r| r["path"] == "/bearer/repos");
    let trace = &record["transforms"][1];
    assert_eq!(trace["name"], "secrets");
    assert_eq!(
        trace["annotations"],
        serde_json::json!({"injected": {"secret": "github", "locations": ["header:authorization"]},
                           "shadowed": ["github-shadowed"]})
    );

    // Without the ci tag, `github` does not apply: the next secret in order does.
    assert_eq!(s.get("/bearer/other"), 200);
    let seen = s.seen("/bearer/other");
    assert_eq!(
        seen.header("authorization"),
        None,
        "no credential for an untagged workload"
    );
    assert_eq!(seen.header("x-shadow"), Some(GITHUB));

    assert_eq!(s.get("/basic/x"), 200);
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{BASIC}"));
    assert_eq!(
        s.seen("/basic/x").header("authorization"),
        Some(format!("Basic {expected}").as_str())
    );

    assert_eq!(s.get("/custom-header/x"), 200);
    let b64 = base64::engine::general_purpose::STANDARD.encode(API_KEY);
    assert_eq!(
        s.seen("/custom-header/x").header("x-api-key"),
        Some(format!("token {API_KEY} b64={b64}").as_str())
    );

    assert_eq!(s.get("/custom-query/x?a=1&key=workload"), 200);
    let encoded = API_KEY
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
        .replace('&', "%26");
    s.seen(&format!("/custom-query/x?a=1&key={encoded}"));

    // Outside every secret's rules: nothing is added.
    assert_eq!(
        {
            let url = s.url("/plain");
            s.send(&["-H", "Authorization: Bearer mine", &url])
        },
        200
    );
    assert_eq!(
        s.seen("/plain").header("authorization"),
        Some("Bearer mine")
    );
    s.no_leaks();
}

#[test]
fn path_and_proxy_tokens_are_swapped_and_required() {
    let mut s = Setup::start();
    assert_eq!(s.get("/botTELEGRAM_PLACEHOLDER/sendMessage?chat=1"), 200);
    s.seen(&format!("/bot{TELEGRAM}/sendMessage?chat=1"));
    let record =
        s.gw.audit_for(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/bot")));
    assert_eq!(
        record["path"], "/botTELEGRAM_PLACEHOLDER/sendMessage",
        "audit keeps the placeholder"
    );

    // proxy_token in a header, the query and the path at once.
    let url = s.url_at(
        "localhost",
        "/v1/ptok_openai_Zq81xk/chat?api_key=ptok_openai_Zq81xk",
    );
    assert_eq!(
        s.send(&["-H", "Authorization: Bearer ptok_openai_Zq81xk", &url]),
        200
    );
    let seen = s.seen(&format!("/v1/{OPENAI}/chat?api_key={OPENAI}"));
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {OPENAI}").as_str())
    );
    let record =
        s.gw.audit_for(|r| r["path"] == "/v1/ptok_openai_Zq81xk/chat");
    assert_eq!(
        record["transforms"][1]["annotations"]["swapped"],
        serde_json::json!({"secret": "openai", "locations": ["header:authorization", "path", "query:api_key"]})
    );

    // require: a request to the host with its own credential where the placeholder belongs
    // is refused, never forwarded.
    let before = s.upstream.hits();
    assert_eq!(
        {
            let url = s.url_at("localhost", "/v1/models");
            s.send(&["-H", "Authorization: Bearer sk-workload-own", &url])
        },
        403
    );
    let body = s.last().json();
    assert_eq!(body["error"]["reason"], "foreign_credential");
    assert_eq!(body["error"]["transform"], "secrets");
    // A tunnel to the same host would bypass the swap: refused too.
    let tunnel =
        s.gw.via_proxy(&["-p", &s.url_at("localhost", "/v1/models")]);
    assert_eq!(tunnel.connect_status, 403, "{tunnel:?}");
    s.replies.push(tunnel);
    assert_eq!(s.upstream.hits(), before);
    s.no_leaks();
}

#[test]
fn bodies_are_buffered_only_when_a_secret_needs_them() {
    let mut s = Setup::start();
    // proxy_token in a JSON body: the value is JSON-escaped into the string.
    let body = r#"{"model":"m","api_key":"ptok_openai_Zq81xk","x":1}"#;
    let url = s.url_at("localhost", "/v1/chat/completions");
    assert_eq!(
        s.send(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-H",
            "Authorization: Bearer ptok_openai_Zq81xk",
            "--data-binary",
            body,
            &url
        ]),
        200,
        "{:?}\n{}\n{}",
        s.last(),
        s.gw.envoy_log(),
        s.gw.portcullis_log()
    );
    let seen = s.seen("/v1/chat/completions");
    let expected = body.replace("ptok_openai_Zq81xk", OPENAI);
    assert_eq!(String::from_utf8(seen.body.clone()).unwrap(), expected);
    assert_eq!(
        seen.header("content-length"),
        Some(expected.len().to_string().as_str())
    );

    // HMAC over method, path, timestamp and the body digest.
    let payload = "{\"event\":\"push\"}";
    assert_eq!(
        {
            let url = s.url("/hooks/github?d=1");
            s.send(&["-X", "POST", "--data-binary", payload, &url])
        },
        200
    );
    let seen = s.seen("/hooks/github?d=1");
    let timestamp = seen
        .header("x-timestamp")
        .expect("timestamp header")
        .to_owned();
    let message = format!(
        "POST\n/hooks/github?d=1\n{timestamp}\n{}",
        hex(&Sha256::digest(payload))
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(HMAC_KEY.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    assert_eq!(
        seen.header("x-signature"),
        Some(format!("sha256={}", hex(&mac.finalize().into_bytes())).as_str())
    );
    assert_eq!(seen.body, payload.as_bytes());

    // A body nobody needs is not buffered: streamed straight through, unchanged.
    let big = "y".repeat(3 * 1024 * 1024);
    let file = s.gw.dir.path().join("big.txt");
    std::fs::write(&file, &big).unwrap();
    let data = format!("@{}", file.display());
    assert_eq!(
        {
            let url = s.url("/plain-upload");
            s.send(&["-X", "POST", "--data-binary", &data, &url])
        },
        200
    );
    assert_eq!(s.seen("/plain-upload").body.len(), big.len());
    // The same body to a secret that signs it is over the limit: 413, nothing forwarded.
    let before = s.upstream.hits();
    let status = {
        let url = s.url("/hooks/big");
        s.send(&["-X", "POST", "--data-binary", &data, &url])
    };
    assert_eq!(status, 413, "{:?}", s.last());
    assert_eq!(
        s.last().json()["error"]["reason"],
        "body_too_large",
        "refused by Portcullis, up front"
    );
    assert_eq!(s.upstream.hits(), before);
    s.no_leaks();
}

#[test]
fn rotation_is_seen_after_the_ttl_and_outages_fail_closed_after_it() {
    let mut s = Setup::start();
    let url = s.url_at("localhost", "/v1/models");
    let ask = ["-H", "Authorization: Bearer ptok_openai_Zq81xk"];
    let send = |s: &mut Setup| s.send(&[ask[0], ask[1], &url]);
    assert_eq!(send(&mut s), 200);
    assert_eq!(
        s.seen("/v1/models").header("authorization"),
        Some(format!("Bearer {OPENAI}").as_str())
    );

    // Rotate at the source: the new value is used without a restart.
    let rotated = "SENTINEL-sk-proj-rotated-2";
    std::fs::write(&s.openai_file, rotated).unwrap();
    let started = Instant::now();
    // Generous deadlines (a shared machine); how long it took is printed.
    let deadline = Duration::from_secs(30);
    assert!(wait_until(deadline, || {
        assert_eq!(send(&mut s), 200, "{:?}", s.last());
        s.seen("/v1/models").header("authorization") == Some(format!("Bearer {rotated}").as_str())
    }));
    eprintln!(
        "secrets: rotated value in use after {} ms",
        started.elapsed().as_millis()
    );

    // The source goes away: requests fail closed with a clear error, never without the
    // credential.
    std::fs::remove_file(&s.openai_file).unwrap();
    let before = s.upstream.hits();
    assert!(wait_until(deadline, || send(&mut s) == 502));
    let after_outage = s.upstream.hits();
    for request in &s.upstream.seen()[before..after_outage] {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {rotated}").as_str()),
            "while the source was down, only the cached value was used"
        );
    }
    let body = s.last().json();
    assert_eq!(body["error"]["reason"], "credential_unavailable");
    assert_eq!(
        body["error"]["message"],
        "credential \"openai\" is unavailable"
    );
    assert_eq!(s.last().status, 502);
    let record = s.gw.audit_for(|r| r["reason"] == "credential_unavailable");
    assert_eq!(record["status"], 502);
    assert!(s.gw.portcullis_log().contains("secret source failed"));
    assert_eq!(s.upstream.hits(), after_outage, "a 502 is never forwarded");
    let mut all = ALL.to_vec();
    all.push(rotated);
    s.assert_no_leaks(&all);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
