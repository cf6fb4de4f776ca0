//! The injection styles: from a credential (or, for previews, a marker standing in for it)
//! to the mutations the upstream request gets. Pure functions of the request; the caller
//! resolves the value and records the audit annotation.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use super::config::{Encoding, HmacAlgorithm, InjectConfig, Location};
use super::sigv4;
use super::template::{Fill, Var};
use crate::request::OutboundRequest;
use crate::secrets::{SecretBytes, SecretValue};
use crate::transforms::Mutations;

/// Characters kept as they are inside a path segment (RFC 3986 pchar, minus `/`).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'@')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=');

/// Characters kept as they are in a query value: the unreserved ones.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The credential, or a preview marker.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    Secret(&'a SecretValue),
    Marker(&'a str),
}

impl Credential<'_> {
    fn fill(&self) -> Fill<'_> {
        match self {
            Credential::Secret(v) => Fill::Secret(v.expose()),
            Credential::Marker(m) => Fill::Marker(m),
        }
    }

    fn raw(&self) -> &str {
        match self {
            Credential::Secret(v) => v.expose(),
            Credential::Marker(m) => m,
        }
    }

    fn is_marker(&self) -> bool {
        matches!(self, Credential::Marker(_))
    }

    /// The value encoded for a place in the URL (markers stay readable).
    fn encoded(&self, set: &'static AsciiSet) -> String {
        match self {
            Credential::Secret(v) => utf8_percent_encode(v.expose(), set).to_string(),
            Credential::Marker(m) => (*m).to_owned(),
        }
    }
}

/// What happened to the credential, for the audit annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Injected,
    Swapped,
    Signed,
}

/// The result of applying a style.
#[derive(Debug)]
pub struct Applied {
    pub used: Use,
    /// `header:authorization`, `query:key`, `path`, `body`. Empty: nothing was changed.
    pub locations: Vec<String>,
}

/// Why a style refused the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `require: true` and the placeholder is nowhere.
    PlaceholderMissing,
    /// The value cannot be used as this style needs (controls in a header value, bad AWS
    /// credential JSON). The message never holds the value.
    UnusableValue(String),
    /// SigV4: the workload signed for another service or region.
    ScopeMismatch(String),
}

/// The pieces of the request line as sent (`:path` with its query).
pub(crate) fn raw_path(request: &OutboundRequest) -> &str {
    request
        .header(":path")
        .and_then(|p| std::str::from_utf8(p).ok())
        .unwrap_or("/")
}

fn split_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    }
}

fn join(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

fn header_value(credential: &Credential<'_>, text: String) -> Result<SecretValue, Refusal> {
    let value = SecretValue::new(text);
    if !credential.is_marker() && value.has_control_chars() {
        return Err(Refusal::UnusableValue(
            "the value holds control characters and cannot travel in a header".into(),
        ));
    }
    Ok(value)
}

/// Whether applying `inject` to this request needs its body.
pub fn needs_body(inject: &InjectConfig, request: &OutboundRequest) -> bool {
    match inject {
        InjectConfig::ProxyToken { locations, .. } => locations.contains(&Location::Body),
        InjectConfig::Hmac { message, .. } => message.vars().any(|v| v == Var::BodySha256),
        InjectConfig::AwsSigv4 { .. } => sigv4::needs_body(request),
        _ => false,
    }
}

/// Applies a style. `body` is the buffered request body when one was needed (an empty
/// slice for a request without one).
pub fn apply(
    inject: &InjectConfig,
    credential: Credential<'_>,
    request: &OutboundRequest,
    body: Option<&[u8]>,
    mutations: &mut Mutations,
) -> Result<Applied, Refusal> {
    match inject {
        InjectConfig::Bearer {} => {
            let value = match credential {
                Credential::Secret(v) => format!("Bearer {}", v.expose()),
                Credential::Marker(m) => format!("Bearer {m}"),
            };
            mutations.set("authorization", header_value(&credential, value)?);
            Ok(injected(vec!["header:authorization".into()]))
        }
        InjectConfig::Basic { username } => {
            let value = match credential {
                Credential::Secret(v) => format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{}", v.expose()))
                ),
                Credential::Marker(m) => format!("Basic base64({username}:{m})"),
            };
            mutations.set("authorization", header_value(&credential, value)?);
            Ok(injected(vec!["header:authorization".into()]))
        }
        InjectConfig::Custom {
            header,
            query,
            format,
        } => {
            let rendered = format.render(&credential.fill(), &|_| String::new());
            if let Some(name) = header {
                let name = name.to_ascii_lowercase();
                mutations.set(&name, header_value(&credential, rendered)?);
                return Ok(injected(vec![format!("header:{name}")]));
            }
            let name = query.as_deref().unwrap_or_default();
            let current = mutations.path_or(raw_path(request));
            let (path, query_text) = split_query(&current);
            let encoded = match credential {
                Credential::Secret(_) => utf8_percent_encode(&rendered, QUERY_VALUE).to_string(),
                Credential::Marker(_) => rendered,
            };
            let mut pairs: Vec<&str> = query_text
                .unwrap_or_default()
                .split('&')
                .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(name))
                .collect();
            let added = format!("{}={encoded}", utf8_percent_encode(name, QUERY_VALUE));
            pairs.push(&added);
            mutations.path = Some(SecretValue::new(join(path, Some(&pairs.join("&")))));
            Ok(injected(vec![format!("query:{name}")]))
        }
        InjectConfig::PathToken { placeholder } => {
            let current = mutations.path_or(raw_path(request));
            let (path, query) = split_query(&current);
            if !path.contains(placeholder.as_str()) {
                return Ok(injected(Vec::new()));
            }
            let replaced = path.replace(placeholder.as_str(), &credential.encoded(PATH_SEGMENT));
            mutations.path = Some(SecretValue::new(join(&replaced, query)));
            Ok(injected(vec!["path".into()]))
        }
        InjectConfig::ProxyToken {
            placeholder,
            locations,
            require,
        } => {
            let swapped = swap(placeholder, locations, credential, request, body, mutations)?;
            if swapped.is_empty() && *require {
                return Err(Refusal::PlaceholderMissing);
            }
            Ok(Applied {
                used: Use::Swapped,
                locations: swapped,
            })
        }
        InjectConfig::AwsSigv4 { service, region } => {
            let signer = sigv4::Signer { service, region };
            let locations = match credential {
                Credential::Secret(value) => {
                    signer.sign(request, body, value, SystemTime::now(), mutations)?
                }
                Credential::Marker(m) => signer.preview(m, mutations),
            };
            Ok(Applied {
                used: Use::Signed,
                locations,
            })
        }
        InjectConfig::Hmac {
            header,
            message,
            algorithm,
            encoding,
            prefix,
            timestamp_header,
        } => {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
                .to_string();
            let current = mutations.path_or(raw_path(request));
            let (path, query) = split_query(&current);
            let text = message.render(&Fill::Marker(""), &|var| match var {
                Var::Method => request.method_name.clone(),
                Var::Path => path.to_owned(),
                Var::Query => query.unwrap_or_default().to_owned(),
                Var::PathAndQuery => current.to_string(),
                Var::Host => request.authority.clone(),
                Var::Timestamp => timestamp.clone(),
                Var::BodySha256 => hex(&Sha256::digest(body.unwrap_or_default())),
                Var::Value => String::new(),
            });
            let signature = match credential {
                Credential::Secret(key) => {
                    let mac = hmac_bytes(*algorithm, key.expose().as_bytes(), text.as_bytes());
                    match encoding {
                        Encoding::Hex => hex(&mac),
                        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(mac),
                    }
                }
                Credential::Marker(m) => format!("hmac-{algorithm:?}({m}, message)").to_lowercase(),
            };
            let name = header.to_ascii_lowercase();
            let value = format!("{}{signature}", prefix.as_deref().unwrap_or_default());
            mutations.set(&name, SecretValue::new(value));
            let mut locations = vec![format!("header:{name}")];
            if let Some(ts) = timestamp_header {
                let ts = ts.to_ascii_lowercase();
                mutations.set(&ts, SecretValue::new(timestamp));
                locations.push(format!("header:{ts}"));
            }
            Ok(Applied {
                used: Use::Signed,
                locations,
            })
        }
    }
}

fn injected(locations: Vec<String>) -> Applied {
    Applied {
        used: Use::Injected,
        locations,
    }
}

/// Replaces the placeholder everywhere it is allowed; returns where it was found.
fn swap(
    placeholder: &str,
    locations: &[Location],
    credential: Credential<'_>,
    request: &OutboundRequest,
    body: Option<&[u8]>,
    mutations: &mut Mutations,
) -> Result<Vec<String>, Refusal> {
    let mut found = Vec::new();
    if locations.contains(&Location::Header) {
        for (name, value) in &request.headers {
            if name.starts_with(':') || name == "proxy-authorization" {
                continue;
            }
            let Ok(text) = std::str::from_utf8(value) else {
                continue;
            };
            if text.contains(placeholder) {
                let swapped = text.replace(placeholder, credential.raw());
                mutations.set(name, header_value(&credential, swapped)?);
                found.push(format!("header:{name}"));
            }
        }
    }
    let in_query = locations.contains(&Location::Query);
    let in_path = locations.contains(&Location::Path);
    if in_query || in_path {
        let current = mutations.path_or(raw_path(request));
        let (path, query) = split_query(&current);
        let mut new_path = path.to_owned();
        let mut new_query = query.map(str::to_owned);
        if in_path && path.contains(placeholder) {
            new_path = path.replace(placeholder, &credential.encoded(PATH_SEGMENT));
            found.push("path".into());
        }
        if in_query && let Some(q) = query.filter(|q| q.contains(placeholder)) {
            new_query = Some(q.replace(placeholder, &credential.encoded(QUERY_VALUE)));
            found.push("query".into());
        }
        if new_path != path || new_query.as_deref() != query {
            mutations.path = Some(SecretValue::new(join(&new_path, new_query.as_deref())));
        }
    }
    if locations.contains(&Location::Body)
        && let Some(body) = body
        && contains(body, placeholder.as_bytes())
    {
        let content_type = request
            .header("content-type")
            .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
            .unwrap_or_default();
        let raw = credential.raw();
        let replacement: String = if credential.is_marker() {
            raw.to_owned()
        } else if content_type.contains("json") {
            // The placeholder sits inside a JSON string: the value must be escaped.
            let quoted = serde_json::to_string(raw).unwrap_or_default();
            quoted[1..quoted.len() - 1].to_owned()
        } else if content_type.contains("x-www-form-urlencoded") {
            utf8_percent_encode(raw, QUERY_VALUE).to_string()
        } else {
            raw.to_owned()
        };
        mutations.body = Some(SecretBytes::new(replace_bytes(
            body,
            placeholder.as_bytes(),
            replacement.as_bytes(),
        )));
        found.push("body".into());
    }
    Ok(found)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len() + with.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn hmac_bytes(algorithm: HmacAlgorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    match algorithm {
        HmacAlgorithm::Sha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        HmacAlgorithm::Sha512 => {
            let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        HmacAlgorithm::Sha1 => {
            // Only for APIs that still sign with HMAC-SHA1 (older webhooks).
            let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
    }
}
