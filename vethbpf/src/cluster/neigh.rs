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
    learn_within(nl, uplink, address, RESOLVE_WAIT)
}

fn learn_within(
    nl: &mut dyn Netlink,
    uplink: u32,
    address: Ipv4Addr,
    wait: Duration,
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
    while start.elapsed() < wait {
        std::thread::sleep(POLL);
        if let Some(mac) = nl.neighbour(uplink, address)? {
            return Ok(entry(mac));
        }
    }
    warn!(%address, "no ARP answer from the node: its IPv6 pods stay unreachable until it answers (vethbpf reconcile)");
    Ok(UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::FakeNetlink;

    #[test]
    fn learns_from_the_neighbour_table_and_probes_when_it_has_nothing() {
        let mut nl = FakeNetlink::new();
        let uplink = nl.seed_link("eth0", Some("veth")).unwrap();
        let node = Ipv4Addr::new(192, 168, 77, 2);
        // No entry, nobody answers: probed, then unknown.
        let l2 = learn_within(&mut nl, uplink, node, Duration::ZERO).unwrap();
        assert_eq!(l2, UNKNOWN);
        assert!(nl.calls().iter().any(|c| c.op == "probe_neighbour" && c.ok));
        // An entry: its MAC, with the uplink's, without a probe.
        nl.clear_calls();
        nl.seed_neighbour(uplink, node, [2, 0, 0, 0, 0, 2]);
        let l2 = learn_within(&mut nl, uplink, node, Duration::ZERO).unwrap();
        assert_eq!(l2.mac, [2, 0, 0, 0, 0, 2]);
        let uplink_mac = nl.link_by_index(uplink).unwrap().and_then(|l| l.mac);
        assert_eq!(Some(l2.uplink_mac), uplink_mac.or(Some([0; 6])));
        assert!(!nl.calls().iter().any(|c| c.op == "probe_neighbour"));
        // A missing uplink is an error, not an unknown node.
        assert!(learn_within(&mut nl, 999, node, Duration::ZERO).is_err());
    }
}
