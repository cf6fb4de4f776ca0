//! The configuration file: its model (doc comments here are the user documentation of
//! each field), loading with positioned errors, and the file watcher for hot reload.

pub mod channel;
pub mod every_error;
mod load;
mod position;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{
    ConfigError, ConfigErrors, LoadedConfig, Partial, load_file, load_file_partial, parse_str,
    version_of, version_of_file,
};

use crate::identity::IdentityConfig;
pub use crate::identity::admin::{AdminConfig, AdminRole, AdminTokenConfig};
use crate::policy::{DefaultAction, PolicyConfig};
pub use crate::telemetry::config::{OtlpConfig, OtlpEndpoint, TelemetryConfig};
use crate::transforms::{SecretConfig, TransformEntry};
use crate::vocab::DurationText;
use crate::vocab::Tag;
pub use crate::vocab::{FieldError, duplicate_names, from_value, join_path};

/// The whole config file. Unknown fields are rejected everywhere.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub server: ServerConfig,
    pub gateway: GatewayConfig,
    /// What happens when no policy matches. Default `deny`.
    pub default_action: DefaultAction,
    pub identities: Vec<IdentityConfig>,
    pub policies: Vec<PolicyConfig>,
    /// Credentials injected at the edge.
    pub secrets: Vec<SecretConfig>,
    /// The transforms pipeline, in order. Default: `[allowlist]`, plus `secrets` when
    /// secrets are defined or a store is configured.
    pub transforms: Vec<TransformEntry>,
    pub audit: AuditConfig,
    pub telemetry: TelemetryConfig,
    /// HTTPS interception (the CA behind the certificates Envoy presents); off when absent.
    pub interception: Option<crate::tls::InterceptionConfig>,
    /// The control plane's store; when set, policies, secrets and enrollment tokens come
    /// from it instead of this file.
    pub store: Option<StoreConfig>,
    /// Who may use the admin API (`/v1/`).
    pub admin: AdminConfig,
    /// Custom DLP detectors, beside the built-in ones.
    pub dlp: crate::dlp::DlpConfig,
    /// How denied MCP messages are answered.
    pub mcp: McpConfig,
    /// How a request's path is read where servers disagree (escaped slashes, `;`
    /// parameters).
    pub request: crate::request::RequestConfig,
    /// Which internal addresses allowed requests may reach, and how names are resolved.
    pub network_guard: crate::network::NetworkGuardConfig,
    /// Approvals (`action: approve`): the console link, how long things last, the webhook.
    pub approvals: crate::approvals::ApprovalsConfig,
}

/// `mcp:` — how Portcullis answers MCP (JSON-RPC over Streamable HTTP) messages it
/// refuses. A denied `tools/call` is answered with HTTP 200 and a JSON-RPC error carrying
/// the request's id, which agents surface as a failed tool call instead of a transport
/// failure.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// The JSON-RPC error code of a denied message. Default -32001.
    pub deny_code: i64,
    /// The error message; the policy's own `message`, when it has one, goes in `data`.
    pub deny_message: String,
    /// Remove the tools a workload may not call from `tools/list` answers. Default true.
    pub filter_tools_list: bool,
    /// The most messages a JSON-RPC batch may hold; a larger batch is refused whole with a
    /// JSON-RPC error (`-32600`, HTTP 400) before any of it is decided. Default 100.
    pub max_batch: usize,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            deny_code: -32001,
            deny_message: "denied by policy".to_owned(),
            filter_tools_list: true,
            max_batch: 100,
        }
    }
}

impl Config {
    /// The gateway's settings without its policies, secrets and identities: what code
    /// that only reads settings keeps, so that a large policy set is held once.
    pub fn settings(&self) -> Config {
        Config {
            server: self.server.clone(),
            gateway: self.gateway.clone(),
            default_action: self.default_action,
            identities: Vec::new(),
            policies: Vec::new(),
            secrets: Vec::new(),
            transforms: self.transforms.clone(),
            audit: self.audit.clone(),
            telemetry: self.telemetry.clone(),
            interception: self.interception.clone(),
            store: self.store.clone(),
            admin: self.admin.clone(),
            dlp: self.dlp.clone(),
            mcp: self.mcp.clone(),
            request: self.request,
            network_guard: self.network_guard.clone(),
            approvals: self.approvals.clone(),
        }
    }

    /// What a config with a `store` must not hold, and a URL that cannot be found: the
    /// checks `serve` and `validate` make beyond parsing. Returns the URL when there is a
    /// store.
    pub fn store_url(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, Vec<FieldError>> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let mut errors = Vec::new();
        if !self.policies.is_empty() || !self.secrets.is_empty() {
            errors.push(FieldError::new(
                if self.policies.is_empty() {
                    "secrets"
                } else {
                    "policies"
                },
                "with a `store`, policies and secrets come from the store: write this \
                 file's into it with `portcullis apply -f FILE --store URL` (or the admin \
                 API) and remove them here",
            ));
        }
        let url = store
            .resolve_url(env)
            .map_err(|e| errors.push(FieldError::new("store.url_env", e)))
            .ok();
        match url {
            Some(url) if errors.is_empty() => Ok(Some(url)),
            _ => Err(errors),
        }
    }
}

/// The control plane's store. Changing it needs a restart.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (embedded, created if missing) or `postgres://user@host/db`.
    /// Exactly one of `url` and `url_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// An environment variable holding the URL (keeps a database password out of the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// A full reload from the store at this interval, whatever notifications said: the
    /// safety net for a missed one. Default 30s.
    #[serde(default = "default_resync_interval")]
    pub resync_interval: DurationText,
    /// Copy every audit record into the store, for audit search, fire counts and impact
    /// previews. Default true.
    #[serde(default = "default_true")]
    pub audit: bool,
    /// Audit events older than this are deleted from the store (the audit sink keeps its
    /// own copy). Default 7d.
    #[serde(default = "default_audit_retention")]
    pub audit_retention: DurationText,
    /// What a secret read from the store may use as its source: nothing by default
    /// (docs/store.md). A stored secret outside these bounds is refused by the API (422)
    /// and, if written another way, never injected.
    #[serde(default, skip_serializing_if = "is_default")]
    pub secret_sources: crate::secrets::config::SourceBounds,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_true() -> bool {
    true
}

fn default_resync_interval() -> DurationText {
    DurationText(std::time::Duration::from_secs(30))
}

fn default_audit_retention() -> DurationText {
    DurationText(std::time::Duration::from_secs(7 * 24 * 3600))
}

impl StoreConfig {
    /// A store at `url`, with every other field at its default.
    pub fn at(url: &str) -> StoreConfig {
        StoreConfig {
            url: Some(url.to_owned()),
            url_env: None,
            resync_interval: default_resync_interval(),
            audit: true,
            audit_retention: default_audit_retention(),
            secret_sources: Default::default(),
        }
    }

    /// Checks what deserialization cannot; paths relative to `store`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match (&self.url, &self.url_env) {
            (Some(url), None) => {
                if let Err(e) = crate::store::Store::backend_of(url) {
                    errors.push(FieldError::new("url", e.to_string()));
                }
            }
            (None, Some(_)) => {}
            _ => errors.push(FieldError::new(
                "",
                "a store needs exactly one of `url` and `url_env`",
            )),
        }
        if self.resync_interval.0 < std::time::Duration::from_secs(1) {
            errors.push(FieldError::new(
                "resync_interval",
                "resync_interval must be at least 1s",
            ));
        }
        errors.extend(
            self.secret_sources
                .validate()
                .into_iter()
                .map(|e| e.under("secret_sources")),
        );
        errors
    }

    /// The URL, from the file or the environment.
    pub fn resolve_url(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        match (&self.url, &self.url_env) {
            (Some(url), _) => Ok(url.clone()),
            (None, Some(var)) => {
                let url = env(var).ok_or_else(|| {
                    format!("store.url_env: environment variable {var} is not set")
                })?;
                crate::store::Store::backend_of(&url)
                    .map_err(|e| format!("store.url_env: {var}: {e}"))?;
                Ok(url)
            }
            (None, None) => Err("store: no `url`".to_owned()),
        }
    }
}

/// Listen addresses. Changing them needs a restart; the command line overrides them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The gRPC listener (ext_proc and SDS) Envoy connects to: `unix:/PATH` (default
    /// `unix:/run/portcullis/grpc.sock`, owner-only) or `HOST:PORT` with `grpc_tls`.
    #[serde(default)]
    pub grpc_listen: channel::GrpcListen,
    /// Mutual TLS for a TCP `grpc_listen`: required there unless
    /// `grpc_mesh_authenticated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_tls: Option<channel::GrpcTls>,
    /// A TCP `grpc_listen` without TLS, for a service mesh sidecar that terminates mutual
    /// TLS and lets only the gateway's identity through (Istio: PeerAuthentication STRICT
    /// and an AuthorizationPolicy on the port, `envoy/istio/`). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grpc_mesh_authenticated: bool,
    /// `/healthz`, `/readyz`, `/metrics`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// After SIGTERM, how long to keep deciding requests while `/readyz` answers 503, so
    /// load balancers and Envoys move away first. Then new streams are refused and open
    /// ones drain (up to 10 s). Default `0s`.
    #[serde(default = "default_shutdown_delay")]
    pub shutdown_delay: DurationText,
    /// Envoy's access log file that Portcullis follows into the audit trail (how each
    /// request ended; the fast path's decisions): the shipped `forward-proxy.yaml` writes
    /// it. Default: `access.jsonl` beside a Unix `grpc_listen` socket
    /// (`/run/portcullis/access.jsonl`); none with a TCP `grpc_listen`, where Envoy sends
    /// its entries over the gRPC access log service instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_access_log: Option<PathBuf>,
}

fn default_shutdown_delay() -> DurationText {
    DurationText(std::time::Duration::ZERO)
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grpc_listen: channel::GrpcListen::default(),
            grpc_tls: None,
            grpc_mesh_authenticated: false,
            admin_listen: default_admin_listen(),
            shutdown_delay: default_shutdown_delay(),
            envoy_access_log: None,
        }
    }
}

/// This gateway instance.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Tags every request through this gateway carries.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// The largest request body Portcullis buffers (for transforms that need the body,
    /// such as body-signing secrets); larger ones are refused with 413. Default 1 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Whether Envoy decides by itself what its routes can (docs/fast-path.md): the routes
    /// Portcullis serves then send only the rest through ext_proc. Default `true`; `false`
    /// serves routes that send everything through ext_proc.
    #[serde(default = "default_fast_path")]
    pub fast_path: bool,
}

fn default_fast_path() -> bool {
    true
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            tags: Vec::new(),
            max_body_bytes: default_max_body_bytes(),
            fast_path: default_fast_path(),
        }
    }
}

/// Where audit records go: one JSON object per line.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `stdout` (default) or `file`.
    #[serde(default)]
    pub sink: AuditSinkKind,
    /// Required for `sink: file`; appended to, created if missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// What a request does when the audit queue is full (the sink is slower than the
    /// traffic, or blocked): `block` (default) waits up to `block_timeout` for room, then
    /// refuses the request with 503 `audit_unavailable` — nothing is forwarded unaudited;
    /// `drop` loses the record, counts it, and lets the request go on.
    #[serde(default)]
    pub when_full: AuditWhenFull,
    /// How long a request waits for room with `when_full: block`. Default 200ms: below
    /// the ext_proc `message_timeout` of the shipped Envoy configs (0.5s), so the workload
    /// gets Portcullis's 503 rather than Envoy's 500.
    #[serde(default = "default_audit_block_timeout")]
    pub block_timeout: DurationText,
    /// How many records may wait for the sink. Default 16384.
    #[serde(default = "default_audit_queue")]
    pub queue: usize,
}

fn default_audit_block_timeout() -> DurationText {
    DurationText(std::time::Duration::from_millis(200))
}

fn default_audit_queue() -> usize {
    16 * 1024
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            sink: AuditSinkKind::Stdout,
            path: None,
            when_full: AuditWhenFull::default(),
            block_timeout: default_audit_block_timeout(),
            queue: default_audit_queue(),
        }
    }
}

/// `audit.when_full`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditWhenFull {
    /// Wait for room, up to `block_timeout`; then refuse the request (fail closed).
    #[default]
    Block,
    /// Lose the record (counted) and let the request go on (fail open).
    Drop,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSinkKind {
    #[default]
    Stdout,
    File,
}
