//! The admin API's client: JSON over HTTP with one bearer token, and errors that say what
//! to do about them. The token is held as a secret: it is sent in `Authorization` and
//! never appears in a message, a `Debug` or a URL.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::vocab::FieldError;

/// Where the admin API is, unless `--server` or `PORTCULLIS_SERVER` says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:9901";

/// A connection to one instance's admin API.
#[derive(Debug)]
pub struct AdminClient {
    http: reqwest::Client,
    server: Url,
    /// `Bearer <token>`, marked sensitive.
    authorization: Option<HeaderValue>,
}

/// Why a call did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--server {0:?} is not an http:// or https:// URL")]
    BadServer(String),
    #[error("the admin token holds characters an HTTP header cannot carry")]
    BadToken,
    #[error("cannot reach the admin API at {server}: {cause}")]
    Unreachable { server: String, cause: String },
    /// 401: no token, or one the gateway does not know.
    #[error("{}", unauthorized(.server, .message, *.sent))]
    Unauthorized {
        server: String,
        message: String,
        sent: bool,
    },
    /// 403: a viewer token on a changing call.
    #[error("{message}; set PORTCULLIS_ADMIN_TOKEN (or --token) to a token with that role")]
    Forbidden { message: String },
    /// Any other error answer, in the API's own words.
    #[error("{0}")]
    Api(ApiFailure),
    #[error(
        "the admin API at {server} answered {status} with a body that is not its JSON: {detail}"
    )]
    Unexpected {
        server: String,
        status: u16,
        detail: String,
    },
}

fn unauthorized(server: &str, message: &str, sent: bool) -> String {
    if sent {
        format!(
            "the admin API at {server} refused the admin token: {message}; set \
             PORTCULLIS_ADMIN_TOKEN (or --token) to a token it knows"
        )
    } else {
        format!(
            "the admin API at {server} needs an admin token: set PORTCULLIS_ADMIN_TOKEN \
             (or --token) to one of the gateway's `admin.tokens`"
        )
    }
}

/// An error answer: `{"error": {"type", "message", "errors"?, "live_version"?}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    /// `invalid`, `not_found`, `conflict`, `stale_version`, `no_store`, …
    pub kind: String,
    pub message: String,
    /// For `invalid`: every problem, by field path in the request body.
    pub errors: Vec<FieldError>,
    /// For `stale_version`: the live version.
    pub live_version: Option<i64>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} {})", self.message, self.status, self.kind)?;
        // A single error is already the message; more are listed one per line.
        let single = match self.errors.as_slice() {
            [one] if one.path.is_empty() => self.message == one.message,
            [one] => self.message == format!("{}: {}", one.path, one.message),
            _ => false,
        };
        if !single {
            for error in &self.errors {
                if error.path.is_empty() {
                    write!(f, "\n  {}", error.message)?;
                } else {
                    write!(f, "\n  {}: {}", error.path, error.message)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    #[serde(rename = "type")]
    kind: String,
    message: String,
    #[serde(default)]
    errors: Vec<FieldError>,
    #[serde(default)]
    live_version: Option<i64>,
}

impl AdminClient {
    /// A client for the admin API at `server` (`http://host:port`, optionally with a path
    /// prefix), authenticating with `token`.
    pub fn new(server: &str, token: Option<&SecretString>) -> Result<AdminClient, ClientError> {
        let parsed = Url::parse(server.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
            .ok_or_else(|| ClientError::BadServer(server.to_owned()))?;
        let authorization = match token.map(|t| t.expose_secret().trim()) {
            None | Some("") => None,
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| ClientError::BadToken)?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::builder()
            // A workload's HTTP_PROXY points at the gateway itself: its policies must not
            // decide, nor its audit trail see, the operator's calls to its control plane.
            .no_proxy()
            // The API never redirects; following one would send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Unreachable {
                server: shown(&parsed),
                cause: root_cause(&e),
            })?;
        Ok(AdminClient {
            http,
            server: parsed,
            authorization,
        })
    }

    /// The server, as it may be shown: without any credentials in the URL.
    pub fn server(&self) -> String {
        shown(&self.server)
    }

    /// `GET` the resource at `segments` (each percent-encoded), with a query.
    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Value, ClientError> {
        self.call(Method::GET, segments, query, None).await
    }

    /// `POST` a JSON body.
    pub async fn post(&self, segments: &[&str], body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, segments, &[], Some(body)).await
    }

    /// `PUT` a JSON body.
    pub async fn put(&self, segments: &[&str], body: &Value) -> Result<Value, ClientError> {
        self.call(Method::PUT, segments, &[], Some(body)).await
    }

    /// `DELETE`, with a query.
    pub async fn delete(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Value, ClientError> {
        self.call(Method::DELETE, segments, query, None).await
    }

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = self.url(segments, query);
        let mut request = self.http.request(method, url);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            server: self.server(),
            cause: root_cause(&e),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        self.answer(status, &bytes)
    }

    /// The URL of `segments` under the server's path, with `query`.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.server.clone();
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .expect("checked in new: an http(s) URL has a path")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// The answer's JSON, or the error it carries.
    fn answer(&self, status: StatusCode, bytes: &[u8]) -> Result<Value, ClientError> {
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(bytes).map_err(|e| ClientError::Unexpected {
                server: self.server(),
                status: status.as_u16(),
                detail: e.to_string(),
            });
        }
        let error = match serde_json::from_slice::<ErrorBody>(bytes) {
            Ok(body) => body.error,
            Err(_) => {
                return Err(ClientError::Unexpected {
                    server: self.server(),
                    status: status.as_u16(),
                    detail: excerpt(bytes),
                });
            }
        };
        Err(match status {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized {
                server: self.server(),
                message: error.message,
                sent: self.authorization.is_some(),
            },
            StatusCode::FORBIDDEN => ClientError::Forbidden {
                message: error.message,
            },
            _ => ClientError::Api(ApiFailure {
                status: status.as_u16(),
                kind: error.kind,
                message: error.message,
                errors: error.errors,
                live_version: error.live_version,
            }),
        })
    }
}

/// A URL without its user name and password, and without a lone trailing `/`.
fn shown(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let text = url.to_string();
    match text.strip_suffix('/') {
        Some(trimmed) if url.path() == "/" => trimmed.to_owned(),
        _ => text,
    }
}

/// The innermost cause (`Connection refused (os error 111)`): what the user can act on.
fn root_cause(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer in time (timed out)".to_owned();
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The start of a body that is not the API's JSON (a proxy's HTML page, say).
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None if text.is_empty() => "(empty)".to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(server: &str) -> AdminClient {
        AdminClient::new(server, Some(&SecretString::from("s3cret-admin"))).unwrap()
    }

    #[test]
    fn urls_encode_each_segment_under_the_servers_path() {
        let c = client("http://127.0.0.1:9901");
        assert_eq!(
            c.url(
                &["v1", "policies", "a b/c"],
                &[("version", "3"), ("reason", "x&y")]
            )
            .as_str(),
            "http://127.0.0.1:9901/v1/policies/a%20b%2Fc?version=3&reason=x%26y"
        );
        let c = client("https://gw.example/portcullis/");
        assert_eq!(
            c.url(&["v1", "status"], &[]).as_str(),
            "https://gw.example/portcullis/v1/status"
        );
    }

    #[test]
    fn the_server_is_shown_without_credentials() {
        let c = client("http://ops:hunter2@127.0.0.1:9901/");
        assert_eq!(c.server(), "http://127.0.0.1:9901");
        assert!(matches!(
            AdminClient::new("127.0.0.1:9901", None),
            Err(ClientError::BadServer(_))
        ));
    }

    #[test]
    fn the_token_is_not_in_the_clients_debug() {
        let c = client("http://127.0.0.1:9901");
        assert!(!format!("{c:?}").contains("s3cret-admin"));
    }

    #[test]
    fn error_answers_become_messages_that_say_what_to_do() {
        let c = client("http://127.0.0.1:9901");
        let e = c
            .answer(
                StatusCode::UNAUTHORIZED,
                br#"{"error":{"type":"unauthorized","message":"the admin token is not recognised"}}"#,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("PORTCULLIS_ADMIN_TOKEN"), "{e}");
        let e = c
            .answer(
                StatusCode::FORBIDDEN,
                br#"{"error":{"type":"forbidden","message":"admin token \"dashboards\" is a viewer: this call needs an editor"}}"#,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is a viewer") && e.contains("needs an editor") && e.contains("that role"),
            "{e}"
        );

        let e = c
            .answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                br#"{"error":{"type":"invalid","message":"2 problems in the request","errors":[
                    {"path":"policy.rules[0].host","message":"bad host"},
                    {"path":"policy.colour","message":"unknown field `colour`"}]}}"#,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "2 problems in the request (422 invalid)\n  policy.rules[0].host: bad host\n  \
             policy.colour: unknown field `colour`"
        );
        // One error is the message already: not listed twice.
        let e = c
            .answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                br#"{"error":{"type":"invalid","message":"policy.rules: needs a rule","errors":[
                    {"path":"policy.rules","message":"needs a rule"}]}}"#,
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "policy.rules: needs a rule (422 invalid)");
        let e = c
            .answer(
                StatusCode::CONFLICT,
                br#"{"error":{"type":"stale_version","live_version":4,
                    "message":"policy \"repos\" is at version 4, not 3: reload it and retry"}}"#,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "policy \"repos\" is at version 4, not 3: reload it and retry (409 stale_version)"
        );
        let e = c
            .answer(StatusCode::BAD_GATEWAY, b"<html>upstream down</html>")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("502") && e.contains("<html>upstream down"),
            "{e}"
        );
        assert_eq!(c.answer(StatusCode::OK, b"").unwrap(), Value::Null);
    }
}
