//! The gRPC listener Envoy connects to, authenticated before any byte of gRPC: a Unix socket
//! only this user can open, or TCP with mutual TLS. Whoever holds the channel receives
//! decisions with injected credentials, leaf private keys over SDS, and is believed about
//! the listener's tags, so there is no plaintext TCP mode.

use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::net::{TcpListener, UnixListener};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::channel::{GrpcListen, GrpcTls};

/// A bound gRPC listener.
pub enum GrpcListener {
    /// Mode 0600: only processes of this user (Envoy beside Portcullis) can connect.
    Unix(UnixListener),
    /// Every connection must present a client certificate from `client_ca_file`; `None`:
    /// the mesh sidecar in front has done that (`server.grpc_mesh_authenticated`).
    Tcp(TcpListener, Option<Box<ServerTlsConfig>>),
}

/// Binds `listen`. TCP needs `tls`, or `mesh` (the config refuses TCP with neither).
pub async fn bind(
    listen: &GrpcListen,
    tls: Option<&GrpcTls>,
    mesh: bool,
) -> anyhow::Result<GrpcListener> {
    let addr = match listen {
        GrpcListen::Unix(path) => return bind_unix(path).map(GrpcListener::Unix),
        GrpcListen::Tcp(addr) => addr,
    };
    let config = match (tls, mesh) {
        (Some(tls), _) => Some(Box::new(server_tls(tls)?)),
        (None, true) => None,
        (None, false) => anyhow::bail!(
            "server.grpc_listen: {addr}: a TCP listener needs server.grpc_tls (mutual TLS)"
        ),
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for ext_proc on {addr}"))?;
    Ok(GrpcListener::Tcp(listener, config))
}

/// Binds a Unix socket at `path` that no other user can ever connect to: it is bound inside
/// a fresh 0700 directory, made 0600, then renamed into place (replacing a stale socket,
/// never another kind of file).
fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    let context = || format!("cannot listen for ext_proc on unix:{}", path.display());
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .with_context(context)?;
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(context)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            anyhow::bail!(
                "cannot listen for ext_proc on unix:{}: the path exists and is not a socket",
                path.display()
            )
        }
        _ => {}
    }
    let private = parent.join(format!(".portcullis-grpc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(context)?;
    let staged = private.join("grpc.sock");
    let bound = (|| {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok::<_, std::io::Error>(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound.with_context(context)
}

/// The server side of mutual TLS. Errors name the field and the file, never a key.
fn server_tls(tls: &GrpcTls) -> anyhow::Result<ServerTlsConfig> {
    let read = |field: &str, file: &PathBuf| {
        std::fs::read(file)
            .with_context(|| format!("server.grpc_tls.{field}: cannot read {}", file.display()))
    };
    let cert = read("cert_file", &tls.cert_file)?;
    let key = read("key_file", &tls.key_file)?;
    let ca = read("client_ca_file", &tls.client_ca_file)?;
    for (field, file, pem, label) in [
        ("cert_file", &tls.cert_file, &cert, "CERTIFICATE"),
        ("key_file", &tls.key_file, &key, "PRIVATE KEY"),
        ("client_ca_file", &tls.client_ca_file, &ca, "CERTIFICATE"),
    ] {
        if !String::from_utf8_lossy(pem).contains(label) {
            anyhow::bail!(
                "server.grpc_tls.{field}: {} holds no PEM {label}",
                file.display()
            );
        }
    }
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_owner_only_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/grpc.sock");
        let listen = GrpcListen::Unix(path.clone());
        let first = bind(&listen, None, false).await.unwrap();
        drop(first);
        // A stale socket from an earlier run is replaced.
        let _second = bind(&listen, None, false).await.unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o077, 0, "made 0700");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["grpc.sock"]);
    }

    #[tokio::test]
    async fn a_file_in_the_way_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grpc.sock");
        std::fs::write(&path, "precious").unwrap();
        let error = bind(&GrpcListen::Unix(path.clone()), None, false)
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("is not a socket"), "{error:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[tokio::test]
    async fn tls_errors_name_the_field_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let tls = GrpcTls {
            cert_file: cert.clone(),
            key_file: key.clone(),
            client_ca_file: cert,
        };
        let listen = GrpcListen::Tcp("127.0.0.1:0".parse().unwrap());
        let error = format!(
            "{:#}",
            bind(&listen, Some(&tls), false).await.err().unwrap()
        );
        assert!(error.contains("server.grpc_tls.key_file"), "{error}");
        assert!(error.contains(&key.display().to_string()), "{error}");
        assert!(!error.contains("not a key"), "{error}");
    }
}
