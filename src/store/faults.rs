//! Stored objects this gateway cannot use. One bad row — written by an older or newer
//! version, edited by hand, restored from a damaged backup — must cost only its own object:
//! every other change, token revocations included, keeps applying.
//!
//! What a faulty object becomes is chosen to fail closed and to be the same on every
//! instance, whatever each read before (a "last good version" differs between an instance
//! that ran through the change and one that just started):
//! - a **policy** becomes a deny of every request in the scope that can still be read
//!   (its `match_tags` and `priority`; unreadable: every workload, ahead of every policy),
//!   unless what can be read says it only allowed or did not act, when it is left out —
//!   the requests it allowed fall to the other policies and the default;
//! - a **secret** is left out: no request carries it;
//! - an **enrollment token** is left out: it grants nothing (407).

use serde::Serialize;
use serde_json::{Value, json};

use crate::policy::PolicyConfig;

/// One stored object left out of (or standing in for itself in) the live snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// `policy`, `secret` or `token`.
    pub kind: &'static str,
    pub name: String,
    /// The stored version, when the object is versioned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Why, naming the field when it can (never a secret value: stored rows hold none).
    pub error: String,
    /// What the gateway does instead: `denies`, `left_out`.
    pub outcome: &'static str,
}

impl Fault {
    /// The outcome of an object set aside: `denies` when a fail-closed stand-in replaces it,
    /// else `left_out`.
    pub fn outcome(has_stand_in: bool) -> &'static str {
        if has_stand_in { "denies" } else { "left_out" }
    }
}

/// The fail-closed stand-in for a policy whose stored definition cannot be used; `None`
/// when leaving it out already fails closed (an allow, or a policy that does not act).
/// `raw` is whatever of the definition is still JSON.
pub fn policy_stand_in(name: &str, raw: Option<&Value>) -> Option<PolicyConfig> {
    let field = |key: &str| raw.and_then(|r| r.get(key));
    let action = field("action").and_then(Value::as_str);
    let status = field("status").and_then(Value::as_str);
    let inactive = matches!(status, Some(s) if !s.eq_ignore_ascii_case("active"));
    if action == Some("allow") || inactive {
        return None;
    }
    let priority = field("priority")
        .and_then(Value::as_i64)
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or(i32::MIN);
    // Unreadable tags would narrow nothing safely: the stand-in then applies to everyone.
    let match_tags = field("match_tags")
        .filter(|tags| serde_json::from_value::<Vec<crate::vocab::Tag>>((*tags).clone()).is_ok())
        .cloned()
        .unwrap_or_else(|| json!([]));
    let stand_in = json!({
        "name": name,
        "priority": priority,
        "match_tags": match_tags,
        "action": "deny",
        "message": format!(
            "policy {name:?} cannot be read from the policy store; it denies every request \
             it could apply to until it is fixed"
        ),
        "rules": [{"host": "*"}],
    });
    serde_json::from_value(stand_in).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_policy_denies_in_the_scope_that_can_still_be_read() {
        let raw = json!({"name": "p", "priority": 3, "match_tags": ["tenant:acme"],
                         "action": "denyy", "rules": []});
        let stand_in = policy_stand_in("p", Some(&raw)).unwrap();
        assert_eq!(stand_in.priority, 3);
        assert_eq!(stand_in.match_tags.len(), 1);
        assert_eq!(stand_in.action, crate::policy::Action::Deny);
        // Nothing readable: every workload, ahead of every policy.
        let stand_in = policy_stand_in("p", None).unwrap();
        assert_eq!(stand_in.priority, i32::MIN);
        assert!(stand_in.match_tags.is_empty());
        let bad_tags = json!({"match_tags": "tenant:acme", "action": "deny"});
        assert!(
            policy_stand_in("p", Some(&bad_tags))
                .unwrap()
                .match_tags
                .is_empty()
        );
    }

    #[test]
    fn an_unreadable_allow_or_inactive_policy_is_left_out() {
        let allow = json!({"action": "allow", "rules": "oops"});
        assert_eq!(policy_stand_in("p", Some(&allow)), None);
        let draft = json!({"action": "deny", "status": "draft", "rules": 7});
        assert_eq!(policy_stand_in("p", Some(&draft)), None);
    }
}
