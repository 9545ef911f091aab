//! Egress under BPF_PROG_TEST_RUN: `from_pod` masquerades, `from_uplink` translates
//! replies and ICMP errors back, exact frames in and out, every checksum of an
//! expected frame computed here from scratch (not by patching the input). Each test
//! loads its own copy of the object (its own maps). Needs root.
//!
//! test_run runs the skb on `lo` of the test's namespace: `from_pod` sees ifindex 1,
//! so the sending pod is the endpoint stored under key 1 (a test "becomes" another
//! pod by rewriting that entry), and `from_uplink` frames carry lo's MAC (all zeros)
//! as destination so that the kernel classifies them PACKET_HOST, as a frame for this
//! host on a real uplink is. The uplink is lo too (its MTU is 64 KiB): test_run
//! returns the redirect without performing it.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key};
use vethbpf_common::{
    CT_FIN_IN, CT_FIN_OUT, CT_REPLIED, EGRESS_F_ENABLED, EGRESS_F_MASQUERADE, EgressConfig,
    MAP_EGRESS, MAP_EGRESS_SKIP, MAP_NAT, MAP_NAT_STATE, NAT_DIR_IN, NAT_DIR_OUT, NatEntry, NatKey,
    NatState, PROG_FROM_POD, PROG_FROM_UPLINK, SKIP_CLUSTER, SKIP_NODE_ADDRESS, Verdict,
    ipv4_to_map,
};
use vethbpf_tests::egress_run::{
    GW_MAC, LO_MAC, Programs, ROUTER_MAC, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, assert_run,
};
use vethbpf_tests::{Rng, eth, ones_sum, testrun::set_endpoint};

/// The pods. Both send through ifindex 1 (see the module comment).
#[derive(Clone, Copy)]
struct Pod {
    id: u32,
    ip: [u8; 4],
    mac: [u8; 6],
}
const POD_A: Pod = Pod {
    id: 5,
    ip: [10, 244, 0, 2],
    mac: [0x02, 0, 0, 0, 0, 0x02],
};
const POD_B: Pod = Pod {
    id: 6,
    ip: [10, 244, 0, 3],
    mac: [0x02, 0, 0, 0, 0, 0x03],
};
const POD_IFINDEX: u32 = 1;

const NAT_IP: [u8; 4] = [203, 0, 113, 1];
const REMOTE: [u8; 4] = [198, 51, 100, 10];
const ROUTER: [u8; 4] = [198, 51, 100, 1];
/// Another address of the node, and one in the cluster CIDR that is no local pod.
const NODE_OTHER: [u8; 4] = [192, 0, 2, 1];
const CLUSTER_OTHER: [u8; 4] = [10, 244, 9, 9];
const PORT_MIN: u16 = 61000;
const PORT_MAX: u16 = 65535;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

// ---------------------------------------------------------------------------------
// Frames, built from their fields; every checksum computed from scratch.

fn checksum(bytes: &[u8]) -> u16 {
    !ones_sum(bytes)
}

/// The L4 checksum of TCP/UDP: over the pseudo header and the whole segment (with
/// its checksum field taken as zero by the caller).
fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> u16 {
    let mut p = Vec::with_capacity(12 + l4.len());
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.push(0);
    p.push(proto);
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(l4);
    checksum(&p)
}

#[derive(Clone)]
struct Ip {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    ttl: u8,
    id: u16,
    /// Flags and fragment offset.
    frag: u16,
    payload: Vec<u8>,
}

impl Ip {
    fn new(src: [u8; 4], dst: [u8; 4], proto: u8, payload: Vec<u8>) -> Self {
        Self {
            src,
            dst,
            proto,
            ttl: 64,
            id: 0x4242,
            frag: 0x4000, // DF
            payload,
        }
    }
    fn bytes(&self) -> Vec<u8> {
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&((20 + self.payload.len()) as u16).to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.push(self.ttl);
        h.push(self.proto);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&self.payload);
        h
    }
}

fn udp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    data: &[u8],
    with_csum: bool,
) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    if with_csum {
        let mut c = l4_checksum(src, dst, UDP, &u);
        if c == 0 {
            c = 0xffff;
        }
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&0x1000_0001u32.to_be_bytes());
    t.extend_from_slice(&0x2000_0002u32.to_be_bytes());
    t.push(0x50);
    t.push(flags);
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(data);
    let c = l4_checksum(src, dst, TCP, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

fn icmp(ty: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(data);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn echo(ty: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut rest = [0; 4];
    rest[..2].copy_from_slice(&id.to_be_bytes());
    rest[2..].copy_from_slice(&seq.to_be_bytes());
    icmp(ty, 0, rest, b"ping payload 0123456789")
}

/// What a pod sends: to the gateway MAC.
fn from_pod_frame(pod: Pod, ip: &Ip) -> Vec<u8> {
    eth(GW_MAC, pod.mac, 0x0800, &ip.bytes())
}

/// What arrives on the uplink for this host.
fn uplink_frame(ip: &Ip) -> Vec<u8> {
    eth(LO_MAC, ROUTER_MAC, 0x0800, &ip.bytes())
}

/// What the node hands into a pod: from the gateway MAC to the pod's.
fn to_pod_frame(pod: Pod, ip: &Ip) -> Vec<u8> {
    eth(pod.mac, GW_MAC, 0x0800, &ip.bytes())
}

// ---------------------------------------------------------------------------------
// The programs under test.

struct Fixture {
    p: Programs,
}

impl std::ops::Deref for Fixture {
    type Target = Programs;
    fn deref(&self) -> &Programs {
        &self.p
    }
}

impl std::ops::DerefMut for Fixture {
    fn deref_mut(&mut self) -> &mut Programs {
        &mut self.p
    }
}

impl Fixture {
    /// Both programs loaded; node config, pod A behind ifindex 1, egress on with
    /// masquerade to NAT_IP, node address and cluster CIDR excluded.
    fn new() -> Self {
        Self::with(EGRESS_F_ENABLED | EGRESS_F_MASQUERADE, 1000)
    }

    fn with(flags: u32, max_flows: u32) -> Self {
        let mut f = Self {
            p: Programs::load(&[POD_A.id, POD_B.id]),
        };
        f.become_pod(POD_A);
        f.set_egress(flags, max_flows);
        let mut skip: LpmTrie<&mut MapData, u32, u32> =
            f.ebpf.map_mut(MAP_EGRESS_SKIP).unwrap().try_into().unwrap();
        for (prefix, len, why) in [
            (NAT_IP, 32, SKIP_NODE_ADDRESS),
            (NODE_OTHER, 32, SKIP_NODE_ADDRESS),
            ([10, 244, 0, 0], 16, SKIP_CLUSTER),
        ] {
            skip.insert(&Key::new(len, ipv4_to_map(prefix)), why, 0)
                .unwrap();
        }
        f
    }

    fn set_egress(&mut self, flags: u32, max_flows: u32) {
        let mut egress: Array<&mut MapData, EgressConfig> =
            self.ebpf.map_mut(MAP_EGRESS).unwrap().try_into().unwrap();
        egress
            .set(
                0,
                EgressConfig {
                    flags,
                    nat_addr: ipv4_to_map(NAT_IP),
                    uplink_ifindex: 1,
                    max_flows,
                    port_min: PORT_MIN,
                    port_max: PORT_MAX,
                    pod_net: ipv4_to_map([10, 244, 0, 0]),
                    pod_mask: ipv4_to_map([255, 255, 255, 0]),
                    cluster_net: ipv4_to_map([10, 244, 0, 0]),
                    cluster_mask: ipv4_to_map([255, 255, 0, 0]),
                    hash_seed: 0x1234_5678,
                },
                0,
            )
            .unwrap();
    }

    /// Makes `pod` the endpoint behind ifindex 1: the one `from_pod` runs for, and
    /// the one `from_uplink` delivers to.
    fn become_pod(&mut self, pod: Pod) {
        set_endpoint(
            &mut self.ebpf,
            POD_IFINDEX,
            pod.id,
            ipv4_to_map(pod.ip),
            pod.mac,
        );
    }

    fn nat(&self) -> Vec<(NatKey, NatEntry)> {
        let nat: HashMap<&MapData, NatKey, NatEntry> =
            self.ebpf.map(MAP_NAT).unwrap().try_into().unwrap();
        nat.iter().map(|r| r.unwrap()).collect()
    }

    fn nat_mut(&mut self) -> HashMap<&mut MapData, NatKey, NatEntry> {
        self.ebpf.map_mut(MAP_NAT).unwrap().try_into().unwrap()
    }

    fn state(&self) -> NatState {
        let st: Array<&MapData, NatState> =
            self.ebpf.map(MAP_NAT_STATE).unwrap().try_into().unwrap();
        st.get(&0, 0).unwrap()
    }

    /// The NAT port the flow of `pod` from `sport` to `dst:dport` got (host order).
    fn nat_port(&self, pod: Pod, proto: u8, sport: u16, dst: [u8; 4], dport: u16) -> u16 {
        let key = NatKey {
            saddr: ipv4_to_map(pod.ip),
            daddr: ipv4_to_map(dst),
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto,
            dir: NAT_DIR_OUT,
            _pad: [0; 2],
        };
        let (_, e) = self
            .nat()
            .into_iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no forward entry for {key:?}"));
        assert_eq!(e.addr, ipv4_to_map(NAT_IP));
        u16::from_be(e.port)
    }
}

// ---------------------------------------------------------------------------------
// The programs' size.

#[test]
fn from_uplink_stays_small_and_cheap_to_verify() {
    let f = Fixture::new();
    let info = f.prog(PROG_FROM_UPLINK).info().unwrap();
    let xlated = info.size_translated().unwrap_or(0) / 8;
    let verified = info.verified_instruction_count().unwrap_or(0);
    eprintln!("from_uplink: {xlated} instructions loaded, {verified} verified");
    assert!(xlated > 0);
    // Of which about 800 are the monitor's events and aya-log's writer, out-of-line
    // functions no packet enters while nobody listens (events.rs, diag.rs), about
    // 1,300 IPv6's reply path (host6.rs), which an IPv4 packet never enters, and
    // about 1,100 the VXLAN decapsulation and the delivery behind it (decap.rs),
    // which a node's own packet leaves after its first comparisons: what the node's
    // own IPv4 traffic runs is measured in BENCHMARKS.md, not by this size. (About
    // 140 are a local endpoint's route made from its slot, at the two deliveries
    // from other nodes: endpoints.rs; 6,711 before them.)
    assert!(xlated < 7000, "from_uplink grew to {xlated} instructions");
    assert!(
        verified < 50_000,
        "from_uplink costs the verifier {verified}"
    );
}

// ---------------------------------------------------------------------------------
// Masquerade.

#[test]
fn udp_to_the_outside_is_masqueraded_keeping_a_port_in_range() {
    let f = Fixture::new();
    let data = b"query";
    let sent = Ip::new(
        POD_A.ip,
        REMOTE,
        UDP,
        udp(POD_A.ip, REMOTE, 62000, 53, data, true),
    );
    let run = f.pod(&from_pod_frame(POD_A, &sent));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    // redirect_neigh fills in the MACs on the way out: they are left as they came.
    let expected = Ip {
        src: NAT_IP,
        ttl: 63,
        payload: udp(NAT_IP, REMOTE, 62000, 53, data, true),
        ..sent
    };
    assert_eq!(run.out, from_pod_frame(POD_A, &expected));
    assert_eq!(f.state().flows, 1);
}

#[test]
fn a_port_outside_the_range_is_mapped_into_it() {
    let f = Fixture::new();
    let sent = Ip::new(
        POD_A.ip,
        REMOTE,
        TCP,
        tcp(POD_A.ip, REMOTE, 40000, 443, SYN, b""),
    );
    let run = f.pod(&from_pod_frame(POD_A, &sent));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    let port = f.nat_port(POD_A, TCP, 40000, REMOTE, 443);
    assert!((PORT_MIN..=PORT_MAX).contains(&port), "{port}");
    let expected = Ip {
        src: NAT_IP,
        ttl: 63,
        payload: tcp(NAT_IP, REMOTE, port, 443, SYN, b""),
        ..sent
    };
    assert_eq!(run.out, from_pod_frame(POD_A, &expected));

    // Both halves are there, reverse pointing back at the pod.
    let nat = f.nat();
    assert_eq!(nat.len(), 2, "{nat:?}");
    let rev = NatKey {
        saddr: ipv4_to_map(REMOTE),
        daddr: ipv4_to_map(NAT_IP),
        sport: 443u16.to_be(),
        dport: port.to_be(),
        proto: TCP,
        dir: NAT_DIR_IN,
        _pad: [0; 2],
    };
    let (_, r) = nat.iter().find(|(k, _)| *k == rev).expect("reverse entry");
    assert_eq!((r.addr, r.port), (ipv4_to_map(POD_A.ip), 40000u16.to_be()));
    assert_eq!(r.ifindex, POD_IFINDEX);

    // The next packet of the flow takes the same mapping.
    let next = Ip {
        id: 0x4243,
        payload: tcp(POD_A.ip, REMOTE, 40000, 443, ACK, b"hello"),
        ..sent.clone()
    };
    let run = f.pod(&from_pod_frame(POD_A, &next));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    let expected = Ip {
        src: NAT_IP,
        ttl: 63,
        payload: tcp(NAT_IP, REMOTE, port, 443, ACK, b"hello"),
        ..next
    };
    assert_eq!(run.out, from_pod_frame(POD_A, &expected));
    assert_eq!(f.nat().len(), 2);
}

#[test]
fn icmp_echo_is_masqueraded_with_its_identifier_as_the_port() {
    let f = Fixture::new();
    let sent = Ip::new(POD_A.ip, REMOTE, ICMP, echo(8, 0x0101, 1));
    let run = f.pod(&from_pod_frame(POD_A, &sent));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    let id = f.nat_port(POD_A, ICMP, 0x0101, REMOTE, 0);
    assert!((PORT_MIN..=PORT_MAX).contains(&id));
    let expected = Ip {
        src: NAT_IP,
        ttl: 63,
        payload: echo(8, id, 1),
        ..sent.clone()
    };
    assert_eq!(run.out, from_pod_frame(POD_A, &expected));

    // The reply comes back to the pod with its own identifier.
    let reply = Ip::new(REMOTE, NAT_IP, ICMP, echo(0, id, 1));
    let run = f.uplink(&uplink_frame(&reply));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNat);
    let expected = Ip {
        dst: POD_A.ip,
        ttl: 63,
        payload: echo(0, 0x0101, 1),
        ..reply
    };
    assert_eq!(run.out, to_pod_frame(POD_A, &expected));
}

#[test]
fn udp_without_checksum_keeps_none_both_ways() {
    let f = Fixture::new();
    let sent = Ip::new(
        POD_A.ip,
        REMOTE,
        UDP,
        udp(POD_A.ip, REMOTE, 40001, 5000, b"no checksum", false),
    );
    let run = f.pod(&from_pod_frame(POD_A, &sent));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    let port = f.nat_port(POD_A, UDP, 40001, REMOTE, 5000);
    let expected = Ip {
        src: NAT_IP,
        ttl: 63,
        payload: udp(NAT_IP, REMOTE, port, 5000, b"no checksum", false),
        ..sent
    };
    assert_eq!(run.out, from_pod_frame(POD_A, &expected));

    let reply = Ip::new(
        REMOTE,
        NAT_IP,
        UDP,
        udp(REMOTE, NAT_IP, 5000, port, b"answer", false),
    );
    let run = f.uplink(&uplink_frame(&reply));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNat);
    let expected = Ip {
        dst: POD_A.ip,
        ttl: 63,
        payload: udp(REMOTE, POD_A.ip, 5000, 40001, b"answer", false),
        ..reply
    };
    assert_eq!(run.out, to_pod_frame(POD_A, &expected));
}

#[test]
fn udp_checksums_that_come_out_zero_are_sent_as_ffff() {
    // Search payloads until the translated datagram's checksum is 0 (sent as
    // 0xffff), so that the mangled-zero rule is exercised, on both paths.
    let f = Fixture::new();
    let mut found = false;
    // The checksum is a sum modulo 0xffff: 65535 consecutive payloads hit every value.
    for n in 0..=u16::MAX {
        let data = n.to_be_bytes();
        let out = udp(NAT_IP, REMOTE, 62001, 7, &data, false);
        if l4_checksum(NAT_IP, REMOTE, UDP, &out) != 0 {
            continue;
        }
        let sent = Ip::new(
            POD_A.ip,
            REMOTE,
            UDP,
            udp(POD_A.ip, REMOTE, 62001, 7, &data, true),
        );
        let run = f.pod(&from_pod_frame(POD_A, &sent));
        assert_eq!(run.ret, TC_ACT_REDIRECT);
        let expected = Ip {
            src: NAT_IP,
            ttl: 63,
            payload: udp(NAT_IP, REMOTE, 62001, 7, &data, true),
            ..sent
        };
        assert_eq!(&expected.payload[6..8], &[0xff, 0xff]);
        assert_eq!(run.out, from_pod_frame(POD_A, &expected));
        found = true;
        break;
    }
    assert!(found, "no payload gives a zero checksum");
}

#[test]
fn ttl_one_gets_time_exceeded_and_ttl_two_leaves_with_one() {
    let f = Fixture::new();
    let mut sent = Ip::new(
        POD_A.ip,
        REMOTE,
        UDP,
        udp(POD_A.ip, REMOTE, 62002, 33434, b"probe", true),
    );
    sent.ttl = 1;
    let frame = from_pod_frame(POD_A, &sent);
    let run = f.pod(&frame);
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::DropTtl);
    vethbpf_tests::testrun::assert_icmp_error(&frame, &run.out, 11, 0, 0);
    assert!(f.nat().is_empty(), "a dropped packet made no flow");
    sent.ttl = 2;
    let run = f.pod(&from_pod_frame(POD_A, &sent));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    assert_eq!(run.out[14 + 8], 1);
}

#[test]
fn node_addresses_cluster_and_special_destinations_are_not_egress() {
    let f = Fixture::new();
    for dst in [
        NAT_IP,
        NODE_OTHER,
        CLUSTER_OTHER,
        [127, 0, 0, 1],
        [169, 254, 9, 9],
        [224, 0, 0, 251],
        [255, 255, 255, 255],
        [0, 1, 2, 3],
    ] {
        let sent = Ip::new(POD_A.ip, dst, UDP, udp(POD_A.ip, dst, 62003, 9, b"x", true));
        let frame = from_pod_frame(POD_A, &sent);
        let run = f.pod(&frame);
        assert_run(&run, TC_ACT_OK, POD_A.id, Verdict::Pass);
        assert_eq!(run.out, frame, "{dst:?} untouched");
    }
    assert!(f.nat().is_empty());
}

#[test]
fn other_protocols_and_other_icmp_pass_to_the_node_stack() {
    let f = Fixture::new();
    for (proto, payload) in [
        (47u8, vec![0u8; 24]),                 // GRE
        (ICMP, icmp(13, 0, [0; 4], &[0; 12])), // timestamp
    ] {
        let frame = from_pod_frame(POD_A, &Ip::new(POD_A.ip, REMOTE, proto, payload));
        let run = f.pod(&frame);
        assert_run(&run, TC_ACT_OK, POD_A.id, Verdict::Pass);
        assert_eq!(run.out, frame);
    }
    assert!(f.nat().is_empty());
}

#[test]
fn egress_off_leaves_everything_to_the_node_stack() {
    let f = Fixture::with(0, 1000);
    let frame = from_pod_frame(
        POD_A,
        &Ip::new(
            POD_A.ip,
            REMOTE,
            UDP,
            udp(POD_A.ip, REMOTE, 62004, 53, b"q", true),
        ),
    );
    let run = f.pod(&frame);
    assert_run(&run, TC_ACT_OK, POD_A.id, Verdict::Pass);
    assert_eq!(run.out, frame);
    let reply = uplink_frame(&Ip::new(
        REMOTE,
        NAT_IP,
        UDP,
        udp(REMOTE, NAT_IP, 53, 62004, b"a", true),
    ));
    let run = f.uplink(&reply);
    assert_run(&run, TC_ACT_OK, 0, Verdict::UplinkPass);
    assert!(f.nat().is_empty());
}

// ---------------------------------------------------------------------------------
// Replies.

/// Opens a UDP flow of `pod` from `sport` to REMOTE:`dport`; returns its NAT port.
fn open_udp(f: &Fixture, pod: Pod, sport: u16, dport: u16) -> u16 {
    let sent = Ip::new(
        pod.ip,
        REMOTE,
        UDP,
        udp(pod.ip, REMOTE, sport, dport, b"q", true),
    );
    let run = f.pod(&from_pod_frame(pod, &sent));
    assert_run(&run, TC_ACT_REDIRECT, pod.id, Verdict::Masquerade);
    f.nat_port(pod, UDP, sport, REMOTE, dport)
}

#[test]
fn a_reply_is_translated_back_and_delivered_into_the_pod() {
    let f = Fixture::new();
    let port = open_udp(&f, POD_A, 40002, 53);
    let reply = Ip::new(
        REMOTE,
        NAT_IP,
        UDP,
        udp(REMOTE, NAT_IP, 53, port, b"the answer", true),
    );
    let run = f.uplink(&uplink_frame(&reply));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNat);
    let expected = Ip {
        dst: POD_A.ip,
        ttl: 63,
        payload: udp(REMOTE, POD_A.ip, 53, 40002, b"the answer", true),
        ..reply
    };
    assert_eq!(run.out, to_pod_frame(POD_A, &expected));
    // The flow is now replied, in both entries.
    for (_, e) in f.nat() {
        assert_eq!(e.flags & CT_REPLIED, CT_REPLIED);
    }
}

#[test]
fn tcp_replies_and_fins_are_tracked_in_both_entries() {
    let f = Fixture::new();
    let sent = Ip::new(
        POD_A.ip,
        REMOTE,
        TCP,
        tcp(POD_A.ip, REMOTE, 40003, 80, SYN, b""),
    );
    assert_eq!(f.pod(&from_pod_frame(POD_A, &sent)).ret, TC_ACT_REDIRECT);
    let port = f.nat_port(POD_A, TCP, 40003, REMOTE, 80);
    let synack = Ip::new(
        REMOTE,
        NAT_IP,
        TCP,
        tcp(REMOTE, NAT_IP, 80, port, SYN | ACK, b""),
    );
    let run = f.uplink(&uplink_frame(&synack));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNat);
    let expected = Ip {
        dst: POD_A.ip,
        ttl: 63,
        payload: tcp(REMOTE, POD_A.ip, 80, 40003, SYN | ACK, b""),
        ..synack
    };
    assert_eq!(run.out, to_pod_frame(POD_A, &expected));

    let fin = Ip::new(
        POD_A.ip,
        REMOTE,
        TCP,
        tcp(POD_A.ip, REMOTE, 40003, 80, FIN | ACK, b""),
    );
    assert_eq!(f.pod(&from_pod_frame(POD_A, &fin)).ret, TC_ACT_REDIRECT);
    let fin_back = Ip::new(
        REMOTE,
        NAT_IP,
        TCP,
        tcp(REMOTE, NAT_IP, 80, port, FIN | ACK, b""),
    );
    assert_eq!(f.uplink(&uplink_frame(&fin_back)).ret, TC_ACT_REDIRECT);
    let nat = f.nat();
    assert_eq!(nat.len(), 2);
    for (k, e) in nat {
        assert_eq!(
            e.flags,
            CT_REPLIED | CT_FIN_OUT | CT_FIN_IN,
            "{k:?}: both entries in time_wait"
        );
    }
}

#[test]
fn a_new_connection_takes_a_free_port_before_a_finished_ones() {
    // A finished connection's port may still be in the remote's TIME_WAIT: a new SYN
    // from it would stall. While ports are free, a new flow does not take it.
    let mut f = Fixture::new();
    let syn = Ip::new(
        POD_A.ip,
        REMOTE,
        TCP,
        tcp(POD_A.ip, REMOTE, 62030, 80, SYN, b""),
    );
    assert_eq!(f.pod(&from_pod_frame(POD_A, &syn)).ret, TC_ACT_REDIRECT);
    assert_eq!(f.nat_port(POD_A, TCP, 62030, REMOTE, 80), 62030);
    for (frame, prog) in [
        (
            uplink_frame(&Ip::new(
                REMOTE,
                NAT_IP,
                TCP,
                tcp(REMOTE, NAT_IP, 80, 62030, SYN | ACK, b""),
            )),
            PROG_FROM_UPLINK,
        ),
        (
            from_pod_frame(
                POD_A,
                &Ip::new(
                    POD_A.ip,
                    REMOTE,
                    TCP,
                    tcp(POD_A.ip, REMOTE, 62030, 80, FIN | ACK, b""),
                ),
            ),
            PROG_FROM_POD,
        ),
        (
            uplink_frame(&Ip::new(
                REMOTE,
                NAT_IP,
                TCP,
                tcp(REMOTE, NAT_IP, 80, 62030, FIN | ACK, b""),
            )),
            PROG_FROM_UPLINK,
        ),
    ] {
        assert_eq!(f.run(prog, &frame).ret, TC_ACT_REDIRECT);
    }
    f.become_pod(POD_B);
    let syn_b = Ip::new(
        POD_B.ip,
        REMOTE,
        TCP,
        tcp(POD_B.ip, REMOTE, 62030, 80, SYN, b""),
    );
    assert_eq!(f.pod(&from_pod_frame(POD_B, &syn_b)).ret, TC_ACT_REDIRECT);
    let port = f.nat_port(POD_B, TCP, 62030, REMOTE, 80);
    assert_ne!(port, 62030, "a free port, not the finished connection's");
    assert!((PORT_MIN..=PORT_MAX).contains(&port));
}

#[test]
fn two_pods_with_the_same_source_port_to_the_same_server_get_separate_ports() {
    let mut f = Fixture::new();
    let a = open_udp(&f, POD_A, 62010, 53);
    assert_eq!(a, 62010, "the first keeps its port");
    f.become_pod(POD_B);
    let b = open_udp(&f, POD_B, 62010, 53);
    assert_ne!(a, b);
    assert!((PORT_MIN..=PORT_MAX).contains(&b));

    // Each reply reaches its own pod.
    for (pod, port) in [(POD_A, a), (POD_B, b)] {
        f.become_pod(pod);
        let reply = Ip::new(
            REMOTE,
            NAT_IP,
            UDP,
            udp(REMOTE, NAT_IP, 53, port, b"r", true),
        );
        let run = f.uplink(&uplink_frame(&reply));
        assert_run(&run, TC_ACT_REDIRECT, pod.id, Verdict::RevNat);
        let expected = Ip {
            dst: pod.ip,
            ttl: 63,
            payload: udp(REMOTE, pod.ip, 53, 62010, b"r", true),
            ..reply
        };
        assert_eq!(run.out, to_pod_frame(pod, &expected));
    }
}

#[test]
fn unsolicited_packets_never_reach_a_pod() {
    let f = Fixture::new();
    let port = open_udp(&f, POD_A, 40004, 53);
    let cases: Vec<(Ip, Verdict, u32)> = vec![
        // A NAT port with no flow from this remote port / address / protocol.
        (
            Ip::new(
                REMOTE,
                NAT_IP,
                UDP,
                udp(REMOTE, NAT_IP, 54, port, b"x", true),
            ),
            Verdict::UplinkPass,
            TC_ACT_OK,
        ),
        (
            Ip::new(
                ROUTER,
                NAT_IP,
                UDP,
                udp(ROUTER, NAT_IP, 53, port, b"x", true),
            ),
            Verdict::UplinkPass,
            TC_ACT_OK,
        ),
        (
            Ip::new(REMOTE, NAT_IP, TCP, tcp(REMOTE, NAT_IP, 53, port, SYN, b"")),
            Verdict::UplinkPass,
            TC_ACT_OK,
        ),
        // A port outside the NAT range: the node's.
        (
            Ip::new(
                REMOTE,
                NAT_IP,
                UDP,
                udp(REMOTE, NAT_IP, 53, 40004, b"x", true),
            ),
            Verdict::UplinkPass,
            TC_ACT_OK,
        ),
        // An echo request to the node.
        (
            Ip::new(REMOTE, NAT_IP, ICMP, echo(8, port, 1)),
            Verdict::UplinkPass,
            TC_ACT_OK,
        ),
        // Straight to a pod address: dropped.
        (
            Ip::new(
                REMOTE,
                POD_A.ip,
                UDP,
                udp(REMOTE, POD_A.ip, 53, 40004, b"x", true),
            ),
            Verdict::DropUnsolicited,
            TC_ACT_SHOT,
        ),
    ];
    for (ip, verdict, ret) in cases {
        let frame = uplink_frame(&ip);
        let run = f.uplink(&frame);
        assert_run(&run, ret, 0, verdict);
        if ret == TC_ACT_OK {
            assert_eq!(run.out, frame, "passed untouched");
        }
    }
}

#[test]
fn the_node_own_traffic_passes_untouched() {
    let f = Fixture::new();
    let frames = [
        uplink_frame(&Ip::new(
            REMOTE,
            NODE_OTHER,
            UDP,
            udp(REMOTE, NODE_OTHER, 53, 62000, b"x", true),
        )),
        uplink_frame(&Ip::new(
            REMOTE,
            NAT_IP,
            TCP,
            tcp(REMOTE, NAT_IP, 443, 45000, ACK, b"data"),
        )),
        eth(LO_MAC, ROUTER_MAC, 0x0806, &[0; 28]),
        eth(LO_MAC, ROUTER_MAC, 0x86dd, &[0x60; 48]),
        // Not for this host at L2 (promiscuous capture), even if it were a reply.
        eth(
            [2, 2, 2, 2, 2, 2],
            ROUTER_MAC,
            0x0800,
            &Ip::new(
                REMOTE,
                NAT_IP,
                UDP,
                udp(REMOTE, NAT_IP, 53, 62000, b"x", true),
            )
            .bytes(),
        ),
    ];
    for frame in frames {
        let run = f.uplink(&frame);
        assert_run(&run, TC_ACT_OK, 0, Verdict::UplinkPass);
        assert_eq!(run.out, frame);
    }
}

#[test]
fn a_reply_for_a_pod_that_is_gone_is_dropped() {
    let mut f = Fixture::new();
    let port = open_udp(&f, POD_A, 40005, 53);
    // Another pod now sits behind the interface index the flow recorded.
    f.become_pod(POD_B);
    let reply = Ip::new(
        REMOTE,
        NAT_IP,
        UDP,
        udp(REMOTE, NAT_IP, 53, port, b"r", true),
    );
    let run = f.uplink(&uplink_frame(&reply));
    assert_run(&run, TC_ACT_SHOT, 0, Verdict::DropUnsolicited);
}

// ---------------------------------------------------------------------------------
// ICMP errors (RFC 5508).

/// An ICMP error from the router to `dst` about `inner` (the whole of it embedded).
fn icmp_error(ty: u8, code: u8, rest: [u8; 4], dst: [u8; 4], inner: &Ip) -> Ip {
    Ip::new(ROUTER, dst, ICMP, icmp(ty, code, rest, &inner.bytes()))
}

#[test]
fn fragmentation_needed_about_a_udp_flow_is_translated_inside_and_out() {
    let f = Fixture::new();
    let sent = Ip::new(
        POD_A.ip,
        REMOTE,
        UDP,
        udp(POD_A.ip, REMOTE, 40006, 53, b"big", true),
    );
    let run = f.pod(&from_pod_frame(POD_A, &sent));
    assert_eq!(run.ret, TC_ACT_REDIRECT);
    let port = f.nat_port(POD_A, UDP, 40006, REMOTE, 53);
    // What left the node, as the router embeds it.
    let left = Ip {
        src: NAT_IP,
        ttl: 63,
        payload: udp(NAT_IP, REMOTE, port, 53, b"big", true),
        ..sent.clone()
    };
    let mtu = [0, 0, 0x05, 0x00]; // next-hop MTU 1280
    let err = icmp_error(3, 4, mtu, NAT_IP, &left);
    let run = f.uplink(&uplink_frame(&err));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNatIcmp);
    // Inside: the packet as the pod sent it (its address and port, TTL as it left).
    let inner = Ip { ttl: 63, ..sent };
    let expected = Ip {
        dst: POD_A.ip,
        ttl: 63,
        ..icmp_error(3, 4, mtu, POD_A.ip, &inner)
    };
    assert_eq!(run.out, to_pod_frame(POD_A, &expected));
}

#[test]
fn time_exceeded_about_a_tcp_flow_is_translated_with_the_inner_tcp_checksum() {
    let f = Fixture::new();
    let mut sent = Ip::new(
        POD_A.ip,
        REMOTE,
        TCP,
        tcp(POD_A.ip, REMOTE, 40007, 22, SYN, b""),
    );
    sent.ttl = 2;
    assert_eq!(f.pod(&from_pod_frame(POD_A, &sent)).ret, TC_ACT_REDIRECT);
    let port = f.nat_port(POD_A, TCP, 40007, REMOTE, 22);
    let left = Ip {
        src: NAT_IP,
        ttl: 1,
        payload: tcp(NAT_IP, REMOTE, port, 22, SYN, b""),
        ..sent.clone()
    };
    let err = icmp_error(11, 0, [0; 4], NAT_IP, &left);
    let run = f.uplink(&uplink_frame(&err));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNatIcmp);
    let inner = Ip { ttl: 1, ..sent };
    let expected = Ip {
        dst: POD_A.ip,
        ttl: 63,
        ..icmp_error(11, 0, [0; 4], POD_A.ip, &inner)
    };
    assert_eq!(run.out, to_pod_frame(POD_A, &expected));
}

#[test]
fn an_error_with_only_eight_bytes_of_tcp_is_translated_too() {
    let f = Fixture::new();
    let sent = Ip::new(
        POD_A.ip,
        REMOTE,
        TCP,
        tcp(POD_A.ip, REMOTE, 40008, 22, SYN, b""),
    );
    assert_eq!(f.pod(&from_pod_frame(POD_A, &sent)).ret, TC_ACT_REDIRECT);
    let port = f.nat_port(POD_A, TCP, 40008, REMOTE, 22);
    let left = Ip {
        src: NAT_IP,
        ttl: 63,
        payload: tcp(NAT_IP, REMOTE, port, 22, SYN, b""),
        ..sent.clone()
    };
    // RFC 792: the IP header and 8 bytes of the datagram.
    let truncated = |ip: &Ip| {
        let mut b = ip.bytes();
        b.truncate(28);
        b
    };
    let err = Ip::new(ROUTER, NAT_IP, ICMP, icmp(3, 1, [0; 4], &truncated(&left)));
    let run = f.uplink(&uplink_frame(&err));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNatIcmp);
    let inner = Ip { ttl: 63, ..sent };
    let expected = Ip {
        dst: POD_A.ip,
        ttl: 63,
        ..Ip::new(
            ROUTER,
            POD_A.ip,
            ICMP,
            icmp(3, 1, [0; 4], &truncated(&inner)),
        )
    };
    assert_eq!(run.out, to_pod_frame(POD_A, &expected));
}

#[test]
fn time_exceeded_about_a_ping_is_translated() {
    let f = Fixture::new();
    let mut sent = Ip::new(POD_A.ip, REMOTE, ICMP, echo(8, 0x0202, 7));
    sent.ttl = 2;
    assert_eq!(f.pod(&from_pod_frame(POD_A, &sent)).ret, TC_ACT_REDIRECT);
    let id = f.nat_port(POD_A, ICMP, 0x0202, REMOTE, 0);
    let left = Ip {
        src: NAT_IP,
        ttl: 1,
        payload: echo(8, id, 7),
        ..sent.clone()
    };
    let err = icmp_error(11, 0, [0; 4], NAT_IP, &left);
    let run = f.uplink(&uplink_frame(&err));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNatIcmp);
    let inner = Ip { ttl: 1, ..sent };
    let expected = Ip {
        dst: POD_A.ip,
        ttl: 63,
        ..icmp_error(11, 0, [0; 4], POD_A.ip, &inner)
    };
    assert_eq!(run.out, to_pod_frame(POD_A, &expected));
}

#[test]
fn errors_about_no_flow_or_not_from_the_nat_pass_to_the_node() {
    let f = Fixture::new();
    let port = open_udp(&f, POD_A, 40009, 53);
    let inners = [
        // Another remote port than the flow's.
        Ip::new(
            NAT_IP,
            REMOTE,
            UDP,
            udp(NAT_IP, REMOTE, port, 54, b"x", true),
        ),
        // The node's own packet (port outside the range).
        Ip::new(
            NAT_IP,
            REMOTE,
            UDP,
            udp(NAT_IP, REMOTE, 45000, 53, b"x", true),
        ),
        // Embedded source is not the address the error came to.
        Ip::new(
            NODE_OTHER,
            REMOTE,
            UDP,
            udp(NODE_OTHER, REMOTE, port, 53, b"x", true),
        ),
    ];
    for inner in inners {
        let frame = uplink_frame(&icmp_error(3, 3, [0; 4], NAT_IP, &inner));
        let run = f.uplink(&frame);
        assert_run(&run, TC_ACT_OK, 0, Verdict::UplinkPass);
        assert_eq!(run.out, frame);
    }
}

#[test]
fn a_pods_port_unreachable_about_a_reply_is_translated_on_the_way_out() {
    let f = Fixture::new();
    let port = open_udp(&f, POD_A, 40010, 53);
    // The reply the pod received (and had no socket for any more).
    let received = Ip {
        ttl: 63,
        ..Ip::new(
            REMOTE,
            POD_A.ip,
            UDP,
            udp(REMOTE, POD_A.ip, 53, 40010, b"late", true),
        )
    };
    let err = Ip::new(
        POD_A.ip,
        REMOTE,
        ICMP,
        icmp(3, 3, [0; 4], &received.bytes()),
    );
    let run = f.pod(&from_pod_frame(POD_A, &err));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    // As the remote must see it: about the packet it sent to the NAT address and port.
    let as_sent = Ip {
        ttl: 63,
        ..Ip::new(
            REMOTE,
            NAT_IP,
            UDP,
            udp(REMOTE, NAT_IP, 53, port, b"late", true),
        )
    };
    let expected = Ip {
        src: NAT_IP,
        ttl: 63,
        ..Ip::new(POD_A.ip, REMOTE, ICMP, icmp(3, 3, [0; 4], &as_sent.bytes()))
    };
    assert_eq!(run.out, from_pod_frame(POD_A, &expected));
}

// ---------------------------------------------------------------------------------
// Fragments.

#[test]
fn fragments_follow_their_first_both_ways() {
    let f = Fixture::new();
    // A UDP datagram in two fragments: the first carries the header.
    let data: Vec<u8> = (0..64u8).collect();
    let whole = udp(POD_A.ip, REMOTE, 40011, 9000, &data, true);
    let (first_part, rest) = whole.split_at(40);
    let first = Ip {
        id: 0x7777,
        frag: 0x2000, // MF
        ..Ip::new(POD_A.ip, REMOTE, UDP, first_part.to_vec())
    };
    let second = Ip {
        id: 0x7777,
        frag: 5, // offset 40 bytes
        ..Ip::new(POD_A.ip, REMOTE, UDP, rest.to_vec())
    };
    let run = f.pod(&from_pod_frame(POD_A, &first));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    let port = f.nat_port(POD_A, UDP, 40011, REMOTE, 9000);
    let translated = udp(NAT_IP, REMOTE, port, 9000, &data, true);
    let expected = Ip {
        src: NAT_IP,
        ttl: 63,
        payload: translated[..40].to_vec(),
        ..first
    };
    assert_eq!(run.out, from_pod_frame(POD_A, &expected));
    let run = f.pod(&from_pod_frame(POD_A, &second));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    let expected = Ip {
        src: NAT_IP,
        ttl: 63,
        ..second.clone()
    };
    assert_eq!(run.out, from_pod_frame(POD_A, &expected));

    // A later fragment of a datagram whose first was never seen.
    let orphan = Ip {
        id: 0x7778,
        ..second
    };
    let run = f.pod(&from_pod_frame(POD_A, &orphan));
    assert_run(&run, TC_ACT_SHOT, POD_A.id, Verdict::DropFragUnknown);

    // The reply in fragments, back into the pod.
    let back = udp(REMOTE, NAT_IP, 9000, port, &data, true);
    let (b1, b2) = back.split_at(40);
    let r1 = Ip {
        id: 0x1111,
        frag: 0x2000,
        ..Ip::new(REMOTE, NAT_IP, UDP, b1.to_vec())
    };
    let r2 = Ip {
        id: 0x1111,
        frag: 5,
        ..Ip::new(REMOTE, NAT_IP, UDP, b2.to_vec())
    };
    let run = f.uplink(&uplink_frame(&r1));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNat);
    let untranslated = udp(REMOTE, POD_A.ip, 9000, 40011, &data, true);
    let expected = Ip {
        dst: POD_A.ip,
        ttl: 63,
        payload: untranslated[..40].to_vec(),
        ..r1
    };
    assert_eq!(run.out, to_pod_frame(POD_A, &expected));
    let run = f.uplink(&uplink_frame(&r2));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNat);
    let expected = Ip {
        dst: POD_A.ip,
        ttl: 63,
        ..r2.clone()
    };
    assert_eq!(run.out, to_pod_frame(POD_A, &expected));
    // An unknown later fragment for the node address is the node's.
    let frame = uplink_frame(&Ip { id: 0x1112, ..r2 });
    let run = f.uplink(&frame);
    assert_run(&run, TC_ACT_OK, 0, Verdict::UplinkPass);
}

// ---------------------------------------------------------------------------------
// The table: limits, expiry, collection.

#[test]
fn a_full_table_drops_new_flows_and_keeps_the_old_ones() {
    let mut f = Fixture::with(EGRESS_F_ENABLED | EGRESS_F_MASQUERADE, 4);
    let ports: Vec<u16> = (0..4).map(|i| open_udp(&f, POD_A, 41000 + i, 53)).collect();
    assert_eq!(f.state().flows, 4);
    let sent = Ip::new(
        POD_A.ip,
        REMOTE,
        UDP,
        udp(POD_A.ip, REMOTE, 41004, 53, b"q", true),
    );
    let run = f.pod(&from_pod_frame(POD_A, &sent));
    assert_run(&run, TC_ACT_SHOT, POD_A.id, Verdict::NatTableFull);
    assert_eq!(f.nat().len(), 8, "nothing written for the dropped flow");
    // The collection it ran found nothing to reclaim.
    assert_eq!(f.state().gc_runs, 1);
    // Existing flows carry on, both ways.
    let again = Ip::new(
        POD_A.ip,
        REMOTE,
        UDP,
        udp(POD_A.ip, REMOTE, 41000, 53, b"q", true),
    );
    assert_eq!(f.pod(&from_pod_frame(POD_A, &again)).ret, TC_ACT_REDIRECT);
    let reply = Ip::new(
        REMOTE,
        NAT_IP,
        UDP,
        udp(REMOTE, NAT_IP, 53, ports[3], b"r", true),
    );
    assert_eq!(f.uplink(&uplink_frame(&reply)).ret, TC_ACT_REDIRECT);

    // Flows that expired are collected by the next new flow (once a second at most:
    // the collection above is made to look older).
    {
        let mut nat = f.nat_mut();
        let keys: Vec<NatKey> = nat.keys().map(|k| k.unwrap()).collect();
        for k in keys {
            let mut e = nat.get(&k, 0).unwrap();
            if u16::from_be(if k.dir == NAT_DIR_OUT {
                k.sport
            } else {
                e.port
            }) < 41002
            {
                e.last_seen = 1; // long ago
                nat.insert(k, e, 0).unwrap();
            }
        }
    }
    let mut st: Array<&mut MapData, NatState> =
        f.ebpf.map_mut(MAP_NAT_STATE).unwrap().try_into().unwrap();
    let mut s = st.get(&0, 0).unwrap();
    s.gc_last = 1;
    st.set(0, s, 0).unwrap();
    let run = f.pod(&from_pod_frame(POD_A, &sent));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    let state = f.state();
    assert_eq!(state.gc_runs, 2);
    assert_eq!(state.gc_deleted, 4, "two expired flows, both halves");
    assert_eq!(state.flows, 3, "two live flows recounted, plus the new one");
    assert_eq!(f.nat().len(), 6);
    // An expired flow's reply no longer reaches the pod.
    let stale = Ip::new(
        REMOTE,
        NAT_IP,
        UDP,
        udp(REMOTE, NAT_IP, 53, ports[0], b"r", true),
    );
    assert_run(
        &f.uplink(&uplink_frame(&stale)),
        TC_ACT_OK,
        0,
        Verdict::UplinkPass,
    );
}

#[test]
fn an_expired_entry_is_treated_as_absent_and_taken_over() {
    let mut f = Fixture::new();
    let port = open_udp(&f, POD_A, 62020, 53);
    assert_eq!(port, 62020);
    // Expire the flow, then let pod B want the same port to the same server.
    {
        let mut nat = f.nat_mut();
        let keys: Vec<NatKey> = nat.keys().map(|k| k.unwrap()).collect();
        for k in keys {
            let mut e = nat.get(&k, 0).unwrap();
            e.last_seen = 1;
            nat.insert(k, e, 0).unwrap();
        }
    }
    let stale = uplink_frame(&Ip::new(
        REMOTE,
        NAT_IP,
        UDP,
        udp(REMOTE, NAT_IP, 53, 62020, b"r", true),
    ));
    assert_run(&f.uplink(&stale), TC_ACT_OK, 0, Verdict::UplinkPass);
    f.become_pod(POD_B);
    assert_eq!(
        open_udp(&f, POD_B, 62020, 53),
        62020,
        "the expired port is reused"
    );
    let run = f.uplink(&stale);
    assert_run(&run, TC_ACT_REDIRECT, POD_B.id, Verdict::RevNat);
    assert_eq!(&run.out[30..34], &POD_B.ip);
}

#[test]
fn a_lost_reverse_entry_is_put_back_by_the_next_refresh() {
    let mut f = Fixture::new();
    let port = open_udp(&f, POD_A, 40012, 53);
    // Lose the reverse half (as an LRU eviction would) and make the forward due for a
    // refresh.
    {
        let mut nat = f.nat_mut();
        let keys: Vec<NatKey> = nat.keys().map(|k| k.unwrap()).collect();
        for k in keys {
            if k.dir == NAT_DIR_IN {
                nat.remove(&k).unwrap();
            } else {
                let mut e = nat.get(&k, 0).unwrap();
                e.last_seen -= 2_000_000_000;
                nat.insert(k, e, 0).unwrap();
            }
        }
    }
    let sent = Ip::new(
        POD_A.ip,
        REMOTE,
        UDP,
        udp(POD_A.ip, REMOTE, 40012, 53, b"q", true),
    );
    assert_eq!(f.pod(&from_pod_frame(POD_A, &sent)).ret, TC_ACT_REDIRECT);
    assert_eq!(f.nat().len(), 2);
    let reply = Ip::new(
        REMOTE,
        NAT_IP,
        UDP,
        udp(REMOTE, NAT_IP, 53, port, b"r", true),
    );
    assert_run(
        &f.uplink(&uplink_frame(&reply)),
        TC_ACT_REDIRECT,
        POD_A.id,
        Verdict::RevNat,
    );
}

// ---------------------------------------------------------------------------------
// No masquerade: tracked, the pod's own source.

#[test]
fn without_masquerade_flows_are_tracked_and_only_replies_reach_the_pod() {
    let f = Fixture::with(EGRESS_F_ENABLED, 1000);
    let sent = Ip::new(
        POD_A.ip,
        REMOTE,
        UDP,
        udp(POD_A.ip, REMOTE, 40013, 53, b"q", true),
    );
    let frame = from_pod_frame(POD_A, &sent);
    let run = f.pod(&frame);
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Egress);
    let expected = Ip { ttl: 63, ..sent };
    assert_eq!(run.out, from_pod_frame(POD_A, &expected));

    let reply = Ip::new(
        REMOTE,
        POD_A.ip,
        UDP,
        udp(REMOTE, POD_A.ip, 53, 40013, b"r", true),
    );
    let run = f.uplink(&uplink_frame(&reply));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNat);
    assert_eq!(run.out, to_pod_frame(POD_A, &Ip { ttl: 63, ..reply }));

    let unsolicited = Ip::new(
        REMOTE,
        POD_A.ip,
        UDP,
        udp(REMOTE, POD_A.ip, 53, 40014, b"x", true),
    );
    assert_run(
        &f.uplink(&uplink_frame(&unsolicited)),
        TC_ACT_SHOT,
        0,
        Verdict::DropUnsolicited,
    );
    // Cluster sources are not the NAT's business.
    let cluster = Ip::new(
        CLUSTER_OTHER,
        POD_A.ip,
        UDP,
        udp(CLUSTER_OTHER, POD_A.ip, 53, 40013, b"x", true),
    );
    assert_run(
        &f.uplink(&uplink_frame(&cluster)),
        TC_ACT_OK,
        0,
        Verdict::UplinkPass,
    );
}

// ---------------------------------------------------------------------------------
// Hostile input.

/// One frame for the fuzz loop: random bytes, or a mutation of a valid reply or
/// error about one of the flows.
fn mangled_frame(rng: &mut Rng, valid: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            // (At least an IPv4 header's worth: the kernel refuses shorter IPv4
            // frames before the program runs.)
            let n = 20 + rng.below(100);
            let mut f = eth(LO_MAC, ROUTER_MAC, 0x0800, &rng.bytes(n));
            if rng.below(2) == 0 && f.len() > 14 {
                f[14] = 0x45;
            }
            f
        }
        1 => {
            // Flip a few bytes of a valid frame (addresses, ports, protocol, lengths).
            let mut f = valid[rng.below(valid.len())].clone();
            for _ in 0..1 + rng.below(3) {
                let i = 14 + rng.below(f.len() - 14);
                f[i] ^= 1 << rng.below(8);
            }
            f
        }
        2 => {
            // Truncate a valid frame after its IPv4 header.
            let mut f = valid[rng.below(valid.len())].clone();
            f.truncate(34 + rng.below(f.len() - 34));
            f
        }
        _ => {
            // A valid frame with a random byte anywhere past the MACs.
            let mut f = valid[rng.below(valid.len())].clone();
            let i = 12 + rng.below(f.len() - 12);
            f[i] = rng.next_u64() as u8;
            f
        }
    }
}

/// The datagram a fragment belongs to: source, destination, IP id, protocol.
type Datagram = ([u8; 4], [u8; 4], u16, u8);

/// Parses what a redirected frame claims: the NAT reverse key it must have matched
/// (for errors: of the embedded packet), the datagram it belongs to, and whether it
/// is a later fragment (no L4 header: matched through its first fragment) or a
/// first one.
fn reverse_key_of(frame: &[u8]) -> Option<(NatKey, Datagram, bool, bool)> {
    let ip = frame.get(14..34)?;
    if ip[0] != 0x45 {
        return None;
    }
    let addr = |b: &[u8]| ipv4_to_map([b[0], b[1], b[2], b[3]]);
    let octets = |b: &[u8]| [b[0], b[1], b[2], b[3]];
    let port = |b: &[u8]| u16::from_ne_bytes([b[0], b[1]]);
    let proto = ip[9];
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let datagram = (
        octets(&ip[12..]),
        octets(&ip[16..]),
        u16::from_be_bytes([ip[4], ip[5]]),
        proto,
    );
    let key = |saddr, daddr, sport, dport, proto| NatKey {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        dir: NAT_DIR_IN,
        _pad: [0; 2],
    };
    if frag & 0x1fff != 0 {
        return Some((NatKey::default(), datagram, true, false));
    }
    let first = frag & 0x2000 != 0;
    let l4 = frame.get(34..)?;
    let k = match proto {
        TCP | UDP => key(
            addr(&ip[12..]),
            addr(&ip[16..]),
            port(l4.get(0..)?),
            port(l4.get(2..)?),
            proto,
        ),
        ICMP if l4.first() == Some(&0) => key(
            addr(&ip[12..]),
            addr(&ip[16..]),
            0,
            port(l4.get(4..)?),
            ICMP,
        ),
        ICMP => {
            let inner = l4.get(8..36)?;
            let iproto = inner[9];
            let l42 = &inner[20..];
            let (s, d) = match iproto {
                TCP | UDP => (port(&l42[0..]), port(&l42[2..])),
                ICMP => (port(&l42[4..]), 0),
                _ => return None,
            };
            key(addr(&inner[16..]), addr(&inner[12..]), d, s, iproto)
        }
        _ => return None,
    };
    Some((k, datagram, false, first))
}

#[test]
fn random_and_mangled_frames_reach_no_pod_they_are_no_reply_for() {
    let mut f = Fixture::new();
    // Flows of both pods; pod A stays behind ifindex 1 for the run, so any frame
    // delivered for pod B's flows would be delivered to the wrong pod and dropped as
    // DropUnsolicited, while one for pod A's must be a true reply.
    let mut valid = Vec::new();
    let mut flows = Vec::new();
    for (i, pod) in [POD_A, POD_B, POD_A].into_iter().enumerate() {
        f.become_pod(pod);
        let sport = 42000 + i as u16;
        let udp_port = open_udp(&f, pod, sport, 53);
        let syn = Ip::new(
            pod.ip,
            REMOTE,
            TCP,
            tcp(pod.ip, REMOTE, sport, 443, SYN, b""),
        );
        assert_eq!(f.pod(&from_pod_frame(pod, &syn)).ret, TC_ACT_REDIRECT);
        let tcp_port = f.nat_port(pod, TCP, sport, REMOTE, 443);
        let ping = Ip::new(pod.ip, REMOTE, ICMP, echo(8, sport, 1));
        assert_eq!(f.pod(&from_pod_frame(pod, &ping)).ret, TC_ACT_REDIRECT);
        let id = f.nat_port(pod, ICMP, sport, REMOTE, 0);
        valid.push(uplink_frame(&Ip::new(
            REMOTE,
            NAT_IP,
            UDP,
            udp(REMOTE, NAT_IP, 53, udp_port, b"r", true),
        )));
        valid.push(uplink_frame(&Ip::new(
            REMOTE,
            NAT_IP,
            TCP,
            tcp(REMOTE, NAT_IP, 443, tcp_port, SYN | ACK, b""),
        )));
        valid.push(uplink_frame(&Ip::new(REMOTE, NAT_IP, ICMP, echo(0, id, 1))));
        let left = Ip::new(
            NAT_IP,
            REMOTE,
            UDP,
            udp(NAT_IP, REMOTE, udp_port, 53, b"q", true),
        );
        valid.push(uplink_frame(&icmp_error(3, 4, [0, 0, 5, 0], NAT_IP, &left)));
        flows.push(pod);
    }
    f.become_pod(POD_A);
    let table: Vec<(NatKey, NatEntry)> = f.nat();

    let seed = 0x5eed_0000_0000_0010u64;
    let mut rng = Rng(seed);
    let (mut redirected, mut refused) = (0, 0);
    // First fragments that were delivered: their later fragments may follow.
    let mut datagrams: BTreeMap<Datagram, NatKey> = BTreeMap::new();
    for n in 0..20_000 {
        let frame = mangled_frame(&mut rng, &valid);
        let Ok(run) = f.try_run(PROG_FROM_UPLINK, &frame) else {
            refused += 1;
            continue;
        };
        assert_eq!(
            run.delta.values().sum::<u64>(),
            1,
            "frame {n} (seed {seed:#x}): exactly one counter: {:?}",
            run.delta
        );
        match run.ret {
            TC_ACT_OK | TC_ACT_SHOT => {}
            TC_ACT_REDIRECT => {
                redirected += 1;
                let (mut key, datagram, later, first) =
                    reverse_key_of(&frame).unwrap_or_else(|| {
                        panic!("frame {n} (seed {seed:#x}) redirected but no reply: {frame:02x?}")
                    });
                if later {
                    key = *datagrams.get(&datagram).unwrap_or_else(|| {
                        panic!("frame {n} (seed {seed:#x}): a later fragment of no datagram seen: {frame:02x?}")
                    });
                } else if first {
                    datagrams.insert(datagram, key);
                }
                let (_, e) = table.iter().find(|(k, _)| *k == key).unwrap_or_else(|| {
                    panic!(
                        "frame {n} (seed {seed:#x}) redirected for no flow {key:?}: {frame:02x?}"
                    )
                });
                assert_eq!(
                    e.addr,
                    ipv4_to_map(POD_A.ip),
                    "frame {n}: delivered to pod A only for its own flows"
                );
                assert_eq!(
                    &frame[14 + 16..14 + 20],
                    &NAT_IP,
                    "frame {n}: addressed to the NAT address"
                );
                assert_eq!(&run.out[14 + 16..14 + 20], &POD_A.ip);
                assert_eq!(&run.out[..6], &POD_A.mac);
            }
            other => panic!("frame {n}: unexpected action {other}"),
        }
    }
    assert!(
        redirected > 100,
        "the mutations kept some valid replies: {redirected}"
    );
    assert!(refused < 2_000, "most frames ran: {refused} refused");
}
