//! `/v1/playground`: what the gateway would do with a request, on the live snapshot and
//! its own code path (`portcullis check`), with credentials shown as markers.
//! `/v1/impact`: which recently audited requests a draft policy would decide differently.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::parse_body;
use super::{ApiError, Control, Credentials};
use crate::check::{CheckRequest, build_request, run};
use crate::config::AdminRole;
use crate::policy::{PolicyConfig, PolicySet, Verdict};
use crate::store::audit::{AuditEvent, AuditQuery};
use crate::vocab::FieldError;
use crate::vocab::Tag;

/// A request to try.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaygroundRequest {
    /// `GET`, `POST`, … or `CONNECT`.
    pub method: String,
    /// An absolute URL (`https://api.github.com/repos/x`), or `host:port` for CONNECT.
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request body, as text.
    #[serde(default)]
    pub body: Option<String>,
    /// Tags the workload carries besides those its identity gives (as its listener would).
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// A proxy token the workload presents.
    #[serde(default)]
    pub token: Option<String>,
    /// The workload's address, for `source_cidr` identities.
    #[serde(default)]
    pub source: Option<IpAddr>,
    /// The mTLS peer's URI SAN, for `uri_san` identities.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// Decide a CONNECT as an intercepting listener does.
    #[serde(default)]
    pub intercepted: bool,
}

impl PlaygroundRequest {
    /// What no workload could send: a method or header name that is not a token, a header
    /// value with a line break or NUL, a body on a CONNECT.
    fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if !crate::request::is_header_name(&self.method) {
            problems.push(FieldError::new(
                "method",
                format!("{:?} is not an HTTP method", self.method),
            ));
        }
        for (name, value) in &self.headers {
            if !crate::request::is_header_name(name) {
                problems.push(FieldError::new(
                    format!("headers.{name}"),
                    format!("{name:?} is not a header name"),
                ));
            } else if value.contains(['\r', '\n', '\0']) {
                problems.push(FieldError::new(
                    format!("headers.{name}"),
                    "a header value cannot hold a line break or NUL",
                ));
            }
        }
        if self.method == "CONNECT" && self.body.as_deref().is_some_and(|b| !b.is_empty()) {
            problems.push(FieldError::new(
                "body",
                "a CONNECT carries no request body to check",
            ));
        }
        problems
    }
}

pub async fn playground(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let request: PlaygroundRequest = parse_body(&body)?;
    let problems = request.problems();
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems, ""));
    }
    let check = CheckRequest {
        request_line: format!("{} {}", request.method, request.url),
        headers: request.headers.into_iter().collect(),
        extra_tags: request.tags,
        source: request.source,
        spiffe_id: request.spiffe_id,
        token: request.token,
        intercepted: request.intercepted,
        body: request.body.map(String::into_bytes).unwrap_or_default(),
    };
    let snapshot = control.live.snapshot();
    let report = run(&snapshot, &check)
        .await
        .map_err(|e| ApiError::invalid(vec![FieldError::new("url", e)], ""))?;
    Ok(axum::Json(report.json))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImpactRequest {
    /// The draft: a new policy, or a changed version of a live one (same name); parsed as
    /// `/v1/policies` parses one.
    policy: Value,
    /// How far back to look: a duration (`24h`) or an RFC 3339 time. Default 24h.
    #[serde(default)]
    since: Option<String>,
    /// The most recent requests to replay. Default 1000, at most 10000.
    #[serde(
        default,
        deserialize_with = "crate::vocab::integral::optional_integral"
    )]
    limit: Option<u32>,
}

/// Replays recent audited requests (method, host, port, path, tags) against the live
/// policies and against the live policies with the draft in place, and lists every request
/// whose decision or deciding policy would change. Bodies and headers are not recorded, so
/// body and header conditions evaluate as on an empty request.
pub async fn impact(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    control.caller(&credentials, AdminRole::Viewer)?;
    let request: ImpactRequest = parse_body(&body)?;
    let draft = super::definitions::parse_definition::<PolicyConfig>(&request.policy)
        .map_err(|problems| ApiError::invalid(problems, "policy"))?;
    if let Some(scanner) = control.live.snapshot().policies.dlp() {
        let problems = crate::snapshot::unknown_detectors(&draft, scanner);
        if !problems.is_empty() {
            return Err(ApiError::invalid(problems, "policy"));
        }
    }
    let store = control.store()?;
    let since = super::insight::time_param("since", request.since.as_deref().unwrap_or("24h"))?;
    let limit = match request.limit.unwrap_or(1000) {
        limit @ 1..=10_000 => limit as usize,
        other => {
            return Err(ApiError::invalid(
                vec![FieldError::new(
                    "limit",
                    format!("{other} is out of range: 1 to 10000 requests"),
                )],
                "",
            ));
        }
    };
    let (mut policies, versions, default_action) = control.live.policy_definitions().await;
    let before = PolicySet::compile_versioned(&policies, &versions, default_action);
    let name = draft.name.clone();
    match policies.iter_mut().find(|p| p.name == name) {
        Some(slot) => *slot = draft,
        None => policies.push(draft),
    }
    let after = PolicySet::compile(&policies, default_action);

    let mut events: Vec<AuditEvent> = Vec::new();
    let mut query = AuditQuery {
        since: Some(since.clone()),
        limit: 1000,
        ..AuditQuery::default()
    };
    while events.len() < limit {
        let page = store
            .search_audit(&query)
            .await
            .map_err(|e| ApiError::from_store(e, ""))?;
        events.extend(page.events);
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    events.truncate(limit);

    let mut changed = Vec::new();
    let mut replayed = 0;
    let mut decided_before_the_policies = 0;
    for event in &events {
        // Refused before any policy was asked (no identity, a malformed or misdirected
        // request): no policy change would change that answer.
        if refused_before_the_policies(event) {
            decided_before_the_policies += 1;
            continue;
        }
        let Some((request, tags)) = replayable(event) else {
            continue;
        };
        replayed += 1;
        let facts = request.facts();
        let was = before.evaluate(&facts, &before.tag_ids(&tags));
        let would = after.evaluate(&facts, &after.tag_ids(&tags));
        let (was, would) = (outcome(&before, &was), outcome(&after, &would));
        if was != would {
            changed.push(json!({
                "request_id": event.request_id,
                "ts": event.ts,
                "method": event.method,
                "host": event.host,
                "port": event.port,
                "path": event.path,
                "tags": event.tags,
                "recorded": {"decision": event.decision, "policy": event.policy},
                "before": was,
                "after": would,
            }));
        }
    }
    Ok(axum::Json(json!({
        "policy": name,
        "since": since,
        "replayed": replayed,
        "not_replayed": decided_before_the_policies,
        "changed": changed.len(),
        "requests": changed,
        "note": "replays method, host, port, path and tags: body and header conditions see an empty request; requests refused before the policies (no identity, malformed) are not replayed",
    })))
}

/// Whether an audited request was refused before the policies decided it: for want of an
/// identity (407), as malformed (400) or misdirected (421).
fn refused_before_the_policies(event: &AuditEvent) -> bool {
    matches!(event.status, Some(400 | 407 | 421))
        || matches!(
            event.reason.as_deref(),
            Some("proxy_auth_required" | "invalid_request" | "misdirected_request")
        )
}

/// The request an audit event describes, rebuilt as the engine sees it.
fn replayable(event: &AuditEvent) -> Option<(crate::request::OutboundRequest, Vec<Tag>)> {
    let line = if event.method == "CONNECT" {
        format!("CONNECT {}:{}", bracketed(&event.host), event.port)
    } else {
        format!(
            "{} {}://{}:{}{}",
            event.method,
            event.scheme,
            bracketed(&event.host),
            event.port,
            event.path
        )
    };
    let request = build_request(&CheckRequest {
        request_line: line,
        ..CheckRequest::default()
    })
    .ok()?;
    let tags = event
        .tags
        .iter()
        .filter_map(|t| Tag::parse(t).ok())
        .collect();
    Some((request, tags))
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn outcome(set: &PolicySet, verdict: &Verdict) -> Value {
    json!({
        "decision": verdict.decision(),
        "policy": verdict.decided_by.map(|r| &*set.policy(r.policy).name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(status: Option<i64>, reason: Option<&str>) -> AuditEvent {
        AuditEvent {
            ts: "2026-12-02T00:00:00Z".into(),
            request_id: "r".into(),
            decision: "DENIED".into(),
            policy: None,
            policy_version: None,
            status,
            reason: reason.map(str::to_owned),
            method: "GET".into(),
            scheme: "http".into(),
            host: "a.test".into(),
            port: 80,
            path: "/".into(),
            identity: None,
            tags: Vec::new(),
            record: String::new(),
        }
    }

    #[test]
    fn requests_refused_before_the_policies_are_not_replayed() {
        assert!(refused_before_the_policies(&event(
            Some(407),
            Some("proxy_auth_required")
        )));
        assert!(refused_before_the_policies(&event(
            Some(400),
            Some("invalid_request")
        )));
        assert!(refused_before_the_policies(&event(
            None,
            Some("misdirected_request")
        )));
        assert!(!refused_before_the_policies(&event(
            Some(403),
            Some("no_matching_policy")
        )));
        assert!(!refused_before_the_policies(&event(Some(200), None)));
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceTest {
    source: crate::secrets::SourceConfig,
}

/// How long a source test waits for the backend.
const SOURCE_TEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /v1/secret-sources/test`: reads a draft secret's source once, on this gateway
/// host, and says whether it could be read — never the value (nor its length). An admin's
/// call, as a secret's source is an admin's to change; bounded by `store.secret_sources`
/// as a stored secret is.
pub async fn test_source(
    State(control): State<Arc<Control>>,
    credentials: Credentials,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let caller = control.caller(&credentials, AdminRole::Admin)?;
    // As for a stored secret: only with a store, and only what its bounds allow, so the
    // test is no way to learn what else the gateway host could read.
    control.store()?;
    let SourceTest { source } = parse_body(&body)?;
    let config = control.live.config().await;
    if let Some(store) = &config.store {
        let errors = store.secret_sources.check(&source);
        if !errors.is_empty() {
            return Err(ApiError::invalid(errors, "source"));
        }
    }
    let probe = crate::secrets::probe(&source, SOURCE_TEST_DEADLINE)
        .await
        .map_err(|errors| ApiError::invalid(errors, "source"))?;
    tracing::info!(operator = %caller.name, source = %probe.description,
                   readable = probe.outcome.is_ok(), "secret source tested");
    Ok(axum::Json(json!({
        "source": probe.description,
        "readable": probe.outcome.is_ok(),
        "error": probe.outcome.err(),
        "elapsed_ms": probe.elapsed.as_millis() as u64,
    })))
}
