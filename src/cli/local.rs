//! The commands that work on this machine, without a running instance's admin API:
//! `serve`, `validate`, `check`, `ca init`, `migrate`, and `apply --store` (straight into a
//! store's database).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::apply::{Tally, change_line, load_valid};
use super::render::counted;
use super::{Failure, args, block_on};
use crate::app::{self, ServeError, ServeOptions};
use crate::check::{self, CheckRequest};
use crate::policy::Decision;
use crate::snapshot::{Runtime, Snapshot};
use crate::store::apply::Applied;
use crate::store::{Change, Kind, Store};

#[derive(Args)]
pub struct ServeArgs {
    /// The config file (watched: valid changes go live without a restart).
    #[arg(long, short, env = "PORTCULLIS_CONFIG")]
    config: PathBuf,
    /// Where Envoy's ext_proc and SDS streams connect: unix:/PATH (owner-only socket) or
    /// HOST:PORT with server.grpc_tls (overrides server.grpc_listen).
    #[arg(long, env = "PORTCULLIS_GRPC_LISTEN")]
    grpc_listen: Option<crate::config::channel::GrpcListen>,
    /// Listen address for /healthz, /readyz, /metrics and the admin API (overrides
    /// server.admin_listen).
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Read policies, secrets and tokens from this store (sqlite://PATH or
    /// postgres://…), overriding `store.url`.
    #[arg(long, env = "PORTCULLIS_STORE")]
    store: Option<String>,
    /// Intercept HTTPS with the CA in DIR (DIR/ca.crt, DIR/ca.key, as `ca init` writes
    /// them), overriding `interception.ca` and turning interception on.
    #[arg(long, value_name = "DIR", env = "PORTCULLIS_INTERCEPTION_CA")]
    interception_ca: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create a CA (ECDSA P-256): writes DIR/ca.crt and DIR/ca.key (mode 0600).
    Init {
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The CA's common name, shown to users who inspect a certificate.
        #[arg(long, default_value = "Portcullis interception CA")]
        common_name: String,
        /// How long the CA is valid, e.g. 365d.
        #[arg(long, default_value = "3650d")]
        valid_for: humantime::Duration,
        /// Replace an existing CA in DIR.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
pub struct CheckArgs {
    #[arg(long, short)]
    config: PathBuf,
    /// "METHOD URL", e.g. "GET https://api.github.com/repos/x", or "CONNECT host:443".
    #[arg(long, short)]
    request: String,
    /// A request header "name: value" (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// A tag the workload carries, as if its listener sent it (repeatable).
    #[arg(long = "tag", short = 't')]
    tags: Vec<String>,
    /// The workload's source address (for source_cidr identities).
    #[arg(long)]
    source: Option<IpAddr>,
    /// The mTLS peer's URI SAN (for uri_san identities).
    #[arg(long)]
    spiffe_id: Option<String>,
    /// A proxy token, sent as Proxy-Authorization: Bearer.
    #[arg(long)]
    token: Option<String>,
    /// Decide a CONNECT as the intercepting listener (envoy/https-intercept.yaml) does.
    #[arg(long)]
    intercepted: bool,
    /// The request body, as text (like curl --data-binary).
    #[arg(long, short = 'd', value_name = "TEXT", conflicts_with = "body_file")]
    body: Option<String>,
    /// The request body, read from a file as bytes; `-` reads standard input.
    #[arg(long, value_name = "PATH")]
    body_file: Option<PathBuf>,
    /// Print JSON (the audit record, matching policies, upstream view).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct StoreApplyArgs {
    /// The config file whose `policies` and `secrets` are applied.
    #[arg(long, short)]
    file: PathBuf,
    #[arg(long, env = "PORTCULLIS_STORE")]
    store: String,
    /// Recorded as the operator of every version written.
    #[arg(long, default_value = "apply")]
    operator: String,
    /// Recorded as the reason of every version written.
    #[arg(long, default_value = "portcullis apply")]
    reason: String,
    /// Delete stored policies and secrets the file does not have.
    #[arg(long)]
    prune: bool,
}

pub fn serve(args: ServeArgs) -> ExitCode {
    crate::live::no_transparent_huge_pages();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = ServeOptions {
        config: args.config,
        grpc_listen: args.grpc_listen,
        admin_listen: args.admin_listen,
        store: args.store,
        interception_ca: args.interception_ca,
    };
    match runtime.block_on(app::serve(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::InvalidConfig(errors)) => {
            eprintln!("{errors}");
            eprintln!(
                "portcullis: invalid config ({}); not starting",
                counted(errors.0.len(), "error")
            );
            ExitCode::FAILURE
        }
        Err(ServeError::Other(e)) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn validate(file: &Path) -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    // Every stage runs on what the file holds, so one run reports every error: what does
    // not parse, what does not compile, the CA files, the store's URL.
    let partial = match crate::config::load_file_partial(file) {
        Ok(partial) => partial,
        Err(errors) => {
            println!("{errors}");
            println!("{}: {}", file.display(), counted(errors.0.len(), "error"));
            return ExitCode::FAILURE;
        }
    };
    let config = &partial.loaded.config;
    let mut errors = partial.errors.clone();
    // What a broken section (dlp, server…) leaves out would make compile errors elsewhere
    // that are only its echo: compile only when list entries alone failed.
    let snapshot = if partial.section_failed {
        None
    } else {
        match Snapshot::compile(config, &partial.loaded.version, &env, &Runtime::default()) {
            Ok(snapshot) => Some(snapshot),
            Err(compile_errors) => {
                errors.extend(compile_errors.into_iter().map(|e| partial.in_file(e)));
                None
            }
        }
    };
    // The CA files are part of a valid config: check they load and belong together.
    if let Some(Err(error)) = config.interception.as_ref().map(|i| i.load()) {
        errors.push(error);
    }
    // As `serve` would: a store's URL must be found, and its policies are not here.
    if let Err(store_errors) = config.store_url(&env) {
        errors.extend(store_errors);
    }
    errors.dedup();
    let snapshot = match snapshot {
        Some(snapshot) if errors.is_empty() => snapshot,
        _ => {
            let errors = partial.loaded.place_in_order(errors);
            println!("{errors}");
            println!("{}: {}", file.display(), counted(errors.0.len(), "error"));
            return ExitCode::FAILURE;
        }
    };
    let loaded = &partial.loaded;
    let intercepting = loaded.config.interception.is_some();
    let warnings = loaded.place(
        (loaded.config.policies.iter().enumerate())
            .flat_map(|(i, policy)| {
                crate::policy::lint_policy(policy, intercepting)
                    .into_iter()
                    .map(move |w| w.under(&format!("policies[{i}]")))
            })
            .collect(),
    );
    for warning in &warnings.0 {
        println!("warning: {warning}");
    }
    println!(
        "{}: ok (version {}, {} policies, {} active, transforms: {}){}",
        file.display(),
        loaded.version,
        snapshot.policies.policies().len(),
        snapshot.policies.active_count(),
        snapshot.pipeline.names().join(", "),
        match warnings.0.len() {
            0 => String::new(),
            n => format!("; {}", counted(n, "warning")),
        }
    );
    ExitCode::SUCCESS
}

pub fn ca(command: CaCommand) -> ExitCode {
    let CaCommand::Init {
        dir,
        common_name,
        valid_for,
        force,
    } = command;
    let valid_for: Duration = valid_for.into();
    match crate::tls::ca::write_new(&dir, &common_name, valid_for, force) {
        Ok((cert, key)) => {
            println!("wrote {} and {}", cert.display(), key.display());
            println!(
                "point `interception.ca` at them; workloads must trust {}",
                cert.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn check(args: CheckArgs) -> ExitCode {
    let loaded = match crate::config::load_file(&args.config) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let store_url = match loaded.config.store_url(&env) {
        Ok(url) => url,
        Err(errors) => {
            eprintln!("{}", loaded.place(errors));
            return ExitCode::FAILURE;
        }
    };
    block_on(async move {
        let runtime = Runtime::default();
        // A config that names a store decides with the store's policies and secrets, as
        // `serve` would: the file holds none of them.
        let compiled = match &store_url {
            None => Snapshot::compile(&loaded.config, &loaded.version, &env, &runtime),
            Some(url) => {
                let store = Store::open(url).await.map_err(store_failure)?;
                let contents = store.contents().await.map_err(store_failure)?;
                let (policies, secrets) = (contents.policies.len(), contents.secrets.len());
                crate::live::store::compile_with_store_isolated(
                    &loaded.config,
                    &loaded.version,
                    std::sync::Arc::new(contents),
                    &env,
                    &runtime,
                    None,
                )
                .map(|(snapshot, isolated)| {
                    let contents = &isolated.contents;
                    eprintln!(
                        "check: policies and secrets from the store ({:?}, revision {}: \
                         {policies} policies, {secrets} secrets)",
                        store.backend(),
                        contents.revision,
                    );
                    // As the gateway does: what does not compile here is set aside.
                    for fault in &contents.faults {
                        eprintln!(
                            "check: stored {} {:?} set aside, as the gateway would: {}",
                            fault.kind, fault.name, fault.error
                        );
                    }
                    snapshot
                })
            }
        };
        let snapshot = compiled.map_err(|errors| Failure(loaded.place(errors).to_string()))?;
        let request = CheckRequest {
            headers: args::headers(&args.headers)?,
            extra_tags: args::tags(&args.tags)?,
            request_line: args.request,
            source: args.source,
            spiffe_id: args.spiffe_id,
            token: args.token,
            intercepted: args.intercepted,
            body: args::body(args.body.as_deref(), args.body_file.as_deref())?,
        };
        let report = check::run(&snapshot, &request)
            .await
            .map_err(|e| Failure(format!("--request: {e}")))?;
        if args.json {
            println!("{:#}", report.json);
        } else {
            print!("{}", report.text);
        }
        Ok(match report.decision {
            Decision::Denied => ExitCode::from(3),
            Decision::Allowed | Decision::Flagged => ExitCode::SUCCESS,
        })
    })
}

pub fn migrate(url: &str) -> ExitCode {
    block_on(async move {
        let store = Store::open(url).await.map_err(store_failure)?;
        println!("store schema is current ({:?})", store.backend());
        Ok(ExitCode::SUCCESS)
    })
}

pub fn apply_to_store(args: StoreApplyArgs) -> ExitCode {
    use crate::store::apply::apply;
    // The whole file must be valid before anything is written.
    let config = match load_valid(&args.file) {
        Ok(loaded) => loaded.config,
        Err(code) => return code,
    };
    let change = Change::by(&args.operator, &args.reason);
    block_on(async move {
        let store = Store::open(&args.store).await.map_err(store_failure)?;
        let policies = apply(&store, &config.policies, &change, args.prune)
            .await
            .map_err(store_failure)?;
        let secrets = apply(&store, &config.secrets, &change, args.prune)
            .await
            .map_err(store_failure)?;
        let mut tally = Tally::default();
        for (kind, outcome) in policies
            .into_iter()
            .map(|a| (Kind::Policy, a))
            .chain(secrets.into_iter().map(|a| (Kind::Secret, a)))
        {
            let line = match outcome {
                Applied::Created { name, version } => {
                    tally.created += 1;
                    change_line("created", kind, &name, &format!(" (version {version})"))
                }
                Applied::Updated { name, version } => {
                    tally.updated += 1;
                    change_line("updated", kind, &name, &format!(" (version {version})"))
                }
                Applied::Unchanged { .. } => {
                    tally.unchanged += 1;
                    continue;
                }
                Applied::Deleted { name, .. } => {
                    tally.deleted += 1;
                    change_line("deleted", kind, &name, "")
                }
                Applied::Kept { name } => change_line(
                    "kept",
                    kind,
                    &name,
                    " (not in the file; --prune deletes it)",
                ),
            };
            println!("{line}");
        }
        println!("{}", tally.summary(&args.file, false));
        Ok(ExitCode::SUCCESS)
    })
}

fn store_failure(error: crate::store::StoreError) -> Failure {
    Failure(error.to_string())
}
