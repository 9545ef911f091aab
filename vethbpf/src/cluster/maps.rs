//! Typed access to the cluster's pinned maps (CLUSTER, NODES, NODE_STATS,
//! NODE_NEIGH) and to the remote-node entries of ROUTES and ROUTES6, behind [`NodeMaps`] so that node changes are
//! unit-tested with a fake.

use aya::maps::{Array, MapData, MapError, PerCpuArray, PerCpuValues};
use ipnet::{Ipv4Net, Ipv6Net};
use vethbpf_common::{
    ClusterConfig, MAP_CLUSTER, MAP_NODE_NEIGH, MAP_NODE_STATS, MAP_NODES, MAX_NODES, NodeCounter,
    NodeInfo, NodeNeigh, Route,
};

use crate::datapath::Pins;
use crate::datapath::maps::{self, Maps, MapsError};

/// The datapath side of remote nodes.
pub trait NodeMaps {
    fn put_route(&mut self, net: Ipv4Net, route: &Route) -> Result<(), MapsError>;
    /// Deletes a route entry; a missing one is fine.
    fn del_route(&mut self, net: Ipv4Net) -> Result<(), MapsError>;
    fn route_entries(&self) -> Result<Vec<(Ipv4Net, Route)>, MapsError>;
    fn put_route6(&mut self, net: Ipv6Net, route: &Route) -> Result<(), MapsError>;
    /// Deletes an IPv6 route entry; a missing one is fine.
    fn del_route6(&mut self, net: Ipv6Net) -> Result<(), MapsError>;
    fn route6_entries(&self) -> Result<Vec<(Ipv6Net, Route)>, MapsError>;
    /// The MACs of direct-routed IPv6 to node `id` (all zero: none).
    fn put_neigh(&mut self, id: u32, neigh: &NodeNeigh) -> Result<(), MapsError>;
    fn neigh(&self, id: u32) -> Result<NodeNeigh, MapsError>;
    fn put_node(&mut self, id: u32, info: &NodeInfo) -> Result<(), MapsError>;
    fn node(&self, id: u32) -> Result<NodeInfo, MapsError>;
    /// Zeroes a node's counters (before its id is given out again).
    fn reset_node_counters(&mut self, id: u32) -> Result<(), MapsError>;
    /// A node's counters: packets and bytes summed over CPUs, the latest receive
    /// time of any CPU.
    fn node_counters(&self, id: u32) -> Result<NodeCounter, MapsError>;
    fn set_cluster(&mut self, config: &ClusterConfig) -> Result<(), MapsError>;
    fn cluster(&self) -> Result<ClusterConfig, MapsError>;
}

/// An all-zero NODES entry: no node.
pub const NO_NODE: NodeInfo = NodeInfo { ip: 0, _pad: 0 };

/// The pinned maps of a node that is up.
pub struct PinnedNodeMaps {
    maps: Maps,
    cluster: Array<MapData, ClusterConfig>,
    nodes: Array<MapData, NodeInfo>,
    stats: PerCpuArray<MapData, NodeCounter>,
    neigh: Array<MapData, NodeNeigh>,
}

fn op(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Op {
        map,
        op,
        source: Box::new(source),
    }
}

impl PinnedNodeMaps {
    pub fn open(pins: &Pins) -> Result<Self, MapsError> {
        Ok(PinnedNodeMaps {
            maps: Maps::open(pins)?,
            cluster: maps::open(pins, MAP_CLUSTER)?,
            nodes: maps::open(pins, MAP_NODES)?,
            stats: maps::open(pins, MAP_NODE_STATS)?,
            neigh: maps::open(pins, MAP_NODE_NEIGH)?,
        })
    }

    fn ncpus() -> Result<usize, MapsError> {
        aya::util::nr_cpus().map_err(|(_, e)| MapsError::Op {
            map: MAP_NODE_STATS,
            op: "count possible cpus",
            source: Box::new(MapError::IoError(e)),
        })
    }
}

impl NodeMaps for PinnedNodeMaps {
    fn put_route(&mut self, net: Ipv4Net, route: &Route) -> Result<(), MapsError> {
        self.maps.put_route(net, route)
    }
    fn del_route(&mut self, net: Ipv4Net) -> Result<(), MapsError> {
        self.maps.del_route(net)
    }
    fn route_entries(&self) -> Result<Vec<(Ipv4Net, Route)>, MapsError> {
        Ok(self.maps.routes())
    }
    fn put_route6(&mut self, net: Ipv6Net, route: &Route) -> Result<(), MapsError> {
        self.maps.put_route6(net, route)
    }
    fn del_route6(&mut self, net: Ipv6Net) -> Result<(), MapsError> {
        self.maps.del_route6(net)
    }
    fn route6_entries(&self) -> Result<Vec<(Ipv6Net, Route)>, MapsError> {
        Ok(self.maps.routes6())
    }
    fn put_neigh(&mut self, id: u32, neigh: &NodeNeigh) -> Result<(), MapsError> {
        self.neigh
            .set(id, neigh, 0)
            .map_err(op(MAP_NODE_NEIGH, "set"))
    }
    fn neigh(&self, id: u32) -> Result<NodeNeigh, MapsError> {
        self.neigh.get(&id, 0).map_err(op(MAP_NODE_NEIGH, "get"))
    }
    fn put_node(&mut self, id: u32, info: &NodeInfo) -> Result<(), MapsError> {
        self.nodes.set(id, info, 0).map_err(op(MAP_NODES, "set"))
    }
    fn node(&self, id: u32) -> Result<NodeInfo, MapsError> {
        self.nodes.get(&id, 0).map_err(op(MAP_NODES, "get"))
    }
    fn reset_node_counters(&mut self, id: u32) -> Result<(), MapsError> {
        let zeros =
            PerCpuValues::try_from(vec![NodeCounter::default(); Self::ncpus()?]).map_err(|e| {
                MapsError::Op {
                    map: MAP_NODE_STATS,
                    op: "zero",
                    source: Box::new(MapError::IoError(e)),
                }
            })?;
        self.stats
            .set(id, zeros, 0)
            .map_err(op(MAP_NODE_STATS, "set"))
    }
    fn node_counters(&self, id: u32) -> Result<NodeCounter, MapsError> {
        let per_cpu = self.stats.get(&id, 0).map_err(op(MAP_NODE_STATS, "get"))?;
        let mut sum = NodeCounter::default();
        for c in per_cpu.iter() {
            sum.tx_packets += c.tx_packets;
            sum.tx_bytes += c.tx_bytes;
            sum.rx_packets += c.rx_packets;
            sum.rx_bytes += c.rx_bytes;
            sum.tx_last_ns = sum.tx_last_ns.max(c.tx_last_ns);
            sum.rx_last_ns = sum.rx_last_ns.max(c.rx_last_ns);
        }
        Ok(sum)
    }
    fn set_cluster(&mut self, config: &ClusterConfig) -> Result<(), MapsError> {
        self.cluster
            .set(0, config, 0)
            .map_err(op(MAP_CLUSTER, "set"))
    }
    fn cluster(&self) -> Result<ClusterConfig, MapsError> {
        self.cluster.get(&0, 0).map_err(op(MAP_CLUSTER, "get"))
    }
}

/// Node ids run from 1 to `MAX_NODES - 1`.
pub fn id_range() -> std::ops::Range<u32> {
    1..MAX_NODES
}
