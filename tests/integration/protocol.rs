//! The ext_proc protocol: a processing mode that sends more than Portcullis needs still
//! works through Envoy, and malformed or out-of-order streams fail closed — driven over a
//! real gRPC connection to the binary.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest};

use std::time::Duration;

use crate::common::{Gateway, GatewayOptions, Upstream, grpc_channel, wait_until};

const ALLOW_ALL: &str = "policies: [{name: all, action: allow, rules: [{host: '127.0.0.1'}]}]";

/// The Envoy config's processing mode edited to send every phase of every request.
const EVERY_PHASE: [(&str, &str); 5] = [
    ("request_body_mode: NONE", "request_body_mode: BUFFERED"),
    ("response_header_mode: SKIP", "response_header_mode: SEND"),
    ("response_body_mode: NONE", "response_body_mode: STREAMED"),
    ("request_trailer_mode: SKIP", "request_trailer_mode: SEND"),
    ("response_trailer_mode: SKIP", "response_trailer_mode: SEND"),
];

#[test]
fn bodies_trailers_and_response_phases_pass_through() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(
        ALLOW_ALL,
        GatewayOptions {
            envoy_edits: EVERY_PHASE
                .iter()
                .map(|(a, b)| ((*a).into(), (*b).into()))
                .collect(),
            ..GatewayOptions::default()
        },
    );
    let body = "x".repeat(200_000);
    let body_file = gw.dir.path().join("body.txt");
    std::fs::write(&body_file, &body).unwrap();
    let data = format!("@{}", body_file.display());
    let url = format!("http://127.0.0.1:{}/upload", upstream.port());
    let reply = gw.via_proxy(&["-X", "POST", "--data-binary", &data, &url]);
    assert_eq!(reply.status, 200, "{reply:?}\n{}", gw.envoy_log());
    assert_eq!(reply.json()["body_len"], 200_000);
    assert_eq!(upstream.seen()[0].body.len(), 200_000);
    let get = gw.via_proxy(&[&format!("http://127.0.0.1:{}/plain", upstream.port())]);
    assert_eq!(get.status, 200);
    assert_eq!(gw.metric("portcullis_stream_errors_total"), Some(0.0));
}

fn headers(list: &[(&str, &str)]) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Message::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: list
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).into(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Sends `messages` on one stream; returns what came back, and the error ending it, if any.
fn exchange(
    socket: &std::path::Path,
    messages: Vec<ProcessingRequest>,
) -> (Vec<Answer>, Option<tonic::Status>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut client = ExternalProcessorClient::new(grpc_channel(socket).await.unwrap());
        let mut inbound = client
            .process(futures::stream::iter(messages))
            .await
            .unwrap()
            .into_inner();
        let mut answers = Vec::new();
        loop {
            match inbound.message().await {
                Ok(Some(m)) => answers.push(m.response.unwrap()),
                Ok(None) => return (answers, None),
                Err(status) => return (answers, Some(status)),
            }
        }
    })
}

#[test]
fn malformed_and_out_of_order_streams_fail_closed() {
    let gw = Gateway::start(ALLOW_ALL, GatewayOptions::default());

    // No :authority: a 400 with a JSON body.
    let (answers, _) = exchange(
        &gw.grpc_socket,
        vec![headers(&[(":method", "GET"), (":path", "/")])],
    );
    let Some(Answer::ImmediateResponse(immediate)) = answers.first() else {
        panic!("expected an immediate response, got {answers:?}");
    };
    assert_eq!(immediate.status.as_ref().unwrap().code, 400);
    let body: serde_json::Value = serde_json::from_slice(&immediate.body).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(":authority")
    );
    let record = gw.audit_for(|r| r["reason"] == "invalid_request");
    assert_eq!(record["status"], 400);

    // A path that cannot be normalized is a 400 too.
    let (answers, _) = exchange(
        &gw.grpc_socket,
        vec![headers(&[
            (":method", "GET"),
            (":authority", "127.0.0.1"),
            (":path", "/a%zz"),
        ])],
    );
    assert!(
        matches!(&answers[0], Answer::ImmediateResponse(i) if i.status.as_ref().unwrap().code == 400)
    );

    // A body before any headers: the stream fails, Envoy would fail the request closed.
    let body_first = ProcessingRequest {
        request: Some(Message::RequestBody(HttpBody {
            body: b"x".to_vec(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let (answers, error) = exchange(&gw.grpc_socket, vec![body_first]);
    assert!(answers.is_empty());
    assert_eq!(
        error.expect("stream error").code(),
        tonic::Code::FailedPrecondition
    );

    // Headers twice on one stream: an allowed request that needs nothing more ends its
    // stream with the answer, so the second is never read, let alone decided.
    let get = |path: &str| {
        headers(&[
            (":method", "GET"),
            (":authority", "127.0.0.1"),
            (":path", path),
        ])
    };
    let (answers, error) = exchange(&gw.grpc_socket, vec![get("/first"), get("/second")]);
    assert!(
        matches!(&answers[..], [Answer::RequestHeaders(_)]),
        "{answers:?}"
    );
    assert!(error.is_none(), "{error:?}");
    gw.audit_for(|r| r["path"] == "/first");
    let audit = gw.audit();
    assert!(!audit.iter().any(|r| r["path"] == "/second"), "{audit:#?}");
    assert_eq!(gw.metric("portcullis_stream_errors_total"), Some(1.0));

    // Observability mode: decided and audited, never answered.
    let mut observed = headers(&[
        (":method", "GET"),
        (":authority", "127.0.0.1"),
        (":path", "/observed"),
    ]);
    observed.observability_mode = true;
    let (answers, error) = exchange(&gw.grpc_socket, vec![observed]);
    assert!(answers.is_empty() && error.is_none());
    gw.audit_for(|r| r["path"] == "/observed");
}

/// The request attributes Envoy sends (`source.address`, the peer certificate's URI SAN)
/// decide the identity inside the real binary.
#[test]
fn peer_uri_san_and_source_address_attributes_pick_the_identity() {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let gw = Gateway::start(
        r#"
identities:
  - {name: mesh-ci, uri_san: "spiffe://cluster.local/ns/ci/sa/*", tags: [ns:ci]}
  - {name: office, source_cidr: 10.20.0.0/16, tags: [net:office]}
policies:
  - {name: ci-only, match_tags: [ns:ci], action: allow, rules: [{host: 127.0.0.1, paths: ["/ci/*"]}]}
  - {name: office-only, match_tags: [net:office], action: allow, rules: [{host: 127.0.0.1, paths: ["/office/*"]}]}
"#,
        GatewayOptions::default(),
    );
    let with_attributes = |path: &str, attributes: &[(&str, &str)]| {
        let mut message = headers(&[
            (":method", "GET"),
            (":authority", "127.0.0.1"),
            (":path", path),
        ]);
        let fields = attributes
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
        message
            .attributes
            .insert("envoy.filters.http.ext_proc".into(), Struct { fields });
        let (answers, _) = exchange(&gw.grpc_socket, vec![message]);
        match &answers[0] {
            Answer::RequestHeaders(_) => 200,
            Answer::ImmediateResponse(i) => i.status.as_ref().unwrap().code,
            other => panic!("{other:?}"),
        }
    };
    let san = (
        "connection.uri_san_peer_certificate",
        "spiffe://cluster.local/ns/ci/sa/builder",
    );
    let office = ("source.address", "10.20.3.4:40000");
    assert_eq!(
        with_attributes("/ci/build", &[san, office]),
        200,
        "the SAN outranks the CIDR"
    );
    assert_eq!(with_attributes("/office/x", &[san, office]), 403);
    assert_eq!(with_attributes("/office/x", &[office]), 200);
    assert_eq!(with_attributes("/ci/build", &[office]), 403);
    let record = gw.audit_for(|r| r["path"] == "/ci/build" && r["decision"] == "ALLOWED");
    assert_eq!(record["identity"]["kind"], "uri_san");
    assert_eq!(record["identity"]["name"], "mesh-ci");
    assert_eq!(
        record["identity"]["spiffe_id"],
        "spiffe://cluster.local/ns/ci/sa/builder"
    );
    assert_eq!(record["identity"]["source"], "10.20.3.4:40000");
    assert_eq!(record["tags"], serde_json::json!(["ns:ci"]));
}

/// Envoy told to send every phase (as `bodies_trailers_and_response_phases_pass_through`):
/// an allowed request that needs nothing more of it ends its ext_proc stream with the
/// answer — while the upstream still holds it, Portcullis has no stream open, and Envoy sent
/// one message for it, where it would otherwise have sent the response too. A request that
/// left with a credential keeps its stream until the response has been scrubbed.
#[test]
fn a_settled_request_ends_its_stream_and_a_credentialed_one_keeps_it() {
    const SECRET: &str = "SENTINEL-settled-stream-token";
    let upstream = Upstream::start(None);
    let config = "
policies: [{name: all, action: allow, rules: [{host: '127.0.0.1'}]}]
secrets:
  - name: held
    source: {type: env, var: HELD_TOKEN}
    allow_plaintext: true
    inject: {style: bearer}
    rules: [{host: 127.0.0.1, paths: ['/hold/credentialed']}]
";
    let gw = Gateway::start(
        config,
        GatewayOptions {
            env: vec![("HELD_TOKEN".into(), SECRET.into())],
            envoy_edits: EVERY_PHASE
                .iter()
                .map(|(a, b)| ((*a).into(), (*b).into()))
                .collect(),
            ..GatewayOptions::default()
        },
    );
    const SENT: &str = "ext_proc.portcullis.stream_msgs_sent";
    let held = |key: &str, open_streams: f64| {
        let sent_before = gw.envoy_counter(SENT);
        let url = format!("http://127.0.0.1:{}/hold/{key}", upstream.port());
        std::thread::scope(|scope| {
            let request = scope.spawn(|| gw.via_proxy(&[&url]));
            let path = format!("/hold/{key}");
            assert!(
                wait_until(Duration::from_secs(10), || upstream
                    .seen()
                    .iter()
                    .any(|s| s.path == path)),
                "{key}: the request never reached the upstream"
            );
            // Held at the upstream: Envoy has had Portcullis's answer.
            let as_expected = wait_until(Duration::from_secs(10), || {
                gw.metric("portcullis_active_streams") == Some(open_streams)
            });
            let open = gw.metric("portcullis_active_streams");
            upstream.release(key);
            let reply = request.join().unwrap();
            assert_eq!(reply.status, 200, "{key}: {reply:?}");
            assert!(
                as_expected,
                "{key}: {open:?} open ext_proc streams while held, not {open_streams}"
            );
        });
        gw.envoy_counter(SENT) - sent_before
    };
    assert_eq!(held("plain", 0.0), 1, "the request headers only");
    let sent = held("credentialed", 1.0);
    assert!(
        sent >= 2,
        "Envoy sent the response to be scrubbed too ({sent} messages)"
    );
    let seen = upstream.seen();
    let credentialed = seen
        .iter()
        .find(|s| s.path == "/hold/credentialed")
        .unwrap();
    assert_eq!(
        credentialed.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert!(
        !gw.all_output().contains(SECRET),
        "the secret leaked into the gateway's output"
    );
}
