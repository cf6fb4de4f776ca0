//! Watches the config file for changes. The watch is on the file's directory, not the
//! file: editors replace files by rename, and Kubernetes swaps a ConfigMap's `..data`
//! symlink, neither of which an inotify watch on the old file would see. Every event just
//! triggers a reload check; the reloader ignores content it has already seen. A slow poll
//! backs this up on filesystems without change notification.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How often the file is re-read even without notifications.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Starts watching; each change sends `()` on `changes`. Keep the returned watcher alive.
pub fn watch(path: &Path, changes: mpsc::Sender<()>) -> notify::Result<RecommendedWatcher> {
    let directory: PathBuf = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = event.paths.iter().any(|p| match p.file_name() {
            // `..data` and `..<timestamp>`: Kubernetes' atomic ConfigMap update.
            Some(n) => Some(n) == name.as_deref() || n.to_string_lossy().starts_with(".."),
            None => false,
        });
        if relevant {
            // A full channel already holds a pending reload: nothing is lost.
            let _ = changes.try_send(());
        }
    })?;
    watcher.watch(&directory, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
