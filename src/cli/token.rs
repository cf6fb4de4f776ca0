//! `portcullis token …`: enrollment tokens. A minted token's value is printed once, on
//! stdout alone, so it can be captured (`TOKEN=$(portcullis token mint …)`); the store
//! keeps only its hash.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::AdminClient;
use super::render::{Table, pretty, tag_list};
use super::{Outcome, args};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Mint a token carrying tags; prints its value, which is shown only this once.
    Mint {
        /// Names the workload in audit records; unique among unrevoked tokens.
        name: String,
        /// A tag the token gives its workload (repeatable).
        #[arg(long = "tag", short = 't')]
        tags: Vec<String>,
    },
    /// Every token, revoked ones included, never their values.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: from now on it is refused (407) on every instance.
    Revoke { id: String },
}

pub async fn run(client: AdminClient, command: TokenCommand) -> Outcome {
    match command {
        TokenCommand::Mint { name, tags } => {
            let tags = args::tags(&tags)?;
            let tags: Vec<&str> = tags.iter().map(|t| t.as_str()).collect();
            let minted = client
                .post(&["v1", "tokens"], &json!({"name": name, "tags": tags}))
                .await?;
            let token = &minted["token"];
            eprintln!(
                "minted token {:?} (id {}, tags {}). Its value is shown only this once: \
                 store it now; the gateway keeps only its hash.",
                name,
                token["id"].as_str().unwrap_or("?"),
                tag_list(&tags, "none"),
            );
            println!("{}", minted["value"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { json } => {
            let answer = client.get(&["v1", "tokens"], &[]).await?;
            if json {
                println!("{}", pretty(&answer));
            } else {
                let tokens = answer["tokens"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if tokens.is_empty() {
                    eprintln!("no enrollment tokens");
                } else {
                    print!("{}", token_table(tokens));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id } => {
            let revoked = client.delete(&["v1", "tokens", &id], &[]).await?;
            println!(
                "revoked token {} (id {id}): workloads presenting it are refused (407)",
                revoked["token"]["name"]
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn token_table(tokens: &[Value]) -> String {
    let mut table = Table::new(&["ID", "NAME", "TAGS", "CREATED", "BY", "REVOKED"]);
    for token in tokens {
        let text = |key: &str| token[key].as_str().unwrap_or_default().to_owned();
        let tags: Vec<&str> = token["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let revoked = match (token["revoked_at"].as_str(), token["revoked_by"].as_str()) {
            (Some(at), Some(by)) => format!("{at} by {by}"),
            (Some(at), None) => at.to_owned(),
            _ => "-".to_owned(),
        };
        table.row(vec![
            text("id"),
            text("name"),
            tag_list(&tags, "-"),
            text("created_at"),
            text("created_by"),
            revoked,
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_shows_who_revoked_a_token() {
        let tokens = [
            json!({"id": "t1", "name": "acme-ci", "tags": ["tenant:acme"],
                   "created_at": "2026-12-01T10:00:00Z", "created_by": "alice"}),
            json!({"id": "t2", "name": "old", "tags": [], "created_at": "2026-11-01T10:00:00Z",
                   "created_by": "alice", "revoked_at": "2026-12-02T10:00:00Z",
                   "revoked_by": "bob"}),
        ];
        assert_eq!(
            token_table(&tokens),
            "\
ID  NAME     TAGS         CREATED               BY     REVOKED
t1  acme-ci  tenant:acme  2026-12-01T10:00:00Z  alice  -
t2  old      -            2026-11-01T10:00:00Z  alice  2026-12-02T10:00:00Z by bob
"
        );
    }
}
