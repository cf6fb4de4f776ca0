//! One ext_proc stream = one HTTP request. Envoy sends the request headers first; the
//! decision is made there — unless the decision needs the body (a secret that signs it, a
//! policy rule with a body condition that could decide it), in which case Portcullis asks
//! Envoy to buffer the body and send the trailers (`mode_override`) and decides when the
//! body arrives. Once an allowed request needs nothing more of Envoy (no response to scrub,
//! meter, inspect or filter), Portcullis ends the stream with its answer: Envoy goes on
//! without the processor ([`StreamState::is_settled`]). Otherwise whatever Envoy sends
//! after an allowed request that the decision did not need (bodies, trailers, response
//! phases — depending on its processing mode) is answered with "continue", so a config
//! that sends more than Portcullis needs still works. Anything out of order fails the
//! stream, and Envoy fails the request closed.
//!
//! No forward without a decision on the whole body. In BUFFERED mode Envoy sends the body
//! once, whole: with `end_of_stream: true`, or — when trailers follow (HTTP/2, or HTTP/1.1
//! chunked with a trailer) — with `end_of_stream: false`, holding the request until the body
//! and then the trailers are answered. Either way the decision is made on that body, where
//! header changes (credentials) can still be applied. An Envoy that ignores the mode
//! override and streams the body instead is caught and refused with `body_not_buffered`
//! (a 500, an audit record, an error log, `portcullis_rejections_total`): a first chunk
//! shorter than the declared `content-length` is refused at once; without one, any body
//! after the part decided on is refused before Envoy lets it move.

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse,
    TrailersResponse, processing_response::Response as Answer,
};
use tonic::Status;
use tracing::Instrument;

#[cfg(test)]
mod tests;

use super::Shared;
use super::convert::{self, ListenerContext};
use super::watch::{InspectWatch, UsageWatch};
use crate::audit::{AuditRecord, ResponseRecord, micros};
use crate::policy::Action;
use crate::request::OutboundRequest;
use crate::secrets::scrub::Scrubber;
use crate::snapshot::{Decided, Snapshot, ToolsListFilter};
use crate::telemetry::metrics::StreamGuard;
use crate::telemetry::trace::StreamTrace;
use crate::transforms::response_dlp::{ResponseAction, ResponseInspector};
use crate::transforms::{Outcome, Rejection};

/// Waits up to this long on other services are left inside Envoy's `message_timeout`
/// (0.5 s in `envoy/*.yaml`), sparing a round trip; the other half is the margin for
/// everything else the decision does (identity, secrets from cache).
const FITS_IN_MESSAGE_TIMEOUT: Duration = Duration::from_millis(250);

// Lives for one message; boxing the response would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Reply {
    Send(ProcessingResponse),
    /// Envoy runs in observability mode and ignores answers.
    Silent,
    /// A protocol violation: end the stream with this status.
    Fail(Status),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingRequestHeaders,
    /// Headers seen; the decision waits for the buffered body.
    AwaitingBody,
    /// Allowed; later phases pass through (see [`BodySeen`] for the request body).
    Forwarded,
    /// Refused with an immediate response, or failed.
    Finished,
}

/// What the decision saw of the request body, and so what Envoy may still send of it.
enum BodySeen {
    /// The decision did not need it: whatever Envoy sends of it passes unseen.
    Unneeded,
    /// All of it: the request had none, or its buffered body came with `end_of_stream`.
    Whole,
    /// The buffered body came with `end_of_stream: false` and was decided on: only the
    /// trailers may follow. More body means Envoy streamed what it was asked to buffer; the
    /// request is then refused before that body moves.
    BeforeTrailers(Box<DecidedRequest>),
}

/// The request an allowed decision was made for, kept to refuse it after all.
struct DecidedRequest {
    snapshot: Arc<Snapshot>,
    request: OutboundRequest,
}

/// The Envoy message a decision answers: it decides the shape of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answering {
    Headers,
    Body,
    /// The trailers of a request with trailers but no body.
    Trailers,
}

/// A request whose decision waits for its body.
struct PendingBody {
    request: OutboundRequest,
    snapshot: Arc<Snapshot>,
    /// Time spent on it so far (the headers phase).
    spent: Duration,
    body: Vec<u8>,
    /// Envoy was asked for the response too: the request may be an MCP `tools/list`.
    watch_response: bool,
}

impl PendingBody {
    /// The decision this buffered body now allows: on the whole body, answered in
    /// `answering`'s message.
    fn undecided(self, started: Instant, answering: Answering, trailers_follow: bool) -> Undecided {
        Undecided {
            snapshot: self.snapshot,
            request: self.request,
            body: Some(self.body),
            started,
            spent: self.spent,
            answering,
            trailers_follow,
            watch_response: self.watch_response,
        }
    }
}

/// What the stream does with the upstream's response.
enum ResponseWatch {
    /// Nothing: Envoy does not send it.
    Off,
    /// Envoy sends the response headers, but there is nothing to filter: let it pass.
    Pass,
    /// A `tools/list` answer: drop the tools this workload may not call.
    ToolsList(Box<ToolsListFilter>),
}

/// A request ready to be decided. Kept in [`StreamState::deferred`] when the decision may
/// outlast Envoy's message timeout (an LLM judge): Envoy is first told to wait longer.
struct Undecided {
    snapshot: Arc<Snapshot>,
    request: OutboundRequest,
    /// The buffered body; empty for a request without one; `None`: not buffered.
    body: Option<Vec<u8>>,
    started: Instant,
    spent: Duration,
    answering: Answering,
    /// The body came with `end_of_stream: false`: the trailers follow.
    trailers_follow: bool,
    /// Envoy sends the response too (see [`PendingBody::watch_response`]).
    watch_response: bool,
}

/// The response to a request that carried a credential: scrubbed of it (every form it left
/// in) before the workload sees it.
struct ResponseScrub {
    scrubber: Scrubber,
    secret: Arc<str>,
    request_id: String,
    /// How a refusal of the response is laid out for this workload's client.
    error_shape: convert::ErrorShape,
    /// Envoy sent the response headers, as asked.
    response_seen: bool,
}

impl Drop for ResponseScrub {
    fn drop(&mut self) {
        if !self.response_seen {
            // Envoy answers a failed upstream itself, and a workload may hang up first; but
            // an Envoy that ignores `mode_override` never sends any response: say so.
            tracing::warn!(request_id = %self.request_id, secret = &*self.secret,
                "the response to a request that carried a credential never came to be \
                 scrubbed (no response, or Envoy ignores mode_override: is \
                 allow_mode_override set?)");
        }
    }
}

impl ResponseScrub {
    fn of(request: &OutboundRequest, outcome: &Outcome) -> Option<ResponseScrub> {
        if outcome.rejection.is_some() {
            return None;
        }
        let scrubber = Scrubber::new(outcome.mutations.scrub.iter().cloned())?;
        let secret = outcome.trace.iter().find_map(|t| {
            let a = &t.annotations;
            [&a.injected, &a.swapped, &a.signed]
                .into_iter()
                .find_map(|used| used.as_ref().map(|u| u.secret.clone()))
        })?;
        Some(ResponseScrub {
            scrubber,
            secret,
            request_id: request.id.clone(),
            error_shape: convert::ErrorShape::for_request(request),
            response_seen: false,
        })
    }
}

pub(super) struct StreamState {
    shared: Arc<Shared>,
    listener: ListenerContext,
    phase: Phase,
    pending: Option<Box<PendingBody>>,
    body_seen: BodySeen,
    response: ResponseWatch,
    /// Set when the request left with a credential.
    scrub: Option<Box<ResponseScrub>>,
    /// Set when a budget meters the call: its usage, read from the response.
    usage: Option<Box<UsageWatch>>,
    /// Set when `response_dlp` inspects the response.
    inspect: Option<Box<InspectWatch>>,
    /// A decision to make before reading Envoy's next message (see [`StreamState::resume`]).
    deferred: Option<Box<Undecided>>,
    /// The stream's span, from the request headers on; it ends with the stream.
    trace: StreamTrace,
    _open: StreamGuard,
}

impl StreamState {
    pub(super) fn new(shared: Arc<Shared>, listener: ListenerContext) -> StreamState {
        let open = shared.metrics.stream_guard();
        StreamState {
            shared,
            listener,
            phase: Phase::AwaitingRequestHeaders,
            pending: None,
            body_seen: BodySeen::Unneeded,
            response: ResponseWatch::Off,
            scrub: None,
            usage: None,
            inspect: None,
            deferred: None,
            trace: StreamTrace::default(),
            _open: open,
        }
    }

    pub(super) fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Whether Portcullis needs nothing more of this request: it was allowed on all the
    /// decision needed, and its response is neither scrubbed, metered, inspected nor
    /// filtered. The stream then ends right after the answer — a clean close, after which
    /// Envoy goes on without the processor. Under the shipped configs Envoy ends it there
    /// itself; under a config that sends more phases than Portcullis asked for, the stream
    /// would otherwise stay open for the upstream's whole round trip.
    pub(super) fn is_settled(&self) -> bool {
        self.phase == Phase::Forwarded
            && self.deferred.is_none()
            && matches!(self.response, ResponseWatch::Off | ResponseWatch::Pass)
            && self.scrub.is_none()
            && self.usage.is_none()
            && self.inspect.is_none()
            && matches!(self.body_seen, BodySeen::Unneeded | BodySeen::Whole)
    }

    pub(super) async fn handle(&mut self, message: ProcessingRequest) -> Reply {
        let observing = message.observability_mode;
        let reply = match (self.phase, message.request) {
            (Phase::AwaitingRequestHeaders, Some(Message::RequestHeaders(headers))) => {
                self.on_request_headers(headers, &message.attributes).await
            }
            (Phase::AwaitingBody, Some(Message::RequestBody(chunk))) => {
                let span = self.trace.span().clone();
                self.on_request_body(chunk.body, chunk.end_of_stream)
                    .instrument(span)
                    .await
            }
            (Phase::AwaitingBody, Some(Message::RequestTrailers(_))) => {
                let span = self.trace.span().clone();
                self.on_trailers_before_body().instrument(span).await
            }
            (Phase::Forwarded, Some(Message::RequestBody(chunk))) => {
                let span = self.trace.span().clone();
                self.on_body_after_decision(chunk).instrument(span).await
            }
            (Phase::Forwarded, Some(Message::ResponseBody(chunk))) => {
                self.on_response_body(chunk.body, chunk.end_of_stream).await
            }
            (Phase::Forwarded, Some(Message::RequestTrailers(_))) => {
                // Nothing of the request comes after its trailers.
                if !matches!(self.body_seen, BodySeen::Unneeded) {
                    self.body_seen = BodySeen::Whole;
                }
                Reply::Send(answer(Answer::RequestTrailers(TrailersResponse::default())))
            }
            (Phase::Forwarded, Some(Message::ResponseTrailers(trailers))) => {
                self.on_response_trailers(&trailers).await
            }
            (Phase::Forwarded, Some(Message::ResponseHeaders(headers))) => {
                self.on_response_headers(&headers).await
            }
            // Flow-control-only messages carry no phase.
            (_, None) => return Reply::Silent,
            (phase, Some(other)) => self.fail(phase, &other),
        };
        if observing {
            // Nothing waits for the answer: decide now (for the audit trail), say nothing.
            if self.has_deferred() {
                let _ = self.resume().await;
            }
            Reply::Silent
        } else {
            reply
        }
    }

    /// Whether a decision was put off behind a timeout extension: the stream loop then
    /// calls [`StreamState::resume`] instead of reading another message.
    pub(super) fn has_deferred(&self) -> bool {
        self.deferred.is_some()
    }

    /// Makes the decision [`StreamState::decide`] put off. Envoy sends nothing more on this
    /// stream until it has the answer, so there is no message to read in between.
    pub(super) async fn resume(&mut self) -> Reply {
        let Some(work) = self.deferred.take() else {
            return Reply::Silent;
        };
        let span = self.trace.span().clone();
        self.run(*work).instrument(span).await
    }

    /// Decides a request, unless a stage in scope may wait on another service (an LLM
    /// judge, a gRPC processor) for longer than fits in Envoy's `message_timeout` (0.5 s):
    /// then the answer to this message only extends Envoy's timer, and the decision runs on
    /// the stream loop's next turn ([`StreamState::resume`]). One reply per turn keeps the
    /// loop task-free.
    async fn decide(&mut self, work: Undecided) -> Reply {
        let wait = match work.snapshot.unavailable {
            Some(_) => None,
            None => work
                .snapshot
                .pipeline
                .longest_wait(&work.request)
                .filter(|wait| *wait > FITS_IN_MESSAGE_TIMEOUT),
        };
        if let Some(wait) = wait {
            self.deferred = Some(Box::new(work));
            return Reply::Send(convert::extend_timeout(wait));
        }
        self.run(work).await
    }

    async fn run(&mut self, work: Undecided) -> Reply {
        let Undecided {
            snapshot,
            request,
            body,
            started,
            spent,
            answering,
            trailers_follow,
            watch_response,
        } = work;
        let mut decided = snapshot
            .decide(&request, &self.listener.tags, body.as_deref())
            .await;
        if answering == Answering::Trailers
            && decided.outcome.rejection.is_none()
            && !decided.outcome.mutations.is_empty()
        {
            decided = snapshot.refused(
                &request,
                &self.listener.tags,
                convert::trailers_without_body(),
            );
        }
        if watch_response {
            self.watch_response(
                &snapshot,
                &request,
                &decided,
                body.as_deref().unwrap_or_default(),
            );
        }
        let seen = match (&body, trailers_follow) {
            (None, _) => BodySeen::Unneeded,
            (Some(_), false) => BodySeen::Whole,
            // Kept only for an allowed request: a refused one ends the stream.
            (Some(_), true) if decided.outcome.rejection.is_none() => {
                BodySeen::BeforeTrailers(Box::new(DecidedRequest {
                    snapshot: snapshot.clone(),
                    request: request.clone(),
                }))
            }
            (Some(_), true) => BodySeen::Whole,
        };
        let reply = self
            .finish(&snapshot, request, decided, started, spent, answering)
            .await;
        self.body_seen = seen;
        reply
    }

    fn fail(&mut self, phase: Phase, message: &Message) -> Reply {
        let what = match message {
            Message::RequestHeaders(_) => "request_headers",
            Message::ResponseHeaders(_) => "response_headers",
            Message::RequestBody(_) => "request_body",
            Message::ResponseBody(_) => "response_body",
            Message::RequestTrailers(_) => "request_trailers",
            Message::ResponseTrailers(_) => "response_trailers",
        };
        let why = match phase {
            Phase::AwaitingRequestHeaders => {
                "before request_headers: is Envoy's processing_mode skipping request headers?"
            }
            Phase::AwaitingBody => "while waiting for the buffered request body",
            Phase::Forwarded => "after the request was decided on all of its body",
            Phase::Finished => "after the request was refused",
        };
        tracing::warn!(message = what, "unexpected ext_proc message {why}");
        self.trace.failed();
        self.shared.metrics.stream_error();
        self.phase = Phase::Finished;
        Reply::Fail(Status::failed_precondition(format!(
            "portcullis: unexpected {what} {why}"
        )))
    }

    async fn on_request_headers(
        &mut self,
        headers: HttpHeaders,
        attributes: &std::collections::HashMap<String, envoy_types::pb::google::protobuf::Struct>,
    ) -> Reply {
        let started = Instant::now();
        let snapshot = self.shared.snapshot.load_full();
        let has_body = !headers.end_of_stream;
        let parsed =
            convert::outbound_request(headers, attributes, &self.listener, &snapshot.request);
        self.trace = StreamTrace::start(match &parsed {
            Ok(request) => request,
            Err(invalid) => &invalid.request,
        });
        let span = self.trace.span().clone();
        self.decide_headers(parsed, snapshot, has_body, started)
            .instrument(span)
            .await
    }

    async fn decide_headers(
        &mut self,
        parsed: Result<OutboundRequest, Box<convert::InvalidRequest>>,
        snapshot: Arc<Snapshot>,
        has_body: bool,
        started: Instant,
    ) -> Reply {
        match parsed {
            Ok(request) => {
                if has_body && snapshot.needs_body(&request, &self.listener.tags) {
                    // Refuse a declared oversize body before asking Envoy to buffer it:
                    // Envoy can stall a stream whose body passes its own buffer limit
                    // while the mode change is in flight.
                    if declared_length(&request).is_some_and(|len| len > snapshot.max_body_bytes) {
                        let rejection = Rejection::body_too_large(snapshot.max_body_bytes);
                        let decided = snapshot.refused(&request, &self.listener.tags, rejection);
                        return self
                            .finish(
                                &snapshot,
                                request,
                                decided,
                                started,
                                Duration::ZERO,
                                Answering::Headers,
                            )
                            .await;
                    }
                    let watch_response = snapshot.watches_tools_list(&request);
                    let pending_may_scrub = snapshot.pipeline.may_put_credential(&request)
                        || snapshot.pipeline.watches_response(&request);
                    self.pending = Some(Box::new(PendingBody {
                        request,
                        snapshot,
                        spent: started.elapsed(),
                        body: Vec::new(),
                        watch_response,
                    }));
                    self.phase = Phase::AwaitingBody;
                    let mut response = convert::buffer_body(watch_response);
                    if pending_may_scrub {
                        convert::may_scrub_response(&mut response);
                    }
                    return Reply::Send(response);
                }
                // A request without a body has an empty one, for transforms that sign it
                // and body conditions; a body nothing needs streams through unseen.
                self.decide(Undecided {
                    snapshot,
                    request,
                    body: if has_body { None } else { Some(Vec::new()) },
                    started,
                    spent: Duration::ZERO,
                    answering: Answering::Headers,
                    trailers_follow: false,
                    watch_response: false,
                })
                .await
            }
            Err(invalid) => {
                let rejection = convert::invalid_request_rejection(&invalid.error);
                let decided = snapshot.refused(&invalid.request, &self.listener.tags, rejection);
                self.finish(
                    &snapshot,
                    invalid.request,
                    decided,
                    started,
                    Duration::ZERO,
                    Answering::Headers,
                )
                .await
            }
        }
    }

    async fn on_request_body(&mut self, chunk: Vec<u8>, end_of_stream: bool) -> Reply {
        let started = Instant::now();
        let Some(mut pending) = self.pending.take() else {
            return self.fail(
                Phase::AwaitingBody,
                &Message::RequestBody(Default::default()),
            );
        };
        let limit = pending.snapshot.max_body_bytes;
        if pending.body.len() + chunk.len() > limit {
            let decided = pending.snapshot.refused(
                &pending.request,
                &self.listener.tags,
                Rejection::body_too_large(limit),
            );
            let snapshot = pending.snapshot.clone();
            return self
                .finish(
                    &snapshot,
                    pending.request,
                    decided,
                    started,
                    pending.spent,
                    Answering::Body,
                )
                .await;
        }
        pending.body.extend_from_slice(&chunk);
        // In BUFFERED mode this is the whole body, `end_of_stream: false` saying only that
        // trailers follow. A body shorter than the length the headers declare is a first
        // chunk: Envoy is streaming what it was asked to buffer.
        if !end_of_stream
            && let Some(declared) = declared_length(&pending.request)
            && pending.body.len() < declared
        {
            let detail = format!(
                "a first chunk of {} of the {declared} bytes declared",
                pending.body.len()
            );
            return self
                .refuse_unbuffered(
                    pending.snapshot,
                    pending.request,
                    &detail,
                    started,
                    pending.spent,
                )
                .await;
        }
        self.decide(pending.undecided(started, Answering::Body, !end_of_stream))
            .await
    }

    /// Trailers while the body is awaited: the request has trailers and no body at all
    /// (Envoy sends a buffered body before the trailers whenever there is one). Decided
    /// on the empty body.
    async fn on_trailers_before_body(&mut self) -> Reply {
        let started = Instant::now();
        let Some(pending) = self.pending.take() else {
            return self.fail(
                Phase::AwaitingBody,
                &Message::RequestTrailers(Default::default()),
            );
        };
        self.decide(pending.undecided(started, Answering::Trailers, false))
            .await
    }

    /// Request body after the decision: it passes when the decision did not need it;
    /// after a decision on a body that came before trailers, it is body the decision never
    /// saw (Envoy streams what it was asked to buffer), and the request is refused.
    async fn on_body_after_decision(
        &mut self,
        chunk: envoy_types::pb::envoy::service::ext_proc::v3::HttpBody,
    ) -> Reply {
        match std::mem::replace(&mut self.body_seen, BodySeen::Whole) {
            BodySeen::Unneeded => {
                self.body_seen = BodySeen::Unneeded;
                Reply::Send(answer(Answer::RequestBody(BodyResponse {
                    response: Some(CommonResponse::default()),
                })))
            }
            BodySeen::BeforeTrailers(decided) => {
                let DecidedRequest { snapshot, request } = *decided;
                let detail = format!(
                    "{} more bytes after the body the decision was made on",
                    chunk.body.len()
                );
                self.refuse_unbuffered(snapshot, request, &detail, Instant::now(), Duration::ZERO)
                    .await
            }
            BodySeen::Whole => self.fail(Phase::Forwarded, &Message::RequestBody(chunk)),
        }
    }

    /// Refuses a request whose body Envoy streams instead of buffering: loudly, since it
    /// means the Envoy config defeats body decisions.
    async fn refuse_unbuffered(
        &mut self,
        snapshot: Arc<Snapshot>,
        request: OutboundRequest,
        detail: &str,
        started: Instant,
        spent: Duration,
    ) -> Reply {
        tracing::error!(
            request_id = %request.id,
            host = %request.host,
            "Envoy streamed a request body Portcullis asked it to buffer ({detail}): refused; \
             is `allow_mode_override: true` set on the ext_proc filter?"
        );
        let rejection = Rejection::body_not_buffered(detail);
        let decided = snapshot.refused(&request, &self.listener.tags, rejection);
        self.finish(&snapshot, request, decided, started, spent, Answering::Body)
            .await
    }

    /// After an allowed request whose response Envoy will send: a `tools/list` answer is
    /// filtered, anything else passes.
    fn watch_response(
        &mut self,
        snapshot: &Arc<Snapshot>,
        request: &OutboundRequest,
        decided: &Decided,
        body: &[u8],
    ) {
        self.response = match ToolsListFilter::start(snapshot, request, decided, body) {
            Some(filter) => ResponseWatch::ToolsList(Box::new(filter)),
            None => ResponseWatch::Pass,
        };
    }

    /// Response headers: kept for a `tools/list` answer (its body is coming, buffered),
    /// scrubbed of a credential the request carried, read for an LLM call's usage,
    /// prepared for inspection (a body that is not a stream is held by Envoy until it is
    /// inspected whole), otherwise passed.
    async fn on_response_headers(&mut self, headers: &HttpHeaders) -> Reply {
        let content_type = convert::header_text(headers, "content-type").unwrap_or_default();
        let filtering = match &mut self.response {
            ResponseWatch::ToolsList(filter) => {
                filter.set_content_type(content_type.clone());
                true
            }
            ResponseWatch::Pass | ResponseWatch::Off => false,
        };
        let body_follows = !headers.end_of_stream;
        let encoding = convert::header_text(headers, "content-encoding").unwrap_or_default();
        let encoding = encoding.trim();
        let encoded =
            body_follows && !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity");
        if let Some(usage) = self.usage.as_deref_mut() {
            usage.headers(&content_type, encoded);
            if !body_follows {
                usage.end(true);
                self.usage = None;
            }
        }
        let mut buffer_body = false;
        if let Some(inspect) = self.inspect.as_deref_mut() {
            if !body_follows {
                self.inspect = None;
            } else if encoded {
                if inspect.inspection.action == ResponseAction::Flag {
                    inspect.record(Some("not_inspected")).await;
                    self.inspect = None;
                } else {
                    // Asked for `accept-encoding: identity` and compressed anyway: what is
                    // inside cannot be inspected, so it does not reach the workload.
                    let rejection = convert::response_refusal(
                        "response_dlp",
                        "response_not_inspectable",
                        format!(
                            "the upstream answered with content-encoding {encoding:?} although \
                             Portcullis asked for none: the response could not be inspected, \
                             so it was withheld"
                        ),
                    );
                    self.shared
                        .metrics
                        .record_rejection(rejection.transform, rejection.reason);
                    let response =
                        convert::refuse(&inspect.request_id, &rejection, inspect.error_shape);
                    inspect.record(Some("withheld")).await;
                    self.inspect = None;
                    self.end_scrub(None).await;
                    self.phase = Phase::Finished;
                    return Reply::Send(response);
                }
            } else {
                let inspector = ResponseInspector::new(inspect.inspection.clone(), &content_type);
                // A tools/list answer is buffered already.
                inspect.buffered = !inspector.is_streaming();
                buffer_body = inspect.buffered && !filtering;
                inspect.inspector = Some(inspector);
            }
        }
        let inspecting = self.inspect.is_some();
        let Some(scrub) = self.scrub.as_deref_mut() else {
            if inspecting || self.usage.is_some() {
                // The body is read (and, inspected, may change length).
                return Reply::Send(convert::watched_response_headers(
                    &[],
                    inspecting || filtering,
                    buffer_body,
                ));
            }
            return Reply::Send(convert::continue_response_headers(filtering));
        };
        scrub.response_seen = true;
        if encoded {
            // Asked for `accept-encoding: identity` and compressed anyway: what is inside
            // cannot be scrubbed, so it does not reach the workload.
            let rejection = convert::response_not_scrubbable(encoding);
            tracing::warn!(request_id = %scrub.request_id, secret = &*scrub.secret,
                encoding, "encoded response to a request with a credential withheld");
            self.shared
                .metrics
                .record_rejection(rejection.transform, rejection.reason);
            let response = convert::refuse(&scrub.request_id, &rejection, scrub.error_shape);
            self.end_scrub(Some(rejection.reason)).await;
            self.phase = Phase::Finished;
            return Reply::Send(response);
        }
        let before = scrub.scrubber.replaced();
        let scrubbed: Vec<(String, Vec<u8>)> = convert::header_list(headers.headers.as_ref())
            .filter(|(name, _)| !name.starts_with(':'))
            .filter_map(|(name, value)| Some((name, scrub.scrubber.whole(value)?)))
            .collect();
        let replaced = scrub.scrubber.replaced() - before;
        if replaced > 0 {
            self.shared
                .metrics
                .record_response_scrubbed(&scrub.secret, replaced);
        }
        if !body_follows {
            self.end_scrub(None).await;
        }
        Reply::Send(convert::watched_response_headers(
            &scrubbed,
            body_follows || filtering,
            buffer_body,
        ))
    }

    /// A piece of the response body: read for an LLM call's usage, scrubbed of the
    /// request's credential, inspected by `response_dlp`, and when it is the buffered
    /// answer to a `tools/list`, rewritten without the tools this workload may not call.
    /// Anything else passes unchanged.
    async fn on_response_body(&mut self, body: Vec<u8>, end_of_stream: bool) -> Reply {
        if let Some(usage) = self.usage.as_deref_mut() {
            usage.piece(&body);
            if end_of_stream {
                usage.end(true);
                self.usage = None;
            }
        }
        let mut body = body;
        let mut changed = false;
        if let Some(scrub) = self.scrub.as_deref_mut() {
            let before = scrub.scrubber.replaced();
            let scrubbed = scrub.scrubber.piece(&body, end_of_stream);
            let replaced = scrub.scrubber.replaced() - before;
            if replaced > 0 {
                self.shared
                    .metrics
                    .record_response_scrubbed(&scrub.secret, replaced);
            }
            changed = scrubbed != body;
            body = scrubbed;
        }
        if let Some(inspect) = self.inspect.as_deref_mut()
            && let Some(inspector) = inspect.inspector.as_mut()
        {
            // Buffered, the whole body comes at once (before trailers, if any).
            let whole = inspect.buffered;
            let inspected = if whole {
                inspector.whole(&body)
            } else {
                inspector.piece(&body, end_of_stream)
            };
            if inspected.denied && whole {
                let rejection = convert::response_refusal(
                    "response_dlp",
                    "response_dlp",
                    "the response was withheld by the Portcullis egress gateway: a DLP \
                     detector found a credential or personal data in it"
                        .to_owned(),
                );
                self.shared
                    .metrics
                    .record_rejection(rejection.transform, rejection.reason);
                let response =
                    convert::refuse(&inspect.request_id, &rejection, inspect.error_shape);
                inspect.record(None).await;
                self.inspect = None;
                self.end_scrub(None).await;
                self.phase = Phase::Finished;
                return Reply::Send(response);
            }
            if inspected.changed {
                changed = true;
                body = inspected.body;
            }
            if end_of_stream || whole {
                inspect.record(None).await;
                self.inspect = None;
            }
        }
        let mut rewritten = None;
        if let ResponseWatch::ToolsList(filter) = &self.response
            && end_of_stream
        {
            // Only a buffered body is filtered whole; a streamed one is not ours to cut.
            rewritten = filter.filter(&body);
            self.response = ResponseWatch::Pass;
        }
        if end_of_stream {
            self.end_scrub(None).await;
        }
        Reply::Send(convert::continue_response_body(
            rewritten.or(changed.then_some(body)),
        ))
    }

    /// Response trailers: scrubbed like the headers. Bytes held back from the body (the
    /// start of what could have been a credential, an incomplete event under inspection)
    /// can no longer be sent: the stream fails, and Envoy resets the response rather than
    /// hand over a cut one silently.
    async fn on_response_trailers(&mut self, trailers: &HttpTrailers) -> Reply {
        if let Some(mut usage) = self.usage.take() {
            usage.end(true);
        }
        if let Some(inspect) = self.inspect.take() {
            let held = inspect
                .inspector
                .as_ref()
                .is_some_and(ResponseInspector::holds_back);
            inspect.record(held.then_some("withheld")).await;
            if held {
                tracing::warn!(request_id = %inspect.request_id,
                    "response trailers after a stream that ended in an incomplete event; \
                     response reset");
                self.shared.metrics.stream_error();
                self.end_scrub(Some("response_not_inspectable")).await;
                self.phase = Phase::Finished;
                return Reply::Fail(Status::failed_precondition(
                    "portcullis: response stream ended in an incomplete event, then trailers",
                ));
            }
        }
        let Some(scrub) = self.scrub.as_deref_mut() else {
            return Reply::Send(answer(
                Answer::ResponseTrailers(TrailersResponse::default()),
            ));
        };
        if scrub.scrubber.holds_back() {
            tracing::warn!(request_id = %scrub.request_id, secret = &*scrub.secret,
                "response trailers after a body that ended in what could begin a credential; \
                 response reset");
            self.shared.metrics.stream_error();
            self.end_scrub(Some("response_not_scrubbable")).await;
            self.phase = Phase::Finished;
            return Reply::Fail(Status::failed_precondition(
                "portcullis: response body ended in what could begin a credential, then trailers",
            ));
        }
        let scrubbed: Vec<(String, Vec<u8>)> = convert::header_list(trailers.trailers.as_ref())
            .filter_map(|(name, value)| Some((name, scrub.scrubber.whole(value)?)))
            .collect();
        self.end_scrub(None).await;
        Reply::Send(convert::scrubbed_response_trailers(&scrubbed))
    }

    /// The response is over (or withheld, for `withheld`): its audit line, when a
    /// credential was cut out of it or it was withheld.
    async fn end_scrub(&mut self, withheld: Option<&'static str>) {
        let Some(scrub) = self.scrub.take() else {
            return;
        };
        let replacements = scrub.scrubber.replaced();
        if replacements == 0 && withheld.is_none() {
            return;
        }
        let record = ResponseRecord {
            ts: crate::audit::now_rfc3339(),
            request_id: &scrub.request_id,
            event: if withheld.is_some() {
                "response_withheld"
            } else {
                "response_scrubbed"
            },
            secret: &scrub.secret,
            replacements,
            reason: withheld,
        };
        self.shared.audit.write_response(&record).await;
    }

    /// Answers Envoy, records the decision, writes the audit line.
    async fn finish(
        &mut self,
        snapshot: &Snapshot,
        request: OutboundRequest,
        decided: Decided,
        started: Instant,
        spent_before: Duration,
        answering: Answering,
    ) -> Reply {
        let mut response = match answering {
            Answering::Headers => convert::respond(&request, &decided.outcome, false),
            Answering::Body => convert::respond(&request, &decided.outcome, true),
            Answering::Trailers if decided.outcome.rejection.is_none() => {
                convert::continue_trailers()
            }
            Answering::Trailers => convert::respond(&request, &decided.outcome, true),
        };
        let elapsed = started.elapsed() + spent_before;
        let outcome = &decided.outcome;
        if let Some(scrub) = ResponseScrub::of(&request, outcome) {
            self.scrub = Some(Box::new(scrub));
            // Decided at the body: the response was already asked for (`buffer_body`).
            if matches!(answering, Answering::Headers) {
                convert::scrub_response(&mut response);
            }
        }
        if outcome.rejection.is_none() && outcome.response.any() {
            let watchers = outcome.response.clone();
            let identity = decided.identity.as_ref().ok().and_then(|i| i.name.clone());
            self.usage = watchers.meter.map(|meter| {
                Box::new(UsageWatch::new(
                    meter,
                    &request.id,
                    identity,
                    self.shared.audit.clone(),
                    self.shared.metrics.clone(),
                ))
            });
            self.inspect = watchers.inspection.map(|inspection| {
                Box::new(InspectWatch::new(
                    inspection,
                    &request.id,
                    convert::ErrorShape::for_request(&request),
                    self.shared.audit.clone(),
                    self.shared.metrics.clone(),
                ))
            });
            if matches!(answering, Answering::Headers) && self.scrub.is_none() {
                convert::scrub_response(&mut response);
            }
        }
        self.phase = if outcome.rejection.is_some() {
            Phase::Finished
        } else {
            Phase::Forwarded
        };
        let mut record = AuditRecord::of(&request, &decided, snapshot, micros(elapsed));
        record.trace_id = self.trace.trace_id();
        self.trace.decided(&record.span_decision());
        self.shared
            .metrics
            .record_decision(outcome.decision, record.policy, elapsed.as_secs_f64());
        if let Some(rejection) = &outcome.rejection {
            self.shared
                .metrics
                .record_rejection(rejection.transform, rejection.reason);
        }
        for step in &outcome.trace {
            step.annotations.record_metrics(&self.shared.metrics);
        }
        if let Some(dry_run) = record.dry_run {
            self.shared
                .metrics
                .record_dry_run(&dry_run.policy, dry_run.action.as_str());
            if dry_run.action == Action::Deny && outcome.rejection.is_none() {
                tracing::info!(
                    policy = &*dry_run.policy,
                    request_id = %request.id,
                    host = %request.host,
                    "dry-run policy would have denied this request"
                );
            }
        }
        // No forward without its audit record (audit.when_full: block).
        if let Err(unavailable) = self.shared.audit.write(&record).await
            && outcome.rejection.is_none()
        {
            self.phase = Phase::Finished;
            response = convert::refuse(
                &request.id,
                &unavailable.rejection(),
                convert::ErrorShape::for_request(&request),
            );
        }
        Reply::Send(response)
    }
}

fn declared_length(request: &OutboundRequest) -> Option<usize> {
    std::str::from_utf8(request.header("content-length")?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn answer(response: Answer) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}
