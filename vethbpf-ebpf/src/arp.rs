//! ARP from a pod: the pod resolves its gateway (and, with an on-link route, anything
//! else) to the gateway MAC, answered right here, so the node needs no proxy ARP and no
//! address on the host-side veth.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use vethbpf_common::{Config, EndpointInfo, Verdict};

use crate::{
    hdr::{
        ARP_HTYPE_ETHER, ARP_OP_REPLY, ARP_OP_REQUEST, ARP_PTYPE_IPV4, ArpHdr, ETH_HLEN, EthHdr,
        be16, copy_mac, ipv4_addr, linear, ptr_at, set_be16, set_ipv4_addr,
    },
    stats::Decision,
};

/// Handles an ARP frame sent by the endpoint `ep` on the host veth `ifindex`.
#[inline(always)]
pub fn handle(ctx: &TcContext, ifindex: u32, ep: &EndpointInfo, cfg: &Config) -> Decision {
    let Some((data, data_end)) = linear(ctx, ETH_HLEN + size_of::<ArpHdr>()) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    let (Some(eth), Some(arp)) = (
        ptr_at::<EthHdr>(data, data_end, 0),
        ptr_at::<ArpHdr>(data, data_end, ETH_HLEN),
    ) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    // SAFETY: both pointers were bounds-checked against data_end just above, and no
    // helper that changes packet data runs while they are in use.
    let (eth, arp) = unsafe { (&mut *eth, &mut *arp) };

    // Only Ethernet/IPv4 ARP has the layout of ArpHdr; anything else is not something a
    // pod on a veth has a reason to send.
    if be16(&arp.htype) != ARP_HTYPE_ETHER
        || be16(&arp.ptype) != ARP_PTYPE_IPV4
        || arp.hlen != 6
        || arp.plen != 4
    {
        return Decision::drop(Verdict::DropMalformed);
    }

    let (sender, is_request) = (ipv4_addr(&arp.spa), be16(&arp.oper) == ARP_OP_REQUEST);

    // Duplicate address detection (RFC 5227): a probe is a request from 0.0.0.0. It
    // claims no address and updates no cache, so it is no spoof; and it must get no
    // answer from us, for an answer means "this address is taken". The node stack
    // gets it and answers only for the node's own addresses, never a pod's.
    if sender == 0 && is_request {
        return Decision::pass();
    }

    // A pod may only speak for its own address: this stops it from poisoning caches
    // with gratuitous ARP for the gateway or another pod.
    if sender != ep.ip {
        return Decision::drop(Verdict::DropArpSpoof);
    }

    // Requests for the pod's own address (gratuitous ARP announcements), replies and
    // other operations go to the node stack, which answers none of them for a pod
    // address.
    if !is_request || ipv4_addr(&arp.tpa) == ep.ip {
        return Decision::pass();
    }

    reply_in_place(eth, arp, &cfg.gateway_mac);
    // Egress out of the same veth: straight back to the pod.
    // SAFETY: a plain helper call with valid arguments.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    Decision::redirect(Verdict::ArpReply, action)
}

/// Turns the request into the reply "requested address is at `gateway_mac`", addressed
/// to the requester.
#[inline(always)]
fn reply_in_place(eth: &mut EthHdr, arp: &mut ArpHdr, gateway_mac: &[u8; 6]) {
    let (requested, requester) = (ipv4_addr(&arp.tpa), ipv4_addr(&arp.spa));
    set_be16(&mut arp.oper, ARP_OP_REPLY);
    copy_mac(&mut arp.tha, &arp.sha);
    set_ipv4_addr(&mut arp.tpa, requester);
    copy_mac(&mut arp.sha, gateway_mac);
    set_ipv4_addr(&mut arp.spa, requested);
    copy_mac(&mut eth.dst_addr, &eth.src_addr);
    copy_mac(&mut eth.src_addr, gateway_mac);
}
