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
    assert!(!out.contains("\"demo\""), "the token is not echoed");
}

#[test]
fn every_envoy_config_passes_envoy_validate() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("envoy")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
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
