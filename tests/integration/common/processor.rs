//! A real decision processor for the `grpc` transform: `portcullis.processor.v1.Processor`
//! served by tonic on a free port, answering by the request's path and keeping every
//! request it is asked about.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis::transforms::grpc::proto::decide_response::Decision;
use portcullis::transforms::grpc::proto::processor_server::{Processor, ProcessorServer};
use portcullis::transforms::grpc::proto::{
    Continue, DecideRequest, DecideResponse, Header, Reject,
};
use tonic::transport::server::TcpIncoming;

/// Runs until dropped. By path: `/reject/*` is refused with 429, `/slow/*` is allowed
/// after 800 ms, `/mint/*` gets a processor that tries to set `authorization`; anything
/// else continues with `x-risk-score: low`.
pub struct DecisionProcessor {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<DecideRequest>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct ByPath {
    asked: Arc<Mutex<Vec<DecideRequest>>>,
}

#[tonic::async_trait]
impl Processor for ByPath {
    async fn decide(
        &self,
        request: tonic::Request<DecideRequest>,
    ) -> Result<tonic::Response<DecideResponse>, tonic::Status> {
        let request = request.into_inner();
        self.asked.lock().unwrap().push(request.clone());
        let set = |name: &str, value: &str| {
            Decision::ContinueRequest(Continue {
                set_headers: vec![Header {
                    name: name.into(),
                    value: value.into(),
                }],
                remove_headers: vec!["x-internal-debug".into()],
            })
        };
        let decision = if request.path.starts_with("/reject/") {
            Decision::Reject(Reject {
                status: 429,
                reason: "agent_budget_exceeded".into(),
                message: "this agent spent its budget for today".into(),
            })
        } else if request.path.starts_with("/mint/") {
            set("authorization", "Bearer SENTINEL-processor-minted")
        } else {
            if request.path.starts_with("/slow/") {
                tokio::time::sleep(Duration::from_millis(800)).await;
            }
            set("x-risk-score", "low")
        };
        Ok(tonic::Response::new(DecideResponse {
            decision: Some(decision),
        }))
    }
}

impl DecisionProcessor {
    pub fn start() -> DecisionProcessor {
        let (runtime, listener, addr) = super::loopback_server();
        let asked: Arc<Mutex<Vec<DecideRequest>>> = Arc::default();
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(ProcessorServer::new(ByPath {
                    asked: asked.clone(),
                }))
                .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
        );
        DecisionProcessor {
            addr,
            asked,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:PORT`, for the transform's `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request asked about so far.
    pub fn asked(&self) -> Vec<DecideRequest> {
        self.asked.lock().unwrap().clone()
    }

    /// Stops serving: the port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
