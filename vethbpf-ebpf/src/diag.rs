//! Rare diagnostics through aya-log (`vethbpf monitor --log` shows them): things the
//! program does not expect, or that an operator must know about. One out-of-line
//! function per message, so each place that reports costs the fast path nothing (a
//! branch it does not take), and aya-log's record writer (about 400 instructions)
//! is in the program once per message, not once per inlined caller.

use aya_log_ebpf::warn;

/// What happened.
#[derive(Clone, Copy)]
pub enum Diag {
    /// The program runs on an interface with no ENDPOINTS entry (value: ifindex).
    NoEndpoint,
    /// The program runs before `up` wrote CONFIG (value: ifindex).
    NoConfig,
    /// An endpoint id beyond the counters array (value: the id).
    NoCounters,
    /// A ROUTES entry of a kind this program does not know (value: the kind).
    UnknownRouteKind,
    /// A new flow refused: the NAT table is at its flow limit (value: the limit).
    NatTableFull,
    /// A tunnelled packet whose outer source is no known node (value: that address,
    /// network order in memory).
    UnknownTunnelSource,
}

/// Reports `what` with its `value`, at warning level.
#[inline(always)]
pub fn report(what: Diag, value: u32) {
    match what {
        Diag::NoEndpoint => no_endpoint(value),
        Diag::NoConfig => no_config(value),
        Diag::NoCounters => no_counters(value),
        Diag::UnknownRouteKind => unknown_route_kind(value),
        Diag::NatTableFull => nat_table_full(value),
        Diag::UnknownTunnelSource => unknown_tunnel_source(u32::from_be(value)),
    }
}

// aya-log-ebpf 0.2's macros take a program context first and do not use it (they
// write to their ring buffer with a helper that needs none): `&()` stands in, so that
// code without a context at hand (NAT port allocation) can report too.

#[inline(never)]
fn no_endpoint(ifindex: u32) {
    warn!(
        &(),
        "ifindex {} has no ENDPOINTS entry: frame dropped (drop_no_endpoint)", ifindex
    );
}

#[inline(never)]
fn no_config(ifindex: u32) {
    warn!(
        &(),
        "ifindex {}: no node config (CONFIG not written by `vethbpf up`): frame dropped", ifindex
    );
}

#[inline(never)]
fn no_counters(id: u32) {
    warn!(
        &(),
        "endpoint id {} is beyond the STATS array: frame not counted", id
    );
}

#[inline(never)]
fn unknown_route_kind(kind: u32) {
    warn!(
        &(),
        "ROUTES entry of unknown kind {}: frame passed to the node stack", kind
    );
}

#[inline(never)]
fn nat_table_full(max_flows: u32) {
    warn!(
        &(),
        "the NAT table is full ({} flows): new flow refused (nat_table_full)", max_flows
    );
}

#[inline(never)]
fn unknown_tunnel_source(outer_src: u32) {
    warn!(
        &(),
        "VXLAN packet from {:i}, which is no known node: dropped (drop_unknown_source)", outer_src
    );
}
