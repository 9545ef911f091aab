//! The IPv6 cluster paths under BPF_PROG_TEST_RUN (the twin of testrun_cluster.rs):
//! `from_pod` sending an IPv6 pod's frame to a remote node (direct: the exact
//! frame, MACs from NODE_NEIGH; tunnelled: the frame as it enters the tunnel),
//! `from_uplink` delivering direct-routed IPv6 only from known nodes' IPv6 pod
//! CIDRs, `from_tunnel` refusing IPv6 frames without a tunnel key. test_run runs the
//! skb on `lo` (ifindex 1) and never performs a redirect. Needs root.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use aya::maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key};
use vethbpf_common::{
    CLUSTER_MODE_DIRECT, CLUSTER_MODE_VXLAN, EndpointInfo, EndpointInfo6, MAP_ENDPOINTS,
    MAP_ENDPOINTS6, MAP_NODE_NEIGH, MAP_ROUTES, MAP_ROUTES6, NodeNeigh, PROG_FROM_POD,
    PROG_FROM_TUNNEL, PROG_FROM_UPLINK, ROUTE_KIND_LOCAL, ROUTE_KIND_NODE, ROUTE_KIND_REMOTE,
    Route, Verdict, ipv4_to_map,
};
use vethbpf_tests::cluster_run::{ClusterRun, GW_MAC};
use vethbpf_tests::eth;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const SRC_ID: u32 = 5;
const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const DST_ID: u32 = 6;
const DST_IFINDEX: u32 = 42;
const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 3];
const NODE_ID: u32 = 3;
const NODE_IP: [u8; 4] = [192, 168, 77, 2];
/// The remote node's uplink MAC and ours, as userspace learns them.
const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 9, 9];
const UPLINK_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];

fn ip6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("address").octets()
}

fn src_ip() -> [u8; 16] {
    ip6("fd00:10:244:1::2")
}
fn dst_ip() -> [u8; 16] {
    ip6("fd00:10:244:1::3")
}
fn remote_pod() -> [u8; 16] {
    ip6("fd00:10:244:2::7")
}

/// The shared cluster harness with this file's endpoints, routes and nodes.
struct Fixture {
    r: ClusterRun,
}

impl std::ops::Deref for Fixture {
    type Target = ClusterRun;
    fn deref(&self) -> &ClusterRun {
        &self.r
    }
}

impl std::ops::DerefMut for Fixture {
    fn deref_mut(&mut self) -> &mut ClusterRun {
        &mut self.r
    }
}

impl Fixture {
    fn new(mode: u32) -> Fixture {
        let mut f = Fixture {
            r: ClusterRun::load(mode, &[SRC_ID, DST_ID]),
        };
        // The sending pod behind lo (ifindex 1), dual stack.
        let mut eps: HashMap<&mut MapData, u32, EndpointInfo> =
            f.ebpf.map_mut(MAP_ENDPOINTS).unwrap().try_into().unwrap();
        eps.insert(
            1,
            EndpointInfo {
                ip: ipv4_to_map([10, 244, 1, 2]),
                id: SRC_ID,
                mac: SRC_MAC,
                _pad: [0; 2],
            },
            0,
        )
        .unwrap();
        let mut eps6: HashMap<&mut MapData, u32, EndpointInfo6> =
            f.ebpf.map_mut(MAP_ENDPOINTS6).unwrap().try_into().unwrap();
        eps6.insert(
            1,
            EndpointInfo6 {
                ip: src_ip(),
                link_local: ip6("fe80::2"),
            },
            0,
        )
        .unwrap();
        let route = |kind, ifindex, id, mac| Route {
            kind,
            ifindex,
            endpoint_id: id,
            mac,
            _pad: [0; 2],
        };
        let mut routes6: LpmTrie<&mut MapData, [u8; 16], Route> =
            f.ebpf.map_mut(MAP_ROUTES6).unwrap().try_into().unwrap();
        routes6
            .insert(
                &Key::new(128, dst_ip()),
                route(ROUTE_KIND_LOCAL, DST_IFINDEX, DST_ID, DST_MAC),
                0,
            )
            .unwrap();
        routes6
            .insert(
                &Key::new(64, ip6("fd00:10:244:2::")),
                route(ROUTE_KIND_REMOTE, 0, NODE_ID, [0; 6]),
                0,
            )
            .unwrap();
        let mut routes: LpmTrie<&mut MapData, u32, Route> =
            f.ebpf.map_mut(MAP_ROUTES).unwrap().try_into().unwrap();
        routes
            .insert(
                &Key::new(32, ipv4_to_map(NODE_IP)),
                route(ROUTE_KIND_NODE, 0, NODE_ID, [0; 6]),
                0,
            )
            .unwrap();
        f.node(NODE_ID, NODE_IP);
        f.neigh(NODE_MAC);
        f
    }

    fn neigh(&mut self, mac: [u8; 6]) {
        let mut neigh: Array<&mut MapData, NodeNeigh> = self
            .ebpf
            .map_mut(MAP_NODE_NEIGH)
            .unwrap()
            .try_into()
            .unwrap();
        neigh
            .set(
                NODE_ID,
                NodeNeigh {
                    mac,
                    uplink_mac: UPLINK_MAC,
                    _pad: [0; 4],
                },
                0,
            )
            .unwrap();
    }
}

/// An IPv6 UDP frame (payload "vethbpf!", checksum left 0: nothing checks it
/// here, and nothing rewrites it).
fn frame(src: [u8; 16], dst: [u8; 16], hops: u8, eth_dst: [u8; 6], eth_src: [u8; 6]) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0, 0, 16, 17, hops];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 16, 0, 0]);
    ip.extend_from_slice(b"vethbpf!");
    eth(eth_dst, eth_src, 0x86dd, &ip)
}

fn one(id: u32, v: Verdict) -> BTreeMap<(u32, &'static str), u64> {
    BTreeMap::from([((id, v.name()), 1)])
}

/// `inp` with hop limit - 1 and the given MACs: every other byte the same.
fn expected(inp: &[u8], eth_dst: [u8; 6], eth_src: [u8; 6]) -> Vec<u8> {
    let mut want = inp.to_vec();
    want[0..6].copy_from_slice(&eth_dst);
    want[6..12].copy_from_slice(&eth_src);
    want[14 + 7] -= 1;
    want
}

#[test]
fn from_pod_sends_a_remote_ipv6_pod_cidr_to_its_node() {
    // Direct routing: out of the uplink to the node's MAC, from the uplink's, one
    // hop-limit decrement; nothing else changes (no NAT).
    let mut f = Fixture::new(CLUSTER_MODE_DIRECT);
    let inp = frame(src_ip(), remote_pod(), 64, GW_MAC, SRC_MAC);
    let (ret, out, delta) = f.run(PROG_FROM_POD, &inp);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(delta, one(SRC_ID, Verdict::ToNode));
    assert_eq!(out, expected(&inp, NODE_MAC, UPLINK_MAC));
    assert_eq!(f.node_counter(NODE_ID).tx_packets, 1);

    // Expiring on this hop: dropped here, and the gateway says so.
    let inp1 = frame(src_ip(), remote_pod(), 1, GW_MAC, SRC_MAC);
    let (ret, out, delta) = f.run(PROG_FROM_POD, &inp1);
    assert_eq!(
        (ret, delta),
        (TC_ACT_REDIRECT, one(SRC_ID, Verdict::DropTtl))
    );
    vethbpf_tests::ipv6::assert_icmp6_error(&inp1, &out, GW_MAC, (3, 0, 0));

    // The node's MAC not learnt (yet): unreachable, not sent anywhere.
    f.neigh([0; 6]);
    let (ret, _, delta) = f.run(PROG_FROM_POD, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_SHOT, one(SRC_ID, Verdict::DropNodeUnreachable))
    );
    assert_eq!(f.node_counter(NODE_ID).tx_packets, 1);

    // Through the tunnel: the inner frame as the pod sent it, one hop-limit
    // decrement, in VXLAN over IPv4 to the node (multinode6.rs sees it work end
    // to end).
    let f = Fixture::new(CLUSTER_MODE_VXLAN);
    let (ret, out, delta) = f.run(PROG_FROM_POD, &inp);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(delta, one(SRC_ID, Verdict::ToNode));
    let inner = vethbpf_tests::cluster_run::assert_vxlan(&out, NODE_IP);
    assert_eq!(inner, expected(&inp, GW_MAC, SRC_MAC));
    assert_eq!(f.node_counter(NODE_ID).tx_packets, 1);
}

#[test]
fn from_uplink_delivers_ipv6_from_known_nodes_only() {
    let f = Fixture::new(CLUSTER_MODE_DIRECT);
    // test_run runs on lo, whose MAC (all zeros) makes the frame PACKET_HOST.
    let lo = [0; 6];
    let inp = frame(remote_pod(), dst_ip(), 63, lo, NODE_MAC);
    let (ret, out, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(delta, one(DST_ID, Verdict::FromNode));
    assert_eq!(out, expected(&inp, DST_MAC, GW_MAC));
    assert_eq!(f.node_counter(NODE_ID).rx_packets, 1);

    // From outside every known IPv6 pod CIDR: dropped at the pod it was meant for.
    let inp = frame(ip6("fd99::1"), dst_ip(), 63, lo, NODE_MAC);
    let (ret, out, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_SHOT, one(DST_ID, Verdict::DropUnknownSource))
    );
    assert_eq!(out, inp);
    // Arriving on its last hop: dropped here.
    let inp = frame(remote_pod(), dst_ip(), 1, lo, NODE_MAC);
    let (ret, _, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!((ret, delta), (TC_ACT_SHOT, one(DST_ID, Verdict::DropTtl)));
    // Not for a local pod: the node's, untouched.
    let inp = frame(remote_pod(), ip6("fd00:10:244:1::99"), 63, lo, NODE_MAC);
    let (ret, out, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!((ret, delta), (TC_ACT_OK, one(0, Verdict::UplinkPass)));
    assert_eq!(out, inp);

    // With an overlay, pod traffic must come through the tunnel.
    let f = Fixture::new(CLUSTER_MODE_VXLAN);
    let inp = frame(remote_pod(), dst_ip(), 63, lo, NODE_MAC);
    let (ret, _, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_SHOT, one(DST_ID, Verdict::DropUnknownSource))
    );
}

#[test]
fn from_tunnel_refuses_ipv6_frames_without_a_tunnel_key() {
    let f = Fixture::new(CLUSTER_MODE_VXLAN);
    let inp = frame(remote_pod(), dst_ip(), 63, GW_MAC, SRC_MAC);
    let (ret, out, delta) = f.run(PROG_FROM_TUNNEL, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_SHOT, one(DST_ID, Verdict::DropMalformed))
    );
    assert_eq!(out, inp);
    let inp = frame(remote_pod(), ip6("fd00:10:244:1::99"), 63, GW_MAC, SRC_MAC);
    let (ret, _, delta) = f.run(PROG_FROM_TUNNEL, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_SHOT, one(0, Verdict::DropUnknownDestination))
    );
    // A header ipv6_rcv would refuse (a payload length beyond the frame):
    // malformed, whoever sent it.
    let mut inp = frame(remote_pod(), dst_ip(), 63, GW_MAC, SRC_MAC);
    inp[14 + 5] = 200;
    let (ret, out, delta) = f.run(PROG_FROM_TUNNEL, &inp);
    assert_eq!((ret, delta), (TC_ACT_SHOT, one(0, Verdict::DropMalformed)));
    assert_eq!(out, inp);
}
