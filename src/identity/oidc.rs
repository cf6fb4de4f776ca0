//! Console single sign-on with OpenID Connect (`admin.oidc`, docs/console.md): the
//! authorization code flow with PKCE (RFC 7636, `S256`) against one configured issuer.
//!
//! The issuer's endpoints come from its discovery document, whose `issuer` must be the
//! configured one. An ID token is accepted only when its signature verifies with a key of
//! the issuer's JWKS (asymmetric algorithms only: an `HS256` token signed with the client
//! secret, or `none`, is refused), its `iss` and `aud` are ours, it has not expired, and its
//! `nonce` is the one this sign-in sent. Its roles come from one claim, mapped in the
//! config; a person none of whose values is mapped is refused.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::vocab::https_or_loopback;
use sha2::{Digest, Sha256};

use super::TokenSource;
use super::admin::AdminRole;
use crate::vocab::FieldError;

/// The callback path the issuer redirects the browser to; `redirect_url` names it as the
/// browser reaches it.
pub const CALLBACK_PATH: &str = "/v1/session/oidc/callback";

/// `admin.oidc`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer's URL, exactly as its ID tokens' `iss` (and its discovery document's
    /// `issuer`) say it; `https`, or `http` on a loopback address.
    pub issuer: String,
    pub client_id: String,
    /// For a confidential client: `env` or `file` (sent with HTTP Basic). A public client
    /// has none, and PKCE alone binds the code to this sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<TokenSource>,
    /// This server's callback as the browser reaches it: `https://<console>/v1/session/oidc/callback`.
    pub redirect_url: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The claim naming the person (recorded as the operator of their changes).
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// The claim whose values (a string or a list of strings) map to roles.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Claim value → role; a person with several mapped values gets the highest.
    pub roles: BTreeMap<String, AdminRole>,
    /// The sign-in button's label: "Sign in with {label}".
    #[serde(default = "default_label")]
    pub label: String,
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email"].map(String::from).to_vec()
}

fn default_name_claim() -> String {
    "email".into()
}

fn default_role_claim() -> String {
    "groups".into()
}

fn default_label() -> String {
    "single sign-on".into()
}

impl OidcConfig {
    /// Errors under `admin.oidc`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut error = |field: &str, message: String| {
            errors.push(FieldError::new(format!("admin.oidc.{field}"), message));
        };
        match Url::parse(&self.issuer) {
            Ok(url) if !https_or_loopback(&url) => error(
                "issuer",
                format!(
                    "{:?} is not https (http is accepted for a loopback address only)",
                    self.issuer
                ),
            ),
            Ok(url) if url.query().is_some() || url.fragment().is_some() => error(
                "issuer",
                format!("{:?}: an issuer has no query or fragment", self.issuer),
            ),
            Ok(_) => {}
            Err(e) => error("issuer", format!("{:?} is not a URL: {e}", self.issuer)),
        }
        match Url::parse(&self.redirect_url) {
            Ok(url) if !https_or_loopback(&url) => error(
                "redirect_url",
                format!(
                    "{:?} is not https (http is accepted for a loopback address only)",
                    self.redirect_url
                ),
            ),
            Ok(url) if url.path() != CALLBACK_PATH => error(
                "redirect_url",
                format!(
                    "{:?}: the callback's path is {CALLBACK_PATH}",
                    self.redirect_url
                ),
            ),
            Ok(_) => {}
            Err(e) => error(
                "redirect_url",
                format!("{:?} is not a URL: {e}", self.redirect_url),
            ),
        }
        if self.client_id.trim().is_empty() {
            error("client_id", "the client ID is empty".into());
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            error(
                "scopes",
                "sign-in needs the `openid` scope (it asks for an ID token)".into(),
            );
        }
        if self.roles.is_empty() {
            error(
                "roles",
                format!(
                    "map at least one value of the `{}` claim to a role (viewer, editor, admin)",
                    self.role_claim
                ),
            );
        }
        for (field, claim) in [
            ("name_claim", &self.name_claim),
            ("role_claim", &self.role_claim),
        ] {
            if claim.trim().is_empty() {
                error(field, "the claim name is empty".into());
            }
        }
        errors
    }
}

/// Why a sign-in did not succeed. Its text is shown to the person signing in and logged;
/// it holds no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// The issuer could not be reached or answered something unusable.
    #[error("the identity provider: {0}")]
    Issuer(String),
    /// The ID token is not one this console accepts.
    #[error("the ID token is refused: {0}")]
    Token(String),
    /// The person signed in but holds no role here.
    #[error("{0}")]
    NoRole(String),
}

/// The issuer's endpoints and keys.
struct Discovered {
    authorization_endpoint: Url,
    token_endpoint: Url,
    jwks: JwkSet,
    fetched: Instant,
}

/// How long discovery and keys are used before they are read again; a token signed with a
/// key not yet seen rereads them sooner (at most every [`KEYS_REREAD`]).
const DISCOVERY_TTL: Duration = Duration::from_secs(60 * 60);
const KEYS_REREAD: Duration = Duration::from_secs(10);

/// A sign-in begun: where to send the browser, and what the callback must match.
pub struct Authorization {
    pub url: String,
    pub state: String,
    pub nonce: String,
    /// The PKCE code verifier (its S256 challenge went in `url`).
    pub verifier: SecretString,
}

/// A person the issuer signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoPerson {
    pub name: String,
    /// The role claim's values, kept so the role follows later changes to `admin.oidc.roles`.
    pub claim_values: Vec<String>,
}

/// One configured issuer, compiled: its config, its client secret, and what discovery
/// found (fetched at the first sign-in).
pub struct OidcProvider {
    pub config: OidcConfig,
    client_secret: Option<SecretString>,
    http: reqwest::Client,
    discovered: tokio::sync::Mutex<Option<Discovered>>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

fn random(bytes: usize) -> Result<String, OidcError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer)
        .map_err(|e| OidcError::Issuer(format!("no randomness from the operating system: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buffer))
}

/// The PKCE `S256` challenge of a verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The asymmetric algorithms an ID token may be signed with.
const ACCEPTED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl OidcProvider {
    /// Compiles `admin.oidc`, reading the client secret; errors under `admin.oidc`.
    pub fn compile(
        config: &OidcConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<OidcProvider, Vec<FieldError>> {
        let mut errors = config.validate();
        let client_secret = match &config.client_secret {
            Some(source) => match super::token_value(source, env) {
                Ok(value) => Some(SecretString::from(value)),
                Err(e) => {
                    errors.push(e.under("admin.oidc.client_secret"));
                    None
                }
            },
            None => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            // The token endpoint gets the code and the client secret: never forwarded.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Ok(OidcProvider {
            config: config.clone(),
            client_secret,
            http,
            discovered: tokio::sync::Mutex::new(None),
        })
    }

    /// The highest role `claim_values` map to now, if any.
    pub fn role_of(&self, claim_values: &[String]) -> Option<AdminRole> {
        claim_values
            .iter()
            .filter_map(|v| self.config.roles.get(v).copied())
            .max()
    }

    /// Begins a sign-in: a fresh state, nonce and PKCE verifier, and the issuer's
    /// authorization URL carrying them.
    pub async fn authorization(&self) -> Result<Authorization, OidcError> {
        let endpoint = {
            let mut guard = self.discovered.lock().await;
            self.discovery(&mut guard, false).await?;
            guard
                .as_ref()
                .expect("discovery succeeded")
                .authorization_endpoint
                .clone()
        };
        let (state, nonce) = (random(24)?, random(24)?);
        let verifier = random(48)?;
        let mut url = endpoint;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.config.redirect_url)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &pkce_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(Authorization {
            url: url.into(),
            state,
            nonce,
            verifier: SecretString::from(verifier),
        })
    }

    /// Completes a sign-in: exchanges `code` (with the verifier) for an ID token, verifies
    /// it, and reads the person from it.
    pub async fn complete(
        &self,
        code: &str,
        verifier: &SecretString,
        nonce: &str,
    ) -> Result<SsoPerson, OidcError> {
        let token_endpoint = {
            let mut guard = self.discovered.lock().await;
            self.discovery(&mut guard, false).await?;
            guard
                .as_ref()
                .expect("discovery succeeded")
                .token_endpoint
                .clone()
        };
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.config.redirect_url.as_str()),
            ("code_verifier", verifier.expose_secret()),
        ];
        let mut request = self.http.post(token_endpoint);
        match &self.client_secret {
            Some(secret) => {
                // RFC 6749 §2.3.1: each part form-encoded before Basic.
                let encode = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!(
                    "{}:{}",
                    encode(&self.config.client_id),
                    encode(secret.expose_secret())
                );
                let basic = base64::engine::general_purpose::STANDARD.encode(pair);
                request = request.header("authorization", format!("Basic {basic}"));
            }
            None => form.push(("client_id", self.config.client_id.as_str())),
        }
        let response =
            request.form(&form).send().await.map_err(|e| {
                OidcError::Issuer(format!("the token endpoint: {}", without_url(&e)))
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            // The error fields only: an answer's other fields are not repeated.
            let error = body["error"].as_str().unwrap_or("no error code");
            let description = body["error_description"].as_str().unwrap_or("");
            return Err(OidcError::Issuer(format!(
                "the token endpoint answered {status}: {error} {description}"
            )));
        }
        let Some(id_token) = body["id_token"].as_str() else {
            return Err(OidcError::Issuer(
                "the token endpoint's answer has no id_token (is `openid` among the scopes?)"
                    .into(),
            ));
        };
        let claims = self.verify(id_token, nonce).await?;
        self.person(&claims)
    }

    /// Verifies an ID token's signature and claims; its claims.
    pub async fn verify(&self, id_token: &str, nonce: &str) -> Result<Value, OidcError> {
        let header = jsonwebtoken::decode_header(id_token)
            .map_err(|e| OidcError::Token(format!("not a JWT: {e}")))?;
        if !ACCEPTED_ALGORITHMS.contains(&header.alg) {
            return Err(OidcError::Token(format!(
                "signed with {:?}: only asymmetric algorithms are accepted",
                header.alg
            )));
        }
        let key = self.key_for(header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 60;
        let data = jsonwebtoken::decode::<Value>(id_token, &key, &validation)
            .map_err(|e| OidcError::Token(e.to_string()))?;
        let claims = data.claims;
        let sent: &[u8] = nonce.as_bytes();
        let returned = claims["nonce"].as_str().unwrap_or_default().as_bytes();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(sent, returned)) {
            return Err(OidcError::Token(
                "its nonce is not the one this sign-in sent (a replayed or injected token)".into(),
            ));
        }
        // With several audiences, the token must have been issued to us (OIDC Core 3.1.3.7).
        if claims["aud"].as_array().is_some_and(|a| a.len() > 1)
            && claims["azp"].as_str() != Some(self.config.client_id.as_str())
        {
            return Err(OidcError::Token(
                "it has several audiences and its `azp` is not this console's client ID".into(),
            ));
        }
        Ok(claims)
    }

    /// The person an ID token's claims name, with a role.
    fn person(&self, claims: &Value) -> Result<SsoPerson, OidcError> {
        let name_claim = &self.config.name_claim;
        let name = claims[name_claim.as_str()]
            .as_str()
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| {
                OidcError::Token(format!(
                    "it has no `{name_claim}` claim to name the person (admin.oidc.name_claim)"
                ))
            })?;
        // An address the issuer has not verified is anyone's to type in.
        if name_claim == "email" && claims["email_verified"] == Value::Bool(false) {
            return Err(OidcError::Token(format!(
                "its email {name} is not verified by the issuer (email_verified: false)"
            )));
        }
        let role_claim = &self.config.role_claim;
        let claim_values: Vec<String> = match &claims[role_claim.as_str()] {
            Value::String(one) => vec![one.clone()],
            Value::Array(many) => many
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if self.role_of(&claim_values).is_none() {
            return Err(OidcError::NoRole(format!(
                "{name} signed in, but none of the values of their `{role_claim}` claim \
                 ({}) is mapped to a role in admin.oidc.roles",
                if claim_values.is_empty() {
                    "it has none".to_owned()
                } else {
                    claim_values.join(", ")
                }
            )));
        }
        Ok(SsoPerson {
            name: name.to_owned(),
            claim_values,
        })
    }

    /// The verification key for `kid`, rereading the JWKS once when it is not known.
    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, OidcError> {
        let mut guard = self.discovered.lock().await;
        self.discovery(&mut guard, false).await?;
        let find = |jwks: &JwkSet| -> Option<DecodingKey> {
            let jwk = match kid {
                Some(kid) => jwks.find(kid)?,
                // Without a `kid`, only a lone key is unambiguous.
                None if jwks.keys.len() == 1 => &jwks.keys[0],
                None => return None,
            };
            DecodingKey::from_jwk(jwk).ok()
        };
        if let Some(key) = find(&guard.as_ref().expect("discovery succeeded").jwks) {
            return Ok(key);
        }
        let stale = guard
            .as_ref()
            .is_some_and(|d| d.fetched.elapsed() >= KEYS_REREAD);
        if stale {
            self.discovery(&mut guard, true).await?;
            if let Some(key) = find(&guard.as_ref().expect("discovery succeeded").jwks) {
                return Ok(key);
            }
        }
        Err(OidcError::Token(format!(
            "no key of the issuer's JWKS verifies it (kid {kid:?}, {alg:?})"
        )))
    }

    /// Reads the discovery document and the JWKS when not yet read, when older than
    /// [`DISCOVERY_TTL`], or when `again`.
    async fn discovery(
        &self,
        discovered: &mut Option<Discovered>,
        again: bool,
    ) -> Result<(), OidcError> {
        if !again
            && discovered
                .as_ref()
                .is_some_and(|d| d.fetched.elapsed() < DISCOVERY_TTL)
        {
            return Ok(());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let document = self.get_json(&url, "the discovery document").await?;
        if document["issuer"].as_str() != Some(self.config.issuer.as_str()) {
            return Err(OidcError::Issuer(format!(
                "its discovery document names the issuer {}, not the configured {:?}",
                document["issuer"], self.config.issuer
            )));
        }
        let endpoint = |field: &str| -> Result<Url, OidcError> {
            let text = document[field].as_str().ok_or_else(|| {
                OidcError::Issuer(format!("its discovery document has no `{field}`"))
            })?;
            let url = Url::parse(text).map_err(|e| {
                OidcError::Issuer(format!("its discovery document's `{field}`: {e}"))
            })?;
            if !https_or_loopback(&url) {
                return Err(OidcError::Issuer(format!(
                    "its discovery document's `{field}` ({text}) is not https"
                )));
            }
            Ok(url)
        };
        let authorization_endpoint = endpoint("authorization_endpoint")?;
        let token_endpoint = endpoint("token_endpoint")?;
        let jwks_uri = endpoint("jwks_uri")?;
        let keys = self.get_json(jwks_uri.as_str(), "the JWKS").await?;
        let jwks: JwkSet = serde_json::from_value(keys)
            .map_err(|e| OidcError::Issuer(format!("the JWKS at {jwks_uri}: {e}")))?;
        *discovered = Some(Discovered {
            authorization_endpoint,
            token_endpoint,
            jwks,
            fetched: Instant::now(),
        });
        Ok(())
    }

    async fn get_json(&self, url: &str, what: &str) -> Result<Value, OidcError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| OidcError::Issuer(format!("{what} at {url}: {}", without_url(&e))))?;
        if !response.status().is_success() {
            return Err(OidcError::Issuer(format!(
                "{what} at {url}: HTTP {}",
                response.status()
            )));
        }
        response
            .json()
            .await
            .map_err(|e| OidcError::Issuer(format!("{what} at {url}: {}", without_url(&e))))
    }
}

/// A reqwest error's text without the URL it carries (the token endpoint's URL is fine to
/// show, but the error may name a URL with a query).
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "…");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> OidcConfig {
        serde_norway::from_str(&format!(
            "{{issuer: 'https://idp.example.com', client_id: portcullis, \
              redirect_url: 'https://console.example.com/v1/session/oidc/callback', \
              roles: {{security: editor, auditors: viewer, platform-admins: admin}}{extra}}}"
        ))
        .unwrap()
    }

    #[test]
    fn defaults_ask_for_email_and_groups() {
        let c = config("");
        assert_eq!(c.scopes, ["openid", "profile", "email"]);
        assert_eq!(
            (c.name_claim.as_str(), c.role_claim.as_str()),
            ("email", "groups")
        );
        assert!(c.validate().is_empty());
    }

    #[test]
    fn an_issuer_over_plain_http_is_refused_unless_on_loopback() {
        let mut c = config("");
        c.issuer = "http://idp.example.com".into();
        let errors = c.validate();
        assert_eq!(errors[0].path, "admin.oidc.issuer");
        assert!(errors[0].message.contains("not https"), "{errors:?}");
        c.issuer = "http://127.0.0.1:5556/dex".into();
        assert!(c.validate().is_empty());
        c.redirect_url = "https://console.example.com/callback".into();
        let errors = c.validate();
        assert_eq!(errors[0].path, "admin.oidc.redirect_url");
        assert!(errors[0].message.contains(CALLBACK_PATH));
    }

    #[test]
    fn every_problem_is_reported_at_its_field() {
        let mut c = config(", scopes: [email]");
        c.roles.clear();
        c.client_id = " ".into();
        let paths: Vec<String> = c.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "admin.oidc.client_id",
                "admin.oidc.scopes",
                "admin.oidc.roles"
            ]
        );
    }

    #[test]
    fn the_highest_mapped_role_wins_and_unmapped_values_give_none() {
        let provider = OidcProvider::compile(&config(""), &|_| None).unwrap();
        let values = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            provider.role_of(&values(&["auditors", "security", "x"])),
            Some(AdminRole::Editor)
        );
        assert_eq!(provider.role_of(&values(&["contractors"])), None);
        assert_eq!(provider.role_of(&[]), None);
        let person = provider.person(&serde_json::json!({
            "email": "eve@example.com", "groups": "contractors"}));
        let Err(OidcError::NoRole(message)) = person else {
            panic!("{person:?}")
        };
        assert!(message.contains("eve@example.com") && message.contains("contractors"));
        let person = provider
            .person(&serde_json::json!({"email": "al@example.com", "groups": ["security"]}))
            .unwrap();
        assert_eq!(person.claim_values, ["security"]);
        let unverified = provider.person(&serde_json::json!({
            "email": "ceo@example.com", "email_verified": false, "groups": ["security"]}));
        assert!(
            matches!(&unverified, Err(OidcError::Token(m)) if m.contains("not verified")),
            "{unverified:?}"
        );
    }

    #[test]
    fn a_client_secret_needs_a_readable_source_and_is_not_printed() {
        let c = config(", client_secret: {env: OIDC_SECRET}");
        let errors = OidcProvider::compile(&c, &|_| None).unwrap_err();
        assert_eq!(errors[0].path, "admin.oidc.client_secret.env");
        let provider = OidcProvider::compile(&c, &|_| Some("very-secret-value".into())).unwrap();
        assert!(!format!("{provider:?}").contains("very-secret-value"));
        let c = config(", client_secret: {sha256: abc}");
        let errors = OidcProvider::compile(&c, &|_| None).unwrap_err();
        assert_eq!(errors[0].path, "admin.oidc.client_secret.sha256");
    }

    #[test]
    fn the_pkce_challenge_is_rfc_7636s() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
