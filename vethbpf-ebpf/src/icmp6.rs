//! ICMPv6 for the gateway's own address, the twin of [`crate::icmp`]: echo requests to
//! fe80::ecee:eeff:feee:eeee are answered here, so that `ping GATEWAY%eth0` works from
//! a pod as `ping 169.254.1.1` does. A pod sends them from its link-local address
//! (source address selection for a link-local destination), so that source is
//! accepted for this as for NDP; the answer goes back out of the same veth only.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use network_types::icmp::Icmpv6Hdr;
use vethbpf_common::{Config, Verdict};

use crate::{
    hdr::{ETH_HLEN, EthHdr, Ipv6Hdr, be16, copy_mac, linear, ptr_at, set_be16},
    icmp::csum_replace,
    ipv6::{Addr, IPV6_HLEN, load_addr, store_addr},
    stats::Decision,
};

pub const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// The hop limit of a reply: the kernel's default (net.ipv6.conf.*.hop_limit).
const REPLY_HOP_LIMIT: u8 = 64;

const _: () = assert!(size_of::<Icmpv6Hdr>() == 8);
const _: () =
    assert!((ETH_HLEN + IPV6_HLEN + core::mem::offset_of!(Icmpv6Hdr, check)).is_multiple_of(2));

/// The gateway's IPv6 address: the EUI-64 link-local address of the gateway MAC (as
/// userspace gives the host veths and the pods' routes).
#[inline(always)]
pub fn gateway_addr(cfg: &Config) -> Addr {
    let m = &cfg.gateway_mac;
    [
        u32::from_ne_bytes([0xfe, 0x80, 0, 0]),
        0,
        u32::from_ne_bytes([m[0] ^ 0x02, m[1], m[2], 0xff]),
        u32::from_ne_bytes([0xfe, m[3], m[4], m[5]]),
    ]
}

/// Turns the echo request (ICMPv6 right behind the fixed header, to the gateway, from
/// an address of the pod: the caller checked) into the gateway's reply in place and
/// sends it back out of the veth `ifindex`: MACs and addresses swapped, type 129, a
/// fresh hop limit; identifier, sequence number and data stay (RFC 4443 4.2). The
/// checksum changes only by the type (the pseudo-header's sum survives the swap).
#[inline(always)]
pub fn echo_to_gateway(ctx: &TcContext, ifindex: u32, cfg: &Config) -> Decision {
    const ICMP_AT: usize = ETH_HLEN + IPV6_HLEN;
    let Some((data, data_end)) = linear(ctx, ICMP_AT + size_of::<Icmpv6Hdr>()) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    let (Some(eth), Some(ip), Some(icmp)) = (
        ptr_at::<EthHdr>(data, data_end, 0),
        ptr_at::<Ipv6Hdr>(data, data_end, ETH_HLEN),
        ptr_at::<Icmpv6Hdr>(data, data_end, ICMP_AT),
    ) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    // SAFETY: all three were bounds-checked against data_end just above, and no helper
    // that changes packet data runs while they are in use.
    let (eth, ip, icmp) = unsafe { (&mut *eth, &mut *ip, &mut *icmp) };
    if usize::from(u16::from_be_bytes(ip.payload_len)) < size_of::<Icmpv6Hdr>() {
        return Decision::drop(Verdict::DropMalformed);
    }

    copy_mac(&mut eth.dst_addr, &eth.src_addr);
    copy_mac(&mut eth.src_addr, &cfg.gateway_mac);
    let (pod, gateway) = (load_addr(&ip.src_addr), load_addr(&ip.dst_addr));
    store_addr(&mut ip.src_addr, &gateway);
    store_addr(&mut ip.dst_addr, &pod);
    ip.hop_limit = REPLY_HOP_LIMIT;
    let old = u16::from_ne_bytes([icmp.type_, icmp.code]);
    icmp.type_ = ICMPV6_ECHO_REPLY;
    let check = csum_replace(
        be16(&icmp.check),
        old,
        u16::from_ne_bytes([icmp.type_, icmp.code]),
    );
    set_be16(&mut icmp.check, check);

    // SAFETY: a plain helper call with valid arguments.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    Decision::redirect(Verdict::EchoReply, action)
}
