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
    Config, Counter, EVENTS_RING_BYTES, EndpointInfo, EndpointInfo6, Event, FlowKey, FlowSeen,
    MAX_ENDPOINTS, MAX_ROUTES, MAX_TRACE_FLOWS, Monitor, Route, STATS_ENTRIES,
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

/// Node configuration, one entry.
#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Counters, index `stats_index(endpoint_id, verdict)`.
#[btf_map]
pub static STATS: PerCpuArray<Counter, { STATS_ENTRIES as usize }> = PerCpuArray::new();

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
