//! The value cache shared by every source of every snapshot: one `moka` cache keyed by
//! source identity, so a reload that keeps a source keeps its value.
//!
//! - A value lives for the source's `ttl`, or less if the backend said it expires sooner
//!   (minus a margin).
//! - A failure is remembered for `failure_ttl`, so a down backend is not hammered. The
//!   request fails closed in the meantime.
//! - Concurrent misses on one source share one read (`get_with` coalesces them).
//! - [`SourceCache::refresh`] re-reads values before they expire. A failed refresh keeps
//!   the old value only until its own expiry: an outage serves the cached value until the
//!   TTL, then fails closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use tracing::Instrument;

use super::sources::{CompiledSource, Current};
use super::value::{SecretValue, SourceError};

/// A minted token is dropped this long before the backend says it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// Refresh values in the last fifth of their life.
const REFRESH_AT: f64 = 0.8;

#[derive(Clone)]
struct Entry {
    result: Result<SecretValue, SourceError>,
    lifetime: Duration,
    fetched: Instant,
}

struct ByLifetime;

impl Expiry<u64, Entry> for ByLifetime {
    fn expire_after_create(&self, _: &u64, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.lifetime)
    }

    fn expire_after_update(
        &self,
        _: &u64,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.lifetime)
    }
}

/// Cached source values.
#[derive(Clone)]
pub struct SourceCache {
    entries: Cache<u64, Entry>,
    /// When a refresh of a still-valid value last failed: retried after `failure_ttl`.
    failed_refresh: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl Default for SourceCache {
    fn default() -> Self {
        SourceCache::new()
    }
}

impl SourceCache {
    pub fn new() -> SourceCache {
        SourceCache {
            entries: Cache::builder()
                .max_capacity(100_000)
                .expire_after(ByLifetime)
                .build(),
            failed_refresh: Arc::default(),
        }
    }

    /// The source's value, from the cache or read now.
    pub async fn resolve(&self, source: &CompiledSource) -> Result<SecretValue, SourceError> {
        if source.changed() {
            source.current.store(None);
            self.entries.invalidate(&source.key).await;
        }
        // Fast path: the value in use, while it is valid — no lock, no cache upkeep.
        if let Some(current) = source.current.load().as_ref()
            && current.until > Instant::now()
        {
            return Ok(current.value.clone());
        }
        let entry = match self.entries.get(&source.key).await {
            Some(entry) => entry,
            // Boxed: a nested source (a Vault token) resolves through here again.
            None => {
                self.entries
                    .get_with(source.key, Box::pin(self.load(source)))
                    .await
            }
        };
        remember(source, &entry);
        entry.result
    }

    async fn load(&self, source: &CompiledSource) -> Entry {
        let fetched = Instant::now();
        let span = crate::telemetry::trace::secret_fetch_span(&source.description);
        let result = source.fetch(self).instrument(span.clone()).await;
        if result.is_err() && !span.is_disabled() {
            span.record("otel.status_code", "ERROR");
        }
        match result {
            Ok(value) => Entry {
                lifetime: lifetime(source.ttl, value.expires_in),
                result: Ok(value.value),
                fetched,
            },
            Err(error) => {
                tracing::warn!(source = %source.description, error = %error, retry_in = ?source.failure_ttl,
                    "secret source failed; requests needing it fail closed");
                Entry {
                    result: Err(error),
                    lifetime: source.failure_ttl,
                    fetched,
                }
            }
        }
    }

    /// Reads every source whose value is missing or near the end of its life. A failure
    /// leaves a still-valid value in place.
    pub async fn refresh(&self, sources: &[Arc<CompiledSource>]) {
        for source in sources {
            let due = match self.entries.get(&source.key).await {
                None => true,
                Some(entry) => {
                    entry.result.is_ok()
                        && entry.fetched.elapsed().as_secs_f64()
                            >= entry.lifetime.as_secs_f64() * REFRESH_AT
                }
            };
            let recently_failed = self
                .failed_refresh
                .lock()
                .ok()
                .and_then(|f| f.get(&source.key).copied())
                .is_some_and(|at| at.elapsed() < source.failure_ttl);
            if !due || recently_failed {
                continue;
            }
            if !self.entries.contains_key(&source.key) {
                // Missing: read through `get_with`, so a request missing at the same time
                // waits for this read instead of starting its own.
                let entry = self
                    .entries
                    .get_with(source.key, Box::pin(self.load(source)))
                    .await;
                remember(source, &entry);
                continue;
            }
            let fresh = Box::pin(self.load(source)).await;
            let keep_old = fresh.result.is_err();
            if let Ok(mut failed) = self.failed_refresh.lock() {
                if keep_old {
                    failed.insert(source.key, Instant::now());
                } else {
                    failed.remove(&source.key);
                }
            }
            if !keep_old {
                remember(source, &fresh);
                self.entries.insert(source.key, fresh).await;
            }
        }
    }

    /// Drops everything (tests, and `check`).
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }
}

/// Makes a good value the source's fast-path value, until it expires.
fn remember(source: &CompiledSource, entry: &Entry) {
    if let Ok(value) = &entry.result {
        source.current.store(Some(Arc::new(Current {
            value: value.clone(),
            until: entry.fetched + entry.lifetime,
        })));
    }
}

fn lifetime(ttl: Duration, expires_in: Option<Duration>) -> Duration {
    match expires_in {
        // A short-lived token keeps at least a few seconds of use.
        Some(expires) => ttl.min(
            expires
                .saturating_sub(EXPIRY_MARGIN)
                .max(Duration::from_secs(5)),
        ),
        None => ttl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_expire_before_the_backend_says() {
        let ttl = Duration::from_secs(300);
        assert_eq!(lifetime(ttl, None), ttl);
        assert_eq!(lifetime(ttl, Some(Duration::from_secs(3600))), ttl);
        assert_eq!(
            lifetime(ttl, Some(Duration::from_secs(120))),
            Duration::from_secs(90)
        );
        assert_eq!(
            lifetime(ttl, Some(Duration::from_secs(10))),
            Duration::from_secs(5)
        );
    }
}
