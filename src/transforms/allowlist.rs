//! The `allowlist` transform: the policy engine's verdict, as a pipeline step.

use super::{Annotations, DryRun, Exchange, Rejection, Step};
use crate::policy::{Decision, Verdict};
use crate::request::RequestFacts;

pub(super) fn apply(exchange: &mut Exchange<'_>) -> Step {
    let facts = RequestFacts {
        body: exchange.body,
        ..exchange.request.facts()
    };
    let verdict = exchange.policies.evaluate(&facts, &exchange.tag_ids);
    exchange.verdict = Some(verdict);
    let annotations = annotate(exchange, &verdict);
    if verdict.action.decision() != Decision::Denied {
        return Step::Continue(annotations);
    }
    let request = exchange.request;
    let target = if request.path.is_empty() {
        format!("{} {}:{}", request.method_name, request.host, request.port)
    } else {
        format!("{} {}{}", request.method_name, request.host, request.path)
    };
    let rejection = match verdict.decided_by {
        Some(rule) => {
            let policy = exchange.policies.policy(rule.policy);
            Rejection {
                status: 403,
                kind: "policy_denied",
                reason: "policy_deny",
                message: match &policy.message {
                    Some(message) => message.to_string(),
                    None => format!("{target} is denied by policy {:?}", &*policy.name),
                },
                policy: Some(policy.name.clone()),
                rule: Some(rule.rule),
                transform: "allowlist",
            }
        }
        None => Rejection {
            status: 403,
            kind: "policy_denied",
            reason: "no_matching_policy",
            message: format!("no policy allows {target} for this workload"),
            policy: None,
            rule: None,
            transform: "allowlist",
        },
    };
    Step::Reject(rejection, annotations)
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
    Annotations {
        decision: Some(verdict.action.decision()),
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
