//! Who is making a request, and which tags that gives it.
//!
//! In order of trust, the principal is: the mTLS peer's URI SAN (a SPIFFE ID in a mesh),
//! a proxy token in `Proxy-Authorization`, or the source address's CIDR. A request's tags
//! are the gateway's own tags, the listener's tags (Envoy's `x-portcullis-tags` stream
//! metadata) and the principal's tags. A `Proxy-Authorization` header that names no known
//! token is refused (407), never downgraded to a weaker identity. [`admin`] does the same
//! for callers of the admin API.

pub mod admin;
pub mod oidc;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use globset::{GlobBuilder, GlobMatcher};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::vocab::FieldError;
use crate::vocab::Tag;

/// One way of recognising a workload. Exactly one of `token`, `source_cidr`, `uri_san`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// A name for audit records; defaults to `identities[N]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A proxy token, presented as `Proxy-Authorization: Bearer <token>` or as the password
    /// of Basic proxy credentials (`http://any:<token>@gateway:10000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSource>,
    /// A source network, e.g. `10.1.0.0/16`; the most specific match wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_cidr: Option<String>,
    /// A glob over the mTLS peer certificate's URI SAN, e.g.
    /// `spiffe://cluster.local/ns/ci/sa/*`; the first match in config order wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_san: Option<String>,
    /// Tags this identity gives a request.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// Where a proxy token's value comes from — exactly one of `env`, `file`, `sha256`. The
/// value itself never sits in the config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    /// An environment variable of the portcullis process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A file holding the token (surrounding whitespace ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The token's SHA-256, hex: the config then holds nothing that grants access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Checks what deserialization cannot; paths relative to the identity.
pub fn validate_identity(identity: &IdentityConfig) -> Vec<FieldError> {
    let kinds = [
        identity.token.is_some(),
        identity.source_cidr.is_some(),
        identity.uri_san.is_some(),
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    let mut errors = Vec::new();
    if kinds != 1 {
        errors.push(FieldError::new(
            "",
            "an identity needs exactly one of `token`, `source_cidr`, `uri_san`",
        ));
    }
    if let Some(cidr) = &identity.source_cidr
        && cidr.parse::<IpNet>().is_err()
        && cidr.parse::<IpAddr>().is_err()
    {
        errors.push(FieldError::new(
            "source_cidr",
            format!("{cidr:?} is not a CIDR (expected e.g. 10.1.0.0/16)"),
        ));
    }
    if let Some(pattern) = &identity.uri_san
        && let Err(e) = san_glob(pattern)
    {
        errors.push(FieldError::new("uri_san", e));
    }
    if let Some(token) = &identity.token {
        let sources = [
            token.env.is_some(),
            token.file.is_some(),
            token.sha256.is_some(),
        ];
        if sources.into_iter().filter(|set| *set).count() != 1 {
            errors.push(FieldError::new(
                "token",
                "a token needs exactly one of `env`, `file`, `sha256`",
            ));
        }
        if let Some(hex) = &token.sha256
            && decode_sha256(hex).is_none()
        {
            errors.push(FieldError::new(
                "token.sha256",
                "expected 64 hexadecimal characters (the SHA-256 of the token)",
            ));
        }
    }
    errors
}

fn san_glob(pattern: &str) -> Result<GlobMatcher, String> {
    if pattern.is_empty() {
        return Err("uri_san pattern must not be empty".into());
    }
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("{pattern:?} is not a valid glob: {}", e.kind()))
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// How the principal of a request was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// No principal: only gateway and listener tags.
    Gateway,
    UriSan,
    Token,
    SourceCidr,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Gateway => "gateway",
            IdentityKind::UriSan => "uri_san",
            IdentityKind::Token => "token",
            IdentityKind::SourceCidr => "source_cidr",
        }
    }
}

/// The resolved identity of one request.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub kind: IdentityKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Arc<str>>,
    /// The peer's URI SAN when the principal came from mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    #[serde(skip)]
    pub tags: Vec<Tag>,
}

/// Why a request's identity was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("Proxy-Authorization is malformed: expected `Bearer <token>` or Basic credentials")]
    MalformedProxyAuthorization,
    #[error("the proxy token is not recognised")]
    UnknownToken,
}

/// What a connection tells about its workload.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    pub source: Option<IpAddr>,
    pub peer_uri_san: Option<&'a str>,
    pub proxy_authorization: Option<&'a [u8]>,
    pub listener_tags: &'a [Tag],
}

struct Principal {
    name: Arc<str>,
    tags: Vec<Tag>,
}

/// Compiled identities.
pub struct IdentityResolver {
    gateway_tags: Vec<Tag>,
    tokens: Vec<([u8; 32], Principal)>,
    /// Refuse an unknown `Proxy-Authorization` even when no token is configured right now
    /// (tokens come from a store, and the one presented may have been revoked).
    tokens_expected: bool,
    /// Most specific first.
    cidrs: Vec<(IpNet, Principal)>,
    sans: Vec<(GlobMatcher, Principal)>,
}

impl std::fmt::Debug for IdentityResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityResolver")
            .field("gateway_tags", &self.gateway_tags)
            .field("tokens", &self.tokens.len())
            .field("cidrs", &self.cidrs.len())
            .field("sans", &self.sans.len())
            .finish()
    }
}

impl IdentityResolver {
    /// Compiles validated identities, reading token sources. `env` looks up environment
    /// variables (injected for tests). Errors carry paths under `identities[N]`.
    pub fn compile(
        gateway_tags: &[Tag],
        identities: &[IdentityConfig],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<IdentityResolver, Vec<FieldError>> {
        let mut resolver = IdentityResolver {
            gateway_tags: gateway_tags.to_vec(),
            tokens: Vec::new(),
            tokens_expected: false,
            cidrs: Vec::new(),
            sans: Vec::new(),
        };
        let mut errors = Vec::new();
        for (i, identity) in identities.iter().enumerate() {
            let path = format!("identities[{i}]");
            let principal = Principal {
                name: Arc::from(identity.name.clone().unwrap_or_else(|| path.clone())),
                tags: identity.tags.clone(),
            };
            if let Some(source) = &identity.token {
                match token_digest(source, env) {
                    Ok(digest) => {
                        if resolver
                            .tokens
                            .iter()
                            .any(|(d, _)| bool::from(d.ct_eq(&digest)))
                        {
                            errors.push(FieldError::new(
                                format!("{path}.token"),
                                "this token is already used by another identity",
                            ));
                        }
                        resolver.tokens.push((digest, principal));
                    }
                    Err(e) => errors.push(e.under(&format!("{path}.token"))),
                }
            } else if let Some(cidr) = &identity.source_cidr {
                let net = cidr
                    .parse::<IpNet>()
                    .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from));
                match net {
                    Ok(net) => resolver.cidrs.push((net.trunc(), principal)),
                    Err(_) => errors.push(FieldError::new(
                        format!("{path}.source_cidr"),
                        format!("{cidr:?} is not a CIDR"),
                    )),
                }
            } else if let Some(pattern) = &identity.uri_san {
                match san_glob(pattern) {
                    Ok(glob) => resolver.sans.push((glob, principal)),
                    Err(e) => errors.push(FieldError::new(format!("{path}.uri_san"), e)),
                }
            }
        }
        resolver
            .cidrs
            .sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        if errors.is_empty() {
            Ok(resolver)
        } else {
            Err(errors)
        }
    }

    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty() || self.tokens_expected
    }

    /// Tokens are minted and revoked in a store: a presented token that matches none is
    /// refused (407), even while none exists.
    pub fn expect_tokens(&mut self) {
        self.tokens_expected = true;
    }

    /// Whether a request without proxy credentials can still be told apart by who sends
    /// it: an identity by source address (`source_cidr`) or certificate (`uri_san`).
    pub fn depends_on_peer(&self) -> bool {
        !self.cidrs.is_empty() || !self.sans.is_empty()
    }

    /// Every tag a request through a listener carrying `listener_tags` could have: the
    /// gateway's, the listener's, and those of every configured identity.
    pub fn reachable_tags<'a>(
        &'a self,
        listener_tags: &'a [Tag],
    ) -> std::collections::HashSet<&'a Tag> {
        let principals = self
            .tokens
            .iter()
            .map(|(_, p)| p)
            .chain(self.cidrs.iter().map(|(_, p)| p))
            .chain(self.sans.iter().map(|(_, p)| p));
        self.gateway_tags
            .iter()
            .chain(listener_tags)
            .chain(principals.flat_map(|p| p.tags.iter()))
            .collect()
    }

    /// Resolves the identity of a request.
    pub fn resolve(&self, presented: &Presented<'_>) -> Result<Identity, IdentityError> {
        let token = match presented.proxy_authorization {
            Some(header) if self.has_tokens() => Some(self.match_token(header)?),
            // Without configured tokens the header means nothing here; it is still stripped.
            _ => None,
        };
        let (kind, principal, spiffe_id) = if let Some((principal, san)) =
            presented.peer_uri_san.and_then(|san| {
                self.sans
                    .iter()
                    .find(|(glob, _)| glob.is_match(san))
                    .map(|(_, p)| (p, san))
            }) {
            (IdentityKind::UriSan, Some(principal), Some(san.to_owned()))
        } else if let Some(principal) = token {
            (IdentityKind::Token, Some(principal), None)
        } else if let Some(principal) = presented.source.and_then(|ip| {
            self.cidrs
                .iter()
                .find(|(net, _)| net.contains(&ip))
                .map(|(_, p)| p)
        }) {
            (IdentityKind::SourceCidr, Some(principal), None)
        } else {
            (IdentityKind::Gateway, None, None)
        };
        let mut tags: Vec<Tag> = Vec::with_capacity(
            self.gateway_tags.len()
                + presented.listener_tags.len()
                + principal.map_or(0, |p| p.tags.len()),
        );
        for tag in self
            .gateway_tags
            .iter()
            .chain(presented.listener_tags)
            .chain(principal.into_iter().flat_map(|p| p.tags.iter()))
        {
            if !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
        Ok(Identity {
            kind,
            name: principal.map(|p| p.name.clone()),
            spiffe_id,
            tags,
        })
    }

    /// Compares the presented token with every configured one in constant time, so the
    /// response time says nothing about which token, or how much of one, was right.
    fn match_token(&self, header: &[u8]) -> Result<&Principal, IdentityError> {
        let presented = parse_proxy_authorization(header)?;
        let digest: [u8; 32] = Sha256::digest(&presented).into();
        let mut found: Option<&Principal> = None;
        for (candidate, principal) in &self.tokens {
            if bool::from(candidate.ct_eq(&digest)) {
                found = Some(principal);
            }
        }
        found.ok_or(IdentityError::UnknownToken)
    }
}

/// The SHA-256 of a token from its source; errors have paths relative to the source.
pub(crate) fn token_digest(
    source: &TokenSource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<[u8; 32], FieldError> {
    if let Some(hex) = &source.sha256 {
        return decode_sha256(hex)
            .ok_or_else(|| FieldError::new("sha256", "expected 64 hexadecimal characters"));
    }
    let value = token_value(source, env)?;
    Ok(Sha256::digest(value.as_bytes()).into())
}

/// The value an `env` or `file` source holds, trimmed (errors relative to the source).
pub(crate) fn token_value(
    source: &TokenSource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, FieldError> {
    let (field, value) = if let Some(var) = &source.env {
        let value = env(var).ok_or_else(|| {
            FieldError::new("env", format!("environment variable {var} is not set"))
        })?;
        ("env", value)
    } else if let Some(path) = &source.file {
        let value = std::fs::read_to_string(path)
            .map_err(|e| FieldError::new("file", format!("cannot read {}: {e}", path.display())))?;
        ("file", value)
    } else if source.sha256.is_some() {
        return Err(FieldError::new(
            "sha256",
            "a digest cannot be sent: this value needs `env` or `file`",
        ));
    } else {
        return Err(FieldError::new(
            "",
            "a token needs one of `env`, `file`, `sha256`",
        ));
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(FieldError::new(field, "the token is empty"));
    }
    Ok(value.to_owned())
}

/// The token a `Proxy-Authorization` value carries, if it is well formed (for redaction).
pub(crate) fn proxy_authorization_token(header: &[u8]) -> Option<Vec<u8>> {
    parse_proxy_authorization(header).ok()
}

/// Extracts the token from `Bearer <token>` or `Basic base64(user:password)` (the password,
/// or the user name when the password is empty).
fn parse_proxy_authorization(header: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let header = std::str::from_utf8(header)
        .map_err(|_| IdentityError::MalformedProxyAuthorization)?
        .trim();
    let (scheme, credentials) = header
        .split_once(' ')
        .ok_or(IdentityError::MalformedProxyAuthorization)?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty() {
        return Ok(credentials.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .map_err(|_| IdentityError::MalformedProxyAuthorization)?;
        let colon = decoded.iter().position(|b| *b == b':');
        let (user, password) = match colon {
            Some(i) => (&decoded[..i], &decoded[i + 1..]),
            None => (&decoded[..], &[][..]),
        };
        let token = if password.is_empty() { user } else { password };
        if !token.is_empty() {
            return Ok(token.to_vec());
        }
    }
    Err(IdentityError::MalformedProxyAuthorization)
}

#[cfg(test)]
mod tests;
