//! Mesh identity through Envoy: a peer certificate's URI SAN becomes the identity, and only from
//! the right trust domain.
//!
//! `envoy/mesh-mtls.yaml` with real certificates: the mesh CA of `cluster.local` issues the
//! workload's SVID; an attacker holds a CA of its own (so it can mint any SAN it likes), a
//! certificate of another trust domain, or an expired SVID of the right one, or no certificate.
//! Only the genuine SVID gets the `uri_san` identity and its tags; every other connection fails
//! its handshake, and nothing reaches Portcullis or the upstream.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, string::Ia5String,
};

use crate::common::{EnvoyMode, Gateway, GatewayOptions, Reply, Upstream, curl};

const SVID: &str = "spiffe://cluster.local/ns/ci/sa/builder";

const CONFIG: &str = r#"
identities:
  - {name: ci-builder, uri_san: "spiffe://cluster.local/ns/ci/sa/*", tags: [env:ci]}
policies:
  - {name: ci-only, match_tags: [env:ci], action: allow, rules: [{host: 127.0.0.1}]}
"#;

/// A certificate authority that signs with its own key.
struct Authority {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Authority { params, key, pem }
    }

    /// A leaf with `dns` names and an optional SPIFFE URI SAN; `expired` puts its validity
    /// entirely in the past.
    fn issue(&self, dns: &[&str], uri: Option<&str>, expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(dns.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        // An X.509-SVID leaf: a signing key usage (Envoy's SPIFFE validator refuses a leaf
        // without one), for TLS clients and servers.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(Ia5String::try_from(uri.to_owned()).unwrap()));
        }
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The gateway on `envoy/mesh-mtls.yaml`, its serving certificate and trust bundle from the
/// mesh CA, and a directory for the workloads' certificate files.
struct Mesh {
    ca: Authority,
    files: tempfile::TempDir,
    gateway: Gateway,
}

impl Mesh {
    fn start() -> Mesh {
        let ca = Authority::new("cluster.local mesh CA");
        let files = tempfile::tempdir().unwrap();
        let (cert, key) = ca.issue(&["localhost"], None, false);
        let write = |name: &str, text: &str| -> String {
            let path = files.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let edits = [
            (
                "/etc/portcullis/mesh/gateway.crt",
                write("gateway.crt", &cert),
            ),
            (
                "/etc/portcullis/mesh/gateway.key",
                write("gateway.key", &key),
            ),
            (
                "/etc/portcullis/mesh/trust-bundle.pem",
                write("bundle.pem", &ca.pem),
            ),
        ];
        let gateway = Gateway::start(
            CONFIG,
            GatewayOptions {
                mode: EnvoyMode::MeshMtls,
                envoy_edits: edits
                    .into_iter()
                    .map(|(from, to)| (from.to_owned(), to))
                    .collect(),
                ..GatewayOptions::default()
            },
        );
        Mesh { ca, files, gateway }
    }

    /// Writes a workload's certificate and key; returns their paths.
    fn workload(&self, name: &str, (cert, key): (String, String)) -> (PathBuf, PathBuf) {
        let cert_path = self.files.path().join(format!("{name}.crt"));
        let key_path = self.files.path().join(format!("{name}.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        (cert_path, key_path)
    }

    /// `curl --proxy https://localhost:PORT` to `url`, presenting `client` if given.
    fn request(&self, url: &str, client: Option<&(PathBuf, PathBuf)>) -> Reply {
        let proxy = format!("https://localhost:{}", self.gateway.proxy_port);
        let bundle = self.files.path().join("bundle.pem");
        let mut args: Vec<&str> = vec!["--proxy", &proxy, "--proxy-cacert", path(&bundle)];
        if let Some((cert, key)) = client {
            args.extend(["--proxy-cert", path(cert), "--proxy-key", path(key)]);
        }
        args.push(url);
        curl(self.gateway.dir.path(), &args)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_mesh_svid_gets_its_identity_and_tags_through_envoy() {
    let upstream = Upstream::start(None);
    let mesh = Mesh::start();
    let svid = mesh.workload("svid", mesh.ca.issue(&[], Some(SVID), false));
    let url = format!("http://127.0.0.1:{}/build", upstream.port());
    let reply = mesh.request(&url, Some(&svid));
    assert_eq!(
        reply.status,
        200,
        "{reply:?}\n{}",
        mesh.gateway.portcullis_log()
    );
    assert_eq!(upstream.seen().len(), 1);
    let record = mesh.gateway.audit_for(|r| r["path"] == "/build");
    assert_eq!(record["identity"]["kind"], "uri_san", "{record}");
    assert_eq!(record["identity"]["spiffe_id"], SVID, "{record}");
    assert!(
        record["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "env:ci"),
        "{record}"
    );
}

/// Each attacker's certificate fails the handshake: no request reaches Portcullis (no audit
/// record) or the upstream.
#[test]
fn forged_foreign_expired_or_missing_certificates_get_no_identity() {
    let upstream = Upstream::start(None);
    let mesh = Mesh::start();
    let rogue = Authority::new("attacker CA");
    let other_domain = Authority::new("other.example mesh CA");
    let attackers = [
        // The right SAN, signed by a CA the attacker controls.
        (
            "forged",
            Some(mesh.workload("forged", rogue.issue(&[], Some(SVID), false))),
        ),
        // A genuine SVID of another trust domain (its own CA).
        (
            "other-domain",
            Some(mesh.workload(
                "other-domain",
                other_domain.issue(&[], Some("spiffe://other.example/ns/ci/sa/builder"), false),
            )),
        ),
        // Another trust domain's name, signed by the mesh CA itself: the SAN is not in the
        // bundle's trust domain.
        (
            "cross-domain",
            Some(
                mesh.workload(
                    "cross-domain",
                    mesh.ca
                        .issue(&[], Some("spiffe://other.example/ns/ci/sa/builder"), false),
                ),
            ),
        ),
        // The right SAN from the right CA, but expired.
        (
            "expired",
            Some(mesh.workload("expired", mesh.ca.issue(&[], Some(SVID), true))),
        ),
        // A certificate from the mesh CA without any SPIFFE ID.
        (
            "no-svid",
            Some(mesh.workload("no-svid", mesh.ca.issue(&["builder.ci"], None, false))),
        ),
        ("none", None),
    ];
    for (name, client) in &attackers {
        let url = format!("http://127.0.0.1:{}/{name}", upstream.port());
        let reply = mesh.request(&url, client.as_ref());
        assert!(
            reply.exit != 0 && reply.status != 200,
            "{name}: the handshake must fail, got {reply:?}"
        );
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
    let audited: Vec<_> = mesh
        .gateway
        .audit()
        .into_iter()
        .filter(|r| r["identity"]["kind"] == "uri_san")
        .collect();
    assert!(audited.is_empty(), "{audited:#?}");
    // The genuine SVID still works on the same gateway afterwards.
    let svid = mesh.workload("svid", mesh.ca.issue(&[], Some(SVID), false));
    let url = format!("http://127.0.0.1:{}/after", upstream.port());
    assert_eq!(mesh.request(&url, Some(&svid)).status, 200);
}

/// On the plaintext forward proxy there is no peer certificate; a workload that claims one in
/// headers (`x-forwarded-client-cert`, as a mesh sidecar would set it) gets no identity.
#[test]
fn a_claimed_client_certificate_header_is_not_an_identity() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(CONFIG, GatewayOptions::default());
    let url = format!("http://127.0.0.1:{}/claimed", upstream.port());
    let reply = gw.via_proxy(&[
        "-H",
        &format!("x-forwarded-client-cert: By=spiffe://cluster.local/ns/egress/sa/gw;URI={SVID}"),
        "-H",
        &format!("x-spiffe-id: {SVID}"),
        &url,
    ]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(upstream.seen().is_empty());
    let record = gw.audit_for(|r| r["path"] == "/claimed");
    assert_eq!(record["identity"]["kind"], "gateway", "{record}");
}
