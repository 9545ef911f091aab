//! The embedded eBPF object on this node: loading it, pinning its programs and
//! maps, upgrading it in place, attaching programs to interfaces, and typed access
//! to the maps.
//!
//! vethbpf is a command, not a daemon: `up` loads the programs and pins them and
//! their maps under the bpffs dir ([`Pins`] has the layout); `endpoint add` opens
//! the pinned program and attaches it to a host veth: a cls_bpf filter made in the
//! veth's netlink batch, or (`up --pod-attach tcx`) a TCX link, pinned.
//! Nothing depends on a vethbpf process staying alive.

use std::io;
use std::path::PathBuf;

use aya::pin::PinError;
use aya::programs::ProgramError;
use vethbpf_common::{PROG_FROM_POD, PROG_FROM_TUNNEL, PROG_FROM_UPLINK};

use crate::error::ErrorKind;
use crate::kernel::bpffs::BpffsError;

mod attach;
mod batch;
pub mod events;
pub mod fill;
mod load;
pub mod maps;
mod migrate;
mod pins;
pub mod pods;
mod sys;

pub use attach::AttachMode;
pub(crate) use attach::{
    PinnedProgram, attach, attach_mode, detach, detach_filter, link_ids, pinned_links, relink,
    replace_filter,
};
pub use load::program_info;
pub(crate) use load::{Modes, check_object, load_and_pin, remove_all, replace};
pub use pins::Pins;

/// The object's programs: each is loaded, verified and pinned by `up`, and
/// upgraded by `up --replace`.
pub(crate) const PROGRAMS: &[&str] = &[PROG_FROM_POD, PROG_FROM_UPLINK, PROG_FROM_TUNNEL];

/// Why loading, pinning, attaching or unpinning failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(
        "this vethbpf was built without the eBPF object (it was missing when vethbpf was compiled); run `cargo xtask build-ebpf`, then build vethbpf again"
    )]
    NoObject,
    #[error("cannot load the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error(
        "the pinned program {path} cannot be opened ({source}); is the bpffs still mounted? `vethbpf up` loads the datapath again"
    )]
    OpenProgram {
        path: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(
        "the pinned program {path} cannot be opened ({source}); is the bpffs still mounted? `vethbpf up` loads the datapath again"
    )]
    OpenPinned {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach {program} to {ifname}: {source}")]
    Attach {
        program: String,
        ifname: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("link pin {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the eBPF object cannot be parsed: {0}")]
    Parse(String),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("cannot open the pinned map {path}: {source}")]
    OpenMap {
        path: PathBuf,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("cannot read the pinned map {path}: {source}")]
    MapInfo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the pinned map {map} was made by another vethbpf version ({detail}) and cannot be carried over: nothing was changed; `vethbpf down`, then `vethbpf up` (and add the endpoints again)"
    )]
    IncompatibleMap { map: &'static str, detail: String },
    #[error("cannot count the possible CPUs: {0}")]
    Cpus(#[source] io::Error),
    #[error("carrying the entries of {map} over ({op}): {source}")]
    Migrate {
        map: &'static str,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl BpfError {
    /// What kind of failure this is: a pinned program that cannot be opened means
    /// the datapath is gone (`up` loads it again).
    pub fn kind(&self) -> ErrorKind {
        match self {
            BpfError::OpenProgram { .. }
            | BpfError::OpenPinned { .. }
            | BpfError::OpenMap { .. } => ErrorKind::NotUp,
            BpfError::IncompatibleMap { .. } => ErrorKind::Conflict,
            _ => ErrorKind::Other,
        }
    }
}
