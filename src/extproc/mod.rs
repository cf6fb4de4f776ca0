//! The Envoy side: the `envoy.service.ext_proc.v3.ExternalProcessor` gRPC service. Only the
//! protocol lives here — reading Envoy's messages, keeping each stream's state, and writing
//! Envoy's responses; decisions come from [`crate::snapshot::Snapshot::decide`].

pub mod access_log;
pub mod convert;
pub mod listen;
mod stream;
mod watch;

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::live::Shared;
use convert::ListenerContext;
use stream::{Reply, StreamState};

/// The ext_proc service.
#[derive(Clone)]
pub struct ExtProcService {
    shared: Arc<Shared>,
}

impl ExtProcService {
    pub fn new(shared: Arc<Shared>) -> ExtProcService {
        ExtProcService { shared }
    }

    pub fn into_server(self) -> ExternalProcessorServer<ExtProcService> {
        ExternalProcessorServer::new(self)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let listener = ListenerContext::from_metadata(request.metadata());
        let state = StreamState::new(self.shared.clone(), listener);
        let inbound = request.into_inner();
        // One HTTP request per stream: answer each message in turn, no task per stream.
        let responses =
            futures::stream::unfold((inbound, state), |(mut inbound, mut state)| async move {
                loop {
                    if state.is_finished() || state.is_settled() {
                        return None;
                    }
                    // A decision put off behind a timeout extension (an LLM judge) runs
                    // now, before reading on: Envoy waits for its answer.
                    let reply = if state.has_deferred() {
                        state.resume().await
                    } else {
                        let message = match inbound.message().await {
                            Ok(Some(message)) => message,
                            Ok(None) => return None,
                            Err(status) => {
                                tracing::debug!(%status, "ext_proc stream closed by Envoy");
                                return None;
                            }
                        };
                        state.handle(message).await
                    };
                    match reply {
                        Reply::Send(response) => return Some((Ok(response), (inbound, state))),
                        Reply::Silent => continue,
                        Reply::Fail(status) => return Some((Err(status), (inbound, state))),
                    }
                }
            });
        Ok(Response::new(Box::pin(responses)))
    }
}
