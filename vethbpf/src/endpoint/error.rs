//! What can go wrong with an endpoint change.

use std::path::PathBuf;

use vethbpf_common::MAX_ENDPOINTS;

use crate::datapath::BpfError;
use crate::datapath::maps::MapsError;
use crate::egress::table::TableError;
use crate::error::ErrorKind;
use crate::fault::Injected;
use crate::kernel::bpffs::BpffsError;
use crate::kernel::netlink::NetlinkError;
use crate::kernel::netns::NetnsError;
use crate::state::StateError;
use crate::state::ident::NameError;
use crate::state::ipam::IpamError;

/// Why an endpoint change was refused or failed (and was undone, except where a
/// variant says otherwise).
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("the node is not up: run `vethbpf up` first")]
    NotUp,
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("endpoint {name} already exists")]
    Duplicate { name: String },
    #[error("no endpoint named {name}")]
    NotFound { name: String },
    #[error(
        "the interface {ifname} already exists in the node namespace (left over from an earlier run?); delete it or choose another endpoint name"
    )]
    HostVethExists { ifname: String },
    #[error(
        "the network namespace {name} already exists; pass `--netns {name}` to put the endpoint in it"
    )]
    NetnsExists { name: String },
    #[error("the interface {ifname} already exists in the namespace {netns}")]
    IfnameExists { ifname: String, netns: PathBuf },
    #[error("the node has {max} endpoints, the most it supports", max = MAX_ENDPOINTS - 1)]
    TooMany,
    #[error("the veth peer {ifname} vanished while it was being set up")]
    PeerVanished { ifname: String },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Nat(#[from] TableError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Injected(#[from] Injected),
    #[error(
        "endpoint del {name} stopped after the pod's interface was removed ({source}); the next vethbpf command, or `vethbpf reconcile`, finishes it"
    )]
    DelInterrupted {
        name: String,
        #[source]
        source: Box<EndpointError>,
    },
}

impl EndpointError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EndpointError::NotUp => ErrorKind::NotUp,
            EndpointError::Name(e) => e.kind(),
            EndpointError::Ipam(e) => e.kind(),
            EndpointError::Duplicate { .. }
            | EndpointError::HostVethExists { .. }
            | EndpointError::NetnsExists { .. }
            | EndpointError::IfnameExists { .. }
            | EndpointError::TooMany => ErrorKind::Conflict,
            EndpointError::NotFound { .. } => ErrorKind::NotFound,
            EndpointError::Netlink(e) => e.kind(),
            EndpointError::Netns(e) => e.kind(),
            EndpointError::Bpf(e) => e.kind(),
            EndpointError::Maps(e) => e.kind(),
            EndpointError::Nat(e) => e.kind(),
            EndpointError::State(_)
            | EndpointError::Bpffs(_)
            | EndpointError::PeerVanished { .. }
            | EndpointError::Injected(_)
            | EndpointError::DelInterrupted { .. } => ErrorKind::Other,
        }
    }
}
