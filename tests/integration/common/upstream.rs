//! A real upstream for tests: answers every request with a JSON echo of what it received
//! (method, path, headers, body length) and records each request, so a test can count hits
//! and see exactly which headers left the gateway. Plain HTTP, or HTTPS with its own CA.
//! `/slow/<ms>` answers after a delay; `/hold/<key>` only once the test calls
//! [`Upstream::release`] (a request provably in flight for as long as the test needs).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted, whatever came over them (HTTP or not).
    connections: Arc<AtomicUsize>,
    /// The `/hold/<key>` keys released so far.
    released: tokio::sync::watch::Sender<Vec<String>>,
    _runtime: tokio::runtime::Runtime,
}

/// TLS material for an HTTPS upstream: the CA a client must trust, and the server's key.
pub struct TestTls {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
    /// The server's certificate chain (leaf, then CA) and key, as PEM, for servers that
    /// read files (the client matrix's registry).
    pub server_chain_pem: String,
    pub server_key_pem: String,
}

impl TestTls {
    /// A CA and a leaf for `localhost` and 127.0.0.1, signed by it.
    pub fn generate() -> TestTls {
        TestTls::generate_for(&["localhost", "127.0.0.1"])
    }

    /// A CA and a leaf for `names` (DNS names or IP addresses), signed by it.
    pub fn generate_for(names: &[&str]) -> TestTls {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test upstream CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        TestTls {
            server_chain_pem: leaf.pem() + &ca.pem(),
            server_key_pem: leaf_key.serialize_pem(),
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }
    }
}

impl Upstream {
    /// Starts the upstream: plain HTTP, or HTTPS with `tls`. `/slow/<ms>` paths answer
    /// after that many milliseconds (a request in flight across a reload).
    pub fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let (runtime, listener, addr) = super::loopback_server();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (record, accepted) = (seen.clone(), connections.clone());
        let (released, holds) = tokio::sync::watch::channel(Vec::<String>::new());
        runtime.spawn(async move {
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (record, holds) = (record.clone(), holds.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, record.clone(), holds.clone()));
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(tls), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            released,
            _runtime: runtime,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Lets the requests held at `/hold/<key>` (and any later ones) be answered.
    pub fn release(&self, key: &str) {
        self.released.send_modify(|keys| keys.push(key.to_owned()));
    }

    /// TCP connections accepted so far: bytes that are not HTTP (which `seen` never
    /// records) still arrive over one.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    mut holds: tokio::sync::watch::Receiver<Vec<String>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // `/slow/<ms>` answers after a delay: a request in flight across a reload.
    let delay = path
        .strip_prefix("/slow/")
        .and_then(|ms| ms.split(['/', '?']).next())
        .and_then(|ms| ms.parse::<u64>().ok());
    // `/hold/<key>` answers once the test released `key`.
    let hold = path
        .strip_prefix("/hold/")
        .and_then(|key| key.split(['/', '?']).next())
        .map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    // No path, header names only: a credential the gateway injected (in a header, the
    // path or the query) never travels back in a reply, so leak checks can look at every
    // reply. Tests read what arrived from `Upstream::seen`.
    let echo = serde_json::json!({
        "method": method, "body_len": body.len(),
        "headers": headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
    });
    seen.lock().unwrap().push(Seen {
        method,
        path,
        headers,
        body,
    });
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(key) = hold {
        let _ = holds.wait_for(|keys| keys.contains(&key)).await;
    }
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", "echo")
        .body(Full::new(Bytes::from(echo.to_string())))
        .unwrap())
}
