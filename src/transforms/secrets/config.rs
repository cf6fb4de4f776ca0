//! The `secrets:` section: credentials injected at the edge. Secrets are independent of
//! policies: each has its own match tags and request rules (its blast radius is the union
//! of its rules), a source, and an injection style.

use serde::{Deserialize, Serialize};

use super::template::{Template, Var};
use crate::policy::rule::{RuleConfig, Tag};
use crate::secrets::SourceConfig;
use crate::vocab::FieldError;

/// One secret.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    /// Unique; appears in audit annotations (`injected`, `swapped`, `signed`).
    pub name: String,
    /// Only workloads carrying every tag get this credential; empty: every workload.
    #[serde(default)]
    pub match_tags: Vec<Tag>,
    /// Only requests matching a rule get the credential (rules OR-combine). Required:
    /// scope a credential as narrowly as you can.
    pub rules: Vec<RuleConfig>,
    /// Where the value is read, on the gateway host: `{type: env, var: NAME}`, `file`,
    /// `aws_secrets_manager`, `aws_ssm`, `vault`, `onepassword_connect`, `oauth2`,
    /// `gcp_service_account`, … (docs/secrets.md). Never the value itself.
    #[schema(value_type = Object)]
    pub source: SourceConfig,
    /// How the value reaches the upstream: `{style: bearer}`, `basic`, `custom`,
    /// `path_token`, `proxy_token`, `aws_sigv4`, `hmac` (docs/secrets.md).
    #[schema(value_type = Object)]
    pub inject: InjectConfig,
    /// Also put this credential on requests that leave over plaintext HTTP. Off by default:
    /// such a request is refused (403 `credential_over_plaintext`) rather than sent with
    /// the credential in clear.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plaintext: bool,
}

/// Where a proxy token is looked for and swapped: one named header (`header:authorization`),
/// one named query parameter (`query:key`), the path, or the body. Named, because an
/// upstream that echoes a request (debug endpoints, error pages) hands back whatever was
/// swapped: a placeholder anywhere else stays a placeholder.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum Location {
    /// The header of this name (lower case).
    Header(String),
    /// The query parameter of this name.
    Query(String),
    Path,
    /// The request body (buffered for requests this secret matches).
    Body,
}

impl TryFrom<String> for Location {
    type Error = String;

    fn try_from(text: String) -> Result<Location, String> {
        let whole = |what: &str, example: &str| {
            format!(
                "`{what}` alone would swap the placeholder in every {what}, and an upstream \
                 that echoes one hands the credential back: name it, e.g. `{what}:{example}`"
            )
        };
        match text.split_once(':') {
            None if text == "path" => Ok(Location::Path),
            None if text == "body" => Ok(Location::Body),
            None if text == "header" => Err(whole("header", "authorization")),
            None if text == "query" => Err(whole("query", "api_key")),
            Some(("header", name)) if !name.is_empty() => {
                Ok(Location::Header(name.to_ascii_lowercase()))
            }
            Some(("query", name)) if !name.is_empty() => Ok(Location::Query(name.to_owned())),
            _ => Err(format!(
                "unknown location {text:?}: expected `header:<name>`, `query:<name>`, `path` \
                 or `body`"
            )),
        }
    }
}

impl From<Location> for String {
    fn from(location: Location) -> String {
        match location {
            Location::Header(name) => format!("header:{name}"),
            Location::Query(name) => format!("query:{name}"),
            Location::Path => "path".into(),
            Location::Body => "body".into(),
        }
    }
}

/// By default a proxy token is swapped only where a bearer token goes.
fn default_locations() -> Vec<Location> {
    vec![Location::Header("authorization".into())]
}

fn default_format() -> Template {
    Template::parse("{{ value }}").expect("a valid template")
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithm {
    #[default]
    Sha256,
    Sha512,
    Sha1,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

/// How the value reaches the upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "style", rename_all = "snake_case", deny_unknown_fields)]
pub enum InjectConfig {
    /// `Authorization: Bearer <value>`.
    Bearer {},
    /// `Authorization: Basic base64(username:value)`.
    Basic { username: String },
    /// A header or a query parameter (exactly one), formatted by a template with
    /// `{{ value }}` and the `base64` helper (`{{ base64 value }}`; Go-template spellings
    /// `{{ .Value }}` work too).
    Custom {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        header: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query: Option<String>,
        #[serde(default = "default_format")]
        format: Template,
    },
    /// Replace a placeholder you choose in the URL path (`/bot<TOKEN>/sendMessage`).
    PathToken { placeholder: String },
    /// The workload holds `placeholder`; it is replaced by the real value where it appears
    /// in one of `locations` (default `[header:authorization]`), and left as it is
    /// anywhere else. `require: true` refuses a matching request that does not carry it, or
    /// that carries anything else in a declared header or query parameter, so a workload
    /// cannot use its own credential.
    ProxyToken {
        placeholder: String,
        #[serde(default = "default_locations")]
        locations: Vec<Location>,
        #[serde(default)]
        require: bool,
    },
    /// AWS Signature Version 4 for `service` in `region`: re-signs requests the workload
    /// signed with placeholder keys, signs unsigned ones, and refuses requests signed for
    /// another service or region. The value is JSON with `access_key_id`,
    /// `secret_access_key` and optionally `session_token` (see source `aws_credentials`).
    AwsSigv4 { service: String, region: String },
    /// An HMAC of a templated message, in a header. Message variables: `method`, `path`,
    /// `query`, `path_and_query`, `host`, `timestamp` (Unix seconds), `body_sha256` (hex).
    Hmac {
        header: String,
        message: Template,
        #[serde(default)]
        algorithm: HmacAlgorithm,
        #[serde(default)]
        encoding: Encoding,
        /// Written before the signature in the header, e.g. `sha256=`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        /// Also send the timestamp used, in this header.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp_header: Option<String>,
    },
}

impl InjectConfig {
    pub fn style(&self) -> &'static str {
        match self {
            InjectConfig::Bearer {} => "bearer",
            InjectConfig::Basic { .. } => "basic",
            InjectConfig::Custom { .. } => "custom",
            InjectConfig::PathToken { .. } => "path_token",
            InjectConfig::ProxyToken { .. } => "proxy_token",
            InjectConfig::AwsSigv4 { .. } => "aws_sigv4",
            InjectConfig::Hmac { .. } => "hmac",
        }
    }
}

/// A placeholder shorter than this could match by accident.
const MIN_PLACEHOLDER: usize = 8;

/// Headers a secret may not write: they route or frame the request.
fn header_reserved(name: &str) -> bool {
    crate::transforms::routes_or_frames(&name.to_ascii_lowercase())
}

/// Checks what deserialization cannot; paths relative to the secret.
pub fn validate_secret(secret: &SecretConfig) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(problem) = crate::vocab::names::name_problem("secret", &secret.name) {
        errors.push(FieldError::new("name", problem));
    }
    if secret.rules.is_empty() {
        errors.push(FieldError::new(
            "rules",
            "a secret needs at least one rule: its rules are its blast radius",
        ));
    }
    errors.extend(crate::transforms::body_conditions_unsupported(
        &secret.rules,
        "a secret's rules match host, paths and methods",
    ));
    let header = |field: &str, name: &str, errors: &mut Vec<FieldError>| {
        if !crate::request::is_header_name(name) {
            errors.push(FieldError::new(
                field,
                format!("{name:?} is not a header name"),
            ));
        } else if header_reserved(name) {
            errors.push(FieldError::new(
                field,
                format!("a secret cannot set {name:?}"),
            ));
        }
    };
    let placeholder = |p: &str, errors: &mut Vec<FieldError>| {
        if p.len() < MIN_PLACEHOLDER {
            errors.push(FieldError::new(
                "inject.placeholder",
                format!(
                    "placeholder {p:?} is shorter than {MIN_PLACEHOLDER} characters and could \
                     match by accident; use something like `ptok_github_x7Q2`"
                ),
            ));
        } else if p.chars().any(|c| !matches!(c, '!'..='~')) {
            errors.push(FieldError::new(
                "inject.placeholder",
                "a placeholder is printable ASCII without spaces",
            ));
        }
    };
    match &secret.inject {
        InjectConfig::Bearer {} | InjectConfig::Basic { .. } => {}
        InjectConfig::Custom {
            header: h,
            query,
            format,
        } => {
            if !format.vars().any(|v| v == Var::Value) {
                errors.push(FieldError::new(
                    "inject.format",
                    "the format never uses {{ value }}: the credential would not be sent",
                ));
            }
            if format.vars().any(Var::is_request_var) {
                errors.push(FieldError::new(
                    "inject.format",
                    "a custom format may only use {{ value }} (request variables are for hmac)",
                ));
            }
            match (h, query) {
                (Some(name), None) => header("inject.header", name, &mut errors),
                (None, Some(q)) if q.is_empty() => errors.push(FieldError::new(
                    "inject.query",
                    "query parameter name is empty",
                )),
                (None, Some(_)) => {}
                _ => errors.push(FieldError::new(
                    "inject",
                    "`custom` needs exactly one of `header` or `query`",
                )),
            }
        }
        InjectConfig::PathToken { placeholder: p } => placeholder(p, &mut errors),
        InjectConfig::ProxyToken {
            placeholder: p,
            locations,
            ..
        } => {
            placeholder(p, &mut errors);
            if locations.is_empty() {
                errors.push(FieldError::new(
                    "inject.locations",
                    "list at least one location",
                ));
            }
            for (i, location) in locations.iter().enumerate() {
                if let Location::Header(name) = location {
                    let field = format!("inject.locations[{i}]");
                    if name == "proxy-authorization" {
                        errors.push(FieldError::new(
                            &field,
                            "Proxy-Authorization is the workload's credential for the \
                             gateway, stripped before egress",
                        ));
                    } else {
                        header(&field, name, &mut errors);
                    }
                }
            }
        }
        InjectConfig::AwsSigv4 { service, region } => {
            for (field, value) in [("inject.service", service), ("inject.region", region)] {
                if value.is_empty()
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    errors.push(FieldError::new(
                        field,
                        format!("{value:?} is not an AWS name"),
                    ));
                }
            }
        }
        InjectConfig::Hmac {
            header: h,
            timestamp_header,
            message,
            ..
        } => {
            if message.vars().any(|v| v == Var::Value) {
                errors.push(FieldError::new(
                    "inject.message",
                    "the message must not contain {{ value }}: it is the HMAC key",
                ));
            }
            header("inject.header", h, &mut errors);
            if let Some(t) = timestamp_header {
                header("inject.timestamp_header", t, &mut errors);
            }
        }
    }
    errors
}
