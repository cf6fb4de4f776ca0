//! The command line over the admin API: the real binary driving a real gateway with an
//! embedded store, as an operator would (`PORTCULLIS_SERVER`, `PORTCULLIS_ADMIN_TOKEN`),
//! with requests through the real Envoy showing each change took effect.

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::common::{CliRun, Gateway, Upstream, free_port, run_portcullis, wait_until};
use crate::control::{EDITOR, VIEWER, config, options};

type Run = CliRun;

/// The CLI pointed at one gateway; remembers everything it printed.
struct Operator<'a> {
    gw: &'a Gateway,
    printed: RefCell<String>,
}

impl<'a> Operator<'a> {
    fn new(gw: &'a Gateway) -> Operator<'a> {
        Operator {
            gw,
            printed: RefCell::new(String::new()),
        }
    }

    /// Runs `portcullis ARGS` with the editor token.
    fn run(&self, args: &[&str]) -> Run {
        self.run_as(EDITOR, args)
    }

    fn run_as(&self, token: &str, args: &[&str]) -> Run {
        let server = format!("http://127.0.0.1:{}", self.gw.admin_port);
        self.run_with(
            &[
                ("PORTCULLIS_SERVER", &server),
                ("PORTCULLIS_ADMIN_TOKEN", token),
            ],
            args,
        )
    }

    fn run_with(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let run = run_portcullis(args, env);
        self.printed.borrow_mut().push_str(&run.printed());
        run
    }

    /// Runs and expects exit 0.
    fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, 0, "portcullis {args:?}: {run:?}");
        run
    }

    /// Writes `text` to a file in the gateway's directory.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.gw.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Neither admin token appears in anything the CLI printed, nor in anything the
    /// gateway wrote.
    fn assert_no_token_printed(&self) {
        let printed = self.printed.borrow();
        assert!(printed.len() > 100, "the CLI printed something to check");
        for token in [EDITOR, VIEWER] {
            assert!(!printed.contains(token), "admin token {token:?} printed");
        }
        self.gw.assert_no_leaks(&[EDITOR, VIEWER], &[]);
    }
}

fn sqlite_gateway(extra: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}", dir.join("store.db").display());
    Gateway::start(&format!("{}{extra}", config(&url)), options())
}

fn status_of(gw: &Gateway, upstream: &Upstream, path: &str, args: &[&str]) -> u16 {
    let url = format!("http://127.0.0.1:{}{path}", upstream.port());
    gw.via_proxy(&[args, &[url.as_str()]].concat()).status
}

fn store_revision(gw: &Gateway) -> i64 {
    gw.api("GET", "/v1/status", Some(VIEWER), None).json()["store_revision"]
        .as_i64()
        .unwrap()
}

fn policies_file(repo_paths: &str, with_docs: bool) -> String {
    let docs = if with_docs {
        "  - name: docs\n    action: allow\n    rules: [{host: 127.0.0.1, paths: [\"/docs/*\"]}]\n"
    } else {
        ""
    };
    format!(
        "policies:\n  - name: repos\n    action: allow\n    rules:\n      - host: 127.0.0.1\n        \
         paths: [\"{repo_paths}\"]\n        methods: [GET]\n{docs}secrets:\n  - name: gh\n    \
         rules: [{{host: api.github.com}}]\n    source: {{type: env, var: GH_TOKEN}}\n    \
         inject: {{style: bearer}}\n"
    )
}

#[test]
fn policy_apply_makes_the_store_hold_the_file_and_each_policy_command_takes_effect() {
    let upstream = Upstream::start(None);
    let gw = sqlite_gateway("");
    let op = Operator::new(&gw);
    let status = |path: &str| status_of(&gw, &upstream, path, &[]);
    assert_eq!(status("/repo/a"), 403, "nothing stored: the default denies");

    // First apply: everything is created.
    let file = op.file("policies.yaml", &policies_file("/repo/*", true));
    let file = file.to_str().unwrap();
    let run = op.ok(&["policy", "apply", "-f", file]);
    for line in [
        "created  policy repos (version 1)",
        "created  policy docs (version 1)",
        "created  secret gh (version 1)",
        ": 3 created, 0 updated, 0 unchanged, 0 deleted",
    ] {
        assert!(run.stdout.contains(line), "{line:?} in {run:?}");
    }
    assert_eq!(status("/repo/a"), 200);
    assert_eq!(status("/docs/a"), 200);

    // Again: nothing to do, nothing written.
    let revision = store_revision(&gw);
    let run = op.ok(&["policy", "apply", "-f", file]);
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
    assert!(
        run.stdout
            .contains("0 created, 0 updated, 3 unchanged, 0 deleted")
    );
    assert_eq!(store_revision(&gw), revision);

    // One policy changed: a dry run says so and writes nothing; the apply updates it.
    op.file("policies.yaml", &policies_file("/repo/public/*", true));
    let run = op.ok(&["policy", "apply", "-f", file, "--dry-run"]);
    assert!(
        run.stdout
            .contains("would update policy repos (live version 1): rules[0].paths[0]"),
        "{run:?}"
    );
    assert!(run.stdout.contains("nothing written"), "{run:?}");
    assert_eq!(store_revision(&gw), revision);
    assert_eq!(status("/repo/a"), 200);
    let run = op.ok(&["policy", "apply", "-f", file, "--reason", "narrowed"]);
    assert!(
        run.stdout
            .contains("updated  policy repos (version 2): rules[0].paths[0]"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("0 created, 1 updated, 2 unchanged, 0 deleted")
    );
    assert_eq!(status("/repo/a"), 403);
    assert_eq!(status("/repo/public/x"), 200);

    // A policy the file no longer has is kept, or deleted with --prune.
    op.file("policies.yaml", &policies_file("/repo/public/*", false));
    let run = op.ok(&["policy", "apply", "-f", file]);
    assert!(
        run.stdout
            .contains("kept     policy docs (not in the file; --prune deletes it)"),
        "{run:?}"
    );
    assert_eq!(status("/docs/a"), 200);
    let run = op.ok(&["policy", "apply", "-f", file, "--prune"]);
    assert!(run.stdout.contains("deleted  policy docs"), "{run:?}");
    assert!(
        run.stdout
            .contains("0 created, 0 updated, 2 unchanged, 1 deleted")
    );
    assert_eq!(status("/docs/a"), 403);

    // An invalid file: every error at its line, nothing sent.
    let revision = store_revision(&gw);
    let bad = op.file(
        "bad.yaml",
        "policies:\n  - name: fresh\n    action: allow\n    rules: [{host: ok.example}]\n  \
         - name: broken\n    action: allow\n    rules: [{host: 'https://x.example'}]\n",
    );
    let run = op.run(&["policy", "apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "{}:7:14: policies[1].rules[0].host (policy \"broken\"): host \"https://x.example\" \
             looks like a URL",
            bad.display()
        )),
        "{run:?}"
    );
    assert!(run.stdout.contains("nothing applied"), "{run:?}");
    assert_eq!(store_revision(&gw), revision);

    // list, with fire counts once the store has the audit events.
    let run = op.ok(&["policy", "list"]);
    assert_eq!(
        run.row("NAME"),
        [
            "NAME", "VERSION", "STATUS", "ACTION", "PRIORITY", "MATCH", "TAGS"
        ]
    );
    assert_eq!(
        run.row("repos"),
        ["repos", "2", "active", "allow", "10", "(all)"]
    );
    assert!(
        !run.stdout.contains("fresh"),
        "the invalid file sent nothing"
    );
    let mut fired = None;
    wait_until(Duration::from_secs(5), || {
        let run = op.ok(&["policy", "list", "--window", "1h"]);
        fired = Some(run.row("repos"));
        fired.as_ref().is_some_and(|row| row[6] != "0")
    });
    let fired = fired.unwrap();
    assert_ne!(fired[6], "0", "repos decided requests: {fired:?}");
    assert_eq!(fired[6], fired[7], "all of them allowed: {fired:?}");

    // get: the definition as it is written in a file, which applies back unchanged.
    let run = op.ok(&["policy", "get", "repos"]);
    assert!(
        run.stdout
            .starts_with("# policy \"repos\" version 2, updated "),
        "{run:?}"
    );
    assert!(run.stdout.contains("policies:\n- name: repos\n"), "{run:?}");
    let again = op.file("repos.yaml", &run.stdout);
    let run = op.ok(&["policy", "apply", "-f", again.to_str().unwrap()]);
    assert!(
        run.stdout
            .contains("0 created, 0 updated, 1 unchanged, 0 deleted"),
        "{run:?}"
    );
    let json: Value =
        serde_json::from_str(&op.ok(&["policy", "get", "repos", "--json"]).stdout).unwrap();
    assert_eq!(json["version"], 2);
    assert_eq!(json["policy"]["rules"][0]["paths"][0], "/repo/public/*");

    // disable and enable: each names the live version it read, and takes effect at once.
    let run = op.ok(&["policy", "disable", "repos", "--reason", "incident"]);
    assert_eq!(run.stdout, "disabled policy \"repos\" (version 3)\n");
    assert_eq!(status("/repo/public/x"), 403);
    assert_eq!(op.ok(&["policy", "list"]).row("repos")[2], "disabled");
    op.ok(&["policy", "enable", "repos"]);
    assert_eq!(status("/repo/public/x"), 200);

    // rollback to version 1: /repo/* is allowed again.
    let run = op.ok(&["policy", "rollback", "repos", "1", "--reason", "too narrow"]);
    assert!(run.stdout.contains("(now version 5)"), "{run:?}");
    assert_eq!(status("/repo/a"), 200);

    let run = op.ok(&["policy", "history", "repos"]);
    let operations: Vec<String> = run
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(
        operations,
        ["create", "update", "disable", "enable", "rollback"]
    );
    assert!(
        run.stdout.contains("alice") && run.stdout.contains("incident"),
        "{run:?}"
    );
    let run = op.ok(&["policy", "diff", "repos", "1", "2"]);
    assert_eq!(
        run.stdout,
        "policy \"repos\", version 1 → 2:\n  rules[0].paths[0]: \"/repo/*\" → \"/repo/public/*\"\n"
    );
    let run = op.ok(&["policy", "diff", "repos", "1"]);
    assert!(run.stdout.contains("1 → 5: no differences"), "{run:?}");

    // Secrets: read-only listings of what the file put there.
    assert_eq!(
        op.ok(&["secret", "list"]).row("gh"),
        ["gh", "1", "env", "bearer", "(all)", "api.github.com"]
    );
    let run = op.ok(&["secret", "get", "gh"]);
    assert!(
        run.stdout.contains("secrets:\n- name: gh\n") && run.stdout.contains("var: GH_TOKEN"),
        "{run:?}"
    );
    assert!(
        op.ok(&["secret", "history", "gh"])
            .stdout
            .contains("create")
    );

    // A viewer reads, and is told it cannot change.
    op.file("policies.yaml", &policies_file("/repo/viewer/*", false));
    assert_eq!(op.run_as(VIEWER, &["policy", "list"]).code, 0);
    let run = op.run_as(VIEWER, &["policy", "apply", "-f", file]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("is a viewer") && run.stderr.contains("needs an editor"),
        "{run:?}"
    );
    assert_eq!(op.ok(&["policy", "list"]).row("repos")[1], "5");

    // delete: out of decisions, then not found.
    let run = op.ok(&["policy", "delete", "repos", "--reason", "gone"]);
    assert!(run.stdout.contains("deleted policy \"repos\""), "{run:?}");
    assert_eq!(status("/repo/a"), 403);
    let run = op.run(&["policy", "get", "repos"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("does not exist (404 not_found)"),
        "{run:?}"
    );

    op.assert_no_token_printed();
}

#[test]
fn playground_audit_search_and_enrollment_tokens_from_the_command_line() {
    let upstream = Upstream::start(None);
    // Its pipeline has no `secrets` step, so it refuses secrets: the API's 422.
    let gw = sqlite_gateway(
        "transforms:\n  - allowlist\n  - name: header_allowlist\n    \
         rules: [{host: never.example}]\n    config: {allow: [accept]}\n",
    );
    let op = Operator::new(&gw);
    let port = upstream.port().to_string();
    let file = op.file(
        "acme.yaml",
        "policies:\n  - name: acme-only\n    match_tags: [tenant:acme]\n    action: allow\n    \
         rules: [{host: 127.0.0.1, paths: [\"/acme/*\"]}]\nsecrets:\n  - name: gh\n    \
         rules: [{host: api.github.com}]\n    source: {type: env, var: GH}\n    \
         inject: {style: bearer}\n",
    );
    let run = op.run(&["policy", "apply", "-f", file.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("created  policy acme-only (version 1)"),
        "each definition is its own change: {run:?}"
    );
    assert!(
        run.stderr.contains("secret \"gh\" was refused") && run.stderr.contains("(422 invalid)"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("stopped at a refused change"),
        "{run:?}"
    );

    // The playground: a deny exits 3, an allow 0; the trace names the decider.
    let url = format!("GET http://127.0.0.1:{port}/acme/x");
    let run = op.run(&["playground", "-r", &url]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.contains("decision    DENIED"), "{run:?}");
    assert!(
        run.stdout
            .contains("response    403 policy_denied: no policy allows"),
        "{run:?}"
    );
    let run = op.run(&[
        "playground",
        "-r",
        &url,
        "-t",
        "tenant:acme",
        "-H",
        "X-Trace: 1",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("  → acme-only ") && run.stdout.contains("decision    ALLOWED"),
        "{run:?}"
    );
    assert!(run.stdout.contains("  x-trace: 1\n"), "{run:?}");
    assert!(
        run.stdout
            .contains("  header_allowlist  skip (out of scope)\n"),
        "{run:?}"
    );
    let run = op.run(&["playground", "-r", &url, "-t", "tenant:acme", "--json"]);
    assert_eq!(run.code, 0);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["deciding"]["policy"], "acme-only");
    let run = op.run(&["playground", "-r", "not a request"]);
    assert_eq!(run.code, 1, "{run:?}");

    // A minted token: its value alone on stdout, once; it gives its workload the tags.
    let run = op.ok(&["token", "mint", "acme-ci", "--tag", "tenant:acme"]);
    let value = run.stdout.trim().to_owned();
    assert!(
        value.starts_with("ptk_") && !value.contains('\n'),
        "{run:?}"
    );
    assert!(run.stderr.contains("shown only this once"), "{run:?}");
    let run = op.run(&["playground", "-r", &url, "--token-for-workload", &value]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("identity    token \"acme-ci\""),
        "{run:?}"
    );
    let auth = format!("Proxy-Authorization: Bearer {value}");
    assert_eq!(status_of(&gw, &upstream, "/acme/x", &[]), 403);
    assert_eq!(status_of(&gw, &upstream, "/acme/x", &["-H", &auth]), 200);

    let run = op.ok(&["token", "list"]);
    assert!(run.stdout.contains("acme-ci"), "{run:?}");
    assert!(!run.stdout.contains(&value), "listed without its value");
    let tokens: Value = serde_json::from_str(&op.ok(&["token", "list", "--json"]).stdout).unwrap();
    let id = tokens["tokens"][0]["id"].as_str().unwrap().to_owned();
    let run = op.ok(&["token", "revoke", &id]);
    assert!(run.stdout.contains("revoked token \"acme-ci\""), "{run:?}");
    assert_eq!(status_of(&gw, &upstream, "/acme/x", &["-H", &auth]), 407);

    // Audit search: the denied requests, one line each, naming what decided.
    let mut run = None;
    wait_until(Duration::from_secs(5), || {
        let found = op.ok(&["audit", "search", "--decision", "denied"]);
        let done = found.stdout.lines().count() == 2;
        run = Some(found);
        done
    });
    let run = run.unwrap();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run:?}");
    assert!(lines.iter().all(|l| l.contains("  DENIED ")), "{run:?}");
    assert!(
        lines[0].contains("/acme/x") && lines[0].contains("refused"),
        "newest first: the revoked token: {run:?}"
    );
    let run = op.ok(&[
        "audit",
        "search",
        "--tag",
        "tenant:acme",
        "--json",
        "--all",
        "--limit",
        "1",
    ]);
    let events: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events.len(),
        1,
        "the one allowed request carried the tag: {run:?}"
    );
    assert_eq!(events[0]["identity"]["name"], "acme-ci");
    assert_eq!(events[0]["policy"], "acme-only");

    // Errors say what to do, and never show the token.
    let run = op.run_as("not-a-token", &["token", "list"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("refused the admin token"), "{run:?}");
    // The default server, whatever else runs on this machine: the help says it...
    let help = op.run_with(&[], &["policy", "--help"]);
    assert!(
        help.stdout.contains("[default: http://127.0.0.1:9901]"),
        "the default server: {help:?}"
    );
    // ...and it is where the CLI goes: checked on a listener of the test's own, when the
    // port is free (never against whatever else may answer there).
    match std::net::TcpListener::bind("127.0.0.1:9901") {
        Ok(listener) => {
            let default_server = answer_once_unauthorized(listener);
            let run = op.run_with(&[], &["policy", "list"]);
            let request = default_server.join().unwrap();
            assert!(request.starts_with("GET /v1/policies"), "{request:?}");
            assert_eq!(run.code, 1, "{run:?}");
            assert!(
                run.stderr
                    .contains("the admin API at http://127.0.0.1:9901 needs an admin token"),
                "{run:?}"
            );
        }
        Err(e) => eprintln!(
            "cli_api: 127.0.0.1:9901 is taken here ({e}): the default server is checked by the \
             help only"
        ),
    }
    // A server that does not answer: a port this test just saw closed.
    let closed = free_port();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", closed)).is_err(),
        "nothing listens on {closed}"
    );
    let nowhere = format!("http://127.0.0.1:{closed}");
    let run = op.run_with(
        &[
            ("PORTCULLIS_SERVER", &nowhere),
            ("PORTCULLIS_ADMIN_TOKEN", EDITOR),
        ],
        &["policy", "list"],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with(&format!(
            "portcullis: cannot reach the admin API at {nowhere}: "
        )),
        "{run:?}"
    );
    let run = op.run(&["policy", "--help"]);
    assert!(run.stdout.contains("PORTCULLIS_ADMIN_TOKEN"), "{run:?}");
    op.assert_no_token_printed();
}

/// Accepts one connection on `listener` (for at most 30 s), reads the request's head and
/// answers it as the admin API answers a call without a token (401); returns the head.
fn answer_once_unauthorized(listener: std::net::TcpListener) -> std::thread::JoinHandle<String> {
    use std::io::{Read, Write};
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the CLI never called its default server"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let body = r#"{"error":{"type":"unauthorized","message":"an admin token is required"}}"#;
        write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        String::from_utf8_lossy(&head).into_owned()
    })
}
