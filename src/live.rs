//! What the live snapshot is built from — the config file and, with a store, the store's
//! contents — and the one place that compiles and publishes it. A file reload and a store
//! change both come through here, one at a time, so a snapshot never mixes a new file with
//! stale store contents or the other way round. An invalid change is refused whole and the
//! last good snapshot stays live.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Notify, watch};

use crate::config::{Config, LoadedConfig};
use crate::policy::{DefaultAction, PolicyConfig};
use crate::snapshot::{Runtime, Snapshot};
use crate::store::changes::{self, Signal};
use crate::store::faults::policy_stand_in;
use crate::store::{Contents, Fault, Store};
use crate::vocab::FieldError;

/// What every stream shares: the live snapshot, the audit sink, the metrics.
pub struct Shared {
    pub snapshot: Arc<arc_swap::ArcSwap<Snapshot>>,
    pub audit: crate::audit::AuditSink,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// Set on SIGTERM: `/readyz` turns 503 so load balancers stop sending new work while
    /// open streams drain.
    pub draining: std::sync::atomic::AtomicBool,
}

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
    runtime: Runtime,
    sources: Mutex<Sources>,
    /// Whether policies come from a store rather than the config file.
    store_mode: bool,
    /// Asks the store sync to read the store now (after a write through this instance).
    kick: Notify,
    /// The stored objects the live snapshot cannot use (`/readyz`); apart from `sources`
    /// so a probe never waits for a compilation.
    faults: std::sync::Mutex<Arc<Vec<Fault>>>,
}

/// Why a change was not published.
#[derive(Debug)]
pub struct Refused(pub Vec<FieldError>);

/// Store contents as compiled: the stored objects that did not compile set aside.
pub struct Isolated {
    pub contents: Arc<Contents>,
    /// The compile errors that set them aside.
    pub set_aside: Vec<FieldError>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Live {
    pub fn new(
        shared: Arc<Shared>,
        runtime: Runtime,
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
            faults: std::sync::Mutex::default(),
        }
    }

    /// The stored objects the live snapshot cannot use, and what stands in for each.
    pub fn faults(&self) -> Arc<Vec<Fault>> {
        self.faults.lock().expect("not poisoned").clone()
    }

    /// The config file the live snapshot was compiled from.
    pub async fn config(&self) -> Config {
        self.sources.lock().await.config.clone()
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

    /// A new config file: compiled with the store contents last read. Stored objects it
    /// no longer lets compile (narrower `store.secret_sources`) become faults, and ones it
    /// lets compile again stop being faults; an error in the file itself refuses it.
    pub async fn apply_config(&self, loaded: &LoadedConfig) -> Result<Arc<Snapshot>, Refused> {
        let mut sources = self.sources.lock().await;
        let (snapshot, compiled) = self
            .compile_isolated(
                loaded.config.clone(),
                loaded.version.clone(),
                sources.contents.clone(),
            )
            .await?;
        sources.config = loaded.config.clone();
        sources.config_version = loaded.version.clone();
        if let Some(compiled) = compiled {
            self.report_faults(&compiled.contents.faults);
        }
        Ok(self.publish(snapshot))
    }

    /// New store contents: compiled with the current config file.
    pub async fn apply_contents(&self, contents: Contents) -> Result<Arc<Snapshot>, Refused> {
        self.apply_store(contents, false).await
    }

    /// Contents read after the store's revision went backwards (a restored backup): they
    /// replace the live ones although their revision is lower.
    pub async fn follow_restored(&self, contents: Contents) -> Result<Arc<Snapshot>, Refused> {
        self.apply_store(contents, true).await
    }

    /// Compiles and publishes store contents. A stored object that does not compile here
    /// costs only itself: it is set aside as a fault (docs/store.md) and the rest is
    /// compiled again. Only an error no stored object explains refuses the whole change.
    async fn apply_store(
        &self,
        contents: Contents,
        restored: bool,
    ) -> Result<Arc<Snapshot>, Refused> {
        let contents = Arc::new(contents);
        let mut sources = self.sources.lock().await;
        // Two readers (the sync task and a write through the API) may race; an older read
        // never replaces a newer one — unless the store itself went back.
        if let Some(current) = &sources.contents
            && current.revision >= contents.revision
            && !restored
        {
            return Ok(self.snapshot());
        }
        let (snapshot, compiled) = self
            .compile_isolated(
                sources.config.clone(),
                sources.config_version.clone(),
                Some(contents.clone()),
            )
            .await?;
        if let Some(compiled) = compiled {
            self.report_faults(&compiled.contents.faults);
        }
        // As read: a later config may let what was set aside here compile.
        sources.contents = Some(contents);
        Ok(self.publish(snapshot))
    }

    /// Compiles `config` with store `contents`, setting aside each stored object that
    /// does not compile (a fault, docs/store.md) and compiling the rest again. Only an
    /// error no stored object explains refuses the whole. Returns the contents as
    /// compiled, with what was set aside.
    async fn compile_isolated(
        &self,
        config: Config,
        version: String,
        contents: Option<Arc<Contents>>,
    ) -> Result<(Snapshot, Option<Isolated>), Refused> {
        let (true, Some(contents)) = (self.store_mode, contents.clone()) else {
            let snapshot = self.compile(config, version, contents).await?;
            return Ok((snapshot, None));
        };
        let runtime = self.runtime.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            compile_with_store_isolated(&config, &version, contents, &env, &runtime)
        })
        .await;
        joined(compiled).map(|(snapshot, isolated)| (snapshot, Some(isolated)))
    }

    /// Logs each fault that is new (with the object's name) and each that is gone, and
    /// updates the metric and `/readyz`.
    fn report_faults(&self, faults: &[Fault]) {
        let mut current = self.faults.lock().expect("not poisoned");
        for fault in faults.iter().filter(|f| !current.contains(f)) {
            tracing::error!(kind = fault.kind, name = %fault.name, version = ?fault.version,
                outcome = fault.outcome, error = %fault.error,
                "a stored object cannot be used; everything else in the store still applies");
        }
        for fault in current.iter().filter(|f| !faults.contains(f)) {
            tracing::info!(kind = fault.kind, name = %fault.name, "a stored object is usable again");
        }
        let kinds: Vec<&'static str> = faults.iter().map(|f| f.kind).collect();
        self.shared.metrics.control.set_store_faults(&kinds);
        *current = Arc::new(faults.to_vec());
    }

    /// Whether the store contents, changed by `edit`, would compile with this instance's
    /// config: checked before a change is written, so nothing is stored that the
    /// gateway would refuse. `written` names the changed object as errors do
    /// (`policies["p"]`): an error of its own refuses the change; other stored objects
    /// that do not compile are set aside as when the store is read. Nothing is published.
    pub async fn check_contents(
        &self,
        written: Option<&str>,
        edit: impl FnOnce(&mut Contents),
    ) -> Result<(), Refused> {
        let sources = self.sources.lock().await;
        let mut contents = sources.contents.as_deref().cloned().unwrap_or_default();
        edit(&mut contents);
        let (_, isolated) = self
            .compile_isolated(
                sources.config.clone(),
                sources.config_version.clone(),
                Some(Arc::new(contents)),
            )
            .await?;
        let own: Vec<FieldError> = isolated
            .map(|i| i.set_aside)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| written.is_some_and(|w| e.path.starts_with(w)))
            .collect();
        if own.is_empty() {
            Ok(())
        } else {
            Err(Refused(own))
        }
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
        joined(compiled)
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

/// A compile run on a blocking thread, its panic (a join error) refusing like an error.
fn joined<T>(
    compiled: Result<Result<T, Vec<FieldError>>, tokio::task::JoinError>,
) -> Result<T, Refused> {
    match compiled {
        Ok(result) => result.map_err(Refused),
        Err(e) => Err(Refused(vec![FieldError::new(
            "",
            format!("compilation failed: {e}"),
        )])),
    }
}

/// Compiles `config` with the store's `contents` as a running gateway does: each stored
/// object that does not compile is set aside (recorded in the contents' faults) and the
/// rest compiled again; only an error no stored object explains refuses the whole. The
/// live gateway and `check` both decide with what this returns.
pub fn compile_with_store_isolated(
    config: &Config,
    version: &str,
    mut contents: Arc<Contents>,
    env: &dyn Fn(&str) -> Option<String>,
    runtime: &Runtime,
) -> Result<(Snapshot, Isolated), Vec<FieldError>> {
    let mut set_aside = std::collections::HashSet::new();
    let mut set_aside_errors = Vec::new();
    loop {
        match Snapshot::compile_with_store(config, version, &contents, env, runtime) {
            Ok(snapshot) => {
                let isolated = Isolated {
                    contents,
                    set_aside: set_aside_errors,
                };
                return Ok((snapshot, isolated));
            }
            Err(errors) => {
                // Each round sets aside at least one object, never the same one twice.
                if !set_aside_faulty(Arc::make_mut(&mut contents), &errors, &mut set_aside) {
                    return Err(errors);
                }
                set_aside_errors.extend(errors);
            }
        }
    }
}

/// Sets aside every stored object an error names (`policies["p"].rules[0]`): a policy is
/// replaced by its fail-closed stand-in (or left out), a secret or a token is left out,
/// each recorded as a fault. Whether anything was set aside.
fn set_aside_faulty(
    contents: &mut Contents,
    errors: &[FieldError],
    set_aside: &mut std::collections::HashSet<(&'static str, String)>,
) -> bool {
    let named = |section: &str, name: &str| format!("{section}[{name:?}]");
    let why = |prefix: &str| {
        let mut messages: Vec<String> = errors
            .iter()
            .filter_map(|e| {
                let rest = e.path.strip_prefix(prefix)?;
                let rest = rest.trim_start_matches('.');
                Some(if rest.is_empty() {
                    e.message.clone()
                } else {
                    format!("{rest}: {}", e.message)
                })
            })
            .collect();
        messages.dedup();
        (!messages.is_empty()).then(|| messages.join("; "))
    };
    let mut progress = false;
    let mut faults = Vec::new();
    let mut kept = Vec::with_capacity(contents.policies.len());
    for mut stored in std::mem::take(&mut contents.policies) {
        let name = stored.definition.name.clone();
        let Some(error) = why(&named("policies", &name)) else {
            kept.push(stored);
            continue;
        };
        progress = true;
        // A stand-in that fails again is left out.
        let first = set_aside.insert(("policy", name.clone()));
        let raw = serde_json::to_value(&stored.definition).ok();
        let stand_in = first
            .then(|| policy_stand_in(&name, raw.as_ref()))
            .flatten();
        faults.push(Fault {
            kind: "policy",
            name,
            version: Some(stored.version),
            error,
            outcome: Fault::outcome(stand_in.is_some()),
        });
        if let Some(definition) = stand_in {
            stored.definition = definition;
            kept.push(stored);
        }
    }
    contents.policies = kept;
    contents.secrets.retain(|stored| {
        let Some(error) = why(&named("secrets", &stored.definition.name)) else {
            return true;
        };
        progress = true;
        faults.push(Fault {
            kind: "secret",
            name: stored.definition.name.clone(),
            version: Some(stored.version),
            error,
            outcome: "left_out",
        });
        false
    });
    contents.tokens.retain(|token| {
        let Some(error) = why(&named("tokens", &token.name)) else {
            return true;
        };
        progress = true;
        faults.push(Fault {
            kind: "token",
            name: token.name.clone(),
            version: None,
            error,
            outcome: "left_out",
        });
        false
    });
    // A policy set aside again replaces its earlier fault.
    contents
        .faults
        .retain(|f| !faults.iter().any(|n| n.kind == f.kind && n.name == f.name));
    contents.faults.extend(faults);
    progress
}

/// The first retry after a failed read of the store; it doubles up to the resync interval.
const RETRY_START: Duration = Duration::from_millis(200);

/// How often the store is read when nothing else reads it, and how long a read may take
/// before the store counts as unreachable. With the notification connection's own
/// heartbeat (the same interval), a connection that went silent — packets dropped, not
/// refused — is noticed within two of these in every state, right after a recovery too.
pub const LIVENESS: Duration = Duration::from_secs(5);

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
    let mut liveness = tokio::time::interval_at(tokio::time::Instant::now() + LIVENESS, LIVENESS);
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            // Reading the revision is the pool's heartbeat.
            _ = liveness.tick() => false,
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

/// A read of the store, bounded by [`LIVENESS`]. One that does not answer in time went
/// through a silent connection: the pool is renewed, so the next read connects afresh.
async fn answered<T>(
    store: &Store,
    read: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
) -> Result<T, String> {
    match tokio::time::timeout(LIVENESS, read).await {
        Ok(read) => read.map_err(|e| e.to_string()),
        Err(_) => {
            store.renew();
            Err(format!("the store did not answer within {LIVENESS:?}"))
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
    // Read before the store: a revision published since can only be higher than this.
    let previous = live.revision();
    let revision = answered(store, store.revision()).await?;
    live.shared.metrics.set_store_up(true);
    if previous == Some(revision) && !(full && live.snapshot().unavailable.is_some()) {
        return Ok(());
    }
    let started = Instant::now();
    let contents = answered(store, store.contents()).await?;
    let revision = contents.revision;
    // A live store's revision only grows: lower means it was restored (or replaced), and
    // what it holds now is what decides, whatever this instance read before.
    let restored = previous.is_some_and(|previous| revision < previous);
    let applied = if restored {
        live.shared.metrics.control.record_store_regression();
        tracing::warn!(revision, live = ?previous, store = %store.display_url(),
            "the policy store's revision went backwards (restored from a backup?); \
             following it: read in full and published");
        live.follow_restored(contents).await
    } else {
        live.apply_contents(contents).await
    };
    match applied {
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
