use super::*;

fn resolver(yaml: &str, env: &[(&str, &str)]) -> IdentityResolver {
    let identities: Vec<IdentityConfig> = serde_norway::from_str(yaml).unwrap();
    for i in &identities {
        assert!(
            validate_identity(i).is_empty(),
            "{:?}",
            validate_identity(i)
        );
    }
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    IdentityResolver::compile(&[Tag::parse("gw:1").unwrap()], &identities, &lookup).unwrap()
}

const IDENTITIES: &str = r#"
- name: agent
  token: {env: AGENT_TOKEN}
  tags: [agent:claude]
- name: hashed
  token: {sha256: "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"}
  tags: [agent:hashed]
- name: ci-net
  source_cidr: 10.1.0.0/16
  tags: [env:ci]
- name: ci-runner
  source_cidr: 10.1.2.0/24
  tags: [env:ci, runner:big]
- name: mesh-ci
  uri_san: "spiffe://cluster.local/ns/ci/sa/*"
  tags: [ns:ci]
"#;

fn tag_names(identity: &Identity) -> Vec<&str> {
    identity.tags.iter().map(Tag::as_str).collect()
}

#[test]
fn bearer_and_basic_tokens_resolve() {
    let r = resolver(IDENTITIES, &[("AGENT_TOKEN", "tok-123")]);
    let listener = [Tag::parse("listener:fwd").unwrap()];
    for header in [
        "Bearer tok-123".to_owned(),
        "bearer   tok-123".to_owned(),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("anyone:tok-123")
        ),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("tok-123:")
        ),
    ] {
        let id = r
            .resolve(&Presented {
                proxy_authorization: Some(header.as_bytes()),
                listener_tags: &listener,
                ..Presented::default()
            })
            .unwrap_or_else(|e| panic!("{header}: {e}"));
        assert_eq!(id.kind, IdentityKind::Token);
        assert_eq!(id.name.as_deref(), Some("agent"));
        assert_eq!(tag_names(&id), ["gw:1", "listener:fwd", "agent:claude"]);
    }
    // sha256("secret") is configured for "hashed".
    let id = r
        .resolve(&Presented {
            proxy_authorization: Some(b"Bearer secret"),
            ..Presented::default()
        })
        .unwrap();
    assert_eq!(id.name.as_deref(), Some("hashed"));
}

#[test]
fn unknown_or_malformed_tokens_are_refused_not_downgraded() {
    let r = resolver(IDENTITIES, &[("AGENT_TOKEN", "tok-123")]);
    let from_ci = Some("10.1.2.3".parse().unwrap());
    for (header, want) in [
        (&b"Bearer tok-124"[..], IdentityError::UnknownToken),
        (b"Bearer tok-12", IdentityError::UnknownToken),
        (b"Bearer ", IdentityError::MalformedProxyAuthorization),
        (b"Digest abc", IdentityError::MalformedProxyAuthorization),
        (b"Basic !!!", IdentityError::MalformedProxyAuthorization),
        (b"tok-123", IdentityError::MalformedProxyAuthorization),
    ] {
        let got = r.resolve(&Presented {
            source: from_ci,
            proxy_authorization: Some(header),
            ..Presented::default()
        });
        assert_eq!(
            got.unwrap_err(),
            want,
            "{:?}",
            String::from_utf8_lossy(header)
        );
    }
}

#[test]
fn cidr_most_specific_wins_and_san_outranks_everything() {
    let r = resolver(IDENTITIES, &[("AGENT_TOKEN", "tok-123")]);
    let id = r
        .resolve(&Presented {
            source: Some("10.1.2.3".parse().unwrap()),
            ..Presented::default()
        })
        .unwrap();
    assert_eq!(
        (id.kind, id.name.as_deref()),
        (IdentityKind::SourceCidr, Some("ci-runner"))
    );
    assert_eq!(tag_names(&id), ["gw:1", "env:ci", "runner:big"]);
    let id = r
        .resolve(&Presented {
            source: Some("10.1.9.9".parse().unwrap()),
            ..Presented::default()
        })
        .unwrap();
    assert_eq!(id.name.as_deref(), Some("ci-net"));
    let id = r
        .resolve(&Presented {
            source: Some("192.168.0.1".parse().unwrap()),
            ..Presented::default()
        })
        .unwrap();
    assert_eq!((id.kind, id.name.as_deref()), (IdentityKind::Gateway, None));
    assert_eq!(tag_names(&id), ["gw:1"]);
    let id = r
        .resolve(&Presented {
            source: Some("10.1.2.3".parse().unwrap()),
            peer_uri_san: Some("spiffe://cluster.local/ns/ci/sa/builder"),
            proxy_authorization: Some(b"Bearer tok-123"),
            ..Presented::default()
        })
        .unwrap();
    assert_eq!(
        (id.kind, id.name.as_deref()),
        (IdentityKind::UriSan, Some("mesh-ci"))
    );
    assert_eq!(
        id.spiffe_id.as_deref(),
        Some("spiffe://cluster.local/ns/ci/sa/builder")
    );
    // A token beats a CIDR.
    let id = r
        .resolve(&Presented {
            source: Some("10.1.2.3".parse().unwrap()),
            proxy_authorization: Some(b"Bearer tok-123"),
            ..Presented::default()
        })
        .unwrap();
    assert_eq!(id.kind, IdentityKind::Token);
}

#[test]
fn token_sources_fail_closed_at_load() {
    let identities: Vec<IdentityConfig> = serde_norway::from_str(
        "[{token: {env: MISSING}, tags: [a]}, {token: {file: /nonexistent/tok}}]",
    )
    .unwrap();
    let errors = IdentityResolver::compile(&[], &identities, &|_| None).unwrap_err();
    assert_eq!(errors[0].path, "identities[0].token.env");
    assert!(errors[0].message.contains("MISSING is not set"));
    assert_eq!(errors[1].path, "identities[1].token.file");
    let identities: Vec<IdentityConfig> = serde_norway::from_str("[{token: {env: E}}]").unwrap();
    let errors = IdentityResolver::compile(&[], &identities, &|_| Some("  ".into())).unwrap_err();
    assert!(errors[0].message.contains("empty"));
}

#[test]
fn validation_catches_shape_errors() {
    let check = |yaml: &str| validate_identity(&serde_norway::from_str(yaml).unwrap());
    assert_eq!(
        check("{tags: [a]}")[0].message,
        "an identity needs exactly one of `token`, `source_cidr`, `uri_san`"
    );
    assert_eq!(check("{source_cidr: nope}")[0].path, "source_cidr");
    assert_eq!(check("{uri_san: 'spiffe://[x'}")[0].path, "uri_san");
    assert_eq!(check("{token: {sha256: abc}}")[0].path, "token.sha256");
    assert_eq!(check("{token: {env: A, file: /b}}")[0].path, "token");
}

#[test]
fn debug_output_holds_no_token_material() {
    let r = resolver(IDENTITIES, &[("AGENT_TOKEN", "tok-123")]);
    let debug = format!("{r:?}");
    assert!(!debug.contains("tok-123"));
    assert!(!debug.contains("2bb80d5"));
}
