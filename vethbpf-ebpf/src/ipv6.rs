//! IPv6 header rules: the receive-side checks of `ipv6_rcv`, the walk over extension
//! headers to the upper-layer protocol, addresses as words, and the router's hop limit.
//!
//! Extension headers (RFC 8200) and what the datapath does with them:
//! - Up to [`MAX_EXT_HDRS`] of Hop-by-Hop (first only), Destination Options and Routing
//!   are walked to find the upper-layer protocol; a longer chain, a Hop-by-Hop header
//!   anywhere but first, or a chain running past the frame is malformed (dropped).
//!   Cilium bounds its walk the same way (`IPV6_MAX_HEADERS`).
//! - A Fragment header ends the walk: what follows is part of a fragmented payload,
//!   which is never taken for neighbour discovery or MLD (RFC 6980 has receivers ignore
//!   fragmented NDP), so only the pod's own address may send it.
//! - Anything else (TCP, UDP, ICMPv6, ESP, AH, No Next Header, ...) is the upper layer.
//!
//! Forwarding to a local pod does not depend on the upper layer: a router forwards
//! whatever follows the fixed header, and the destination's stack processes the
//! extension headers addressed to it. What the walk decides is only whether a frame is
//! link-local control traffic (NDP, MLD), the one kind a pod may send from its
//! link-local or the unspecified address.

use aya_ebpf::programs::TcContext;

use crate::hdr::{ETH_HLEN, Ipv6Hdr};

/// Fixed header length.
pub const IPV6_HLEN: usize = Ipv6Hdr::LEN;

/// Next-header values the walk knows (IANA protocol numbers).
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_ICMPV6: u8 = 58;
pub const NEXTHDR_DEST: u8 = 60;

/// Extension headers walked at most (Cilium's `IPV6_MAX_HEADERS` is 4 too).
pub const MAX_EXT_HDRS: usize = 4;

// Behind Ethernet the addresses sit at frame offsets 22 and 38: even, so word reads
// are sound; they are not 4-aligned, hence 16-bit words.
const _: () = assert!((ETH_HLEN + core::mem::offset_of!(Ipv6Hdr, src_addr)).is_multiple_of(2));
const _: () = assert!((ETH_HLEN + core::mem::offset_of!(Ipv6Hdr, dst_addr)).is_multiple_of(2));

/// An IPv6 address as four 32-bit words holding the bytes in memory order (the map
/// representation: what a load of the bytes gives on this little-endian target).
pub type Addr = [u32; 4];

/// The unspecified address `::`.
pub const UNSPECIFIED: Addr = [0; 4];

/// Reads a packet address (2-byte aligned) as words.
#[inline(always)]
pub fn load_addr(bytes: &[u8; 16]) -> Addr {
    let w = bytes.as_ptr().cast::<u16>();
    // SAFETY: sixteen readable bytes at an even address (see the offset checks above;
    // the kernel keeps skb->data 2-byte aligned).
    unsafe {
        let word =
            |i: usize| u32::from(w.add(2 * i).read()) | (u32::from(w.add(2 * i + 1).read()) << 16);
        [word(0), word(1), word(2), word(3)]
    }
}

/// Writes an address into a packet field (2-byte aligned).
#[inline(always)]
pub fn store_addr(bytes: &mut [u8; 16], addr: &Addr) {
    let w = bytes.as_mut_ptr().cast::<u16>();
    // SAFETY: sixteen writable bytes at an even address (as for `load_addr`).
    unsafe {
        for (i, word) in addr.iter().enumerate() {
            w.add(2 * i).write(*word as u16);
            w.add(2 * i + 1).write((*word >> 16) as u16);
        }
    }
}

/// Reads an address from a map value field (4-byte aligned, see vethbpf-common).
#[inline(always)]
pub fn map_addr(bytes: &[u8; 16]) -> Addr {
    let w = bytes.as_ptr().cast::<u32>();
    // SAFETY: sixteen readable bytes, 4-byte aligned (checked below).
    unsafe { [w.read(), w.add(1).read(), w.add(2).read(), w.add(3).read()] }
}

const _: () = assert!(align_of::<vethbpf_common::EndpointInfo6>() >= 4);
const _: () = assert!(core::mem::offset_of!(vethbpf_common::EndpointInfo6, ip).is_multiple_of(4));
const _: () =
    assert!(core::mem::offset_of!(vethbpf_common::EndpointInfo6, link_local).is_multiple_of(4));

/// Link-local unicast, fe80::/10: first byte 0xfe, top two bits of the second 10.
#[inline(always)]
pub fn is_link_local(a: &Addr) -> bool {
    a[0] & 0xc0ff == 0x80fe
}

/// Multicast, ff00::/8.
#[inline(always)]
pub fn is_multicast(a: &Addr) -> bool {
    a[0] & 0xff == 0xff
}

/// The frame offset where the packet ends, if the fixed header passes the checks
/// `ipv6_rcv` makes: version 6, and a payload length the frame holds (more is
/// Ethernet padding). A payload length of 0 takes the length from the skb, as a
/// jumbogram or a BIG TCP packet does. Frames failing them must never be redirected.
#[inline(always)]
pub fn packet_end(ctx: &TcContext, ip: &Ipv6Hdr) -> Option<u32> {
    let payload_len = u32::from(u16::from_be_bytes(ip.payload_len));
    let end = (ETH_HLEN + IPV6_HLEN) as u32 + payload_len;
    if ip.vcf[0] >> 4 != 6 || end > ctx.len() {
        return None;
    }
    Some(if payload_len == 0 { ctx.len() } else { end })
}

/// Where the upper-layer header of a packet starts and what it is.
#[derive(Clone, Copy)]
pub struct UpperLayer {
    /// Protocol number (the last next-header value).
    pub proto: u8,
    /// Frame offset of its header.
    pub offset: usize,
    /// It directly follows the fixed header (no extension header).
    pub plain: bool,
    /// A Fragment header came first: `proto` describes a fragment, never a whole
    /// control message.
    pub fragmented: bool,
}

#[inline(always)]
const fn is_walked(next: u8) -> bool {
    matches!(next, NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST)
}

/// Walks the extension headers (see the module comment) of a packet ending at frame
/// offset `end` ([`packet_end`]). `None`: malformed.
///
/// Reads with `bpf_skb_load_bytes`, which works on non-linear data too and leaves
/// packet pointers valid.
#[inline(always)]
pub fn upper_layer(ctx: &TcContext, ip: &Ipv6Hdr, end: u32) -> Option<UpperLayer> {
    let mut next = ip.next_hdr;
    let mut offset = ETH_HLEN + IPV6_HLEN;
    if !is_walked(next) && next != NEXTHDR_FRAGMENT {
        return Some(UpperLayer {
            proto: next,
            offset,
            plain: true,
            fragmented: false,
        });
    }
    for i in 0..MAX_EXT_HDRS {
        if next == NEXTHDR_FRAGMENT {
            // Fixed 8 bytes: next header, reserved, offset and flags, identification.
            if end < (offset + 8) as u32 {
                return None;
            }
            let [after, _] = ctx.load::<[u8; 2]>(offset).ok()?;
            return Some(UpperLayer {
                proto: after,
                offset: offset + 8,
                plain: false,
                fragmented: true,
            });
        }
        if !is_walked(next) {
            return Some(UpperLayer {
                proto: next,
                offset,
                plain: false,
                fragmented: false,
            });
        }
        // Hop-by-Hop may only come first (RFC 8200 4.1); ip6_input drops it elsewhere.
        if next == NEXTHDR_HOP && i != 0 {
            return None;
        }
        // Next header, then the length in 8-byte units not counting the first 8.
        let [after, len] = ctx.load::<[u8; 2]>(offset).ok()?;
        offset += (usize::from(len) + 1) * 8;
        if end < offset as u32 {
            return None;
        }
        next = after;
    }
    if is_walked(next) || next == NEXTHDR_FRAGMENT {
        // Longer than the walk goes: nothing decides what it carries.
        return None;
    }
    Some(UpperLayer {
        proto: next,
        offset,
        plain: false,
        fragmented: false,
    })
}

/// The traffic class (its low two bits are ECN).
#[inline(always)]
pub fn traffic_class(ip: &Ipv6Hdr) -> u8 {
    (ip.vcf[0] << 4) | (ip.vcf[1] >> 4)
}

/// The router's hop limit step. `false`: the packet would expire here (hop limit
/// <= 1) and must not be forwarded; the header is then left untouched. IPv6 has no
/// header checksum, and the upper-layer pseudo-header does not include the hop limit.
#[inline(always)]
pub fn decrease_hop_limit(ip: &mut Ipv6Hdr) -> bool {
    if ip.hop_limit <= 1 {
        return false;
    }
    ip.hop_limit -= 1;
    true
}
