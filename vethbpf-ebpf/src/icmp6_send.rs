//! ICMPv6 errors the gateway sends back to a pod about a packet it cannot forward, the
//! twin of [`crate::icmp_send`]: "time exceeded" (hop limit), so that `traceroute6`
//! shows the first hop. "Packet too big" (type 2, the MTU in `info`) is the same
//! message for the paths that check an MTU: IPv6 routers never fragment, so without
//! it a pod whose MTU is larger than the path's never gets a large packet through
//! (RFC 8201).
//!
//! The packet becomes the error in place: the frame is cut to the reply's size, the
//! first 48 bytes of the original packet (its IPv6 header and 8 bytes after it: what
//! the pod's stack needs to find the socket; RFC 4443 allows up to 1280 bytes) are
//! the quote, and the reply goes out of the pod's veth, back to it, from the
//! gateway's link-local address (the router the pod knows).
//!
//! Never sent (RFC 4443 2.4), the packet only dropped: about an ICMPv6 error message,
//! or from a source that is not the pod's own address (the caller checks). No rate
//! limit, as for IPv4: the reply goes only to the pod that sent the packet.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use vethbpf_common::Verdict;

use crate::{
    csum,
    hdr::{ETH_HLEN, ETH_P_IPV6, EthHdr, Ipv6Hdr, linear, ptr_at},
    icmp_send, icmp6,
    ipv6::{IPV6_HLEN, NEXTHDR_ICMPV6},
    maps::CONFIG,
    stats::Decision,
};

const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_EXC_HOPLIMIT: u8 = 0;
/// Types below this are errors (RFC 4443 2.1).
const ICMPV6_INFO_MIN: u8 = 128;
/// The hop limit of an error: the kernel's default (net.ipv6.conf.*.hop_limit).
const REPLY_HOP_LIMIT: u8 = 64;
/// The quote: the IPv6 header and 8 bytes of what follows.
const QUOTE_LEN: usize = IPV6_HLEN + 8;
/// The ICMPv6 message: its header and the quote.
const MSG_LEN: usize = 8 + QUOTE_LEN;
const REPLY_IP_LEN: usize = IPV6_HLEN + MSG_LEN;
/// Words of the reply's IP packet on the stack.
const WORDS: usize = REPLY_IP_LEN / 4;
/// Where the addresses and the message start, in words.
const ADDRS_AT: usize = 2;
const MSG_AT: usize = IPV6_HLEN / 4;

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
    let mut pkt = [0u32; WORDS];
    let pod_mac;
    {
        let Some((data, end)) = linear(ctx, ETH_HLEN + QUOTE_LEN) else {
            return dropped;
        };
        let (Some(eth), Some(ip), Some(next)) = (
            ptr_at::<EthHdr>(data, end, 0),
            ptr_at::<Ipv6Hdr>(data, end, ETH_HLEN),
            ptr_at::<u8>(data, end, ETH_HLEN + IPV6_HLEN),
        ) else {
            return dropped;
        };
        // SAFETY: all three bounds-checked just above; read only, before any helper
        // that changes packet data.
        let (eth, ip, next) = unsafe { (&*eth, &*ip, *next) };
        // An ICMPv6 error right behind the header is never answered (behind extension
        // headers it is not looked for: the quote shows them, and the pod's stack
        // drops an error about an error).
        if ip.next_hdr == NEXTHDR_ICMPV6 && next < ICMPV6_INFO_MIN {
            return dropped;
        }
        pod_mac = eth.src_addr;
        // SAFETY: the quote's 48 bytes are inside the frame (checked above); the
        // destination is the last 48 bytes of `pkt`, 4-aligned.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (data + ETH_HLEN) as *const u8,
                pkt.as_mut_ptr().add(MSG_AT + 2).cast::<u8>(),
                QUOTE_LEN,
            );
        }
    }
    // The quoted header's source (words 2..6 of it) is the pod: the reply goes to it.
    let q = MSG_AT + 2 + ADDRS_AT;
    let pod = [pkt[q], pkt[q + 1], pkt[q + 2], pkt[q + 3]];
    let gw = icmp6::gateway_addr(cfg);

    // Version 6, traffic class and flow label 0; payload length; next header; hops.
    pkt[0] = u32::from_ne_bytes([0x60, 0, 0, 0]);
    let len = (MSG_LEN as u16).to_be_bytes();
    pkt[1] = u32::from_ne_bytes([len[0], len[1], NEXTHDR_ICMPV6, REPLY_HOP_LIMIT]);
    pkt[ADDRS_AT..ADDRS_AT + 4].copy_from_slice(&gw);
    pkt[ADDRS_AT + 4..ADDRS_AT + 8].copy_from_slice(&pod);
    pkt[MSG_AT] = u32::from_ne_bytes([type_, code, 0, 0]);
    pkt[MSG_AT + 1] = info.to_be();

    // The checksum: the pseudo-header (addresses, upper-layer length, next header;
    // RFC 8200 8.1) and the message, its checksum field zero.
    // The two pseudo-header words are added as stored (big-endian), not put on the
    // stack: this function's frame plus from_pod's must stay under 512 bytes.
    let sum = csum::sum(pkt.as_mut_ptr().wrapping_add(ADDRS_AT), 32, 0);
    let sum = csum::add(sum, (MSG_LEN as u32).to_be());
    let sum = csum::add(sum, u32::from(NEXTHDR_ICMPV6).to_be());
    let sum = csum::sum(pkt.as_mut_ptr().wrapping_add(MSG_AT), MSG_LEN as u32, sum);
    let check = csum::finish(sum).to_ne_bytes();
    pkt[MSG_AT] = u32::from_ne_bytes([type_, code, check[0], check[1]]);

    icmp_send::reply_to_pod(ctx, ifindex, &pkt, &pod_mac, &cfg.gateway_mac, ETH_P_IPV6)
}
