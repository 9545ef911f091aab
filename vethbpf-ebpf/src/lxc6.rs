//! IPv6 from a pod (the IPv6 half of Cilium's bpf_lxc, kept apart from [`crate::lxc`]
//! as ipv4/ipv6 are): header checks, neighbour discovery, source validation, and the
//! route lookup that picks a delivery.

use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use vethbpf_common::{Config, ROUTE_KIND_LOCAL, ROUTE_KIND_REMOTE, Verdict};

use crate::{
    egress6,
    hdr::{ETH_HLEN, EthHdr, Ipv6Hdr, linear, ptr_at},
    icmp6, icmp6_send,
    ipv6::{self, IPV6_HLEN, NEXTHDR_ICMPV6, load_addr},
    l3,
    maps::{ENDPOINTS6, ROUTES6},
    ndp::{self, Source},
    remote6,
    stats::Decision,
};

/// Handles an IPv6 frame sent by the endpoint behind the host veth `ifindex`.
#[inline(always)]
pub fn handle(ctx: &TcContext, ifindex: u32, cfg: &Config) -> Decision {
    // SAFETY: map values are only read, and stay valid for the whole run.
    let ep6 = unsafe { ENDPOINTS6.get(ifindex) };

    let Some((data, data_end)) = linear(ctx, ETH_HLEN + IPV6_HLEN) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(data, data_end, 0),
        ptr_at::<Ipv6Hdr>(data, data_end, ETH_HLEN),
    ) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    // SAFETY: both pointers were bounds-checked against data_end just above; the
    // helpers called while they are in use (map lookups, bpf_skb_load_bytes) do not
    // change packet data, and the NDP path, which may, does not return to them.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };

    let Some(end) = ipv6::packet_end(ctx, ip) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    let Some(l4) = ipv6::upper_layer(ctx, ip, end) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    let src = load_addr(&ip.src_addr);
    let source = ndp::source_of(&src, ep6);

    // Link-local control traffic is recognised whole, never in fragments.
    if l4.proto == NEXTHDR_ICMPV6 && !l4.fragmented {
        let Ok(icmp_type) = ctx.load::<u8>(l4.offset) else {
            return Decision::drop(Verdict::DropMalformed);
        };
        if ndp::is_link_control(icmp_type) {
            return ndp::handle(ctx, ifindex, ep6, cfg, l4, icmp_type, &src, source);
        }
        // A ping of the gateway, from the pod's address or its link-local one.
        if icmp_type == icmp6::ICMPV6_ECHO_REQUEST
            && l4.plain
            && matches!(source, Source::Own | Source::LinkLocal)
            && load_addr(&ip.dst_addr) == icmp6::gateway_addr(cfg)
        {
            return icmp6::echo_to_gateway(ctx, ifindex, cfg);
        }
    }

    // Everything else only from the pod's own address: its link-local and `::` are
    // for neighbour discovery, listener reports and pinging the gateway alone.
    if source != Source::Own {
        return Decision::drop(Verdict::DropSpoof);
    }

    let Some(route) = ROUTES6.get(&Key::new(128, load_addr(&ip.dst_addr))) else {
        // No route of this node: the outside world (or the node stack's business).
        return egress6::handle(ctx, ifindex, l4);
    };
    if route.kind != ROUTE_KIND_LOCAL && route.kind != ROUTE_KIND_REMOTE {
        return Decision::pass();
    }
    // A packet that would expire at this hop gets the router's answer.
    if ip.hop_limit <= 1 {
        return icmp6_send::time_exceeded(ctx, ifindex);
    }
    // Another node's IPv6 pods: remote6 (tunnel or uplink).
    if route.kind == ROUTE_KIND_REMOTE {
        return remote6::to_node(ctx, eth, ip, &l4, route);
    }
    l3::local_delivery6(eth, ip, route, cfg)
}
