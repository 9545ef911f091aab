//! Several nodes: this node's place in a cluster (`up --cluster-cidr`), the remote
//! nodes whose pod CIDRs it reaches (`node add/del/list`), and the etcd agent that
//! keeps them current (`agent`).
//!
//! - [`setup`]: `up`'s cluster part (uplink, VXLAN device, programs), `down`'s, and
//!   the cluster view of `status`
//! - [`nodes`]: remote nodes: checked, journalled, written into the maps
//! - [`maps`]: the cluster's pinned maps, behind a trait
//! - [`neigh`]: the remote nodes' MACs, for direct-routed IPv6
//! - [`join`]: `up` and the cluster part together, checked before either changes
//! - [`subnets`]: picking a free pod subnet of the cluster CIDR
//! - [`etcd`]: subnet leases in etcd (Flannel's model)
//! - [`agent`]: the optional long-running process that ties etcd to the node

pub mod agent;
pub mod etcd;
pub mod join;
pub mod maps;
pub mod neigh;
pub mod nodes;
pub mod setup;
pub mod subnets;

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv6Net};

use crate::datapath::BpfError;
use crate::datapath::maps::MapsError;
use crate::error::ErrorKind;
use crate::kernel::netlink::NetlinkError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the node is not up: run `vethbpf up` first")]
    NotUp,
    #[error(
        "the node is not part of a cluster: run `vethbpf up --pod-cidr CIDR --cluster-cidr CIDR` first"
    )]
    NoCluster,
    #[error(
        "a cluster needs an IPv4 pod CIDR (remote pod CIDRs and node addresses are IPv4): give --pod-cidr with an IPv4 CIDR"
    )]
    NoIpv4PodCidr,
    #[error(
        "an IPv6 cluster CIDR needs an IPv6 pod CIDR inside it: give --pod-cidr with an IPv6 CIDR too"
    )]
    NoIpv6PodCidr,
    #[error(
        "an IPv6 cluster CIDR comes with an IPv4 one (nodes reach each other over IPv4): give --cluster-cidr with an IPv4 CIDR too"
    )]
    Ipv6ClusterWithoutIpv4,
    #[error(
        "the IPv6 pod CIDR {pod_cidr6} needs a dual-stack cluster: bring the node up with an IPv6 --cluster-cidr too"
    )]
    NoIpv6Cluster { pod_cidr6: Ipv6Net },
    #[error("two {family} cluster CIDRs given ({first} and {second}); give at most one per family")]
    TwoClusterCidrs {
        family: &'static str,
        first: IpNet,
        second: IpNet,
    },
    #[error("two {family} pod CIDRs given ({first} and {second}); give at most one per family")]
    TwoNodeCidrs {
        family: &'static str,
        first: IpNet,
        second: IpNet,
    },
    #[error("a remote node needs an IPv4 pod CIDR (and may have an IPv6 one too)")]
    NoIpv4NodeCidr,
    #[error("node name is empty")]
    EmptyName,
    #[error(
        "node name {name:?} is not valid: use 1 to 63 letters, digits, '-', '_' and '.', starting with a letter or digit"
    )]
    BadName { name: String },
    #[error("node {name} already exists")]
    Duplicate { name: String },
    #[error("no remote node named {name}")]
    NotFound { name: String },
    #[error("the pod CIDR {pod_cidr} is not inside the cluster CIDR {cluster_cidr}")]
    OutsideCluster {
        pod_cidr: IpNet,
        cluster_cidr: IpNet,
    },
    #[error("the pod CIDR {pod_cidr} overlaps this node's own pod CIDR {own}")]
    OverlapsOwn { pod_cidr: IpNet, own: IpNet },
    #[error("the pod CIDR {pod_cidr} overlaps {other_cidr} of node {other}")]
    Overlaps {
        pod_cidr: IpNet,
        other: String,
        other_cidr: IpNet,
    },
    #[error("{address} is this node's own address")]
    OwnAddress { address: Ipv4Addr },
    #[error("{address} is the address of node {other} already")]
    DuplicateAddress { address: Ipv4Addr, other: String },
    #[error("the node address {address} lies inside the cluster CIDR {cluster_cidr}")]
    AddressInCluster {
        address: Ipv4Addr,
        cluster_cidr: ipnet::Ipv4Net,
    },
    #[error("the node address {address} is not a usable unicast address")]
    BadAddress { address: Ipv4Addr },
    #[error(
        "the node address {address} is not on the uplink {uplink}'s network ({nets}); direct routing (--overlay none) needs every node on one L2 network, use --overlay vxlan otherwise"
    )]
    NotOnLink {
        address: Ipv4Addr,
        uplink: String,
        nets: String,
    },
    #[error("the cluster has {max} remote nodes, the most one node supports", max = vethbpf_common::MAX_NODES - 1)]
    TooMany,
    #[error("no uplink: the node has no default route; name one with --uplink")]
    NoDefaultRoute,
    #[error("the uplink {name} does not exist")]
    NoUplink { name: String },
    #[error("the uplink {name} has no IPv4 address; other nodes could not reach this one")]
    UplinkWithoutAddress { name: String },
    #[error(
        "the uplink {name}'s MTU {mtu} leaves no room for pods under a {overhead}-byte overlay"
    )]
    MtuTooSmall {
        name: String,
        mtu: u32,
        overhead: u32,
    },
    #[error(
        "the node is in a cluster as {current}; it has {endpoints} endpoint(s) and {nodes} remote node(s): remove them (or `vethbpf down`) before changing it to {requested}"
    )]
    ClusterChange {
        current: String,
        requested: String,
        endpoints: usize,
        nodes: usize,
    },
    #[error(
        "the node has {endpoints} endpoint(s) with MTU {current}; joining the cluster as asked needs MTU {requested}: delete them first (or `vethbpf down`)"
    )]
    MtuChange {
        current: u32,
        requested: u32,
        endpoints: usize,
    },
    #[error(
        "the interface {name} exists already and is not vethbpf's VXLAN device; remove it or bring the node up without --overlay vxlan"
    )]
    TunnelNameTaken { name: String },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(
        "the pinned datapath has no from_uplink/from_tunnel program (loaded by an older vethbpf): run `vethbpf up --replace` first"
    )]
    ProgramsMissing,
    #[error(transparent)]
    Injected(#[from] crate::fault::Injected),
    #[error(
        "node del {name} stopped after the node's routes were removed ({source}); the next vethbpf command, or `vethbpf reconcile`, finishes it"
    )]
    DelInterrupted {
        name: String,
        #[source]
        source: Box<ClusterError>,
    },
}

impl ClusterError {
    /// What kind of failure this is (see [`crate::error`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClusterError::EmptyName
            | ClusterError::NoIpv4PodCidr
            | ClusterError::NoIpv6PodCidr
            | ClusterError::Ipv6ClusterWithoutIpv4
            | ClusterError::NoIpv6Cluster { .. }
            | ClusterError::TwoClusterCidrs { .. }
            | ClusterError::TwoNodeCidrs { .. }
            | ClusterError::NoIpv4NodeCidr
            | ClusterError::BadName { .. }
            | ClusterError::OutsideCluster { .. }
            | ClusterError::BadAddress { .. }
            | ClusterError::AddressInCluster { .. }
            | ClusterError::NotOnLink { .. }
            | ClusterError::MtuTooSmall { .. } => ErrorKind::Usage,
            ClusterError::NotFound { .. }
            | ClusterError::NoUplink { .. }
            | ClusterError::NoDefaultRoute
            | ClusterError::UplinkWithoutAddress { .. } => ErrorKind::NotFound,
            ClusterError::NotUp | ClusterError::NoCluster | ClusterError::ProgramsMissing => {
                ErrorKind::NotUp
            }
            ClusterError::Duplicate { .. }
            | ClusterError::OverlapsOwn { .. }
            | ClusterError::Overlaps { .. }
            | ClusterError::OwnAddress { .. }
            | ClusterError::DuplicateAddress { .. }
            | ClusterError::TooMany
            | ClusterError::ClusterChange { .. }
            | ClusterError::MtuChange { .. }
            | ClusterError::TunnelNameTaken { .. } => ErrorKind::Conflict,
            ClusterError::Maps(e) => e.kind(),
            ClusterError::Netlink(e) => e.kind(),
            ClusterError::Bpf(e) => e.kind(),
            ClusterError::State(_)
            | ClusterError::Injected(_)
            | ClusterError::DelInterrupted { .. } => ErrorKind::Other,
        }
    }
}
