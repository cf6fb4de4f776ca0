//! The admin API's errors: one JSON shape, `{"error": {"type", "message", "errors"?}}`,
//! and the parsing of request bodies into precise ones — malformed JSON is a 400 with its
//! line and column, a field that does not fit is a 422 listing `{path, message}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::StoreError;
use crate::vocab::{FieldError, join_path};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// `error.type`: `malformed_json`, `invalid`, `not_found`, `conflict`, `stale_version`,
    /// `unauthorized`, `forbidden`, `no_store`, `store_unavailable`.
    pub kind: &'static str,
    pub message: String,
    /// For `invalid`: every problem, by field path in the request body.
    pub errors: Vec<FieldError>,
    /// For `stale_version`: the live version, to reload and retry with.
    pub live_version: Option<i64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
    #[serde(skip_serializing_if = "Option::is_none")]
    live_version: Option<i64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                kind: self.kind,
                message: &self.message,
                errors: &self.errors,
                live_version: self.live_version,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            errors: Vec::new(),
            live_version: None,
        }
    }

    /// 422 with every problem; `under` places relative paths in the request body.
    pub fn invalid(errors: Vec<FieldError>, under: &str) -> ApiError {
        let errors: Vec<FieldError> = errors
            .into_iter()
            .map(|e| FieldError {
                path: join_path(under, &e.path),
                message: e.message,
            })
            .collect();
        let message = match errors.as_slice() {
            [one] if one.path.is_empty() => one.message.clone(),
            [one] => format!("{}: {}", one.path, one.message),
            many => format!("{} problems in the request", many.len()),
        };
        ApiError {
            errors,
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_query(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }

    /// A store error, for a definition in the request body at `under`.
    pub fn from_store(error: StoreError, under: &str) -> ApiError {
        match error {
            StoreError::Invalid(errors) => ApiError::invalid(errors, under),
            StoreError::NotFound { .. } | StoreError::NoSuchVersion { .. } => {
                ApiError::not_found(error.to_string())
            }
            StoreError::Exists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", error.to_string())
            }
            StoreError::Stale { live, .. } => ApiError {
                live_version: Some(live),
                ..ApiError::new(StatusCode::CONFLICT, "stale_version", error.to_string())
            },
            StoreError::UnsupportedUrl(_) | StoreError::Database(_) | StoreError::Migrate(_) => {
                tracing::warn!(error = %error, "admin API: store operation failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    format!("the policy store cannot be reached; nothing was changed ({error})"),
                )
            }
        }
    }
}

/// Parses a JSON request body: syntax errors are 400 `malformed_json` with line and
/// column; a value that does not fit the shape is 422 with its field path.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the request body is empty: send a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer);
    if value.is_ok()
        && let Err(e) = deserializer.end()
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the request body is not valid JSON: {e}"),
        ));
    }
    value.map_err(|e| match e.inner().classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the request body is not valid JSON: {}", e.inner()),
        ),
        serde_json::error::Category::Data | serde_json::error::Category::Io => {
            ApiError::invalid(vec![field_error(e)], "")
        }
    })
}

/// A value that does not fit its type, at its field path (an unknown field's path names
/// the field itself).
pub fn field_error(error: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = error.path().to_string();
    let message = strip_position(&error.into_inner().to_string());
    let path = match unknown_field(&message) {
        Some(field) if path == "." => field.to_owned(),
        Some(field) if !path.ends_with(field) => join_path(&path, field),
        _ if path == "." => String::new(),
        _ => path,
    };
    FieldError::new(path, message)
}

/// serde_json appends " at line L column C"; the path says where already.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Envelope {
        policy: crate::policy::PolicyConfig,
        #[serde(default)]
        reason: String,
    }

    fn error(body: &str) -> ApiError {
        parse_body::<Envelope>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn malformed_json_is_a_400_with_its_position() {
        let e = error(r#"{"policy": {"name": "x",}"#);
        assert_eq!((e.status.as_u16(), e.kind), (400, "malformed_json"));
        assert!(e.message.contains("line 1 column"), "{}", e.message);
        assert_eq!(error("   ").kind, "malformed_json");
        let trailing = parse_body::<serde_json::Value>(b"{} trailing").unwrap_err();
        assert_eq!(trailing.kind, "malformed_json");
    }

    #[test]
    fn a_bad_field_is_a_422_at_its_path() {
        let e =
            error(r#"{"policy": {"name": "x", "action": "allow", "rules": [{"host": "a[b"}]}}"#);
        assert_eq!((e.status.as_u16(), e.kind), (422, "invalid"));
        assert_eq!(e.errors[0].path, "policy.rules[0].host");
        assert!(
            e.errors[0].message.contains(r#"host "a[b""#),
            "{:?}",
            e.errors
        );

        let e = error(r#"{"policy": {"name": "x", "action": "allow", "rules": [], "colour": 1}}"#);
        assert_eq!(e.errors[0].path, "policy.colour");
        assert!(e.errors[0].message.starts_with("unknown field `colour`"));

        let e = error(r#"{"policy": {"name": "x", "action": "allow", "rules": []}, "why": 1}"#);
        assert_eq!(e.errors[0].path, "why");
    }
}
