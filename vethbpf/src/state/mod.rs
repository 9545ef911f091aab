//! The state directory: what the kernel does not hold for us (node config, endpoint
//! names, namespaces, allocated addresses), and the journal of the endpoint change
//! in progress. A snapshot (`state.json`, replaced atomically: temp file + fsync +
//! rename) and an append-only log of endpoint changes after it (`state.log`, one
//! fdatasync'd line per commit), used only while an exclusive `flock` on a lock
//! file is held, so concurrent commands serialise instead of losing each other's
//! updates.

use std::io;
use std::path::PathBuf;

mod cluster;
mod deletions;
mod dir;
pub mod ident;
pub mod ipam;
mod journal;
mod log;
mod records;

pub use cluster::{
    ClusterState, NODE_INTENT_FILE, NodeIntent, NodeOrigin, Overlay, RemoteNode, VxlanDevice,
};
pub(crate) use deletions::{DeadDeletion, Found};
pub use dir::{Locked, STATE_FILE, StateDir};
pub(crate) use journal::{Intent, PlannedEndpoint};
pub use log::LOG_FILE;
pub(crate) use log::LogEntry;
pub use records::{CniAttachment, EndpointRecord, NodeConfig, State};
use records::{OLDEST_STATE_VERSION, STATE_VERSION};

/// Why the state directory, its lock, the state file or the journal could not be
/// used.
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
    #[error(
        "the state file {path} has version {found}; this vethbpf understands versions {OLDEST_STATE_VERSION} to {STATE_VERSION}"
    )]
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
