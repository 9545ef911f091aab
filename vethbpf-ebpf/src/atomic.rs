//! Atomic operations on map values, for state several CPUs update at once (the NAT
//! table's flow count, an entry claimed by one CPU when it expires).
//!
//! rustc's BPF target declares no compare-and-swap (`atomic-cas: false`), so
//! `core::sync::atomic` has no read-modify-write operations there. The compiler
//! intrinsics behind them still lower to the BPF_ATOMIC instructions the kernel has
//! had since 5.12 (`lock *(u64 *)(r + 0) += r`, `cmpxchg_64`), so they are used
//! directly, here only.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_or, atomic_xadd};

/// `*p += v`, atomically.
///
/// # Safety
/// `p` points into a map value (8-byte aligned), valid for the program run.
#[inline(always)]
pub unsafe fn add(p: *mut u64, v: u64) {
    // SAFETY: as the caller promises.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// `*p |= v`, atomically.
///
/// # Safety
/// As [`add`].
#[inline(always)]
pub unsafe fn or(p: *mut u64, v: u64) {
    // SAFETY: as the caller promises.
    unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// Sets `*p` to `new` if it still holds `old`; whether it did. Of CPUs racing to
/// change the same `old`, exactly one succeeds.
///
/// # Safety
/// As [`add`].
#[inline(always)]
pub unsafe fn compare_exchange(p: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: as the caller promises.
    let (_, swapped) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(p, old, new)
    };
    swapped
}

/// A single 64-bit store (never split into narrower ones), so that a concurrent
/// reader sees the old value or the new one.
///
/// # Safety
/// As [`add`].
#[inline(always)]
pub unsafe fn store(p: *mut u64, v: u64) {
    // SAFETY: as the caller promises.
    unsafe { p.write_volatile(v) };
}
