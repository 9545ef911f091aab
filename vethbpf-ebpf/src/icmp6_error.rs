//! ICMPv6 errors about translated flows (RFC 4443 errors, translated as RFC 5508 has
//! it for ICMP): the error carries the start of the packet it is about, and both it
//! and the error must be translated, or the receiver cannot match the error to its
//! socket (path MTU discovery through "packet too big", traceroute).
//!
//! From the uplink, an error about a packet a pod sent through the NAT (inner source
//! = NAT address and port) goes to the pod: inner source and outer destination become
//! the pod's. From a pod, an error about a reply it received (inner destination =
//! the pod) goes out: inner destination and outer source become the NAT's. The inner
//! L4 checksum (UDP, ICMPv6, and TCP when its header is there in full) follows its
//! pseudo header and port; the error's own checksum follows every inner byte changed
//! and its own pseudo header.
//!
//! Only an embedded packet without extension headers is translated (what TCP, UDP
//! and ping send); others are left to the node stack.

use aya_ebpf::programs::TcContext;
use vethbpf_common::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    csum::{self, L4Csum},
    egress6::{DADDR6_OFF, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, SADDR6_OFF},
    ipv6::{Addr, IPV6_HLEN},
    nat::Xlate,
};

/// The ICMPv6 errors translated: destination unreachable, packet too big, time
/// exceeded, parameter problem.
#[inline(always)]
pub const fn is_error(ty: u8) -> bool {
    matches!(ty, 1..=4)
}

/// The embedded packet's tuple, as stored. For ICMPv6, the echo identifier is
/// `sport` of a request and `dport` of a reply (the flow's tuple convention).
#[derive(Clone, Copy)]
pub struct Inner {
    pub saddr: Addr,
    pub daddr: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// Parses the packet embedded in the ICMPv6 error at frame offset `off`: IPv6 with
/// TCP, UDP or ICMPv6 echo right behind its fixed header.
#[inline(always)]
pub fn inner(ctx: &TcContext, off: usize) -> Option<Inner> {
    let l3 = off + 8;
    let l4 = l3 + IPV6_HLEN;
    let [vtc, _, _, _, _, _, proto, _] = ctx.load::<[u8; 8]>(l3).ok()?;
    if vtc >> 4 != 6 {
        return None;
    }
    let saddr = ctx.load::<Addr>(l3 + 8).ok()?;
    let daddr = ctx.load::<Addr>(l3 + 24).ok()?;
    let [a, b, id, _] = ctx.load::<[u16; 4]>(l4).ok()?;
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (a, b),
        // The type is the first byte of the first word, as loaded.
        IPPROTO_ICMPV6 => match a as u8 {
            ICMPV6_ECHO_REQUEST => (id, 0),
            ICMPV6_ECHO_REPLY => (0, id),
            _ => return None,
        },
        _ => return None,
    };
    Some(Inner {
        saddr,
        daddr,
        sport,
        dport,
        proto,
    })
}

/// RFC 1624 for an IPv6 address: the checksum `check` after `old` became `new`.
#[inline(always)]
fn replace_addr(check: u16, old: &Addr, new: &Addr) -> u16 {
    let mut c = check;
    for i in 0..4 {
        c = csum::replace32(c, old[i], new[i]);
    }
    c
}

/// Translates the error at `off` about `inner`: the embedded packet's source
/// (`inner_source`: an error from the uplink about what a pod sent) or destination
/// (an error from a pod about a reply) becomes `to`, and so does the outer
/// destination or source. `from` is what is there now.
#[inline(always)]
pub fn translate(
    ctx: &TcContext,
    off: usize,
    inner: &Inner,
    inner_source: bool,
    from: Xlate<Addr>,
    to: Xlate<Addr>,
) -> Result<(), ()> {
    let outer = L4Csum::icmp(off + 2);
    let l3 = off + 8;
    let l4 = l3 + IPV6_HLEN;
    let addr_off = l3 + if inner_source { 8 } else { 24 };
    let port_off = match (inner.proto, inner_source) {
        (IPPROTO_ICMPV6, _) => l4 + 4,
        (_, true) => l4,
        (_, false) => l4 + 2,
    };
    // The inner L4 checksum, where the packet holds it (a UDP 0 is "none").
    let check_off = match inner.proto {
        IPPROTO_UDP => Some(l4 + 6),
        IPPROTO_ICMPV6 => Some(l4 + 2),
        _ if (ctx.len() as usize) >= l4 + 18 => Some(l4 + 16),
        _ => None,
    };
    if let Some(check_off) = check_off {
        let before = ctx.load::<u16>(check_off).map_err(|_| ())?;
        let mut after = csum::replace16(
            replace_addr(before, &from.addr, &to.addr),
            from.port,
            to.port,
        );
        if inner.proto == IPPROTO_UDP {
            after = csum::udp_fixup(before, after);
        }
        ctx.store(check_off, &after, 0).map_err(|_| ())?;
        csum::l4_replace2(ctx, outer, before, after)?;
    }
    // The inner address and port, in the error's checksum as payload.
    let mut old = from.addr;
    let mut new = to.addr;
    ctx.store(addr_off, &to.addr, 0).map_err(|_| ())?;
    csum::l4_add_diff(ctx, off + 2, csum::diff(&mut old, &mut new))?;
    ctx.store(port_off, &to.port, 0).map_err(|_| ())?;
    csum::l4_replace2(ctx, outer, from.port, to.port)?;

    // The outer header: the error travels to the pod, or from it (pseudo header).
    let outer_off = if inner_source { DADDR6_OFF } else { SADDR6_OFF };
    ctx.store(outer_off, &to.addr, 0).map_err(|_| ())?;
    csum::l4_replace_addr6(ctx, outer, &from.addr, &to.addr)
}
