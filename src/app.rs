//! `portcullis serve`: wires the ext_proc server, the admin server, config reloads and
//! shutdown together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tonic::transport::server::TcpIncoming;

use crate::admin::Control;
use crate::audit::AuditSink;
use crate::config::channel::GrpcListen;
use crate::config::{ConfigErrors, StoreConfig, load_file};
use crate::extproc::ExtProcService;
use crate::extproc::access_log::AccessLogReceiver;
use crate::extproc::listen::{self, GrpcListener};
use crate::live::file::{Overrides, Reloader};
use crate::live::{Live, PolicySource, Shared};
use crate::sds::SecretDiscovery;
use crate::snapshot::{Origin, Runtime, Snapshot};
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::Metrics;

/// How long shutdown waits for open streams to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `portcullis serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: PathBuf,
    /// Overrides `server.grpc_listen`.
    pub grpc_listen: Option<GrpcListen>,
    /// Overrides `server.admin_listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Overrides `store.url` (and turns the store on when the file has none).
    pub store: Option<String>,
    /// Overrides `interception.ca` with `DIR/ca.crt` and `DIR/ca.key` (and turns
    /// interception on when the file has none).
    pub interception_ca: Option<PathBuf>,
}

/// Why `serve` stopped before serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    InvalidConfig(ConfigErrors),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Runs until SIGINT or SIGTERM. Installs the process's logging (and trace export) once
/// the config is loaded; errors before that are returned, for the caller to print.
pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    install_crypto_provider();
    let secrets = Runtime::default();
    let mut loaded = load_file(&options.config).map_err(ServeError::InvalidConfig)?;
    let overrides = Overrides {
        store: options.store.clone(),
        interception_ca: options.interception_ca.clone(),
    };
    overrides.apply(&mut loaded.config);
    let store_config = loaded.config.store.clone();
    let env = |name: &str| std::env::var(name).ok();
    let store_url = loaded
        .config
        .store_url(&env)
        .map_err(|errors| ServeError::InvalidConfig(loaded.place(errors)))?;
    // With a store, requests are refused (503) until its contents are first read.
    let (source, origin) = match store_url {
        Some(_) => (PolicySource::Store, Origin::StoreUnread),
        None => (PolicySource::File, Origin::File),
    };
    let snapshot = Snapshot::build(
        &loaded.config,
        &loaded.version,
        origin,
        &env,
        &secrets,
        None,
    )
    .map_err(|e| ServeError::InvalidConfig(loaded.place(e)))?;
    // Settings only: the policies are held by the live snapshot's inputs, once.
    let config = loaded.config.settings();
    let telemetry = Telemetry::start(&config.telemetry).map_err(anyhow::Error::msg)?;
    let grpc_addr = options
        .grpc_listen
        .clone()
        .unwrap_or_else(|| config.server.grpc_listen.clone());
    let channel_errors = crate::config::channel::validate(
        &grpc_addr,
        config.server.grpc_tls.as_ref(),
        config.server.grpc_mesh_authenticated,
    );
    if !channel_errors.is_empty() {
        return Err(ServeError::InvalidConfig(loaded.place(channel_errors)));
    }
    let admin_addr = options.admin_listen.unwrap_or(config.server.admin_listen);
    if !snapshot.pipeline.has_allowlist() {
        tracing::warn!("the transforms pipeline has no allowlist: no policy decides requests");
    }
    let leaves = match &config.interception {
        Some(interception) => {
            let leaves = interception
                .load()
                .map_err(|e| ServeError::InvalidConfig(loaded.place(vec![e])))?;
            tracing::info!(
                leaf_lifetime = %interception.leaf_lifetime,
                "HTTPS interception on: serving certificates over SDS"
            );
            Some(Arc::new(leaves))
        }
        None => None,
    };
    let grpc_listener = listen::bind(
        &grpc_addr,
        config.server.grpc_tls.as_ref(),
        config.server.grpc_mesh_authenticated,
    )
    .await?;
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("cannot listen for admin on {admin_addr}"))?;
    let (audit, audit_writer) =
        AuditSink::start(&config.audit).context("cannot open the audit sink")?;
    let metrics = Arc::new(Metrics::new());
    let audit = audit.counted(metrics.clone());
    let (audit, audit_for_store) = match &store_config {
        Some(store) if store.audit => {
            let (tx, rx) = mpsc::channel(crate::audit::STORE_QUEUE);
            (audit.with_store(tx, metrics.clone()), Some(rx))
        }
        _ => (audit, None),
    };
    metrics.set_active_policies(snapshot.policies.active_count());
    match &store_config {
        Some(_) => tracing::info!(
            config = %options.config.display(),
            version = %snapshot.version,
            transforms = ?snapshot.pipeline.names(),
            "config loaded; policies, secrets and tokens come from the store"
        ),
        None => tracing::info!(
            config = %options.config.display(),
            version = %snapshot.version,
            policies = snapshot.policies.policies().len(),
            active = snapshot.policies.active_count(),
            transforms = ?snapshot.pipeline.names(),
            "config loaded"
        ),
    }
    let shared = Arc::new(Shared {
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        audit,
        metrics,
        draining: Default::default(),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let loaded_version = loaded.version.clone();
    let live = Arc::new(Live::new(
        shared.clone(),
        secrets.clone(),
        Arc::new(std::mem::take(&mut loaded.config)),
        loaded_version.clone(),
        source,
    ));
    let control = Arc::new(Control::new(live.clone()));
    let mut background = Vec::new();
    if let (Some(url), Some(store)) = (store_url, &store_config) {
        background.push(tokio::spawn(connect_store(
            url,
            store.clone(),
            control.clone(),
            audit_for_store,
            shutdown_rx.clone(),
        )));
    }

    let reloader = Reloader {
        path: options.config.clone(),
        live: live.clone(),
        last_seen: Some(loaded_version),
        running: config.clone(),
        overrides,
    };
    // The file's position index (every key's line, for errors) is large for a large
    // policy set, and nothing after startup places errors in this copy of the file.
    drop(loaded);
    crate::live::release_freed_memory();
    let envoy_access_log = config
        .server
        .envoy_access_log
        .clone()
        .or_else(|| match &grpc_addr {
            GrpcListen::Unix(socket) => socket
                .parent()
                .map(|dir| dir.join(crate::extproc::access_log::file::DEFAULT_NAME)),
            GrpcListen::Tcp(_) => None,
        });
    if let Some(path) = envoy_access_log {
        // Fail closed: without it, requests Envoy decides on the fast path go unaudited.
        let tail = crate::extproc::access_log::file::Tail::open(&path).with_context(|| {
            format!(
                "cannot open Envoy's access log {} (server.envoy_access_log)",
                path.display()
            )
        })?;
        background.push(tokio::spawn(crate::extproc::access_log::file::follow(
            shared.clone(),
            tail,
            shutdown_rx.clone(),
        )));
    }
    let reload_task = tokio::spawn(reloader.run(shutdown_rx.clone()));
    let refresh_task = tokio::spawn(crate::live::secrets::refresh_secrets(
        shared.clone(),
        secrets.clone(),
        shutdown_rx.clone(),
    ));

    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)));
    let (grpc_addr, incoming) = match grpc_listener {
        GrpcListener::Unix(listener) => (grpc_addr.to_string(), GrpcIncoming::Unix(listener)),
        GrpcListener::Tcp(listener, tls) => {
            if let Some(tls) = tls {
                builder = builder.tls_config(*tls).context("server.grpc_tls")?;
            }
            let addr = listener
                .local_addr()
                .map_or_else(|_| grpc_addr.to_string(), |a| a.to_string());
            let incoming = TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60)));
            (addr, GrpcIncoming::Tcp(incoming))
        }
    };
    let router = builder
        .add_service(ExtProcService::new(shared.clone()).into_server())
        .add_service(AccessLogReceiver::new(shared.clone()).into_server())
        .add_service(crate::routes::RouteDiscovery::new(shared.clone()).into_server())
        .add_optional_service(
            leaves.map(|leaves| SecretDiscovery::new(shared.clone(), leaves).into_server()),
        );
    let grpc_shutdown = wait_for(shutdown_rx.clone());
    let grpc: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match incoming {
        GrpcIncoming::Unix(listener) => {
            Box::pin(router.serve_with_incoming_shutdown(unix_incoming(listener), grpc_shutdown))
        }
        GrpcIncoming::Tcp(incoming) => {
            Box::pin(router.serve_with_incoming_shutdown(incoming, grpc_shutdown))
        }
    };
    let admin_addr = admin_listener.local_addr().unwrap_or(admin_addr);
    // The admin server outlives the drain, so probes see `/readyz` 503 while streams finish.
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin = axum::serve(admin_listener, crate::admin::router(control.clone()))
        .with_graceful_shutdown(wait_for(admin_stop_rx));
    drop(control);
    drop(live);
    tracing::info!(%grpc_addr, %admin_addr, "portcullis is serving");
    let draining = shared.clone();
    drop(shared);

    let grpc_task = tokio::spawn(grpc);
    let admin_task = tokio::spawn(async move { admin.await });
    wait_for_signal().await;
    tracing::info!("shutting down: not ready, no new streams, draining open ones");
    draining
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    drop(draining);
    let delay = config.server.shutdown_delay.0;
    if !delay.is_zero() {
        tracing::info!(
            ?delay,
            "still deciding requests while load balancers move away"
        );
        tokio::time::sleep(delay).await;
    }
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let _ = grpc_task.await;
        let _ = admin_stop_tx.send(true);
        let _ = admin_task.await;
        let _ = reload_task.await;
        let _ = refresh_task.await;
        for task in background {
            let _ = task.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("streams still open after {DRAIN_TIMEOUT:?}; exiting anyway");
    } else {
        // Every sink clone is gone with the servers: the writer flushes and ends.
        let _ = tokio::task::spawn_blocking(move || audit_writer.finish()).await;
    }
    telemetry.shutdown().await;
    Ok(())
}

/// One TLS provider for every client (reqwest, the AWS SDK): aws-lc.
fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn wait_for_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Opens the store (retrying with backoff while it is unreachable), then keeps the
/// snapshot in step with it, writes the audit trail's copy into it and prunes old events.
async fn connect_store(
    url: String,
    config: StoreConfig,
    control: Arc<Control>,
    audit: Option<mpsc::Receiver<crate::store::audit::AuditEvent>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let live = control.live.clone();
    let mut wait = Duration::from_millis(200);
    let mut warned = false;
    let store = loop {
        let opened = tokio::select! {
            opened = Store::open(&url) => opened,
            _ = shutdown.changed() => return,
        };
        match opened {
            Ok(store) => break store,
            Err(e) => {
                live.shared.metrics.set_store_up(false);
                if !warned {
                    tracing::warn!(store = %crate::store::redact_url(&url), error = %e,
                        "cannot open the policy store; refusing requests (503) until it answers");
                    warned = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    };
    tracing::info!(store = %store.display_url(), backend = ?store.backend(), "policy store open");
    control.set_store(store.clone());
    live.approvals().set_store(store.clone());
    let metrics = live.shared.metrics.clone();
    let audit_task = audit.map(|rx| {
        tokio::spawn(crate::audit::write_to_store(
            store.clone(),
            rx,
            metrics.clone(),
        ))
    });
    let prune_task = config.audit.then(|| {
        tokio::spawn(prune_audit(
            store.clone(),
            config.audit_retention.0,
            shutdown.clone(),
        ))
    });
    crate::live::store::sync(live, store, config.resync_interval.0, shutdown).await;
    // The audit copy below ends when the last sink is dropped; this task holds one.
    drop(control);
    if let Some(task) = prune_task {
        let _ = task.await;
    }
    // The audit copy ends when every sink is gone; a store that is down gets a moment.
    if let Some(task) = audit_task
        && tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .is_err()
    {
        tracing::warn!("audit records still queued for the store at exit were not written");
    }
}

/// Deletes audit events older than `retention`, every ten minutes.
async fn prune_audit(store: Store, retention: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // A retention reaching past 1970 keeps everything (such times cannot be written).
        let Some(before) = std::time::SystemTime::now()
            .checked_sub(retention)
            .filter(|before| *before >= std::time::SystemTime::UNIX_EPOCH)
        else {
            continue;
        };
        let before = humantime::format_rfc3339_micros(before).to_string();
        match store.prune_audit(&before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, %before, "pruned audit events from the store"),
            Err(e) => tracing::warn!(error = %e, "cannot prune audit events"),
        }
    }
}

/// A bound gRPC listener, ready to serve.
enum GrpcIncoming {
    Unix(tokio::net::UnixListener),
    Tcp(TcpIncoming),
}

/// Connections accepted on a Unix socket, as tonic takes them.
fn unix_incoming(
    listener: tokio::net::UnixListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}
