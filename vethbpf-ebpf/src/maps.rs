//! Every map of the datapath, in one place (Cilium keeps its map definitions apart from
//! the programs that use them too): programs and library modules share them, userspace
//! opens them by the names in `vethbpf-common`.
//!
//! The static names are those of the `MAP_*` constants in `vethbpf-common` (an
//! attribute cannot take a constant; a userspace test compares them).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use vethbpf_common::{
    Config, Counter, EVENTS_RING_BYTES, EndpointInfo, FlowKey, FlowSeen, MAX_ENDPOINTS, MAX_ROUTES,
    MAX_TRACE_FLOWS, Monitor, Route, STATS_ENTRIES,
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

/// Drop and trace events for `vethbpf monitor` (see `events`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Whether a monitor listens, for which kinds of event, until when; one entry.
#[map]
pub static MONITOR: Array<Monitor> = Array::with_max_entries(1, 0);

/// Events that found the ring full, per CPU; one entry.
#[map]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Flows a monitor session has been told about: trace events only for the first
/// packet of a flow and the TCP flags it has not shown yet.
#[map]
pub static TRACE_FLOWS: LruHashMap<FlowKey, FlowSeen> =
    LruHashMap::with_max_entries(MAX_TRACE_FLOWS, 0);
