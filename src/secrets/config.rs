//! Where a credential comes from, as written in the config. Every source reads on the
//! gateway host; values never travel to a control plane.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_norway::Value;

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

/// A duration written as text: `30s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct DurationText(pub Duration);

impl TryFrom<String> for DurationText {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(DurationText)
            .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. \"30s\" or \"5m\""))
    }
}

impl From<DurationText> for String {
    fn from(d: DurationText) -> String {
        humantime::format_duration(d.0).to_string()
    }
}

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&humantime::format_duration(self.0).to_string())
    }
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
