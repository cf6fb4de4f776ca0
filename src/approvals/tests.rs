use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::check::{CheckRequest, build_request};
use crate::config::parse_str;
use crate::identity::IdentityKind;
use crate::inspect::Body;
use crate::policy::{Decision, PolicySet};
use crate::store::approvals::ApprovalState;
use crate::vocab::Tag;

const ASKING: &str = r#"
policies:
  - name: ask-before-sending
    priority: 5
    action: approve
    rules:
      - host: "*.example.com"
"#;

fn identity(name: Option<&str>, tags: &[&str]) -> Identity {
    Identity {
        kind: IdentityKind::Token,
        name: name.map(Arc::from),
        spiffe_id: None,
        tags: tags.iter().map(|t| Tag::parse(t).unwrap()).collect(),
    }
}

fn request(line: &str) -> OutboundRequest {
    build_request(&CheckRequest {
        request_line: line.into(),
        ..CheckRequest::default()
    })
    .unwrap()
}

/// The approval a refused `line` (with `body`) from `who` would queue.
fn approval_of(line: &str, body: Option<&str>, who: &Identity) -> Approval {
    let request = request(line);
    let body = body.map(|b| Body::new(b.as_bytes(), None));
    let facts = RequestFacts {
        body: body.as_ref(),
        identity: Some(who),
        ..request.facts()
    };
    Approval {
        id: "ap-testtesttesttest".into(),
        state: ApprovalState::Pending,
        status: "pending",
        identity: who.name.as_deref().map(str::to_owned),
        policy: "ask-before-sending".into(),
        request: summary(&request, &facts, who, None),
        request_id: request.id.clone(),
        requested_at: rfc3339(SystemTime::now()),
        lapses_at: rfc3339(SystemTime::now() + Duration::from_secs(60)),
        asked: 1,
        decided_at: None,
        decided_by: None,
        note: None,
        grant: None,
        grant_expires_at: None,
    }
}

/// The asking policy plus the grant of `approval`, lasting `lasts`.
fn with_grant(approval: &Approval, lasts: Duration) -> PolicySet {
    let loaded = parse_str(ASKING, None).unwrap();
    let mut policies = loaded.config.policies;
    let expires = rfc3339(SystemTime::now() + lasts);
    let grant = grant_policy(approval, 5, &expires).unwrap();
    assert!(crate::policy::validate_policy(&grant).is_empty());
    policies.push(grant);
    PolicySet::compile(&policies, Default::default())
}

fn decide(set: &PolicySet, line: &str, body: Option<&str>, who: &Identity) -> (Decision, String) {
    let request = request(line);
    let body = body.map(|b| Body::new(b.as_bytes(), None));
    let facts = RequestFacts {
        body: body.as_ref(),
        identity: Some(who),
        ..request.facts()
    };
    let verdict = set.evaluate(&facts, &set.tag_ids(&who.tags));
    let by = verdict
        .decided_by
        .map_or(String::new(), |r| set.policy(r.policy).name.to_string());
    (verdict.decision(), by)
}

#[test]
fn a_grant_allows_the_approved_request_and_nothing_beside_it() {
    let alice = identity(Some("alice"), &["team:a"]);
    let approval = approval_of("POST https://api.example.com/v1/send", None, &alice);
    let set = with_grant(&approval, Duration::from_secs(600));
    let grant = "grant-ap-testtesttesttest";
    assert_eq!(
        decide(
            &set,
            "POST https://api.example.com/v1/send?x=1",
            None,
            &alice
        ),
        (Decision::Allowed, grant.into())
    );
    let bob = identity(Some("bob"), &["team:a"]);
    let unnamed = identity(None, &["team:a"]);
    let other_tags = identity(Some("alice"), &["team:b"]);
    for (line, who) in [
        ("POST https://api.example.com/v1/send", &bob),
        ("POST https://api.example.com/v1/send", &unnamed),
        ("POST https://api.example.com/v1/send", &other_tags),
        ("GET https://api.example.com/v1/send", &alice),
        ("POST https://api.example.com/v1/send/more", &alice),
        ("POST https://api.example.com/v1/sen", &alice),
        ("POST https://api.example.com:8443/v1/send", &alice),
        ("POST http://api.example.com/v1/send", &alice),
        ("POST https://www.example.com/v1/send", &alice),
    ] {
        assert_eq!(
            decide(&set, line, None, who),
            (Decision::Denied, "ask-before-sending".into()),
            "{line} as {:?}",
            who.name
        );
    }
}

#[test]
fn a_grant_expires_by_itself() {
    let alice = identity(Some("alice"), &[]);
    let approval = approval_of("GET https://api.example.com/x", None, &alice);
    let set = with_grant(&approval, Duration::from_millis(300));
    assert_eq!(
        decide(&set, "GET https://api.example.com/x", None, &alice).0,
        Decision::Allowed
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        decide(&set, "GET https://api.example.com/x", None, &alice),
        (Decision::Denied, "ask-before-sending".into())
    );
}

#[test]
fn a_path_holding_glob_characters_grants_only_itself() {
    let alice = identity(Some("alice"), &[]);
    let approval = approval_of("DELETE https://api.example.com/files/*", None, &alice);
    let set = with_grant(&approval, Duration::from_secs(600));
    assert_eq!(
        decide(&set, "DELETE https://api.example.com/files/*", None, &alice).0,
        Decision::Allowed
    );
    for line in [
        "DELETE https://api.example.com/files/everything",
        "DELETE https://api.example.com/files/",
    ] {
        assert_eq!(
            decide(&set, line, None, &alice).0,
            Decision::Denied,
            "{line}"
        );
    }
    let approval = approval_of("GET https://api.example.com/a[b]{c,d}", None, &alice);
    let set = with_grant(&approval, Duration::from_secs(600));
    assert_eq!(
        decide(&set, "GET https://api.example.com/a[b]{c,d}", None, &alice).0,
        Decision::Allowed
    );
    for line in [
        "GET https://api.example.com/abc",
        "GET https://api.example.com/abd",
    ] {
        assert_eq!(
            decide(&set, line, None, &alice).0,
            Decision::Denied,
            "{line}"
        );
    }
}

fn call(tool: &str, arguments: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments}}}}}"#
    )
}

#[test]
fn a_tool_call_grant_covers_that_tool_with_those_arguments_only() {
    let alice = identity(Some("alice"), &[]);
    let approved = call("send_email", r#"{"to":"ops@example.com","subject":"hi"}"#);
    let approval = approval_of("POST https://mcp.example.com/mcp", Some(&approved), &alice);
    assert_eq!(approval.request.tool.as_deref(), Some("send_email"));
    let set = with_grant(&approval, Duration::from_secs(600));
    let line = "POST https://mcp.example.com/mcp";
    // The same call, spelled otherwise (key order, an escape), passes.
    let respelled = call(
        "send_email",
        r#"{"subject":"hi","to":"ops@ex\u0061mple.com"}"#,
    );
    assert_eq!(
        decide(&set, line, Some(&respelled), &alice).0,
        Decision::Allowed
    );
    for other in [
        call("send_email", r#"{"to":"eve@evil.example","subject":"hi"}"#),
        call(
            "send_email",
            r#"{"to":"ops@example.com","subject":"hi","bcc":"eve@evil.example"}"#,
        ),
        call(
            "send_email_all",
            r#"{"to":"ops@example.com","subject":"hi"}"#,
        ),
        call("send_*", r#"{"to":"ops@example.com","subject":"hi"}"#),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_owned(),
    ] {
        assert_eq!(
            decide(&set, line, Some(&other), &alice).0,
            Decision::Denied,
            "{other}"
        );
    }
}

#[test]
fn the_approver_sees_no_credential_and_a_bounded_preview() {
    let alice = identity(Some("alice"), &[]);
    let long = "x".repeat(5000);
    let body = call(
        "deploy",
        &format!(r#"{{"key":"AKIAIOSFODNN7EXAMPLE","note":"{long}","n":[1,2]}}"#),
    );
    let approval = approval_of(
        "POST https://mcp.example.com/mcp?token=hunter2",
        Some(&body),
        &alice,
    );
    let asked = serde_json::to_string(&approval.request).unwrap();
    assert!(!asked.contains("AKIAIOSFODNN7EXAMPLE"), "{asked}");
    assert!(!asked.contains("hunter2"), "{asked}");
    let preview = approval.request.arguments_preview.as_deref().unwrap();
    assert!(preview.contains("<redacted: aws_access_key>"), "{preview}");
    assert!(preview.len() < PREVIEW_BYTES + 8, "{}", preview.len());
    assert_eq!(approval.request.path, "/mcp");
}

#[test]
fn the_same_request_waits_under_one_key_and_any_difference_makes_another() {
    let alice = identity(Some("alice"), &["team:a"]);
    let key = |line: &str, body: Option<&str>, who: &Identity| {
        scope_key(who, "p", &approval_of(line, body, who).request)
    };
    let line = "POST https://api.example.com/v1/send";
    assert_eq!(key(line, None, &alice), key(line, None, &alice));
    assert_ne!(
        key(line, None, &alice),
        key("POST https://api.example.com/v1/sent", None, &alice)
    );
    assert_ne!(
        key(line, None, &alice),
        key(line, None, &identity(Some("alice"), &["team:b"]))
    );
    assert_ne!(
        key(line, Some(&call("a", "{}")), &alice),
        key(line, Some(&call("a", r#"{"b":1}"#)), &alice)
    );
}

#[test]
fn settings_are_checked_with_their_field_paths() {
    let problems = |yaml: &str| -> Vec<String> {
        let config: ApprovalsConfig = serde_norway::from_str(yaml).unwrap();
        config
            .problems()
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    };
    assert!(problems("{}").is_empty());
    let found = problems(
        "{console_url: 'ftp://x', grant_for: 8d, max_pending: 0, \
          webhook: {url: 'http://hooks.example.com/x'}}",
    );
    assert!(
        found.iter().any(|p| p.starts_with("console_url:")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.starts_with("grant_for:")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.starts_with("max_pending:")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.starts_with("webhook.url:")),
        "{found:?}"
    );
    let settings = ApprovalsConfig::default();
    assert!(grant_duration(&settings, Some("8d")).is_err());
    assert!(grant_duration(&settings, Some("0s")).is_err());
    assert_eq!(
        grant_duration(&settings, None).unwrap(),
        Duration::from_secs(3600)
    );
}

#[tokio::test]
async fn without_a_store_an_approval_cannot_be_queued_and_the_request_is_refused_503() {
    let loaded = parse_str(
        "policies:\n  - {name: ask, action: approve, rules: [{host: '*'}]}\n",
        None,
    )
    .unwrap();
    let snapshot = crate::snapshot::Snapshot::compile(
        &loaded.config,
        &loaded.version,
        &|_| None,
        &crate::snapshot::Runtime::default(),
    )
    .unwrap();
    let decided = snapshot
        .decide(&request("GET https://api.example.com/x"), &[], None)
        .await;
    let rejection = decided.outcome.rejection.expect("refused");
    assert_eq!(rejection.kind, RefusalKind::ApprovalUnavailable);
    assert_eq!(rejection.status, 503);
    assert_eq!(rejection.reason, "approval_unavailable");
    assert!(
        rejection.message.contains("configure a `store`"),
        "{}",
        rejection.message
    );
    assert!(rejection.approval.is_none());
    // `check` previews the decision without queueing anything.
    let previewed = snapshot
        .preview(&request("GET https://api.example.com/x"), &[], None)
        .await;
    let rejection = previewed.outcome.rejection.expect("refused");
    assert_eq!(rejection.kind, RefusalKind::ApprovalRequired);
}
