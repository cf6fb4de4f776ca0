//! `portcullis secret …`: the secrets a running instance injects — names, scopes and
//! source references, never values (those are read on each gateway host). Secrets are
//! changed with `policy apply -f` and the file's `secrets:`.

use std::process::ExitCode;

use clap::Subcommand;

use super::Outcome;
use super::client::AdminClient;
use super::definitions::{self, Live};
use super::render::{Table, pretty, tag_list};
use crate::transforms::secrets::SecretConfig;

#[derive(Subcommand)]
pub enum SecretCommand {
    /// The stored secrets: name, version, source type, injection style, match tags.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One secret, as it is written in a config file (YAML), with its version.
    Get {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Every version of a secret, oldest first.
    History {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(client: AdminClient, command: SecretCommand) -> Outcome {
    match command {
        SecretCommand::List { json } => {
            let (answer, secrets) = definitions::list::<SecretConfig>(&client, None).await?;
            if json {
                println!("{}", pretty(&answer));
            } else if secrets.is_empty() {
                eprintln!("no secrets in the store");
            } else {
                print!("{}", secret_table(&secrets));
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::Get { name, json } => {
            definitions::get::<SecretConfig>(&client, &name, json).await
        }
        SecretCommand::History { name, json } => {
            definitions::history::<SecretConfig>(&client, &name, json).await
        }
    }
}

fn secret_table(secrets: &[Live<SecretConfig>]) -> String {
    let mut table = Table::new(&["NAME", "VERSION", "SOURCE", "INJECT", "MATCH TAGS", "HOSTS"]);
    for live in secrets {
        // The tagged enums' tags, read from their serialized form: `type` and `style`.
        let value = serde_json::to_value(&live.definition).unwrap_or_default();
        let tag = |section: &str, key: &str| value[section][key].as_str().unwrap_or("?").to_owned();
        let tags: Vec<&str> = live
            .definition
            .match_tags
            .iter()
            .map(|t| t.as_str())
            .collect();
        let mut hosts: Vec<&str> = live
            .definition
            .rules
            .iter()
            .map(|r| r.host.as_str())
            .collect();
        hosts.dedup();
        table.row(vec![
            live.name.clone(),
            live.version.to_string(),
            tag("source", "type"),
            tag("inject", "style"),
            tag_list(&tags, "(all)"),
            hosts.join(","),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_names_source_type_and_injection_style_never_a_value() {
        let definition: SecretConfig = serde_json::from_value(serde_json::json!({
            "name": "gh", "match_tags": ["env:ci"],
            "rules": [{"host": "api.github.com"}, {"host": "uploads.github.com"}],
            "source": {"type": "env", "var": "GITHUB_TOKEN"}, "inject": {"style": "bearer"}
        }))
        .unwrap();
        let live = Live {
            name: "gh".into(),
            version: 2,
            updated_at: String::new(),
            definition,
            fires: None,
        };
        assert_eq!(
            secret_table(&[live]),
            "NAME  VERSION  SOURCE  INJECT  MATCH TAGS  HOSTS\n\
             gh    2        env     bearer  env:ci      api.github.com,uploads.github.com\n"
        );
    }
}
