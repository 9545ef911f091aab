//! ICMP errors the gateway sends back to a pod about a packet it cannot forward:
//! "time exceeded" for a packet whose TTL would expire at this hop, and "fragmentation
//! needed" for one too big for the uplink with DF set. A kernel router sends both
//! (`ip_forward`); without them `traceroute` shows no first hop and a pod whose MTU is
//! larger than the uplink's never learns the path MTU (its TCP stalls: a PMTU black
//! hole).
//!
//! The packet becomes the error in place: the frame is cut to the reply's size, the
//! first 28 bytes of the original IP packet (its header and the first 8 bytes of the
//! transport header, what RFC 792 quotes and what the pod's stack needs to find the
//! socket) are kept as the quote, and the reply is sent out of the pod's veth, back to
//! it. The source is the gateway address: the router the pod knows.
//!
//! Not sent (RFC 1122 3.2.2, RFC 1812 4.3.2.7), the packet only dropped: about an ICMP
//! error, about a fragment other than the first, about a packet with IP options.
//! There is no rate limit (the kernel's icmp_ratelimit): the reply goes only to the
//! pod that sent the packet, is smaller than it, and costs what forwarding would.

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_redirect, bpf_skb_change_tail, bpf_skb_store_bytes},
    programs::TcContext,
};
use vethbpf_common::Verdict;

use crate::{
    csum,
    hdr::{ETH_HLEN, ETH_P_IP, EthHdr, IPPROTO_ICMP, Ipv4Hdr, be16, linear, ptr_at, set_eth},
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
/// IPv4 header, ICMP header, quote: the reply's IP packet.
const REPLY_IP_LEN: usize = 20 + 8 + QUOTE_LEN;
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
/// caller, and its stack is not the callers'.
#[inline(never)]
fn send(ctx: &TcContext, ifindex: u32, error: u32) -> i64 {
    let (type_, code, mtu) = (error as u8, (error >> 8) as u8, (error >> 16) as u16);
    let dropped = i64::from(TC_ACT_SHOT);
    let Some(cfg) = CONFIG.get(0) else {
        return dropped;
    };
    // The reply's IP packet, built on the stack as words (bpf_csum_diff sums words):
    // [0..5) IPv4 header, [5..7) ICMP header, [7..14) the quote.
    let mut pkt = [0u32; REPLY_IP_LEN / 4];
    let pod_mac;
    {
        let Some((data, end)) = linear(ctx, ETH_HLEN + QUOTE_LEN) else {
            return dropped;
        };
        let (Some(eth), Some(ip), Some(l4)) = (
            ptr_at::<EthHdr>(data, end, 0),
            ptr_at::<Ipv4Hdr>(data, end, ETH_HLEN),
            ptr_at::<u8>(data, end, ETH_HLEN + 20),
        ) else {
            return dropped;
        };
        // SAFETY: all three bounds-checked just above; read only, before any helper
        // that changes packet data.
        let (eth, ip, l4) = unsafe { (&*eth, &*ip, *l4) };
        if ip.ihl() != 20
            || be16(&ip.frags) & IP_OFFSET_MASK != 0
            || (ip.proto == IPPROTO_ICMP && icmp_error::is_error(l4))
        {
            return dropped;
        }
        pod_mac = eth.src_addr;
        // SAFETY: the quote's 28 bytes are inside the frame (checked above); the
        // destination is 28 bytes of `pkt`, 4-aligned.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (data + ETH_HLEN) as *const u8,
                pkt.as_mut_ptr().add(7).cast::<u8>(),
                QUOTE_LEN,
            );
        }
    }
    // The quoted header's source is the pod: the reply goes to it.
    let pod_ip = pkt[7 + 3];

    let hdr: &mut [u8; 20] = as_bytes(&mut pkt, 0);
    hdr[0] = 0x45;
    hdr[1] = REPLY_TOS;
    hdr[2..4].copy_from_slice(&(REPLY_IP_LEN as u16).to_be_bytes());
    hdr[8] = REPLY_TTL;
    hdr[9] = IPPROTO_ICMP;
    pkt[3] = cfg.gateway_ip;
    pkt[4] = pod_ip;
    let ip_check = csum::finish(csum::sum(pkt.as_mut_ptr(), 20, 0));
    as_bytes::<20>(&mut pkt, 0)[10..12].copy_from_slice(&ip_check.to_ne_bytes());

    let icmp: &mut [u8; 8] = as_bytes(&mut pkt, 20);
    icmp[0] = type_;
    icmp[1] = code;
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    let icmp_check = csum::finish(csum::sum(
        pkt.as_mut_ptr().wrapping_add(5),
        (REPLY_IP_LEN - 20) as u32,
        0,
    ));
    as_bytes::<8>(&mut pkt, 20)[2..4].copy_from_slice(&icmp_check.to_ne_bytes());

    reply_to_pod(ctx, ifindex, &pkt, &pod_mac, &cfg.gateway_mac, ETH_P_IP)
}

/// Makes the frame the reply `ip` (an IP packet of `N` words on the stack) from
/// `gateway_mac` to `pod_mac` (EtherType `proto`, as stored) and sends it out of the
/// pod's veth `ifindex`, straight back to it; the tc action (`TC_ACT_SHOT` if the
/// frame cannot be reshaped). The frame is cut (or, for a short packet, padded) to
/// the reply's size, which resets a GSO packet's segmentation state.
#[inline(always)]
pub fn reply_to_pod<const N: usize>(
    ctx: &TcContext,
    ifindex: u32,
    ip: &[u32; N],
    pod_mac: &[u8; 6],
    gateway_mac: &[u8; 6],
    proto: u16,
) -> i64 {
    let len = (N * 4) as u32;
    // SAFETY: plain helper calls on the program's own skb; the source is a stack
    // buffer of `len` bytes and the frame is `ETH_HLEN + len` long once the first
    // succeeded. Packet pointers taken before are invalid after it.
    let stored = unsafe {
        bpf_skb_change_tail(ctx.skb.skb, ETH_HLEN as u32 + len, 0) == 0
            && bpf_skb_store_bytes(ctx.skb.skb, ETH_HLEN as u32, ip.as_ptr().cast(), len, 0) == 0
    } && set_eth(ctx, pod_mac, gateway_mac, proto);
    if !stored {
        return i64::from(TC_ACT_SHOT);
    }
    // SAFETY: a plain helper call with valid arguments.
    unsafe { bpf_redirect(ifindex, 0) }
}

/// `N` bytes of `pkt` from byte `at` (a multiple of 4).
#[inline(always)]
fn as_bytes<const N: usize>(pkt: &mut [u32; REPLY_IP_LEN / 4], at: usize) -> &mut [u8; N] {
    // SAFETY: callers ask for ranges inside the 56-byte buffer; u8 has no alignment.
    unsafe { &mut *pkt.as_mut_ptr().cast::<u8>().add(at).cast::<[u8; N]>() }
}
