//! How a request is refused: the kind of refusal (the `error.type` a workload reads), its
//! status, a fixed machine-readable reason, and who refused it. Every stage that refuses —
//! identity, a transform, the network guard, the ext_proc layer — builds its refusal here.

use std::sync::Arc;

/// What kind of refusal: `error.type` in the workload's JSON body and `kind` in the
/// audit record. The names are part of the public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// A policy (or the default action) denied the request.
    PolicyDenied,
    /// The gateway has no policies to decide with (the store was never read).
    PolicyUnavailable,
    /// The request cannot be understood (a malformed line, a JSON-RPC body that is not).
    InvalidRequest,
    /// The request's proxy credentials are missing, malformed or unknown.
    ProxyAuthRequired,
    /// The destination resolves to an internal address.
    DestinationRefused,
    /// The destination has no address.
    DestinationUnresolved,
    /// A credential the request needs could not be read.
    CredentialUnavailable,
    /// A credential may not be injected into this request.
    CredentialRefused,
    /// The LLM judge gave no verdict and its fallback is to deny.
    JudgeUnavailable,
    /// An external gRPC processor gave no valid answer and its fail mode is closed.
    ProcessorUnavailable,
    /// The audit trail cannot take the record.
    AuditUnavailable,
    BodyTooLarge,
    BodyNotBuffered,
    /// The upstream's response could not be scrubbed of the credentials sent.
    ResponseWithheld,
    /// A `response_dlp` transform found what it denies in the response, or could not
    /// inspect it.
    ResponseRefused,
    /// A `rate_limit` transform's limit is used up for now: retry after `Retry-After`.
    RateLimited,
    /// A Redis-backed rate limit could not be counted and its fail mode is closed.
    RateLimitUnavailable,
    /// A `budget` transform's LLM budget is spent for this window.
    BudgetExceeded,
    /// A policy asks a person to approve the request first; the body names the approval.
    ApprovalRequired,
    /// The request needs an approval, and the approval queue (the store) cannot take it.
    ApprovalUnavailable,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::PolicyDenied => "policy_denied",
            RefusalKind::PolicyUnavailable => "policy_unavailable",
            RefusalKind::InvalidRequest => "invalid_request",
            RefusalKind::ProxyAuthRequired => "proxy_auth_required",
            RefusalKind::DestinationRefused => "destination_refused",
            RefusalKind::DestinationUnresolved => "destination_unresolved",
            RefusalKind::CredentialUnavailable => "credential_unavailable",
            RefusalKind::CredentialRefused => "credential_refused",
            RefusalKind::JudgeUnavailable => "judge_unavailable",
            RefusalKind::ProcessorUnavailable => "processor_unavailable",
            RefusalKind::AuditUnavailable => "audit_unavailable",
            RefusalKind::BodyTooLarge => "body_too_large",
            RefusalKind::BodyNotBuffered => "body_not_buffered",
            RefusalKind::ResponseWithheld => "response_withheld",
            RefusalKind::ResponseRefused => "response_refused",
            RefusalKind::RateLimited => "rate_limited",
            RefusalKind::RateLimitUnavailable => "rate_limit_unavailable",
            RefusalKind::BudgetExceeded => "budget_exceeded",
            RefusalKind::ApprovalRequired => "approval_required",
            RefusalKind::ApprovalUnavailable => "approval_unavailable",
        }
    }

    /// The HTTP status the workload gets for this kind, unless the refusing stage chose
    /// another (a gRPC processor names its own).
    pub fn status(self) -> u16 {
        match self {
            RefusalKind::PolicyDenied | RefusalKind::DestinationRefused => 403,
            RefusalKind::CredentialRefused | RefusalKind::ApprovalRequired => 403,
            RefusalKind::InvalidRequest => 400,
            RefusalKind::ProxyAuthRequired => 407,
            RefusalKind::BodyTooLarge => 413,
            RefusalKind::RateLimited | RefusalKind::BudgetExceeded => 429,
            RefusalKind::BodyNotBuffered => 500,
            RefusalKind::DestinationUnresolved
            | RefusalKind::CredentialUnavailable
            | RefusalKind::ResponseWithheld
            | RefusalKind::ResponseRefused => 502,
            RefusalKind::PolicyUnavailable
            | RefusalKind::JudgeUnavailable
            | RefusalKind::ProcessorUnavailable
            | RefusalKind::RateLimitUnavailable
            | RefusalKind::ApprovalUnavailable
            | RefusalKind::AuditUnavailable => 503,
        }
    }
}

impl serde::Serialize for RefusalKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: the workload gets `status` with a JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// `error.type` in the body.
    pub kind: RefusalKind,
    /// A fixed, machine-readable reason, e.g. `no_matching_policy`.
    pub reason: &'static str,
    pub message: String,
    pub policy: Option<Arc<str>>,
    pub rule: Option<u32>,
    /// The transform (or stage, such as `identity`) that refused.
    pub transform: &'static str,
    /// Seconds after which a retry may pass (`Retry-After`), for a refusal that is
    /// temporary.
    pub retry_after: Option<u64>,
    /// The approval a request waits for (`approval_required`), once queued.
    pub approval: Option<Box<ApprovalTicket>>,
}

/// Where a workload (and the person it works for) finds the approval its request waits
/// for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApprovalTicket {
    pub id: String,
    /// `pending`, or `denied` when a person already refused this very request.
    pub state: &'static str,
    /// The console page of the approval, when `approvals.console_url` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Rejection {
    /// A refusal of `kind` with its usual status, by the stage `transform`, not tied to a
    /// policy.
    pub fn new(
        kind: RefusalKind,
        reason: &'static str,
        message: impl Into<String>,
        transform: &'static str,
    ) -> Rejection {
        Rejection {
            status: kind.status(),
            kind,
            reason,
            message: message.into(),
            policy: None,
            rule: None,
            transform,
            retry_after: None,
            approval: None,
        }
    }

    /// The same refusal answered with `status` instead of its kind's.
    pub fn with_status(self, status: u16) -> Rejection {
        Rejection { status, ..self }
    }

    /// The same refusal, made by `policy` (and its `rule`, when one matched).
    pub fn by_policy(self, policy: Option<Arc<str>>, rule: Option<u32>) -> Rejection {
        Rejection {
            policy,
            rule,
            ..self
        }
    }

    /// The rejection for a body over `gateway.max_body_bytes`.
    pub fn body_too_large(limit: usize) -> Rejection {
        Rejection::new(
            RefusalKind::BodyTooLarge,
            "body_too_large",
            format!("the request body is larger than the {limit}-byte limit"),
            "request",
        )
    }

    /// The rejection for a request whose body Envoy streamed although Portcullis asked for it
    /// buffered (`mode_override` ignored): a decision that needs the body is made on the whole
    /// body or not at all.
    pub fn body_not_buffered(detail: &str) -> Rejection {
        Rejection::new(
            RefusalKind::BodyNotBuffered,
            "body_not_buffered",
            format!(
                "the request body came in pieces although Portcullis asked Envoy to buffer it \
                 ({detail}); check that the ext_proc filter sets `allow_mode_override: true`"
            ),
            "request",
        )
    }
}
