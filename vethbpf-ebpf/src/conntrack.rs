//! Connection tracking on the NAT entries: what a packet changes in its flow's state,
//! keeping the two entries of a flow in step, and reclaiming expired flows.
//!
//! No daemon runs, so the datapath does all of it:
//! - each entry carries the flow's `CT_*` flags and a last-seen time; a packet
//!   refreshes its own entry at most once a second and then visits the other entry
//!   of the pair too (refreshing it, or re-creating it if the LRU evicted it), so a
//!   flow whose packets all go one way keeps both halves alive;
//! - an entry idle past the timeout of its state is treated as absent, and is taken
//!   over by the next flow that needs its key ([`crate::nat`]);
//! - when the table is at its flow limit, a new flow first runs a collection
//!   ([`collect`], at most one a second node-wide) that deletes expired and closed
//!   flows and recounts the live ones.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_for_each_map_elem;
use vethbpf_common::{
    CT_FIN_IN, CT_FIN_OUT, CT_REPLIED, CT_RST, CtState, IPPROTO_TCP, NAT_DIR_OUT, NatEntry,
};

use crate::{
    atomic,
    family::{Family, V4, V6},
    l4::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::{NAT, NAT_STATE, NAT6},
};

/// How often a packet refreshes an entry's last-seen time (and visits the pair's
/// other entry). Timeouts are 10 s and more, so a second of staleness is harmless.
const REFRESH_NS: u64 = 1_000_000_000;
/// At most one garbage collection per interval, node-wide.
const GC_INTERVAL_NS: u64 = 1_000_000_000;

/// The `CT_*` flags a packet from the pod sets.
#[inline(always)]
pub fn flags_out(proto: u8, tcp_flags: u8) -> u16 {
    if proto != IPPROTO_TCP {
        return 0;
    }
    let mut f = 0;
    if tcp_flags & TCP_FIN != 0 {
        f |= CT_FIN_OUT;
    }
    if tcp_flags & TCP_RST != 0 {
        f |= CT_RST;
    }
    f
}

/// The `CT_*` flags a reply sets.
#[inline(always)]
pub fn flags_in(proto: u8, tcp_flags: u8) -> u16 {
    let mut f = CT_REPLIED;
    if proto == IPPROTO_TCP {
        if tcp_flags & TCP_FIN != 0 {
            f |= CT_FIN_IN;
        }
        if tcp_flags & TCP_RST != 0 {
            f |= CT_RST;
        }
    }
    f
}

/// A TCP SYN without ACK: the start of a connection.
#[inline(always)]
pub const fn is_syn(proto: u8, tcp_flags: u8) -> bool {
    proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The first 8 bytes of an entry (address, port, flags) as the one word they are
/// stored as.
#[inline(always)]
pub fn head(addr: u32, port: u16, flags: u16) -> u64 {
    u64::from(addr) | (u64::from(port) << 32) | (u64::from(flags) << 48)
}

/// Adds `set` to the flags of `e` (the common part of either family's entry) and refreshes it when due. Whether the flow's other
/// entry must now be visited ([`sync_pair`]): the flags changed or a refresh was due.
///
/// # Safety
/// `e` points to a NAT map value.
#[inline(always)]
pub unsafe fn touch(e: *mut NatEntry, set: u16, now: u64) -> bool {
    // SAFETY: as the caller promises.
    unsafe {
        let new = set & !(*e).flags;
        if new != 0 {
            atomic::or(e.cast::<u64>(), u64::from(new) << 48);
        }
        let due = now.saturating_sub((*e).last_seen) >= REFRESH_NS;
        if due {
            (*e).last_seen = now;
        }
        new != 0 || due
    }
}

/// What became of the other entry of a pair.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    /// There, refreshed (or put back after an eviction).
    Intact,
    /// Its key belongs to another flow now: this one lost its mapping.
    Taken,
}

/// Brings `key`, the other entry of a flow, in step with the entry just touched:
/// refreshes it and adds `flags`, or re-creates it as `expect` (given `flags` and
/// `now`) if it is gone.
#[inline(always)]
pub fn sync_pair<F: Family>(key: &F::Key, expect: &mut F::Entry, flags: u16, now: u64) -> Pair {
    let want = F::common(expect);
    match F::get(key) {
        Some(p) => {
            let c = F::common(p);
            // SAFETY: a NAT map value, valid for the program run; `want` is read only.
            unsafe {
                if F::addr(p) != F::addr(expect) || (*c).port != (*want).port {
                    return Pair::Taken;
                }
                let new = flags & !(*c).flags;
                if new != 0 {
                    atomic::or(c.cast::<u64>(), u64::from(new) << 48);
                }
                (*c).last_seen = now;
            }
            Pair::Intact
        }
        None => {
            // SAFETY: the caller's entry.
            unsafe {
                (*want).flags = flags;
                (*want).last_seen = now;
            }
            // Lost a race with another CPU putting it back: equally good.
            let _ = F::insert_new(key, expect);
            Pair::Intact
        }
    }
}

/// Whether an entry may be taken over by a new flow: expired, or (for a new TCP
/// connection) a TCP flow that is over.
#[inline(always)]
pub fn reclaimable(e: &NatEntry, proto: u8, now: u64, new_is_syn: bool) -> bool {
    e.expired(proto, now) || (new_is_syn && CtState::of(proto, e.flags).is_closed())
}

/// State of one collection pass.
#[repr(C)]
struct Gc {
    now: u64,
    live: u64,
    deleted: u64,
}

/// Called for each entry of a NAT map by `bpf_for_each_map_elem`: deletes the dead,
/// counts the live flows (by their forward entries).
extern "C" fn gc_entry<F: Family>(
    map: *mut c_void,
    key: *mut F::Key,
    value: *mut F::Entry,
    gc: *mut Gc,
) -> i64 {
    // SAFETY: the kernel passes the map, a key and value of it, and our context.
    unsafe {
        let (proto, v, gc) = (F::proto(&*key), &*F::common(value), &mut *gc);
        // Under pressure, finished TCP connections go as well as expired flows (the
        // kernel's conntrack early-drops too when full).
        if v.expired(proto, gc.now) || CtState::of(proto, v.flags).is_closed() {
            if aya_ebpf::helpers::generated::bpf_map_delete_elem(map, key.cast()) == 0 {
                gc.deleted += 1;
            }
        } else if F::dir(&*key) == NAT_DIR_OUT {
            gc.live += 1;
        }
    }
    0
}

/// The NAT tables' flow count (both families share the limit), and a collection of
/// both if one is due; `None` if the state entry cannot be read (never, for an
/// array).
#[inline(always)]
pub fn flows_after_collect(now: u64) -> Option<u64> {
    let st = NAT_STATE.get_ptr_mut(0)?;
    // SAFETY: the array's one value, valid for the program run; the fields are
    // 8-byte aligned.
    unsafe {
        let last = (*st).gc_last;
        if now.saturating_sub(last) >= GC_INTERVAL_NS
            && atomic::compare_exchange(&raw mut (*st).gc_last, last, now)
        {
            let mut gc = Gc {
                now,
                live: 0,
                deleted: 0,
            };
            bpf_for_each_map_elem(
                (&raw const NAT).cast_mut().cast(),
                gc_entry::<V4> as *mut c_void,
                (&raw mut gc).cast(),
                0,
            );
            bpf_for_each_map_elem(
                (&raw const NAT6).cast_mut().cast(),
                gc_entry::<V6> as *mut c_void,
                (&raw mut gc).cast(),
                0,
            );
            atomic::store(&raw mut (*st).flows, gc.live);
            atomic::add(&raw mut (*st).gc_runs, 1);
            atomic::add(&raw mut (*st).gc_deleted, gc.deleted);
        }
        Some((*st).flows)
    }
}

/// Counts a new flow.
#[inline(always)]
pub fn count_flow() {
    if let Some(st) = NAT_STATE.get_ptr_mut(0) {
        // SAFETY: the array's one value, 8-byte aligned.
        unsafe { atomic::add(&raw mut (*st).flows, 1) };
    }
}

/// The table's flow count as last counted.
#[inline(always)]
pub fn flows() -> u64 {
    NAT_STATE.get(0).map_or(0, |s| s.flows)
}
