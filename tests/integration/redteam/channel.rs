//! The channel between Envoy and Portcullis, and what Envoy's listeners take from the workload
//! (X-Forwarded-For, request ids, SNI).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::dns::LoopbackDns;
use crate::common::tls_probe::{self, ProbeError};
use crate::common::{
    EnvoyMode, Gateway, GatewayOptions, Reply, TestTls, Upstream, curl, wait_until,
};

/// A Portcullis CA made by the CLI, as a user would.
struct Ca {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    fn init() -> Ca {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["ca", "init", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Ca {
            cert: dir.path().join("ca.crt"),
            key: dir.path().join("ca.key"),
            _dir: dir,
        }
    }
}

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
            "interception:\n  ca: {{cert_file: {}, key_file: {}}}\n{policies}",
            ca.cert.display(),
            ca.key.display()
        );
        let gw = Gateway::start(
            &config,
            GatewayOptions {
                mode,
                envoy_edits: vec![dns.envoy_edit()],
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
fn assert_refused_at_once(
    gw: &Gateway,
    handshake: impl FnOnce() -> Result<Vec<Vec<u8>>, ProbeError>,
) {
    let started = Instant::now();
    let result = handshake();
    let took = started.elapsed();
    assert!(
        matches!(result, Err(ProbeError::Handshake(_))),
        "a handshake without SNI got {result:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "a handshake without SNI took {took:?} to fail (the probe gives up after 10 s)"
    );
    let counted = wait_until(Duration::from_secs(3), || {
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
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_refused_at_once(&setup.gw, || {
        tls_probe::handshake(&mut tcp, "127.0.0.1", &ca_pem)
    });
    assert_eq!(setup.tls_upstream.hits(), 0);
}
