//! IPv6 pods on other nodes (the IPv6 half of [`crate::remote`]): sending to a
//! remote node's IPv6 pod CIDR, and the checks and delivery of what other nodes send
//! to local IPv6 pods.
//!
//! The underlay stays IPv4: a remote node is its IPv4 address in `NODES`, and its
//! IPv6 pod CIDR a `ROUTE_KIND_REMOTE` entry of `ROUTES6` with its id. Through the
//! tunnel the inner frame is IPv6 under the same tunnel key as IPv4's; routed
//! directly, the frame goes out of the uplink to the node's MAC (see
//! [`crate::direct::redirect_l2`] for why not `bpf_redirect_neigh`). One hop-limit
//! decrement per eBPF hop, as IPv4's TTL; never masqueraded.

use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use vethbpf_common::{
    CLUSTER_MODE_DIRECT, CLUSTER_MODE_OFF, CLUSTER_MODE_VXLAN, Config, ROUTE_KIND_LOCAL,
    ROUTE_KIND_REMOTE, Route, Verdict,
};

use crate::{
    direct, encap,
    hdr::{ETH_HLEN, EthHdr, Ipv6Hdr, linear, ptr_at},
    ipv6::{self, Addr, IPV6_HLEN, UpperLayer, load_addr},
    l3,
    maps::{CLUSTER, CONFIG, NODE_NEIGH, NODES, ROUTES6},
    remote,
    stats::Decision,
};

/// Sends the IPv6 frame a local pod sent to the remote node of `route` (a
/// `ROUTE_KIND_REMOTE` entry of `ROUTES6`): one router hop (hop limit - 1), then
/// out of the uplink to the node, or into the tunnel.
#[inline(always)]
pub fn to_node(
    ctx: &TcContext,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    l4: &UpperLayer,
    route: &Route,
) -> Decision {
    let node_id = route.endpoint_id;
    let (Some(cluster), Some(node)) = (CLUSTER.get(0), NODES.get(node_id)) else {
        return Decision::drop(Verdict::DropNodeUnreachable);
    };
    if node.ip == 0 {
        return Decision::drop(Verdict::DropNodeUnreachable);
    }
    if !ipv6::decrease_hop_limit(ip) {
        return Decision::drop(Verdict::DropTtl);
    }
    // Counted as the pod sent it, before any outer headers.
    let len = ctx.len();
    let decision = match cluster.mode {
        CLUSTER_MODE_DIRECT => match NODE_NEIGH.get(node_id) {
            Some(l2) => direct::redirect_l2(eth, l2, cluster.uplink_ifindex),
            None => Decision::drop(Verdict::DropNodeUnreachable),
        },
        CLUSTER_MODE_VXLAN => {
            let inner = encap::Inner {
                l4_off: l4.offset,
                proto: l4.proto,
                ecn: ipv6::traffic_class(ip),
            };
            encap::to_node(ctx, node.ip, cluster, &inner)
        }
        _ => Decision::drop(Verdict::DropNodeUnreachable),
    };
    if decision.verdict == Verdict::ToNode {
        remote::count_tx(node_id, len);
    }
    decision
}

/// The local endpoint route for `daddr`, if it is one.
#[inline(always)]
fn local_endpoint(daddr: Addr) -> Option<&'static Route> {
    ROUTES6
        .get(&Key::new(128, daddr))
        .filter(|r| r.kind == ROUTE_KIND_LOCAL)
}

/// The id of the known node whose IPv6 pod CIDR holds `saddr`.
#[inline(always)]
fn source_node(saddr: Addr) -> Option<u32> {
    let route = ROUTES6.get(&Key::new(128, saddr))?;
    (route.kind == ROUTE_KIND_REMOTE).then_some(route.endpoint_id)
}

/// Pointers to the frame's headers, if it holds a whole fixed IPv6 header that
/// passes `ipv6_rcv`'s checks (bounds-checked against the packet's end).
#[inline(always)]
fn headers(ctx: &TcContext) -> Option<(*mut EthHdr, *mut Ipv6Hdr)> {
    let (data, data_end) = linear(ctx, ETH_HLEN + IPV6_HLEN)?;
    let eth = ptr_at::<EthHdr>(data, data_end, 0)?;
    let ip = ptr_at::<Ipv6Hdr>(data, data_end, ETH_HLEN)?;
    // SAFETY: bounds-checked against data_end just above; only read here.
    ipv6::packet_end(ctx, unsafe { &*ip })?;
    Some((eth, ip))
}

/// Delivers a frame that node `node_id` sent to the local endpoint `dst`.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    dst: &Route,
    node_id: u32,
    cfg: &Config,
) -> Decision {
    let decision = l3::delivery6_from_node(ctx, eth, ip, dst, cfg);
    if decision.verdict == Verdict::FromNode {
        remote::count_rx(node_id, ctx.len());
    }
    decision
}

/// The IPv6 part of `from_uplink`: a frame for a local IPv6 endpoint is delivered if
/// the node routes directly and its source lies in a known node's IPv6 pod CIDR;
/// dropped otherwise. `None`: not the cluster's (no cluster, or for no local
/// endpoint): the node stack's.
///
/// Returns the endpoint id to count under, with the decision.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext) -> Option<(u32, Decision)> {
    let cluster = CLUSTER.get(0).filter(|c| c.mode != CLUSTER_MODE_OFF)?;
    let (eth, ip) = headers(ctx)?;
    // SAFETY: bounds-checked by `headers`; no helper that changes packet data runs
    // while they are in use.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    let dst = local_endpoint(load_addr(&ip.dst_addr))?;
    let endpoint = dst.endpoint_id;
    let Some(cfg) = CONFIG.get(0) else {
        return Some((endpoint, Decision::drop(Verdict::DropUnknownSource)));
    };
    // With an overlay, pod traffic between nodes comes through the tunnel only.
    if cluster.mode != CLUSTER_MODE_DIRECT {
        return Some((endpoint, Decision::drop(Verdict::DropUnknownSource)));
    }
    let Some(node_id) = source_node(load_addr(&ip.src_addr)) else {
        return Some((endpoint, Decision::drop(Verdict::DropUnknownSource)));
    };
    Some((endpoint, deliver(ctx, eth, ip, dst, node_id, cfg)))
}

/// The IPv6 part of `from_tunnel`: only a known node (the outer IPv4 source) may
/// tunnel, only from its own IPv6 pod CIDR, and only to endpoints on this node.
#[inline(always)]
pub fn from_tunnel(ctx: &TcContext) -> (u32, Decision) {
    let Some((eth, ip)) = headers(ctx) else {
        return (0, Decision::drop(Verdict::DropMalformed));
    };
    // SAFETY: bounds-checked by `headers`; the tunnel-key read and map lookups
    // below leave packet data as it is.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    let Some(dst) = local_endpoint(load_addr(&ip.dst_addr)) else {
        return (0, Decision::drop(Verdict::DropUnknownDestination));
    };
    let endpoint = dst.endpoint_id;
    let Some((outer_src, vni)) = encap::tunnel_source(ctx) else {
        return (endpoint, Decision::drop(Verdict::DropMalformed));
    };
    let (Some(cluster), Some(cfg)) = (CLUSTER.get(0), CONFIG.get(0)) else {
        return (endpoint, Decision::drop(Verdict::DropUnknownSource));
    };
    if cluster.mode != CLUSTER_MODE_VXLAN || vni != cluster.vni {
        return (endpoint, Decision::drop(Verdict::DropUnknownSource));
    }
    // A node speaks for its own IPv6 pods only, from its own IPv4 address.
    let Some(node_id) = remote::tunnel_sender(source_node(load_addr(&ip.src_addr)), outer_src)
    else {
        return (endpoint, Decision::drop(Verdict::DropUnknownSource));
    };
    (endpoint, deliver(ctx, eth, ip, dst, node_id, cfg))
}
