//! A real OTLP/gRPC trace receiver: the collector's `TraceService` on a free port, keeping
//! every span it is sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::transport::server::TcpIncoming;

/// Runs until dropped.
pub struct Collector {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    _runtime: tokio::runtime::Runtime,
}

struct Receiver {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    /// False: each export is kept and never answered (a collector that hangs).
    answers: bool,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        if !self.answers {
            std::future::pending::<()>().await;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    pub fn start() -> Collector {
        Collector::start_answering(true)
    }

    /// A collector that keeps each export request and never answers it: an export sent to
    /// it stays pending until the exporter's own timeout.
    pub fn start_unanswering() -> Collector {
        Collector::start_answering(false)
    }

    fn start_answering(answers: bool) -> Collector {
        let (runtime, listener, addr) = super::loopback_server();
        let requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>> = Arc::default();
        let receiver = Receiver {
            requests: requests.clone(),
            answers,
        };
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver))
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        Collector {
            addr,
            requests,
            _runtime: runtime,
        }
    }

    /// `http://127.0.0.1:PORT`, for `telemetry.otlp.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every export request received so far.
    pub fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Every span received so far, with the `service.name` of its resource.
    pub fn spans(&self) -> Vec<(String, Span)> {
        let mut spans = Vec::new();
        for request in self.requests() {
            for resource_spans in request.resource_spans {
                let service = resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                    .map(|v| match v {
                        Value::StringValue(s) => s.clone(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
                }
            }
        }
        spans
    }
}

/// A span attribute as text (strings as they are, other values through `Debug`).
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

/// Lower-case hex of an id as carried in OTLP (bytes).
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
