use super::*;
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::google::protobuf::Value;

fn headers(list: &[(&str, &str)], raw: bool) -> HttpHeaders {
    HttpHeaders {
        headers: Some(HeaderMap {
            headers: list
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).into(),
                    value: if raw { String::new() } else { (*v).into() },
                    raw_value: if raw {
                        v.as_bytes().to_vec()
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        }),
        ..Default::default()
    }
}

fn attributes(pairs: &[(&str, &str)]) -> HashMap<String, Struct> {
    let fields = pairs
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                Value {
                    kind: Some(Kind::StringValue((*v).into())),
                },
            )
        })
        .collect();
    HashMap::from([(ATTRIBUTES_KEY.to_owned(), Struct { fields })])
}

#[test]
fn reads_raw_values_attributes_and_request_id() {
    let h = headers(
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "API.Example.com:8080"),
            (":path", "/a/../b?q=1"),
            ("x-request-id", "abc-123"),
            ("X-Custom", "v"),
        ],
        true,
    );
    let attrs = attributes(&[
        ("source.address", "10.1.2.3:5555"),
        (
            "connection.uri_san_peer_certificate",
            "spiffe://td/ns/a/sa/b",
        ),
    ]);
    let req = outbound_request(
        h,
        &attrs,
        &ListenerContext::default(),
        &RequestConfig::default(),
    )
    .unwrap();
    assert_eq!(
        (
            req.method_name.as_str(),
            req.host.as_str(),
            req.port,
            req.path.as_str()
        ),
        ("GET", "api.example.com", 8080, "/b")
    );
    assert_eq!(req.id, "abc-123");
    assert_eq!(req.source, Some("10.1.2.3:5555".parse().unwrap()));
    assert_eq!(req.peer_uri_san.as_deref(), Some("spiffe://td/ns/a/sa/b"));
    assert_eq!(
        req.header("x-custom"),
        Some(&b"v"[..]),
        "names are lower-cased"
    );
    // Plain `value` (older Envoys) works too.
    let h = headers(
        &[
            (":method", "GET"),
            (":authority", "a.example"),
            (":path", "/"),
        ],
        false,
    );
    assert_eq!(
        outbound_request(
            h,
            &HashMap::new(),
            &ListenerContext::default(),
            &RequestConfig::default()
        )
        .unwrap()
        .host,
        "a.example"
    );
}

#[test]
fn a_host_header_disagreeing_with_the_authority_is_refused() {
    // HTTP/2 carries both; Envoy passes a `host` header beside `:authority` through.
    let h = headers(
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "allowed.example"),
            ("host", "denied.example"),
            (":path", "/"),
        ],
        true,
    );
    let invalid = outbound_request(
        h,
        &HashMap::new(),
        &ListenerContext::default(),
        &RequestConfig::default(),
    )
    .unwrap_err();
    assert!(
        matches!(invalid.error, RequestError::ConflictingAuthority { .. }),
        "{:?}",
        invalid.error
    );
    assert_eq!(invalid_request_rejection(&invalid.error).status, 400);
}

#[test]
fn decoded_escaped_slashes_replace_the_path_sent_upstream() {
    let h = headers(
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "a.example"),
            (":path", "/admin/..%2F../public%2Fx?q=%2F"),
        ],
        true,
    );
    let config = RequestConfig {
        escaped_slashes: crate::request::EscapedSlashes::Decode,
        ..RequestConfig::default()
    };
    let req = outbound_request(h, &HashMap::new(), &ListenerContext::default(), &config).unwrap();
    assert_eq!(req.path, "/public/x");
    assert!(req.path_rewritten);
    assert_eq!(req.header(":path"), Some(&b"/public/x?q=%2F"[..]));
}

#[test]
fn suspicious_request_ids_are_replaced() {
    for bad in ["", "has space", "new\nline", &"x".repeat(200)] {
        let id = request_id(Some(bad.as_bytes()));
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "a UUID");
    }
}

#[test]
fn invalid_requests_keep_what_can_be_audited() {
    let h = headers(&[(":method", "GET"), (":path", "/x?secret=1")], true);
    let invalid = outbound_request(
        h,
        &HashMap::new(),
        &ListenerContext::default(),
        &RequestConfig::default(),
    )
    .unwrap_err();
    assert_eq!(invalid.error, RequestError::MissingAuthority);
    assert_eq!(invalid.request.path, "/x", "query dropped even here");
}

#[test]
fn refusals_are_structured_json_with_the_request_id() {
    let rejection = Rejection {
        status: 403,
        kind: crate::transforms::RefusalKind::PolicyDenied,
        reason: "policy_deny",
        message: "GET a.example/x is denied by policy \"p\"".into(),
        policy: Some("p".into()),
        rule: Some(0),
        transform: "allowlist",
        retry_after: None,
        approval: None,
    };
    let response = refuse("rid-1", &rejection, ErrorShape::Object);
    let Some(processing_response::Response::ImmediateResponse(immediate)) = response.response
    else {
        panic!("expected an immediate response");
    };
    assert_eq!(immediate.status.unwrap().code, 403);
    let body: serde_json::Value = serde_json::from_slice(&immediate.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": {"type": "policy_denied",
        "message": "GET a.example/x is denied by policy \"p\"", "reason": "policy_deny",
        "policy": "p", "transform": "allowlist", "request_id": "rid-1"}})
    );
    let set: Vec<_> = immediate
        .headers
        .unwrap()
        .set_headers
        .into_iter()
        .map(|h| {
            let h = h.header.unwrap();
            (h.key, String::from_utf8(h.raw_value).unwrap())
        })
        .collect();
    assert!(set.contains(&("content-type".into(), "application/json".into())));
    assert!(set.contains(&("x-portcullis-request-id".into(), "rid-1".into())));
}

#[test]
fn listener_metadata_gives_tags_and_scheme() {
    let mut md = MetadataMap::new();
    md.insert(
        "x-portcullis-tags",
        "listener:fwd, env:dev,,bad tag".parse().unwrap(),
    );
    md.insert("x-portcullis-upstream-scheme", "HTTPS".parse().unwrap());
    let l = ListenerContext::from_metadata(&md);
    let tags: Vec<_> = l.tags.iter().map(|t| t.as_str()).collect();
    assert_eq!(tags, ["listener:fwd", "env:dev"]);
    assert_eq!(l.upstream_scheme.as_deref(), Some("https"));
}

#[test]
fn only_the_listener_says_a_request_leaves_over_tls() {
    let request = |scheme: &str, listener: &ListenerContext| {
        let h = headers(
            &[
                (":method", "GET"),
                (":scheme", scheme),
                (":authority", "api.example.com"),
                (":path", "/"),
            ],
            true,
        );
        outbound_request(h, &HashMap::new(), listener, &RequestConfig::default()).unwrap()
    };
    // The workload's `:scheme: https` on the plain forward proxy: still plaintext.
    let forward_proxy = ListenerContext::default();
    assert!(!request("https", &forward_proxy).upstream_tls);
    assert!(!request("http", &forward_proxy).upstream_tls);
    let tls_chain = ListenerContext {
        upstream_scheme: Some("https".into()),
        ..ListenerContext::default()
    };
    assert!(request("http", &tls_chain).upstream_tls);
}

#[test]
fn npm_gets_its_refusal_as_a_sentence_in_error() {
    let rejection = Rejection {
        status: 403,
        kind: crate::transforms::RefusalKind::PolicyDenied,
        reason: "no_matching_policy",
        message: "GET registry.npmjs.org:443/left-pad is allowed by no policy".into(),
        policy: None,
        rule: None,
        transform: "allowlist",
        retry_after: None,
        approval: None,
    };
    let agent = b"npm/10.9.2 node/v20.20.2 linux x64 workspaces/false";
    let shape = ErrorShape::for_user_agent(Some(agent));
    let request_id = "6f0c2d1e-0b5a-4c0e-9d1a-2f3b4c5d6e7f";
    assert_eq!(shape, ErrorShape::Text);
    assert_eq!(
        ErrorShape::for_user_agent(Some(b"cargo/1.95.0")),
        ErrorShape::Object
    );
    assert_eq!(ErrorShape::for_user_agent(None), ErrorShape::Object);
    let Some(processing_response::Response::ImmediateResponse(immediate)) =
        refuse(request_id, &rejection, shape).response
    else {
        panic!("expected an immediate response");
    };
    let body: serde_json::Value = serde_json::from_slice(&immediate.body).unwrap();
    assert_eq!(
        body["error"],
        "refused by the Portcullis egress gateway: GET registry.npmjs.org:443/left-pad is \
         allowed by no policy (policy_denied, request id 6f0c2d1e0b5a4c0e9d1a2f3b4c5d6e7f)",
        "npm masks UUIDs: the sentence carries the id without its dashes"
    );
    assert_eq!(body["portcullis"]["type"], "policy_denied");
    assert_eq!(body["portcullis"]["request_id"], request_id);
}
