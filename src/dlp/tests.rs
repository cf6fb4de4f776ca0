use std::path::{Path, PathBuf};

use super::*;

// Fake values only: AWS's documented examples and made-up keys.
const AWS_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const GITHUB: &str = "ghp_FAKE0Portcullis0Test0Token0abcdefXYZ";

fn scan(body: &str) -> Findings {
    Scanner::builtin().scan(body.as_bytes())
}

/// The names that fired, with their counts.
fn fired(body: &str) -> Vec<(String, usize)> {
    scan(body).iter().map(|(n, c)| (n.to_owned(), c)).collect()
}

fn fires(detector: &str, body: &str) -> bool {
    let scanner = Scanner::builtin();
    let id = scanner.detector_id(detector).expect("a builtin");
    scanner.scan(body.as_bytes()).contains(id)
}

fn count(detector: &str, body: &str) -> usize {
    let scanner = Scanner::builtin();
    let id = scanner.detector_id(detector).expect("a builtin");
    scanner.scan(body.as_bytes()).count(id)
}

fn pem(label: &str) -> String {
    format!(
        "-----BEGIN {label}-----\nMIIEpAIBAAKCAQEAFAKEFAKEKEYFORTESTSONLYnotarealkey0123456789\n\
         cG9ydGN1bGxpcyBkbHAgdGVzdCBmaXh0dXJl\n-----END {label}-----\n"
    )
}

#[test]
fn builtin_names_and_ids() {
    let scanner = Scanner::builtin();
    assert_eq!(scanner.names().collect::<Vec<_>>(), BUILTIN);
    assert_eq!(BUILTIN.len(), builtin::DETECTORS.len());
    for (i, name) in BUILTIN.iter().enumerate() {
        assert_eq!(builtin::DETECTORS[i].name, *name);
        let id = scanner.detector_id(name).unwrap();
        assert_eq!(id.index(), i);
        assert_eq!(scanner.name(id), Some(*name));
    }
    assert_eq!(scanner.detector_id("no_such_detector"), None);
    assert_eq!(scanner.detector_id("AWS_ACCESS_KEY"), None);
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Scanner>();
    send_sync::<Findings>();
}

#[test]
fn a_clean_body_has_no_findings() {
    let findings = scan(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#);
    assert!(findings.is_empty());
    assert_eq!(findings.len(), 0);
    assert_eq!(serde_json::to_string(&findings).unwrap(), "[]");
    assert!(Scanner::builtin().scan(b"").is_empty());
}

#[test]
fn findings_never_hold_the_value() {
    let private_key = pem("RSA PRIVATE KEY");
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": format!(
            "deploy with\naws_access_key_id = {AWS_ID}\naws_secret_access_key = {AWS_SECRET}\n\
             token {GITHUB}\n{private_key}card 4111 1111 1111 1111"
        )}]
    })
    .to_string();
    let findings = scan(&body);
    let debug = format!("{findings:?}");
    let pretty = format!("{findings:#?}");
    let json = serde_json::to_string(&findings).unwrap();
    for (name, _) in findings.iter() {
        assert!(json.contains(name));
    }
    assert_eq!(
        fired(&body).into_iter().map(|f| f.0).collect::<Vec<_>>(),
        [
            "aws_access_key",
            "aws_secret_key",
            "private_key",
            "github_token",
            "credit_card"
        ]
    );
    for secret in [
        AWS_ID,
        AWS_SECRET,
        "wJalrXUtnFEMI",
        "EXAMPLEKEY",
        GITHUB,
        "FAKE0Portcullis",
        "MIIEpAIBAAKCAQEA",
        "4111",
    ] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
        assert!(!pretty.contains(secret), "{secret} in {pretty}");
        assert!(!json.contains(secret), "{secret} in {json}");
    }
    assert_eq!(
        json,
        r#"[{"detector":"aws_access_key","count":1},{"detector":"aws_secret_key","count":1},{"detector":"private_key","count":1},{"detector":"github_token","count":1},{"detector":"credit_card","count":1}]"#
    );
}

#[test]
fn scanner_debug_names_detectors_not_patterns() {
    let scanner = Scanner::compile(&DlpConfig {
        custom: vec![CustomDetectorConfig {
            name: "internal_token".into(),
            regex: "itok_SECRETLITERAL[0-9]+".into(),
        }],
    })
    .unwrap();
    let debug = format!("{scanner:?}");
    assert!(debug.contains("internal_token"), "{debug}");
    assert!(debug.contains("aws_access_key"), "{debug}");
    assert!(!debug.contains("SECRETLITERAL"), "{debug}");
}

#[test]
fn counts_every_match() {
    let body = format!("{AWS_ID} and ASIAFAKE0TEST0KEY123, again {AWS_ID}");
    assert_eq!(count("aws_access_key", &body), 3);
    assert_eq!(
        count(
            "credit_card",
            "4111111111111111 5555555555554444, 4012888888881881"
        ),
        3
    );
    assert_eq!(
        count(
            "credit_card",
            "4111 1111 1111 1111, 5555 5555 5555 4444 and 3782 822463 10005"
        ),
        3
    );
    assert_eq!(
        count("email", "a@example.com, b@example.org; c@example.net"),
        3
    );
}

#[test]
fn aws_access_key() {
    assert!(fires("aws_access_key", AWS_ID));
    assert!(fires("aws_access_key", "ASIAFAKE0TEST0KEY123"));
    assert!(fires("aws_access_key", &format!("key={AWS_ID}&x=1")));
    assert!(fires("aws_access_key", &format!(r#""line\n{AWS_ID}""#)));
    // AKIA + 15, + 17, wrong prefix, inside a word, lowercase, placeholders.
    assert!(!fires("aws_access_key", "AKIAIOSFODNN7EXAMPL"));
    assert!(!fires("aws_access_key", "AKIAIOSFODNN7EXAMPLEX"));
    assert!(!fires("aws_access_key", "AKIBIOSFODNN7EXAMPLE"));
    assert!(!fires("aws_access_key", "XAKIAIOSFODNN7EXAMPLE"));
    assert!(!fires("aws_access_key", "akiaiosfodnn7example"));
    assert!(!fires("aws_access_key", "AKIAXXXXXXXXXXXXXXXX"));
}

#[test]
fn aws_secret_key_needs_context() {
    // Alone, a 40-character base64 string is not reported.
    assert!(!fires("aws_secret_key", AWS_SECRET));
    assert!(!fires("aws_secret_key", &format!("sha: {AWS_SECRET}")));
    for body in [
        format!("aws_secret_access_key = {AWS_SECRET}"),
        format!("AWS_SECRET_ACCESS_KEY={AWS_SECRET}"),
        format!(r#"{{"SecretAccessKey": "{AWS_SECRET}"}}"#),
        format!("secret_key = \"{AWS_SECRET}\""),
        format!("aws_secret: '{AWS_SECRET}'"),
        format!("<SecretAccessKey>{AWS_SECRET}</SecretAccessKey>"),
        format!("{AWS_ID},{AWS_SECRET}"),
        format!(r"{AWS_ID}\n{AWS_SECRET}"),
        // JSON-escaped slashes, percent-encoded slashes, JSON inside JSON.
        format!(
            r#"{{"aws_secret_access_key":"{}"}}"#,
            AWS_SECRET.replace('/', r"\/")
        ),
        format!(
            "aws_secret_access_key={}&region=us-east-1",
            AWS_SECRET.replace('/', "%2F")
        ),
        serde_json::json!({ "content": format!(r#"{{"aws_secret_access_key": "{AWS_SECRET}"}}"#) })
            .to_string(),
    ] {
        assert!(fires("aws_secret_key", &body), "{body}");
    }
    // 39 and 41 characters, placeholders, a lowercase SHA-1, another kind of secret.
    for body in [
        format!("aws_secret_access_key = {}", &AWS_SECRET[..39]),
        format!("aws_secret_access_key = {AWS_SECRET}A"),
        format!("aws_secret_access_key = {AWS_SECRET}/"),
        "aws_secret_access_key = XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX".to_owned(),
        "aws_secret_access_key = ${AWS_SECRET_ACCESS_KEY}".to_owned(),
        "secret_key = da39a3ee5e6b4b0d3255bfef95601890afd80709".to_owned(),
        format!("client_secret = {}", AWS_SECRET.replace('/', "x")),
    ] {
        assert!(!fires("aws_secret_key", &body), "{body}");
    }
}

#[test]
fn private_key_blocks() {
    for label in [
        "PRIVATE KEY",
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "DSA PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
        "PGP PRIVATE KEY BLOCK",
    ] {
        let block = pem(label);
        assert!(fires("private_key", &block), "{label}");
        // As a JSON string: the line breaks are `\n` escapes.
        let json = serde_json::json!({ "content": block }).to_string();
        assert!(json.contains(r"-----\nMII"));
        assert!(fires("private_key", &json), "{label} in JSON");
        assert!(
            fires("private_key", &block.replace('\n', "\r\n")),
            "{label} CRLF"
        );
        assert_eq!(count("private_key", &format!("{block}{block}")), 2);
    }
    // A legacy encrypted PEM: header lines before the key material.
    let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                  DEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\n\
                  FAKEFAKEFAKEFAKEbase64material0123\n-----END RSA PRIVATE KEY-----";
    assert!(fires("private_key", legacy));
    assert!(fires(
        "private_key",
        &serde_json::json!({ "k": legacy }).to_string()
    ));
    // The test suite's real (throwaway) keys, as files and as JSON strings.
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
    for file in [
        "rsa-private.pem",
        "rsa-private-pkcs1.pem",
        "ec-private.pem",
        "ec-private-sec1.pem",
    ] {
        let text = std::fs::read_to_string(keys.join(file)).unwrap();
        assert!(fires("private_key", &text), "{file}");
        let json = serde_json::to_string(&text).unwrap();
        assert!(fires("private_key", &json), "{file} as JSON");
    }
    let public = std::fs::read_to_string(keys.join("rsa-public.pem")).unwrap();
    assert!(!fires("private_key", &public));
    // The armour line alone, placeholders, four dashes.
    assert!(!fires(
        "private_key",
        r#"if line.startswith("-----BEGIN RSA PRIVATE KEY-----"):"#
    ));
    assert!(!fires(
        "private_key",
        r#""-----BEGIN PRIVATE KEY-----\n<redacted>\n-----END PRIVATE KEY-----""#
    ));
    assert!(!fires(
        "private_key",
        "----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAFAKEFAKEKEY\n"
    ));
}

#[test]
fn github_token() {
    assert_eq!(GITHUB.len(), 40);
    for prefix in ["ghp", "gho", "ghu", "ghs", "ghr"] {
        let token = format!("{prefix}{}", &GITHUB[3..]);
        assert!(fires("github_token", &token), "{token}");
    }
    let pat = format!(
        "github_pat_{}_{}",
        "FAKE0123456789abcdefGH",
        "x1Y2".repeat(15)
    );
    assert_eq!(pat.len(), 11 + 22 + 1 + 60);
    assert!(
        !fires("github_token", &pat),
        "60 characters after the second part"
    );
    let pat = &pat[..pat.len() - 1];
    assert!(fires("github_token", pat), "{pat}");
    assert!(fires(
        "github_token",
        &format!("Authorization: token {GITHUB}")
    ));
    // One character short, one too many, wrong prefix, placeholder, inside a word.
    assert!(!fires("github_token", &GITHUB[..39]));
    assert!(!fires("github_token", &format!("{GITHUB}Z")));
    assert!(!fires("github_token", &GITHUB.replace("ghp_", "ghx_")));
    assert!(!fires("github_token", &format!("ghp_{}", "X".repeat(36))));
    assert!(!fires("github_token", &format!("x{GITHUB}")));
}

#[test]
fn gitlab_token() {
    assert!(fires("gitlab_token", "glpat-FAKE0test0Token0abcd"));
    assert!(fires(
        "gitlab_token",
        "PRIVATE-TOKEN: glpat-FAKE_test-Token0abcd"
    ));
    assert!(fires("gitlab_token", "gldt-FAKE0test0Token0abcd"));
    assert!(
        !fires("gitlab_token", "glpat-FAKE0test0Token0abc"),
        "19 characters"
    );
    assert!(!fires("gitlab_token", "glpat-xxxxxxxxxxxxxxxxxxxx"));
    assert!(!fires("gitlab_token", "glpat-your-token-goes-here"));
    assert!(!fires("gitlab_token", "glpat_FAKE0test0Token0abcd"));
}

#[test]
fn slack_token() {
    assert!(fires(
        "slack_token",
        "xoxb-12345678901-123456789012-FAKE0test0Token0abcdefgh"
    ));
    assert!(fires(
        "slack_token",
        "xoxp-123456789012-123456789012-1234567890123-0123456789abcdef0123456789abcdef"
    ));
    let hook = "https://hooks.slack.com/services/T0FAKE123/B0FAKE456/FAKE0test0Token0abcdefgh";
    assert!(fires("slack_token", hook));
    assert!(fires(
        "slack_token",
        &serde_json::json!({ "url": hook })
            .to_string()
            .replace('/', r"\/")
    ));
    assert!(!fires("slack_token", "xoxb-your-bot-token-here-please"));
    assert!(!fires("slack_token", "xoxb-123-456"));
    assert!(!fires("slack_token", "https://hooks.slack.com/services/"));
    assert!(!fires(
        "slack_token",
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
    ));
}

#[test]
fn openai_and_anthropic_keys_are_told_apart() {
    let openai = "sk-proj-FAKE0test0Key0abcdefghijklmnopqrstuvwxyzT3BlbkFJ0123456789";
    let legacy = "sk-FAKE0test0Key0abcdeT3BlbkFJ0123456789ABCDEFGHIJ";
    let anthropic = "sk-ant-api03-FAKE0test0Key0abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ-_AA";
    assert_eq!(fired(openai), [("openai_key".to_owned(), 1)]);
    assert_eq!(fired(legacy), [("openai_key".to_owned(), 1)]);
    assert_eq!(fired(anthropic), [("anthropic_key".to_owned(), 1)]);
    assert!(fires(
        "openai_key",
        &format!("Authorization: Bearer {openai}")
    ));
    assert!(fires("anthropic_key", &format!("x-api-key: {anthropic}")));
    assert!(!fires(
        "openai_key",
        "sk-your-api-key-here-replace-me-please"
    ));
    assert!(!fires("openai_key", &format!("sk-{}", "x".repeat(48))));
    assert!(!fires(
        "openai_key",
        "task-queue-worker-deployment-2024-abcdefgh"
    ));
    assert!(!fires(
        "openai_key",
        "desk-Booking-Service-Z9x8Y7w6V5u4T3s2R1q0"
    ));
    assert!(
        !fires("openai_key", &legacy[..34]),
        "31 characters after sk-"
    );
    assert!(!fires("anthropic_key", "sk-ant-api03-FAKE0short"));
    assert!(!fires("anthropic_key", openai));
}

#[test]
fn stripe_key() {
    for prefix in ["sk_live", "rk_live", "sk_test", "rk_test"] {
        let key = format!("{prefix}_FAKE0test0Key0abcdefghij");
        assert!(fires("stripe_key", &key), "{key}");
    }
    assert!(
        !fires("stripe_key", "pk_live_FAKE0test0Key0abcdefghij"),
        "publishable"
    );
    assert!(
        !fires("stripe_key", "sk_live_FAKE0test0Key0abcdefghi"),
        "23 characters"
    );
    assert!(!fires("stripe_key", "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx"));
}

fn b64url(json: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

#[test]
fn jwt_header_must_decode() {
    let header = b64url(r#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64url(r#"{"sub":"fake-user","iat":1700000000}"#);
    let token = format!("{header}.{payload}.FAKEsignature0123456789abcdef-_XYZ");
    assert!(fires("jwt", &token));
    assert!(fires("jwt", &format!("Authorization: Bearer {token}")));
    assert!(fires(
        "jwt",
        &format!("{}.{payload}.", b64url(r#"{"alg":"none"}"#))
    ));
    // No alg, alg not a string, two segments, a signed alg without a signature, a header
    // that is not base64url JSON.
    assert!(!fires(
        "jwt",
        &format!("{}.{payload}.c2ln", b64url(r#"{"typ":"JWT"}"#))
    ));
    assert!(!fires(
        "jwt",
        &format!("{}.{payload}.c2ln", b64url(r#"{"alg":5}"#))
    ));
    assert!(!fires("jwt", &format!("{header}.{payload}")));
    assert!(!fires("jwt", &format!("{header}.{payload}.")));
    assert!(!fires("jwt", "eyJxxxxxxxxxxxx.yyyyyyyy.zzzzzzzz"));
}

#[test]
fn luhn() {
    assert!(builtin::luhn(b"4111111111111111"));
    assert!(builtin::luhn(b"79927398713"));
    assert!(!builtin::luhn(b"4111111111111112"));
    assert!(!builtin::luhn(b"79927398710"));
}

#[test]
fn credit_card() {
    for card in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555555555554444",
        "2223003122003222",
        "378282246310005",
        "3782 822463 10005",
        "6011111111111117",
        "3530111333300000",
        "30569309025904",
        "4222222222222",
    ] {
        assert!(fires("credit_card", card), "{card}");
        assert!(fires("credit_card", &format!("card: {card}.")), "{card}");
        assert!(
            fires("credit_card", &format!(r#"{{"c":"x\n{card}"}}"#)),
            "{card} after a JSON escape"
        );
    }
    // Beside other numbers in one run.
    assert!(fires("credit_card", "2024-01-15 4111111111111111"));
    assert!(fires(
        "credit_card",
        "order 12 4111 1111 1111 1111 exp 12/30"
    ));
    assert!(fires("credit_card", "4111 1111 1111 1111 12 30"));
    // Labels: an identifier's is not a card, a card's label wins.
    for card in [
        "card number 4111111111111111",
        r#"{"card_number": "4111111111111111"}"#,
        "Paid order 1234 with card 4111111111111111",
        "order id 12, cc: 4111 1111 1111 1111",
        "credit card no. 4111111111111111",
        "payment_id: 4111111111111111",
    ] {
        assert!(fires("credit_card", card), "{card}");
    }
    for id in [
        "transaction id 5408519004653313",
        r#"{"order_id": 4111111111111111}"#,
        r#"{"orderId":"4111111111111111"}"#,
        "order #4111111111111111",
        "trackingNumber=4111111111111111",
        "Invoice: 4111 1111 1111 1111",
    ] {
        assert!(!fires("credit_card", id), "{id}");
    }
    // Luhn-invalid, unknown issuer, wrong length for the issuer, bad layout, inside a word
    // or a decimal, a phone-number `+`, too long.
    for not_card in [
        "4111111111111112",
        "4111 1111 1111 1112",
        "5555555555554443",
        "378282246310006",
        "1234567890123456",
        "0000000000000000",
        "411111111111111",
        "4111 1111 1111 111",
        "4111 11111 111 1111",
        "4111 1111-1111 1111",
        "a4111111111111111",
        "4111111111111111b",
        "0.4111111111111111",
        "4111111111111111.5",
        "+4111111111111111",
        "41111111111111110000",
        "1700000000000",
        // An IBAN and a USPS tracking number whose middle groups pass as a card.
        "DE89 4111 1111 1111 1111 00",
        "9400 4111 1111 1111 1111 00",
        "4111 1111 1111 1111 5555",
        "123e4567-e89b-12d3-a456-426614174000",
    ] {
        assert!(!fires("credit_card", not_card), "{not_card}");
    }
}

#[test]
fn email() {
    for address in [
        "alice@example.com",
        "bob.smith+tag@mail.example.co.uk",
        "ALICE@EXAMPLE.COM",
        "x@y.dev",
    ] {
        assert!(fires("email", address), "{address}");
        assert!(fires("email", &format!("<{address}>")), "{address}");
    }
    assert!(fires("email", r#"{"c":"reach me at\nalice@example.com"}"#));
    for not_email in [
        "icon@2x.png",
        "git@github.com:acme/repo.git",
        "@pytest.fixture",
        r#""code":"\n@app.route(\"/\")""#,
        "user@localhost",
        "foo@123.456",
        "alice.@example.com",
        "nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c",
    ] {
        assert!(!fires("email", not_email), "{not_email}");
    }
}

fn custom(list: &[(&str, &str)]) -> DlpConfig {
    DlpConfig {
        custom: list
            .iter()
            .map(|(name, regex)| CustomDetectorConfig {
                name: name.to_string(),
                regex: regex.to_string(),
            })
            .collect(),
    }
}

#[test]
fn custom_detectors() {
    let scanner = Scanner::compile(&custom(&[
        ("acme_token", r"acme_[0-9a-f]{8}"),
        ("employee_id", r"\bEMP-\d{6}\b"),
    ]))
    .unwrap();
    assert_eq!(
        scanner.names().collect::<Vec<_>>(),
        BUILTIN
            .iter()
            .copied()
            .chain(["acme_token", "employee_id"])
            .collect::<Vec<_>>()
    );
    let acme = scanner.detector_id("acme_token").unwrap();
    let employee = scanner.detector_id("employee_id").unwrap();
    assert_eq!(acme.index(), BUILTIN.len());
    let findings = scanner
        .scan(format!("acme_deadbeef acme_0badf00d EMP-123456 EMP-1234567 {AWS_ID}").as_bytes());
    assert_eq!(findings.count(acme), 2);
    assert_eq!(findings.count(employee), 1);
    assert!(findings.contains(scanner.detector_id("aws_access_key").unwrap()));
    assert_eq!(
        serde_json::to_string(&findings).unwrap(),
        r#"[{"detector":"aws_access_key","count":1},{"detector":"acme_token","count":2},{"detector":"employee_id","count":1}]"#
    );
    assert!(scanner.scan(b"acme_XYZ").is_empty());
    // Without custom detectors, compile is the builtins.
    let plain = Scanner::compile(&DlpConfig::default()).unwrap();
    assert_eq!(plain.names().count(), BUILTIN.len());
}

#[test]
fn custom_detector_config_from_yaml() {
    let config: DlpConfig =
        serde_norway::from_str("custom:\n  - {name: acme_token, regex: 'acme_[0-9a-f]{8}'}\n")
            .unwrap();
    assert_eq!(config, custom(&[("acme_token", "acme_[0-9a-f]{8}")]));
    let empty: DlpConfig = serde_norway::from_str("{}").unwrap();
    assert_eq!(empty, DlpConfig::default());
    let unknown = serde_norway::from_str::<DlpConfig>("custom: []\nbuiltin: []\n").unwrap_err();
    assert!(
        unknown.to_string().contains("unknown field `builtin`"),
        "{unknown}"
    );
    let unknown =
        serde_norway::from_str::<DlpConfig>("custom: [{name: a, regex: b, pattern: c}]\n")
            .unwrap_err();
    assert!(
        unknown.to_string().contains("unknown field `pattern`"),
        "{unknown}"
    );
}

fn errors(config: &DlpConfig) -> Vec<(String, String)> {
    Scanner::compile(config)
        .unwrap_err()
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect()
}

#[test]
fn bad_custom_regex_is_reported_at_its_path() {
    let found = errors(&custom(&[
        ("ok", "fine"),
        ("also_ok", "fine[0-9]"),
        ("broken", "acme_(unclosed"),
    ]));
    assert_eq!(
        found,
        [(
            "custom[2].regex".to_owned(),
            r#"regex "acme_(unclosed" is not valid: unclosed group"#.to_owned()
        )]
    );
    assert!(!found[0].1.contains('\n'));
    let found = errors(&custom(&[("empty", ""), ("star", "a*")]));
    assert_eq!(
        found,
        [
            ("custom[0].regex".to_owned(), "must not be empty".to_owned()),
            (
                "custom[1].regex".to_owned(),
                r#"regex "a*" matches the empty string, so it would fire on every body"#.to_owned()
            ),
        ]
    );
}

#[test]
fn bad_custom_names_are_reported() {
    let found = errors(&custom(&[
        ("aws_access_key", "x1"),
        ("acme", "x2"),
        ("ACME", "x3"),
        ("", "x4"),
        ("has space", "x5"),
        ("9lives", "x6"),
        ("acme", "(bad"),
    ]));
    assert_eq!(
        found,
        [
            (
                "custom[0].name".to_owned(),
                r#""aws_access_key" is a builtin detector; a custom detector needs another name"#
                    .to_owned()
            ),
            (
                "custom[2].name".to_owned(),
                r#"duplicate detector name "ACME" (first used at custom[1])"#.to_owned()
            ),
            ("custom[3].name".to_owned(), "must not be empty".to_owned()),
            (
                "custom[4].name".to_owned(),
                "detector name \"has space\" may hold only ASCII letters, digits, `_` and `-`, \
                 and must start with a letter"
                    .to_owned()
            ),
            (
                "custom[5].name".to_owned(),
                "detector name \"9lives\" may hold only ASCII letters, digits, `_` and `-`, \
                 and must start with a letter"
                    .to_owned()
            ),
            (
                "custom[6].name".to_owned(),
                r#"duplicate detector name "acme" (first used at custom[1])"#.to_owned()
            ),
            (
                "custom[6].regex".to_owned(),
                r#"regex "(bad" is not valid: unclosed group"#.to_owned()
            ),
        ]
    );
    let long = "a".repeat(65);
    assert_eq!(
        errors(&custom(&[(&long, "x")]))[0].1,
        "detector name is 65 bytes long; at most 64"
    );
}

// The corpus: tests/fixtures/dlp.

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dlp")
}

/// The samples of a corpus file: one per line, `#` comments and blank lines skipped.
fn samples(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(i, line)| (i + 1, line.to_owned()))
        .collect()
}

#[test]
fn corpus_positive_and_negative_samples() {
    let scanner = Scanner::builtin();
    let mut failures = Vec::new();
    for detector in BUILTIN {
        let id = scanner.detector_id(detector).unwrap();
        for (kind, expected) in [("positive", true), ("negative", false)] {
            let path = fixtures().join(kind).join(format!("{detector}.txt"));
            let samples = samples(&path);
            assert!(
                samples.len() >= 8,
                "{}: {} samples, at least 8 wanted",
                path.display(),
                samples.len()
            );
            for (line, sample) in samples {
                if scanner.scan(sample.as_bytes()).contains(id) != expected {
                    // The line number, not the sample: these are secret-shaped.
                    failures.push(format!(
                        "{kind}/{detector}.txt:{line}: expected {detector} {}",
                        if expected { "to fire" } else { "not to fire" }
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corpus_benign_chat_bodies() {
    let scanner = Scanner::builtin();
    let path = fixtures().join("benign/chat-bodies.jsonl");
    let bodies = samples(&path);
    assert!(bodies.len() >= 300, "{} bodies", bodies.len());
    let mut per_detector = vec![0usize; BUILTIN.len()];
    let mut any = 0;
    let mut any_but_email = 0;
    let mut flagged = Vec::new();
    for (line, body) in &bodies {
        serde_json::from_str::<serde_json::Value>(body)
            .unwrap_or_else(|e| panic!("line {line} is not JSON: {e}"));
        let findings = scanner.scan(body.as_bytes());
        for finding in findings.findings() {
            per_detector[finding.id().index()] += 1;
        }
        if !findings.is_empty() {
            any += 1;
            flagged.push(format!("line {line}: {findings:?}"));
        }
        if findings.iter().any(|(name, _)| name != "email") {
            any_but_email += 1;
        }
    }
    let total = bodies.len();
    let rate = |n: usize| 100.0 * n as f64 / total as f64;
    eprintln!("DLP false positives over {total} benign chat bodies:");
    for (name, n) in BUILTIN.iter().zip(&per_detector) {
        eprintln!("  {name:<15} {n:>3} bodies ({:.2}%)", rate(*n));
    }
    eprintln!("  any detector    {any:>3} bodies ({:.2}%)", rate(any));
    eprintln!(
        "  any but email   {any_but_email:>3} bodies ({:.2}%)",
        rate(any_but_email)
    );
    for f in &flagged {
        eprintln!("  {f}");
    }
    for (name, n) in BUILTIN.iter().zip(&per_detector) {
        assert!(rate(*n) <= 1.0, "{name}: {:.2}% false positives", rate(*n));
    }
    assert!(
        rate(any) <= 1.0,
        "{:.2}% of bodies have a finding",
        rate(any)
    );
}

#[test]
fn redaction_replaces_each_confirmed_match_and_only_the_chosen_detectors() {
    let scanner = Scanner::builtin();
    let body = format!(
        r#"{{"id":"{AWS_ID}","note":"aws_secret_access_key={AWS_SECRET}","to":"a@example.com","card":"4111 1111 1111 1112"}}"#
    );
    let (redacted, findings) = scanner.redact(body.as_bytes(), &[]).unwrap();
    let text = String::from_utf8(redacted).unwrap();
    assert!(
        !text.contains(AWS_ID) && !text.contains(AWS_SECRET),
        "{text}"
    );
    assert!(
        text.contains(r#""id":"[REDACTED:aws_access_key]""#),
        "{text}"
    );
    assert!(
        text.contains("aws_secret_access_key=[REDACTED:aws_secret_key]"),
        "{text}"
    );
    // A number that fails the Luhn check is not a card; the address is found.
    assert!(text.contains("4111 1111 1111 1112"), "{text}");
    assert!(!text.contains("a@example.com"), "{text}");
    serde_json::from_str::<serde_json::Value>(&text).expect("still JSON");
    assert_eq!(findings.len(), 3);
    // Only the detectors asked for.
    let aws = scanner.detector_id("aws_access_key").unwrap();
    let (only, findings) = scanner.redact(body.as_bytes(), &[aws]).unwrap();
    let only = String::from_utf8(only).unwrap();
    assert!(
        only.contains("a@example.com") && only.contains(AWS_SECRET),
        "{only}"
    );
    assert!(!only.contains(AWS_ID));
    assert_eq!(findings.len(), 1);
    assert!(scanner.redact(b"nothing to see", &[]).is_none());
}
