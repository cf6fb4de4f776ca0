//! `config` of a `judge` transform, as written in `transforms:`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::TokenSource;
use crate::transforms::{sent_header_problems, wait_timeout_problem};
use crate::vocab::DurationText;
use crate::vocab::FieldError;

/// An LLM asked whether a request may leave, against a natural-language policy. It can
/// deny a request, never allow one that another transform refuses.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// The API shape of `url`: `openai` (chat completions) or `anthropic` (messages).
    pub provider: Provider,
    /// The full endpoint, e.g. `https://api.openai.com/v1/chat/completions`.
    pub url: String,
    pub model: String,
    /// The judge's own API key, read on the gateway host: `{env: VAR}` or `{file: PATH}`.
    /// Sent as `Authorization: Bearer` (openai) or `x-api-key` (anthropic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<TokenSource>,
    /// What to deny, in plain words; it becomes the system prompt.
    pub policy: String,
    /// How long one judge call may take before the fallback applies. Default 2s, at most 29s.
    #[serde(default = "default_timeout")]
    pub timeout: DurationText,
    /// Judge calls in flight at once; a request over the cap gets the fallback (`busy`).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// What a request the judge could not decide gets: `deny` (default) or `skip`.
    #[serde(default)]
    pub fallback: Fallback,
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub summary: SummaryConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Openai,
    Anthropic,
}

/// What happens when the judge gives no verdict (timeout, error, malformed answer, open
/// breaker, concurrency cap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Refuse the request (503 `judge_unavailable`).
    #[default]
    Deny,
    /// Let the request continue as if the judge were not configured.
    Skip,
}

/// After `failures` consecutive failed calls the judge is not called for `cooldown`; then
/// one request probes it, and its outcome closes or reopens the breaker.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    #[serde(default = "default_failures")]
    pub failures: u32,
    #[serde(default = "default_cooldown")]
    pub cooldown: DurationText,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: default_failures(),
            cooldown: default_cooldown(),
        }
    }
}

/// Verdicts are remembered per request summary (a SHA-256 of exactly what the judge saw).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `0s` turns the cache off.
    #[serde(default = "default_cache_ttl")]
    pub ttl: DurationText,
    #[serde(default = "default_cache_entries")]
    pub max_entries: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: default_cache_ttl(),
            max_entries: default_cache_entries(),
        }
    }
}

/// What of the request the judge sees besides its method and URL.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryConfig {
    /// Request headers sent by name (case-insensitive). `authorization`,
    /// `proxy-authorization` and `cookie` are refused.
    #[serde(default = "default_summary_headers")]
    pub headers: Vec<String>,
    /// The body is cut after this many bytes (and marked truncated). `0`: no body.
    #[serde(default = "default_summary_body")]
    pub max_body_bytes: usize,
}

impl Default for SummaryConfig {
    fn default() -> Self {
        SummaryConfig {
            headers: default_summary_headers(),
            max_body_bytes: default_summary_body(),
        }
    }
}

fn default_timeout() -> DurationText {
    DurationText(Duration::from_secs(2))
}

fn default_max_concurrency() -> usize {
    16
}

fn default_failures() -> u32 {
    5
}

fn default_cooldown() -> DurationText {
    DurationText(Duration::from_secs(30))
}

fn default_cache_ttl() -> DurationText {
    DurationText(Duration::from_secs(300))
}

fn default_cache_entries() -> u64 {
    10_000
}

fn default_summary_headers() -> Vec<String> {
    vec!["content-type".into(), "user-agent".into()]
}

fn default_summary_body() -> usize {
    4096
}

impl JudgeConfig {
    /// Checks what deserialization cannot; every problem, paths relative to `config`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            Ok(_) => errors.push(FieldError::new(
                "url",
                format!("{:?} is not an http(s) URL", self.url),
            )),
            Err(e) => errors.push(FieldError::new(
                "url",
                format!("{:?} is not a URL: {e}", self.url),
            )),
        }
        if self.model.trim().is_empty() {
            errors.push(FieldError::new("model", "a model name is required"));
        }
        if self.policy.trim().is_empty() {
            errors.push(FieldError::new(
                "policy",
                "the policy text is empty: say what the judge should deny",
            ));
        }
        if let Some(key) = &self.api_key {
            match (&key.env, &key.file, &key.sha256) {
                (_, _, Some(_)) => errors.push(FieldError::new(
                    "api_key.sha256",
                    "the judge sends its API key to the provider, so it needs the key itself: \
                     use `env` or `file`",
                )),
                (Some(var), None, None) if var.is_empty() || var.contains(['=', '\0']) => errors
                    .push(FieldError::new(
                        "api_key.env",
                        format!("{var:?} is not a variable name"),
                    )),
                (Some(_), None, None) | (None, Some(_), None) => {}
                _ => errors.push(FieldError::new(
                    "api_key",
                    "an api_key needs exactly one of `env`, `file`",
                )),
            }
        }
        errors.extend(wait_timeout_problem(&self.timeout));
        if self.max_concurrency == 0 {
            errors.push(FieldError::new(
                "max_concurrency",
                "must be at least 1 (0 would send every request to the fallback)",
            ));
        }
        if self.circuit_breaker.failures == 0 {
            errors.push(FieldError::new(
                "circuit_breaker.failures",
                "must be at least 1",
            ));
        }
        errors.extend(sent_header_problems(
            &self.summary.headers,
            "summary.headers",
            "the judge",
        ));
        errors
    }
}
