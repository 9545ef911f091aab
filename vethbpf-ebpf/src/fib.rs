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

/// `bpf_check_mtu`'s flag: check each segment of a GSO packet.
const BPF_MTU_CHK_SEGS: u64 = 1;

/// Whether the packet fits the uplink's MTU (GSO packets: each segment does).
/// `None` if the uplink cannot be asked (it is gone).
#[inline(always)]
pub fn fits(ctx: &TcContext, uplink: u32) -> Option<Fit> {
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

/// The uplink's MTU (`bpf_check_mtu` reports it whatever the verdict); `None` if
/// the device is gone.
#[inline(always)]
pub fn uplink_mtu(ctx: &TcContext, uplink: u32) -> Option<u32> {
    let mut mtu: u32 = 0;
    // SAFETY: a plain helper call; `mtu` is a valid out-parameter.
    let r = unsafe { bpf_check_mtu(ctx.skb.skb.cast::<c_void>(), uplink, &mut mtu, 0, 0) };
    (r >= 0 && mtu > 0).then_some(mtu)
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
