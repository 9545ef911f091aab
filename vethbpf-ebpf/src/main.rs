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
//! - [`stats`]: the verdict/action pair and per-CPU counters
//! - [`hdr`]: network-types header layouts, word accessors, bounds-checked access
#![no_std]
#![no_main]

mod arp;
mod hdr;
mod icmp;
mod ipv4;
mod l3;
mod lxc;
mod maps;
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
