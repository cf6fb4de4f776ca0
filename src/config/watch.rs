//! Watches the config file for changes. The watch is on the file itself (its inode), so
//! files written next to it — an audit log, say — cost nothing. Editors replace files by
//! rename and Kubernetes swaps a ConfigMap's `..data` symlink: both end the watched inode,
//! which is itself an event. The reloader then reads the path again and re-arms the watch
//! on whatever file it names now ([`ConfigWatch::rearm`]). A slow poll backs this up on
//! filesystems without change notification.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How often the file is re-read even without notifications.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A watch on one config file.
pub struct ConfigWatch {
    watcher: RecommendedWatcher,
    path: PathBuf,
}

impl ConfigWatch {
    /// Starts watching; each change sends `()` on `changes`.
    pub fn start(path: &Path, changes: mpsc::Sender<()>) -> notify::Result<ConfigWatch> {
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                // A full channel already holds a pending reload: nothing is lost.
                let _ = changes.try_send(());
            }
        })?;
        let mut watch = ConfigWatch {
            watcher,
            path: path.to_path_buf(),
        };
        watch
            .watcher
            .watch(&watch.path, RecursiveMode::NonRecursive)?;
        Ok(watch)
    }

    /// Points the watch at the file the path names now (it may be a new inode after a
    /// rename or a symlink swap). While the path is missing, the poll covers the gap.
    pub fn rearm(&mut self) {
        let _ = self.watcher.unwatch(&self.path);
        let _ = self.watcher.watch(&self.path, RecursiveMode::NonRecursive);
    }
}
