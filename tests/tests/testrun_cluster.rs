//! The cluster paths of the programs under BPF_PROG_TEST_RUN: `from_pod` sending to a
//! remote node (direct and tunnelled), `from_uplink` delivering direct-routed frames
//! only from known nodes, `from_tunnel` refusing frames without a tunnel key. Each
//! test loads its own copy of the object and fills the maps in-process. test_run
//! runs the skb on `lo` (ifindex 1) and never performs a redirect. Needs root.

use std::collections::BTreeMap;

use aya::maps::{Array, LpmTrie, MapData, lpm_trie::Key};
use vethbpf_common::{
    CLUSTER_MODE_DIRECT, CLUSTER_MODE_OFF, CLUSTER_MODE_VXLAN, EndpointInfo, EndpointSlot,
    MAP_ENDPOINT_ADDRS, MAP_ENDPOINT_SLOTS, MAP_ROUTES, PROG_FROM_POD, PROG_FROM_TUNNEL,
    PROG_FROM_UPLINK, ROUTE_KIND_LOCAL, ROUTE_KIND_NODE, ROUTE_KIND_REMOTE, Route, Verdict,
    endpoint_addr_index, ipv4_to_map,
};
use vethbpf_tests::cluster_run::{self, ClusterRun, GW_MAC};
use vethbpf_tests::{eth, ones_sum, testrun::set_endpoint};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// The local pod sending (behind `lo`, ifindex 1) and the local pod receiving.
const SRC_ID: u32 = 5;
const SRC_IP: [u8; 4] = [10, 244, 1, 2];
const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const DST_ID: u32 = 6;
const DST_IFINDEX: u32 = 42;
const DST_IP: [u8; 4] = [10, 244, 1, 3];
const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 3];
/// The remote node 3, its pod CIDR 10.244.2.0/24 and a pod there.
const NODE_ID: u32 = 3;
const NODE_IP: [u8; 4] = [192, 168, 77, 2];
const REMOTE_POD: [u8; 4] = [10, 244, 2, 7];
const STRANGER: [u8; 4] = [10, 99, 0, 1];

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
        f.endpoint(1, SRC_ID, SRC_IP, SRC_MAC);
        f.endpoint(DST_IFINDEX, DST_ID, DST_IP, DST_MAC);
        f.route(DST_IP, 32, ROUTE_KIND_LOCAL, DST_IFINDEX, DST_ID, DST_MAC);
        f.route([10, 244, 2, 0], 24, ROUTE_KIND_REMOTE, 0, NODE_ID, [0; 6]);
        f.route(NODE_IP, 32, ROUTE_KIND_NODE, 0, NODE_ID, [0; 6]);
        f.node(NODE_ID, NODE_IP);
        f
    }

    fn endpoint(&mut self, ifindex: u32, id: u32, ip: [u8; 4], mac: [u8; 6]) {
        set_endpoint(&mut self.ebpf, ifindex, id, ipv4_to_map(ip), mac);
    }

    fn route(&mut self, prefix: [u8; 4], len: u32, kind: u32, ifindex: u32, id: u32, mac: [u8; 6]) {
        let mut routes: LpmTrie<&mut MapData, u32, Route> =
            self.ebpf.map_mut(MAP_ROUTES).unwrap().try_into().unwrap();
        routes
            .insert(
                &Key::new(len, ipv4_to_map(prefix)),
                Route {
                    kind,
                    ifindex,
                    endpoint_id: id,
                    mac,
                    _pad: [0; 2],
                },
                0,
            )
            .unwrap();
    }
}

/// An ICMP echo frame from `src` to `dst` with `ttl`, a valid header checksum.
fn frame(src: [u8; 4], dst: [u8; 4], ttl: u8, eth_dst: [u8; 6], eth_src: [u8; 6]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 28, 0, 1, 0x40, 0, ttl, 1, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = !ones_sum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
    eth(eth_dst, eth_src, 0x0800, &ip)
}

fn one(id: u32, v: Verdict) -> BTreeMap<(u32, &'static str), u64> {
    BTreeMap::from([((id, v.name()), 1)])
}

/// The frame with its TTL one lower and the header checksum still right.
fn assert_forwarded(inp: &[u8], out: &[u8], ttl: u8) {
    assert_eq!(out[14 + 8], ttl - 1, "TTL");
    assert_eq!(ones_sum(&out[14..34]), 0xffff, "header checksum");
    assert_eq!(&out[26..34], &inp[26..34], "addresses untouched: no NAT");
}

#[test]
fn from_pod_sends_a_remote_pod_cidr_to_its_node() {
    for mode in [CLUSTER_MODE_DIRECT, CLUSTER_MODE_VXLAN] {
        let f = Fixture::new(mode);
        let inp = frame(SRC_IP, REMOTE_POD, 64, GW_MAC, SRC_MAC);
        let (ret, out, delta) = f.run(PROG_FROM_POD, &inp);
        assert_eq!(ret, TC_ACT_REDIRECT, "mode {mode}");
        assert_eq!(delta, one(SRC_ID, Verdict::ToNode), "mode {mode}");
        let sent = if mode == CLUSTER_MODE_VXLAN {
            cluster_run::assert_vxlan(&out, NODE_IP)
        } else {
            out
        };
        assert_forwarded(&inp, &sent, 64);
        assert_eq!(&sent[..12], &inp[..12], "the pod's MACs as it sent them");
        assert_eq!(&sent[34..], &inp[34..], "payload untouched");
        let n = f.node_counter(NODE_ID);
        assert_eq!(n.tx_packets, 1, "mode {mode}");
        assert_eq!(
            n.tx_bytes,
            inp.len() as u64,
            "counted without outer headers"
        );
        assert!(n.tx_last_ns > 0 && n.rx_packets == 0, "{n:?}");

        // Expiring on this hop: dropped here, and the gateway says so.
        let inp = frame(SRC_IP, REMOTE_POD, 1, GW_MAC, SRC_MAC);
        let (ret, out, delta) = f.run(PROG_FROM_POD, &inp);
        assert_eq!(ret, TC_ACT_REDIRECT, "mode {mode}");
        assert_eq!(delta, one(SRC_ID, Verdict::DropTtl), "mode {mode}");
        vethbpf_tests::testrun::assert_icmp_error(&inp, &out, 11, 0, 0);

        // A remote node's own address is the node stack's (egress's) business.
        let inp = frame(SRC_IP, NODE_IP, 64, GW_MAC, SRC_MAC);
        let (ret, out, delta) = f.run(PROG_FROM_POD, &inp);
        assert_eq!((ret, delta), (TC_ACT_OK, one(SRC_ID, Verdict::Pass)));
        assert_eq!(out, inp);
    }
}

#[test]
fn from_pod_encapsulation_is_what_the_other_node_decapsulates() {
    // Node 1 (this fixture) sends to a pod of node 3; node 3 (a second fixture whose
    // own address is NODE_IP's and which knows node 1 as its node 3) receives it.
    let sender = Fixture::new(CLUSTER_MODE_VXLAN);
    let inp = frame(SRC_IP, REMOTE_POD, 64, GW_MAC, SRC_MAC);
    let (ret, wire, _) = sender.run(PROG_FROM_POD, &inp);
    assert_eq!(ret, TC_ACT_REDIRECT);
    let inner = cluster_run::assert_vxlan(&wire, NODE_IP);

    // The receiver's view (a second fixture): its pod is REMOTE_POD, and the
    // sender is its known node NODE_ID at NODE_IP with pod CIDR 10.244.1.0/24. The
    // fixtures share their own address, so the wire frame's outer addresses become
    // NODE_IP to it (header checksum fixed), and its destination MAC the receiving
    // device's (`lo`'s, all zero: the sender's neighbour code writes it on the
    // way out); nothing else of it changes.
    let mut receiver = Fixture::new(CLUSTER_MODE_VXLAN);
    receiver.endpoint(DST_IFINDEX, DST_ID, REMOTE_POD, DST_MAC);
    receiver.route(
        REMOTE_POD,
        32,
        ROUTE_KIND_LOCAL,
        DST_IFINDEX,
        DST_ID,
        DST_MAC,
    );
    receiver.route([10, 244, 1, 0], 24, ROUTE_KIND_REMOTE, 0, NODE_ID, [0; 6]);
    let mut frame_in = wire;
    frame_in[0..6].copy_from_slice(&[0; 6]);
    frame_in[26..30].copy_from_slice(&NODE_IP);
    frame_in[30..34].copy_from_slice(&cluster_run::OWN_NODE_IP);
    frame_in[24..26].copy_from_slice(&[0, 0]);
    let c = !ones_sum(&frame_in[14..34]);
    frame_in[24..26].copy_from_slice(&c.to_be_bytes());
    let (ret, out, delta) = receiver.run(PROG_FROM_UPLINK, &frame_in);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(delta, one(DST_ID, Verdict::FromNode));
    assert_eq!(out.len(), inner.len(), "the 50 bytes of VXLAN are gone");
    assert_forwarded(&inp, &out, 63);
    assert_eq!(&out[34..], &inp[34..], "payload untouched");
}

#[test]
fn from_pod_drops_for_an_unusable_node() {
    // No cluster configured.
    let f = Fixture::new(CLUSTER_MODE_OFF);
    let inp = frame(SRC_IP, REMOTE_POD, 64, GW_MAC, SRC_MAC);
    let (ret, _, delta) = f.run(PROG_FROM_POD, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_SHOT, one(SRC_ID, Verdict::DropNodeUnreachable))
    );
    // A route whose node entry is gone.
    let mut f = Fixture::new(CLUSTER_MODE_DIRECT);
    f.node(NODE_ID, [0; 4]);
    let (ret, _, delta) = f.run(PROG_FROM_POD, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_SHOT, one(SRC_ID, Verdict::DropNodeUnreachable))
    );
}

#[test]
fn from_uplink_delivers_from_known_nodes_only() {
    let f = Fixture::new(CLUSTER_MODE_DIRECT);
    let node_mac = [2, 0, 0, 0, 9, 9];
    // test_run runs on lo: its MAC (all zeros) makes the frame PACKET_HOST, as one
    // routed to this node's uplink is (from_uplink leaves frames for other hosts).
    let uplink_mac = [0; 6];
    // A remote pod, and the remote node itself: delivered, TTL-1, addressed to the pod.
    for src in [REMOTE_POD, NODE_IP] {
        let inp = frame(src, DST_IP, 63, uplink_mac, node_mac);
        let (ret, out, delta) = f.run(PROG_FROM_UPLINK, &inp);
        assert_eq!(ret, TC_ACT_REDIRECT, "from {src:?}");
        assert_eq!(delta, one(DST_ID, Verdict::FromNode), "from {src:?}");
        assert_forwarded(&inp, &out, 63);
        assert_eq!(&out[0..6], &DST_MAC, "to the pod's MAC");
        assert_eq!(&out[6..12], &GW_MAC, "from the gateway's");
    }
    let n = f.node_counter(NODE_ID);
    assert_eq!(n.rx_packets, 2);
    assert!(n.rx_last_ns > 0);

    // Anyone else: dropped, counted at the pod it was meant for.
    let inp = frame(STRANGER, DST_IP, 63, uplink_mac, node_mac);
    let (ret, out, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_SHOT, one(DST_ID, Verdict::DropUnknownSource))
    );
    assert_eq!(out, inp);
    // Not for a local pod: the node stack's, counted as the node's and untouched.
    for dst in [[192, 168, 77, 1], REMOTE_POD] {
        let inp = frame(REMOTE_POD, dst, 63, uplink_mac, node_mac);
        let (ret, out, delta) = f.run(PROG_FROM_UPLINK, &inp);
        assert_eq!(
            (ret, delta),
            (TC_ACT_OK, one(0, Verdict::UplinkPass)),
            "to {dst:?}"
        );
        assert_eq!(out, inp);
    }
    // A header whose checksum does not verify: ip_rcv would refuse it, so does the
    // redirect that skips ip_rcv.
    let mut inp = frame(REMOTE_POD, DST_IP, 63, uplink_mac, node_mac);
    inp[14 + 10] ^= 0x55;
    let (ret, out, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!((ret, delta), (TC_ACT_SHOT, one(DST_ID, Verdict::DropCsum)));
    assert_eq!(out, inp);
    // Arriving on its last TTL: dropped at this hop.
    let inp = frame(REMOTE_POD, DST_IP, 1, uplink_mac, node_mac);
    let (ret, _, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!((ret, delta), (TC_ACT_SHOT, one(DST_ID, Verdict::DropTtl)));

    // With an overlay, pod traffic must come through the tunnel.
    let f = Fixture::new(CLUSTER_MODE_VXLAN);
    let inp = frame(REMOTE_POD, DST_IP, 63, uplink_mac, node_mac);
    let (ret, _, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_SHOT, one(DST_ID, Verdict::DropUnknownSource))
    );
}

#[test]
fn from_tunnel_refuses_frames_without_a_tunnel_key() {
    // test_run frames carry no tunnel metadata: as if someone injected frames into
    // the VXLAN device by other means.
    let f = Fixture::new(CLUSTER_MODE_VXLAN);
    let inp = frame(REMOTE_POD, DST_IP, 63, GW_MAC, SRC_MAC);
    let (ret, out, delta) = f.run(PROG_FROM_TUNNEL, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_SHOT, one(DST_ID, Verdict::DropMalformed))
    );
    assert_eq!(out, inp);
    // For no endpoint here.
    let inp = frame(REMOTE_POD, [10, 244, 1, 99], 63, GW_MAC, SRC_MAC);
    let (ret, _, delta) = f.run(PROG_FROM_TUNNEL, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_SHOT, one(0, Verdict::DropUnknownDestination))
    );
}

/// `inner` (an Ethernet frame) in VXLAN as a vethbpf node sends it: outer IPv4
/// from `outer_src` to this node, UDP to 8472 with a zero checksum, VNI `vni`.
fn vxlan(outer_src: [u8; 4], vni: u32, inner: &[u8]) -> Vec<u8> {
    let total = (20 + 8 + 8 + inner.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 7, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&outer_src);
    ip.extend_from_slice(&cluster_run::OWN_NODE_IP);
    let c = !ones_sum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&40000u16.to_be_bytes());
    ip.extend_from_slice(&vethbpf_common::VXLAN_PORT.to_be_bytes());
    ip.extend_from_slice(&((8 + 8 + inner.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&[0x08, 0, 0, 0]);
    ip.extend_from_slice(&(vni << 8).to_be_bytes());
    ip.extend_from_slice(inner);
    eth([0; 6], [2, 0, 0, 0, 9, 9], 0x0800, &ip)
}

#[test]
fn from_uplink_decapsulates_vxlan_from_known_nodes_for_local_pods() {
    let mut f = Fixture::new(CLUSTER_MODE_VXLAN);
    // Another known node, 4, with pod CIDR 10.244.4.0/24.
    let other_node = [192, 168, 77, 4];
    f.route([10, 244, 4, 0], 24, ROUTE_KIND_REMOTE, 0, 4, [0; 6]);
    f.route(other_node, 32, ROUTE_KIND_NODE, 0, 4, [0; 6]);
    f.node(4, other_node);
    // The inner frame as the remote node's vethbpf.vx wraps it.
    let inner = frame(REMOTE_POD, DST_IP, 63, [0xee; 6], [0xaa; 6]);
    let inp = vxlan(NODE_IP, 1, &inner);
    let (ret, out, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(delta, one(DST_ID, Verdict::FromNode));
    // Exactly the inner packet, TTL-1, in an Ethernet header to the pod.
    assert_eq!(out.len(), inner.len(), "the 50 bytes of VXLAN are gone");
    assert_eq!(&out[0..6], &DST_MAC, "to the pod's MAC");
    assert_eq!(&out[6..12], &GW_MAC, "from the gateway's");
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    assert_forwarded(&inner, &out, 63);
    assert_eq!(&out[34..], &inner[34..], "payload untouched");
    assert_eq!(f.node_counter(NODE_ID).rx_packets, 1);

    // The same checks as through the device: an unknown outer source, a wrong VNI,
    // a remote pod that is not the sender's (a stranger's, or another known
    // node's, either way round): dropped, counted at the pod.
    for (outer_src, vni, inner_src) in [
        (STRANGER, 1, REMOTE_POD),
        (NODE_IP, 2, REMOTE_POD),
        (NODE_IP, 1, STRANGER),
        (NODE_IP, 1, [10, 244, 4, 9]),
        (other_node, 1, REMOTE_POD),
    ] {
        let inp = vxlan(
            outer_src,
            vni,
            &frame(inner_src, DST_IP, 63, [0xee; 6], [0xaa; 6]),
        );
        let (ret, _, delta) = f.run(PROG_FROM_UPLINK, &inp);
        assert_eq!(
            (ret, delta),
            (TC_ACT_SHOT, one(DST_ID, Verdict::DropUnknownSource)),
            "{outer_src:?} VNI {vni} inner {inner_src:?}"
        );
    }
    // Not plainly for a pod here: left to the stack (and the VXLAN device) as it
    // came, the node's: an inner destination that is no local pod, a UDP checksum,
    // another port, a fragment, a large frame.
    let mut cases = vec![vxlan(
        NODE_IP,
        1,
        &frame(REMOTE_POD, REMOTE_POD, 63, [0xee; 6], [0xaa; 6]),
    )];
    let mut with_csum = vxlan(NODE_IP, 1, &inner);
    with_csum[14 + 20 + 6] = 0x12;
    cases.push(with_csum);
    let mut other_port = vxlan(NODE_IP, 1, &inner);
    other_port[14 + 20 + 3] ^= 1;
    cases.push(other_port);
    let mut fragment = vxlan(NODE_IP, 1, &inner);
    fragment[14 + 6] = 0x20; // MF
    let c = {
        fragment[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        !ones_sum(&fragment[14..34])
    };
    fragment[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    cases.push(fragment);
    // A full-sized frame: a bulk segment, for the device and its GRO cell.
    let mut big = inner.clone();
    big.resize(600, 0);
    cases.push(vxlan(NODE_IP, 1, &big));
    for inp in cases {
        let (ret, out, delta) = f.run(PROG_FROM_UPLINK, &inp);
        assert_eq!((ret, delta), (TC_ACT_OK, one(0, Verdict::UplinkPass)));
        assert_eq!(out, inp, "untouched");
    }
    // Without an overlay nothing is decapsulated.
    let f = Fixture::new(CLUSTER_MODE_DIRECT);
    let inp = vxlan(NODE_IP, 1, &inner);
    let (ret, out, _) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(out, inp);
}

/// Writes endpoint `id`'s `ENDPOINT_SLOTS` slot.
fn set_slot(f: &mut Fixture, id: u32, slot: EndpointSlot) {
    let mut slots: Array<&mut MapData, EndpointSlot> = f
        .ebpf
        .map_mut(MAP_ENDPOINT_SLOTS)
        .unwrap()
        .try_into()
        .unwrap();
    slots.set(id, slot, 0).unwrap();
}

/// from_uplink finds a local pod through its slot, where `ENDPOINT_ADDRS` leads to
/// one that has the address (no `ROUTES` walk), and through `ROUTES` where it leads
/// to another endpoint's (two addresses with the same last two bytes: a pod CIDR
/// larger than a /16) or nowhere.
#[test]
fn from_uplink_finds_local_pods_by_their_slot_or_route() {
    let mut f = Fixture::new(CLUSTER_MODE_DIRECT);
    let (node_mac, uplink_mac) = ([2, 0, 0, 0, 9, 9], [0; 6]);
    // The destination's slot and address entry as `endpoint add` writes them, and its
    // /32 gone from ROUTES: found by the slot alone.
    let slot = EndpointSlot {
        ifindex: DST_IFINDEX,
        info: EndpointInfo {
            ip: ipv4_to_map(DST_IP),
            id: DST_ID,
            mac: DST_MAC,
            _pad: [0; 2],
        },
    };
    set_slot(&mut f, DST_ID, slot);
    let mut addrs: Array<&mut MapData, u32> = f
        .ebpf
        .map_mut(MAP_ENDPOINT_ADDRS)
        .unwrap()
        .try_into()
        .unwrap();
    addrs
        .set(endpoint_addr_index(ipv4_to_map(DST_IP)), DST_ID, 0)
        .unwrap();
    let mut routes: LpmTrie<&mut MapData, u32, Route> =
        f.ebpf.map_mut(MAP_ROUTES).unwrap().try_into().unwrap();
    routes
        .remove(&Key::new(32, ipv4_to_map(DST_IP)))
        .expect("the /32 was there");
    let inp = frame(REMOTE_POD, DST_IP, 63, uplink_mac, node_mac);
    let (ret, out, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_REDIRECT, one(DST_ID, Verdict::FromNode))
    );
    assert_forwarded(&inp, &out, 63);
    assert_eq!(&out[0..6], &DST_MAC, "to the pod's MAC, from its slot");

    // 10.245.1.3 shares DST_IP's index: ENDPOINT_ADDRS leads to DST's slot, whose
    // address is not this one, so its route decides (here: the source's id and MAC).
    let shared = [10, 245, 1, 3];
    let other_mac = [2, 0, 0, 0, 0, 0x33];
    f.route(shared, 32, ROUTE_KIND_LOCAL, 43, SRC_ID, other_mac);
    let inp = frame(REMOTE_POD, shared, 63, uplink_mac, node_mac);
    let (ret, out, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!(
        (ret, delta),
        (TC_ACT_REDIRECT, one(SRC_ID, Verdict::FromNode))
    );
    assert_eq!(&out[0..6], &other_mac, "to its own MAC, from ROUTES");

    // An emptied slot (the endpoint deleted) leads nowhere: without its route either,
    // the address is no local pod's and the frame is the node stack's.
    set_slot(&mut f, DST_ID, EndpointSlot::default());
    let inp = frame(REMOTE_POD, DST_IP, 63, uplink_mac, node_mac);
    let (ret, out, delta) = f.run(PROG_FROM_UPLINK, &inp);
    assert_eq!((ret, delta), (TC_ACT_OK, one(0, Verdict::UplinkPass)));
    assert_eq!(out, inp);
}
