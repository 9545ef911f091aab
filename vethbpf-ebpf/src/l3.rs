//! Layer-3 delivery to an endpoint on this node (Cilium's `local_delivery`): the
//! router's TTL, the L2 rewrite `bpf_redirect_peer` does not do, and the redirect.

use aya_ebpf::helpers::bpf_redirect_peer;
use vethbpf_common::{Config, Route, Verdict};

use crate::{
    hdr::{EthHdr, Ipv4Hdr, copy_mac},
    ipv4,
    stats::Decision,
};

/// Routes the IPv4 frame to the local endpoint `route`.
#[inline(always)]
pub fn local_delivery(eth: &mut EthHdr, ip: &mut Ipv4Hdr, route: &Route, cfg: &Config) -> Decision {
    // We are the router between the two pods: a packet that would expire here is
    // dropped, as ip_forward would (minus the ICMP time exceeded).
    if ip.ttl <= 1 {
        return Decision::drop(Verdict::DropTtl);
    }
    ipv4::decrease_ttl(ip);

    // bpf_redirect_peer does not touch L2: address the frame to the destination pod,
    // from the gateway it believes it is talking to.
    copy_mac(&mut eth.dst_addr, &route.mac);
    copy_mac(&mut eth.src_addr, &cfg.gateway_mac);
    // SAFETY: a plain helper call with valid arguments.
    let action = unsafe { bpf_redirect_peer(route.ifindex, 0) };
    Decision::redirect(Verdict::Forward, action)
}
