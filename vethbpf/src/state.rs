//! The state directory: what the kernel does not hold for us (node config, endpoint
//! names, namespaces, allocated addresses). One JSON file, replaced atomically
//! (temp file + fsync + rename) while an exclusive `flock` on a lock file is held, so
//! concurrent commands serialise instead of losing each other's updates.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::ident::MacAddr;

mod cluster;
pub use cluster::{
    ClusterState, NODE_INTENT_FILE, NodeIntent, NodeOrigin, Overlay, RemoteNode, VxlanDevice,
};

pub const STATE_FILE: &str = "state.json";
pub const LOCK_FILE: &str = "lock";
/// The journal of the endpoint change in progress (see [`Intent`]).
pub const INTENT_FILE: &str = "intent.json";
const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the state file {path} is corrupt ({source}); run `vethbpf reconcile --from-kernel` to rebuild it from the pinned maps and links"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the state file {path} has version {found}; this vethbpf understands {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path} stayed locked by another vethbpf command for {secs} s")]
    Busy { path: PathBuf, secs: u64 },
    #[error(
        "the journal {path} is corrupt ({source}); run `vethbpf reconcile` to clean up after the interrupted command"
    )]
    CorruptIntent {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How programs are attached to host-side veths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX link (kernel >= 6.6), pinned under the bpffs dir.
    Tcx,
    /// Legacy clsact qdisc + cls_bpf filter through netlink (older kernels).
    Netlink,
}

impl AttachMode {
    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Netlink => "netlink",
        }
    }
}

/// Written by `up`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub pod_cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub gateway_mac: MacAddr,
    pub bpffs_dir: PathBuf,
    /// Where `up` mounted a bpffs (`bpffs_dir` or /sys/fs/bpf), so that `down`
    /// unmounts it; `None` if one was there already.
    pub bpffs_mount: Option<PathBuf>,
    pub attach_mode: AttachMode,
}

/// One endpoint ("pod").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub name: String,
    /// Index of the endpoint's counters (1..MAX_ENDPOINTS).
    pub id: u32,
    pub ip: Ipv4Addr,
    pub pod_mac: MacAddr,
    pub host_veth: String,
    pub host_ifindex: u32,
    /// Path of the pod's network namespace file.
    pub netns: PathBuf,
    /// vethbpf created the namespace (so `endpoint del` deletes it).
    pub netns_created: bool,
    /// Interface name inside the pod.
    pub ifname: String,
    /// Set when the endpoint was made by the CNI plugin (`vethbpf` run with
    /// `CNI_COMMAND`): which attachment it is, so that DEL and GC find it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniAttachment>,
}

/// The CNI attachment an endpoint belongs to: `(CNI_CONTAINERID, CNI_IFNAME)` on the
/// network `network`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    pub container_id: String,
    pub ifname: String,
    /// The network configuration's `name`.
    pub network: String,
    /// The delegated IPAM plugin (`ipam.type`) that gave the address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub node: Option<NodeConfig>,
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// Set by `up --cluster-cidr`: other nodes and how to reach them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterState>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            node: None,
            endpoints: BTreeMap::new(),
            cluster: None,
        }
    }
}

/// The endpoint change in progress, written before its first kernel change and
/// removed after its commit. Whoever takes the lock next and finds it knows that a
/// command died halfway, and what it was doing: an `add` is rolled back (nothing of
/// it was committed), a `del` is finished (the pod may already have lost its
/// interface, so there is no going back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Intent {
    Add(PlannedEndpoint),
    Del(EndpointRecord),
}

/// What an `add` in progress may have made: everything is found by these names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedEndpoint {
    pub name: String,
    pub ip: Ipv4Addr,
    pub id: u32,
    pub host_veth: String,
    pub temp_peer: String,
    /// The add creates the namespace `name` (it did not exist when the add began,
    /// under the lock), so a rollback deletes it.
    pub create_netns: bool,
}

/// A state directory (default /var/lib/vethbpf).
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// The state, read under an exclusive lock that lasts as long as this value.
pub struct Locked {
    _lock: Flock<File>,
    path: PathBuf,
    pub state: State,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateDir { dir: dir.into() }
    }

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
    pub fn lock_timeout(&self, timeout: std::time::Duration) -> Result<Locked, StateError> {
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
            fs::create_dir_all(&self.dir).map_err(|source| StateError::CreateDir {
                path: self.dir.clone(),
                source,
            })?;
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
    fn intent_path(&self) -> PathBuf {
        self.path.with_file_name(INTENT_FILE)
    }

    /// The journal left by a command that died halfway, if any.
    pub fn pending(&self) -> Result<Option<Intent>, StateError> {
        let path = self.intent_path();
        match fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(|source| StateError::CorruptIntent { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    /// Journals `intent` before its first kernel change. Written atomically but not
    /// fsynced: it only has to survive the death of the process (the page cache
    /// does); a power loss takes the kernel objects it describes with it.
    pub fn begin(&self, intent: &Intent) -> Result<(), StateError> {
        let path = self.intent_path();
        let tmp = path.with_extension("json.tmp");
        let werr = |source| StateError::Write {
            path: tmp.clone(),
            source,
        };
        let text = serde_json::to_vec(intent).map_err(|e| werr(e.into()))?;
        fs::write(&tmp, text).map_err(werr)?;
        fs::rename(&tmp, &path).map_err(|source| StateError::Write { path, source })
    }

    /// Clears the journal once the change is committed or undone.
    pub fn end(&self) -> Result<(), StateError> {
        let path = self.intent_path();
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StateError::Write { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Writes the state atomically: a reader sees the old or the new file, never a
    /// mix, even if vethbpf is killed halfway.
    pub fn save(&self) -> Result<(), StateError> {
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
    use super::*;

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
            ip: Ipv4Addr::from(ip),
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
        assert_eq!(l.state.endpoints["a"].ip, Ipv4Addr::new(10, 244, 0, 2));
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
