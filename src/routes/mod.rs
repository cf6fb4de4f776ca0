//! Envoy's route discovery service (state-of-the-world gRPC): the routes of the fast path
//! (docs/fast-path.md). Envoy's listener names its route configuration after the
//! listener's tags (`listener:forward-proxy`); Portcullis answers with the routes the
//! live snapshot compiles for that listener, the allowed hosts' addresses vetted by the
//! network guard. A stream checks for a new snapshot several times a second and re-vets
//! the addresses every second (the resolver answers from its cache until a record's TTL
//! runs out), and pushes a new configuration only when it differs from the last one.

pub mod envoy;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use prost::Name as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::live::Shared;
use crate::policy::rule::HostMatch;
use crate::snapshot::{ListenerRoutes, RouteAction, Snapshot};
use crate::vocab::Tag;

/// How often a stream looks for a new snapshot: a policy change reaches Envoy within this
/// plus Envoy's own apply time.
const SNAPSHOT_CHECK: Duration = Duration::from_millis(100);
/// How often the allowed hosts' addresses are vetted again.
const REVET: Duration = Duration::from_secs(1);

/// The RDS service.
#[derive(Clone)]
pub struct RouteDiscovery {
    shared: Arc<Shared>,
}

impl RouteDiscovery {
    pub fn new(shared: Arc<Shared>) -> RouteDiscovery {
        RouteDiscovery { shared }
    }

    pub fn into_server(self) -> RouteDiscoveryServiceServer<RouteDiscovery> {
        RouteDiscoveryServiceServer::new(self)
    }
}

use crate::live::ResponseStream;

#[tonic::async_trait]
impl RouteDiscoveryService for RouteDiscovery {
    type StreamRoutesStream = ResponseStream<DiscoveryResponse>;
    type DeltaRoutesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_routes(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamRoutesStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let stream = RdsStream {
            shared: self.shared.clone(),
            names: Vec::new(),
            sent: None,
            rejected: false,
            nonce: 0,
            tx,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(crate::live::responses(rx)))
    }

    async fn delta_routes(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaRoutesStream>, Status> {
        Err(Status::unimplemented(
            "Portcullis serves RDS as state-of-the-world gRPC: set api_type: GRPC",
        ))
    }

    async fn fetch_routes(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented(
            "Portcullis serves RDS as a stream: set api_type: GRPC",
        ))
    }
}

/// One Envoy's RDS stream.
struct RdsStream {
    shared: Arc<Shared>,
    /// The route configurations Envoy asked for.
    names: Vec<String>,
    /// The version last sent (a digest of what was sent).
    sent: Option<String>,
    /// Envoy rejected routes this stream sent: it would keep deciding by older ones, so
    /// from then on the stream serves routes that send everything through ext_proc.
    rejected: bool,
    nonce: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

/// What a stream compiled from one snapshot: the routes per name, before vetting.
struct Compiled {
    snapshot: Arc<Snapshot>,
    routes: HashMap<String, ListenerRoutes>,
    /// Compiled to send everything through ext_proc.
    processor_only: bool,
}

impl RdsStream {
    async fn run(mut self, mut inbound: Streaming<DiscoveryRequest>) {
        let mut check = tokio::time::interval(SNAPSHOT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut revet = tokio::time::Instant::now() + REVET;
        let mut compiled: Option<Compiled> = None;
        loop {
            let changed = tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(request)) => self.on_request(request),
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, "RDS stream closed by Envoy");
                        return;
                    }
                },
                _ = check.tick() => {
                    let live = self.shared.snapshot.load_full();
                    let stale = compiled
                        .as_ref()
                        .is_none_or(|c| !Arc::ptr_eq(&c.snapshot, &live));
                    let due = tokio::time::Instant::now() >= revet;
                    stale || due
                }
            };
            if !changed || self.names.is_empty() {
                continue;
            }
            let live = self.shared.snapshot.load_full();
            let current = match compiled.take() {
                Some(c)
                    if Arc::ptr_eq(&c.snapshot, &live)
                        && c.processor_only == self.rejected
                        && self.names.iter().all(|n| c.routes.contains_key(n)) =>
                {
                    c
                }
                // A large policy set takes a while to compile: off the async workers,
                // which carry the decisions.
                _ => {
                    let names = self.names.clone();
                    let rejected = self.rejected;
                    match tokio::task::spawn_blocking(move || compile(live, &names, rejected)).await
                    {
                        Ok(compiled) => compiled,
                        Err(e) => {
                            tracing::error!(error = %e, "compiling the fast-path routes failed");
                            return;
                        }
                    }
                }
            };
            revet = tokio::time::Instant::now() + REVET;
            let configurations = vet_and_build(&current).await;
            compiled = Some(current);
            if !self.send(configurations).await {
                return;
            }
        }
    }

    /// Takes note of what Envoy asks for, or that it rejected what was sent; true when
    /// the stream must send again.
    fn on_request(&mut self, request: DiscoveryRequest) -> bool {
        if let Some(error) = &request.error_detail {
            if self.rejected {
                tracing::error!(nonce = %request.response_nonce, error = %error.message,
                    "Envoy rejected the routes that send everything through ext_proc too");
                return false;
            }
            // Envoy keeps the routes it had, which may allow what the policies now
            // refuse: fail closed, with routes that leave every decision to Portcullis.
            tracing::error!(nonce = %request.response_nonce, error = %error.message,
                "Envoy rejected the routes Portcullis sent; this Envoy's requests all go \
                 through ext_proc until it reconnects");
            self.rejected = true;
            self.sent = None;
            return true;
        }
        let mut names = request.resource_names;
        names.sort();
        names.dedup();
        if names != self.names {
            self.names = names;
            // A new subscription is answered even when the routes did not change.
            self.sent = None;
            return true;
        }
        false
    }

    /// Sends the configurations unless they are what Envoy already has; false when Envoy
    /// has gone.
    async fn send(&mut self, (configurations, version): (Vec<RouteConfiguration>, String)) -> bool {
        if self.sent.as_deref() == Some(version.as_str()) {
            return true;
        }
        self.nonce += 1;
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: configurations.iter().map(envoy::any).collect(),
            type_url: RouteConfiguration::type_url(),
            nonce: self.nonce.to_string(),
            ..Default::default()
        };
        self.sent = Some(version);
        self.tx.send(Ok(response)).await.is_ok()
    }
}

/// The routes of each name; with `everything_to_processor`, none Envoy decides.
fn compile(snapshot: Arc<Snapshot>, names: &[String], everything_to_processor: bool) -> Compiled {
    let routes = names
        .iter()
        .map(|name| {
            let routes = if everything_to_processor {
                ListenerRoutes {
                    off: Some("Envoy rejected the fast-path routes".into()),
                    hosts: Vec::new(),
                    mcp_to_processor: false,
                }
            } else {
                snapshot.listener_routes(&Tag::parse_listener_list(name))
            };
            (name.clone(), routes)
        })
        .collect();
    Compiled {
        snapshot,
        routes,
        processor_only: everything_to_processor,
    }
}

/// Vets the address of every allowed host, then builds each configuration; with the
/// version of what was built: a digest of what it is built from (the snapshot, the names,
/// the vetted addresses), since the encoded messages' maps have no fixed order.
async fn vet_and_build(compiled: &Compiled) -> (Vec<RouteConfiguration>, String) {
    let snapshot = &compiled.snapshot;
    let mut vetted: HashMap<(String, u16, u32), Option<SocketAddr>> = HashMap::new();
    for routes in compiled.routes.values() {
        for host in &routes.hosts {
            for route in &host.routes {
                let RouteAction::Allow { rule, .. } = route.action else {
                    continue;
                };
                let key = (host.host.to_string(), host.port, rule.policy);
                if vetted.contains_key(&key) {
                    continue;
                }
                let policy = snapshot.policies.policy(rule.policy);
                // A range the deciding policy names by CIDR is exempt, as per request.
                let exempt = |ip: IpAddr| {
                    policy
                        .rules
                        .iter()
                        .any(|r| matches!(&r.host.kind, HostMatch::Cidr(net) if net.contains(&ip)))
                };
                let address = snapshot
                    .network
                    .vet(&host.host, None, host.port, &exempt)
                    .await
                    .ok();
                vetted.insert(key, address);
            }
        }
    }
    let lookup = |host: &str, port: u16, action: &RouteAction| match action {
        RouteAction::Allow { rule, .. } => vetted
            .get(&(host.to_owned(), port, rule.policy))
            .copied()
            .flatten(),
        _ => None,
    };
    let mut names: Vec<&String> = compiled.routes.keys().collect();
    names.sort();
    let mut addresses: Vec<_> = vetted.iter().collect();
    addresses.sort();
    let version = digest(&format!(
        "{}|{names:?}|{addresses:?}|{}",
        snapshot.version, compiled.processor_only
    ));
    let configurations = names
        .into_iter()
        .map(|name| envoy::route_configuration(name, snapshot, &compiled.routes[name], &lookup))
        .collect();
    (configurations, version)
}

/// A short digest: the version Envoy acknowledges.
fn digest(text: &str) -> String {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(text.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use prost::Message as _;

    fn stream() -> (
        RdsStream,
        mpsc::Receiver<Result<DiscoveryResponse, Status>>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (audit, _writer) = crate::audit::AuditSink::start(&crate::config::AuditConfig {
            sink: crate::config::AuditSinkKind::File,
            path: Some(dir.path().join("audit.jsonl")),
            ..Default::default()
        })
        .unwrap();
        let snapshot = crate::transforms::test_support::snapshot(
            "policies: [{name: a, action: allow, rules: [{host: a.example}]}]",
        );
        let shared = Arc::new(Shared {
            snapshot: Arc::new(arc_swap::ArcSwap::new(Arc::new(snapshot))),
            audit,
            metrics: Arc::new(crate::telemetry::metrics::Metrics::new()),
            draining: Default::default(),
        });
        let (tx, rx) = mpsc::channel(4);
        let stream = RdsStream {
            shared,
            names: Vec::new(),
            sent: None,
            rejected: false,
            nonce: 0,
            tx,
        };
        (stream, rx, dir)
    }

    /// What the stream would send now, and whether it sent it.
    async fn push(
        stream: &mut RdsStream,
        rx: &mut mpsc::Receiver<Result<DiscoveryResponse, Status>>,
    ) -> Option<RouteConfiguration> {
        let compiled = compile(
            stream.shared.snapshot.load_full(),
            &stream.names,
            stream.rejected,
        );
        assert!(stream.send(vet_and_build(&compiled).await).await);
        let response = rx.try_recv().ok()?.unwrap();
        assert_eq!(response.type_url, RouteConfiguration::type_url());
        Some(RouteConfiguration::decode(&*response.resources[0].value).unwrap())
    }

    fn fast_hosts(config: &RouteConfiguration) -> Vec<String> {
        config
            .virtual_hosts
            .iter()
            .filter(|v| v.name.starts_with("fast:"))
            .map(|v| v.name.clone())
            .collect()
    }

    #[tokio::test]
    async fn serves_the_listener_routes_once_and_fails_closed_when_envoy_rejects_them() {
        let (mut stream, mut rx, _dir) = stream();
        let subscribe = DiscoveryRequest {
            resource_names: vec!["listener:forward-proxy".into()],
            type_url: RouteConfiguration::type_url(),
            ..Default::default()
        };
        assert!(stream.on_request(subscribe.clone()));
        let config = push(&mut stream, &mut rx).await.expect("sent");
        assert_eq!(config.name, "listener:forward-proxy");
        assert_eq!(fast_hosts(&config), vec!["fast:a.example:80"]);
        // Unchanged: nothing more is sent, and an ACK asks for nothing.
        assert!(push(&mut stream, &mut rx).await.is_none());
        let ack = DiscoveryRequest {
            response_nonce: "1".into(),
            ..subscribe.clone()
        };
        assert!(!stream.on_request(ack));
        // A rejection: Envoy would keep its older routes, so every request goes to ext_proc.
        let nack = DiscoveryRequest {
            response_nonce: "1".into(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "bad route".into(),
                ..Default::default()
            }),
            ..subscribe
        };
        assert!(stream.on_request(nack));
        let config = push(&mut stream, &mut rx).await.expect("sent again");
        assert!(fast_hosts(&config).is_empty(), "{config:?}");
        assert_eq!(config.virtual_hosts.len(), 1);
    }
}
