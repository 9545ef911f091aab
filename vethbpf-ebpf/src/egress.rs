//! Pod egress, in `from_pod`: IPv4 to a destination that is not a local pod (the
//! caller's route lookup found none), not a node address and not in the cluster CIDR
//! (`EGRESS_SKIP`) leaves through the uplink, tracked and source-NATed to the node
//! address (or, with `--no-masquerade`, tracked only), its TTL decremented as a
//! router's would be, without the node's forwarding path.

use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use vethbpf_common::{
    EGRESS_F_ENABLED, EGRESS_F_MASQUERADE, EgressConfig, IPPROTO_ICMP, NAT_DIR_OUT, NatKey, Verdict,
};

use crate::{
    clock, conntrack,
    csum::L4Csum,
    family::V4,
    fib::{self, Fit},
    frag,
    hdr::{ETH_HLEN, Ipv4Hdr, linear, ptr_at},
    icmp_error, icmp_send, icmp6_send, ipv4,
    l4::{self, ICMP_ECHO, Ip, L4_OFF},
    maps::{EGRESS, EGRESS_SKIP},
    nat::{self, Event, Target, Xlate},
    stats::Decision,
};

/// What to do with an IPv4 packet from the pod behind `ifindex` that no route of
/// this node claims. Its header was validated, has no options, and its source is the
/// pod's.
#[inline(always)]
pub fn handle(ctx: &TcContext, ifindex: u32) -> Decision {
    let Some(cfg) = EGRESS.get(0) else {
        return Decision::pass();
    };
    if cfg.flags & EGRESS_F_ENABLED == 0 {
        return Decision::pass();
    }
    let Some(ip) = l4::ip(ctx) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    let masq = cfg.flags & EGRESS_F_MASQUERADE != 0;
    let now = clock::now();

    let (sport, dport, csum, ev) = if ip.is_later_fragment() {
        let Some((sport, dport)) = frag::ports(&ip, NAT_DIR_OUT, now) else {
            if !is_egress(ip.daddr) {
                return Decision::pass();
            }
            return Decision::drop(Verdict::DropFragUnknown);
        };
        let ev = Event { set: 0, syn: false };
        (sport, dport, L4Csum::NONE, ev)
    } else {
        // Other protocols (and truncated headers): the node stack's business.
        let Some(l4) = l4::l4(ctx, ip.proto) else {
            return Decision::pass();
        };
        if ip.proto == IPPROTO_ICMP && l4.icmp_type != ICMP_ECHO {
            if icmp_error::is_error(l4.icmp_type) && is_egress(ip.daddr) {
                if let Some(refused) =
                    leave_checks(ctx, ifindex, ip.ttl, cfg.uplink_ifindex, false, now)
                {
                    return refused;
                }
                return icmp_error(ctx, &ip, cfg, masq, now);
            }
            return Decision::pass();
        }
        if ip.is_first_fragment() {
            frag::record(&ip, NAT_DIR_OUT, l4.sport, l4.dport, now);
        }
        let ev = Event {
            set: conntrack::flags_out(ip.proto, l4.tcp_flags),
            syn: conntrack::is_syn(ip.proto, l4.tcp_flags),
        };
        (l4.sport, l4.dport, l4.csum, ev)
    };

    let key = NatKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport,
        dport,
        proto: ip.proto,
        dir: NAT_DIR_OUT,
        _pad: [0; 2],
    };
    // A tracked flow was classified when it began: its packets skip the skip list.
    let found = nat::lookup::<V4>(&key);
    if found.is_none() && !is_egress(ip.daddr) {
        return Decision::pass();
    }
    if let Some(refused) = leave_checks(ctx, ifindex, ip.ttl, cfg.uplink_ifindex, false, now) {
        return refused;
    }
    let target = Target {
        addr: if masq { cfg.nat_addr } else { ip.saddr },
        min: cfg.port_min,
        max: cfg.port_max,
        identity: !masq,
        seed: cfg.hash_seed,
    };
    let create = !csum.is_none();
    let to = match nat::egress::<V4>(
        &key,
        found,
        &target,
        ev,
        create,
        ifindex,
        cfg.max_flows,
        now,
    ) {
        Ok(to) => to,
        Err(verdict) => return Decision::drop(verdict),
    };
    if !decrease_ttl(ctx) {
        return Decision::drop(Verdict::DropMalformed);
    }
    let from = Xlate {
        addr: ip.saddr,
        port: sport,
    };
    if masq && nat::rewrite(ctx, true, ip.proto, csum, from, to).is_err() {
        return Decision::drop(Verdict::DropNatError);
    }
    send(masq, cfg.uplink_ifindex)
}

/// Whether `daddr` is egress: routable, and no node address or cluster destination.
#[inline(always)]
fn is_egress(daddr: u32) -> bool {
    routable(daddr) && EGRESS_SKIP.get(&Key::new(32, daddr)).is_none()
}

/// What a router checks before it sends a packet on: the TTL (IPv6: hop limit), and
/// the MTU of the uplink `uplink`. `Some(decision)` if the packet cannot go: the pod
/// behind `ifindex` is told why, as a router would, in ICMPv6 if `v6` (a constant at
/// each call site: the other branch folds away). An IPv4 packet without DF is told
/// too: vethbpf does not fragment, and the MTU makes the pod's stack do it. `now`:
/// [`clock::now`].
#[inline(always)]
pub fn leave_checks(
    ctx: &TcContext,
    ifindex: u32,
    ttl: u8,
    uplink: u32,
    v6: bool,
    now: u64,
) -> Option<Decision> {
    if ttl <= 1 {
        return Some(if v6 {
            icmp6_send::time_exceeded(ctx, ifindex)
        } else {
            icmp_send::time_exceeded(ctx, ifindex)
        });
    }
    match fib::fits(ctx, uplink, now) {
        Some(Fit::Fits) => None,
        Some(Fit::TooBig { mtu }) => Some(if v6 {
            icmp6_send::packet_too_big(ctx, ifindex, mtu)
        } else {
            icmp_send::frag_needed(ctx, ifindex, mtu)
        }),
        // The uplink is gone: nothing to send it out of.
        None => Some(Decision::pass()),
    }
}

/// An ICMP error from the pod about a reply it received (port unreachable, ...):
/// translated (RFC 5508) and sent if the reply belongs to one of its flows.
#[inline(always)]
fn icmp_error(ctx: &TcContext, ip: &Ip, cfg: &EgressConfig, masq: bool, now: u64) -> Decision {
    let Some(inner) = icmp_error::inner(ctx) else {
        return Decision::pass();
    };
    let key = NatKey {
        saddr: inner.daddr,
        daddr: inner.saddr,
        sport: inner.dport,
        dport: inner.sport,
        proto: inner.proto,
        dir: NAT_DIR_OUT,
        _pad: [0; 2],
    };
    // The error is about the pod's own flow only if the embedded packet went to it.
    if inner.daddr != ip.saddr {
        return Decision::pass();
    }
    let Some(to) = nat::lookup_forward::<V4>(&key, now) else {
        return Decision::pass();
    };
    if !decrease_ttl(ctx) {
        return Decision::drop(Verdict::DropMalformed);
    }
    let from = Xlate {
        addr: inner.daddr,
        port: inner.dport,
    };
    if masq && icmp_error::translate(ctx, &inner, false, from, to).is_err() {
        return Decision::drop(Verdict::DropNatError);
    }
    send(masq, cfg.uplink_ifindex)
}

/// Out of the uplink `uplink`: masqueraded, or with the pod's own address.
#[inline(always)]
pub fn send(masq: bool, uplink: u32) -> Decision {
    let action = fib::redirect_out(uplink);
    let verdict = if masq {
        Verdict::Masquerade
    } else {
        Verdict::Egress
    };
    Decision::redirect(verdict, action)
}

/// Decrements the TTL in place (the caller checked it is above 1).
#[inline(always)]
fn decrease_ttl(ctx: &TcContext) -> bool {
    let Some((data, end)) = linear(ctx, L4_OFF) else {
        return false;
    };
    let Some(ip) = ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN) else {
        return false;
    };
    // SAFETY: bounds-checked just above; no helper runs while the pointer is used.
    ipv4::decrease_ttl(unsafe { &mut *ip });
    true
}

/// Unicast destinations a router forwards: not 0/8, 127/8, link-local 169.254/16,
/// multicast, reserved or broadcast (>= 224/4).
#[inline(always)]
fn routable(daddr: u32) -> bool {
    // The address is in network order in memory: its first octet is the low byte.
    let (a, b) = (daddr as u8, (daddr >> 8) as u8);
    !(a == 0 || a == 127 || a >= 224 || (a == 169 && b == 254))
}
