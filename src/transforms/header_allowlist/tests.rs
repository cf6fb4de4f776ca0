use super::*;

fn allowlist(names: &[&str]) -> HeaderAllowlist {
    let config = HeaderAllowlistConfig {
        allow: names
            .iter()
            .map(|n| HeaderNamePattern::try_from((*n).to_owned()).unwrap())
            .collect(),
    };
    HeaderAllowlist::compile(&config).unwrap()
}

#[test]
fn literals_are_case_insensitive_and_regexes_search_lowercase_names() {
    let a = allowlist(&["Accept", "/^x-amz-/", "/TRACE/"]);
    assert!(a.allows("accept"));
    assert!(a.allows("x-amz-date"));
    assert!(!a.allows("y-x-amz-date"));
    assert!(a.allows("x-b3-traceid"), "regexes are case-insensitive");
    assert!(!a.allows("cookie"));
}

#[test]
fn request_framing_and_pseudo_headers_are_never_stripped() {
    let a = allowlist(&[]);
    for name in [
        ":method",
        ":path",
        ":authority",
        ":scheme",
        "host",
        "content-length",
        "transfer-encoding",
    ] {
        assert!(a.allows(name), "{name}");
    }
    assert!(!a.allows("authorization"));
}

#[test]
fn invalid_patterns_say_why() {
    let err = HeaderNamePattern::try_from("/(/".to_owned()).unwrap_err();
    assert!(err.contains("not a valid regex"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    let err = HeaderNamePattern::try_from("bad header".to_owned()).unwrap_err();
    assert!(err.contains("not a header name"), "{err}");
}
