//! Where Envoy reaches Portcullis, and how Portcullis knows it is Envoy: the channel carries
//! decisions with injected credentials, leaf private keys (SDS) and the listener's tags, so
//! only an authenticated peer may use it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::FieldError;

/// The gRPC listener (ext_proc and SDS): `unix:/PATH` (Envoy on the same host; the socket
/// is made owner-only, 0600) or `HOST:PORT` (Envoy elsewhere; needs `server.grpc_tls`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum GrpcListen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// The default: a Unix socket only this user can connect to.
pub const DEFAULT_GRPC_SOCKET: &str = "/run/portcullis/grpc.sock";

impl Default for GrpcListen {
    fn default() -> Self {
        GrpcListen::Unix(PathBuf::from(DEFAULT_GRPC_SOCKET))
    }
}

impl FromStr for GrpcListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{text:?}: a Unix socket path must be absolute (unix:/run/portcullis/grpc.sock)"
                ));
            }
            return Ok(GrpcListen::Unix(PathBuf::from(path)));
        }
        text.parse().map(GrpcListen::Tcp).map_err(|_| {
            format!("{text:?}: expected unix:/PATH or HOST:PORT (an IP address and a port)")
        })
    }
}

impl TryFrom<String> for GrpcListen {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<GrpcListen> for String {
    fn from(listen: GrpcListen) -> String {
        listen.to_string()
    }
}

impl fmt::Display for GrpcListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrpcListen::Unix(path) => write!(f, "unix:{}", path.display()),
            GrpcListen::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// Mutual TLS on a TCP gRPC listener: Portcullis presents `cert_file` and accepts only a
/// peer whose client certificate chains to `client_ca_file` (Envoy's, from the same
/// deployment). PEM files, e.g. a Kubernetes Secret mounted as a volume; read at start.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTls {
    /// Portcullis's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The CA that signs the clients allowed to connect (PEM).
    pub client_ca_file: PathBuf,
}

/// Checks that the listener is authenticated: a Unix socket, TCP with mutual TLS, or TCP
/// behind a service mesh that authenticates the caller (`grpc_mesh_authenticated`).
/// `grpc_tls` is ignored on a Unix socket.
pub fn validate(listen: &GrpcListen, tls: Option<&GrpcTls>, mesh: bool) -> Vec<FieldError> {
    match (listen, tls, mesh) {
        (GrpcListen::Tcp(addr), None, false) => vec![FieldError::new(
            "server.grpc_listen",
            format!(
                "{addr}: a TCP listener needs server.grpc_tls (mutual TLS with Envoy's client \
                 certificate), or server.grpc_mesh_authenticated behind a mesh that does it: \
                 anyone who reaches a plaintext port gets decisions with injected credentials \
                 and certificate keys; with Envoy on this host use unix:/PATH"
            ),
        )],
        (GrpcListen::Tcp(_), Some(_), true) => vec![FieldError::new(
            "server.grpc_mesh_authenticated",
            "either grpc_tls (Portcullis checks the client certificate) or \
             grpc_mesh_authenticated (the mesh does), not both",
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_and_print_back() {
        for text in [
            "unix:/run/portcullis/grpc.sock",
            "127.0.0.1:50051",
            "[::1]:7",
        ] {
            let listen: GrpcListen = text.parse().unwrap();
            assert_eq!(listen.to_string(), text);
        }
        for bad in [
            "unix:relative.sock",
            "localhost:50051",
            "50051",
            "",
            "unix:",
        ] {
            let error = bad.parse::<GrpcListen>().unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn plaintext_tcp_is_refused() {
        let tcp: GrpcListen = "127.0.0.1:50051".parse().unwrap();
        let errors = validate(&tcp, None, false);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "server.grpc_listen");
        assert!(validate(&GrpcListen::default(), None, false).is_empty());
        let tls = GrpcTls {
            cert_file: "c".into(),
            key_file: "k".into(),
            client_ca_file: "ca".into(),
        };
        assert!(validate(&tcp, Some(&tls), false).is_empty());
        assert!(validate(&tcp, None, true).is_empty());
        assert_eq!(validate(&tcp, Some(&tls), true).len(), 1);
    }
}
