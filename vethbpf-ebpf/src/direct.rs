//! Direct routing to another node on the uplink's network (Flannel's host-gw, minus
//! the kernel forwarding): the frame goes out of the uplink to the node's address
//! as next hop, and the kernel's neighbour code fills in both MACs (resolving the
//! node's with ARP first if it has to, the frame waiting in the queue).
//!
//! No `bpf_fib_lookup` first: it answers `BPF_FIB_LKUP_RET_FWD_DISABLED` for any
//! device with forwarding off, and the node keeps `ip_forward=0` (checked on 6.18:
//! the lookup succeeds only once the uplink's `forwarding` is 1). Nothing is lost:
//! direct routing only reaches nodes on the uplink's own network (`node add`
//! refuses others), so the node's address is always the next hop.

use aya_ebpf::{
    bindings::bpf_redir_neigh,
    helpers::{bpf_redirect, bpf_redirect_neigh},
};
use vethbpf_common::{NodeNeigh, Verdict};

use crate::{
    hdr::{EthHdr, copy_mac},
    stats::Decision,
};

/// `AF_INET` (linux/socket.h).
const AF_INET: u32 = 2;

/// Sends the frame out of `uplink` to the node at `node_ip` (network order in
/// memory).
#[inline(always)]
pub fn redirect_to_node(node_ip: u32, uplink: u32) -> Decision {
    // SAFETY: plain old data; zero is "unset" for every field.
    let mut params: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    params.nh_family = AF_INET;
    params.__bindgen_anon_1.ipv4_nh = node_ip;
    // SAFETY: the params live on our stack for the call.
    let action =
        unsafe { bpf_redirect_neigh(uplink, &mut params, size_of::<bpf_redir_neigh>() as i32, 0) };
    Decision::redirect(Verdict::ToNode, action)
}

/// Sends an IPv6 frame out of `uplink` to a node whose MACs are `l2` (userspace
/// learns them from the uplink's neighbour table).
///
/// Not `bpf_redirect_neigh`: the next hop is the node's IPv4 address, and for an
/// IPv6 packet the kernel's `bpf_out_neigh_v6` uses the parameters' IPv6 next hop
/// whatever `nh_family` says (net/core/filter.c, 6.18), so an IPv4 one would be
/// read as a bogus IPv6 address; without parameters it does an IPv6 route lookup,
/// which an IPv4 underlay cannot answer. `bpf_fib_lookup` of the IPv4 address is
/// refused with forwarding off (see above). So the MACs are written here and the
/// frame goes out with a plain `bpf_redirect`, as Cilium's tunnel-less IPv6 over
/// IPv4 does with its neighbour map.
#[inline(always)]
pub fn redirect_l2(eth: &mut EthHdr, l2: &NodeNeigh, uplink: u32) -> Decision {
    // Not learnt (yet): nothing to address the frame to.
    if l2.mac == [0; 6] {
        return Decision::drop(Verdict::DropNodeUnreachable);
    }
    copy_mac(&mut eth.dst_addr, &l2.mac);
    copy_mac(&mut eth.src_addr, &l2.uplink_mac);
    // SAFETY: a plain helper call with valid arguments.
    let action = unsafe { bpf_redirect(uplink, 0) };
    Decision::redirect(Verdict::ToNode, action)
}
