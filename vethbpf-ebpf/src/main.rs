//! vethbpf datapath: entry points only, one per attach point (Cilium's bpf_lxc /
//! bpf_host / bpf_overlay). Each hands its context to the library module of its side.
//!
//! - `from_pod` (tc ingress of every host-side veth, sees what the pod sends): [`lxc`]
//!
//! Library modules, one concern each:
//! - [`maps`]: every map, named as in `vethbpf-common`
//! - [`lxc`]: the pod side: endpoint lookup, EtherType dispatch, source check, routing
//! - [`arp`]: answers the pod's ARP requests with the gateway MAC
//! - [`icmp`]: answers the pod's pings to the gateway address
//! - [`ipv4`]: IPv4 header checks and the TTL decrement
//! - [`l3`]: local delivery to another endpoint with `bpf_redirect_peer`
//! - [`lxc6`]: the pod side for IPv6: NDP dispatch, source check, routing
//! - [`ipv6`]: IPv6 header checks, extension headers, the hop limit
//! - [`ndp`]: neighbour discovery: answers solicitations, drops what only routers
//!   and owners may send
//! - [`icmp6`]: answers pings of the gateway's IPv6 address
//! - [`stats`]: the verdict/action pair and per-CPU counters
//! - [`events`]: drop and trace events for `vethbpf monitor`
//! - [`diag`]: rare diagnostics through aya-log
//! - [`hdr`]: network-types header layouts, word accessors, bounds-checked access
#![no_std]
#![no_main]

mod arp;
mod diag;
mod events;
mod hdr;
mod icmp;
mod icmp6;
mod ipv4;
mod ipv6;
mod l3;
mod lxc;
mod lxc6;
mod maps;
mod ndp;
mod stats;

use aya_ebpf::{macros::classifier, programs::TcContext};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    lxc::from_pod(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program (there is no way to panic in BPF), but no_std
    // binaries must have a handler.
    loop {}
}
