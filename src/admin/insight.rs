//! `/v1/fire-counts` and `/v1/audit`: what the policies did, from the audit events every
//! instance writes to the store.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Query, State};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Control, Credentials};
use crate::config::AdminRole;
use crate::store::audit::{AuditQuery, FireCount};

const DECISIONS: [&str; 3] = ["ALLOWED", "FLAGGED", "DENIED"];

/// The start of a window ending now (`24h`, `15m`), as the store's timestamps are written.
pub fn window_start(window: &str) -> Result<String, ApiError> {
    let span = humantime::parse_duration(window.trim()).map_err(|e| {
        ApiError::bad_query(format!(
            "window {window:?} is not a duration ({e}): write e.g. 24h"
        ))
    })?;
    if span.is_zero() {
        return Err(ApiError::bad_query(format!(
            "window {window:?} is empty: write e.g. 24h"
        )));
    }
    // A window reaching past 1970 starts there: times before it cannot be written (and
    // nothing was audited then).
    let start = SystemTime::now()
        .checked_sub(span)
        .filter(|start| *start >= SystemTime::UNIX_EPOCH)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(humantime::format_rfc3339_micros(start).to_string())
}

/// A time in a query: a duration back from now (`1h`) or an RFC 3339 time, normalized so
/// it compares with the store's timestamps.
pub fn time_param(name: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if let Ok(at) = humantime::parse_rfc3339_weak(value) {
        return Ok(humantime::format_rfc3339_micros(at).to_string());
    }
    window_start(value).map_err(|_| {
        ApiError::bad_query(format!(
            "{name} {value:?} is neither a duration (1h) nor an RFC 3339 time \
             (2026-12-01T10:00:00Z)"
        ))
    })
}

/// `{"total", "ALLOWED", "FLAGGED", "DENIED"}` for one policy (`None`: no policy decided).
pub fn fires_of(counts: &[FireCount], policy: Option<&str>) -> Value {
    let mut fires = json!({"total": 0});
    let mut total = 0;
    for decision in DECISIONS {
        let n: i64 = counts
            .iter()
            .filter(|c| c.policy.as_deref() == policy && c.decision == decision)
            .map(|c| c.count)
            .sum();
        fires[decision] = json!(n);
        total += n;
    }
    fires["total"] = json!(total);
    fires
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FireQuery {
    window: Option<String>,
}

/// Every live policy with how often it decided in the window, busiest first; policies
/// that never fired are listed with zeros (the dead rules).
pub async fn fire_counts(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    query: Result<Query<FireQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let Query(query) = query.map_err(|e| ApiError::bad_query(e.body_text()))?;
    let window = query.window.unwrap_or_else(|| "24h".to_owned());
    let since = window_start(&window)?;
    let counts = control
        .store()?
        .fire_counts(&since)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    let snapshot = control.live.snapshot();
    let mut names: Vec<String> = snapshot
        .policies
        .policies()
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    for count in &counts {
        if let Some(name) = &count.policy
            && !names.contains(name)
        {
            // Deleted since, or another instance's: still part of the window.
            names.push(name.clone());
        }
    }
    let mut policies: Vec<Value> = names
        .iter()
        .map(|name| {
            let mut entry = fires_of(&counts, Some(name));
            entry["policy"] = json!(name);
            entry
        })
        .collect();
    policies.sort_by_key(|p| std::cmp::Reverse(p["total"].as_i64().unwrap_or(0)));
    Ok(axum::Json(json!({
        "window": window,
        "since": since,
        "policies": policies,
        "no_policy": fires_of(&counts, None),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Comma-separated: every one must be carried.
    tag: Option<String>,
    decision: Option<String>,
    policy: Option<String>,
    identity: Option<String>,
    host: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Audit events, newest first, filtered; `next_cursor` continues the listing.
pub async fn audit_search(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let Query(q) = query.map_err(|e| ApiError::bad_query(e.body_text()))?;
    let decision = match q.decision.as_deref().map(str::to_ascii_uppercase) {
        Some(d) if DECISIONS.contains(&d.as_str()) => Some(d),
        Some(d) => {
            return Err(ApiError::bad_query(format!(
                "decision {d:?} is not one of allowed, flagged, denied"
            )));
        }
        None => None,
    };
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let search = AuditQuery {
        tags: q
            .tag
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        decision,
        policy: q.policy,
        identity: q.identity,
        host: q.host,
        since: q
            .since
            .as_deref()
            .map(|t| time_param("since", t))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|t| time_param("until", t))
            .transpose()?,
        limit: match q.limit.unwrap_or(50) {
            limit @ 1..=1000 => limit,
            other => {
                return Err(ApiError::bad_query(format!(
                    "limit {other} is out of range: 1 to 1000 events per page"
                )));
            }
        },
        after,
    };
    let page = control
        .store()?
        .search_audit(&search)
        .await
        .map_err(|e| ApiError::from_store(e, ""))?;
    let events: Vec<Value> = page
        .events
        .iter()
        .map(|e| serde_json::from_str(&e.record).unwrap_or_else(|_| json!(e)))
        .collect();
    Ok(axum::Json(json!({
        "events": events,
        "next_cursor": page.next.map(|(ts, id)| encode_cursor(&ts, &id)),
    })))
}

fn encode_cursor(ts: &str, request_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{ts}\n{request_id}"))
}

fn decode_cursor(cursor: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::bad_query("cursor is not one this API returned (use next_cursor)");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (ts, id) = text.split_once('\n').ok_or_else(bad)?;
    Ok((ts.to_owned(), id.to_owned()))
}

/// `GET /v1/limits`: every rate limit of this instance's pipeline and its most used keys
/// now (memory: this instance's buckets; Redis: the fleet's), most used first.
pub async fn limits(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
) -> Result<axum::Json<Value>, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let snapshot = control.live.snapshot();
    let mut limits = Vec::new();
    for (at, limit) in snapshot.pipeline.rate_limits() {
        let config = &limit.config;
        let (keys, error) = match limit.usage(100).await {
            Ok(keys) => (keys, None),
            Err(error) => (Vec::new(), Some(error)),
        };
        limits.push(json!({
            "transform": format!("transforms[{at}]"),
            "requests": config.requests,
            "per": config.per.to_string(),
            "burst": config.burst.unwrap_or(config.requests),
            "key": String::from(config.key.clone()),
            "backend": limit.backend(),
            "keys": keys,
            "error": error,
        }));
    }
    Ok(axum::Json(json!({"limits": limits})))
}

/// Each `budget` transform of the pipeline and what its keys spent this window (this
/// instance's count), most first.
pub async fn budgets(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
) -> Result<axum::Json<Value>, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let snapshot = control.live.snapshot();
    let budgets: Vec<Value> = snapshot
        .pipeline
        .budgets()
        .map(|budget| {
            let config = &budget.config;
            json!({
                "transform": budget.place(),
                "per": config.per,
                "tokens": config.tokens,
                "cost": config.cost,
                "key": String::from(config.key.clone()),
                "window_ends": budget.window_ends(),
                "keys": budget.spending(100),
            })
        })
        .collect();
    Ok(axum::Json(json!({"budgets": budgets})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = encode_cursor("2026-12-01T10:00:00.000001Z", "abc");
        assert_eq!(
            decode_cursor(&cursor).unwrap(),
            ("2026-12-01T10:00:00.000001Z".into(), "abc".into())
        );
        assert_eq!(decode_cursor("%%%").unwrap_err().status.as_u16(), 400);
    }

    #[test]
    fn windows_past_1970_start_there_and_empty_ones_are_refused() {
        // Found by schemathesis: `?window=30000d` panicked formatting a time before 1970.
        assert_eq!(
            window_start("30000d").unwrap(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(window_start("0s").unwrap_err().status.as_u16(), 400);
        assert_eq!(window_start("soon").unwrap_err().status.as_u16(), 400);
    }

    #[test]
    fn times_are_normalized_to_the_stores_format() {
        assert_eq!(
            time_param("since", "2026-12-01T10:00:00Z").unwrap(),
            "2026-12-01T10:00:00.000000Z"
        );
        assert!(time_param("since", "1h").unwrap().ends_with('Z'));
        assert!(time_param("since", "yesterday").is_err());
    }

    #[test]
    fn fires_add_up_per_policy() {
        let counts = vec![
            FireCount {
                policy: Some("a".into()),
                decision: "DENIED".into(),
                count: 2,
            },
            FireCount {
                policy: Some("a".into()),
                decision: "ALLOWED".into(),
                count: 3,
            },
            FireCount {
                policy: None,
                decision: "DENIED".into(),
                count: 1,
            },
        ];
        let a = fires_of(&counts, Some("a"));
        assert_eq!(
            (a["total"].as_i64(), a["DENIED"].as_i64()),
            (Some(5), Some(2))
        );
        assert_eq!(fires_of(&counts, None)["total"], 1);
        assert_eq!(fires_of(&counts, Some("b"))["total"], 0);
    }
}
