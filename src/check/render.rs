//! The human decision trace, rendered from the decision report — the JSON that
//! `portcullis check --json` prints and `POST /v1/playground` answers — so the offline
//! check and the playground print the same trace for the same decision.

use std::fmt::Write as _;

use serde::Deserialize;

use crate::request::OutboundRequest;

/// A decision report, read back from its JSON. Only what the trace shows; other fields
/// are ignored, so a newer gateway's answer still renders.
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    /// `ALLOWED`, `FLAGGED` or `DENIED`.
    pub decision: String,
    /// The action when no policy matches (absent from gateways that predate it).
    #[serde(default)]
    pub default_action: Option<String>,
    #[serde(default)]
    pub matching_policies: Vec<MatchedPolicy>,
    pub audit: AuditView,
    pub upstream: UpstreamView,
    /// The request body's size and whether the gateway would buffer it (absent without a
    /// body).
    #[serde(default)]
    pub body: Option<BodyView>,
    /// Whether the decision could be made inside Envoy (absent from gateways that
    /// predate it).
    #[serde(default)]
    pub fast_path: Option<FastPathView>,
}

/// Where the decision could be made: `envoy` (host, path and method decide it) or
/// `portcullis`, with why.
#[derive(Debug, Clone, Deserialize)]
pub struct FastPathView {
    pub decided_by: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// What the trace says of a body: its size, never its content.
#[derive(Debug, Clone, Deserialize)]
pub struct BodyView {
    pub bytes: usize,
    pub buffered: bool,
    /// The request's action type (absent from gateways that predate it).
    #[serde(default)]
    pub action_type: Option<String>,
    /// The DLP detectors that fire on the body, with counts, never the matches.
    #[serde(default)]
    pub dlp: Vec<DlpView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DlpView {
    pub detector: String,
    pub count: usize,
}

/// One active policy that matched, in decision order.
#[derive(Debug, Clone, Deserialize)]
pub struct MatchedPolicy {
    pub policy: String,
    pub priority: i64,
    pub action: String,
    pub rule: u32,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub decides: bool,
}

/// The part of the audit record the trace shows.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditView {
    pub identity: IdentityView,
    #[serde(default)]
    pub tags: Vec<String>,
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub transforms: Vec<TransformView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IdentityView {
    /// `uri_san`, `token`, `source_cidr`, `gateway`, or `refused`.
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// One transform's line of the trace.
#[derive(Debug, Clone, Deserialize)]
pub struct TransformView {
    pub name: String,
    /// `continue`, `reject` or `skip`.
    pub action: String,
    #[serde(default)]
    pub annotations: AnnotationsView,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AnnotationsView {
    pub policy: Option<String>,
    pub rule: Option<u32>,
    pub reason: Option<String>,
    pub dry_run: Option<DryRunView>,
    #[serde(default)]
    pub stripped_headers: Vec<String>,
    pub injected: Option<CredentialUseView>,
    pub swapped: Option<CredentialUseView>,
    pub signed: Option<CredentialUseView>,
    #[serde(default)]
    pub shadowed: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DryRunView {
    pub policy: String,
    pub action: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CredentialUseView {
    pub secret: String,
    #[serde(default)]
    pub locations: Vec<String>,
}

/// What would leave, or the refusal the workload would get.
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamView {
    pub forwarded: bool,
    pub status: Option<u16>,
    /// `error.type` of the refusal, e.g. `policy_denied`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub message: Option<String>,
    /// `[name, value]` pairs; credentials are markers (`<secret:github>`).
    #[serde(default)]
    pub set_headers: Vec<(String, String)>,
    #[serde(default)]
    pub removed_headers: Vec<String>,
    pub path: Option<String>,
    #[serde(default)]
    pub body_rewritten: bool,
}

/// The trace of `report`. `request` is the request as built from the command line: the
/// report says what changes, the request supplies the headers that pass unchanged.
pub fn render_text(request: &OutboundRequest, report: &Report) -> String {
    let mut out = String::new();
    let audit = &report.audit;
    let target = if audit.path.is_empty() {
        format!("{}:{}", audit.host, audit.port)
    } else {
        format!(
            "{}://{}:{}{}",
            audit.scheme, audit.host, audit.port, audit.path
        )
    };
    let _ = writeln!(out, "request     {} {}", audit.method, target);
    if let Some(body) = report.body.as_ref().filter(|b| b.bytes > 0) {
        let _ = writeln!(
            out,
            "body        {} bytes, {}",
            body.bytes,
            if body.buffered {
                "buffered: the decision needs it"
            } else {
                "not buffered: no rule or secret needs it"
            }
        );
        if !body.dlp.is_empty() {
            let found: Vec<String> = body
                .dlp
                .iter()
                .map(|f| format!("{} ×{}", f.detector, f.count))
                .collect();
            let _ = writeln!(out, "dlp         {}", found.join(", "));
        }
    }
    if let Some(action_type) = report.body.as_ref().and_then(|b| b.action_type.as_ref()) {
        let _ = writeln!(out, "action      {action_type}");
    }
    if audit.identity.kind == "refused" {
        let why = report.upstream.message.as_deref().unwrap_or("refused");
        let _ = writeln!(out, "identity    refused: {why}");
    } else {
        let who = match &audit.identity.name {
            Some(name) => format!("{} {name:?}", audit.identity.kind),
            None => format!("{} (no principal)", audit.identity.kind),
        };
        let _ = writeln!(out, "identity    {who}");
        let _ = writeln!(
            out,
            "tags        {}",
            if audit.tags.is_empty() {
                "(none)".into()
            } else {
                audit.tags.join(", ")
            }
        );
    }
    if report.matching_policies.is_empty() {
        match &report.default_action {
            Some(action) => {
                let _ = writeln!(out, "policies    none match; default action: {action}");
            }
            None => {
                let _ = writeln!(out, "policies    none match");
            }
        }
    } else {
        let _ = writeln!(out, "policies    matching, in decision order:");
        for m in &report.matching_policies {
            let _ = writeln!(
                out,
                "  {} {:<24} priority {:<6} {:<6} rule {}{}",
                if m.decides { "→" } else { " " },
                m.policy,
                m.priority,
                m.action,
                m.rule,
                if m.dry_run {
                    "  (dry run: recorded, not enforced)"
                } else {
                    ""
                }
            );
        }
    }
    let _ = writeln!(out, "transforms");
    for t in &audit.transforms {
        let action = match t.action.as_str() {
            "skip" => "skip (out of scope)",
            other => other,
        };
        let line = format!("  {:<17} {:<9} {}", t.name, action, notes(&t.annotations));
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(out, "decision    {}", report.decision);
    if let Some(fast) = &report.fast_path {
        let _ = match fast.decided_by.as_str() {
            "envoy" => writeln!(
                out,
                "fast path   decided by Envoy: host, path, method and the listener's tags decide it"
            ),
            _ => writeln!(
                out,
                "fast path   no: {}",
                fast.reason.as_deref().unwrap_or("it needs Portcullis")
            ),
        };
    }
    let upstream = &report.upstream;
    if upstream.forwarded {
        let _ = writeln!(
            out,
            "upstream    forwarded as (credentials shown as markers):"
        );
        for line in upstream_view(request, upstream) {
            let _ = writeln!(out, "  {line}");
        }
    } else {
        let _ = writeln!(
            out,
            "response    {} {}: {}",
            upstream.status.unwrap_or_default(),
            upstream.kind.as_deref().unwrap_or("refused"),
            upstream.message.as_deref().unwrap_or_default()
        );
    }
    out
}

/// What a transform did, in a few words.
fn notes(a: &AnnotationsView) -> String {
    let mut notes = Vec::new();
    if let (Some(policy), Some(rule)) = (&a.policy, a.rule) {
        notes.push(format!("policy {policy:?} rule {rule}"));
    }
    if !a.stripped_headers.is_empty() {
        notes.push(format!("stripped {}", a.stripped_headers.join(", ")));
    }
    if let Some(reason) = &a.reason {
        notes.push(reason.clone());
    }
    for (verb, used) in [
        ("injected", &a.injected),
        ("swapped", &a.swapped),
        ("signed", &a.signed),
    ] {
        if let Some(used) = used {
            notes.push(format!(
                "{verb} {:?} at {}",
                used.secret,
                used.locations.join(", ")
            ));
        }
    }
    if !a.shadowed.is_empty() {
        notes.push(format!("shadowed {}", a.shadowed.join(", ")));
    }
    if let Some(d) = &a.dry_run {
        notes.push(format!("dry run: {:?} would {}", d.policy, d.action));
    }
    notes.join("; ")
}

/// The request as the upstream would get it. Reports come from previews, so any
/// credential is a marker (`<secret:name>`), never a value.
fn upstream_view(request: &OutboundRequest, upstream: &UpstreamView) -> Vec<String> {
    let path = match &upstream.path {
        Some(path) => path.clone(),
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
            || upstream.removed_headers.contains(name)
            || upstream.set_headers.iter().any(|(n, _)| n == name)
        {
            continue;
        }
        lines.push(format!("{name}: {}", String::from_utf8_lossy(value)));
    }
    for (name, value) in &upstream.set_headers {
        lines.push(format!("{name}: {value}"));
    }
    if upstream.body_rewritten {
        lines.push("(body rewritten)".to_owned());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{CheckRequest, build_request};

    fn report(json: serde_json::Value) -> Report {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_forwarded_request_shows_the_decider_and_what_the_upstream_gets() {
        let request = build_request(&CheckRequest {
            request_line: "GET http://api.example/v1/x?q=1".into(),
            headers: vec![
                ("Accept".into(), "*/*".into()),
                ("X-Drop".into(), "1".into()),
            ],
            token: Some("ptk_abc".into()),
            ..CheckRequest::default()
        })
        .unwrap();
        let text = render_text(
            &request,
            &report(serde_json::json!({
                "decision": "ALLOWED",
                "default_action": "deny",
                "matching_policies": [
                    {"policy": "noisy", "priority": 5, "action": "deny", "rule": 0,
                     "dry_run": true, "decides": false},
                    {"policy": "api", "priority": 10, "action": "allow", "rule": 1,
                     "dry_run": false, "decides": true}],
                "audit": {"identity": {"kind": "token", "name": "ci"}, "tags": ["env:ci"],
                          "method": "GET", "scheme": "http", "host": "api.example",
                          "port": 80, "path": "/v1/x",
                          "transforms": [
                              {"name": "allowlist", "action": "continue",
                               "annotations": {"policy": "api", "rule": 1,
                                               "dry_run": {"policy": "noisy", "rule": 0, "action": "deny"}}},
                              {"name": "secrets", "action": "continue",
                               "annotations": {"injected": {"secret": "gh", "locations": ["header:authorization"]}}},
                              {"name": "header_allowlist", "action": "skip"}]},
                "upstream": {"forwarded": true,
                             "set_headers": [["authorization", "<secret:gh>"]],
                             "removed_headers": ["proxy-authorization", "x-drop"],
                             "path": null, "body_rewritten": false}
            })),
        );
        let expected = "\
request     GET http://api.example:80/v1/x
identity    token \"ci\"
tags        env:ci
policies    matching, in decision order:
    noisy                    priority 5      deny   rule 0  (dry run: recorded, not enforced)
  → api                      priority 10     allow  rule 1
transforms
  allowlist         continue  policy \"api\" rule 1; dry run: \"noisy\" would deny
  secrets           continue  injected \"gh\" at header:authorization
  header_allowlist  skip (out of scope)
decision    ALLOWED
upstream    forwarded as (credentials shown as markers):
  GET /v1/x?q=1
  host: api.example
  accept: */*
  authorization: <secret:gh>
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_refused_identity_shows_why_and_the_response() {
        let request = build_request(&CheckRequest {
            request_line: "CONNECT evil.example:443".into(),
            ..CheckRequest::default()
        })
        .unwrap();
        let text = render_text(
            &request,
            &report(serde_json::json!({
                "decision": "DENIED",
                "default_action": "deny",
                "audit": {"identity": {"kind": "refused"}, "method": "CONNECT",
                          "scheme": "https", "host": "evil.example", "port": 443, "path": "",
                          "transforms": [{"name": "identity", "action": "reject",
                                          "annotations": {"reason": "unknown_proxy_token"}}]},
                "upstream": {"forwarded": false, "status": 407, "type": "proxy_auth_required",
                             "reason": "unknown_proxy_token",
                             "message": "the proxy token is not recognised"}
            })),
        );
        assert!(
            text.starts_with("request     CONNECT evil.example:443\nidentity    refused: the proxy token is not recognised\npolicies    none match; default action: deny\n"),
            "{text}"
        );
        assert!(
            text.ends_with("decision    DENIED\nresponse    407 proxy_auth_required: the proxy token is not recognised\n"),
            "{text}"
        );
    }
}
