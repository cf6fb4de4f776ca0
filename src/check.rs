//! `portcullis check`: decides one request offline, against a config file, and prints the
//! whole decision trace — the same code path as the gateway, without Envoy.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use serde_json::json;

use crate::audit::{AuditRecord, micros};
use crate::extproc::convert::body_too_large;
use crate::policy::rule::Tag;
use crate::policy::{Decision, PolicySet};
use crate::request::{Method, OutboundRequest, RawRequest, RequestFacts};
use crate::snapshot::{Decided, Snapshot};
use crate::transforms::TraceAction;

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

/// Builds the request Envoy would have sent.
pub fn build_request(check: &CheckRequest) -> Result<OutboundRequest, String> {
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
    };
    let target = raw.normalize(None).map_err(|e| e.to_string())?;
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
    let request = build_request(check)?;
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
            let facts = RequestFacts {
                body: Some(&check.body),
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
        "matching_policies": matches_json,
        "audit": serde_json::to_value(&record).unwrap_or_default(),
        "body": {"bytes": check.body.len(), "buffered": buffered},
        "upstream": upstream_json(&decided),
    });
    let body = (!check.body.is_empty()).then(|| body_line(check.body.len(), buffered));
    let text = render_text(
        &request,
        body.as_deref(),
        &decided,
        &snapshot.policies,
        &matches,
        &record,
    );
    Ok(CheckReport {
        decision: decided.outcome.decision,
        text,
        json,
    })
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
        return snapshot.refused(request, tags, body_too_large(snapshot.max_body_bytes));
    }
    snapshot.preview(request, tags, Some(&check.body)).await
}

/// Whether the gateway would buffer the body: its size, never its content.
fn body_line(bytes: usize, buffered: bool) -> String {
    if buffered {
        format!("{bytes} bytes, buffered: the decision needs it")
    } else {
        format!("{bytes} bytes, not buffered: no rule or secret needs it")
    }
}

fn upstream_json(decided: &Decided) -> serde_json::Value {
    let outcome = &decided.outcome;
    match &outcome.rejection {
        Some(r) => json!({"forwarded": false, "status": r.status, "reason": r.reason,
                          "message": r.message}),
        None => json!({
            "forwarded": true,
            "set_headers": outcome.mutations.set.iter()
                .map(|(n, v)| json!([n, v.expose()])).collect::<Vec<_>>(),
            "removed_headers": outcome.mutations.remove,
            "path": outcome.mutations.path.as_ref().map(|p| p.expose()),
        }),
    }
}

fn render_text(
    request: &OutboundRequest,
    body: Option<&str>,
    decided: &Decided,
    policies: &PolicySet,
    matches: &[crate::policy::PolicyMatch],
    record: &AuditRecord<'_>,
) -> String {
    let mut out = String::new();
    let target = if request.path.is_empty() {
        format!("{}:{}", request.host, request.port)
    } else {
        format!(
            "{}://{}:{}{}",
            request.scheme, request.host, request.port, request.path
        )
    };
    let _ = writeln!(out, "request     {} {}", request.method_name, target);
    if let Some(body) = body {
        let _ = writeln!(out, "body        {body}");
    }
    match &decided.identity {
        Ok(identity) => {
            let who = match &identity.name {
                Some(name) => format!("{} {name:?}", identity.kind.as_str()),
                None => format!("{} (no principal)", identity.kind.as_str()),
            };
            let tags: Vec<&str> = identity.tags.iter().map(Tag::as_str).collect();
            let _ = writeln!(out, "identity    {who}");
            let _ = writeln!(
                out,
                "tags        {}",
                if tags.is_empty() {
                    "(none)".into()
                } else {
                    tags.join(", ")
                }
            );
        }
        Err(e) => {
            let _ = writeln!(out, "identity    refused: {e}");
        }
    }
    let decider = decided.outcome.verdict.and_then(|v| v.decided_by);
    if matches.is_empty() {
        let _ = writeln!(
            out,
            "policies    none match; default action: {}",
            policies.default_action().action()
        );
    } else {
        let _ = writeln!(out, "policies    matching, in decision order:");
        for m in matches {
            let p = policies.policy(m.policy);
            let decides = decider.is_some_and(|d| d.policy == m.policy && d.rule == m.rule);
            let _ = writeln!(
                out,
                "  {} {:<24} priority {:<6} {:<6} rule {}{}",
                if decides { "→" } else { " " },
                &*p.name,
                p.priority,
                p.action.as_str(),
                m.rule,
                if p.warn {
                    "  (dry run: recorded, not enforced)"
                } else {
                    ""
                }
            );
        }
    }
    let _ = writeln!(out, "transforms");
    for t in &decided.outcome.trace {
        let action = match t.action {
            TraceAction::Continue => "continue",
            TraceAction::Reject => "reject",
            TraceAction::Skip => "skip (out of scope)",
        };
        let mut notes = Vec::new();
        if let (Some(policy), Some(rule)) = (&t.annotations.policy, t.annotations.rule) {
            notes.push(format!("policy {:?} rule {rule}", &**policy));
        }
        if !t.annotations.stripped_headers.is_empty() {
            notes.push(format!(
                "stripped {}",
                t.annotations.stripped_headers.join(", ")
            ));
        }
        if let Some(reason) = t.annotations.reason {
            notes.push(reason.to_owned());
        }
        for (verb, used) in [
            ("injected", &t.annotations.injected),
            ("swapped", &t.annotations.swapped),
            ("signed", &t.annotations.signed),
        ] {
            if let Some(used) = used {
                notes.push(format!(
                    "{verb} {:?} at {}",
                    &*used.secret,
                    used.locations.join(", ")
                ));
            }
        }
        if !t.annotations.shadowed.is_empty() {
            let names: Vec<&str> = t.annotations.shadowed.iter().map(|s| &**s).collect();
            notes.push(format!("shadowed {}", names.join(", ")));
        }
        if let Some(d) = &t.annotations.dry_run {
            notes.push(format!("dry run: {:?} would {}", &*d.policy, d.action));
        }
        let line = format!("  {:<17} {:<9} {}", t.name, action, notes.join("; "));
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(out, "decision    {}", record.decision.as_str());
    match &decided.outcome.rejection {
        Some(r) => {
            let _ = writeln!(out, "response    {} {}: {}", r.status, r.kind, r.message);
        }
        None => {
            let _ = writeln!(
                out,
                "upstream    forwarded as (credentials shown as markers):"
            );
            for line in upstream_view(request, &decided.outcome.mutations) {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

/// The request as the upstream would get it. Run on a preview, so any credential is a
/// marker (`<secret:name>`), never a value.
fn upstream_view(
    request: &OutboundRequest,
    mutations: &crate::transforms::Mutations,
) -> Vec<String> {
    let path = match &mutations.path {
        Some(path) => path.expose().to_owned(),
        None => request
            .header(":path")
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
    };
    let mut lines = vec![if path.is_empty() {
        format!("{} {}", request.method_name, request.authority)
    } else {
        format!("{} {}", request.method_name, path)
    }];
    lines.push(format!("host: {}", request.authority));
    for (name, value) in &request.headers {
        if name.starts_with(':')
            || mutations.remove.contains(name)
            || mutations.set.iter().any(|(n, _)| n == name)
        {
            continue;
        }
        lines.push(format!("{name}: {}", String::from_utf8_lossy(value)));
    }
    for (name, value) in &mutations.set {
        lines.push(format!("{name}: {}", value.expose()));
    }
    if mutations.body.is_some() {
        lines.push("(body rewritten)".to_owned());
    }
    lines
}
