//! Durations as users write them: `30s`, `5m`, `1h 30m`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A duration written as text: `30s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct DurationText(pub Duration);

impl TryFrom<String> for DurationText {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(DurationText)
            .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. \"30s\" or \"5m\""))
    }
}

impl From<DurationText> for String {
    fn from(d: DurationText) -> String {
        humantime::format_duration(d.0).to_string()
    }
}

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&humantime::format_duration(self.0).to_string())
    }
}
