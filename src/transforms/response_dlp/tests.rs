use super::*;
use crate::transforms::test_support::{config_errors, request, snapshot};

const AWS_ID: &str = "AKIAIOSFODNN7EXAMPLE";

fn inspection(action: ResponseAction) -> Inspection {
    Inspection::new("transforms[1]", &[], action)
}

#[test]
fn a_json_body_is_redacted_string_by_string_even_when_escaped() {
    let mut inspector =
        ResponseInspector::new(inspection(ResponseAction::Redact), "application/json");
    // The upstream spells the key with an escape; a client decodes it all the same.
    let body = br#"{"choices":[{"message":{"content":"your key is \u0041KIAIOSFODNN7EXAMPLE, mail a@example.com"}}]}"#;
    let inspected = inspector.whole(body);
    assert!(inspected.changed && !inspected.denied);
    let text = String::from_utf8(inspected.body).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let content = value["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        content,
        "your key is [REDACTED:aws_access_key], mail a@example.com"
    );
    assert_eq!(
        inspector.findings(),
        vec![serde_json::json!({"detector": "aws_access_key", "count": 1})]
    );
    // Nothing found: the body passes as it is.
    let mut clean = ResponseInspector::new(inspection(ResponseAction::Redact), "application/json");
    let passed = clean.whole(br#"{"ok": true}"#);
    assert!(!passed.changed);
    assert_eq!(passed.body, br#"{"ok": true}"#);
}

#[test]
fn flag_passes_and_deny_refuses_a_whole_body() {
    let body = format!("plain text with {AWS_ID} in it");
    let mut flag = ResponseInspector::new(inspection(ResponseAction::Flag), "text/plain");
    let flagged = flag.whole(body.as_bytes());
    assert!(!flagged.changed && !flagged.denied);
    assert_eq!(flag.findings().len(), 1);
    let mut deny = ResponseInspector::new(inspection(ResponseAction::Deny), "text/plain");
    let denied = deny.whole(body.as_bytes());
    assert!(denied.denied && denied.body.is_empty());
    let mut redact = ResponseInspector::new(inspection(ResponseAction::Redact), "text/plain");
    let redacted = redact.whole(body.as_bytes());
    assert_eq!(
        String::from_utf8(redacted.body).unwrap(),
        "plain text with [REDACTED:aws_access_key] in it"
    );
}

fn event(content: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"choices": [{"delta": {"content": content}}]})
    )
}

#[test]
fn a_stream_passes_each_complete_event_at_once_and_holds_only_the_incomplete_one() {
    let mut inspector =
        ResponseInspector::new(inspection(ResponseAction::Redact), "text/event-stream");
    let first = event("Hello");
    let second = event(&format!("the key is {AWS_ID}"));
    let stream = format!("{first}{second}data: [DONE]\n\n");
    // The first event and half of the second arrive.
    let cut = first.len() + 10;
    let out = inspector.piece(&stream.as_bytes()[..cut], false);
    assert_eq!(
        out.body,
        first.as_bytes(),
        "the complete event passes at once"
    );
    assert!(inspector.holds_back());
    let out = inspector.piece(&stream.as_bytes()[cut..], true);
    let rest = String::from_utf8(out.body).unwrap();
    assert!(!rest.contains(AWS_ID), "{rest}");
    assert!(rest.contains("[REDACTED:aws_access_key]"), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    assert!(!inspector.holds_back());
}

#[test]
fn a_denied_stream_ends_with_an_error_event_and_nothing_after() {
    let mut inspector =
        ResponseInspector::new(inspection(ResponseAction::Deny), "text/event-stream");
    let out = inspector.piece(event("fine").as_bytes(), false);
    assert!(!out.denied);
    let out = inspector.piece(event(&format!("leak {AWS_ID}")).as_bytes(), false);
    assert!(out.denied);
    let text = String::from_utf8(out.body).unwrap();
    assert!(text.starts_with("event: error\ndata: "), "{text}");
    assert!(
        text.contains("response_refused") && !text.contains(AWS_ID),
        "{text}"
    );
    let after = inspector.piece(event("more").as_bytes(), true);
    assert!(after.body.is_empty() && after.changed);
}

#[test]
fn a_huge_event_is_inspected_when_it_outgrows_what_is_held() {
    let mut inspector =
        ResponseInspector::new(inspection(ResponseAction::Redact), "text/event-stream");
    let mut big = format!("data: {AWS_ID} ");
    big.push_str(&"x".repeat(MAX_EVENT));
    let out = inspector.piece(big.as_bytes(), false);
    assert!(!inspector.holds_back());
    let text = String::from_utf8(out.body).unwrap();
    assert!(
        text.starts_with("data: [REDACTED:aws_access_key] "),
        "{}",
        &text[..40]
    );
}

#[tokio::test]
async fn the_transform_asks_for_an_uncompressed_answer_and_inspects_it() {
    let snapshot = snapshot(
        "policies:\n  - {name: api, action: allow, rules: [{host: '*'}]}\n\
         transforms:\n  - allowlist\n  - {name: response_dlp, config: {action: deny}}\n",
    );
    let decided = snapshot
        .decide(&request("GET https://api.example.com/", &[]), &[], None)
        .await;
    let inspection = decided.outcome.response.inspection.expect("inspected");
    assert_eq!(inspection.action, ResponseAction::Deny);
    assert!(
        decided
            .outcome
            .mutations
            .set
            .iter()
            .any(|(name, value)| name == "accept-encoding" && value.expose() == "identity")
    );
    let errors = config_errors(
        "transforms:\n  - allowlist\n  - {name: response_dlp, config: {detectors: [nope], action: hide}}\n",
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("transforms[1].config.action")),
        "{errors:?}"
    );
    let errors = config_errors(
        "transforms:\n  - allowlist\n  - {name: response_dlp, config: {detectors: [nope]}}\n",
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("transforms[1].config.detectors[0]")),
        "{errors:?}"
    );
}
