//! Every map of the datapath, in one place (Cilium keeps its map definitions apart from
//! the programs that use them too): programs and library modules share them, userspace
//! opens them by the names in `vethbpf-common`.
//!
//! The static names are those of the `MAP_*` constants in `vethbpf-common` (an
//! attribute cannot take a constant; a userspace test compares them).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use vethbpf_common::{
    Config, Counter, EndpointInfo, MAX_ENDPOINTS, MAX_ROUTES, Route, STATS_ENTRIES,
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
