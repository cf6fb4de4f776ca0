//! Where a credential comes from, as written in the config. Every source reads on the
//! gateway host; values never travel to a control plane.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_norway::Value;

use crate::vocab::{DurationText, FieldError};

/// A source, plus the caching that applies to any source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceConfig {
    /// Serialized beside the common fields, as it is written (`{type: env, var: X, ttl: 1m}`).
    #[serde(flatten)]
    pub kind: SourceKind,
    /// How long a value is reused before the source is read again. Default 5m.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<DurationText>,
    /// How long a failed read is remembered before the source is tried again. Default 5s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_ttl: Option<DurationText>,
    /// Pick this field of a JSON object value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_key: Option<String>,
}

pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_FAILURE_TTL: Duration = Duration::from_secs(5);

impl SourceConfig {
    pub fn ttl(&self) -> Duration {
        self.ttl.as_ref().map_or(DEFAULT_TTL, |d| d.0)
    }

    pub fn failure_ttl(&self) -> Duration {
        self.failure_ttl
            .as_ref()
            .map_or(DEFAULT_FAILURE_TTL, |d| d.0)
    }
}

const COMMON: [&str; 3] = ["ttl", "failure_ttl", "json_key"];

// Written by hand: `ttl`, `failure_ttl` and `json_key` sit beside each source's own fields,
// and serde cannot flatten them into a tagged enum that also rejects unknown fields.
impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let Value::Mapping(mut map) = Value::deserialize(d)? else {
            return Err(D::Error::custom(
                "a source is a mapping with a `type`, e.g. {type: env, var: GITHUB_TOKEN}",
            ));
        };
        let mut take = |key: &str| map.remove(Value::String(key.to_owned()));
        let duration = |v: Option<Value>, key: &str| -> Result<Option<DurationText>, D::Error> {
            v.map(|v| {
                let text = v.as_str().ok_or_else(|| {
                    D::Error::custom(format!("`{key}` is a duration like \"30s\""))
                })?;
                DurationText::try_from(text.to_owned()).map_err(D::Error::custom)
            })
            .transpose()
        };
        let ttl = duration(take(COMMON[0]), COMMON[0])?;
        let failure_ttl = duration(take(COMMON[1]), COMMON[1])?;
        let json_key = match take(COMMON[2]) {
            None => None,
            Some(Value::String(k)) if !k.is_empty() => Some(k),
            Some(_) => return Err(D::Error::custom("`json_key` must be a non-empty string")),
        };
        let kind = SourceKind::deserialize(Value::Mapping(map)).map_err(D::Error::custom)?;
        Ok(SourceConfig {
            kind,
            ttl,
            failure_ttl,
            json_key,
        })
    }
}

fn default_true() -> bool {
    true
}

fn default_kv_mount() -> String {
    "secret".into()
}

fn default_password_field() -> String {
    "password".into()
}

/// The source backends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceKind {
    /// An environment variable of the portcullis process.
    Env { var: String },
    /// A file, re-read when it changes (size, mtime or inode).
    File { path: PathBuf },
    /// AWS Secrets Manager `GetSecretValue` (standard credential chain).
    AwsSecretsManager {
        /// Name or ARN.
        secret_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version_stage: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// Endpoint override (a VPC endpoint, or a local emulator in tests).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint_url: Option<String>,
    },
    /// AWS Systems Manager Parameter Store `GetParameter` (SecureString decrypted).
    AwsSsm {
        parameter: String,
        #[serde(default = "default_true")]
        with_decryption: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint_url: Option<String>,
    },
    /// The gateway's own AWS credentials from the standard chain (environment, profile,
    /// web identity, instance or container role), as a JSON value with `access_key_id`,
    /// `secret_access_key` and `session_token` — what `aws_sigv4` signs with.
    AwsCredentials {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
    },
    /// 1Password Connect: a field of an item in a vault.
    OnepasswordConnect {
        /// The Connect server, e.g. `http://onepassword-connect:8080`.
        url: String,
        /// The Connect access token.
        token: Box<SourceConfig>,
        /// Vault UUID or name.
        vault: String,
        /// Item UUID or title.
        item: String,
        /// Field label or id. Default `password`.
        #[serde(default = "default_password_field")]
        field: String,
    },
    /// HashiCorp Vault, KV version 2.
    Vault {
        /// e.g. `https://vault.internal:8200`.
        address: String,
        token: Box<SourceConfig>,
        /// The KV v2 mount. Default `secret`.
        #[serde(default = "default_kv_mount")]
        mount: String,
        /// The secret's path under the mount.
        path: String,
        /// A key of the secret's data; without it the data object is returned as JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
    },
    /// An OAuth 2.0 access token, minted and refreshed by Portcullis.
    Oauth2(OAuth2Config),
    /// A Google access token minted from a service-account key (JWT bearer grant).
    GcpServiceAccount {
        /// The service-account key JSON.
        key: Box<SourceConfig>,
        scopes: Vec<String>,
        /// Domain-wide delegation: the user to act as.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// Overrides the key's `token_uri`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_url: Option<String>,
    },
}

impl SourceKind {
    /// The `type` name, for errors and audit.
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceKind::Env { .. } => "env",
            SourceKind::File { .. } => "file",
            SourceKind::AwsSecretsManager { .. } => "aws_secrets_manager",
            SourceKind::AwsSsm { .. } => "aws_ssm",
            SourceKind::AwsCredentials { .. } => "aws_credentials",
            SourceKind::OnepasswordConnect { .. } => "onepassword_connect",
            SourceKind::Vault { .. } => "vault",
            SourceKind::Oauth2(_) => "oauth2",
            SourceKind::GcpServiceAccount { .. } => "gcp_service_account",
        }
    }
}

impl SourceKind {
    /// The sources this one reads its own credentials from (a Vault token, an OAuth2
    /// client secret, a signing key), each with its field name.
    fn nested(&self) -> Vec<(&'static str, &SourceConfig)> {
        match self {
            SourceKind::OnepasswordConnect { token, .. } | SourceKind::Vault { token, .. } => {
                vec![("token", &**token)]
            }
            SourceKind::GcpServiceAccount { key, .. } => vec![("key", &**key)],
            SourceKind::Oauth2(oauth2) => {
                let mut nested = Vec::new();
                if let Some(secret) = &oauth2.client_secret {
                    nested.push(("client_secret", &**secret));
                }
                if let Some(token) = &oauth2.refresh_token {
                    nested.push(("refresh_token", &**token));
                }
                if let Some(assertion) = &oauth2.assertion {
                    nested.push(("assertion.private_key", &*assertion.private_key));
                }
                nested
            }
            SourceKind::Env { .. }
            | SourceKind::File { .. }
            | SourceKind::AwsSecretsManager { .. }
            | SourceKind::AwsSsm { .. }
            | SourceKind::AwsCredentials { .. } => Vec::new(),
        }
    }
}

/// Every `type` a source may have, for errors.
const SOURCE_TYPES: [&str; 9] = [
    "env",
    "file",
    "aws_secrets_manager",
    "aws_ssm",
    "aws_credentials",
    "onepassword_connect",
    "vault",
    "oauth2",
    "gcp_service_account",
];

/// `store.secret_sources`: what a secret read from the store may use as its source. A
/// store is written by admin tokens and `portcullis apply --store`, which are not the
/// gateway host's owner: unbounded, an `env` or `file` source reads any variable or file
/// of the gateway process (`/proc/self/environ`, the CA key) and injects it into a
/// request to a host the writer chose. Nothing is allowed by default; secrets in the
/// config file are not bounded.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceBounds {
    /// `env` sources whose variable name starts with one of these (`PORTCULLIS_SECRET_`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_prefixes: Vec<String>,
    /// `file` sources inside one of these absolute directories. A path with `..` is
    /// refused; an existing file is resolved (symlinks included) before it is compared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_dirs: Vec<PathBuf>,
    /// The other source types allowed (`vault`, `aws_secrets_manager`, …). Their own
    /// credential sources (a Vault token, an OAuth2 client secret) are bounded by the same
    /// rules. A writer chooses a remote source's address, so allowing a type trusts the
    /// writer with what it sends there (the gateway's AWS identity, a Vault token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
}

impl SourceBounds {
    /// Checks the bounds themselves; paths relative to `secret_sources`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (i, prefix) in self.env_prefixes.iter().enumerate() {
            if prefix.is_empty() {
                errors.push(FieldError::new(
                    format!("env_prefixes[{i}]"),
                    "an empty prefix allows every variable of the gateway process: list the \
                     prefixes of the variables meant for stored secrets",
                ));
            }
        }
        for (i, dir) in self.file_dirs.iter().enumerate() {
            if !dir.is_absolute() || has_parent_component(dir) {
                errors.push(FieldError::new(
                    format!("file_dirs[{i}]"),
                    format!("{dir:?} is not an absolute directory without `..`"),
                ));
            } else if dir.parent().is_none() {
                errors.push(FieldError::new(
                    format!("file_dirs[{i}]"),
                    "`/` allows every file of the gateway host: name the directory meant \
                     for stored secrets",
                ));
            }
        }
        for (i, kind) in self.types.iter().enumerate() {
            let problem = match kind.as_str() {
                "env" => Some("`env` sources are bounded by `env_prefixes`".to_owned()),
                "file" => Some("`file` sources are bounded by `file_dirs`".to_owned()),
                known if SOURCE_TYPES.contains(&known) => None,
                unknown => Some(format!(
                    "unknown source type {unknown:?}; types: {}",
                    SOURCE_TYPES[2..].join(", ")
                )),
            };
            if let Some(problem) = problem {
                errors.push(FieldError::new(format!("types[{i}]"), problem));
            }
        }
        errors
    }

    /// Whether a stored secret may read `source`; errors have paths relative to it.
    pub fn check(&self, source: &SourceConfig) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.check_into(source, "", &mut errors);
        errors
    }

    fn check_into(&self, source: &SourceConfig, path: &str, errors: &mut Vec<FieldError>) {
        let at = |field: &str| crate::vocab::join_path(path, field);
        match &source.kind {
            SourceKind::Env { var } => {
                if !self
                    .env_prefixes
                    .iter()
                    .any(|p| var.starts_with(p.as_str()))
                {
                    errors.push(FieldError::new(
                        at("var"),
                        format!(
                            "a stored secret may not read the environment variable {var:?}: \
                             allowed prefixes (store.secret_sources.env_prefixes): {}",
                            listed(self.env_prefixes.iter().map(String::as_str))
                        ),
                    ));
                }
            }
            SourceKind::File { path: file } => {
                if !self.file_allowed(file) {
                    errors.push(FieldError::new(
                        at("path"),
                        format!(
                            "a stored secret may not read {file:?}: allowed directories \
                             (store.secret_sources.file_dirs): {}",
                            listed(self.file_dirs.iter().map(|d| d.to_str().unwrap_or("?")))
                        ),
                    ));
                }
            }
            other => {
                let kind = other.type_name();
                if !self.types.iter().any(|t| t == kind) {
                    errors.push(FieldError::new(
                        at("type"),
                        format!(
                            "a stored secret may not use a `{kind}` source: allowed types \
                             (store.secret_sources.types): {}",
                            listed(self.types.iter().map(String::as_str))
                        ),
                    ));
                }
                for (field, nested) in other.nested() {
                    self.check_into(nested, &at(field), errors);
                }
            }
        }
    }

    fn file_allowed(&self, file: &std::path::Path) -> bool {
        if !file.is_absolute() || has_parent_component(file) {
            return false;
        }
        let inside = |path: &std::path::Path| self.file_dirs.iter().any(|d| path.starts_with(d));
        // A symlink inside an allowed directory must not lead out of it.
        match std::fs::canonicalize(file) {
            Ok(resolved) => {
                inside(file)
                    && self
                        .file_dirs
                        .iter()
                        .any(|d| std::fs::canonicalize(d).is_ok_and(|d| resolved.starts_with(d)))
            }
            Err(_) => inside(file),
        }
    }
}

fn has_parent_component(path: &std::path::Path) -> bool {
    path.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
}

fn listed<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.collect();
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuth2Grant {
    ClientCredentials,
    RefreshToken,
    JwtBearer,
}

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret (RFC 6749 §2.3.1, the default).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// `type: oauth2`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    pub token_url: String,
    pub grant: OAuth2Grant,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Box<SourceConfig>>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// For `refresh_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Box<SourceConfig>>,
    /// For `jwt_bearer` (RFC 7523): the assertion Portcullis signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertion: Option<JwtAssertion>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// A signed JWT used as an authorization grant.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAssertion {
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Default: the token URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// PEM private key.
    pub private_key: Box<SourceConfig>,
    /// `RS256` (default) or `ES256`.
    #[serde(default = "default_jwt_algorithm")]
    pub algorithm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

fn default_jwt_algorithm() -> String {
    "RS256".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<SourceConfig, String> {
        serde_norway::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn common_fields_sit_beside_each_source() {
        let s = parse("{type: env, var: GITHUB_TOKEN, ttl: 30s, json_key: token}").unwrap();
        assert_eq!(
            s.kind,
            SourceKind::Env {
                var: "GITHUB_TOKEN".into()
            }
        );
        assert_eq!(s.ttl(), Duration::from_secs(30));
        assert_eq!(s.failure_ttl(), DEFAULT_FAILURE_TTL);
        assert_eq!(s.json_key.as_deref(), Some("token"));
        let nested = parse(
            "{type: vault, address: 'http://v:8200', path: app/gh, key: token, \
              token: {type: file, path: /run/vault-token, ttl: 1m}}",
        )
        .unwrap();
        let SourceKind::Vault { token, mount, .. } = nested.kind else {
            panic!()
        };
        assert_eq!(mount, "secret");
        assert_eq!(token.ttl(), Duration::from_secs(60));
    }

    #[test]
    fn a_source_serializes_back_to_what_was_written() {
        // The control plane stores sources as JSON and reads them back.
        let written = "{type: vault, address: 'http://v:8200', path: app/gh, ttl: 30s, \
                       token: {type: env, var: VAULT_TOKEN, failure_ttl: 2s}}";
        let source = parse(written).unwrap();
        let json = serde_json::to_string(&source).unwrap();
        assert!(json.contains(r#""type":"vault""#), "{json}");
        let back: SourceConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, source);
    }

    fn bounds(yaml: &str) -> SourceBounds {
        serde_norway::from_str(yaml).unwrap()
    }

    fn refused(bounds: &SourceBounds, source: &str) -> Vec<String> {
        bounds
            .check(&parse(source).unwrap())
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn a_stored_secret_reads_nothing_by_default() {
        let none = SourceBounds::default();
        assert_eq!(refused(&none, "{type: env, var: HOME}"), ["var"]);
        assert_eq!(
            refused(&none, "{type: file, path: /proc/self/environ}"),
            ["path"]
        );
        assert_eq!(
            refused(
                &none,
                "{type: vault, address: 'http://v', path: p, token: {type: env, var: T}}"
            ),
            ["type", "token.var"]
        );
    }

    #[test]
    fn bounds_allow_what_they_name_and_nothing_around_it() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("key"), "k").unwrap();
        std::fs::write(dir.path().join("outside"), "o").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), allowed.join("link")).unwrap();
        let b = bounds(&format!(
            "{{env_prefixes: [STORED_], file_dirs: [{}], types: [vault]}}",
            allowed.display()
        ));
        assert!(b.validate().is_empty());
        assert!(refused(&b, "{type: env, var: STORED_KEY}").is_empty());
        assert_eq!(refused(&b, "{type: env, var: XSTORED_KEY}"), ["var"]);
        let file = |p: &std::path::Path| format!("{{type: file, path: '{}'}}", p.display());
        assert!(refused(&b, &file(&allowed.join("key"))).is_empty());
        assert!(refused(&b, &file(&allowed.join("not-yet"))).is_empty());
        // Out through `..` or a symlink.
        assert_eq!(refused(&b, &file(&allowed.join("../outside"))), ["path"]);
        assert_eq!(refused(&b, &file(&allowed.join("link"))), ["path"]);
        assert_eq!(refused(&b, "{type: file, path: relative/key}"), ["path"]);
        // A prefix of the directory's name is not the directory.
        let sibling = format!("{}-other/key", allowed.display());
        assert_eq!(refused(&b, &file(std::path::Path::new(&sibling))), ["path"]);
        assert!(
            refused(
                &b,
                "{type: vault, address: 'http://v', path: p, token: {type: env, var: STORED_T}}"
            )
            .is_empty()
        );
        assert_eq!(
            refused(&b, "{type: aws_credentials}"),
            ["type"],
            "the gateway's own AWS identity is not allowed unless named"
        );
    }

    #[test]
    fn bounds_that_would_allow_everything_are_refused() {
        let b =
            bounds("{env_prefixes: [''], file_dirs: [/, relative, /a/../b], types: [env, vaullt]}");
        let paths: Vec<String> = b.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "env_prefixes[0]",
                "file_dirs[0]",
                "file_dirs[1]",
                "file_dirs[2]",
                "types[0]",
                "types[1]"
            ]
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert!(
            parse("{type: vaullt}")
                .unwrap_err()
                .contains("unknown variant `vaullt`")
        );
        assert!(
            parse("{type: env, vaar: X}")
                .unwrap_err()
                .contains("unknown field `vaar`")
        );
        assert!(
            parse("{type: env, var: X, ttl: soon}")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            parse("{type: env}")
                .unwrap_err()
                .contains("missing field `var`")
        );
        assert!(parse("env").unwrap_err().contains("a source is a mapping"));
    }
}
