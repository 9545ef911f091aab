//! The few packet headers `from_pod` reads, and bounds-checked direct packet access.
//!
//! Multi-byte fields hold the bytes as they are on the wire: compare them with
//! constants converted by `to_be()` instead of swapping every loaded value.

use aya_ebpf::programs::TcContext;

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// EtherTypes, in network byte order as loaded from the packet.
pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_ARP: u16 = 0x0806u16.to_be();

/// A MAC address as three 16-bit words, bytes as on the wire.
///
/// Every MAC in the frames we touch is at an even offset, so word copies are valid;
/// with `[u8; 6]` fields LLVM copies byte by byte or emits a call to `memcpy`, which
/// BPF has to run as a loop.
pub type MacWords = [u16; 3];

/// An IPv4 address that sits at an offset that is even but not a multiple of 4 (in ARP).
pub type Ipv4Words = [u16; 2];

/// Ethernet II header.
#[repr(C)]
pub struct EthHdr {
    pub dst: MacWords,
    pub src: MacWords,
    /// Network byte order.
    pub ether_type: u16,
}

/// ARP for Ethernet hardware and IPv4 protocol addresses (RFC 826), the only kind a
/// pod should send.
#[repr(C)]
pub struct ArpHdr {
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    pub op: u16,
    pub sha: MacWords,
    pub spa: Ipv4Words,
    pub tha: MacWords,
    pub tpa: Ipv4Words,
}

/// A MAC from a map value (`[u8; 6]`, as in vethbpf-common) as words for the packet.
///
/// Three explicit 16-bit loads: a by-value `[u8; 6]` copy becomes a `memcpy` call.
/// The map values keep their MACs at 4-byte aligned offsets (checked below).
#[inline(always)]
pub fn mac_words(mac: &[u8; 6]) -> MacWords {
    let words = mac.as_ptr().cast::<u16>();
    // SAFETY: six readable bytes, 2-byte aligned (see the offset checks below).
    unsafe { [words.read(), words.add(1).read(), words.add(2).read()] }
}

const _: () = assert!(core::mem::offset_of!(vethbpf_common::Route, mac) % 2 == 0);
const _: () = assert!(core::mem::offset_of!(vethbpf_common::Config, gateway_mac) % 2 == 0);
const _: () = assert!(align_of::<vethbpf_common::Route>() >= 2);
const _: () = assert!(align_of::<vethbpf_common::Config>() >= 2);

/// An ARP address as the map representation (network order in memory).
#[inline(always)]
pub const fn ipv4_of_words(words: Ipv4Words) -> u32 {
    // SAFETY: same size, every bit pattern is valid; the bytes keep their order.
    unsafe { core::mem::transmute(words) }
}

pub const ARP_HTYPE_ETHER: u16 = 1u16.to_be();
pub const ARP_PTYPE_IPV4: u16 = 0x0800u16.to_be();
pub const ARP_OP_REQUEST: u16 = 1u16.to_be();
pub const ARP_OP_REPLY: u16 = 2u16.to_be();

/// IPv4 header without options (RFC 791). Addresses are `u32` in network order in
/// memory, like the map values (see `vethbpf_common::ipv4_to_map`).
#[repr(C)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and IHL in 32-bit words (low nibble).
    pub version_ihl: u8,
    pub tos: u8,
    /// Network byte order.
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    /// Network byte order, as stored.
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

// The layouts must be exactly the wire formats: a mistake here would read the wrong
// bytes without any other symptom.
const _: () = assert!(size_of::<EthHdr>() == ETH_HLEN);
const _: () = assert!(size_of::<ArpHdr>() == 28);
const _: () = assert!(size_of::<Ipv4Hdr>() == 20);
const _: () = assert!(align_of::<ArpHdr>() == 2);

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
