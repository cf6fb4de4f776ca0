use proptest::prelude::*;

use super::*;

fn path(raw: &str) -> Result<String, String> {
    normalize_path(raw, &RequestConfig::default()).map(|p| p.matched.into_owned())
}

#[test]
fn path_normalization_table() {
    let cases = [
        ("/", "/"),
        ("/repos/a?x=1", "/repos/a"),
        ("/a#frag", "/a"),
        ("/a//b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../etc", "/etc"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E./b", "/b"),
        ("/%61dmin", "/admin"),
        ("/a%3bb", "/a%3Bb"),
        ("/a%252Fb", "/a%252Fb"),
        ("/a/b/", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("/ünï", "/ünï"),
        ("*", "*"),
    ];
    for (raw, want) in cases {
        assert_eq!(path(raw).unwrap(), want, "normalize_path({raw:?})");
    }
    for bad in [
        "/a%zz",
        "/a%2",
        "relative",
        "/admin%2Fusers",
        "/admin%2fusers",
        "/admin%5Cusers",
        "/admin%5cusers",
        "/admin\\users",
        "/admin;x=1/users",
        "/a/..;/b",
    ] {
        assert!(path(bad).is_err(), "{bad:?} should be refused");
    }
    let error = path("/admin%2Fusers").unwrap_err();
    assert!(
        error.contains("escaped slash (%2F at byte 6)"),
        "the error says what and where: {error}"
    );
}

#[test]
fn escaped_slashes_decode_for_matching_and_forwarding() {
    let decode = RequestConfig {
        escaped_slashes: EscapedSlashes::Decode,
        ..RequestConfig::default()
    };
    let normal = normalize_path("/admin/..%2F../public%5cx", &decode).unwrap();
    assert_eq!(normal.matched, "/public/x");
    assert_eq!(normal.forward.as_deref(), Some("/public/x"));
    let normal = normalize_path("/a%2Fb/", &decode).unwrap();
    assert_eq!(
        (normal.matched.as_ref(), normal.forward.as_deref()),
        ("/a/b/", Some("/a/b/"))
    );
    // Nothing to forward differently when the path had no escaped slash.
    assert_eq!(normalize_path("/a/../b", &decode).unwrap().forward, None);

    let raw = RawRequest {
        method: Some(b"GET"),
        scheme: Some(b"http"),
        authority: Some(b"a.example"),
        path: Some(b"/x%2Fy?q=%2F"),
        other_authorities: Vec::new(),
    };
    let target = raw.normalize(None, &decode).unwrap();
    assert_eq!(target.path, "/x/y");
    assert_eq!(target.forward_path.as_deref(), Some("/x/y?q=%2F"));
}

#[test]
fn path_parameters_strip_for_matching_only() {
    let strip = RequestConfig {
        path_parameters: PathParameters::Strip,
        ..RequestConfig::default()
    };
    let matched = |raw| normalize_path(raw, &strip).map(|p| p.matched.into_owned());
    assert_eq!(matched("/admin;x=1/users").unwrap(), "/admin/users");
    assert_eq!(matched("/a;jsessionid=1").unwrap(), "/a");
    assert_eq!(matched("/;x/a").unwrap(), "/a");
    assert!(matched("/a/..;/b").is_err());
    assert!(matched("/a/.;x/b").is_err());
}

#[test]
fn lower_case_standard_methods_are_refused() {
    let request = |method: &'static [u8]| RawRequest {
        method: Some(method),
        scheme: Some(b"http"),
        authority: Some(b"a.example"),
        path: Some(b"/"),
        other_authorities: Vec::new(),
    };
    let config = RequestConfig::default();
    for method in [&b"delete"[..], b"Delete", b"get", b"pAtCh"] {
        assert!(
            matches!(
                request(method).normalize(None, &config),
                Err(RequestError::MethodCase(_))
            ),
            "{method:?}"
        );
    }
    let other = request(b"PROPFIND").normalize(None, &config).unwrap();
    assert_eq!(other.method, Method::Other);
    let custom = request(b"purge").normalize(None, &config).unwrap();
    assert_eq!(custom.method, Method::Other);
}

#[test]
fn conflicting_authorities_are_refused_and_agreeing_ones_accepted() {
    let request = |authority: &'static [u8], others: Vec<&'static [u8]>| RawRequest {
        method: Some(b"GET"),
        scheme: Some(b"http"),
        authority: Some(authority),
        path: Some(b"/"),
        other_authorities: others,
    };
    let config = RequestConfig::default();
    for others in [
        vec![&b"b.example"[..]],
        vec![b"a.example:8080"],
        vec![b"a.example", b"b.example"],
        vec![b"user@a.example"],
    ] {
        assert!(
            matches!(
                request(b"a.example", others.clone()).normalize(None, &config),
                Err(RequestError::ConflictingAuthority { .. })
            ),
            "{others:?}"
        );
    }
    for others in [vec![&b"A.Example."[..]], vec![b"a.example:80"]] {
        assert!(
            request(b"a.example", others.clone())
                .normalize(None, &config)
                .is_ok(),
            "{others:?}"
        );
    }
    let headers: Vec<(String, Vec<u8>)> = vec![
        (":authority".into(), b"a.example".to_vec()),
        ("host".into(), b"b.example".to_vec()),
    ];
    let raw = RawRequest::from_headers(&headers);
    assert_eq!(raw.authority, Some(&b"a.example"[..]));
    assert_eq!(raw.other_authorities, vec![&b"b.example"[..]]);
}

#[test]
fn connect_takes_port_from_authority_and_has_no_path() {
    let raw = RawRequest {
        method: Some(b"CONNECT"),
        scheme: None,
        authority: Some(b"api.github.com:443"),
        path: None,
        other_authorities: Vec::new(),
    };
    let target = raw.normalize(None, &RequestConfig::default()).unwrap();
    assert_eq!(target.method, Method::Connect);
    assert_eq!(target.authority.host, "api.github.com");
    assert_eq!(target.port, 443);
    assert_eq!(target.path, "");
}

#[test]
fn missing_pieces_are_request_errors() {
    let config = RequestConfig::default();
    let raw = RawRequest {
        method: Some(b"GET"),
        scheme: Some(b"http"),
        authority: None,
        path: Some(b"/"),
        other_authorities: Vec::new(),
    };
    assert_eq!(
        raw.normalize(None, &config),
        Err(RequestError::MissingAuthority)
    );
    let raw = RawRequest {
        method: Some(b"GET"),
        scheme: Some(b"http"),
        authority: Some(b"a.example"),
        path: None,
        other_authorities: Vec::new(),
    };
    assert_eq!(raw.normalize(None, &config), Err(RequestError::MissingPath));
}

#[test]
fn scheme_override_sets_default_port() {
    let raw = RawRequest {
        method: Some(b"GET"),
        scheme: Some(b"http"),
        authority: Some(b"api.github.com"),
        path: Some(b"/user"),
        other_authorities: Vec::new(),
    };
    let config = RequestConfig::default();
    let target = raw.normalize(Some("https"), &config).unwrap();
    assert_eq!((target.scheme.as_str(), target.port), ("https", 443));
    let target = raw.normalize(None, &config).unwrap();
    assert_eq!((target.scheme.as_str(), target.port), ("http", 80));
}

// The reference model: a canonical request (host or IPv4 address, path, method), and the
// encodings a workload may send of it. Every equivalent encoding must normalize to the
// canonical form; an ambiguous one must be refused.

/// A host name whose labels start with a letter (so it never ends in a number).
fn canonical_name() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z][a-z0-9-]{0,6}[a-z0-9]", 1..4).prop_map(|l| l.join("."))
}

/// The same name as a workload may write it: any case, fullwidth letters, ideographic
/// full stops, a root dot.
fn encode_name(name: &str, choices: &[u8], root_dot: bool) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        let choice = choices[i % choices.len()] % 4;
        match (c, choice) {
            ('.', 1) => out.push('\u{3002}'),
            ('a'..='z', 1) => out.push(char::from_u32(0xFF41 + (c as u32 - 'a' as u32)).unwrap()),
            ('a'..='z', 2) => out.push(c.to_ascii_uppercase()),
            _ => out.push(c),
        }
    }
    if root_dot {
        out.push('.');
    }
    out
}

/// An IPv4 address as a dotted quad or IPv4-mapped IPv6 (forms 0 and 1, read the same
/// everywhere), or in a notation resolvers read differently (the others: refused).
fn encode_ipv4(ip: std::net::Ipv4Addr, form: u8) -> String {
    let [a, b, c, d] = ip.octets();
    let n = u32::from(ip);
    match form % 7 {
        0 => format!("{a}.{b}.{c}.{d}"),
        1 => format!("[::ffff:{a}.{b}.{c}.{d}]"),
        2 => format!("{n}"),
        3 => format!("0x{n:x}"),
        4 => format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
        5 => format!("{a}.{b}.{}", u32::from(c) << 8 | u32::from(d)),
        _ => format!("0x{a:X}.{}", n & 0x00ff_ffff),
    }
}

const UNRESERVED_PUNCT: &str = "-_~";

/// A path of unreserved characters, no dot segments.
fn canonical_path() -> impl Strategy<Value = String> {
    prop::collection::vec("[A-Za-z0-9_~-]{1,6}", 0..5).prop_map(|segments| {
        if segments.is_empty() {
            "/".to_owned()
        } else {
            segments.iter().map(|s| format!("/{s}")).collect()
        }
    })
}

/// An equivalent path: characters percent-encoded (hex in either case), `//`, `/./` and
/// `/x/../` inserted before segments.
fn encode_path(path: &str, choices: &[u8]) -> String {
    let mut out = String::new();
    for (i, c) in path.chars().enumerate() {
        let choice = choices[i % choices.len()];
        if c == '/' {
            match choice % 5 {
                1 => out.push_str("//"),
                2 => out.push_str("/./"),
                3 => out.push_str("/zz/../"),
                4 => out.push_str("/%2e/"),
                _ => out.push('/'),
            }
            continue;
        }
        debug_assert!(c.is_ascii_alphanumeric() || UNRESERVED_PUNCT.contains(c));
        match choice % 3 {
            1 => out.push_str(&format!("%{:02X}", c as u32)),
            2 => out.push_str(&format!("%{:02x}", c as u32)),
            _ => out.push(c),
        }
    }
    out
}

/// The same path with something servers disagree on inserted at a slash.
fn ambiguous_path(path: &str, at: usize, kind: u8) -> String {
    let marker = ["%2F", "%2f", "%5C", "%5c", "\\", ";p=1/", "/..;/"][usize::from(kind) % 7];
    let slashes: Vec<usize> = path.match_indices('/').map(|(i, _)| i).collect();
    let i = slashes[at % slashes.len()] + 1;
    format!("{}x{marker}{}", &path[..i], &path[i..])
}

fn upper_method() -> impl Strategy<Value = Method> {
    prop::sample::select(Method::STANDARD.to_vec())
}

fn decide(method: &str, authority: &str, path: &str) -> Result<RequestTarget, RequestError> {
    RawRequest {
        method: Some(method.as_bytes()),
        scheme: Some(b"http"),
        authority: Some(authority.as_bytes()),
        path: Some(path.as_bytes()),
        other_authorities: Vec::new(),
    }
    .normalize(None, &RequestConfig::default())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_encoding_of_a_request_normalizes_to_the_canonical_one(
        name in canonical_name(),
        ip in any::<u32>().prop_map(std::net::Ipv4Addr::from),
        use_ip in any::<bool>(),
        ip_form in any::<u8>(),
        host_choices in prop::collection::vec(any::<u8>(), 1..16),
        root_dot in any::<bool>(),
        path in canonical_path(),
        path_choices in prop::collection::vec(any::<u8>(), 1..16),
        method in upper_method(),
        port in prop::option::of(1u16..),
    ) {
        prop_assume!(method != Method::Connect);
        // An `xn--` label is punycode, which a random label seldom is.
        prop_assume!(!name.split('.').any(|label| label.starts_with("xn--")));
        let (host, authority) = if use_ip {
            (ip.to_string(), encode_ipv4(ip, ip_form % 2))
        } else {
            (name.clone(), encode_name(&name, &host_choices, root_dot))
        };
        let authority = match port {
            Some(port) => format!("{authority}:{port}"),
            None => authority,
        };
        let sent = encode_path(&path, &path_choices);
        let target = decide(method.as_str(), &authority, &sent)
            .map_err(|e| TestCaseError::fail(format!("{authority} {sent}: {e}")))?;
        prop_assert_eq!(&target.authority.host, &host, "{} {}", authority, sent);
        prop_assert_eq!(target.authority.ip.is_some(), use_ip);
        prop_assert_eq!(target.port, port.unwrap_or(80));
        prop_assert_eq!(&target.path, &path, "{}", sent);
        prop_assert_eq!(target.method, method);
        prop_assert_eq!(target.forward_path, None);
    }

    #[test]
    fn ambiguous_forms_are_refused(
        name in canonical_name(),
        path in canonical_path(),
        at in any::<usize>(),
        kind in any::<u8>(),
        method in upper_method(),
        lower in prop::collection::vec(any::<bool>(), 7),
    ) {
        // An `xn--` label is punycode, which a random label seldom is: such a host is refused
        // for itself, before its path is read.
        prop_assume!(!name.split('.').any(|label| label.starts_with("xn--")));
        let sent = ambiguous_path(&path, at, kind);
        prop_assert!(
            matches!(decide("GET", &name, &sent), Err(RequestError::InvalidPath(_))),
            "{} should be refused", sent
        );
        // A standard method in any case but upper.
        let mixed: String = method
            .as_str()
            .chars()
            .zip(lower.iter().cycle())
            .map(|(c, l)| if *l { c.to_ascii_lowercase() } else { c })
            .collect();
        if mixed != method.as_str() {
            prop_assert!(matches!(
                decide(&mixed, &name, "/"),
                Err(RequestError::MethodCase(_))
            ));
        }
        // An IPv4 address in a notation resolvers read differently.
        let form = 2 + kind % 5;
        let sent_ip = encode_ipv4(std::net::Ipv4Addr::from(at as u32), form);
        prop_assert!(
            matches!(decide("GET", &sent_ip, "/"), Err(RequestError::InvalidAuthority { .. })),
            "{} should be refused", sent_ip
        );
        // Userinfo and empty labels.
        let with_userinfo = format!("u@{name}");
        let empty_label = format!("{name}..");
        prop_assert!(decide("GET", &with_userinfo, "/").is_err());
        prop_assert!(decide("GET", &empty_label, "/").is_err());
    }
}
