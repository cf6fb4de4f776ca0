//! What the transforms that ask another service (the LLM judge, a gRPC processor) share:
//! how long a request may wait on them, which request headers may be sent to them, and how
//! their text is cleaned before it is shown.

use std::time::Duration;

use crate::vocab::{DurationText, FieldError};

/// Headers that carry the workload's credentials: never sent to a judge or a decision
/// processor, and never set by one.
pub const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// The longest a request may wait on such services, together: Envoy waits at most its
/// `max_message_timeout` (30s) for a decision.
pub const MAX_WAIT: Duration = Duration::from_secs(29);

/// What is wrong with the timeout of a transform that waits on another service (a judge, a
/// processor), at `timeout`.
pub(super) fn wait_timeout_problem(timeout: &DurationText) -> Option<FieldError> {
    if timeout.0.is_zero() {
        Some(FieldError::new("timeout", "must be more than 0s"))
    } else if timeout.0 > MAX_WAIT {
        Some(FieldError::new(
            "timeout",
            format!(
                "{timeout} is over the limit of 29s: Envoy waits at most its \
                 max_message_timeout (30s) for a decision"
            ),
        ))
    } else {
        None
    }
}

/// What is wrong with a list of request headers to be sent to `recipient` (at `field`):
/// names that are not header names, and credential headers, which are never sent.
pub(super) fn sent_header_problems(
    names: &[String],
    field: &str,
    recipient: &str,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let lower = name.trim().to_ascii_lowercase();
        if CREDENTIAL_HEADERS.contains(&lower.as_str()) {
            errors.push(FieldError::new(
                format!("{field}[{i}]"),
                format!(
                    "{name:?} carries credentials and is never sent to {recipient} (refused: {})",
                    CREDENTIAL_HEADERS.join(", ")
                ),
            ));
        } else if !crate::request::is_header_name(&lower) {
            errors.push(FieldError::new(
                format!("{field}[{i}]"),
                format!("{name:?} is not a header name"),
            ));
        }
    }
    errors
}

/// The configured names of headers sent to another service, as compiled: trimmed, lower
/// case, each once, never a credential header (refused at load; dropped again here).
pub(super) fn sent_header_names(names: &[String]) -> Vec<String> {
    let mut sent: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let name = name.trim().to_ascii_lowercase();
        if !sent.contains(&name) && !CREDENTIAL_HEADERS.contains(&name.as_str()) {
            sent.push(name);
        }
    }
    sent
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Text from another service (a judge's reason, a processor's message) as it may be shown:
/// no control characters, whitespace collapsed, at most `max_chars` characters.
pub(super) fn printable(text: &str, max_chars: usize) -> Option<String> {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if cleaned.is_empty() {
        return None;
    }
    Some(match cleaned.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &cleaned[..at]),
        None => cleaned,
    })
}
