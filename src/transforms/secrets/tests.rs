use super::*;
use crate::config::parse_str;
use crate::secrets::{SecretValue, SourceCache};
use crate::snapshot::Snapshot;
use crate::transforms::Mutations;
use crate::transforms::test_support::request;
use inject::{Applied, apply};

fn inject(yaml: &str) -> InjectConfig {
    serde_norway::from_str(yaml).unwrap()
}

fn run(
    style: &str,
    req: &OutboundRequest,
    body: Option<&[u8]>,
) -> (Result<Applied, Refusal>, Mutations) {
    let value = SecretValue::new("s3cr3t/v+1");
    let mut mutations = Mutations::default();
    let applied = apply(
        &inject(style),
        Credential::Secret(&value),
        req,
        body,
        &mut mutations,
    );
    (applied, mutations)
}

fn set(m: &Mutations, name: &str) -> Option<String> {
    m.set
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.expose().to_owned())
}

#[test]
fn header_styles() {
    let req = request("GET https://api.example.com/x", &[]);
    let (_, m) = run("{style: bearer}", &req, None);
    assert_eq!(
        set(&m, "authorization").as_deref(),
        Some("Bearer s3cr3t/v+1")
    );
    let (_, m) = run("{style: basic, username: bot}", &req, None);
    assert_eq!(
        set(&m, "authorization").as_deref(),
        Some("Basic Ym90OnMzY3IzdC92KzE=")
    );
    let (applied, m) = run(
        "{style: custom, header: X-Key, format: 'k={{ value }}'}",
        &req,
        None,
    );
    assert_eq!(set(&m, "x-key").as_deref(), Some("k=s3cr3t/v+1"));
    assert_eq!(applied.unwrap().locations, ["header:x-key"]);
}

#[test]
fn query_and_path_values_are_percent_encoded() {
    let req = request(
        "GET https://api.example.com/bot-PLACEHOLDER-1/send?key=old&a=1",
        &[],
    );
    let (applied, m) = run("{style: custom, query: key}", &req, None);
    assert_eq!(
        m.path.unwrap().expose(),
        "/bot-PLACEHOLDER-1/send?a=1&key=s3cr3t%2Fv%2B1"
    );
    assert_eq!(applied.unwrap().locations, ["query:key"]);
    let (_, m) = run(
        "{style: path_token, placeholder: PLACEHOLDER-1}",
        &req,
        None,
    );
    assert_eq!(
        m.path.unwrap().expose(),
        "/bot-s3cr3t%2Fv+1/send?key=old&a=1"
    );
    // Absent placeholder: nothing injected, nothing refused.
    let other = request("GET https://api.example.com/other", &[]);
    let (applied, m) = run(
        "{style: path_token, placeholder: PLACEHOLDER-1}",
        &other,
        None,
    );
    assert!(applied.unwrap().locations.is_empty() && m.is_empty());
}

#[test]
fn proxy_tokens_swap_everywhere_and_require_their_placeholder() {
    let style = "{style: proxy_token, placeholder: ptok_abcdef12, locations: [header:authorization, query:k, path, body], require: true}";
    let req = request(
        "POST https://api.example.com/v1/ptok_abcdef12?k=ptok_abcdef12",
        &[
            ("authorization", "Bearer ptok_abcdef12"),
            ("content-type", "application/json"),
        ],
    );
    let (applied, m) = run(style, &req, Some(br#"{"key":"ptok_abcdef12"}"#));
    assert_eq!(
        applied.unwrap().locations,
        ["header:authorization", "path", "query:k", "body"]
    );
    assert_eq!(
        set(&m, "authorization").as_deref(),
        Some("Bearer s3cr3t/v+1")
    );
    assert_eq!(
        m.path.unwrap().expose(),
        "/v1/s3cr3t%2Fv+1?k=s3cr3t%2Fv%2B1"
    );
    assert_eq!(m.body.unwrap().expose(), br#"{"key":"s3cr3t/v+1"}"#);
    let bare = request("GET https://api.example.com/v1/models", &[]);
    let (refused, _) = run(style, &bare, Some(b""));
    assert_eq!(refused.unwrap_err(), Refusal::PlaceholderMissing);
}

#[test]
fn proxy_tokens_are_swapped_only_where_declared() {
    let req = request(
        "GET https://api.example.com/v1/ptok_abcdef12?debug=ptok_abcdef12&k=ptok_abcdef12",
        &[
            ("authorization", "Bearer ptok_abcdef12"),
            ("x-debug", "ptok_abcdef12"),
        ],
    );
    // The default: only Authorization.
    let (applied, m) = run(
        "{style: proxy_token, placeholder: ptok_abcdef12}",
        &req,
        None,
    );
    assert_eq!(applied.unwrap().locations, ["header:authorization"]);
    assert_eq!(m.set.len(), 1, "x-debug keeps its placeholder");
    assert!(m.path.is_none(), "the path and query keep theirs");
    let (applied, m) = run(
        "{style: proxy_token, placeholder: ptok_abcdef12, locations: [query:k, header:X-Debug]}",
        &req,
        None,
    );
    assert_eq!(applied.unwrap().locations, ["header:x-debug", "query:k"]);
    assert_eq!(set(&m, "x-debug").as_deref(), Some("s3cr3t/v+1"));
    assert_eq!(set(&m, "authorization"), None);
    assert_eq!(
        m.path.unwrap().expose(),
        "/v1/ptok_abcdef12?debug=ptok_abcdef12&k=s3cr3t%2Fv%2B1"
    );
}

#[test]
fn require_refuses_the_workloads_own_credential_in_a_declared_place() {
    let style = "{style: proxy_token, placeholder: ptok_abcdef12, locations: [header:authorization, query:key], require: true}";
    let refused =
        |headers: &[(&str, &str)], line: &str| run(style, &request(line, headers), None).0.err();
    let get = "GET https://api.example.com/v1";
    for (headers, line, location) in [
        (
            &[
                ("authorization", "Bearer mine"),
                ("x-api-key", "ptok_abcdef12"),
            ][..],
            get.to_owned(),
            "header:authorization",
        ),
        (
            &[("authorization", "Bearer mine,ptok_abcdef12")][..],
            get.to_owned(),
            "header:authorization",
        ),
        (
            &[("authorization", "Bearer mine ptok_abcdef12")][..],
            get.to_owned(),
            "header:authorization",
        ),
        (
            &[("authorization", "Bearer ptok_abcdef12")][..],
            format!("{get}?key=mine"),
            "query:key",
        ),
        (
            &[("authorization", "Bearer ptok_abcdef12")][..],
            format!("{get}?key=ptok_abcdef12mine"),
            "query:key",
        ),
    ] {
        assert_eq!(
            refused(headers, &line),
            Some(Refusal::ForeignCredential(location.into())),
            "{headers:?} {line}"
        );
    }
    for value in [
        "Bearer ptok_abcdef12",
        "ptok_abcdef12",
        "token ptok_abcdef12",
    ] {
        assert_eq!(refused(&[("authorization", value)], get), None, "{value}");
    }
    assert_eq!(
        refused(&[], &format!("{get}?key=ptok_abcdef12")),
        None,
        "the placeholder in the query alone"
    );
}

#[test]
fn values_that_would_split_headers_are_refused() {
    let value = SecretValue::new("a\r\nX-Evil: 1");
    let mut m = Mutations::default();
    let req = request("GET https://api.example.com/x", &[]);
    let err = apply(
        &inject("{style: bearer}"),
        Credential::Secret(&value),
        &req,
        None,
        &mut m,
    );
    assert!(matches!(err, Err(Refusal::UnusableValue(_))));
    assert!(m.is_empty());
}

#[test]
fn previews_show_markers_never_values() {
    let req = request("GET https://api.example.com/x", &[]);
    let mut m = Mutations::default();
    apply(
        &inject("{style: basic, username: bot}"),
        Credential::Marker("<secret:gh>"),
        &req,
        None,
        &mut m,
    )
    .unwrap();
    assert_eq!(
        set(&m, "authorization").as_deref(),
        Some("Basic base64(bot:<secret:gh>)")
    );
}

#[test]
fn body_is_needed_only_by_styles_that_read_it() {
    let post = request("POST https://api.example.com/x", &[("content-length", "5")]);
    assert!(!inject::needs_body(&inject("{style: bearer}"), &post));
    assert!(inject::needs_body(
        &inject("{style: proxy_token, placeholder: ptok_abcdef12, locations: [body]}"),
        &post
    ));
    assert!(!inject::needs_body(
        &inject("{style: proxy_token, placeholder: ptok_abcdef12}"),
        &post
    ));
    assert!(inject::needs_body(
        &inject("{style: hmac, header: X-Sig, message: '{{ body_sha256 }}'}"),
        &post
    ));
    assert!(!inject::needs_body(
        &inject("{style: hmac, header: X-Sig, message: '{{ path }}'}"),
        &post
    ));
}

#[test]
fn config_mistakes_are_found_at_load() {
    let errors = |yaml: &str| match parse_str(yaml, None) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
    };
    let base = |inject: &str| {
        format!(
            "secrets:\n  - name: s\n    source: {{type: env, var: X}}\n    rules: [{{host: a.example}}]\n    inject: {inject}\n"
        )
    };
    for (inject, expect) in [
        (
            "{style: custom, format: '{{ value }}'}",
            "exactly one of `header` or `query`",
        ),
        (
            "{style: custom, header: X-K, format: 'static'}",
            "never uses {{ value }}",
        ),
        ("{style: custom, header: Host}", "cannot set \"Host\""),
        ("{style: proxy_token, placeholder: short}", "shorter than 8"),
        (
            "{style: proxy_token, placeholder: ptok_abcdef12, locations: [header]}",
            "`header:authorization`",
        ),
        (
            "{style: proxy_token, placeholder: ptok_abcdef12, locations: [query]}",
            "every query",
        ),
        (
            "{style: proxy_token, placeholder: ptok_abcdef12, locations: [cookie]}",
            "unknown location",
        ),
        (
            "{style: proxy_token, placeholder: ptok_abcdef12, locations: ['header:Host']}",
            "cannot set \"host\"",
        ),
        (
            "{style: proxy_token, placeholder: ptok_abcdef12, locations: ['header:proxy-authorization']}",
            "stripped before egress",
        ),
        (
            "{style: hmac, header: X-S, message: '{{ value }}'}",
            "HMAC key",
        ),
        ("{style: teleport}", "unknown variant `teleport`"),
        ("{style: bearer, extra: 1}", "unknown field `extra`"),
    ] {
        let found = errors(&base(inject));
        assert!(
            found.iter().any(|e| e.contains(expect)),
            "{inject}: {found:?}"
        );
        assert!(
            found.iter().all(|e| e.contains("(secret \"s\")")),
            "{found:?}"
        );
    }
    let found = errors(
        "secrets:\n  - name: s\n    source: {type: env, var: X}\n    rules: []\n    inject: {style: bearer}\n",
    );
    assert!(found[0].contains("blast radius"), "{found:?}");
}

fn compile(yaml: &str) -> Result<Snapshot, Vec<crate::vocab::FieldError>> {
    let loaded = parse_str(yaml, None).unwrap_or_else(|e| panic!("{e}"));
    Snapshot::compile(
        &loaded.config,
        &loaded.version,
        &|_| None,
        &crate::snapshot::Runtime {
            // Host names resolve off the network, to a public address the guard lets through.
            resolvers: crate::network::Resolvers::answering([203, 0, 113, 10].into()),
            ..Default::default()
        },
    )
}

#[test]
fn secrets_need_the_pipeline_step_and_unique_names() {
    let secret = "{name: s, source: {type: env, var: X}, rules: [{host: a.example}], inject: {style: bearer}}";
    let errors = compile(&format!("secrets: [{secret}]\ntransforms: [allowlist]")).unwrap_err();
    assert!(
        errors[0].message.contains("no `secrets` step"),
        "{errors:?}"
    );
    let errors = compile(&format!("secrets: [{secret}, {secret}]")).unwrap_err();
    assert_eq!(errors[0].path, "secrets[1].name");
    assert!(
        compile(&format!("secrets: [{secret}]")).is_ok(),
        "the default pipeline gains `secrets`"
    );
}

#[tokio::test]
async fn first_secret_in_config_order_wins_and_tunnels_get_nothing() {
    let snapshot = compile(
        r#"
default_action: allow
secrets:
  - {name: first, source: {type: env, var: PORTCULLIS_TEST_UNSET_1}, rules: [{host: "*.example.com"}], inject: {style: bearer}}
  - {name: second, source: {type: env, var: PORTCULLIS_TEST_UNSET_2}, rules: [{host: api.example.com}], inject: {style: bearer}}
  - {name: strict, source: {type: env, var: PORTCULLIS_TEST_UNSET_3}, rules: [{host: strict.example.org}],
     inject: {style: proxy_token, placeholder: ptok_strict_1, require: true}}
"#,
    )
    .unwrap();
    let preview = |line: &'static str| {
        let snapshot = &snapshot;
        async move {
            snapshot
                .preview(&request(line, &[]), &[], Some(&[]))
                .await
                .outcome
        }
    };
    let o = preview("GET https://api.example.com/x").await;
    let trace = &o.trace[1].annotations;
    assert_eq!(trace.injected.as_ref().unwrap().secret.as_ref(), "first");
    assert_eq!(
        trace
            .shadowed
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>(),
        ["second"]
    );
    assert_eq!(o.mutations.set[0].1.expose(), "Bearer <secret:first>");

    let o = preview("CONNECT api.example.com:443").await;
    assert!(o.rejection.is_none() && o.mutations.is_empty());
    assert_eq!(o.trace[1].annotations.reason, Some("tunnel_not_injected"));
    let o = preview("CONNECT strict.example.org:443").await;
    assert_eq!(
        o.rejection.unwrap().reason,
        "credential_placeholder_missing"
    );
    // Intercepted, the tunnel's requests are decided (and swapped) one by one.
    let mut intercepted = request("CONNECT strict.example.org:443", &[]);
    intercepted.intercepted = true;
    let o = snapshot.preview(&intercepted, &[], Some(&[])).await.outcome;
    assert!(o.rejection.is_none(), "{:?}", o.rejection);

    // Live, the unset variable fails the request closed.
    let o = snapshot
        .decide(
            &request("GET https://api.example.com/x", &[]),
            &[],
            Some(&[]),
        )
        .await
        .outcome;
    let r = o.rejection.unwrap();
    assert_eq!((r.status, r.reason), (502, "credential_unavailable"));
    assert!(o.mutations.is_empty(), "nothing half-injected");
    let _ = SourceCache::new();
}

#[tokio::test]
async fn plaintext_requests_get_no_credential_unless_the_secret_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value");
    std::fs::write(&file, "s3cr3t-value/1").unwrap();
    let snapshot = compile(&format!(
        r#"
default_action: allow
secrets:
  - {{name: strict, source: {{type: file, path: {path}}}, rules: [{{host: strict.example}}], inject: {{style: basic, username: bot}}}}
  - {{name: lenient, source: {{type: file, path: {path}}}, rules: [{{host: lenient.example}}], inject: {{style: bearer}}, allow_plaintext: true}}
  - {{name: absent, source: {{type: file, path: {path}}}, rules: [{{host: absent.example}}], inject: {{style: path_token, placeholder: PLACEHOLDER-1}}}}
"#,
        path = file.display()
    ))
    .unwrap();
    let decide = |line: &'static str| {
        let snapshot = &snapshot;
        async move {
            snapshot
                .decide(&request(line, &[]), &[], Some(&[]))
                .await
                .outcome
        }
    };
    let refused = decide("GET http://strict.example/x").await;
    let r = refused.rejection.unwrap();
    assert_eq!((r.status, r.reason), (403, "credential_over_plaintext"));
    assert!(r.message.contains("allow_plaintext"), "{}", r.message);
    assert!(refused.mutations.is_empty() && refused.mutations.scrub.is_empty());

    // Over TLS: injected, and the response will be scrubbed of every form it left in.
    let o = decide("GET https://strict.example/x").await;
    assert!(o.rejection.is_none());
    let forms: Vec<&[u8]> = o.mutations.scrub.iter().map(|f| f.expose()).collect();
    assert!(forms.contains(&&b"s3cr3t-value/1"[..]));
    assert!(forms.contains(&&b"s3cr3t-value%2F1"[..]));
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("bot:s3cr3t-value/1");
    assert!(forms.contains(&basic.as_bytes()));
    assert_eq!(
        o.mutations
            .set
            .iter()
            .find(|(n, _)| n == "accept-encoding")
            .map(|(_, v)| v.expose()),
        Some("identity")
    );

    assert!(
        decide("GET http://lenient.example/x")
            .await
            .rejection
            .is_none()
    );
    // Nothing to inject (no placeholder in the path): nothing to refuse.
    let o = decide("GET http://absent.example/x").await;
    assert!(o.rejection.is_none() && o.mutations.scrub.is_empty());
}
