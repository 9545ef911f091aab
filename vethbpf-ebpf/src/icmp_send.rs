//! ICMP errors the gateway sends back to a pod about a packet it cannot forward:
//! "time exceeded" for a packet whose TTL would expire at this hop, and "fragmentation
//! needed" for one too big for the uplink. A kernel router sends both (`ip_forward`);
//! without them `traceroute` shows no first hop and a pod whose MTU is larger than
//! the uplink's never learns the path MTU (its TCP stalls: a PMTU black hole).
//!
//! The packet becomes the error in place ([`make_room`], shared with
//! [`crate::icmp6_send`]): the frame is cut to the reply's size, the first 28 bytes
//! of the original IP packet (its header and the first 8 bytes of the transport
//! header, what RFC 792 quotes and what the pod's stack needs to find the socket)
//! move behind the new headers as the quote, the headers are written in the packet
//! (no copy of the reply on the stack: from_pod's call chain has little left), and
//! the reply is sent out of the pod's veth, back to it. The source is the gateway
//! address: the router the pod knows.
//!
//! Not sent (RFC 1122 3.2.2, RFC 1812 4.3.2.7), the packet only dropped: about an ICMP
//! error, about a fragment other than the first, about a packet with IP options.
//! There is no rate limit (the kernel's icmp_ratelimit): the reply goes only to the
//! pod that sent the packet, is smaller than it, and costs what forwarding would.

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use vethbpf_common::{Config, Verdict};

use crate::{
    csum,
    hdr::{
        ETH_HLEN, EthHdr, IPPROTO_ICMP, Ipv4Hdr, be16, copy_mac, linear, ptr_at, set_be16,
        set_ipv4_addr,
    },
    icmp_error,
    maps::CONFIG,
    stats::Decision,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_EXC_TTL: u8 = 0;
/// The TTL of an error: the node's default (net.ipv4.ip_default_ttl).
const REPLY_TTL: u8 = 64;
/// The TOS the kernel gives its ICMP errors (IPTOS_PREC_INTERNETCONTROL).
const REPLY_TOS: u8 = 0xc0;
/// The quote: an IPv4 header without options and 8 bytes of what follows.
const QUOTE_LEN: usize = 28;
/// The reply's headers: IPv4 and ICMP.
const HDR_LEN: usize = 20 + 8;
const REPLY_IP_LEN: usize = HDR_LEN + QUOTE_LEN;
/// The fragment offset field (without the flags), as stored.
const IP_OFFSET_MASK: u16 = 0x1fffu16.to_be();

/// Answers the IPv4 packet from the pod behind `ifindex` with "time exceeded in
/// transit"; the packet itself is dropped and counted as `drop_ttl`.
#[inline(always)]
pub fn time_exceeded(ctx: &TcContext, ifindex: u32) -> Decision {
    let action = send(ctx, ifindex, error(ICMP_TIME_EXCEEDED, ICMP_EXC_TTL, 0));
    Decision::redirect(Verdict::DropTtl, action)
}

/// Answers the IPv4 packet from the pod behind `ifindex` with "fragmentation needed
/// and DF set", naming the next hop's `mtu` (RFC 1191); the packet is dropped and
/// counted as `drop_too_big`.
#[inline(always)]
pub fn frag_needed(ctx: &TcContext, ifindex: u32, mtu: u32) -> Decision {
    let mtu = mtu.min(u32::from(u16::MAX)) as u16;
    let action = send(
        ctx,
        ifindex,
        error(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu),
    );
    Decision::redirect(Verdict::DropTooBig, action)
}

/// An ICMP error's type, code and next-hop MTU in one word: BPF functions take at
/// most five arguments in registers.
#[inline(always)]
const fn error(type_: u8, code: u8, mtu: u16) -> u32 {
    type_ as u32 | (code as u32) << 8 | (mtu as u32) << 16
}

/// Turns the packet into the ICMP `error` (see [`error`]) and sends it back; the tc
/// action to return (`TC_ACT_SHOT`, the packet only dropped, if it may not be
/// answered or the frame cannot be reshaped). Out of line: one copy for every
/// caller.
#[inline(never)]
fn send(ctx: &TcContext, ifindex: u32, error: u32) -> i64 {
    let (type_, code, mtu) = (error as u8, (error >> 8) as u8, (error >> 16) as u16);
    let dropped = i64::from(TC_ACT_SHOT);
    let Some(cfg) = CONFIG.get(0) else {
        return dropped;
    };
    {
        let Some((data, end)) = linear(ctx, ETH_HLEN + QUOTE_LEN) else {
            return dropped;
        };
        let (Some(ip), Some(l4)) = (
            ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN),
            ptr_at::<u8>(data, end, ETH_HLEN + 20),
        ) else {
            return dropped;
        };
        // SAFETY: both bounds-checked just above; read only, before any helper that
        // changes packet data.
        let (ip, l4) = unsafe { (&*ip, *l4) };
        if ip.ihl() != 20
            || be16(&ip.frags) & IP_OFFSET_MASK != 0
            || (ip.proto == IPPROTO_ICMP && icmp_error::is_error(l4))
        {
            return dropped;
        }
    }
    let Some((data, end)) = make_room::<HDR_LEN, QUOTE_LEN>(ctx) else {
        return dropped;
    };
    let (Some(eth), Some(ip), Some(icmp)) = (
        ptr_at::<EthHdr>(data, end, 0),
        ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN),
        ptr_at::<[u8; 8]>(data, end, ETH_HLEN + 20),
    ) else {
        return dropped;
    };
    let Some(quoted) = ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN + HDR_LEN) else {
        return dropped;
    };
    // SAFETY: all four bounds-checked just above, disjoint; no helper that changes
    // packet data runs while they are in use.
    let (eth, ip, icmp, quoted) = unsafe { (&mut *eth, &mut *ip, &mut *icmp, &*quoted) };
    // The quoted header's source is the pod: the reply goes to it.
    let pod = crate::hdr::ipv4_addr(&quoted.src_addr);
    address_to_pod(eth, cfg);

    ip.vihl = 0x45;
    ip.tos = REPLY_TOS;
    set_be16(&mut ip.tot_len, (REPLY_IP_LEN as u16).to_be());
    set_be16(&mut ip.id, 0);
    set_be16(&mut ip.frags, 0);
    ip.ttl = REPLY_TTL;
    ip.proto = IPPROTO_ICMP;
    set_be16(&mut ip.check, 0);
    set_ipv4_addr(&mut ip.src_addr, cfg.gateway_ip);
    set_ipv4_addr(&mut ip.dst_addr, pod);
    let ip_check = csum::finish(csum::sum((data + ETH_HLEN) as *mut u32, 20, 0));
    set_be16(&mut ip.check, ip_check);

    *icmp = [type_, code, 0, 0, 0, 0, 0, 0];
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    let icmp_check = csum::finish(csum::sum(
        (data + ETH_HLEN + 20) as *mut u32,
        (REPLY_IP_LEN - 20) as u32,
        0,
    ));
    icmp[2..4].copy_from_slice(&icmp_check.to_ne_bytes());
    send_back(ifindex)
}

/// Reshapes the frame for a reply of `HDR` header bytes (IP and ICMP) followed by a
/// quote of the packet's first `QUOTE` IP bytes: the frame is cut (or, for a short
/// packet, padded) to `ETH_HLEN + HDR + QUOTE`, which resets a GSO packet's
/// segmentation state, made linear and writable, and the quote moved behind where
/// the headers go. `(data, data_end)` of the reshaped frame; `None` if it cannot be.
/// Packet pointers taken before are invalid after it.
#[inline(always)]
pub fn make_room<const HDR: usize, const QUOTE: usize>(ctx: &TcContext) -> Option<(usize, usize)> {
    const {
        assert!(
            HDR >= QUOTE,
            "the quote's old and new places must not overlap"
        )
    };
    let len = ETH_HLEN + HDR + QUOTE;
    // SAFETY: a plain helper call on the program's own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) } != 0 {
        return None;
    }
    ctx.pull_data(len as u32).ok()?;
    let (data, end) = linear(ctx, len)?;
    let (Some(from), Some(to)) = (
        ptr_at::<[u8; QUOTE]>(data, end, ETH_HLEN),
        ptr_at::<[u8; QUOTE]>(data, end, ETH_HLEN + HDR),
    ) else {
        return None;
    };
    // SAFETY: both inside the frame (checked above) and disjoint (HDR >= QUOTE).
    unsafe { core::ptr::copy_nonoverlapping(from, to, 1) };
    Some((data, end))
}

/// Addresses the reply in `eth` back to the pod that sent the packet (its source
/// MAC), from the gateway. The EtherType stays: the reply is of the packet's family.
#[inline(always)]
pub fn address_to_pod(eth: &mut EthHdr, cfg: &Config) {
    copy_mac(&mut eth.dst_addr, &eth.src_addr);
    copy_mac(&mut eth.src_addr, &cfg.gateway_mac);
}

/// Sends the reply out of the pod's veth `ifindex`, straight back to it.
#[inline(always)]
pub fn send_back(ifindex: u32) -> i64 {
    // SAFETY: a plain helper call with valid arguments.
    unsafe { bpf_redirect(ifindex, 0) }
}
