use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use portcullis::app::{self, ServeError, ServeOptions};
use portcullis::check::{self, CheckRequest};
use portcullis::policy::Decision;
use portcullis::policy::rule::Tag;
use portcullis::snapshot::{SecretsRuntime, Snapshot};

/// Portcullis: the egress policy gateway behind Envoy.
#[derive(Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ext_proc server and the admin server.
    Serve {
        /// The config file (watched: valid changes go live without a restart).
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Listen address for Envoy's ext_proc stream (overrides server.grpc_listen).
        #[arg(long, env = "PORTCULLIS_GRPC_LISTEN")]
        grpc_listen: Option<SocketAddr>,
        /// Listen address for /healthz, /readyz, /metrics and the admin API (overrides
        /// server.admin_listen).
        #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN")]
        admin_listen: Option<SocketAddr>,
        /// Read policies, secrets and tokens from this store (sqlite://PATH or
        /// postgres://…), overriding `store.url`.
        #[arg(long, env = "PORTCULLIS_STORE")]
        store: Option<String>,
    },
    /// Check a config file; print every error and exit 1 if there is one.
    Validate { file: PathBuf },
    /// The CA behind intercepted HTTPS.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Decide one request offline and print the decision trace.
    /// Exit status: 0 allowed or flagged, 3 denied, 1 invalid config or request.
    Check(CheckArgs),
    /// Create or upgrade a store's schema (sqlite://PATH or postgres://…).
    Migrate {
        #[arg(long, env = "PORTCULLIS_STORE")]
        store: String,
    },
    /// Write a config file's policies and secrets into a store, each change as a new
    /// version (GitOps). Unchanged ones are left alone; ones missing from the file stay
    /// unless --prune.
    Apply {
        /// The config file whose `policies` are applied.
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
    },
}

#[derive(Subcommand)]
enum CaCommand {
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
struct CheckArgs {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            grpc_listen,
            admin_listen,
            store,
        } => serve(ServeOptions {
            config,
            grpc_listen,
            admin_listen,
            store,
        }),
        Command::Validate { file } => validate(&file),
        Command::Ca(CaCommand::Init {
            dir,
            common_name,
            valid_for,
            force,
        }) => ca_init(&dir, &common_name, valid_for.into(), force),
        Command::Check(args) => check(args),
        Command::Migrate { store } => with_runtime(async move {
            let store = portcullis::store::Store::open(&store).await?;
            println!("store schema is current ({:?})", store.backend());
            Ok(())
        }),
        Command::Apply {
            file,
            store,
            operator,
            reason,
            prune,
        } => apply(&file, &store, &operator, &reason, prune),
    }
}

fn serve(options: ServeOptions) -> ExitCode {
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
    match runtime.block_on(app::serve(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::InvalidConfig(errors)) => {
            eprintln!("{errors}");
            eprintln!(
                "portcullis: invalid config ({} errors); not starting",
                errors.0.len()
            );
            ExitCode::FAILURE
        }
        Err(ServeError::Other(e)) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one async command on a small runtime; an error prints and exits 1.
fn with_runtime(
    work: impl std::future::Future<Output = Result<(), portcullis::store::StoreError>>,
) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

fn apply(file: &std::path::Path, url: &str, operator: &str, reason: &str, prune: bool) -> ExitCode {
    use portcullis::store::apply::{Applied, apply};
    use portcullis::store::{Change, Store};
    // The whole file must be valid before anything is written.
    let config = match Snapshot::load(file, &SecretsRuntime::default()) {
        Ok((loaded, _)) => loaded.config,
        Err(errors) => {
            println!("{errors}");
            println!(
                "{}: {} errors; nothing applied",
                file.display(),
                errors.0.len()
            );
            return ExitCode::FAILURE;
        }
    };
    let change = Change::by(operator, reason);
    with_runtime(async move {
        let store = Store::open(url).await?;
        let mut applied = apply(&store, &config.policies, &change, prune).await?;
        let secrets = apply(&store, &config.secrets, &change, prune).await?;
        let (mut created, mut updated, mut unchanged, mut deleted) = (0, 0, 0, 0);
        for (kind, outcome) in applied
            .drain(..)
            .map(|a| ("policy", a))
            .chain(secrets.into_iter().map(|a| ("secret", a)))
        {
            match outcome {
                Applied::Created { name, version } => {
                    println!("created  {kind} {name} (version {version})");
                    created += 1;
                }
                Applied::Updated { name, version } => {
                    println!("updated  {kind} {name} (version {version})");
                    updated += 1;
                }
                Applied::Unchanged { .. } => unchanged += 1,
                Applied::Deleted { name, .. } => {
                    println!("deleted  {kind} {name}");
                    deleted += 1;
                }
                Applied::Kept { name } => {
                    println!("kept     {kind} {name} (not in the file; --prune deletes it)")
                }
            }
        }
        println!(
            "{}: {created} created, {updated} updated, {unchanged} unchanged, {deleted} deleted",
            file.display()
        );
        Ok(())
    })
}

fn ca_init(dir: &std::path::Path, common_name: &str, valid_for: Duration, force: bool) -> ExitCode {
    match portcullis::tls::ca::write_new(dir, common_name, valid_for, force) {
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

fn validate(file: &std::path::Path) -> ExitCode {
    let loaded = Snapshot::load(file, &SecretsRuntime::default()).and_then(|(loaded, snapshot)| {
        // The CA files are part of a valid config: check they load and belong together.
        match loaded.config.interception.as_ref().map(|i| i.load()) {
            Some(Err(error)) => Err(loaded.place(vec![error])),
            _ => Ok((loaded, snapshot)),
        }
    });
    match loaded {
        Ok((loaded, snapshot)) => {
            println!(
                "{}: ok (version {}, {} policies, {} active, transforms: {})",
                file.display(),
                loaded.version,
                snapshot.policies.policies().len(),
                snapshot.policies.active_count(),
                snapshot.pipeline.names().join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            println!("{errors}");
            println!("{}: {} errors", file.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let snapshot = match Snapshot::load(&args.config, &SecretsRuntime::default()) {
        Ok((_, snapshot)) => snapshot,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let mut headers = Vec::new();
    for header in &args.headers {
        match header.split_once(':') {
            Some((name, value)) => headers.push((name.trim().to_owned(), value.trim().to_owned())),
            None => {
                eprintln!("portcullis: --header {header:?} is not \"name: value\"");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut extra_tags = Vec::new();
    for tag in &args.tags {
        match Tag::parse(tag) {
            Ok(tag) => extra_tags.push(tag),
            Err(e) => {
                eprintln!("portcullis: --tag: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let body = match read_body(args.body, args.body_file.as_deref()) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::FAILURE;
        }
    };
    let request = CheckRequest {
        request_line: args.request,
        headers,
        extra_tags,
        source: args.source,
        spiffe_id: args.spiffe_id,
        token: args.token,
        intercepted: args.intercepted,
        body,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    match runtime.block_on(check::run(&snapshot, &request)) {
        Ok(report) => {
            if args.json {
                println!("{:#}", report.json);
            } else {
                print!("{}", report.text);
            }
            match report.decision {
                Decision::Denied => ExitCode::from(3),
                Decision::Allowed | Decision::Flagged => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("portcullis: --request: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The body `check` was given with `--body` or `--body-file`; empty without either.
fn read_body(text: Option<String>, file: Option<&Path>) -> Result<Vec<u8>, String> {
    match (text, file) {
        (Some(text), _) => Ok(text.into_bytes()),
        (None, Some(path)) if path == Path::new("-") => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| format!("--body-file -: cannot read standard input: {e}"))?;
            Ok(body)
        }
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| format!("--body-file {}: cannot read it: {e}", path.display())),
        (None, None) => Ok(Vec::new()),
    }
}
