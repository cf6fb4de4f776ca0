//! `config` of a `grpc` transform, as written in `transforms:`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::transforms::{sent_header_problems, wait_timeout_problem};
use crate::vocab::DurationText;
use crate::vocab::FieldError;

/// The most of a body a processor may be sent.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A decision delegated to an external gRPC service implementing
/// `portcullis.processor.v1.Processor` (`proto/`). It can refuse a request or add headers
/// to it, never allow one that an earlier transform refused.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// `http://host:port` (HTTP/2 in the clear) or `https://host:port` (TLS, verified
    /// against the system's roots).
    pub endpoint: String,
    /// How long one decision may take, connecting included, before `fail` applies.
    /// Default 200ms, at most 29s.
    #[serde(default = "default_timeout")]
    pub timeout: DurationText,
    /// What a request gets when the processor gives no valid answer (unreachable, timeout,
    /// gRPC error, a response that breaks the contract): `closed` refuses it (503),
    /// `open` lets it continue.
    #[serde(default)]
    pub fail: FailMode,
    /// Send the start of the request body (Envoy then buffers the body of requests in
    /// scope).
    #[serde(default)]
    pub send_body: bool,
    /// With `send_body`: the body is cut after this many bytes (and marked truncated).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Request headers sent by name (case-insensitive). `authorization`,
    /// `proxy-authorization` and `cookie` are refused.
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refuse the request: 503 (`processor_unavailable` for a processor,
    /// `rate_limit_unavailable` for a Redis-backed limit).
    #[default]
    Closed,
    /// Let the request continue as if the transform were not configured.
    Open,
}

impl FailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
        }
    }
}

fn default_timeout() -> DurationText {
    DurationText(Duration::from_millis(200))
}

fn default_max_body_bytes() -> usize {
    16 * 1024
}

fn default_headers() -> Vec<String> {
    vec!["content-type".into(), "user-agent".into()]
}

impl GrpcConfig {
    /// Checks what deserialization cannot; every problem, paths relative to `config`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(why) = endpoint_problem(&self.endpoint) {
            errors.push(FieldError::new("endpoint", why));
        }
        errors.extend(wait_timeout_problem(&self.timeout));
        if self.send_body && (self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_BYTES) {
            errors.push(FieldError::new(
                "max_body_bytes",
                format!(
                    "{} is out of range: with send_body, 1 to {MAX_BODY_BYTES} bytes",
                    self.max_body_bytes
                ),
            ));
        }
        errors.extend(sent_header_problems(
            &self.headers,
            "headers",
            "a processor",
        ));
        errors
    }
}

/// Why `endpoint` is not one tonic can dial: an `http` or `https` URL with a host and a
/// port or the scheme's default, and nothing after it.
fn endpoint_problem(endpoint: &str) -> Result<(), String> {
    let not_an_address = || {
        format!("{endpoint:?} is not an http:// or https:// address (e.g. http://127.0.0.1:9100)")
    };
    let url = reqwest::Url::parse(endpoint).map_err(|_| not_an_address())?;
    // Checked first, so that no error message repeats them.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the endpoint carries credentials (user:password@): a processor is \
                    reached without any"
                .into(),
        );
    }
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(not_an_address());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{endpoint:?} has a path: give only scheme, host and port; the method is always \
             /portcullis.processor.v1.Processor/Decide"
        ));
    }
    Ok(())
}
