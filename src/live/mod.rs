//! The live snapshot and every way a change reaches it: the config file ([`file`]), the
//! store ([`store`]: its change feed, a write through this instance, the resync), and secret
//! values ([`secrets`], kept in the runtime's cache beside the snapshot). File and store
//! changes are compiled and published here, one at a time, so a snapshot never mixes a new
//! file with stale store contents or the other way round. An invalid change is refused
//! whole and the last good snapshot stays live.

pub mod file;
pub mod secrets;
pub mod store;

use std::sync::Arc;

use tokio::sync::{Mutex, Notify};

use crate::config::Config;
use crate::policy::{DefaultAction, PolicyConfig, PolicyDefinition};
use crate::snapshot::{Origin, Runtime, Snapshot};
use crate::store::{Changes, Contents, Fault, Store};
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

/// Where policies, secrets and enrollment tokens come from: fixed when `serve` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// The config file's own `policies:`, `secrets:` and `identities:`.
    File,
    /// A store; the file holds the gateway's settings only.
    Store,
}

/// What the live snapshot was compiled from.
struct Inputs {
    /// Without its policies, which live on only in their compiled form (at 100,000 a
    /// second copy would be 100 MB): the next file brings its own, and with a store the
    /// file has none.
    config: Arc<Config>,
    config_version: String,
    /// The contents behind the live snapshot; `None` without a store, or before the store
    /// was first read.
    contents: Option<Arc<Contents>>,
}

/// The live snapshot and what it is compiled from.
pub struct Live {
    pub shared: Arc<Shared>,
    runtime: Runtime,
    inputs: Mutex<Inputs>,
    source: PolicySource,
    /// Asks the store sync to read the store now (after a write through this instance).
    kick: Notify,
    /// The stored objects the live snapshot cannot use (`/readyz`); apart from `inputs`
    /// so a probe never waits for a compilation.
    faults: std::sync::Mutex<Arc<Vec<Fault>>>,
}

/// Why a change was not published.
#[derive(Debug)]
pub struct ChangeRefused(pub Vec<FieldError>);

/// Store contents as compiled: the stored objects that did not compile set aside.
pub struct Isolated {
    pub contents: Arc<Contents>,
    /// The compile errors that set them aside.
    pub set_aside: Vec<FieldError>,
}

/// Hands the memory a compile freed back to the system. An allocator keeps what a parse
/// and a compile free (in heaps of threads that may have exited since), so after a reload
/// of 100,000 policies the process would hold hundreds of megabytes it no longer uses,
/// towards a container's memory limit. The binary allocates with mimalloc; glibc's malloc
/// is trimmed too, for what allocates through it (the tests, C libraries).
pub fn release_freed_memory() {
    collect_heap();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns whole free pages of glibc's own heaps to the kernel;
    // it touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for huge pages on the
/// regions it reserves (`MADV_HUGEPAGE`), and the kernel's khugepaged then fills every
/// 2 MiB range of them that holds one page in use: at 100,000 policies an idle `serve` grew
/// from 117 to 143 MiB in a minute (every 10 s, one scan) over the memory a compile had
/// freed and mimalloc had handed back. Without them it holds 109 MiB and stays there, and
/// is ready as fast (BENCHMARKS.md). Inherited by children; `serve` starts none.
pub fn no_transparent_huge_pages() {
    // A kernel that refuses (before 3.15, or a seccomp filter) leaves the default: the
    // same answers, more memory.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory map; it takes
    // no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// A parse or compile that panicked on its blocking thread, with the panic's message.
#[derive(Debug)]
pub struct Panicked(pub String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "panicked: {}", self.0)
    }
}

/// Runs a parse or a compile on a blocking thread, and before answering has that thread
/// hand back what its allocator heap holds freed. Only the thread that owns a heap returns
/// its free pages, and tokio keeps an idle blocking thread for ten seconds, so a reload's
/// temporaries otherwise stay resident: at 100,000 policies, 156 MiB after a few file
/// reloads instead of 120–130. Handing back first and answering after measured better than
/// answering first: the next step (the compile after a parse) then finds the same thread
/// idle and allocates in the heap just tidied (BENCHMARKS.md).
pub async fn on_blocking_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Panicked> {
    let joined = tokio::task::spawn_blocking(move || {
        // `work` and what it captured are dropped by the time it returns.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        collect_heap();
        outcome
    })
    .await;
    match joined {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(payload)) => Err(Panicked(
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned()),
        )),
        Err(e) => Err(Panicked(e.to_string())),
    }
}

/// Has mimalloc hand back what this thread's heap and the heaps of exited threads hold
/// freed.
fn collect_heap() {
    // SAFETY: mi_collect frees only memory mimalloc holds unused, including the heaps of
    // exited threads; it is called from a blocking thread with nothing borrowed.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// [`release_freed_memory`] once the decisions still holding the previous snapshot are
/// done with it, off the async workers.
fn release_freed_memory_soon() {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let _ = tokio::task::spawn_blocking(release_freed_memory).await;
        });
    }
}

/// `config` without its policies: taken apart without a copy, as no compile holds it by
/// the time it is kept.
fn without_policies(config: Arc<Config>) -> Arc<Config> {
    let mut config = Arc::unwrap_or_clone(config);
    config.policies = Vec::new();
    Arc::new(config)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Live {
    /// The approval queue every snapshot refers refusals to.
    pub fn approvals(&self) -> &crate::approvals::Desk {
        &self.runtime.approvals
    }

    pub fn new(
        shared: Arc<Shared>,
        runtime: Runtime,
        config: Arc<Config>,
        config_version: String,
        source: PolicySource,
    ) -> Live {
        Live {
            shared,
            runtime,
            inputs: Mutex::new(Inputs {
                config: without_policies(config),
                config_version,
                contents: None,
            }),
            source,
            kick: Notify::new(),
            faults: std::sync::Mutex::default(),
        }
    }

    /// The stored objects the live snapshot cannot use, and what stands in for each.
    pub fn faults(&self) -> Arc<Vec<Fault>> {
        self.faults.lock().expect("not poisoned").clone()
    }

    /// The settings of the config file the live snapshot was compiled from (its policies
    /// are held only compiled).
    pub async fn config(&self) -> Arc<Config> {
        self.inputs.lock().await.config.clone()
    }

    pub fn policy_source(&self) -> PolicySource {
        self.source
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
    pub async fn apply_config(
        &self,
        config: Arc<Config>,
        version: String,
    ) -> Result<Arc<Snapshot>, ChangeRefused> {
        let mut inputs = self.inputs.lock().await;
        let (snapshot, compiled) = self
            .compile_isolated(config.clone(), version.clone(), inputs.contents.clone())
            .await?;
        inputs.config = without_policies(config);
        inputs.config_version = version;
        if let Some(compiled) = compiled {
            self.report_faults(&compiled.contents.faults);
        }
        Ok(self.publish(snapshot))
    }

    /// New store contents: compiled with the current config file.
    pub async fn apply_contents(&self, contents: Contents) -> Result<Arc<Snapshot>, ChangeRefused> {
        self.apply_store(contents, false).await
    }

    /// Contents read after the store's revision went backwards (a restored backup): they
    /// replace the live ones although their revision is lower.
    pub async fn follow_restored(
        &self,
        contents: Contents,
    ) -> Result<Arc<Snapshot>, ChangeRefused> {
        self.apply_store(contents, true).await
    }

    /// Compiles and publishes store contents. A stored object that does not compile here
    /// costs only itself: it is set aside as a fault (docs/store.md) and the rest is
    /// compiled again. Only an error no stored object explains refuses the whole change.
    async fn apply_store(
        &self,
        mut contents: Contents,
        restored: bool,
    ) -> Result<Arc<Snapshot>, ChangeRefused> {
        let mut inputs = self.inputs.lock().await;
        if let Some(current) = &inputs.contents {
            // Two readers (the sync task and a write through the API) may race; an older
            // read never replaces a newer one — unless the store itself went back.
            if current.revision > contents.revision && !restored {
                return Ok(self.snapshot());
            }
            // At the same revision a whole read differs only after a write that did not
            // stamp its rows, which reading what changed could not see.
            let same = contents.share_unchanged(current);
            if same && current.revision == contents.revision {
                return Ok(self.snapshot());
            }
        }
        self.compile_contents(&mut inputs, Arc::new(contents)).await
    }

    /// The store revision of the contents held, from which changes can be read.
    pub async fn contents_revision(&self) -> Option<i64> {
        let inputs = self.inputs.lock().await;
        inputs.contents.as_ref().map(|c| c.revision)
    }

    /// What changed in the store since the contents held: applied to them, compiled and
    /// published — at 100,000 policies a change reads one row, not all. `None` when the
    /// held contents cannot take them (none read yet, or older than what the changes
    /// start from) or do not tally with the store after them (a write stamped nothing):
    /// read the store whole.
    pub async fn apply_changes(
        &self,
        changes: Changes,
    ) -> Option<Result<Arc<Snapshot>, ChangeRefused>> {
        let mut inputs = self.inputs.lock().await;
        let held = inputs.contents.as_ref()?;
        if held.revision < changes.since {
            return None;
        }
        // A racing reader got there first.
        if held.revision >= changes.revision {
            return Some(Ok(self.snapshot()));
        }
        let mut contents = Contents::clone(held);
        if !contents.apply(changes) {
            tracing::info!(
                "the store's rows do not tally with the changes read (a write that stamped \
                 nothing); reading it whole"
            );
            return None;
        }
        Some(self.compile_contents(&mut inputs, Arc::new(contents)).await)
    }

    /// Compiles store `contents` with the config held, keeps them and publishes.
    async fn compile_contents(
        &self,
        inputs: &mut Inputs,
        contents: Arc<Contents>,
    ) -> Result<Arc<Snapshot>, ChangeRefused> {
        let (snapshot, compiled) = self
            .compile_isolated(
                inputs.config.clone(),
                inputs.config_version.clone(),
                Some(contents.clone()),
            )
            .await?;
        if let Some(compiled) = compiled {
            self.report_faults(&compiled.contents.faults);
        }
        // As read: a later config may let what was set aside here compile.
        inputs.contents = Some(contents);
        Ok(self.publish(snapshot))
    }

    /// Compiles `config` with store `contents`, setting aside each stored object that
    /// does not compile (a fault, docs/store.md) and compiling the rest again. Only an
    /// error no stored object explains refuses the whole. Returns the contents as
    /// compiled, with what was set aside.
    async fn compile_isolated(
        &self,
        config: Arc<Config>,
        version: String,
        contents: Option<Arc<Contents>>,
    ) -> Result<(Snapshot, Option<Isolated>), ChangeRefused> {
        let (PolicySource::Store, Some(contents)) = (self.source, contents.clone()) else {
            let snapshot = self.compile(config, version, contents).await?;
            return Ok((snapshot, None));
        };
        let runtime = self.runtime.clone();
        // Policies whose definitions did not change are taken from the live snapshot.
        let earlier = self.snapshot();
        let compiled = on_blocking_thread(move || {
            store::compile_with_store_isolated(
                &config,
                &version,
                contents,
                &env,
                &runtime,
                Some(&earlier.policies),
            )
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
    ) -> Result<(), ChangeRefused> {
        let inputs = self.inputs.lock().await;
        let mut contents = inputs.contents.as_deref().cloned().unwrap_or_default();
        edit(&mut contents);
        let (_, isolated) = self
            .compile_isolated(
                inputs.config.clone(),
                inputs.config_version.clone(),
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
            Err(ChangeRefused(own))
        }
    }

    /// The policies of the live snapshot as written, in decision order of ties, with
    /// their store versions, and the default action. Empty for policies from the config
    /// file: the gateway keeps only their compiled form, and the file is their definition.
    pub async fn policy_definitions(&self) -> (Vec<PolicyConfig>, Vec<i64>, DefaultAction) {
        let inputs = self.inputs.lock().await;
        let default = inputs.config.default_action;
        match (&inputs.contents, self.source) {
            (Some(contents), PolicySource::Store) => (
                (contents.policies.iter())
                    .map(|p| PolicyDefinition::config(p).into_owned())
                    .collect(),
                contents.policies.iter().map(|p| p.version).collect(),
                default,
            ),
            (None, PolicySource::Store) => (Vec::new(), Vec::new(), DefaultAction::Deny),
            (_, PolicySource::File) => (Vec::new(), Vec::new(), default),
        }
    }

    /// Reads `store` and publishes its contents at once, so a change made through this
    /// instance decides its next request; when the store does not answer, the sync task is
    /// asked to read it as soon as it does. Returns the live store revision.
    pub async fn refresh_from(&self, store: &Store) -> Option<i64> {
        match store::catch_up(self, store, false).await {
            Ok(store::Caught {
                applied: Err(ChangeRefused(errors)),
                ..
            }) => {
                tracing::error!(errors = ?errors, "the store's contents do not compile after a change");
            }
            Ok(_) => {}
            // The change is stored; the sync task picks it up once the store answers.
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-read the store after a change");
                self.kick();
            }
        }
        self.revision()
    }

    /// The store revision of the live snapshot.
    pub fn revision(&self) -> Option<i64> {
        self.snapshot().store_revision
    }

    async fn compile(
        &self,
        config: Arc<Config>,
        version: String,
        contents: Option<Arc<Contents>>,
    ) -> Result<Snapshot, ChangeRefused> {
        let runtime = self.runtime.clone();
        let source = self.source;
        let earlier = self.snapshot();
        let compiled = on_blocking_thread(move || {
            let origin = match (source, contents.as_deref()) {
                (PolicySource::File, _) => Origin::File,
                (PolicySource::Store, Some(contents)) => Origin::Store(contents),
                (PolicySource::Store, None) => Origin::StoreUnread,
            };
            let earlier = Some(&earlier.policies);
            Snapshot::build(&config, &version, origin, &env, &runtime, earlier)
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
        release_freed_memory_soon();
        snapshot
    }
}

/// A compile run on a blocking thread, its panic refusing like an error.
fn joined<T>(compiled: Result<Result<T, Vec<FieldError>>, Panicked>) -> Result<T, ChangeRefused> {
    match compiled {
        Ok(result) => result.map_err(ChangeRefused),
        Err(e) => Err(ChangeRefused(vec![FieldError::new(
            "",
            format!("compilation failed: {e}"),
        )])),
    }
}

/// A gRPC server stream whose messages a spawned task sends on a channel (the discovery
/// services' streams).
pub type ResponseStream<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send>>;

/// The stream of what is sent on `rx`, ending when every sender is gone.
pub fn responses<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<Result<T, tonic::Status>>,
) -> ResponseStream<T> {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|response| (response, rx))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocking_work_answers_its_value_and_a_panic_as_an_error() {
        let big: Vec<u64> = (0..1_000_000).collect();
        let sum = on_blocking_thread(move || big.iter().sum::<u64>()).await;
        assert_eq!(sum.unwrap(), 499_999_500_000);
        let panicked = on_blocking_thread(|| -> u32 { panic!("a compile bug") }).await;
        assert_eq!(panicked.unwrap_err().0, "a compile bug");
        let formatted = on_blocking_thread(|| -> u32 { panic!("policy {} broke", 7) }).await;
        assert_eq!(formatted.unwrap_err().0, "policy 7 broke");
    }
}
