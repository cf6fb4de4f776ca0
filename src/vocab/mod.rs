//! The shared vocabulary at the bottom of the crate: what every layer above names without
//! depending on any of them — errors located by field path, names and tags as they may be
//! spelled, durations as written, integers as JSON Schema counts them.

mod diag;
mod duration;
pub mod integral;
pub mod names;
mod tag;
mod urls;

pub use diag::{FieldError, duplicate_names, from_value, join_path};
pub use duration::DurationText;
pub use tag::Tag;
pub use urls::{https_or_loopback, redact_url};

/// The regex crate's message on one line: a syntax error is printed over several lines
/// (the pattern, a caret, then `error: …`), which would break `validate`'s one error per
/// line; the pattern itself is already named.
pub fn regex_error_summary(error: &regex::Error) -> String {
    let message = error.to_string();
    message
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .unwrap_or(message.trim())
        .to_owned()
}
