//! IPv4 header rules: the receive-side checks of `ip_rcv` (lengths, BIG TCP, the
//! header checksum), and the router's TTL decrement with its incremental checksum
//! update.

use aya_ebpf::programs::TcContext;

use crate::hdr::{ETH_HLEN, IPPROTO_TCP, Ipv4Hdr, be16, set_be16};

/// The header length in bytes if the header passes the checks the receiving stack's
/// ip_rcv would make on it; `None` for a malformed one.
///
/// A frame failing them must never be redirected: it would bypass the node's stack with
/// a header nobody validated.
#[inline(always)]
pub fn valid_header_len(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<u32> {
    let version_ihl = ip.vihl;
    let hdr_len = u32::from(version_ihl & 0x0f) * 4;
    let mut tot_len = u32::from(u16::from_be(be16(&ip.tot_len)));
    // BIG TCP (gso_ipv4_max_size above 64 KiB, kernel >= 6.3): a TCP super-packet
    // longer than the 16-bit field can say carries 0 there, and ip_rcv takes the skb's
    // length instead (iph_totlen). Its test, skb_is_gso_tcp(), is not visible to BPF:
    // a nonzero gso_size says GSO, the protocol field says TCP.
    if tot_len == 0 && gso_size(ctx) != 0 && ip.proto == IPPROTO_TCP {
        tot_len = ctx.len() - ETH_HLEN as u32;
    }
    if version_ihl >> 4 != 4
        || hdr_len < 20
        || tot_len < hdr_len
        || ETH_HLEN as u32 + tot_len > ctx.len()
    {
        return None;
    }
    Some(hdr_len)
}

/// Whether the checksum of a header without options verifies, as ip_rcv's
/// `ip_fast_csum`: the one's complement sum of its ten 16-bit words, checksum
/// included, is 0xffff. The sum does not depend on the byte order the words are read
/// in (RFC 1071), so no swapping; ten loads unrolled, no helper call.
#[inline(always)]
pub fn checksum_ok(ip: &Ipv4Hdr) -> bool {
    let words = (ip as *const Ipv4Hdr).cast::<u16>();
    let mut sum = 0u32;
    for i in 0..size_of::<Ipv4Hdr>() / 2 {
        // SAFETY: within the 20 bytes of `ip`, at an even address (see hdr.rs).
        sum += u32::from(unsafe { words.add(i).read() });
    }
    // At most 10 * 0xffff: two folds bring it into 16 bits.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

/// `skb_shinfo(skb)->gso_size`: nonzero for a GSO skb.
#[inline(always)]
fn gso_size(ctx: &TcContext) -> u32 {
    // SAFETY: `ctx.skb.skb` is the program's context pointer, valid for the whole run.
    unsafe { (*ctx.skb.skb).gso_size }
}

/// Decrements the TTL and patches the header checksum incrementally, as the kernel's
/// `ip_decrease_ttl` does: the TTL is the high byte of its 16-bit word, so the word
/// drops by 0x0100 and the one's complement sum (the checksum's complement) by the
/// same, i.e. the checksum grows by 0x0100 with end-around carry. The arithmetic is on
/// the field as stored (network order), with 0x0100 converted alike.
#[inline(always)]
pub fn decrease_ttl(ip: &mut Ipv4Hdr) {
    let check = u32::from(be16(&ip.check)) + u32::from(0x0100u16.to_be());
    set_be16(&mut ip.check, (check + u32::from(check >= 0xffff)) as u16);
    ip.ttl -= 1;
}
