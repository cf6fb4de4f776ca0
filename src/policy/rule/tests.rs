use super::*;
use crate::request::parse_authority;

fn facts<'a>(method: Method, host: &'a str, port: u16, path: &'a str) -> RequestFacts<'a> {
    RequestFacts {
        method,
        method_name: method.as_str(),
        scheme: "https",
        ip: host.parse().ok(),
        path,
        ..RequestFacts::host_probe(host, port)
    }
}

fn host(pattern: &str) -> HostPattern {
    HostPattern::try_from(pattern.to_owned()).unwrap_or_else(|e| panic!("{pattern}: {e}"))
}

/// (pattern, request authority, scheme default port, matches)
#[test]
fn host_semantics_table() {
    let cases: &[(&str, &str, u16, bool)] = &[
        // exact, case-insensitive both ways, trailing dot ignored both ways
        ("api.example.com", "api.example.com", 443, true),
        ("api.example.com", "API.Example.COM", 443, true),
        ("API.EXAMPLE.COM", "api.example.com", 443, true),
        ("api.example.com.", "api.example.com", 443, true),
        ("api.example.com", "api.example.com.", 443, true),
        ("api.example.com", "example.com", 443, false),
        ("api.example.com", "xapi.example.com", 443, false),
        // port ignored unless the rule names one
        ("api.example.com", "api.example.com:8443", 443, true),
        ("api.example.com:8443", "api.example.com:8443", 443, true),
        ("api.example.com:8443", "api.example.com", 443, false),
        ("api.example.com:443", "api.example.com", 443, true),
        ("api.example.com:80", "api.example.com", 443, false),
        // *.example.com: any depth, never the bare domain
        ("*.example.com", "a.example.com", 443, true),
        ("*.example.com", "a.b.c.example.com", 443, true),
        ("*.example.com", "example.com", 443, false),
        ("*.example.com", "badexample.com", 443, false),
        ("*.example.com", "example.com.evil.net", 443, false),
        ("*.example.com", "A.EXAMPLE.COM.", 443, true),
        ("*.example.com:8443", "a.example.com:8443", 443, true),
        ("*.example.com:8443", "a.example.com:443", 443, false),
        // any host
        ("*", "anything.at.all", 443, true),
        ("*", "10.1.2.3", 80, true),
        ("*:8080", "x.net:8080", 80, true),
        ("*:8080", "x.net", 80, false),
        // other globs: * spans dots
        ("api-*.example.com", "api-eu.example.com", 443, true),
        ("api-*.example.com", "api-eu.x.example.com", 443, true),
        ("api-*.example.com", "api.example.com", 443, false),
        // CIDR and IP literals match IP-literal hosts only
        ("10.0.0.0/8", "10.1.2.3", 80, true),
        ("10.0.0.0/8", "11.1.2.3", 80, false),
        ("10.0.0.0/8", "ten.example", 80, false),
        ("127.0.0.1", "127.0.0.1:9000", 80, true),
        ("127.0.0.1:9000", "127.0.0.1:9000", 80, true),
        ("127.0.0.1:9000", "127.0.0.1:9001", 80, false),
        ("fd00::/8", "[fd00::1]:443", 443, true),
        ("[::1]:8443", "[::1]:8443", 443, true),
        ("::1", "[0:0::1]", 443, true),
    ];
    for (pattern, authority, default_port, want) in cases {
        let authority = parse_authority(authority).unwrap();
        let port = authority.port.unwrap_or(*default_port);
        let req = facts(Method::Get, &authority.host, port, "/");
        assert_eq!(
            Rule::compile(&RuleConfig::scope(host(pattern), vec![], vec![]))
                .host
                .matches(&req),
            *want,
            "host {pattern:?} vs {authority:?} (port {port})"
        );
    }
}

#[test]
fn invalid_hosts_are_rejected_with_a_reason() {
    let cases = [
        ("", "must not be empty"),
        ("https://api.example.com", "looks like a URL"),
        ("10.0.0.0/33", "not a valid CIDR"),
        ("api.example.com:0", "invalid port"),
        ("api.example.com:http", "invalid port"),
        ("api example.com", "contains ' '"),
        ("xn--a.example", "internationalised"),
        ("0x7f.1", "notation"),
        ("*.xn--a.example", "invalid label"),
        ("a..b", "empty label"),
        ("[::1", "invalid port"),
    ];
    for (pattern, expected) in cases {
        let err = HostPattern::try_from(pattern.to_owned()).expect_err(pattern);
        assert!(
            err.contains(expected),
            "{pattern:?}: {err:?} should mention {expected:?}"
        );
    }
}

#[test]
fn rule_hosts_are_read_in_the_form_requests_are_compared_in() {
    let kind = |pattern: &str| HostPattern::try_from(pattern.to_owned()).unwrap().kind;
    assert!(matches!(kind("Bücher.de."), HostKind::Exact(h) if &*h == "xn--bcher-kva.de"));
    assert!(matches!(kind("*.bücher.de"), HostKind::Suffix(h) if &*h == "xn--bcher-kva.de"));
    assert!(
        matches!(kind("::ffff:127.0.0.0/104"), HostKind::Cidr(n) if n.to_string() == "127.0.0.0/8")
    );
    assert!(matches!(kind("::ffff:10.0.0.1"), HostKind::Cidr(n) if n.to_string() == "10.0.0.1/32"));
}

/// (patterns, path, matches)
#[test]
fn path_semantics_table() {
    let cases: &[(&[&str], &str, bool)] = &[
        (&[], "/anything/at/all", true),
        (&["/*"], "/", true),
        (&["/*"], "/a/b/c", true),
        (&["/repos/*"], "/repos/a", true),
        (&["/repos/*"], "/repos/a/b", true),
        (&["/repos/*"], "/repos", false),
        (&["/repos/*"], "/repositories", false),
        (&["/repos/*/issues"], "/repos/a/b/issues", true),
        (&["/repos/*/issues"], "/repos/a/pulls", false),
        (&["/v1/chat/completions"], "/v1/chat/completions", true),
        (&["/v1/chat/completions"], "/v1/chat/completions/x", false),
        (&["/V1/*"], "/v1/x", false),
        (&["/a", "/b/*"], "/b/x", true),
        (&["/a", "/b/*"], "/c", false),
        (&["/file?.txt"], "/file1.txt", true),
        (&["/{a,b}/*"], "/b/x", true),
    ];
    for (patterns, path, want) in cases {
        let patterns: Vec<PathPattern> = patterns
            .iter()
            .map(|p| PathPattern::try_from((*p).to_owned()).unwrap())
            .collect();
        let set = PathSet::compile(&patterns);
        assert_eq!(set.matches(path), *want, "{patterns:?} vs {path:?}");
    }
}

#[test]
fn catch_all_paths_compile_to_any() {
    for pattern in ["*", "/*", "**", "/**"] {
        let set = PathSet::compile(&[PathPattern::try_from(pattern.to_owned()).unwrap()]);
        assert!(set.is_any(), "{pattern}");
    }
    assert!(PathSet::compile(&[]).is_any());
}

#[test]
fn invalid_paths_are_rejected() {
    for (pattern, expected) in [
        ("repos/*", "must start with '/'"),
        ("/a/[z", "not a valid glob"),
        ("/search?q=1", "query"),
    ] {
        let err = PathPattern::try_from(pattern.to_owned()).expect_err(pattern);
        assert!(err.contains(expected), "{pattern:?}: {err}");
    }
}

#[test]
fn method_sets() {
    let names = |list: &[&str]| -> Vec<MethodName> {
        list.iter()
            .map(|m| MethodName::try_from((*m).to_owned()).unwrap())
            .collect()
    };
    let get_head = MethodSet::from_names(&names(&["GET", "head"]));
    assert!(get_head.contains(Method::Get));
    assert!(get_head.contains(Method::Head));
    assert!(!get_head.contains(Method::Post));
    assert!(!get_head.contains(Method::Other));
    for all in [
        MethodSet::from_names(&[]),
        MethodSet::from_names(&names(&["ALL"])),
    ] {
        for m in Method::STANDARD {
            assert!(all.contains(m));
        }
        assert!(
            all.contains(Method::Other),
            "ALL covers non-standard methods"
        );
    }
    let err = MethodName::try_from("GIT".to_owned()).unwrap_err();
    assert!(
        err.contains("unknown method") && err.contains("PATCH"),
        "{err}"
    );
    // Requests: methods are case-sensitive on the wire.
    assert_eq!(Method::from_bytes(b"get"), Method::Other);
}

#[test]
fn connect_tunnels_need_a_rule_covering_every_path_and_connect() {
    let rule = |yaml: &str| Rule::compile(&serde_norway::from_str::<RuleConfig>(yaml).unwrap());
    let tunnel = facts(Method::Connect, "api.github.com", 443, "");
    assert!(rule("host: api.github.com").grants_tunnel(&tunnel));
    assert!(rule("{host: api.github.com, methods: [CONNECT]}").grants_tunnel(&tunnel));
    assert!(rule("{host: api.github.com, paths: ['/*']}").grants_tunnel(&tunnel));
    assert!(!rule("{host: api.github.com, methods: [GET]}").grants_tunnel(&tunnel));
    assert!(!rule("{host: api.github.com, paths: ['/repos/*']}").grants_tunnel(&tunnel));
    assert!(!rule("{host: 'api.github.com:8443'}").grants_tunnel(&tunnel));
    // A restriction naming the host touches the tunnel whatever its paths and methods.
    assert!(
        rule("{host: api.github.com, paths: ['/admin/*'], methods: [DELETE]}")
            .touches_tunnel(&tunnel)
    );
    assert!(!rule("host: other.example").touches_tunnel(&tunnel));
}

#[test]
fn tags_reject_whitespace_and_commas() {
    assert_eq!(Tag::parse("env:prod").unwrap().as_str(), "env:prod");
    assert!(
        Tag::parse(" env:prod").is_err(),
        "a tag is taken as written"
    );
    assert!(Tag::parse("env:pröd").is_err(), "a tag is printable ASCII");
    assert!(Tag::parse("").is_err());
    assert!(Tag::parse("a b").is_err());
    assert!(Tag::parse("a,b").is_err());
}

#[test]
fn patterns_serialize_as_written() {
    let rule: RuleConfig = serde_norway::from_str(
        "{host: 'API.example.com:8443', paths: ['/a/*'], methods: [get, ALL]}",
    )
    .unwrap();
    let json = serde_json::to_string(&rule).unwrap();
    assert_eq!(
        json,
        r#"{"host":"API.example.com:8443","paths":["/a/*"],"methods":["GET","ALL"]}"#
    );
}

#[test]
fn glob_hosts_know_their_literal_domain() {
    let domain = |p: &str| match host(p).kind() {
        HostKind::Glob { domain, .. } => domain.as_deref().map(str::to_owned),
        other => panic!("{p} is {other:?}"),
    };
    assert_eq!(
        domain("api-*.eu.example.com").as_deref(),
        Some("eu.example.com")
    );
    assert_eq!(domain("*foo.example.com").as_deref(), Some("example.com"));
    assert_eq!(domain("api-*"), None);
    assert_eq!(domain("*.x*"), None);
}

#[test]
fn repeated_patterns_share_one_compiled_matcher() {
    let rule: RuleConfig =
        serde_norway::from_str("{host: 'api-*.example.com', paths: ['/users/*/keys']}").unwrap();
    let mut compiler = RuleCompiler::default();
    let (a, b) = (compiler.compile(&rule), compiler.compile(&rule));
    assert!(Arc::ptr_eq(&a.paths, &b.paths));
    match (&a.host.kind, &b.host.kind) {
        (HostMatch::Glob { pattern: x, .. }, HostMatch::Glob { pattern: y, .. }) => {
            assert!(Arc::ptr_eq(x, y))
        }
        other => panic!("{other:?}"),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

    /// A literal or `literal*` pattern, matched as text, agrees with the glob it is.
    #[test]
    fn plain_paths_match_as_their_globs_do(
        stem in "/[a-c/.%-]{0,6}",
        star in proptest::bool::ANY,
        path in "/[a-c/.%-]{0,8}",
    ) {
        let pattern = if star { format!("{stem}*") } else { stem.clone() };
        let parsed = PathPattern::try_from(pattern.clone()).unwrap();
        let set = PathSet::compile(std::slice::from_ref(&parsed));
        if set.is_any() {
            return Ok(());
        }
        proptest::prop_assert!(matches!(set, PathSet::Plain(_)), "{pattern}");
        let glob = path_glob(&pattern).unwrap().compile_matcher();
        proptest::prop_assert_eq!(set.matches(&path), glob.is_match(&path), "{} vs {}", pattern, path);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

    /// A path read as plain is accepted without building its glob: it must be one that
    /// builds, whatever else it holds.
    #[test]
    fn every_plain_path_is_a_valid_glob(pattern in "[ -~]{0,12}") {
        if PlainPath::of(&pattern).is_some() {
            proptest::prop_assert!(path_glob(&pattern).is_ok(), "{}", pattern);
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

    /// The host wildcard matcher agrees with the glob it replaced (`*` spans dots).
    #[test]
    fn host_wildcards_match_as_globs_did(
        pattern in "[ab.*?-]{0,7}",
        text in "[ab.-]{0,9}",
    ) {
        let glob = globset::GlobBuilder::new(&pattern)
            .literal_separator(false)
            .build()
            .unwrap()
            .compile_matcher();
        proptest::prop_assert_eq!(
            wildcard_match(&pattern, &text),
            glob.is_match(&text),
            "{} vs {}", pattern, text
        );
    }
}
