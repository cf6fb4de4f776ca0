//! AWS Secrets Manager and SSM sources against a local moto, and SigV4 signing.
//!
//! Everything runs through the real Envoy and the real binary. Source values are sentinels
//! and every test ends by checking that none leaked. Signatures are checked independently:
//! by botocore (the AWS Python SDK's signer) for what the echo upstream received, and by
//! moto with its signature checking turned on.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::moto::{Moto, SigV4Request};
use crate::common::session::Session;
use crate::common::{Gateway, GatewayOptions, Reply, Seen, Upstream, curl, wait_until};

const SM_PLAIN: &str = "SENTINEL-sm-plain-4c1d";
const SM_JSON_TOKEN: &str = "SENTINEL-sm-json-77ab";
const SSM_KEY: &str = "SENTINEL-ssm-secure-e2f0";
const ROTATING: &str = "SENTINEL-sm-rotating-v1";
const OUTAGE: &str = "SENTINEL-sm-outage-0b9e";
const OUTAGE_V2: &str = "SENTINEL-sm-outage-v2-61c3";
const ALL: &[&str] = &[
    SM_PLAIN,
    SM_JSON_TOKEN,
    SSM_KEY,
    ROTATING,
    OUTAGE,
    OUTAGE_V2,
];
/// The `sm-outage` source's `ttl` (its config below says the same).
const OUTAGE_TTL: Duration = Duration::from_secs(5);
/// How long a test waits for what must happen (a rotation seen, a failure) before it gives
/// up: generous for a shared machine; how long it took is printed.
const DEADLINE: Duration = Duration::from_secs(30);

fn sources_config(moto: &str) -> String {
    format!(
        r#"
gateway: {{tags: [env:test]}}
policies:
  - {{name: upstream, action: allow, rules: [{{host: 127.0.0.1}}, {{host: localhost}}]}}
secrets:
  - name: sm-plain
    source: {{type: aws_secrets_manager, secret_id: app/plain, endpoint_url: "{moto}"}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: [{{host: 127.0.0.1, paths: ["/sm-plain/*"]}}]
  - name: sm-json
    source: {{type: aws_secrets_manager, secret_id: app/json, json_key: token, region: us-east-1, endpoint_url: "{moto}"}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: [{{host: 127.0.0.1, paths: ["/sm-json/*"]}}]
  - name: ssm-key
    source: {{type: aws_ssm, parameter: /app/api-key, endpoint_url: "{moto}"}}
    allow_plaintext: true
    inject: {{style: custom, header: X-Api-Key}}
    rules: [{{host: 127.0.0.1, paths: ["/ssm/*"]}}]
  - name: sm-missing
    source: {{type: aws_secrets_manager, secret_id: app/never-created, endpoint_url: "{moto}"}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: [{{host: 127.0.0.1, paths: ["/missing/*"]}}]
  - name: sm-rotating
    source: {{type: aws_secrets_manager, secret_id: app/rotating, endpoint_url: "{moto}", ttl: 1s}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: [{{host: 127.0.0.1, paths: ["/rotating/*"]}}]
  - name: sm-outage
    source: {{type: aws_secrets_manager, secret_id: app/outage, endpoint_url: "{moto}", ttl: 5s, failure_ttl: 1s}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: [{{host: 127.0.0.1, paths: ["/outage/*"]}}]
transforms: [allowlist, secrets]
"#
    )
}

struct Setup {
    moto: Moto,
    s: Session,
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
    /// moto with the test's secrets and parameter, the echo upstream, and the gateway.
    fn start() -> Setup {
        let moto = Moto::start();
        moto.create_secret("app/plain", SM_PLAIN);
        moto.create_secret(
            "app/json",
            &serde_json::json!({"token": SM_JSON_TOKEN, "user": "svc-ci"}).to_string(),
        );
        moto.put_parameter("/app/api-key", SSM_KEY, true);
        moto.create_secret("app/rotating", ROTATING);
        moto.create_secret("app/outage", OUTAGE);
        let upstream = Upstream::start(None);
        let gw = Gateway::start(
            &sources_config(&moto.url()),
            GatewayOptions {
                env: moto.gateway_env(),
                ..GatewayOptions::default()
            },
        );
        Setup {
            moto,
            s: Session::new(gw, upstream),
        }
    }

    fn no_leaks(&self, extra: &[&str]) {
        let mut all = ALL.to_vec();
        all.extend_from_slice(extra);
        self.s.assert_no_leaks(&all);
    }
}

#[test]
fn secrets_manager_and_ssm_values_reach_the_upstream_exactly() {
    let mut s = Setup::start();
    assert_eq!(
        s.get("/sm-plain/x"),
        200,
        "{:?}\n{}",
        s.last(),
        s.gw.portcullis_log()
    );
    assert_eq!(
        s.seen("/sm-plain/x").header("authorization"),
        Some(format!("Bearer {SM_PLAIN}").as_str())
    );
    // A JSON secret, one field of it.
    assert_eq!(s.get("/sm-json/x"), 200);
    assert_eq!(
        s.seen("/sm-json/x").header("authorization"),
        Some(format!("Bearer {SM_JSON_TOKEN}").as_str())
    );
    // An SSM SecureString, decrypted, in a custom header.
    assert_eq!(s.get("/ssm/x"), 200);
    assert_eq!(s.seen("/ssm/x").header("x-api-key"), Some(SSM_KEY));
    let record = s.gw.audit_for(|r| r["path"] == "/ssm/x");
    assert_eq!(
        record["transforms"][1]["annotations"]["injected"],
        serde_json::json!({"secret": "ssm-key", "locations": ["header:x-api-key"]})
    );

    // A secret that does not exist: 502 naming the secret; the backend's error code is in
    // the log, not in the reply.
    let before = s.upstream.hits();
    assert_eq!(s.get("/missing/x"), 502);
    let body = s.last().json();
    assert_eq!(body["error"]["reason"], "credential_unavailable");
    assert_eq!(
        body["error"]["message"],
        "credential \"sm-missing\" is unavailable"
    );
    assert!(!s.last().body.contains("ResourceNotFound"));
    assert_eq!(s.upstream.hits(), before, "never forwarded");
    let log = s.gw.portcullis_log();
    let line = log
        .lines()
        .find(|l| l.contains("aws_secrets_manager app/never-created"))
        .unwrap_or_else(|| panic!("the failure is logged:\n{log}"));
    assert!(line.contains("ResourceNotFoundException"), "{line}");
    println!("secrets_aws: missing secret logged as: {line}");
    s.no_leaks(&[]);
}

#[test]
fn rotation_in_secrets_manager_is_seen_after_the_ttl() {
    let mut s = Setup::start();
    assert_eq!(s.get("/rotating/x"), 200);
    assert_eq!(
        s.seen("/rotating/x").header("authorization"),
        Some(format!("Bearer {ROTATING}").as_str())
    );
    let rotated = "SENTINEL-sm-rotating-v2";
    s.moto.put_secret_value("app/rotating", rotated);
    let started = Instant::now();
    assert!(
        wait_until(DEADLINE, || {
            assert_eq!(s.get("/rotating/x"), 200, "{:?}", s.last());
            s.seen("/rotating/x").header("authorization")
                == Some(format!("Bearer {rotated}").as_str())
        }),
        "the rotated value is not in use {DEADLINE:?} later, without a restart"
    );
    eprintln!(
        "secrets_aws: rotated value in use after {} ms (ttl 1s)",
        started.elapsed().as_millis()
    );
    assert!(s.replies.iter().all(|r| r.status == 200));
    s.no_leaks(&[rotated]);
}

#[test]
fn moto_outage_serves_the_cached_value_until_the_ttl_then_fails_closed() {
    let mut s = Setup::start();
    assert_eq!(s.get("/outage/x"), 200);
    // A read just before the outage: the value is rotated, and moto goes down as soon as
    // the new one is injected, so the cached value's TTL started moments ago.
    s.moto.put_secret_value("app/outage", OUTAGE_V2);
    let rotated = Instant::now();
    let fresh = || Some(format!("Bearer {OUTAGE_V2}"));
    assert!(
        wait_until(DEADLINE, || {
            assert_eq!(s.get("/outage/x"), 200, "{:?}", s.last());
            s.header("/outage/x", "authorization") == fresh()
        }),
        "the rotated value is not in use {DEADLINE:?} later"
    );
    s.moto.stop();
    // Every successful read started before this instant: moto is gone.
    let stopped = Instant::now();
    eprintln!(
        "secrets_aws: the rotated value was read {} ms after the rotation; moto stopped",
        rotated.elapsed().as_millis()
    );
    let before = s.upstream.hits();
    // Still cached: the value was read well within its TTL.
    assert_eq!(s.get("/outage/x"), 200, "{:?}", s.last());
    assert_eq!(s.header("/outage/x", "authorization"), fresh());
    // Then it fails closed. Each request's send time and status is kept.
    let mut sent: Vec<(Instant, u16)> = Vec::new();
    let failed = wait_until(DEADLINE, || {
        let at = Instant::now();
        let status = s.get("/outage/x");
        sent.push((at, status));
        status == 502
    });
    assert!(failed, "still no 502 {DEADLINE:?} after moto stopped");
    eprintln!(
        "secrets_aws: moto down; cached value served for {} ms, then 502 (ttl {OUTAGE_TTL:?})",
        stopped.elapsed().as_millis()
    );
    // The property, as an order of events rather than a stopwatch: no request sent once the
    // TTL of a read made before moto stopped is over (plus a second for the gateway to store
    // what moto answered last) gets the cached value. Requests are sent past that point
    // whatever the timing so far.
    let expired = stopped + OUTAGE_TTL + Duration::from_secs(1);
    std::thread::sleep(expired.saturating_duration_since(Instant::now()));
    for _ in 0..3 {
        let at = Instant::now();
        sent.push((at, s.get("/outage/x")));
    }
    for (at, status) in &sent {
        assert!(matches!(status, 200 | 502), "{sent:?}");
        if *at >= expired {
            assert_eq!(
                *status,
                502,
                "the cached value was served to a request sent {:?} after moto stopped (ttl \
                 {OUTAGE_TTL:?})",
                at.duration_since(stopped)
            );
        }
    }
    let first_failure = sent.iter().position(|(_, status)| *status == 502).unwrap();
    assert!(
        sent[first_failure..]
            .iter()
            .all(|(_, status)| *status == 502),
        "once failed closed, it stays closed while moto is down: {sent:?}"
    );
    let after = s.upstream.hits();
    for request in &s.upstream.seen()[before..after] {
        assert_eq!(
            request.header("authorization").map(str::to_owned),
            fresh(),
            "while moto was down, only the cached value was used"
        );
    }
    let body = s.last().json();
    assert_eq!(body["error"]["reason"], "credential_unavailable");
    assert_eq!(
        body["error"]["message"],
        "credential \"sm-outage\" is unavailable"
    );
    assert_eq!(s.upstream.hits(), after, "a 502 is never forwarded");
    let record = s.gw.audit_for(|r| r["reason"] == "credential_unavailable");
    assert_eq!(record["status"], 502);
    let log = s.gw.portcullis_log();
    assert!(
        log.contains(&format!("cannot reach {}", s.moto.url())),
        "the log says why:\n{log}"
    );
    s.no_leaks(&[]);
}

// ---- SigV4 ----

/// The access key id is public (it is in every Authorization header); the secret key and
/// the session token are sentinels.
const AKID: &str = "AKIDPORTCULLISTEST";
const AWS_SECRET: &str = "SENTINEL-aws-secret-9d3e/K7+x";
const AWS_TOKEN: &str = "SENTINEL-aws-session-51aa";
const BROKEN: &str = "SENTINEL-not-json-keys";

fn sigv4_config() -> &'static str {
    r#"
gateway: {tags: [env:test]}
policies:
  - {name: upstream, action: allow, rules: [{host: 127.0.0.1}, {host: localhost}]}
secrets:
  - name: aws-ssm
    source: {type: env, var: AWS_SIGNING_KEYS}
    allow_plaintext: true
    inject: {style: aws_sigv4, service: ssm, region: us-east-1}
    rules: [{host: 127.0.0.1, paths: ["/aws/*"]}]
  - name: aws-broken
    source: {type: env, var: AWS_BROKEN_KEYS}
    allow_plaintext: true
    inject: {style: aws_sigv4, service: ssm, region: us-east-1}
    rules: [{host: 127.0.0.1, paths: ["/broken/*"]}]
transforms: [allowlist, secrets]
"#
}

/// The parts of a SigV4 `Authorization` header.
fn authorization_parts(value: &str) -> (String, String, String) {
    let part = |name: &str| {
        value
            .split([',', ' '])
            .find_map(|p| p.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {value}"))
            .to_owned()
    };
    (
        part("Credential="),
        part("SignedHeaders="),
        part("Signature="),
    )
}

/// Checks the signature the upstream received with botocore, from the signed headers as
/// received, the body as received and the received `x-amz-date`. Returns the signed
/// header names.
fn assert_botocore_agrees(seen: &Seen, port: u16, service: &str, region: &str) -> String {
    let authorization = seen.header("authorization").expect("signed");
    let (credential, signed_headers, signature) = authorization_parts(authorization);
    let date = seen.header("x-amz-date").expect("x-amz-date");
    assert_eq!(
        credential,
        format!("{AKID}/{}/{region}/{service}/aws4_request", &date[..8])
    );
    let headers: Vec<(&str, &str)> = signed_headers
        .split(';')
        .map(|name| {
            (
                name,
                seen.header(name)
                    .unwrap_or_else(|| panic!("signed header {name} reached the upstream")),
            )
        })
        .collect();
    let url = format!("http://127.0.0.1:{port}{}", seen.path);
    let (expected, canonical) = SigV4Request {
        method: &seen.method,
        url: &url,
        headers: &headers,
        body: &seen.body,
        service,
        region,
    }
    .botocore_signature(AKID, AWS_SECRET, date);
    assert_eq!(
        signature, expected,
        "botocore's canonical request:\n{canonical}"
    );
    signed_headers
}

#[test]
fn sigv4_signatures_match_botocore_and_scopes_are_enforced() {
    let upstream = Upstream::start(None);
    let port = upstream.port();
    let keys = serde_json::json!({"AccessKeyId": AKID, "SecretAccessKey": AWS_SECRET,
                                  "SessionToken": AWS_TOKEN});
    let gw = Gateway::start(
        sigv4_config(),
        GatewayOptions {
            env: vec![
                ("AWS_SIGNING_KEYS".into(), keys.to_string()),
                ("AWS_BROKEN_KEYS".into(), BROKEN.into()),
            ],
            ..GatewayOptions::default()
        },
    );
    let mut replies = Vec::new();
    let seen = |path: &str| -> Seen {
        upstream
            .seen()
            .into_iter()
            .rev()
            .find(|s| s.path == path)
            .unwrap_or_else(|| panic!("upstream never saw {path}"))
    };

    // 1. Signed by the workload's SDK with placeholder keys, body and no payload hash:
    //    re-signed with the real keys, the body's SHA-256 signed and sent.
    let body = br#"{"Name":"/app/config","WithDecryption":true}"#;
    let url = format!("http://127.0.0.1:{port}/aws/ssm");
    let workload_request = SigV4Request {
        method: "POST",
        url: &url,
        headers: &[
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", "AmazonSSM.GetParameter"),
        ],
        body,
        service: "ssm",
        region: "us-east-1",
    };
    let workload = workload_request.signed_by_botocore(
        "AKIDPLACEHOLDER",
        "placeholder-secret",
        Some("placeholder-token"),
    );
    assert!(workload.iter().any(|(n, _)| n == "authorization"));
    let args = workload_request.curl_args(&workload);
    let reply = gw.via_proxy(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(reply.status, 200, "{reply:?}\n{}", gw.portcullis_log());
    replies.push((reply, 200));
    let got = seen("/aws/ssm");
    assert_eq!(got.body, body, "the body is forwarded unchanged");
    let sha = Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    assert_eq!(got.header("x-amz-content-sha256"), Some(sha.as_str()));
    assert_eq!(got.header("x-amz-security-token"), Some(AWS_TOKEN));
    assert!(!got.header("authorization").unwrap().contains("PLACEHOLDER"));
    let signed = assert_botocore_agrees(&got, port, "ssm", "us-east-1");
    assert_eq!(
        signed,
        "content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token;x-amz-target"
    );
    let record = gw.audit_for(|r| r["path"] == "/aws/ssm");
    assert_eq!(
        record["transforms"][1]["annotations"]["signed"],
        serde_json::json!({"secret": "aws-ssm", "locations": [
            "header:authorization", "header:x-amz-date", "header:x-amz-content-sha256",
            "header:x-amz-security-token"]})
    );

    // 2. Unsigned: signed, with the empty payload's hash and the query.
    let reply = gw.via_proxy(&[&format!("http://127.0.0.1:{port}/aws/list?b=2&a=x%2Fy")]);
    assert_eq!(reply.status, 200);
    replies.push((reply, 200));
    let got = seen("/aws/list?b=2&a=x%2Fy");
    assert_eq!(
        got.header("x-amz-content-sha256"),
        Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    assert_eq!(
        assert_botocore_agrees(&got, port, "ssm", "us-east-1"),
        "host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
    );

    // 3. A declared UNSIGNED-PAYLOAD is kept and signed as such (the body is not read).
    let reply = gw.via_proxy(&[
        "-X",
        "PUT",
        "-H",
        "x-amz-content-sha256: UNSIGNED-PAYLOAD",
        "-H",
        "x-amz-meta-note: kept",
        "--data-binary",
        "opaque payload",
        &format!("http://127.0.0.1:{port}/aws/put"),
    ]);
    assert_eq!(reply.status, 200);
    replies.push((reply, 200));
    let got = seen("/aws/put");
    assert_eq!(got.header("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
    assert_eq!(got.body, b"opaque payload");
    assert_eq!(
        assert_botocore_agrees(&got, port, "ssm", "us-east-1"),
        "content-type;host;x-amz-content-sha256;x-amz-date;x-amz-meta-note;x-amz-security-token"
    );

    // 4. Signed for another service and region: refused, never forwarded.
    let before = upstream.hits();
    let other_request = SigV4Request {
        method: "GET",
        url: &format!("http://127.0.0.1:{port}/aws/bucket"),
        headers: &[],
        body: b"",
        service: "s3",
        region: "eu-west-1",
    };
    let other = other_request.signed_by_botocore("AKIDPLACEHOLDER", "placeholder-secret", None);
    let args = other_request.curl_args(&other);
    let reply = gw.via_proxy(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(reply.status, 403, "{reply:?}");
    let error = reply.json();
    assert_eq!(error["error"]["reason"], "signing_scope_mismatch");
    assert_eq!(
        error["error"]["message"],
        "credential \"aws-ssm\": signed for s3 in eu-west-1; this credential signs ssm in us-east-1"
    );
    replies.push((reply, 403));
    assert_eq!(upstream.hits(), before);

    // 5. Keys that are not the JSON form: 502, the reason (field names) in the log only.
    let reply = gw.via_proxy(&[&format!("http://127.0.0.1:{port}/broken/x")]);
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["reason"], "credential_unavailable");
    replies.push((reply, 502));
    assert_eq!(upstream.hits(), before);
    assert!(
        gw.portcullis_log()
            .contains("aws_sigv4 needs a JSON object")
    );

    let replies: Vec<(&Reply, u16)> = replies.iter().map(|(r, status)| (r, *status)).collect();
    gw.assert_no_leaks_checked(&[AWS_SECRET, AWS_TOKEN, BROKEN], &replies);
}

#[test]
fn sigv4_resigned_requests_pass_moto_signature_checks() {
    let moto = Moto::start();
    moto.put_parameter("/app/config", "plain-config-value", false);
    let (key_id, secret) = moto.iam_user("portcullis-gateway");
    moto.check_signatures();
    // The gateway's own credentials, from the standard chain (here: the environment).
    let config = r#"
gateway: {tags: [env:test]}
policies:
  - {name: moto, action: allow, rules: [{host: 127.0.0.1}, {host: localhost}]}
secrets:
  - name: moto-sts
    source: {type: aws_credentials}
    allow_plaintext: true
    inject: {style: aws_sigv4, service: sts, region: us-east-1}
    rules: [{host: localhost}]
  - name: moto-ssm
    source: {type: aws_credentials}
    allow_plaintext: true
    inject: {style: aws_sigv4, service: ssm, region: us-east-1}
    rules: [{host: 127.0.0.1}]
transforms: [allowlist, secrets]
"#;
    let gw = Gateway::start(
        config,
        GatewayOptions {
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), key_id.clone()),
                ("AWS_SECRET_ACCESS_KEY".into(), secret.clone()),
                ("AWS_REGION".into(), "us-east-1".into()),
            ],
            ..GatewayOptions::default()
        },
    );
    let mut replies = Vec::new();
    let sts_url = format!("http://localhost:{}/", moto.port);
    let sts_body = b"Action=GetCallerIdentity&Version=2011-06-15";
    let form = "application/x-www-form-urlencoded; charset=utf-8";
    let placeholder_signed_request = SigV4Request {
        method: "POST",
        url: &sts_url,
        headers: &[("Content-Type", form)],
        body: sts_body,
        service: "sts",
        region: "us-east-1",
    };
    let placeholder_signed = placeholder_signed_request.signed_by_botocore(
        "AKIDPLACEHOLDER",
        "placeholder-secret",
        None,
    );
    let args = placeholder_signed_request.curl_args(&placeholder_signed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Control: moto refuses the placeholder signature when it reaches it directly.
    let direct = curl(gw.dir.path(), &args);
    assert_eq!(direct.status, 403, "{direct:?}");
    assert!(
        direct.body.contains("InvalidClientTokenId"),
        "{}",
        direct.body
    );
    // And it checks signatures, not just key ids: the real key id with a wrong secret.
    let forged_request = SigV4Request {
        method: "POST",
        url: &sts_url,
        headers: &[("Content-Type", form)],
        body: sts_body,
        service: "sts",
        region: "us-east-1",
    };
    let forged = forged_request.signed_by_botocore(&key_id, "not-the-secret", None);
    let forged_args = forged_request.curl_args(&forged);
    let forged_args: Vec<&str> = forged_args.iter().map(String::as_str).collect();
    let direct = curl(gw.dir.path(), &forged_args);
    assert_eq!(direct.status, 403, "{direct:?}");
    assert!(
        direct.body.contains("SignatureDoesNotMatch"),
        "{}",
        direct.body
    );

    // Through the gateway: re-signed with the real key, moto verifies and answers.
    let reply = gw.via_proxy(&args);
    assert_eq!(reply.status, 200, "{reply:?}\n{}", gw.portcullis_log());
    assert!(
        reply
            .body
            .contains("<Arn>arn:aws:iam::123456789012:user/portcullis-gateway</Arn>"),
        "{}",
        reply.body
    );
    replies.push((reply, 200));

    // Unsigned, with a body: signed (its hash included), accepted.
    let reply = gw.via_proxy(&[
        "-H",
        &format!("Content-Type: {form}"),
        "--data-binary",
        std::str::from_utf8(sts_body).unwrap(),
        &sts_url,
    ]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("user/portcullis-gateway"));
    replies.push((reply, 200));

    // A JSON-protocol call (x-amz-target signed) to SSM through the other host name.
    let ssm_url = format!("http://127.0.0.1:{}/", moto.port);
    let ssm_body = br#"{"Name":"/app/config"}"#;
    let signed_request = SigV4Request {
        method: "POST",
        url: &ssm_url,
        headers: &[
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", "AmazonSSM.GetParameter"),
        ],
        body: ssm_body,
        service: "ssm",
        region: "us-east-1",
    };
    let signed = signed_request.signed_by_botocore(
        "AKIDPLACEHOLDER",
        "placeholder-secret",
        Some("placeholder-token"),
    );
    let args = signed_request.curl_args(&signed);
    let reply = gw.via_proxy(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("plain-config-value"), "{}", reply.body);
    replies.push((reply, 200));

    let record = gw.audit_for(|r| r["host"] == "127.0.0.1");
    assert_eq!(
        record["transforms"][1]["annotations"]["signed"]["secret"],
        "moto-ssm"
    );
    let replies: Vec<(&Reply, u16)> = replies.iter().map(|(r, status)| (r, *status)).collect();
    gw.assert_no_leaks_checked(&[&secret], &replies);
}
