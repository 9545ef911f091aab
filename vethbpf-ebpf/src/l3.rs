//! Layer-3 delivery to an endpoint on this node (Cilium's `local_delivery`): the
//! router's TTL, the L2 rewrite `bpf_redirect_peer` does not do, and the redirect.

use aya_ebpf::{helpers::bpf_redirect_peer, programs::TcContext};
use vethbpf_common::{Config, Route, Verdict};

use crate::{
    hdr::{EthHdr, Ipv4Hdr, Ipv6Hdr, copy_mac},
    ipv4, ipv6,
    stats::Decision,
};

/// `skb->pkt_type` of a frame addressed to this host (linux/if_packet.h).
const PACKET_HOST: u32 = 0;

/// Routes the IPv4 frame a local pod sent to the local endpoint `route`.
#[inline(always)]
pub fn local_delivery(eth: &mut EthHdr, ip: &mut Ipv4Hdr, route: &Route, cfg: &Config) -> Decision {
    deliver(eth, ip, route, cfg, Verdict::Forward)
}

/// Routes an IPv4 frame that came from another node (off the uplink or out of the
/// tunnel) to the local endpoint `route`.
///
/// Such a frame was addressed to another MAC (the tunnel keeps the sender pod's
/// frame; the uplink's may be any), so the kernel typed it PACKET_OTHERHOST, and
/// before 6.15 `bpf_redirect_peer` keeps the type: the pod's stack would drop it.
/// Cilium's `redirect_ep` does the same. A directly routed frame was addressed to
/// this node's uplink and is PACKET_HOST already: no helper call for it.
#[inline(always)]
pub fn delivery_from_node(
    ctx: &TcContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    route: &Route,
    cfg: &Config,
) -> Decision {
    if !set_host(ctx) {
        return Decision::drop(Verdict::DropMalformed);
    }
    deliver(eth, ip, route, cfg, Verdict::FromNode)
}

/// Makes the frame's packet type PACKET_HOST (see [`delivery_from_node`]); false if
/// the kernel refused.
#[inline(always)]
fn set_host(ctx: &TcContext) -> bool {
    // SAFETY: `ctx.skb.skb` is the program's context pointer, valid for the run.
    let pkt_type = unsafe { (*ctx.skb.skb).pkt_type };
    pkt_type == PACKET_HOST || ctx.change_type(PACKET_HOST).is_ok()
}

#[inline(always)]
fn deliver(
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    route: &Route,
    cfg: &Config,
    verdict: Verdict,
) -> Decision {
    // We are the router in front of the pod: a packet that would expire here is
    // dropped, as ip_forward would (minus the ICMP time exceeded).
    if ip.ttl <= 1 {
        return Decision::drop(Verdict::DropTtl);
    }
    ipv4::decrease_ttl(ip);

    // bpf_redirect_peer does not touch L2: address the frame to the destination pod,
    // from the gateway it believes it is talking to.
    copy_mac(&mut eth.dst_addr, &route.mac);
    copy_mac(&mut eth.src_addr, &cfg.gateway_mac);
    // SAFETY: a plain helper call with valid arguments.
    let action = unsafe { bpf_redirect_peer(route.ifindex, 0) };
    Decision::redirect(verdict, action)
}

/// Routes the IPv6 frame to the local endpoint `route`: the same as IPv4 with the hop
/// limit (no header checksum to patch).
#[inline(always)]
pub fn local_delivery6(
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    route: &Route,
    cfg: &Config,
) -> Decision {
    deliver6(eth, ip, route, cfg, Verdict::Forward)
}

/// Routes an IPv6 frame that came from another node to the local endpoint `route`
/// (the packet type as for IPv4, see [`delivery_from_node`]).
#[inline(always)]
pub fn delivery6_from_node(
    ctx: &TcContext,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    route: &Route,
    cfg: &Config,
) -> Decision {
    if !set_host(ctx) {
        return Decision::drop(Verdict::DropMalformed);
    }
    deliver6(eth, ip, route, cfg, Verdict::FromNode)
}

#[inline(always)]
fn deliver6(
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    route: &Route,
    cfg: &Config,
    verdict: Verdict,
) -> Decision {
    if !ipv6::decrease_hop_limit(ip) {
        return Decision::drop(Verdict::DropTtl);
    }
    copy_mac(&mut eth.dst_addr, &route.mac);
    copy_mac(&mut eth.src_addr, &cfg.gateway_mac);
    // SAFETY: a plain helper call with valid arguments.
    let action = unsafe { bpf_redirect_peer(route.ifindex, 0) };
    Decision::redirect(verdict, action)
}
