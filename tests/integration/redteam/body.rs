//! Requests whose decision needs the body: no forward without a decision, JSON-RPC recognised by
//! parsing, conditions that fail closed.

use std::convert::Infallible;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{HeaderMap, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::common::{Gateway, GatewayOptions, Upstream};

/// A body rule that denies, ahead of an allow-all for the test upstream.
const DENY_AWS_KEYS: &str = "
policies:
  - name: no-aws-keys
    priority: 1
    action: deny
    rules: [{host: 127.0.0.1, body: {contains: [aws_secret_access_key]}}]
  - name: upstream
    priority: 10
    action: allow
    rules: [{host: 127.0.0.1}]
";

#[derive(Debug, Clone, Copy)]
enum Framing {
    Http1Chunked,
    Http2PriorKnowledge,
}

/// POSTs `body` to `url` through the forward proxy with a trailer after it, as curl cannot:
/// HTTP/1.1 chunked, or HTTP/2 over cleartext with prior knowledge. Returns the status and
/// the response body.
fn post_with_trailer(gw: &Gateway, framing: Framing, url: &str, body: &str) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let proxy = format!("127.0.0.1:{}", gw.proxy_port);
    let url = url.to_owned();
    let body = Bytes::from(body.to_owned());
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&proxy).await.unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "c0ffee".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Infallible>> =
            vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
        let request = Request::post(url.as_str())
            .header("content-type", "application/json")
            .header("trailer", "x-checksum")
            .body(StreamBody::new(futures::stream::iter(frames)))
            .unwrap();
        let io = TokioIo::new(tcp);
        let response = match framing {
            Framing::Http1Chunked => {
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(connection);
                sender.send_request(request).await
            }
            Framing::Http2PriorKnowledge => {
                let (mut sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(connection);
                sender.send_request(request).await
            }
        };
        let response = response.unwrap_or_else(|e| panic!("{framing:?}: {e}"));
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    })
}

/// Issue 13, item 2: a body a deny rule matches, sent with a trailer, is refused over HTTP/2
/// exactly as over HTTP/1.1 — Envoy's buffered body then comes with `end_of_stream: false`,
/// which is the whole body, not a first chunk to wave through.
#[test]
fn h2_trailer_does_not_skip_the_body_decision() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(DENY_AWS_KEYS, GatewayOptions::default());
    let leak = r#"{"aws_secret_access_key": "SENTINEL-trailer-7e1a"}"#;
    for framing in [Framing::Http1Chunked, Framing::Http2PriorKnowledge] {
        let url = format!("http://127.0.0.1:{}/upload/{framing:?}", upstream.port());
        let (status, body) = post_with_trailer(&gw, framing, &url, leak);
        assert_eq!(
            status,
            403,
            "{framing:?}: a denied body with a trailer was answered {status} {body}\n{}",
            gw.portcullis_log()
        );
        assert!(body.contains("no-aws-keys"), "{framing:?}: {body}");
    }
    assert_eq!(
        upstream.hits(),
        0,
        "a denied body never reaches the upstream"
    );

    // A body nothing denies still goes through whole, trailer and all, on both framings.
    for framing in [Framing::Http1Chunked, Framing::Http2PriorKnowledge] {
        let url = format!("http://127.0.0.1:{}/ok/{framing:?}", upstream.port());
        let (status, body) = post_with_trailer(&gw, framing, &url, r#"{"greeting": "hi"}"#);
        assert_eq!(status, 200, "{framing:?}: {body}\n{}", gw.envoy_log());
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body == br#"{"greeting": "hi"}"#));
    assert_eq!(gw.metric("portcullis_stream_errors_total"), Some(0.0));
}
