//! Sending egress out of the uplink without the node's forwarding path.
//!
//! `bpf_fib_lookup` is no use here: it answers BPF_FIB_LKUP_RET_FWD_DISABLED whenever
//! forwarding is off on the interface (checked on these kernels), and vethbpf keeps
//! the node at `ip_forward=0`. `bpf_redirect_neigh` without next-hop parameters does
//! what is needed instead: an output route lookup for the (translated) packet on the
//! uplink, then the neighbour's MAC, resolving it if needed, and transmit.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_check_mtu, bpf_redirect_neigh},
    programs::TcContext,
};
use vethbpf_common::UplinkMtu;

use crate::{hdr::ETH_HLEN, maps::UPLINK_MTU};

/// `bpf_check_mtu`'s flag: check each segment of a GSO packet.
const BPF_MTU_CHK_SEGS: u64 = 1;

/// How long a CPU trusts the uplink MTU it last asked the kernel for.
///
/// `bpf_check_mtu` finds the device by its index on every call: a hash walk over
/// cache lines that are cold between two packets of a ping-pong. Cilium compiles the
/// MTU into its programs and rebuilds them when it changes; with no daemon to do
/// that, each CPU asks at most this often and trusts the answer in between. A
/// lowered MTU is noticed within this time; oversized frames sent meanwhile are
/// dropped by the device, as a router's stale route MTU lets them be.
const MTU_TRUST_NS: u64 = 100_000_000;

/// Whether the packet fits the uplink's MTU (GSO packets: each segment does).
/// `None` if the uplink cannot be asked (it is gone; for up to [`MTU_TRUST_NS`] after
/// it went the memo still answers, and the redirect then finds no device and drops).
/// `now`: the coarse clock.
#[inline(always)]
pub fn fits(ctx: &TcContext, uplink: u32, now: u64) -> Option<Fit> {
    let mtu = uplink_mtu(ctx, uplink, now)?;
    // The helper's own first test (for an Ethernet uplink; for one without a MAC
    // header the frame leaves without its 14 bytes, and this is the right test).
    if ctx.len().saturating_sub(ETH_HLEN as u32) <= mtu {
        return Some(Fit::Fits);
    }
    // SAFETY: `ctx.skb.skb` is the program's context pointer.
    if unsafe { (*ctx.skb.skb).gso_size } == 0 {
        return Some(Fit::TooBig { mtu });
    }
    // A GSO packet larger than the MTU: its segments are what must fit, which the
    // kernel knows how to measure.
    let mut mtu: u32 = 0;
    // SAFETY: a plain helper call; `mtu` is a valid out-parameter.
    // BPF_MTU_CHK_SEGS: without it the helper passes every GSO packet, whose
    // segments the uplink would then send oversized (a veth peer takes them, a NIC
    // drops them: a PMTU black hole).
    let r = unsafe {
        bpf_check_mtu(
            ctx.skb.skb.cast::<c_void>(),
            uplink,
            &mut mtu,
            0,
            BPF_MTU_CHK_SEGS,
        )
    };
    match r {
        0 => Some(Fit::Fits),
        // BPF_MTU_CHK_RET_FRAG_NEEDED, BPF_MTU_CHK_RET_SEGS_TOO_BIG: `mtu` is the
        // device's.
        1 | 2 => Some(Fit::TooBig { mtu }),
        _ => None,
    }
}

/// The uplink's MTU: this CPU's memo if it is of `uplink` and younger than
/// [`MTU_TRUST_NS`] at `now` (the coarse clock), else the kernel's answer, which
/// becomes the memo. `None` if the device is gone.
#[inline(always)]
pub fn uplink_mtu(ctx: &TcContext, uplink: u32, now: u64) -> Option<u32> {
    let memo = UPLINK_MTU.get_ptr_mut(0);
    if let Some(m) = memo {
        // SAFETY: this CPU's value, valid for the program run; tc programs do not
        // nest on a CPU, so nothing writes it meanwhile.
        let m = unsafe { &*m };
        // (wrapping: a time ahead of `now` is not trusted either.)
        if m.ifindex == uplink && now.wrapping_sub(m.asked_ns) < MTU_TRUST_NS {
            return Some(m.mtu);
        }
    }
    let mut mtu: u32 = 0;
    // SAFETY: a plain helper call; `mtu` is a valid out-parameter. The helper
    // reports the device's MTU whatever its verdict.
    let r = unsafe { bpf_check_mtu(ctx.skb.skb.cast::<c_void>(), uplink, &mut mtu, 0, 0) };
    if r < 0 || mtu == 0 {
        return None;
    }
    if let Some(m) = memo {
        // SAFETY: as above.
        unsafe {
            *m = UplinkMtu {
                ifindex: uplink,
                mtu,
                asked_ns: now,
            }
        };
    }
    Some(mtu)
}

/// Whether a packet fits the uplink's MTU.
pub enum Fit {
    Fits,
    TooBig { mtu: u32 },
}

/// Redirects the packet out of the uplink through the kernel's route and neighbour
/// tables; the tc action to return.
#[inline(always)]
pub fn redirect_out(uplink: u32) -> i64 {
    // SAFETY: a plain helper call; no next-hop parameters (NULL, 0).
    unsafe { bpf_redirect_neigh(uplink, core::ptr::null_mut(), 0, 0) }
}
