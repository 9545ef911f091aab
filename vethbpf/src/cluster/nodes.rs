//! Remote nodes: `node add`, `node del`, `node list`, and the settling and
//! reconciling of their map entries.
//!
//! A remote node is three map entries: its id's NODES slot (its address), a
//! `ROUTE_KIND_NODE` route for its address (so that receivers know it), and a
//! `ROUTE_KIND_REMOTE` route for its pod CIDR (what makes it reachable, written
//! last and removed first). Changes are journalled and committed like endpoint
//! changes: bad input changes nothing, a failure undoes what was done, an
//! interrupted add is rolled back and an interrupted del finished by the next
//! command.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;
use tracing::warn;
use vethbpf_common::{
    NodeCounter, NodeInfo, ROUTE_KIND_NODE, ROUTE_KIND_REMOTE, Route, ipv4_to_map,
};

use super::ClusterError;
use super::maps::{NO_NODE, NodeMaps, id_range};
use crate::endpoint::Count;
use crate::fault;
use crate::state::{ClusterState, Locked, NodeIntent, NodeOrigin, Overlay, RemoteNode};

/// Longest node name (a host name label, like endpoint names).
pub const NODE_NAME_MAX: usize = 63;

/// A node to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    pub address: Ipv4Addr,
    pub origin: NodeOrigin,
}

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

/// Checks `spec` against the cluster (this node's pod CIDR `own`, the other nodes,
/// and in direct mode the uplink's networks `uplink_nets`); returns the id the node
/// gets. Changes nothing.
pub fn check(
    cluster: &ClusterState,
    own: Ipv4Net,
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
            pod_cidr: cidr,
            cluster_cidr: cluster.cluster_cidr,
        });
    }
    if overlaps(cidr, own) {
        return Err(ClusterError::OverlapsOwn {
            pod_cidr: cidr,
            own,
        });
    }
    if let Some(other) = cluster.nodes.values().find(|n| overlaps(n.pod_cidr, cidr)) {
        return Err(ClusterError::Overlaps {
            pod_cidr: cidr,
            other: other.name.clone(),
            other_cidr: other.pod_cidr,
        });
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

/// The NODES entry of a node.
pub fn info_of(node: &RemoteNode) -> NodeInfo {
    NodeInfo {
        ip: ipv4_to_map(node.address.octets()),
        _pad: 0,
    }
}

/// Writes a node's entries, the pod CIDR route last (it makes the node reachable).
fn install(maps: &mut dyn NodeMaps, node: &RemoteNode) -> Result<(), ClusterError> {
    fault::point("node-add.counters")?;
    maps.reset_node_counters(node.id)?;
    fault::point("node-add.node-map")?;
    maps.put_node(node.id, &info_of(node))?;
    let [(cidr, remote), (addr, known)] = routes_of(node);
    fault::point("node-add.address-route")?;
    maps.put_route(addr, &known)?;
    fault::point("node-add.cidr-route")?;
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
    for ((net, _), point) in routes_of(node)
        .into_iter()
        .zip(["node-del.cidr-route", "node-del.address-route"])
    {
        fault::point(point)?;
        if !owned_routes.contains(&net) {
            maps.del_route(net)?;
        }
    }
    fault::point("node-del.node-map")?;
    if !keep
        .nodes
        .values()
        .any(|n| n.id == node.id && n.name != node.name)
    {
        maps.put_node(node.id, &NO_NODE)?;
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
) -> Result<RemoteNode, ClusterError> {
    finish_pending(maps, locked)?;
    let own = locked
        .state
        .node
        .as_ref()
        .ok_or(ClusterError::NotUp)?
        .pod_cidr
        .ok_or(ClusterError::NoIpv4PodCidr)?;
    let cluster = cluster_of(locked)?;
    let id = check(cluster, own, spec, uplink_nets)?;
    let node = RemoteNode {
        name: spec.name.clone(),
        id,
        pod_cidr: spec.pod_cidr,
        address: spec.address,
        origin: spec.origin,
    };
    fault::point("node-add.intent")?;
    locked.begin_node(&NodeIntent::Add(node.clone()))?;
    let result = install(maps, &node).and_then(|()| {
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
    fault::point("node-del.intent")?;
    locked.begin_node(&NodeIntent::Del(node.clone()))?;
    let keep = cluster.clone();
    if let Err(e) = uninstall(maps, &node, &keep) {
        // Put back what was removed: the node is as it was.
        if let Err(undo) = install(maps, &node) {
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

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Every remote node with its counters.
pub fn list(maps: &dyn NodeMaps, locked: &Locked) -> Result<Vec<NodeView>, ClusterError> {
    let cluster = cluster_of(locked)?;
    let now = monotonic_now_ns();
    cluster
        .nodes
        .values()
        .map(|n| {
            let c = maps.node_counters(n.id)?;
            Ok(NodeView {
                name: n.name.clone(),
                id: n.id,
                pod_cidr: n.pod_cidr,
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
    let ids: BTreeSet<u32> = cluster.nodes.values().map(|n| n.id).collect();
    for id in id_range().filter(|id| !ids.contains(id)) {
        if maps.node(id)? != NO_NODE {
            maps.put_node(id, &NO_NODE)?;
            fixes.push(fix("orphan node map entry removed", &format!("id {id}")));
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
        nodes: BTreeMap<u32, NodeInfo>,
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

    fn spec(name: &str, cidr: &str, addr: [u8; 4]) -> NodeSpec {
        NodeSpec {
            name: name.into(),
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
            pod_cidr6: None,
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
                address: Ipv4Addr::new(192, 168, 77, 2),
                origin: NodeOrigin::Static,
            },
        );
        let err = |s: NodeSpec| check(&c, own, &s, &lan).unwrap_err().to_string();
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
            check(&c, own, &spec("x", "10.244.9.0/24", [10, 0, 0, 9]), &lan).unwrap(),
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
            address: Ipv4Addr::new(192, 168, 77, 2),
            origin: NodeOrigin::Static,
        };
        // An add that died after its entries, before its commit.
        l.begin_node(&NodeIntent::Add(node.clone())).unwrap();
        install(&mut maps, &node).unwrap();
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
