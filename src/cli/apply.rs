//! `portcullis policy apply -f FILE`: GitOps through a running instance. The file is
//! validated as `portcullis validate` does before anything is sent; then, for policies and
//! secrets alike, new names are created, changed definitions are updated naming the live
//! version, unchanged ones are left alone, and names the file lacks are kept — or deleted
//! with `--prune`.
//!
//! Each definition is its own change, checked by the gateway before it is written. On a
//! refused change the ones before it stay applied and the rest are not sent; applying the
//! file again continues where it stopped.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::client::{AdminClient, ClientError};
use super::definitions::{self, Live};
use super::{Failure, Outcome};
use crate::config::LoadedConfig;
use crate::policy::PolicyConfig;
use crate::snapshot::{Runtime, Snapshot};
use crate::store::{Definition, Kind, diff};
use crate::transforms::secrets::SecretConfig;
use crate::vocab::{FieldError, join_path};

#[derive(Args)]
pub struct ApplyArgs {
    /// A config file, in the format `portcullis validate` reads; its `policies` and
    /// `secrets` are applied.
    #[arg(long, short)]
    file: PathBuf,
    /// Recorded as the reason of every version written (default: the command and file).
    #[arg(long)]
    reason: Option<String>,
    /// Delete stored policies and secrets the file does not have.
    #[arg(long)]
    prune: bool,
    /// Print what would change, and write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// What applying the file does to one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedChange {
    Create,
    /// `changed`: the field paths that differ from the live version.
    Update {
        live: i64,
        changed: Vec<String>,
    },
    Unchanged,
    Delete {
        live: i64,
    },
    /// Stored, not in the file, not pruned.
    Keep,
}

/// One name's step; `index` is its place in the file's list, for the steps that send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub name: String,
    pub index: Option<usize>,
    pub step: PlannedChange,
}

/// The steps that make the store hold `file`'s definitions: the file's in its order,
/// then the stored names it lacks.
pub fn plan<T: Definition>(file: &[T], live: &[Live<T>], prune: bool) -> Vec<Planned> {
    let mut steps = Vec::new();
    for (index, definition) in file.iter().enumerate() {
        let name = definition.name().to_owned();
        let step = match live.iter().find(|l| l.name == name) {
            None => PlannedChange::Create,
            Some(stored) if stored.definition == *definition => PlannedChange::Unchanged,
            Some(stored) => PlannedChange::Update {
                live: stored.version,
                changed: changed_paths(&stored.definition, definition),
            },
        };
        steps.push(Planned {
            name,
            index: Some(index),
            step,
        });
    }
    for stored in live {
        if file.iter().any(|d| d.name() == stored.name) {
            continue;
        }
        steps.push(Planned {
            name: stored.name.clone(),
            index: None,
            step: if prune {
                PlannedChange::Delete {
                    live: stored.version,
                }
            } else {
                PlannedChange::Keep
            },
        });
    }
    steps
}

fn changed_paths<T: Definition>(before: &T, after: &T) -> Vec<String> {
    let value = |d: &T| serde_json::to_value(d).unwrap_or_default();
    diff(&value(before), &value(after))
        .into_iter()
        .map(|entry| entry.path)
        .collect()
}

/// `rules[0].host, priority`, at most four, then how many more.
fn paths_list(paths: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut text = paths
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > SHOWN {
        text.push_str(&format!(" and {} more", paths.len() - SHOWN));
    }
    text
}

/// Counts of what an apply did (or would do), for its summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub deleted: usize,
}

impl Tally {
    /// `FILE: 1 created, 0 updated, 2 unchanged, 0 deleted`.
    pub fn summary(&self, file: &Path, dry_run: bool) -> String {
        let Tally {
            created,
            updated,
            unchanged,
            deleted,
        } = self;
        if dry_run {
            format!(
                "{}: dry run, nothing written: {created} to create, {updated} to update, \
                 {unchanged} unchanged, {deleted} to delete",
                file.display()
            )
        } else {
            format!(
                "{}: {created} created, {updated} updated, {unchanged} unchanged, {deleted} deleted",
                file.display()
            )
        }
    }
}

/// One change's line: `created  policy ci-npm (version 1)`.
pub fn change_line(verb: &str, kind: Kind, name: &str, detail: &str) -> String {
    format!("{verb:<8} {} {name}{detail}", kind.as_str())
}

/// A file's definitions, validated as `portcullis validate` does. An invalid file prints
/// every error (`file:line:col: path (policy "name"): message`) and gives the exit code.
pub fn load_valid(file: &Path) -> Result<LoadedConfig, ExitCode> {
    match Snapshot::load(file, &Runtime::default()) {
        Ok((loaded, _)) => Ok(loaded),
        Err(errors) => {
            println!("{errors}");
            println!(
                "{}: {}; nothing applied",
                file.display(),
                super::render::counted(errors.0.len(), "error")
            );
            Err(ExitCode::FAILURE)
        }
    }
}

pub async fn run(client: &AdminClient, args: ApplyArgs) -> Outcome {
    let loaded = match load_valid(&args.file) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let reason = args
        .reason
        .clone()
        .unwrap_or_else(|| format!("portcullis policy apply -f {}", args.file.display()));
    let (_, live_policies) = definitions::list::<PolicyConfig>(client, None).await?;
    let (_, live_secrets) = definitions::list::<SecretConfig>(client, None).await?;
    let policies = plan(&loaded.config.policies, &live_policies, args.prune);
    let secrets = plan(&loaded.config.secrets, &live_secrets, args.prune);
    let mut tally = Tally::default();
    let mut run = Run {
        client,
        loaded: &loaded,
        reason: &reason,
        dry_run: args.dry_run,
        tally: &mut tally,
    };
    let applied = match run.kind(&loaded.config.policies, &policies).await {
        Ok(()) => run.kind(&loaded.config.secrets, &secrets).await,
        Err(e) => Err(e),
    };
    match applied {
        Ok(()) => {
            println!("{}", tally.summary(&args.file, args.dry_run));
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            println!(
                "{}: stopped at a refused change; applied before it: {} created, {} updated, \
                 {} deleted",
                args.file.display(),
                tally.created,
                tally.updated,
                tally.deleted
            );
            Err(failure)
        }
    }
}

/// One apply in progress.
struct Run<'a> {
    client: &'a AdminClient,
    loaded: &'a LoadedConfig,
    reason: &'a str,
    dry_run: bool,
    tally: &'a mut Tally,
}

impl Run<'_> {
    /// Carries out (or, in a dry run, prints) one kind's steps, stopping at the first
    /// refused one.
    async fn kind<T: Definition>(&mut self, file: &[T], steps: &[Planned]) -> Result<(), Failure> {
        let kind = T::KIND;
        for planned in steps {
            let name = planned.name.as_str();
            let line = match (&planned.step, self.dry_run) {
                (PlannedChange::Unchanged, _) => {
                    self.tally.unchanged += 1;
                    continue;
                }
                (PlannedChange::Keep, _) => change_line(
                    if self.dry_run { "would keep" } else { "kept" },
                    kind,
                    name,
                    " (not in the file; --prune deletes it)",
                ),
                (PlannedChange::Create, true) => {
                    self.tally.created += 1;
                    change_line("would create", kind, name, "")
                }
                (PlannedChange::Update { live, changed }, true) => {
                    self.tally.updated += 1;
                    let detail = format!(" (live version {live}): {}", paths_list(changed));
                    change_line("would update", kind, name, &detail)
                }
                (PlannedChange::Delete { live }, true) => {
                    self.tally.deleted += 1;
                    change_line(
                        "would delete",
                        kind,
                        name,
                        &format!(" (live version {live})"),
                    )
                }
                (step, false) => {
                    let written = self
                        .send(file, planned)
                        .await
                        .map_err(|e| self.refused(kind, planned, e))?;
                    let version = written["version"].as_i64().unwrap_or_default();
                    match step {
                        PlannedChange::Create => {
                            self.tally.created += 1;
                            change_line("created", kind, name, &format!(" (version {version})"))
                        }
                        PlannedChange::Update { changed, .. } => {
                            self.tally.updated += 1;
                            let detail = format!(" (version {version}): {}", paths_list(changed));
                            change_line("updated", kind, name, &detail)
                        }
                        _ => {
                            self.tally.deleted += 1;
                            change_line("deleted", kind, name, "")
                        }
                    }
                }
            };
            println!("{line}");
        }
        Ok(())
    }

    /// Sends one step's change, naming the version it was planned against.
    async fn send<T: Definition>(
        &self,
        file: &[T],
        planned: &Planned,
    ) -> Result<serde_json::Value, ClientError> {
        let kind = T::KIND;
        let definition = planned.index.and_then(|i| file.get(i));
        let collection = ["v1", kind.plural()];
        let one = ["v1", kind.plural(), planned.name.as_str()];
        match (&planned.step, definition) {
            (PlannedChange::Create, Some(definition)) => {
                let body = json!({kind.as_str(): definition, "reason": self.reason});
                self.client.post(&collection, &body).await
            }
            (PlannedChange::Update { live, .. }, Some(definition)) => {
                let body =
                    json!({"version": live, kind.as_str(): definition, "reason": self.reason});
                self.client.put(&one, &body).await
            }
            (PlannedChange::Delete { live }, _) => {
                let live = live.to_string();
                let query = [("version", live.as_str()), ("reason", self.reason)];
                self.client.delete(&one, &query).await
            }
            _ => unreachable!("only create, update and delete steps are sent"),
        }
    }

    /// A refused change. Errors at paths inside the sent definition are also shown at
    /// their place in the file.
    fn refused(&self, kind: Kind, planned: &Planned, error: ClientError) -> Failure {
        if let (ClientError::Api(failure), Some(index)) = (&error, planned.index) {
            let placed = in_file(kind, index, &failure.errors);
            if !placed.is_empty() {
                println!("{}", self.loaded.place(placed));
            }
        }
        Failure(format!(
            "{} {:?} was refused: {error}",
            kind.as_str(),
            planned.name
        ))
    }
}

/// Moves errors from the request body (`policy.rules[0].host`) to the file
/// (`policies[3].rules[0].host`); errors elsewhere are left out.
fn in_file(kind: Kind, index: usize, errors: &[FieldError]) -> Vec<FieldError> {
    let field = kind.as_str();
    errors
        .iter()
        .filter_map(|e| {
            let rest = e.path.strip_prefix(field)?;
            if !(rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')) {
                return None;
            }
            let rest = rest.strip_prefix('.').unwrap_or(rest);
            let path = join_path(&format!("{}[{index}]", kind.plural()), rest);
            Some(FieldError::new(path, e.message.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, priority: i32) -> PolicyConfig {
        serde_json::from_value(
            json!({"name": name, "priority": priority, "action": "allow",
                                      "rules": [{"host": "example.com"}]}),
        )
        .unwrap()
    }

    fn live(definition: PolicyConfig, version: i64) -> Live<PolicyConfig> {
        Live {
            name: definition.name.clone(),
            version,
            updated_at: String::new(),
            definition,
            fires: None,
        }
    }

    #[test]
    fn a_plan_creates_updates_and_leaves_alone_by_name() {
        let file = [policy("new", 10), policy("same", 10), policy("changed", 5)];
        let stored = [
            live(policy("same", 10), 2),
            live(policy("changed", 10), 4),
            live(policy("gone", 10), 7),
        ];
        let steps: Vec<(String, PlannedChange)> = plan(&file, &stored, false)
            .into_iter()
            .map(|p| (p.name, p.step))
            .collect();
        assert_eq!(
            steps,
            [
                ("new".into(), PlannedChange::Create),
                ("same".into(), PlannedChange::Unchanged),
                (
                    "changed".into(),
                    PlannedChange::Update {
                        live: 4,
                        changed: vec!["priority".into()]
                    }
                ),
                ("gone".into(), PlannedChange::Keep),
            ]
        );
        let pruned = plan(&file, &stored, true);
        assert_eq!(pruned[3].step, PlannedChange::Delete { live: 7 });
        assert_eq!(pruned[3].index, None);
    }

    #[test]
    fn errors_in_the_sent_definition_point_into_the_file() {
        let errors = [
            FieldError::new("policy.rules[0].host", "bad host"),
            FieldError::new("policy", "refused"),
            FieldError::new("policyx", "not ours"),
            FieldError::new("version", "not in the file"),
        ];
        let placed = in_file(Kind::Policy, 2, &errors);
        assert_eq!(
            placed,
            [
                FieldError::new("policies[2].rules[0].host", "bad host"),
                FieldError::new("policies[2]", "refused"),
            ]
        );
    }

    #[test]
    fn lines_and_summaries_read_as_the_store_apply_does() {
        assert_eq!(
            change_line("created", Kind::Policy, "ci-npm", " (version 1)"),
            "created  policy ci-npm (version 1)"
        );
        assert_eq!(
            change_line("kept", Kind::Secret, "gh", ""),
            "kept     secret gh"
        );
        let tally = Tally {
            created: 1,
            updated: 2,
            unchanged: 3,
            deleted: 0,
        };
        assert_eq!(
            tally.summary(Path::new("p.yaml"), false),
            "p.yaml: 1 created, 2 updated, 3 unchanged, 0 deleted"
        );
        assert!(
            tally
                .summary(Path::new("p.yaml"), true)
                .contains("nothing written")
        );
        assert_eq!(
            paths_list(&[
                "a".into(),
                "b".into(),
                "c".into(),
                "d".into(),
                "e".into(),
                "f".into()
            ]),
            "a, b, c, d and 2 more"
        );
    }
}
