//! The IPv4 and L4 fields connection tracking and NAT work on: addresses, protocol,
//! fragment bits, ports or ICMP identifier, TCP flags, and where each checksum is.
//!
//! Only headers without IPv4 options are handled here (callers hand packets with
//! options to the node stack), so the L4 header is always at [`L4_OFF`].

use aya_ebpf::programs::TcContext;
use vethbpf_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    csum::L4Csum,
    hdr::{ETH_HLEN, linear, ptr_at},
};

/// Offsets in the frame.
pub const L3_OFF: usize = ETH_HLEN;
pub const L4_OFF: usize = ETH_HLEN + 20;
pub const SADDR_OFF: usize = L3_OFF + 12;
pub const DADDR_OFF: usize = L3_OFF + 16;

/// TCP header flags (byte 13).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// ICMP types.
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROB: u8 = 12;

/// IPv4 header fields, as stored (network order) unless noted.
#[derive(Clone, Copy)]
pub struct Ip {
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    /// Flags and fragment offset, host order.
    pub frag: u16,
}

impl Ip {
    /// A fragment other than the first: no L4 header.
    #[inline(always)]
    pub const fn is_later_fragment(&self) -> bool {
        self.frag & 0x1fff != 0
    }
    /// The first fragment of a fragmented datagram.
    #[inline(always)]
    pub const fn is_first_fragment(&self) -> bool {
        self.frag & 0x3fff == 0x2000
    }
}

/// Reads the IPv4 fields of a frame whose header is valid and 20 bytes long.
#[inline(always)]
pub fn ip(ctx: &TcContext) -> Option<Ip> {
    let (data, end) = linear(ctx, L4_OFF)?;
    let word = |off: usize| ptr_at::<u32>(data, end, L3_OFF + off);
    let (w1, w2, saddr, daddr) = (word(4)?, word(8)?, word(12)?, word(16)?);
    // SAFETY: every pointer was bounds-checked against `end`; the IPv4 header sits at
    // a 2 mod 4 address, so the words are read unaligned.
    let (w1, w2, saddr, daddr) = unsafe {
        (
            w1.read_unaligned(),
            w2.read_unaligned(),
            saddr.read_unaligned(),
            daddr.read_unaligned(),
        )
    };
    // Little-endian loads of network-order bytes: byte 0 of the word is bits 0..8.
    Some(Ip {
        saddr,
        daddr,
        id: w1 as u16,
        frag: u16::from_be((w1 >> 16) as u16),
        ttl: w2 as u8,
        proto: (w2 >> 8) as u8,
    })
}

/// The L4 fields of a packet that has its L4 header (not a later fragment).
#[derive(Clone, Copy)]
pub struct L4 {
    /// TCP/UDP ports; ICMP: `sport` is the echo identifier, `dport` 0.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for others).
    pub tcp_flags: u8,
    /// ICMP type (0 for others; test `proto` first).
    pub icmp_type: u8,
    /// Where the L4 checksum is, for the rewrite.
    pub csum: L4Csum,
}

/// Reads the L4 header of `proto` at [`L4_OFF`]: TCP, UDP or ICMP; `None` for other
/// protocols or a header the packet does not hold.
#[inline(always)]
pub fn l4(ctx: &TcContext, proto: u8) -> Option<L4> {
    let off = L4_OFF;
    match proto {
        IPPROTO_TCP => {
            let (data, end) = linear(ctx, L4_OFF + 20)?;
            let ports = ptr_at::<[u16; 2]>(data, end, L4_OFF)?;
            let flags = ptr_at::<u8>(data, end, L4_OFF + 13)?;
            // SAFETY: bounds-checked above; the L4 header is 2-byte aligned.
            let (ports, flags) = unsafe { (*ports, *flags) };
            Some(L4 {
                sport: ports[0],
                dport: ports[1],
                tcp_flags: flags,
                icmp_type: 0,
                csum: L4Csum::tcp(off + 16),
            })
        }
        IPPROTO_UDP => {
            let (data, end) = linear(ctx, L4_OFF + 8)?;
            let ports = ptr_at::<[u16; 2]>(data, end, L4_OFF)?;
            // SAFETY: bounds-checked above.
            let ports = unsafe { *ports };
            Some(L4 {
                sport: ports[0],
                dport: ports[1],
                tcp_flags: 0,
                icmp_type: 0,
                csum: L4Csum::udp(off + 6),
            })
        }
        IPPROTO_ICMP => {
            let (data, end) = linear(ctx, L4_OFF + 8)?;
            let ty = ptr_at::<u8>(data, end, L4_OFF)?;
            let id = ptr_at::<u16>(data, end, L4_OFF + 4)?;
            // SAFETY: bounds-checked above.
            let (ty, id) = unsafe { (*ty, *id) };
            Some(L4 {
                sport: id,
                dport: 0,
                tcp_flags: 0,
                icmp_type: ty,
                csum: L4Csum::icmp(off + 2),
            })
        }
        _ => None,
    }
}

/// Offset in the frame of the port (ICMP: identifier) field of `proto`'s header at
/// `l4_off`, `source` or destination.
#[inline(always)]
pub const fn port_off(proto: u8, l4_off: usize, source: bool) -> usize {
    match (proto, source) {
        (IPPROTO_ICMP, _) => l4_off + 4,
        (_, true) => l4_off,
        (_, false) => l4_off + 2,
    }
}
