//! Building a [`Snapshot`] from its sources: a config file alone, or the file's gateway
//! settings with the policies, secrets and tokens read from a store. Every error is
//! collected and placed (a file line, or a stored definition's name); nothing half-built
//! is returned.

use std::path::Path;
use std::sync::Arc;

use super::{Runtime, Snapshot};
use crate::config::{Config, ConfigErrors, LoadedConfig, load_file, parse_str};
use crate::dlp::Scanner;
use crate::identity::admin::AdminAuth;
use crate::identity::{IdentityConfig, IdentityResolver, TokenSource};
use crate::policy::{PolicyDefinition, PolicySet};
use crate::store::Contents;
use crate::transforms::Pipeline;
use crate::vocab::{FieldError, duplicate_names};

/// What a snapshot's policies, secrets and enrollment tokens come from; the gateway's
/// settings always come from the config file.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// The config file's own `policies:`, `secrets:` and `identities:`.
    File,
    /// The contents read from a store.
    Store(&'a Contents),
    /// A store never read yet: every request is refused (503) until it is.
    StoreUnread,
}

impl Snapshot {
    /// Compiles `config` with its policies from `origin`: the one way a running gateway
    /// builds a snapshot. `env` resolves environment variables (token sources).
    pub fn build(
        config: &Config,
        version: &str,
        origin: Origin<'_>,
        env: &dyn Fn(&str) -> Option<String>,
        runtime: &Runtime,
        earlier: Option<&PolicySet>,
    ) -> Result<Snapshot, Vec<FieldError>> {
        match origin {
            Origin::File => Snapshot::compile_versions(
                config,
                &config.policies,
                version,
                &[],
                env,
                runtime,
                earlier,
            ),
            Origin::Store(contents) => {
                Snapshot::compile_with_store(config, version, contents, env, runtime, earlier)
            }
            Origin::StoreUnread => Snapshot::unavailable(config, version, env, runtime),
        }
    }

    /// Compiles a parsed config. `env` resolves environment variables (token sources).
    pub fn compile(
        config: &Config,
        version: &str,
        env: &dyn Fn(&str) -> Option<String>,
        runtime: &Runtime,
    ) -> Result<Snapshot, Vec<FieldError>> {
        Snapshot::compile_versions(config, &config.policies, version, &[], env, runtime, None)
    }

    /// Compiles `config`'s settings with `policies`: the file's own, or the definitions of
    /// store contents where they are (not copied: at 100,000 a copy is 100 MB).
    fn compile_versions<P: PolicyDefinition + Sync>(
        config: &Config,
        policies: &[P],
        version: &str,
        policy_versions: &[i64],
        env: &dyn Fn(&str) -> Option<String>,
        runtime: &Runtime,
        earlier: Option<&PolicySet>,
    ) -> Result<Snapshot, Vec<FieldError>> {
        let mut errors = duplicate_names("policies", "policy", policies.iter().map(|p| p.name()));
        if config.audit.sink == crate::config::AuditSinkKind::File && config.audit.path.is_none() {
            errors.push(FieldError::new("audit.path", "`sink: file` needs a `path`"));
        }
        let identities = IdentityResolver::compile(&config.gateway.tags, &config.identities, env)
            .map_err(|e| errors.extend(e))
            .ok();
        let pipeline = Pipeline::compile(
            &config.transforms,
            &config.secrets,
            &runtime.cache,
            &runtime.sources,
            &runtime.judges,
            &runtime.limits,
            &runtime.budgets,
        )
        .map_err(|e| errors.extend(e))
        .ok();
        let admin = AdminAuth::compile(&config.admin, env)
            .map_err(|e| errors.extend(e))
            .ok();
        let scanner = Scanner::compile(&config.dlp)
            .map_err(|e| errors.extend(e.into_iter().map(|e| e.under("dlp"))))
            .ok();
        // Detectors are checked on the compiled rules: a held definition is not parsed
        // again for it, and one gone from `dlp:` is missed in none.
        let compiled = scanner.as_ref().map(|scanner| {
            let set = PolicySet::compile_reusing(
                policies,
                policy_versions,
                config.default_action,
                earlier,
            );
            errors.extend(unknown_detectors_in(&set, scanner));
            set
        });
        match (identities, pipeline, admin, scanner, compiled) {
            (Some(identities), Some(pipeline), Some(admin), Some(scanner), Some(compiled))
                if errors.is_empty() =>
            {
                Ok(Snapshot {
                    version: Arc::from(version),
                    policies: compiled.with_dlp(Arc::new(scanner)),
                    mcp: config.mcp.clone(),
                    request: config.request,
                    network: crate::network::NetworkGuard::compile(
                        &config.network_guard,
                        &runtime.resolvers,
                    ),
                    identities,
                    pipeline,
                    max_body_bytes: config.gateway.max_body_bytes,
                    admin,
                    store_revision: None,
                    unavailable: None,
                    approvals: runtime.approvals.clone(),
                    approval_settings: config.approvals.clone(),
                    fast_path: config.gateway.fast_path,
                })
            }
            _ => Err(errors),
        }
    }

    /// Compiles the gateway settings of `config` with the policies, secrets and
    /// enrollment tokens read from a store. Errors in stored definitions are placed by
    /// name (`policies["ci-npm"].rules[0].host`), not by list index.
    pub(crate) fn compile_with_store(
        config: &Config,
        config_version: &str,
        contents: &Contents,
        env: &dyn Fn(&str) -> Option<String>,
        runtime: &Runtime,
        earlier: Option<&PolicySet>,
    ) -> Result<Snapshot, Vec<FieldError>> {
        let mut effective = config.clone();
        let mut errors = Vec::new();
        // Placed by name: one left out here shifts the indices of the rest.
        effective.secrets = (contents.secrets.iter())
            .filter_map(|held| {
                let placed = |e| FieldError::new(format!("secrets[{:?}]", held.name), e);
                held.parse().map_err(|e| errors.push(placed(e))).ok()
            })
            .collect();
        let file_identities = effective.identities.len();
        effective
            .identities
            .extend(contents.tokens.iter().map(|token| IdentityConfig {
                name: Some(token.name.clone()),
                token: Some(TokenSource {
                    env: None,
                    file: None,
                    sha256: Some(token.sha256.clone()),
                }),
                source_cidr: None,
                uri_san: None,
                tags: token.tags.clone(),
            }));
        let versions: Vec<i64> = contents.policies.iter().map(|p| p.version).collect();
        let version = format!("{config_version}+r{}", contents.revision);
        // A stored secret reads only what the file config lets the store's writers reach.
        let bounds = config.store.as_ref().map(|s| &s.secret_sources);
        errors.extend(
            effective
                .secrets
                .iter()
                .enumerate()
                .flat_map(|(i, secret)| {
                    let checked = bounds.map(|b| b.check(&secret.source)).unwrap_or_default();
                    checked
                        .into_iter()
                        .map(move |e| e.under(&format!("secrets[{i}].source")))
                }),
        );
        let compiled = Snapshot::compile_versions(
            &effective,
            &contents.policies,
            &version,
            &versions,
            env,
            runtime,
            earlier,
        )
        .map_err(|e| errors.extend(e))
        .ok();
        let mut snapshot = match compiled {
            Some(snapshot) if errors.is_empty() => snapshot,
            _ => {
                return Err(errors
                    .into_iter()
                    .map(|e| name_stored(e, &effective, contents, file_identities))
                    .collect());
            }
        };
        snapshot.store_revision = Some(contents.revision);
        snapshot.identities.expect_tokens();
        Ok(snapshot)
    }

    /// The snapshot served while a store has never been read: every request is refused
    /// with 503 `policy_store_unavailable`, whatever the default action says.
    fn unavailable(
        config: &Config,
        config_version: &str,
        env: &dyn Fn(&str) -> Option<String>,
        runtime: &Runtime,
    ) -> Result<Snapshot, Vec<FieldError>> {
        let mut bare = config.clone();
        bare.policies.clear();
        bare.secrets.clear();
        bare.default_action = crate::policy::DefaultAction::Deny;
        let mut snapshot =
            Snapshot::compile(&bare, &format!("{config_version}+unloaded"), env, runtime)?;
        snapshot.unavailable = Some("policy_store_unavailable");
        Ok(snapshot)
    }

    /// Reads, parses and compiles a config file, with every error placed in the file.
    pub fn load(path: &Path, runtime: &Runtime) -> Result<(LoadedConfig, Snapshot), ConfigErrors> {
        Snapshot::compile_loaded(load_file(path)?, runtime)
    }

    /// Parses and compiles config text read from `file`.
    pub fn from_text(
        text: &str,
        file: &Path,
        runtime: &Runtime,
    ) -> Result<(LoadedConfig, Snapshot), ConfigErrors> {
        Snapshot::compile_loaded(parse_str(text, Some(file))?, runtime)
    }

    fn compile_loaded(
        loaded: LoadedConfig,
        runtime: &Runtime,
    ) -> Result<(LoadedConfig, Snapshot), ConfigErrors> {
        let env = |name: &str| std::env::var(name).ok();
        match Snapshot::compile(&loaded.config, &loaded.version, &env, runtime) {
            Ok(snapshot) => Ok((loaded, snapshot)),
            Err(errors) => Err(loaded.place(errors)),
        }
    }
}

/// `dlp:` conditions of `policy` naming a detector that is neither built in nor defined
/// under `dlp:`; paths relative to the policy.
pub fn unknown_detectors(
    policy: &crate::policy::PolicyConfig,
    scanner: &Scanner,
) -> Vec<FieldError> {
    let named = (policy.rules.iter().enumerate()).flat_map(|(r, rule)| {
        rule.dlp
            .iter()
            .enumerate()
            .map(move |(d, name)| (r, d, &**name))
    });
    unknown_of(named, scanner, "")
}

/// [`unknown_detectors`] of every policy of a compiled set, placed as `policies[i].…`.
fn unknown_detectors_in(set: &PolicySet, scanner: &Scanner) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (p, policy) in set.policies().iter().enumerate() {
        let named = (policy.rules.iter().enumerate()).flat_map(|(r, rule)| {
            (rule.conditions.iter())
                .flat_map(|c| c.detectors().enumerate())
                .map(move |(d, name)| (r, d, name))
        });
        errors.extend(unknown_of(named, scanner, &format!("policies[{p}].")));
    }
    errors
}

/// An error for each `(rule, position, detector)` the scanner does not know.
fn unknown_of<'a>(
    named: impl Iterator<Item = (usize, usize, &'a str)>,
    scanner: &Scanner,
    under: &str,
) -> Vec<FieldError> {
    named
        .filter(|(_, _, name)| !scanner.names().any(|known| known == *name))
        .map(|(r, d, name)| {
            FieldError::new(
                format!("{under}rules[{r}].dlp[{d}]"),
                format!(
                    "unknown DLP detector {name:?}; detectors: {} (define others under \
                     `dlp.custom`)",
                    scanner.names().collect::<Vec<_>>().join(", ")
                ),
            )
        })
        .collect()
}

/// Rewrites an error in a store-read definition from its list index to its name.
fn name_stored(
    error: FieldError,
    config: &Config,
    contents: &Contents,
    file_identities: usize,
) -> FieldError {
    let rename = |section: &str, name_of: &dyn Fn(usize) -> Option<String>| {
        let rest = error.path.strip_prefix(section)?.strip_prefix('[')?;
        let (index, tail) = rest.split_once(']')?;
        let name = name_of(index.parse().ok()?)?;
        Some(format!("{section}[{name:?}]{tail}"))
    };
    let policy = |i: usize| contents.policies.get(i).map(|p| p.name.to_string());
    let secret = |i: usize| config.secrets.get(i).map(|s| s.name.clone());
    let token = |i: usize| {
        i.checked_sub(file_identities)
            .and_then(|_| config.identities.get(i))
            .and_then(|t| t.name.clone())
    };
    let path = rename("policies", &policy)
        .or_else(|| rename("secrets", &secret))
        .or_else(|| rename("identities", &token).map(|p| p.replacen("identities", "tokens", 1)));
    match path {
        Some(path) => FieldError {
            path,
            message: error.message,
        },
        None => error,
    }
}
