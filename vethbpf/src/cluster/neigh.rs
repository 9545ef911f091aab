//! The Ethernet addresses of direct-routed IPv6 (`NODE_NEIGH`).
//!
//! In direct mode IPv4 leaves with `bpf_redirect_neigh` and the node's address as
//! next hop, and the kernel fills in the MACs. For IPv6 pod traffic that next hop
//! is still the node's IPv4 address, which the helper cannot take for an IPv6
//! packet (see vethbpf-ebpf's direct.rs), so the datapath writes the MACs itself:
//! the remote node's, learnt here from the uplink's neighbour table (ARP resolves
//! it first if needed), and the uplink's own. `node add` learns them, `reconcile`
//! and the agent refresh them (a node whose MAC was not known yet, or changed).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tracing::warn;
use vethbpf_common::NodeNeigh;

use super::ClusterError;
use crate::kernel::netlink::Netlink;
use crate::state::{ClusterState, Overlay, RemoteNode};

/// How long `learn` waits for ARP to resolve a node it had no entry for.
const RESOLVE_WAIT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(20);

/// An entry that addresses no frame: not learnt.
pub const UNKNOWN: NodeNeigh = NodeNeigh {
    mac: [0; 6],
    uplink_mac: [0; 6],
    _pad: [0; 4],
};

/// Whether the datapath needs the MACs of `node`: direct routing of IPv6 pods.
pub fn needed(cluster: &ClusterState, node: &RemoteNode) -> bool {
    cluster.overlay == Overlay::None && node.pod_cidr6.is_some()
}

/// The MACs of a direct-routed frame from this node's uplink to `address`: the
/// kernel's neighbour entry for it, resolved first if there is none. A node that
/// does not answer within [`RESOLVE_WAIT`] gets [`UNKNOWN`] (its IPv6 pods are
/// unreachable until `reconcile` or the agent learns it), not an error: the node
/// may simply not be up yet.
pub fn learn(
    nl: &mut dyn Netlink,
    uplink: u32,
    address: Ipv4Addr,
) -> Result<NodeNeigh, ClusterError> {
    let uplink_mac = nl
        .link_by_index(uplink)?
        .and_then(|l| l.mac)
        .unwrap_or([0; 6]);
    let entry = |mac: [u8; 6]| NodeNeigh {
        mac,
        uplink_mac,
        _pad: [0; 4],
    };
    if let Some(mac) = nl.neighbour(uplink, address)? {
        return Ok(entry(mac));
    }
    nl.probe_neighbour(uplink, address)?;
    let start = Instant::now();
    while start.elapsed() < RESOLVE_WAIT {
        std::thread::sleep(POLL);
        if let Some(mac) = nl.neighbour(uplink, address)? {
            return Ok(entry(mac));
        }
    }
    warn!(%address, "no ARP answer from the node: its IPv6 pods stay unreachable until it answers (vethbpf reconcile)");
    Ok(UNKNOWN)
}
