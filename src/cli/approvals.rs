//! `portcullis approvals …`: the requests waiting for a person, and the decisions. An
//! approval writes a grant (a policy) that lets the request's retry pass until it expires.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use super::Outcome;
use super::client::AdminClient;
use super::render::{Table, pretty};

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// Approvals, newest first (default: the pending ones).
    List {
        /// pending, lapsed, approved, expired, denied, revoked, or all.
        #[arg(long, default_value = "pending")]
        status: String,
        #[arg(long)]
        json: bool,
    },
    /// One approval: what was asked, by whom, and what became of it.
    Show { id: String },
    /// Approve: a grant for exactly that request lets its retry pass until it expires.
    Approve {
        id: String,
        /// How long the grant lasts (`15m`, `2h`); default `approvals.grant_for`.
        #[arg(long = "for")]
        lasts: Option<String>,
        /// Why; kept with the decision and the grant's version.
        #[arg(long)]
        note: Option<String>,
    },
    /// Deny: the request stays refused; asking again queues a new approval.
    Deny {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// End a grant before it expires.
    Revoke {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
}

pub async fn run(client: AdminClient, command: ApprovalsCommand) -> Outcome {
    match command {
        ApprovalsCommand::List { status, json } => {
            let query: Vec<(&str, &str)> = match status.as_str() {
                "all" => Vec::new(),
                _ => vec![("status", status.as_str())],
            };
            let answer = client.get(&["v1", "approvals"], &query).await?;
            if json {
                println!("{}", pretty(&answer));
                return Ok(ExitCode::SUCCESS);
            }
            let approvals = answer["approvals"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if approvals.is_empty() {
                eprintln!("no {status} approvals");
            } else {
                print!("{}", table(approvals));
            }
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Show { id } => {
            let answer = client.get(&["v1", "approvals", &id], &[]).await?;
            println!("{}", pretty(&answer));
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Approve { id, lasts, note } => {
            let mut body = json!({});
            if let Some(lasts) = lasts {
                body["for"] = json!(lasts);
            }
            if let Some(note) = note {
                body["note"] = json!(note);
            }
            let answer = client
                .post(&["v1", "approvals", &id, "approve"], &body)
                .await?;
            let approval = &answer["approval"];
            println!(
                "approved {id}: grant {} allows {} until {}",
                text(&approval["grant"]),
                asked(approval),
                text(&approval["grant_expires_at"])
            );
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Deny { id, note } => {
            let body = note.map_or_else(|| json!({}), |note| json!({ "note": note }));
            let answer = client
                .post(&["v1", "approvals", &id, "deny"], &body)
                .await?;
            println!("denied {id}: {} stays refused", asked(&answer["approval"]));
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Revoke { id, note } => {
            let body = note.map_or_else(|| json!({}), |note| json!({ "note": note }));
            let answer = client
                .post(&["v1", "approvals", &id, "revoke"], &body)
                .await?;
            println!(
                "revoked the grant of {id}: {} is refused again",
                asked(&answer["approval"])
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

/// `alice: POST api.example.com/v1/x` or `alice: tool send_email at mcp.example.com/mcp`.
fn asked(approval: &Value) -> String {
    let request = &approval["request"];
    let who = approval["identity"].as_str().unwrap_or("(unnamed)");
    match request["tool"].as_str() {
        Some(tool) => format!(
            "{who}: tool {tool} at {}{}",
            text(&request["host"]),
            text(&request["path"])
        ),
        None => format!(
            "{who}: {} {}{}",
            text(&request["method"]),
            text(&request["host"]),
            text(&request["path"])
        ),
    }
}

fn table(approvals: &[Value]) -> String {
    let mut table = Table::new(&[
        "ID",
        "STATUS",
        "REQUESTED",
        "POLICY",
        "REQUEST",
        "ASKED",
        "GRANT UNTIL",
    ]);
    for approval in approvals {
        table.row(vec![
            text(&approval["id"]).to_owned(),
            text(&approval["status"]).to_owned(),
            text(&approval["requested_at"]).to_owned(),
            text(&approval["policy"]).to_owned(),
            asked(approval),
            approval["asked"].as_i64().unwrap_or(0).to_string(),
            text(&approval["grant_expires_at"]).to_owned(),
        ]);
    }
    table.render()
}
