//! Internet checksums: the kernel's helpers for the L4 checksum of the packet being
//! rewritten (they keep `skb->csum` and CHECKSUM_PARTIAL right), and RFC 1624
//! incremental updates for the rest: the IPv4 header checksum of a translated packet
//! (never offloaded; `nat::rewrite` says why `skb->csum` stays right) and checksums
//! inside a payload (the inner headers of an ICMP error).
//!
//! One's complement sums do not depend on byte order as long as every operand has
//! the same one: values are used as stored (network order), never swapped.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};

use crate::hdr::ETH_HLEN;

/// Offset of the IPv4 header checksum in the frame (no VLAN tag, as everywhere).
const IPV4_CHECK: usize = ETH_HLEN + 10;

/// Which L4 checksum a field change must also be folded into, and where it is.
///
/// A plain struct rather than an enum with data: LLVM copies an enum's payload even
/// for the variant without one, and the verifier rejects that read of an
/// uninitialised register.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct L4Csum {
    kind: u8,
    off: usize,
}

const KIND_NONE: u8 = 0;
/// TCP: always present, covers the pseudo header.
const KIND_TCP: u8 = 1;
/// UDP: covers the pseudo header; 0 means "none" and must stay 0.
const KIND_UDP: u8 = 2;
/// ICMP: no pseudo header.
const KIND_ICMP: u8 = 3;

impl L4Csum {
    /// No L4 checksum to fix: a later fragment (its L4 header is in the first).
    pub const NONE: L4Csum = L4Csum {
        kind: KIND_NONE,
        off: 0,
    };
    pub const fn tcp(off: usize) -> L4Csum {
        L4Csum {
            kind: KIND_TCP,
            off,
        }
    }
    pub const fn udp(off: usize) -> L4Csum {
        L4Csum {
            kind: KIND_UDP,
            off,
        }
    }
    pub const fn icmp(off: usize) -> L4Csum {
        L4Csum {
            kind: KIND_ICMP,
            off,
        }
    }
    pub const fn is_none(self) -> bool {
        self.kind == KIND_NONE
    }
}

/// Adjusts the IPv4 header checksum for a 4-byte field that changed `from` -> `to`.
#[inline(always)]
pub fn l3_replace4(ctx: &TcContext, from: u32, to: u32) -> Result<(), ()> {
    ctx.l3_csum_replace(IPV4_CHECK, u64::from(from), u64::from(to), 4)
        .map_err(|_| ())
}

/// Adjusts the L4 checksum for an address in the pseudo header that changed.
#[inline(always)]
pub fn l4_replace_addr(ctx: &TcContext, l4: L4Csum, from: u32, to: u32) -> Result<(), ()> {
    let flags = match l4.kind {
        KIND_TCP => 0,
        KIND_UDP => u64::from(BPF_F_MARK_MANGLED_0),
        // ICMP has no pseudo header.
        _ => return Ok(()),
    };
    let off = l4.off;
    let flags = flags | u64::from(BPF_F_PSEUDO_HDR) | 4;
    ctx.l4_csum_replace(off, u64::from(from), u64::from(to), flags)
        .map_err(|_| ())
}

/// Adjusts the L4 checksum for an IPv6 address of the pseudo header that changed
/// (TCP, UDP and ICMPv6 all cover it).
#[inline(always)]
pub fn l4_replace_addr6(
    ctx: &TcContext,
    l4: L4Csum,
    from: &[u32; 4],
    to: &[u32; 4],
) -> Result<(), ()> {
    let flags = match l4.kind {
        KIND_TCP | KIND_ICMP => 0,
        KIND_UDP => u64::from(BPF_F_MARK_MANGLED_0),
        _ => return Ok(()),
    };
    let d = diff(&mut from.clone(), &mut to.clone());
    ctx.l4_csum_replace(l4.off, 0, u64::from(d), flags | u64::from(BPF_F_PSEUDO_HDR))
        .map_err(|_| ())
}

/// Adjusts the L4 checksum for a 2-byte field of the L4 header that changed.
#[inline(always)]
pub fn l4_replace2(ctx: &TcContext, l4: L4Csum, from: u16, to: u16) -> Result<(), ()> {
    let flags = match l4.kind {
        KIND_TCP | KIND_ICMP => 0,
        KIND_UDP => u64::from(BPF_F_MARK_MANGLED_0),
        _ => return Ok(()),
    };
    let off = l4.off;
    ctx.l4_csum_replace(off, u64::from(from), u64::from(to), flags | 2)
        .map_err(|_| ())
}

/// Folds a checksum difference (from [`diff`]) into the ICMP checksum at `off`.
#[inline(always)]
pub fn l4_add_diff(ctx: &TcContext, off: usize, diff: u32) -> Result<(), ()> {
    // Size 0 in the flags: `to` is a precomputed difference.
    ctx.l4_csum_replace(off, 0, u64::from(diff), 0)
        .map_err(|_| ())
}

/// The one's complement sum of `new` minus that of `old` (both `N` words), for
/// [`l4_add_diff`].
#[inline(always)]
pub fn diff<const N: usize>(old: &mut [u32; N], new: &mut [u32; N]) -> u32 {
    let size = (N * 4) as u32;
    // SAFETY: both buffers are on the stack and `size` bytes long.
    unsafe { bpf_csum_diff(old.as_mut_ptr(), size, new.as_mut_ptr(), size, 0) as u32 }
}

/// The one's complement sum of `bytes` bytes (a multiple of 4) at `words` (on the
/// stack, or in the packet, bounds-checked by the caller), added to `seed`: for
/// checksums computed from scratch.
#[inline(always)]
pub fn sum(words: *mut u32, bytes: u32, seed: u32) -> u32 {
    // SAFETY: callers pass memory at least `bytes` long.
    unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, words, bytes, seed) as u32 }
}

/// `sum` plus the 32-bit word `word` (as stored), with the end-around carry.
#[inline(always)]
pub fn add(sum: u32, word: u32) -> u32 {
    let (s, carry) = sum.overflowing_add(word);
    s + u32::from(carry)
}

/// The checksum field for a sum from [`sum`]: folded and complemented.
#[inline(always)]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 (eqn. 3): the checksum `check` after a 16-bit word changed `old` -> `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// [`replace16`] for a 32-bit field (two words).
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!check) + (!old >> 16) + (!old & 0xffff) + (new >> 16) + (new & 0xffff);
    !fold(sum)
}

/// A UDP checksum after an update: 0 stays 0 ("no checksum"), and a computed 0 is
/// sent as 0xffff (RFC 768).
#[inline(always)]
pub fn udp_fixup(before: u16, after: u16) -> u16 {
    match (before, after) {
        (0, _) => 0,
        (_, 0) => 0xffff,
        (_, a) => a,
    }
}
