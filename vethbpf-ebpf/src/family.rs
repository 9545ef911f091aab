//! The two address families connection tracking and NAT work on. [`crate::nat`] and
//! [`crate::conntrack`] are written once, generic over [`Family`]: IPv4 flows live
//! in `NAT` (`NatKey` -> `NatEntry`), IPv6 flows in `NAT6` (`NatKey6` ->
//! `NatEntry6`). An IPv6 entry starts with the bytes of an IPv4 one (its `addr` the
//! last word of the IPv6 address), so the state, times and interface of either are
//! read and updated through [`Family::common`].

use aya_ebpf::bindings::BPF_NOEXIST;
use vethbpf_common::{NatEntry, NatEntry6, NatKey, NatKey6};

use crate::{
    atomic, conntrack,
    maps::{NAT, NAT6},
};

pub trait Family {
    type Addr: Copy + PartialEq;
    type Key: Copy;
    type Entry: Copy;

    /// The key of one direction of a flow. Keys are read through the accessors
    /// below, never copied into another shape: an IPv6 key is 40 bytes of a stack
    /// that has 512.
    fn key(
        saddr: Self::Addr,
        daddr: Self::Addr,
        sport: u16,
        dport: u16,
        proto: u8,
        dir: u8,
    ) -> Self::Key;
    fn saddr(k: &Self::Key) -> &Self::Addr;
    fn daddr(k: &Self::Key) -> &Self::Addr;
    fn sport(k: &Self::Key) -> u16;
    fn dport(k: &Self::Key) -> u16;
    fn proto(k: &Self::Key) -> u8;
    fn dir(k: &Self::Key) -> u8;
    fn set_dport(k: &mut Self::Key, port: u16);
    /// A new entry: `addr`/`port` are what it maps to, times `now`.
    fn entry(addr: Self::Addr, port: u16, flags: u16, now: u64, ifindex: u32) -> Self::Entry;
    fn get(k: &Self::Key) -> Option<*mut Self::Entry>;
    /// Inserts without overwriting.
    fn insert_new(k: &Self::Key, e: &Self::Entry) -> bool;
    fn remove(k: &Self::Key);
    /// The part both families lay out alike.
    fn common(e: *mut Self::Entry) -> *mut NatEntry;
    /// The address an entry maps to.
    ///
    /// # Safety
    /// `e` points to a NAT map value (or a local entry).
    unsafe fn addr(e: *const Self::Entry) -> Self::Addr;
    /// Rewrites address, port and flags of `e` (the head in one store).
    ///
    /// # Safety
    /// `e` points to a NAT map value.
    unsafe fn set_head(e: *mut Self::Entry, addr: Self::Addr, port: u16, flags: u16);
    /// The address folded to a word, for the port hash.
    fn fold(a: &Self::Addr) -> u32;
}

/// The key constructor and accessors, alike for both key types (same fields).
macro_rules! key_fields {
    ($key:ident, $addr:ty) => {
        #[inline(always)]
        fn key(saddr: $addr, daddr: $addr, sport: u16, dport: u16, proto: u8, dir: u8) -> $key {
            $key {
                saddr,
                daddr,
                sport,
                dport,
                proto,
                dir,
                _pad: [0; 2],
            }
        }
        #[inline(always)]
        fn saddr(k: &$key) -> &$addr {
            &k.saddr
        }
        #[inline(always)]
        fn daddr(k: &$key) -> &$addr {
            &k.daddr
        }
        #[inline(always)]
        fn sport(k: &$key) -> u16 {
            k.sport
        }
        #[inline(always)]
        fn dport(k: &$key) -> u16 {
            k.dport
        }
        #[inline(always)]
        fn proto(k: &$key) -> u8 {
            k.proto
        }
        #[inline(always)]
        fn dir(k: &$key) -> u8 {
            k.dir
        }
        #[inline(always)]
        fn set_dport(k: &mut $key, port: u16) {
            k.dport = port;
        }
    };
}

/// IPv4: `NAT`.
pub struct V4;

impl Family for V4 {
    type Addr = u32;
    type Key = NatKey;
    type Entry = NatEntry;

    key_fields!(NatKey, u32);
    #[inline(always)]
    fn entry(addr: u32, port: u16, flags: u16, now: u64, ifindex: u32) -> NatEntry {
        NatEntry {
            addr,
            port,
            flags,
            last_seen: now,
            created: now,
            ifindex,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn get(k: &NatKey) -> Option<*mut NatEntry> {
        NAT.get_ptr_mut(k)
    }
    #[inline(always)]
    fn insert_new(k: &NatKey, e: &NatEntry) -> bool {
        NAT.insert(k, e, u64::from(BPF_NOEXIST)).is_ok()
    }
    #[inline(always)]
    fn remove(k: &NatKey) {
        let _ = NAT.remove(k);
    }
    #[inline(always)]
    fn common(e: *mut NatEntry) -> *mut NatEntry {
        e
    }
    #[inline(always)]
    unsafe fn addr(e: *const NatEntry) -> u32 {
        // SAFETY: as the caller promises.
        unsafe { (*e).addr }
    }
    #[inline(always)]
    unsafe fn set_head(e: *mut NatEntry, addr: u32, port: u16, flags: u16) {
        // SAFETY: a NAT value is 8-byte aligned and starts with these 8 bytes.
        unsafe { atomic::store(e.cast::<u64>(), conntrack::head(addr, port, flags)) };
    }
    #[inline(always)]
    fn fold(a: &u32) -> u32 {
        *a
    }
}

/// IPv6: `NAT6`.
pub struct V6;

impl Family for V6 {
    type Addr = [u32; 4];
    type Key = NatKey6;
    type Entry = NatEntry6;

    key_fields!(NatKey6, [u32; 4]);
    #[inline(always)]
    fn entry(addr: [u32; 4], port: u16, flags: u16, now: u64, ifindex: u32) -> NatEntry6 {
        NatEntry6 {
            addr_tail: addr[3],
            port,
            flags,
            last_seen: now,
            created: now,
            ifindex,
            _pad: 0,
            addr,
        }
    }
    #[inline(always)]
    fn get(k: &NatKey6) -> Option<*mut NatEntry6> {
        NAT6.get_ptr_mut(k)
    }
    #[inline(always)]
    fn insert_new(k: &NatKey6, e: &NatEntry6) -> bool {
        NAT6.insert(k, e, u64::from(BPF_NOEXIST)).is_ok()
    }
    #[inline(always)]
    fn remove(k: &NatKey6) {
        let _ = NAT6.remove(k);
    }
    #[inline(always)]
    fn common(e: *mut NatEntry6) -> *mut NatEntry {
        e.cast()
    }
    #[inline(always)]
    unsafe fn addr(e: *const NatEntry6) -> [u32; 4] {
        // SAFETY: as the caller promises.
        unsafe { (*e).addr }
    }
    #[inline(always)]
    unsafe fn set_head(e: *mut NatEntry6, addr: [u32; 4], port: u16, flags: u16) {
        // SAFETY: as the caller promises. The address bytes first, then the head in
        // one store (only the CPU that won the entry's compare-and-swap writes it).
        unsafe {
            (*e).addr = addr;
            atomic::store(e.cast::<u64>(), conntrack::head(addr[3], port, flags));
        }
    }
    #[inline(always)]
    fn fold(a: &[u32; 4]) -> u32 {
        a[0] ^ a[1].rotate_left(7) ^ a[2].rotate_left(17) ^ a[3]
    }
}

const _: () = assert!(core::mem::offset_of!(NatEntry6, ifindex) == 24);
const _: () = assert!(core::mem::offset_of!(NatEntry, ifindex) == 24);
