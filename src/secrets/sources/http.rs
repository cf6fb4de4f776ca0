//! Helpers the HTTP-based sources share (Vault, 1Password Connect, OAuth2, GCP): URL
//! checks, bounded response bodies, and failures turned into messages that carry statuses
//! and backend error codes, never a value.

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::Url;
use reqwest::header::HeaderValue;

use crate::secrets::{SecretValue, SourceError};
use crate::vocab::FieldError;

/// Seconds since the Unix epoch.
pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Responses larger than this are refused (a secret, a token, an item).
const MAX_BODY: usize = 1024 * 1024;

/// Backend error text is clipped to this many characters.
pub(super) const MAX_ERROR_TEXT: usize = 200;

/// Parses an `http`/`https` URL with a host and no fragment or credentials; a query only
/// when `allow_query` (token endpoints may carry one; base URLs may not).
pub(super) fn parse_url(
    field: &str,
    text: &str,
    allow_query: bool,
    errors: &mut Vec<FieldError>,
) -> Option<Url> {
    match Url::parse(text.trim()) {
        Ok(url)
            if matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some()
                && (allow_query || url.query().is_none())
                && url.fragment().is_none()
                && url.username().is_empty()
                && url.password().is_none() =>
        {
            Some(url)
        }
        Ok(_) => {
            errors.push(FieldError::new(
                field,
                format!(
                    "{text:?} must be an http or https URL with a host and no {}fragment or \
                     credentials",
                    if allow_query { "" } else { "query, " }
                ),
            ));
            None
        }
        Err(e) => {
            errors.push(FieldError::new(
                field,
                format!("{text:?} is not a URL ({e})"),
            ));
            None
        }
    }
}

/// A credential as a header value, marked sensitive (kept out of debug output).
pub(super) fn sensitive_header(
    value: &SecretValue,
    what: &str,
) -> Result<HeaderValue, SourceError> {
    let mut header = HeaderValue::from_str(value.expose())
        .map_err(|_| SourceError::new(format!("the {what} cannot be sent in a header")))?;
    header.set_sensitive(true);
    Ok(header)
}

/// Why a request got no response: the kind, and the innermost cause (`Connection
/// refused`), never the URL's query or a header.
pub(super) fn request_failed(error: &reqwest::Error) -> SourceError {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let cause = cause.to_string();
    if cause.is_empty() || cause == error.to_string() {
        SourceError::new(kind)
    } else {
        SourceError::new(format!("{kind}: {}", clip(&cause)))
    }
}

/// The response body, at most [`MAX_BODY`] bytes.
pub(super) async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, SourceError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| request_failed(&e))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(SourceError::new(format!(
                "the response is larger than {MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Backend text for an error message: one line (runs of whitespace and control characters
/// become one space), at most [`MAX_ERROR_TEXT`] characters.
pub(super) fn clip(text: &str) -> String {
    let line = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    match line.char_indices().nth(MAX_ERROR_TEXT) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// A fake HTTP backend for unit tests: answers `GET`s by path and query from `routes`
/// (404 otherwise), and records each request's path, query and headers.
#[cfg(test)]
pub(super) mod fake {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    pub type Routes = Arc<Mutex<HashMap<String, (u16, serde_json::Value)>>>;
    pub type Seen = Arc<Mutex<Vec<(String, axum::http::HeaderMap)>>>;

    /// Starts the backend; returns its base URL, its routes (changeable) and what it saw.
    pub async fn start(routes: &[(&str, u16, serde_json::Value)]) -> (String, Routes, Seen) {
        let table: Routes = Arc::new(Mutex::new(
            routes
                .iter()
                .map(|(k, status, body)| ((*k).to_owned(), (*status, body.clone())))
                .collect(),
        ));
        let seen: Seen = Arc::default();
        let (t, s) = (table.clone(), seen.clone());
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
                let (t, s) = (t.clone(), s.clone());
                async move {
                    let key = uri
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default();
                    s.lock().unwrap().push((key.clone(), headers));
                    let (status, body) = t
                        .lock()
                        .unwrap()
                        .get(&key)
                        .cloned()
                        .unwrap_or((404, serde_json::json!({"errors": []})));
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        axum::Json(body),
                    )
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), table, seen)
    }
}
