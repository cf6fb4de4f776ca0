//! The command line: validate, check, and the Envoy configs shipped in envoy/.

use std::process::Command;

use crate::common::{envoy_binary, repo};

fn portcullis(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_lists_every_error_with_file_line_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "policies:\n  - name: a\n    action: allow\n    rules: [{host: 'https://x.example'}]\n  - name: b\n    action: allow\n    rules: [{host: y.example, methods: [FETCH]}]\n",
    )
    .unwrap();
    let (code, out, _) = portcullis(&["validate", file.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}");
    let f = file.display();
    assert!(out.contains(&format!("{f}:4:14: policies[0].rules[0].host (policy \"a\"): host \"https://x.example\" looks like a URL")), "{out}");
    assert!(
        out.contains(&format!(
            "{f}:7:41: policies[1].rules[0].methods[0] (policy \"b\"): unknown method \"FETCH\""
        )),
        "{out}"
    );
    assert!(out.contains("2 errors"), "{out}");
}

#[test]
fn the_example_config_validates_and_checks() {
    let example = repo().join("examples/portcullis.yaml");
    let example = example.to_str().unwrap();
    let env = [("PORTCULLIS_DEMO_TOKEN", "demo")];
    let (code, out, err) = portcullis(&["validate", example], &env);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = portcullis(&["validate", example], &[]);
    assert_eq!(
        code, 1,
        "a missing token source is an error, not a silent skip"
    );
    assert!(out.contains("PORTCULLIS_DEMO_TOKEN is not set"), "{out}");

    let (code, out, _) = portcullis(
        &["check", "-c", example, "-r", "GET http://example.com/"],
        &env,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("decision    ALLOWED") && out.contains("public-read"),
        "{out}"
    );
    // Whether Envoy could decide it alone is said too (docs/fast-path.md).
    assert!(out.contains("\nfast path   "), "{out}");
    let (code, out, _) = portcullis(
        &["check", "-c", example, "-r", "CONNECT evil.example:443"],
        &env,
    );
    assert_eq!(code, 3, "denied exits 3: {out}");
    assert!(out.contains("decision    DENIED"), "{out}");
    // A GET-only rule cannot open an opaque tunnel, but an intercepting listener's CONNECT
    // opens when a request inside could be allowed.
    let connect = ["check", "-c", example, "-r", "CONNECT example.com:443"];
    let (code, _, _) = portcullis(&connect, &env);
    assert_eq!(code, 3);
    let (code, out, _) = portcullis(&[&connect[..], &["--intercepted"]].concat(), &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("decision    ALLOWED"), "{out}");
    let (code, out, _) = portcullis(
        &[
            "check",
            "-c",
            example,
            "-r",
            "POST http://httpbin.org/post",
            "--token",
            "demo",
            "--json",
        ],
        &env,
    );
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["audit"]["decision"], "FLAGGED");
    assert_eq!(json["matching_policies"][0]["policy"], "ci-writes");
    // A request with proxy credentials is decided by Portcullis.
    assert_eq!(json["fast_path"]["decided_by"], "portcullis", "{json}");
    assert!(
        json["fast_path"]["reason"]
            .as_str()
            .unwrap()
            .contains("proxy credentials")
    );
    assert!(!out.contains("\"demo\""), "the token is not echoed");
}

/// The seeds' common patterns, with a smaller body limit.
fn body_seeds() -> String {
    format!(
        "gateway: {{max_body_bytes: 256}}\n{}",
        crate::common::seed_policies()
    )
}

#[test]
fn check_decides_on_a_body_given_as_text_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("seeds.yaml");
    std::fs::write(&config, body_seeds()).unwrap();
    let config = config.to_str().unwrap();
    let post = [
        "check",
        "-c",
        config,
        "-r",
        "POST http://api.example/upload",
    ];
    let with = |extra: &[&str]| portcullis(&[&post[..], extra].concat(), &[]);

    let leak = r#"{"aws_secret_access_key": "SENTINEL-cli-body-91c2"}"#;
    let (code, out, err) = with(&["--body", leak]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("decision    DENIED"), "{out}");
    assert!(
        out.contains("→ block-credential-leaks"),
        "the deciding policy: {out}"
    );
    assert!(
        out.contains(&format!("body        {} bytes, buffered", leak.len())),
        "{out}"
    );
    assert!(
        out.contains("request body carries an AWS secret key name"),
        "{out}"
    );
    assert!(
        !out.contains("SENTINEL"),
        "the body is never printed: {out}"
    );

    let file = dir.path().join("body.json");
    std::fs::write(&file, b"{\"note\": \"the customer list\"}").unwrap();
    let (code, out, _) = with(&["--body-file", file.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["audit"]["decision"], "FLAGGED");
    assert_eq!(json["audit"]["policy"], "flag-sensitive");
    assert_eq!(json["body"]["buffered"], true);
    let matching: Vec<&str> = json["matching_policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["policy"].as_str().unwrap())
        .collect();
    assert_eq!(matching, ["flag-sensitive", "default-allow"]);

    // `-` reads the body from standard input.
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(post)
        .args(["--body-file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"SSN: 123-45-6789").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("decision    FLAGGED") && text.contains("→ flag-sensitive"),
        "{text}"
    );

    // Without a body: no condition holds.
    let (code, out, _) = with(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("decision    ALLOWED") && !out.contains("body    "),
        "{out}"
    );
    // A body the decision needs is refused over the limit, as the gateway would.
    let big = "x".repeat(300);
    let (code, out, _) = with(&["--body", &big]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("response    413 body_too_large"), "{out}");
    // A CONNECT has no body; --body and --body-file exclude each other.
    let (code, _, err) = portcullis(
        &[
            "check",
            "-c",
            config,
            "-r",
            "CONNECT api.example:443",
            "--body",
            "x",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("a CONNECT carries no request body"), "{err}");
    let (code, _, err) = with(&["--body", "x", "--body-file", "y"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn every_envoy_config_passes_envoy_validate() {
    // envoy/mesh-mtls.yaml loads its certificate files when validated: give it throwaway ones.
    let mesh_files = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    for (name, text) in [
        ("gateway.crt", cert.pem()),
        ("gateway.key", key.serialize_pem()),
        ("trust-bundle.pem", cert.pem()),
    ] {
        std::fs::write(mesh_files.path().join(name), text).unwrap();
    }
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("envoy")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let path = with_test_files(&path, mesh_files.path());
            let out = Command::new(envoy_binary())
                .args(["--mode", "validate", "--disable-hot-restart", "-c"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "forward-proxy.yaml and base-url.yaml at least"
    );
}

/// `config` with its mesh certificate paths (if any) pointed into `dir`, as a file in `dir`.
/// `config` with its mesh certificates, and the access log file Envoy opens (beside the
/// gRPC socket), in `dir`.
fn with_test_files(config: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(config).unwrap();
    let copy = dir.join(config.file_name().unwrap());
    let swapped = format!("{}/", dir.display());
    let text = text.replace("/etc/portcullis/mesh/", &swapped).replace(
        crate::common::ENVOY_ACCESS_LOG_IN_ENVOY_CONFIGS,
        &dir.join("access.jsonl").display().to_string(),
    );
    std::fs::write(&copy, text).unwrap();
    copy
}

/// The Quick start's config keeps its policies in the store: `check` decides with those,
/// as the gateway does, and says where they came from.
#[test]
fn check_decides_with_the_stores_policies_when_the_config_names_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let example = repo().join("examples/portcullis.yaml");
    let env = [("PORTCULLIS_DEMO_TOKEN", "demo")];
    let (code, out, err) = portcullis(
        &[
            "apply",
            "-f",
            example.to_str().unwrap(),
            "--store",
            &store,
            "--operator",
            "test",
            "--reason",
            "seed",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {{url: \"{store}\"}}\ngateway: {{tags: [env:dev]}}\ndefault_action: deny\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (code, out, err) = portcullis(
        &["check", "-c", config, "-r", "GET http://example.com/"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("public-read"), "{out}");
    assert!(err.contains("policies and secrets from the store"), "{err}");
    // Its demo secret reads a variable this config does not let stored secrets read: set
    // aside, as the gateway would, and said so.
    assert!(
        err.contains("stored secret \"httpbin-demo\" set aside, as the gateway would"),
        "{err}"
    );
    let (code, out, _) = portcullis(
        &["check", "-c", config, "-r", "GET http://example.org/"],
        &[],
    );
    assert_eq!(code, 3, "{out}");
}

#[test]
fn validate_warns_about_rules_that_can_never_match_and_tunnel_only_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        r#"policies:
  - name: never
    action: allow
    rules:
      - {host: api.example.com, methods: [CONNECT], paths: ["/v1/*"]}
  - name: tunnel-only
    action: allow
    rules:
      - {host: github.com, methods: [CONNECT]}
  - name: both
    action: allow
    rules:
      - {host: pypi.org, methods: [CONNECT, GET]}
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, out, _) = portcullis(&["validate", f], &[]);
    assert_eq!(code, 0, "warnings do not fail validation: {out}");
    assert!(
        out.contains(&format!(
            "warning: {f}:5:9: policies[0].rules[0] (policy \"never\"): this rule can never match"
        )),
        "{out}"
    );
    assert!(out.contains("paths"), "{out}");
    assert!(
        !out.contains("tunnel-only"),
        "no interception, no tunnel warning: {out}"
    );
    assert!(out.contains("; 1 warning"), "{out}");

    // With interception on, the CONNECT-only policy is called out too; `both` is fine.
    let ca = dir.path().join("ca");
    let (code, _, err) = portcullis(&["ca", "init", "--dir", ca.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!(
        "interception: {{ca: {{cert_file: {0}/ca.crt, key_file: {0}/ca.key}}}}\n",
        ca.display()
    ));
    std::fs::write(&file, text).unwrap();
    let (code, out, _) = portcullis(&["validate", f], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "(policy \"tunnel-only\"): under interception this rule only opens the tunnel"
        ),
        "{out}"
    );
    assert!(!out.contains("policy \"both\""), "{out}");
    assert!(out.contains("; 2 warnings"), "{out}");
}

#[test]
fn validate_counts_one_error_in_the_singular() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        "policies: [{name: a, action: allow, rules: [{host: a.test, methods: [FETCH]}]}]\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, out, _) = portcullis(&["validate", f], &[]);
    assert_eq!(code, 1);
    assert!(out.ends_with(&format!("{f}: 1 error\n")), "{out}");
}

/// Errors of every stage in one run: a policy that does not parse, a detector no one
/// defined and a token source not set (found compiling), CA files that are missing, a
/// store URL variable that is not set, and policies in a file that names a store.
#[test]
fn validate_reports_the_errors_of_every_stage_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        r#"identities:
  - {name: ci, token: {env: VALIDATE_TOKEN_NOT_SET}, tags: [team:ci]}
policies:
  - {name: bad-method, action: allow, rules: [{host: a.test, methods: [FETCH]}]}
  - {name: bad-detector, action: deny, rules: [{host: b.test, dlp: [no_such_detector]}]}
interception:
  ca: {cert_file: /nonexistent/ca.crt, key_file: /nonexistent/ca.key}
store:
  url_env: VALIDATE_STORE_URL_NOT_SET
"#,
    )
    .unwrap();
    let (code, out, _) = portcullis(&["validate", file.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}");
    for expected in [
        "policies[0].rules[0].methods[0] (policy \"bad-method\"): unknown method \"FETCH\"",
        "policies[1].rules[0].dlp[0] (policy \"bad-detector\"): unknown DLP detector",
        "VALIDATE_TOKEN_NOT_SET",
        "interception.ca.cert_file",
        "VALIDATE_STORE_URL_NOT_SET",
        // A store and policies in the file do not go together either.
        "policies: with a `store`, policies and secrets come from the store",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(out.contains("6 errors"), "{out}");
}

/// Without Envoy's access log, requests Envoy decides on the fast path would go unaudited:
/// `serve` refuses to start rather than serve routes it cannot audit.
#[test]
fn serve_refuses_to_start_when_it_cannot_follow_envoys_access_log() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("access.jsonl");
    let config = dir.path().join("portcullis.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  envoy_access_log: {}\naudit: {{sink: stdout}}\npolicies: []\n",
            missing.display()
        ),
    )
    .unwrap();
    let socket = dir.path().join("grpc.sock");
    let out = crate::common::run_portcullis(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--grpc-listen",
            &format!("unix:{}", socket.display()),
            "--admin-listen",
            &format!("127.0.0.1:{}", crate::common::free_port()),
        ],
        &[],
    );
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("cannot open Envoy's access log")
            && out.stderr.contains(&missing.display().to_string())
            && out.stderr.contains("server.envoy_access_log"),
        "{}",
        out.stderr
    );
}

/// The access log file is read back by Portcullis and sits on disk until it is: no shipped
/// config may write into it what a request Portcullis decided carried after Portcullis
/// changed it (a credential injected into the path, a header), nor any header a workload
/// sends credentials in.
#[test]
fn no_shipped_envoy_config_logs_a_credential_into_the_access_log_file() {
    fn loggers<'a>(value: &'a serde_norway::Value, out: &mut Vec<&'a serde_norway::Value>) {
        match value {
            serde_norway::Value::Mapping(map) => {
                if map.get("name").and_then(|n| n.as_str()) == Some("envoy.access_loggers.file") {
                    out.push(value);
                }
                for v in map.values() {
                    loggers(v, out);
                }
            }
            serde_norway::Value::Sequence(items) => items.iter().for_each(|v| loggers(v, out)),
            _ => {}
        }
    }
    let allowed = [
        "%REQ(X-REQUEST-ID)%",
        "%REQ(:METHOD)%",
        "%REQ(:SCHEME)%",
        "%REQ(:AUTHORITY)%",
        "%REQ(:PATH)%",
    ];
    let mut checked = 0;
    for dir in ["envoy", "helm/portcullis/files/envoy"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let config: serde_norway::Value = serde_norway::from_str(&text).unwrap();
            let mut found = Vec::new();
            loggers(&config, &mut found);
            for logger in found {
                let format = serde_json::to_string(&logger["typed_config"]).unwrap();
                let mut rest = format.as_str();
                while let Some(at) = rest.find("%REQ") {
                    let tail = &rest[at..];
                    let end = tail.find(")%").map_or(tail.len(), |e| e + 2);
                    let operator = &tail[..end];
                    assert!(
                        allowed.contains(&operator),
                        "{}: {operator}",
                        path.display()
                    );
                    rest = &tail[end..];
                }
                if format.contains("%REQ(:PATH)%") {
                    // Only requests without portcullis.request_id: those it never decided.
                    let filter =
                        serde_json::to_value(&logger["filter"]["metadata_filter"]).unwrap();
                    assert_eq!(
                        filter["matcher"]["filter"],
                        "portcullis",
                        "{}",
                        path.display()
                    );
                    assert_eq!(filter["matcher"]["path"][0]["key"], "request_id");
                    assert_eq!(filter["matcher"]["value"]["string_match"]["exact"], "");
                    assert_eq!(filter["match_if_key_not_found"], true);
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "file loggers checked: {checked}");
}
