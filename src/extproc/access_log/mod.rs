//! Envoy's access log — its gRPC access log service (`envoy.service.accesslog.v3.
//! AccessLogService`) or its file, followed ([`file`]): how each request Portcullis let
//! through ended — the upstream's status, Envoy's response flags, the
//! bytes each way — written to the audit trail as an `upstream` record under the request id
//! the decision was audited with. Envoy sends these in batches, off the request path.
//!
//! Only requests Portcullis decided are recorded: Envoy names their id in the dynamic
//! metadata `portcullis.request_id`, which Portcullis set on its answer. Portcullis's own
//! refusals are skipped (their decision record is the whole story).
//!
//! Requests Envoy decided itself on the fast path (docs/fast-path.md) are recorded here
//! too: the route they took names the decision (`fast|allow|…`), which becomes the same
//! decision record ext_proc requests get — with `"decided_by": "envoy"` — counted in the
//! same metrics and fire counts, then the `upstream` record of how an allowed one ended.

use envoy_types::pb::envoy::config::core::v3::RequestMethod;
use envoy_types::pb::envoy::config::core::v3::{Address, address, socket_address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, ResponseFlags,
};
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use tonic::{Request, Response, Status, Streaming};

use std::net::SocketAddr;
use std::sync::Arc;

pub mod file;

use crate::audit::{AuditRecord, IdentityRecord, UpstreamRecord};
use crate::live::Shared;
use crate::policy::Decision;
use crate::snapshot::route_table::FastRouteName;

/// The access log service, writing to the audit trail.
#[derive(Clone)]
pub struct AccessLogReceiver {
    shared: Arc<Shared>,
}

impl AccessLogReceiver {
    pub fn new(shared: Arc<Shared>) -> AccessLogReceiver {
        AccessLogReceiver { shared }
    }

    pub fn into_server(self) -> AccessLogServiceServer<AccessLogReceiver> {
        AccessLogServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AccessLogService for AccessLogReceiver {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut stream = request.into_inner();
        while let Some(message) = stream.message().await? {
            let Some(LogEntries::HttpLogs(http)) = message.log_entries else {
                continue;
            };
            let mut recorder = Recorder::new(&self.shared);
            for entry in &http.log_entry {
                recorder.record(&Outcome::from_entry(entry)).await;
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

/// One request as Envoy's access log tells it, from either channel: the gRPC service's
/// entries or the file's JSON lines.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome<'a> {
    /// The route Envoy took: a fast-path route's name carries its decision.
    pub route: &'a str,
    /// Envoy's `x-request-id`: a fast-path request's id in the audit trail.
    pub request_id: &'a str,
    /// `portcullis.request_id` from the dynamic metadata: set on Portcullis's answer, so
    /// empty for requests Portcullis never decided.
    pub decided_id: &'a str,
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    /// Only on fast-path entries: an ext_proc request's path may carry a credential
    /// Portcullis injected, and is never logged.
    pub path: &'a str,
    pub source: Option<SocketAddr>,
    pub upstream: Option<SocketAddr>,
    pub status: Option<u32>,
    pub flags: Vec<&'static str>,
    pub details: &'a str,
    pub failure: &'a str,
    pub duration_ms: Option<f64>,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
}

impl<'a> Outcome<'a> {
    /// An entry of the gRPC access log service.
    pub fn from_entry(entry: &'a HttpAccessLogEntry) -> Outcome<'a> {
        let common = entry.common_properties.as_ref();
        let request = entry.request.as_ref();
        let response = entry.response.as_ref();
        Outcome {
            route: common.map_or("", |c| c.route_name.as_str()),
            request_id: request.map_or("", |r| r.request_id.as_str()),
            decided_id: common.and_then(decided_request_id).unwrap_or_default(),
            method: request.map_or("", |r| {
                RequestMethod::try_from(r.request_method).map_or("OTHER", |m| m.as_str_name())
            }),
            scheme: request.map_or("", |r| r.scheme.as_str()),
            authority: request.map_or("", |r| r.authority.as_str()),
            path: request.map_or("", |r| r.path.as_str()),
            source: common
                .and_then(|c| c.downstream_remote_address.as_ref())
                .and_then(socket_address),
            upstream: common
                .and_then(|c| c.upstream_remote_address.as_ref())
                .and_then(socket_address),
            status: response
                .and_then(|r| r.response_code.as_ref())
                .map(|c| c.value),
            flags: common
                .and_then(|c| c.response_flags.as_ref())
                .map(flag_names)
                .unwrap_or_default(),
            details: response.map_or("", |r| r.response_code_details.as_str()),
            failure: common.map_or("", |c| c.upstream_transport_failure_reason.as_str()),
            duration_ms: common
                .and_then(|c| c.duration.as_ref())
                .map(|d| milliseconds(d.seconds as f64 * 1e6 + f64::from(d.nanos) / 1e3)),
            request_body_bytes: request.map_or(0, |r| r.request_body_bytes),
            response_body_bytes: response.map_or(0, |r| r.response_body_bytes),
        }
    }
}

/// Microseconds as milliseconds, to the microsecond.
fn milliseconds(micros: f64) -> f64 {
    micros.round() / 1000.0
}

/// Writes what Envoy's access log says into the audit trail: for a batch of entries, the
/// snapshot and each listener's identity are looked up once.
pub struct Recorder<'s> {
    shared: &'s Shared,
    snapshot: Arc<crate::snapshot::Snapshot>,
    /// The tags each listener's requests carry on the fast path, by the listener's tags.
    listeners: Vec<(String, Vec<String>)>,
}

impl<'s> Recorder<'s> {
    pub fn new(shared: &'s Shared) -> Recorder<'s> {
        Recorder {
            shared,
            snapshot: shared.snapshot.load_full(),
            listeners: Vec::new(),
        }
    }

    /// The fast-path decision (when Envoy decided the request), then how an allowed
    /// request ended.
    pub async fn record(&mut self, outcome: &Outcome<'_>) {
        self.record_fast_decision(outcome).await;
        if let Some(record) = upstream_record(outcome) {
            self.shared.audit.write_upstream(&record).await;
        }
    }

    /// The tags of the identity a fast-path request on `listener` carries: the gateway's
    /// and the listener's (the fast path serves no other identity).
    fn listener_tags(&mut self, listener: &str) -> &[String] {
        let at = match self.listeners.iter().position(|(l, _)| l == listener) {
            Some(at) => at,
            None => {
                let listener_tags = crate::vocab::Tag::parse_listener_list(listener);
                let tags = self
                    .snapshot
                    .identities
                    .resolve(&crate::identity::Presented {
                        source: None,
                        peer_uri_san: None,
                        proxy_authorization: None,
                        listener_tags: &listener_tags,
                    })
                    .map(|i| i.tags.iter().map(|t| t.as_str().to_owned()).collect())
                    .unwrap_or_default();
                self.listeners.push((listener.to_owned(), tags));
                self.listeners.len() - 1
            }
        };
        &self.listeners[at].1
    }

    /// The decision record of a request Envoy decided on the fast path, when `outcome` is
    /// one: in the audit trail, the decision metrics and (through the store's copy) the
    /// fire counts.
    async fn record_fast_decision(&mut self, outcome: &Outcome<'_>) {
        let Some(fast) = FastRouteName::parse(outcome.route) else {
            return;
        };
        let decision = match fast.action {
            "allow" => Decision::Allowed,
            "flag" => Decision::Flagged,
            _ => Decision::Denied,
        };
        let (host, port) = split_authority(outcome.authority, outcome.scheme);
        let path = outcome.path.split('?').next().unwrap_or_default();
        let shared = self.shared;
        let tags: Vec<&str> = self
            .listener_tags(fast.listener)
            .iter()
            .map(String::as_str)
            .collect();
        let denied = decision == Decision::Denied;
        let record = AuditRecord {
            ts: crate::audit::now_rfc3339(),
            request_id: outcome.request_id,
            trace_id: None,
            config_version: fast.config_version,
            decision,
            status: denied.then_some(403),
            reason: denied.then_some(if fast.policy.is_some() {
                "policy_deny"
            } else {
                "no_matching_policy"
            }),
            policy: fast.policy,
            policy_version: fast.policy_version,
            rule: fast.rule,
            transform: denied.then_some("allowlist"),
            identity: IdentityRecord {
                kind: "gateway",
                name: None,
                spiffe_id: None,
                source: outcome.source.map(|a| a.to_string()),
            },
            tags,
            method: outcome.method,
            scheme: outcome.scheme,
            host: &host,
            port,
            path,
            upstream_address: if denied { None } else { outcome.upstream },
            dry_run: None,
            approval: None,
            transforms: &[],
            decision_us: 0.0,
            decided_by: Some("envoy"),
        };
        shared.metrics.record_decision(decision, fast.policy, 0.0);
        if let Err(e) = shared.audit.write(&record).await {
            tracing::error!(request_id = %outcome.request_id, error = %e,
                "a fast-path decision could not be audited");
        }
    }
}

/// The canonical host and the port of an authority, as Portcullis reads a request's (the
/// scheme's port when it names none); the authority as it came, in lower case, when it
/// does not parse (a route matched it, so Envoy took it).
fn split_authority(authority: &str, scheme: &str) -> (String, u16) {
    let default = if scheme == "https" { 443 } else { 80 };
    match crate::request::parse_authority(authority) {
        Ok(parsed) => (parsed.host, parsed.port.unwrap_or(default)),
        Err(_) => (authority.to_ascii_lowercase(), default),
    }
}

/// The record for `outcome`, unless Portcullis did not decide that request or refused it
/// (or Envoy refused it on the fast path).
pub fn upstream_record(outcome: &Outcome<'_>) -> Option<UpstreamRecord> {
    let request_id = match FastRouteName::parse(outcome.route) {
        Some(fast) if fast.action == "deny" => return None,
        Some(_) => outcome.request_id,
        None => outcome.decided_id,
    };
    if request_id.is_empty() || outcome.details.starts_with("portcullis_") {
        return None;
    }
    Some(UpstreamRecord {
        ts: crate::audit::now_rfc3339(),
        request_id: request_id.to_owned(),
        event: "upstream",
        status: outcome.status,
        response_flags: outcome.flags.clone(),
        details: outcome.details.to_owned(),
        upstream_failure: outcome.failure.to_owned(),
        upstream_address: outcome.upstream.map(|a| a.to_string()),
        duration_ms: outcome.duration_ms,
        request_body_bytes: outcome.request_body_bytes,
        response_body_bytes: outcome.response_body_bytes,
    })
}

/// An Envoy socket address as `IP:PORT` (`[IPv6]:PORT` when printed), when it is one.
fn socket_address(address: &Address) -> Option<SocketAddr> {
    let Some(address::Address::SocketAddress(socket)) = &address.address else {
        return None;
    };
    let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier else {
        return None;
    };
    let ip: std::net::IpAddr = socket.address.parse().ok()?;
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

/// `portcullis.request_id` from the entry's dynamic metadata: set on Portcullis's answer.
fn decided_request_id(common: &AccessLogCommon) -> Option<&str> {
    let portcullis = common
        .metadata
        .as_ref()?
        .filter_metadata
        .get("portcullis")?;
    match portcullis.fields.get("request_id")?.kind.as_ref()? {
        Kind::StringValue(id) if !id.is_empty() => Some(id.as_str()),
        _ => None,
    }
}

/// Envoy's short names for response flags, as its access log prints them.
const FLAG_NAMES: [&str; 28] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DR",
];

/// The short names of the flags set, in [`FLAG_NAMES`]' order.
fn flag_names(flags: &ResponseFlags) -> Vec<&'static str> {
    [
        flags.failed_local_healthcheck,
        flags.no_healthy_upstream,
        flags.upstream_request_timeout,
        flags.local_reset,
        flags.upstream_remote_reset,
        flags.upstream_connection_failure,
        flags.upstream_connection_termination,
        flags.upstream_overflow,
        flags.no_route_found,
        flags.delay_injected,
        flags.fault_injected,
        flags.rate_limited,
        flags.unauthorized_details.is_some(),
        flags.rate_limit_service_error,
        flags.downstream_connection_termination,
        flags.upstream_retry_limit_exceeded,
        flags.stream_idle_timeout,
        flags.invalid_envoy_request_headers,
        flags.downstream_protocol_error,
        flags.upstream_max_stream_duration_reached,
        flags.response_from_cache_filter,
        flags.no_filter_config_found,
        flags.duration_timeout,
        flags.upstream_protocol_error,
        flags.no_cluster_found,
        flags.overload_manager,
        flags.dns_resolution_failure,
        flags.downstream_remote_reset,
    ]
    .into_iter()
    .zip(FLAG_NAMES)
    .filter_map(|(set, name)| set.then_some(name))
    .collect()
}

/// The known short names in Envoy's printed flags (`UF,URX`; `-` for none).
fn parse_flag_names(printed: &str) -> Vec<&'static str> {
    printed
        .split(',')
        .filter_map(|name| FLAG_NAMES.iter().find(|known| **known == name).copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Metadata, SocketAddress};
    use envoy_types::pb::envoy::data::accesslog::v3::{
        HttpRequestProperties, HttpResponseProperties,
    };
    use envoy_types::pb::google::protobuf::{Duration, Struct, UInt32Value};
    use std::collections::HashMap;

    fn entry(request_id: Option<&str>, status: u32, details: &str) -> HttpAccessLogEntry {
        let metadata = request_id.map(|id| {
            let mut outer = crate::extproc::convert::request_id_metadata(id);
            let inner = match outer.fields.remove("portcullis").and_then(|v| v.kind) {
                Some(Kind::StructValue(inner)) => inner,
                _ => Struct::default(),
            };
            Metadata {
                filter_metadata: HashMap::from([("portcullis".to_owned(), inner)]),
                ..Default::default()
            }
        });
        HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                metadata,
                response_flags: Some(ResponseFlags {
                    upstream_connection_failure: status == 503,
                    ..Default::default()
                }),
                upstream_remote_address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "93.184.215.14".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(443)),
                        ..Default::default()
                    })),
                }),
                duration: Some(Duration {
                    seconds: 0,
                    nanos: 12_345_678,
                }),
                ..Default::default()
            }),
            request: Some(HttpRequestProperties {
                request_body_bytes: 7,
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(UInt32Value { value: status }),
                response_code_details: details.into(),
                response_body_bytes: 42,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_allowed_request_that_failed_upstream_is_recorded_with_its_flags() {
        let record = upstream_record(&Outcome::from_entry(&entry(
            Some("rid-7"),
            503,
            "upstream_reset_before_response",
        )))
        .expect("recorded");
        assert_eq!(record.request_id, "rid-7");
        assert_eq!(record.event, "upstream");
        assert_eq!(record.status, Some(503));
        assert_eq!(record.response_flags, vec!["UF"]);
        assert_eq!(
            record.upstream_address.as_deref(),
            Some("93.184.215.14:443")
        );
        assert_eq!(record.duration_ms, Some(12.346));
        assert_eq!(
            (record.request_body_bytes, record.response_body_bytes),
            (7, 42)
        );
        let line = serde_json::to_value(&record).unwrap();
        assert_eq!(line["response_flags"], serde_json::json!(["UF"]));
    }

    #[test]
    fn a_fast_path_authority_reads_as_portcullis_reads_a_request_s() {
        assert_eq!(
            split_authority("Fast.Test", "https"),
            ("fast.test".to_owned(), 443)
        );
        assert_eq!(
            split_authority("[::1]:8080", "http"),
            ("::1".to_owned(), 8080)
        );
    }

    #[test]
    fn refusals_and_requests_portcullis_never_decided_are_not_recorded() {
        assert!(
            upstream_record(&Outcome::from_entry(&entry(
                Some("rid-8"),
                403,
                "portcullis_policy_deny"
            )))
            .is_none()
        );
        assert!(upstream_record(&Outcome::from_entry(&entry(None, 200, "via_upstream"))).is_none());
        let ok = upstream_record(&Outcome::from_entry(&entry(
            Some("rid-9"),
            200,
            "via_upstream",
        )))
        .unwrap();
        assert!(ok.response_flags.is_empty());
        let line = serde_json::to_value(&ok).unwrap();
        assert!(line.get("response_flags").is_none(), "{line}");
    }
}
