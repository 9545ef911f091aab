//! The datapath's clock: flow, fragment, MTU-memo and node-counter times.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

/// CLOCK_MONOTONIC as of the last tick, in nanoseconds. Timeouts are seconds and
/// more, and this costs no clock-source read, which `bpf_ktime_get_ns` does on every
/// call (Cilium keeps its conntrack times in jiffies for the same reason).
/// Userspace reads CLOCK_MONOTONIC, to which a time from here is at most a tick behind.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}
