//! Credential containment: where a placeholder is swapped, `require`, plaintext HTTP, and
//! responses that echo a credential.
//!
//! The upstream here is hostile in the most ordinary way: it echoes the request (headers as
//! `x-echo-<name>` response headers and in a JSON body, the query, the body), as debug
//! endpoints, error pages and httpbin's `/anything` do. Its first path segment chooses how:
//! `/echo` (one body with a length), `/masked` (the same, but it hides `Authorization`, as
//! careful debug pages do), `/chunked` (the body in small delayed pieces), `/sse` (a
//! `text/event-stream` of many small events) and `/gzip` (gzip whatever the client accepts).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::common::{Gateway, GatewayOptions, Reply, Seen, wait_until};

const PLACEHOLDER: &str = "ptok_redteam_Q7x2k9";
const SWAPPED: &str = "SENTINEL-swapped-4be1c0";
const BEARER: &str = "SENTINEL-bearer-77a0de";
const BASIC: &str = "SENTINEL-basic-c3d2";
const QUERY_KEY: &str = "SENTINEL-query+/key";
const MARKER: &str = "[REDACTED:portcullis]";

/// An upstream that reflects what it receives; stops when dropped.
struct Echo {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Echo {
    fn start() -> Echo {
        let (runtime, listener, addr) = crate::common::loopback_server();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| echo(req, record.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Echo {
            addr,
            seen,
            _runtime: runtime,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }

    /// The newest request seen at `path` (with its query).
    fn seen(&self, path: &str) -> Seen {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .rev()
            .find(|s| s.path == path)
            .cloned()
            .unwrap_or_else(|| panic!("the upstream never saw {path}: {seen:?}"))
    }

    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

type EchoBody = BoxBody<Bytes, Infallible>;

async fn echo(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<EchoBody>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let method = req.method().to_string();
    let kind = path.trim_start_matches('/').split(['/', '?']).next();
    let kind = kind.unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_owned(), value)
        })
        .collect();
    let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
    seen.lock().unwrap().push(Seen {
        method,
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let reflected: Vec<&(String, String)> = headers
        .iter()
        .filter(|(n, _)| !(kind == "masked" && n == "authorization"))
        .collect();
    let document = serde_json::json!({
        "path": path,
        "headers": reflected
            .iter()
            .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
            .collect::<serde_json::Map<_, _>>(),
        "body": String::from_utf8_lossy(&body),
    })
    .to_string();
    let mut response = Response::builder();
    for (name, value) in &reflected {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding"
        ) {
            response = response.header(format!("x-echo-{name}"), value.as_str());
        }
    }
    let body: EchoBody = match kind.as_str() {
        "chunked" => {
            // Seven bytes at a time, each after a pause: every credential straddles chunks.
            let pieces: Vec<Bytes> = document
                .as_bytes()
                .chunks(7)
                .map(Bytes::copy_from_slice)
                .collect();
            response = response.header("content-type", "application/json");
            paced(pieces)
        }
        "sse" => {
            let mut events: Vec<Bytes> = Vec::new();
            for i in 0..20 {
                events.push(Bytes::from(format!("data: tick {i}\n\n")));
            }
            for (name, value) in &reflected {
                // An event in two writes, split inside the value.
                let event = format!("event: header\ndata: {name}: {value}\n\n");
                let (a, b) = event.split_at(event.len() / 2 + 3);
                events.push(Bytes::copy_from_slice(a.as_bytes()));
                events.push(Bytes::copy_from_slice(b.as_bytes()));
            }
            response = response.header("content-type", "text/event-stream");
            paced(events)
        }
        "gzip" => {
            response = response
                .header("content-type", "application/json")
                .header("content-encoding", "gzip");
            Full::new(Bytes::from(gzip(document.as_bytes()))).boxed()
        }
        _ => {
            response = response.header("content-type", "application/json");
            Full::new(Bytes::from(document)).boxed()
        }
    };
    Ok(response.body(body).unwrap())
}

/// A body sent piece by piece, 3 ms apart (chunked on the wire).
fn paced(pieces: Vec<Bytes>) -> EchoBody {
    let stream = futures::stream::unfold(pieces.into_iter(), |mut rest| async move {
        let piece = rest.next()?;
        tokio::time::sleep(Duration::from_millis(3)).await;
        Some((Ok::<_, Infallible>(Frame::data(piece)), rest))
    });
    StreamBody::new(stream).boxed()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip runs");
    child.stdin.take().unwrap().write_all(data).unwrap();
    child.wait_with_output().unwrap().stdout
}

fn env() -> Vec<(String, String)> {
    [
        ("SWAPPED", SWAPPED),
        ("BEARER", BEARER),
        ("BASIC", BASIC),
        ("QUERY_KEY", QUERY_KEY),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// Every form of every credential that must never come back: the values, and the encodings
/// Portcullis itself wrote them in.
fn sentinels() -> Vec<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    vec![
        SWAPPED.into(),
        BEARER.into(),
        BASIC.into(),
        QUERY_KEY.into(),
        b64(&format!("bot:{BASIC}")),
        "SENTINEL-query%2B%2Fkey".into(),
    ]
}

/// `replies`: each with the status the test expects of it (asserted before the scan).
fn assert_no_leaks(gw: &Gateway, replies: &[(&Reply, u16)]) {
    let sentinels = sentinels();
    let sentinels: Vec<&str> = sentinels.iter().map(String::as_str).collect();
    gw.assert_no_leaks_checked(&sentinels, replies);
}

/// The gateway: everything to 127.0.0.1 allowed; which secret applies depends on the path.
fn start(secrets: &str) -> Gateway {
    let config = format!(
        r#"
policies:
  - {{name: upstream, action: allow, rules: [{{host: 127.0.0.1}}]}}
secrets:
{secrets}
"#
    );
    Gateway::start(
        &config,
        GatewayOptions {
            env: env(),
            ..GatewayOptions::default()
        },
    )
}

/// Issue 13, item 3: a placeholder in any header or query parameter was swapped, so an
/// upstream reflecting a header it does not treat as a credential (here: it carefully masks
/// `Authorization`, but prints `X-Debug` and the query) handed the credential back.
#[test]
fn placeholder_in_an_undeclared_header_or_query_is_not_swapped() {
    let upstream = Echo::start();
    let gw = start(&format!(
        r#"
  - name: swapped
    source: {{type: env, var: SWAPPED}}
    inject: {{style: proxy_token, placeholder: {PLACEHOLDER}}}
    allow_plaintext: true
    rules: [{{host: 127.0.0.1, paths: ["/masked/*"]}}]
"#
    ));
    let path = format!("/masked/x?debug={PLACEHOLDER}");
    let reply = gw.via_proxy(&[
        "-H",
        &format!("Authorization: Bearer {PLACEHOLDER}"),
        "-H",
        &format!("X-Debug: {PLACEHOLDER}"),
        &upstream.url(&path),
    ]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = upstream.seen(&path);
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {SWAPPED}").as_str()),
        "the declared location is swapped"
    );
    assert_eq!(
        seen.header("x-debug"),
        Some(PLACEHOLDER),
        "an undeclared header keeps the placeholder"
    );
    assert_eq!(
        reply.header("x-echo-x-debug"),
        Some(PLACEHOLDER),
        "{reply:?}"
    );
    let record = gw.audit_for(|r| r["path"] == "/masked/x");
    assert_eq!(
        record["transforms"][1]["annotations"]["swapped"]["locations"],
        serde_json::json!(["header:authorization"])
    );
    assert_no_leaks(&gw, &[(&reply, 200)]);
}

/// Issue 13, item 4: `require: true` only checked that the placeholder appeared somewhere,
/// so the workload's own `Authorization: Bearer MINE` went through beside a placeholder in
/// another header.
#[test]
fn own_credential_beside_the_placeholder_is_refused_under_require() {
    let upstream = Echo::start();
    let gw = start(&format!(
        r#"
  - name: swapped
    source: {{type: env, var: SWAPPED}}
    inject: {{style: proxy_token, placeholder: {PLACEHOLDER}, require: true}}
    allow_plaintext: true
    rules: [{{host: 127.0.0.1, paths: ["/echo/*"]}}]
"#
    ));
    let own = gw.via_proxy(&[
        "-H",
        "Authorization: Bearer MINE-workload-own",
        "-H",
        &format!("X-Api-Key: {PLACEHOLDER}"),
        &upstream.url("/echo/own"),
    ]);
    assert_eq!(own.status, 403, "{own:?}");
    assert_eq!(own.json()["error"]["reason"], "foreign_credential");
    // The placeholder inside the same header does not launder the workload's own token.
    let mixed = gw.via_proxy(&[
        "-H",
        &format!("Authorization: Bearer MINE-workload-own,{PLACEHOLDER}"),
        &upstream.url("/echo/mixed"),
    ]);
    assert_eq!(mixed.status, 403, "{mixed:?}");
    assert_eq!(mixed.json()["error"]["reason"], "foreign_credential");
    assert_eq!(upstream.hits(), 0, "nothing reached the upstream");
    let record = gw.audit_for(|r| r["path"] == "/echo/own");
    assert_eq!(record["reason"], "foreign_credential");

    // The placeholder alone, where it is declared: swapped.
    let ok = gw.via_proxy(&[
        "-H",
        &format!("Authorization: Bearer {PLACEHOLDER}"),
        &upstream.url("/echo/ok"),
    ]);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(
        upstream.seen("/echo/ok").header("authorization"),
        Some(format!("Bearer {SWAPPED}").as_str())
    );
    assert_no_leaks(&gw, &[(&own, 403), (&mixed, 403), (&ok, 200)]);
}

/// Issue 13, item 16: credentials were injected into plaintext `http://` requests, so they
/// crossed the network in clear. Claiming `https` in an absolute URL sent to the forward
/// proxy (which still connects in plaintext) does not help.
#[test]
fn credential_is_not_sent_over_plaintext_http() {
    let upstream = Echo::start();
    let gw = start(
        r#"
  - name: strict
    source: {type: env, var: BEARER}
    inject: {style: bearer}
    rules: [{host: 127.0.0.1, paths: ["/echo/strict/*"]}]
  - name: lenient
    source: {type: env, var: SWAPPED}
    inject: {style: bearer}
    allow_plaintext: true
    rules: [{host: 127.0.0.1, paths: ["/echo/lenient/*"]}]
"#,
    );
    let refused = gw.via_proxy(&[&upstream.url("/echo/strict/x")]);
    assert_eq!(refused.status, 403, "{refused:?}");
    let error = &refused.json()["error"];
    assert_eq!(error["reason"], "credential_over_plaintext");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("allow_plaintext"),
        "{error}"
    );
    let record = gw.audit_for(|r| r["path"] == "/echo/strict/x");
    assert_eq!(record["reason"], "credential_over_plaintext");

    // `GET https://…` in absolute form to the plain forward proxy, which would connect in
    // plaintext: refused (Envoy refuses it before asking; were it asked, Portcullis takes
    // the scheme from the listener, never from the request: see
    // extproc::convert::tests::only_the_listener_says_a_request_leaves_over_tls).
    let claimed = raw_http(
        gw.proxy_port,
        &format!(
            "GET https://127.0.0.1:{port}/echo/strict/claimed HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n",
            port = upstream.addr.port()
        ),
    );
    assert!(claimed.starts_with("HTTP/1.1 4"), "{claimed}");
    let claimed_status: u16 = claimed[9..12].parse().unwrap();
    assert_eq!(upstream.hits(), 0, "nothing reached the upstream");

    // A secret that allows plaintext is injected.
    let lenient = gw.via_proxy(&[&upstream.url("/echo/lenient/x")]);
    assert_eq!(lenient.status, 200, "{lenient:?}");
    assert_eq!(
        upstream.seen("/echo/lenient/x").header("authorization"),
        Some(format!("Bearer {SWAPPED}").as_str())
    );
    let fake = Reply {
        status: claimed_status,
        connect_status: 0,
        headers: Vec::new(),
        body: claimed,
        exit: 0,
        stderr: String::new(),
    };
    assert_no_leaks(
        &gw,
        &[(&refused, 403), (&lenient, 200), (&fake, claimed_status)],
    );
}

/// Sends `request` to the proxy port as written; returns everything read back.
fn raw_http(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Issue 13, "response scrubbing": an upstream that echoes the request handed the injected
/// credential to the workload — in a response header, in the body, split over chunks, in
/// an event stream, compressed, or in the encodings Portcullis wrote it in (basic auth's
/// base64, a percent-encoded query parameter).
#[test]
fn echoed_credential_is_scrubbed_from_the_response() {
    let upstream = Echo::start();
    let gw = start(
        r#"
  - name: bearer
    source: {type: env, var: BEARER}
    inject: {style: bearer}
    allow_plaintext: true
    rules: [{host: 127.0.0.1, paths: ["/echo/*", "/chunked/*", "/sse/*", "/gzip/*"]}]
  - name: basic
    source: {type: env, var: BASIC}
    inject: {style: basic, username: bot}
    allow_plaintext: true
    rules: [{host: 127.0.0.1, paths: ["/echo-basic/*"]}]
  - name: query
    source: {type: env, var: QUERY_KEY}
    inject: {style: custom, query: key}
    allow_plaintext: true
    rules: [{host: 127.0.0.1, paths: ["/echo-query/*"]}]
  - name: body
    source: {type: env, var: SWAPPED}
    inject: {style: proxy_token, placeholder: ptok_redteam_Q7x2k9, locations: [body]}
    allow_plaintext: true
    rules: [{host: 127.0.0.1, paths: ["/echo-body/*"]}]
"#,
    );
    let mut replies = Vec::new();
    for path in ["/echo/x", "/chunked/x", "/sse/x"] {
        let reply = gw.via_proxy(&[&upstream.url(path)]);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(
            upstream.seen(path).header("authorization"),
            Some(format!("Bearer {BEARER}").as_str()),
            "the upstream got the credential"
        );
        assert!(
            reply.body.contains(&format!("Bearer {MARKER}")),
            "{path}: {reply:?}"
        );
        assert_eq!(
            reply.header("x-echo-authorization"),
            Some(format!("Bearer {MARKER}").as_str()),
            "{path}: {reply:?}"
        );
        replies.push((reply, 200));
    }
    // The event stream still has all its events.
    assert_eq!(
        replies[2].0.body.matches("data: tick").count(),
        20,
        "{:?}",
        replies[2]
    );
    // Portcullis asked for an identity encoding; an upstream that compresses anyway is not
    // let through unscrubbed.
    let gzip = gw.via_proxy(&["--compressed", &upstream.url("/gzip/x")]);
    assert_eq!(
        upstream.seen("/gzip/x").header("accept-encoding"),
        Some("identity")
    );
    assert_eq!(gzip.status, 502, "{gzip:?}");
    assert_eq!(gzip.json()["error"]["reason"], "response_not_scrubbable");
    replies.push((gzip, 502));
    // Basic auth comes back as base64, a query parameter percent-encoded.
    for path in ["/echo-basic/x", "/echo-query/x"] {
        let reply = gw.via_proxy(&[&upstream.url(path)]);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert!(reply.body.contains(MARKER), "{path}: {reply:?}");
        replies.push((reply, 200));
    }
    // Decided at the body (the swap needs it): the response is asked for then, too.
    let body = format!(r#"{{"api_key":"{PLACEHOLDER}"}}"#);
    let swapped = gw.via_proxy(&[
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body,
        &upstream.url("/echo-body/x"),
    ]);
    assert_eq!(swapped.status, 200, "{swapped:?}");
    assert_eq!(
        upstream.seen("/echo-body/x").body,
        format!(r#"{{"api_key":"{SWAPPED}"}}"#).as_bytes()
    );
    assert!(swapped.body.contains(MARKER), "{swapped:?}");
    replies.push((swapped, 200));
    // Audited (how many, never the value) and counted.
    let record = gw.audit_for(|r| r["event"] == "response_scrubbed" && r["secret"] == "bearer");
    assert!(record["replacements"].as_u64().unwrap() >= 2, "{record}");
    assert!(
        gw.metric("portcullis_response_scrubbed_total{secret=\"bearer\"}")
            .unwrap_or(0.0)
            >= 6.0,
        "{}",
        gw.admin("/metrics").body
    );
    // An upstream that is not there: Envoy's own 503 passes through Portcullis too.
    let dead = crate::common::free_port();
    let gone = gw.via_proxy(&[&format!("http://127.0.0.1:{dead}/echo/gone")]);
    assert_eq!(gone.status, 503, "{gone:?}");
    // The warning would come as the stream's state is dropped, before its open-stream
    // count is (field order): once no stream is open, it would be in the log.
    assert!(
        wait_until(Duration::from_secs(30), || gw
            .metric("portcullis_active_streams")
            == Some(0.0)),
        "ext_proc streams still open:\n{}",
        gw.admin("/metrics").body
    );
    assert!(
        !gw.portcullis_log().contains("never came to be scrubbed"),
        "{}",
        gw.portcullis_log()
    );
    replies.push((gone, 503));
    let replies: Vec<(&Reply, u16)> = replies.iter().map(|(r, status)| (r, *status)).collect();
    assert_no_leaks(&gw, &replies);
}

/// Issue 13, item 16, inside an intercepted CONNECT tunnel (`envoy/https-intercept.yaml`):
/// Envoy sees the request decrypted, yet it leaves over TLS, and gets its credential; the
/// same request as plain HTTP inside a tunnel does not.
#[test]
fn credential_inside_an_intercepted_tunnel_goes_over_tls_only() {
    use crate::common::dns::LoopbackDns;
    use crate::common::{EnvoyMode, TestTls, Upstream};
    let tls = TestTls::generate_for(&["allowed.test"]);
    let secure = Upstream::start(Some(tls.server.clone()));
    let plain = Upstream::start(None);
    let dns = LoopbackDns::start();
    let ca_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["ca", "init", "--dir"])
        .arg(ca_dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let config = format!(
        r#"
interception:
  ca: {{cert_file: {dir}/ca.crt, key_file: {dir}/ca.key}}
policies:
  - {{name: allowed, action: allow, rules: [{{host: allowed.test}}]}}
secrets:
  - name: upstream-api
    source: {{type: env, var: BEARER}}
    inject: {{style: bearer}}
    rules: [{{host: allowed.test}}]
"#,
        dir = ca_dir.path().display()
    ) + &dns.guard_config();
    let gw = Gateway::start(
        &config,
        GatewayOptions {
            mode: EnvoyMode::HttpsIntercept,
            env: env(),
            upstream_ca_pem: Some(tls.ca_pem.clone()),
            ..GatewayOptions::default()
        },
    );
    let cacert = ca_dir.path().join("ca.crt").display().to_string();
    let over_tls = gw.via_proxy(&[
        "--cacert",
        &cacert,
        &format!("https://allowed.test:{}/tls", secure.port()),
    ]);
    assert_eq!(
        (over_tls.connect_status, over_tls.status),
        (200, 200),
        "{over_tls:?}"
    );
    assert_eq!(
        secure.seen()[0].header("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
    // `-p`: plain HTTP through a CONNECT tunnel; decided per request, and plaintext.
    let in_clear = gw.via_proxy(&["-p", &format!("http://allowed.test:{}/plain", plain.port())]);
    assert_eq!(
        (in_clear.connect_status, in_clear.status),
        (200, 403),
        "{in_clear:?}"
    );
    assert_eq!(
        in_clear.json()["error"]["reason"],
        "credential_over_plaintext"
    );
    assert_eq!(plain.hits(), 0);
    assert_no_leaks(&gw, &[(&over_tls, 200), (&in_clear, 403)]);
}

/// The limit of scrubbing, made loud: an Envoy that ignores `mode_override` never sends the
/// response to Portcullis, so nothing can be scrubbed; Portcullis logs it for each request.
#[test]
fn an_envoy_that_ignores_mode_override_is_reported() {
    let upstream = Echo::start();
    let gw = Gateway::start(
        r#"
policies:
  - {name: upstream, action: allow, rules: [{host: 127.0.0.1}]}
secrets:
  - name: bearer
    source: {type: env, var: BEARER}
    inject: {style: bearer}
    allow_plaintext: true
    rules: [{host: 127.0.0.1}]
"#,
        GatewayOptions {
            env: env(),
            envoy_edits: vec![(
                "allow_mode_override: true".into(),
                "allow_mode_override: false".into(),
            )],
            ..GatewayOptions::default()
        },
    );
    let reply = gw.via_proxy(&[&upstream.url("/echo/x")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        crate::common::wait_until(Duration::from_secs(5), || gw
            .portcullis_log()
            .contains("never came to be scrubbed")),
        "{}",
        gw.portcullis_log()
    );
}
