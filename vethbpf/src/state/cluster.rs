//! The cluster part of the state: how this node reaches the other nodes (set by
//! `up --cluster-cidr`), the remote nodes it knows, and the journal of a remote-node
//! change in progress (`node-intent.json`, next to the endpoints' `intent.json`, so
//! that an endpoint change and a node change never wait on each other's recovery).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{Locked, StateError};

/// The journal of the remote-node change in progress (see [`NodeIntent`]).
pub const NODE_INTENT_FILE: &str = "node-intent.json";

/// How pod traffic travels between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlay {
    /// Routed to the node's address on the uplink's network (Flannel's host-gw).
    None,
    /// Tunnelled in VXLAN over any IP network.
    Vxlan,
}

impl Overlay {
    pub const fn name(self) -> &'static str {
        match self {
            Overlay::None => "none",
            Overlay::Vxlan => "vxlan",
        }
    }
}

/// Written by `up --cluster-cidr`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Every node's pod CIDR lies inside it.
    pub cluster_cidr: Ipv4Net,
    /// Every node's IPv6 pod CIDR lies inside it (a dual-stack cluster); IPv6
    /// between nodes is carried over the same IPv4 underlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr6: Option<Ipv6Net>,
    pub overlay: Overlay,
    /// The interface other nodes are reached through, and its index.
    pub uplink: String,
    pub uplink_ifindex: u32,
    /// This node's address on the uplink: what other nodes send to.
    pub node_ip: Ipv4Addr,
    pub uplink_mtu: u32,
    /// The MTU pods get: the uplink's, minus the overlay's headers.
    pub pod_mtu: u32,
    /// The collect-metadata VXLAN device (overlay `vxlan` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanDevice>,
    /// The remote nodes, by name.
    #[serde(default)]
    pub nodes: BTreeMap<String, RemoteNode>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanDevice {
    pub name: String,
    pub ifindex: u32,
    pub vni: u32,
    pub port: u16,
}

/// Who added a remote node: the `node` commands, or `vethbpf agent` from etcd.
/// The agent adds and removes only its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeOrigin {
    #[default]
    Static,
    Etcd,
}

/// A remote node: its pod CIDR is reached through its address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteNode {
    pub name: String,
    /// Index of the node in the NODES and NODE_STATS maps (1..MAX_NODES).
    pub id: u32,
    pub pod_cidr: Ipv4Net,
    /// Its IPv6 pod CIDR, in a dual-stack cluster (reached through the same IPv4
    /// address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    pub address: Ipv4Addr,
    #[serde(default)]
    pub origin: NodeOrigin,
}

/// The remote-node change in progress, written before its first map change and
/// removed after its commit: an `add` found unfinished is rolled back, a `del`
/// finished (as for endpoints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum NodeIntent {
    Add(RemoteNode),
    Del(RemoteNode),
}

impl Locked {
    fn node_intent_path(&self) -> PathBuf {
        self.path.with_file_name(NODE_INTENT_FILE)
    }

    /// The journal of a node change that died halfway, if any.
    pub fn pending_node(&self) -> Result<Option<NodeIntent>, StateError> {
        let path = self.node_intent_path();
        match fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(|source| StateError::CorruptIntent { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    /// Journals `intent` before its first map change (atomically, like the
    /// endpoints' journal).
    pub fn begin_node(&self, intent: &NodeIntent) -> Result<(), StateError> {
        let path = self.node_intent_path();
        let tmp = path.with_extension("json.tmp");
        let werr = |source| StateError::Write {
            path: tmp.clone(),
            source,
        };
        let text = serde_json::to_vec(intent).map_err(|e| werr(e.into()))?;
        fs::write(&tmp, text).map_err(werr)?;
        fs::rename(&tmp, &path).map_err(|source| StateError::Write { path, source })
    }

    /// Clears the node journal.
    pub fn end_node(&self) -> Result<(), StateError> {
        let path = self.node_intent_path();
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StateError::Write { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDir;

    #[test]
    fn node_journal_round_trips_and_clears() {
        let dir = std::env::temp_dir().join(format!("vethbpf-node-intent-{}", std::process::id()));
        let sd = StateDir::new(&dir);
        let l = sd.lock().unwrap();
        assert_eq!(l.pending_node().unwrap(), None);
        let node = RemoteNode {
            name: "b".into(),
            id: 1,
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
            pod_cidr6: Some("fd00:10:244:2::/64".parse().unwrap()),
            address: Ipv4Addr::new(10, 0, 0, 2),
            origin: NodeOrigin::Etcd,
        };
        l.begin_node(&NodeIntent::Add(node.clone())).unwrap();
        assert_eq!(l.pending_node().unwrap(), Some(NodeIntent::Add(node)));
        l.end_node().unwrap();
        assert_eq!(l.pending_node().unwrap(), None);
        sd.remove(l).unwrap();
        assert!(!dir.exists());
    }
}
