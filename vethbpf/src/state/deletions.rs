//! Deletions in progress. Most of an `endpoint del` is the kernel deleting the veth
//! (10-30 ms, mostly RCU waits), and holding the state lock through it made
//! concurrent dels run one after the other. So a del journals itself in a file of
//! its own, `del-<id>.json`, holds an `flock` on that file for as long as it runs,
//! and releases the state lock while the veth goes (see `Locked::unlocked`).
//!
//! Whoever holds the state lock can tell a live deletion (its file is locked) from
//! one whose command died (the kernel released its lock): a dead one is finished by
//! the next command, a live one is left to its owner. Commands other than `endpoint
//! add`/`del` wait until no deletion is live, so they see every endpoint either
//! there or gone (`StateDir::lock`).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{EndpointRecord, Locked, StateError};

const PREFIX: &str = "del-";
const SUFFIX: &str = ".json";

/// The running del's claim on its journal file: the file's lock is held until this
/// is ended (or the process dies).
#[derive(Debug)]
pub(crate) struct Deletion {
    lock: Flock<File>,
    path: PathBuf,
}

/// A deletion journal found in the state directory.
#[derive(Debug)]
pub(crate) enum Found {
    /// Its command is running: the file is what to wait on.
    Live { name: String, file: File },
    /// Its command died: the record it was deleting, and the file's lock, now ours.
    Dead(Box<DeadDeletion>),
}

/// The journal of a del whose command died; settling it finishes the del.
#[derive(Debug)]
pub(crate) struct DeadDeletion {
    pub(crate) rec: EndpointRecord,
    claim: Deletion,
}

impl Locked {
    /// Journals the deletion of `rec` and claims it, before its first kernel change.
    /// The file is locked before it is renamed into place, so nobody ever sees it
    /// unclaimed while its command lives.
    pub(crate) fn begin_deletion(&self, rec: &EndpointRecord) -> Result<Deletion, StateError> {
        let path = self
            .path
            .with_file_name(format!("{PREFIX}{}{SUFFIX}", rec.id));
        let tmp = path.with_extension("json.tmp");
        let werr = |source| StateError::Write {
            path: tmp.clone(),
            source,
        };
        let text = serde_json::to_vec(rec).map_err(|e| werr(e.into()))?;
        let file = File::create(&tmp).map_err(werr)?;
        let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| werr(io::Error::from(errno)))?;
        lock.write_all(&text).map_err(werr)?;
        fs::rename(&tmp, &path).map_err(|source| StateError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(Deletion { lock, path })
    }

    /// Ends a deletion (done, undone, or settled): its journal file goes, then its
    /// lock. Under the state lock, so nobody opens the file in between.
    pub(crate) fn end_deletion(&self, deletion: Deletion) -> Result<(), StateError> {
        let Deletion { lock, path } = deletion;
        let removed = match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StateError::Write { path, source: e })
            }
            _ => Ok(()),
        };
        drop(lock);
        removed
    }

    /// Ends a dead deletion once it is settled.
    pub(crate) fn end_dead_deletion(&self, dead: Box<DeadDeletion>) -> Result<(), StateError> {
        self.end_deletion(dead.claim)
    }

    /// Every deletion journal in the state directory, live or dead.
    pub(crate) fn deletions(&self) -> Result<Vec<Found>, StateError> {
        deletions_in(self.dir())
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }
}

/// Every deletion journal in `dir` (see [`Locked::deletions`]); only meaningful
/// under the state lock.
pub(super) fn deletions_in(dir: &Path) -> Result<Vec<Found>, StateError> {
    let rerr = |source| StateError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(rerr(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(rerr)?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        if !(name.starts_with(PREFIX) && name.ends_with(SUFFIX)) {
            continue;
        }
        if let Some(f) = inspect(&entry.path())? {
            found.push(f);
        }
    }
    Ok(found)
}

/// A deletion journal at `path`: live if its lock is taken, dead (and now claimed)
/// if not; `None` if it went away meanwhile.
fn inspect(path: &Path) -> Result<Option<Found>, StateError> {
    let rerr = |source| StateError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(rerr(e)),
    };
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(rerr)?;
    let rec: EndpointRecord =
        serde_json::from_slice(&text).map_err(|source| StateError::CorruptIntent {
            path: path.to_path_buf(),
            source,
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(Found::Dead(Box::new(DeadDeletion {
            rec,
            claim: Deletion {
                lock,
                path: path.to_path_buf(),
            },
        })))),
        Err((file, Errno::EWOULDBLOCK)) => Ok(Some(Found::Live {
            name: rec.name,
            file,
        })),
        Err((_, errno)) => Err(StateError::Lock {
            path: path.to_path_buf(),
            source: io::Error::from(errno),
        }),
    }
}

/// The journal files of deletions, for `down`'s clean-up of the directory.
pub(super) fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(PREFIX) && n.contains(SUFFIX))
        })
        .map(|e| e.path())
        .collect()
}
