//! A TLS handshake through the proxy's CONNECT tunnel with a chosen SNI: shows which
//! certificate (if any) Envoy presents for a name, which curl cannot do when the SNI and
//! the CONNECT target differ.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// How long a probe waits for the server before giving up: generous, so that only a
/// server that never answers ends a probe with [`ProbeError::TimedOut`].
pub const GIVES_UP_AFTER: Duration = Duration::from_secs(30);

/// Why a probe ended without a certificate.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// The proxy answered the CONNECT with this status.
    Connect(u16),
    /// The server ended the TLS handshake (an alert, a close, a certificate refused).
    Handshake(String),
    /// The server had said nothing more when the socket's read timeout passed: the client
    /// gave up, nothing refused it.
    TimedOut,
}

/// Sends `CONNECT target` (with `token` as a proxy bearer token), then a TLS ClientHello
/// for `sni`, trusting only `ca_pem`. Returns the DER certificates the server presented.
pub fn handshake_via_proxy(
    proxy_port: u16,
    target: &str,
    token: Option<&str>,
    sni: &str,
    ca_pem: &str,
) -> Result<Vec<Vec<u8>>, ProbeError> {
    let mut tcp = TcpStream::connect(("127.0.0.1", proxy_port)).unwrap();
    tcp.set_read_timeout(Some(GIVES_UP_AFTER)).unwrap();
    let auth = token
        .map(|t| format!("Proxy-Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        tcp,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let status: u16 = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 200 {
        return Err(ProbeError::Connect(status));
    }
    handshake(&mut tcp, sni, ca_pem)
}

/// A TLS handshake on an open connection (transparent mode: straight to the listener).
/// A read timeout set on `tcp` ends it with [`ProbeError::TimedOut`].
pub fn handshake(tcp: &mut TcpStream, sni: &str, ca_pem: &str) -> Result<Vec<Vec<u8>>, ProbeError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for pem in x509_parser::pem::Pem::iter_from_buffer(ca_pem.as_bytes()) {
        roots
            .add(rustls::pki_types::CertificateDer::from(
                pem.unwrap().contents,
            ))
            .unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(tcp).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ProbeError::TimedOut,
            _ => ProbeError::Handshake(e.to_string()),
        })?;
    }
    Ok(conn
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.to_vec())
        .collect())
}
