//! Watches the config file for changes. Editors replace files by rename and Kubernetes
//! swaps a ConfigMap's `..data` symlink (removing the old file): either way the watched
//! inode changes or goes away, which is itself an event. After each check the reloader
//! re-arms the watch on whatever file the path names now ([`ConfigWatch::rearm`]). A slow
//! poll backs this up on filesystems without change notification.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How often the file is re-read even without notifications.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A watch on one config file.
pub struct ConfigWatch {
    watcher: RecommendedWatcher,
    path: PathBuf,
    /// (device, inode) of the file the watch is on.
    watched: Option<(u64, u64)>,
}

fn inode(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl ConfigWatch {
    /// Starts watching; each change sends `()` on `changes`.
    pub fn start(path: &Path, changes: mpsc::Sender<()>) -> notify::Result<ConfigWatch> {
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            // Reading the file is an event too (open, close): only changes count, or every
            // check would trigger the next one.
            if matches!(event.kind, EventKind::Access(_) | EventKind::Other) {
                return;
            }
            // A full channel already holds a pending reload: nothing is lost.
            let _ = changes.try_send(());
        })?;
        let mut watch = ConfigWatch {
            watcher,
            path: path.to_path_buf(),
            watched: inode(path),
        };
        watch
            .watcher
            .watch(&watch.path, RecursiveMode::NonRecursive)?;
        Ok(watch)
    }

    /// Points the watch at the file the path names now, if that is a different file (a
    /// rename or a symlink swap replaced it). While the path is missing, the poll covers.
    pub fn rearm(&mut self) {
        let now = inode(&self.path);
        if now.is_some() && now == self.watched {
            return;
        }
        let _ = self.watcher.unwatch(&self.path);
        self.watched = match self.watcher.watch(&self.path, RecursiveMode::NonRecursive) {
            Ok(()) => now,
            Err(_) => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a change is announced within `wait`.
    async fn change_within(rx: &mut mpsc::Receiver<()>, wait: Duration) -> bool {
        tokio::time::timeout(wait, rx.recv()).await.is_ok()
    }

    /// A change that must come: generous (a shared, loaded machine may deliver the event
    /// late), since nothing else (no poll here) could announce it.
    async fn next_change(rx: &mut mpsc::Receiver<()>) -> bool {
        change_within(rx, Duration::from_secs(20)).await
    }

    /// No change within a while: a late spurious event could only make this pass, never
    /// fail for a slow machine.
    async fn no_change(rx: &mut mpsc::Receiver<()>) -> bool {
        !change_within(rx, Duration::from_millis(400)).await
    }

    /// The reloader reads the file after every event; reads must not be events, or the
    /// watcher keeps re-reading the config forever (it once did, ~20 times a second).
    #[tokio::test]
    async fn reading_the_file_and_rearming_are_not_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, "policies: []\n").unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let mut watch = ConfigWatch::start(&path, tx).unwrap();
        for _ in 0..5 {
            std::fs::read_to_string(&path).unwrap();
            watch.rearm();
        }
        std::fs::write(dir.path().join("audit.jsonl"), "beside the config\n").unwrap();
        assert!(
            no_change(&mut rx).await,
            "reads, re-arms and siblings are not changes"
        );

        std::fs::write(&path, "policies: []\ndefault_action: allow\n").unwrap();
        assert!(next_change(&mut rx).await, "an in-place write is a change");

        let tmp = dir.path().join("tmp.yaml");
        std::fs::write(&tmp, "policies: []\n").unwrap();
        while rx.try_recv().is_ok() {}
        std::fs::rename(&tmp, &path).unwrap();
        assert!(
            next_change(&mut rx).await,
            "a rename over the file is a change"
        );
        watch.rearm();
        while rx.try_recv().is_ok() {}
        std::fs::write(&path, "policies: []\n# edited\n").unwrap();
        assert!(
            next_change(&mut rx).await,
            "the re-armed watch sees the new file"
        );
    }

    /// What the kubelet does to a ConfigMap volume (`portcullis.yaml -> ..data/…`,
    /// `..data -> ..vN`): a new `..vN`, an atomic `..data` swap, the old one removed. Each
    /// swap is announced by the watch alone (the reloader's backup poll is not running
    /// here), once re-armed as the reloader does after each check.
    #[tokio::test]
    async fn configmap_swaps_are_changes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v0")).unwrap();
        std::fs::write(d.join("..v0/portcullis.yaml"), "policies: []\n").unwrap();
        std::os::unix::fs::symlink("..v0", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/portcullis.yaml", d.join("portcullis.yaml")).unwrap();
        let path = d.join("portcullis.yaml");
        let (tx, mut rx) = mpsc::channel(1);
        let mut watch = ConfigWatch::start(&path, tx).unwrap();
        for version in 1..=2 {
            let new = format!("..v{version}");
            std::fs::create_dir(d.join(&new)).unwrap();
            std::fs::write(
                d.join(&new).join("portcullis.yaml"),
                format!("policies: []\n# version {version}\n"),
            )
            .unwrap();
            let old = std::fs::read_link(d.join("..data")).unwrap();
            std::os::unix::fs::symlink(&new, d.join("..data_tmp")).unwrap();
            std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
            std::fs::remove_dir_all(d.join(old)).unwrap();
            assert!(next_change(&mut rx).await, "swap {version} is a change");
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                format!("policies: []\n# version {version}\n")
            );
            watch.rearm();
            // Whatever else this swap set off, so the next swap's change is its own.
            while change_within(&mut rx, Duration::from_millis(300)).await {}
        }
    }
}
