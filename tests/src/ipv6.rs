//! IPv6 packets and neighbour discovery messages built byte by byte, independently of
//! the datapath (RFC 8200, RFC 4443, RFC 4861), for the tests that feed them to
//! `from_pod` or send them from inside a pod.

use std::net::Ipv6Addr;

use crate::ones_sum;

pub const ETH_P_IPV6: u16 = 0x86dd;
pub const NH_ICMPV6: u8 = 58;

/// ICMPv6 types.
pub const ECHO_REQUEST: u8 = 128;
pub const MLD2_REPORT: u8 = 143;
pub const RS: u8 = 133;
pub const RA: u8 = 134;
pub const NS: u8 = 135;
pub const NA: u8 = 136;
pub const REDIRECT: u8 = 137;

/// NA flags (first byte of the word after the checksum).
pub const NA_ROUTER: u8 = 0x80;
pub const NA_SOLICITED: u8 = 0x40;
pub const NA_OVERRIDE: u8 = 0x20;

pub fn ip6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("IPv6 literal").octets()
}

/// The EUI-64 link-local address of a MAC (RFC 4291 appendix A).
pub fn link_local(mac: [u8; 6]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13..].copy_from_slice(&mac[3..]);
    a
}

/// The solicited-node multicast address of `target` and its MAC (RFC 4291, 2464).
pub fn solicited_node(target: [u8; 16]) -> ([u8; 16], [u8; 6]) {
    let mut a = ip6("ff02::1:ff00:0");
    a[13..].copy_from_slice(&target[13..]);
    (a, [0x33, 0x33, a[12], a[13], a[14], a[15]])
}

/// The MAC an IPv6 multicast address maps to (RFC 2464).
pub fn multicast_mac(group: [u8; 16]) -> [u8; 6] {
    [0x33, 0x33, group[12], group[13], group[14], group[15]]
}

/// The ICMPv6 checksum over the pseudo-header and `msg` (its checksum field taken as
/// zero).
pub fn icmp6_checksum(src: [u8; 16], dst: [u8; 16], msg: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + msg.len());
    data.extend_from_slice(&src);
    data.extend_from_slice(&dst);
    data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, NH_ICMPV6]);
    let mut m = msg.to_vec();
    m[2] = 0;
    m[3] = 0;
    data.extend_from_slice(&m);
    !ones_sum(&data)
}

/// An IPv6 packet: fixed header (payload length from `payload`) and payload.
pub fn ipv6_packet(
    src: [u8; 16],
    dst: [u8; 16],
    next_hdr: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.push(next_hdr);
    p.push(hop_limit);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// An ICMPv6 packet with a correct checksum.
pub fn icmp6_packet(src: [u8; 16], dst: [u8; 16], hop_limit: u8, msg: &[u8]) -> Vec<u8> {
    let mut msg = msg.to_vec();
    let check = icmp6_checksum(src, dst, &msg);
    msg[2..4].copy_from_slice(&check.to_be_bytes());
    ipv6_packet(src, dst, NH_ICMPV6, hop_limit, &msg)
}

/// A neighbour solicitation for `target`, with the source link-layer address option
/// (`Some(mac)`) or without.
pub fn ns_msg(target: [u8; 16], slla: Option<[u8; 6]>) -> Vec<u8> {
    let mut m = vec![NS, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target);
    if let Some(mac) = slla {
        m.extend_from_slice(&[1, 1]);
        m.extend_from_slice(&mac);
    }
    m
}

/// A neighbour advertisement for `target` with `flags` and the target link-layer
/// address option.
pub fn na_msg(target: [u8; 16], flags: u8, tlla: [u8; 6]) -> Vec<u8> {
    let mut m = vec![NA, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target);
    m.extend_from_slice(&[2, 1]);
    m.extend_from_slice(&tlla);
    m
}

/// A router advertisement: default router for 1800 s, the source link-layer option
/// `mac`, and a prefix information option (on-link, autonomous) for `prefix`/64.
pub fn ra_msg(mac: [u8; 6], prefix: [u8; 16]) -> Vec<u8> {
    let mut m = vec![RA, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&[1, 1]);
    m.extend_from_slice(&mac);
    m.extend_from_slice(&[
        3, 4, 64, 0xc0, 0, 0, 0x1c, 0x20, 0, 0, 0x1c, 0x20, 0, 0, 0, 0,
    ]);
    m.extend_from_slice(&prefix);
    m
}

/// A redirect: "to reach `dst`, use `target`" (with the target's link-layer option).
pub fn redirect_msg(target: [u8; 16], dst: [u8; 16], tlla: [u8; 6]) -> Vec<u8> {
    let mut m = vec![REDIRECT, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target);
    m.extend_from_slice(&dst);
    m.extend_from_slice(&[2, 1]);
    m.extend_from_slice(&tlla);
    m
}

/// Checks that `out` is the gateway's ICMPv6 error (`type_`, `code`, `info`) about
/// the pod's IPv6 frame `sent`: back to the pod's MAC and address from the gateway
/// MAC `gw_mac` and its link-local address, hop limit 64, the checksum computed
/// independently, and the quote the first 48 bytes of the sent packet.
pub fn assert_icmp6_error(
    sent: &[u8],
    out: &[u8],
    gw_mac: [u8; 6],
    (type_, code, info): (u8, u8, u32),
) {
    assert_eq!(
        out.len(),
        14 + 40 + 8 + 48,
        "error frame length: {out:02x?}"
    );
    assert_eq!(out[0..6], sent[6..12], "to the pod's MAC");
    assert_eq!(out[6..12], gw_mac, "from the gateway MAC");
    assert_eq!(u16::from_be_bytes([out[12], out[13]]), ETH_P_IPV6);
    let ip = &out[14..54];
    assert_eq!(ip[0..4], [0x60, 0, 0, 0], "version, class, flow label");
    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 56, "payload length");
    assert_eq!((ip[6], ip[7]), (NH_ICMPV6, 64), "next header, hop limit");
    let src: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
    let dst: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
    assert_eq!(
        src,
        link_local(gw_mac),
        "from the gateway's link-local address"
    );
    assert_eq!(dst, sent[22..38], "to the pod's address");
    let msg = &out[54..];
    assert_eq!((msg[0], msg[1]), (type_, code), "type and code");
    assert_eq!(
        u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]),
        info,
        "info"
    );
    assert_eq!(
        u16::from_be_bytes([msg[2], msg[3]]),
        icmp6_checksum(src, dst, msg),
        "ICMPv6 checksum"
    );
    assert_eq!(
        msg[8..],
        sent[14..62],
        "the quote: the sent header and 8 bytes"
    );
}
