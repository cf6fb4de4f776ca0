//! Who is calling the admin API: bearer tokens with a role (`admin:` in the config),
//! compared in constant time.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::token_digest;
use crate::vocab::{DurationText, FieldError, duplicate_names};

/// The admin API's callers. Without tokens, every `/v1/` call but the OpenAPI document
/// is refused (401).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default)]
    pub tokens: Vec<AdminTokenConfig>,
    /// How long a console sign-in lasts (docs/console.md).
    #[serde(default)]
    pub sessions: SessionConfig,
    /// Console single sign-on (docs/console.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<super::oidc::OidcConfig>,
}

/// The lifetime of a console session: it ends after `idle_timeout` without a request, and
/// `absolute_timeout` after sign-in whatever happens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: DurationText,
    #[serde(default = "default_absolute_timeout")]
    pub absolute_timeout: DurationText,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            idle_timeout: default_idle_timeout(),
            absolute_timeout: default_absolute_timeout(),
        }
    }
}

fn default_idle_timeout() -> DurationText {
    DurationText(Duration::from_secs(30 * 60))
}

fn default_absolute_timeout() -> DurationText {
    DurationText(Duration::from_secs(12 * 60 * 60))
}

impl SessionConfig {
    /// Errors under `admin.sessions`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (field, value) in [
            ("idle_timeout", self.idle_timeout.0),
            ("absolute_timeout", self.absolute_timeout.0),
        ] {
            if value < Duration::from_secs(1) || value > Duration::from_secs(30 * 24 * 60 * 60) {
                errors.push(FieldError::new(
                    format!("admin.sessions.{field}"),
                    format!(
                        "{} is out of range: between 1s and 30d",
                        DurationText(value)
                    ),
                ));
            }
        }
        if self.idle_timeout.0 > self.absolute_timeout.0 {
            errors.push(FieldError::new(
                "admin.sessions.idle_timeout",
                format!(
                    "{} is longer than absolute_timeout ({}): a session never idles that long",
                    self.idle_timeout, self.absolute_timeout
                ),
            ));
        }
        errors
    }
}

/// One admin bearer token.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenConfig {
    /// Recorded as the operator of every change made with this token.
    pub name: String,
    /// `viewer` reads; `editor` also changes policies and enrollment tokens; `admin` also
    /// changes secrets (which choose what the gateway host reads and where it is sent).
    pub role: AdminRole,
    /// Where the token comes from: `env`, `file` or `sha256`, as for proxy tokens.
    pub token: super::TokenSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    Viewer,
    Editor,
    Admin,
}

impl AdminRole {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Viewer => "viewer",
            AdminRole::Editor => "editor",
            AdminRole::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name: the operator recorded with every change.
    pub name: Arc<str>,
    pub role: AdminRole,
}

/// Why a call was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `Authorization: Bearer <admin token>`")]
    Missing,
    #[error("the Authorization header is not `Bearer <admin token>`")]
    Malformed,
    #[error("the admin token is not recognised")]
    Unknown,
}

struct AdminToken {
    digest: [u8; 32],
    caller: Caller,
}

/// The compiled admin tokens, how long a console session lasts, and the single sign-on
/// issuer.
#[derive(Default)]
pub struct AdminAuth {
    tokens: Vec<AdminToken>,
    pub sessions: SessionConfig,
    pub oidc: Option<Arc<super::oidc::OidcProvider>>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl AdminAuth {
    /// Reads every token's source; errors have paths under `admin.tokens[N]`.
    pub fn compile(
        config: &AdminConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AdminAuth, Vec<FieldError>> {
        let configs = &config.tokens;
        let mut errors = config.sessions.validate();
        errors.extend(duplicate_names(
            "admin.tokens",
            "admin token",
            configs.iter().map(|t| t.name.as_str()),
        ));
        let mut tokens: Vec<AdminToken> = Vec::with_capacity(configs.len());
        for (i, config) in configs.iter().enumerate() {
            let path = format!("admin.tokens[{i}]");
            if config.name.trim().is_empty() {
                errors.push(FieldError::new(
                    format!("{path}.name"),
                    "an admin token needs a name",
                ));
            }
            match token_digest(&config.token, env) {
                Ok(digest) => {
                    if tokens.iter().any(|t| bool::from(t.digest.ct_eq(&digest))) {
                        errors.push(FieldError::new(
                            format!("{path}.token"),
                            "this token is already used by another admin token",
                        ));
                    }
                    tokens.push(AdminToken {
                        digest,
                        caller: Caller {
                            name: Arc::from(config.name.as_str()),
                            role: config.role,
                        },
                    });
                }
                Err(e) => errors.push(e.under(&format!("{path}.token"))),
            }
        }
        let oidc = match &config.oidc {
            Some(oidc) => match super::oidc::OidcProvider::compile(oidc, env) {
                Ok(provider) => Some(Arc::new(provider)),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            },
            None => None,
        };
        if errors.is_empty() {
            Ok(AdminAuth {
                tokens,
                sessions: config.sessions,
                oidc,
            })
        } else {
            Err(errors)
        }
    }

    /// Authenticates an `Authorization` header value. Every configured token is compared,
    /// in constant time, whichever matches.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        self.authenticate_token(token)
    }

    /// Authenticates a bare admin token (a console sign-in).
    pub fn authenticate_token(&self, token: &str) -> Result<Caller, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Malformed);
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for candidate in &self.tokens {
            if bool::from(candidate.digest.ct_eq(&digest)) {
                found = Some(&candidate.caller);
            }
        }
        found.cloned().ok_or(AuthError::Unknown)
    }

    /// The caller a token named `name` makes now: a console session signed in with a token
    /// follows it, so a token removed or demoted in the config ends or narrows its sessions.
    pub fn caller_named(&self, name: &str) -> Option<Caller> {
        self.tokens
            .iter()
            .find(|t| &*t.caller.name == name)
            .map(|t| t.caller.clone())
    }
}

use sha2::Digest as _;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TokenSource;

    fn tokens(tokens: Vec<AdminTokenConfig>) -> AdminConfig {
        AdminConfig {
            tokens,
            ..AdminConfig::default()
        }
    }

    #[test]
    fn session_lifetimes_are_bounded_and_ordered() {
        let config: AdminConfig =
            serde_norway::from_str("sessions: {idle_timeout: 2h, absolute_timeout: 1h}").unwrap();
        let errors = AdminAuth::compile(&config, &|_| None).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "admin.sessions.idle_timeout");
        assert!(
            errors[0].message.contains("longer than absolute_timeout"),
            "{errors:?}"
        );
        let config: AdminConfig = serde_norway::from_str("sessions: {idle_timeout: 0s}").unwrap();
        let errors = AdminAuth::compile(&config, &|_| None).unwrap_err();
        assert!(errors[0].message.contains("out of range"), "{errors:?}");
        let defaults = AdminAuth::compile(&AdminConfig::default(), &|_| None).unwrap();
        assert_eq!(defaults.sessions.idle_timeout.0.as_secs(), 1800);
        assert_eq!(defaults.sessions.absolute_timeout.0.as_secs(), 12 * 3600);
    }

    fn token(name: &str, role: AdminRole, env: &str) -> AdminTokenConfig {
        AdminTokenConfig {
            name: name.into(),
            role,
            token: TokenSource {
                env: Some(env.into()),
                file: None,
                sha256: None,
            },
        }
    }

    #[test]
    fn bearer_tokens_map_to_their_caller() {
        let env = |var: &str| match var {
            "A" => Some("alice-token".to_owned()),
            "B" => Some("bob-token".to_owned()),
            _ => None,
        };
        let auth = AdminAuth::compile(
            &tokens(vec![
                token("alice", AdminRole::Editor, "A"),
                token("bob", AdminRole::Viewer, "B"),
            ]),
            &env,
        )
        .unwrap();
        let caller = auth.authenticate(Some(b"Bearer alice-token")).unwrap();
        assert_eq!((&*caller.name, caller.role), ("alice", AdminRole::Editor));
        assert_eq!(
            auth.authenticate(Some(b"bearer bob-token")).unwrap().role,
            AdminRole::Viewer
        );
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert_eq!(
            auth.authenticate(Some(b"Basic YTpi")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.authenticate(Some(b"Bearer alice-token2")),
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn a_missing_source_or_a_reused_token_is_an_error_with_its_path() {
        let env = |var: &str| (var == "A").then(|| "same".to_owned());
        let errors = AdminAuth::compile(
            &tokens(vec![
                token("a", AdminRole::Editor, "A"),
                token("b", AdminRole::Editor, "A"),
                token("c", AdminRole::Editor, "MISSING"),
            ]),
            &env,
        )
        .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["admin.tokens[1].token", "admin.tokens[2].token.env"]
        );
    }
}
