//! A limit's buckets in Redis, shared by every instance that has the same limit: each
//! take is one Lua script (atomic on the server, timed by the server's clock, so the
//! instances' clocks need not agree). A bucket's key expires once it would have refilled.
//!
//! Redis down, slow or answering nonsense: `fail: closed` (the default) refuses with 503
//! `rate_limit_unavailable`; `fail: open` lets the request through, and its audit entry
//! says why it was not counted. After a failed connection, no new one is tried for a
//! second, so an outage costs the requests no connection timeout each.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::LimitConfig;
use crate::transforms::grpc::FailMode;
use crate::transforms::{Annotations, RefusalKind, Rejection, Step};
use crate::vocab::{DurationText, FieldError, redact_url};

/// `config.redis` of a `rate_limit` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (TLS, `rediss://`, is not supported yet).
    pub url: String,
    /// What happens when Redis cannot answer: `closed` refuses (503), `open` forwards.
    #[serde(default)]
    pub fail: FailMode,
    /// How long a request waits for Redis. Default 100ms.
    #[serde(default = "default_timeout")]
    pub timeout: DurationText,
}

fn default_timeout() -> DurationText {
    DurationText(Duration::from_millis(100))
}

impl RedisConfig {
    pub(super) fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if let Err(e) = ::redis::Client::open(self.url.as_str()) {
            problems.push(FieldError::new(
                "url",
                format!(
                    "{} is not a Redis URL: {:?}",
                    redact_url(&self.url),
                    e.kind()
                ),
            ));
        }
        let timeout = self.timeout.0;
        if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(5) {
            problems.push(FieldError::new(
                "timeout",
                format!("{} is out of range: between 1ms and 5s", self.timeout),
            ));
        }
        problems
    }
}

/// `text` with Redis glob characters escaped.
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Takes a token from `KEYS[1]`. ARGV: tokens per millisecond, capacity. Returns
/// `{1, tokens left}` or `{0, milliseconds until a token}`.
const TAKE: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1]) or capacity
local at = tonumber(bucket[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate) + 1000)
if taken == 1 then
  return {1, math.floor(tokens)}
end
return {0, math.ceil((1 - tokens) / rate)}
"#;

/// Why Redis gave no answer (never the URL's password).
pub(super) struct Failure(pub(super) String);

pub(super) struct RedisBuckets {
    client: Option<::redis::Client>,
    /// Every bucket key starts with this: the limit's config, so that instances with the
    /// same limit share buckets and a changed limit starts afresh.
    prefix: String,
    pub(super) timeout: Duration,
    fail: FailMode,
    script: ::redis::Script,
    connection: tokio::sync::Mutex<Option<::redis::aio::ConnectionManager>>,
    last_failed_connect: Mutex<Option<Instant>>,
}

impl RedisBuckets {
    pub(super) fn new(config: &RedisConfig, limit: &LimitConfig) -> RedisBuckets {
        let mut counted = limit.clone();
        counted.redis = None;
        RedisBuckets {
            client: ::redis::Client::open(config.url.as_str()).ok(),
            prefix: format!(
                "portcullis:rate_limit:{:016x}:",
                crate::transforms::state::config_digest(&counted)
            ),
            timeout: config.timeout.0,
            fail: config.fail,
            script: ::redis::Script::new(TAKE),
            connection: tokio::sync::Mutex::new(None),
            last_failed_connect: Mutex::new(None),
        }
    }

    async fn connection(&self) -> Result<::redis::aio::ConnectionManager, Failure> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let recent = self
            .last_failed_connect
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1));
        if recent {
            return Err(Failure(
                "Redis was unreachable less than a second ago".into(),
            ));
        }
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| Failure("the Redis URL is not usable".into()))?;
        let config = ::redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        match client.get_connection_manager_with_config(config).await {
            Ok(connection) => {
                *slot = Some(connection.clone());
                Ok(connection)
            }
            Err(e) => {
                *self
                    .last_failed_connect
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                Err(Failure(format!("cannot connect to Redis: {e}")))
            }
        }
    }

    /// Takes a token from `key`'s bucket: tokens left, or how long until one is there; or
    /// why Redis did not say.
    pub(super) async fn take(
        &self,
        key: &str,
        rate_per_second: f64,
        capacity: f64,
    ) -> Result<Result<u32, Duration>, Failure> {
        let attempt = async {
            let mut connection = self.connection().await?;
            let answer: (i64, i64) = self
                .script
                .key(format!("{}{key}", self.prefix))
                .arg(rate_per_second / 1000.0)
                .arg(capacity)
                .invoke_async(&mut connection)
                .await
                .map_err(|e| Failure(format!("Redis: {e}")))?;
            Ok(match answer {
                (1, left) => Ok(u32::try_from(left).unwrap_or(0)),
                (_, wait_ms) => Err(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))),
            })
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Failure(format!(
                "Redis did not answer within {}ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Up to `most` of this limit's buckets: (key, tokens at the last take, milliseconds
    /// since), by Redis's clock.
    pub(super) async fn tokens(&self, most: usize) -> Result<Vec<(String, f64, i64)>, Failure> {
        let read = async {
            let mut connection = self.connection().await?;
            let failed = |e: ::redis::RedisError| Failure(format!("Redis: {e}"));
            let (seconds, micros): (i64, i64) = ::redis::cmd("TIME")
                .query_async(&mut connection)
                .await
                .map_err(failed)?;
            let now_ms = seconds * 1000 + micros / 1000;
            let mut keys: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, found): (u64, Vec<String>) = ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{}*", escape_glob(&self.prefix)))
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut connection)
                    .await
                    .map_err(failed)?;
                keys.extend(found);
                cursor = next;
                if cursor == 0 || keys.len() >= most {
                    break;
                }
            }
            keys.truncate(most);
            let mut buckets = Vec::with_capacity(keys.len());
            for key in keys {
                let (tokens, at): (Option<String>, Option<String>) = ::redis::cmd("HMGET")
                    .arg(&key)
                    .arg("tokens")
                    .arg("at")
                    .query_async(&mut connection)
                    .await
                    .map_err(failed)?;
                let tokens = tokens.and_then(|t| t.parse::<f64>().ok());
                let at = at.and_then(|t| t.parse::<f64>().ok());
                if let (Some(tokens), Some(at)) = (tokens, at) {
                    let name = key[self.prefix.len()..].to_owned();
                    buckets.push((name, tokens, (now_ms - at as i64).max(0)));
                }
            }
            Ok(buckets)
        };
        match tokio::time::timeout(Duration::from_secs(2), read).await {
            Ok(result) => result,
            Err(_) => Err(Failure("Redis did not answer within 2s".into())),
        }
    }

    /// The step for a request Redis could not count: refused or forwarded, by `fail`.
    pub(super) fn failed(&self, failure: Failure) -> Step {
        tracing::warn!(error = %failure.0, "rate limit: Redis gave no answer");
        let annotations = Annotations {
            reason: Some("rate_limit_unavailable"),
            ..Annotations::default()
        };
        match self.fail {
            FailMode::Open => Step::Continue(annotations),
            FailMode::Closed => Step::Reject(
                Rejection::new(
                    RefusalKind::RateLimitUnavailable,
                    "rate_limit_unavailable",
                    format!(
                        "the rate limit could not be counted ({}); its fail mode is closed",
                        failure.0
                    ),
                    super::KIND.name,
                ),
                annotations,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_s_password_is_never_shown() {
        assert_eq!(
            redact_url("redis://default:hunter2@cache:6379/0"),
            "redis://…@cache:6379/0"
        );
        let config = RedisConfig {
            url: "nonsense://default:hunter2@cache".into(),
            fail: FailMode::Closed,
            timeout: default_timeout(),
        };
        let problems = config.problems();
        assert_eq!(problems[0].path, "url");
        assert!(!problems[0].message.contains("hunter2"), "{problems:?}");
    }
}
