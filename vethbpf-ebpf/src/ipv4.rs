//! IPv4 from a pod: source validation, and the fast path to endpoints on this node.

use aya_ebpf::{helpers::bpf_redirect_peer, maps::lpm_trie::Key, programs::TcContext};
use vethbpf_common::{Config, EndpointInfo, ROUTE_KIND_LOCAL, Verdict};

use crate::{
    ROUTES,
    hdr::{ETH_HLEN, EthHdr, Ipv4Hdr, linear, mac_words, ptr_at},
    stats::Decision,
};

/// Handles an IPv4 frame sent by the endpoint `ep`.
#[inline(always)]
pub fn handle(ctx: &TcContext, ep: &EndpointInfo, cfg: &Config) -> Decision {
    let Some((data, data_end)) = linear(ctx, ETH_HLEN + size_of::<Ipv4Hdr>()) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(data, data_end, 0),
        ptr_at::<Ipv4Hdr>(data, data_end, ETH_HLEN),
    ) else {
        return Decision::drop(Verdict::DropMalformed);
    };
    // SAFETY: both pointers were bounds-checked against data_end just above, and no
    // helper that changes packet data runs while they are in use.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };

    // The checks the receiving stack's ip_rcv would make on the header itself. A frame
    // failing them must never be redirected: it would bypass the node's stack with a
    // header nobody validated.
    let version_ihl = ip.version_ihl;
    let hdr_len = u32::from(version_ihl & 0x0f) * 4;
    let tot_len = u32::from(u16::from_be(ip.tot_len));
    if version_ihl >> 4 != 4
        || hdr_len < 20
        || tot_len < hdr_len
        || ETH_HLEN as u32 + tot_len > ctx.len()
    {
        return Decision::drop(Verdict::DropMalformed);
    }

    if ip.saddr != ep.ip {
        return Decision::drop(Verdict::DropSpoof);
    }

    // Options (rare: record route, timestamps) need a router that processes them; the
    // node stack does, the fast path does not try.
    if hdr_len != 20 {
        return Decision::pass();
    }

    let Some(route) = ROUTES.get(Key::new(32, ip.daddr)) else {
        return Decision::pass();
    };
    if route.kind != ROUTE_KIND_LOCAL {
        return Decision::pass();
    }

    // We are the router between the two pods: a packet that would expire here is
    // dropped, as ip_forward would (minus the ICMP time exceeded).
    if ip.ttl <= 1 {
        return Decision::drop(Verdict::DropTtl);
    }
    decrease_ttl(ip);

    // bpf_redirect_peer does not touch L2: address the frame to the destination pod,
    // from the gateway it believes it is talking to.
    eth.dst = mac_words(&route.mac);
    eth.src = mac_words(&cfg.gateway_mac);
    // SAFETY: a plain helper call with valid arguments.
    let action = unsafe { bpf_redirect_peer(route.ifindex, 0) };
    Decision::redirect(Verdict::Forward, action)
}

/// Decrements the TTL and patches the header checksum incrementally, as the kernel's
/// `ip_decrease_ttl` does: the TTL is the high byte of its 16-bit word, so the word
/// drops by 0x0100 and the one's complement sum (the checksum's complement) by the
/// same, i.e. the checksum grows by 0x0100 with end-around carry. The arithmetic is on
/// the field as stored (network order), with 0x0100 converted alike.
#[inline(always)]
fn decrease_ttl(ip: &mut Ipv4Hdr) {
    let check = u32::from(ip.check) + u32::from(0x0100u16.to_be());
    ip.check = (check + u32::from(check >= 0xffff)) as u16;
    ip.ttl -= 1;
}
