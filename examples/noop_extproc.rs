//! A no-op Envoy ext_proc server: the baseline for `bench/load.sh`.
//!
//! Every message is answered with the matching empty CONTINUE response and no mutation, so the
//! cost measured is Envoy's side of ext_proc plus the cheapest sane tonic server. The inbound
//! stream is mapped straight into the outbound one (no per-stream task).
//!
//!     cargo run --release --example noop_extproc -- --listen 127.0.0.1:50052
//!     cargo run --release --example noop_extproc -- --listen unix:/tmp/noop.sock

use clap::Parser;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeadersResponse, ProcessingRequest, ProcessingResponse,
    TrailersResponse,
    common_response::ResponseStatus,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request,
    processing_response::Response,
};
use futures::StreamExt;
use futures::future::{Ready, ready};
use futures::stream::FilterMap;
use tonic::{Status, Streaming};

#[derive(Parser, Debug)]
#[command(about = "No-op Envoy ext_proc server (answers CONTINUE to everything)")]
struct Args {
    /// Address to serve gRPC on: HOST:PORT or unix:/PATH (as Portcullis's --grpc-listen).
    #[arg(long, default_value = "127.0.0.1:50052")]
    listen: String,
    /// End each stream right after answering its request headers (the processor closing
    /// cleanly: Envoy goes on without it) instead of waiting for Envoy to close it.
    #[arg(long)]
    end_after_request_headers: bool,
}

type Item = Result<ProcessingResponse, Status>;
type Answer = fn(Result<ProcessingRequest, Status>) -> Ready<Option<Item>>;

struct Noop {
    end_after_request_headers: bool,
}

fn common() -> Option<CommonResponse> {
    Some(CommonResponse {
        status: ResponseStatus::Continue as i32,
        ..Default::default()
    })
}

fn answer(msg: Result<ProcessingRequest, Status>) -> Ready<Option<Item>> {
    let response = match msg {
        Err(status) => return ready(Some(Err(status))),
        Ok(req) => match req.request {
            Some(Request::RequestHeaders(_)) => {
                Response::RequestHeaders(HeadersResponse { response: common() })
            }
            Some(Request::ResponseHeaders(_)) => {
                Response::ResponseHeaders(HeadersResponse { response: common() })
            }
            Some(Request::RequestBody(_)) => {
                Response::RequestBody(BodyResponse { response: common() })
            }
            Some(Request::ResponseBody(_)) => {
                Response::ResponseBody(BodyResponse { response: common() })
            }
            Some(Request::RequestTrailers(_)) => {
                Response::RequestTrailers(TrailersResponse::default())
            }
            Some(Request::ResponseTrailers(_)) => {
                Response::ResponseTrailers(TrailersResponse::default())
            }
            // Nothing to answer (e.g. a message with no payload): skip it.
            None => return ready(None),
        },
    };
    ready(Some(Ok(ProcessingResponse {
        response: Some(response),
        ..Default::default()
    })))
}

#[tonic::async_trait]
impl ExternalProcessor for Noop {
    type ProcessStream =
        futures::stream::Take<FilterMap<Streaming<ProcessingRequest>, Ready<Option<Item>>, Answer>>;

    async fn process(
        &self,
        request: tonic::Request<Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, Status> {
        let answers = if self.end_after_request_headers {
            1
        } else {
            usize::MAX
        };
        let stream = request
            .into_inner()
            .filter_map(answer as Answer)
            .take(answers);
        Ok(tonic::Response::new(stream))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        eprintln!("noop_extproc listening on {}", args.listen);
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(ExternalProcessorServer::new(Noop {
                end_after_request_headers: args.end_after_request_headers,
            }));
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        match args.listen.strip_prefix("unix:") {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                let listener = tokio::net::UnixListener::bind(path)?;
                let incoming = futures::stream::unfold(listener, |listener| async move {
                    let accepted = listener.accept().await.map(|(stream, _)| stream);
                    Some((accepted, listener))
                });
                router.serve_with_incoming_shutdown(incoming, stop).await?;
            }
            None => {
                router
                    .serve_with_shutdown(args.listen.parse()?, stop)
                    .await?
            }
        }
        Ok(())
    })
}
