//! INTERIM `from_uplink` (multinode branch): the minimal uplink program that the
//! direct-routing receive path needs, until the egress branch's `from_uplink` (with
//! reverse NAT) lands. At that merge, egress's program keeps its own parsing and
//! calls [`crate::remote::from_uplink`] for frames that are no NAT reply; this file
//! then goes.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};

use crate::{
    hdr::{ETH_HLEN, ETH_P_IP, EthHdr, Ipv4Hdr, linear, ptr_at},
    ipv4, remote, stats,
};

/// Direct-routed frames for local endpoints go to [`remote::from_uplink`];
/// everything else passes to the node's stack, uncounted.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> i32 {
    let Some((data, data_end)) = linear(ctx, ETH_HLEN + size_of::<Ipv4Hdr>()) else {
        return TC_ACT_OK;
    };
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(data, data_end, 0),
        ptr_at::<Ipv4Hdr>(data, data_end, ETH_HLEN),
    ) else {
        return TC_ACT_OK;
    };
    // SAFETY: both pointers were bounds-checked against data_end just above, and no
    // helper that changes packet data runs while they are in use.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    // Malformed IPv4 is the stack's to drop, as any frame that is not ours.
    if eth.ether_type != ETH_P_IP {
        return TC_ACT_OK;
    }
    let Some(hdr_len) = ipv4::valid_header_len(ctx, ip) else {
        return TC_ACT_OK;
    };
    match remote::from_uplink(ctx, eth, ip, hdr_len) {
        Some((endpoint, decision)) => stats::count(ctx, endpoint, decision),
        None => TC_ACT_OK,
    }
}
