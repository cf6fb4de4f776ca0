//! `portcullis check`: decides one request offline, against a config file, and prints the
//! whole decision trace — the same code path as the gateway, without Envoy.

pub mod render;

use std::net::{IpAddr, SocketAddr};

use serde_json::json;

use crate::audit::{AuditRecord, micros};
use crate::inspect::Body;
use crate::policy::Decision;
use crate::policy::RequestFacts;
use crate::request::{Method, OutboundRequest, RawRequest, RequestConfig};
use crate::snapshot::{Decided, Snapshot};
use crate::transforms::Rejection;
use crate::vocab::Tag;

pub use render::{Report, render_text};

/// A request described on the command line.
#[derive(Debug, Clone, Default)]
pub struct CheckRequest {
    /// `GET https://api.github.com/repos/x`, or `CONNECT host:port`.
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub extra_tags: Vec<Tag>,
    pub source: Option<IpAddr>,
    pub spiffe_id: Option<String>,
    pub token: Option<String>,
    /// Decide a CONNECT as an intercepting listener does (could a request inside be
    /// allowed?) rather than as an opaque tunnel.
    pub intercepted: bool,
    /// The request body; empty for a request without one.
    pub body: Vec<u8>,
}

/// Builds the request Envoy would have sent, read with the default `request:` settings.
pub fn build_request(check: &CheckRequest) -> Result<OutboundRequest, String> {
    build_request_with(check, &RequestConfig::default())
}

/// Builds the request Envoy would have sent, read with `config`.
pub fn build_request_with(
    check: &CheckRequest,
    config: &RequestConfig,
) -> Result<OutboundRequest, String> {
    let line = check.request_line.trim();
    let (method, target) = line
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("expected \"METHOD URL\", got {line:?}"))?;
    let target = target.trim();
    let (scheme, authority, path) = if method == "CONNECT" {
        ("https", target, "")
    } else {
        let (scheme, rest) = target
            .split_once("://")
            .ok_or_else(|| format!("{target:?} is not an absolute URL (http://host/path)"))?;
        match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (scheme, &rest[..i], &rest[i..]),
            Some(i) => (scheme, &rest[..i], "/"),
            None => (scheme, rest, "/"),
        }
    };
    let mut headers: Vec<(String, Vec<u8>)> = check
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect();
    if let Some(token) = &check.token {
        headers.push((
            "proxy-authorization".into(),
            format!("Bearer {token}").into_bytes(),
        ));
    }
    let raw = RawRequest {
        method: Some(method.as_bytes()),
        scheme: Some(scheme.as_bytes()),
        authority: Some(authority.as_bytes()),
        path: (!path.is_empty()).then_some(path.as_bytes()),
        other_authorities: Vec::new(),
    };
    let target = raw.normalize(None, config).map_err(|e| e.to_string())?;
    let mut all_headers = vec![
        (":method".to_owned(), method.as_bytes().to_vec()),
        (":scheme".to_owned(), scheme.as_bytes().to_vec()),
        (":authority".to_owned(), authority.as_bytes().to_vec()),
    ];
    if !path.is_empty() {
        all_headers.push((":path".to_owned(), path.as_bytes().to_vec()));
    }
    all_headers.extend(headers);
    let mut request = OutboundRequest::from_target(
        "check".into(),
        target,
        authority.to_owned(),
        all_headers,
        check.source.map(|ip| SocketAddr::new(ip, 0)),
        check.spiffe_id.clone(),
        None,
    );
    request.intercepted = check.intercepted && request.method == Method::Connect;
    Ok(request)
}

/// The result of a check, ready to print.
pub struct CheckReport {
    pub decision: Decision,
    pub text: String,
    pub json: serde_json::Value,
}

/// Decides and explains one request.
pub async fn run(snapshot: &Snapshot, check: &CheckRequest) -> Result<CheckReport, String> {
    let request = build_request_with(check, &snapshot.request)?;
    if request.method == Method::Connect && !check.body.is_empty() {
        return Err("a CONNECT carries no request body to check".into());
    }
    let started = std::time::Instant::now();
    let buffered = !check.body.is_empty() && snapshot.needs_body(&request, &check.extra_tags);
    let decided = decide(snapshot, &request, check, buffered).await;
    let elapsed = started.elapsed();
    let record = AuditRecord::of(&request, &decided, snapshot, micros(elapsed));
    let matches = match &decided.identity {
        Ok(identity) => {
            let ids = snapshot.policies.tag_ids(&identity.tags);
            // Every policy the body matches is listed, even one the gateway would not have
            // needed the body for because it ranks after the decider.
            let body = Body::new(&check.body, snapshot.policies.dlp());
            let facts = RequestFacts {
                body: Some(&body),
                identity: Some(identity),
                ..request.facts()
            };
            snapshot.policies.explain(&facts, &ids)
        }
        Err(_) => Vec::new(),
    };
    let decider = decided.outcome.verdict.and_then(|v| v.decided_by);
    let matches_json: Vec<_> = matches
        .iter()
        .map(|m| {
            let p = snapshot.policies.policy(m.policy);
            json!({"policy": &*p.name, "version": p.version, "priority": p.priority,
                   "action": p.action, "rule": m.rule, "dry_run": p.warn,
                   "decides": decider.is_some_and(|d| d.policy == m.policy && d.rule == m.rule)})
        })
        .collect();
    let deciding = match (decided.outcome.verdict, decider) {
        (Some(verdict), Some(rule)) => {
            let p = snapshot.policies.policy(rule.policy);
            json!({"policy": &*p.name, "version": p.version, "priority": p.priority,
                   "action": verdict.action, "rule": rule.rule})
        }
        (Some(verdict), None) => json!({"policy": null, "action": verdict.action,
                                        "default_action": true}),
        (None, _) => serde_json::Value::Null,
    };
    let json = json!({
        "decision": decided.outcome.decision,
        "deciding": deciding,
        "default_action": snapshot.policies.default_action().action(),
        "matching_policies": matches_json,
        "audit": serde_json::to_value(&record).unwrap_or_default(),
        "body": body_json(snapshot, &request, check, buffered),
        "upstream": upstream_json(&decided),
        "fast_path": snapshot.fast_path(&request, &check.extra_tags),
    });
    // The text is rendered from the JSON, as `portcullis playground` renders the API's
    // answer: both print the same trace for the same decision.
    let report: Report = serde_json::from_value(json.clone())
        .map_err(|e| format!("the decision report does not read back: {e}"))?;
    let text = render_text(&request, &report);
    Ok(CheckReport {
        decision: decided.outcome.decision,
        text,
        json,
    })
}

/// The body's part of the report: size, whether it would be buffered, the action type,
/// and which DLP detectors fire on it (every detector, not only those policies name).
fn body_json(
    snapshot: &Snapshot,
    request: &OutboundRequest,
    check: &CheckRequest,
    buffered: bool,
) -> serde_json::Value {
    let scanner = snapshot.policies.dlp();
    let body = Body::new(&check.body, scanner);
    let facts = RequestFacts {
        body: Some(&body),
        ..request.facts()
    };
    let dlp: Vec<_> = body
        .findings()
        .iter()
        .map(|(detector, count)| json!({"detector": detector, "count": count}))
        .collect();
    json!({"bytes": check.body.len(), "buffered": buffered,
           "action_type": facts.action_type(), "dlp": dlp})
}

/// Decides as the gateway would (`extproc::stream`): the body is handed over only when
/// the decision needs it (`buffered`), and a buffered body over `gateway.max_body_bytes`
/// is refused. A preview: credentials show as markers and no secret source is read.
async fn decide(
    snapshot: &Snapshot,
    request: &OutboundRequest,
    check: &CheckRequest,
    buffered: bool,
) -> Decided {
    let tags = &check.extra_tags;
    if check.body.is_empty() {
        return snapshot.preview(request, tags, Some(&[])).await;
    }
    if !buffered {
        return snapshot.preview(request, tags, None).await;
    }
    if check.body.len() > snapshot.max_body_bytes {
        return snapshot.refused(
            request,
            tags,
            Rejection::body_too_large(snapshot.max_body_bytes),
        );
    }
    snapshot.preview(request, tags, Some(&check.body)).await
}

fn upstream_json(decided: &Decided) -> serde_json::Value {
    let outcome = &decided.outcome;
    match &outcome.rejection {
        Some(r) => json!({"forwarded": false, "status": r.status, "type": r.kind,
                          "reason": r.reason, "message": r.message}),
        None => json!({
            "forwarded": true,
            "set_headers": outcome.mutations.set.iter()
                .map(|(n, v)| json!([n, v.expose()])).collect::<Vec<_>>(),
            "removed_headers": outcome.mutations.remove,
            "path": outcome.mutations.path.as_ref().map(|p| p.expose()),
            "body_rewritten": outcome.mutations.body.is_some(),
        }),
    }
}
