//! The closed set of source backends. Each backend module has a type with
//! `fn new(..) -> Result<Self, Vec<FieldError>>` (validation at load, errors relative to the
//! source) and `async fn fetch(&self, cache: &SourceCache) -> Result<Fetched, SourceError>`
//! (nested sources — a Vault token, an OAuth client secret — resolve through `cache`).

pub mod aws;
pub mod env;
pub mod file;
pub mod gcp;
mod http;
mod jwt;
pub mod oauth2;
pub mod onepassword;
pub mod vault;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use super::cache::SourceCache;
use super::config::{SourceConfig, SourceKind};
use super::value::{SecretValue, SourceError};
use crate::vocab::FieldError;

/// What a backend read: the value, and how long it is valid when the backend says so (an
/// OAuth token's `expires_in`); the cache keeps it no longer than that, minus a margin.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub value: SecretValue,
    pub expires_in: Option<Duration>,
}

impl Fetched {
    pub fn value(value: SecretValue) -> Fetched {
        Fetched {
            value,
            expires_in: None,
        }
    }
}

/// Shared by every source compiled in one snapshot.
pub struct SourceContext {
    /// One HTTP client (connection pools, TLS roots) for the HTTP-based sources.
    pub http: reqwest::Client,
}

impl SourceContext {
    pub fn new() -> SourceContext {
        // A secret backend that hangs must not hang the request: Envoy's message timeout
        // would fail it anyway, without saying why.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            // A backend redirecting elsewhere would get the credentials we send it (a
            // Vault token in X-Vault-Token is not stripped on cross-host redirects).
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let same_origin = attempt
                    .previous()
                    .first()
                    .is_some_and(|first| first.origin() == attempt.url().origin());
                if same_origin && attempt.previous().len() < 3 {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            }))
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        SourceContext { http }
    }
}

impl Default for SourceContext {
    fn default() -> Self {
        SourceContext::new()
    }
}

pub(crate) enum Backend {
    Env(env::EnvSource),
    File(file::FileSource),
    AwsSecretsManager(aws::SecretsManagerSource),
    AwsSsm(aws::SsmSource),
    AwsCredentials(aws::CredentialsSource),
    OnePassword(onepassword::ConnectSource),
    Vault(vault::VaultSource),
    OAuth2(oauth2::OAuth2Source),
    Gcp(gcp::ServiceAccountSource),
}

/// A source ready to read, with its caching rules.
pub struct CompiledSource {
    /// Identifies the source's whole config: equal configs share cache entries, across
    /// secrets and across reloads.
    pub(crate) key: u64,
    /// What the source is, for errors and logs (`vault secret/app/github`) — never a value.
    pub description: String,
    pub(crate) backend: Backend,
    pub(crate) ttl: Duration,
    pub(crate) failure_ttl: Duration,
    pub(crate) json_key: Option<String>,
    /// The last good value and until when it may be used: the request path reads this
    /// without touching the shared cache (see `SourceCache::resolve`).
    pub(crate) current: arc_swap::ArcSwapOption<Current>,
}

/// A value in use, with its expiry.
pub(crate) struct Current {
    pub(crate) value: SecretValue,
    pub(crate) until: std::time::Instant,
}

impl std::fmt::Debug for CompiledSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSource")
            .field("description", &self.description)
            .finish()
    }
}

impl CompiledSource {
    /// Reads the backend (no caching here: see [`SourceCache::resolve`]).
    pub(crate) async fn fetch(&self, cache: &SourceCache) -> Result<Fetched, SourceError> {
        let fetched = match &self.backend {
            Backend::Env(s) => s.fetch(),
            Backend::File(s) => s.fetch().await,
            Backend::AwsSecretsManager(s) => s.fetch().await,
            Backend::AwsSsm(s) => s.fetch().await,
            Backend::AwsCredentials(s) => s.fetch().await,
            Backend::OnePassword(s) => s.fetch(cache).await,
            Backend::Vault(s) => s.fetch(cache).await,
            Backend::OAuth2(s) => s.fetch(cache).await,
            Backend::Gcp(s) => s.fetch(cache).await,
        }
        .map_err(|e| SourceError::new(format!("{}: {e}", self.description)))?;
        let value = match &self.json_key {
            Some(key) => fetched
                .value
                .json_field(key)
                .map_err(|e| SourceError::new(format!("{}: {e}", self.description)))?,
            None => fetched.value,
        };
        if value.is_empty() {
            return Err(SourceError::new(format!(
                "{}: the value is empty",
                self.description
            )));
        }
        Ok(Fetched {
            value,
            expires_in: fetched.expires_in,
        })
    }

    /// Whether the cached value must be dropped before use (a file changed on disk).
    pub(crate) fn changed(&self) -> bool {
        match &self.backend {
            Backend::File(s) => s.changed(),
            _ => false,
        }
    }
}

/// Compiles a source; errors are relative to the source's own path.
pub fn compile(
    config: &SourceConfig,
    ctx: &SourceContext,
) -> Result<Arc<CompiledSource>, Vec<FieldError>> {
    let (backend, description) = match &config.kind {
        SourceKind::Env { var } => (
            Backend::Env(env::EnvSource::new(var)?),
            format!("env {var}"),
        ),
        SourceKind::File { path } => (
            Backend::File(file::FileSource::new(path)?),
            format!("file {}", path.display()),
        ),
        SourceKind::AwsSecretsManager {
            secret_id,
            version_stage,
            region,
            endpoint_url,
        } => (
            Backend::AwsSecretsManager(aws::SecretsManagerSource::new(
                secret_id,
                version_stage.as_deref(),
                region.as_deref(),
                endpoint_url.as_deref(),
            )?),
            format!("aws_secrets_manager {secret_id}"),
        ),
        SourceKind::AwsSsm {
            parameter,
            with_decryption,
            region,
            endpoint_url,
        } => (
            Backend::AwsSsm(aws::SsmSource::new(
                parameter,
                *with_decryption,
                region.as_deref(),
                endpoint_url.as_deref(),
            )?),
            format!("aws_ssm {parameter}"),
        ),
        SourceKind::AwsCredentials { profile, region } => (
            Backend::AwsCredentials(aws::CredentialsSource::new(
                profile.as_deref(),
                region.as_deref(),
            )?),
            match profile {
                Some(p) => format!("aws_credentials profile {p}"),
                None => "aws_credentials".to_owned(),
            },
        ),
        SourceKind::OnepasswordConnect {
            url,
            token,
            vault,
            item,
            field,
        } => (
            Backend::OnePassword(onepassword::ConnectSource::new(
                url,
                nested(token, "token", ctx)?,
                vault,
                item,
                field,
                ctx,
            )?),
            format!("onepassword_connect {vault}/{item}/{field}"),
        ),
        SourceKind::Vault {
            address,
            token,
            mount,
            path,
            key,
            namespace,
        } => (
            Backend::Vault(vault::VaultSource::new(
                address,
                nested(token, "token", ctx)?,
                mount,
                path,
                key.as_deref(),
                namespace.as_deref(),
                ctx,
            )?),
            format!("vault {mount}/{path}"),
        ),
        SourceKind::Oauth2(oauth) => (
            Backend::OAuth2(oauth2::OAuth2Source::new(oauth, ctx)?),
            format!("oauth2 {}", oauth.token_url),
        ),
        SourceKind::GcpServiceAccount {
            key,
            scopes,
            subject,
            token_url,
        } => (
            Backend::Gcp(gcp::ServiceAccountSource::new(
                nested(key, "key", ctx)?,
                scopes,
                subject.as_deref(),
                token_url.as_deref(),
                ctx,
            )?),
            "gcp_service_account".to_owned(),
        ),
    };
    Ok(Arc::new(CompiledSource {
        key: identity_of(config),
        description,
        backend,
        ttl: config.ttl(),
        failure_ttl: config.failure_ttl(),
        json_key: config.json_key.clone(),
        current: arc_swap::ArcSwapOption::empty(),
    }))
}

/// Compiles a nested source (a Vault token, a key), placing its errors under `field`.
pub fn nested(
    config: &SourceConfig,
    field: &str,
    ctx: &SourceContext,
) -> Result<Arc<CompiledSource>, Vec<FieldError>> {
    compile(config, ctx).map_err(|errors| errors.into_iter().map(|e| e.under(field)).collect())
}

fn identity_of(config: &SourceConfig) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(config)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// What reading a source once said: whether it could be read, and if not, why. The value
/// itself is dropped here: this is what the console's "test the source" shows.
#[derive(Debug)]
pub struct Probe {
    /// The source, as errors name it (`env GITHUB_TOKEN`).
    pub description: String,
    /// `Ok` when a non-empty value was read; the error otherwise (it never holds a value).
    pub outcome: Result<(), String>,
    pub elapsed: Duration,
}

/// Reads `config` once, uncached, with a deadline; errors are the config's, relative to
/// the source.
pub async fn probe(config: &SourceConfig, deadline: Duration) -> Result<Probe, Vec<FieldError>> {
    let source = compile(config, &SourceContext::new())?;
    let cache = SourceCache::new();
    let started = std::time::Instant::now();
    let outcome = match tokio::time::timeout(deadline, source.fetch(&cache)).await {
        Ok(Ok(_value)) => Ok(()),
        Ok(Err(e)) => Err(e.0),
        Err(_) => Err(format!(
            "{}: no answer within {}s",
            source.description,
            deadline.as_secs()
        )),
    };
    Ok(Probe {
        description: source.description.clone(),
        outcome,
        elapsed: started.elapsed(),
    })
}
