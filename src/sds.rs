//! Envoy's secret discovery service (delta gRPC), for the on-demand certificate selector:
//! during a TLS handshake Envoy subscribes to a secret named after the SNI; Portcullis
//! answers with a leaf certificate for that name when some policy could allow a request
//! to it, and with "removed" otherwise, which fails the handshake before any byte of the
//! request is sent. Each stream re-checks its names when the config changes and pushes a
//! successor before a leaf expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use prost::Name as _;
use secrecy::ExposeSecret as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::extproc::convert::ListenerContext;
use crate::live::Shared;
use crate::tls::ca::Leaf;
use crate::tls::leaves::LeafCertificates;
use crate::vocab::Tag;

/// How often a stream checks for config changes and leaves due for renewal.
const RECHECK: Duration = Duration::from_secs(1);

/// The SDS service.
#[derive(Clone)]
pub struct SecretDiscovery {
    shared: Arc<Shared>,
    leaves: Arc<LeafCertificates>,
}

impl SecretDiscovery {
    pub fn new(shared: Arc<Shared>, leaves: Arc<LeafCertificates>) -> SecretDiscovery {
        SecretDiscovery { shared, leaves }
    }

    pub fn into_server(self) -> SecretDiscoveryServiceServer<SecretDiscovery> {
        SecretDiscoveryServiceServer::new(self)
    }
}

use crate::live::ResponseStream;

#[tonic::async_trait]
impl SecretDiscoveryService for SecretDiscovery {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let listener = ListenerContext::from_metadata(request.metadata());
        let (tx, rx) = mpsc::channel(16);
        let stream = SdsStream {
            shared: self.shared.clone(),
            leaves: self.leaves.clone(),
            listener_tags: listener.tags,
            names: HashMap::new(),
            nonce: 0,
            tx,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(crate::live::responses(rx)))
    }

    async fn stream_secrets(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        Err(Status::unimplemented(
            "Portcullis serves SDS as delta gRPC only: set api_type: DELTA_GRPC",
        ))
    }

    async fn fetch_secrets(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented(
            "Portcullis serves SDS as delta gRPC only: set api_type: DELTA_GRPC",
        ))
    }
}

/// One Envoy's subscription stream.
struct SdsStream {
    shared: Arc<Shared>,
    leaves: Arc<LeafCertificates>,
    listener_tags: Vec<Tag>,
    /// Subscribed names and the leaf last sent for each (`None`: answered "removed").
    names: HashMap<String, Option<Arc<Leaf>>>,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

/// What to answer for one name.
enum Answer {
    Leaf(Arc<Leaf>),
    Refused(&'static str),
    /// The stream already holds `max_names_per_stream` names: refused, and not tracked.
    OverLimit,
}

impl SdsStream {
    async fn run(mut self, mut inbound: Streaming<DeltaDiscoveryRequest>) {
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut version = self.shared.snapshot.load().version.clone();
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        if !self.on_request(request).await {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, "SDS stream closed by Envoy");
                        return;
                    }
                },
                _ = recheck.tick() => {
                    let live = self.shared.snapshot.load().version.clone();
                    let config_changed = live != version;
                    version = live;
                    if !self.recheck(config_changed).await {
                        return;
                    }
                }
            }
        }
    }

    /// Handles a subscription change or an ACK/NACK; false when Envoy has gone.
    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> bool {
        if !request.type_url.is_empty() && request.type_url != Secret::type_url() {
            let _ = self
                .tx
                .send(Err(Status::invalid_argument(format!(
                    "this SDS server serves {} only, not {}",
                    Secret::type_url(),
                    request.type_url
                ))))
                .await;
            return false;
        }
        if let Some(error) = &request.error_detail {
            tracing::warn!(nonce = %request.response_nonce, error = %error.message,
                "Envoy rejected certificates Portcullis sent");
        }
        for name in &request.resource_names_unsubscribe {
            self.names.remove(name);
        }
        // After a reconnect Envoy lists what it holds: those names are subscribed too.
        let mut wanted: Vec<String> = request.resource_names_subscribe;
        wanted.extend(request.initial_resource_versions.into_keys());
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return true;
        }
        let max = self.leaves.max_names_per_stream();
        let mut answers = Vec::with_capacity(wanted.len().min(max));
        let mut held = self.names.len();
        for name in wanted {
            let answer = if self.names.contains_key(&name) || held < max {
                held += usize::from(!self.names.contains_key(&name));
                self.answer(&name).await
            } else {
                Answer::OverLimit
            };
            answers.push((name, answer));
        }
        self.send(answers).await
    }

    /// Pushes successors of leaves due for renewal and, after a config change, withdraws
    /// names no policy could allow any more; false when Envoy has gone.
    async fn recheck(&mut self, config_changed: bool) -> bool {
        let mut answers = Vec::new();
        let names: Vec<(String, Option<Arc<Leaf>>)> = self
            .names
            .iter()
            .map(|(name, sent)| (name.clone(), sent.clone()))
            .collect();
        for (name, sent) in names {
            let due = sent.as_ref().is_some_and(|leaf| self.leaves.is_due(leaf));
            if !(config_changed || due) {
                continue;
            }
            let answer = self.answer(&name).await;
            let unchanged = match (&answer, &sent) {
                (Answer::Leaf(new), Some(old)) => Arc::ptr_eq(new, old),
                (Answer::Refused(_) | Answer::OverLimit, None) => true,
                _ => false,
            };
            if !unchanged {
                answers.push((name, answer));
            }
        }
        answers.is_empty() || self.send(answers).await
    }

    async fn answer(&self, name: &str) -> Answer {
        let host = name.trim_end_matches('.').to_ascii_lowercase();
        if !is_dns_name(&host) {
            return Answer::Refused("not_a_host_name");
        }
        if !self
            .shared
            .snapshot
            .load()
            .may_intercept(&host, &self.listener_tags)
        {
            return Answer::Refused("no_policy_could_allow");
        }
        match self.leaves.get(&host).await {
            Ok(leaf) => Answer::Leaf(leaf),
            Err(error) => {
                tracing::error!(%error, host, "cannot mint a certificate");
                Answer::Refused("mint_failed")
            }
        }
    }

    async fn send(&mut self, answers: Vec<(String, Answer)>) -> bool {
        self.nonce += 1;
        let mut response = DeltaDiscoveryResponse {
            system_version_info: self.shared.snapshot.load().version.to_string(),
            type_url: Secret::type_url(),
            nonce: self.nonce.to_string(),
            ..Default::default()
        };
        let mut over_limit = 0usize;
        for (name, answer) in answers {
            match answer {
                Answer::Leaf(leaf) => {
                    tracing::debug!(server_name = %name, "certificate sent to Envoy");
                    self.shared.metrics.record_certificate("issued");
                    response.resources.push(resource(&name, &leaf));
                    self.names.insert(name, Some(leaf));
                }
                Answer::Refused(reason) => {
                    tracing::info!(server_name = %name, reason,
                        "no certificate: the TLS handshake for this name fails");
                    self.shared.metrics.record_certificate(reason);
                    response.removed_resources.push(name.clone());
                    self.names.insert(name, None);
                }
                Answer::OverLimit => {
                    over_limit += 1;
                    self.shared.metrics.record_certificate("too_many_names");
                    response.removed_resources.push(name);
                }
            }
        }
        if over_limit > 0 {
            tracing::warn!(
                refused = over_limit,
                held = self.names.len(),
                max = self.leaves.max_names_per_stream(),
                "an SDS stream asked for more server names than interception.max_names_per_stream: \
                 no certificates for the rest"
            );
        }
        self.tx.send(Ok(response)).await.is_ok()
    }
}

fn resource(name: &str, leaf: &Leaf) -> Resource {
    let inline = |text: &str| DataSource {
        specifier: Some(Specifier::InlineBytes(text.as_bytes().to_vec())),
        ..Default::default()
    };
    let secret = Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&leaf.chain_pem)),
            private_key: Some(inline(leaf.key_pem.expose_secret())),
            ..Default::default()
        })),
    };
    Resource {
        name: name.to_owned(),
        version: leaf_version(leaf),
        resource: Some(envoy_types::util::pack_any(secret)),
        ..Default::default()
    }
}

/// A version that changes with every mint: a hash of the certificate chain (public).
fn leaf_version(leaf: &Leaf) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(leaf.chain_pem.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A host name a certificate can be minted for: labels of letters, digits and hyphens. An
/// IP literal or a wildcard is not one (SNI carries names only).
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.parse::<std::net::IpAddr>().is_err()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Runtime, Snapshot};

    fn snapshot(yaml: &str) -> Arc<Snapshot> {
        let (_, snapshot) =
            Snapshot::from_text(yaml, std::path::Path::new("t.yaml"), &Runtime::default()).unwrap();
        Arc::new(snapshot)
    }

    /// A stream wired to a live snapshot, with leaves that live `lifetime`.
    fn stream(
        lifetime: Duration,
    ) -> (
        SdsStream,
        Arc<Shared>,
        mpsc::Receiver<Result<DeltaDiscoveryResponse, Status>>,
        tempfile::TempDir,
    ) {
        bounded_stream(lifetime, 10_000)
    }

    fn bounded_stream(
        lifetime: Duration,
        max_names: u64,
    ) -> (
        SdsStream,
        Arc<Shared>,
        mpsc::Receiver<Result<DeltaDiscoveryResponse, Status>>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (audit, _writer) = crate::audit::AuditSink::start(&crate::config::AuditConfig {
            sink: crate::config::AuditSinkKind::File,
            path: Some(dir.path().join("audit.jsonl")),
            ..Default::default()
        })
        .unwrap();
        let shared = Arc::new(Shared {
            snapshot: Arc::new(arc_swap::ArcSwap::new(snapshot(
                "policies: [{name: a, action: allow, rules: [{host: a.example}]}]",
            ))),
            audit,
            metrics: Arc::new(crate::telemetry::metrics::Metrics::new()),
            draining: Default::default(),
        });
        let generated = crate::tls::ca::generate("t", Duration::from_secs(3600)).unwrap();
        let ca = crate::tls::ca::CertificateAuthority::from_pem(
            &generated.cert_pem,
            &generated.key_pem,
            std::path::Path::new("ca.crt"),
            std::path::Path::new("ca.key"),
        )
        .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let stream = SdsStream {
            shared: shared.clone(),
            leaves: Arc::new(
                LeafCertificates::new(ca, lifetime, 100).with_max_names_per_stream(max_names),
            ),
            listener_tags: Vec::new(),
            names: HashMap::new(),
            nonce: 0,
            tx,
        };
        (stream, shared, rx, dir)
    }

    fn subscribe(names: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: Secret::type_url(),
            resource_names_subscribe: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_renews_before_expiry_and_withdraws_after_a_policy_change() {
        let (mut stream, shared, mut rx, _dir) = stream(Duration::from_secs(3));
        assert!(
            stream
                .on_request(subscribe(&["a.example", "b.example"]))
                .await
        );
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!(first.resources.len(), 1);
        assert_eq!(first.resources[0].name, "a.example");
        assert_eq!(first.removed_resources, ["b.example"]);
        // An ACK changes nothing and sends nothing.
        assert!(
            stream
                .on_request(DeltaDiscoveryRequest {
                    response_nonce: first.nonce.clone(),
                    ..Default::default()
                })
                .await
        );
        assert!(stream.recheck(false).await);
        assert!(rx.try_recv().is_err(), "nothing due yet");

        // Two thirds of the lifetime later a successor is pushed, under a new version.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(stream.recheck(false).await);
        let renewed = rx.recv().await.unwrap().unwrap();
        assert_eq!(renewed.resources.len(), 1);
        assert_eq!(renewed.resources[0].name, "a.example");
        assert_ne!(renewed.resources[0].version, first.resources[0].version);
        assert!(renewed.removed_resources.is_empty());

        // The policy goes: the name is withdrawn; b.example stays unanswered.
        shared.snapshot.store(snapshot(
            "policies: [{name: b, action: allow, rules: [{host: c.example}]}]",
        ));
        assert!(stream.recheck(true).await);
        let withdrawn = rx.recv().await.unwrap().unwrap();
        assert!(withdrawn.resources.is_empty());
        assert_eq!(withdrawn.removed_resources, ["a.example"]);
        let exported = shared.metrics.render();
        assert!(
            exported.contains(r#"portcullis_certificates_total{result="issued"} 2"#),
            "{exported}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_beyond_the_bound_get_nothing_and_are_not_held() {
        let (mut stream, shared, mut rx, _dir) = bounded_stream(Duration::from_secs(60), 2);
        let flood = ["x1.example", "x2.example", "x3.example", "a.example"];
        assert!(stream.on_request(subscribe(&flood)).await);
        let first = rx.recv().await.unwrap().unwrap();
        // Sorted: a.example and x1.example fit; a.example gets its leaf.
        assert_eq!(first.resources.len(), 1);
        assert_eq!(first.resources[0].name, "a.example");
        assert_eq!(
            first.removed_resources,
            ["x1.example", "x2.example", "x3.example"]
        );
        assert_eq!(stream.names.len(), 2, "names over the bound are not held");
        // A name already held is answered again; a new one still is not.
        assert!(
            stream
                .on_request(subscribe(&["a.example", "b.example"]))
                .await
        );
        let second = rx.recv().await.unwrap().unwrap();
        assert_eq!(second.resources.len(), 1);
        assert_eq!(second.removed_resources, ["b.example"]);
        // Letting a name go makes room.
        let mut release = subscribe(&["c.example"]);
        release.resource_names_unsubscribe = vec!["x1.example".into()];
        assert!(stream.on_request(release).await);
        let third = rx.recv().await.unwrap().unwrap();
        assert_eq!(third.removed_resources, ["c.example"]);
        assert!(stream.names.contains_key("c.example"));
        let exported = shared.metrics.render();
        assert!(
            exported.contains(r#"portcullis_certificates_total{result="too_many_names"} 3"#),
            "{exported}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_resource_type_ends_the_stream() {
        let (mut stream, _shared, mut rx, _dir) = stream(Duration::from_secs(60));
        let request = DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            ..Default::default()
        };
        assert!(!stream.on_request(request).await);
        let status = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn server_names_that_can_have_a_certificate() {
        for ok in ["api.example.com", "a", "x-1.test", "_dmarc.example"] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in [
            "",
            "*",
            "*.example.com",
            "10.0.0.1",
            "::1",
            "a..b",
            "-a.example",
            "a b.example",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
