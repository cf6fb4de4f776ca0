//! Parity with what the upstream reads: encoded paths, host forms, method case, conflicting
//! authorities.
//!
//! Each test sends the attacker's exact bytes to the shipped forward-proxy Envoy over a raw
//! socket (curl would tidy them up), and checks that the request is decided on what the
//! upstream would read — or refused as ambiguous — and never reaches the upstream unchecked.

use crate::common::{Gateway, GatewayOptions, RawReply, Upstream};

/// A workload allowed everywhere but `/admin` on the loopback upstream, `DELETE`, and the
/// host `denied.example`.
const CONFIG: &str = r#"
policies:
  - {name: open, priority: 100, action: allow, rules: [{host: "*"}]}
  - {name: no-admin, priority: 10, action: deny,
     rules: [{host: 127.0.0.1, paths: ["/admin", "/admin/*"]}]}
  - {name: no-delete, priority: 10, action: deny, rules: [{host: "*", methods: [DELETE]}]}
  - {name: no-denied-example, priority: 10, action: deny, rules: [{host: denied.example}]}
"#;

/// `METHOD http://127.0.0.1:<port><path>` through the forward proxy.
fn get(gw: &Gateway, upstream: &Upstream, method: &str, path: &str) -> RawReply {
    let port = upstream.port();
    gw.send_raw(
        format!(
            "{method} http://127.0.0.1:{port}{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
}

/// Asserts `ok` of every (form, reply), listing every form that failed, not just the first.
fn assert_all(replies: &[(String, RawReply)], ok: impl Fn(&RawReply) -> bool) {
    for (form, reply) in replies {
        eprintln!("{form:?} -> {} {}", reply.status, reply.body);
    }
    let failed: Vec<String> = replies
        .iter()
        .filter(|(_, reply)| !ok(reply))
        .map(|(form, reply)| {
            format!(
                "{form:?} -> {} {} {}",
                reply.status,
                reply.head.lines().next().unwrap_or_default(),
                reply.body
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "forms that got through:\n{}",
        failed.join("\n")
    );
}

fn gateway(config: &str) -> Gateway {
    Gateway::start(config, GatewayOptions::default())
}

#[test]
fn encoded_slash_does_not_escape_a_path_deny() {
    let upstream = Upstream::start(None);
    let gw = gateway(CONFIG);
    let replies: Vec<(String, RawReply)> = [
        "/admin%2Fusers",
        "/admin%2fusers",
        "/admin%5Cusers",
        "/admin%5cusers",
        "/public%2F..%2Fadmin",
    ]
    .into_iter()
    .map(|path| (path.to_owned(), get(&gw, &upstream, "GET", path)))
    .collect();
    // Refused, with an error that says what is wrong.
    assert_all(&replies, |r| {
        r.status == 400
            && r.error_field("type") == "invalid_request"
            && r.error_field("message").contains("escaped")
    });
    assert_eq!(upstream.hits(), 0, "{:?}", upstream.seen());
    let record = gw.audit_for(|r| r["reason"] == "invalid_request");
    assert_eq!(record["decision"], "DENIED", "{record}");
}

#[test]
fn encoded_slash_is_decided_and_forwarded_decoded_when_configured() {
    let upstream = Upstream::start(None);
    let gw = gateway(&format!("request: {{escaped_slashes: decode}}\n{CONFIG}"));
    let denied = get(&gw, &upstream, "GET", "/admin%2Fusers");
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.error_field("policy"), "no-admin", "{denied:?}");
    // `/admin/..%2F../public` is `/public` once decoded: the upstream must get that, not
    // the escaped form a non-decoding server would read as a path under `/admin`.
    let allowed = get(&gw, &upstream, "GET", "/admin/..%2F../public%5Cx?q=%2F");
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/public/x?q=%2F");
}

#[test]
fn encoded_dots_unreserved_escapes_and_double_encoding_do_not_escape_a_path_deny() {
    let upstream = Upstream::start(None);
    let gw = gateway(CONFIG);
    for path in [
        "/public/%2e%2e/admin/users",
        "/public/%2E%2E/admin",
        "/%61dmin/users",
        "/%41dmin/../admin/x",
        "/adm%69n",
    ] {
        let reply = get(&gw, &upstream, "GET", path);
        assert_eq!(reply.status, 403, "{path}: {reply:?}");
        assert_eq!(reply.error_field("policy"), "no-admin", "{path}: {reply:?}");
    }
    // One decoding pass, as the upstream makes: `%252F` is the three characters `%2F`
    // there, not a slash, and it arrives unchanged.
    let double = get(&gw, &upstream, "GET", "/admin%252Fusers");
    assert_eq!(double.status, 200, "{double:?}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/admin%252Fusers");
}

#[test]
fn path_parameters_do_not_escape_a_path_deny() {
    let upstream = Upstream::start(None);
    let gw = gateway(CONFIG);
    let replies: Vec<(String, RawReply)> = [
        "/admin;x=1/users",
        "/admin;/users",
        "/public/..;/admin/users",
        "/public;x=/../admin",
    ]
    .into_iter()
    .map(|path| (path.to_owned(), get(&gw, &upstream, "GET", path)))
    .collect();
    assert_all(&replies, |r| {
        (r.status == 400 && r.error_field("message").contains("';'")) || r.status == 403
    });
    assert_eq!(upstream.hits(), 0, "{:?}", upstream.seen());
}

#[test]
fn path_parameters_are_stripped_for_matching_when_configured() {
    let upstream = Upstream::start(None);
    let gw = gateway(&format!("request: {{path_parameters: strip}}\n{CONFIG}"));
    let denied = get(&gw, &upstream, "GET", "/admin;jsessionid=1/users");
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.error_field("policy"), "no-admin", "{denied:?}");
    // A dot segment with parameters is `..` to Tomcat and a name elsewhere: the shipped
    // Envoy resolves it as Tomcat does (so the deny decides), Portcullis refuses it when an
    // Envoy in front leaves it (unit tests).
    let ambiguous = get(&gw, &upstream, "GET", "/public/..;/admin");
    assert!(
        ambiguous.status == 400 || ambiguous.error_field("policy") == "no-admin",
        "{ambiguous:?}"
    );
    let allowed = get(&gw, &upstream, "GET", "/public;v=1/x");
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(upstream.hits(), 1);
}

#[test]
fn backslashes_dot_segments_and_repeated_slashes_do_not_escape_a_path_deny() {
    let upstream = Upstream::start(None);
    let gw = gateway(CONFIG);
    let replies: Vec<(String, RawReply)> = [
        "//admin//users",
        "/public/../admin",
        "/public/./../admin/users",
        "/public/..\\admin",
        "/public\\..\\admin",
        "/./admin",
    ]
    .into_iter()
    .map(|path| (path.to_owned(), get(&gw, &upstream, "GET", path)))
    .collect();
    // Envoy refuses some of these itself (400, no JSON); none may reach the upstream.
    assert_all(&replies, |r| {
        r.status == 400 || (r.status == 403 && r.error_field("policy") == "no-admin")
    });
    assert_eq!(upstream.hits(), 0, "{:?}", upstream.seen());
}

#[test]
fn lower_case_method_does_not_escape_a_method_deny() {
    let upstream = Upstream::start(None);
    let gw = gateway(CONFIG);
    let replies: Vec<(String, RawReply)> = ["delete", "Delete", "dELETE"]
        .into_iter()
        .map(|method| (method.to_owned(), get(&gw, &upstream, method, "/things/1")))
        .collect();
    assert_all(&replies, |r| r.status == 400 || r.status == 403);
    assert_eq!(upstream.hits(), 0, "{:?}", upstream.seen());
    let ok = get(&gw, &upstream, "GET", "/things/1");
    assert_eq!(ok.status, 200, "{ok:?}");
}

#[test]
fn conflicting_host_and_absolute_uri_are_decided_by_the_routed_authority_or_refused() {
    let upstream = Upstream::start(None);
    let port = upstream.port();
    let gw = gateway(CONFIG);
    // The request line names the upstream, Host an allowed name: whichever Envoy routes
    // to is what Portcullis decides, so `/admin` on the loopback upstream stays denied.
    let reply = gw.send_raw(
        format!(
            "GET http://127.0.0.1:{port}/admin HTTP/1.1\r\nHost: other.example\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.error_field("policy"), "no-admin", "{reply:?}");
    // The other way round: a denied name in the request line, the upstream in Host.
    let reply = gw.send_raw(
        format!(
            "GET http://denied.example/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(
        reply.error_field("policy"),
        "no-denied-example",
        "{reply:?}"
    );
    for request in [
        // Two Host headers.
        format!(
            "GET /admin HTTP/1.1\r\nHost: other.example\r\nHost: 127.0.0.1:{port}\r\n\
             Connection: close\r\n\r\n"
        ),
        format!(
            "GET /admin HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: other.example\r\n\
             Connection: close\r\n\r\n"
        ),
        // Userinfo in Host.
        format!(
            "GET /admin HTTP/1.1\r\nHost: other.example@127.0.0.1:{port}\r\n\
             Connection: close\r\n\r\n"
        ),
        format!(
            "GET http://other.example@127.0.0.1:{port}/admin HTTP/1.1\r\n\
             Host: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let reply = gw.send_raw(request.as_bytes());
        assert!(
            reply.status == 400 || reply.status == 403,
            "{request:?}: {reply:?}"
        );
    }
    assert_eq!(upstream.hits(), 0, "{:?}", upstream.seen());
}

#[test]
fn ip_literal_in_another_notation_is_refused_or_matched_as_the_address() {
    let upstream = Upstream::start(None);
    let port = upstream.port();
    let gw = gateway(
        r#"
policies:
  - {name: open, priority: 100, action: allow, rules: [{host: "*"}]}
  - {name: no-loopback, priority: 10, action: deny, rules: [{host: 127.0.0.0/8}]}
"#,
    );
    let replies: Vec<(String, RawReply)> = [
        "2130706433",
        "0177.0.0.1",
        "0x7f.1",
        "0x7F000001",
        "127.1",
        "127.0.1",
        "017700000001",
        "[::ffff:7f00:1]",
        "[::ffff:127.0.0.1]",
        "[0:0:0:0:0:ffff:7f00:1]",
    ]
    .into_iter()
    .map(|host| {
        let reply = gw.send_raw(
            format!(
                "GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}:{port}\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        (host.to_owned(), reply)
    })
    .collect();
    // A mapped address is the IPv4 address and meets the CIDR deny; the other notations
    // are read differently by different resolvers (Envoy's takes `0177.0.0.1` as
    // 177.0.0.1, `inet_aton` as 127.0.0.1) and are refused, saying so.
    assert_all(&replies, |r| {
        (r.status == 403 && r.error_field("policy") == "no-loopback")
            || (r.status == 400 && r.error_field("message").contains("notation"))
    });
    let mapped: Vec<_> = replies
        .iter()
        .filter(|(host, _)| host.starts_with('['))
        .collect();
    assert!(mapped.iter().all(|(_, r)| r.status == 403), "{mapped:?}");
    // A number too large for an IPv4 address is no host name either.
    let reply = gw.send_raw(
        format!(
            "GET http://4294967296:{port}/ HTTP/1.1\r\nHost: 4294967296:{port}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(upstream.hits(), 0, "{:?}", upstream.seen());
}

fn by_host(gw: &Gateway, host: &str) -> (String, RawReply) {
    let request =
        format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    (host.to_owned(), gw.send_raw(request.as_bytes()))
}

#[test]
fn trailing_dot_and_case_do_not_escape_a_host_deny() {
    let gw = gateway(CONFIG);
    let denied: Vec<_> = ["denied.example.", "DENIED.Example", "Denied.Example.:80"]
        .into_iter()
        .map(|host| by_host(&gw, host))
        .collect();
    assert_all(&denied, |r| {
        r.status == 403 && r.error_field("policy") == "no-denied-example"
    });
    // Empty labels are no host name (a resolver might still try them).
    let invalid: Vec<_> = ["denied.example..", ".denied.example", "denied..example"]
        .into_iter()
        .map(|host| by_host(&gw, host))
        .collect();
    assert_all(&invalid, |r| r.status == 400);
}

#[test]
fn unicode_host_is_compared_in_its_ascii_form() {
    let gw = gateway(
        r#"
policies:
  - {name: open, priority: 100, action: allow, rules: [{host: "*"}]}
  - {name: no-denied-example, priority: 10, action: deny, rules: [{host: denied.example}]}
  - {name: no-buecher, priority: 10, action: deny, rules: [{host: "bücher.example"}]}
"#,
    );
    // Fullwidth letters and ideographic dots map to ASCII under UTS-46; punycode is the
    // Unicode name. Envoy refuses a Host that is not ASCII itself (400, no JSON): that also
    // holds, as long as nothing is let through.
    let replies: Vec<_> = [
        "ｄenied.example",
        "denied\u{3002}example",
        "BÜCHER.example",
        "xn--bcher-kva.example",
        "XN--BCHER-KVA.example.",
    ]
    .into_iter()
    .map(|host| {
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        (host.to_owned(), gw.send_raw(request.as_bytes()))
    })
    .collect();
    assert_all(&replies, |r| {
        (r.status == 403 && r.error_field("policy").starts_with("no-"))
            || (r.status == 400 && r.error_field("type").is_empty())
    });
    // Punycode that does not decode is no host name.
    let (_, reply) = by_host(&gw, "xn--a.example");
    assert_eq!(reply.status, 400, "{reply:?}");
}
