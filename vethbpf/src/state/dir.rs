//! The state directory itself: the lock that serialises commands, reading the
//! state (the snapshot in the state file, then the endpoint log, see `log.rs`),
//! committing an endpoint change, and writing a new snapshot atomically.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::cluster::NODE_INTENT_FILE;
use super::deletions::{self, Found};
use super::log::{self, LOG_FILE, LogEntry, LogPos};
use super::records::{OLDEST_STATE_VERSION, STATE_VERSION};
use super::{ClusterState, EndpointRecord, NodeConfig, State, StateError};

/// The state file's name in the state directory.
pub const STATE_FILE: &str = "state.json";
pub(crate) const LOCK_FILE: &str = "lock";

/// A state directory (default /var/lib/vethbpf).
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// The state, read under an exclusive lock that lasts as long as this value.
pub struct Locked {
    /// `None` only while [`Locked::unlocked`] runs its closure.
    lock: Option<Flock<File>>,
    /// How long taking the lock again may wait (see [`StateDir::lock_timeout`]).
    timeout: Option<Duration>,
    pub(super) path: PathBuf,
    pub state: State,
    /// Where the endpoint log stands.
    pos: LogPos,
    /// Endpoints in the snapshot: the log is folded into a new one when it has
    /// as many lines.
    snapshot_endpoints: usize,
    /// The format of the snapshot on disk: an older one is rewritten at the first
    /// commit, so that older vethbpf versions refuse the directory rather than
    /// miss the log they do not know.
    snapshot_version: u32,
}

/// The state file as written: the state as of the log's sequence number `seq`.
#[derive(Serialize)]
struct SnapshotOut<'a> {
    version: u32,
    seq: u64,
    node: &'a Option<NodeConfig>,
    endpoints: &'a BTreeMap<String, EndpointRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: &'a Option<ClusterState>,
}

/// The state file as read (version 1 has no `seq`: it had no log).
#[derive(Deserialize)]
struct SnapshotIn {
    version: u32,
    #[serde(default)]
    seq: u64,
    node: Option<NodeConfig>,
    endpoints: BTreeMap<String, EndpointRecord>,
    #[serde(default)]
    cluster: Option<ClusterState>,
}

impl StateDir {
    /// The state directory at `dir` (nothing is created until it is locked).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateDir { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Takes the exclusive lock (waiting for other vethbpf commands, deletions in
    /// progress included) and reads the state; a missing file is an empty state.
    pub fn lock(&self) -> Result<Locked, StateError> {
        self.lock_quiet(None)
    }

    /// Like [`StateDir::lock`], but gives up with [`StateError::Busy`] when the
    /// lock is still held by someone else after `timeout` (CNI calls answer "try
    /// again later" rather than hang a runtime).
    pub(crate) fn lock_timeout(&self, timeout: Duration) -> Result<Locked, StateError> {
        self.lock_quiet(Some(timeout))
    }

    /// The lock for `endpoint add` and `del`: like [`StateDir::lock_timeout`]
    /// (`None`: no limit), but without waiting for the deletions in progress of
    /// other endpoints (see `deletions.rs`), whose records stay in the state until
    /// they are done, so no name, address or index of theirs is given out again.
    pub fn lock_for_endpoint_change(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Locked, StateError> {
        self.lock_within(timeout)
    }

    /// Reads the state without the lock (to tell a corrupt state from a good one,
    /// and for tests).
    pub fn read(&self) -> Result<State, StateError> {
        read_state(&self.dir.join(STATE_FILE)).map(|(state, _, _)| state)
    }

    /// Takes the lock without reading the state (which may be corrupt): for
    /// `reconcile --from-kernel`, which writes a new one. The files of the state it
    /// replaces must be set aside first ([`Locked::set_aside`]).
    pub fn lock_to_rebuild(&self) -> Result<Locked, StateError> {
        let (lock, path) = self.take_lock(None)?;
        Ok(Locked {
            lock: Some(lock),
            timeout: None,
            path,
            state: State::default(),
            pos: LogPos::default(),
            snapshot_endpoints: 0,
            snapshot_version: STATE_VERSION,
        })
    }

    /// The lock, once no deletion is in progress: a live one is waited for with
    /// the lock released (it needs the lock to finish).
    fn lock_quiet(&self, timeout: Option<Duration>) -> Result<Locked, StateError> {
        let start = Instant::now();
        loop {
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            let locked = self.lock_within(left)?;
            let live = locked.deletions()?.into_iter().find_map(|f| match f {
                Found::Live { file, .. } => Some(file),
                Found::Dead(_) => None,
            });
            let Some(file) = live else {
                return Ok(locked);
            };
            drop(locked);
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            wait_for(file, left).map_err(|source| StateError::Lock {
                path: self.dir.join(LOCK_FILE),
                source,
            })?;
            if timeout.is_some_and(|t| start.elapsed() >= t) {
                return Err(StateError::Busy {
                    path: self.dir.join(LOCK_FILE),
                    secs: timeout.map_or(0, |t| t.as_secs()),
                });
            }
        }
    }

    fn lock_within(&self, timeout: Option<Duration>) -> Result<Locked, StateError> {
        let (lock, path) = self.take_lock(timeout)?;
        let (state, pos, snapshot) = read_state(&path)?;
        Ok(Locked {
            lock: Some(lock),
            timeout,
            path,
            state,
            pos,
            snapshot_endpoints: snapshot.endpoints,
            snapshot_version: snapshot.version,
        })
    }

    fn take_lock(&self, timeout: Option<Duration>) -> Result<(Flock<File>, PathBuf), StateError> {
        let start = Instant::now();
        let lock_path = self.dir.join(LOCK_FILE);
        let lock_err = |source| StateError::Lock {
            path: lock_path.clone(),
            source,
        };
        loop {
            match fs::create_dir_all(&self.dir) {
                Ok(()) => {}
                // mkdir found the directory, and `down` removed it before
                // create_dir_all looked again: make it again. (Something that is
                // there and no directory is an error.)
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !self.dir.exists() => {
                    continue;
                }
                Err(source) => {
                    return Err(StateError::CreateDir {
                        path: self.dir.clone(),
                        source,
                    });
                }
            }
            let file = match OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
            {
                Ok(f) => f,
                // `down` removed the directory between the two calls: make it again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(lock_err(e)),
            };
            let lock = match timeout {
                None => Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, errno)| lock_err(io::Error::from(errno)))?,
                Some(timeout) => match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                    Ok(lock) => lock,
                    Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                        let left = timeout.saturating_sub(start.elapsed());
                        match wait_for_lock(file, left) {
                            Some(Ok(lock)) => lock,
                            Some(Err(errno)) => return Err(lock_err(io::Error::from(errno))),
                            None => {
                                return Err(StateError::Busy {
                                    path: lock_path.clone(),
                                    secs: timeout.as_secs(),
                                });
                            }
                        }
                    }
                    Err((_, errno)) => return Err(lock_err(io::Error::from(errno))),
                },
            };
            // `down` deletes the lock file while holding it. Whoever was waiting
            // then holds a lock on a deleted file while a newcomer locks a new
            // one: only a lock on the file that is at the path now counts.
            if same_file(&lock, &lock_path) {
                return Ok((lock, self.dir.join(STATE_FILE)));
            }
        }
    }

    /// Removes the state file, the lock file and the directory if it is then empty
    /// (used by `down`, while the caller still holds the lock).
    pub fn remove(&self, locked: Locked) -> Result<(), StateError> {
        let rm = |p: &Path| match fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StateError::Write {
                path: p.to_path_buf(),
                source: e,
            }),
            _ => Ok(()),
        };
        rm(&locked.path)?;
        rm(&locked.log_path())?;
        rm(&locked.intent_path())?;
        rm(&locked.path.with_file_name(NODE_INTENT_FILE))?;
        // Temp files of a write that a kill interrupted.
        rm(&locked.path.with_extension("json.tmp"))?;
        rm(&locked.intent_path().with_extension("json.tmp"))?;
        for file in deletions::journal_files(&self.dir) {
            rm(&file)?;
        }
        rm(&self.dir.join(LOCK_FILE))?;
        drop(locked);
        // Not empty (a user's own files) is fine: leave it.
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }
}

/// A blocking `flock` on `file` that gives up after `timeout` (`None`): the kernel
/// hands the lock over the moment it is released, where polling would add up to a
/// poll interval to every wait. The wait runs on a thread of its own, made only
/// when the lock is taken; one that gives up leaves it blocked, and whenever it
/// gets the lock, nobody receives it and it is released at once.
fn wait_for_lock(file: File, timeout: Duration) -> Option<Result<Flock<File>, nix::errno::Errno>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let waiter = std::thread::Builder::new()
        .name("vethbpf-lock".into())
        .spawn(move || {
            let _ = tx.send(Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e));
        });
    if let Err(e) = waiter {
        return Some(Err(nix::errno::Errno::from_raw(
            e.raw_os_error().unwrap_or(libc::EAGAIN),
        )));
    }
    rx.recv_timeout(timeout).ok()
}

/// Waits until `file`'s lock is free (a deletion in progress ended), at most
/// `timeout`; the lock is let go at once.
fn wait_for(file: File, timeout: Option<Duration>) -> io::Result<()> {
    match timeout {
        None => Flock::lock(file, FlockArg::LockExclusive)
            .map(drop)
            .map_err(|(_, errno)| io::Error::from(errno)),
        Some(t) => match wait_for_lock(file, t) {
            Some(Err(errno)) => Err(io::Error::from(errno)),
            Some(Ok(_)) | None => Ok(()),
        },
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Identifies what the state files hold: a commit appends to the log (its size
/// changes) or writes a new snapshot (a new file by rename, and the log removed).
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    snapshot: (u64, u64, u64, i64, i64),
    log: Option<(u64, u64)>,
}

impl Fingerprint {
    /// `None` when the snapshot cannot be looked at (then the state is read).
    fn of(state_file: &Path) -> Option<Fingerprint> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(state_file).ok()?;
        let log = fs::metadata(state_file.with_file_name(LOG_FILE))
            .ok()
            .map(|l| (l.ino(), l.size()));
        Some(Fingerprint {
            snapshot: (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()),
            log,
        })
    }
}

/// What is known of the snapshot a state was read from.
struct SnapshotInfo {
    version: u32,
    endpoints: usize,
}

/// The state: the snapshot in the state file at `path` (none: the empty state),
/// then the log next to it. Also where the log stands, and the snapshot's format
/// and size.
fn read_state(path: &Path) -> Result<(State, LogPos, SnapshotInfo), StateError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let info = SnapshotInfo {
                version: STATE_VERSION,
                endpoints: 0,
            };
            return Ok((State::default(), LogPos::default(), info));
        }
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let snap: SnapshotIn = serde_json::from_slice(&text).map_err(|source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    if !(OLDEST_STATE_VERSION..=STATE_VERSION).contains(&snap.version) {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: snap.version,
        });
    }
    let info = SnapshotInfo {
        version: snap.version,
        endpoints: snap.endpoints.len(),
    };
    let mut state = State {
        version: STATE_VERSION,
        node: snap.node,
        endpoints: snap.endpoints,
        cluster: snap.cluster,
    };
    let pos = log::replay(&path.with_file_name(LOG_FILE), &mut state, snap.seq)?;
    Ok((state, pos, info))
}

impl Locked {
    fn log_path(&self) -> PathBuf {
        self.path.with_file_name(LOG_FILE)
    }

    /// Runs `f` with the state lock released, then takes it again (waiting no
    /// longer than the lock was first taken with) and reads the state afresh:
    /// other commands may have committed meanwhile. For the slow kernel work of a
    /// deletion that is claimed in its own journal (see `deletions.rs`); `down`,
    /// `reconcile` and the rest wait for it, so the node is still up afterwards.
    pub(crate) fn unlocked<T>(&mut self, f: impl FnOnce() -> T) -> Result<T, StateError> {
        let before = Fingerprint::of(&self.path);
        drop(self.lock.take());
        let out = f();
        let dir = StateDir::new(self.path.parent().unwrap_or(Path::new("/")));
        let (lock, path) = dir.take_lock(self.timeout)?;
        self.lock = Some(lock);
        // Nobody committed meanwhile (the usual case): what is in memory is still
        // the state, and reading 1000 records again would cost a millisecond.
        if before.is_some() && Fingerprint::of(&path) == before {
            return Ok(out);
        }
        let (state, pos, snapshot) = read_state(&path)?;
        self.state = state;
        self.pos = pos;
        self.snapshot_endpoints = snapshot.endpoints;
        self.snapshot_version = snapshot.version;
        Ok(out)
    }

    /// Waits, with the state lock released, until `file`'s lock is free (a
    /// deletion in progress ended), then takes the state lock again.
    pub(crate) fn wait_while_unlocked(&mut self, file: File) -> Result<(), StateError> {
        let timeout = self.timeout;
        let path = self.path.with_file_name(LOCK_FILE);
        self.unlocked(|| wait_for(file, timeout))?
            .map_err(|source| StateError::Lock { path, source })
    }

    /// Commits one endpoint change: a line appended to the log and made durable
    /// (one `fdatasync`), or, when the log is due for it, a new snapshot. On
    /// failure nothing is committed and `state` is as it was.
    pub(crate) fn commit(&mut self, entry: LogEntry) -> Result<(), StateError> {
        if self.snapshot_version == STATE_VERSION
            && !log::compaction_due(&self.pos, self.snapshot_endpoints)
        {
            let path = self.log_path();
            log::append(&path, &mut self.pos, &entry)?;
            entry.apply(&mut self.state);
            return Ok(());
        }
        let name = match &entry {
            LogEntry::Put(rec) => rec.name.clone(),
            LogEntry::Del(name) => name.clone(),
        };
        let previous = self.state.endpoints.get(&name).cloned();
        entry.apply(&mut self.state);
        if let Err(e) = self.save() {
            match previous {
                Some(rec) => self.state.endpoints.insert(name, rec),
                None => self.state.endpoints.remove(&name),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Writes the whole state as a new snapshot, atomically (a reader sees the old
    /// or the new file, never a mix, even if vethbpf is killed halfway), and
    /// empties the log, which it contains.
    pub(crate) fn save(&mut self) -> Result<(), StateError> {
        let tmp = self.path.with_extension("json.tmp");
        let werr = |source| StateError::Write {
            path: tmp.clone(),
            source,
        };
        let snapshot = SnapshotOut {
            version: STATE_VERSION,
            seq: self.pos.seq,
            node: &self.state.node,
            endpoints: &self.state.endpoints,
            cluster: &self.state.cluster,
        };
        let mut text = serde_json::to_vec_pretty(&snapshot).map_err(|e| werr(e.into()))?;
        text.push(b'\n');
        let mut f = File::create(&tmp).map_err(werr)?;
        f.write_all(&text).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(|source| StateError::Write {
            path: self.path.clone(),
            source,
        })?;
        // Make the rename itself durable.
        log::sync_dir(&self.path);
        self.snapshot_version = STATE_VERSION;
        self.snapshot_endpoints = self.state.endpoints.len();
        // The snapshot has every line of the log; lines left behind by a failure
        // here are older than its sequence number and never applied again.
        match fs::remove_file(self.log_path()) {
            Ok(()) => {
                self.pos = LogPos {
                    seq: self.pos.seq,
                    ..LogPos::default()
                };
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.log_path().display(), error = %e, "cannot empty the endpoint log");
            }
        }
        Ok(())
    }

    /// Renames the state file and the log, if there, to `*.corrupt`, before
    /// `reconcile --from-kernel` writes a new state; returns the new names.
    pub fn set_aside(&mut self) -> Result<Vec<PathBuf>, StateError> {
        let mut kept = Vec::new();
        for file in [self.path.clone(), self.log_path()] {
            let mut keep = file.clone().into_os_string();
            keep.push(".corrupt");
            let keep = PathBuf::from(keep);
            match fs::rename(&file, &keep) {
                Ok(()) => kept.push(keep),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StateError::Write { path: keep, source }),
            }
        }
        self.pos = LogPos::default();
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::state::EndpointRecord;
    use crate::state::ident::MacAddr;

    fn tempdir() -> PathBuf {
        std::env::temp_dir().join(format!(
            "vethbpf-state-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ))
    }

    fn rand_suffix() -> u64 {
        use std::time::{SystemTime, UNIX_EPOCH};
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    fn record(name: &str, ip: [u8; 4]) -> EndpointRecord {
        EndpointRecord {
            name: name.into(),
            id: 1,
            ip: Some(Ipv4Addr::from(ip)),
            ip6: None,
            pod_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            host_veth: "vb0".into(),
            host_ifindex: 7,
            netns: "/run/netns/x".into(),
            netns_created: true,
            ifname: "eth0".into(),
            cni: None,
        }
    }

    #[test]
    fn save_and_reload_round_trip_then_remove_leaves_nothing() {
        let dir = tempdir();
        let sd = StateDir::new(&dir);
        let mut l = sd.lock().unwrap();
        assert_eq!(l.state, State::default());
        l.state
            .endpoints
            .insert("a".into(), record("a", [10, 244, 0, 2]));
        l.save().unwrap();
        drop(l);
        let l = sd.lock().unwrap();
        assert_eq!(
            l.state.endpoints["a"].ip,
            Some(Ipv4Addr::new(10, 244, 0, 2))
        );
        sd.remove(l).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn lock_timeout_gives_up_while_another_holds_the_lock() {
        let dir = tempdir();
        let sd = StateDir::new(&dir);
        let held = sd.lock().unwrap();
        let err = sd
            .lock_timeout(std::time::Duration::from_millis(100))
            .err()
            .unwrap();
        assert!(matches!(err, StateError::Busy { .. }), "{err}");
        drop(held);
        let l = sd
            .lock_timeout(std::time::Duration::from_millis(100))
            .unwrap();
        sd.remove(l).unwrap();
    }

    /// A waiter gets the lock when it is released, and one that gave up does not
    /// keep it when its blocked wait ends later.
    #[test]
    fn lock_timeout_hands_over_on_release_and_a_waiter_that_gave_up_lets_go() {
        let dir = tempdir();
        let sd = StateDir::new(&dir);
        let held = sd.lock().unwrap();
        let gave_up = sd.lock_timeout(std::time::Duration::from_millis(50));
        assert!(matches!(gave_up, Err(StateError::Busy { .. })));
        let waiter = {
            let sd = sd.clone();
            std::thread::spawn(move || sd.lock_timeout(std::time::Duration::from_secs(30)))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(held);
        let l = waiter.join().unwrap().unwrap();
        drop(l);
        // The thread of the waiter that gave up got the lock too at some point; it
        // must have let go of it.
        let l = sd.lock_timeout(std::time::Duration::from_secs(30)).unwrap();
        sd.remove(l).unwrap();
    }

    #[test]
    fn a_state_file_written_before_ipv6_still_reads() {
        // The shape of version 1 files from before dual stack: plain `pod_cidr` and
        // `ip`, no `pod_cidr6`/`ip6`.
        let dir = tempdir();
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(STATE_FILE),
            r#"{"version":1,"node":{"pod_cidr":"10.244.0.0/24","gateway":"169.254.1.1",
            "gateway_mac":"ee:ee:ee:ee:ee:ee","bpffs_dir":"/sys/fs/bpf/vethbpf",
            "bpffs_mount":null,"attach_mode":"tcx"},"endpoints":{"a":{"name":"a","id":1,
            "ip":"10.244.0.2","pod_mac":"02:00:00:00:00:01","host_veth":"vb0",
            "host_ifindex":7,"netns":"/run/netns/x","netns_created":true,"ifname":"eth0"}}}"#,
        )
        .unwrap();
        let sd = StateDir::new(&dir);
        let l = sd.lock().unwrap();
        let node = l.state.node.clone().unwrap();
        assert_eq!(node.pod_cidr, Some("10.244.0.0/24".parse().unwrap()));
        assert_eq!(node.pod_cidr6, None);
        assert_eq!(l.state.endpoints["a"], record("a", [10, 244, 0, 2]));
        sd.remove(l).unwrap();
    }

    /// State files from before pods and the node's own attach points had separate
    /// modes hold `attach_mode` alone: their pods keep it (a node whose pods have
    /// pinned TCX links goes on with them), `netlink` being today's `tc`; the
    /// next write records both.
    #[test]
    fn a_state_file_with_one_attach_mode_gives_it_to_the_pods() {
        use crate::datapath::AttachMode;
        for (old, want) in [("tcx", AttachMode::Tcx), ("netlink", AttachMode::Tc)] {
            let dir = tempdir();
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join(STATE_FILE),
                format!(
                    r#"{{"version":2,"seq":0,"node":{{"pod_cidr":"10.244.0.0/24","gateway":"169.254.1.1",
                    "gateway_mac":"ee:ee:ee:ee:ee:ee","bpffs_dir":"/sys/fs/bpf/vethbpf",
                    "bpffs_mount":null,"attach_mode":"{old}"}},"endpoints":{{}}}}"#
                ),
            )
            .unwrap();
            let sd = StateDir::new(&dir);
            let mut l = sd.lock().unwrap();
            let node = l.state.node.clone().unwrap();
            assert_eq!((node.attach_mode, node.pod_attach), (want, want), "{old}");
            l.save().unwrap();
            drop(l);
            let written: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(dir.join(STATE_FILE)).unwrap()).unwrap();
            assert_eq!(written["node"]["attach_mode"], want.name(), "{old}");
            assert_eq!(written["node"]["pod_attach"], want.name(), "{old}");
            let l = sd.lock().unwrap();
            assert_eq!(l.state.node.as_ref().unwrap().pod_attach, want);
            sd.remove(l).unwrap();
        }
        // And a new one keeps the two apart.
        let dir = tempdir();
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(STATE_FILE),
            r#"{"version":2,"seq":0,"node":{"pod_cidr":"10.244.0.0/24","gateway":"169.254.1.1",
            "gateway_mac":"ee:ee:ee:ee:ee:ee","bpffs_dir":"/sys/fs/bpf/vethbpf",
            "bpffs_mount":null,"attach_mode":"tcx","pod_attach":"tc"},"endpoints":{}}"#,
        )
        .unwrap();
        let sd = StateDir::new(&dir);
        let l = sd.lock().unwrap();
        let node = l.state.node.clone().unwrap();
        assert_eq!(
            (node.attach_mode, node.pod_attach),
            (AttachMode::Tcx, AttachMode::Tc)
        );
        sd.remove(l).unwrap();
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempdir();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(STATE_FILE), b"{ truncated").unwrap();
        let err = StateDir::new(&dir).lock().err().unwrap();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lock_serialises_concurrent_writers() {
        let dir = tempdir();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let sd = StateDir::new(&dir);
                std::thread::spawn(move || {
                    let mut l = sd.lock().unwrap();
                    let name = format!("e{i}");
                    l.state
                        .endpoints
                        .insert(name.clone(), record(&name, [10, 0, 0, i as u8]));
                    l.save().unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let sd = StateDir::new(&dir);
        let l = sd.lock().unwrap();
        assert_eq!(l.state.endpoints.len(), 8, "no update may be lost");
        sd.remove(l).unwrap();
    }

    fn put(rec: EndpointRecord) -> LogEntry {
        LogEntry::Put(Box::new(rec))
    }

    fn up(dir: &Path) -> StateDir {
        let sd = StateDir::new(dir);
        let mut l = sd.lock().unwrap();
        l.state.node = None;
        l.save().unwrap();
        sd
    }

    fn log_lines(dir: &Path) -> usize {
        fs::read_to_string(dir.join(LOG_FILE))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    #[test]
    fn commits_append_to_the_log_and_survive_a_reopen() {
        let dir = tempdir();
        let sd = up(&dir);
        let snapshot = fs::read(dir.join(STATE_FILE)).unwrap();
        let mut l = sd.lock().unwrap();
        l.commit(put(record("a", [10, 0, 0, 1]))).unwrap();
        l.commit(put(record("b", [10, 0, 0, 2]))).unwrap();
        l.commit(LogEntry::Del("a".into())).unwrap();
        drop(l);
        // The snapshot was not rewritten: three lines were appended.
        assert_eq!(fs::read(dir.join(STATE_FILE)).unwrap(), snapshot);
        assert_eq!(log_lines(&dir), 3);
        let l = sd.lock().unwrap();
        assert_eq!(l.state.endpoints.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(sd.read().unwrap(), l.state);
        sd.remove(l).unwrap();
        assert!(!dir.exists(), "down removes the log too");
    }

    #[test]
    fn the_log_is_folded_into_a_new_snapshot_once_it_is_long() {
        let dir = tempdir();
        let sd = up(&dir);
        let mut l = sd.lock().unwrap();
        let mut snapshots = 0;
        let inode = || {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(dir.join(STATE_FILE)).unwrap().ino()
        };
        for i in 0..300u32 {
            let name = format!("e{i}");
            let before = inode();
            l.commit(put(record(&name, (0x0a00_0000 + i).to_be_bytes())))
                .unwrap();
            let lines = log_lines(&dir);
            // Never longer than the snapshot it goes with (or COMPACT_AT).
            let snapshot = l.snapshot_endpoints;
            assert!(
                lines < log::COMPACT_AT.max(snapshot),
                "{lines} lines, {snapshot}"
            );
            // A new snapshot is a new file (renamed over the old one).
            if inode() != before {
                snapshots += 1;
            }
        }
        // The snapshot doubles each time (64, 128, 256): rewritten a few times, not
        // at every commit.
        assert_eq!(snapshots, 3);
        // And deletes count as lines too.
        for i in 0..300u32 {
            l.commit(LogEntry::Del(format!("e{i}"))).unwrap();
            assert!(log_lines(&dir) < log::COMPACT_AT.max(l.snapshot_endpoints));
        }
        drop(l);
        let l = sd.lock().unwrap();
        assert!(l.state.endpoints.is_empty());
        sd.remove(l).unwrap();
    }

    #[test]
    fn lines_older_than_the_snapshot_are_not_applied_again() {
        let dir = tempdir();
        let sd = up(&dir);
        let mut l = sd.lock().unwrap();
        l.commit(put(record("a", [10, 0, 0, 1]))).unwrap();
        l.commit(LogEntry::Del("a".into())).unwrap();
        let old_log = fs::read(dir.join(LOG_FILE)).unwrap();
        l.commit(put(record("b", [10, 0, 0, 2]))).unwrap();
        // A snapshot, and a crash before the log was emptied: the log is back.
        l.save().unwrap();
        drop(l);
        fs::write(dir.join(LOG_FILE), &old_log).unwrap();
        let mut l = sd.lock().unwrap();
        assert_eq!(l.state.endpoints.keys().collect::<Vec<_>>(), ["b"]);
        // New lines go after the stale ones and are applied.
        l.commit(put(record("c", [10, 0, 0, 3]))).unwrap();
        drop(l);
        let l = sd.lock().unwrap();
        assert_eq!(l.state.endpoints.keys().collect::<Vec<_>>(), ["b", "c"]);
        sd.remove(l).unwrap();
    }

    #[test]
    fn a_cut_off_last_line_was_never_committed_and_is_cut_off_before_the_next() {
        let dir = tempdir();
        let sd = up(&dir);
        let mut l = sd.lock().unwrap();
        l.commit(put(record("a", [10, 0, 0, 1]))).unwrap();
        drop(l);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(LOG_FILE))
            .unwrap();
        f.write_all(br#"{"seq":2,"put":{"name":"half"#).unwrap();
        drop(f);
        let mut l = sd.lock().unwrap();
        assert_eq!(l.state.endpoints.keys().collect::<Vec<_>>(), ["a"]);
        l.commit(put(record("b", [10, 0, 0, 2]))).unwrap();
        drop(l);
        assert_eq!(log_lines(&dir), 2);
        let l = sd.lock().unwrap();
        assert_eq!(l.state.endpoints.keys().collect::<Vec<_>>(), ["a", "b"]);
        sd.remove(l).unwrap();
    }

    #[test]
    fn a_corrupt_log_line_is_a_clear_error_naming_the_log() {
        let dir = tempdir();
        let sd = up(&dir);
        let mut l = sd.lock().unwrap();
        l.commit(put(record("a", [10, 0, 0, 1]))).unwrap();
        drop(l);
        let log = dir.join(LOG_FILE);
        let good = fs::read(&log).unwrap();
        fs::write(&log, [b"{not a record}\n".as_slice(), &good].concat()).unwrap();
        let err = sd.lock().err().unwrap();
        assert!(
            matches!(&err, StateError::Corrupt { path, .. } if *path == log),
            "{err}"
        );
        assert!(err.to_string().contains("reconcile --from-kernel"), "{err}");
        assert!(sd.read().is_err());
        // --from-kernel sets both files aside and starts over.
        let mut l = sd.lock_to_rebuild().unwrap();
        let kept = l.set_aside().unwrap();
        assert_eq!(kept.len(), 2);
        l.save().unwrap();
        drop(l);
        assert_eq!(sd.read().unwrap(), State::default());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_line_records_exactly_one_put_or_del() {
        let dir = tempdir();
        let sd = up(&dir);
        let mut l = sd.lock().unwrap();
        l.commit(put(record("a", [10, 0, 0, 1]))).unwrap();
        l.commit(LogEntry::Del("a".into())).unwrap();
        drop(l);
        let log = dir.join(LOG_FILE);
        let good = fs::read_to_string(&log).unwrap();
        let (put_line, del_line) = good.split_once('\n').unwrap();
        assert!(del_line.starts_with(r#"{"seq":2,"del":"a"}"#), "{del_line}");
        let both = put_line.replacen(r#"{"seq":1,"#, r#"{"seq":3,"del":"a","#, 1);
        assert_ne!(both, put_line);
        for bad in [r#"{"seq":3}"#.to_string(), both] {
            fs::write(&log, format!("{good}{bad}\n")).unwrap();
            let err = sd.lock().err().unwrap();
            assert!(
                matches!(&err, StateError::Corrupt { path, .. } if *path == log),
                "{bad}: {err}"
            );
        }
        fs::write(&log, &good).unwrap();
        assert_eq!(sd.read().unwrap().endpoints.len(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_commit_changes_nothing() {
        let dir = tempdir();
        let sd = up(&dir);
        let mut l = sd.lock().unwrap();
        l.commit(put(record("a", [10, 0, 0, 1]))).unwrap();
        let before = l.state.clone();
        // The log cannot be written: a directory stands in its way.
        fs::remove_file(dir.join(LOG_FILE)).unwrap();
        fs::create_dir(dir.join(LOG_FILE)).unwrap();
        assert!(l.commit(put(record("b", [10, 0, 0, 2]))).is_err());
        assert!(l.commit(LogEntry::Del("a".into())).is_err());
        assert_eq!(l.state, before);
        drop(l);
        fs::remove_dir(dir.join(LOG_FILE)).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A node whose state an earlier vethbpf wrote (version 1: one file, no log)
    /// is read as it is; its first commit rewrites it as version 2, which the
    /// earlier versions refuse instead of missing the log.
    #[test]
    fn a_version_1_state_file_is_read_and_rewritten_at_the_first_commit() {
        let dir = tempdir();
        fs::create_dir_all(&dir).unwrap();
        let v1 = serde_json::json!({
            "version": 1,
            "node": null,
            "endpoints": { "a": record("a", [10, 0, 0, 1]) },
        });
        fs::write(dir.join(STATE_FILE), v1.to_string()).unwrap();
        let sd = StateDir::new(&dir);
        let mut l = sd.lock().unwrap();
        assert_eq!(l.state.endpoints.keys().collect::<Vec<_>>(), ["a"]);
        l.commit(put(record("b", [10, 0, 0, 2]))).unwrap();
        drop(l);
        let written: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(written["version"], 2);
        assert_eq!(written["endpoints"].as_object().map(|o| o.len()), Some(2));
        assert_eq!(log_lines(&dir), 0);
        let l = sd.lock().unwrap();
        assert_eq!(l.state.endpoints.len(), 2);
        sd.remove(l).unwrap();
        // A version this vethbpf does not know is refused.
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(STATE_FILE),
            r#"{"version":3,"node":null,"endpoints":{}}"#,
        )
        .unwrap();
        assert!(matches!(
            sd.lock().err(),
            Some(StateError::Version { found: 3, .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_live_deletion_is_waited_for_by_lock_and_not_by_endpoint_changes() {
        let dir = tempdir();
        let sd = StateDir::new(&dir);
        let l = sd.lock().unwrap();
        let deletion = l.begin_deletion(&record("a", [10, 244, 0, 2])).unwrap();
        match l.deletions().unwrap().as_slice() {
            [Found::Live { name, .. }] => assert_eq!(name, "a"),
            other => panic!("{other:?}"),
        }
        drop(l);
        let waiter = {
            let sd = sd.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let l = sd.lock().unwrap();
                (start.elapsed(), l.deletions().unwrap().len())
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "lock() waits for the live deletion");
        // An endpoint change takes the lock beside it, and ends it.
        let l = sd.lock_for_endpoint_change(None).unwrap();
        l.end_deletion(deletion).unwrap();
        drop(l);
        let (waited, left) = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert_eq!(left, 0, "the deletion's journal is gone");
        sd.remove(sd.lock().unwrap()).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn a_deletion_whose_owner_let_go_is_dead_and_down_removes_its_journal() {
        let dir = tempdir();
        let sd = StateDir::new(&dir);
        let l = sd.lock().unwrap();
        let rec = record("b", [10, 244, 0, 3]);
        // Dropping the claim without ending it is what the death of its command
        // does: the lock goes, the file stays.
        drop(l.begin_deletion(&rec).unwrap());
        drop(l);
        // lock() does not wait for a dead deletion: the command settles it.
        let l = sd
            .lock_timeout(Duration::from_secs(5))
            .expect("not waiting for a dead deletion");
        match l.deletions().unwrap().as_slice() {
            [Found::Dead(dead)] => assert_eq!(dead.rec, rec),
            other => panic!("{other:?}"),
        }
        sd.remove(l).unwrap();
        assert!(!dir.exists(), "no journal file left behind");
    }

    #[test]
    fn unlocked_lets_another_command_commit_and_reads_its_commit() {
        let dir = tempdir();
        let sd = StateDir::new(&dir);
        let mut l = sd.lock().unwrap();
        l.save().unwrap();
        let other = sd.clone();
        l.unlocked(|| {
            let mut o = other.lock_timeout(Duration::from_secs(5)).unwrap();
            o.commit(LogEntry::Put(Box::new(record("c", [10, 244, 0, 4]))))
                .unwrap();
        })
        .unwrap();
        assert!(l.state.endpoints.contains_key("c"), "state read again");
        l.commit(LogEntry::Del("c".into())).unwrap();
        drop(l);
        assert!(sd.read().unwrap().endpoints.is_empty());
        sd.remove(sd.lock().unwrap()).unwrap();
    }
}
