//! A change arriving through the store: the change feed (LISTEN/NOTIFY), a write through
//! this instance, or the periodic resync. Stored objects that do not compile are set aside
//! one by one (docs/store.md); only an error none of them explains refuses the change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{ChangeRefused, Isolated, Live};
use crate::config::Config;
use crate::policy::PolicyConfig;
use crate::snapshot::{Runtime, Snapshot};
use crate::store::changes::{self, Signal};
use crate::store::{Contents, Definition, Fault, Held, Store};
use crate::vocab::FieldError;

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
    earlier: Option<&crate::policy::PolicySet>,
) -> Result<(Snapshot, Isolated), Vec<FieldError>> {
    let mut set_aside = std::collections::HashSet::new();
    let mut set_aside_errors = Vec::new();
    loop {
        match Snapshot::compile_with_store(config, version, &contents, env, runtime, earlier) {
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
    for stored in std::mem::take(&mut contents.policies) {
        let name = stored.name.to_string();
        let Some(error) = why(&named("policies", &name)) else {
            kept.push(stored);
            continue;
        };
        progress = true;
        // A stand-in that fails again is left out.
        let first = set_aside.insert(("policy", name.clone()));
        let stand_in = first
            .then(|| PolicyConfig::stand_in(&name, &stored.text))
            .flatten();
        faults.push(Fault {
            kind: "policy",
            name,
            version: Some(stored.version),
            error,
            outcome: Fault::outcome(stand_in.is_some()),
        });
        if let Some(definition) = stand_in {
            kept.push(Held::new(stored.version, &definition));
        }
    }
    contents.policies = kept;
    contents.secrets.retain(|stored| {
        let Some(error) = why(&named("secrets", &stored.name)) else {
            return true;
        };
        progress = true;
        faults.push(Fault {
            kind: "secret",
            name: stored.name.to_string(),
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

/// Keeps the live snapshot in step with the store: reads what changed when the change
/// feed says so, when this instance wrote to it, and when the feed reconnects; and every
/// `resync` reads it whole when its revision moved since the last whole read — a writer
/// that does not stamp the rows it changes (an older version in a rolling upgrade, a
/// hand-written SQL fix) is followed within one resync. While the store is unreachable the
/// last snapshot stays live; reads are retried with backoff.
pub async fn sync(
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
    // The revision last read whole.
    let mut whole_at: Option<i64> = None;
    loop {
        let retry_at = retry.map(|(at, _)| at);
        let (full, read) = tokio::select! {
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
                    Signal::Changed => (true, Read::Changes),
                    // Changes made while the feed was away were never announced: read
                    // whole unless the store did not move since the last whole read (the
                    // feed's first connection, right after the first read).
                    Signal::Connected => (true, Read::Whole { unless_at: whole_at }),
                    Signal::Lost(why) => {
                        live.shared.metrics.set_store_up(false);
                        tracing::warn!(store = %store.display_url(), error = %why, revision = ?live.revision(),
                            "policy store unreachable; deciding with the last snapshot, reconnecting");
                        continue;
                    }
                }
            },
            _ = live.kick.notified() => (true, Read::Changes),
            _ = timer.tick() => (false, Read::Whole { unless_at: whole_at }),
            // Reading the revision is the pool's heartbeat.
            _ = liveness.tick() => (false, Read::Changes),
            _ = sleep_until(retry_at) => (true, Read::Changes),
            _ = shutdown.changed() => return,
        };
        match reload(&live, &store, full, read).await {
            Ok(read_whole) => {
                retry = None;
                whole_at = read_whole.or(whole_at);
            }
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

/// How much of the store a reload reads.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// The rows changed since the contents held (everything when none are held).
    Changes,
    /// Everything, unless the store is still at the revision last read whole.
    Whole { unless_at: Option<i64> },
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

/// What [`catch_up`] did.
pub(super) struct Caught {
    pub applied: Result<Arc<Snapshot>, ChangeRefused>,
    /// The store revision read.
    pub revision: i64,
    /// The changed rows read, or `None` for a whole read.
    pub changed_rows: Option<usize>,
}

/// Brings the live snapshot to the store's current revision: with the rows changed since
/// the contents held when it can, reading the store whole when `whole` says so, when none
/// are held, or when the store went back (restored from a backup).
pub(super) async fn catch_up(live: &Live, store: &Store, whole: bool) -> Result<Caught, String> {
    if !whole && let Some(since) = live.contents_revision().await {
        let changes = answered(store, store.changes_since(since)).await?;
        let revision = changes.revision;
        let changed_rows = changes.policies.len() + changes.secrets.len();
        // A lower revision: the store went back.
        if revision >= since
            && let Some(applied) = live.apply_changes(changes).await
        {
            return Ok(Caught {
                applied,
                revision,
                changed_rows: Some(changed_rows),
            });
        }
    }
    let previous = live.revision();
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
    Ok(Caught {
        applied,
        revision,
        changed_rows: None,
    })
}

/// Reads the store and publishes a new snapshot when its revision moved (or, with `full`,
/// whenever the snapshot was never read). A store definition that does not compile here
/// is logged and the last good snapshot stays. Returns the revision when it read the
/// store whole.
async fn reload(live: &Live, store: &Store, full: bool, read: Read) -> Result<Option<i64>, String> {
    // Read before the store: a revision published since can only be higher than this.
    let previous = live.revision();
    let revision = answered(store, store.revision()).await?;
    live.shared.metrics.set_store_up(true);
    let whole = match read {
        Read::Changes => false,
        Read::Whole { unless_at } => unless_at != Some(revision),
    };
    if previous == Some(revision) && !whole && !(full && live.snapshot().unavailable.is_some()) {
        return Ok(None);
    }
    let started = Instant::now();
    let caught = catch_up(live, store, whole).await?;
    let revision = caught.revision;
    match caught.applied {
        Ok(snapshot) => {
            live.shared.metrics.record_store_sync(true, Some(revision));
            tracing::info!(
                version = %snapshot.version,
                revision,
                previous = ?previous,
                active = snapshot.policies.active_count(),
                read = if caught.changed_rows.is_some() { "changes" } else { "whole" },
                changed_rows = caught.changed_rows.map(|rows| rows as u64),
                compile_ms = started.elapsed().as_millis() as u64,
                "policies loaded from the store"
            );
        }
        Err(ChangeRefused(errors)) => {
            live.shared.metrics.record_store_sync(false, None);
            for error in &errors {
                tracing::error!(path = %error.path, "{}", error.message);
            }
            tracing::error!(revision, live = ?previous,
                "the store's contents do not compile with this gateway's config; the last good snapshot stays live");
        }
    }
    Ok(caught.changed_rows.is_none().then_some(revision))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    fn policy(json: serde_json::Value) -> Held<PolicyConfig> {
        Held::new(1, &serde_json::from_value::<PolicyConfig>(json).unwrap())
    }

    /// A held policy is taken from the earlier compile as it was, without being parsed
    /// again — and still refused when the file no longer defines a detector it names.
    #[test]
    fn a_held_policy_taken_as_compiled_is_still_checked_against_the_files_detectors() {
        let contents = Arc::new(Contents {
            revision: 1,
            policies: vec![
                policy(serde_json::json!({"name": "docs", "action": "allow",
                    "rules": [{"host": "docs.example.com"}]})),
                policy(serde_json::json!({"name": "scan", "action": "deny",
                    "rules": [{"host": "*", "dlp": ["acme_token"]}]})),
            ],
            ..Contents::default()
        });
        let runtime = Runtime::default();
        let with = parse_str(
            "dlp:\n  custom:\n    - {name: acme_token, regex: 'acme_[0-9a-f]{8}'}\n",
            None,
        )
        .unwrap()
        .config;
        let (first, isolated) =
            compile_with_store_isolated(&with, "v1", contents.clone(), &|_| None, &runtime, None)
                .unwrap();
        assert!(
            isolated.contents.faults.is_empty(),
            "{:?}",
            isolated.contents.faults
        );

        let without = parse_str("default_action: deny\n", None).unwrap().config;
        let earlier = Some(&first.policies);
        let (second, isolated) =
            compile_with_store_isolated(&without, "v2", contents, &|_| None, &runtime, earlier)
                .unwrap();
        let faults = &isolated.contents.faults;
        assert_eq!(faults.len(), 1, "{faults:?}");
        assert_eq!(
            (faults[0].name.as_str(), faults[0].outcome),
            ("scan", "denies")
        );
        assert!(
            (faults[0].error).starts_with("rules[0].dlp[0]: unknown DLP detector \"acme_token\""),
            "{}",
            faults[0].error
        );
        let (docs_then, docs_now) = (
            &first.policies.policies()[0],
            &second.policies.policies()[0],
        );
        assert_eq!(&*docs_now.name, "docs");
        assert!(Arc::ptr_eq(docs_then, docs_now), "taken as compiled");
    }
}
