//! ICMP errors about translated flows (RFC 5508, section 4.2): the error carries the
//! start of the packet it is about, and both it and the error's own header must be
//! translated, or the receiver cannot match the error to its socket (path MTU
//! discovery and traceroute would break).
//!
//! From the uplink, an error about a packet a pod sent through the NAT (inner source
//! = NAT address and port) goes to the pod: inner source and outer destination
//! become the pod's. From a pod, an error about a reply it received (inner
//! destination = the pod) goes out: inner destination and outer source become the
//! NAT's. The inner IPv4 checksum and the inner L4 checksum (UDP, ICMP, and TCP when
//! its header is there in full) are updated, and the error's own checksum absorbs
//! the difference of every inner byte changed.

use aya_ebpf::programs::TcContext;
use vethbpf_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    csum,
    hdr::{linear, ptr_at},
    l4::{DADDR_OFF, ICMP_ECHO, ICMP_ECHO_REPLY, L4_OFF, SADDR_OFF},
    nat::Xlate,
};

/// The ICMP error types translated: destination unreachable (incl. fragmentation
/// needed), time exceeded, parameter problem.
#[inline(always)]
pub const fn is_error(ty: u8) -> bool {
    matches!(
        ty,
        crate::l4::ICMP_DEST_UNREACH
            | crate::l4::ICMP_TIME_EXCEEDED
            | crate::l4::ICMP_PARAMETER_PROB
    )
}

/// Where the embedded packet starts, and its L4 header.
const INNER_L3: usize = L4_OFF + 8;
const INNER_L4: usize = INNER_L3 + 20;
/// The embedded bytes translated in one piece: the inner IPv4 header and the first 8
/// bytes of its L4 header (all an error is required to carry, RFC 792).
const INNER_LEN: usize = 28;
/// The outer ICMP checksum.
const ICMP_CHECK: usize = L4_OFF + 2;

/// The embedded packet's tuple, as stored. For ICMP, the echo identifier is `sport`
/// of a request and `dport` of a reply (the flow's tuple convention).
#[derive(Clone, Copy)]
pub struct Inner {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// Parses the packet embedded in an ICMP error: IPv4 without options, not a later
/// fragment, TCP, UDP or ICMP echo.
#[inline(always)]
pub fn inner(ctx: &TcContext) -> Option<Inner> {
    let (data, end) = linear(ctx, INNER_L4 + 8)?;
    let b = |off: usize| ptr_at::<u8>(data, end, INNER_L3 + off);
    let w = |off: usize| ptr_at::<u16>(data, end, INNER_L3 + off);
    let (vihl, frag, proto, saddr, daddr) = (b(0)?, w(6)?, b(9)?, w(12)?, w(16)?);
    let (sp, dp, ty) = (w(20)?, w(22)?, b(20)?);
    let id = w(24)?;
    // SAFETY: every pointer was bounds-checked against `end`.
    unsafe {
        if *vihl != 0x45 || u16::from_be(*frag) & 0x1fff != 0 {
            return None;
        }
        let addr = |p: *mut u16| u32::from(p.read()) | (u32::from(p.add(1).read()) << 16);
        let (saddr, daddr) = (addr(saddr), addr(daddr));
        let (sport, dport) = match *proto {
            IPPROTO_TCP | IPPROTO_UDP => (*sp, *dp),
            IPPROTO_ICMP => match *ty {
                ICMP_ECHO => (*id, 0),
                ICMP_ECHO_REPLY => (0, *id),
                _ => return None,
            },
            _ => return None,
        };
        Some(Inner {
            saddr,
            daddr,
            sport,
            dport,
            proto: *proto,
        })
    }
}

/// The embedded bytes, 4-aligned for `bpf_csum_diff`.
#[repr(C, align(4))]
struct Buf([u8; INNER_LEN]);

impl Buf {
    #[inline(always)]
    fn u16_at(&self, off: usize) -> u16 {
        u16::from_ne_bytes([self.0[off], self.0[off + 1]])
    }
    #[inline(always)]
    fn set_u16(&mut self, off: usize, v: u16) {
        let b = v.to_ne_bytes();
        self.0[off] = b[0];
        self.0[off + 1] = b[1];
    }
    #[inline(always)]
    fn set_u32(&mut self, off: usize, v: u32) {
        let b = v.to_ne_bytes();
        self.0[off..off + 4].copy_from_slice(&b);
    }
    #[inline(always)]
    fn words(&mut self) -> &mut [u32; INNER_LEN / 4] {
        // SAFETY: same size, 4-aligned, any bit pattern is valid.
        unsafe { &mut *(self as *mut Buf).cast::<[u32; INNER_LEN / 4]>() }
    }
}

/// Translates an error about `inner`: the embedded packet's source (`inner_source`,
/// an error from the uplink about what a pod sent) or destination (an error from a
/// pod about a reply it received) becomes `to`, and so does the outer destination or
/// source. `from` is what is there now.
#[inline(always)]
pub fn translate(
    ctx: &TcContext,
    inner: &Inner,
    inner_source: bool,
    from: Xlate,
    to: Xlate,
) -> Result<(), ()> {
    let mut old = Buf(ctx.load::<[u8; INNER_LEN]>(INNER_L3).map_err(|_| ())?);
    let mut new = Buf(old.0);

    let (addr_off, port_off) = match (inner.proto, inner_source) {
        (IPPROTO_ICMP, _) => (if inner_source { 12 } else { 16 }, 24),
        (_, true) => (12, 20),
        (_, false) => (16, 22),
    };
    new.set_u32(addr_off, to.addr);
    new.set_u16(10, csum::replace32(old.u16_at(10), from.addr, to.addr));
    new.set_u16(port_off, to.port);
    match inner.proto {
        IPPROTO_UDP => {
            let before = old.u16_at(26);
            let c = csum::replace16(
                csum::replace32(before, from.addr, to.addr),
                from.port,
                to.port,
            );
            new.set_u16(26, csum::udp_fixup(before, c));
        }
        IPPROTO_ICMP => {
            new.set_u16(22, csum::replace16(old.u16_at(22), from.port, to.port));
        }
        _ => {}
    }
    let mut diff = csum::diff(old.words(), new.words());
    ctx.store(INNER_L3, &new.0, 0).map_err(|_| ())?;

    // TCP's checksum lies past the 8 bytes every error carries: fixed when present.
    if inner.proto == IPPROTO_TCP && (ctx.len() as usize) >= INNER_L4 + 20 {
        // The checksum and the urgent pointer: a whole word for bpf_csum_diff.
        let mut old_w = [ctx.load::<u32>(INNER_L4 + 16).map_err(|_| ())?];
        let check = old_w[0] as u16;
        let check = csum::replace16(
            csum::replace32(check, from.addr, to.addr),
            from.port,
            to.port,
        );
        // Little-endian word of stored bytes: the checksum is its low half.
        let mut new_w = [(old_w[0] & 0xffff_0000) | u32::from(check)];
        ctx.store(INNER_L4 + 16, &check, 0).map_err(|_| ())?;
        diff = fold_add(diff, csum::diff(&mut old_w, &mut new_w));
    }
    csum::l4_add_diff(ctx, ICMP_CHECK, diff)?;

    // The outer header: the error travels to the pod, or from it.
    let outer_off = if inner_source { DADDR_OFF } else { SADDR_OFF };
    ctx.store(outer_off, &to.addr, 0).map_err(|_| ())?;
    csum::l3_replace4(ctx, from.addr, to.addr)
}

/// The sum of two checksum differences (32-bit one's complement partial sums).
#[inline(always)]
fn fold_add(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s + u32::from(carry)
}
