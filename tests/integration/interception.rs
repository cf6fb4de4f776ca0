//! HTTPS interception: Envoy terminates the workload's TLS with leaf certificates that
//! Portcullis mints over SDS, so paths are visible to policy and credentials can be
//! injected into HTTPS requests. An HTTPS upstream with its own test CA, and a DNS
//! stand-in that resolves `allowed.test` and `denied.test` to loopback.

use std::path::PathBuf;
use std::process::Command;

use crate::common::dns::LoopbackDns;
use crate::common::tls_probe::{self, ProbeError};
use crate::common::{EnvoyMode, Gateway, GatewayOptions, TestTls, Upstream, curl};

const TOKEN: &str = "ptok-intercept-7d1c";
const SECRET: &str = "SENTINEL-intercepted-credential-93be";

/// A Portcullis CA made by the CLI, as a user would.
pub(crate) struct Ca {
    _dir: tempfile::TempDir,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl Ca {
    pub(crate) fn init() -> Ca {
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

    fn pem(&self) -> String {
        std::fs::read_to_string(&self.cert).unwrap()
    }
}

fn config(ca: &Ca, upstream_port: u16) -> String {
    format!(
        r#"
interception:
  ca: {{cert_file: {cert}, key_file: {key}}}
identities:
  - name: ci-agent
    token: {{env: INTERCEPT_TOKEN}}
    tags: [team:ci]
policies:
  - name: allowed-paths
    match_tags: [team:ci]
    action: allow
    rules: [{{host: allowed.test, paths: ["/allowed/*"], methods: [GET]}}]
  - name: transparent-clients
    match_tags: [listener:transparent]
    action: allow
    rules: [{{host: allowed.test, paths: ["/allowed/*"], methods: [GET]}}]
  - name: anyone-status
    action: allow
    rules: [{{host: allowed.test, paths: ["/status"]}}]
  - name: never-there
    action: deny
    rules: [{{host: denied.test}}]
secrets:
  - name: upstream-api
    source: {{type: env, var: INTERCEPT_SECRET}}
    allow_plaintext: true
    inject: {{style: bearer}}
    rules: [{{host: "allowed.test:{upstream_port}"}}]
"#,
        cert = ca.cert.display(),
        key = ca.key.display(),
    )
}

fn start(
    mode: EnvoyMode,
    ca: &Ca,
    dns: &LoopbackDns,
    upstream: &Upstream,
    tls: &TestTls,
) -> Gateway {
    Gateway::start(
        &(config(ca, upstream.port()) + &dns.guard_config()),
        GatewayOptions {
            mode,
            env: vec![
                ("INTERCEPT_TOKEN".into(), TOKEN.into()),
                ("INTERCEPT_SECRET".into(), SECRET.into()),
            ],
            upstream_ca_pem: Some(tls.ca_pem.clone()),
            ..GatewayOptions::default()
        },
    )
}

/// The leaf names exactly `host`, is not a CA, and is signed by the Portcullis CA, which
/// the handshake (trusting only that CA) already required.
fn assert_leaf_for(chain: &[Vec<u8>], host: &str, ca_pem: &str) {
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let ca_der = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .unwrap()
        .1;
    let ca = ca_der.parse_x509().unwrap();
    let sans = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", sans.value.general_names),
        format!("[DNSName({host:?})]")
    );
    assert!(!leaf.is_ca());
    assert_eq!(leaf.issuer(), ca.subject());
    leaf.verify_signature(Some(ca.public_key()))
        .expect("signed by the Portcullis CA");
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(lifetime <= 24 * 3600 + 600, "short-lived: {lifetime} s");
}

fn write_ca(gw: &Gateway, ca: &Ca) -> String {
    let path = gw.dir.path().join("portcullis-ca.pem");
    std::fs::copy(&ca.cert, &path).unwrap();
    path.display().to_string()
}

#[test]
fn explicit_proxy_intercepts_https_decides_paths_and_injects_credentials() {
    let tls = TestTls::generate_for(&["allowed.test"]);
    let upstream = Upstream::start(Some(tls.server.clone()));
    let dns = LoopbackDns::start();
    let ca = Ca::init();
    let gw = start(EnvoyMode::HttpsIntercept, &ca, &dns, &upstream, &tls);
    let cacert = write_ca(&gw, &ca);
    let proxy_auth = format!("Proxy-Authorization: Bearer {TOKEN}");
    let url = |path: &str| format!("https://allowed.test:{}{path}", upstream.port());

    // Allowed: the path is visible to policy, the credential is injected, the proxy
    // token never leaves.
    let ok = gw.via_proxy(&[
        "--proxy-header",
        &proxy_auth,
        "--cacert",
        &cacert,
        &url("/allowed/repo?page=2"),
    ]);
    assert_eq!(
        (ok.connect_status, ok.status),
        (200, 200),
        "{ok:?}\n{}",
        gw.envoy_log()
    );
    let seen = &upstream.seen()[0];
    assert_eq!(seen.path, "/allowed/repo?page=2");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(seen.header("proxy-authorization"), None);
    assert_eq!(seen.header("x-portcullis-connect-authority"), None);
    let record = gw.audit_for(|r| r["path"] == "/allowed/repo" && r["decision"] == "ALLOWED");
    assert_eq!(record["scheme"], "https");
    assert_eq!(
        record["identity"]["name"], "ci-agent",
        "the CONNECT's token names the inner request's workload"
    );
    assert!(
        record["identity"]["source"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(
        record["transforms"][1]["annotations"]["injected"]["secret"],
        "upstream-api"
    );

    // A denied path on an allowed host: the JSON 403, nothing reaches the upstream.
    let denied = gw.via_proxy(&[
        "--proxy-header",
        &proxy_auth,
        "--cacert",
        &cacert,
        &url("/admin"),
    ]);
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json()["error"]["type"], "policy_denied");
    assert_eq!(denied.json()["error"]["reason"], "no_matching_policy");
    assert!(denied.header("x-portcullis-request-id").is_some());

    // Without the workload's token the tunnel opens (anyone may GET /status) but the
    // path needs team:ci.
    let anonymous = gw.via_proxy(&["--cacert", &cacert, &url("/allowed/repo")]);
    assert_eq!(
        (anonymous.connect_status, anonymous.status),
        (200, 403),
        "{anonymous:?}"
    );

    // A denied host fails at CONNECT with 403.
    let host_denied = gw.via_proxy(&[
        "--proxy-header",
        &proxy_auth,
        "--cacert",
        &cacert,
        &format!("https://denied.test:{}/allowed/x", upstream.port()),
    ]);
    assert_eq!(host_denied.connect_status, 403, "{host_denied:?}");
    assert_ne!(host_denied.exit, 0);
    let record = gw.audit_for(|r| r["method"] == "CONNECT" && r["host"] == "denied.test");
    assert_eq!(record["policy"], "never-there");

    // The leaf presented for the SNI is for that name and chains to the Portcullis CA.
    let target = format!("allowed.test:{}", upstream.port());
    let chain = tls_probe::handshake_via_proxy(
        gw.proxy_port,
        &target,
        Some(TOKEN),
        "allowed.test",
        &ca.pem(),
    )
    .expect("a certificate for allowed.test");
    assert_leaf_for(&chain, "allowed.test", &ca.pem());

    // Inside an allowed tunnel, a ClientHello for a host no policy allows gets no
    // certificate: the handshake fails before any request byte is sent.
    let refused = tls_probe::handshake_via_proxy(
        gw.proxy_port,
        &target,
        Some(TOKEN),
        "denied.test",
        &ca.pem(),
    );
    assert!(
        matches!(refused, Err(ProbeError::Handshake(_))),
        "{refused:?}"
    );
    let refused_sni = tls_probe::handshake_via_proxy(
        gw.proxy_port,
        &target,
        Some(TOKEN),
        "elsewhere.example",
        &ca.pem(),
    );
    assert!(
        matches!(refused_sni, Err(ProbeError::Handshake(_))),
        "{refused_sni:?}"
    );
    assert_eq!(
        gw.metric(r#"portcullis_certificates_total{result="issued"}"#),
        Some(1.0),
        "one leaf, for allowed.test only"
    );
    assert!(
        gw.metric(r#"portcullis_certificates_total{result="no_policy_could_allow"}"#) >= Some(2.0)
    );

    // A request inside the tunnel for another host than the tunnel's is refused (421).
    let misdirected = gw.via_proxy(&[
        "--proxy-header",
        &proxy_auth,
        "--cacert",
        &cacert,
        "-H",
        "Host: denied.test",
        &url("/allowed/x"),
    ]);
    assert_eq!(misdirected.status, 421, "{misdirected:?}");
    assert_eq!(misdirected.json()["error"]["reason"], "misdirected_request");
    // A Proxy-Authorization sent inside an anonymous tunnel cannot change the workload:
    // Envoy overwrites it with the CONNECT's (none).
    let smuggled = gw.via_proxy(&["--cacert", &cacert, "-H", &proxy_auth, &url("/allowed/x")]);
    assert_eq!(
        (smuggled.connect_status, smuggled.status),
        (200, 403),
        "{smuggled:?}"
    );
    let record =
        gw.audit_for(|r| r["request_id"] == smuggled.header("x-portcullis-request-id").unwrap());
    assert_eq!(record["identity"]["kind"], "gateway");

    assert_eq!(
        upstream.hits(),
        1,
        "only the allowed request reached the upstream"
    );
    gw.assert_no_leaks_checked(
        &[SECRET, TOKEN],
        &[(&ok, 200), (&denied, 403), (&misdirected, 421)],
    );
}

#[test]
fn transparent_mode_intercepts_by_sni() {
    let tls = TestTls::generate_for(&["allowed.test"]);
    let upstream = Upstream::start(Some(tls.server.clone()));
    let dns = LoopbackDns::start();
    let ca = Ca::init();
    let gw = start(EnvoyMode::Transparent, &ca, &dns, &upstream, &tls);
    let cacert = write_ca(&gw, &ca);
    // What a REDIRECT rule does: the workload dials allowed.test:PORT and lands on Envoy.
    let redirect = |host: &str| format!("{host}:{}:127.0.0.1:{}", upstream.port(), gw.proxy_port);
    let get = |host: &str, path: &str, extra: &[&str]| {
        let url = format!("https://{host}:{}{path}", upstream.port());
        let redirect = redirect(host);
        let mut args = vec![
            "--connect-to",
            redirect.as_str(),
            "--cacert",
            cacert.as_str(),
        ];
        args.extend_from_slice(extra);
        args.push(url.as_str());
        curl(gw.dir.path(), &args)
    };

    let ok = get("allowed.test", "/allowed/transparent", &[]);
    assert_eq!(ok.status, 200, "{ok:?}\n{}", gw.envoy_log());
    let seen = &upstream.seen()[0];
    assert_eq!(seen.path, "/allowed/transparent");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    let record = gw.audit_for(|r| r["path"] == "/allowed/transparent");
    assert_eq!(record["policy"], "transparent-clients");
    assert_eq!(record["scheme"], "https");

    let denied = get("allowed.test", "/admin", &[]);
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json()["error"]["type"], "policy_denied");

    // No certificate for a denied host: the handshake fails.
    let host_denied = get("denied.test", "/allowed/x", &[]);
    assert_eq!(host_denied.status, 0, "{host_denied:?}");
    assert_ne!(host_denied.exit, 0);
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", gw.proxy_port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let refused = tls_probe::handshake(&mut tcp, "denied.test", &ca.pem());
    assert!(
        matches!(refused, Err(ProbeError::Handshake(_))),
        "{refused:?}"
    );
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", gw.proxy_port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let chain = tls_probe::handshake(&mut tcp, "allowed.test", &ca.pem()).unwrap();
    assert_leaf_for(&chain, "allowed.test", &ca.pem());

    // SNI and Host must agree.
    let misdirected = get("allowed.test", "/allowed/x", &["-H", "Host: denied.test"]);
    assert_eq!(misdirected.status, 421, "{misdirected:?}");

    assert_eq!(upstream.hits(), 1);
    gw.assert_no_leaks_checked(
        &[SECRET],
        &[(&ok, 200), (&denied, 403), (&misdirected, 421)],
    );
}

#[test]
fn a_ca_whose_key_does_not_match_is_refused_with_the_field_and_file() {
    let one = Ca::init();
    let two = Ca::init();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.yaml");
    std::fs::write(
        &config,
        format!(
            "interception:\n  ca: {{cert_file: {}, key_file: {}}}\n",
            one.cert.display(),
            two.key.display()
        ),
    )
    .unwrap();
    for args in [vec!["validate"], vec!["serve", "--config"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(&args)
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("interception.ca.key_file"), "{text}");
        assert!(
            text.contains("does not belong to the CA certificate"),
            "{text}"
        );
        assert!(text.contains(&two.key.display().to_string()), "{text}");
        let key = std::fs::read_to_string(&two.key).unwrap();
        let body = key.lines().nth(1).unwrap();
        assert!(!text.contains(body), "the key never appears in an error");
    }
}

#[test]
fn plain_http_inside_an_intercepted_tunnel_is_decided_per_request() {
    let tls = TestTls::generate_for(&["allowed.test"]);
    let upstream = Upstream::start(None);
    let dns = LoopbackDns::start();
    let ca = Ca::init();
    let gw = start(EnvoyMode::HttpsIntercept, &ca, &dns, &upstream, &tls);
    let proxy_auth = format!("Proxy-Authorization: Bearer {TOKEN}");
    let url = |path: &str| format!("http://allowed.test:{}{path}", upstream.port());
    // `-p`: curl tunnels plain HTTP through CONNECT instead of sending it to the proxy.
    let ok = gw.via_proxy(&["-p", "--proxy-header", &proxy_auth, &url("/allowed/plain")]);
    assert_eq!((ok.connect_status, ok.status), (200, 200), "{ok:?}");
    assert_eq!(upstream.seen()[0].path, "/allowed/plain");
    assert_eq!(upstream.seen()[0].header("proxy-authorization"), None);
    let record = gw.audit_for(|r| r["path"] == "/allowed/plain");
    assert_eq!(record["scheme"], "http");
    assert_eq!(record["identity"]["name"], "ci-agent");
    let denied = gw.via_proxy(&["-p", "--proxy-header", &proxy_auth, &url("/admin")]);
    assert_eq!(
        (denied.connect_status, denied.status),
        (200, 403),
        "{denied:?}"
    );
    // Not HTTP at all inside the tunnel: the connection is closed, nothing goes upstream
    // (not as a request, nor as bytes over a connection of its own).
    let connections = upstream.connections();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", gw.proxy_port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    use std::io::{Read, Write};
    let target = format!("allowed.test:{}", upstream.port());
    write!(
        tcp,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{proxy_auth}\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    tcp.write_all(b"\x00\x01binary protocol, not HTTP\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let closed = tcp.read_to_end(&mut rest);
    assert!(closed.is_ok(), "the gateway closes the tunnel: {closed:?}");
    let rest = String::from_utf8_lossy(&rest);
    // Whatever came back, it is not the upstream's (the echo upstream marks each of its
    // answers `x-upstream: echo`); and bytes relayed as they are would have reached it over
    // a connection of their own, which it counts.
    assert!(
        !rest.to_ascii_lowercase().contains("x-upstream"),
        "the upstream answered: {rest:?}"
    );
    assert_eq!(
        upstream.connections(),
        connections,
        "no connection reached the upstream for the tunnel's bytes: {rest:?}"
    );
    assert_eq!(
        upstream.hits(),
        1,
        "only the allowed request reached the upstream"
    );
}
