//! vethbpf datapath: the tc ingress program of every host-side veth (`from_pod`, it
//! sees what the pod sends) and the maps it shares with userspace.
//!
//! - [`arp`]: answers the pod's ARP requests with the gateway MAC
//! - [`ipv4`]: source validation, LPM lookup, `bpf_redirect_peer` to local endpoints
//! - [`stats`]: the verdict/action pair and per-CPU counters
//! - [`hdr`]: header layouts and bounds-checked packet access
//!
//! Map names, key and value types come from `vethbpf-common`; the static names below
//! are those of its `MAP_*` constants (an attribute cannot take a constant, a userspace
//! test compares them).
#![no_std]
#![no_main]

mod arp;
mod hdr;
mod ipv4;
mod stats;

use aya_ebpf::{
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
    programs::TcContext,
};
use vethbpf_common::{
    Config, Counter, EndpointInfo, MAX_ENDPOINTS, MAX_ROUTES, Route, STATS_ENTRIES, Verdict,
};

use crate::{
    hdr::{ETH_HLEN, ETH_P_ARP, ETH_P_IP, EthHdr, linear, ptr_at},
    stats::Decision,
};

/// IPv4 destination prefix -> route. aya-ebpf adds BPF_F_NO_PREALLOC, which the kernel
/// requires for LPM tries.
#[map]
static ROUTES: LpmTrie<u32, Route> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

/// Host-side veth ifindex -> the endpoint behind it.
#[map]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Node configuration, one entry.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Counters, index `stats_index(endpoint_id, verdict)`.
#[map]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    // SAFETY: `ctx.skb.skb` is the program's context pointer, valid for the whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: map values are only read, and stay valid for the whole run.
    let ep = unsafe { ENDPOINTS.get(ifindex) };
    let cfg = CONFIG.get(0);
    match (ep, cfg) {
        // An array entry always exists; a zero gateway address means `up` has not
        // written the configuration (0.0.0.0 is never a gateway).
        (Some(ep), Some(cfg)) if cfg.gateway_ip != 0 => {
            let decision = handle(&ctx, ifindex, ep, cfg);
            stats::count(&ctx, ep.id, decision)
        }
        // Not ours (or not configured): forwarding it anywhere would skip source
        // validation, so drop and count it under the reserved endpoint id 0.
        _ => stats::count(&ctx, 0, Decision::drop(Verdict::DropNoEndpoint)),
    }
}

/// Dispatches on the EtherType.
#[inline(always)]
fn handle(ctx: &TcContext, ifindex: u32, ep: &EndpointInfo, cfg: &Config) -> Decision {
    let Some((data, data_end)) = linear(ctx, ETH_HLEN) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    let Some(eth) = ptr_at::<EthHdr>(data, data_end, 0) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    // SAFETY: bounds-checked just above.
    let ether_type = unsafe { (*eth).ether_type };
    match ether_type {
        ETH_P_IP => ipv4::handle(ctx, ep, cfg),
        ETH_P_ARP => arp::handle(ctx, ifindex, ep, cfg),
        // IPv6, VLAN-tagged and everything else: the node stack's business.
        _ => Decision::pass(),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program (there is no way to panic in BPF), but no_std
    // binaries must have a handler.
    loop {}
}
