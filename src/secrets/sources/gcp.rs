//! `type: gcp_service_account`: a Google access token minted from a service-account key
//! with the JWT bearer grant.
//!
//! The key (a nested source holding the key JSON: `client_email`, `private_key`,
//! `private_key_id`, `token_uri`) signs an RS256 assertion — `iss` the client email,
//! `scope` the space-joined scopes, `aud` the token URI (or `token_url`), `iat`, `exp` an
//! hour later, `sub` the subject for domain-wide delegation, header `kid` the key id —
//! which is exchanged at the token URI for an access token, cached until shortly before
//! it expires.

use std::sync::Arc;

use reqwest::Url;

use super::http::{now, parse_url};
use super::jwt::{JwtAlgorithm, sign_jwt};
use super::oauth2::{JWT_BEARER_GRANT, request_token};
use super::{CompiledSource, Fetched, SourceContext};
use crate::secrets::{SecretValue, SourceCache, SourceError};
use crate::vocab::FieldError;

/// Google's token endpoint, for a key without `token_uri`.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// How long a signed assertion is valid (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;

pub struct ServiceAccountSource {
    http: reqwest::Client,
    key: Arc<CompiledSource>,
    scope: String,
    subject: Option<String>,
    /// The override, as written (the assertion's audience) and parsed.
    token_url: Option<(String, Url)>,
}

/// The parts of a service-account key JSON that are used.
#[derive(Debug)]
struct KeyFile {
    client_email: String,
    private_key: SecretValue,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

impl ServiceAccountSource {
    pub fn new(
        key: Arc<CompiledSource>,
        scopes: &[String],
        subject: Option<&str>,
        token_url: Option<&str>,
        ctx: &SourceContext,
    ) -> Result<ServiceAccountSource, Vec<FieldError>> {
        let mut errors = Vec::new();
        if scopes.is_empty() {
            errors.push(FieldError::new(
                "scopes",
                "at least one scope, e.g. https://www.googleapis.com/auth/cloud-platform",
            ));
        }
        for (i, scope) in scopes.iter().enumerate() {
            if scope.is_empty() || scope.contains(char::is_whitespace) {
                errors.push(FieldError::new(
                    format!("scopes[{i}]"),
                    format!("{scope:?} is not a scope (one word, no spaces)"),
                ));
            }
        }
        if subject.is_some_and(|s| s.trim().is_empty()) {
            errors.push(FieldError::new("subject", "must not be empty"));
        }
        let token_url = token_url.and_then(|text| {
            parse_url("token_url", text, true, &mut errors).map(|url| (text.trim().to_owned(), url))
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ServiceAccountSource {
            http: ctx.http.clone(),
            key,
            scope: scopes.join(" "),
            subject: subject.map(str::to_owned),
            token_url,
        })
    }

    pub async fn fetch(&self, cache: &SourceCache) -> Result<Fetched, SourceError> {
        let json = Box::pin(cache.resolve(&self.key))
            .await
            .map_err(|e| SourceError::new(format!("key: {e}")))?;
        let key = parse_key(&json).map_err(|e| SourceError::new(format!("key: {e}")))?;
        let (audience, url) = match (&self.token_url, &key.token_uri) {
            (Some((text, url)), _) => (text.clone(), url.clone()),
            (None, uri) => {
                let text = uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI).trim();
                let mut errors = Vec::new();
                let url = parse_url("token_uri", text, true, &mut errors).ok_or_else(|| {
                    SourceError::new("key: token_uri is not an http or https URL")
                })?;
                (text.to_owned(), url)
            }
        };
        let iat = now();
        let mut claims = serde_json::json!({
            "iss": key.client_email,
            "scope": self.scope,
            "aud": audience,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME,
        });
        if let Some(sub) = &self.subject {
            claims["sub"] = sub.clone().into();
        }
        let assertion = sign_jwt(
            &key.private_key,
            JwtAlgorithm::Rs256,
            key.private_key_id.as_deref(),
            &claims,
        )
        .map_err(|e| SourceError::new(format!("key: private_key: {e}")))?;
        let form = [
            ("grant_type", JWT_BEARER_GRANT.to_owned()),
            ("assertion", assertion.expose().to_owned()),
        ];
        let token = request_token(&self.http, &url, &form, None, &[assertion]).await?;
        Ok(Fetched {
            value: token.access_token,
            expires_in: token.expires_in,
        })
    }
}

/// Reads a key JSON. Errors name fields and positions, never content.
fn parse_key(json: &SecretValue) -> Result<KeyFile, String> {
    let value: serde_json::Value = serde_json::from_str(json.expose()).map_err(|e| {
        format!(
            "not a service-account key JSON (invalid JSON at line {} column {})",
            e.line(),
            e.column()
        )
    })?;
    let Some(object) = value.as_object() else {
        return Err("not a service-account key JSON (not an object)".into());
    };
    let text = |field: &str| -> Result<Option<String>, String> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{field}` is not a non-empty string")),
        }
    };
    let required = |field: &str| {
        text(field)?.ok_or_else(|| format!("`{field}` is missing; is this a service-account key?"))
    };
    if let Some(kind) = text("type")?
        && kind != "service_account"
    {
        return Err(format!(
            "`type` is {kind:?}; a `service_account` key is needed"
        ));
    }
    Ok(KeyFile {
        client_email: required("client_email")?,
        private_key: SecretValue::new(required("private_key")?),
        private_key_id: text("private_key_id")?,
        token_uri: text("token_uri")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SourceConfig;

    #[test]
    fn key_files_are_read_without_echoing_content() {
        let key = parse_key(&SecretValue::new(
            r#"{"type":"service_account","client_email":"sa@p.iam.gserviceaccount.com",
                "private_key":"-----BEGIN PRIVATE KEY-----\nX\n-----END PRIVATE KEY-----\n",
                "private_key_id":"abc","token_uri":"https://oauth2.googleapis.com/token"}"#,
        ))
        .unwrap();
        assert_eq!(key.client_email, "sa@p.iam.gserviceaccount.com");
        assert_eq!(key.private_key_id.as_deref(), Some("abc"));
        let err = parse_key(&SecretValue::new(r#"{"private_key": "s3cr3t""#)).unwrap_err();
        assert!(err.starts_with("not a service-account key JSON"), "{err}");
        assert!(!err.contains("s3cr3t"));
        let err = parse_key(&SecretValue::new(r#"{"private_key": "s3cr3t"}"#)).unwrap_err();
        assert_eq!(
            err,
            "`client_email` is missing; is this a service-account key?"
        );
        let err = parse_key(&SecretValue::new(r#"{"type": "authorized_user"}"#)).unwrap_err();
        assert!(err.contains("service_account"), "{err}");
    }

    #[test]
    fn config_mistakes_are_named() {
        let config: SourceConfig = serde_norway::from_str(
            "{type: gcp_service_account, key: {type: env, var: K}, scopes: [], subject: '', \
              token_url: 'not a url'}",
        )
        .unwrap();
        let errors = super::super::compile(&config, &SourceContext::new()).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["scopes", "subject", "token_url"]);
    }
}
