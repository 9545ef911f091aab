//! Pods on other nodes: sending to a remote node's pod CIDR (direct or tunnelled),
//! and the checks and delivery of what other nodes send to local pods.
//!
//! The ROUTES map is the cluster view (Cilium's ipcache): a remote pod CIDR maps to
//! its node's id (`ROUTE_KIND_REMOTE`), each remote node's own address too
//! (`ROUTE_KIND_NODE`), so one lookup answers both "where does this go" and "is this
//! sender one of ours".

use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use vethbpf_common::{
    CLUSTER_MODE_DIRECT, CLUSTER_MODE_OFF, CLUSTER_MODE_VXLAN, Config, ROUTE_KIND_LOCAL,
    ROUTE_KIND_NODE, ROUTE_KIND_REMOTE, Route, Verdict,
};

use crate::{
    clock,
    diag::{self, Diag},
    direct, encap, endpoints,
    hdr::{ETH_HLEN, EthHdr, Ipv4Hdr, ipv4_addr},
    ipv4, l3,
    maps::{CLUSTER, CONFIG, NODE_STATS, NODES, ROUTES},
    stats::Decision,
};

/// Sends the IPv4 frame a local pod sent to the remote node of `route` (a
/// `ROUTE_KIND_REMOTE` route, its header 20 bytes: options go to the node stack):
/// one router hop (TTL-1), then out of the uplink to the node's address, or into
/// the tunnel. Never masqueraded: the pod's address is what
/// the other side sees.
#[inline(always)]
pub fn to_node(ctx: &TcContext, ip: &mut Ipv4Hdr, route: &Route) -> Decision {
    let node_id = route.endpoint_id;
    let (Some(cluster), Some(node)) = (CLUSTER.get(0), NODES.get(node_id)) else {
        return Decision::drop(Verdict::DropNodeUnreachable);
    };
    if node.ip == 0 {
        return Decision::drop(Verdict::DropNodeUnreachable);
    }
    if ip.ttl <= 1 {
        return Decision::drop(Verdict::DropTtl);
    }
    ipv4::decrease_ttl(ip);
    // Counted as the pod sent it, before any outer headers.
    let len = ctx.len();
    let decision = match cluster.mode {
        CLUSTER_MODE_DIRECT => direct::redirect_to_node(node.ip, cluster.uplink_ifindex),
        CLUSTER_MODE_VXLAN => {
            let inner = encap::Inner {
                l4_off: ETH_HLEN + size_of::<Ipv4Hdr>(),
                proto: ip.proto,
                ecn: ip.tos,
            };
            encap::to_node(ctx, node.ip, cluster, &inner)
        }
        _ => Decision::drop(Verdict::DropNodeUnreachable),
    };
    if decision.verdict == Verdict::ToNode {
        count_tx(node_id, len);
    }
    decision
}

/// Whether this node is part of a cluster (`up --cluster-cidr`).
#[inline(always)]
pub fn in_cluster() -> bool {
    CLUSTER.get(0).is_some_and(|c| c.mode != CLUSTER_MODE_OFF)
}

/// The id of the known node `saddr` belongs to: in its pod CIDR, or its own address.
#[inline(always)]
pub fn source_node(saddr: u32) -> Option<u32> {
    let route = ROUTES.get(&Key::new(32, saddr))?;
    (route.kind == ROUTE_KIND_REMOTE || route.kind == ROUTE_KIND_NODE).then_some(route.endpoint_id)
}

/// The node that sent a tunnelled packet: `inner_node`, the node its inner source
/// belongs to (a node speaks for its own pods and itself only), if that node's own
/// address is the outer source `outer_src`. One array read; on the way to a drop
/// only, whether the sender is a node at all (for the diagnostic).
#[inline(always)]
pub fn tunnel_sender(inner_node: Option<u32>, outer_src: u32) -> Option<u32> {
    let node = inner_node.filter(|id| {
        NODES
            .get(*id)
            .is_some_and(|n| n.ip != 0 && n.ip == outer_src)
    });
    if node.is_none()
        && ROUTES
            .get(&Key::new(32, outer_src))
            .is_none_or(|r| r.kind != ROUTE_KIND_NODE)
    {
        diag::report(Diag::UnknownTunnelSource, outer_src);
    }
    node
}

/// The local endpoint route for `daddr`, if it is one: from the endpoint's slot
/// where `ENDPOINT_ADDRS` leads to it, else from `ROUTES`.
#[inline(always)]
pub fn local_endpoint(daddr: u32) -> Option<Route> {
    if let Some(s) = endpoints::slot_of_addr(daddr) {
        return Some(Route {
            kind: ROUTE_KIND_LOCAL,
            ifindex: s.ifindex,
            endpoint_id: s.info.id,
            mac: s.info.mac,
            _pad: [0; 2],
        });
    }
    ROUTES
        .get(&Key::new(32, daddr))
        .filter(|r| r.kind == ROUTE_KIND_LOCAL)
        .copied()
}

/// Delivers a frame that node `node_id` sent to the local endpoint `dst`.
#[inline(always)]
pub fn deliver_from_node(
    ctx: &TcContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    dst: &Route,
    node_id: u32,
    cfg: &Config,
) -> Decision {
    let decision = l3::delivery_from_node(ctx, eth, ip, dst, cfg);
    if decision.verdict == Verdict::FromNode {
        count_rx(node_id, ctx.len());
    }
    decision
}

/// The direct-routing part of `from_uplink`: an IPv4 frame (its header checked by
/// `ipv4::valid_header_len`, `hdr_len` long) for a local endpoint is delivered if it
/// comes from a known node (its pod CIDR or its address) and the node routes
/// directly; dropped otherwise (the outside reaches pods only through replies to
/// their own flows, which egress's `from_uplink` translates before it calls this). `None`: not
/// for a local endpoint, or with options (the node stack's, as from a pod).
///
/// Returns the endpoint id to count under, with the decision.
#[inline(always)]
pub fn from_uplink(
    ctx: &TcContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    hdr_len: u32,
) -> Option<(u32, Decision)> {
    if hdr_len != 20 {
        return None;
    }
    let dst = local_endpoint(ipv4_addr(&ip.dst_addr))?;
    let endpoint = dst.endpoint_id;
    // The stack's ip_rcv would have refused it: so does a redirect past it.
    if !ipv4::checksum_ok(ip) {
        return Some((endpoint, Decision::drop(Verdict::DropCsum)));
    }
    let (Some(cluster), Some(cfg)) = (CLUSTER.get(0), CONFIG.get(0)) else {
        return Some((endpoint, Decision::drop(Verdict::DropUnknownSource)));
    };
    // With an overlay, pod traffic between nodes comes through the tunnel only.
    if cluster.mode != CLUSTER_MODE_DIRECT {
        return Some((endpoint, Decision::drop(Verdict::DropUnknownSource)));
    }
    let Some(node_id) = source_node(ipv4_addr(&ip.src_addr)) else {
        return Some((endpoint, Decision::drop(Verdict::DropUnknownSource)));
    };
    Some((
        endpoint,
        deliver_from_node(ctx, eth, ip, &dst, node_id, cfg),
    ))
}

#[inline(always)]
pub fn count_tx(node_id: u32, len: u32) {
    if let Some(c) = NODE_STATS.get_ptr_mut(node_id) {
        // SAFETY: a per-CPU slot from a successful lookup; only this CPU writes it.
        // (`status` wants seconds: the coarse clock is plenty.)
        unsafe {
            (*c).tx_packets += 1;
            (*c).tx_bytes += u64::from(len);
            (*c).tx_last_ns = clock::now();
        }
    }
}

#[inline(always)]
pub fn count_rx(node_id: u32, len: u32) {
    if let Some(c) = NODE_STATS.get_ptr_mut(node_id) {
        // SAFETY: as in count_tx.
        unsafe {
            (*c).rx_packets += 1;
            (*c).rx_bytes += u64::from(len);
            (*c).rx_last_ns = clock::now();
        }
    }
}
