use super::*;
use crate::identity::IdentityKind;
use crate::request::Method;
use crate::vocab::Tag;

fn expr(source: &str) -> Result<CelExpr, String> {
    CelExpr::try_from(source.to_owned())
}

fn identity(tags: &[&str]) -> Identity {
    Identity {
        kind: IdentityKind::Token,
        name: Some(Arc::from("claude")),
        spiffe_id: None,
        tags: tags.iter().map(|t| Tag::parse(t).unwrap()).collect(),
    }
}

fn facts<'a>(
    headers: &'a [(String, Vec<u8>)],
    identity: Option<&'a Identity>,
    body: Option<&'a crate::inspect::Body<'a>>,
) -> RequestFacts<'a> {
    RequestFacts {
        method: Method::Post,
        method_name: "POST",
        scheme: "https",
        host: "api.openai.com",
        port: 443,
        ip: None,
        path: "/v1/chat/completions",
        headers,
        intercepted: false,
        body,
        message: None,
        identity,
        unknown_args: None,
    }
}

#[test]
fn agent_identity_and_request_fields_evaluate() {
    let who = identity(&["agent:claude-code", "team:infra"]);
    let headers = vec![("x-session".to_owned(), b"s1".to_vec())];
    let req = facts(&headers, Some(&who), None);
    for (source, expected) in [
        (r#"agent.slug == "claude-code""#, true),
        (r#"agent.slug == "cursor""#, false),
        (r#"identity.labels.team == "infra""#, true),
        (r#""team:infra" in identity.tags"#, true),
        (r#"identity.tags.exists(t, t.startsWith("agent:"))"#, true),
        (
            r#"request.host == "api.openai.com" && request.port == 443"#,
            true,
        ),
        (r#"request.headers["x-session"] == "s1""#, true),
        (r#"request.action_type == "chat_completion""#, true),
        (r#"request.method == "GET""#, false),
    ] {
        let compiled = expr(source).unwrap_or_else(|e| panic!("{source}: {e}"));
        assert_eq!(compiled.holds(&req), expected, "{source}");
    }
}

#[test]
fn a_missing_key_at_request_time_does_not_hold() {
    let req = facts(&[], None, None);
    let compiled = expr(r#"request.args.channel_id == "C_GENERAL""#).unwrap();
    assert!(!compiled.holds(&req));
    let compiled = expr(r#"request.headers["x-absent"] == "v""#).unwrap();
    assert!(!compiled.holds(&req));
}

#[test]
fn body_reading_is_detected_from_the_code_not_from_strings() {
    assert!(
        expr(r#"request.args.channel_id == "C""#)
            .unwrap()
            .reads_body()
    );
    assert!(
        expr(r#"request.body.model == "gpt-4o""#)
            .unwrap()
            .reads_body()
    );
    assert!(
        expr(r#"request.tool == "send_message""#)
            .unwrap()
            .reads_body()
    );
    assert!(
        !expr(r#"agent.slug == "body args tool""#)
            .unwrap()
            .reads_body()
    );
    assert!(
        !expr(r#"request.path.startsWith("/v1")"#)
            .unwrap()
            .reads_body()
    );
}

#[test]
fn invalid_expressions_are_config_errors_that_say_why() {
    let error = expr("agent.slug == ").unwrap_err();
    assert!(error.contains("does not parse"), "{error}");
    let error = expr(r#"user.name == "x""#).unwrap_err();
    assert!(error.contains("undeclared variable `user`"), "{error}");
    let error = expr(r#"identity.tgs == []"#).unwrap_err();
    assert!(error.contains("`identity` has no field `tgs`"), "{error}");
    assert!(
        error.contains("name, kind, tags, labels, spiffe_id"),
        "{error}"
    );
    let error = expr("request.host").unwrap_err();
    assert!(
        error.contains("must give a boolean, it gives a string"),
        "{error}"
    );
    let error = expr("request.port + \"x\" == 1").unwrap_err();
    assert!(
        error.contains("type error: int + string is not defined at 1:1-1:18"),
        "{error}"
    );
    // What only evaluation finds is placed too: the smallest part that fails.
    let error = expr("request.port > 0 && [1, 2][request.port] == 1").unwrap_err();
    assert!(error.contains("not valid for a request"), "{error}");
    let error = expr("  ").unwrap_err();
    assert!(error.contains("must not be empty"), "{error}");
}

#[test]
fn expressions_compare_and_serialize_by_source() {
    let a = expr(r#"agent.slug == "a""#).unwrap();
    assert_eq!(a, expr(r#"agent.slug == "a""#).unwrap());
    assert_eq!(String::from(a), r#"agent.slug == "a""#);
}

#[test]
fn only_what_an_expression_reads_is_built() {
    let reads = |source: &str| expr(source).unwrap().reads;
    let r = reads(r#"agent.slug == "claude-code" && request.args.channel_id == "C_GENERAL""#);
    assert_eq!(
        (
            r.field("args"),
            r.field("headers"),
            r.field("body"),
            r.identity,
            r.agent
        ),
        (true, false, false, false, true)
    );
    // A field named in a string is not read; `request` used whole reads every field.
    let r = reads(r#"request.method == "request.headers""#);
    assert!(r.field("method") && !r.field("headers"));
    let r = reads(r#""body" in request"#);
    assert!(REQUEST_FIELDS.iter().all(|f| r.field(f)));
    assert!(reads("identity.name == 'x'").identity);

    // The value is the same as with everything built.
    let headers = vec![("x-team".to_owned(), b"core".to_vec())];
    let who = identity(&["agent:claude-code"]);
    for source in [
        r#"request.headers["x-team"] == "core" && agent.slug == "claude-code""#,
        r#"request.method == "POST" && !("x-other" in request.headers)"#,
        r#"size(request) == 10"#,
    ] {
        let e = expr(source).unwrap();
        assert_eq!(
            e.evaluate(&facts(&headers, Some(&who), None)).unwrap(),
            Value::Bool(true),
            "{source}"
        );
    }
}

#[test]
fn a_type_error_is_reported_at_the_part_of_the_expression_that_fails() {
    let error =
        CelExpr::try_from("request.path.startsWith('/v1') && request.method == 1".to_owned())
            .unwrap_err();
    assert!(
        error.contains(
            "type error: string is compared with int: never equal at 1:35-1:53 \
             (`request.method == 1`)"
        ),
        "{error}"
    );
    let error =
        CelExpr::try_from("size(identity.tags) > 0 &&\n  request.port + 'x' == 1".to_owned())
            .unwrap_err();
    assert!(
        error.contains("int + string is not defined at 2:3-2:20 (`request.port + 'x'`)"),
        "{error}"
    );
    for wrong in [
        "identity.tags.exists(t, t == 7)",
        "'admin' in identity.tags && request.port > '80'",
        "request.headers['x'].size() > 'a'",
        "request.path.startsWith(1)",
        "!request.method",
    ] {
        assert!(
            CelExpr::try_from(wrong.to_owned())
                .unwrap_err()
                .contains(" at 1:"),
            "{wrong}"
        );
    }
    // What the request decides at runtime is not a type error.
    for fine in [
        "request.args.count > 3 && request.body.model == 'gpt'",
        "has(request.body.messages) && request.body.messages.exists(m, m.role == 'system')",
        "identity.labels['team'] == 'ml' || 'ci' in identity.tags",
        "request.headers['content-length'] != '' && int(request.headers['content-length']) > 10",
        "request.port in [80, 443] && request.method in ['GET', 'HEAD']",
    ] {
        assert!(CelExpr::try_from(fine.to_owned()).is_ok(), "{fine}");
    }
}
