//! Remote nodes: `node add`, `node del`, `node list`, and the settling and
//! reconciling of their map entries.
//!
//! A remote node is three map entries: its id's NODES slot (its address), a
//! `ROUTE_KIND_NODE` route for its address (so that receivers know it), and a
//! `ROUTE_KIND_REMOTE` route for its pod CIDR (what makes it reachable, written
//! last and removed first); in a dual-stack cluster also a `ROUTE_KIND_REMOTE`
//! entry of ROUTES6 for its IPv6 pod CIDR (written and removed with the IPv4 one),
//! and with direct routing its MACs in NODE_NEIGH (see [`super::neigh`]). Changes are journalled and committed like endpoint
//! changes: bad input changes nothing, a failure undoes what was done, an
//! interrupted add is rolled back and an interrupted del finished by the next
//! command.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;
use tracing::warn;
use vethbpf_common::{
    NodeCounter, NodeInfo, NodeNeigh, ROUTE_KIND_NODE, ROUTE_KIND_REMOTE, Route, ipv4_to_map,
};

use super::ClusterError;
use super::maps::{NO_NODE, NodeMaps, id_range};
use super::neigh;
use crate::endpoint::Count;
use crate::fault;
use crate::kernel::clock::monotonic_ns;
use crate::state::{ClusterState, Locked, NodeIntent, NodeOrigin, Overlay, RemoteNode};

/// Longest node name (a host name label, like endpoint names).
pub const NODE_NAME_MAX: usize = 63;

/// A node to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    /// Its IPv6 pod CIDR (dual-stack clusters).
    pub pod_cidr6: Option<Ipv6Net>,
    pub address: Ipv4Addr,
    pub origin: NodeOrigin,
}

/// Learns the MACs of direct-routed IPv6 to a node that is about to be added (see
/// [`super::neigh::learn`]); only called when [`super::neigh::needed`].
pub type Learn<'a> = dyn FnMut(&ClusterState, &RemoteNode) -> Result<NodeNeigh, ClusterError> + 'a;

/// 1 to 63 of `[A-Za-z0-9_.-]`, starting with a letter or digit (host names fit).
pub fn validate_name(name: &str) -> Result<(), ClusterError> {
    let first = name.chars().next().ok_or(ClusterError::EmptyName)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.len() > NODE_NAME_MAX || !first.is_ascii_alphanumeric() || !name.chars().all(allowed) {
        return Err(ClusterError::BadName {
            name: name.to_string(),
        });
    }
    Ok(())
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn overlaps6(a: Ipv6Net, b: Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Checks a node's IPv6 pod CIDR: a dual-stack cluster, inside its IPv6 cluster
/// CIDR, overlapping neither this node's (`own6`) nor another node's.
fn check6(
    cluster: &ClusterState,
    own6: Option<Ipv6Net>,
    name: &str,
    cidr: Ipv6Net,
) -> Result<(), ClusterError> {
    let Some(cluster6) = cluster.cluster_cidr6 else {
        return Err(ClusterError::NoIpv6Cluster { pod_cidr6: cidr });
    };
    if !cluster6.contains(&cidr) {
        return Err(ClusterError::OutsideCluster {
            pod_cidr: cidr.into(),
            cluster_cidr: cluster6.into(),
        });
    }
    if let Some(own) = own6.filter(|own| overlaps6(cidr, *own)) {
        return Err(ClusterError::OverlapsOwn {
            pod_cidr: cidr.into(),
            own: own.into(),
        });
    }
    if let Some((other, other_cidr)) = cluster
        .nodes
        .values()
        .filter(|n| n.name != name)
        .find_map(|n| n.pod_cidr6.filter(|c| overlaps6(*c, cidr)).map(|c| (n, c)))
    {
        return Err(ClusterError::Overlaps {
            pod_cidr: cidr.into(),
            other: other.name.clone(),
            other_cidr: other_cidr.into(),
        });
    }
    Ok(())
}

/// Checks `spec` against the cluster (this node's pod CIDRs `own` and `own6`, the
/// other nodes, and in direct mode the uplink's networks `uplink_nets`); returns
/// the id the node gets. Changes nothing.
pub fn check(
    cluster: &ClusterState,
    own: Ipv4Net,
    own6: Option<Ipv6Net>,
    spec: &NodeSpec,
    uplink_nets: &[Ipv4Net],
) -> Result<u32, ClusterError> {
    validate_name(&spec.name)?;
    if cluster.nodes.contains_key(&spec.name) {
        return Err(ClusterError::Duplicate {
            name: spec.name.clone(),
        });
    }
    let cidr = spec.pod_cidr;
    if !cluster.cluster_cidr.contains(&cidr) {
        return Err(ClusterError::OutsideCluster {
            pod_cidr: cidr.into(),
            cluster_cidr: cluster.cluster_cidr.into(),
        });
    }
    if overlaps(cidr, own) {
        return Err(ClusterError::OverlapsOwn {
            pod_cidr: cidr.into(),
            own: own.into(),
        });
    }
    if let Some(other) = cluster.nodes.values().find(|n| overlaps(n.pod_cidr, cidr)) {
        return Err(ClusterError::Overlaps {
            pod_cidr: cidr.into(),
            other: other.name.clone(),
            other_cidr: other.pod_cidr.into(),
        });
    }
    if let Some(cidr6) = spec.pod_cidr6 {
        check6(cluster, own6, &spec.name, cidr6)?;
    }
    let address = spec.address;
    if address.is_unspecified()
        || address.is_loopback()
        || address.is_multicast()
        || address.is_broadcast()
    {
        return Err(ClusterError::BadAddress { address });
    }
    if address == cluster.node_ip {
        return Err(ClusterError::OwnAddress { address });
    }
    if cluster.cluster_cidr.contains(&address) {
        return Err(ClusterError::AddressInCluster {
            address,
            cluster_cidr: cluster.cluster_cidr,
        });
    }
    if let Some(other) = cluster.nodes.values().find(|n| n.address == address) {
        return Err(ClusterError::DuplicateAddress {
            address,
            other: other.name.clone(),
        });
    }
    if cluster.overlay == Overlay::None && !uplink_nets.iter().any(|n| n.contains(&address)) {
        return Err(ClusterError::NotOnLink {
            address,
            uplink: cluster.uplink.clone(),
            nets: if uplink_nets.is_empty() {
                "no address".into()
            } else {
                uplink_nets
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    }
    let used: BTreeSet<u32> = cluster.nodes.values().map(|n| n.id).collect();
    id_range()
        .find(|id| !used.contains(id))
        .ok_or(ClusterError::TooMany)
}

/// The ROUTES entries of a node: its pod CIDR and its own address.
pub fn routes_of(node: &RemoteNode) -> [(Ipv4Net, Route); 2] {
    let route = |kind| Route {
        kind,
        ifindex: 0,
        endpoint_id: node.id,
        mac: [0; 6],
        _pad: [0; 2],
    };
    [
        (node.pod_cidr, route(ROUTE_KIND_REMOTE)),
        (Ipv4Net::from(node.address), route(ROUTE_KIND_NODE)),
    ]
}

/// The ROUTES6 entry of a node's IPv6 pod CIDR, if it has one.
pub fn route6_of(node: &RemoteNode) -> Option<(Ipv6Net, Route)> {
    node.pod_cidr6.map(|cidr| {
        (
            cidr,
            Route {
                kind: ROUTE_KIND_REMOTE,
                ifindex: 0,
                endpoint_id: node.id,
                mac: [0; 6],
                _pad: [0; 2],
            },
        )
    })
}

/// The NODES entry of a node.
pub fn info_of(node: &RemoteNode) -> NodeInfo {
    NodeInfo {
        ip: ipv4_to_map(node.address.octets()),
        _pad: 0,
    }
}

/// Writes a node's entries, the pod CIDR routes last (they make the node
/// reachable).
fn install(maps: &mut dyn NodeMaps, node: &RemoteNode, l2: &NodeNeigh) -> Result<(), ClusterError> {
    fault::point("node-add.counters")?;
    maps.reset_node_counters(node.id)?;
    fault::point("node-add.node-map")?;
    maps.put_node(node.id, &info_of(node))?;
    maps.put_neigh(node.id, l2)?;
    let [(cidr, remote), (addr, known)] = routes_of(node);
    fault::point("node-add.address-route")?;
    maps.put_route(addr, &known)?;
    fault::point("node-add.cidr-route")?;
    if let Some((cidr6, remote6)) = route6_of(node) {
        maps.put_route6(cidr6, &remote6)?;
    }
    maps.put_route(cidr, &remote)?;
    Ok(())
}

/// Removes a node's entries, the pod CIDR route first (nothing is sent to it any
/// more), leaving those that `keep` (the recorded nodes) own.
fn uninstall(
    maps: &mut dyn NodeMaps,
    node: &RemoteNode,
    keep: &ClusterState,
) -> Result<(), ClusterError> {
    let owned_routes: BTreeSet<Ipv4Net> = keep
        .nodes
        .values()
        .filter(|n| n.name != node.name)
        .flat_map(|n| routes_of(n).map(|(net, _)| net))
        .collect();
    let owned_routes6: BTreeSet<Ipv6Net> = keep
        .nodes
        .values()
        .filter(|n| n.name != node.name)
        .filter_map(|n| n.pod_cidr6)
        .collect();
    for ((net, _), point) in routes_of(node)
        .into_iter()
        .zip(["node-del.cidr-route", "node-del.address-route"])
    {
        fault::point(point)?;
        if !owned_routes.contains(&net) {
            maps.del_route(net)?;
        }
        // The IPv6 pod CIDR goes with the IPv4 one: nothing is sent to the node.
        if point == "node-del.cidr-route"
            && let Some(cidr6) = node.pod_cidr6.filter(|c| !owned_routes6.contains(c))
        {
            maps.del_route6(cidr6)?;
        }
    }
    fault::point("node-del.node-map")?;
    if !keep
        .nodes
        .values()
        .any(|n| n.id == node.id && n.name != node.name)
    {
        maps.put_node(node.id, &NO_NODE)?;
        maps.put_neigh(node.id, &neigh::UNKNOWN)?;
    }
    Ok(())
}

fn cluster_of(locked: &Locked) -> Result<&ClusterState, ClusterError> {
    if locked.state.node.is_none() {
        return Err(ClusterError::NotUp);
    }
    locked.state.cluster.as_ref().ok_or(ClusterError::NoCluster)
}

fn cluster_mut(locked: &mut Locked) -> Result<&mut ClusterState, ClusterError> {
    locked.state.cluster.as_mut().ok_or(ClusterError::NoCluster)
}

/// Adds a remote node; on failure nothing of it remains.
pub fn add(
    maps: &mut dyn NodeMaps,
    locked: &mut Locked,
    spec: &NodeSpec,
    uplink_nets: &[Ipv4Net],
    learn: &mut Learn<'_>,
) -> Result<RemoteNode, ClusterError> {
    finish_pending(maps, locked)?;
    let own_node = locked.state.node.as_ref().ok_or(ClusterError::NotUp)?;
    let own = own_node.pod_cidr.ok_or(ClusterError::NoIpv4PodCidr)?;
    let own6 = own_node.pod_cidr6;
    let cluster = cluster_of(locked)?;
    let id = check(cluster, own, own6, spec, uplink_nets)?;
    let node = RemoteNode {
        name: spec.name.clone(),
        id,
        pod_cidr: spec.pod_cidr,
        pod_cidr6: spec.pod_cidr6,
        address: spec.address,
        origin: spec.origin,
    };
    // Before the journal: learning changes nothing of ours (ARP fills the kernel's
    // cache, as any packet to the node would).
    let l2 = if neigh::needed(cluster, &node) {
        learn(cluster, &node)?
    } else {
        neigh::UNKNOWN
    };
    fault::point("node-add.intent")?;
    locked.begin_node(&NodeIntent::Add(node.clone()))?;
    let result = install(maps, &node, &l2).and_then(|()| {
        fault::point("node-add.commit")?;
        cluster_mut(locked)?
            .nodes
            .insert(node.name.clone(), node.clone());
        if let Err(e) = locked.save() {
            cluster_mut(locked)?.nodes.remove(&node.name);
            return Err(e.into());
        }
        Ok(())
    });
    if result.is_err() {
        let keep = cluster_of(locked)?.clone();
        if let Err(e) = uninstall(maps, &node, &keep) {
            warn!(node = %node.name, error = %e, "rolling back node add");
        }
    }
    if let Err(e) = fault::point("node-add.done")
        .map_err(ClusterError::from)
        .and_then(|()| Ok(locked.end_node()?))
    {
        warn!(error = %e, "cannot clear the node journal; the next command will");
    }
    result.map(|()| node)
}

/// Deletes a remote node: nothing is routed to it, and it is no longer accepted
/// as a sender.
pub fn del(
    maps: &mut dyn NodeMaps,
    locked: &mut Locked,
    name: &str,
) -> Result<RemoteNode, ClusterError> {
    match locked.pending_node()? {
        // `node del NAME` again after a del of NAME died: finishing it is the answer.
        Some(NodeIntent::Del(node)) if node.name == name => {
            settle(maps, locked, NodeIntent::Del(node.clone()))?;
            return Ok(node);
        }
        Some(intent) => {
            settle(maps, locked, intent)?;
        }
        None => {}
    }
    let cluster = cluster_of(locked)?;
    let node = cluster
        .nodes
        .get(name)
        .cloned()
        .ok_or_else(|| ClusterError::NotFound {
            name: name.to_string(),
        })?;
    let l2 = maps.neigh(node.id)?;
    fault::point("node-del.intent")?;
    locked.begin_node(&NodeIntent::Del(node.clone()))?;
    let keep = cluster.clone();
    if let Err(e) = uninstall(maps, &node, &keep) {
        // Put back what was removed: the node is as it was.
        if let Err(undo) = install(maps, &node, &l2) {
            warn!(node = %node.name, error = %undo, "cannot restore the node's entries");
        }
        if let Err(end) = locked.end_node() {
            warn!(error = %end, "cannot clear the node journal");
        }
        return Err(e);
    }
    // From here the entries are gone: a failure leaves the journal, and the next
    // command finishes the del.
    let interrupted = |source: ClusterError| ClusterError::DelInterrupted {
        name: name.to_string(),
        source: Box::new(source),
    };
    fault::point("node-del.commit").map_err(|e| interrupted(e.into()))?;
    cluster_mut(locked)?.nodes.remove(name);
    if let Err(e) = locked.save() {
        cluster_mut(locked)?
            .nodes
            .insert(node.name.clone(), node.clone());
        return Err(interrupted(e.into()));
    }
    if let Err(e) = fault::point("node-del.done")
        .map_err(ClusterError::from)
        .and_then(|()| Ok(locked.end_node()?))
    {
        warn!(error = %e, "cannot clear the node journal; the next command will");
    }
    Ok(node)
}

/// How the journal of an interrupted node change was settled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settled {
    /// `add` or `del`.
    pub op: &'static str,
    pub name: String,
    /// `rolled back` or `completed`.
    pub outcome: &'static str,
}

/// Settles the journal of a node change that died halfway (cheap when there is
/// none): an uncommitted add is rolled back, a del finished.
pub fn finish_pending(
    maps: &mut dyn NodeMaps,
    locked: &mut Locked,
) -> Result<Option<Settled>, ClusterError> {
    match locked.pending_node()? {
        Some(intent) => settle(maps, locked, intent).map(Some),
        None => Ok(None),
    }
}

fn settle(
    maps: &mut dyn NodeMaps,
    locked: &mut Locked,
    intent: NodeIntent,
) -> Result<Settled, ClusterError> {
    let empty = ClusterState {
        nodes: Default::default(),
        ..placeholder()
    };
    let settled = match intent {
        NodeIntent::Add(node) => {
            let keep = locked.state.cluster.clone().unwrap_or(empty);
            let committed = keep.nodes.get(&node.name) == Some(&node);
            if !committed {
                uninstall(maps, &node, &keep)?;
            }
            Settled {
                op: "add",
                name: node.name,
                outcome: if committed {
                    "completed"
                } else {
                    "rolled back"
                },
            }
        }
        NodeIntent::Del(node) => {
            let mut keep = locked.state.cluster.clone().unwrap_or(empty);
            keep.nodes.remove(&node.name);
            uninstall(maps, &node, &keep)?;
            if let Some(cluster) = locked.state.cluster.as_mut()
                && cluster.nodes.get(&node.name) == Some(&node)
            {
                cluster.nodes.remove(&node.name);
                if let Err(e) = locked.save() {
                    if let Some(c) = locked.state.cluster.as_mut() {
                        c.nodes.insert(node.name.clone(), node.clone());
                    }
                    return Err(e.into());
                }
            }
            Settled {
                op: "del",
                name: node.name,
                outcome: "completed",
            }
        }
    };
    locked.end_node()?;
    warn!(
        op = settled.op,
        node = %settled.name,
        outcome = settled.outcome,
        "settled a node change that was interrupted"
    );
    Ok(settled)
}

/// A cluster with no nodes, for settling a journal after the cluster config is
/// gone (`down` died halfway): only the node list matters then.
fn placeholder() -> ClusterState {
    ClusterState {
        cluster_cidr: Ipv4Net::default(),
        cluster_cidr6: None,
        overlay: Overlay::None,
        uplink: String::new(),
        uplink_ifindex: 0,
        node_ip: Ipv4Addr::UNSPECIFIED,
        uplink_mtu: 0,
        pod_mtu: 0,
        vxlan: None,
        nodes: Default::default(),
    }
}

/// How long without a packet from a node before `node list` stops calling it
/// reachable.
pub const REACHABLE_WINDOW_NS: u64 = 60_000_000_000;
/// How much older than the last send the last answer may be before `node list`
/// says the node does not reply.
pub const NO_REPLY_AFTER_NS: u64 = 5_000_000_000;

/// A remote node as `node list` and `status` show it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeView {
    pub name: String,
    pub id: u32,
    pub pod_cidr: Ipv4Net,
    /// Its IPv6 pod CIDR (`null`: none).
    pub pod_cidr6: Option<Ipv6Net>,
    pub address: Ipv4Addr,
    pub origin: NodeOrigin,
    pub sent: Count,
    pub received: Count,
    /// Seconds since the last packet from the node was delivered; `None`: never.
    pub last_received_secs: Option<f64>,
    /// `no reply` (sent to within the last minute, and nothing came from it in the
    /// 5 s before the last send, or ever), `reachable` (a packet came from it within
    /// the last minute), or `idle`.
    pub reachability: &'static str,
}

/// Reachability from the counters at monotonic time `now_ns`.
pub fn reachability(c: &NodeCounter, now_ns: u64) -> &'static str {
    let ago = |t: u64| (t != 0).then(|| now_ns.saturating_sub(t));
    let rx = ago(c.rx_last_ns);
    let tx = ago(c.tx_last_ns);
    match (tx, rx) {
        (Some(tx), rx)
            if tx < REACHABLE_WINDOW_NS
                && c.tx_last_ns > c.rx_last_ns.saturating_add(NO_REPLY_AFTER_NS)
                && rx.is_none_or(|r| r > NO_REPLY_AFTER_NS) =>
        {
            "no reply"
        }
        (_, Some(rx)) if rx < REACHABLE_WINDOW_NS => "reachable",
        _ => "idle",
    }
}

/// Every remote node with its counters.
pub fn list(maps: &dyn NodeMaps, locked: &Locked) -> Result<Vec<NodeView>, ClusterError> {
    let cluster = cluster_of(locked)?;
    let now = monotonic_ns();
    cluster
        .nodes
        .values()
        .map(|n| {
            let c = maps.node_counters(n.id)?;
            Ok(NodeView {
                name: n.name.clone(),
                id: n.id,
                pod_cidr: n.pod_cidr,
                pod_cidr6: n.pod_cidr6,
                address: n.address,
                origin: n.origin,
                sent: Count {
                    packets: c.tx_packets,
                    bytes: c.tx_bytes,
                },
                received: Count {
                    packets: c.rx_packets,
                    bytes: c.rx_bytes,
                },
                last_received_secs: (c.rx_last_ns != 0)
                    .then(|| now.saturating_sub(c.rx_last_ns) as f64 / 1e9),
                reachability: reachability(&c, now),
            })
        })
        .collect()
}

/// One change `reconcile` made to the remote-node entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeFix {
    pub what: String,
    pub name: String,
}

/// Makes the maps hold exactly the recorded nodes' entries (after settling the
/// journal): missing or wrong entries are put back, remote-node entries no record
/// owns are removed. Local endpoint routes are the endpoints' business.
pub fn reconcile(
    maps: &mut dyn NodeMaps,
    locked: &mut Locked,
) -> Result<Vec<NodeFix>, ClusterError> {
    let mut fixes = Vec::new();
    if let Some(s) = finish_pending(maps, locked)? {
        fixes.push(NodeFix {
            what: format!("interrupted node {}: {}", s.op, s.outcome),
            name: s.name,
        });
    }
    let Some(cluster) = locked.state.cluster.clone() else {
        return Ok(fixes);
    };
    let fix = |what: &str, name: &str| NodeFix {
        what: what.to_string(),
        name: name.to_string(),
    };
    let entries: std::collections::BTreeMap<Ipv4Net, Route> =
        maps.route_entries()?.into_iter().collect();
    let mut owned = BTreeSet::new();
    for node in cluster.nodes.values() {
        if maps.node(node.id)? != info_of(node) {
            maps.put_node(node.id, &info_of(node))?;
            fixes.push(fix("node map entry", &node.name));
        }
        for (net, route) in routes_of(node) {
            owned.insert(net);
            if entries.get(&net) != Some(&route) {
                maps.put_route(net, &route)?;
                fixes.push(fix("route map entry", &node.name));
            }
        }
    }
    for (net, route) in &entries {
        let remote = route.kind == ROUTE_KIND_REMOTE || route.kind == ROUTE_KIND_NODE;
        if remote && !owned.contains(net) {
            maps.del_route(*net)?;
            fixes.push(fix("orphan route map entry removed", &net.to_string()));
        }
    }
    let entries6: std::collections::BTreeMap<Ipv6Net, Route> =
        maps.route6_entries()?.into_iter().collect();
    let mut owned6 = BTreeSet::new();
    for node in cluster.nodes.values() {
        if let Some((net, route)) = route6_of(node) {
            owned6.insert(net);
            if entries6.get(&net) != Some(&route) {
                maps.put_route6(net, &route)?;
                fixes.push(fix("IPv6 route map entry", &node.name));
            }
        }
    }
    for (net, route) in &entries6 {
        if route.kind == ROUTE_KIND_REMOTE && !owned6.contains(net) {
            maps.del_route6(*net)?;
            fixes.push(fix("orphan IPv6 route map entry removed", &net.to_string()));
        }
    }
    let ids: BTreeSet<u32> = cluster.nodes.values().map(|n| n.id).collect();
    for id in id_range().filter(|id| !ids.contains(id)) {
        if maps.node(id)? != NO_NODE {
            maps.put_node(id, &NO_NODE)?;
            fixes.push(fix("orphan node map entry removed", &format!("id {id}")));
        }
        if maps.neigh(id)? != neigh::UNKNOWN {
            maps.put_neigh(id, &neigh::UNKNOWN)?;
            fixes.push(fix("orphan neighbour entry removed", &format!("id {id}")));
        }
    }
    Ok(fixes)
}

/// Brings every recorded node's MACs for direct-routed IPv6 up to date (a node
/// whose ARP answer came late, or whose MAC changed); clears those no node needs.
/// `only_missing`: leave the nodes whose MACs are known alone (the agent's retry,
/// cheap when all are known); `reconcile` checks them all.
pub fn refresh_neigh(
    maps: &mut dyn NodeMaps,
    locked: &Locked,
    only_missing: bool,
    learn: &mut Learn<'_>,
) -> Result<Vec<NodeFix>, ClusterError> {
    let mut fixes = Vec::new();
    let Some(cluster) = &locked.state.cluster else {
        return Ok(fixes);
    };
    for node in cluster.nodes.values() {
        let have = maps.neigh(node.id)?;
        let needed = neigh::needed(cluster, node);
        if only_missing && needed && have != neigh::UNKNOWN {
            continue;
        }
        let want = if needed {
            match learn(cluster, node)? {
                // Not answering now: keep what was learnt before.
                l2 if l2 == neigh::UNKNOWN => have,
                l2 => l2,
            }
        } else {
            neigh::UNKNOWN
        };
        if want != have {
            maps.put_neigh(node.id, &want)?;
            fixes.push(NodeFix {
                what: "neighbour MACs".into(),
                name: node.name.clone(),
            });
        }
    }
    Ok(fixes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::datapath::AttachMode;
    use crate::datapath::maps::MapsError;
    use crate::state::ident::MacAddr;
    use crate::state::{NodeConfig, StateDir};
    use vethbpf_common::ClusterConfig;

    /// The maps in memory; `fail_route` makes the nth put_route fail.
    #[derive(Default)]
    struct FakeMaps {
        routes: BTreeMap<Ipv4Net, Route>,
        routes6: BTreeMap<Ipv6Net, Route>,
        nodes: BTreeMap<u32, NodeInfo>,
        neigh: BTreeMap<u32, NodeNeigh>,
        puts: usize,
        fail_route: Option<usize>,
    }

    fn injected() -> MapsError {
        MapsError::Op {
            map: "ROUTES",
            op: "insert",
            source: Box::new(aya::maps::MapError::KeyNotFound),
        }
    }

    impl NodeMaps for FakeMaps {
        fn put_route(&mut self, net: Ipv4Net, route: &Route) -> Result<(), MapsError> {
            self.puts += 1;
            if self.fail_route == Some(self.puts) {
                return Err(injected());
            }
            self.routes.insert(net, *route);
            Ok(())
        }
        fn del_route(&mut self, net: Ipv4Net) -> Result<(), MapsError> {
            self.routes.remove(&net);
            Ok(())
        }
        fn route_entries(&self) -> Result<Vec<(Ipv4Net, Route)>, MapsError> {
            Ok(self.routes.iter().map(|(n, r)| (*n, *r)).collect())
        }
        fn put_route6(&mut self, net: Ipv6Net, route: &Route) -> Result<(), MapsError> {
            self.routes6.insert(net, *route);
            Ok(())
        }
        fn del_route6(&mut self, net: Ipv6Net) -> Result<(), MapsError> {
            self.routes6.remove(&net);
            Ok(())
        }
        fn route6_entries(&self) -> Result<Vec<(Ipv6Net, Route)>, MapsError> {
            Ok(self.routes6.iter().map(|(n, r)| (*n, *r)).collect())
        }
        fn put_neigh(&mut self, id: u32, l2: &NodeNeigh) -> Result<(), MapsError> {
            if *l2 == neigh::UNKNOWN {
                self.neigh.remove(&id);
            } else {
                self.neigh.insert(id, *l2);
            }
            Ok(())
        }
        fn neigh(&self, id: u32) -> Result<NodeNeigh, MapsError> {
            Ok(self.neigh.get(&id).copied().unwrap_or(neigh::UNKNOWN))
        }
        fn put_node(&mut self, id: u32, info: &NodeInfo) -> Result<(), MapsError> {
            if *info == NO_NODE {
                self.nodes.remove(&id);
            } else {
                self.nodes.insert(id, *info);
            }
            Ok(())
        }
        fn node(&self, id: u32) -> Result<NodeInfo, MapsError> {
            Ok(self.nodes.get(&id).copied().unwrap_or(NO_NODE))
        }
        fn reset_node_counters(&mut self, _id: u32) -> Result<(), MapsError> {
            Ok(())
        }
        fn node_counters(&self, _id: u32) -> Result<NodeCounter, MapsError> {
            Ok(NodeCounter::default())
        }
        fn set_cluster(&mut self, _config: &ClusterConfig) -> Result<(), MapsError> {
            Ok(())
        }
        fn cluster(&self) -> Result<ClusterConfig, MapsError> {
            Err(injected())
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn cluster(overlay: Overlay) -> ClusterState {
        ClusterState {
            cluster_cidr: net("10.244.0.0/16"),
            cluster_cidr6: Some(net6("fd00:10:244::/48")),
            overlay,
            uplink: "eth0".into(),
            uplink_ifindex: 2,
            node_ip: Ipv4Addr::new(192, 168, 77, 1),
            uplink_mtu: 1500,
            pod_mtu: 1500,
            vxlan: None,
            nodes: Default::default(),
        }
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    /// The MACs the fake learns for every node.
    const L2: NodeNeigh = NodeNeigh {
        mac: [2, 0, 0, 0, 0, 2],
        uplink_mac: [2, 0, 0, 0, 0, 1],
        _pad: [0; 4],
    };

    fn learn() -> impl FnMut(&ClusterState, &RemoteNode) -> Result<NodeNeigh, ClusterError> {
        |_, _| Ok(L2)
    }

    fn spec(name: &str, cidr: &str, addr: [u8; 4]) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            pod_cidr6: None,
            pod_cidr: net(cidr),
            address: Ipv4Addr::from(addr),
            origin: NodeOrigin::Static,
        }
    }

    fn locked_node(dir: &std::path::Path) -> (StateDir, Locked) {
        let sd = StateDir::new(dir);
        let mut l = sd.lock().unwrap();
        l.state.node = Some(NodeConfig {
            pod_cidr: Some(net("10.244.1.0/24")),
            pod_cidr6: Some(net6("fd00:10:244:1::/64")),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            gateway_mac: MacAddr::GATEWAY,
            bpffs_dir: "/nonexistent".into(),
            bpffs_mount: None,
            attach_mode: AttachMode::Tcx,
            pod_attach: AttachMode::Tc,
            egress: None,
        });
        l.state.cluster = Some(cluster(Overlay::None));
        l.save().unwrap();
        (sd, l)
    }

    fn tempdir(what: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("vethbpf-nodes-{what}-{}", std::process::id()))
    }

    #[test]
    fn check_names_every_bad_input() {
        let own = net("10.244.1.0/24");
        let lan = [net("192.168.77.0/24")];
        let mut c = cluster(Overlay::None);
        c.nodes.insert(
            "b".into(),
            RemoteNode {
                name: "b".into(),
                id: 1,
                pod_cidr: net("10.244.2.0/24"),
                pod_cidr6: None,
                address: Ipv4Addr::new(192, 168, 77, 2),
                origin: NodeOrigin::Static,
            },
        );
        let err = |s: NodeSpec| check(&c, own, None, &s, &lan).unwrap_err().to_string();
        assert!(err(spec("", "10.244.9.0/24", [192, 168, 77, 9])).contains("empty"));
        assert!(err(spec("-x", "10.244.9.0/24", [192, 168, 77, 9])).contains("not valid"));
        assert!(err(spec("b", "10.244.9.0/24", [192, 168, 77, 9])).contains("already exists"));
        assert!(err(spec("x", "10.9.0.0/24", [192, 168, 77, 9])).contains("not inside"));
        assert!(err(spec("x", "10.244.0.0/23", [192, 168, 77, 9])).contains("own pod CIDR"));
        assert!(err(spec("x", "10.244.2.64/26", [192, 168, 77, 9])).contains("of node b"));
        assert!(err(spec("x", "10.244.9.0/24", [224, 0, 0, 1])).contains("usable"));
        assert!(err(spec("x", "10.244.9.0/24", [192, 168, 77, 1])).contains("own address"));
        assert!(err(spec("x", "10.244.9.0/24", [10, 244, 200, 1])).contains("inside the cluster"));
        assert!(err(spec("x", "10.244.9.0/24", [192, 168, 77, 2])).contains("of node b"));
        assert!(err(spec("x", "10.244.9.0/24", [10, 0, 0, 9])).contains("not on the uplink"));
        // The same address is fine through a tunnel, and the next free id is 2.
        c.overlay = Overlay::Vxlan;
        assert_eq!(
            check(
                &c,
                own,
                None,
                &spec("x", "10.244.9.0/24", [10, 0, 0, 9]),
                &lan
            )
            .unwrap(),
            2
        );
    }

    #[test]
    fn add_writes_three_entries_and_del_removes_them() {
        let dir = tempdir("add-del");
        let (sd, mut l) = locked_node(&dir);
        let mut maps = FakeMaps::default();
        let lan = [net("192.168.77.0/24")];
        let node = add(
            &mut maps,
            &mut l,
            &spec("b", "10.244.2.0/24", [192, 168, 77, 2]),
            &lan,
            &mut learn(),
        )
        .unwrap();
        assert_eq!(node.id, 1);
        assert_eq!(maps.routes.len(), 2);
        assert_eq!(maps.routes[&net("10.244.2.0/24")].kind, ROUTE_KIND_REMOTE);
        assert_eq!(maps.routes[&net("192.168.77.2/32")].kind, ROUTE_KIND_NODE);
        assert_eq!(maps.nodes[&1], info_of(&node));
        assert!(l.pending_node().unwrap().is_none());
        assert!(sd.read().unwrap().cluster.unwrap().nodes.contains_key("b"));

        del(&mut maps, &mut l, "b").unwrap();
        assert!(maps.routes.is_empty() && maps.nodes.is_empty());
        assert!(sd.read().unwrap().cluster.unwrap().nodes.is_empty());
        assert!(matches!(
            del(&mut maps, &mut l, "b"),
            Err(ClusterError::NotFound { .. })
        ));
        sd.remove(l).unwrap();
    }

    #[test]
    fn a_failing_add_leaves_nothing() {
        let dir = tempdir("fail");
        let (sd, mut l) = locked_node(&dir);
        let before = sd.read().unwrap();
        let lan = [net("192.168.77.0/24")];
        for nth in 1..=2 {
            let mut maps = FakeMaps {
                fail_route: Some(nth),
                ..Default::default()
            };
            let r = add(
                &mut maps,
                &mut l,
                &spec("b", "10.244.2.0/24", [192, 168, 77, 2]),
                &lan,
                &mut learn(),
            );
            assert!(r.is_err(), "put_route #{nth}");
            assert!(maps.routes.is_empty() && maps.nodes.is_empty(), "#{nth}");
            assert_eq!(sd.read().unwrap(), before);
            assert!(l.pending_node().unwrap().is_none());
        }
        sd.remove(l).unwrap();
    }

    #[test]
    fn an_interrupted_add_is_rolled_back_and_a_del_finished() {
        let dir = tempdir("settle");
        let (sd, mut l) = locked_node(&dir);
        let mut maps = FakeMaps::default();
        let node = RemoteNode {
            name: "b".into(),
            id: 1,
            pod_cidr: net("10.244.2.0/24"),
            pod_cidr6: None,
            address: Ipv4Addr::new(192, 168, 77, 2),
            origin: NodeOrigin::Static,
        };
        // An add that died after its entries, before its commit.
        l.begin_node(&NodeIntent::Add(node.clone())).unwrap();
        install(&mut maps, &node, &neigh::UNKNOWN).unwrap();
        let s = finish_pending(&mut maps, &mut l).unwrap().unwrap();
        assert_eq!((s.op, s.outcome), ("add", "rolled back"));
        assert!(maps.routes.is_empty() && maps.nodes.is_empty());

        // A del that died after removing the pod CIDR route.
        let lan = [net("192.168.77.0/24")];
        let node = add(
            &mut maps,
            &mut l,
            &spec("b", "10.244.2.0/24", [192, 168, 77, 2]),
            &lan,
            &mut learn(),
        )
        .unwrap();
        l.begin_node(&NodeIntent::Del(node.clone())).unwrap();
        maps.del_route(node.pod_cidr).unwrap();
        let s = finish_pending(&mut maps, &mut l).unwrap().unwrap();
        assert_eq!((s.op, s.outcome), ("del", "completed"));
        assert!(maps.routes.is_empty() && maps.nodes.is_empty());
        assert!(sd.read().unwrap().cluster.unwrap().nodes.is_empty());
        sd.remove(l).unwrap();
    }

    #[test]
    fn reconcile_puts_back_and_removes() {
        let dir = tempdir("reconcile");
        let (sd, mut l) = locked_node(&dir);
        let mut maps = FakeMaps::default();
        let lan = [net("192.168.77.0/24")];
        add(
            &mut maps,
            &mut l,
            &spec("b", "10.244.2.0/24", [192, 168, 77, 2]),
            &lan,
            &mut learn(),
        )
        .unwrap();
        maps.routes.remove(&net("10.244.2.0/24"));
        let stray = Route {
            kind: ROUTE_KIND_REMOTE,
            ifindex: 0,
            endpoint_id: 7,
            mac: [0; 6],
            _pad: [0; 2],
        };
        maps.routes.insert(net("10.244.7.0/24"), stray);
        maps.nodes.insert(7, NodeInfo { ip: 1, _pad: 0 });
        let fixes = reconcile(&mut maps, &mut l).unwrap();
        assert_eq!(fixes.len(), 3, "{fixes:?}");
        assert_eq!(maps.routes.len(), 2);
        assert!(maps.routes.contains_key(&net("10.244.2.0/24")));
        assert_eq!(maps.nodes.len(), 1);
        assert!(reconcile(&mut maps, &mut l).unwrap().is_empty());
        sd.remove(l).unwrap();
    }

    fn spec6(name: &str, cidr: &str, cidr6: &str, addr: [u8; 4]) -> NodeSpec {
        NodeSpec {
            pod_cidr6: Some(net6(cidr6)),
            ..spec(name, cidr, addr)
        }
    }

    #[test]
    fn a_dual_stack_node_gets_its_ipv6_route_and_macs_and_del_takes_them() {
        let dir = tempdir("dual");
        let (sd, mut l) = locked_node(&dir);
        let mut maps = FakeMaps::default();
        let lan = [net("192.168.77.0/24")];
        let b = spec6(
            "b",
            "10.244.2.0/24",
            "fd00:10:244:2::/64",
            [192, 168, 77, 2],
        );
        let node = add(&mut maps, &mut l, &b, &lan, &mut learn()).unwrap();
        let r6 = maps.routes6[&net6("fd00:10:244:2::/64")];
        assert_eq!((r6.kind, r6.endpoint_id), (ROUTE_KIND_REMOTE, node.id));
        assert_eq!(maps.neigh[&node.id], L2, "direct routing learns the MACs");
        let stored = sd.read().unwrap().cluster.unwrap().nodes["b"].clone();
        assert_eq!(stored.pod_cidr6, Some(net6("fd00:10:244:2::/64")));

        // Bad IPv6 input, each named, nothing written.
        let err = |s: NodeSpec, l: &mut Locked, maps: &mut FakeMaps| {
            add(maps, l, &s, &lan, &mut learn())
                .unwrap_err()
                .to_string()
        };
        let c = |cidr6| spec6("c", "10.244.3.0/24", cidr6, [192, 168, 77, 3]);
        assert!(err(c("fd00:99::/64"), &mut l, &mut maps).contains("not inside"));
        assert!(err(c("fd00:10:244:1::/80"), &mut l, &mut maps).contains("own pod CIDR"));
        assert!(err(c("fd00:10:244:2:1::/80"), &mut l, &mut maps).contains("of node b"));
        assert_eq!(maps.routes6.len(), 1);

        del(&mut maps, &mut l, "b").unwrap();
        assert!(maps.routes6.is_empty() && maps.neigh.is_empty() && maps.routes.is_empty());

        // Through a tunnel nothing needs the MACs: none are learnt.
        l.state.cluster.as_mut().unwrap().overlay = Overlay::Vxlan;
        let mut never = |_: &ClusterState, _: &RemoteNode| -> Result<NodeNeigh, ClusterError> {
            panic!("learnt MACs for a tunnelled node")
        };
        add(&mut maps, &mut l, &b, &lan, &mut never).unwrap();
        assert_eq!(maps.routes6.len(), 1);
        assert!(maps.neigh.is_empty());

        // An IPv4-only cluster takes no IPv6 pod CIDR.
        l.state.cluster.as_mut().unwrap().cluster_cidr6 = None;
        assert!(
            err(c("fd00:10:244:3::/64"), &mut l, &mut maps).contains("needs a dual-stack cluster")
        );
        sd.remove(l).unwrap();
    }

    #[test]
    fn refresh_neigh_learns_late_answers_and_keeps_known_macs() {
        let dir = tempdir("refresh");
        let (sd, mut l) = locked_node(&dir);
        let mut maps = FakeMaps::default();
        let lan = [net("192.168.77.0/24")];
        let b = spec6(
            "b",
            "10.244.2.0/24",
            "fd00:10:244:2::/64",
            [192, 168, 77, 2],
        );
        // The node did not answer ARP when it was added.
        let mut silent = |_: &ClusterState, _: &RemoteNode| Ok(neigh::UNKNOWN);
        let node = add(&mut maps, &mut l, &b, &lan, &mut silent).unwrap();
        assert!(maps.neigh.is_empty());
        // Still silent: nothing to fix.
        assert!(
            refresh_neigh(&mut maps, &l, false, &mut silent)
                .unwrap()
                .is_empty()
        );
        // It answers now.
        let fixes = refresh_neigh(&mut maps, &l, false, &mut learn()).unwrap();
        assert_eq!(fixes.len(), 1, "{fixes:?}");
        assert_eq!(maps.neigh[&node.id], L2);
        // The agent's retry leaves a known node alone.
        let mut never = |_: &ClusterState, _: &RemoteNode| -> Result<NodeNeigh, ClusterError> {
            panic!("asked about a node whose MACs are known")
        };
        assert!(
            refresh_neigh(&mut maps, &l, true, &mut never)
                .unwrap()
                .is_empty()
        );
        // Silent again: what was learnt stays.
        assert!(
            refresh_neigh(&mut maps, &l, false, &mut silent)
                .unwrap()
                .is_empty()
        );
        assert_eq!(maps.neigh[&node.id], L2);
        // A stray entry for an id no node has goes with reconcile.
        maps.neigh.insert(9, L2);
        let fixes = reconcile(&mut maps, &mut l).unwrap();
        assert_eq!(fixes.len(), 1, "{fixes:?}");
        assert!(!maps.neigh.contains_key(&9));
        sd.remove(l).unwrap();
    }

    #[test]
    fn reachability_follows_the_last_packets() {
        let s = 1_000_000_000;
        let c = |tx: u64, rx: u64| NodeCounter {
            tx_last_ns: tx,
            rx_last_ns: rx,
            ..Default::default()
        };
        let now = 1000 * s;
        assert_eq!(reachability(&c(0, 0), now), "idle");
        assert_eq!(reachability(&c(now - s, now - s), now), "reachable");
        assert_eq!(reachability(&c(now - s, 0), now), "no reply");
        assert_eq!(
            reachability(&c(now - s, now - 3 * s), now),
            "reachable",
            "an answer 2 s before the last send is recent enough"
        );
        assert_eq!(reachability(&c(now - s, now - 30 * s), now), "no reply");
        assert_eq!(reachability(&c(now - 90 * s, now - 90 * s), now), "idle");
    }
}
