//! VXLAN encapsulation through one collect-metadata device (Cilium's encap.h): the
//! sender sets the tunnel key (remote node, VNI) and redirects the frame to the
//! device, which adds the outer headers; the receiver reads the key the device
//! filled in on decapsulation.

use aya_ebpf::{
    bindings::{BPF_F_DONT_FRAGMENT, BPF_F_ZERO_CSUM_TX, bpf_tunnel_key},
    helpers::{bpf_redirect, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use vethbpf_common::{ClusterConfig, Verdict};

use crate::stats::Decision;

/// TTL of the outer header (the inner one is the pods' business).
const OUTER_TTL: u8 = 64;

/// Tunnels the frame to the node at `node_ip` (network order in memory).
#[inline(always)]
pub fn redirect_tunnel(ctx: &TcContext, node_ip: u32, cluster: &ClusterConfig) -> Decision {
    // SAFETY: bpf_tunnel_key is plain old data; zero is "unset" for every field.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = cluster.vni;
    // The helper takes the address in host byte order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(node_ip);
    key.tunnel_ttl = OUTER_TTL;
    // No outer UDP checksum (RFC 7348 allows 0 over IPv4; the inner packet has its
    // own), and DF on the outer header: pods get an MTU that leaves room for the
    // 50 bytes of VXLAN, so nothing needs fragmenting, and a wrong MTU shows as
    // drops instead of silently fragmented traffic.
    let flags = u64::from(BPF_F_ZERO_CSUM_TX | BPF_F_DONT_FRAGMENT);
    // SAFETY: the context pointer is the program's; the key lives on our stack.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            size_of::<bpf_tunnel_key>() as u32,
            flags,
        )
    };
    if rc < 0 {
        return Decision::drop(Verdict::DropNodeUnreachable);
    }
    // SAFETY: a plain helper call with valid arguments.
    let action = unsafe { bpf_redirect(cluster.tunnel_ifindex, 0) };
    Decision::redirect(Verdict::ToNode, action)
}

/// The outer source address (network order in memory) and VNI of a decapsulated
/// frame; `None` if it carries no IPv4 tunnel key.
#[inline(always)]
pub fn tunnel_source(ctx: &TcContext) -> Option<(u32, u32)> {
    // SAFETY: plain old data.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: the context pointer is the program's; the key lives on our stack.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if rc < 0 {
        return None;
    }
    // SAFETY (union read): an IPv4 key (flags 0) fills remote_ipv4, host order.
    let remote = unsafe { key.__bindgen_anon_1.remote_ipv4 };
    Some((remote.to_be(), key.tunnel_id))
}
