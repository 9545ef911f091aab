//! Rare diagnostics through aya-log (`vethbpf monitor --log` shows them): things the
//! program does not expect to see. One out-of-line function with one log statement,
//! so each place that reports costs the fast path nothing (a branch it does not
//! take) and the program carries one copy of aya-log's record writer, not one per
//! message.

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use aya_log_ebpf::warn;

/// What went unexpectedly.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Diag {
    /// The program runs on an interface with no ENDPOINTS entry (value: ifindex).
    NoEndpoint = 1,
    /// The program runs before `up` wrote CONFIG (value: ifindex).
    NoConfig = 2,
    /// An endpoint id beyond the counters array (value: the id).
    NoCounters = 3,
    /// A ROUTES entry of a kind this program does not know (value: the kind).
    UnknownRouteKind = 4,
}

/// Reports `what` with its `value`, at warning level.
#[inline(always)]
pub fn report(ctx: &TcContext, what: Diag, value: u32) {
    let skb = ctx.skb.skb;
    match what {
        Diag::NoEndpoint => no_endpoint(skb, value),
        Diag::NoConfig => no_config(skb, value),
        Diag::NoCounters => no_counters(skb, value),
        Diag::UnknownRouteKind => unknown_route_kind(skb, value),
    }
}

// One function per message: aya-log's format strings must be literals, and a record
// writer per call site would be copied into every inlined caller.

#[inline(never)]
fn no_endpoint(skb: *mut __sk_buff, ifindex: u32) {
    warn!(
        &TcContext::new(skb),
        "ifindex {} has no ENDPOINTS entry: frame dropped (drop_no_endpoint)", ifindex
    );
}

#[inline(never)]
fn no_config(skb: *mut __sk_buff, ifindex: u32) {
    warn!(
        &TcContext::new(skb),
        "ifindex {}: no node config (CONFIG not written by `vethbpf up`): frame dropped", ifindex
    );
}

#[inline(never)]
fn no_counters(skb: *mut __sk_buff, id: u32) {
    warn!(
        &TcContext::new(skb),
        "endpoint id {} is beyond the STATS array: frame not counted", id
    );
}

#[inline(never)]
fn unknown_route_kind(skb: *mut __sk_buff, kind: u32) {
    warn!(
        &TcContext::new(skb),
        "ROUTES entry of unknown kind {}: frame passed to the node stack", kind
    );
}
