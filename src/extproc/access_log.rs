//! Envoy's gRPC access log service (`envoy.service.accesslog.v3.AccessLogService`): how each
//! request Portcullis let through ended — the upstream's status, Envoy's response flags, the
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

use std::sync::Arc;

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
            for entry in &http.log_entry {
                self.record_fast_decision(entry).await;
                if let Some(record) = upstream_record(entry) {
                    self.shared.audit.write_upstream(&record).await;
                }
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

impl AccessLogReceiver {
    /// The decision record of a request Envoy decided on the fast path, when `entry` is
    /// one: in the audit trail, the decision metrics and (through the store's copy) the
    /// fire counts.
    async fn record_fast_decision(&self, entry: &HttpAccessLogEntry) {
        let Some(common) = entry.common_properties.as_ref() else {
            return;
        };
        let Some(fast) = FastRouteName::parse(&common.route_name) else {
            return;
        };
        let request = entry.request.clone().unwrap_or_default();
        let decision = match fast.action {
            "allow" => Decision::Allowed,
            "flag" => Decision::Flagged,
            _ => Decision::Denied,
        };
        let (host, port) = split_authority(&request.authority, &request.scheme);
        let path = request.path.split('?').next().unwrap_or_default();
        let method = envoy_types::pb::envoy::config::core::v3::RequestMethod::try_from(
            request.request_method,
        )
        .map_or("OTHER", |m| m.as_str_name());
        let snapshot = self.shared.snapshot.load_full();
        let listener = crate::vocab::Tag::parse_listener_list(fast.listener);
        let identity = snapshot
            .identities
            .resolve(&crate::identity::Presented {
                source: None,
                peer_uri_san: None,
                proxy_authorization: None,
                listener_tags: &listener,
            })
            .ok();
        let tags: Vec<&str> = identity
            .as_ref()
            .map(|i| i.tags.iter().map(|t| t.as_str()).collect())
            .unwrap_or_default();
        let denied = decision == Decision::Denied;
        let record = AuditRecord {
            ts: crate::audit::now_rfc3339(),
            request_id: &request.request_id,
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
                source: common
                    .downstream_remote_address
                    .as_ref()
                    .and_then(socket_address)
                    .map(|a| a.to_string()),
            },
            tags,
            method,
            scheme: &request.scheme,
            host: &host,
            port,
            path,
            upstream_address: if denied {
                None
            } else {
                common
                    .upstream_remote_address
                    .as_ref()
                    .and_then(socket_address)
            },
            dry_run: None,
            approval: None,
            transforms: &[],
            decision_us: 0.0,
            decided_by: Some("envoy"),
        };
        self.shared
            .metrics
            .record_decision(decision, fast.policy, 0.0);
        if let Err(e) = self.shared.audit.write(&record).await {
            tracing::error!(request_id = %request.request_id, error = %e,
                "a fast-path decision could not be audited");
        }
    }
}

/// Host (lower case, without brackets) and port of an authority; the scheme's port when
/// it names none.
fn split_authority(authority: &str, scheme: &str) -> (String, u16) {
    let default = if scheme == "https" { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, port.parse().unwrap_or(default))
        }
        _ => (authority, default),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host.to_ascii_lowercase(), port)
}

/// The record for `entry`, unless Portcullis did not decide that request or refused it
/// (or Envoy refused it on the fast path).
pub fn upstream_record(entry: &HttpAccessLogEntry) -> Option<UpstreamRecord> {
    let common = entry.common_properties.as_ref()?;
    let request_id = match FastRouteName::parse(&common.route_name) {
        Some(fast) if fast.action == "deny" => return None,
        Some(_) => entry
            .request
            .as_ref()
            .map(|r| r.request_id.clone())
            .filter(|id| !id.is_empty())?,
        None => decided_request_id(common)?,
    };
    let response = entry.response.as_ref();
    let details = response.map_or("", |r| r.response_code_details.as_str());
    if details.starts_with("portcullis_") {
        return None;
    }
    let upstream_address = common
        .upstream_remote_address
        .as_ref()
        .and_then(socket_address)
        .map(|a| a.to_string());
    let duration_ms = common.duration.as_ref().map(|d| {
        let ms = d.seconds as f64 * 1000.0 + f64::from(d.nanos) / 1e6;
        (ms * 1000.0).round() / 1000.0
    });
    Some(UpstreamRecord {
        ts: crate::audit::now_rfc3339(),
        request_id,
        event: "upstream",
        status: response
            .and_then(|r| r.response_code.as_ref())
            .map(|c| c.value),
        response_flags: common
            .response_flags
            .as_ref()
            .map(flag_names)
            .unwrap_or_default(),
        details: details.to_owned(),
        upstream_failure: common.upstream_transport_failure_reason.clone(),
        upstream_address,
        duration_ms,
        request_body_bytes: entry.request.as_ref().map_or(0, |r| r.request_body_bytes),
        response_body_bytes: response.map_or(0, |r| r.response_body_bytes),
    })
}

/// An Envoy socket address as `IP:PORT` (`[IPv6]:PORT` when printed), when it is one.
fn socket_address(address: &Address) -> Option<std::net::SocketAddr> {
    let Some(address::Address::SocketAddress(socket)) = &address.address else {
        return None;
    };
    let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier else {
        return None;
    };
    let ip: std::net::IpAddr = socket.address.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, u16::try_from(port).ok()?))
}

/// `portcullis.request_id` from the entry's dynamic metadata: set on Portcullis's answer.
fn decided_request_id(common: &AccessLogCommon) -> Option<String> {
    let portcullis = common
        .metadata
        .as_ref()?
        .filter_metadata
        .get("portcullis")?;
    match portcullis.fields.get("request_id")?.kind.as_ref()? {
        Kind::StringValue(id) if !id.is_empty() => Some(id.clone()),
        _ => None,
    }
}

/// Envoy's short names for the flags set, as its access log prints them.
fn flag_names(flags: &ResponseFlags) -> Vec<&'static str> {
    [
        (flags.failed_local_healthcheck, "LH"),
        (flags.no_healthy_upstream, "UH"),
        (flags.upstream_request_timeout, "UT"),
        (flags.local_reset, "LR"),
        (flags.upstream_remote_reset, "UR"),
        (flags.upstream_connection_failure, "UF"),
        (flags.upstream_connection_termination, "UC"),
        (flags.upstream_overflow, "UO"),
        (flags.no_route_found, "NR"),
        (flags.delay_injected, "DI"),
        (flags.fault_injected, "FI"),
        (flags.rate_limited, "RL"),
        (flags.unauthorized_details.is_some(), "UAEX"),
        (flags.rate_limit_service_error, "RLSE"),
        (flags.downstream_connection_termination, "DC"),
        (flags.upstream_retry_limit_exceeded, "URX"),
        (flags.stream_idle_timeout, "SI"),
        (flags.invalid_envoy_request_headers, "IH"),
        (flags.downstream_protocol_error, "DPE"),
        (flags.upstream_max_stream_duration_reached, "UMSDR"),
        (flags.response_from_cache_filter, "RFCF"),
        (flags.no_filter_config_found, "NFCF"),
        (flags.duration_timeout, "DT"),
        (flags.upstream_protocol_error, "UPE"),
        (flags.no_cluster_found, "NC"),
        (flags.overload_manager, "OM"),
        (flags.dns_resolution_failure, "DF"),
        (flags.downstream_remote_reset, "DR"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
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
        let record = upstream_record(&entry(Some("rid-7"), 503, "upstream_reset_before_response"))
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
    fn refusals_and_requests_portcullis_never_decided_are_not_recorded() {
        assert!(upstream_record(&entry(Some("rid-8"), 403, "portcullis_policy_deny")).is_none());
        assert!(upstream_record(&entry(None, 200, "via_upstream")).is_none());
        let ok = upstream_record(&entry(Some("rid-9"), 200, "via_upstream")).unwrap();
        assert!(ok.response_flags.is_empty());
        let line = serde_json::to_value(&ok).unwrap();
        assert!(line.get("response_flags").is_none(), "{line}");
    }
}
