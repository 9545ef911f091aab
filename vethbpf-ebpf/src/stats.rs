//! Per-endpoint, per-verdict counters, and the pairing of a verdict with the tc action
//! that carries it out.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use vethbpf_common::{Verdict, stats_index};

use crate::{
    diag::{self, Diag},
    events,
    maps::STATS,
};

/// What the program decided for one frame: the verdict it counts and the tc action it
/// returns. Keeping them together is what makes every return value the one counted.
#[derive(Clone, Copy)]
pub struct Decision {
    pub verdict: Verdict,
    pub action: i32,
}

impl Decision {
    /// Hand the frame to the node's stack.
    #[inline(always)]
    pub const fn pass() -> Self {
        Self {
            verdict: Verdict::Pass,
            action: TC_ACT_OK,
        }
    }

    /// Drop the frame, counted under `verdict`.
    #[inline(always)]
    pub const fn drop(verdict: Verdict) -> Self {
        Self {
            verdict,
            action: TC_ACT_SHOT,
        }
    }

    /// A redirect: `action` is what `bpf_redirect` / `bpf_redirect_peer` returned
    /// (`TC_ACT_REDIRECT`, or `TC_ACT_SHOT` had the flags been invalid).
    #[inline(always)]
    pub const fn redirect(verdict: Verdict, action: i64) -> Self {
        Self {
            verdict,
            action: action as i32,
        }
    }
}

/// The frame as it came in, for [`count`]: taken before the program answers it in
/// place (an ARP, NA or ICMP reply, which changes its length) so that counters count
/// what the sender sent.
#[derive(Clone, Copy)]
pub struct Seen {
    len: u32,
    segs: u32,
}

impl Seen {
    /// Packets are counted as the wire sees them: a GSO super-packet (a pod's TCP
    /// send with TSO on its veth) as its `gso_segs` segments, bytes as bytes.
    #[inline(always)]
    pub fn of(ctx: &TcContext) -> Self {
        // SAFETY: `ctx.skb.skb` is the program's context pointer, valid for the run.
        let segs = unsafe { (*ctx.skb.skb).gso_segs }.max(1);
        Seen {
            len: ctx.len(),
            segs,
        }
    }
}

/// Adds the frame `seen` to the counter of (`endpoint_id`, verdict) on this CPU,
/// tells a listening monitor (see `events`), and returns the decision's tc action.
///
/// The array is per CPU, so plain additions are race-free. An endpoint id beyond the
/// array (a bad map entry) finds no counter; the frame is still handled.
#[inline(always)]
pub fn count(ctx: &TcContext, seen: Seen, endpoint_id: u32, decision: Decision) -> i32 {
    if let Some(counter) = STATS.get_ptr_mut(stats_index(endpoint_id, decision.verdict)) {
        // SAFETY: the pointer comes from a successful map lookup and stays valid for
        // the whole program run; nothing else on this CPU touches it meanwhile.
        unsafe {
            (*counter).packets += u64::from(seen.segs);
            (*counter).bytes += u64::from(seen.len);
        }
    } else {
        diag::report(Diag::NoCounters, endpoint_id);
    }
    events::notify(ctx, endpoint_id, decision.verdict, seen.segs);
    decision.action
}
