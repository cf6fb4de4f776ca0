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
    nonce: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

/// What a stream compiled from one snapshot: the routes per name, before vetting.
struct Compiled {
    snapshot: Arc<Snapshot>,
    routes: HashMap<String, ListenerRoutes>,
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
                        && self.names.iter().all(|n| c.routes.contains_key(n)) =>
                {
                    c
                }
                _ => compile(live, &self.names),
            };
            revet = tokio::time::Instant::now() + REVET;
            let configurations = vet_and_build(&current).await;
            compiled = Some(current);
            if !self.send(configurations).await {
                return;
            }
        }
    }

    /// Takes note of what Envoy asks for; true when that changed.
    fn on_request(&mut self, request: DiscoveryRequest) -> bool {
        if let Some(error) = &request.error_detail {
            tracing::error!(nonce = %request.response_nonce, error = %error.message,
                "Envoy rejected the routes Portcullis sent; it keeps its previous ones");
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
    async fn send(&mut self, configurations: Vec<RouteConfiguration>) -> bool {
        let resources: Vec<_> = configurations.iter().map(envoy::any).collect();
        let version = digest(&resources);
        if self.sent.as_deref() == Some(version.as_str()) {
            return true;
        }
        self.nonce += 1;
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: RouteConfiguration::type_url(),
            nonce: self.nonce.to_string(),
            ..Default::default()
        };
        self.sent = Some(version);
        self.tx.send(Ok(response)).await.is_ok()
    }
}

fn compile(snapshot: Arc<Snapshot>, names: &[String]) -> Compiled {
    let routes = names
        .iter()
        .map(|name| (name.clone(), snapshot.listener_routes(&Tag::parse_listener_list(name))))
        .collect();
    Compiled { snapshot, routes }
}

/// Vets the address of every allowed host, then builds each configuration.
async fn vet_and_build(compiled: &Compiled) -> Vec<RouteConfiguration> {
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
    names
        .into_iter()
        .map(|name| envoy::route_configuration(name, snapshot, &compiled.routes[name], &lookup))
        .collect()
}

/// A short digest of what is sent: the version Envoy acknowledges.
fn digest(resources: &[envoy_types::pb::google::protobuf::Any]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hash = Sha256::new();
    for resource in resources {
        hash.update(&resource.value);
    }
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
