//! What the state file holds: the node config and one record per endpoint.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::ident::MacAddr;
use crate::datapath::AttachMode;

/// The state file's format: 2 is a snapshot with the sequence number of the
/// endpoint log it goes with (`log.rs`); 1, without a log, is read too.
pub(crate) const STATE_VERSION: u32 = 2;
pub(crate) const OLDEST_STATE_VERSION: u32 = 1;

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

/// The whole state: the node and its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub node: Option<NodeConfig>,
    pub endpoints: BTreeMap<String, EndpointRecord>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            node: None,
            endpoints: BTreeMap::new(),
        }
    }
}
