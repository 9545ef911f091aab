//! IPv4 header rules: the receive-side checks of `ip_rcv`, and the router's TTL
//! decrement with its incremental checksum update.

use aya_ebpf::programs::TcContext;

use crate::hdr::{ETH_HLEN, Ipv4Hdr};

/// The header length in bytes if the header passes the checks the receiving stack's
/// ip_rcv would make on it; `None` for a malformed one.
///
/// A frame failing them must never be redirected: it would bypass the node's stack with
/// a header nobody validated.
#[inline(always)]
pub fn valid_header_len(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<u32> {
    let version_ihl = ip.version_ihl;
    let hdr_len = u32::from(version_ihl & 0x0f) * 4;
    let tot_len = u32::from(u16::from_be(ip.tot_len));
    if version_ihl >> 4 != 4
        || hdr_len < 20
        || tot_len < hdr_len
        || ETH_HLEN as u32 + tot_len > ctx.len()
    {
        return None;
    }
    Some(hdr_len)
}

/// Decrements the TTL and patches the header checksum incrementally, as the kernel's
/// `ip_decrease_ttl` does: the TTL is the high byte of its 16-bit word, so the word
/// drops by 0x0100 and the one's complement sum (the checksum's complement) by the
/// same, i.e. the checksum grows by 0x0100 with end-around carry. The arithmetic is on
/// the field as stored (network order), with 0x0100 converted alike.
#[inline(always)]
pub fn decrease_ttl(ip: &mut Ipv4Hdr) {
    let check = u32::from(ip.check) + u32::from(0x0100u16.to_be());
    ip.check = (check + u32::from(check >= 0xffff)) as u16;
    ip.ttl -= 1;
}
