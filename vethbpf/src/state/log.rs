//! The endpoint log, `state.log`: what makes an endpoint change's commit cost the
//! same at 1000 endpoints as at 1.
//!
//! The state file (`state.json`, the snapshot) holds the node and every endpoint
//! as of a sequence number; each endpoint added or deleted since is one line here,
//! `{"seq":N,"put":{record}}` or `{"seq":N,"del":"name"}`, appended and made
//! durable with one `fdatasync`: the commit point of `endpoint add` and `del`.
//! Reading the state is reading the snapshot and then the lines after its
//! sequence number. When the log has as many lines as the snapshot has endpoints
//! (at least [`COMPACT_AT`]), the next commit writes a new snapshot instead and
//! empties the log: a commit's cost stays bounded, and so does a read's.
//!
//! A line is appended with one `write`: a killed process leaves it whole or
//! absent. A line without its newline can only come from a machine that went down
//! in the middle of a write, before the `fdatasync` the commit waits for: it was
//! never committed, so it is ignored, and cut off before the next append. A whole
//! line that is not a record is corruption, reported like a corrupt state file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{EndpointRecord, State, StateError};

/// The log's name in the state directory.
pub const LOG_FILE: &str = "state.log";

/// The log is folded into a new snapshot once it has this many lines, or as many
/// as the snapshot has endpoints if that is more.
pub(crate) const COMPACT_AT: usize = 64;

/// One line of the log: `{"seq":N,"put":{record}}` or `{"seq":N,"del":"name"}`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "LineFields")]
struct Line {
    seq: u64,
    change: LogEntry,
}

/// A line's fields as they are read: plain optional fields, not the
/// `#[serde(flatten)]` that `LineRef` writes with, which took the first of a `put`
/// and a `del` in one line and ignored the other (a corrupt line read as a good
/// one). Exactly one of them, or the state is corrupt.
#[derive(Deserialize)]
struct LineFields {
    seq: u64,
    #[serde(default)]
    put: Option<Box<EndpointRecord>>,
    #[serde(default)]
    del: Option<String>,
}

impl TryFrom<LineFields> for Line {
    type Error = &'static str;

    fn try_from(f: LineFields) -> Result<Line, Self::Error> {
        let change = match (f.put, f.del) {
            (Some(rec), None) => LogEntry::Put(rec),
            (None, Some(name)) => LogEntry::Del(name),
            _ => return Err("a log line records one put or one del"),
        };
        Ok(Line { seq: f.seq, change })
    }
}

/// What one line records.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogEntry {
    /// The endpoint was added (or its record replaced).
    Put(Box<EndpointRecord>),
    /// The endpoint was deleted.
    Del(String),
}

impl LogEntry {
    pub(crate) fn apply(self, state: &mut State) {
        match self {
            LogEntry::Put(rec) => {
                state.endpoints.insert(rec.name.clone(), *rec);
            }
            LogEntry::Del(name) => {
                state.endpoints.remove(&name);
            }
        }
    }
}

/// Where the log stands after reading it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LogPos {
    /// The sequence number of the last change applied (the snapshot's if none).
    pub(crate) seq: u64,
    /// Whole lines in the file, applied or older than the snapshot.
    pub(crate) lines: usize,
    /// Bytes up to the end of the last whole line: where the next one goes.
    pub(crate) len: u64,
    /// The file ends in a cut-off line (cut off at `len` before appending).
    pub(crate) torn: bool,
}

/// Applies the lines of the log at `path` that come after the snapshot's
/// sequence number `seq` to `state`.
pub(crate) fn replay(path: &Path, state: &mut State, seq: u64) -> Result<LogPos, StateError> {
    let mut pos = LogPos {
        seq,
        ..LogPos::default()
    };
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(pos),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut start = 0;
    while let Some(end) = text[start..].iter().position(|b| *b == b'\n') {
        let line: Line = serde_json::from_slice(&text[start..start + end]).map_err(|source| {
            StateError::Corrupt {
                path: path.to_path_buf(),
                source,
            }
        })?;
        // Older lines: a snapshot written since (a crash before the log was
        // emptied after it) has them already.
        if line.seq > pos.seq {
            pos.seq = line.seq;
            line.change.apply(state);
        }
        pos.lines += 1;
        start += end + 1;
    }
    pos.len = start as u64;
    pos.torn = start < text.len();
    if pos.torn {
        tracing::warn!(
            path = %path.display(),
            bytes = text.len() - start,
            "ignoring a cut-off last line of the log (never committed)"
        );
    }
    Ok(pos)
}

/// Appends `change` as line `pos.seq + 1` and waits until it is on disk. On
/// success `pos` is where the log now ends. On failure nothing was committed: a
/// line that was written but not made durable is cut off again.
pub(crate) fn append(path: &Path, pos: &mut LogPos, change: &LogEntry) -> Result<(), StateError> {
    let seq = pos.seq + 1;
    let werr = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut text = serde_json::to_vec(&LineRef { seq, change }).map_err(|e| werr(e.into()))?;
    text.push(b'\n');
    let created = !path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(werr)?;
    if pos.torn || file.metadata().map_err(werr)?.len() != pos.len {
        file.set_len(pos.len).map_err(werr)?;
        pos.torn = false;
    }
    let written = file.write_all(&text).and_then(|()| file.sync_data());
    if let Err(e) = written {
        // Not durable, so not committed: no reader may take it for a commit.
        if let Err(undo) = file.set_len(pos.len) {
            tracing::warn!(path = %path.display(), error = %undo, "cannot cut off an uncommitted log line");
        }
        return Err(werr(e));
    }
    if created {
        // The new file's directory entry must be durable too, once.
        sync_dir(path);
    }
    pos.seq = seq;
    pos.lines += 1;
    pos.len += text.len() as u64;
    Ok(())
}

/// `Line` for serializing without taking the change.
#[derive(Serialize)]
struct LineRef<'a> {
    seq: u64,
    #[serde(flatten)]
    change: &'a LogEntry,
}

/// fsync of the directory holding `path` (a rename or a new file in it).
pub(crate) fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
        && let Err(e) = d.sync_all()
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync the state directory");
    }
}

/// Whether the log is long enough to fold into a new snapshot.
pub(crate) fn compaction_due(pos: &LogPos, endpoints: usize) -> bool {
    pos.lines + 1 >= COMPACT_AT.max(endpoints)
}
