//! ICMP for the gateway's own address: echo requests to it are answered here, so that
//! `ping 169.254.1.1`, the first thing a person tries in a pod without network, works.
//! Nothing else on the node owns the address (the host veths have none).

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use vethbpf_common::{Config, Verdict};

use crate::{
    hdr::{
        ETH_HLEN, EthHdr, IPPROTO_ICMP, Icmpv4Hdr, Ipv4Hdr, be16, copy_mac, ipv4_addr, linear,
        ptr_at, set_be16, set_ipv4_addr,
    },
    stats::Decision,
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// The TTL of a reply: the node's default (net.ipv4.ip_default_ttl).
const REPLY_TTL: u8 = 64;
/// The fragment offset and the more-fragments flag, as stored (network order).
const IP_FRAGMENT_MASK: u16 = 0x3fffu16.to_be();

/// Handles an IPv4 packet with a verified 20-byte header, from the pod's own address,
/// to the gateway address: an echo request is turned into the reply in place and sent
/// back out of the veth `ifindex`; anything else goes to the node stack, as before.
///
/// Fragmented requests (a ping larger than the MTU) are not reassembled here: they go
/// to the node stack, which does not answer for the gateway either.
#[inline(always)]
pub fn to_gateway(ctx: &TcContext, ifindex: u32, cfg: &Config) -> Decision {
    const ICMP_AT: usize = ETH_HLEN + size_of::<Ipv4Hdr>();
    // The caller checked that the frame holds the IPv4 total length; a shorter ICMP
    // message than its header is no echo request.
    let Some((data, data_end)) = linear(ctx, ICMP_AT + size_of::<Icmpv4Hdr>()) else {
        return Decision::pass();
    };
    let (Some(eth), Some(ip), Some(icmp)) = (
        ptr_at::<EthHdr>(data, data_end, 0),
        ptr_at::<Ipv4Hdr>(data, data_end, ETH_HLEN),
        ptr_at::<Icmpv4Hdr>(data, data_end, ICMP_AT),
    ) else {
        return Decision::pass();
    };
    // SAFETY: all three were bounds-checked against data_end just above, and no helper
    // that changes packet data runs while they are in use.
    let (eth, ip, icmp) = unsafe { (&mut *eth, &mut *ip, &mut *icmp) };
    if ip.proto != IPPROTO_ICMP
        || be16(&ip.frags) & IP_FRAGMENT_MASK != 0
        || u16::from_be(be16(&ip.tot_len)) < (size_of::<Ipv4Hdr>() + size_of::<Icmpv4Hdr>()) as u16
        || icmp.type_ != ICMP_ECHO_REQUEST
    {
        return Decision::pass();
    }

    echo_reply_in_place(eth, ip, icmp, cfg);
    // Egress out of the same veth: straight back to the pod, as the ARP reply.
    // SAFETY: a plain helper call with valid arguments.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    Decision::redirect(Verdict::EchoReply, action)
}

/// Turns the echo request into the gateway's reply: MACs and addresses swapped, type
/// 0, a fresh TTL. Identifier, sequence number and data stay, as RFC 792 asks. Both
/// checksums are updated incrementally: the IPv4 one (verified by the caller) for the
/// TTL word, the swap leaving its sum alone; the ICMP one for the type word. A request
/// whose ICMP checksum was wrong gets a reply whose checksum is just as wrong, which
/// the pod's stack drops, as a host would have dropped the request.
#[inline(always)]
fn echo_reply_in_place(eth: &mut EthHdr, ip: &mut Ipv4Hdr, icmp: &mut Icmpv4Hdr, cfg: &Config) {
    copy_mac(&mut eth.dst_addr, &eth.src_addr);
    copy_mac(&mut eth.src_addr, &cfg.gateway_mac);

    let pod = ipv4_addr(&ip.src_addr);
    set_ipv4_addr(&mut ip.dst_addr, pod);
    set_ipv4_addr(&mut ip.src_addr, cfg.gateway_ip);
    let old = ttl_proto_word(ip);
    ip.ttl = REPLY_TTL;
    let check = csum_replace(be16(&ip.check), old, ttl_proto_word(ip));
    set_be16(&mut ip.check, check);

    let old = type_code_word(icmp);
    icmp.type_ = ICMP_ECHO_REPLY;
    let check = csum_replace(be16(&icmp.check), old, type_code_word(icmp));
    set_be16(&mut icmp.check, check);
}

/// The header's TTL and protocol as the 16-bit word the checksum sums (as stored).
#[inline(always)]
fn ttl_proto_word(ip: &Ipv4Hdr) -> u16 {
    u16::from_ne_bytes([ip.ttl, ip.proto])
}

/// The ICMP type and code as the 16-bit word the checksum sums (as stored).
#[inline(always)]
fn type_code_word(icmp: &Icmpv4Hdr) -> u16 {
    u16::from_ne_bytes([icmp.type_, icmp.code])
}

/// A checksum after one 16-bit word of what it covers went from `old` to `new`
/// (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')). All three as stored: one's complement
/// sums come out the same in either byte order.
#[inline(always)]
pub(crate) fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
