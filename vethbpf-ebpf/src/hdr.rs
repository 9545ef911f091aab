//! Packet headers: the layouts of `network-types`, word accessors for their fields,
//! and bounds-checked direct packet access.
//!
//! network-types declares multi-byte fields as byte arrays (alignment 1). Used as
//! they are, LLVM's BPF backend loads them byte by byte and copies a `[u8; 6]` through
//! a `memmove` loop: measured under BPF_PROG_TEST_RUN (`xtask bench` progcost), the
//! local forward went from 99 to 126 ns and the program from 329 to 435 instructions.
//! So the fields are read and written here as 16-bit words. That is sound: every field
//! these helpers touch sits at an even offset of the frame (the kernel keeps
//! `skb->data` 2-byte aligned) or of a map value (whose alignment is checked below).
//!
//! Multi-byte values keep the bytes as they are on the wire: compare them with
//! constants converted by `to_be()` instead of swapping every loaded value.

use aya_ebpf::programs::TcContext;
pub use network_types::{
    arp::ArpHdr,
    eth::EthHdr,
    icmp::Icmpv4Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

// The word accessors assemble addresses in memory order as little-endian words.
#[cfg(not(target_endian = "little"))]
compile_error!("vethbpf-ebpf is built for bpfel only");

/// Ethernet header length.
pub const ETH_HLEN: usize = EthHdr::LEN;
/// EtherTypes, in network byte order as loaded from the packet.
pub const ETH_P_IP: u16 = network_types::eth::EtherType::Ipv4 as u16;
pub const ETH_P_ARP: u16 = network_types::eth::EtherType::Arp as u16;
pub const ETH_P_IPV6: u16 = network_types::eth::EtherType::Ipv6 as u16;
/// VLAN tag protocol identifiers: 802.1Q (C-tag) and 802.1ad (S-tag, the outer tag
/// of QinQ), the two the kernel's `eth_type_vlan` knows.
pub const ETH_P_8021Q: u16 = network_types::eth::EtherType::Ieee8021q as u16;
pub const ETH_P_8021AD: u16 = network_types::eth::EtherType::Ieee8021ad as u16;

/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = network_types::ip::IpProto::Icmp as u8;
pub const IPPROTO_TCP: u8 = network_types::ip::IpProto::Tcp as u8;
pub const IPPROTO_UDP: u8 = network_types::ip::IpProto::Udp as u8;

pub const ARP_HTYPE_ETHER: u16 = 1u16.to_be();
pub const ARP_PTYPE_IPV4: u16 = 0x0800u16.to_be();
pub const ARP_OP_REQUEST: u16 = 1u16.to_be();
pub const ARP_OP_REPLY: u16 = 2u16.to_be();

/// A 16-bit field as stored (network order).
#[inline(always)]
pub fn be16(field: &[u8; 2]) -> u16 {
    // SAFETY: two readable bytes at an even address (module comment).
    unsafe { field.as_ptr().cast::<u16>().read() }
}

/// Stores a 16-bit value given in network order.
#[inline(always)]
pub fn set_be16(field: &mut [u8; 2], value: u16) {
    // SAFETY: two writable bytes at an even address (module comment).
    unsafe { field.as_mut_ptr().cast::<u16>().write(value) }
}

/// An IPv4 address as the map representation (`u32`, network order in memory), read
/// as two words: in an IPv4 header behind Ethernet the addresses are 2 mod 4 aligned.
#[inline(always)]
pub fn ipv4_addr(addr: &[u8; 4]) -> u32 {
    let words = addr.as_ptr().cast::<u16>();
    // SAFETY: four readable bytes at an even address (module comment).
    let (lo, hi) = unsafe { (words.read(), words.add(1).read()) };
    u32::from(lo) | (u32::from(hi) << 16)
}

/// Stores an address given in the map representation.
#[inline(always)]
pub fn set_ipv4_addr(addr: &mut [u8; 4], value: u32) {
    let words = addr.as_mut_ptr().cast::<u16>();
    // SAFETY: four writable bytes at an even address (module comment).
    unsafe {
        words.write(value as u16);
        words.add(1).write((value >> 16) as u16);
    }
}

/// Copies a MAC address as three words.
#[inline(always)]
pub fn copy_mac(dst: &mut [u8; 6], src: &[u8; 6]) {
    let (d, s) = (dst.as_mut_ptr().cast::<u16>(), src.as_ptr().cast::<u16>());
    // SAFETY: six bytes each, at even addresses (module comment); distinct fields.
    unsafe {
        d.write(s.read());
        d.add(1).write(s.add(1).read());
        d.add(2).write(s.add(2).read());
    }
}

const _: () = assert!(core::mem::offset_of!(vethbpf_common::Route, mac).is_multiple_of(2));
const _: () = assert!(core::mem::offset_of!(vethbpf_common::Config, gateway_mac).is_multiple_of(2));
const _: () = assert!(align_of::<vethbpf_common::Route>() >= 2);
const _: () = assert!(align_of::<vethbpf_common::Config>() >= 2);

// The layouts must be exactly the wire formats, with every multi-byte field at an even
// offset: a mistake here would read the wrong bytes without any other symptom.
const _: () = assert!(size_of::<EthHdr>() == 14);
const _: () = assert!(size_of::<ArpHdr>() == 28);
const _: () = assert!(size_of::<Ipv4Hdr>() == 20);
const _: () = assert!(size_of::<Ipv6Hdr>() == 40);
const _: () = assert!(size_of::<Icmpv4Hdr>() == 8);
const _: () = assert!(core::mem::offset_of!(Icmpv4Hdr, check).is_multiple_of(2));
const _: () = assert!(core::mem::offset_of!(Ipv4Hdr, check).is_multiple_of(2));
const _: () = assert!(core::mem::offset_of!(Ipv4Hdr, frags).is_multiple_of(2));
const _: () = assert!(core::mem::offset_of!(ArpHdr, sha).is_multiple_of(2));
const _: () = assert!(core::mem::offset_of!(ArpHdr, spa).is_multiple_of(2));
const _: () = assert!(core::mem::offset_of!(ArpHdr, tha).is_multiple_of(2));
const _: () = assert!(core::mem::offset_of!(ArpHdr, tpa).is_multiple_of(2));
const _: () = assert!(core::mem::offset_of!(Ipv4Hdr, src_addr).is_multiple_of(2));
const _: () = assert!(core::mem::offset_of!(Ipv4Hdr, dst_addr).is_multiple_of(2));
const _: () = assert!(ETH_HLEN.is_multiple_of(2));

/// The frame's linear data as `(data, data_end)`, made to hold at least `len` bytes if
/// the skb has them.
///
/// Headers of frames coming out of a veth are nearly always in the linear part, so the
/// fast path is one comparison. Otherwise, if the skb is long enough, pull the bytes in
/// with `bpf_skb_pull_data` (which invalidates earlier packet pointers; callers take
/// pointers only after this returns). `None` means the frame is shorter than `len`.
#[inline(always)]
pub fn linear(ctx: &TcContext, len: usize) -> Option<(usize, usize)> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + len <= end {
        return Some((data, end));
    }
    pull(ctx, len)
}

/// Rare part of [`linear`]. Inlined too: a BPF-to-BPF call that changes packet data
/// buys nothing here and makes the verifier's life harder.
#[inline(always)]
fn pull(ctx: &TcContext, len: usize) -> Option<(usize, usize)> {
    if (ctx.len() as usize) < len || ctx.pull_data(len as u32).is_err() {
        return None;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    // The verifier needs this check on the fresh pointers anyway.
    if data + len <= end {
        Some((data, end))
    } else {
        None
    }
}

/// A pointer to a `T` at `offset` in the packet, if the packet holds all of it.
///
/// The explicit `data + offset + size <= data_end` comparison is what lets the verifier
/// accept the accesses through the returned pointer.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    let start = data + offset;
    if start + size_of::<T>() > data_end {
        return None;
    }
    Some(start as *mut T)
}
