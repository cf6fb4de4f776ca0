//! What the judge leaves in the audit record.

use serde::{Serialize, Serializer};

use crate::telemetry::metrics::Metrics;

/// The judge's entry in the audit record. Holds no request content and no key: the
/// verdict, the judge's own (shortened) reason, and how the verdict was reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JudgeAnnotation {
    pub verdict: JudgeVerdict,
    /// The judge's reason, at most 200 characters, control characters removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Time spent on the verdict: the call, or the cache lookup.
    pub duration_ms: u64,
    /// Tokens the provider billed for the call, when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// The verdict came from the cache; no call was made.
    pub cached: bool,
    /// What was applied instead of a verdict.
    pub fallback: FallbackApplied,
    /// Why there was no verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<FallbackCause>,
}

impl JudgeAnnotation {
    /// Counts this step in `portcullis_judge_verdicts_total` and the fallback and token
    /// counters.
    pub fn record(&self, metrics: &Metrics) {
        let outcome = match (self.fallback, self.cached) {
            (FallbackApplied::Deny, _) => "fallback_deny",
            (FallbackApplied::Skip, _) => "fallback_skip",
            (FallbackApplied::None, true) => "cached",
            (FallbackApplied::None, false) => "judged",
        };
        let cause = self.cause.map(FallbackCause::label);
        metrics.record_judge(self.verdict.as_str(), outcome, cause, self.tokens);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeVerdict {
    Allow,
    Deny,
    /// No verdict: the fallback applied.
    None,
}

impl JudgeVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            JudgeVerdict::Allow => "allow",
            JudgeVerdict::Deny => "deny",
            JudgeVerdict::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackApplied {
    None,
    Deny,
    Skip,
}

/// Why the judge gave no verdict. Serialized as `timeout`, `error`, `malformed`,
/// `breaker_open`, `busy`, or `status_NNN` (the provider's HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackCause {
    Timeout,
    /// The call failed (connection, TLS, the API key unreadable).
    Error,
    /// The answer was not exactly a verdict.
    Malformed,
    BreakerOpen,
    /// `max_concurrency` calls were already in flight.
    Busy,
    /// The provider answered with a non-2xx status.
    Status(u16),
}

impl FallbackCause {
    /// A fixed label (metrics): the status code is folded into `status`.
    pub fn label(self) -> &'static str {
        match self {
            FallbackCause::Timeout => "timeout",
            FallbackCause::Error => "error",
            FallbackCause::Malformed => "malformed",
            FallbackCause::BreakerOpen => "breaker_open",
            FallbackCause::Busy => "busy",
            FallbackCause::Status(_) => "status",
        }
    }

    /// The refusal's `reason` under `fallback: deny`.
    pub(super) fn reason(self) -> &'static str {
        match self {
            FallbackCause::Timeout => "judge_timeout",
            FallbackCause::Error | FallbackCause::Status(_) => "judge_error",
            FallbackCause::Malformed => "judge_malformed",
            FallbackCause::BreakerOpen => "judge_breaker_open",
            FallbackCause::Busy => "judge_busy",
        }
    }
}

impl std::fmt::Display for FallbackCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FallbackCause::Status(code) => write!(f, "status_{code}"),
            other => f.write_str(other.label()),
        }
    }
}

impl Serialize for FallbackCause {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
