//! What `from_tunnel` does with a decapsulated frame (Cilium's bpf_overlay): only a
//! known node may send through the tunnel, only from its own pods, and only to
//! endpoints on this node; everything else is dropped and counted.

use aya_ebpf::programs::TcContext;
use vethbpf_common::{CLUSTER_MODE_VXLAN, Verdict};

use crate::{
    encap,
    hdr::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, ipv4_addr, linear, ptr_at},
    ipv4,
    maps::{CLUSTER, CONFIG},
    remote, remote6,
    stats::{self, Decision},
};

/// The whole of `from_tunnel`: decides, counts, and returns the tc action.
#[inline(always)]
pub fn from_tunnel(ctx: &TcContext) -> i32 {
    let seen = stats::Seen::of(ctx);
    let (endpoint, decision) = handle(ctx, encap::tunnel_source);
    stats::count(ctx, seen, endpoint, decision)
}

/// The decision and the endpoint id to count it under: the local endpoint the
/// frame is for (so a pod's counters show who tried to reach it), else 0.
/// `tunnel` gives the outer source address and VNI (the device's tunnel key, or
/// the headers `decap` took off).
#[inline(always)]
pub fn handle(
    ctx: &TcContext,
    tunnel: impl FnOnce(&TcContext) -> Option<(u32, u32)>,
) -> (u32, Decision) {
    let Some((data, data_end)) = linear(ctx, ETH_HLEN + size_of::<Ipv4Hdr>()) else {
        return (0, Decision::drop(Verdict::DropMalformed));
    };
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(data, data_end, 0),
        ptr_at::<Ipv4Hdr>(data, data_end, ETH_HLEN),
    ) else {
        return (0, Decision::drop(Verdict::DropMalformed));
    };
    // SAFETY: both pointers were bounds-checked against data_end just above, and no
    // helper that changes packet data runs while they are in use.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    // Nodes tunnel IPv4 and IPv6 between pods, nothing else (no ARP or NDP: the
    // gateway is answered on each side).
    if eth.ether_type == ETH_P_IPV6 {
        return remote6::from_tunnel(ctx);
    }
    if eth.ether_type != ETH_P_IP {
        return (0, Decision::drop(Verdict::DropUnknownDestination));
    }
    let Some(hdr_len) = ipv4::valid_header_len(ctx, ip) else {
        return (0, Decision::drop(Verdict::DropMalformed));
    };
    let Some(dst) = remote::local_endpoint(ipv4_addr(&ip.dst_addr)) else {
        return (0, Decision::drop(Verdict::DropUnknownDestination));
    };
    let endpoint = dst.endpoint_id;
    // Options need a router that processes them: the node stack's (as from a pod).
    if hdr_len != 20 {
        return (endpoint, Decision::pass());
    }
    if !ipv4::checksum_ok(ip) {
        return (endpoint, Decision::drop(Verdict::DropCsum));
    }

    let Some((outer_src, vni)) = tunnel(ctx) else {
        return (endpoint, Decision::drop(Verdict::DropMalformed));
    };
    let (Some(cluster), Some(cfg)) = (CLUSTER.get(0), CONFIG.get(0)) else {
        return (endpoint, Decision::drop(Verdict::DropUnknownSource));
    };
    if cluster.mode != CLUSTER_MODE_VXLAN || vni != cluster.vni {
        return (endpoint, Decision::drop(Verdict::DropUnknownSource));
    }
    let Some(node_id) =
        remote::tunnel_sender(remote::source_node(ipv4_addr(&ip.src_addr)), outer_src)
    else {
        return (endpoint, Decision::drop(Verdict::DropUnknownSource));
    };
    (
        endpoint,
        remote::deliver_from_node(ctx, eth, ip, &dst, node_id, cfg),
    )
}
