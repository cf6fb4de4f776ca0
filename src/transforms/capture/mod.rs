//! `body_capture` and `header_capture`: copy what the workload sent into the audit record,
//! never changing the request.
//!
//! Both must run before `secrets` (refused at load otherwise), so what they see is the
//! request as the workload sent it: placeholders, never injected credentials. Headers that
//! carry credentials (`authorization`, `proxy-authorization`, `cookie`, `set-cookie`,
//! `x-api-key`) and every header a configured secret writes cannot be captured; the
//! workload's own proxy token is replaced by `<redacted>` wherever it appears in a capture.

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::kind::{
    Applied, CompileContext, Kind, Transform, TransformConfig, optional_config, required_config,
    validated,
};
use super::secrets::config::InjectConfig;
use super::{Annotations, Exchange, SecretConfig, Step};
use crate::identity::Identity;
use crate::inspect::Body;
use crate::request::OutboundRequest;
use crate::vocab::FieldError;

/// Headers never captured, whatever the config says.
pub const NEVER_CAPTURED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// The default and the largest `max_bytes` of `body_capture`.
pub const DEFAULT_MAX_BYTES: usize = 4096;
pub const MAX_MAX_BYTES: usize = 65536;

/// A captured header value is cut after this many bytes (and marked truncated).
pub const MAX_HEADER_VALUE: usize = 1024;

/// What replaces the workload's proxy token in a capture.
pub const REDACTED: &str = "<redacted>";

fn default_max_bytes() -> usize {
    DEFAULT_MAX_BYTES
}

/// `config` of a `body_capture` transform (optional).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BodyCaptureConfig {
    /// At most this many bytes of the body are recorded (1 to 65536).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

impl Default for BodyCaptureConfig {
    fn default() -> Self {
        BodyCaptureConfig {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl BodyCaptureConfig {
    /// Paths relative to `config`.
    pub fn validate(&self) -> Vec<FieldError> {
        if self.max_bytes == 0 || self.max_bytes > MAX_MAX_BYTES {
            return vec![FieldError::new(
                "max_bytes",
                format!(
                    "{} is out of range: capture between 1 and {MAX_MAX_BYTES} bytes",
                    self.max_bytes
                ),
            )];
        }
        Vec::new()
    }
}

/// `config` of a `header_capture` transform.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderCaptureConfig {
    /// Header names (case-insensitive) whose values are recorded.
    pub headers: Vec<String>,
}

impl HeaderCaptureConfig {
    /// Checks that need no other section; paths relative to `config`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.headers.is_empty() {
            errors.push(FieldError::new(
                "headers",
                "list at least one header name to capture",
            ));
        }
        for (i, name) in self.headers.iter().enumerate() {
            let lower = name.to_ascii_lowercase();
            let path = format!("headers[{i}]");
            if !crate::request::is_header_name(&lower) {
                errors.push(FieldError::new(
                    path,
                    format!("{name:?} is not a header name"),
                ));
            } else if NEVER_CAPTURED.contains(&lower.as_str()) {
                errors.push(FieldError::new(
                    path,
                    format!("{name:?} carries credentials and is never captured"),
                ));
            } else if self.headers[..i]
                .iter()
                .any(|other| other.eq_ignore_ascii_case(name))
            {
                errors.push(FieldError::new(path, format!("{name:?} is listed twice")));
            }
        }
        errors
    }
}

/// The headers a secret writes its credential (or something derived from it) into.
pub fn secret_headers(secret: &SecretConfig) -> Vec<String> {
    match &secret.inject {
        InjectConfig::Bearer {} | InjectConfig::Basic { .. } => vec!["authorization".into()],
        InjectConfig::Custom { header, .. } => {
            header.iter().map(|h| h.to_ascii_lowercase()).collect()
        }
        InjectConfig::AwsSigv4 { .. } => {
            vec!["authorization".into(), "x-amz-security-token".into()]
        }
        InjectConfig::Hmac { header, .. } => vec![header.to_ascii_lowercase()],
        InjectConfig::PathToken { .. } | InjectConfig::ProxyToken { .. } => Vec::new(),
    }
}

/// A captured body, in the audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapturedBody {
    /// The body's full size.
    pub bytes: usize,
    /// Whether `text` holds only the first `max_bytes`.
    pub truncated: bool,
    /// The (first bytes of the) body, UTF-8 with invalid sequences replaced.
    pub text: String,
}

/// A captured header value, in the audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapturedHeader {
    pub name: String,
    pub value: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// The first `max` bytes of `bytes` as text, cut at a character boundary when the cut
/// falls inside a UTF-8 sequence; whether anything was cut.
fn prefix_text(bytes: &[u8], max: usize) -> (String, bool) {
    if bytes.len() <= max {
        return (String::from_utf8_lossy(bytes).into_owned(), false);
    }
    let mut cut = &bytes[..max];
    if let Err(e) = std::str::from_utf8(cut)
        && e.error_len().is_none()
    {
        // An incomplete sequence at the end: drop it rather than show U+FFFD.
        cut = &cut[..e.valid_up_to()];
    }
    (String::from_utf8_lossy(cut).into_owned(), true)
}

/// The workload's proxy token, as presented in `Proxy-Authorization` (Bearer or Basic):
/// what must not leave in a capture, a judge's summary or a processor's request.
pub(in crate::transforms) fn presented_token(request: &OutboundRequest) -> Option<String> {
    let header = request.header("proxy-authorization")?;
    let token = crate::identity::proxy_authorization_token(header)?;
    let token = String::from_utf8(token).ok()?;
    // A very short token would redact ordinary text; it cannot be a real one anyway.
    (token.len() >= 8).then_some(token)
}

/// At most `max` bytes of `bytes` as text, with every occurrence of `token` replaced by
/// [`REDACTED`] *before* the cut, so no prefix of the token survives it; whether the text
/// is shorter than the whole.
pub(in crate::transforms) fn capture_text(
    bytes: &[u8],
    max: usize,
    token: Option<&str>,
) -> (String, bool) {
    let Some(token) = token else {
        return prefix_text(bytes, max);
    };
    // Any occurrence starting within the first `max` bytes ends within this window.
    let window = &bytes[..bytes.len().min(max + token.len())];
    let text = String::from_utf8_lossy(window);
    let redacted = if text.contains(token) {
        text.replace(token, REDACTED)
    } else {
        text.into_owned()
    };
    let (text, cut) = prefix_text(redacted.as_bytes(), max);
    (text, cut || window.len() < bytes.len())
}

/// [`capture_text`] for bytes that need not be text: at most `max` bytes of `bytes`, every
/// occurrence of `token` replaced by [`REDACTED`] before the cut; whether anything was cut.
pub(in crate::transforms) fn capture_bytes(
    bytes: &[u8],
    max: usize,
    token: Option<&str>,
) -> (Vec<u8>, bool) {
    let Some(token) = token.map(str::as_bytes) else {
        let kept = &bytes[..bytes.len().min(max)];
        return (kept.to_vec(), kept.len() < bytes.len());
    };
    let window = &bytes[..bytes.len().min(max + token.len())];
    let mut redacted = Vec::with_capacity(window.len());
    let mut from = 0;
    for at in memchr::memmem::find_iter(window, token) {
        if at < from {
            continue;
        }
        redacted.extend_from_slice(&window[from..at]);
        redacted.extend_from_slice(REDACTED.as_bytes());
        from = at + token.len();
    }
    redacted.extend_from_slice(&window[from..]);
    let cut = redacted.len() > max;
    redacted.truncate(max);
    (redacted, cut || window.len() < bytes.len())
}

/// The compiled `body_capture`.
pub struct BodyCapture {
    max_bytes: usize,
}

impl BodyCapture {
    pub fn compile(config: &BodyCaptureConfig) -> BodyCapture {
        BodyCapture {
            max_bytes: config.max_bytes,
        }
    }

    pub(super) fn run(&self, exchange: &mut Exchange<'_>) -> Step {
        let body = match exchange.body.map(Body::bytes) {
            Some(body) if !body.is_empty() => body,
            Some(_) => {
                return Step::Continue(Annotations {
                    reason: Some("no_body"),
                    ..Annotations::default()
                });
            }
            None => {
                return Step::Continue(Annotations {
                    reason: Some("body_not_buffered"),
                    ..Annotations::default()
                });
            }
        };
        let token = presented_token(exchange.request);
        let (text, truncated) = capture_text(body, self.max_bytes, token.as_deref());
        Step::Continue(Annotations {
            captured_body: Some(Box::new(CapturedBody {
                bytes: body.len(),
                truncated,
                text,
            })),
            ..Annotations::default()
        })
    }
}

/// The compiled `header_capture`.
pub struct HeaderCapture {
    /// Lower case.
    headers: Vec<String>,
}

impl HeaderCapture {
    /// `secrets` are checked here: a header any of them writes cannot be captured.
    /// Paths relative to `config` (and naming the secret).
    pub fn compile(
        config: &HeaderCaptureConfig,
        secrets: &[SecretConfig],
    ) -> Result<HeaderCapture, Vec<FieldError>> {
        let mut errors = config.validate();
        let headers: Vec<String> = config
            .headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        for (i, name) in headers.iter().enumerate() {
            if let Some((at, secret)) = secrets
                .iter()
                .enumerate()
                .find(|(_, s)| secret_headers(s).contains(name))
            {
                errors.push(FieldError::new(
                    format!("headers[{i}]"),
                    format!(
                        "secret `{}` (secrets[{at}]) writes its credential into {name:?}: it \
                         is never captured",
                        secret.name
                    ),
                ));
            }
        }
        if errors.is_empty() {
            Ok(HeaderCapture { headers })
        } else {
            Err(errors)
        }
    }

    pub(super) fn run(&self, exchange: &mut Exchange<'_>) -> Step {
        let token = presented_token(exchange.request);
        let mut captured = Vec::new();
        // In config order; a header sent more than once is recorded once per value.
        for name in &self.headers {
            for (_, value) in exchange.request.headers.iter().filter(|(n, _)| n == name) {
                let (value, truncated) = capture_text(value, MAX_HEADER_VALUE, token.as_deref());
                captured.push(CapturedHeader {
                    name: name.clone(),
                    value,
                    truncated,
                });
            }
        }
        Step::Continue(Annotations {
            reason: captured.is_empty().then_some("no_listed_header"),
            captured_headers: captured,
            ..Annotations::default()
        })
    }
}

/// `- body_capture` or `- {name: body_capture, config: {max_bytes: N}}`.
pub(super) const BODY_KIND: Kind = Kind {
    name: "body_capture",
    parse: |_, config| {
        let config: BodyCaptureConfig = optional_config(config)?;
        let problems = config.validate();
        Ok(Arc::new(validated(config, problems)?))
    },
};

/// `- {name: header_capture, config: {headers: […]}}`.
pub(super) const HEADER_KIND: Kind = Kind {
    name: "header_capture",
    parse: |_, config| {
        let config: HeaderCaptureConfig = required_config(
            config,
            "header_capture needs a `config` with a `headers` list of header names",
        )?;
        let problems = config.validate();
        Ok(Arc::new(validated(config, problems)?))
    },
};

const BEFORE_SECRETS: &str =
    "it would capture the credentials `secrets` injects instead of what the workload sent";

impl TransformConfig for BodyCaptureConfig {
    fn name(&self) -> &'static str {
        BODY_KIND.name
    }

    fn must_precede_secrets(&self) -> Option<&'static str> {
        Some(BEFORE_SECRETS)
    }

    fn compile(&self, _: &CompileContext<'_>) -> Result<Box<dyn Transform>, Vec<FieldError>> {
        Ok(Box::new(BodyCapture::compile(self)))
    }
}

impl TransformConfig for HeaderCaptureConfig {
    fn name(&self) -> &'static str {
        HEADER_KIND.name
    }

    fn must_precede_secrets(&self) -> Option<&'static str> {
        Some(BEFORE_SECRETS)
    }

    fn compile(&self, ctx: &CompileContext<'_>) -> Result<Box<dyn Transform>, Vec<FieldError>> {
        match HeaderCapture::compile(self, ctx.secrets) {
            Ok(compiled) => Ok(Box::new(compiled)),
            Err(errors) => Err(ctx.under_config(errors)),
        }
    }
}

impl Transform for BodyCapture {
    fn name(&self) -> &'static str {
        BODY_KIND.name
    }

    fn apply<'a>(&'a self, exchange: &'a mut Exchange<'_>) -> Applied<'a> {
        Applied::Done(self.run(exchange))
    }

    /// A CONNECT has no body of its own (an intercepted tunnel's requests come one by one).
    fn needs_body(&self, request: &OutboundRequest, _: &Identity) -> bool {
        !request.facts().is_connect()
    }
}

impl Transform for HeaderCapture {
    fn name(&self) -> &'static str {
        HEADER_KIND.name
    }

    fn apply<'a>(&'a self, exchange: &'a mut Exchange<'_>) -> Applied<'a> {
        Applied::Done(self.run(exchange))
    }
}

#[cfg(test)]
mod tests;
