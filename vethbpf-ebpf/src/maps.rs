//! Every map of the datapath, in one place (Cilium keeps its map definitions apart from
//! the programs that use them too): programs and library modules share them, userspace
//! opens them by the names in `vethbpf-common`.
//!
//! The static names are those of the `MAP_*` constants in `vethbpf-common` (an
//! attribute cannot take a constant; a userspace test compares them).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use vethbpf_common::EndpointInfo6;
use vethbpf_common::{
    ClusterConfig, Config, Counter, EgressConfig, EndpointInfo, FRAG_ENTRIES, FragEntry, FragKey,
    MAX_EGRESS_SKIP, MAX_ENDPOINTS, MAX_NODES, MAX_ROUTES, NAT_MAX_FLOWS_DEFAULT, NatEntry, NatKey,
    NatState, NodeCounter, NodeInfo, Route, STATS_ENTRIES, nat_map_capacity,
};

/// IPv4 destination prefix -> route. aya-ebpf adds BPF_F_NO_PREALLOC, which the kernel
/// requires for LPM tries.
#[map]
pub static ROUTES: LpmTrie<u32, Route> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

/// Host-side veth ifindex -> the endpoint behind it.
#[map]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Node configuration, one entry.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Counters, index `stats_index(endpoint_id, verdict)`.
#[map]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

/// Egress configuration (uplink, NAT address and ports, flow limit), one entry.
#[map]
pub static EGRESS: Array<EgressConfig> = Array::with_max_entries(1, 0);

/// Destinations pods reach without egress: node addresses, the cluster CIDR.
#[map]
pub static EGRESS_SKIP: LpmTrie<u32, u32> = LpmTrie::with_max_entries(MAX_EGRESS_SKIP, 0);

/// Connection tracking and NAT: the forward and the reverse entry of every pod flow.
/// `up` sizes it for its flow limit (this is the default).
#[map]
pub static NAT: LruHashMap<NatKey, NatEntry> =
    LruHashMap::with_max_entries(nat_map_capacity(NAT_MAX_FLOWS_DEFAULT), 0);

/// The NAT table's flow count and garbage-collection state, one entry.
#[map]
pub static NAT_STATE: Array<NatState> = Array::with_max_entries(1, 0);

/// The ports of fragmented datagrams, from their first fragment.
#[map]
pub static FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(FRAG_ENTRIES, 0);

/// How this node reaches the others, one entry (all zero: no cluster).
#[map]
pub static CLUSTER: Array<ClusterConfig> = Array::with_max_entries(1, 0);

/// Node id -> the remote node's underlay address.
#[map]
pub static NODES: Array<NodeInfo> = Array::with_max_entries(MAX_NODES, 0);

/// Node id -> traffic exchanged with that node.
#[map]
pub static NODE_STATS: PerCpuArray<NodeCounter> = PerCpuArray::with_max_entries(MAX_NODES, 0);

/// IPv6 destination prefix -> route. The key's data is the address in network order,
/// read as four words in memory order (userspace writes `[u8; 16]`: same bytes).
#[map]
pub static ROUTES6: LpmTrie<[u32; 4], Route> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

/// Host-side veth ifindex -> the IPv6 addresses of the endpoint behind it, for
/// endpoints that have IPv6.
#[map]
pub static ENDPOINTS6: HashMap<u32, EndpointInfo6> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);
