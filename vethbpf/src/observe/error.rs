//! Why a monitor or a metrics scrape failed.

use std::io;
use std::net::SocketAddr;

use crate::datapath::BpfError;
use crate::datapath::maps::MapsError;
use crate::error::ErrorKind;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("the node is not up (or its datapath is gone): run `vethbpf up` first")]
    NotUp,
    #[error("no endpoint named {0}")]
    UnknownEndpoint(String),
    #[error("no remote node named {0} (`vethbpf node list` shows them)")]
    UnknownNode(String),
    #[error(
        "another vethbpf monitor (pid {pid}) is reading the events: the ring buffer has one reader, so stop that one first"
    )]
    Busy { pid: u32 },
    #[error(
        "the datapath was removed (`vethbpf down`, or the bpffs unmounted) while the monitor ran"
    )]
    Gone,
    #[error("cannot read the log of program {id}: {source}")]
    Log {
        id: u32,
        #[source]
        source: aya_log::Error,
    },
    #[error("waiting for events: {0}")]
    Poll(#[source] nix::Error),
    #[error("cannot serve metrics on {addr}: {message}")]
    Listen { addr: SocketAddr, message: String },
    #[error("encoding the metrics failed")]
    Encode,
    #[error("writing the output: {0}")]
    Output(#[source] io::Error),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Netlink(#[from] crate::kernel::netlink::NetlinkError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl ObserveError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ObserveError::NotUp | ObserveError::Gone => ErrorKind::NotUp,
            ObserveError::UnknownEndpoint(_) | ObserveError::UnknownNode(_) => ErrorKind::NotFound,
            ObserveError::Busy { .. } => ErrorKind::Conflict,
            ObserveError::Maps(e) => e.kind(),
            ObserveError::Bpf(e) => e.kind(),
            ObserveError::Netlink(e) => e.kind(),
            ObserveError::Log { .. }
            | ObserveError::Poll(_)
            | ObserveError::Listen { .. }
            | ObserveError::Encode
            | ObserveError::Output(_)
            | ObserveError::State(_) => ErrorKind::Other,
        }
    }
}
