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
    emit(
        ctx.skb.skb,
        endpoint_id,
        verdict as u32,
        u32::from(kind),
        segs,
    );
}

/// The listener's side of [`notify`]: lease check, flow filter for traces, and the
/// event itself. Never inlined, so the fast path carries none of it.
#[inline(never)]
fn emit(skb: *mut __sk_buff, endpoint_id: u32, verdict: u32, kind: u32, segs: u32) {
    let Some(monitor) = MONITOR.get(0) else {
        return;
    };
    // A monitor that stopped renewing its lease (killed) gets nothing more. The
    // coarse clock (the last tick's time, no clock read) is plenty for a lease of
    // seconds, and cheap enough for every traced packet of a known flow; events take
    // the precise time below.
    // SAFETY: a plain helper call.
    if unsafe { bpf_ktime_get_coarse_ns() } >= monitor.deadline_ns {
        return;
    }
    let ctx = TcContext::new(skb);
    if kind == u32::from(EVENT_TRACE) && !new_in_flow(&ctx, monitor.session) {
        return;
    }
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

/// Bytes of the packet the flow filter reads: Ethernet + IPv6 (the longer header) +
/// the first 14 bytes of TCP (ports .. flags).
const FLOW_BYTES: usize = 14 + 40 + 14;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

/// Whether this packet is news to the monitor session `session`: its flow was not
/// traced yet, or it carries a SYN, FIN or RST its flow has not shown. Records it.
#[inline(always)]
fn new_in_flow(ctx: &TcContext, session: u32) -> bool {
    let Some((key, tcp_flags)) = flow_of(ctx) else {
        // Nothing to tell flows apart by: every such packet is news (no traced
        // verdict carries one today).
        return true;
    };
    let flags = u32::from(tcp_flags & TRACE_TCP_FLAGS);
    if let Some(seen) = TRACE_FLOWS.get_ptr_mut(key) {
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
    let _ = TRACE_FLOWS.insert(key, seen, 0);
    true
}

/// The flow (addresses, ports, protocol) of an IPv4 or IPv6 packet and its TCP
/// flags (0 if not TCP).
#[inline(always)]
fn flow_of(ctx: &TcContext) -> Option<(FlowKey, u8)> {
    let mut b = [0u8; FLOW_BYTES];
    let len = ctx.len();
    if len < 14 + 20 {
        return None;
    }
    let n = if len > FLOW_BYTES as u32 {
        FLOW_BYTES as u32
    } else {
        len
    };
    // SAFETY: a helper call writing at most `n` <= FLOW_BYTES bytes into `b`.
    if unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), 0, b.as_mut_ptr().cast(), n) } != 0 {
        return None;
    }
    let n = n as usize;
    let mut key = FlowKey::default();
    let (proto, l4) = match u16::from_be_bytes([b[12], b[13]]) {
        ETH_P_IP => {
            let ihl = usize::from(b[14] & 0x0f) * 4;
            key.family = 4;
            key.saddr[..4].copy_from_slice(&b[26..30]);
            key.daddr[..4].copy_from_slice(&b[30..34]);
            // A fragment after the first has no ports: all such count as one flow.
            let fragment_offset = u16::from_be_bytes([b[20], b[21]]) & 0x1fff;
            let l4 = if fragment_offset == 0 { 14 + ihl } else { 0 };
            (b[23], l4)
        }
        ETH_P_IPV6 if n >= 14 + 40 => {
            key.family = 6;
            key.saddr.copy_from_slice(&b[22..38]);
            key.daddr.copy_from_slice(&b[38..54]);
            // Ports only when the next header is the transport (no extension header
            // walk here).
            (b[20], 14 + 40)
        }
        _ => return None,
    };
    key.proto = proto;
    // The bytes of the transport header this protocol's fields need.
    let need = match proto {
        IPPROTO_TCP => 14,
        IPPROTO_UDP => 4,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => 6,
        _ => return Some((key, 0)),
    };
    if l4 == 0 || l4 + need > n {
        return Some((key, 0));
    }
    let Some(h) = b.get(l4..l4 + need) else {
        return Some((key, 0));
    };
    let word = |i: usize| match h.get(i..i + 2) {
        Some(w) => u16::from_ne_bytes([w[0], w[1]]),
        None => 0,
    };
    let mut tcp_flags = 0;
    if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        key.sport = word(0);
        key.dport = word(2);
        if proto == IPPROTO_TCP {
            tcp_flags = h.get(13).copied().unwrap_or(0);
        }
    } else {
        // Type and code tell requests from replies; the identifier tells one ping
        // from another.
        key.dport = word(0);
        key.sport = word(4);
    }
    Some((key, tcp_flags))
}
