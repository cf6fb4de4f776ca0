//! A minimal HTTP/1.1 upstream for `bench/load.sh`: answers `200 ok` to every request.
//!
//!     cargo run --release --example bench_upstream -- --listen 127.0.0.1:18080
//!
//! The request counter is printed on exit (Ctrl-C / SIGTERM) and served as the body of
//! `GET /__count` so the benchmark can check that requests really reached the upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(about = "Minimal HTTP/1.1 upstream answering 200 to everything")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: SocketAddr,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Also serve HTTPS here (the HTTPS-interception benchmark), with --tls-cert/--tls-key.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for --tls-listen.
    #[arg(long)]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8) for --tls-listen.
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
}

static BODY: &[u8] = b"ok\n";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("bench_upstream listening on {}", listener.local_addr()?);
    let count = Arc::new(AtomicU64::new(0));
    if let Some(addr) = args.tls_listen {
        let acceptor = tls_acceptor(
            args.tls_cert.as_deref().expect("clap requires it"),
            args.tls_key.as_deref().expect("clap requires it"),
        )?;
        let tls_listener = TcpListener::bind(addr).await?;
        eprintln!(
            "bench_upstream listening for HTTPS on {}",
            tls_listener.local_addr()?
        );
        let count = count.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = tls_listener.accept().await {
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_connection(stream, count).await;
                    }
                });
            }
        });
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    eprintln!("accept: {err}");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, count.clone()));
    }
    eprintln!(
        "bench_upstream: {} requests served",
        count.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn serve_connection<S>(stream: S, count: Arc<AtomicU64>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let body = if req.uri().path() == "/__count" {
            Bytes::from(format!("{}\n", count.load(Ordering::Relaxed)))
        } else {
            count.fetch_add(1, Ordering::Relaxed);
            Bytes::from_static(BODY)
        };
        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
    });
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let chain: Vec<CertificateDer<'static>> =
        x509_parser::pem::Pem::iter_from_buffer(&std::fs::read(cert)?)
            .map(|pem| pem.map(|p| CertificateDer::from(p.contents)))
            .collect::<Result<_, _>>()?;
    let key_pem = std::fs::read(key)?;
    let (_, key) = x509_parser::pem::parse_x509_pem(&key_pem)?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(key.contents.into()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
