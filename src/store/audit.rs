//! Audit events in the store: written in batches by every instance, searched by tag,
//! decision, policy, host and time; counted per policy for fire counts; replayed for
//! impact previews.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// One decided request as stored: the indexed fields, and the audit line itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    pub ts: String,
    pub request_id: String,
    pub decision: String,
    pub policy: Option<String>,
    pub policy_version: Option<i64>,
    pub status: Option<i64>,
    pub reason: Option<String>,
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    /// The identity's name, when it had one.
    pub identity: Option<String>,
    pub tags: Vec<String>,
    /// The JSON audit record.
    #[serde(skip)]
    pub record: String,
}

/// Filters for [`Store::search_audit`]; every one that is set must hold.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Every one of these tags.
    pub tags: Vec<String>,
    pub decision: Option<String>,
    pub policy: Option<String>,
    /// The identity's name, exactly.
    pub identity: Option<String>,
    /// An exact host, or `*.example.com` for its subdomains.
    pub host: Option<String>,
    /// RFC 3339 (as [`super::now`] writes it), inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    pub limit: u32,
    /// From [`AuditPage::next`]: continue after this event.
    pub after: Option<(String, String)>,
}

/// One page of results, newest first.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// The (ts, request_id) of the last event when more may follow.
    pub next: Option<(String, String)>,
}

/// How often one policy decided in a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FireCount {
    /// `None`: the default action decided (or the request was refused before the policies).
    pub policy: Option<String>,
    pub decision: String,
    pub count: i64,
}

/// Rows per INSERT: far below both backends' bind-parameter limits.
const ROWS_PER_INSERT: usize = 200;
const EVENT_COLUMNS: usize = 14;

const SELECT: &str = "SELECT e.ts, e.request_id, e.decision, e.policy, e.policy_version, \
    e.status, e.reason, e.method, e.scheme, e.host, e.port, e.path, e.identity, e.record \
    FROM audit_events e";

impl Store {
    /// Writes events in one transaction; an event already stored is left alone.
    pub async fn insert_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        for chunk in events.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO audit_events (ts, request_id, decision, policy, policy_version, \
                 status, reason, method, scheme, host, port, path, identity, record) VALUES {} \
                 ON CONFLICT DO NOTHING",
                placeholders(chunk.len(), EVENT_COLUMNS)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in chunk {
                query = query
                    .bind(e.ts.as_str())
                    .bind(e.request_id.as_str())
                    .bind(e.decision.as_str())
                    .bind(e.policy.as_deref())
                    .bind(e.policy_version)
                    .bind(e.status)
                    .bind(e.reason.as_deref())
                    .bind(e.method.as_str())
                    .bind(e.scheme.as_str())
                    .bind(e.host.as_str())
                    .bind(i64::from(e.port))
                    .bind(e.path.as_str())
                    .bind(e.identity.as_deref())
                    .bind(e.record.as_str());
            }
            query.execute(&mut *tx).await?;
            let tags: Vec<(&str, &str, &str)> = chunk
                .iter()
                .flat_map(|e| {
                    e.tags
                        .iter()
                        .map(|t| (t.as_str(), e.ts.as_str(), e.request_id.as_str()))
                })
                .collect();
            for tags in tags.chunks(ROWS_PER_INSERT) {
                let sql = format!(
                    "INSERT INTO audit_event_tags (tag, ts, request_id) VALUES {} \
                     ON CONFLICT DO NOTHING",
                    placeholders(tags.len(), 3)
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (tag, ts, id) in tags {
                    query = query.bind(*tag).bind(*ts).bind(*id);
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Events matching every filter, newest first, one page at a time.
    pub async fn search_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let mut conditions: Vec<String> = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut bind = |value: String| {
            binds.push(value);
            format!("${}", binds.len())
        };
        for tag in &query.tags {
            let p = bind(tag.clone());
            conditions.push(format!(
                "EXISTS (SELECT 1 FROM audit_event_tags t WHERE t.tag = {p} \
                 AND t.ts = e.ts AND t.request_id = e.request_id)"
            ));
        }
        if let Some(decision) = &query.decision {
            conditions.push(format!(
                "e.decision = {}",
                bind(decision.to_ascii_uppercase())
            ));
        }
        if let Some(policy) = &query.policy {
            conditions.push(format!("e.policy = {}", bind(policy.clone())));
        }
        if let Some(identity) = &query.identity {
            conditions.push(format!("e.identity = {}", bind(identity.clone())));
        }
        if let Some(host) = &query.host {
            let host = host.to_ascii_lowercase();
            match host.strip_prefix("*.") {
                Some(domain) => conditions.push(format!(
                    "e.host LIKE {} ESCAPE '\\'",
                    bind(format!("%.{}", escape_like(domain)))
                )),
                None => conditions.push(format!("e.host = {}", bind(host))),
            }
        }
        if let Some(since) = &query.since {
            conditions.push(format!("e.ts >= {}", bind(since.clone())));
        }
        if let Some(until) = &query.until {
            conditions.push(format!("e.ts < {}", bind(until.clone())));
        }
        if let Some((ts, id)) = &query.after {
            let ts_a = bind(ts.clone());
            let ts_b = bind(ts.clone());
            let id = bind(id.clone());
            conditions.push(format!(
                "(e.ts < {ts_a} OR (e.ts = {ts_b} AND e.request_id < {id}))"
            ));
        }
        let limit = query.limit.clamp(1, 1000);
        let sql = format!(
            "{SELECT}{}{} ORDER BY e.ts DESC, e.request_id DESC LIMIT {}",
            if conditions.is_empty() { "" } else { " WHERE " },
            conditions.join(" AND "),
            limit + 1
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for value in &binds {
            q = q.bind(value.as_str());
        }
        let rows = q.fetch_all(&self.pool()).await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            events.push(event_row(row)?);
        }
        let more = events.len() > limit as usize;
        events.truncate(limit as usize);
        self.load_tags(&mut events).await?;
        let next = if more {
            events.last().map(|e| (e.ts.clone(), e.request_id.clone()))
        } else {
            None
        };
        Ok(AuditPage { events, next })
    }

    /// How many requests each policy decided since `since`, by decision.
    pub async fn fire_counts(&self, since: &str) -> Result<Vec<FireCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT policy, decision, COUNT(*) AS n FROM audit_events WHERE ts >= $1
             GROUP BY policy, decision ORDER BY policy, decision",
        )
        .bind(since)
        .fetch_all(&self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(FireCount {
                    policy: row.try_get("policy")?,
                    decision: row.try_get("decision")?,
                    count: row.try_get("n")?,
                })
            })
            .collect()
    }

    /// Deletes events older than `before`; returns how many.
    pub async fn prune_audit(&self, before: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM audit_event_tags WHERE ts < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM audit_events WHERE ts < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted)
    }

    async fn load_tags(&self, events: &mut [AuditEvent]) -> Result<(), StoreError> {
        for chunk in events.chunks_mut(ROWS_PER_INSERT) {
            let pairs: Vec<String> = (0..chunk.len())
                .map(|i| format!("(t.ts = ${} AND t.request_id = ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = format!(
                "SELECT t.ts, t.request_id, t.tag FROM audit_event_tags t WHERE {} \
                 ORDER BY t.tag",
                pairs.join(" OR ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in chunk.iter() {
                q = q.bind(e.ts.as_str()).bind(e.request_id.as_str());
            }
            for row in q.fetch_all(&self.pool()).await? {
                let ts: String = row.try_get("ts")?;
                let id: String = row.try_get("request_id")?;
                if let Some(e) = chunk.iter_mut().find(|e| e.ts == ts && e.request_id == id) {
                    e.tags.push(row.try_get("tag")?);
                }
            }
        }
        Ok(())
    }
}

fn event_row(row: &sqlx::any::AnyRow) -> Result<AuditEvent, StoreError> {
    let port: i64 = row.try_get("port")?;
    Ok(AuditEvent {
        ts: row.try_get("ts")?,
        request_id: row.try_get("request_id")?,
        decision: row.try_get("decision")?,
        policy: row.try_get("policy")?,
        policy_version: row.try_get("policy_version")?,
        status: row.try_get("status")?,
        reason: row.try_get("reason")?,
        method: row.try_get("method")?,
        scheme: row.try_get("scheme")?,
        host: row.try_get("host")?,
        port: u16::try_from(port).unwrap_or(0),
        path: row.try_get("path")?,
        identity: row.try_get("identity")?,
        tags: Vec::new(),
        record: row.try_get("record")?,
    })
}

/// `($1, …, $n), ($n+1, …)` for `rows` rows of `columns` values.
fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let values: Vec<String> = (1..=columns)
                .map(|c| format!("${}", r * columns + c))
                .collect();
            format!("({})", values.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_every_value() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }

    #[test]
    fn like_wildcards_in_a_host_are_literal() {
        assert_eq!(escape_like("a_b%c"), "a\\_b\\%c");
    }
}
