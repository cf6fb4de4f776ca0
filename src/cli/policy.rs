//! `portcullis policy …`: the policies of a running instance. Every change reads the live
//! version first and sends it, so a change made meanwhile by someone else is refused
//! (`409 stale_version`) rather than overwritten.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::AdminClient;
use super::definitions::{self, Live};
use super::render::{Table, pretty, tag_list};
use super::{Outcome, apply};
use crate::policy::{PolicyConfig, PolicyStatus};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// The stored policies in decision order: name, version, status, action, priority,
    /// match tags; with --window, how often each decided.
    List {
        /// Add fire counts for this window back from now (`24h`, `15m`).
        #[arg(long)]
        window: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// One policy, as it is written in a config file (YAML), with its version.
    Get {
        name: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the store hold a config file's policies and secrets: create new ones, update
    /// changed ones, leave the rest; --prune deletes what the file does not have.
    Apply(apply::ApplyArgs),
    /// Every version of a policy, oldest first: operation, time, operator, reason.
    History {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// What changed between two versions of a policy (TO: the newest).
    Diff {
        name: String,
        from: i64,
        to: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Make an earlier version's definition live again, as a new version.
    Rollback {
        name: String,
        to_version: i64,
        /// Recorded with the new version.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Stop a policy from deciding; it stays listed, and `enable` brings it back.
    Disable {
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let a disabled policy decide again.
    Enable {
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Which recently audited requests a draft policy would decide differently, before it
    /// is saved: replays them against the live policies with and without the draft.
    Impact {
        /// A config file holding the draft under `policies:`.
        #[arg(long, short)]
        file: std::path::PathBuf,
        /// The draft's name, when the file holds more than one policy.
        #[arg(long)]
        policy: Option<String>,
        /// How far back: a duration (`24h`, the default) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// The most recent requests to replay (default 1000, at most 10000).
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a policy from decisions and the list; its history is kept and its name can
    /// be created again.
    Delete {
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

pub async fn run(client: AdminClient, command: PolicyCommand) -> Outcome {
    match command {
        PolicyCommand::List { window, json } => list(&client, window.as_deref(), json).await,
        PolicyCommand::Get { name, json } => {
            definitions::get::<PolicyConfig>(&client, &name, json).await
        }
        PolicyCommand::Apply(args) => apply::run(&client, args).await,
        PolicyCommand::History { name, json } => {
            definitions::history::<PolicyConfig>(&client, &name, json).await
        }
        PolicyCommand::Diff {
            name,
            from,
            to,
            json,
        } => definitions::diff::<PolicyConfig>(&client, &name, from, to, json).await,
        PolicyCommand::Rollback {
            name,
            to_version,
            reason,
        } => {
            let live = live_version(&client, &name).await?;
            let body = json!({"to_version": to_version, "version": live, "reason": reason});
            let written = client
                .post(&["v1", "policies", &name, "rollback"], &body)
                .await?;
            println!(
                "rolled back policy {name:?} to the definition of version {to_version} (now \
                 version {})",
                written["version"]
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Disable { name, reason } => {
            set_status(&client, &name, "disable", reason).await
        }
        PolicyCommand::Enable { name, reason } => {
            set_status(&client, &name, "enable", reason).await
        }
        PolicyCommand::Impact {
            file,
            policy,
            since,
            limit,
            json,
        } => impact(&client, &file, policy.as_deref(), since, limit, json).await,
        PolicyCommand::Delete { name, reason } => {
            let live = live_version(&client, &name).await?.to_string();
            let mut query = vec![("version", live.as_str())];
            if let Some(reason) = &reason {
                query.push(("reason", reason.as_str()));
            }
            let written = client.delete(&["v1", "policies", &name], &query).await?;
            println!(
                "deleted policy {name:?} (version {}; its history is kept)",
                written["version"]
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The version a change must name: the live one, read just before.
async fn live_version(client: &AdminClient, name: &str) -> Result<i64, super::Failure> {
    let (_, live) = definitions::read::<PolicyConfig>(client, name).await?;
    Ok(live.version)
}

/// `disable` or `enable`, with the live version.
async fn set_status(
    client: &AdminClient,
    name: &str,
    verb: &str,
    reason: Option<String>,
) -> Outcome {
    let live = live_version(client, name).await?;
    let written = client
        .post(
            &["v1", "policies", name, verb],
            &json!({"version": live, "reason": reason}),
        )
        .await?;
    println!("{verb}d policy {name:?} (version {})", written["version"]);
    Ok(ExitCode::SUCCESS)
}

async fn list(client: &AdminClient, window: Option<&str>, json: bool) -> Outcome {
    let (answer, mut policies) = definitions::list::<PolicyConfig>(client, window).await?;
    if json {
        println!("{}", pretty(&answer));
        return Ok(ExitCode::SUCCESS);
    }
    if policies.is_empty() {
        eprintln!("no policies in the store");
        return Ok(ExitCode::SUCCESS);
    }
    // Decision order: the lowest priority number decides first.
    policies
        .sort_by(|a, b| (a.definition.priority, &a.name).cmp(&(b.definition.priority, &b.name)));
    print!("{}", policy_table(&policies, window.is_some()));
    Ok(ExitCode::SUCCESS)
}

fn policy_table(policies: &[Live<PolicyConfig>], with_fires: bool) -> String {
    let mut header = vec![
        "NAME",
        "VERSION",
        "STATUS",
        "ACTION",
        "PRIORITY",
        "MATCH TAGS",
    ];
    if with_fires {
        header.extend(["FIRES", "ALLOWED", "FLAGGED", "DENIED"]);
    }
    let mut table = Table::new(&header);
    for live in policies {
        let p = &live.definition;
        let tags: Vec<&str> = p.match_tags.iter().map(|t| t.as_str()).collect();
        let mut row = vec![
            live.name.clone(),
            live.version.to_string(),
            status(p),
            p.action.as_str().to_owned(),
            p.priority.to_string(),
            tag_list(&tags, "(all)"),
        ];
        if with_fires {
            let fires = live.fires.clone().unwrap_or(Value::Null);
            for key in ["total", "ALLOWED", "FLAGGED", "DENIED"] {
                row.push(fires[key].as_i64().unwrap_or(0).to_string());
            }
        }
        table.row(row);
    }
    table.render()
}

fn status(policy: &PolicyConfig) -> String {
    let status = match policy.status {
        PolicyStatus::Active => "active",
        PolicyStatus::Disabled => "disabled",
        PolicyStatus::Draft => "draft",
    };
    if policy.warn {
        format!("{status} (dry run)")
    } else {
        status.to_owned()
    }
}

/// `policy impact`: the draft from the file, sent to `/v1/impact`; one line per request
/// whose decision or deciding policy would change.
async fn impact(
    client: &AdminClient,
    file: &std::path::Path,
    name: Option<&str>,
    since: Option<String>,
    limit: Option<u32>,
    json: bool,
) -> Outcome {
    let loaded = apply::load_valid(file)
        .map_err(|_| super::Failure(format!("{}: not a valid config file", file.display())))?;
    let policies = &loaded.config.policies;
    let draft = match name {
        Some(name) => policies.iter().find(|p| p.name == name).ok_or_else(|| {
            super::Failure(format!("{}: no policy named {name:?}", file.display()))
        })?,
        None => match policies.as_slice() {
            [only] => only,
            [] => return Err(super::Failure(format!("{}: no policies", file.display()))),
            _ => {
                return Err(super::Failure(format!(
                    "{}: {} policies; name the draft with --policy",
                    file.display(),
                    policies.len()
                )));
            }
        },
    };
    let answer = client
        .post(
            &["v1", "impact"],
            &json!({"policy": draft, "since": since, "limit": limit}),
        )
        .await?;
    if json {
        println!("{}", pretty(&answer));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "policy {:?}: {} of {} replayed requests since {} would be decided differently ({} \
         refused before the policies, not replayed)",
        draft.name,
        answer["changed"],
        answer["replayed"],
        answer["since"].as_str().unwrap_or("?"),
        answer["not_replayed"]
    );
    let shown = |v: &Value| -> String {
        format!(
            "{} ({})",
            v["decision"].as_str().unwrap_or("?"),
            v["policy"].as_str().unwrap_or("default")
        )
    };
    let mut table = Table::new(&["REQUEST", "TIME", "REQUEST LINE", "BEFORE", "AFTER"]);
    for request in answer["requests"].as_array().into_iter().flatten() {
        table.row(vec![
            request["request_id"].as_str().unwrap_or("").to_owned(),
            request["ts"].as_str().unwrap_or("").to_owned(),
            format!(
                "{} {}:{}{}",
                request["method"].as_str().unwrap_or(""),
                request["host"].as_str().unwrap_or(""),
                request["port"],
                request["path"].as_str().unwrap_or("")
            ),
            shown(&request["before"]),
            shown(&request["after"]),
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(policy: Value, version: i64, fires: Option<Value>) -> Live<PolicyConfig> {
        Live {
            name: policy["name"].as_str().unwrap().to_owned(),
            version,
            updated_at: String::new(),
            definition: serde_json::from_value(policy).unwrap(),
            fires,
        }
    }

    #[test]
    fn the_list_shows_status_tags_and_fire_counts() {
        let policies = [
            live(
                json!({"name": "repos", "action": "allow", "match_tags": ["env:ci", "team:a"],
                       "rules": [{"host": "x"}]}),
                3,
                Some(json!({"total": 7, "ALLOWED": 6, "FLAGGED": 0, "DENIED": 1})),
            ),
            live(
                json!({"name": "no-uploads", "priority": 1, "status": "disabled",
                       "action": "deny", "warn": true, "rules": [{"host": "x"}]}),
                1,
                None,
            ),
        ];
        assert_eq!(
            policy_table(&policies, true),
            "\
NAME        VERSION  STATUS              ACTION  PRIORITY  MATCH TAGS     FIRES  ALLOWED  FLAGGED  DENIED
repos       3        active              allow   10        env:ci,team:a  7      6        0        1
no-uploads  1        disabled (dry run)  deny    1         (all)          0      0        0        0
"
        );
        assert!(!policy_table(&policies, false).contains("FIRES"));
    }
}
