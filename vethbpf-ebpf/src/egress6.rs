//! IPv6 pod egress, in `from_pod`, the twin of [`crate::egress`]: a packet from a pod
//! to a destination that is not a local pod (the caller's route lookup found none),
//! not a node address and not in the pod or cluster CIDR (`EGRESS_SKIP6`) leaves
//! through the uplink, tracked in `NAT6` and source-NATed to the node's IPv6 address
//! (or, with `--no-masquerade`, tracked only), its hop limit decremented.
//!
//! TCP, UDP and ICMPv6 echo (the identifier is the port). Fragments (a Fragment
//! header) are not translated: they are dropped and counted (`drop_frag_unknown`);
//! IPv6 senders do path MTU discovery, so a pod fragments only what it sends larger
//! than the path MTU it was told (UDP datagrams above it, mostly).

use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use vethbpf_common::{
    EGRESS_F_ENABLED, EGRESS_F_MASQUERADE, EgressConfig6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    NAT_DIR_OUT, NatKey6, Verdict,
};

use crate::{
    clock, conntrack,
    csum::{self, L4Csum},
    egress,
    family::V6,
    hdr::ETH_HLEN,
    icmp6_error,
    ipv6::{self, Addr, UpperLayer},
    maps::{EGRESS_SKIP6, EGRESS6},
    nat::{self, Event, Target, Xlate},
    stats::Decision,
};

/// ICMPv6 echo types.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// Frame offsets of the addresses and the hop limit.
pub const SADDR6_OFF: usize = ETH_HLEN + 8;
pub const DADDR6_OFF: usize = ETH_HLEN + 24;
pub const HOP_LIMIT_OFF: usize = ETH_HLEN + 7;

/// The L4 fields tracking works on, of an upper-layer header at any offset.
#[derive(Clone, Copy)]
pub struct L4 {
    /// TCP/UDP ports; ICMPv6 echo: `sport` is the identifier, `dport` 0.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub csum: L4Csum,
    /// Where the source port (ICMPv6: identifier) is, and the destination port.
    pub sport_off: usize,
    pub dport_off: usize,
}

/// Reads TCP, UDP or ICMPv6 at `ul.offset` (bpf_skb_load_bytes: any offset, linear
/// or not). `None` for other protocols and truncated headers.
#[inline(always)]
pub fn l4(ctx: &TcContext, ul: &UpperLayer) -> Option<L4> {
    let off = ul.offset;
    let [a, b] = ctx.load::<[u16; 2]>(off).ok()?;
    match ul.proto {
        IPPROTO_TCP => {
            let flags = ctx.load::<u8>(off + 13).ok()?;
            Some(L4 {
                sport: a,
                dport: b,
                tcp_flags: flags,
                icmp_type: 0,
                csum: L4Csum::tcp(off + 16),
                sport_off: off,
                dport_off: off + 2,
            })
        }
        IPPROTO_UDP => Some(L4 {
            sport: a,
            dport: b,
            tcp_flags: 0,
            icmp_type: 0,
            csum: L4Csum::udp(off + 6),
            sport_off: off,
            dport_off: off + 2,
        }),
        IPPROTO_ICMPV6 => {
            let id = ctx.load::<u16>(off + 4).ok()?;
            Some(L4 {
                sport: id,
                dport: 0,
                tcp_flags: 0,
                // The type is the first byte, as loaded.
                icmp_type: a as u8,
                csum: L4Csum::icmp(off + 2),
                sport_off: off + 4,
                dport_off: off + 4,
            })
        }
        _ => None,
    }
}

/// What to do with an IPv6 packet from the pod behind `ifindex` (source checked)
/// that no route of this node claims; `ul` is its upper layer.
#[inline(always)]
pub fn handle(ctx: &TcContext, ifindex: u32, ul: UpperLayer) -> Decision {
    let Some(cfg) = EGRESS6.get(0) else {
        return Decision::pass();
    };
    if cfg.flags & EGRESS_F_ENABLED == 0 {
        return Decision::pass();
    }
    let (Ok(saddr), Ok(daddr), Ok(hop)) = (
        ctx.load::<Addr>(SADDR6_OFF),
        ctx.load::<Addr>(DADDR6_OFF),
        ctx.load::<u8>(HOP_LIMIT_OFF),
    ) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    if ul.fragmented {
        if is_egress(&daddr) {
            return Decision::drop(Verdict::DropFragUnknown);
        }
        return Decision::pass();
    }
    // Other protocols (and truncated headers): the node stack's business.
    let Some(p) = l4(ctx, &ul) else {
        return Decision::pass();
    };
    let masq = cfg.flags & EGRESS_F_MASQUERADE != 0;
    let now = clock::now();
    if ul.proto == IPPROTO_ICMPV6 && p.icmp_type != ICMPV6_ECHO_REQUEST {
        if icmp6_error::is_error(p.icmp_type) && is_egress(&daddr) {
            if let Some(refused) =
                egress::leave_checks(ctx, ifindex, hop, cfg.uplink_ifindex, true, now)
            {
                return refused;
            }
            return icmp_error(ctx, &saddr, &ul, cfg, masq, now);
        }
        return Decision::pass();
    }
    let key = NatKey6 {
        saddr,
        daddr,
        sport: p.sport,
        dport: p.dport,
        proto: ul.proto,
        dir: NAT_DIR_OUT,
        _pad: [0; 2],
    };
    // A tracked flow was classified when it began: its packets skip the skip list.
    let found = nat::lookup::<V6>(&key);
    if found.is_none() && !is_egress(&daddr) {
        return Decision::pass();
    }
    if let Some(refused) = egress::leave_checks(ctx, ifindex, hop, cfg.uplink_ifindex, true, now) {
        return refused;
    }
    let target = Target {
        addr: if masq { cfg.nat_addr } else { saddr },
        min: cfg.port_min,
        max: cfg.port_max,
        identity: !masq,
        seed: cfg.hash_seed,
    };
    let ev = Event {
        set: conntrack::flags_out(ul.proto, p.tcp_flags),
        syn: conntrack::is_syn(ul.proto, p.tcp_flags),
    };
    let to = match nat::egress::<V6>(&key, found, &target, ev, true, ifindex, cfg.max_flows, now) {
        Ok(to) => to,
        Err(verdict) => return Decision::drop(verdict),
    };
    if ctx.store(HOP_LIMIT_OFF, &(hop - 1), 0).is_err() {
        return Decision::drop(Verdict::DropMalformed);
    }
    let from = Xlate {
        addr: saddr,
        port: p.sport,
    };
    if masq && rewrite(ctx, true, &p, from, to).is_err() {
        return Decision::drop(Verdict::DropNatError);
    }
    egress::send(masq, cfg.uplink_ifindex)
}

/// An ICMPv6 error from the pod about a reply it received (port unreachable, ...):
/// translated and sent if the reply belongs to one of its flows.
#[inline(always)]
fn icmp_error(
    ctx: &TcContext,
    saddr: &Addr,
    ul: &UpperLayer,
    cfg: &EgressConfig6,
    masq: bool,
    now: u64,
) -> Decision {
    let Some(inner) = icmp6_error::inner(ctx, ul.offset) else {
        return Decision::pass();
    };
    // The error is about the pod's own flow only if the embedded packet went to it.
    if inner.daddr != *saddr {
        return Decision::pass();
    }
    let key = NatKey6 {
        saddr: inner.daddr,
        daddr: inner.saddr,
        sport: inner.dport,
        dport: inner.sport,
        proto: inner.proto,
        dir: NAT_DIR_OUT,
        _pad: [0; 2],
    };
    let Some(to) = nat::lookup_forward::<V6>(&key, now) else {
        return Decision::pass();
    };
    if !decrease_hop_limit(ctx) {
        return Decision::drop(Verdict::DropMalformed);
    }
    let from = Xlate {
        addr: inner.daddr,
        port: inner.dport,
    };
    if masq && icmp6_error::translate(ctx, ul.offset, &inner, false, from, to).is_err() {
        return Decision::drop(Verdict::DropNatError);
    }
    egress::send(masq, cfg.uplink_ifindex)
}

/// Whether `daddr` is egress: routable, and no node address or cluster destination.
#[inline(always)]
fn is_egress(daddr: &Addr) -> bool {
    routable(daddr) && EGRESS_SKIP6.get(&Key::new(128, *daddr)).is_none()
}

/// Unicast destinations a router forwards: not `::`, `::1`, link-local or multicast.
#[inline(always)]
fn routable(a: &Addr) -> bool {
    let low_zero = a[0] == 0 && a[1] == 0 && a[2] == 0;
    // `::1`: its last byte (the high byte of the last word in memory order) is 1.
    let special = low_zero && (a[3] == 0 || a[3] == 1u32.to_be());
    !(special || ipv6::is_link_local(a) || ipv6::is_multicast(a))
}

/// Decrements the hop limit in place (the caller checked it is above 1).
#[inline(always)]
pub fn decrease_hop_limit(ctx: &TcContext) -> bool {
    let Ok(hop) = ctx.load::<u8>(HOP_LIMIT_OFF) else {
        return false;
    };
    hop > 1 && ctx.store(HOP_LIMIT_OFF, &(hop - 1), 0).is_ok()
}

/// Rewrites the source (`source`) or destination address and port of the packet
/// with its L4 checksum (IPv6 has no header checksum; the L4 one covers the
/// addresses through the pseudo header, ICMPv6's too).
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    source: bool,
    p: &L4,
    from: Xlate<Addr>,
    to: Xlate<Addr>,
) -> Result<(), ()> {
    if from.addr != to.addr {
        let off = if source { SADDR6_OFF } else { DADDR6_OFF };
        ctx.store(off, &to.addr, 0).map_err(|_| ())?;
        csum::l4_replace_addr6(ctx, p.csum, &from.addr, &to.addr)?;
    }
    if from.port != to.port {
        let off = if source { p.sport_off } else { p.dport_off };
        ctx.store(off, &to.port, 0).map_err(|_| ())?;
        csum::l4_replace2(ctx, p.csum, from.port, to.port)?;
    }
    Ok(())
}
