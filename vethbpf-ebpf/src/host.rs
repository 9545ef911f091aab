//! What `from_uplink` does with a frame arriving on the node's uplink (Cilium's
//! bpf_host side): replies of pod flows are translated back and handed into their pod
//! with `bpf_redirect_peer`, ICMP errors about pod flows too (translated inside and
//! out); packets for a pod from the cluster (another node's pod CIDR, or a node's
//! own address) are the cluster's to check and deliver ([`remote::from_uplink`]);
//! everything else is the node's and passes to its stack after a handful of
//! comparisons, since the node's own traffic pays for this program on every packet.
//!
//! Nothing but a reply to a flow a pod opened, or a packet a known node routed here
//! directly, reaches a pod from here: a packet for the NAT address without a matching
//! flow goes to the node stack (which answers it as the node), and one for a pod
//! address that is neither (someone routing the pod CIDR to this node) is dropped.

use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_redirect_peer, programs::TcContext};
use vethbpf_common::{
    EGRESS_F_ENABLED, EGRESS_F_MASQUERADE, EgressConfig, IPPROTO_ICMP, NAT_DIR_IN, NatKey, Verdict,
};

use crate::{
    clock, conntrack,
    csum::L4Csum,
    decap,
    family::V4,
    frag,
    hdr::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, copy_mac, ipv4_addr, linear, ptr_at},
    host6, icmp_error, ipv4,
    l4::{self, ICMP_ECHO_REPLY, Ip, L4_OFF},
    maps::{CONFIG, EGRESS, ENDPOINTS},
    nat::{self, Event, Xlate},
    remote, remote6,
    stats::{self, Decision},
};

/// The whole of `from_uplink`: decides, counts (under the pod's endpoint id, or id 0
/// for the node's own traffic), and returns the tc action.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> i32 {
    let seen = stats::Seen::of(ctx);
    let (id, decision) = handle(ctx);
    stats::count(ctx, seen, id, decision)
}

/// `skb->pkt_type` of a frame addressed to this host (linux/if_packet.h).
const PACKET_HOST: u32 = 0;

/// Handed to the node stack, counted under id 0 as the node's.
const PASS: (u32, Decision) = (
    0,
    Decision {
        verdict: Verdict::UplinkPass,
        action: TC_ACT_OK,
    },
);

/// Where [`classify`] sends a frame.
enum Next {
    /// Decided (a NAT reply, the node's own traffic, ...).
    Done((u32, Decision)),
    /// For a pod from the cluster: [`from_cluster`].
    Cluster,
    /// For a pod address, no reply of a pod's flow, from outside the cluster: on a
    /// cluster node, the cluster's check drops it and counts it under the pod it was
    /// meant for (`drop_unknown_source`); elsewhere (or for an address no pod has) it
    /// is dropped as unsolicited, counted as the node's.
    Unsolicited,
}

#[inline(always)]
fn handle(ctx: &TcContext) -> (u32, Decision) {
    let unsolicited = match classify(ctx) {
        Next::Done(r) => return r,
        Next::Cluster => false,
        Next::Unsolicited if remote::in_cluster() => true,
        Next::Unsolicited => return (0, Decision::drop(Verdict::DropUnsolicited)),
    };
    // One call site: the cluster's checks are inlined once.
    let r = from_cluster(ctx);
    if unsolicited && r.1.verdict == Verdict::UplinkPass {
        return (0, Decision::drop(Verdict::DropUnsolicited));
    }
    r
}

#[inline(always)]
fn classify(ctx: &TcContext) -> Next {
    // Frames for other hosts (seen in promiscuous mode) are nobody's business here.
    // SAFETY: `ctx.skb.skb` is the program's context pointer.
    if unsafe { (*ctx.skb.skb).pkt_type } != PACKET_HOST {
        return Next::Done(PASS);
    }
    // Other nodes' VXLAN packets for pods here: decapsulated and delivered without
    // the kernel's VXLAN receive path. First: it may pull packet data.
    if let Some(r) = decap::from_uplink(ctx) {
        return Next::Done(r);
    }
    let Some((data, end)) = linear(ctx, L4_OFF) else {
        return Next::Done(PASS);
    };
    let (Some(eth), Some(iph)) = (
        ptr_at::<EthHdr>(data, end, 0),
        ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN),
    ) else {
        return Next::Done(PASS);
    };
    // SAFETY: bounds-checked just above.
    match unsafe { (*eth).ether_type } {
        ETH_P_IP => {}
        // IPv6: replies of pod flows first (host6), then other nodes' pods routed
        // directly (remote6), as IPv4 checks the NAT before the cluster.
        ETH_P_IPV6 => {
            if let Some(r) = host6::handle(ctx) {
                return Next::Done(r);
            }
            if let Some(r) = remote6::from_uplink(ctx) {
                return Next::Done(r);
            }
            return Next::Done(PASS);
        }
        _ => return Next::Done(PASS),
    }
    let Some(cfg) = EGRESS.get(0).filter(|c| c.flags & EGRESS_F_ENABLED != 0) else {
        // No egress (a node without an uplink attaches no from_uplink; a test may
        // run it anyway): only other nodes reach pods from here.
        return Next::Cluster;
    };
    // SAFETY: bounds-checked above; read only.
    let daddr = ipv4_addr(unsafe { &(*iph).dst_addr });
    let masq = cfg.flags & EGRESS_F_MASQUERADE != 0;
    let for_pod = daddr & cfg.pod_mask == cfg.pod_net;
    if !(for_pod || (masq && daddr == cfg.nat_addr)) {
        return Next::Done(PASS);
    }
    // The checks ip_rcv would make: nothing malformed is handed into a pod. Options
    // and anything odd go to the node stack, which knows what to do with them.
    // SAFETY: bounds-checked above.
    if ipv4::valid_header_len(ctx, unsafe { &*iph }) != Some(20) {
        return Next::Done(PASS);
    }
    let Some(ip) = l4::ip(ctx) else {
        return Next::Done(PASS);
    };
    if for_pod {
        // Other nodes' pods (in the cluster CIDR, which is never translated) and the
        // nodes themselves route to pods directly: no NAT reply, the cluster's checks.
        if ip.saddr & cfg.cluster_mask == cfg.cluster_net || remote::source_node(ip.saddr).is_some()
        {
            return Next::Cluster;
        }
        // With masquerade, nothing from outside is addressed to a pod.
        if masq {
            return Next::Unsolicited;
        }
    }
    match reply(ctx, cfg, &ip, masq) {
        Some(r) => Next::Done(r),
        // No flow: the node's, unless addressed to a pod.
        None if for_pod => Next::Unsolicited,
        None => Next::Done(PASS),
    }
}

/// A frame that is no NAT reply, to [`remote::from_uplink`]: delivered into its pod
/// if a known node sent it directly, dropped if it is for a pod otherwise, and the
/// node's when it is for no pod (or has options).
#[inline(always)]
fn from_cluster(ctx: &TcContext) -> (u32, Decision) {
    let Some((data, end)) = linear(ctx, L4_OFF) else {
        return PASS;
    };
    let (Some(eth), Some(iph)) = (
        ptr_at::<EthHdr>(data, end, 0),
        ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN),
    ) else {
        return PASS;
    };
    // SAFETY: bounds-checked just above; no helper that changes packet data runs
    // before remote::from_uplink takes them.
    let (eth, iph) = unsafe { (&mut *eth, &mut *iph) };
    let Some(hdr_len) = ipv4::valid_header_len(ctx, iph) else {
        return PASS;
    };
    remote::from_uplink(ctx, eth, iph, hdr_len).unwrap_or(PASS)
}

/// A packet for the NAT address (or, without masquerade, a pod address): the reply
/// of a pod flow, or `None`.
#[inline(always)]
fn reply(ctx: &TcContext, cfg: &EgressConfig, ip: &Ip, masq: bool) -> Option<(u32, Decision)> {
    let in_range = |port: u16| {
        let p = u16::from_be(port);
        !masq || (cfg.port_min <= p && p <= cfg.port_max)
    };
    let (sport, dport, csum, tcp_flags) = if ip.is_later_fragment() {
        let (sport, dport) = frag::ports(ip, NAT_DIR_IN, clock::now())?;
        (sport, dport, L4Csum::NONE, 0)
    } else {
        let l4 = l4::l4(ctx, ip.proto)?;
        let (sport, dport) = if ip.proto == IPPROTO_ICMP {
            if icmp_error::is_error(l4.icmp_type) {
                return icmp_error(ctx, cfg, ip, masq, clock::now());
            }
            if l4.icmp_type != ICMP_ECHO_REPLY {
                return None;
            }
            (0, l4.sport)
        } else {
            (l4.sport, l4.dport)
        };
        (sport, dport, l4.csum, l4.tcp_flags)
    };
    // The NAT uses its range only: other ports are the node's own, without a lookup
    // (or even a clock read).
    if !in_range(dport) {
        return None;
    }
    let now = clock::now();
    let key = NatKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport,
        dport,
        proto: ip.proto,
        dir: NAT_DIR_IN,
        _pad: [0; 2],
    };
    let ev = Event {
        set: conntrack::flags_in(ip.proto, tcp_flags),
        syn: false,
    };
    let (to, ifindex) = nat::ingress::<V4>(&key, Some(ev), now)?;
    if ip.is_first_fragment() {
        frag::record(ip, NAT_DIR_IN, sport, dport, now);
    }
    let from = Xlate {
        addr: ip.daddr,
        port: dport,
    };
    Some(deliver(ctx, ip, to, ifindex, Verdict::RevNat, |ctx| {
        nat::rewrite(ctx, false, ip.proto, csum, from, to)
    }))
}

/// An ICMP error for the NAT address (or a pod's): delivered, translated, if the
/// packet it embeds is one a pod sent.
#[inline(always)]
fn icmp_error(
    ctx: &TcContext,
    cfg: &EgressConfig,
    ip: &Ip,
    masq: bool,
    now: u64,
) -> Option<(u32, Decision)> {
    let inner = icmp_error::inner(ctx)?;
    // The embedded packet left this node from the address the error came to.
    if inner.saddr != ip.daddr {
        return None;
    }
    if masq {
        // The NAT port, or for an echo request the NAT identifier.
        let p = u16::from_be(inner.sport);
        if p < cfg.port_min || p > cfg.port_max {
            return None;
        }
    }
    let key = NatKey {
        saddr: inner.daddr,
        daddr: inner.saddr,
        sport: inner.dport,
        dport: inner.sport,
        proto: inner.proto,
        dir: NAT_DIR_IN,
        _pad: [0; 2],
    };
    let (to, ifindex) = nat::ingress::<V4>(&key, None, now)?;
    let from = Xlate {
        addr: inner.saddr,
        port: inner.sport,
    };
    Some(deliver(ctx, ip, to, ifindex, Verdict::RevNatIcmp, |ctx| {
        icmp_error::translate(ctx, &inner, true, from, to)
    }))
}

/// Hands a reply into its pod: checks the pod is still there, does what a router
/// does (TTL, MACs), rewrites with `xlate` (after the direct writes: helpers that
/// change the packet invalidate pointers), and redirects into the pod's namespace.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    ip: &Ip,
    to: Xlate,
    ifindex: u32,
    verdict: Verdict,
    xlate: impl FnOnce(&TcContext) -> Result<(), ()>,
) -> (u32, Decision) {
    // SAFETY: map values are only read.
    let (ep, cfg) = (unsafe { ENDPOINTS.get(ifindex) }, CONFIG.get(0));
    let (Some(ep), Some(cfg)) = (ep, cfg) else {
        return (0, Decision::drop(Verdict::DropUnsolicited));
    };
    // The flow outlived its pod (or the interface index went to another).
    if ep.ip != to.addr {
        return (0, Decision::drop(Verdict::DropUnsolicited));
    }
    if ip.ttl <= 1 {
        return (ep.id, Decision::drop(Verdict::DropTtl));
    }
    let Some((data, end)) = linear(ctx, L4_OFF) else {
        return (ep.id, Decision::drop(Verdict::DropMalformed));
    };
    let (Some(eth), Some(iph)) = (
        ptr_at::<EthHdr>(data, end, 0),
        ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN),
    ) else {
        return (ep.id, Decision::drop(Verdict::DropMalformed));
    };
    // SAFETY: bounds-checked just above; no helper runs while they are used.
    unsafe {
        ipv4::decrease_ttl(&mut *iph);
        copy_mac(&mut (*eth).dst_addr, &ep.mac);
        copy_mac(&mut (*eth).src_addr, &cfg.gateway_mac);
    }
    if xlate(ctx).is_err() {
        return (ep.id, Decision::drop(Verdict::DropNatError));
    }
    // SAFETY: a plain helper call.
    let action = unsafe { bpf_redirect_peer(ifindex, 0) };
    (ep.id, Decision::redirect(verdict, action))
}
