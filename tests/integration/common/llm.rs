//! A stand-in LLM server speaking the three providers' shapes, for budgets, response
//! inspection and time-to-first-token: OpenAI chat completions (`/v1/chat/completions`),
//! Anthropic messages (`/v1/messages`) and Gemini (`/v1beta/models/M:generateContent`,
//! `:streamGenerateContent`). Each answers with the last message's text echoed back (so a
//! test makes the "model" say what it wants, a credential included), as a JSON body or as
//! a server-sent-events stream whose first event comes after `first_delay` and the others
//! every `chunk_delay`. Every call reports [`INPUT_TOKENS`] and [`OUTPUT_TOKENS`] (an
//! OpenAI stream only when asked, as OpenAI does). Every request body is recorded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

pub const INPUT_TOKENS: u64 = 100;
pub const OUTPUT_TOKENS: u64 = 50;

#[derive(Debug, Clone, Copy)]
pub struct LlmOptions {
    pub first_delay: Duration,
    pub chunk_delay: Duration,
    /// How many pieces a streamed answer comes in.
    pub chunks: usize,
}

impl Default for LlmOptions {
    fn default() -> Self {
        LlmOptions {
            first_delay: Duration::from_millis(20),
            chunk_delay: Duration::from_millis(5),
            chunks: 5,
        }
    }
}

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub accept_encoding: Option<String>,
    pub body: Value,
}

pub struct LlmServer {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    _runtime: tokio::runtime::Runtime,
}

impl LlmServer {
    pub fn start(options: LlmOptions) -> LlmServer {
        let (runtime, listener, addr) = super::loopback_server();
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let record = calls.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, record.clone(), options));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        LlmServer {
            addr,
            calls,
            _runtime: runtime,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(
    req: Request<Incoming>,
    calls: Arc<Mutex<Vec<Call>>>,
    options: LlmOptions,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let accept_encoding = req
        .headers()
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    calls.lock().unwrap().push(Call {
        path: path.clone(),
        accept_encoding,
        body: body.clone(),
    });
    let said = last_text(&body);
    let pieces = split(&said, options.chunks);
    let streaming = body["stream"] == true || path.ends_with(":streamGenerateContent");
    let (events, json_body): (Vec<String>, Value) = if path.ends_with("/chat/completions") {
        let usage = json!({"prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS,
                           "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS});
        let mut events: Vec<String> = pieces
            .iter()
            .map(|p| {
                data(
                    &json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                             "model": "gpt-4o-mini",
                             "choices": [{"index": 0, "delta": {"content": p}}]}),
                )
            })
            .collect();
        if body["stream_options"]["include_usage"] == true {
            events.push(data(&json!({"id": "chatcmpl-1", "model": "gpt-4o-mini",
                                     "choices": [], "usage": usage})));
        }
        events.push("data: [DONE]\n\n".to_owned());
        let whole = json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": said}}],
                           "usage": usage});
        (events, whole)
    } else if path.ends_with("/v1/messages") {
        let mut events = vec![named(
            "message_start",
            &json!({"type": "message_start", "message": {"model": "claude-sonnet-4",
                    "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1}}}),
        )];
        events.extend(pieces.iter().map(|p| {
            named(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": p}}),
            )
        }));
        events.push(named(
            "message_delta",
            &json!({"type": "message_delta", "usage": {"output_tokens": OUTPUT_TOKENS}}),
        ));
        events.push(named("message_stop", &json!({"type": "message_stop"})));
        let whole = json!({"type": "message", "model": "claude-sonnet-4",
                           "content": [{"type": "text", "text": said}],
                           "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS}});
        (events, whole)
    } else {
        let chunk = |text: &str, output: u64| {
            json!({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}}],
                   "usageMetadata": {"promptTokenCount": INPUT_TOKENS,
                                     "candidatesTokenCount": output},
                   "modelVersion": "gemini-2.5-flash"})
        };
        let n = pieces.len() as u64;
        let events = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| data(&chunk(p, OUTPUT_TOKENS * (i as u64 + 1) / n.max(1))))
            .collect();
        (events, chunk(&said, OUTPUT_TOKENS))
    };
    if !streaming {
        let text = serde_json::to_vec(&json_body).unwrap();
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(text)).boxed())
            .unwrap());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        tokio::time::sleep(options.first_delay).await;
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(options.chunk_delay).await;
            }
            if tx.send(Bytes::from(event)).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap())
}

fn data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

fn named(event: &str, value: &Value) -> String {
    format!("event: {event}\ndata: {value}\n\n")
}

/// The text of the last message (OpenAI, Anthropic) or content part (Gemini).
fn last_text(body: &Value) -> String {
    if let Some(messages) = body["messages"].as_array()
        && let Some(last) = messages.last()
    {
        return last["content"].as_str().unwrap_or_default().to_owned();
    }
    if let Some(contents) = body["contents"].as_array()
        && let Some(last) = contents.last()
    {
        return last["parts"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    String::new()
}

/// `text` in `n` pieces, split between words where it can be.
fn split(text: &str, n: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    if words.is_empty() {
        return vec![String::new()];
    }
    let per = words.len().div_ceil(n.max(1));
    words.chunks(per).map(|c| c.concat()).collect()
}
