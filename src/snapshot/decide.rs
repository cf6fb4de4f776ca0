//! Deciding one request against a snapshot: identity, then the transforms pipeline, then
//! the network guard on the address an allowed request connects to. Refusals made here,
//! before or around the pipeline, are answered like a transform's.

use std::net::IpAddr;

use super::{Decided, Snapshot, presented};
use crate::identity::IdentityError;
use crate::inspect::Body;
use crate::mcp::{Inbound, ParseError};
use crate::network::{LookupError, NetworkGuard, Refusal, UPSTREAM_ADDRESS_HEADER};
use crate::policy::rule::HostMatch;
use crate::policy::{Decision, PolicySet};
use crate::request::OutboundRequest;
use crate::secrets::SecretValue;
use crate::transforms::{
    Annotations, Exchange, JsonRpcReply, Mutations, Outcome, RefusalKind, Rejection, TraceAction,
    TransformTrace,
};
use crate::vocab::Tag;

impl Snapshot {
    /// Decides one request. `body` is the buffered body when [`Snapshot::needs_body`]
    /// asked for it (empty when the request has none).
    pub async fn decide(
        &self,
        request: &OutboundRequest,
        listener_tags: &[Tag],
        body: Option<&[u8]>,
    ) -> Decided {
        self.run(request, listener_tags, body, false).await
    }

    /// Decides without reading any secret source: credentials appear as markers
    /// (`<secret:github>`), for `portcullis check`.
    pub async fn preview(
        &self,
        request: &OutboundRequest,
        listener_tags: &[Tag],
        body: Option<&[u8]>,
    ) -> Decided {
        self.run(request, listener_tags, body, true).await
    }

    /// Identity, then the transforms pipeline. A `Proxy-Authorization` header never
    /// leaves, whatever the outcome.
    async fn run(
        &self,
        request: &OutboundRequest,
        listener_tags: &[Tag],
        body: Option<&[u8]>,
        preview: bool,
    ) -> Decided {
        let mut mutations = Mutations::default();
        if request.header("proxy-authorization").is_some() {
            mutations.remove("proxy-authorization");
        }
        if let Some(reason) = self.unavailable {
            return self.refused(
                request,
                listener_tags,
                Rejection {
                    status: 503,
                    kind: RefusalKind::PolicyUnavailable,
                    reason,
                    message: "this gateway has not loaded its policies yet (the policy store \
                              is unreachable); nothing is forwarded until it has"
                        .to_owned(),
                    policy: None,
                    rule: None,
                    transform: "allowlist",
                    retry_after: None,
                    approval: None,
                },
            );
        }
        // Parsed lazily, once, for every transform that looks into it.
        let body = body.map(|bytes| Body::new(bytes, self.policies.dlp()));
        let unreadable = match body.as_ref().and_then(Body::mcp) {
            // Policies on MCP messages cannot be applied to what cannot be read: refuse it
            // as a JSON-RPC server would.
            Some(Err(error)) => Some((
                "malformed_jsonrpc",
                format!("the JSON-RPC body is malformed: {error}"),
                error.clone(),
            )),
            // Each message is decided on its own: a bound on their number bounds the work.
            Some(Ok(Inbound::Batch(messages))) if messages.len() > self.mcp.max_batch => {
                let reason = format!(
                    "the batch holds {} messages, more than the {} allowed (mcp.max_batch)",
                    messages.len(),
                    self.mcp.max_batch
                );
                Some((
                    "jsonrpc_batch_too_large",
                    format!("the JSON-RPC body is refused: {reason}"),
                    ParseError::NotJsonRpc(reason),
                ))
            }
            _ => None,
        };
        if let Some((reason, message, error)) = unreadable {
            let mut decided = self.refused(
                request,
                listener_tags,
                Rejection {
                    status: 400,
                    kind: RefusalKind::InvalidRequest,
                    reason,
                    message,
                    policy: None,
                    rule: None,
                    transform: "mcp",
                    retry_after: None,
                    approval: None,
                },
            );
            decided.outcome.mutations = mutations;
            decided.outcome.jsonrpc_reply = Some(JsonRpcReply {
                status: 400,
                body: crate::mcp::parse_error_reply(&error),
            });
            return decided;
        }
        match self.identities.resolve(&presented(request, listener_tags)) {
            Ok(identity) => {
                let exchange = Exchange {
                    request,
                    body: body.as_ref(),
                    identity: &identity,
                    policies: &self.policies,
                    tag_ids: self.policies.tag_ids(&identity.tags),
                    mutations,
                    verdict: None,
                    preview,
                    meter: None,
                    inspection: None,
                };
                let mut outcome = self.pipeline.run(exchange).await;
                // An intercepted CONNECT connects nowhere itself: its requests are vetted.
                if outcome.rejection.is_none() && !preview && !request.intercepted {
                    guard(&self.network, request, &self.policies, &mut outcome).await;
                }
                if let Some(rejection) = &mut outcome.rejection
                    && rejection.kind == RefusalKind::ApprovalRequired
                    && !preview
                {
                    let facts = crate::policy::RequestFacts {
                        body: body.as_ref(),
                        identity: Some(&identity),
                        ..request.facts()
                    };
                    self.approvals
                        .ask(
                            &self.approval_settings,
                            request,
                            &facts,
                            &identity,
                            self.policies.dlp(),
                            rejection,
                        )
                        .await;
                    annotate_approval(&mut outcome);
                }
                if let (Some(rejection), Some(body)) = (&outcome.rejection, &body) {
                    outcome.jsonrpc_reply = self.jsonrpc_refusal(request, rejection, body);
                }
                Decided {
                    identity: Ok(identity),
                    outcome,
                }
            }
            Err(error) => {
                let reason = match error {
                    IdentityError::MalformedProxyAuthorization => "malformed_proxy_authorization",
                    IdentityError::UnknownToken => "unknown_proxy_token",
                };
                Decided {
                    identity: Err(error),
                    outcome: Outcome {
                        decision: Decision::Denied,
                        verdict: None,
                        rejection: Some(Rejection {
                            status: 407,
                            kind: RefusalKind::ProxyAuthRequired,
                            reason,
                            message: error.to_string(),
                            policy: None,
                            rule: None,
                            transform: "identity",
                            retry_after: None,
                            approval: None,
                        }),
                        mutations,
                        trace: vec![TransformTrace {
                            name: "identity",
                            action: TraceAction::Reject,
                            annotations: Annotations {
                                reason: Some(reason),
                                ..Annotations::default()
                            },
                        }],
                        jsonrpc_reply: None,
                        response: Default::default(),
                    },
                }
            }
        }
    }

    /// The JSON-RPC answer to a refused MCP message: HTTP 200 with an error per message
    /// that has an id, as an MCP server answers a call it refuses; `None` for a body that
    /// is not JSON-RPC, a refusal that is not a policy's, or a batch of notifications only
    /// (which get the plain 403).
    fn jsonrpc_refusal(
        &self,
        request: &OutboundRequest,
        rejection: &Rejection,
        body: &Body<'_>,
    ) -> Option<JsonRpcReply> {
        if !matches!(
            rejection.kind,
            RefusalKind::PolicyDenied | RefusalKind::ApprovalRequired
        ) {
            return None;
        }
        let Some(Ok(inbound)) = body.mcp() else {
            return None;
        };
        let mut data = serde_json::json!({
            "type": rejection.kind.as_str(),
            "reason": rejection.reason,
            "message": rejection.message,
            "policy": rejection.policy.as_deref(),
            "transform": rejection.transform,
            "request_id": request.id,
        });
        if let Some(approval) = &rejection.approval {
            data["approval"] = serde_json::json!(approval);
        }
        let reply = crate::mcp::error_reply(
            inbound,
            self.mcp.deny_code,
            &self.mcp.deny_message,
            Some(data),
        )?;
        Some(JsonRpcReply {
            status: 200,
            body: reply,
        })
    }

    /// The record of a request refused before the pipeline ran (it could not be parsed):
    /// identity is still resolved, for the audit trail.
    pub fn refused(
        &self,
        request: &OutboundRequest,
        listener_tags: &[Tag],
        rejection: Rejection,
    ) -> Decided {
        let reason = rejection.reason;
        let stage = rejection.transform;
        Decided {
            identity: self.identities.resolve(&presented(request, listener_tags)),
            outcome: Outcome {
                decision: Decision::Denied,
                verdict: None,
                rejection: Some(rejection),
                mutations: Mutations::default(),
                trace: vec![TransformTrace {
                    name: stage,
                    action: TraceAction::Reject,
                    annotations: Annotations {
                        reason: Some(reason),
                        ..Annotations::default()
                    },
                }],
                jsonrpc_reply: None,
                response: Default::default(),
            },
        }
    }
}

/// The refusing step's trace line names what became of the approval it asked for.
fn annotate_approval(outcome: &mut Outcome) {
    let Some(rejection) = &outcome.rejection else {
        return;
    };
    if let Some(step) = outcome
        .trace
        .iter_mut()
        .rev()
        .find(|s| s.action == TraceAction::Reject)
    {
        step.annotations.reason = Some(rejection.reason);
        step.annotations.approval = rejection.approval.as_ref().map(|a| a.id.clone());
    }
}

/// The guard as the last step of a decision: an allowed request gets the vetted address
/// in [`UPSTREAM_ADDRESS_HEADER`], or is refused. A range is exempt when a rule of the
/// deciding policy names it by CIDR (or IP literal).
async fn guard(
    network: &NetworkGuard,
    request: &OutboundRequest,
    policies: &PolicySet,
    outcome: &mut Outcome,
) {
    let deciding = outcome
        .verdict
        .and_then(|v| v.decided_by)
        .map(|rule| policies.policy(rule.policy));
    let exempt = |ip: IpAddr| {
        deciding.is_some_and(|policy| {
            policy
                .rules
                .iter()
                .any(|rule| matches!(&rule.host.kind, HostMatch::Cidr(net) if net.contains(&ip)))
        })
    };
    let vetted = network
        .vet(&request.host, request.ip, request.port, &exempt)
        .await;
    let (action, annotations) = match vetted {
        Ok(address) => {
            outcome.mutations.set(
                UPSTREAM_ADDRESS_HEADER,
                SecretValue::new(address.to_string()),
            );
            (
                TraceAction::Continue,
                Annotations {
                    upstream_address: Some(address),
                    ..Annotations::default()
                },
            )
        }
        Err(refusal) => {
            let rejection = rejection(request, &refusal);
            let annotations = Annotations {
                reason: Some(rejection.reason),
                upstream_address: match &refusal {
                    Refusal::Internal { address, .. } => Some(*address),
                    Refusal::Unresolved(_) => None,
                },
                address_range: match &refusal {
                    Refusal::Internal { internal, .. } => Some(internal.range.as_str()),
                    Refusal::Unresolved(_) => None,
                },
                ..Annotations::default()
            };
            outcome.decision = Decision::Denied;
            outcome.rejection = Some(rejection);
            (TraceAction::Reject, annotations)
        }
    };
    outcome.trace.push(TransformTrace {
        name: "network_guard",
        action,
        annotations,
    });
}

/// The workload's answer: 403 for an internal destination (the address itself is not
/// shown: only the audit record has it), 502 when the host has no address.
fn rejection(request: &OutboundRequest, refusal: &Refusal) -> Rejection {
    let (status, kind, reason, message) = match refusal {
        Refusal::Internal { internal, .. } => (
            403,
            RefusalKind::DestinationRefused,
            "internal_address",
            format!(
                "{} resolves to an internal address ({internal}); the network guard refuses \
                 internal destinations unless the policy allowing the request names their \
                 range by CIDR",
                request.host
            ),
        ),
        Refusal::Unresolved(error) => (
            502,
            RefusalKind::DestinationUnresolved,
            match error {
                LookupError::NoAddress => "no_address",
                LookupError::Timeout => "dns_timeout",
                LookupError::Failed(_) => "dns_failure",
            },
            format!("{} cannot be resolved: {error}", request.host),
        ),
    };
    Rejection {
        status,
        kind,
        reason,
        message,
        policy: None,
        rule: None,
        transform: "network_guard",
        retry_after: None,
        approval: None,
    }
}
