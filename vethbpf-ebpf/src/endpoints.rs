//! Finding a local endpoint without a hash lookup or a trie walk: its slot in
//! `ENDPOINT_SLOTS` (by endpoint id), reached from the veth a frame came in on (the
//! id is its cls_bpf filter's classid) or from an address (`ENDPOINT_ADDRS`, by the
//! address's last two bytes). Array reads, which the JIT inlines; in place, where a
//! ping-pong's maps are cold between two packets, the hash lookup they replace was
//! the dearest part of a pod's forwarded frame. Each answer is checked against what
//! the caller knows (the veth, the address); one that does not check out sends the
//! caller to `ENDPOINTS` / `ROUTES`, which stay the truth.

use aya_ebpf::programs::TcContext;
use vethbpf_common::{EndpointInfo, EndpointSlot, endpoint_addr_index};

use crate::maps::{ENDPOINT_ADDRS, ENDPOINT_SLOTS, ENDPOINTS};

/// The endpoint behind the veth `ifindex` a frame came in on: its slot, by the id
/// cls_bpf hands the program as `skb->tc_classid` (the filter's classid); else (a
/// TCX link has no classid; a filter from before slots) `ENDPOINTS`. The slot is
/// trusted only if it names this very veth, so a stale or foreign classid finds
/// nothing but the hash entry.
///
/// A copy, not a reference: from either map, the rest of `from_pod` then sees one
/// kind of value (16 bytes on its stack), and the verifier walks it once instead of
/// once per map the pointer could be into.
#[inline(always)]
pub fn of_veth(ctx: &TcContext, ifindex: u32) -> Option<EndpointInfo> {
    // SAFETY: `ctx.skb.skb` is the program's context pointer.
    let id = unsafe { (*ctx.skb.skb).tc_classid };
    if let Some(s) = ENDPOINT_SLOTS.get(id)
        && s.ifindex == ifindex
    {
        return Some(s.info);
    }
    // SAFETY: map values are only read, and stay valid for the whole run.
    unsafe { ENDPOINTS.get(ifindex) }.copied()
}

/// The slot of the local endpoint with the IPv4 address `addr` (network order in
/// memory), if `ENDPOINT_ADDRS` leads to it. `None` says nothing: the caller asks
/// `ROUTES` (two addresses of a pod CIDR larger than a /16 can share an index).
///
/// Not inlined: `from_uplink` asks it on two paths (direct and tunnelled delivery),
/// and a BPF-to-BPF call costs less than a second copy of the instructions.
#[inline(never)]
pub fn slot_of_addr(addr: u32) -> Option<&'static EndpointSlot> {
    let id = *ENDPOINT_ADDRS.get(endpoint_addr_index(addr))?;
    // Id 0 is no endpoint's: its slot is always empty (ifindex 0).
    ENDPOINT_SLOTS
        .get(id)
        .filter(|s| s.ifindex != 0 && s.info.ip == addr)
}
