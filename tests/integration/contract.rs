//! The admin API against its own OpenAPI document: `schemathesis` (PyPI, pinned in
//! `scripts/requirements.txt`) reads `/v1/openapi.json` from a real gateway with an
//! embedded store and an admin token, generates requests from it — valid ones, which must
//! be accepted, and invalid ones, which must be refused — and checks every answer against
//! the statuses and bodies the document declares. `tests/contract/hooks.py` generates
//! values for the grammars the document names by `format` (docs/api.md).
//!
//! The seed is fixed so that a failure reproduces; `PORTCULLIS_CONTRACT_SEED` and
//! `PORTCULLIS_CONTRACT_EXAMPLES` explore further.

use std::process::Command;

use crate::common::{Gateway, repo};
use crate::control::{EDITOR, config, options};

#[test]
fn the_admin_api_answers_as_its_openapi_document_says() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let gw = Gateway::start(&config(&url), options());
    let seed = std::env::var("PORTCULLIS_CONTRACT_SEED").unwrap_or_else(|_| "1".into());
    let examples = std::env::var("PORTCULLIS_CONTRACT_EXAMPLES").unwrap_or_else(|_| "30".into());
    let schema = format!("http://127.0.0.1:{}/v1/openapi.json", gw.admin_port);
    let authorization = format!("Authorization: Bearer {EDITOR}");
    let out = Command::new(repo().join(".venv/bin/schemathesis"))
        .args(["run", &schema, "-H", &authorization, "--seed", &seed])
        .args(["--max-examples", &examples])
        .args(["--phases", "examples,coverage,fuzzing", "--checks", "all"])
        .args(["--no-color", "--suppress-health-check", "all"])
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", repo().join("tests/contract"))
        // Hypothesis keeps its example database in the working directory.
        .current_dir(dir.path())
        .output()
        .expect("schemathesis runs (scripts/bootstrap installs it into .venv)");
    let report = String::from_utf8_lossy(&out.stdout);
    let summary = report
        .lines()
        .rev()
        .find(|l| l.contains(" generated, "))
        .unwrap_or("");
    eprintln!("schemathesis (seed {seed}, {examples} examples per operation): {summary}");
    assert!(
        out.status.success(),
        "the admin API disagrees with its OpenAPI document:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Thousands of requests, many of them malformed: none made the gateway print the token.
    gw.assert_no_leaks(&[EDITOR], &[]);
    assert!(summary.contains("passed"), "{report}");
}
