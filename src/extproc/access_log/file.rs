//! Envoy's file access log, followed: the same entries as the gRPC access log service, as
//! JSON lines Envoy appends to a file beside Portcullis's socket (`envoy/forward-proxy.yaml`).
//! For Envoy, formatting a line into its file buffer costs about half what building and
//! sending a gRPC entry does, and nothing is dropped while Portcullis is away: the lines
//! wait in the file and are read when it starts again.
//!
//! Portcullis reads what Envoy appended, writes the records, and gives back the disk the
//! read part used by punching a hole over it (`fallocate(PUNCH_HOLE)`): the file stays
//! sparse and small, and a restart resumes at the first byte that is not a hole, so a line
//! is recorded once (twice only if Portcullis stops between writing its records and
//! punching, at most one read's worth). An operator's rotation (rename the file, then
//! Envoy's `POST /reopen_logs`) is followed: the old file is read to its end, then the new
//! one from its start.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use super::{Outcome, Recorder, milliseconds, parse_flag_names};
use crate::live::Shared;

/// The file's name beside a Unix `grpc_listen` socket, when `server.envoy_access_log`
/// names none.
pub const DEFAULT_NAME: &str = "access.jsonl";

/// How often the file is looked at when Envoy has written nothing new. Envoy writes its
/// buffer every `--file-flush-interval-msec` (1 s in the shipped launchers), or at 64 KiB.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// The most read in one pass; the records of a pass are written before the next read.
const READ_CHUNK: usize = 1 << 20;

/// A line longer than this is not one Envoy's format writes: it is skipped to its end.
const MAX_LINE: usize = 64 * 1024;

/// One line as the shipped Envoy configs format it (`json_format`; absent values are null).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Line<'a> {
    #[serde(borrow)]
    route: Option<Cow<'a, str>>,
    #[serde(borrow)]
    rid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    scheme: Option<Cow<'a, str>>,
    #[serde(borrow)]
    authority: Option<Cow<'a, str>>,
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    upstream: Option<Cow<'a, str>>,
    status: Option<u32>,
    #[serde(borrow)]
    flags: Option<Cow<'a, str>>,
    #[serde(borrow)]
    details: Option<Cow<'a, str>>,
    #[serde(borrow)]
    failure: Option<Cow<'a, str>>,
    duration_us: Option<f64>,
    rx: Option<u64>,
    tx: Option<u64>,
}

impl<'a> Line<'a> {
    fn outcome(&'a self) -> Outcome<'a> {
        let text = |v: &'a Option<Cow<'a, str>>| v.as_deref().unwrap_or_default();
        let address = |v: &Option<Cow<'_, str>>| v.as_deref().and_then(|a| a.parse().ok());
        Outcome {
            route: text(&self.route),
            request_id: text(&self.rid),
            decided_id: text(&self.pid),
            method: text(&self.method),
            scheme: text(&self.scheme),
            authority: text(&self.authority),
            path: text(&self.path),
            source: address(&self.source),
            upstream: address(&self.upstream),
            // Envoy prints 0 when no response was sent.
            status: self.status.filter(|s| *s != 0),
            flags: parse_flag_names(text(&self.flags)),
            details: text(&self.details),
            failure: text(&self.failure),
            duration_ms: self.duration_us.map(milliseconds),
            request_body_bytes: self.rx.unwrap_or(0),
            response_body_bytes: self.tx.unwrap_or(0),
        }
    }
}

/// The file as Portcullis follows it.
pub struct Tail {
    path: PathBuf,
    file: File,
    inode: u64,
    /// The next byte to read: everything before it has been recorded.
    offset: u64,
    /// Everything before this is a hole.
    released: u64,
    /// Whether punching holes works here (not on every filesystem).
    can_release: bool,
}

impl Tail {
    /// Opens `path` (creating it, owner-only, when missing), at the first byte not yet
    /// read: past the holes a previous run punched.
    pub fn open(path: &Path) -> io::Result<Tail> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let inode = file.metadata()?.ino();
        let mut tail = Tail {
            path: path.to_path_buf(),
            file,
            inode,
            offset: 0,
            released: 0,
            can_release: true,
        };
        tail.offset = tail.first_unread()?;
        tail.released = tail.offset;
        Ok(tail)
    }

    /// The first byte of data (`SEEK_DATA`), past the zeros a punched partial block keeps
    /// (Envoy's lines hold no NUL byte: its JSON escapes control characters).
    fn first_unread(&self) -> io::Result<u64> {
        let size = self.file.metadata()?.len();
        // SAFETY: lseek on a file descriptor this struct owns; no memory is passed.
        let data = unsafe { libc::lseek(self.file.as_raw_fd(), 0, libc::SEEK_DATA) };
        let mut at = if data < 0 {
            // ENXIO: nothing but holes up to the end.
            size
        } else {
            u64::try_from(data).unwrap_or(0)
        };
        let mut buf = [0u8; 4096];
        while at < size {
            let n = self.file.read_at(&mut buf, at)?;
            if n == 0 {
                break;
            }
            match buf[..n].iter().position(|b| *b != 0) {
                Some(i) => return Ok(at + i as u64),
                None => at += n as u64,
            }
        }
        Ok(at)
    }

    /// Up to [`READ_CHUNK`] bytes of whole lines from the offset on (advanced past them);
    /// a line Envoy has not finished stays for the next read.
    fn read_lines(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        let size = self.file.metadata()?.len();
        if size < self.offset {
            // Truncated under us (a copy-and-truncate rotation): start over.
            tracing::warn!(path = %self.path.display(), "Envoy's access log was truncated; reading it from its start");
            self.offset = 0;
            self.released = 0;
        }
        let want = usize::try_from(size - self.offset)
            .unwrap_or(usize::MAX)
            .min(READ_CHUNK);
        if want == 0 {
            return Ok(());
        }
        buf.resize(want, 0);
        let mut filled = 0;
        while filled < want {
            let n = self
                .file
                .read_at(&mut buf[filled..], self.offset + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        match buf.iter().rposition(|b| *b == b'\n') {
            Some(end) => buf.truncate(end + 1),
            None if buf.len() >= MAX_LINE => {
                // No line is this long: skip it rather than wait for its end forever.
                tracing::error!(path = %self.path.display(), offset = self.offset,
                    "a line in Envoy's access log is longer than {MAX_LINE} bytes; skipped");
                let skipped = buf.len();
                buf.clear();
                self.offset += skipped as u64;
                return Ok(());
            }
            None => buf.clear(),
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Gives back the disk the lines read so far used.
    fn release(&mut self) {
        if !self.can_release || self.offset <= self.released {
            return;
        }
        let Ok(len) = libc::off_t::try_from(self.offset) else {
            return;
        };
        // SAFETY: fallocate on a file descriptor this struct owns, opened for writing;
        // punching a hole never moves the file's end, so Envoy's appends are untouched.
        let punched = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                len,
            )
        };
        if punched == 0 {
            self.released = self.offset;
        } else {
            self.can_release = false;
            tracing::warn!(path = %self.path.display(), error = %io::Error::last_os_error(),
                "cannot punch holes in Envoy's access log on this filesystem: it keeps \
                 growing; rotate it (rename it, then Envoy's POST /reopen_logs)");
        }
    }

    /// Whether the path now names another file (a rotation) that Envoy has written to.
    fn rotated(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(meta) => meta.ino() != self.inode && meta.len() > 0,
            Err(_) => false,
        }
    }
}

/// Follows Envoy's access log (opened with [`Tail::open`]) into the audit trail until
/// `shutdown`.
pub async fn follow(shared: Arc<Shared>, mut tail: Tail, mut shutdown: watch::Receiver<bool>) {
    let path = tail.path.clone();
    tracing::info!(path = %path.display(), offset = tail.offset, "following Envoy's access log");
    let mut buf = Vec::new();
    let mut bad_lines: u64 = 0;
    loop {
        let stopping = *shutdown.borrow();
        let read = record_next(&shared, &mut tail, &mut buf, &mut bad_lines).await;
        tail.release();
        if read {
            continue;
        }
        if stopping {
            return;
        }
        if tail.rotated() {
            // Envoy writes the new file only once it let go of the old one: what the old
            // one holds now is all it will hold.
            while record_next(&shared, &mut tail, &mut buf, &mut bad_lines).await {}
            match Tail::open(&path) {
                Ok(next) => {
                    tracing::info!(path = %path.display(), "Envoy's access log was rotated; following the new file");
                    tail = next;
                    continue;
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open the rotated access log");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Reads what Envoy appended since the last read (up to [`READ_CHUNK`]) and records it;
/// whether there was anything. A failed read records nothing and leaves the offset, to be
/// read again.
async fn record_next(
    shared: &Shared,
    tail: &mut Tail,
    buf: &mut Vec<u8>,
    bad_lines: &mut u64,
) -> bool {
    if let Err(e) = tail.read_lines(buf) {
        // Part of the buffer may be filled: none of it is recorded.
        buf.clear();
        tracing::error!(path = %tail.path.display(), error = %e, "cannot read Envoy's access log");
        return false;
    }
    if buf.is_empty() {
        return false;
    }
    record_lines(shared, buf, bad_lines).await;
    true
}

/// The records of whole lines; a line that does not parse is logged (by its position
/// only: it is untrusted text) and skipped.
async fn record_lines(shared: &Shared, lines: &[u8], bad_lines: &mut u64) {
    let mut recorder = Recorder::new(shared);
    for line in lines.split(|b| *b == b'\n') {
        let line = line.trim_ascii();
        let line = &line[line.iter().take_while(|b| **b == 0).count()..];
        if line.is_empty() {
            continue;
        }
        // A path may hold bytes that are not UTF-8, which Envoy writes as they came: read
        // them as U+FFFD rather than lose the request's record.
        let lossy;
        let parsed = match serde_json::from_slice::<Line<'_>>(line) {
            Ok(parsed) => Ok(parsed),
            Err(e) if std::str::from_utf8(line).is_err() => {
                lossy = String::from_utf8_lossy(line);
                serde_json::from_str::<Line<'_>>(&lossy).map_err(|_| e)
            }
            Err(e) => Err(e),
        };
        match parsed {
            Ok(parsed) => recorder.record(&parsed.outcome()).await,
            Err(e) => {
                *bad_lines += 1;
                if bad_lines.is_power_of_two() {
                    tracing::error!(error = %e, bad_lines = *bad_lines,
                        "a line of Envoy's access log is not in the shipped format; skipped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const FAST: &str = r#"{"authority":"localhost:50167","details":"via_upstream","duration_us":729,"failure":null,"flags":"-","method":"GET","path":"/bench?x=1","pid":null,"rid":"183b","route":"fast|allow|0777fee743ac|1|-|listener:forward-proxy|bench-upstream","rx":0,"scheme":"http","source":"127.0.0.1:60136","status":200,"tx":3,"upstream":"127.0.0.1:50167"}"#;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_shipped_line_reads_as_the_grpc_entry_would() {
        let line: Line<'_> = serde_json::from_str(FAST).unwrap();
        let outcome = line.outcome();
        assert_eq!(outcome.request_id, "183b");
        assert_eq!(outcome.decided_id, "");
        assert_eq!(outcome.path, "/bench?x=1");
        assert_eq!(outcome.status, Some(200));
        assert!(outcome.flags.is_empty());
        assert_eq!(outcome.duration_ms, Some(0.729));
        assert_eq!(outcome.upstream, Some("127.0.0.1:50167".parse().unwrap()));
        assert_eq!(outcome.source, Some("127.0.0.1:60136".parse().unwrap()));
        let failed: Line<'_> = serde_json::from_str(
            r#"{"pid":"p-1","status":503,"flags":"UF,URX,XX","details":"upstream_reset_before_response_started{connection_failure}","failure":"delayed connect error: 111","upstream":null,"route":"portcullis"}"#,
        )
        .unwrap();
        let outcome = failed.outcome();
        assert_eq!(outcome.flags, vec!["UF", "URX"]);
        let record = super::super::upstream_record(&outcome).expect("recorded");
        assert_eq!(record.request_id, "p-1");
        assert_eq!(record.upstream_failure, "delayed connect error: 111");
    }

    #[test]
    fn a_line_with_bytes_that_are_not_utf8_still_reads() {
        let mut line = br#"{"rid":"r-1","path":"/pkg/"#.to_vec();
        line.push(0xff);
        line.extend_from_slice(br#"x"}"#);
        assert!(serde_json::from_slice::<Line<'_>>(&line).is_err());
        let lossy = String::from_utf8_lossy(&line);
        let parsed: Line<'_> = serde_json::from_str(&lossy).unwrap();
        assert_eq!(parsed.outcome().path, "/pkg/\u{fffd}x");
    }

    #[test]
    fn whole_lines_are_read_once_and_the_read_part_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_NAME);
        let mut tail = Tail::open(&path).unwrap();
        let mut buf = Vec::new();
        tail.read_lines(&mut buf).unwrap();
        assert!(buf.is_empty());
        // A line Envoy has not finished writing waits for its end.
        append(&path, &format!("{FAST}\n{{\"rid\":\"half"));
        tail.read_lines(&mut buf).unwrap();
        assert_eq!(buf, format!("{FAST}\n").as_bytes());
        append(&path, "\"}\n");
        tail.read_lines(&mut buf).unwrap();
        assert_eq!(buf, b"{\"rid\":\"half\"}\n");
        tail.read_lines(&mut buf).unwrap();
        assert!(buf.is_empty());
        tail.release();
        assert_eq!(tail.released, tail.offset);
        // A restart resumes after what was read: nothing is recorded twice.
        append(&path, "{\"rid\":\"after\"}\n");
        let mut again = Tail::open(&path).unwrap();
        assert_eq!(again.offset, tail.offset);
        again.read_lines(&mut buf).unwrap();
        assert_eq!(buf, b"{\"rid\":\"after\"}\n");
    }

    #[test]
    fn a_restart_reads_what_was_written_while_portcullis_was_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_NAME);
        drop(Tail::open(&path).unwrap());
        append(&path, "{\"rid\":\"1\"}\n{\"rid\":\"2\"}\n");
        let mut tail = Tail::open(&path).unwrap();
        let mut buf = Vec::new();
        tail.read_lines(&mut buf).unwrap();
        assert_eq!(buf, b"{\"rid\":\"1\"}\n{\"rid\":\"2\"}\n");
    }

    #[test]
    fn a_rotation_and_a_truncation_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_NAME);
        let mut tail = Tail::open(&path).unwrap();
        let mut buf = Vec::new();
        append(&path, "{\"rid\":\"old\"}\n");
        std::fs::rename(&path, dir.path().join("access.jsonl.1")).unwrap();
        assert!(!tail.rotated(), "no new file yet");
        std::fs::write(&path, "{\"rid\":\"new\"}\n").unwrap();
        assert!(tail.rotated());
        // The old file is still read to its end first.
        tail.read_lines(&mut buf).unwrap();
        assert_eq!(buf, b"{\"rid\":\"old\"}\n");
        let mut next = Tail::open(&path).unwrap();
        next.read_lines(&mut buf).unwrap();
        assert_eq!(buf, b"{\"rid\":\"new\"}\n");
        // Truncated below the offset: read from the start again.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&path, "{\"rid\":\"t\"}\n");
        next.read_lines(&mut buf).unwrap();
        assert_eq!(buf, b"{\"rid\":\"t\"}\n");
    }

    #[test]
    fn an_overlong_line_is_skipped_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_NAME);
        let mut tail = Tail::open(&path).unwrap();
        append(&path, &"x".repeat(MAX_LINE + 10));
        let mut buf = Vec::new();
        tail.read_lines(&mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(tail.offset, (MAX_LINE + 10) as u64);
    }
}
