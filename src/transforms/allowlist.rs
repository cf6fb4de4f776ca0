//! The `allowlist` transform: the policy engine's verdict, as a pipeline step.

use std::sync::Arc;

use super::kind::{Applied, CompileContext, Kind, Transform, TransformConfig};
use super::{Annotations, DryRun, Exchange, RefusalKind, Rejection, Step};
use crate::inspect::Body;
use crate::mcp::{Inbound, Message};
use crate::policy::RequestFacts;
use crate::policy::{Action, Decision, PolicySet, Verdict, WorkloadTagIds};
use crate::vocab::FieldError;

pub(super) fn apply(exchange: &mut Exchange<'_>) -> Step {
    let body = exchange.body;
    let facts = RequestFacts {
        body,
        identity: Some(exchange.identity),
        ..exchange.request.facts()
    };
    let verdict = match body.and_then(Body::mcp) {
        Some(Ok(Inbound::Batch(messages))) if !messages.is_empty() => {
            batch_verdict(exchange.policies, &facts, messages, &exchange.tag_ids)
        }
        _ => exchange.policies.evaluate(&facts, &exchange.tag_ids),
    };
    exchange.verdict = Some(verdict);
    let mut annotations = annotate(exchange, &verdict);
    if verdict.decision() != Decision::Denied {
        return Step::Continue(annotations);
    }
    let request = exchange.request;
    // The port is named unless it is the scheme's own: a rule for `host:8443` differs from
    // one for `host`, and the workload must see which it asked for.
    let target = if request.path.is_empty()
        || request.port != crate::request::default_port(&request.scheme)
    {
        format!(
            "{} {}:{}{}",
            request.method_name, request.host, request.port, request.path
        )
    } else {
        format!("{} {}{}", request.method_name, request.host, request.path)
    };
    let rejection = match verdict.decided_by {
        Some(rule) if verdict.condition_error => {
            let policy = exchange.policies.policy(rule.policy);
            let error = condition_error(exchange.policies, &facts, body, rule)
                .unwrap_or_else(|| "the condition failed to evaluate".to_owned());
            let message = format!(
                "{target} is refused by policy {:?}: its condition could not be evaluated on \
                 this request ({error}), and a refusing policy fails closed",
                &*policy.name
            );
            annotations.reason = Some("condition_error");
            annotations.condition_error = Some(error);
            Rejection {
                status: 403,
                kind: RefusalKind::PolicyDenied,
                reason: "condition_error",
                message,
                policy: Some(policy.name.clone()),
                rule: Some(rule.rule),
                transform: "allowlist",
                retry_after: None,
                approval: None,
            }
        }
        Some(rule)
            if verdict.action == Action::Approve
                || (verdict.action == Action::Gated
                    && exchange
                        .policies
                        .policy(rule.policy)
                        .approve_when_condition_fails) =>
        {
            let policy = exchange.policies.policy(rule.policy);
            annotations.reason = Some("approval_required");
            let why = match policy.condition.as_ref() {
                Some(condition) if verdict.action == Action::Gated => {
                    format!(" (condition `{}` does not hold)", condition.as_str())
                }
                _ => String::new(),
            };
            Rejection {
                status: 403,
                kind: RefusalKind::ApprovalRequired,
                reason: "approval_required",
                message: match &policy.message {
                    Some(message) => message.to_string(),
                    None => format!(
                        "{target} needs a person's approval under policy {:?}{why}",
                        &*policy.name
                    ),
                },
                policy: Some(policy.name.clone()),
                rule: Some(rule.rule),
                transform: "allowlist",
                retry_after: None,
                approval: None,
            }
        }
        Some(rule) if verdict.action == Action::Gated => {
            let policy = exchange.policies.policy(rule.policy);
            let condition = policy.condition.as_ref().map_or("", |c| c.as_str());
            Rejection {
                status: 403,
                kind: RefusalKind::PolicyDenied,
                reason: "gate_condition_failed",
                message: match &policy.message {
                    Some(message) => message.to_string(),
                    None => format!(
                        "{target} is gated by policy {:?}: condition `{condition}` does not hold",
                        &*policy.name
                    ),
                },
                policy: Some(policy.name.clone()),
                rule: Some(rule.rule),
                transform: "allowlist",
                retry_after: None,
                approval: None,
            }
        }
        Some(rule) => {
            let policy = exchange.policies.policy(rule.policy);
            Rejection {
                status: 403,
                kind: RefusalKind::PolicyDenied,
                reason: "policy_deny",
                message: match &policy.message {
                    Some(message) => message.to_string(),
                    None => format!("{target} is denied by policy {:?}", &*policy.name),
                },
                policy: Some(policy.name.clone()),
                rule: Some(rule.rule),
                transform: "allowlist",
                retry_after: None,
                approval: None,
            }
        }
        None => {
            let mut message = format!("no policy allows {target} for this workload");
            if let Some(tunnel) = tunnel_policy(exchange.policies, &facts, &exchange.tag_ids) {
                message.push_str(&format!(
                    ". Policy {tunnel:?} opens the CONNECT tunnel to {}:{}, but the requests \
                     inside an intercepted tunnel are decided on their own method and path, \
                     and none allows this one (docs/interception.md)",
                    request.host, request.port
                ));
                annotations.tunnel_allowed_by = Some(tunnel);
            }
            Rejection {
                status: 403,
                kind: RefusalKind::PolicyDenied,
                reason: "no_matching_policy",
                message,
                policy: None,
                rule: None,
                transform: "allowlist",
                retry_after: None,
                approval: None,
            }
        }
    };
    Step::Reject(rejection, annotations)
}

/// Why the deciding rule's condition could not be evaluated: on the request, or on the
/// first batch message it fails on.
fn condition_error(
    policies: &PolicySet,
    facts: &RequestFacts<'_>,
    body: Option<&Body<'_>>,
    rule: crate::policy::RuleRef,
) -> Option<String> {
    match body.and_then(Body::mcp) {
        Some(Ok(Inbound::Batch(messages))) => messages.iter().find_map(|message| {
            policies.condition_error(
                rule,
                &RequestFacts {
                    message: Some(message),
                    ..*facts
                },
            )
        }),
        _ => policies.condition_error(rule, facts),
    }
}

/// A JSON-RPC batch is decided message by message and refused whole when any message is
/// denied: the verdict is the first denying one, else a flagging one, else the first.
fn batch_verdict(
    policies: &PolicySet,
    facts: &RequestFacts<'_>,
    messages: &[Message],
    tags: &WorkloadTagIds,
) -> Verdict {
    let mut chosen: Option<Verdict> = None;
    for message in messages {
        let verdict = policies.evaluate(
            &RequestFacts {
                message: Some(message),
                ..*facts
            },
            tags,
        );
        match verdict.decision() {
            Decision::Denied => return verdict,
            Decision::Flagged if chosen.is_none_or(|c| c.decision() != Decision::Flagged) => {
                chosen = Some(verdict);
            }
            _ if chosen.is_none() => chosen = Some(verdict),
            _ => {}
        }
    }
    chosen.unwrap_or_else(|| policies.evaluate(facts, tags))
}

fn annotate(exchange: &Exchange<'_>, verdict: &Verdict) -> Annotations {
    let policies = exchange.policies;
    let (policy, rule, reason) = match verdict.decided_by {
        Some(r) => (
            Some(policies.policy(r.policy).name.clone()),
            Some(r.rule),
            None,
        ),
        None => (None, None, Some("no_matching_policy")),
    };
    let reason = match verdict.gate {
        Some(true) => Some("gate_condition_held"),
        Some(false) => Some("gate_condition_failed"),
        None => reason,
    };
    Annotations {
        decision: Some(verdict.decision()),
        policy,
        rule,
        reason,
        dry_run: verdict.dry_run.map(|r| {
            let p = policies.policy(r.policy);
            DryRun {
                policy: p.name.clone(),
                rule: r.rule,
                action: p.action,
            }
        }),
        ..Annotations::default()
    }
}

/// The policy that would open a plain CONNECT tunnel to this request's host and port, when
/// the request itself (not a CONNECT) is allowed by none: what a user who wrote a tunnel
/// rule and then turned interception on needs to hear.
fn tunnel_policy(
    policies: &PolicySet,
    facts: &RequestFacts<'_>,
    tag_ids: &WorkloadTagIds,
) -> Option<std::sync::Arc<str>> {
    if facts.method == crate::request::Method::Connect {
        return None;
    }
    let connect = RequestFacts {
        method: crate::request::Method::Connect,
        method_name: "CONNECT",
        path: "",
        intercepted: false,
        body: None,
        message: None,
        unknown_args: None,
        ..*facts
    };
    let verdict = policies.evaluate(&connect, tag_ids);
    if verdict.decision() == Decision::Denied {
        return None;
    }
    let rule = verdict.decided_by?;
    Some(policies.policy(rule.policy).name.clone())
}

/// `- allowlist`: takes neither `rules` nor `config`.
pub(super) const KIND: Kind = Kind {
    name: "allowlist",
    parse: |rules, config| {
        let mut errors = Vec::new();
        if !rules.is_empty() {
            errors.push(FieldError::new(
                "rules",
                "allowlist takes no `rules`: its rules are the policies",
            ));
        }
        if config.is_some() {
            errors.push(FieldError::new(
                "config",
                "allowlist takes no `config`: it evaluates `policies`",
            ));
        }
        if errors.is_empty() {
            Ok(Arc::new(AllowlistConfig))
        } else {
            Err(errors)
        }
    },
};

#[derive(Debug, PartialEq)]
pub(super) struct AllowlistConfig;

impl TransformConfig for AllowlistConfig {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn runs_once(&self) -> bool {
        true
    }

    fn compile(&self, _: &CompileContext<'_>) -> Result<Box<dyn Transform>, Vec<FieldError>> {
        Ok(Box::new(Allowlist))
    }
}

struct Allowlist;

impl Transform for Allowlist {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn apply<'a>(&'a self, exchange: &'a mut Exchange<'_>) -> Applied<'a> {
        Applied::Done(apply(exchange))
    }

    fn is_policy_engine(&self) -> bool {
        true
    }
}
