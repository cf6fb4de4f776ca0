//! A change arriving through the config file: watched (inotify, with a poll behind it and
//! SIGHUP), read, parsed, compiled with the store contents last read, and published by
//! [`Live::apply_config`] — or refused whole, the last good snapshot staying live.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use super::{ChangeRefused, Live, PolicySource};
use crate::config::watch::{self as config_watch, ConfigWatch};
use crate::config::{
    Config, ConfigErrors, LoadedConfig, StoreConfig, parse_str, version_of, version_of_file,
};
use crate::telemetry::metrics::Metrics;
use crate::vocab::FieldError;

/// What `serve`'s flags change in the file's settings. Applied to the file as first read
/// and to every reload alike, so a reload neither drops them nor warns that they changed.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub store: Option<String>,
    pub interception_ca: Option<PathBuf>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(url) = &self.store {
            let mut store = config.store.clone().unwrap_or_else(|| StoreConfig::at(url));
            store.url = Some(url.clone());
            store.url_env = None;
            config.store = Some(store);
        }
        if let Some(dir) = &self.interception_ca {
            let ca = crate::tls::config::CaFiles {
                cert_file: dir.join("ca.crt"),
                key_file: dir.join("ca.key"),
            };
            match &mut config.interception {
                Some(interception) => interception.ca = ca,
                None => {
                    config.interception = Some(crate::tls::config::InterceptionConfig::with_ca(ca));
                }
            }
        }
    }
}

/// Applies config file changes: compiles off the request path, swaps the snapshot only
/// when the whole new config is valid.
pub struct Reloader {
    pub path: PathBuf,
    pub live: Arc<Live>,
    /// Version of the content last tried, valid or not: unchanged content is not retried.
    pub last_seen: Option<String>,
    /// The config `serve` started with, to warn about settings that need a restart.
    pub running: Config,
    /// `serve`'s flags, applied to every reload as to the first read.
    pub overrides: Overrides,
}

/// The poll behind the watch reads the whole file at most this many polls apart when its
/// stamp has not moved: at 100,000 policies the file is 19 MB, and reading and hashing it
/// every poll cost a steady few percent of a core and a 19 MB buffer each time.
const READ_EVERY: u32 = 15;

/// What a poll compares before reading the file: which file the path names now (a
/// ConfigMap swap or a rename-on-save gives another inode), its size, and when its
/// contents (mtime) or its inode (ctime) last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    /// `None` when the path cannot be read: the poll then reads, and reports why not.
    async fn of(path: &std::path::Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = tokio::fs::metadata(path).await.ok()?;
        Some(FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// When the poll last had the file read: its stamp then, and the polls since. `None` at
/// first, so the first poll reads whatever changed since `serve` read it.
#[derive(Default)]
struct LastRead {
    stamp: Option<FileStamp>,
    polls_since: u32,
}

impl LastRead {
    /// Notes a read about to happen for another reason (the watch, SIGHUP).
    async fn now(&mut self, path: &std::path::Path) {
        self.stamp = FileStamp::of(path).await;
        self.polls_since = 0;
    }

    /// Whether this poll reads: the stamp moved (or cannot be taken), or READ_EVERY polls
    /// went by (a rewrite of the same size within one timestamp tick).
    async fn due(&mut self, path: &std::path::Path) -> bool {
        let now = FileStamp::of(path).await;
        self.polls_since += 1;
        let due = now.is_none() || now != self.stamp || self.polls_since >= READ_EVERY;
        if due {
            self.stamp = now;
            self.polls_since = 0;
        }
        due
    }
}

impl Reloader {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
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
        let mut last_read = LastRead::default();
        loop {
            tokio::select! {
                Some(()) = changes.recv() => {
                    debounce(&mut changes).await;
                    last_read.now(&self.path).await;
                    self.check().await;
                    if let Some(watch) = &mut watch {
                        watch.rearm();
                    }
                }
                _ = poll.tick() => {
                    if last_read.due(&self.path).await {
                        self.check().await;
                    }
                    if let Some(watch) = &mut watch {
                        watch.rearm();
                    }
                }
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                    self.last_seen = None;
                    last_read.now(&self.path).await;
                    self.check().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn check(&mut self) {
        let metrics = self.live.shared.metrics.clone();
        // The contents tried last, hashed in pieces: nothing more to do, and nothing the
        // size of the file held. Anything else (a change, an error) reads it whole below.
        let path = self.path.clone();
        let streamed = (tokio::task::spawn_blocking(move || version_of_file(&path)).await)
            .ok()
            .and_then(Result::ok);
        if streamed.is_some() && self.last_seen == streamed {
            return;
        }
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(e) => {
                let version = format!("unreadable:{}", e.kind());
                if self.last_seen.as_deref() != Some(version.as_str()) {
                    tracing::error!(config = %self.path.display(), error = %e,
                        "cannot read config; keeping the live one");
                    metrics.record_reload(false, None);
                    self.last_seen = Some(version);
                }
                return;
            }
        };
        // Not hashed again here (19 MB at 100,000 policies, on a thread deciding
        // requests): the parse names the version of what it read. Should the file have
        // changed since it was hashed, a refused text is tried once more at the next poll.
        self.last_seen = streamed.or_else(|| Some(version_of(&text)));
        let started = Instant::now();
        let live = self.live.snapshot().version.clone();
        // Off the async workers: at 100,000 policies a parse takes a second.
        let path = self.path.clone();
        let parsed = crate::live::on_blocking_thread(move || parse_str(&text, Some(&path))).await;
        let Ok(parsed) = parsed else {
            tracing::error!("the config parse panicked; keeping the live config");
            metrics.record_reload(false, None);
            return;
        };
        let loaded = match parsed {
            Ok(mut loaded) => {
                self.last_seen = Some(loaded.version.clone());
                self.overrides.apply(&mut loaded.config);
                self.restart_only(loaded)
            }
            Err(errors) => return reject(&metrics, &errors, &live),
        };
        let mut loaded = match loaded {
            Ok(loaded) => loaded,
            Err(errors) => return reject(&metrics, &errors, &live),
        };
        let config = std::sync::Arc::new(std::mem::take(&mut loaded.config));
        match self.live.apply_config(config, loaded.version.clone()).await {
            Ok(snapshot) => {
                let active = snapshot.policies.active_count();
                metrics.record_reload(true, Some(active));
                tracing::info!(version = %snapshot.version, previous = %live, active,
                    compile_ms = started.elapsed().as_millis() as u64, "config reloaded");
            }
            Err(ChangeRefused(errors)) => reject(&metrics, &loaded.place(errors), &live),
        }
    }

    /// Warns about changed settings that need a restart; refuses a change that would
    /// move policies between the file and a store.
    fn restart_only(&mut self, loaded: LoadedConfig) -> Result<LoadedConfig, ConfigErrors> {
        let new = &loaded.config;
        if self.live.policy_source() == PolicySource::Store
            && (!new.policies.is_empty() || !new.secrets.is_empty())
        {
            return Err(loaded.place(vec![FieldError::new(
                "policies",
                "this gateway reads policies and secrets from its store: they cannot be \
                 added to the config file (use `portcullis apply` or the admin API)",
            )]));
        }
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
        if new.store != self.running.store {
            tracing::warn!("`store` changed: restart portcullis to apply");
        }
        Ok(loaded)
    }
}

fn reject(metrics: &Metrics, errors: &ConfigErrors, live: &str) {
    for error in &errors.0 {
        tracing::error!("{error}");
    }
    metrics.record_reload(false, None);
    tracing::error!(errors = errors.0.len(), live = %live,
        "config change rejected; the last good config stays live");
}

/// Waits until events stop arriving for a moment (an editor's save is several events),
/// but never longer than half a second.
async fn debounce(changes: &mut mpsc::Receiver<()>) {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if changes.try_recv().is_err() || Instant::now() >= deadline {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The poll's stamp stays put while nothing touches the file, and moves for an edit of
    /// the same size and for another file renamed over it (an editor's save, a ConfigMap
    /// swap).
    #[tokio::test]
    async fn a_file_stamp_moves_with_every_kind_of_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, "default_action: deny\n").unwrap();
        let first = FileStamp::of(&path).await.expect("a stamp");
        assert_eq!(FileStamp::of(&path).await, Some(first));

        // Past the filesystem's timestamp tick, the same number of bytes.
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(&path, "default_action: DENY\n").unwrap();
        let edited = FileStamp::of(&path).await.expect("a stamp");
        assert_eq!(edited.len, first.len);
        assert_ne!(edited, first);

        let other = dir.path().join("new.yaml");
        std::fs::write(&other, "default_action: deny\n").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let swapped = FileStamp::of(&path).await.expect("a stamp");
        assert_ne!(swapped.ino, edited.ino);

        std::fs::remove_file(&path).unwrap();
        assert_eq!(FileStamp::of(&path).await, None);
    }

    /// A poll reads when the stamp moved since the last read, and every READ_EVERY polls
    /// even when it did not; a read for another reason (the watch) restarts the count.
    #[tokio::test]
    async fn a_poll_reads_when_the_stamp_moved_or_enough_polls_went_by() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, "default_action: deny\n").unwrap();
        let mut last_read = LastRead::default();
        assert!(last_read.due(&path).await, "the first poll reads");
        for _ in 1..READ_EVERY {
            assert!(!last_read.due(&path).await);
        }
        assert!(
            last_read.due(&path).await,
            "the READ_EVERY-th poll reads anyway"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(&path, "default_action: DENY\n").unwrap();
        assert!(last_read.due(&path).await, "an edit moves the stamp");
        std::fs::write(&path, "default_action: deny\n").unwrap();
        last_read.now(&path).await;
        assert!(!last_read.due(&path).await, "read since by the watch");
    }

    /// A poll knows the file by the version a whole read would give it, read in pieces.
    #[test]
    fn a_file_read_in_pieces_has_the_version_of_its_whole_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        let text: String = (0..20_000)
            .map(|i| format!("  - name: policy-{i}\n"))
            .collect();
        assert!(text.len() > 3 * 64 * 1024);
        std::fs::write(&path, &text).unwrap();
        assert_eq!(version_of_file(&path).unwrap(), version_of(&text));
        assert!(version_of_file(&dir.path().join("missing.yaml")).is_err());
    }
}
