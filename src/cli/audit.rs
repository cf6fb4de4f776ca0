//! `portcullis audit search`: the audit events every instance wrote to the store, newest
//! first, one line each.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::Outcome;
use super::client::AdminClient;
use super::render::tag_list;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Events, newest first: time, decision, policy@version, request, identity, tags.
    Search(SearchArgs),
}

#[derive(Args)]
pub struct SearchArgs {
    /// Only events whose workload carried this tag (repeatable: all of them).
    #[arg(long = "tag", short = 't')]
    tags: Vec<String>,
    #[arg(long, value_parser = ["allowed", "flagged", "denied"], ignore_case = true)]
    decision: Option<String>,
    /// Only events this policy decided.
    #[arg(long)]
    policy: Option<String>,
    /// Only requests from the identity of this name.
    #[arg(long)]
    identity: Option<String>,
    /// Only requests to this host (exact, or `*.example.com`).
    #[arg(long)]
    host: Option<String>,
    /// From this long ago (`1h`) or this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Up to this long ago or this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// At most this many events, 1 to 1000 (with --all: per page). Default 50.
    #[arg(long)]
    limit: Option<u32>,
    /// Every matching event, page after page.
    #[arg(long)]
    all: bool,
    /// One JSON audit record per line.
    #[arg(long)]
    json: bool,
}

pub async fn run(client: AdminClient, command: AuditCommand) -> Outcome {
    let AuditCommand::Search(args) = command;
    let mut query: Vec<(&str, String)> = Vec::new();
    if !args.tags.is_empty() {
        query.push(("tag", args.tags.join(",")));
    }
    for (key, value) in [
        ("decision", &args.decision),
        ("policy", &args.policy),
        ("identity", &args.identity),
        ("host", &args.host),
        ("since", &args.since),
        ("until", &args.until),
    ] {
        if let Some(value) = value {
            query.push((key, value.clone()));
        }
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    } else if args.all {
        query.push(("limit", "1000".to_owned()));
    }
    let mut cursor: Option<String> = None;
    loop {
        let mut page_query: Vec<(&str, &str)> =
            query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Some(cursor) = &cursor {
            page_query.push(("cursor", cursor.as_str()));
        }
        let page = client.get(&["v1", "audit"], &page_query).await?;
        for event in page["events"].as_array().into_iter().flatten() {
            if args.json {
                println!("{event}");
            } else {
                println!("{}", event_line(event));
            }
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        match &cursor {
            Some(_) if args.all => {}
            Some(_) => {
                eprintln!("more events match: --all lists them, or narrow with --since");
                break;
            }
            None => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ts  DENIED   no-admin@1  GET 127.0.0.1/docs/admin  token:acme-ci  env:ci,tenant:acme`.
fn event_line(event: &Value) -> String {
    let text = |key: &str| event[key].as_str().unwrap_or_default();
    let policy = match (event["policy"].as_str(), event["policy_version"].as_i64()) {
        (Some(policy), Some(version)) => format!("{policy}@{version}"),
        (Some(policy), None) => policy.to_owned(),
        (None, _) => "-".to_owned(),
    };
    let request = if text("method") == "CONNECT" {
        format!("CONNECT {}:{}", text("host"), event["port"])
    } else {
        format!("{} {}{}", text("method"), text("host"), text("path"))
    };
    let identity = &event["identity"];
    let identity = match (identity["kind"].as_str(), identity["name"].as_str()) {
        (Some(kind), Some(name)) => format!("{kind}:{name}"),
        (Some(kind), None) => kind.to_owned(),
        (None, _) => "-".to_owned(),
    };
    let tags: Vec<&str> = event["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    format!(
        "{}  {:<7}  {policy}  {request}  {identity}  {}",
        text("ts"),
        text("decision"),
        tag_list(&tags, "-")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_is_one_line_with_its_deciding_version() {
        let event = json!({"ts": "2026-12-01T10:00:00.000001Z", "decision": "DENIED",
            "policy": "no-admin", "policy_version": 1, "method": "GET", "host": "127.0.0.1",
            "port": 80, "path": "/docs/admin", "identity": {"kind": "token", "name": "acme-ci"},
            "tags": ["env:ci", "tenant:acme"]});
        assert_eq!(
            event_line(&event),
            "2026-12-01T10:00:00.000001Z  DENIED   no-admin@1  GET 127.0.0.1/docs/admin  \
             token:acme-ci  env:ci,tenant:acme"
        );
        let tunnel = json!({"ts": "t", "decision": "ALLOWED", "method": "CONNECT",
            "host": "api.github.com", "port": 443, "path": "",
            "identity": {"kind": "gateway"}, "tags": []});
        assert_eq!(
            event_line(&tunnel),
            "t  ALLOWED  -  CONNECT api.github.com:443  gateway  -"
        );
    }
}
