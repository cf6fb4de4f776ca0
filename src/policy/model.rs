//! The stored (user-written) form of a policy.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::cel::CelExpr;
use super::rule::{RuleConfig, Tag};
use crate::vocab::FieldError;

fn default_priority() -> i32 {
    10
}

/// A policy as written in the config file (and, later, stored in the control plane).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Unique name; appears in audit records, metrics and deny responses.
    pub name: String,
    /// Lower wins. Default 10.
    #[serde(
        default = "default_priority",
        deserialize_with = "crate::vocab::integral::integral"
    )]
    pub priority: i32,
    /// Only `active` policies act. Default `active`.
    #[serde(default)]
    pub status: PolicyStatus,
    /// The policy applies to a workload carrying every one of these tags; empty: all.
    #[serde(default)]
    pub match_tags: Vec<Tag>,
    /// `allow`, `flag`, `deny`, `gated` or `approve`.
    pub action: Action,
    /// Dry run: evaluate and record what this policy would have decided, never enforce it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warn: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Shown to the workload in the 403 body when this policy denies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Rules OR-combine: the policy matches a request that matches any rule.
    pub rules: Vec<RuleConfig>,
    /// `gated` policies only: the CEL expression a matching request must satisfy to be
    /// allowed; when it does not hold the request is denied, with the expression in the
    /// reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<CelExpr>,
    /// `gated` policies only: what a request whose condition does not hold gets — `deny`
    /// (the default) or `approve` (it waits for a person's approval, docs/approvals.md).
    #[serde(default, skip_serializing_if = "ConditionFails::is_deny")]
    pub when_condition_fails: ConditionFails,
    /// Set on the policy an approval creates: it applies only to the approved identity,
    /// until it expires, and (for a tool call) to the approved arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
}

/// A definition to compile: a config file's, known again in a recompile by its digest,
/// or one held as shared JSON (the store's contents), known again by that JSON's identity.
pub trait PolicyDefinition {
    fn name(&self) -> &str;
    /// The definition: borrowed, or parsed from what is held.
    fn config(&self) -> Cow<'_, PolicyConfig>;
    /// The definition's JSON as held shared, when it is.
    fn held(&self) -> Option<&std::sync::Arc<str>> {
        None
    }
}

impl PolicyDefinition for PolicyConfig {
    fn name(&self) -> &str {
        &self.name
    }
    fn config(&self) -> Cow<'_, PolicyConfig> {
        Cow::Borrowed(self)
    }
}

/// What a `gated` policy does with a request its condition does not allow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConditionFails {
    #[default]
    Deny,
    Approve,
}

impl ConditionFails {
    fn is_deny(&self) -> bool {
        *self == ConditionFails::Deny
    }
}

/// What narrows a grant — the policy an approval creates — beyond its rules.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The approval this grant answers.
    pub approval: String,
    /// The workload identity it is for; absent: a workload without a name (its tags are
    /// the policy's `match_tags`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// RFC 3339; from then on the grant matches nothing.
    pub expires_at: String,
    /// For a tool call: the SHA-256 (hex) of its `arguments` in canonical JSON (keys
    /// sorted, no spaces); a call with other arguments is not granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyStatus {
    #[default]
    #[serde(alias = "Active", alias = "ACTIVE")]
    Active,
    #[serde(alias = "Disabled", alias = "DISABLED")]
    Disabled,
    #[serde(alias = "Draft", alias = "DRAFT")]
    Draft,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[serde(alias = "ALLOW", alias = "Allow")]
    Allow,
    #[serde(alias = "FLAG", alias = "Flag")]
    Flag,
    #[serde(alias = "DENY", alias = "Deny")]
    Deny,
    #[serde(alias = "GATED", alias = "Gated")]
    Gated,
    /// Refused until a person approves it; an approval creates a grant (docs/approvals.md).
    #[serde(alias = "APPROVE", alias = "Approve")]
    Approve,
}

impl Action {
    /// Tie-break at equal priority: lower rank wins (`deny > approve > gated > flag >
    /// allow`).
    pub fn rank(self) -> u8 {
        match self {
            Action::Deny => 0,
            Action::Approve => 1,
            Action::Gated => 2,
            Action::Flag => 3,
            Action::Allow => 4,
        }
    }

    /// Whether the action can refuse a request it matches (deny, approve, gated): its
    /// conditions then fail closed.
    pub fn refuses(self) -> bool {
        matches!(self, Action::Deny | Action::Approve | Action::Gated)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Flag => "flag",
            Action::Deny => "deny",
            Action::Gated => "gated",
            Action::Approve => "approve",
        }
    }

    /// The decision this action produces when it decides a request; a gated policy's
    /// depends on its condition ([`super::Verdict::decision`]).
    pub fn decision(self) -> Decision {
        match self {
            Action::Allow => Decision::Allowed,
            Action::Flag => Decision::Flagged,
            // Without the outcome of its condition, a gated policy fails closed.
            Action::Deny | Action::Gated | Action::Approve => Decision::Denied,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The action when no policy matches. Default `deny`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[serde(alias = "ALLOW", alias = "Allow")]
    Allow,
    #[serde(alias = "FLAG", alias = "Flag")]
    Flag,
    #[default]
    #[serde(alias = "DENY", alias = "Deny")]
    Deny,
}

impl DefaultAction {
    pub fn action(self) -> Action {
        match self {
            DefaultAction::Allow => Action::Allow,
            DefaultAction::Flag => Action::Flag,
            DefaultAction::Deny => Action::Deny,
        }
    }
}

/// The outcome recorded for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Decision {
    Allowed,
    Flagged,
    Denied,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "ALLOWED",
            Decision::Flagged => "FLAGGED",
            Decision::Denied => "DENIED",
        }
    }
}

/// What is legal yet surely not what the author meant: rules that can never match, and
/// under interception (`intercepting`) CONNECT-only rules whose tunnel's requests nothing
/// in the policy allows. Warnings, with paths relative to the policy.
pub fn lint_policy(policy: &PolicyConfig, intercepting: bool) -> Vec<FieldError> {
    let mut warnings = Vec::new();
    for (i, rule) in policy.rules.iter().enumerate() {
        if let Some(why) = rule.never_matches() {
            warnings.push(FieldError::new(format!("rules[{i}]"), why));
            continue;
        }
        let inner_allowed =
            || (policy.rules.iter()).any(|other| !other.connect_only() && other.host == rule.host);
        if intercepting && rule.connect_only() && !inner_allowed() {
            warnings.push(FieldError::new(
                format!("rules[{i}]"),
                format!(
                    "under interception this rule only opens the tunnel to {}: each request \
                     inside it (GET, POST …) is decided on its own method and path, and this \
                     policy allows none of them; add their methods (or drop `methods` to \
                     allow every request to the host) — docs/interception.md",
                    rule.host
                ),
            ));
        }
    }
    warnings
}

/// Checks what deserialization cannot: returns errors with paths relative to the policy.
pub fn validate_policy(policy: &PolicyConfig) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(problem) = crate::vocab::names::name_problem("policy", &policy.name) {
        errors.push(FieldError::new("name", problem));
    }
    if policy.rules.is_empty() {
        errors.push(FieldError::new(
            "rules",
            "a policy needs at least one rule (use `host: \"*\"` to match every request)",
        ));
    }
    match (policy.action, &policy.condition) {
        (Action::Gated, None) => errors.push(FieldError::new(
            "condition",
            "a `gated` policy needs a `condition`: the CEL expression a matching request must \
             satisfy to be allowed (e.g. `request.args.channel_id == \"C_GENERAL\"`)",
        )),
        (action, Some(_)) if action != Action::Gated => errors.push(FieldError::new(
            "condition",
            format!(
                "only `gated` policies take a `condition`; for an `{action}` policy put the \
                 expression in a rule's `cel`"
            ),
        )),
        _ => {}
    }
    if policy.when_condition_fails == ConditionFails::Approve && policy.action != Action::Gated {
        errors.push(FieldError::new(
            "when_condition_fails",
            format!(
                "only `gated` policies take `when_condition_fails`; an `{}` policy has no \
                 condition (use `action: approve` to ask for approval of every match)",
                policy.action
            ),
        ));
    }
    if let Some(grant) = &policy.grant {
        errors.extend(validate_grant(policy, grant));
    }
    errors
}

fn validate_grant(policy: &PolicyConfig, grant: &Grant) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if policy.action != Action::Allow {
        errors.push(FieldError::new(
            "grant",
            format!(
                "a grant allows what was approved: its action is `allow`, not `{}`",
                policy.action
            ),
        ));
    }
    if humantime::parse_rfc3339(&grant.expires_at).is_err() {
        errors.push(FieldError::new(
            "grant.expires_at",
            format!(
                "{:?} is not an RFC 3339 time in UTC (e.g. 2026-12-05T10:00:00Z)",
                grant.expires_at
            ),
        ));
    }
    if let Some(digest) = &grant.arguments_sha256
        && (digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        errors.push(FieldError::new(
            "grant.arguments_sha256",
            "not a SHA-256 in hex (64 hex digits)",
        ));
    }
    errors
}
