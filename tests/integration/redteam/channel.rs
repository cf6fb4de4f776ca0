//! The channel between Envoy and Portcullis, and what Envoy's listeners take from the workload
//! (X-Forwarded-For, request ids, SNI).

use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::process::Command;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;

use crate::common::dns::LoopbackDns;
use crate::common::tls_probe::{self, ProbeError};
use crate::common::{
    EnvoyMode, Gateway, GatewayOptions, Reply, TestTls, Upstream, curl, wait_until,
};
use crate::interception::Ca;

/// The subnet a workload would like to be: its identity grants `/trusted/*`.
const TRUSTED_SUBNET_CONFIG: &str = r#"
identities:
  - {name: trusted-subnet, source_cidr: 10.99.0.0/16, tags: [net:trusted]}
policies:
  - {name: trusted-only, match_tags: [net:trusted], action: allow,
     rules: [{host: allowed.test, paths: ["/trusted/*"]}]}
  - {name: anyone-status, action: allow, rules: [{host: allowed.test, paths: ["/status"]}]}
"#;

/// An intercepting gateway (explicit proxy or transparent) in front of an HTTPS upstream for
/// `allowed.test`, and a plain one for the tunnelled plain-HTTP case.
struct Intercepting {
    mode: EnvoyMode,
    gw: Gateway,
    tls_upstream: Upstream,
    plain_upstream: Upstream,
    cacert: String,
    _dns: LoopbackDns,
    _ca: Ca,
}

impl Intercepting {
    fn start(mode: EnvoyMode, policies: &str) -> Intercepting {
        let tls = TestTls::generate_for(&["allowed.test"]);
        let tls_upstream = Upstream::start(Some(tls.server.clone()));
        let plain_upstream = Upstream::start(None);
        let dns = LoopbackDns::start();
        let ca = Ca::init();
        let config = format!(
            "interception:\n  ca: {{cert_file: {}, key_file: {}}}\n{policies}{}",
            ca.cert.display(),
            ca.key.display(),
            dns.guard_config()
        );
        let gw = Gateway::start(
            &config,
            GatewayOptions {
                mode,
                upstream_ca_pem: Some(tls.ca_pem.clone()),
                ..GatewayOptions::default()
            },
        );
        let cacert = gw.dir.path().join("portcullis-ca.pem");
        std::fs::copy(&ca.cert, &cacert).unwrap();
        Intercepting {
            mode,
            gw,
            tls_upstream,
            plain_upstream,
            cacert: cacert.display().to_string(),
            _dns: dns,
            _ca: ca,
        }
    }

    /// Every way a request reaches the decision inside an intercepted connection: HTTPS over
    /// HTTP/1.1 and HTTP/2 through CONNECT, plain HTTP through CONNECT (explicit proxy); or
    /// HTTPS over both protocols straight to the listener (transparent).
    fn every_way(&self, path: &str, extra: &[&str]) -> Vec<(&'static str, Reply)> {
        let tls_url = format!("https://allowed.test:{}{path}", self.tls_upstream.port());
        let plain_url = format!("http://allowed.test:{}{path}", self.plain_upstream.port());
        let with = |args: &[&str]| {
            let mut all: Vec<&str> = extra.to_vec();
            all.extend_from_slice(args);
            all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        let run = |args: Vec<String>, proxied: bool| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if proxied {
                self.gw.via_proxy(&args)
            } else {
                curl(self.gw.dir.path(), &args)
            }
        };
        let cacert = self.cacert.as_str();
        match self.mode {
            EnvoyMode::Transparent => {
                let redirect = format!(
                    "allowed.test:{}:127.0.0.1:{}",
                    self.tls_upstream.port(),
                    self.gw.proxy_port
                );
                let base = ["--connect-to", redirect.as_str(), "--cacert", cacert];
                let mut h1 = base.to_vec();
                h1.extend(["--http1.1", tls_url.as_str()]);
                let mut h2 = base.to_vec();
                h2.extend(["--http2", tls_url.as_str()]);
                vec![
                    ("transparent h1", run(with(&h1), false)),
                    ("transparent h2", run(with(&h2), false)),
                ]
            }
            _ => vec![
                (
                    "tunnel h1",
                    run(with(&["--cacert", cacert, "--http1.1", &tls_url]), true),
                ),
                (
                    "tunnel h2",
                    run(with(&["--cacert", cacert, "--http2", &tls_url]), true),
                ),
                ("tunnel plain", run(with(&["-p", &plain_url]), true)),
            ],
        }
    }
}

fn forwarded_for_does_not_choose_the_identity(mode: EnvoyMode) {
    let setup = Intercepting::start(mode, TRUSTED_SUBNET_CONFIG);
    let gw = &setup.gw;
    for (how, reply) in setup.every_way("/trusted/x", &["-H", "X-Forwarded-For: 10.99.0.5"]) {
        assert_eq!(
            reply.status,
            403,
            "{how}: X-Forwarded-For chose the trusted-subnet identity: {reply:?}\n{}",
            gw.envoy_log()
        );
    }
    for record in gw.audit() {
        if record["path"] != "/trusted/x" {
            continue;
        }
        assert_ne!(record["identity"]["name"], "trusted-subnet", "{record}");
        let source = record["identity"]["source"].as_str().unwrap_or_default();
        assert!(
            source.starts_with("127.0.0.1:"),
            "source {source}: {record}"
        );
    }
    assert_eq!(setup.tls_upstream.hits() + setup.plain_upstream.hits(), 0);
}

#[test]
fn forwarded_for_inside_a_tunnel_does_not_choose_the_identity() {
    forwarded_for_does_not_choose_the_identity(EnvoyMode::HttpsIntercept);
}

#[test]
fn forwarded_for_on_the_transparent_listener_does_not_choose_the_identity() {
    forwarded_for_does_not_choose_the_identity(EnvoyMode::Transparent);
}

fn workload_cannot_choose_its_request_id(mode: EnvoyMode) {
    const CHOSEN: &str = "workload-chosen-id-4711";
    let setup = Intercepting::start(mode, TRUSTED_SUBNET_CONFIG);
    let gw = &setup.gw;
    for (how, reply) in setup.every_way("/denied", &["-H", &format!("X-Request-Id: {CHOSEN}")]) {
        assert_eq!(reply.status, 403, "{how}: {reply:?}");
        let id = reply.header("x-portcullis-request-id").unwrap_or_default();
        assert!(
            !id.is_empty() && id != CHOSEN,
            "{how}: the workload chose the id"
        );
        assert_ne!(reply.json()["error"]["request_id"], CHOSEN, "{how}");
    }
    let records = gw.audit();
    assert!(records.iter().any(|r| r["path"] == "/denied"));
    for record in records {
        assert_ne!(record["request_id"], CHOSEN, "{record}");
    }
}

#[test]
fn workload_chosen_request_id_inside_a_tunnel_is_replaced() {
    workload_cannot_choose_its_request_id(EnvoyMode::HttpsIntercept);
}

#[test]
fn workload_chosen_request_id_on_the_transparent_listener_is_replaced() {
    workload_cannot_choose_its_request_id(EnvoyMode::Transparent);
}

#[test]
fn anonymous_tunnel_sends_no_proxy_authorization_upstream() {
    let setup = Intercepting::start(EnvoyMode::HttpsIntercept, TRUSTED_SUBNET_CONFIG);
    for (how, reply) in setup.every_way("/status", &[]) {
        assert_eq!(reply.status, 200, "{how}: {reply:?}");
    }
    let seen: Vec<_> = setup
        .tls_upstream
        .seen()
        .into_iter()
        .chain(setup.plain_upstream.seen())
        .collect();
    assert_eq!(seen.len(), 3);
    for request in seen {
        assert_eq!(request.header("proxy-authorization"), None, "{request:?}");
        assert_eq!(request.header("x-portcullis-connect-authority"), None);
    }
}

/// Anyone may reach `allowed.test` and `127.0.0.1`: the tunnel opens, so only the
/// certificate decision stands between a no-SNI client and the listener.
const OPEN_CONFIG: &str = r#"
policies:
  - {name: anyone, action: allow, rules: [{host: allowed.test}, {host: 127.0.0.1}]}
"#;

/// A TLS handshake that sends no SNI (the client dialled an IP): it must fail at once, not
/// when the client gives up, and be counted as `not_a_host_name`.
///
/// "At once" is shown by who ended the handshake, not by a clock: the regression this pins
/// (the mapper's default name was `*`, a wildcard subscription Envoy never had answered)
/// left the handshake hanging until the client's read timeout, which the probe reports as
/// `TimedOut`, however long it is ([`tls_probe::GIVES_UP_AFTER`], generous for a loaded
/// machine). `Handshake` means the server ended it, and the count says Portcullis refused
/// the name rather than anything timing out.
fn assert_refused_at_once(
    gw: &Gateway,
    handshake: impl FnOnce() -> Result<Vec<Vec<u8>>, ProbeError>,
) {
    let started = Instant::now();
    let result = handshake();
    let took = started.elapsed();
    assert!(
        matches!(result, Err(ProbeError::Handshake(_))),
        "a handshake without SNI got {result:?} after {took:?} (TimedOut: it hung until the \
         client gave up, nothing refused it)"
    );
    eprintln!(
        "a handshake without SNI was refused after {} ms",
        took.as_millis()
    );
    let counted = wait_until(Duration::from_secs(30), || {
        gw.metric(r#"portcullis_certificates_total{result="not_a_host_name"}"#)
            .unwrap_or(0.0)
            >= 1.0
    });
    assert!(
        counted,
        "no not_a_host_name count:\n{}",
        gw.admin("/metrics").body
    );
}

#[test]
fn tls_without_sni_through_a_tunnel_is_refused_at_once() {
    let setup = Intercepting::start(EnvoyMode::HttpsIntercept, OPEN_CONFIG);
    let ca_pem = std::fs::read_to_string(&setup.cacert).unwrap();
    let target = format!("127.0.0.1:{}", setup.tls_upstream.port());
    assert_refused_at_once(&setup.gw, || {
        tls_probe::handshake_via_proxy(setup.gw.proxy_port, &target, None, "127.0.0.1", &ca_pem)
    });
    assert_eq!(setup.tls_upstream.hits(), 0);
}

#[test]
fn tls_without_sni_on_the_transparent_listener_is_refused_at_once() {
    let setup = Intercepting::start(EnvoyMode::Transparent, OPEN_CONFIG);
    let ca_pem = std::fs::read_to_string(&setup.cacert).unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", setup.gw.proxy_port)).unwrap();
    tcp.set_read_timeout(Some(tls_probe::GIVES_UP_AFTER))
        .unwrap();
    assert_refused_at_once(&setup.gw, || {
        tls_probe::handshake(&mut tcp, "127.0.0.1", &ca_pem)
    });
    assert_eq!(setup.tls_upstream.hits(), 0);
}

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// A gRPC channel to the gateway's Portcullis, as Envoy opens it.
async fn grpc_channel(gw: &Gateway) -> tonic::transport::Channel {
    crate::common::grpc_channel(&gw.grpc_socket).await.unwrap()
}

/// One delta SDS stream: sends each request in turn and collects one response for each.
async fn sds_exchange(
    channel: tonic::transport::Channel,
    metadata: &[(&'static str, &str)],
    requests: Vec<DeltaDiscoveryRequest>,
) -> Result<Vec<DeltaDiscoveryResponse>, tonic::Status> {
    let mut client = SecretDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream_of(rx));
    for (key, value) in metadata {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    let mut inbound = client.delta_secrets(request).await?.into_inner();
    let mut responses = Vec::new();
    for message in requests {
        tx.send(message).await.unwrap();
        let response = tokio::time::timeout(Duration::from_secs(20), inbound.message())
            .await
            .expect("an SDS answer within 20 s")?
            .expect("the stream stays open");
        responses.push(response);
    }
    Ok(responses)
}

fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

fn subscribe(names: Vec<String>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: SECRET_TYPE.into(),
        resource_names_subscribe: names,
        ..Default::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sds_flooded_with_names_mints_nothing_more() {
    let setup = Intercepting::start(EnvoyMode::HttpsIntercept, OPEN_CONFIG);
    let gw = &setup.gw;
    let flood: Vec<String> = (0..10_000).map(|i| format!("n{i}.flood.test")).collect();
    let responses = runtime().block_on(async {
        sds_exchange(
            grpc_channel(gw).await,
            &[("x-portcullis-tags", "listener:forward-proxy")],
            vec![subscribe(flood), subscribe(vec!["allowed.test".into()])],
        )
        .await
        .unwrap()
    });
    assert_eq!(responses[0].removed_resources.len(), 10_000);
    assert!(
        responses[1].resources.is_empty(),
        "a stream holding 10000 names got another leaf (and its key)"
    );
    assert_eq!(responses[1].removed_resources, ["allowed.test"]);
    assert!(
        gw.metric(r#"portcullis_certificates_total{result="too_many_names"}"#)
            .unwrap_or(0.0)
            >= 1.0,
        "{}",
        gw.admin("/metrics").body
    );
}

#[test]
fn tls_server_name_other_than_the_connect_target_gets_no_request_through() {
    const TWO_HOSTS: &str = r#"
policies:
  - {name: anyone, action: allow, rules: [{host: allowed.test}, {host: other.test}]}
"#;
    let setup = Intercepting::start(EnvoyMode::HttpsIntercept, TWO_HOSTS);
    let gw = &setup.gw;
    let port = setup.tls_upstream.port();
    // The tunnel goes to allowed.test, the TLS inside names other.test (a leaf Envoy holds,
    // never the workload): every request inside is refused, whatever its Host says.
    let redirect = format!("other.test:{port}:allowed.test:{port}");
    for host in ["other.test", "allowed.test"] {
        let reply = gw.via_proxy(&[
            "--cacert",
            &setup.cacert,
            "--connect-to",
            &redirect,
            "-H",
            &format!("Host: {host}:{port}"),
            &format!("https://other.test:{port}/x"),
        ]);
        assert_eq!(reply.connect_status, 200, "{reply:?}");
        assert_eq!(reply.status, 421, "Host {host}: {reply:?}");
    }
    let record = gw.audit_for(|r| r["path"] == "/x");
    assert_eq!(record["reason"], "misdirected_request", "{record}");
    assert_eq!(setup.tls_upstream.hits(), 0);
}

const CHANNEL_SECRET: &str = "SENTINEL-channel-credential-51f0";

/// A plain-HTTP upstream anyone may reach, with a credential injected into every request.
const CREDENTIAL_CONFIG: &str = r#"
policies:
  - {name: anyone, action: allow, rules: [{host: api.test}]}
secrets:
  - name: api-key
    source: {type: env, var: CHANNEL_SECRET}
    inject: {style: bearer}
    allow_plaintext: true   # the test's upstream is plain HTTP
    rules: [{host: api.test}]
"#;

/// A gRPC message frame holding the request headers of `GET http://api.test/x`, as Envoy
/// would send them on an ext_proc stream.
fn ext_proc_frame() -> Vec<u8> {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
    use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingRequest};
    use prost::Message as _;
    let header = |key: &str, value: &str| HeaderValue {
        key: key.into(),
        raw_value: value.as_bytes().to_vec(),
        ..Default::default()
    };
    let message = ProcessingRequest {
        request: Some(Message::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![
                    header(":method", "GET"),
                    header(":scheme", "http"),
                    header(":authority", "api.test"),
                    header(":path", "/x"),
                ],
            }),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// Calls ext_proc over Portcullis's socket with curl (HTTP/2, one gRPC frame), as the user
/// `as_user` (`None`: this test's own user). Returns curl's exit code and what it received.
fn ext_proc_with_curl(gw: &Gateway, as_user: Option<u32>) -> (i32, Vec<u8>) {
    use std::io::Write as _;
    let mut command = match as_user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "curl",
            ]);
            c
        }
        None => Command::new("curl"),
    };
    command
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "--unix-socket",
        ])
        .arg(&gw.grpc_socket)
        .args([
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            "@-",
            "http://portcullis/envoy.service.ext_proc.v3.ExternalProcessor/Process",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("curl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&ext_proc_frame())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut seen = out.stdout;
    seen.extend_from_slice(&out.stderr);
    (out.status.code().unwrap_or(-1), seen)
}

#[test]
fn another_local_user_gets_no_decision_and_no_credential_from_the_grpc_socket() {
    // api.test resolves to loopback (the network guard resolves allowed hosts).
    let config = CREDENTIAL_CONFIG.to_owned() + &LoopbackDns::start().guard_config();
    let gw = Gateway::start(
        &config,
        GatewayOptions {
            env: vec![("CHANNEL_SECRET".into(), CHANNEL_SECRET.into())],
            ..GatewayOptions::default()
        },
    );
    // Envoy's own user (here: this test's) gets the decision, credential included: what
    // the socket is worth to an attacker.
    let (exit, seen) = ext_proc_with_curl(&gw, None);
    assert_eq!(exit, 0, "{}", String::from_utf8_lossy(&seen));
    assert!(
        String::from_utf8_lossy(&seen).contains(CHANNEL_SECRET),
        "the owner's call is decided with the credential"
    );
    // Anyone else on the host (nobody, 65534) cannot connect: the directory is opened up
    // for the test, so the socket's own mode is what refuses.
    std::fs::set_permissions(gw.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (exit, seen) = ext_proc_with_curl(&gw, Some(65534));
    let seen = String::from_utf8_lossy(&seen);
    assert_ne!(exit, 0, "another user reached the gRPC socket: {seen}");
    assert!(!seen.contains(CHANNEL_SECRET), "{seen}");
    let meta = std::fs::symlink_metadata(&gw.grpc_socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "owner-only");
}

/// The channel's own PKI, as a deployment would issue it: one CA, Portcullis's server
/// certificate, Envoy's client certificate.
struct ChannelPki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

impl ChannelPki {
    fn generate(name: &str) -> ChannelPki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = |names: &[&str]| {
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                    .unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        ChannelPki {
            ca_pem: ca.pem(),
            server: leaf(&["portcullis.test"]),
            client: leaf(&["envoy.test"]),
        }
    }
}

/// Portcullis alone, its gRPC port on TCP with mutual TLS.
struct MutualTlsPortcullis {
    dir: tempfile::TempDir,
    grpc_port: u16,
    _process: crate::common::Process,
}

impl MutualTlsPortcullis {
    fn start(pki: &ChannelPki) -> MutualTlsPortcullis {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let (cert, key) = (
            write("server.crt", &pki.server.0),
            write("server.key", &pki.server.1),
        );
        let ca = write("ca.crt", &pki.ca_pem);
        let log_path = dir.path().join("portcullis.log");
        let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        // The ports we probed free may be taken before Portcullis binds them (tests run in
        // parallel): then it exits saying so, and starts again on fresh ones.
        let mut attempt = 0;
        let (grpc_port, admin_port, mut process) = loop {
            let grpc_port = crate::common::free_port();
            let admin_port = crate::common::free_port();
            let config = write(
                "portcullis.yaml",
                &format!(
                    r#"
server:
  grpc_listen: 127.0.0.1:{grpc_port}
  admin_listen: 127.0.0.1:{admin_port}
  grpc_tls: {{cert_file: {cert}, key_file: {key}, client_ca_file: {ca}}}
policies:
  - {{name: trusted-listener, match_tags: [listener:trusted], action: allow, rules: [{{host: api.test}}]}}
  - {{name: proxied, match_tags: [listener:forward-proxy], action: allow, rules: [{{host: 127.0.0.1}}]}}
secrets:
  - name: api-key
    source: {{type: env, var: CHANNEL_SECRET}}
    inject: {{style: bearer}}
    allow_plaintext: true   # the test's upstream is plain HTTP
    rules: [{{host: api.test}}, {{host: 127.0.0.1}}]
{guard}"#,
                    guard = LoopbackDns::start().guard_config()
                ),
            );
            let log = std::fs::File::create(dir.path().join("portcullis.log")).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args(["serve", "--config", &config])
                .env("CHANNEL_SECRET", CHANNEL_SECRET)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut process = crate::common::Process { child };
            wait_until(Duration::from_secs(20), || {
                !process.is_running() || read_log().contains("portcullis is serving")
            });
            let taken = !process.is_running() && read_log().contains("Address already in use");
            if !taken {
                break (grpc_port, admin_port, process);
            }
            attempt += 1;
            assert!(attempt < 3, "ports taken three times: {}", read_log());
            eprintln!("channel: a port Portcullis was given was taken; retrying on others");
        };
        let url = format!("http://127.0.0.1:{admin_port}/readyz");
        let ready = wait_until(Duration::from_secs(20), || {
            process.is_running() && curl(dir.path(), &[&url]).status == 200
        });
        assert!(
            ready,
            "{}",
            std::fs::read_to_string(dir.path().join("portcullis.log")).unwrap()
        );
        MutualTlsPortcullis {
            dir,
            grpc_port,
            _process: process,
        }
    }

    /// One ext_proc call for `GET http://api.test/x` carrying `x-portcullis-tags`, over TLS
    /// trusting the channel CA and presenting `client` (or no certificate).
    fn decide(&self, ca_pem: &str, client: Option<&(String, String)>) -> Result<String, String> {
        use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
        use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
        use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
        use prost::Message as _;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let frame = ext_proc_frame();
        let request = ProcessingRequest::decode(&frame[5..]).unwrap();
        let port = self.grpc_port;
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .domain_name("portcullis.test");
        if let Some((cert, key)) = client {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        runtime().block_on(async move {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
                    .unwrap()
                    .tls_config(tls)
                    .map_err(|e| format!("{e:?}"))?
                    .connect()
                    .await
                    .map_err(|e| format!("connect: {e:?}"))?;
            let mut request = tonic::Request::new(futures::stream::iter(vec![request]));
            request
                .metadata_mut()
                .insert("x-portcullis-tags", "listener:trusted".parse().unwrap());
            let mut inbound = ExternalProcessorClient::new(channel)
                .process(request)
                .await
                .map_err(|e| format!("process: {e:?}"))?
                .into_inner();
            let answer = inbound
                .message()
                .await
                .map_err(|e| format!("answer: {e:?}"))?
                .ok_or("no answer")?;
            // The headers Portcullis told Envoy to set, values as text.
            let set = match answer.response {
                Some(Answer::RequestHeaders(headers)) => headers
                    .response
                    .and_then(|r| r.header_mutation)
                    .map(|m| m.set_headers)
                    .unwrap_or_default(),
                other => return Err(format!("not a headers answer: {other:?}")),
            };
            Ok(set
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| format!("{}: {}", h.key, String::from_utf8_lossy(&h.raw_value)))
                .collect::<Vec<_>>()
                .join("\n"))
        })
    }
}

#[test]
fn grpc_over_tcp_answers_only_envoy_with_its_client_certificate() {
    let pki = ChannelPki::generate("portcullis channel CA");
    let portcullis = MutualTlsPortcullis::start(&pki);
    // Envoy, with the deployment's client certificate: decided with its listener's tags,
    // credential included.
    let envoy = portcullis.decide(&pki.ca_pem, Some(&pki.client)).unwrap();
    assert!(envoy.contains(CHANNEL_SECRET), "{envoy}");
    // No client certificate, or one from another CA: no decision, no credential, whatever
    // tags it claims.
    let stranger = ChannelPki::generate("someone else's CA");
    for (who, client) in [
        ("no certificate", None),
        ("another CA", Some(&stranger.client)),
    ] {
        let answer = portcullis.decide(&pki.ca_pem, client);
        assert!(answer.is_err(), "{who}: {answer:?}");
        assert!(!format!("{answer:?}").contains(CHANNEL_SECRET));
    }
    // Plaintext to the TLS port: nothing either.
    let plain = curl(
        portcullis.dir.path(),
        &[
            "--http2-prior-knowledge",
            &format!("http://127.0.0.1:{}/", portcullis.grpc_port),
        ],
    );
    assert_ne!(plain.exit, 0, "{plain:?}");
}

#[test]
fn plaintext_tcp_grpc_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.yaml");
    std::fs::write(&config, "policies: []\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&config)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("server.grpc_listen"), "{stderr}");
    assert!(stderr.contains("server.grpc_tls"), "{stderr}");
}

/// The separate topology's channel end to end: the shipped forward-proxy config with the
/// `portcullis` cluster turned into TCP with the client certificate and Portcullis's name
/// (what the Helm chart renders), against Portcullis with `server.grpc_tls`.
#[test]
fn envoy_reaches_portcullis_over_mutual_tls() {
    let pki = ChannelPki::generate("portcullis channel CA");
    let portcullis = MutualTlsPortcullis::start(&pki);
    let upstream = Upstream::start(None);
    let dir = portcullis.dir.path();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert, key) = (
        write("envoy.crt", &pki.client.0),
        write("envoy.key", &pki.client.1),
    );
    let ca = write("channel-ca.crt", &pki.ca_pem);
    let (proxy_port, admin_port) = (crate::common::free_port(), crate::common::free_port());
    let mut text =
        std::fs::read_to_string(crate::common::repo().join("envoy/forward-proxy.yaml")).unwrap();
    for (from, to) in [
        (
            "port_value: 10000".to_owned(),
            format!("port_value: {proxy_port}"),
        ),
        (
            "port_value: 9902".to_owned(),
            format!("port_value: {admin_port}"),
        ),
        (
            "{pipe: {path: /run/portcullis/grpc.sock}}".to_owned(),
            format!(
                "{{socket_address: {{address: 127.0.0.1, port_value: {}}}}}",
                portcullis.grpc_port
            ),
        ),
        (
            "  - name: portcullis\n    type: STATIC\n".to_owned(),
            format!(
                "  - name: portcullis\n    type: STATIC\n    transport_socket:\n      \
                 name: envoy.transport_sockets.tls\n      typed_config:\n        \
                 \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        \
                 sni: portcullis.test\n        common_tls_context:\n          \
                 alpn_protocols: [h2]\n          \
                 tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]\n          \
                 validation_context:\n            trusted_ca: {{filename: {ca}}}\n            \
                 match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: portcullis.test}}}}]\n"
            ),
        ),
    ] {
        assert_eq!(text.matches(from.as_str()).count(), 1, "{from}");
        text = text.replace(from.as_str(), &to);
    }
    // No directory shared with Portcullis in this topology: Envoy's access log file goes to
    // this test's directory, unread (the chart's separate topology swaps in the gRPC service).
    text = text.replace(
        crate::common::ENVOY_ACCESS_LOG_IN_ENVOY_CONFIGS,
        &dir.join("access.jsonl").display().to_string(),
    );
    let config = write("envoy.yaml", &text);
    let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
    let child = Command::new(crate::common::envoy_binary())
        .args([
            "-c",
            &config,
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ])
        .args(["--concurrency", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut envoy = crate::common::Process { child };
    let ready_url = format!("http://127.0.0.1:{admin_port}/ready");
    let ready = wait_until(Duration::from_secs(20), || {
        envoy.is_running() && curl(dir, &[&ready_url]).status == 200
    });
    assert!(
        ready,
        "{}",
        std::fs::read_to_string(dir.join("envoy.log")).unwrap()
    );
    let reply = curl(
        dir,
        &[
            "--proxy",
            &format!("http://127.0.0.1:{proxy_port}"),
            &format!("http://127.0.0.1:{}/over-mtls", upstream.port()),
        ],
    );
    assert_eq!(
        reply.status,
        200,
        "{reply:?}\n{}",
        std::fs::read_to_string(dir.join("envoy.log")).unwrap()
    );
    assert_eq!(
        upstream.seen()[0].header("authorization"),
        Some(format!("Bearer {CHANNEL_SECRET}").as_str()),
        "decided by Portcullis over the mutual-TLS channel"
    );
}
