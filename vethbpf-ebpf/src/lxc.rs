//! What `from_pod` does with a frame a pod sent (Cilium's bpf_lxc side): find the
//! endpoint behind the veth, refuse VLAN tags, dispatch on the EtherType, and for IPv4
//! the endpoint's source check, the gateway's own address and the route lookup that
//! picks a delivery (local, or a remote node).

use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use vethbpf_common::{
    Config, EndpointInfo, ROUTE_KIND_LOCAL, ROUTE_KIND_NODE, ROUTE_KIND_POD_CIDR,
    ROUTE_KIND_REMOTE, Verdict,
};

use crate::{
    arp,
    diag::{self, Diag},
    egress, endpoints,
    hdr::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr,
        ipv4_addr, linear, ptr_at,
    },
    icmp, icmp_send, ipv4, l3, lxc6,
    maps::{CONFIG, ROUTES},
    remote,
    stats::{self, Decision},
};

/// The whole of `from_pod`: decides, counts, and returns the tc action.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> i32 {
    // SAFETY: `ctx.skb.skb` is the program's context pointer, valid for the whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let ep = endpoints::of_veth(ctx, ifindex);
    let cfg = CONFIG.get(0);
    let seen = stats::Seen::of(ctx);
    match (ep, cfg) {
        // An array entry always exists; a zero gateway address means `up` has not
        // written the configuration (0.0.0.0 is never a gateway).
        (Some(ep), Some(cfg)) if cfg.gateway_ip != 0 => {
            let decision = handle(ctx, ifindex, &ep, cfg);
            stats::count(ctx, seen, ep.id, decision)
        }
        // Not ours (or not configured): forwarding it anywhere would skip source
        // validation, so drop and count it under the reserved endpoint id 0.
        (ep, _) => {
            let what = if ep.is_none() {
                Diag::NoEndpoint
            } else {
                Diag::NoConfig
            };
            diag::report(what, ifindex);
            stats::count(ctx, seen, 0, Decision::drop(Verdict::DropNoEndpoint))
        }
    }
}

/// Dispatches on the EtherType.
#[inline(always)]
fn handle(ctx: &TcContext, ifindex: u32, ep: &EndpointInfo, cfg: &Config) -> Decision {
    // Before tc ingress runs, the kernel strips a VLAN tag into the skb
    // (`skb_vlan_untag`): the frame then shows the inner EtherType, and a redirect
    // would carry the tag into the other pod's VLAN sub-interface. Pods are joined
    // untagged only, so a tagged frame is dropped, whatever it carries.
    // SAFETY: `ctx.skb.skb` is the program's context pointer, valid for the whole run.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return Decision::drop(Verdict::DropVlan);
    }
    let Some((data, data_end)) = linear(ctx, ETH_HLEN) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    let Some(eth) = ptr_at::<EthHdr>(data, data_end, 0) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    // SAFETY: bounds-checked just above.
    let ether_type = unsafe { (*eth).ether_type };
    match ether_type {
        // An endpoint without IPv4 (ip 0) owns no IPv4 source and no ARP sender.
        ETH_P_IP if ep.ip == 0 => Decision::drop(Verdict::DropSpoof),
        ETH_P_ARP if ep.ip == 0 => Decision::drop(Verdict::DropArpSpoof),
        ETH_P_IP => handle_ipv4(ctx, ifindex, ep, cfg),
        ETH_P_ARP => arp::handle(ctx, ifindex, ep, cfg),
        ETH_P_IPV6 => lxc6::handle(ctx, ifindex, cfg),
        // A tag still in the frame: the inner tag of QinQ once the outer one is
        // stripped, or a tag the kernel did not strip.
        ETH_P_8021Q | ETH_P_8021AD => Decision::drop(Verdict::DropVlan),
        // Everything else untagged: the node stack's business.
        _ => Decision::pass(),
    }
}

/// IPv4 from the pod: header checks, source validation, the gateway's own address, and
/// the fast path to endpoints on this node.
#[inline(always)]
fn handle_ipv4(ctx: &TcContext, ifindex: u32, ep: &EndpointInfo, cfg: &Config) -> Decision {
    let Some((data, data_end)) = linear(ctx, ETH_HLEN + size_of::<Ipv4Hdr>()) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(data, data_end, 0),
        ptr_at::<Ipv4Hdr>(data, data_end, ETH_HLEN),
    ) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    // SAFETY: both pointers were bounds-checked against data_end just above, and no
    // helper that changes packet data runs while they are in use.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };

    let Some(hdr_len) = ipv4::valid_header_len(ctx, ip) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    // A header that does not verify must not be forwarded, TTL-patched (which keeps it
    // wrong) or answered. With options, the node stack gets the packet below and its
    // ip_rcv checks the checksum over them.
    if hdr_len == 20 && !ipv4::checksum_ok(ip) {
        return Decision::drop(Verdict::DropCsum);
    }

    if ipv4_addr(&ip.src_addr) != ep.ip {
        return Decision::drop(Verdict::DropSpoof);
    }

    // Options (rare: record route, timestamps) need a router that processes them; the
    // node stack does, the fast path does not try.
    if hdr_len != 20 {
        return Decision::pass();
    }

    let dst = ipv4_addr(&ip.dst_addr);
    if dst == cfg.gateway_ip {
        // `eth` and `ip` are not used past this call, which may pull packet data.
        return icmp::to_gateway(ctx, ifindex, cfg);
    }

    // No route of this node: the outside world (or the node stack's business). A
    // remote node's own address too: the node stack could not forward to it
    // (ip_forward=0), and that node has no route back to this node's pods but its
    // datapath, so it is reached as the outside world is, from this node's address.
    let Some(route) = ROUTES
        .get(&Key::new(32, dst))
        .filter(|r| r.kind != ROUTE_KIND_NODE)
    else {
        return egress::handle(ctx, ifindex);
    };
    match route.kind {
        // A packet that would expire at this hop gets the router's answer.
        ROUTE_KIND_LOCAL | ROUTE_KIND_REMOTE if ip.ttl <= 1 => {
            icmp_send::time_exceeded(ctx, ifindex)
        }
        ROUTE_KIND_LOCAL => l3::local_delivery(eth, ip, route, cfg),
        ROUTE_KIND_REMOTE => remote::to_node(ctx, ip, route),
        // The pod CIDR's own entry: no endpoint has this address (any has a /32).
        ROUTE_KIND_POD_CIDR => Decision::drop(Verdict::DropUnknownDestination),
        kind => {
            diag::report(Diag::UnknownRouteKind, kind);
            Decision::pass()
        }
    }
}
