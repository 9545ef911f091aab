//! Every map of the datapath, in one place (Cilium keeps its map definitions apart from
//! the programs that use them too): programs and library modules share them, userspace
//! opens them by the names in `vethbpf-common`.
//!
//! The static names are those of the `MAP_*` constants in `vethbpf-common` (an
//! attribute cannot take a constant; a userspace test compares them).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use vethbpf_common::{
    ClusterConfig, Config, Counter, ENDPOINT_ADDRS_ENTRIES, EVENTS_RING_BYTES, EgressConfig,
    EgressConfig6, EndpointInfo, EndpointInfo6, EndpointSlot, Event, FRAG_ENTRIES, FlowKey,
    FlowSeen, FragEntry, FragKey, MAX_EGRESS_SKIP, MAX_ENDPOINTS, MAX_NODES, MAX_ROUTES,
    MAX_TRACE_FLOWS, Monitor, NAT_MAX_FLOWS_DEFAULT, NatEntry, NatEntry6, NatKey, NatKey6,
    NatScratch, NatState, NodeCounter, NodeInfo, NodeNeigh, Route, STATS_ENTRIES, UplinkMtu,
    nat_map_capacity,
};

// BTF map definitions (the `.maps` section, as libbpf's): the kernel gets the key and
// value types of each map, so `bpftool map dump` and other BPF tools show field
// names and values instead of hex.

/// IPv4 destination prefix -> route. LPM tries need BPF_F_NO_PREALLOC (the type's
/// default flags).
#[btf_map]
pub static ROUTES: LpmTrie<u32, Route, { MAX_ROUTES as usize }> = LpmTrie::new();

/// Host-side veth ifindex -> the endpoint behind it.
#[btf_map]
pub static ENDPOINTS: HashMap<u32, EndpointInfo, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// Endpoint id -> the endpoint and its host veth: `ENDPOINTS` again, for `from_pod`
/// to find through its filter's classid (an array read, where the hash lookup is
/// the dearest part of a pod's forwarded frame in place).
#[btf_map]
pub static ENDPOINT_SLOTS: Array<EndpointSlot, { MAX_ENDPOINTS as usize }> = Array::new();

/// A local endpoint's IPv4 address (its last two bytes,
/// `vethbpf_common::endpoint_addr_index`) -> its endpoint id, 0 for none: the way
/// from an address to the endpoint's slot, written with its `ROUTES` /32.
#[btf_map]
pub static ENDPOINT_ADDRS: Array<u32, { ENDPOINT_ADDRS_ENTRIES as usize }> = Array::new();

/// Node configuration, one entry.
#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Counters, index `stats_index(endpoint_id, verdict)`.
#[btf_map]
pub static STATS: PerCpuArray<Counter, { STATS_ENTRIES as usize }> = PerCpuArray::new();

/// Egress configuration (uplink, NAT address and ports, flow limit), one entry.
#[btf_map]
pub static EGRESS: Array<EgressConfig, 1> = Array::new();

/// Destinations pods reach without egress: node addresses, the cluster CIDR.
#[btf_map]
pub static EGRESS_SKIP: LpmTrie<u32, u32, { MAX_EGRESS_SKIP as usize }> = LpmTrie::new();

/// Connection tracking and NAT: the forward and the reverse entry of every pod flow.
/// `up` sizes it for its flow limit (this is the default).
#[btf_map]
pub static NAT: LruHashMap<NatKey, NatEntry, { nat_map_capacity(NAT_MAX_FLOWS_DEFAULT) as usize }> =
    LruHashMap::new();

/// IPv6 egress configuration (`EGRESS` for IPv6), one entry.
#[btf_map]
pub static EGRESS6: Array<EgressConfig6, 1> = Array::new();

/// IPv6 destinations pods reach without egress: node addresses, pod and cluster CIDR.
#[btf_map]
pub static EGRESS_SKIP6: LpmTrie<[u32; 4], u32, { MAX_EGRESS_SKIP as usize }> = LpmTrie::new();

/// `NAT` for IPv6 flows; its flows count against the same limit (`NAT_STATE`).
#[btf_map]
pub static NAT6: LruHashMap<
    NatKey6,
    NatEntry6,
    { nat_map_capacity(NAT_MAX_FLOWS_DEFAULT) as usize },
> = LruHashMap::new();

/// Room for what the NAT works on that is too large for the stack (see `nat`), per
/// CPU: a new flow's port search, and one key/entry pair.
#[btf_map]
pub static NAT_SCRATCH: PerCpuArray<NatScratch, 2> = PerCpuArray::new();

/// The uplink's MTU as last asked, per CPU; one entry (see `fib`).
#[btf_map]
pub static UPLINK_MTU: PerCpuArray<UplinkMtu, 1> = PerCpuArray::new();

/// The NAT table's flow count and garbage-collection state, one entry.
#[btf_map]
pub static NAT_STATE: Array<NatState, 1> = Array::new();

/// The ports of fragmented datagrams, from their first fragment.
#[btf_map]
pub static FRAGS: LruHashMap<FragKey, FragEntry, { FRAG_ENTRIES as usize }> = LruHashMap::new();

/// How this node reaches the others, one entry (all zero: no cluster).
#[btf_map]
pub static CLUSTER: Array<ClusterConfig, 1> = Array::new();

/// Node id -> the remote node's underlay address.
#[btf_map]
pub static NODES: Array<NodeInfo, { MAX_NODES as usize }> = Array::new();

/// Node id -> traffic exchanged with that node.
#[btf_map]
pub static NODE_STATS: PerCpuArray<NodeCounter, { MAX_NODES as usize }> = PerCpuArray::new();

/// Node id -> the MACs of a direct-routed IPv6 packet to that node.
#[btf_map]
pub static NODE_NEIGH: Array<NodeNeigh, { MAX_NODES as usize }> = Array::new();

/// IPv6 destination prefix -> route. The key's data is the address in network order,
/// read as four words in memory order (userspace writes `[u8; 16]`: same bytes).
#[btf_map]
pub static ROUTES6: LpmTrie<[u32; 4], Route, { MAX_ROUTES as usize }> = LpmTrie::new();

/// Host-side veth ifindex -> the IPv6 addresses of the endpoint behind it, for
/// endpoints that have IPv6.
#[btf_map]
pub static ENDPOINTS6: HashMap<u32, EndpointInfo6, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// Drop and trace events for `vethbpf monitor` (see `events`).
#[btf_map]
pub static EVENTS: RingBuf<Event, { EVENTS_RING_BYTES as usize }> = RingBuf::new();

/// Whether a monitor listens, for which kinds of event, until when; one entry.
#[btf_map]
pub static MONITOR: Array<Monitor, 1> = Array::new();

/// Events that found the ring full, per CPU; one entry.
#[btf_map]
pub static EVENTS_LOST: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Flows a monitor session has been told about: trace events only for the first
/// packet of a flow and the TCP flags it has not shown yet.
#[btf_map]
pub static TRACE_FLOWS: LruHashMap<FlowKey, FlowSeen, { MAX_TRACE_FLOWS as usize }> =
    LruHashMap::new();
