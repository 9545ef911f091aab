//! What the state file holds: the node config, one record per endpoint, and the
//! cluster part (see `cluster.rs`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::ident::MacAddr;
use crate::datapath::AttachMode;
use crate::egress::Egress;

/// The state file's format: 2 is a snapshot with the sequence number of the
/// endpoint log it goes with (`log.rs`); 1, without a log, is read too.
pub(crate) const STATE_VERSION: u32 = 2;
pub(crate) const OLDEST_STATE_VERSION: u32 = 1;

/// Written by `up`. At least one of the pod CIDRs is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "NodeConfigFile")]
pub struct NodeConfig {
    /// The IPv4 pod CIDR; `None` on an IPv6-only node.
    #[serde(default)]
    pub pod_cidr: Option<Ipv4Net>,
    /// The IPv6 pod CIDR; `None` on an IPv4-only node (and in state files written
    /// before IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    /// The pods' IPv4 gateway. Also written into the datapath config on an
    /// IPv6-only node, where it is simply unused.
    pub gateway: Ipv4Addr,
    pub gateway_mac: MacAddr,
    pub bpffs_dir: PathBuf,
    /// Where `up` mounted a bpffs (`bpffs_dir` or /sys/fs/bpf), so that `down`
    /// unmounts it; `None` if one was there already.
    pub bpffs_mount: Option<PathBuf>,
    /// How the node's own programs are attached (`from_uplink` on the uplink,
    /// `from_tunnel` on the VXLAN device): TCX where the kernel has it.
    pub attach_mode: AttachMode,
    /// How `from_pod` is attached to each pod's host veth (`up --pod-attach`).
    /// State files of versions that had one mode for everything have none: their
    /// pods have the node's `attach_mode`.
    pub pod_attach: AttachMode,
    /// Pod egress, as `up` set it up; `None`: off (no uplink). Absent in the state
    /// files of versions without egress, which read as off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
}

/// [`NodeConfig`] as the state file holds it: `pod_attach` may be missing.
#[derive(Deserialize)]
struct NodeConfigFile {
    #[serde(default)]
    pod_cidr: Option<Ipv4Net>,
    #[serde(default)]
    pod_cidr6: Option<Ipv6Net>,
    gateway: Ipv4Addr,
    gateway_mac: MacAddr,
    bpffs_dir: PathBuf,
    bpffs_mount: Option<PathBuf>,
    attach_mode: AttachMode,
    #[serde(default)]
    pod_attach: Option<AttachMode>,
    #[serde(default)]
    egress: Option<Egress>,
}

impl From<NodeConfigFile> for NodeConfig {
    fn from(f: NodeConfigFile) -> Self {
        NodeConfig {
            pod_cidr: f.pod_cidr,
            pod_cidr6: f.pod_cidr6,
            gateway: f.gateway,
            gateway_mac: f.gateway_mac,
            bpffs_dir: f.bpffs_dir,
            bpffs_mount: f.bpffs_mount,
            attach_mode: f.attach_mode,
            pod_attach: f.pod_attach.unwrap_or(f.attach_mode),
            egress: f.egress,
        }
    }
}

impl NodeConfig {
    /// The pods' IPv6 gateway: the link-local address of the gateway MAC (the
    /// EUI-64 one, as Calico), which every host-side veth of an IPv6 node carries.
    pub fn gateway6(&self) -> Ipv6Addr {
        self.gateway_mac.link_local()
    }
}

/// One endpoint ("pod").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub name: String,
    /// Index of the endpoint's counters (1..MAX_ENDPOINTS).
    pub id: u32,
    /// The pod's IPv4 address, if the node has an IPv4 pod CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The pod's IPv6 address, if the node has an IPv6 pod CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
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

impl EndpointRecord {
    /// The pod's link-local address: vethbpf gives an IPv6 pod the EUI-64 one of
    /// its MAC (and no other), so the datapath knows it.
    pub fn link_local(&self) -> Ipv6Addr {
        self.pod_mac.link_local()
    }
}

/// The whole state: the node, its endpoints and its cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub node: Option<NodeConfig>,
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// Set by `up --cluster-cidr`: other nodes and how to reach them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<super::ClusterState>,
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
