//! `type: oauth2`: access tokens minted by Portcullis (client credentials, refresh token,
//! JWT bearer), cached until shortly before they expire.
//!
//! - One `POST` to `token_url` with a form body: `grant_type`, the grant's own field
//!   (`refresh_token`, or a signed `assertion` for RFC 7523), `scope` (space-joined) and
//!   `audience` when set.
//! - Client authentication `basic` (RFC 6749 §2.3.1: id and secret form-urlencoded, then
//!   HTTP Basic) or `body` (`client_id` and `client_secret` in the form). A client with an
//!   id and no secret sends `client_id` in the form.
//! - The answer's `access_token` is the value; `expires_in` tells the cache when to drop
//!   it. `token_type` is not checked: the secret's injection style decides how the token
//!   is presented.
//! - A refresh token the server rotates (a new `refresh_token` in the answer) is used for
//!   the next refresh, until the configured source yields a different value.
//! - Concurrent requests for one token share one mint: the cache coalesces them.
//!
//! The token-endpoint call here also serves `gcp_service_account`; assertions are signed
//! by `super::jwt`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use reqwest::Url;
use reqwest::header::HeaderValue;

use super::http::{clip, now, parse_url, read_body, request_failed, sensitive_header};
use super::jwt::{JwtAlgorithm, sign_jwt};
use super::{CompiledSource, Fetched, SourceContext, nested};
use crate::secrets::config::{ClientAuth, OAuth2Config, OAuth2Grant};
use crate::secrets::{SecretValue, SourceCache, SourceError};
use crate::vocab::FieldError;

/// The RFC 7523 grant type.
pub(super) const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// How long a signed assertion is valid.
const ASSERTION_LIFETIME: u64 = 300;

pub struct OAuth2Source {
    http: reqwest::Client,
    token_url: Url,
    grant: OAuth2Grant,
    client_id: Option<String>,
    client_secret: Option<Arc<CompiledSource>>,
    client_auth: ClientAuth,
    refresh_token: Option<Arc<CompiledSource>>,
    assertion: Option<Assertion>,
    scope: Option<String>,
    audience: Option<String>,
    /// A refresh token the server issued in place of the configured one: (the configured
    /// value it replaced, the new one).
    rotated: Mutex<Option<(SecretValue, SecretValue)>>,
}

struct Assertion {
    issuer: String,
    subject: Option<String>,
    audience: String,
    private_key: Arc<CompiledSource>,
    algorithm: JwtAlgorithm,
    key_id: Option<String>,
}

impl OAuth2Source {
    pub fn new(
        config: &OAuth2Config,
        ctx: &SourceContext,
    ) -> Result<OAuth2Source, Vec<FieldError>> {
        let mut errors = Vec::new();
        let token_url = parse_url("token_url", &config.token_url, true, &mut errors);
        let mut compile = |source: &Option<Box<crate::secrets::SourceConfig>>, field: &str| {
            source
                .as_ref()
                .and_then(|s| nested(s, field, ctx).map_err(|e| errors.extend(e)).ok())
        };
        let client_secret = compile(&config.client_secret, "client_secret");
        let refresh_token = compile(&config.refresh_token, "refresh_token");
        let grant_name = match config.grant {
            OAuth2Grant::ClientCredentials => "client_credentials",
            OAuth2Grant::RefreshToken => "refresh_token",
            OAuth2Grant::JwtBearer => "jwt_bearer",
        };
        let needs = |field: &str, errors: &mut Vec<FieldError>| {
            errors.push(FieldError::new(
                field,
                format!("required for grant {grant_name}"),
            ));
        };
        let client_id = config.client_id.clone();
        if client_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
            errors.push(FieldError::new("client_id", "must not be empty"));
        }
        match config.grant {
            OAuth2Grant::ClientCredentials => {
                if client_id.is_none() {
                    needs("client_id", &mut errors);
                }
                if config.client_secret.is_none() {
                    needs("client_secret", &mut errors);
                }
            }
            OAuth2Grant::RefreshToken if config.refresh_token.is_none() => {
                needs("refresh_token", &mut errors);
            }
            OAuth2Grant::JwtBearer if config.assertion.is_none() => {
                needs("assertion", &mut errors);
            }
            _ => {}
        }
        if config.client_secret.is_some() && client_id.is_none() {
            errors.push(FieldError::new("client_id", "required with client_secret"));
        }
        if config.refresh_token.is_some() && config.grant != OAuth2Grant::RefreshToken {
            errors.push(FieldError::new(
                "refresh_token",
                "only used with grant refresh_token",
            ));
        }
        if config.assertion.is_some() && config.grant != OAuth2Grant::JwtBearer {
            errors.push(FieldError::new(
                "assertion",
                "only used with grant jwt_bearer",
            ));
        }
        for (i, scope) in config.scopes.iter().enumerate() {
            if scope.is_empty() || scope.contains(char::is_whitespace) {
                errors.push(FieldError::new(
                    format!("scopes[{i}]"),
                    format!("{scope:?} is not a scope (one word, no spaces)"),
                ));
            }
        }
        if config
            .audience
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            errors.push(FieldError::new("audience", "must not be empty"));
        }
        let assertion = config.assertion.as_ref().and_then(|a| {
            let mut own = Vec::new();
            if a.issuer.trim().is_empty() {
                own.push(FieldError::new("issuer", "must not be empty"));
            }
            if a.subject.as_deref().is_some_and(|s| s.trim().is_empty()) {
                own.push(FieldError::new("subject", "must not be empty"));
            }
            if a.audience.as_deref().is_some_and(|s| s.trim().is_empty()) {
                own.push(FieldError::new("audience", "must not be empty"));
            }
            if a.key_id.as_deref().is_some_and(|s| s.trim().is_empty()) {
                own.push(FieldError::new("key_id", "must not be empty"));
            }
            let algorithm = JwtAlgorithm::parse(&a.algorithm).ok_or_else(|| {
                own.push(FieldError::new(
                    "algorithm",
                    format!("{:?} is not supported; use RS256 or ES256", a.algorithm),
                ));
            });
            let private_key = nested(&a.private_key, "private_key", ctx).map_err(|e| own.extend(e));
            let done = match (algorithm, private_key, own.is_empty()) {
                (Ok(algorithm), Ok(private_key), true) => Some(Assertion {
                    issuer: a.issuer.clone(),
                    subject: a.subject.clone(),
                    audience: a
                        .audience
                        .clone()
                        .unwrap_or_else(|| config.token_url.trim().to_owned()),
                    private_key,
                    algorithm,
                    key_id: a.key_id.clone(),
                }),
                _ => None,
            };
            errors.extend(own.into_iter().map(|e| e.under("assertion")));
            done
        });
        let Some(token_url) = token_url.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        Ok(OAuth2Source {
            http: ctx.http.clone(),
            token_url,
            grant: config.grant,
            client_id,
            client_secret,
            client_auth: config.client_auth,
            refresh_token,
            assertion,
            scope: (!config.scopes.is_empty()).then(|| config.scopes.join(" ")),
            audience: config.audience.clone(),
            rotated: Mutex::new(None),
        })
    }

    pub async fn fetch(&self, cache: &SourceCache) -> Result<Fetched, SourceError> {
        let mut form: Vec<(&'static str, String)> = Vec::new();
        // Values that must not appear in an error message, even if the server echoes them.
        let mut scrub: Vec<SecretValue> = Vec::new();
        let mut refresh_used = None;
        match self.grant {
            OAuth2Grant::ClientCredentials => {
                form.push(("grant_type", "client_credentials".into()))
            }
            OAuth2Grant::RefreshToken => {
                let (configured, current) = self.current_refresh_token(cache).await?;
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", current.expose().to_owned()));
                scrub.push(current.clone());
                refresh_used = Some((configured, current));
            }
            OAuth2Grant::JwtBearer => {
                let assertion = self.sign_assertion(cache).await?;
                form.push(("grant_type", JWT_BEARER_GRANT.into()));
                form.push(("assertion", assertion.expose().to_owned()));
                scrub.push(assertion);
            }
        }
        if let Some(scope) = &self.scope {
            form.push(("scope", scope.clone()));
        }
        if let Some(audience) = &self.audience {
            form.push(("audience", audience.clone()));
        }
        let mut authorization = None;
        match (&self.client_id, &self.client_secret) {
            (Some(id), Some(secret)) => {
                let secret = Box::pin(cache.resolve(secret))
                    .await
                    .map_err(|e| SourceError::new(format!("client_secret: {e}")))?;
                scrub.push(secret.clone());
                match self.client_auth {
                    ClientAuth::Basic => authorization = Some(basic_auth(id, &secret)?),
                    ClientAuth::Body => {
                        form.push(("client_id", id.clone()));
                        form.push(("client_secret", secret.expose().to_owned()));
                    }
                }
            }
            (Some(id), None) => form.push(("client_id", id.clone())),
            _ => {}
        }
        let token =
            request_token(&self.http, &self.token_url, &form, authorization, &scrub).await?;
        if let (Some((configured, used)), Some(new)) = (refresh_used, token.refresh_token)
            && new != used
            && let Ok(mut rotated) = self.rotated.lock()
        {
            *rotated = Some((configured, new));
        }
        Ok(Fetched {
            value: token.access_token,
            expires_in: token.expires_in,
        })
    }

    /// The configured refresh token, and the one to send (a rotated one while the
    /// configured value is unchanged).
    async fn current_refresh_token(
        &self,
        cache: &SourceCache,
    ) -> Result<(SecretValue, SecretValue), SourceError> {
        let Some(source) = &self.refresh_token else {
            return Err(SourceError::new("no refresh_token configured"));
        };
        let configured = Box::pin(cache.resolve(source))
            .await
            .map_err(|e| SourceError::new(format!("refresh_token: {e}")))?;
        let rotated = self.rotated.lock().ok().and_then(|r| r.clone());
        let current = match rotated {
            Some((replaced, new)) if replaced == configured => new,
            _ => configured.clone(),
        };
        Ok((configured, current))
    }

    async fn sign_assertion(&self, cache: &SourceCache) -> Result<SecretValue, SourceError> {
        let Some(a) = &self.assertion else {
            return Err(SourceError::new("no assertion configured"));
        };
        let key = Box::pin(cache.resolve(&a.private_key))
            .await
            .map_err(|e| SourceError::new(format!("assertion.private_key: {e}")))?;
        let iat = now();
        let mut claims = serde_json::json!({
            "iss": a.issuer,
            "aud": a.audience,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        if let Some(sub) = &a.subject {
            claims["sub"] = sub.clone().into();
        }
        sign_jwt(&key, a.algorithm, a.key_id.as_deref(), &claims)
            .map_err(|e| SourceError::new(format!("assertion.private_key: {e}")))
    }
}

/// RFC 6749 §2.3.1: `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn basic_auth(id: &str, secret: &SecretValue) -> Result<HeaderValue, SourceError> {
    let pair = SecretValue::new(format!(
        "{}:{}",
        form_urlencode(id),
        form_urlencode(secret.expose())
    ));
    let encoded = SecretValue::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair.expose())
    ));
    sensitive_header(&encoded, "client credentials")
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What a token endpoint issued.
pub(super) struct Token {
    pub access_token: SecretValue,
    pub expires_in: Option<Duration>,
    pub refresh_token: Option<SecretValue>,
}

/// POSTs `form` to a token endpoint and reads the token. Errors carry the status and the
/// endpoint's `error` / `error_description` (clipped), with every `scrub` value removed.
pub(super) async fn request_token(
    http: &reqwest::Client,
    url: &Url,
    form: &[(&'static str, String)],
    authorization: Option<HeaderValue>,
    scrub: &[SecretValue],
) -> Result<Token, SourceError> {
    let mut request = http
        .post(url.clone())
        .header("accept", "application/json")
        .form(form);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = request.send().await.map_err(|e| request_failed(&e))?;
    let status = response.status();
    let body = read_body(response).await?;
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let text = |key: &str| {
        parsed
            .as_ref()
            .and_then(|p| p.get(key))
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let access_token = text("access_token");
    if !status.is_success() || access_token.is_none() {
        let mut message = format!("HTTP {}", status.as_u16());
        match (text("error"), text("error_description")) {
            (Some(error), Some(description)) => {
                message.push_str(&format!(": {error}: {description}"));
            }
            (Some(error), None) => message.push_str(&format!(": {error}")),
            (None, _) if status.is_success() && parsed.is_none() => {
                message.push_str(": the response is not JSON");
            }
            (None, _) if status.is_success() => {
                message.push_str(": the response has no access_token")
            }
            _ => {}
        }
        for value in scrub {
            if !value.is_empty() {
                message = message.replace(value.expose(), "<redacted>");
            }
        }
        return Err(SourceError::new(clip(&message)));
    }
    let expires_in = parsed
        .as_ref()
        .and_then(|p| p.get("expires_in"))
        .and_then(|v| {
            match v {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
            .filter(|s| s.is_finite())
            .map(|s| Duration::from_secs_f64(s.max(0.0)))
        });
    Ok(Token {
        access_token: SecretValue::new(access_token.unwrap_or_default()),
        expires_in,
        refresh_token: text("refresh_token").map(SecretValue::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SourceConfig;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn client_credentials_are_form_urlencoded() {
        assert_eq!(form_urlencode("a b+c/d:é*-._"), "a+b%2Bc%2Fd%3A%C3%A9*-._");
        let header = basic_auth("my id", &SecretValue::new("p:w/d")).unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode("my+id:p%3Aw%2Fd");
        assert_eq!(header.to_str().unwrap(), format!("Basic {expected}"));
        assert!(header.is_sensitive());
    }

    fn compile(yaml: &str) -> Result<Arc<CompiledSource>, Vec<FieldError>> {
        let config: SourceConfig = serde_norway::from_str(yaml).unwrap();
        super::super::compile(&config, &SourceContext::new())
    }

    fn paths(yaml: &str) -> Vec<String> {
        compile(yaml)
            .unwrap_err()
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn each_grant_names_what_it_lacks() {
        assert_eq!(
            paths("{type: oauth2, token_url: 'ftp://x', grant: client_credentials}"),
            ["token_url", "client_id", "client_secret"]
        );
        assert_eq!(
            paths("{type: oauth2, token_url: 'http://x/t', grant: refresh_token, scopes: ['a b']}"),
            ["refresh_token", "scopes[0]"]
        );
        assert_eq!(
            paths(
                "{type: oauth2, token_url: 'http://x/t', grant: jwt_bearer, \
                  refresh_token: {type: env, var: R}, \
                  client_secret: {type: env, var: S}}"
            ),
            ["assertion", "client_id", "refresh_token"]
        );
        assert_eq!(
            paths(
                "{type: oauth2, token_url: 'http://x/t', grant: jwt_bearer, \
                  assertion: {issuer: '', algorithm: HS256, private_key: {type: file, path: rel}}}"
            ),
            [
                "assertion.issuer",
                "assertion.algorithm",
                "assertion.private_key.path"
            ]
        );
        compile(
            "{type: oauth2, token_url: 'http://x/t', grant: jwt_bearer, \
              assertion: {issuer: me, private_key: {type: env, var: K}}}",
        )
        .unwrap();
    }

    /// A token endpoint on a free port: answers with `answer` after `delay`, counting hits.
    async fn endpoint(
        answer: (u16, serde_json::Value),
        delay: Duration,
    ) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
        let (h, b) = (hits.clone(), bodies.clone());
        let app = axum::Router::new().route(
            "/token",
            axum::routing::post(move |body: String| {
                let (h, b, answer) = (h.clone(), b.clone(), answer.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    b.lock().unwrap().push(body);
                    tokio::time::sleep(delay).await;
                    (
                        axum::http::StatusCode::from_u16(answer.0).unwrap(),
                        axum::Json(answer.1),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/token"), hits, bodies)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_mint_one_token() {
        let (url, hits, bodies) = endpoint(
            (200, serde_json::json!({"access_token": "tok-1", "expires_in": 3600, "token_type": "Bearer"})),
            Duration::from_millis(200),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("client-secret");
        std::fs::write(&secret, "cs-1\n").unwrap();
        let source = compile(&format!(
            "{{type: oauth2, token_url: '{url}', grant: client_credentials, client_id: app, \
               client_auth: body, scopes: [read, write], audience: api, \
               client_secret: {{type: file, path: '{}'}}}}",
            secret.display()
        ))
        .unwrap();
        let cache = SourceCache::new();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, source) = (cache.clone(), source.clone());
                tokio::spawn(async move { cache.resolve(&source).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().expose(), "tok-1");
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "20 concurrent misses, one mint"
        );
        assert_eq!(
            bodies.lock().unwrap()[0],
            "grant_type=client_credentials&scope=read+write&audience=api&client_id=app&client_secret=cs-1"
        );
        let fetched = source.fetch(&cache).await.unwrap();
        assert_eq!(fetched.expires_in, Some(Duration::from_secs(3600)));
    }

    #[tokio::test]
    async fn endpoint_errors_are_named_and_scrubbed() {
        let (url, _, _) = endpoint(
            (
                400,
                serde_json::json!({"error": "invalid_grant",
                                   "error_description": "refresh token rt-s3cr3t is revoked"}),
            ),
            Duration::ZERO,
        )
        .await;
        let url = Url::parse(&url).unwrap();
        let http = reqwest::Client::new();
        let form = [("grant_type", "refresh_token".to_owned())];
        let err = request_token(&http, &url, &form, None, &[SecretValue::new("rt-s3cr3t")])
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.0,
            "HTTP 400: invalid_grant: refresh token <redacted> is revoked"
        );
        let (url, _, _) = endpoint((200, serde_json::json!({"token": "x"})), Duration::ZERO).await;
        let err = request_token(&http, &Url::parse(&url).unwrap(), &form, None, &[])
            .await
            .err()
            .unwrap();
        assert_eq!(err.0, "HTTP 200: the response has no access_token");
    }
}
