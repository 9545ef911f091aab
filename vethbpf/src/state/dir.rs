//! The state directory itself: the lock that serialises commands, reading the
//! state file, and writing it atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::cluster::NODE_INTENT_FILE;
use super::records::STATE_VERSION;
use super::{State, StateError};

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
    _lock: Flock<File>,
    pub(super) path: PathBuf,
    pub state: State,
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

    /// Takes the exclusive lock (waiting for other vethbpf commands) and reads the
    /// state; a missing file is an empty state.
    pub fn lock(&self) -> Result<Locked, StateError> {
        self.lock_within(None)
    }

    /// Like [`StateDir::lock`], but gives up with [`StateError::Busy`] when the
    /// lock is still held by someone else after `timeout` (CNI calls answer "try
    /// again later" rather than hang a runtime).
    pub(crate) fn lock_timeout(&self, timeout: std::time::Duration) -> Result<Locked, StateError> {
        self.lock_within(Some(timeout))
    }

    /// Reads the state file without the lock (to tell a corrupt file from a good one).
    pub fn read(&self) -> Result<State, StateError> {
        read_state(&self.dir.join(STATE_FILE))
    }

    /// Takes the lock without reading the state file (which may be corrupt): for
    /// `reconcile --from-kernel`, which writes a new one.
    pub fn lock_to_rebuild(&self) -> Result<Locked, StateError> {
        let (lock, path) = self.take_lock(None)?;
        Ok(Locked {
            _lock: lock,
            path,
            state: State::default(),
        })
    }

    fn lock_within(&self, timeout: Option<std::time::Duration>) -> Result<Locked, StateError> {
        let (lock, path) = self.take_lock(timeout)?;
        let state = read_state(&path)?;
        Ok(Locked {
            _lock: lock,
            path,
            state,
        })
    }

    fn take_lock(
        &self,
        timeout: Option<std::time::Duration>,
    ) -> Result<(Flock<File>, PathBuf), StateError> {
        let start = std::time::Instant::now();
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
                Some(timeout) => {
                    let mut file = file;
                    loop {
                        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                            Ok(lock) => break lock,
                            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                                if start.elapsed() >= timeout {
                                    return Err(StateError::Busy {
                                        path: lock_path.clone(),
                                        secs: timeout.as_secs(),
                                    });
                                }
                                file = f;
                                std::thread::sleep(std::time::Duration::from_millis(20));
                            }
                            Err((_, errno)) => return Err(lock_err(io::Error::from(errno))),
                        }
                    }
                }
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
        rm(&locked.intent_path())?;
        rm(&locked.path.with_file_name(NODE_INTENT_FILE))?;
        // Temp files of a write that a kill interrupted.
        rm(&locked.path.with_extension("json.tmp"))?;
        rm(&locked.intent_path().with_extension("json.tmp"))?;
        rm(&self.dir.join(LOCK_FILE))?;
        drop(locked);
        // Not empty (a user's own files) is fine: leave it.
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn read_state(path: &Path) -> Result<State, StateError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let state: State = serde_json::from_slice(&text).map_err(|source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    if state.version != STATE_VERSION {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: state.version,
        });
    }
    Ok(state)
}

impl Locked {
    /// Writes the state atomically: a reader sees the old or the new file, never a
    /// mix, even if vethbpf is killed halfway.
    pub(crate) fn save(&self) -> Result<(), StateError> {
        let tmp = self.path.with_extension("json.tmp");
        let werr = |source| StateError::Write {
            path: tmp.clone(),
            source,
        };
        let mut text = serde_json::to_vec_pretty(&self.state).map_err(|e| werr(e.into()))?;
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
        if let Some(dir) = self.path.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = nix::unistd::fsync(d.as_fd());
        }
        Ok(())
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
}
