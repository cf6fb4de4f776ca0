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
    /// `require: true` and the placeholder is in none of its locations.
    PlaceholderMissing,
    /// `require: true` and a declared header or query parameter (`header:authorization`)
    /// holds something other than the placeholder: the workload's own credential.
    ForeignCredential(String),
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
            let swap = Swap {
                placeholder,
                require: *require,
                credential,
            };
            let swapped = swap.apply(locations, request, body, mutations)?;
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

/// The forms in which `value` may have left with a request `inject` applied to, for the
/// response scrubber: the value, the encodings Portcullis writes values in (base64,
/// percent-encoding, JSON escaping), and what the style wrote around it (basic's
/// `base64(username:value)`, a custom format). A SigV4 value is JSON: its session token
/// travels in `x-amz-security-token`.
pub fn echo_forms(inject: &InjectConfig, value: &SecretValue) -> Vec<SecretBytes> {
    let raw = value.expose();
    let base64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let mut forms = vec![
        raw.to_owned(),
        base64(raw),
        utf8_percent_encode(raw, QUERY_VALUE).to_string(),
        utf8_percent_encode(raw, PATH_SEGMENT).to_string(),
        json_escaped(raw),
    ];
    match inject {
        InjectConfig::Basic { username } => forms.push(base64(&format!("{username}:{raw}"))),
        InjectConfig::Custom { format, query, .. } => {
            let rendered = format.render(&Fill::Secret(raw), &|_| String::new());
            if query.is_some() {
                forms.push(utf8_percent_encode(&rendered, QUERY_VALUE).to_string());
            }
            forms.push(rendered);
        }
        InjectConfig::AwsSigv4 { .. } => {
            for key in [
                "session_token",
                "SessionToken",
                "secret_access_key",
                "SecretAccessKey",
            ] {
                if let Ok(field) = value.json_field(key) {
                    forms.push(field.expose().to_owned());
                }
            }
        }
        _ => {}
    }
    forms
        .into_iter()
        .map(|form| SecretBytes::new(form.into_bytes()))
        .collect()
}

fn injected(locations: Vec<String>) -> Applied {
    Applied {
        used: Use::Injected,
        locations,
    }
}

/// A proxy token's swap: the placeholder replaced by the credential in the declared
/// locations only.
struct Swap<'a> {
    placeholder: &'a str,
    require: bool,
    credential: Credential<'a>,
}

impl Swap<'_> {
    /// Replaces the placeholder in each location; returns where it was found. Under
    /// `require`, a declared header or query parameter must hold the placeholder and
    /// nothing else (a `Bearer ` style scheme word aside).
    fn apply(
        &self,
        locations: &[Location],
        request: &OutboundRequest,
        body: Option<&[u8]>,
        mutations: &mut Mutations,
    ) -> Result<Vec<String>, Refusal> {
        let mut found = Vec::new();
        let mut query_names: Vec<&str> = Vec::new();
        let mut in_path = false;
        for location in locations {
            match location {
                Location::Header(name) => {
                    if self.header(name, request, mutations)? {
                        found.push(format!("header:{name}"));
                    }
                }
                Location::Query(name) => query_names.push(name),
                Location::Path => in_path = true,
                Location::Body => {}
            }
        }
        if in_path || !query_names.is_empty() {
            let current = mutations.path_or(raw_path(request));
            let (path, query) = split_query(&current);
            let mut new_path = path.to_owned();
            if in_path && path.contains(self.placeholder) {
                new_path = path.replace(self.placeholder, &self.credential.encoded(PATH_SEGMENT));
                found.push("path".into());
            }
            let new_query = match query {
                Some(query) if !query_names.is_empty() => {
                    Some(self.query(query, &query_names, &mut found)?)
                }
                other => other.map(str::to_owned),
            };
            if new_path != path || new_query.as_deref() != query {
                mutations.path = Some(SecretValue::new(join(&new_path, new_query.as_deref())));
            }
        }
        if locations.contains(&Location::Body)
            && let Some(body) = body
            && contains(body, self.placeholder.as_bytes())
        {
            mutations.body = Some(SecretBytes::new(self.body(request, body)));
            found.push("body".into());
        }
        Ok(found)
    }

    /// Swaps the placeholder in header `name`; whether it was there.
    fn header(
        &self,
        name: &str,
        request: &OutboundRequest,
        mutations: &mut Mutations,
    ) -> Result<bool, Refusal> {
        let mut carrier = None;
        for (_, value) in request.headers.iter().filter(|(n, _)| n == name) {
            let text = std::str::from_utf8(value).ok();
            let holds = text.filter(|t| t.contains(self.placeholder));
            if self.require && !text.is_some_and(|t| self.is_credential_form(t)) {
                return Err(Refusal::ForeignCredential(format!("header:{name}")));
            }
            if carrier.is_none() {
                carrier = holds;
            }
        }
        let Some(text) = carrier else {
            return Ok(false);
        };
        // Envoy overwrites every value of the header with this one.
        let swapped = text.replace(self.placeholder, self.credential.raw());
        mutations.set(name, header_value(&self.credential, swapped)?);
        Ok(true)
    }

    /// The placeholder alone, or after one scheme word (`Bearer ptok_…`, `token ptok_…`).
    fn is_credential_form(&self, value: &str) -> bool {
        let value = value.trim();
        match value.strip_suffix(self.placeholder) {
            Some("") => true,
            Some(scheme) => scheme.strip_suffix(' ').is_some_and(|word| {
                !word.is_empty()
                    && word
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }),
            None => false,
        }
    }

    /// The query with the placeholder swapped in the named parameters' values.
    fn query(
        &self,
        query: &str,
        names: &[&str],
        found: &mut Vec<String>,
    ) -> Result<String, Refusal> {
        let mut pairs = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded_key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
            let Some(name) = names.iter().find(|n| **n == decoded_key) else {
                pairs.push(pair.to_owned());
                continue;
            };
            let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            if self.require && decoded != self.placeholder {
                return Err(Refusal::ForeignCredential(format!("query:{name}")));
            }
            if value.contains(self.placeholder) {
                let location = format!("query:{name}");
                if !found.contains(&location) {
                    found.push(location);
                }
                let encoded = self.credential.encoded(QUERY_VALUE);
                pairs.push(format!(
                    "{key}={}",
                    value.replace(self.placeholder, &encoded)
                ));
            } else {
                pairs.push(pair.to_owned());
            }
        }
        Ok(pairs.join("&"))
    }

    /// The body with the placeholder swapped, the value encoded for the body's type.
    fn body(&self, request: &OutboundRequest, body: &[u8]) -> Vec<u8> {
        let content_type = request
            .header("content-type")
            .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
            .unwrap_or_default();
        let raw = self.credential.raw();
        let replacement: String = if self.credential.is_marker() {
            raw.to_owned()
        } else if content_type.contains("json") {
            // The placeholder sits inside a JSON string: the value must be escaped.
            json_escaped(raw)
        } else if content_type.contains("x-www-form-urlencoded") {
            utf8_percent_encode(raw, QUERY_VALUE).to_string()
        } else {
            raw.to_owned()
        };
        replace_bytes(body, self.placeholder.as_bytes(), replacement.as_bytes())
    }
}

/// `value` escaped for the inside of a JSON string.
fn json_escaped(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_owned()
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
