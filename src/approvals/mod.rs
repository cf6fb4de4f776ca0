//! Approvals: a person in the loop. A policy with `action: approve` (or a `gated` one with
//! `when_condition_fails: approve`) refuses a request with 403 `approval_required` and an
//! approval id; the request's summary waits in the store's queue ([`crate::store::approvals`])
//! and, when configured, a webhook tells a channel. An approver's yes writes a **grant**: a
//! policy allowing exactly that identity, host, path, method (and tool and arguments) until
//! it expires — so the agent's retry passes while it lasts, on every instance.

pub mod webhook;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dlp::Scanner;
use crate::identity::Identity;
use crate::policy::conditions::ToolPattern;
use crate::policy::rule::{HostPattern, MethodName, PathPattern, RuleConfig};
use crate::policy::{Action, Grant, PolicyConfig, PolicyStatus, RequestFacts};
use crate::request::OutboundRequest;
use crate::store::Store;
use crate::store::approvals::{Approval, Asked, AskedRequest, NewApproval};
use crate::transforms::{ApprovalTicket, RefusalKind, Rejection};
use crate::vocab::{DurationText, FieldError};

/// `approvals:` — where approvers are sent, how long things last, who is told.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// The console as approvers reach it (`https://portcullis.example.com`): refusals and
    /// notifications link to `<console_url>/#/approvals?id=<id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_url: Option<String>,
    /// How long a request waits for a decision before its approval lapses. Default 24h.
    pub pending_for: DurationText,
    /// How long a grant lasts when the approver does not say. Default 1h.
    pub grant_for: DurationText,
    /// The longest grant an approver may give. Default 7d.
    pub max_grant_for: DurationText,
    /// The most approvals one identity may have waiting; beyond it, requests needing a new
    /// one are refused (429 `approval_queue_full`) without queueing. Default 20.
    pub max_pending: u32,
    /// Tell a channel about each new approval (a Slack-compatible incoming webhook).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<webhook::WebhookConfig>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            console_url: None,
            pending_for: DurationText(Duration::from_secs(24 * 3600)),
            grant_for: DurationText(Duration::from_secs(3600)),
            max_grant_for: DurationText(Duration::from_secs(7 * 24 * 3600)),
            max_pending: 20,
            webhook: None,
        }
    }
}

impl ApprovalsConfig {
    /// What deserialization cannot check; paths relative to `approvals`.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if let Some(url) = &self.console_url {
            match url::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                _ => problems.push(FieldError::new(
                    "console_url",
                    format!("{url:?} is not an http(s) URL"),
                )),
            }
        }
        for (field, value) in [
            ("pending_for", self.pending_for),
            ("grant_for", self.grant_for),
            ("max_grant_for", self.max_grant_for),
        ] {
            if value.0.is_zero() {
                problems.push(FieldError::new(field, "must be longer than 0s"));
            }
        }
        if self.grant_for.0 > self.max_grant_for.0 {
            problems.push(FieldError::new(
                "grant_for",
                format!(
                    "{} is longer than max_grant_for ({})",
                    self.grant_for, self.max_grant_for
                ),
            ));
        }
        if self.max_pending == 0 {
            problems.push(FieldError::new(
                "max_pending",
                "must be at least 1 (0 would refuse every approval)",
            ));
        }
        if let Some(hook) = &self.webhook {
            problems.extend(hook.problems().into_iter().map(|e| e.under("webhook")));
        }
        problems
    }

    /// The console page of approval `id`.
    pub fn link(&self, id: &str) -> Option<String> {
        let base = self.console_url.as_deref()?.trim_end_matches('/');
        Some(format!("{base}/#/approvals?id={id}"))
    }
}

/// The approval queue as the request path sees it: the store (once open) and the
/// webhook's HTTP client. One per process, shared by every snapshot.
#[derive(Debug, Default)]
pub struct Desk {
    store: OnceLock<Store>,
    client: OnceLock<reqwest::Client>,
}

impl Desk {
    /// Called once the store is open.
    pub fn set_store(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// Queues the approval `rejection` (an `approval_required` one) asks for and names it
    /// in the refusal; when the queue cannot take it, the refusal says why instead (503
    /// `approval_unavailable`, or 429 `approval_queue_full`). The request stays refused
    /// either way.
    #[allow(clippy::too_many_arguments)]
    pub async fn ask(
        &self,
        settings: &ApprovalsConfig,
        request: &OutboundRequest,
        facts: &RequestFacts<'_>,
        identity: &Identity,
        scanner: Option<&Scanner>,
        rejection: &mut Rejection,
    ) {
        let Some(store) = self.store.get() else {
            *rejection = unavailable(
                rejection,
                "approvals are kept in the store, and this gateway has none (or has not \
                 reached it yet): configure a `store` to use `action: approve`",
            );
            return;
        };
        let policy = rejection.policy.as_deref().unwrap_or_default();
        let asked = summary(request, facts, identity, scanner);
        let key = scope_key(identity, policy, &asked);
        let lapses_at = rfc3339(SystemTime::now() + settings.pending_for.0);
        let new = NewApproval {
            scope_key: &key,
            identity: identity.name.as_deref(),
            policy,
            request: &asked,
            request_id: &request.id,
            lapses_at: &lapses_at,
        };
        match store
            .ask_approval(&new, i64::from(settings.max_pending))
            .await
        {
            Ok(Asked::Queued(approval)) => {
                self.notify(settings, &approval);
                name_approval(settings, rejection, &approval, "queued");
            }
            Ok(Asked::Waiting(approval)) => {
                name_approval(settings, rejection, &approval, "still pending");
            }
            Ok(Asked::QueueFull { pending }) => {
                rejection.status = 429;
                rejection.reason = "approval_queue_full";
                rejection.message = format!(
                    "{}; this workload already has {pending} approvals waiting \
                     (approvals.max_pending), so no new one was queued: wait for them to be \
                     decided",
                    rejection.message
                );
                rejection.retry_after = Some(60);
            }
            Err(error) => {
                tracing::warn!(error = %error, request_id = %request.id,
                    "cannot queue an approval; the request is refused (503)");
                *rejection = unavailable(
                    rejection,
                    "the approval queue (the store) cannot be reached; nothing was queued",
                );
            }
        }
    }

    fn notify(&self, settings: &ApprovalsConfig, approval: &Approval) {
        let Some(hook) = settings.webhook.clone() else {
            return;
        };
        let client = self.client.get_or_init(webhook::client).clone();
        let message = webhook::message(approval, settings.link(&approval.id).as_deref());
        // The refused request is answered now; the channel hears of it when it hears.
        tokio::spawn(async move { webhook::send(&client, &hook, &message).await });
    }
}

fn name_approval(
    settings: &ApprovalsConfig,
    rejection: &mut Rejection,
    approval: &Approval,
    how: &str,
) {
    let url = settings.link(&approval.id);
    rejection.message = match &url {
        Some(url) => format!(
            "{}; approval {} is {how}: {url} — retry once it is approved",
            rejection.message, approval.id
        ),
        None => format!(
            "{}; approval {} is {how} — retry once it is approved",
            rejection.message, approval.id
        ),
    };
    rejection.approval = Some(Box::new(ApprovalTicket {
        id: approval.id.clone(),
        state: "pending",
        url,
    }));
}

fn unavailable(rejection: &Rejection, why: &str) -> Rejection {
    Rejection {
        status: RefusalKind::ApprovalUnavailable.status(),
        kind: RefusalKind::ApprovalUnavailable,
        reason: "approval_unavailable",
        message: format!("{}; {why}", rejection.message),
        approval: None,
        ..rejection.clone()
    }
}

/// RFC 3339 in UTC with microseconds: the store's one time format, compared as text.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// The longest an argument preview runs, and a string within it.
const PREVIEW_BYTES: usize = 1024;
const PREVIEW_STRING: usize = 200;

/// What the approver is shown: never headers, the query or the body — the tool call's
/// arguments only as a digest and a preview whose strings a DLP detector fires on are
/// masked.
fn summary(
    request: &OutboundRequest,
    facts: &RequestFacts<'_>,
    identity: &Identity,
    scanner: Option<&Scanner>,
) -> AskedRequest {
    let tool = facts.tool_call();
    AskedRequest {
        method: request.method_name.clone(),
        scheme: request.scheme.clone(),
        host: request.host.clone(),
        port: request.port,
        path: request.path.clone(),
        tags: identity.tags.clone(),
        tool: tool.map(|(name, _)| name.to_owned()),
        arguments_sha256: tool.map(|(_, arguments)| crate::mcp::arguments_sha256(arguments)),
        arguments_preview: tool.map(|(_, arguments)| {
            let builtin;
            let scanner = match scanner {
                Some(scanner) => scanner,
                None => {
                    builtin = Scanner::builtin();
                    &builtin
                }
            };
            preview(arguments, scanner)
        }),
        action_type: facts.action_type().as_str().to_owned(),
    }
}

fn preview(arguments: &serde_json::Value, scanner: &Scanner) -> String {
    fn mask(value: &serde_json::Value, scanner: &Scanner) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(text) => {
                let findings = scanner.scan(text.as_bytes());
                // An address is what an approver must read (who does the email go to?).
                if let Some((detector, _)) = findings.iter().find(|(d, _)| *d != "email") {
                    return Value::String(format!("<redacted: {detector}>"));
                }
                if text.len() > PREVIEW_STRING {
                    let mut end = PREVIEW_STRING;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    return Value::String(format!("{}…", &text[..end]));
                }
                value.clone()
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| mask(v, scanner)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), mask(v, scanner)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    let mut text = serde_json::to_string(&mask(arguments, scanner)).unwrap_or_default();
    if text.len() > PREVIEW_BYTES {
        let mut end = PREVIEW_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// What makes two refused requests "the same" while one waits: identity, tags, the
/// policy and everything the grant would be scoped to.
fn scope_key(identity: &Identity, policy: &str, asked: &AskedRequest) -> String {
    let mut hash = Sha256::new();
    for part in [
        identity.name.as_deref().unwrap_or(""),
        &serde_json::to_string(&asked.tags).unwrap_or_default(),
        policy,
        &asked.method,
        &asked.scheme,
        &asked.host,
        &asked.port.to_string(),
        &asked.path,
        asked.tool.as_deref().unwrap_or(""),
        asked.arguments_sha256.as_deref().unwrap_or(""),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Why an approver's grant cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("{0}")]
    Duration(String),
    #[error("the approval's request cannot be turned into a rule: {0}")]
    Scope(String),
}

/// How long a grant lasts: the approver's `for`, else `grant_for`, at most `max_grant_for`.
pub fn grant_duration(
    settings: &ApprovalsConfig,
    asked_for: Option<&str>,
) -> Result<Duration, GrantError> {
    let duration = match asked_for {
        None => settings.grant_for.0,
        Some(text) => humantime::parse_duration(text.trim()).map_err(|e| {
            GrantError::Duration(format!("{text:?} is not a duration ({e}); e.g. \"15m\""))
        })?,
    };
    if duration.is_zero() {
        return Err(GrantError::Duration(
            "a grant must last longer than 0s".into(),
        ));
    }
    if duration > settings.max_grant_for.0 {
        return Err(GrantError::Duration(format!(
            "{} is longer than approvals.max_grant_for ({})",
            humantime::format_duration(duration),
            settings.max_grant_for
        )));
    }
    Ok(duration)
}

/// The grant an approval creates: `allow` for exactly the approved identity (and its
/// tags), method, host and port, path (any query), tool and arguments, ahead of the policy
/// that asked (`priority` one lower), until `expires_at`.
pub fn grant_policy(
    approval: &Approval,
    asking_priority: i32,
    expires_at: &str,
) -> Result<PolicyConfig, GrantError> {
    let asked = &approval.request;
    let scope = |e: String| GrantError::Scope(e);
    // Always with the port: a host pattern without one matches every port.
    let host = format!("{}:{}", host_literal(&asked.host), asked.port);
    let mut rule = RuleConfig::scope(
        HostPattern::try_from(host).map_err(scope)?,
        if asked.path.is_empty() {
            Vec::new()
        } else {
            vec![PathPattern::try_from(globset_escape(&asked.path)).map_err(scope)?]
        },
        vec![MethodName::try_from(asked.method.clone()).map_err(scope)?],
    );
    if let Some(tool) = &asked.tool {
        rule.tools = vec![ToolPattern::try_from(globset_escape(tool)).map_err(scope)?];
    }
    Ok(PolicyConfig {
        name: format!("grant-{}", approval.id),
        priority: asking_priority.saturating_sub(1),
        status: PolicyStatus::Active,
        match_tags: asked.tags.clone(),
        action: Action::Allow,
        warn: false,
        description: Some(format!(
            "Grant of approval {} (asked by policy {:?}), until {expires_at}",
            approval.id, approval.policy
        )),
        message: None,
        rules: vec![rule],
        condition: None,
        when_condition_fails: Default::default(),
        grant: Some(Grant {
            approval: approval.id.clone(),
            identity: approval.identity.clone(),
            expires_at: expires_at.to_owned(),
            arguments_sha256: asked.arguments_sha256.clone(),
        }),
    })
}

/// An IPv6 literal goes back in brackets; a name as it is.
fn host_literal(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `text` as a glob that matches only itself (path and tool globs take backslash
/// escapes): a path holding `*` (or `?`, `[`, `{`) must not become a wider grant than the
/// one request approved.
fn globset_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\' | ',') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests;
