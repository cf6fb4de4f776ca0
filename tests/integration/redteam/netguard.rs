//! The network guard: an allowed host name that resolves to an internal address is not connected
//! to.
//!
//! The workload plays every trick it has on the address Envoy connects to: a wildcard-allowed
//! name whose DNS answer is loopback, the cloud metadata address, IPv4 hidden inside IPv6
//! (mapped, compatible, NAT64) or written as one decimal number, a DNS server that answers one
//! address to the check and another to the connect, and its own
//! `x-portcullis-upstream-address` header. The loopback upstream must never see a request,
//! unless a policy allows loopback by CIDR.

use crate::common::dns::ScriptedDns;
use crate::common::{EnvoyMode, Gateway, GatewayOptions, Reply, TestTls, Upstream};

/// Every host under `lab.test` is allowed by name: the guard is all that stands between a
/// workload and whatever those names resolve to.
const WILDCARD: &str = r#"
policies:
  - name: lab
    action: allow
    rules: [{host: "*.lab.test"}]
"#;

/// Starts a gateway whose host names Portcullis resolves through `dns`, keeping no answer
/// (each lives 0 s): every request is resolved afresh.
fn start(config: &str, dns: &ScriptedDns, mode: EnvoyMode) -> Gateway {
    let config = format!(
        "{config}\nnetwork_guard:\n  nameservers: [\"127.0.0.1:{}\"]\n  min_ttl: 0s\n",
        dns.port
    );
    Gateway::start(
        &config,
        GatewayOptions {
            mode,
            ..GatewayOptions::default()
        },
    )
}

fn assert_refused(gw: &Gateway, reply: &Reply, what: &str) {
    assert_eq!(
        reply.status,
        403,
        "{what}: {reply:?}\n{}",
        gw.portcullis_log()
    );
    assert_eq!(
        reply.json()["error"]["type"],
        "destination_refused",
        "{what}: {reply:?}"
    );
}

#[test]
fn wildcard_allowed_name_resolving_to_loopback_is_refused() {
    let upstream = Upstream::start(None);
    let dns = ScriptedDns::start(&[("inside.lab.test", &["127.0.0.1"])]);
    let gw = start(WILDCARD, &dns, EnvoyMode::ForwardProxy);
    let url = format!("http://inside.lab.test:{}/secret", upstream.port());

    let plain = gw.via_proxy(&[&url]);
    assert_refused(&gw, &plain, "plain HTTP");
    let record = gw.audit_for(|r| r["host"] == "inside.lab.test");
    assert_eq!(record["decision"], "DENIED", "{record:#}");
    assert_eq!(record["reason"], "internal_address", "{record:#}");
    assert_eq!(
        record["upstream_address"],
        format!("127.0.0.1:{}", upstream.port()),
        "the audit record shows the address refused: {record:#}"
    );

    let tunnel = gw.via_proxy(&["-p", &url]);
    assert_eq!(tunnel.connect_status, 403, "CONNECT: {tunnel:?}");
    assert_eq!(upstream.hits(), 0, "the loopback upstream saw a request");
}

#[test]
fn metadata_address_and_ipv4_hidden_in_ipv6_are_refused() {
    let upstream = Upstream::start(None);
    let port = upstream.port();
    let dns = ScriptedDns::start(&[
        ("metadata.lab.test", &["169.254.169.254"]),
        ("mapped.lab.test", &["::ffff:127.0.0.1"]),
    ]);
    // Any host at all by name: only a CIDR rule may open internal ranges.
    let config = r#"
policies:
  - name: anything
    action: allow
    rules: [{host: "*"}]
"#;
    let gw = start(config, &dns, EnvoyMode::ForwardProxy);
    let mut escaped = Vec::new();
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://metadata.lab.test/latest/meta-data/".to_owned(),
        "http://[::ffff:a9fe:a9fe]/latest/meta-data/".to_owned(),
        format!("http://[::ffff:127.0.0.1]:{port}/mapped"),
        format!("http://[::127.0.0.1]:{port}/compatible"),
        format!("http://[64:ff9b::7f00:1]:{port}/nat64"),
        format!("http://[2002:7f00:1::1]:{port}/6to4"),
        format!("http://mapped.lab.test:{port}/aaaa"),
        format!("http://2130706433:{port}/decimal"),
    ] {
        let plain = gw.via_proxy(&[&url]);
        if !is_refusal(&plain) {
            let (status, body) = (plain.status, plain.body.trim());
            escaped.push(format!("GET {url}: {status} {body}"));
        }
        let tunnel = gw.via_proxy(&["-p", &url]);
        if tunnel.connect_status != 403 {
            let (status, body) = (tunnel.connect_status, tunnel.body.trim());
            escaped.push(format!("CONNECT {url}: {status} {body}"));
        }
    }
    assert!(escaped.is_empty(), "not refused by the guard: {escaped:#?}");
    assert_eq!(upstream.hits(), 0, "the loopback upstream saw a request");
}

fn is_refusal(reply: &Reply) -> bool {
    reply.status == 403
        && serde_json::from_str::<serde_json::Value>(&reply.body)
            .is_ok_and(|body| body["error"]["type"] == "destination_refused")
}

#[test]
fn dns_rebinding_cannot_steer_envoy_to_an_unvetted_address() {
    let upstream = Upstream::start(None);
    // Every answer lives 0 s, and they alternate: whoever resolves next gets the other one.
    let dns = ScriptedDns::start(&[("flip.lab.test", &["127.0.0.1", "203.0.113.7"])]);
    let gw = start(WILDCARD, &dns, EnvoyMode::ForwardProxy);
    let steer = format!(
        "x-portcullis-upstream-address: 127.0.0.1:{}",
        upstream.port()
    );
    let mut replies = Vec::new();
    for n in 0..4 {
        let url = format!("http://flip.lab.test:{}/{n}", upstream.port());
        replies.push(gw.via_proxy(&["--max-time", "8", "-H", &steer, &url]));
    }
    assert_eq!(
        upstream.hits(),
        0,
        "the loopback upstream saw a request: {replies:#?}"
    );
    assert!(dns.queries() >= 4, "every request was resolved afresh");
    let records: Vec<_> = gw
        .audit()
        .into_iter()
        .filter(|r| r["host"] == "flip.lab.test")
        .collect();
    assert!(
        records.iter().any(|r| r["decision"] == "ALLOWED"
            && r["upstream_address"] == format!("203.0.113.7:{}", upstream.port())),
        "an allowed request went to the vetted public address: {records:#?}"
    );
    assert!(
        records.iter().any(|r| r["reason"] == "internal_address"),
        "a request resolved to loopback was refused: {records:#?}"
    );
}

#[test]
fn loopback_allowed_by_cidr_policy_is_reached() {
    let upstream = Upstream::start(None);
    let port = upstream.port();
    let dns = ScriptedDns::start(&[("inside.lab.test", &["127.0.0.1"])]);
    let config = r#"
policies:
  - name: lab-and-its-network
    action: allow
    rules: [{host: "*.lab.test"}, {host: 127.0.0.0/8}]
"#;
    let gw = start(config, &dns, EnvoyMode::ForwardProxy);
    let by_ip = gw.via_proxy(&[&format!("http://127.0.0.1:{port}/by-ip")]);
    assert_eq!(by_ip.status, 200, "{by_ip:?}\n{}", gw.portcullis_log());
    let by_name = gw.via_proxy(&[&format!("http://inside.lab.test:{port}/by-name")]);
    assert_eq!(by_name.status, 200, "{by_name:?}\n{}", gw.portcullis_log());
    let tunnel = gw.via_proxy(&["-p", &format!("http://inside.lab.test:{port}/tunnel")]);
    assert_eq!(
        (tunnel.connect_status, tunnel.status),
        (200, 200),
        "{tunnel:?}"
    );
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert!(
        seen.iter()
            .all(|s| s.header("x-portcullis-upstream-address").is_none()),
        "Envoy forwarded the routing header upstream: {seen:#?}"
    );
    let record = gw.audit_for(|r| r["path"] == "/by-name");
    assert_eq!(record["upstream_address"], format!("127.0.0.1:{port}"));
}

#[test]
fn intercepted_https_to_a_name_resolving_to_loopback_is_refused() {
    let tls = TestTls::generate_for(&["inside.lab.test", "public.lab.test"]);
    let upstream = Upstream::start(Some(tls.server.clone()));
    let port = upstream.port();
    let dns = ScriptedDns::start(&[("inside.lab.test", &["127.0.0.1"])]);
    let ca = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["ca", "init", "--dir"])
        .arg(ca.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cert = ca.path().join("ca.crt");
    let config = format!(
        "interception:\n  ca: {{cert_file: {}, key_file: {}}}\n{WILDCARD}",
        cert.display(),
        ca.path().join("ca.key").display()
    );
    let gw = Gateway::start(
        &format!(
            "{config}\nnetwork_guard:\n  nameservers: [\"127.0.0.1:{}\"]\n  min_ttl: 0s\n",
            dns.port
        ),
        GatewayOptions {
            mode: EnvoyMode::HttpsIntercept,
            upstream_ca_pem: Some(tls.ca_pem.clone()),
            ..GatewayOptions::default()
        },
    );
    let cacert = cert.display().to_string();
    let url = format!("https://inside.lab.test:{port}/secret");
    let reply = gw.via_proxy(&["--cacert", &cacert, &url]);
    assert_eq!(reply.connect_status, 200, "the tunnel opens: {reply:?}");
    assert_refused(&gw, &reply, "inside the intercepted tunnel");
    let record = gw.audit_for(|r| r["path"] == "/secret");
    assert_eq!(record["upstream_address"], format!("127.0.0.1:{port}"));
    assert_eq!(upstream.hits(), 0, "the loopback upstream saw a request");
}
