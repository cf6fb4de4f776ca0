//! What the live snapshot is built from — the config file and, with a store, the store's
//! contents — and the one place that compiles and publishes it. A file reload and a store
//! change both come through here, one at a time, so a snapshot never mixes a new file with
//! stale store contents or the other way round. An invalid change is refused whole and the
//! last good snapshot stays live.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Notify, watch};

use crate::config::{Config, FieldError, LoadedConfig};
use crate::extproc::Shared;
use crate::policy::{DefaultAction, PolicyConfig};
use crate::snapshot::{SecretsRuntime, Snapshot};
use crate::store::changes::{self, Signal};
use crate::store::{Contents, Store};

/// The sources of the live snapshot.
struct Sources {
    config: Config,
    config_version: String,
    /// The contents behind the live snapshot; `None` without a store, or before the store
    /// was first read.
    contents: Option<Arc<Contents>>,
}

/// The live snapshot and what it is compiled from.
pub struct Live {
    pub shared: Arc<Shared>,
    runtime: SecretsRuntime,
    sources: Mutex<Sources>,
    /// Whether policies come from a store rather than the config file.
    store_mode: bool,
    /// Asks the store sync to read the store now (after a write through this instance).
    kick: Notify,
}

/// Why a change was not published.
#[derive(Debug)]
pub struct Refused(pub Vec<FieldError>);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Live {
    pub fn new(
        shared: Arc<Shared>,
        runtime: SecretsRuntime,
        loaded: &LoadedConfig,
        store_mode: bool,
    ) -> Live {
        Live {
            shared,
            runtime,
            sources: Mutex::new(Sources {
                config: loaded.config.clone(),
                config_version: loaded.version.clone(),
                contents: None,
            }),
            store_mode,
            kick: Notify::new(),
        }
    }

    pub fn store_mode(&self) -> bool {
        self.store_mode
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Asks the store sync to read the store at once.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// A new config file: compiled with the store contents last read.
    pub async fn apply_config(&self, loaded: &LoadedConfig) -> Result<Arc<Snapshot>, Refused> {
        let mut sources = self.sources.lock().await;
        let snapshot = self
            .compile(
                loaded.config.clone(),
                loaded.version.clone(),
                sources.contents.clone(),
            )
            .await?;
        sources.config = loaded.config.clone();
        sources.config_version = loaded.version.clone();
        Ok(self.publish(snapshot))
    }

    /// New store contents: compiled with the current config file.
    pub async fn apply_contents(&self, contents: Contents) -> Result<Arc<Snapshot>, Refused> {
        let contents = Arc::new(contents);
        let mut sources = self.sources.lock().await;
        // Two readers (the sync task and a write through the API) may race; an older read
        // never replaces a newer one.
        if let Some(current) = &sources.contents
            && current.revision >= contents.revision
        {
            return Ok(self.snapshot());
        }
        let snapshot = self
            .compile(
                sources.config.clone(),
                sources.config_version.clone(),
                Some(contents.clone()),
            )
            .await?;
        sources.contents = Some(contents);
        Ok(self.publish(snapshot))
    }

    /// Whether the store contents, changed by `edit`, would compile with this instance's
    /// config: checked before a change is written, so nothing is stored that the
    /// gateway would refuse. Nothing is published.
    pub async fn check_contents(&self, edit: impl FnOnce(&mut Contents)) -> Result<(), Refused> {
        let sources = self.sources.lock().await;
        let mut contents = sources.contents.as_deref().cloned().unwrap_or_default();
        edit(&mut contents);
        self.compile(
            sources.config.clone(),
            sources.config_version.clone(),
            Some(Arc::new(contents)),
        )
        .await
        .map(drop)
    }

    /// The policies of the live snapshot as written, in decision order of ties, with
    /// their store versions (empty for policies from the file), and the default action.
    pub async fn policy_definitions(&self) -> (Vec<PolicyConfig>, Vec<i64>, DefaultAction) {
        let sources = self.sources.lock().await;
        let default = sources.config.default_action;
        match (&sources.contents, self.store_mode) {
            (Some(contents), true) => (
                contents
                    .policies
                    .iter()
                    .map(|p| p.definition.clone())
                    .collect(),
                contents.policies.iter().map(|p| p.version).collect(),
                default,
            ),
            (None, true) => (Vec::new(), Vec::new(), DefaultAction::Deny),
            (_, false) => (sources.config.policies.clone(), Vec::new(), default),
        }
    }

    /// The store revision of the live snapshot.
    pub fn revision(&self) -> Option<i64> {
        self.snapshot().store_revision
    }

    async fn compile(
        &self,
        config: Config,
        version: String,
        contents: Option<Arc<Contents>>,
    ) -> Result<Snapshot, Refused> {
        let runtime = self.runtime.clone();
        let store_mode = self.store_mode;
        let compiled = tokio::task::spawn_blocking(move || match (store_mode, contents) {
            (true, Some(contents)) => {
                Snapshot::compile_with_store(&config, &version, &contents, &env, &runtime)
            }
            (true, None) => Snapshot::unavailable(&config, &version, &env, &runtime),
            (false, _) => Snapshot::compile(&config, &version, &env, &runtime),
        })
        .await;
        match compiled {
            Ok(result) => result.map_err(Refused),
            Err(e) => Err(Refused(vec![FieldError::new(
                "",
                format!("compilation failed: {e}"),
            )])),
        }
    }

    fn publish(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let snapshot = Arc::new(snapshot);
        self.shared
            .metrics
            .set_active_policies(snapshot.policies.active_count());
        self.shared.snapshot.store(snapshot.clone());
        snapshot
    }
}

/// The first retry after a failed read of the store; it doubles up to the resync interval.
const RETRY_START: Duration = Duration::from_millis(200);

/// Keeps the live snapshot in step with the store: reads it when the change feed says so,
/// when this instance wrote to it, and every `resync` (when its revision moved). While the
/// store is unreachable the last snapshot stays live; reads are retried with backoff.
pub async fn sync_from_store(
    live: Arc<Live>,
    store: Store,
    resync: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut feed = changes::start(store.clone(), shutdown.clone());
    let mut timer = tokio::time::interval(resync);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    let mut retry: Option<(Instant, Duration)> = Some((Instant::now(), RETRY_START));
    loop {
        let retry_at = retry.map(|(at, _)| at);
        let full = tokio::select! {
            signal = feed.recv() => {
                let Some(mut signal) = signal else { return };
                // A burst of signals is one reload; the last one says where the feed is.
                while let Ok(next) = feed.try_recv() {
                    signal = match (signal, next) {
                        (Signal::Lost(why), Signal::Changed) => Signal::Lost(why),
                        (_, next) => next,
                    };
                }
                match signal {
                    Signal::Changed | Signal::Connected => true,
                    Signal::Lost(why) => {
                        live.shared.metrics.set_store_up(false);
                        tracing::warn!(store = %store.display_url(), error = %why, revision = ?live.revision(),
                            "policy store unreachable; deciding with the last snapshot, reconnecting");
                        continue;
                    }
                }
            },
            _ = live.kick.notified() => true,
            _ = timer.tick() => false,
            _ = sleep_until(retry_at) => true,
            _ = shutdown.changed() => return,
        };
        match reload(&live, &store, full).await {
            Ok(()) => retry = None,
            Err(why) => {
                live.shared.metrics.set_store_up(false);
                let wait = retry.map_or(RETRY_START, |(_, wait)| (wait * 2).min(resync));
                if retry.is_none() {
                    tracing::warn!(store = %store.display_url(), error = %why, revision = ?live.revision(),
                        "cannot read the policy store; deciding with the last snapshot, retrying");
                }
                retry = Some((Instant::now() + wait, wait));
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Reads the store and publishes a new snapshot when its revision moved (or, with `full`,
/// whenever the snapshot was never read). A store definition that does not compile here
/// is logged and the last good snapshot stays.
async fn reload(live: &Live, store: &Store, full: bool) -> Result<(), String> {
    let revision = store.revision().await.map_err(|e| e.to_string())?;
    live.shared.metrics.set_store_up(true);
    if live.revision() == Some(revision) && !(full && live.snapshot().unavailable.is_some()) {
        return Ok(());
    }
    let started = Instant::now();
    let contents = store.contents().await.map_err(|e| e.to_string())?;
    let revision = contents.revision;
    let previous = live.revision();
    match live.apply_contents(contents).await {
        Ok(snapshot) => {
            live.shared.metrics.record_store_sync(true, Some(revision));
            tracing::info!(
                version = %snapshot.version,
                revision,
                previous = ?previous,
                active = snapshot.policies.active_count(),
                compile_ms = started.elapsed().as_millis() as u64,
                "policies loaded from the store"
            );
        }
        Err(Refused(errors)) => {
            live.shared.metrics.record_store_sync(false, None);
            for error in &errors {
                tracing::error!(path = %error.path, "{}", error.message);
            }
            tracing::error!(revision, live = ?previous,
                "the store's contents do not compile with this gateway's config; the last good snapshot stays live");
        }
    }
    Ok(())
}
