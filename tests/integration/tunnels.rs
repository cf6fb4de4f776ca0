//! HTTPS egress without interception: CONNECT tunnels decided on their target, and
//! base-URL mode where Envoy originates TLS with certificate validation.

use crate::common::{EnvoyMode, Gateway, GatewayOptions, TestTls, Upstream};

#[test]
fn connect_is_decided_on_the_target_and_tunnelled_when_allowed() {
    let tls = TestTls::generate();
    let upstream = Upstream::start(Some(tls.server.clone()));
    let gw = Gateway::start(
        &format!(
            r#"
policies:
  - {{name: tunnel-localhost, action: allow, rules: [{{host: "localhost:{port}", methods: [CONNECT]}}]}}
  - {{name: get-only-by-ip, action: allow, rules: [{{host: 127.0.0.1, methods: [GET]}}]}}
"#,
            port = upstream.port()
        ),
        GatewayOptions::default(),
    );
    let ca = gw.dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let ca = ca.display().to_string();

    let reply = gw.via_proxy(&[
        "--cacert",
        &ca,
        &format!("https://localhost:{}/through/tunnel", upstream.port()),
    ]);
    assert_eq!(reply.connect_status, 200, "{reply:?}");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.seen()[0].path, "/through/tunnel");
    let record = gw.audit_for(|r| r["method"] == "CONNECT" && r["decision"] == "ALLOWED");
    assert_eq!(record["host"], "localhost");
    assert_eq!(record["port"], upstream.port());
    assert_eq!(record["policy"], "tunnel-localhost");

    // A GET-only rule cannot open an opaque tunnel; the refusal comes before any byte flows.
    let denied = gw.via_proxy(&[
        "--cacert",
        &ca,
        &format!("https://127.0.0.1:{}/x", upstream.port()),
    ]);
    assert_eq!(denied.connect_status, 403, "{denied:?}");
    assert_ne!(denied.exit, 0);
    let other_port = gw.via_proxy(&["--cacert", &ca, "https://localhost:1/x"]);
    assert_eq!(other_port.connect_status, 403);
    assert_eq!(
        upstream.hits(),
        1,
        "denied tunnels never reached the upstream"
    );
    let record = gw.audit_for(|r| r["method"] == "CONNECT" && r["decision"] == "DENIED");
    assert_eq!(record["reason"], "no_matching_policy");
}

#[test]
fn base_url_mode_originates_verified_tls() {
    // The upstream's certificate names `localhost` only.
    let tls = TestTls::generate_for(&["localhost"]);
    let upstream = Upstream::start(Some(tls.server.clone()));
    let gw = Gateway::start(
        r#"
policies:
  - {name: api, action: allow, rules: [{host: localhost, paths: ["/v1/*"], methods: [GET, POST]},
                                       {host: 127.0.0.1, paths: ["/v1/*"]}]}
"#,
        GatewayOptions {
            mode: EnvoyMode::BaseUrl,
            upstream_ca_pem: Some(tls.ca_pem.clone()),
            ..GatewayOptions::default()
        },
    );
    let host = format!("Host: localhost:{}", upstream.port());
    let reply = gw.to_listener("/v1/models", &["-H", &host]);
    assert_eq!(reply.status, 200, "{reply:?}\n{}", gw.envoy_log());
    assert_eq!(upstream.seen()[0].path, "/v1/models");
    let record = gw.audit_for(|r| r["path"] == "/v1/models");
    assert_eq!(
        record["scheme"], "https",
        "the listener says the upstream speaks TLS"
    );
    assert_eq!(record["tags"], serde_json::json!(["listener:base-url"]));

    let denied = gw.to_listener("/admin", &["-H", &host]);
    assert_eq!(denied.status, 403);
    assert_eq!(upstream.hits(), 1);

    // Allowed by policy, but the certificate does not cover 127.0.0.1: Envoy's upstream
    // TLS verification fails and nothing is delivered.
    let wrong_name = gw.to_listener(
        "/v1/models",
        &["-H", &format!("Host: 127.0.0.1:{}", upstream.port())],
    );
    assert_eq!(wrong_name.status, 503, "{wrong_name:?}");
    assert_eq!(
        gw.audit_for(|r| r["host"] == "127.0.0.1")["decision"],
        "ALLOWED"
    );
    assert_eq!(
        upstream.hits(),
        1,
        "no request over an unverified connection"
    );
}
