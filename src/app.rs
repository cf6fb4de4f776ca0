//! `portcullis serve`: wires the ext_proc server, the admin server, config reloads and
//! shutdown together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tonic::transport::server::TcpIncoming;

use crate::audit::AuditSink;
use crate::config::watch::{self as config_watch, ConfigWatch};
use crate::config::{Config, ConfigErrors, version_of};
use crate::extproc::{ExtProcService, Shared};
use crate::snapshot::{SecretsRuntime, Snapshot};
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::Metrics;
use crate::tls::sds::SecretDiscovery;

/// How long shutdown waits for open streams to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `portcullis serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: PathBuf,
    /// Overrides `server.grpc_listen`.
    pub grpc_listen: Option<SocketAddr>,
    /// Overrides `server.admin_listen`.
    pub admin_listen: Option<SocketAddr>,
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
    let secrets = SecretsRuntime::default();
    let (loaded, snapshot) =
        Snapshot::load(&options.config, &secrets).map_err(ServeError::InvalidConfig)?;
    let config = loaded.config.clone();
    let telemetry = Telemetry::start(&config.telemetry).map_err(anyhow::Error::msg)?;
    let grpc_addr = options.grpc_listen.unwrap_or(config.server.grpc_listen);
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
    let grpc_listener = TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("cannot listen for ext_proc on {grpc_addr}"))?;
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("cannot listen for admin on {admin_addr}"))?;
    let (audit, audit_writer) =
        AuditSink::start(&config.audit).context("cannot open the audit sink")?;
    let metrics = Arc::new(Metrics::new());
    metrics.set_active_policies(snapshot.policies.active_count());
    tracing::info!(
        config = %options.config.display(),
        version = %snapshot.version,
        policies = snapshot.policies.policies().len(),
        active = snapshot.policies.active_count(),
        transforms = ?snapshot.pipeline.names(),
        "config loaded"
    );
    let shared = Arc::new(Shared {
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        audit,
        metrics,
        draining: Default::default(),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let reloader = Reloader {
        path: options.config.clone(),
        shared: shared.clone(),
        last_seen: Some(loaded.version),
        running: config.clone(),
        secrets: secrets.clone(),
    };
    let reload_task = tokio::spawn(reloader.run(shutdown_rx.clone()));
    let refresh_task = tokio::spawn(refresh_secrets(
        shared.clone(),
        secrets.clone(),
        shutdown_rx.clone(),
    ));

    let grpc_addr = grpc_listener.local_addr().unwrap_or(grpc_addr);
    let incoming = TcpIncoming::from(grpc_listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(ExtProcService::new(shared.clone()).into_server())
        .add_optional_service(
            leaves.map(|leaves| SecretDiscovery::new(shared.clone(), leaves).into_server()),
        )
        .serve_with_incoming_shutdown(incoming, wait_for(shutdown_rx.clone()));
    let admin_addr = admin_listener.local_addr().unwrap_or(admin_addr);
    // The admin server outlives the drain, so probes see `/readyz` 503 while streams finish.
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin = axum::serve(admin_listener, crate::admin::router(shared.clone()))
        .with_graceful_shutdown(wait_for(admin_stop_rx));
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

/// Secret values are read before requests need them, and re-read before they expire, so a
/// request rarely waits on a backend; a reload's new sources are read at once.
async fn refresh_secrets(
    shared: Arc<Shared>,
    secrets: SecretsRuntime,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let sources = shared.snapshot.load().pipeline.sources();
                secrets.cache.refresh(&sources).await;
            }
            _ = shutdown.changed() => return,
        }
    }
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

/// Applies config file changes: compiles off the request path, swaps the snapshot only
/// when the whole new config is valid.
struct Reloader {
    path: PathBuf,
    shared: Arc<Shared>,
    /// Version of the content last tried, valid or not: unchanged content is not retried.
    last_seen: Option<String>,
    /// The config `serve` started with, to warn about settings that need a restart.
    running: Config,
    secrets: SecretsRuntime,
}

impl Reloader {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (tx, mut changes) = mpsc::channel(1);
        let mut watch = match ConfigWatch::start(&self.path, tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config file; polling every {:?}",
                    config_watch::POLL_INTERVAL);
                None
            }
        };
        let mut poll = tokio::time::interval(config_watch::POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        loop {
            tokio::select! {
                Some(()) = changes.recv() => {
                    settle(&mut changes).await;
                    self.check().await;
                    if let Some(watch) = &mut watch {
                        watch.rearm();
                    }
                }
                _ = poll.tick() => {
                    self.check().await;
                    if let Some(watch) = &mut watch {
                        watch.rearm();
                    }
                }
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                    self.last_seen = None;
                    self.check().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn check(&mut self) {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(e) => {
                let version = format!("unreadable:{}", e.kind());
                if self.last_seen.as_deref() != Some(version.as_str()) {
                    tracing::error!(config = %self.path.display(), error = %e,
                        "cannot read config; keeping the live one");
                    self.shared.metrics.record_reload(false, None);
                    self.last_seen = Some(version);
                }
                return;
            }
        };
        let version = version_of(&text);
        if self.last_seen.as_deref() == Some(version.as_str()) {
            return;
        }
        self.last_seen = Some(version);
        let started = Instant::now();
        let path = self.path.clone();
        let secrets = self.secrets.clone();
        let compiled =
            tokio::task::spawn_blocking(move || Snapshot::from_text(&text, &path, &secrets)).await;
        let live = self.shared.snapshot.load().version.clone();
        match compiled {
            Ok(Ok((loaded, snapshot))) => {
                self.warn_restart_only(&loaded.config);
                let active = snapshot.policies.active_count();
                let version = snapshot.version.clone();
                self.shared.snapshot.store(Arc::new(snapshot));
                self.shared.metrics.record_reload(true, Some(active));
                tracing::info!(%version, previous = %live, active,
                    compile_ms = started.elapsed().as_millis() as u64, "config reloaded");
            }
            Ok(Err(errors)) => {
                for error in &errors.0 {
                    tracing::error!("{error}");
                }
                self.shared.metrics.record_reload(false, None);
                tracing::error!(errors = errors.0.len(), live = %live,
                    "config change rejected; the last good config stays live");
            }
            Err(e) => {
                self.shared.metrics.record_reload(false, None);
                tracing::error!(error = %e, live = %live, "config compilation failed");
            }
        }
    }

    fn warn_restart_only(&mut self, new: &Config) {
        if new.server != self.running.server {
            tracing::warn!("`server` listen addresses changed: restart portcullis to apply");
        }
        if new.interception != self.running.interception {
            tracing::warn!("`interception` changed: restart portcullis to apply");
        }
        if new.audit != self.running.audit {
            tracing::warn!("`audit` sink changed: restart portcullis to apply");
        }
        if new.telemetry != self.running.telemetry {
            tracing::warn!("`telemetry` changed: restart portcullis to apply");
        }
    }
}

/// Waits until events stop arriving for a moment (an editor's save is several events),
/// but never longer than half a second.
async fn settle(changes: &mut mpsc::Receiver<()>) {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if changes.try_recv().is_err() || Instant::now() >= deadline {
            return;
        }
    }
}
