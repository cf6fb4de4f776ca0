//! Local secret backends (Vault KV v2, 1Password Connect, OAuth2 and GCP token endpoints)
//! that implement the documented request/response formats and record what they received.
//! Each runs on its own runtime thread, on a free port, and checks what it is sent (tokens,
//! paths, grant fields, client authentication, signed assertions): a request that fails a
//! check gets the backend's error answer, and the reason is kept in `rejections()`.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use super::repo;

/// One request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The form-encoded body, decoded, in order.
    pub fn form(&self) -> Vec<(String, String)> {
        decode_pairs(&self.body)
    }

    pub fn field(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        decode_pairs(self.query.as_deref().unwrap_or_default())
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

/// `application/x-www-form-urlencoded` pairs.
pub fn decode_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(name), form_decode(value))
        })
        .collect()
}

fn form_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// A backend's answer: status, JSON body, what it waits for before it is sent, and what to
/// do as it is sent.
pub(super) struct Answer {
    status: u16,
    body: Value,
    /// Sent in place of the JSON body (boxed: most answers are JSON).
    page: Option<Box<Page>>,
    /// Held while this says `true`.
    held: Option<tokio::sync::watch::Receiver<bool>>,
    on_send: Option<Box<dyn FnOnce() + Send>>,
}

/// A body other than JSON, with headers.
struct Page {
    content_type: &'static str,
    text: String,
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub(super) fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body,
            page: None,
            held: None,
            on_send: None,
        }
    }

    /// An HTML page.
    pub(super) fn html(status: u16, text: String) -> Answer {
        Answer {
            page: Some(Box::new(Page {
                content_type: "text/html; charset=utf-8",
                text,
                headers: Vec::new(),
            })),
            ..Answer::json(status, Value::Null)
        }
    }

    /// A `303 See Other` to `location`.
    pub(super) fn redirect(location: String) -> Answer {
        Answer {
            page: Some(Box::new(Page {
                content_type: "text/plain",
                text: String::new(),
                headers: vec![("location", location)],
            })),
            ..Answer::json(303, Value::Null)
        }
    }
}

pub(super) type Handler = Arc<dyn Fn(&Received) -> Answer + Send + Sync>;

/// A small HTTP/1 server on its own runtime: records every request, answers with `handler`.
pub(super) struct Server {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Server {
    pub(super) fn start(handler: Handler) -> Server {
        let (runtime, listener, addr) = super::loopback_server();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let record = received.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (record, handler) = (record.clone(), handler.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| serve(req, record.clone(), handler.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server {
            addr,
            received,
            runtime: Mutex::new(Some(runtime)),
        }
    }

    pub(super) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(super) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Stops listening and drops every open connection: the backend is down.
    fn stop(&self) {
        if let Some(runtime) = self.runtime.lock().unwrap().take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    req: Request<Incoming>,
    record: Arc<Mutex<Vec<Received>>>,
    handler: Handler,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let received = Received {
        method,
        path,
        query,
        headers,
        body,
    };
    record.lock().unwrap().push(received.clone());
    let answer = handler(&received);
    if let Some(mut held) = answer.held {
        let _ = held.wait_for(|held| !*held).await;
    }
    if let Some(on_send) = answer.on_send {
        on_send();
    }
    let mut response = Response::builder().status(answer.status);
    let (content_type, body) = match answer.page {
        Some(page) => {
            for (name, value) in &page.headers {
                response = response.header(*name, value);
            }
            (page.content_type, page.text)
        }
        None => ("application/json", answer.body.to_string()),
    };
    Ok(response
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

// ---- Vault KV v2 ----

struct VaultState {
    token: String,
    namespace: Option<String>,
    /// `mount/path` → (version, data).
    secrets: HashMap<String, (u64, Value)>,
    /// `mount/path`s the token may not read.
    denied: HashSet<String>,
    rejections: Vec<String>,
}

/// HashiCorp Vault's KV v2 read API: `GET /v1/{mount}/data/{path}` with `X-Vault-Token`.
pub struct Vault {
    server: Server,
    state: Arc<Mutex<VaultState>>,
}

impl Vault {
    pub fn start(token: &str, namespace: Option<&str>) -> Vault {
        let state = Arc::new(Mutex::new(VaultState {
            token: token.to_owned(),
            namespace: namespace.map(str::to_owned),
            secrets: HashMap::new(),
            denied: HashSet::new(),
            rejections: Vec::new(),
        }));
        let s = state.clone();
        let server = Server::start(Arc::new(move |r: &Received| vault_answer(&s, r)));
        Vault { server, state }
    }

    /// Writes a new version of `mount/path` (e.g. `secret/app/github`).
    pub fn put(&self, mount_path: &str, data: Value) {
        let mut state = self.state.lock().unwrap();
        let entry = state
            .secrets
            .entry(mount_path.to_owned())
            .or_insert((0, Value::Null));
        *entry = (entry.0 + 1, data);
    }

    /// The token may not read `mount/path` (403 `permission denied`).
    pub fn deny(&self, mount_path: &str) {
        self.state
            .lock()
            .unwrap()
            .denied
            .insert(mount_path.to_owned());
    }

    pub fn address(&self) -> String {
        self.server.url()
    }

    pub fn requests(&self) -> Vec<Received> {
        self.server.received()
    }

    pub fn rejections(&self) -> Vec<String> {
        self.state.lock().unwrap().rejections.clone()
    }

    pub fn stop(&self) {
        self.server.stop();
    }
}

fn vault_answer(state: &Mutex<VaultState>, r: &Received) -> Answer {
    let mut state = state.lock().unwrap();
    match vault_read(&state, r) {
        Ok(answer) => answer,
        Err((why, answer)) => {
            state.rejections.push(why);
            answer
        }
    }
}

fn vault_errors(status: u16, errors: &[&str]) -> Answer {
    Answer::json(status, json!({ "errors": errors }))
}

/// The answer to a read, or why the request was wrong and the answer to that.
fn vault_read(state: &VaultState, r: &Received) -> Result<Answer, (String, Answer)> {
    if r.method != "GET" {
        return Err((format!("method {}", r.method), vault_errors(405, &[])));
    }
    if r.header("x-vault-token") != Some(state.token.as_str()) {
        let answer = vault_errors(403, &["permission denied"]);
        return Err(("wrong or missing X-Vault-Token".into(), answer));
    }
    if r.header("x-vault-namespace") != state.namespace.as_deref() {
        let why = format!("namespace {:?}", r.header("x-vault-namespace"));
        return Err((why, vault_errors(403, &["permission denied"])));
    }
    let Some((mount, path)) = r
        .path
        .strip_prefix("/v1/")
        .and_then(|rest| rest.split_once("/data/"))
    else {
        return Err((format!("path {}", r.path), vault_errors(404, &[])));
    };
    let key = format!("{mount}/{path}");
    if state.denied.contains(&key) {
        return Ok(vault_errors(
            403,
            &["1 error occurred:\n\t* permission denied\n\n"],
        ));
    }
    Ok(match state.secrets.get(&key) {
        Some((version, data)) => Answer::json(
            200,
            json!({
                "request_id": "9b8a3c1e-0000-4000-8000-000000000000",
                "lease_id": "", "renewable": false, "lease_duration": 0,
                "data": {
                    "data": data,
                    "metadata": {"created_time": "2026-01-01T00:00:00Z", "deletion_time": "",
                                 "destroyed": false, "version": version},
                },
                "wrap_info": null, "warnings": null, "auth": null,
            }),
        ),
        None => vault_errors(404, &[]),
    })
}

// ---- 1Password Connect ----

struct OpItem {
    id: String,
    title: String,
    fields: Value,
}

struct OpVault {
    id: String,
    name: String,
    items: Vec<OpItem>,
}

struct OpState {
    token: String,
    vaults: Vec<OpVault>,
    rejections: Vec<String>,
}

/// The 1Password Connect REST API: vault and item listings with `filter`, item details
/// with `fields`, all behind `Authorization: Bearer <token>`.
pub struct OnePassword {
    server: Server,
    state: Arc<Mutex<OpState>>,
}

impl OnePassword {
    pub fn start(token: &str) -> OnePassword {
        let state = Arc::new(Mutex::new(OpState {
            token: token.to_owned(),
            vaults: Vec::new(),
            rejections: Vec::new(),
        }));
        let s = state.clone();
        let server = Server::start(Arc::new(move |r: &Received| op_answer(&s, r)));
        OnePassword { server, state }
    }

    pub fn add_vault(&self, id: &str, name: &str) {
        self.state.lock().unwrap().vaults.push(OpVault {
            id: id.to_owned(),
            name: name.to_owned(),
            items: Vec::new(),
        });
    }

    /// Adds an item; `fields` is Connect's list of `{id, label, purpose, type, value}`.
    pub fn add_item(&self, vault_id: &str, id: &str, title: &str, fields: Value) {
        let mut state = self.state.lock().unwrap();
        let vault = state
            .vaults
            .iter_mut()
            .find(|v| v.id == vault_id)
            .expect("vault exists");
        vault.items.push(OpItem {
            id: id.to_owned(),
            title: title.to_owned(),
            fields,
        });
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn requests(&self) -> Vec<Received> {
        self.server.received()
    }

    pub fn rejections(&self) -> Vec<String> {
        self.state.lock().unwrap().rejections.clone()
    }
}

/// `attribute eq "value"` → (attribute, value).
fn parse_filter(filter: &str) -> Option<(String, String)> {
    let (attribute, rest) = filter.split_once(" eq ")?;
    let quoted = rest.trim().strip_prefix('"')?.strip_suffix('"')?;
    Some((
        attribute.trim().to_owned(),
        quoted.replace("\\\"", "\"").replace("\\\\", "\\"),
    ))
}

fn op_answer(state: &Mutex<OpState>, r: &Received) -> Answer {
    let mut state = state.lock().unwrap();
    let error = |status: u16, message: &str| {
        Answer::json(status, json!({"status": status, "message": message}))
    };
    if r.method != "GET" {
        state.rejections.push(format!("method {}", r.method));
        return error(405, "method not allowed");
    }
    if r.header("authorization") != Some(format!("Bearer {}", state.token).as_str()) {
        state
            .rejections
            .push("wrong or missing bearer token".into());
        return error(401, "Invalid token signature");
    }
    let filter = match r.query_param("filter") {
        None => None,
        Some(f) => match parse_filter(&f) {
            Some(parsed) => Some(parsed),
            None => {
                state.rejections.push(format!("filter {f:?}"));
                return error(400, "Invalid filter");
            }
        },
    };
    let segments: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "vaults"] => {
            let list: Vec<Value> = state
                .vaults
                .iter()
                .filter(|v| {
                    filter
                        .as_ref()
                        .is_none_or(|(a, n)| a == "name" && &v.name == n)
                })
                .map(|v| json!({"id": v.id, "name": v.name, "type": "USER_CREATED"}))
                .collect();
            Answer::json(200, Value::Array(list))
        }
        ["v1", "vaults", vault, "items"] => match state.vaults.iter().find(|v| v.id == *vault) {
            Some(v) => {
                let list: Vec<Value> = v
                    .items
                    .iter()
                    .filter(|i| {
                        filter
                            .as_ref()
                            .is_none_or(|(a, t)| a == "title" && &i.title == t)
                    })
                    .map(|i| {
                        json!({"id": i.id, "title": i.title, "vault": {"id": v.id},
                                    "category": "API_CREDENTIAL"})
                    })
                    .collect();
                Answer::json(200, Value::Array(list))
            }
            None => error(404, "vault not found"),
        },
        ["v1", "vaults", vault, "items", item] => {
            let found = state
                .vaults
                .iter()
                .find(|v| v.id == *vault)
                .and_then(|v| v.items.iter().find(|i| i.id == *item).map(|i| (v, i)));
            match found {
                Some((v, i)) => Answer::json(
                    200,
                    json!({"id": i.id, "title": i.title, "vault": {"id": v.id},
                           "category": "API_CREDENTIAL", "fields": i.fields}),
                ),
                None => error(404, "item not found"),
            }
        }
        _ => {
            state.rejections.push(format!("path {}", r.path));
            error(404, "not found")
        }
    }
}

// ---- OAuth2 and GCP token endpoints ----

/// How the client must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// `Authorization: Basic base64(urlencode(id):urlencode(secret))`.
    Basic,
    /// `client_id` and `client_secret` in the form.
    Body,
    /// No client authentication.
    None,
}

/// What a signed assertion must look like.
#[derive(Clone)]
pub struct JwtCheck {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
    pub issuer: String,
    pub subject: Option<String>,
    /// `None`: this endpoint's own URL (`http://127.0.0.1:port/token`).
    pub audience: Option<String>,
    pub key_id: Option<String>,
    /// `exp - iat`.
    pub lifetime: u64,
    /// Further claims that must be present with these values (GCP's `scope`).
    pub claims: Vec<(String, Value)>,
    /// Whether a `jti` must be present (and never reused).
    pub jti: bool,
}

/// A client of a token endpoint, and the grant it must use.
#[derive(Clone)]
pub struct OAuthClient {
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub auth: ClientAuthMode,
    pub grant: Grant,
    /// The `scope` form field (`None`: must be absent).
    pub scope: Option<String>,
    pub audience: Option<String>,
    /// `expires_in` of the issued tokens.
    pub expires_in: u64,
    /// Issued tokens are `{prefix}-{n}`, n counting from 1.
    pub token_prefix: String,
}

#[derive(Clone)]
pub enum Grant {
    ClientCredentials,
    /// The refresh token the client must send. With `rotate`, every answer carries a new
    /// refresh token (`{prefix}-rt-{n}`) and only the newest is accepted afterwards.
    RefreshToken {
        token: String,
        rotate: bool,
    },
    /// `urn:ietf:params:oauth:grant-type:jwt-bearer` with a signed assertion.
    JwtBearer(Box<JwtCheck>),
}

struct OAuthState {
    url: String,
    client: OAuthClient,
    issued: Vec<String>,
    /// The refresh token accepted next.
    refresh: Option<String>,
    jtis: HashSet<String>,
    /// The claims (and `kid`) of every assertion that verified.
    verified: Vec<Value>,
    /// While `true`, token answers are held back ([`OAuthServer::hold_tokens`]).
    held: tokio::sync::watch::Sender<bool>,
    /// When each token was answered.
    answered: Vec<Instant>,
    rejections: Vec<String>,
}

/// A token endpoint (`POST /token`): checks the grant, the client authentication and the
/// form fields, verifies assertions, and issues numbered tokens.
pub struct OAuthServer {
    server: Server,
    state: Arc<Mutex<OAuthState>>,
}

impl OAuthServer {
    pub fn start(client: OAuthClient) -> OAuthServer {
        let refresh = match &client.grant {
            Grant::RefreshToken { token, .. } => Some(token.clone()),
            _ => None,
        };
        let state = Arc::new(Mutex::new(OAuthState {
            url: String::new(),
            client,
            issued: Vec::new(),
            refresh,
            jtis: HashSet::new(),
            verified: Vec::new(),
            held: tokio::sync::watch::channel(false).0,
            answered: Vec::new(),
            rejections: Vec::new(),
        }));
        let s = state.clone();
        let server = Server::start(Arc::new(move |r: &Received| token_answer(&s, r)));
        state.lock().unwrap().url = format!("{}/token", server.url());
        OAuthServer { server, state }
    }

    /// `http://127.0.0.1:port/token`.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.server.url())
    }

    pub fn requests(&self) -> Vec<Received> {
        self.server.received()
    }

    pub fn hits(&self) -> usize {
        self.server.received().len()
    }

    /// The signed JWT assertions clients sent (`assertion=` in the form), in order.
    pub fn assertions(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter_map(|r| r.field("assertion"))
            .collect()
    }

    /// Tokens issued so far, in order.
    pub fn issued(&self) -> Vec<String> {
        self.state.lock().unwrap().issued.clone()
    }

    /// Refresh tokens issued so far (rotation), in order.
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        (1..=state.issued.len())
            .map(|n| format!("{}-rt-{n}", state.client.token_prefix))
            .collect()
    }

    pub fn verified(&self) -> Vec<Value> {
        self.state.lock().unwrap().verified.clone()
    }

    pub fn rejections(&self) -> Vec<String> {
        self.state.lock().unwrap().rejections.clone()
    }

    /// Holds every token answer (requests are received and recorded, answers wait) until
    /// [`OAuthServer::release_tokens`].
    pub fn hold_tokens(&self) {
        self.state.lock().unwrap().held.send_replace(true);
    }

    /// Sends the held token answers, and answers at once from now on.
    pub fn release_tokens(&self) {
        self.state.lock().unwrap().held.send_replace(false);
    }

    /// When each issued token was sent (after any hold).
    pub fn answered(&self) -> Vec<Instant> {
        self.state.lock().unwrap().answered.clone()
    }
}

fn oauth_error(status: u16, error: &str, description: &str) -> Answer {
    Answer::json(
        status,
        json!({"error": error, "error_description": description}),
    )
}

fn token_answer(shared: &Arc<Mutex<OAuthState>>, r: &Received) -> Answer {
    let mut state = shared.lock().unwrap();
    match check_token_request(&mut state, r) {
        Ok(()) => {
            let n = state.issued.len() + 1;
            let token = format!("{}-{n}", state.client.token_prefix);
            state.issued.push(token.clone());
            let mut body = json!({"access_token": token, "token_type": "Bearer",
                                  "expires_in": state.client.expires_in});
            if let Grant::RefreshToken { rotate: true, .. } = state.client.grant {
                let next = format!("{}-rt-{n}", state.client.token_prefix);
                state.refresh = Some(next.clone());
                body["refresh_token"] = next.into();
            }
            let held = state.held.subscribe();
            let record = shared.clone();
            Answer {
                held: Some(held),
                on_send: Some(Box::new(move || {
                    record.lock().unwrap().answered.push(Instant::now());
                })),
                ..Answer::json(200, body)
            }
        }
        Err((answer, why)) => {
            state.rejections.push(why);
            answer
        }
    }
}

fn check_token_request(state: &mut OAuthState, r: &Received) -> Result<(), (Answer, String)> {
    let bad = |error: &str, why: String| (oauth_error(400, error, "request rejected"), why);
    if r.method != "POST" || r.path != "/token" {
        return Err(bad("invalid_request", format!("{} {}", r.method, r.path)));
    }
    if r.header("content-type") != Some("application/x-www-form-urlencoded") {
        return Err(bad(
            "invalid_request",
            format!("content-type {:?}", r.header("content-type")),
        ));
    }
    let form = r.form();
    let names: Vec<&str> = form.iter().map(|(n, _)| n.as_str()).collect();
    let unique: HashSet<&str> = names.iter().copied().collect();
    if unique.len() != names.len() {
        return Err(bad(
            "invalid_request",
            format!("repeated form fields {names:?}"),
        ));
    }
    let client = state.client.clone();
    // Client authentication.
    let (id, secret) = (client.client_id.as_deref(), client.client_secret.as_deref());
    let unauthorized = |why: String| {
        (
            oauth_error(401, "invalid_client", "Client authentication failed"),
            why,
        )
    };
    let mut expected_fields: Vec<&str> = vec!["grant_type"];
    match client.auth {
        ClientAuthMode::Basic => {
            // RFC 6749 §2.3.1: each part form-urlencoded, then Basic.
            let pair = format!(
                "{}:{}",
                url_form_encode(id.unwrap_or_default()),
                url_form_encode(secret.unwrap_or_default())
            );
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            );
            if r.header("authorization") != Some(expected.as_str()) {
                return Err(unauthorized("basic client authentication".into()));
            }
        }
        ClientAuthMode::Body => {
            if r.header("authorization").is_some()
                || r.field("client_id").as_deref() != id
                || r.field("client_secret").as_deref() != secret
            {
                return Err(unauthorized("body client authentication".into()));
            }
            expected_fields.extend(["client_id", "client_secret"]);
        }
        ClientAuthMode::None => {
            if r.header("authorization").is_some() || r.field("client_secret").is_some() {
                return Err(unauthorized("unexpected client authentication".into()));
            }
            if r.field("client_id").as_deref() != id {
                return Err(unauthorized("client_id".into()));
            }
            if id.is_some() {
                expected_fields.push("client_id");
            }
        }
    }
    if r.field("scope") != client.scope {
        return Err(bad(
            "invalid_scope",
            format!("scope {:?}", r.field("scope")),
        ));
    }
    if client.scope.is_some() {
        expected_fields.push("scope");
    }
    if r.field("audience") != client.audience {
        return Err(bad(
            "invalid_request",
            format!("audience {:?}", r.field("audience")),
        ));
    }
    if client.audience.is_some() {
        expected_fields.push("audience");
    }
    let grant_type = r.field("grant_type").unwrap_or_default();
    match &client.grant {
        Grant::ClientCredentials => {
            if grant_type != "client_credentials" {
                return Err(bad("unsupported_grant_type", grant_type));
            }
        }
        Grant::RefreshToken { .. } => {
            if grant_type != "refresh_token" {
                return Err(bad("unsupported_grant_type", grant_type));
            }
            if r.field("refresh_token") != state.refresh {
                return Err((
                    oauth_error(
                        400,
                        "invalid_grant",
                        "The refresh token is invalid or expired",
                    ),
                    "refresh_token is not the current one".into(),
                ));
            }
            expected_fields.push("refresh_token");
        }
        Grant::JwtBearer(check) => {
            if grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
                return Err(bad("unsupported_grant_type", grant_type));
            }
            let assertion = r.field("assertion").unwrap_or_default();
            let claims = verify_assertion(state, check, &assertion).map_err(|why| {
                (
                    oauth_error(400, "invalid_grant", "Invalid JWT assertion"),
                    why,
                )
            })?;
            state.verified.push(claims);
            expected_fields.push("assertion");
        }
    }
    let mut sorted_names = names.clone();
    sorted_names.sort_unstable();
    expected_fields.sort_unstable();
    if sorted_names != expected_fields {
        return Err(bad("invalid_request", format!("form fields {names:?}")));
    }
    Ok(())
}

/// The `kid` and claims of a verified assertion, or why it failed.
fn verify_assertion(state: &mut OAuthState, check: &JwtCheck, jwt: &str) -> Result<Value, String> {
    let audience = check.audience.clone().unwrap_or_else(|| state.url.clone());
    let mut validation = Validation::new(check.algorithm);
    validation.set_audience(&[&audience]);
    validation.set_issuer(&[&check.issuer]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(jwt, &check.key, &validation)
        .map_err(|e| format!("assertion does not verify: {e}"))?;
    if data.header.kid != check.key_id {
        return Err(format!("kid {:?}", data.header.kid));
    }
    let claims = data.claims;
    if claims.get("sub").and_then(Value::as_str) != check.subject.as_deref() {
        return Err(format!("sub {:?}", claims.get("sub")));
    }
    let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
    let now = jsonwebtoken::get_current_timestamp();
    match (iat, exp) {
        (Some(iat), Some(exp)) if exp - iat == check.lifetime && iat.abs_diff(now) <= 5 => {}
        _ => return Err(format!("iat {iat:?} / exp {exp:?} (now {now})")),
    }
    for (name, value) in &check.claims {
        if claims.get(name) != Some(value) {
            return Err(format!("claim {name}: {:?}", claims.get(name)));
        }
    }
    if check.jti {
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if jti.is_empty() || !state.jtis.insert(jti.to_owned()) {
            return Err(format!("jti {jti:?} missing or reused"));
        }
    }
    let mut verified = claims;
    verified["kid"] = data.header.kid.into();
    Ok(verified)
}

/// `application/x-www-form-urlencoded` encoding, written independently of the source's.
pub fn url_form_encode(text: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'*')
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b' ');
    percent_encoding::utf8_percent_encode(text, SET)
        .to_string()
        .replace(' ', "+")
}

// ---- Test keys ----

/// A key from `tests/fixtures/keys/` (test-only keys).
pub fn fixture_key(name: &str) -> String {
    std::fs::read_to_string(repo().join("tests/fixtures/keys").join(name)).unwrap()
}

pub(super) fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .unwrap()
}

/// The RSA fixture's public key.
pub fn rsa_public_key() -> DecodingKey {
    DecodingKey::from_rsa_der(&pem_der(&fixture_key("rsa-public.pem")))
}

/// The EC P-256 fixture's public key (the point at the end of its SubjectPublicKeyInfo).
pub fn ec_public_key() -> DecodingKey {
    let spki = pem_der(&fixture_key("ec-public.pem"));
    DecodingKey::from_ec_der(&spki[spki.len() - 65..])
}

// ---- Independent JWT verification ----

/// PyJWT (from the test virtualenv) verifying assertions the gateway signed: independent
/// of the `jsonwebtoken` crate, which both signs them in the gateway and verifies them in
/// the token endpoints above.
const PYJWT_VERIFY: &str = r#"
import base64, json, sys, jwt
a = json.load(sys.stdin)
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
out = []
for token in a["tokens"]:
    claims = jwt.decode(token, a["key"], algorithms=[a["alg"]], audience=a["aud"],
                        issuer=a["iss"], leeway=0,
                        options={"require": ["exp", "iat", "iss", "aud"]})
    header = jwt.get_unverified_header(token)
    # The same token with one claim changed and the signature kept must be refused.
    head, payload, signature = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["sub"] = "someone-else@example.test"
    try:
        jwt.decode(head + "." + b64(json.dumps(forged).encode()) + "." + signature, a["key"],
                   algorithms=[a["alg"]], audience=a["aud"], issuer=a["iss"])
        forgery = "accepted"
    except jwt.InvalidSignatureError:
        forgery = "refused"
    out.append({"header": header, "claims": claims, "forgery": forgery})
print(json.dumps(out))
"#;

/// Verifies each of `assertions` with PyJWT against the fixture public key
/// `public_key` (`rsa-public.pem`, `ec-public.pem`): the signature, for `algorithm` only;
/// `aud` and `iss`; `exp` and `iat` present and `exp` not passed. Asserts that PyJWT refuses
/// each with a claim changed under the same signature. Returns each one's header and claims
/// (as PyJWT decoded them) for the caller's checks.
pub fn verify_with_pyjwt(
    assertions: &[String],
    public_key: &str,
    algorithm: &str,
    audience: &str,
    issuer: &str,
) -> Vec<(Value, Value)> {
    assert!(!assertions.is_empty(), "assertions to verify");
    let out = super::moto::run_python(
        PYJWT_VERIFY,
        &json!({"tokens": assertions, "key": fixture_key(public_key), "alg": algorithm,
                "aud": audience, "iss": issuer}),
    );
    out.as_array()
        .expect("PyJWT's results")
        .iter()
        .map(|verified| {
            assert_eq!(
                verified["forgery"], "refused",
                "PyJWT checks the signature: {verified}"
            );
            (verified["header"].clone(), verified["claims"].clone())
        })
        .collect()
}

/// Seconds since the Unix epoch (what `iat` and `exp` count).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
