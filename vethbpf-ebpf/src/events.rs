//! Events for `vethbpf monitor` (Cilium's send_drop_notify / send_trace_notify): a
//! drop event for every dropped packet, a trace event for the first packet of each
//! forwarded flow and for TCP flags (SYN, FIN, RST) it had not shown yet.
//!
//! Emitted from one place, [`notify`], which `stats::count` calls for every verdict:
//! a drop reason added anywhere makes drop events with no other change. When nobody
//! listens (the `MONITOR` entry's `kinds` is 0) the whole cost is reading that one
//! word of a one-entry array; everything else is in [`emit`], a separate BPF function
//! that packets without a listener never enter.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use vethbpf_common::{
    EVENT_DATA_LEN, EVENT_TRACE, EVENT_VERSION, FlowKey, FlowSeen, TRACE_TCP_FLAGS, Verdict,
    kind_bit,
};

use crate::maps::{EVENTS, EVENTS_LOST, MONITOR, TRACE_FLOWS};

/// Emits the event `verdict` makes, if a monitor wants it. `segs` is the packet's
/// segment count as counted.
#[inline(always)]
pub fn notify(ctx: &TcContext, endpoint_id: u32, verdict: Verdict, segs: u32) {
    // Constant for each call site once inlined: verdicts that make no event (pass,
    // ARP reply) cost nothing here at all.
    let kind = verdict.event_kind();
    if kind == 0 {
        return;
    }
    let Some(monitor) = MONITOR.get(0) else {
        return;
    };
    if monitor.kinds & kind_bit(kind) == 0 {
        return;
    }
    // A monitor that stopped renewing its lease (killed) gets nothing more. The
    // coarse clock (the last tick's time, no clock read) is plenty for a lease of
    // seconds, and cheap enough for every traced packet of a known flow; events take
    // the precise time.
    // SAFETY: a plain helper call.
    if unsafe { bpf_ktime_get_coarse_ns() } >= monitor.deadline_ns {
        return;
    }
    // Two BPF functions called one after the other, not one inside the other: the
    // verifier adds the stacks of a call chain (512 bytes in all, from_pod's
    // included), and this way only the larger of the two counts.
    if kind == EVENT_TRACE && !new_in_flow(ctx.skb.skb, monitor.session) {
        return;
    }
    emit(
        ctx.skb.skb,
        endpoint_id,
        verdict as u32,
        u32::from(kind),
        segs,
    );
}

/// The event itself, in the ring (or counted lost). Never inlined, so the fast path
/// carries none of it.
#[inline(never)]
fn emit(skb: *mut __sk_buff, endpoint_id: u32, verdict: u32, kind: u32, segs: u32) {
    let Some(mut entry) = EVENTS.reserve(0) else {
        if let Some(lost) = EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU value from a successful lookup; only this CPU writes it.
            unsafe { *lost += 1 };
        }
        return;
    };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at the reserved event (size_of::<Event>() bytes), written
    // field by field before it is submitted; `skb` is the program's context.
    unsafe {
        let len = (*skb).len;
        (*ev).time_ns = now;
        (*ev).kind = kind as u8;
        (*ev).version = EVENT_VERSION;
        (*ev).verdict = verdict as u16;
        (*ev).endpoint_id = endpoint_id;
        (*ev).ifindex = (*skb).ifindex;
        (*ev).len = len;
        (*ev).segs = segs;
        // The bounds the verifier needs for the copy's size: 1..=EVENT_DATA_LEN.
        let cap = if len > EVENT_DATA_LEN as u32 {
            EVENT_DATA_LEN as u32
        } else {
            len
        };
        (*ev).cap_len = 0;
        if cap > 0 && bpf_skb_load_bytes(skb.cast(), 0, (*ev).data.as_mut_ptr().cast(), cap) == 0 {
            (*ev).cap_len = cap;
        }
    }
    entry.submit(0);
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

/// Whether this packet is news to the monitor session `session`: its flow was not
/// traced yet, or it carries a SYN, FIN or RST its flow has not shown. Records it.
#[inline(never)]
// The key by reference: a by-value key would be copied onto this function's stack,
// which counts against from_pod's 512 bytes.
#[allow(clippy::needless_borrows_for_generic_args)]
fn new_in_flow(skb: *mut __sk_buff, session: u32) -> bool {
    let ctx = TcContext::new(skb);
    let ctx = &ctx;
    let mut key = FlowKey::default();
    let Some(tcp_flags) = flow_of(ctx, &mut key) else {
        // Nothing to tell flows apart by: every such packet is news (no traced
        // verdict carries one today).
        return true;
    };
    let flags = u32::from(tcp_flags & TRACE_TCP_FLAGS);
    if let Some(seen) = TRACE_FLOWS.get_ptr_mut(&key) {
        // SAFETY: a value from a successful lookup, valid for the program run; a
        // concurrent update of the same flow on another CPU at worst repeats a trace.
        unsafe {
            if (*seen).session == session {
                if flags & !(*seen).tcp_flags == 0 {
                    return false;
                }
                (*seen).tcp_flags |= flags;
                return true;
            }
        }
    }
    let seen = FlowSeen {
        session,
        tcp_flags: flags,
    };
    // A full LRU map evicts the least recently used flow: insert cannot fail for
    // lack of room; if it fails otherwise the event is still sent.
    let _ = TRACE_FLOWS.insert(&key, &seen, 0);
    true
}

/// Copies `out.len()` bytes of the packet at `offset` into `out`; false if the
/// packet is shorter.
#[inline(always)]
fn load<const N: usize>(ctx: &TcContext, offset: u32, out: &mut [u8; N]) -> bool {
    // SAFETY: a helper call writing exactly N bytes into `out`.
    unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset,
            out.as_mut_ptr().cast(),
            N as u32,
        ) == 0
    }
}

/// Fills `key` with the flow (addresses, ports, protocol) of an IPv4 or IPv6 packet
/// and returns its TCP flags (0 if not TCP); `None` for other packets.
///
/// Small loads straight into the key, not a copy of the headers: this runs in a
/// BPF function of its own below `from_pod`, and their stacks share 512 bytes.
#[inline(always)]
fn flow_of(ctx: &TcContext, key: &mut FlowKey) -> Option<u8> {
    let mut ether_type = [0u8; 2];
    if !load(ctx, 12, &mut ether_type) {
        return None;
    }
    let (proto, l4) = match u16::from_be_bytes(ether_type) {
        ETH_P_IP => {
            let mut h = [0u8; 20];
            if !load(ctx, 14, &mut h) {
                return None;
            }
            key.family = 4;
            key.saddr[..4].copy_from_slice(&h[12..16]);
            key.daddr[..4].copy_from_slice(&h[16..20]);
            // A fragment after the first has no ports: all such count as one flow.
            let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            let l4 = if fragment_offset == 0 {
                14 + u32::from(h[0] & 0x0f) * 4
            } else {
                0
            };
            (h[9], l4)
        }
        ETH_P_IPV6 => {
            let mut next = [0u8; 1];
            if !load(ctx, 14 + 6, &mut next)
                || !load(ctx, 14 + 8, &mut key.saddr)
                || !load(ctx, 14 + 24, &mut key.daddr)
            {
                return None;
            }
            key.family = 6;
            // Ports only when the next header is the transport (no extension header
            // walk here).
            (next[0], 14 + 40)
        }
        _ => return None,
    };
    key.proto = proto;
    if l4 == 0 {
        return Some(0);
    }
    let word = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    match proto {
        IPPROTO_TCP => {
            // Ports .. flags.
            let mut t = [0u8; 14];
            if !load(ctx, l4, &mut t) {
                return Some(0);
            }
            key.sport = word(&t, 0);
            key.dport = word(&t, 2);
            Some(t[13])
        }
        IPPROTO_UDP => {
            let mut u = [0u8; 4];
            if load(ctx, l4, &mut u) {
                key.sport = word(&u, 0);
                key.dport = word(&u, 2);
            }
            Some(0)
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Type and code tell requests from replies; the identifier tells one
            // ping from another.
            let mut i = [0u8; 6];
            if load(ctx, l4, &mut i) {
                key.dport = word(&i, 0);
                key.sport = word(&i, 4);
            }
            Some(0)
        }
        _ => Some(0),
    }
}
