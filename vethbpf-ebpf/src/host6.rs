//! IPv6 on the uplink, the twin of [`crate::host`]: replies of pod flows (`NAT6`)
//! are translated back and handed into their pod with `bpf_redirect_peer`, ICMPv6
//! errors about pod flows too (translated inside and out); everything else is the
//! node's and passes to its stack after a few comparisons.
//!
//! Nothing but a reply to a flow a pod opened reaches a pod from here: a packet for
//! the NAT address without a matching flow goes to the node stack (which answers it
//! as the node), and one for a pod address from outside the cluster is dropped.

use aya_ebpf::{helpers::bpf_redirect_peer, programs::TcContext};
use vethbpf_common::{
    EGRESS_F_ENABLED, EGRESS_F_MASQUERADE, EgressConfig6, IPPROTO_ICMPV6, NAT_DIR_IN, NatKey6,
    Verdict,
};

use crate::{
    clock, conntrack,
    egress6::{self, ICMPV6_ECHO_REPLY},
    family::V6,
    hdr::{ETH_HLEN, Ipv6Hdr, linear, ptr_at},
    icmp6_error,
    ipv6::{self, Addr, IPV6_HLEN, UpperLayer, load_addr, map_addr},
    maps::{CONFIG, EGRESS6, ENDPOINTS, ENDPOINTS6},
    nat::{self, Event, Xlate},
    stats::Decision,
};

/// Whether `a` lies in `net`/`mask`.
#[inline(always)]
fn in_net(a: &Addr, net: &Addr, mask: &Addr) -> bool {
    (a[0] & mask[0]) == net[0]
        && (a[1] & mask[1]) == net[1]
        && (a[2] & mask[2]) == net[2]
        && (a[3] & mask[3]) == net[3]
}

/// An IPv6 frame on the uplink (for this host): `None` when it is the node's own
/// business (the caller passes it to the node stack and counts it as such).
#[inline(always)]
pub fn handle(ctx: &TcContext) -> Option<(u32, Decision)> {
    let cfg = EGRESS6.get(0).filter(|c| c.flags & EGRESS_F_ENABLED != 0)?;
    let (data, end) = linear(ctx, ETH_HLEN + IPV6_HLEN)?;
    let ip = ptr_at::<Ipv6Hdr>(data, end, ETH_HLEN)?;
    // SAFETY: bounds-checked just above; read only, before any helper changes data.
    let ip = unsafe { &*ip };
    let daddr = load_addr(&ip.dst_addr);
    let masq = cfg.flags & EGRESS_F_MASQUERADE != 0;
    let for_pod = in_net(&daddr, &cfg.pod_net, &cfg.pod_mask);
    if !(for_pod || (masq && daddr == cfg.nat_addr)) {
        return None;
    }
    let saddr = load_addr(&ip.src_addr);
    if for_pod {
        // The cluster routes to pods by other means: its business, not the NAT's.
        if in_net(&saddr, &cfg.cluster_net, &cfg.cluster_mask) {
            return None;
        }
        // With masquerade, nothing from outside is addressed to a pod.
        if masq {
            return Some((0, Decision::drop(Verdict::DropUnsolicited)));
        }
    }
    // What ipv6_rcv checks, and an upper layer to read: else the node stack's.
    let ul = ipv6::packet_end(ctx, ip).and_then(|e| ipv6::upper_layer(ctx, ip, e));
    let hop = ip.hop_limit;
    let r = ul
        .filter(|ul| !ul.fragmented)
        .and_then(|ul| reply(ctx, cfg, &ul, saddr, daddr, hop, masq));
    match r {
        Some(r) => Some(r),
        None if for_pod => Some((0, Decision::drop(Verdict::DropUnsolicited))),
        None => None,
    }
}

/// A packet for the NAT address (or, without masquerade, a pod address): the reply
/// of a pod flow, or `None`.
#[inline(always)]
fn reply(
    ctx: &TcContext,
    cfg: &EgressConfig6,
    ul: &UpperLayer,
    saddr: Addr,
    daddr: Addr,
    hop: u8,
    masq: bool,
) -> Option<(u32, Decision)> {
    let p = egress6::l4(ctx, ul)?;
    let (sport, dport) = if ul.proto == IPPROTO_ICMPV6 {
        if icmp6_error::is_error(p.icmp_type) {
            return icmp_error(ctx, cfg, ul, daddr, hop, masq);
        }
        if p.icmp_type != ICMPV6_ECHO_REPLY {
            return None;
        }
        (0, p.sport)
    } else {
        (p.sport, p.dport)
    };
    // The NAT uses its range only: other ports are the node's own.
    let port = u16::from_be(dport);
    if masq && (port < cfg.port_min || port > cfg.port_max) {
        return None;
    }
    let key = NatKey6 {
        saddr,
        daddr,
        sport,
        dport,
        proto: ul.proto,
        dir: NAT_DIR_IN,
        _pad: [0; 2],
    };
    let ev = Event {
        set: conntrack::flags_in(ul.proto, p.tcp_flags),
        syn: false,
    };
    let (to, ifindex) = nat::ingress::<V6>(&key, Some(ev), clock::now())?;
    let from = Xlate {
        addr: daddr,
        port: dport,
    };
    Some(deliver(ctx, hop, to, ifindex, Verdict::RevNat, |ctx| {
        egress6::rewrite(ctx, false, &p, from, to)
    }))
}

/// An ICMPv6 error for the NAT address (or a pod's): delivered, translated, if the
/// packet it embeds is one a pod sent.
#[inline(always)]
fn icmp_error(
    ctx: &TcContext,
    cfg: &EgressConfig6,
    ul: &UpperLayer,
    daddr: Addr,
    hop: u8,
    masq: bool,
) -> Option<(u32, Decision)> {
    let inner = icmp6_error::inner(ctx, ul.offset)?;
    // The embedded packet left this node from the address the error came to.
    if inner.saddr != daddr {
        return None;
    }
    if masq {
        let p = u16::from_be(inner.sport);
        if p < cfg.port_min || p > cfg.port_max {
            return None;
        }
    }
    let key = NatKey6 {
        saddr: inner.daddr,
        daddr: inner.saddr,
        sport: inner.dport,
        dport: inner.sport,
        proto: inner.proto,
        dir: NAT_DIR_IN,
        _pad: [0; 2],
    };
    let (to, ifindex) = nat::ingress::<V6>(&key, None, clock::now())?;
    let from = Xlate {
        addr: inner.saddr,
        port: inner.sport,
    };
    let off = ul.offset;
    Some(deliver(ctx, hop, to, ifindex, Verdict::RevNatIcmp, |ctx| {
        icmp6_error::translate(ctx, off, &inner, true, from, to)
    }))
}

/// Hands a reply into its pod: checks the pod is still there, does what a router
/// does (hop limit, MACs), rewrites with `xlate`, and redirects into the pod.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    hop: u8,
    to: Xlate<Addr>,
    ifindex: u32,
    verdict: Verdict,
    xlate: impl FnOnce(&TcContext) -> Result<(), ()>,
) -> (u32, Decision) {
    // SAFETY: map values are only read.
    let (ep, ep6, cfg) = unsafe {
        (
            ENDPOINTS.get(ifindex),
            ENDPOINTS6.get(ifindex),
            CONFIG.get(0),
        )
    };
    let (Some(ep), Some(ep6), Some(cfg)) = (ep, ep6, cfg) else {
        return (0, Decision::drop(Verdict::DropUnsolicited));
    };
    // The flow outlived its pod (or the interface index went to another).
    if map_addr(&ep6.ip) != to.addr {
        return (0, Decision::drop(Verdict::DropUnsolicited));
    }
    if hop <= 1 {
        return (ep.id, Decision::drop(Verdict::DropTtl));
    }
    let l2 = ctx
        .store(0, &ep.mac, 0)
        .and_then(|()| ctx.store(6, &cfg.gateway_mac, 0));
    if l2.is_err() || ctx.store(egress6::HOP_LIMIT_OFF, &(hop - 1), 0).is_err() {
        return (ep.id, Decision::drop(Verdict::DropMalformed));
    }
    if xlate(ctx).is_err() {
        return (ep.id, Decision::drop(Verdict::DropNatError));
    }
    // SAFETY: a plain helper call.
    let action = unsafe { bpf_redirect_peer(ifindex, 0) };
    (ep.id, Decision::redirect(verdict, action))
}
