//! `type: file` — a file on the gateway host (a mounted Kubernetes Secret, a Docker
//! secret). Re-read when it changes: its inode, size or mtime is checked at most once a
//! second, so a rotated mount is picked up without waiting for the TTL.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Fetched;
use crate::secrets::{SecretValue, SourceError};
use crate::vocab::FieldError;

const STAT_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    size: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

pub struct FileSource {
    path: PathBuf,
    /// When the file was last checked, and what it looked like when last read.
    seen: Mutex<(Option<Instant>, Option<Stamp>)>,
}

impl FileSource {
    pub fn new(path: &Path) -> Result<FileSource, Vec<FieldError>> {
        if !path.is_absolute() {
            return Err(vec![FieldError::new(
                "path",
                format!("{} is relative; write an absolute path", path.display()),
            )]);
        }
        Ok(FileSource {
            path: path.to_path_buf(),
            seen: Mutex::new((None, None)),
        })
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let before = stamp(&self.path);
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| SourceError::new(format!("cannot read: {}", e.kind())))?;
        if let Ok(mut seen) = self.seen.lock() {
            *seen = (Some(Instant::now()), before);
        }
        // A trailing newline is how files end, not part of the credential.
        Ok(Fetched::value(SecretValue::new(
            text.trim_end_matches(['\n', '\r']).to_owned(),
        )))
    }

    /// Whether the file exists and looks different from when it was last read (checked at
    /// most once per second).
    pub fn changed(&self) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return true;
        };
        let (checked, last) = *seen;
        if checked.is_some_and(|at| at.elapsed() < STAT_INTERVAL) {
            return false;
        }
        let now = stamp(&self.path);
        seen.0 = Some(Instant::now());
        // A missing file is an outage, not a new value: the cached one serves until its TTL.
        now.is_some() && last.is_some() && now != last
    }
}
