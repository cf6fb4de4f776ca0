//! `portcullis playground`: asks a running instance what it would do with a request
//! (`POST /v1/playground`, its live policies, its own code path, nothing sent) and prints
//! the trace `portcullis check` prints for a config file.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::client::AdminClient;
use super::render::pretty;
use super::{Failure, Outcome, args};
use crate::check::{CheckRequest, Report, build_request, render_text};

#[derive(Args)]
pub struct PlaygroundArgs {
    /// "METHOD URL", e.g. "POST https://api.openai.com/v1/chat/completions", or
    /// "CONNECT host:443".
    #[arg(long, short)]
    request: String,
    /// A request header "name: value" (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// The request body, as text.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Read the request body (text) from this file.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// A tag the workload carries, as if its listener sent it (repeatable).
    #[arg(long = "tag", short = 't')]
    tags: Vec<String>,
    /// The proxy (enrollment) token the workload presents, as Proxy-Authorization:
    /// Bearer. Not the admin token (`--token`).
    #[arg(
        long,
        visible_alias = "token-for-workload",
        value_name = "WORKLOAD_TOKEN"
    )]
    proxy_token: Option<String>,
    /// The workload's source address (for source_cidr identities).
    #[arg(long)]
    source: Option<IpAddr>,
    /// The mTLS peer's URI SAN (for uri_san identities).
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Decide a CONNECT as an intercepting listener does.
    #[arg(long)]
    intercepted: bool,
    /// Print the API's JSON (the audit record, matching policies, upstream view).
    #[arg(long)]
    json: bool,
}

pub async fn run(client: AdminClient, args: PlaygroundArgs) -> Outcome {
    let headers = args::headers(&args.headers)?;
    let tags = args::tags(&args.tags)?;
    let bytes = args::body(args.body.as_deref(), args.body_file.as_deref()).map_err(Failure)?;
    let body = match bytes.is_empty() {
        true => None,
        false => Some(String::from_utf8(bytes).map_err(|_| {
            Failure("--body-file: the playground takes a text (UTF-8) body".to_owned())
        })?),
    };
    let check = CheckRequest {
        request_line: args.request.clone(),
        headers,
        extra_tags: tags,
        source: args.source,
        spiffe_id: args.spiffe_id.clone(),
        token: args.proxy_token.clone(),
        intercepted: args.intercepted,
        body: Vec::new(),
    };
    // Built here too: a malformed request line is refused before anything is sent, and
    // the trace shows the headers that pass unchanged from it.
    let request = build_request(&check).map_err(|e| Failure(format!("--request: {e}")))?;
    let (method, url) = check
        .request_line
        .trim()
        .split_once(char::is_whitespace)
        .expect("build_request checked \"METHOD URL\"");
    let header_map: BTreeMap<&str, &str> = check
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let tag_names: Vec<&str> = check.extra_tags.iter().map(|t| t.as_str()).collect();
    let answer = client
        .post(
            &["v1", "playground"],
            &json!({
                "method": method,
                "url": url.trim(),
                "headers": header_map,
                "body": body,
                "tags": tag_names,
                "token": check.token,
                "source": check.source,
                "spiffe_id": check.spiffe_id,
                "intercepted": check.intercepted,
            }),
        )
        .await?;
    let report: Report = serde_json::from_value(answer.clone()).map_err(|e| {
        Failure(format!(
            "the playground's answer does not read as a decision report ({e})"
        ))
    })?;
    if args.json {
        println!("{}", pretty(&answer));
    } else {
        print!("{}", render_text(&request, &report));
    }
    Ok(exit_for(&report.decision))
}

/// As `check`: 0 allowed or flagged, 3 denied.
fn exit_for(decision: &str) -> ExitCode {
    if decision.eq_ignore_ascii_case("DENIED") {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}
