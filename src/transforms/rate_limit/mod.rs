//! The `rate_limit` transform: a token bucket per key (an identity, a host, a deciding
//! policy, a tag's value, or one for all), counted in this instance's memory, or with
//! `redis` in a Redis server every instance of a fleet shares ([`redis`]). A request that
//! finds its bucket empty is refused with 429 `rate_limited` and `Retry-After`, the
//! seconds until the bucket holds a token again.
//!
//! The buckets outlive reloads that keep the limit's config (see [`LimitStates`]): a
//! reload does not hand every workload a fresh burst. Past [`MAX_KEYS`] keys, the buckets
//! that have refilled (and so say nothing a fresh one would not) are dropped; a bucket not
//! yet refilled is kept, so a flood of new keys cannot reset a limited one. What stays is
//! bounded by the requests of one refill time, and the sweeps are spaced so that their
//! cost per request stays constant (the next comes when the map has doubled).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::kind::{
    Applied, CompileContext, Kind, Transform, TransformConfig, required_config, validated,
};
use super::{Annotations, Exchange, RefusalKind, Rejection, Step};
use crate::vocab::{DurationText, FieldError};

pub(super) const KIND: Kind = Kind {
    name: "rate_limit",
    parse: |_, config| {
        let config: LimitConfig = required_config(
            config,
            "rate_limit needs a `config` with `requests` and `per` (e.g. {requests: 60, per: 1m})",
        )?;
        let problems = config.problems();
        Ok(Arc::new(validated(config, problems)?))
    },
};

/// Keys past which refilled buckets are dropped.
const MAX_KEYS: usize = 100_000;

/// `config` of a `rate_limit` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests allowed per `per`, on average.
    pub requests: u32,
    pub per: DurationText,
    /// How many may come at once: the bucket's size. Default: `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What is counted separately: `identity` (default), `host`, `policy` (the deciding
    /// policy), `tag:<prefix>` (the value of the workload's first tag `<prefix>:…`), or
    /// `global` (one bucket).
    #[serde(default)]
    pub key: LimitKey,
    /// Count in this Redis server, shared by every instance, instead of in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<redis::RedisConfig>,
}

/// What a limit counts separately.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum LimitKey {
    #[default]
    Identity,
    Host,
    Policy,
    /// The workload's first tag `<prefix>:…`, whole.
    Tag(String),
    Global,
}

impl TryFrom<String> for LimitKey {
    type Error = String;

    fn try_from(text: String) -> Result<LimitKey, String> {
        Ok(match text.as_str() {
            "identity" => LimitKey::Identity,
            "host" => LimitKey::Host,
            "policy" => LimitKey::Policy,
            "global" => LimitKey::Global,
            other => match other.strip_prefix("tag:") {
                Some(prefix) if !prefix.is_empty() && !prefix.contains(':') => {
                    LimitKey::Tag(prefix.to_owned())
                }
                _ => {
                    return Err(format!(
                        "unknown key {other:?}: identity, host, policy, global, or \
                         tag:<prefix> (e.g. tag:team)"
                    ));
                }
            },
        })
    }
}

impl LimitKey {
    /// What a refusal says was counted: `identity "alpha"`, or the gateway.
    pub(super) fn counted(&self, value: &str) -> String {
        match self {
            LimitKey::Global => "the gateway".to_owned(),
            other => format!("{} {value:?}", String::from(other.clone())),
        }
    }
}

/// A wait in whole seconds, rounded up: retrying at `Retry-After` finds the limit open.
pub(super) fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl From<LimitKey> for String {
    fn from(key: LimitKey) -> String {
        match key {
            LimitKey::Identity => "identity".into(),
            LimitKey::Host => "host".into(),
            LimitKey::Policy => "policy".into(),
            LimitKey::Global => "global".into(),
            LimitKey::Tag(prefix) => format!("tag:{prefix}"),
        }
    }
}

impl LimitConfig {
    fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if self.requests == 0 {
            problems.push(FieldError::new(
                "requests",
                "0 requests refuses everything: use a deny policy for that",
            ));
        }
        let per = self.per.0;
        if per < Duration::from_secs(1) || per > Duration::from_secs(31 * 24 * 60 * 60) {
            problems.push(FieldError::new(
                "per",
                format!("{} is out of range: between 1s and 31d", self.per),
            ));
        }
        if let Some(redis) = &self.redis {
            problems.extend(redis.problems().into_iter().map(|e| e.under("redis")));
        }
        if self.burst == Some(0) {
            problems.push(FieldError::new(
                "burst",
                "a burst of 0 lets nothing through: at least 1",
            ));
        }
        problems
    }

    /// Tokens added per second.
    fn rate(&self) -> f64 {
        f64::from(self.requests) / self.per.0.as_secs_f64()
    }

    fn capacity(&self) -> f64 {
        f64::from(self.burst.unwrap_or(self.requests))
    }
}

impl TransformConfig for LimitConfig {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn wait_timeout(&self) -> Duration {
        self.redis.as_ref().map_or(Duration::ZERO, |r| r.timeout.0)
    }

    fn compile(&self, ctx: &CompileContext<'_>) -> Result<Box<dyn Transform>, Vec<FieldError>> {
        Ok(Box::new(RateLimit {
            key: self.key.clone(),
            state: ctx.limits.get(self),
            config: self.clone(),
        }))
    }
}

/// The buckets of one limit.
struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub(crate) struct LimitState {
    rate: f64,
    capacity: f64,
    buckets: Mutex<Buckets>,
    /// Set: the buckets are in Redis, not in `buckets`.
    redis: Option<redis::RedisBuckets>,
}

struct Buckets {
    by_key: HashMap<String, Bucket>,
    /// The size at which refilled buckets are swept next.
    sweep_at: usize,
}

impl LimitState {
    fn new(config: &LimitConfig) -> LimitState {
        LimitState {
            rate: config.rate(),
            capacity: config.capacity(),
            buckets: Mutex::new(Buckets {
                by_key: HashMap::new(),
                sweep_at: MAX_KEYS,
            }),
            redis: config
                .redis
                .as_ref()
                .map(|r| redis::RedisBuckets::new(r, config)),
        }
    }

    /// Takes a token from `key`'s bucket: `Ok` with the tokens left, or how long until one
    /// is there.
    fn take(&self, key: &str, now: Instant) -> Result<u32, Duration> {
        let mut guard = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let buckets = &mut *guard;
        if buckets.by_key.len() >= buckets.sweep_at && !buckets.by_key.contains_key(key) {
            let (rate, capacity) = (self.rate, self.capacity);
            buckets.by_key.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < capacity
            });
            buckets.sweep_at = MAX_KEYS.max(2 * buckets.by_key.len());
        }
        let bucket = match buckets.by_key.get_mut(key) {
            Some(bucket) => bucket,
            None => buckets.by_key.entry(key.to_owned()).or_insert(Bucket {
                tokens: self.capacity,
                updated: now,
            }),
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(bucket.tokens as u32)
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

/// The buckets of every limit, by the limit's whole config, so that a reload keeping a
/// limit keeps its counts, and a changed limit starts afresh.
#[derive(Default)]
pub struct LimitStates(super::state::StatesByConfig<LimitState>);

impl LimitStates {
    fn get(&self, config: &LimitConfig) -> Arc<LimitState> {
        self.0.get(config, LimitState::new)
    }
}

/// A compiled `rate_limit` entry.
pub struct RateLimit {
    key: LimitKey,
    state: Arc<LimitState>,
    pub config: LimitConfig,
}

/// One key's use of a limit, now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyUse {
    pub key: String,
    /// Tokens taken and not yet back (a token partly refilled counts as taken).
    pub used: u32,
    pub capacity: u32,
}

impl RateLimit {
    /// The `top` most used keys, most used first: from memory, or from Redis (at most 1,000
    /// of its keys read). Keys whose buckets have refilled are left out.
    pub async fn usage(&self, top: usize) -> Result<Vec<KeyUse>, String> {
        let capacity = self.state.capacity;
        let mut uses: Vec<KeyUse> = match &self.state.redis {
            Some(redis) => redis
                .tokens(1_000)
                .await
                .map_err(|failure| failure.0)?
                .into_iter()
                .map(|(key, tokens, ms_since)| {
                    let now = tokens + ms_since as f64 / 1000.0 * self.state.rate;
                    (key, now.min(capacity))
                })
                .map(|(key, tokens)| key_use(key, tokens, capacity))
                .collect(),
            None => {
                let now = Instant::now();
                let guard = self.state.buckets.lock().unwrap_or_else(|e| e.into_inner());
                guard
                    .by_key
                    .iter()
                    .map(|(key, b)| {
                        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
                        let tokens = (b.tokens + elapsed * self.state.rate).min(capacity);
                        key_use(key.clone(), tokens, capacity)
                    })
                    .collect()
            }
        };
        uses.retain(|u| u.used > 0);
        uses.sort_by(|a, b| b.used.cmp(&a.used).then_with(|| a.key.cmp(&b.key)));
        uses.truncate(top);
        Ok(uses)
    }

    /// `memory` or `redis`.
    pub fn backend(&self) -> &'static str {
        if self.state.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    }
}

fn key_use(key: String, tokens: f64, capacity: f64) -> KeyUse {
    KeyUse {
        key,
        used: (capacity - tokens).max(0.0).ceil() as u32,
        capacity: capacity as u32,
    }
}

/// The key a request counts under, for a limit or a budget keyed by `key`.
pub(super) fn key_of(key: &LimitKey, exchange: &Exchange<'_>) -> String {
    {
        match key {
            // Requests without a name (anonymous, by address) share one bucket.
            LimitKey::Identity => exchange
                .identity
                .name
                .as_deref()
                .unwrap_or("(no identity)")
                .to_owned(),
            LimitKey::Host => exchange.request.host.clone(),
            LimitKey::Policy => exchange
                .verdict
                .as_ref()
                .and_then(|v| v.decided_by)
                .map_or("(default action)".to_owned(), |r| {
                    exchange.policies.policy(r.policy).name.to_string()
                }),
            LimitKey::Tag(prefix) => exchange
                .identity
                .tags
                .iter()
                .map(|t| t.as_str())
                .find(|t| {
                    t.strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with(':'))
                })
                .unwrap_or("(untagged)")
                .to_owned(),
            LimitKey::Global => String::new(),
        }
    }
}

impl Transform for RateLimit {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn apply<'a>(&'a self, exchange: &'a mut Exchange<'_>) -> Applied<'a> {
        let key = key_of(&self.key, exchange);
        if let Some(redis) = &self.state.redis {
            return Applied::Waiting(Box::pin(async move {
                match redis.take(&key, self.state.rate, self.state.capacity).await {
                    Ok(Ok(_)) => Step::Continue(Annotations::default()),
                    Ok(Err(wait)) => self.refusal(&key, wait),
                    Err(failure) => redis.failed(failure),
                }
            }));
        }
        Applied::Done(match self.state.take(&key, Instant::now()) {
            Ok(_) => Step::Continue(Annotations::default()),
            Err(wait) => self.refusal(&key, wait),
        })
    }

    fn wait(&self, _: &crate::request::OutboundRequest) -> Option<Duration> {
        self.state.redis.as_ref().map(|r| r.timeout)
    }

    fn rate_limit(&self) -> Option<&RateLimit> {
        Some(self)
    }
}

impl RateLimit {
    fn refusal(&self, key: &str, wait: Duration) -> Step {
        let retry_after = whole_seconds(wait);
        let counted = self.key.counted(key);
        let mut rejection = Rejection::new(
            RefusalKind::RateLimited,
            "rate_limited",
            format!("rate limit reached for {counted}: retry after {retry_after}s"),
            KIND.name,
        );
        rejection.retry_after = Some(retry_after.max(1));
        let annotations = Annotations {
            reason: Some("rate_limited"),
            ..Annotations::default()
        };
        Step::Reject(rejection, annotations)
    }
}

mod redis;
#[cfg(test)]
mod tests;
