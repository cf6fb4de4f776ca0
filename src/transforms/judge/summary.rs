//! The bounded description of a request that the judge sees: method, URL, the configured
//! headers, and the start of the body. Nothing else of the request leaves for the judge.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::config::SummaryConfig;
use crate::request::{Method, OutboundRequest, default_port};
use crate::transforms::capture::{capture_text, presented_token};

/// A header value or the URL is cut after this many bytes.
const MAX_FIELD_BYTES: usize = 2048;

/// The configured summary, compiled.
#[derive(Debug, Clone)]
pub struct SummaryRules {
    /// Lower case; never one of [`crate::transforms::CREDENTIAL_HEADERS`] (refused at load, and skipped again here).
    headers: Vec<String>,
    max_body_bytes: usize,
}

/// What is sent, serialized as the user message. Fields are ordered and headers sorted,
/// so equal requests give equal text (and one cache key).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub method: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// The start of the body, UTF-8 (invalid bytes replaced); absent without a body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body's full length, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<usize>,
    /// Set when `body` is only the start of it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
}

impl SummaryRules {
    pub fn compile(config: &SummaryConfig) -> SummaryRules {
        SummaryRules {
            headers: crate::transforms::sent_header_names(&config.headers),
            max_body_bytes: config.max_body_bytes,
        }
    }

    /// Summarizes a request. `body` is the buffered body (`None`: not buffered). The
    /// workload's proxy token, should it quote it, is redacted.
    pub fn summarize(&self, request: &OutboundRequest, body: Option<&[u8]>) -> Summary {
        let token = presented_token(request);
        let mut headers = BTreeMap::new();
        for name in &self.headers {
            let values: Vec<String> = request
                .headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| capture_text(v, v.len(), token.as_deref()).0)
                .collect();
            if !values.is_empty() {
                headers.insert(name.clone(), cut(&values.join(", "), MAX_FIELD_BYTES));
            }
        }
        let (body, body_bytes, body_truncated) = match body {
            Some(bytes) if !bytes.is_empty() && self.max_body_bytes > 0 => {
                let (text, truncated) = capture_text(bytes, self.max_body_bytes, token.as_deref());
                (Some(text), Some(bytes.len()), truncated)
            }
            Some(bytes) if !bytes.is_empty() => (None, Some(bytes.len()), true),
            _ => (None, None, false),
        };
        Summary {
            method: request.method_name.clone(),
            url: cut(&url(request), MAX_FIELD_BYTES),
            headers,
            body,
            body_bytes,
            body_truncated,
        }
    }
}

impl Summary {
    /// The user message: the summary as compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The cache key: SHA-256 of exactly what the judge would be sent.
    pub fn key(text: &str) -> [u8; 32] {
        Sha256::digest(text.as_bytes()).into()
    }
}

/// `scheme://host[:port]/path?query`; the port only when it is not the scheme's default.
/// A CONNECT has no URL: its target, `host:port`.
fn url(request: &OutboundRequest) -> String {
    let host = match request.ip {
        Some(std::net::IpAddr::V6(_)) => format!("[{}]", request.host),
        _ => request.host.clone(),
    };
    if request.method == Method::Connect {
        return format!("{host}:{}", request.port);
    }
    let port = if request.port == default_port(&request.scheme) {
        String::new()
    } else {
        format!(":{}", request.port)
    };
    let query = request
        .query()
        .map(|q| format!("?{}", String::from_utf8_lossy(q)))
        .unwrap_or_default();
    format!("{}://{host}{port}{}{query}", request.scheme, request.path)
}

/// At most `max` bytes of `text`, cut on a character boundary, with `…` when cut.
pub(super) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
