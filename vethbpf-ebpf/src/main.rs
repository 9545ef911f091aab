//! vethbpf datapath: entry points only, one per attach point (Cilium's bpf_lxc /
//! bpf_host / bpf_overlay). Each hands its context to the library module of its side.
//!
//! - `from_pod` (tc ingress of every host-side veth, sees what the pod sends): [`lxc`]
//! - `from_uplink` (tc ingress of the node's uplink, sees what arrives at the node):
//!   [`host`]
//! - `from_tunnel` (tc ingress of the VXLAN device, decapsulated frames): [`overlay`]
//!
//! Library modules, one concern each:
//! - [`maps`]: every map, named as in `vethbpf-common`
//! - [`lxc`]: the pod side: endpoint lookup, EtherType dispatch, source check, routing
//! - [`endpoints`]: local endpoints by their veth or address, through their slots
//! - [`arp`]: answers the pod's ARP requests with the gateway MAC
//! - [`icmp`]: answers the pod's pings to the gateway address
//! - [`ipv4`]: IPv4 header checks and the TTL decrement
//! - [`l3`]: local delivery to another endpoint with `bpf_redirect_peer`
//! - [`remote`]: other nodes: sending to their pod CIDRs, checking and delivering
//!   what they send
//! - [`remote6`]: the same for IPv6 pods (over the IPv4 underlay)
//! - [`direct`]: direct routing to a node out of the uplink
//! - [`encap`]: the VXLAN tunnel key, set and read
//! - [`lxc6`]: the pod side for IPv6: NDP dispatch, source check, routing
//! - [`ipv6`]: IPv6 header checks, extension headers, the hop limit
//! - [`ndp`]: neighbour discovery: answers solicitations, drops what only routers
//!   and owners may send
//! - [`icmp6`]: answers pings of the gateway's IPv6 address
//! - [`stats`]: the verdict/action pair and per-CPU counters
//! - [`events`]: drop and trace events for `vethbpf monitor`
//! - [`diag`]: rare diagnostics through aya-log
//! - [`hdr`]: network-types header layouts, word accessors, bounds-checked access
//! - [`egress`]: pod traffic to the outside: classification, tracking, NAT, out
//! - [`host`]: the uplink side: replies and ICMP errors of pod flows into the pod
//! - [`nat`]: NAT mappings (forward/reverse entries, port allocation), rewrite
//! - [`conntrack`]: flow state, timeouts, the pair kept in step, garbage collection
//! - [`family`]: the IPv4 and IPv6 NAT tables the two modules above are generic over
//! - [`egress6`]: IPv6 pod traffic to the outside: classification, NAT, rewrite, out
//! - [`host6`]: the uplink side for IPv6: replies and ICMPv6 errors of pod flows
//! - [`icmp_error`]: ICMP error translation (RFC 5508)
//! - [`icmp6_error`]: ICMPv6 error translation
//! - [`frag`]: ports of fragmented datagrams
//! - [`fib`]: out of the uplink through the kernel's route and neighbour tables
//! - [`l4`]: the IPv4/L4 fields tracking works on
//! - [`csum`]: checksum updates
//! - [`atomic`]: atomic operations on map values
#![no_std]
#![no_main]
// Atomic read-modify-write on map values (see `atomic`): the BPF target spec has no
// compare-and-swap, so only the intrinsics reach the instructions.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod arp;
mod atomic;
mod clock;
mod conntrack;
mod csum;
mod decap;
mod diag;
mod direct;
mod egress;
mod egress6;
mod encap;
mod endpoints;
mod events;
mod family;
mod fib;
mod frag;
mod hdr;
mod host;
mod host6;
mod icmp;
mod icmp6;
mod icmp6_error;
mod icmp6_send;
mod icmp_error;
mod icmp_send;
mod ipv4;
mod ipv6;
mod l3;
mod l4;
mod lxc;
mod lxc6;
mod maps;
mod nat;
mod ndp;
mod overlay;
mod remote;
mod remote6;
mod stats;

use aya_ebpf::{macros::classifier, programs::TcContext};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    lxc::from_pod(&ctx)
}

#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    host::from_uplink(&ctx)
}

#[classifier]
pub fn from_tunnel(ctx: TcContext) -> i32 {
    overlay::from_tunnel(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program (there is no way to panic in BPF), but no_std
    // binaries must have a handler.
    loop {}
}
