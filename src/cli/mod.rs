//! The `portcullis` command line. Commands that work on this machine — `serve`,
//! `validate`, `check`, `ca init`, `migrate`, `apply --store` — live in [`local`]; the
//! ones that drive a running instance through its admin API (docs/api.md) — `policy`,
//! `secret`, `playground`, `audit`, `token`, `approvals` — each have a file, over one
//! [`client`].
//!
//! Exit status: 0 success, 1 any error (an invalid file, an unreachable API, a refused
//! call), 3 a request `check` or `playground` decided to deny.

pub mod apply;
pub mod approvals;
mod args;
pub mod audit;
pub mod client;
mod definitions;
pub mod local;
pub mod playground;
pub mod policy;
mod render;
pub mod secret;
pub mod token;

use std::future::Future;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

use client::{AdminClient, ClientError, DEFAULT_SERVER};

/// Portcullis: the egress policy gateway behind Envoy.
#[derive(Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ext_proc server and the admin server.
    Serve(local::ServeArgs),
    /// Check a config file; print every error and exit 1 if there is one.
    Validate { file: std::path::PathBuf },
    /// The CA behind intercepted HTTPS.
    #[command(subcommand)]
    Ca(local::CaCommand),
    /// Decide one request offline and print the decision trace.
    /// Exit status: 0 allowed or flagged, 3 denied, 1 invalid config or request.
    Check(local::CheckArgs),
    /// Create or upgrade a store's schema (sqlite://PATH or postgres://…).
    Migrate {
        #[arg(long, env = "PORTCULLIS_STORE")]
        store: String,
    },
    /// Write a config file's policies and secrets straight into a store, each change as
    /// a new version (GitOps). Unchanged ones are left alone; ones missing from the file
    /// stay unless --prune. Through a running instance: `policy apply -f`.
    Apply(local::StoreApplyArgs),
    /// Policies on a running instance: list, read, apply a file, history, diff, rollback,
    /// disable, enable, delete.
    Policy {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Secrets on a running instance (metadata and source references, never values):
    /// list, read, history. Change them with `policy apply -f` and the file's `secrets:`.
    Secret {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: secret::SecretCommand,
    },
    /// Decide one request on a running instance's live policies, without sending it, and
    /// print the decision trace. Exit status: 0 allowed or flagged, 3 denied, 1 error.
    Playground {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        args: playground::PlaygroundArgs,
    },
    /// Search the audit events every instance wrote to the store.
    Audit {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Requests waiting for a person (`action: approve`): list, approve (a time-boxed
    /// grant), deny, revoke.
    Approvals {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: approvals::ApprovalsCommand,
    },
    /// Enrollment tokens: a workload presents one as its proxy credential and carries its
    /// tags.
    Token {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: token::TokenCommand,
    },
}

/// Where the admin API is and the token to call it with.
#[derive(Args)]
pub struct ApiArgs {
    /// The admin API of a running instance (its `server.admin_listen`).
    #[arg(long, env = "PORTCULLIS_SERVER", default_value = DEFAULT_SERVER, global = true)]
    server: String,
    /// An admin token (the gateway's `admin.tokens`). Prefer the environment variable:
    /// a command-line argument is visible to other users of the machine.
    #[arg(long, env = "PORTCULLIS_ADMIN_TOKEN", hide_env_values = true, global = true,
          value_parser = secret_arg)]
    token: Option<SecretString>,
}

fn secret_arg(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

impl ApiArgs {
    fn client(&self) -> Result<AdminClient, ClientError> {
        AdminClient::new(&self.server, self.token.as_ref())
    }
}

/// Why a command failed, in words for the user; printed as `portcullis: …`, exit 1.
#[derive(Debug)]
pub struct Failure(pub String);

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure(error.to_string())
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure(message)
    }
}

/// What a command ends with.
pub type Outcome = Result<ExitCode, Failure>;

/// Runs the command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => local::serve(args),
        Command::Validate { file } => local::validate(&file),
        Command::Ca(command) => local::ca(command),
        Command::Check(args) => local::check(args),
        Command::Migrate { store } => local::migrate(&store),
        Command::Apply(args) => local::apply_to_store(args),
        Command::Policy { api, command } => on_api(&api, |c| policy::run(c, command)),
        Command::Secret { api, command } => on_api(&api, |c| secret::run(c, command)),
        Command::Playground { api, args } => on_api(&api, |c| playground::run(c, args)),
        Command::Audit { api, command } => on_api(&api, |c| audit::run(c, command)),
        Command::Token { api, command } => on_api(&api, |c| token::run(c, command)),
        Command::Approvals { api, command } => on_api(&api, |c| approvals::run(c, command)),
    }
}

/// Runs one admin API command on a small runtime.
fn on_api<F, Fut>(api: &ApiArgs, command: F) -> ExitCode
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let client = match api.client() {
        Ok(client) => client,
        Err(e) => return fail(&Failure::from(e)),
    };
    block_on(command(client))
}

/// Runs async work on a current-thread runtime; a failure prints and exits 1.
fn block_on(work: impl Future<Output = Outcome>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&Failure(format!("cannot start the runtime: {e}"))),
    };
    match runtime.block_on(work) {
        Ok(code) => code,
        Err(failure) => fail(&failure),
    }
}

fn fail(failure: &Failure) -> ExitCode {
    eprintln!("portcullis: {}", failure.0);
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn api_flags_go_before_or_after_the_subcommand() {
        for args in [
            &["portcullis", "policy", "--server", "http://gw:9901", "list"][..],
            &["portcullis", "policy", "list", "--server", "http://gw:9901"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let Command::Policy { api, .. } = cli.command else {
                panic!("parsed as policy");
            };
            assert_eq!(api.server, "http://gw:9901");
        }
    }
}
