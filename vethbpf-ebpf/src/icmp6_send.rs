//! ICMPv6 errors the gateway sends back to a pod about a packet it cannot forward, the
//! twin of [`crate::icmp_send`]: "time exceeded" (hop limit), so that `traceroute6`
//! shows the first hop, and "packet too big" for egress larger than the uplink's MTU:
//! IPv6 routers never fragment, so without it a pod whose MTU is larger than the
//! path's never gets a large packet through (RFC 8201).
//!
//! Built in place as the IPv4 errors are ([`icmp_send::make_room`]): the first 48
//! bytes of the original packet (its IPv6 header and 8 bytes after it: what the pod's
//! stack needs to find the socket; RFC 4443 allows up to 1280 bytes) are the quote,
//! and the reply goes out of the pod's veth, back to it, from the gateway's
//! link-local address (the router the pod knows).
//!
//! Never sent (RFC 4443 2.4), the packet only dropped: about an ICMPv6 error message
//! right behind the header. The callers only answer packets from the pod's own
//! address. No rate limit, as for IPv4: the reply goes only to the pod that sent the
//! packet.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use vethbpf_common::Verdict;

use crate::{
    csum,
    hdr::{ETH_HLEN, EthHdr, Ipv6Hdr, linear, ptr_at, set_be16},
    icmp_send::{address_to_pod, make_room, send_back},
    icmp6,
    ipv6::{IPV6_HLEN, NEXTHDR_ICMPV6, load_addr, store_addr},
    maps::CONFIG,
    stats::Decision,
};

const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_EXC_HOPLIMIT: u8 = 0;
/// Types below this are errors (RFC 4443 2.1).
const ICMPV6_INFO_MIN: u8 = 128;
/// The hop limit of an error: the kernel's default (net.ipv6.conf.*.hop_limit).
const REPLY_HOP_LIMIT: u8 = 64;
/// The quote: the IPv6 header and 8 bytes of what follows.
const QUOTE_LEN: usize = IPV6_HLEN + 8;
/// The reply's headers: IPv6 and ICMPv6.
const HDR_LEN: usize = IPV6_HLEN + 8;
/// The ICMPv6 message: its header and the quote.
const MSG_LEN: usize = 8 + QUOTE_LEN;

/// Answers the IPv6 packet from the pod behind `ifindex` with "hop limit exceeded in
/// transit"; the packet itself is dropped and counted as `drop_ttl`.
#[inline(always)]
pub fn time_exceeded(ctx: &TcContext, ifindex: u32) -> Decision {
    let action = send(
        ctx,
        ifindex,
        error(ICMPV6_TIME_EXCEED, ICMPV6_EXC_HOPLIMIT),
        0,
    );
    Decision::redirect(Verdict::DropTtl, action)
}

/// Answers the IPv6 packet from the pod behind `ifindex` with "packet too big",
/// naming the next hop's `mtu`; the packet is dropped and counted as `drop_too_big`.
#[inline(always)]
pub fn packet_too_big(ctx: &TcContext, ifindex: u32, mtu: u32) -> Decision {
    let action = send(ctx, ifindex, error(ICMPV6_PKT_TOOBIG, 0), mtu);
    Decision::redirect(Verdict::DropTooBig, action)
}

/// An ICMPv6 error's type and code in one word: BPF functions take at most five
/// arguments in registers.
#[inline(always)]
const fn error(type_: u8, code: u8) -> u32 {
    type_ as u32 | (code as u32) << 8
}

/// Turns the packet into the ICMPv6 `error` (see [`error`]; `info` is the MTU of a
/// "packet too big", 0 otherwise) and sends it back; the tc action to return
/// (`TC_ACT_SHOT`, the packet only dropped, if it may not be answered or the frame
/// cannot be reshaped). Out of line: one copy for every caller.
#[inline(never)]
fn send(ctx: &TcContext, ifindex: u32, error: u32, info: u32) -> i64 {
    let (type_, code) = (error as u8, (error >> 8) as u8);
    let dropped = i64::from(TC_ACT_SHOT);
    let Some(cfg) = CONFIG.get(0) else {
        return dropped;
    };
    {
        let Some((data, end)) = linear(ctx, ETH_HLEN + QUOTE_LEN) else {
            return dropped;
        };
        let (Some(ip), Some(next)) = (
            ptr_at::<Ipv6Hdr>(data, end, ETH_HLEN),
            ptr_at::<u8>(data, end, ETH_HLEN + IPV6_HLEN),
        ) else {
            return dropped;
        };
        // SAFETY: both bounds-checked just above; read only, before any helper that
        // changes packet data.
        let (ip, next) = unsafe { (&*ip, *next) };
        // An ICMPv6 error right behind the header is never answered (behind extension
        // headers it is not looked for: the quote shows them, and the pod's stack
        // drops an error about an error).
        if ip.next_hdr == NEXTHDR_ICMPV6 && next < ICMPV6_INFO_MIN {
            return dropped;
        }
    }
    let Some((data, end)) = make_room::<HDR_LEN, QUOTE_LEN>(ctx) else {
        return dropped;
    };
    let (Some(eth), Some(ip), Some(msg), Some(quoted)) = (
        ptr_at::<EthHdr>(data, end, 0),
        ptr_at::<Ipv6Hdr>(data, end, ETH_HLEN),
        ptr_at::<[u8; 8]>(data, end, ETH_HLEN + IPV6_HLEN),
        ptr_at::<Ipv6Hdr>(data, end, ETH_HLEN + HDR_LEN),
    ) else {
        return dropped;
    };
    // SAFETY: all four bounds-checked just above, disjoint; no helper that changes
    // packet data runs while they are in use.
    let (eth, ip, msg, quoted) = unsafe { (&mut *eth, &mut *ip, &mut *msg, &*quoted) };
    // The quoted header's source is the pod: the reply goes to it.
    let pod = load_addr(&quoted.src_addr);
    address_to_pod(eth, cfg);

    // Version 6, traffic class and flow label 0.
    ip.vcf = [0x60, 0, 0, 0];
    set_be16(&mut ip.payload_len, (MSG_LEN as u16).to_be());
    ip.next_hdr = NEXTHDR_ICMPV6;
    ip.hop_limit = REPLY_HOP_LIMIT;
    store_addr(&mut ip.src_addr, &icmp6::gateway_addr(cfg));
    store_addr(&mut ip.dst_addr, &pod);
    let info = info.to_be_bytes();
    *msg = [type_, code, 0, 0, info[0], info[1], info[2], info[3]];

    // The checksum: the pseudo-header (addresses, upper-layer length, next header;
    // RFC 8200 8.1; its last two words added as stored) and the message, its
    // checksum field zero.
    let sum = csum::sum((data + ETH_HLEN + 8) as *mut u32, 32, 0);
    let sum = csum::add(sum, (MSG_LEN as u32).to_be());
    let sum = csum::add(sum, u32::from(NEXTHDR_ICMPV6).to_be());
    let sum = csum::sum(
        (data + ETH_HLEN + IPV6_HLEN) as *mut u32,
        MSG_LEN as u32,
        sum,
    );
    msg[2..4].copy_from_slice(&csum::finish(sum).to_ne_bytes());
    send_back(ifindex)
}
