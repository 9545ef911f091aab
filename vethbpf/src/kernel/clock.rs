//! CLOCK_MONOTONIC, the clock the datapath stamps times with: `bpf_ktime_get_ns`
//! for monitor events and leases, `bpf_ktime_get_coarse_ns` (the same clock as of the
//! last tick, so at most a tick behind) for flows and node counters.

use std::time::Duration;

/// CLOCK_MONOTONIC now, in nanoseconds (0 if it cannot be read, which Linux never
/// refuses).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::from(t).as_nanos() as u64)
        .unwrap_or(0)
}
