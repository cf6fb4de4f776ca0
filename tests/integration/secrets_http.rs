//! Vault KV v2, 1Password Connect, OAuth2 and GCP service-account sources against local
//! servers, through the real Envoy. Every credential — backend tokens, client secrets,
//! refresh tokens, minted access tokens, signed assertions, key material — is checked
//! against everything the gateway wrote and every reply the workload got.

use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::common::backends::{
    ClientAuthMode, Grant, JwtCheck, OAuthClient, OAuthServer, OnePassword, Vault, ec_public_key,
    fixture_key, rsa_public_key, unix_now, verify_with_pyjwt,
};
use crate::common::session::Session;
use crate::common::{Gateway, GatewayOptions, Reply, Upstream, repo, wait_until};

const VAULT_TOKEN: &str = "SENTINEL-vault-token-5e1c";
const VAULT_GITHUB: &str = "SENTINEL-vault-ghp-a71b";
const VAULT_REGISTRY: &str = "SENTINEL-vault-registry-30d";
const OP_TOKEN: &str = "SENTINEL-op-connect-token-2b9";
const OP_STRIPE: &str = "SENTINEL-op-stripe-sk-9d3";
const OP_DB: &str = "SENTINEL-op-db-pass-44f";
/// Characters that RFC 6749 §2.3.1 form-encodes before Basic.
const CLIENT_SECRET: &str = "SENTINEL-oauth-cs c4:/+%x";
const CLIENT_SECRET_2: &str = "SENTINEL-oauth-cs2-8e0";
const REFRESH_TOKEN: &str = "SENTINEL-oauth-refresh-77a";

/// How long a test waits for what must happen (a rotation seen, a token re-minted, a
/// failure) before it gives up: generous for a shared machine; how long it took is printed.
const DEADLINE: Duration = Duration::from_secs(30);

/// A gateway whose policy allows the upstream, with the given secrets.
struct Run {
    s: Session,
}

impl std::ops::Deref for Run {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.s
    }
}

impl std::ops::DerefMut for Run {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.s
    }
}

impl Run {
    fn start(secrets: &str, env: &[(&str, &str)]) -> Run {
        Run::start_with(secrets, env, Vec::new())
    }

    /// With `envoy_edits` applied to the Envoy config.
    fn start_with(secrets: &str, env: &[(&str, &str)], envoy_edits: Vec<(String, String)>) -> Run {
        let upstream = Upstream::start(None);
        let config = format!(
            "policies:\n  - {{name: upstream, action: allow, rules: [{{host: 127.0.0.1}}]}}\n\
             secrets:\n{secrets}\ntransforms: [allowlist, secrets]\n"
        );
        let gw = Gateway::start(
            &config,
            GatewayOptions {
                env: env
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                envoy_edits,
                ..GatewayOptions::default()
            },
        );
        Run {
            s: Session::new(gw, upstream),
        }
    }

    fn no_leaks(&self, sentinels: &[String]) {
        let sentinels: Vec<&str> = sentinels.iter().map(String::as_str).collect();
        self.s.assert_no_leaks(&sentinels);
    }
}

fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

fn rules(path: &str) -> String {
    format!("[{{host: 127.0.0.1, paths: [\"{path}\"]}}]")
}

/// A line of base64 from the middle of a private key: it must never be written anywhere.
fn key_fragment(name: &str) -> String {
    fixture_key(name).lines().nth(2).unwrap().to_owned()
}

fn fixture_path(name: &str) -> String {
    repo()
        .join("tests/fixtures/keys")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn vault_and_onepassword_values_reach_the_upstream_exactly() {
    let vault = Vault::start(VAULT_TOKEN, Some("team-a"));
    vault.put(
        "secret/app/github",
        json!({"token": VAULT_GITHUB, "user": "ci-bot", "n": 7}),
    );
    vault.put(
        "kv/team/registry",
        json!({"username": "bot", "password": VAULT_REGISTRY}),
    );
    vault.put("secret/app/denied", json!({"token": "not-readable"}));
    vault.deny("secret/app/denied");

    const PRODUCTION: &str = "ytrfte14kw1uex5txu3qfmxsfy";
    const STRIPE: &str = "wl4zfsrs6b7ayqmkaobdwt5sne";
    const DB: &str = "q2mhpwbzmv3znvjihyoa2hvj6e";
    let op = OnePassword::start(OP_TOKEN);
    op.add_vault("b7h3xq2kd4mzcw5pnr6tsyvfle", "Staging");
    op.add_vault(PRODUCTION, "Production");
    op.add_item(
        PRODUCTION,
        STRIPE,
        "Stripe",
        json!([
            {"id": "username", "label": "username", "purpose": "USERNAME", "type": "STRING", "value": "acct"},
            {"id": "k7x", "label": "API Key", "type": "CONCEALED", "value": OP_STRIPE},
        ]),
    );
    op.add_item(
        PRODUCTION,
        DB,
        "Orders DB",
        json!([
            {"id": "password", "label": "secret", "purpose": "PASSWORD", "type": "CONCEALED", "value": OP_DB},
        ]),
    );

    let vault_source = |extra: &str| {
        format!(
            "{{type: vault, address: '{}', token: {{type: env, var: VAULT_TOKEN}}, namespace: team-a, {extra}}}",
            vault.address()
        )
    };
    let op_source = |extra: &str| {
        format!(
            "{{type: onepassword_connect, url: '{}', token: {{type: env, var: OP_TOKEN}}, {extra}}}",
            op.url()
        )
    };
    let secrets = format!(
        r#"
  - name: vault-github
    source: {}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: {}
  - name: vault-registry
    source: {}
    allow_plaintext: true
    inject: {{style: custom, header: X-Registry-Auth, format: "{{{{ base64 value }}}}"}}
    rules: {}
  - name: vault-denied
    source: {}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: {}
  - name: op-stripe
    source: {}
    allow_plaintext: true
    inject: {{style: custom, header: X-Api-Key}}
    rules: {}
  - name: op-db
    source: {}
    allow_plaintext: true
    inject: {{style: basic, username: db}}
    rules: {}
"#,
        vault_source("path: app/github, key: token"),
        rules("/vault/github/*"),
        vault_source("mount: kv, path: team/registry"),
        rules("/vault/registry/*"),
        vault_source("path: app/denied, key: token, failure_ttl: 30s"),
        rules("/vault/denied/*"),
        op_source("vault: Production, item: Stripe, field: api key, ttl: 1s"),
        rules("/op/stripe/*"),
        op_source(&format!("vault: {PRODUCTION}, item: {DB}")),
        rules("/op/db/*"),
    );
    let mut run = Run::start(
        &secrets,
        &[("VAULT_TOKEN", VAULT_TOKEN), ("OP_TOKEN", OP_TOKEN)],
    );

    // Vault, one key of the secret, as a bearer token.
    assert_eq!(run.get("/vault/github/user"), 200, "{:?}", run.last());
    assert_eq!(
        run.header("/vault/github/user", "authorization"),
        bearer(VAULT_GITHUB)
    );
    let reads = vault.requests();
    let github: Vec<_> = reads
        .iter()
        .filter(|r| r.path == "/v1/secret/data/app/github")
        .collect();
    assert!(!github.is_empty(), "{reads:?}");
    for r in &github {
        assert_eq!(r.method, "GET");
        assert_eq!(r.header("x-vault-token"), Some(VAULT_TOKEN));
        assert_eq!(r.header("x-vault-namespace"), Some("team-a"));
    }
    assert!(
        reads.iter().all(|r| [
            "/v1/secret/data/app/github",
            "/v1/kv/data/team/registry",
            "/v1/secret/data/app/denied"
        ]
        .contains(&r.path.as_str())),
        "{reads:?}"
    );

    // Without `key`, the whole data object as JSON.
    assert_eq!(run.get("/vault/registry/v2/"), 200);
    let header = run
        .header("/vault/registry/v2/", "x-registry-auth")
        .unwrap();
    let json: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json, json!({"username": "bot", "password": VAULT_REGISTRY}));

    // A path the token may not read: 502, never forwarded; the log says why.
    let before = run.upstream.hits();
    assert_eq!(run.get("/vault/denied/x"), 502);
    assert_eq!(
        run.last().json()["error"]["reason"],
        "credential_unavailable"
    );
    assert_eq!(run.upstream.hits(), before);
    let log = run.gw.portcullis_log();
    let line = log
        .lines()
        .find(|l| l.contains("vault secret/app/denied"))
        .unwrap_or_else(|| panic!("no log line for the denied read:\n{log}"));
    assert!(
        line.contains("HTTP 403") && line.contains("permission denied"),
        "{line}"
    );
    println!("secrets_http: denied read logged as: {line}");
    assert_eq!(vault.rejections(), Vec::<String>::new());

    // 1Password by vault name, item title and field label.
    assert_eq!(run.get("/op/stripe/charges"), 200);
    assert_eq!(
        run.header("/op/stripe/charges", "x-api-key").as_deref(),
        Some(OP_STRIPE)
    );
    // By ids, the `password` field found by its purpose.
    assert_eq!(run.get("/op/db/orders"), 200);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("db:{OP_DB}"));
    assert_eq!(
        run.header("/op/db/orders", "authorization"),
        Some(format!("Basic {basic}"))
    );

    // ttl 1s: the Stripe item is read again, by the ids looked up the first time.
    let item_reads = || {
        op.requests()
            .iter()
            .filter(|r| r.path == format!("/v1/vaults/{PRODUCTION}/items/{STRIPE}"))
            .count()
    };
    assert!(wait_until(Duration::from_secs(5), || item_reads() >= 3));
    assert_eq!(run.get("/op/stripe/refunds"), 200);
    assert_eq!(
        run.header("/op/stripe/refunds", "x-api-key").as_deref(),
        Some(OP_STRIPE)
    );
    let requests = op.requests();
    for r in &requests {
        assert_eq!(r.method, "GET");
        assert_eq!(r.header("authorization"), bearer(OP_TOKEN).as_deref());
    }
    let listings: Vec<(String, Option<String>)> = requests
        .iter()
        .filter(|r| !r.path.contains("/items/"))
        .map(|r| (r.path.clone(), r.query_param("filter")))
        .collect();
    assert_eq!(
        listings,
        [
            (
                "/v1/vaults".to_owned(),
                Some("name eq \"Production\"".to_owned())
            ),
            (
                format!("/v1/vaults/{PRODUCTION}/items"),
                Some("title eq \"Stripe\"".to_owned())
            ),
        ],
        "names are looked up once; ids are remembered"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.path == format!("/v1/vaults/{PRODUCTION}/items/{DB}"))
    );
    println!(
        "secrets_http: vault reads {}, 1password requests {} ({} item reads)",
        vault.requests().len(),
        requests.len(),
        item_reads()
    );
    assert_eq!(op.rejections(), Vec::<String>::new());
    run.no_leaks(
        &[
            VAULT_TOKEN,
            VAULT_GITHUB,
            VAULT_REGISTRY,
            OP_TOKEN,
            OP_STRIPE,
            OP_DB,
        ]
        .map(str::to_owned),
    );
}

#[test]
fn vault_rotation_is_seen_after_the_ttl_and_an_outage_fails_closed() {
    const V1: &str = "SENTINEL-vault-rot-1-d2";
    const V2: &str = "SENTINEL-vault-rot-2-e7";
    let vault = Vault::start(VAULT_TOKEN, None);
    vault.put("secret/app/rotating", json!({"token": V1}));
    let secrets = format!(
        "  - name: rotating\n    source: {{type: vault, address: '{}', path: app/rotating, key: token, \
         ttl: 5s, failure_ttl: 1s, token: {{type: env, var: VAULT_TOKEN}}}}\n    allow_plaintext: true\n    inject: {{style: bearer}}\n    rules: {}\n",
        vault.address(),
        rules("/rot/*")
    );
    // The source's `ttl` above.
    const TTL: Duration = Duration::from_secs(5);
    let mut run = Run::start(&secrets, &[("VAULT_TOKEN", VAULT_TOKEN)]);
    assert_eq!(run.get("/rot/a"), 200);
    assert_eq!(run.header("/rot/a", "authorization"), bearer(V1));

    // Rotate in Vault: the new value is in use after the TTL, no restart.
    vault.put("secret/app/rotating", json!({"token": V2}));
    let rotated = Instant::now();
    assert!(
        wait_until(DEADLINE, || {
            assert_eq!(run.get("/rot/a"), 200, "{:?}", run.last());
            run.header("/rot/a", "authorization") == bearer(V2)
        }),
        "the rotated value is not in use {DEADLINE:?} later"
    );
    eprintln!(
        "secrets_http: rotated Vault value in use after {} ms (ttl {TTL:?})",
        rotated.elapsed().as_millis()
    );

    // Vault goes down right after that read: the cached value serves until the TTL ends...
    vault.stop();
    // Every successful read started before this instant: Vault is gone.
    let down = Instant::now();
    let before = run.upstream.hits();
    assert_eq!(run.get("/rot/b"), 200, "the cached value still serves");
    assert_eq!(run.header("/rot/b", "authorization"), bearer(V2));
    // ...then requests fail closed. Each request's send time and status is kept.
    let mut sent: Vec<(Instant, u16)> = Vec::new();
    let failed = wait_until(DEADLINE, || {
        let at = Instant::now();
        let status = run.get("/rot/c");
        sent.push((at, status));
        status == 502
    });
    assert!(failed, "still no 502 {DEADLINE:?} after Vault stopped");
    eprintln!(
        "secrets_http: Vault down; cached value served for {} ms, then 502 (ttl {TTL:?})",
        down.elapsed().as_millis()
    );
    // Not served past the TTL, as an order of events: no request sent once the TTL of a read
    // made before Vault stopped is over (plus a second for the gateway to store what Vault
    // answered last) gets the cached value; requests are sent past that point whatever the
    // timing so far.
    let expired = down + TTL + Duration::from_secs(1);
    std::thread::sleep(expired.saturating_duration_since(Instant::now()));
    let at = Instant::now();
    sent.push((at, run.get("/rot/c")));
    for (at, status) in &sent {
        assert!(matches!(status, 200 | 502), "{sent:?}");
        if *at >= expired {
            assert_eq!(
                *status,
                502,
                "the cached value was served to a request sent {:?} after Vault stopped",
                at.duration_since(down)
            );
        }
    }
    let first_failure = sent.iter().position(|(_, status)| *status == 502).unwrap();
    assert!(
        sent[first_failure..]
            .iter()
            .all(|(_, status)| *status == 502),
        "once failed closed, it stays closed while Vault is down: {sent:?}"
    );
    let after_outage = run.upstream.hits();
    for request in &run.upstream.seen()[before..after_outage] {
        assert_eq!(
            request.header("authorization"),
            bearer(V2).as_deref(),
            "while Vault was down, only the cached value was used"
        );
    }
    let body = run.last().json();
    assert_eq!(body["error"]["reason"], "credential_unavailable");
    assert_eq!(
        body["error"]["message"],
        "credential \"rotating\" is unavailable"
    );
    assert_eq!(run.get("/rot/d"), 502);
    assert_eq!(
        run.upstream.hits(),
        after_outage,
        "a 502 is never forwarded"
    );
    let record = run
        .gw
        .audit_for(|r| r["reason"] == "credential_unavailable");
    assert_eq!(record["status"], 502);
    let log = run.gw.portcullis_log();
    let line = log
        .lines()
        .find(|l| l.contains("secret source failed") && l.contains("vault secret/app/rotating"))
        .unwrap_or_else(|| panic!("the outage is not logged:\n{log}"));
    println!("secrets_http: outage logged as: {line}");
    assert_eq!(vault.rejections(), Vec::<String>::new());
    run.no_leaks(&[VAULT_TOKEN, V1, V2].map(str::to_owned));
}

#[test]
fn oauth2_concurrent_requests_on_a_cold_cache_mint_one_token() {
    let oauth = OAuthServer::start(OAuthClient {
        client_id: Some("portcullis test:client".into()),
        client_secret: Some(CLIENT_SECRET.into()),
        auth: ClientAuthMode::Basic,
        grant: Grant::ClientCredentials,
        scope: Some("repo read:org".into()),
        audience: Some("https://api.example.test".into()),
        expires_in: 3600,
        token_prefix: "SENTINEL-oauth-cc-at".into(),
    });
    let secrets = format!(
        "  - name: api\n    source: {{type: oauth2, token_url: '{}', grant: client_credentials, \
         client_id: 'portcullis test:client', client_secret: {{type: env, var: OAUTH_CLIENT_SECRET}}, \
         scopes: [repo, 'read:org'], audience: 'https://api.example.test'}}\n    \
         allow_plaintext: true\n    \
         inject: {{style: bearer}}\n    rules: {}\n",
        oauth.token_url(),
        rules("/cc/*")
    );
    // Requests wait inside the gateway for the token below for longer than Envoy's 0.5 s
    // ext_proc message timeout: raised, so none is cut off while the test sets up the burst.
    let mut run = Run::start_with(
        &secrets,
        &[("OAUTH_CLIENT_SECRET", CLIENT_SECRET)],
        vec![(
            "message_timeout: 0.5s".into(),
            "message_timeout: 30s".into(),
        )],
    );
    assert_eq!(run.get("/cc/first"), 200, "{:?}", run.last());
    let first = oauth.issued();
    assert_eq!(first, ["SENTINEL-oauth-cc-at-1"]);
    assert_eq!(run.header("/cc/first", "authorization"), bearer(&first[0]));

    // A cold cache: a new portcullis process. The token endpoint holds its answers, so the
    // startup read stays in flight until a burst of 20 requests is provably waiting inside
    // the gateway (20 open ext_proc streams): then it answers, and the cache must have
    // coalesced the read and all 20 into one token request. (The source's HTTP client gives
    // up on a token request after 5 s: the restart and the burst fit well inside.)
    oauth.hold_tokens();
    let hits_before = oauth.hits();
    let restarted = Instant::now();
    run.gw.restart_portcullis();
    let (replies, sent, released): (Vec<Reply>, Vec<Instant>, Instant) =
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..20)
                .map(|i| {
                    let (gw, url) = (&run.gw, run.url(&format!("/cc/burst-{i}")));
                    scope.spawn(move || {
                        let sent = Instant::now();
                        (gw.via_proxy(&[&url]), sent)
                    })
                })
                .collect();
            let waiting = wait_until(DEADLINE, || {
                oauth.hits() > hits_before
                    && run.gw.metric("portcullis_active_streams") == Some(20.0)
            });
            let released = Instant::now();
            oauth.release_tokens();
            assert!(
                waiting,
                "the 20 requests and the token request were never all in flight together: \
                 {} token requests, active streams {:?}",
                oauth.hits() - hits_before,
                run.gw.metric("portcullis_active_streams")
            );
            let (replies, sent) = handles.into_iter().map(|h| h.join().unwrap()).unzip();
            (replies, sent, released)
        });
    eprintln!(
        "secrets_http: 20 requests waiting on one held token request {} ms after the restart",
        released.duration_since(restarted).as_millis()
    );
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200; 20], "{replies:?}");
    run.replies.extend(replies);
    assert_eq!(
        oauth.hits(),
        hits_before + 1,
        "a cold start and 20 concurrent requests: one token request"
    );
    let issued = oauth.issued();
    assert_eq!(issued, ["SENTINEL-oauth-cc-at-1", "SENTINEL-oauth-cc-at-2"]);
    for i in 0..20 {
        assert_eq!(
            run.header(&format!("/cc/burst-{i}"), "authorization"),
            bearer(&issued[1])
        );
    }
    let answered = *oauth.answered().last().unwrap();
    assert!(answered >= released, "the token was answered once released");
    assert!(
        sent.iter().all(|t| *t < answered),
        "every request of the burst was sent before the one token request was answered"
    );

    // What the endpoint was sent: Basic with form-encoded id and secret, grant, scope and
    // audience (the endpoint checks each field and would refuse anything else).
    let expected_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode("portcullis+test%3Aclient:SENTINEL-oauth-cs+c4%3A%2F%2B%25x")
    );
    for r in oauth.requests() {
        assert_eq!(r.header("authorization"), Some(expected_basic.as_str()));
        assert_eq!(
            r.form(),
            [
                ("grant_type", "client_credentials"),
                ("scope", "repo read:org"),
                ("audience", "https://api.example.test")
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }
    assert_eq!(oauth.rejections(), Vec::<String>::new());
    let mut sentinels = vec![CLIENT_SECRET.to_owned(), "SENTINEL-oauth-cs".into()];
    sentinels.extend(issued);
    run.no_leaks(&sentinels);
}

#[test]
fn oauth2_short_lived_tokens_are_reminted_and_refresh_and_jwt_grants_work() {
    let refresh = OAuthServer::start(OAuthClient {
        client_id: Some("portcullis".into()),
        client_secret: Some(CLIENT_SECRET_2.into()),
        auth: ClientAuthMode::Body,
        grant: Grant::RefreshToken {
            token: REFRESH_TOKEN.into(),
            rotate: true,
        },
        scope: None,
        audience: None,
        // The cache keeps it 30 s less, but at least 5 s: re-minted after ~4-5 s.
        expires_in: 35,
        token_prefix: "SENTINEL-oauth-rt-at".into(),
    });
    let jwt = OAuthServer::start(OAuthClient {
        client_id: None,
        client_secret: None,
        auth: ClientAuthMode::None,
        grant: Grant::JwtBearer(Box::new(JwtCheck {
            key: ec_public_key(),
            algorithm: Algorithm::ES256,
            issuer: "portcullis-test-client".into(),
            subject: Some("robot@example.test".into()),
            audience: None,
            key_id: Some("ec-test-1".into()),
            lifetime: 300,
            claims: Vec::new(),
            jti: true,
        })),
        scope: Some("read".into()),
        audience: None,
        expires_in: 3600,
        token_prefix: "SENTINEL-oauth-jwt-at".into(),
    });
    let secrets = format!(
        r#"
  - name: refreshed
    source:
      type: oauth2
      token_url: '{}'
      grant: refresh_token
      client_id: portcullis
      client_auth: body
      client_secret: {{type: env, var: OAUTH_CLIENT_SECRET_2}}
      refresh_token: {{type: env, var: OAUTH_REFRESH_TOKEN}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: {}
  - name: jwt
    source:
      type: oauth2
      token_url: '{}'
      grant: jwt_bearer
      scopes: [read]
      assertion:
        issuer: portcullis-test-client
        subject: robot@example.test
        algorithm: ES256
        key_id: ec-test-1
        private_key: {{type: file, path: '{}'}}
    allow_plaintext: true
    inject: {{style: custom, header: X-Service-Token, format: "Bearer {{{{ value }}}}"}}
    rules: {}
"#,
        refresh.token_url(),
        rules("/rt/*"),
        jwt.token_url(),
        fixture_path("ec-private.pem"),
        rules("/jwt/*"),
    );
    // Assertions are signed from here on (the gateway reads its sources as it starts).
    let minted_from = unix_now();
    let mut run = Run::start(
        &secrets,
        &[
            ("OAUTH_CLIENT_SECRET_2", CLIENT_SECRET_2),
            ("OAUTH_REFRESH_TOKEN", REFRESH_TOKEN),
        ],
    );

    // refresh_token grant, client secret in the body.
    assert_eq!(run.get("/rt/a"), 200, "{:?}", run.last());
    assert_eq!(
        run.header("/rt/a", "authorization"),
        bearer("SENTINEL-oauth-rt-at-1")
    );
    let first_minted = Instant::now();
    // expires_in 35 s: kept ~5 s, then a new token is minted, without a restart.
    assert!(
        wait_until(DEADLINE, || {
            assert_eq!(run.get("/rt/b"), 200, "{:?}", run.last());
            run.header("/rt/b", "authorization") == bearer("SENTINEL-oauth-rt-at-2")
        }),
        "not re-minted {DEADLINE:?} later"
    );
    let reminted = first_minted.elapsed();
    eprintln!(
        "secrets_http: expires_in 35 s token re-minted after {} ms",
        reminted.as_millis()
    );
    assert!(reminted >= Duration::from_secs(3), "{reminted:?}");
    let requests = refresh.requests();
    assert!(requests.len() >= 2);
    let form = |i: usize, token: &str| {
        [
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "portcullis"),
            ("client_secret", CLIENT_SECRET_2),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .to_vec()
            == requests[i].form()
    };
    assert!(form(0, REFRESH_TOKEN), "{:?}", requests[0].form());
    // The server rotated the refresh token; the next refresh used the new one.
    assert!(
        form(1, "SENTINEL-oauth-rt-at-rt-1"),
        "{:?}",
        requests[1].form()
    );
    assert!(requests.iter().all(|r| r.header("authorization").is_none()));
    assert_eq!(refresh.rejections(), Vec::<String>::new());

    // jwt_bearer: an ES256 assertion the endpoint verified with the public key.
    assert_eq!(run.get("/jwt/a"), 200, "{:?}", run.last());
    assert_eq!(
        run.header("/jwt/a", "x-service-token"),
        bearer("SENTINEL-oauth-jwt-at-1")
    );
    let verified = jwt.verified();
    assert_eq!(verified.len(), 1, "{verified:?}");
    // Verified again by PyJWT, independently of the crate that signed it: the signature
    // with the public key, ES256; iss; aud (defaults to the token URL); exp and iat.
    let assertions = jwt.assertions();
    let by_pyjwt = verify_with_pyjwt(
        &assertions,
        "ec-public.pem",
        "ES256",
        &jwt.token_url(),
        "portcullis-test-client",
    );
    let minted_by = unix_now();
    assert_eq!(by_pyjwt.len(), 1);
    let (header, claims) = &by_pyjwt[0];
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], "ec-test-1");
    assert_eq!(claims["iss"], "portcullis-test-client");
    assert_eq!(claims["sub"], "robot@example.test");
    assert_eq!(
        claims["aud"],
        jwt.token_url(),
        "aud defaults to the token URL"
    );
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(
        (minted_from..=minted_by).contains(&iat),
        "issued while the test ran: iat {iat}, test {minted_from}..={minted_by}"
    );
    assert_eq!(exp - iat, 300, "the configured lifetime");
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    let request = &jwt.requests()[0];
    let names: Vec<String> = request.form().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["grant_type", "assertion", "scope"]);
    assert_eq!(
        request.field("grant_type").as_deref(),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    assert_eq!(jwt.rejections(), Vec::<String>::new());

    let mut sentinels = vec![
        CLIENT_SECRET_2.to_owned(),
        REFRESH_TOKEN.to_owned(),
        key_fragment("ec-private.pem"),
    ];
    sentinels.extend(refresh.issued());
    sentinels.extend(refresh.issued_refresh_tokens());
    sentinels.extend(jwt.issued());
    sentinels.extend(jwt.assertions());
    run.no_leaks(&sentinels);
}

#[test]
fn gcp_service_account_tokens_reach_the_upstream() {
    const EMAIL: &str = "portcullis-test@example-project.iam.gserviceaccount.com";
    const SCOPES: &str = "https://www.googleapis.com/auth/cloud-platform \
                          https://www.googleapis.com/auth/devstorage.read_only";
    let google = OAuthServer::start(OAuthClient {
        client_id: None,
        client_secret: None,
        auth: ClientAuthMode::None,
        grant: Grant::JwtBearer(Box::new(JwtCheck {
            key: rsa_public_key(),
            algorithm: Algorithm::RS256,
            issuer: EMAIL.into(),
            subject: Some("admin@example.test".into()),
            audience: None,
            key_id: Some("gcp-test-key-1".into()),
            lifetime: 3600,
            claims: vec![("scope".into(), SCOPES.into())],
            jti: false,
        })),
        scope: None,
        audience: None,
        expires_in: 3599,
        token_prefix: "SENTINEL-gcp-at".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let key_file = |name: &str, token_uri: &str| {
        let key = json!({
            "type": "service_account",
            "project_id": "example-project",
            "private_key_id": "gcp-test-key-1",
            "private_key": fixture_key("rsa-private.pem"),
            "client_email": EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        });
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&key).unwrap()).unwrap();
        path.display().to_string()
    };
    let local = key_file("key.json", &google.token_url());
    // This key names Google's endpoint; `token_url` sends it to the local one instead.
    let overridden = key_file("key-override.json", "https://oauth2.googleapis.com/token");
    let secrets = format!(
        "  - name: gcp\n    source: {{type: gcp_service_account, key: {{type: file, path: '{local}'}}, \
         scopes: ['https://www.googleapis.com/auth/cloud-platform', \
         'https://www.googleapis.com/auth/devstorage.read_only'], subject: admin@example.test}}\n    \
         allow_plaintext: true\n    \
         inject: {{style: bearer}}\n    rules: {}\n\
         \x20 - name: gcp-override\n    source: {{type: gcp_service_account, key: {{type: file, path: '{overridden}'}}, \
         token_url: '{}', subject: admin@example.test, \
         scopes: ['https://www.googleapis.com/auth/cloud-platform', \
         'https://www.googleapis.com/auth/devstorage.read_only']}}\n    \
         allow_plaintext: true\n    \
         inject: {{style: bearer}}\n    rules: {}\n",
        rules("/gcp/*"),
        google.token_url(),
        rules("/gcp-override/*"),
    );
    // Assertions are signed from here on (the gateway reads its sources as it starts).
    let minted_from = unix_now();
    let mut run = Run::start(&secrets, &[]);
    assert_eq!(run.get("/gcp/storage/v1/b"), 200, "{:?}", run.last());
    assert_eq!(
        run.get("/gcp-override/compute/v1/x"),
        200,
        "{:?}",
        run.last()
    );
    let issued = google.issued();
    assert_eq!(issued.len(), 2, "one token per source: {issued:?}");
    let a = run.header("/gcp/storage/v1/b", "authorization").unwrap();
    let b = run
        .header("/gcp-override/compute/v1/x", "authorization")
        .unwrap();
    assert_ne!(a, b);
    for header in [&a, &b] {
        let token = header.strip_prefix("Bearer ").unwrap();
        assert!(issued.iter().any(|t| t == token), "{header} was minted");
    }
    // Both assertions verified with the service account's public key: RS256, kid, iss,
    // scope, aud (the endpoint's URL), sub, an hour's lifetime.
    let verified = google.verified();
    assert_eq!(verified.len(), 2);
    // And by PyJWT, independently of the crate that signed them: RS256 with the service
    // account's public key, iss, aud (the endpoint's URL), exp and iat, and the claims.
    let assertions = google.assertions();
    let by_pyjwt = verify_with_pyjwt(
        &assertions,
        "rsa-public.pem",
        "RS256",
        &google.token_url(),
        EMAIL,
    );
    let minted_by = unix_now();
    assert_eq!(by_pyjwt.len(), 2);
    for (header, claims) in &by_pyjwt {
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "gcp-test-key-1");
        assert_eq!(claims["iss"], EMAIL);
        assert_eq!(claims["aud"], google.token_url());
        assert_eq!(claims["scope"], SCOPES);
        assert_eq!(claims["sub"], "admin@example.test");
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert!(
            (minted_from..=minted_by).contains(&iat),
            "issued while the test ran: iat {iat}, test {minted_from}..={minted_by}"
        );
        assert_eq!(exp - iat, 3600, "an hour's lifetime");
    }
    for r in google.requests() {
        let names: Vec<String> = r.form().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["grant_type", "assertion"]);
        assert!(r.header("authorization").is_none());
    }
    assert_eq!(google.rejections(), Vec::<String>::new());
    let mut sentinels = vec![key_fragment("rsa-private.pem")];
    sentinels.extend(issued);
    sentinels.extend(google.assertions());
    run.no_leaks(&sentinels);
}
