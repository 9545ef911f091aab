//! IPv6 egress under BPF_PROG_TEST_RUN (issue 12): `from_pod` masquerades IPv6 pod
//! traffic, `from_uplink` translates replies and ICMPv6 errors back; exact frames in
//! and out, every checksum of an expected frame computed here from scratch (the
//! IPv6 pseudo header included), and thousands of random and mangled frames through
//! `from_uplink` that must never reach a pod they are no reply for. Needs root.
//!
//! As in testrun_nat.rs, test_run runs the skb on `lo`: the sending pod is the
//! endpoint under ifindex 1, and uplink frames carry lo's MAC (all zeros) so that
//! the kernel classifies them PACKET_HOST.

use aya::maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key};
use vethbpf_common::{
    EGRESS_F_ENABLED, EGRESS_F_MASQUERADE, EgressConfig6, EndpointInfo6, MAP_EGRESS_SKIP6,
    MAP_EGRESS6, MAP_ENDPOINTS6, MAP_NAT6, NAT_DIR_IN, NAT_DIR_OUT, NatEntry6, NatKey6,
    PROG_FROM_UPLINK, SKIP_CLUSTER, SKIP_NODE_ADDRESS, Verdict, ipv6_to_map,
};
use vethbpf_tests::egress_run::{
    GW_MAC, LO_MAC, Programs, ROUTER_MAC, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, assert_run,
};
use vethbpf_tests::ipv6::{ip6, ipv6_packet};
use vethbpf_tests::{Rng, eth, ones_sum, testrun::set_endpoint};

const ETH_P_IPV6: u16 = 0x86dd;

#[derive(Clone, Copy)]
struct Pod {
    id: u32,
    ip: &'static str,
    mac: [u8; 6],
}
const POD_A: Pod = Pod {
    id: 5,
    ip: "fd00:10:244::2",
    mac: [0x02, 0, 0, 0, 0, 0x02],
};
const POD_B: Pod = Pod {
    id: 6,
    ip: "fd00:10:244::3",
    mac: [0x02, 0, 0, 0, 0, 0x03],
};
const POD_IFINDEX: u32 = 1;

const NAT: &str = "2001:db8:30::2";
const REMOTE: &str = "2001:db8:100::10";
const ROUTER: &str = "2001:db8:30::1";
const PORT_MIN: u16 = 61000;
const PORT_MAX: u16 = 65535;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP6: u8 = 58;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

// ---------------------------------------------------------------------------------
// Frames, every checksum from scratch.

/// The upper-layer checksum over the IPv6 pseudo header and `l4` (its checksum
/// field at `check` taken as zero).
fn sum6(src: &str, dst: &str, proto: u8, l4: &[u8], check: usize) -> u16 {
    let mut p = Vec::new();
    p.extend_from_slice(&ip6(src));
    p.extend_from_slice(&ip6(dst));
    p.extend_from_slice(&(l4.len() as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    let mut l = l4.to_vec();
    l[check] = 0;
    l[check + 1] = 0;
    p.extend_from_slice(&l);
    !ones_sum(&p)
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let mut c = sum6(src, dst, UDP, &u, 6);
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&0x1000_0001u32.to_be_bytes());
    t.extend_from_slice(&0x2000_0002u32.to_be_bytes());
    t.push(0x50);
    t.push(flags);
    t.extend_from_slice(&64800u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(data);
    let c = sum6(src, dst, TCP, &t, 16);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// An ICMPv6 message: type, code, the 4 bytes after the checksum, the body.
fn icmp6(src: &str, dst: &str, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = sum6(src, dst, ICMP6, &m, 2);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn echo(src: &str, dst: &str, ty: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut rest = [0; 4];
    rest[..2].copy_from_slice(&id.to_be_bytes());
    rest[2..].copy_from_slice(&seq.to_be_bytes());
    icmp6(src, dst, ty, 0, rest, b"ping6 payload 0123456789")
}

fn pkt(src: &str, dst: &str, proto: u8, hop: u8, l4: &[u8]) -> Vec<u8> {
    ipv6_packet(ip6(src), ip6(dst), proto, hop, l4)
}

fn from_pod(pod: Pod, ip: &[u8]) -> Vec<u8> {
    eth(GW_MAC, pod.mac, ETH_P_IPV6, ip)
}

fn uplink(ip: &[u8]) -> Vec<u8> {
    eth(LO_MAC, ROUTER_MAC, ETH_P_IPV6, ip)
}

fn to_pod(pod: Pod, ip: &[u8]) -> Vec<u8> {
    eth(pod.mac, GW_MAC, ETH_P_IPV6, ip)
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
    /// Both programs loaded; pod A (IPv6 only) behind ifindex 1; IPv6 egress on
    /// with masquerade to NAT; the NAT address and the pod CIDR are no egress.
    fn new() -> Self {
        let mut f = Self {
            p: Programs::load(&[POD_A.id, POD_B.id]),
        };
        f.become_pod(POD_A);
        let map = |s: &str| ipv6_to_map(ip6(s));
        let mut egress: Array<&mut MapData, EgressConfig6> =
            f.ebpf.map_mut(MAP_EGRESS6).unwrap().try_into().unwrap();
        egress
            .set(
                0,
                EgressConfig6 {
                    flags: EGRESS_F_ENABLED | EGRESS_F_MASQUERADE,
                    uplink_ifindex: 1,
                    max_flows: 1000,
                    port_min: PORT_MIN,
                    port_max: PORT_MAX,
                    hash_seed: 0x1234_5678,
                    _pad: 0,
                    nat_addr: map(NAT),
                    pod_net: map("fd00:10:244::"),
                    pod_mask: map("ffff:ffff:ffff:ffff::"),
                    cluster_net: map("fd00:10:244::"),
                    cluster_mask: map("ffff:ffff:ffff:ffff::"),
                },
                0,
            )
            .unwrap();
        let mut skip: LpmTrie<&mut MapData, [u8; 16], u32> = f
            .ebpf
            .map_mut(MAP_EGRESS_SKIP6)
            .unwrap()
            .try_into()
            .unwrap();
        for (prefix, len, why) in [
            (NAT, 128, SKIP_NODE_ADDRESS),
            ("fd00:10:244::", 64, SKIP_CLUSTER),
        ] {
            skip.insert(&Key::new(len, ip6(prefix)), why, 0).unwrap();
        }
        f
    }

    /// Makes `pod` the endpoint behind ifindex 1.
    fn become_pod(&mut self, pod: Pod) {
        set_endpoint(&mut self.ebpf, POD_IFINDEX, pod.id, 0, pod.mac);
        let mut eps6: HashMap<&mut MapData, u32, EndpointInfo6> = self
            .ebpf
            .map_mut(MAP_ENDPOINTS6)
            .unwrap()
            .try_into()
            .unwrap();
        let mut link_local = ip6("fe80::");
        link_local[15] = pod.mac[5];
        let info6 = EndpointInfo6 {
            ip: ip6(pod.ip),
            link_local,
        };
        eps6.insert(POD_IFINDEX, info6, 0).unwrap();
    }

    fn nat(&self) -> Vec<(NatKey6, NatEntry6)> {
        let nat: HashMap<&MapData, NatKey6, NatEntry6> =
            self.ebpf.map(MAP_NAT6).unwrap().try_into().unwrap();
        nat.iter().map(|r| r.unwrap()).collect()
    }

    /// The NAT port (host order) of the flow of `pod` from `sport` to REMOTE.
    fn nat_port(&self, pod: Pod, proto: u8, sport: u16, dport: u16) -> u16 {
        let key = NatKey6 {
            saddr: ipv6_to_map(ip6(pod.ip)),
            daddr: ipv6_to_map(ip6(REMOTE)),
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
        assert_eq!(e.addr, ipv6_to_map(ip6(NAT)));
        u16::from_be(e.port)
    }
}

// ---------------------------------------------------------------------------------

#[test]
fn udp_is_masqueraded_and_its_reply_translated_back_exactly() {
    let f = Fixture::new();
    let sent = pkt(
        POD_A.ip,
        REMOTE,
        UDP,
        64,
        &udp(POD_A.ip, REMOTE, 62000, 53, b"query"),
    );
    let run = f.pod(&from_pod(POD_A, &sent));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    // The source and the hop limit change; the port is in range and kept.
    let out = pkt(NAT, REMOTE, UDP, 63, &udp(NAT, REMOTE, 62000, 53, b"query"));
    assert_eq!(run.out, from_pod(POD_A, &out));
    assert_eq!(f.nat().len(), 2, "the forward and the reverse entry");

    let reply = pkt(
        REMOTE,
        NAT,
        UDP,
        60,
        &udp(REMOTE, NAT, 53, 62000, b"answer"),
    );
    let run = f.uplink(&uplink(&reply));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNat);
    let back = pkt(
        REMOTE,
        POD_A.ip,
        UDP,
        59,
        &udp(REMOTE, POD_A.ip, 53, 62000, b"answer"),
    );
    assert_eq!(run.out, to_pod(POD_A, &back));
}

#[test]
fn an_extension_header_before_the_upper_layer_is_walked_over() {
    let f = Fixture::new();
    // A Destination Options header (PadN only) before UDP: the ports and the
    // checksum are found behind it, and it travels on unchanged.
    let with_opts = |src: &str, dst: &str, hop: u8, sport: u16| {
        let mut p = vec![UDP, 0, 1, 4, 0, 0, 0, 0];
        p.extend_from_slice(&udp(src, dst, sport, 53, b"opts"));
        pkt(src, dst, 60, hop, &p)
    };
    let run = f.pod(&from_pod(POD_A, &with_opts(POD_A.ip, REMOTE, 64, 40004)));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    let port = f.nat_port(POD_A, UDP, 40004, 53);
    assert_eq!(
        run.out,
        from_pod(POD_A, &with_opts(NAT, REMOTE, 63, port)),
        "source, port and checksum behind the extension header"
    );
}

#[test]
fn tcp_from_a_port_outside_the_range_gets_one_inside_and_back() {
    let f = Fixture::new();
    let syn = pkt(
        POD_A.ip,
        REMOTE,
        TCP,
        64,
        &tcp(POD_A.ip, REMOTE, 40000, 443, SYN, b""),
    );
    let run = f.pod(&from_pod(POD_A, &syn));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    let port = f.nat_port(POD_A, TCP, 40000, 443);
    assert!((PORT_MIN..=PORT_MAX).contains(&port), "{port}");
    let out = pkt(NAT, REMOTE, TCP, 63, &tcp(NAT, REMOTE, port, 443, SYN, b""));
    assert_eq!(run.out, from_pod(POD_A, &out));

    let synack = pkt(
        REMOTE,
        NAT,
        TCP,
        64,
        &tcp(REMOTE, NAT, 443, port, SYN | ACK, b"hello"),
    );
    let run = f.uplink(&uplink(&synack));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNat);
    let back = pkt(
        REMOTE,
        POD_A.ip,
        TCP,
        63,
        &tcp(REMOTE, POD_A.ip, 443, 40000, SYN | ACK, b"hello"),
    );
    assert_eq!(run.out, to_pod(POD_A, &back));
}

#[test]
fn icmpv6_echo_is_masqueraded_with_its_identifier_as_the_port() {
    let f = Fixture::new();
    let req = pkt(
        POD_A.ip,
        REMOTE,
        ICMP6,
        64,
        &echo(POD_A.ip, REMOTE, 128, 0x1234, 7),
    );
    let run = f.pod(&from_pod(POD_A, &req));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    let id = f.nat_port(POD_A, ICMP6, 0x1234, 0);
    assert!((PORT_MIN..=PORT_MAX).contains(&id), "{id}");
    let out = pkt(NAT, REMOTE, ICMP6, 63, &echo(NAT, REMOTE, 128, id, 7));
    assert_eq!(run.out, from_pod(POD_A, &out));

    let reply = pkt(REMOTE, NAT, ICMP6, 64, &echo(REMOTE, NAT, 129, id, 7));
    let run = f.uplink(&uplink(&reply));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNat);
    let back = pkt(
        REMOTE,
        POD_A.ip,
        ICMP6,
        63,
        &echo(REMOTE, POD_A.ip, 129, 0x1234, 7),
    );
    assert_eq!(run.out, to_pod(POD_A, &back));
}

#[test]
fn packet_too_big_about_a_masqueraded_segment_is_translated_for_the_pod() {
    let f = Fixture::new();
    // A flow whose port is remapped: inner port, inner checksum and outer checksum
    // all change.
    let data = vec![0x5a; 200];
    let seg = pkt(
        POD_A.ip,
        REMOTE,
        TCP,
        64,
        &tcp(POD_A.ip, REMOTE, 40001, 443, SYN, b""),
    );
    assert_eq!(f.pod(&from_pod(POD_A, &seg)).ret, TC_ACT_REDIRECT);
    let port = f.nat_port(POD_A, TCP, 40001, 443);
    // The segment that was too big, as it left the node, embedded in the error.
    let left = pkt(
        NAT,
        REMOTE,
        TCP,
        62,
        &tcp(NAT, REMOTE, port, 443, ACK, &data),
    );
    let mtu = 1280u32.to_be_bytes();
    let ptb = pkt(
        ROUTER,
        NAT,
        ICMP6,
        64,
        &icmp6(ROUTER, NAT, 2, 0, mtu, &left),
    );
    let run = f.uplink(&uplink(&ptb));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNatIcmp);
    let inner = pkt(
        POD_A.ip,
        REMOTE,
        TCP,
        62,
        &tcp(POD_A.ip, REMOTE, 40001, 443, ACK, &data),
    );
    let back = pkt(
        ROUTER,
        POD_A.ip,
        ICMP6,
        63,
        &icmp6(ROUTER, POD_A.ip, 2, 0, mtu, &inner),
    );
    assert_eq!(run.out, to_pod(POD_A, &back));

    // A UDP datagram's and a ping's "time exceeded" too.
    let udp_port = {
        let s = pkt(
            POD_A.ip,
            REMOTE,
            UDP,
            64,
            &udp(POD_A.ip, REMOTE, 40002, 53, b"q"),
        );
        assert_eq!(f.pod(&from_pod(POD_A, &s)).ret, TC_ACT_REDIRECT);
        f.nat_port(POD_A, UDP, 40002, 53)
    };
    let left = pkt(NAT, REMOTE, UDP, 1, &udp(NAT, REMOTE, udp_port, 53, b"q"));
    let te = pkt(
        ROUTER,
        NAT,
        ICMP6,
        64,
        &icmp6(ROUTER, NAT, 3, 0, [0; 4], &left),
    );
    let run = f.uplink(&uplink(&te));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::RevNatIcmp);
    let inner = pkt(
        POD_A.ip,
        REMOTE,
        UDP,
        1,
        &udp(POD_A.ip, REMOTE, 40002, 53, b"q"),
    );
    let back = pkt(
        ROUTER,
        POD_A.ip,
        ICMP6,
        63,
        &icmp6(ROUTER, POD_A.ip, 3, 0, [0; 4], &inner),
    );
    assert_eq!(run.out, to_pod(POD_A, &back));
}

#[test]
fn a_pods_port_unreachable_about_a_reply_is_translated_on_the_way_out() {
    let f = Fixture::new();
    let s = pkt(
        POD_A.ip,
        REMOTE,
        UDP,
        64,
        &udp(POD_A.ip, REMOTE, 40003, 53, b"q"),
    );
    assert_eq!(f.pod(&from_pod(POD_A, &s)).ret, TC_ACT_REDIRECT);
    let port = f.nat_port(POD_A, UDP, 40003, 53);
    // The reply as the pod got it, embedded in its error.
    let got = pkt(
        REMOTE,
        POD_A.ip,
        UDP,
        63,
        &udp(REMOTE, POD_A.ip, 53, 40003, b"r"),
    );
    let err = pkt(
        POD_A.ip,
        REMOTE,
        ICMP6,
        64,
        &icmp6(POD_A.ip, REMOTE, 1, 4, [0; 4], &got),
    );
    let run = f.pod(&from_pod(POD_A, &err));
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::Masquerade);
    let sent = pkt(REMOTE, NAT, UDP, 63, &udp(REMOTE, NAT, 53, port, b"r"));
    let out = pkt(
        NAT,
        REMOTE,
        ICMP6,
        63,
        &icmp6(NAT, REMOTE, 1, 4, [0; 4], &sent),
    );
    assert_eq!(run.out, from_pod(POD_A, &out));
}

#[test]
fn what_is_no_reply_is_not_delivered() {
    let f = Fixture::new();
    // The NAT address on a NAT port nobody holds: the node's (passed, id 0).
    let stray = pkt(REMOTE, NAT, UDP, 64, &udp(REMOTE, NAT, 53, 62999, b"x"));
    let run = f.uplink(&uplink(&stray));
    assert_run(&run, TC_ACT_OK, 0, Verdict::UplinkPass);
    // Straight to a pod's address from outside: dropped.
    let to_pod_addr = pkt(
        REMOTE,
        POD_A.ip,
        UDP,
        64,
        &udp(REMOTE, POD_A.ip, 53, 62999, b"x"),
    );
    let run = f.uplink(&uplink(&to_pod_addr));
    assert_run(&run, TC_ACT_SHOT, 0, Verdict::DropUnsolicited);
    // The node's own traffic (another address, or the NAT address below the range).
    let own = pkt(REMOTE, NAT, UDP, 64, &udp(REMOTE, NAT, 53, 40000, b"x"));
    assert_run(&f.uplink(&uplink(&own)), TC_ACT_OK, 0, Verdict::UplinkPass);
    // From a pod: fragments to the outside are not translated (dropped, counted).
    let mut frag = vec![UDP, 0, 0, 1, 0, 0, 0, 9];
    frag.extend_from_slice(&udp(POD_A.ip, REMOTE, 62000, 53, b"x"));
    let fragmented = pkt(POD_A.ip, REMOTE, 44, 64, &frag);
    let run = f.pod(&from_pod(POD_A, &fragmented));
    assert_run(&run, TC_ACT_SHOT, POD_A.id, Verdict::DropFragUnknown);
    // Hop limit 1 ends at the node.
    let dying = pkt(
        POD_A.ip,
        REMOTE,
        UDP,
        1,
        &udp(POD_A.ip, REMOTE, 62000, 53, b"x"),
    );
    let frame = from_pod(POD_A, &dying);
    let run = f.pod(&frame);
    assert_run(&run, TC_ACT_REDIRECT, POD_A.id, Verdict::DropTtl);
    // ... and the gateway says so.
    vethbpf_tests::ipv6::assert_icmp6_error(&frame, &run.out, GW_MAC, (3, 0, 0));
    assert!(f.nat().is_empty(), "nothing was tracked");
}

// ---------------------------------------------------------------------------------
// Random and mangled frames.

/// The reverse NAT key a frame from the uplink would be delivered by (the embedded
/// packet's for an ICMPv6 error), read the way a receiver would.
fn reverse_key_of(frame: &[u8]) -> Option<NatKey6> {
    let ip = frame.get(14..)?;
    let addr = |b: &[u8]| -> Option<[u32; 4]> { Some(ipv6_to_map(b.get(..16)?.try_into().ok()?)) };
    let (mut next, mut off) = (*ip.get(6)?, 40);
    // The extension headers the datapath walks (never a Fragment header here).
    for _ in 0..4 {
        if !matches!(next, 0 | 43 | 60) {
            break;
        }
        next = *ip.get(off)?;
        off += (usize::from(*ip.get(off + 1)?) + 1) * 8;
    }
    let l4 = ip.get(off..)?;
    let port =
        |o: usize| -> Option<u16> { Some(u16::from_be_bytes([*l4.get(o)?, *l4.get(o + 1)?])) };
    let (saddr, daddr) = (addr(ip.get(8..)?)?, addr(ip.get(24..)?)?);
    match next {
        TCP | UDP => Some(NatKey6 {
            saddr,
            daddr,
            sport: port(0)?.to_be(),
            dport: port(2)?.to_be(),
            proto: next,
            dir: NAT_DIR_IN,
            _pad: [0; 2],
        }),
        ICMP6 if *l4.first()? == 129 => Some(NatKey6 {
            saddr,
            daddr,
            sport: 0,
            dport: port(4)?.to_be(),
            proto: ICMP6,
            dir: NAT_DIR_IN,
            _pad: [0; 2],
        }),
        ICMP6 if (1..=4).contains(l4.first()?) => {
            let inner = l4.get(8..)?;
            let (iproto, il4) = (*inner.get(6)?, inner.get(40..)?);
            let iport = |o: usize| -> Option<u16> {
                Some(u16::from_be_bytes([*il4.get(o)?, *il4.get(o + 1)?]))
            };
            let (isrc, idst) = (addr(inner.get(8..)?)?, addr(inner.get(24..)?)?);
            let (sport, dport) = match iproto {
                TCP | UDP => (iport(2)?, iport(0)?),
                ICMP6 if *il4.first()? == 128 => (0, iport(4)?),
                _ => return None,
            };
            Some(NatKey6 {
                saddr: idst,
                daddr: isrc,
                sport: sport.to_be(),
                dport: dport.to_be(),
                proto: iproto,
                dir: NAT_DIR_IN,
                _pad: [0; 2],
            })
        }
        _ => None,
    }
}

fn mangled(rng: &mut Rng, valid: &[Vec<u8>]) -> Vec<u8> {
    let mut f = valid[rng.below(valid.len())].clone();
    match rng.below(6) {
        // A few bytes anywhere.
        0 | 1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(f.len());
                f[i] = rng.next_u64() as u8;
            }
        }
        // The addresses, ports or next header.
        2 => {
            let i = 14 + 6 + rng.below(40 + 8);
            if i < f.len() {
                f[i] ^= 1 << rng.below(8);
            }
        }
        // Cut short, or padded.
        3 => {
            let n = 14 + rng.below(f.len() - 14);
            f.truncate(n);
        }
        4 => {
            let n = rng.below(64);
            f.extend(rng.bytes(n));
        }
        // Garbage behind an IPv6 EtherType, sometimes to the NAT address.
        _ => {
            let n = 40 + rng.below(80);
            let mut ip = rng.bytes(n);
            ip[0] = 0x60;
            if rng.below(2) == 0 {
                ip[24..40].copy_from_slice(&ip6(NAT));
            }
            f = uplink(&ip);
        }
    }
    f
}

#[test]
fn random_and_mangled_ipv6_frames_reach_no_pod_they_are_no_reply_for() {
    let mut f = Fixture::new();
    // Flows of both pods; pod A stays behind ifindex 1 for the run, so a frame
    // delivered for pod B's flows would reach the wrong pod: it must be dropped.
    let mut valid = Vec::new();
    for (i, pod) in [POD_A, POD_B, POD_A].into_iter().enumerate() {
        f.become_pod(pod);
        let sport = 42000 + i as u16;
        let s = pkt(
            pod.ip,
            REMOTE,
            UDP,
            64,
            &udp(pod.ip, REMOTE, sport, 53, b"q"),
        );
        assert_eq!(f.pod(&from_pod(pod, &s)).ret, TC_ACT_REDIRECT);
        let s = pkt(
            pod.ip,
            REMOTE,
            TCP,
            64,
            &tcp(pod.ip, REMOTE, sport, 443, SYN, b""),
        );
        assert_eq!(f.pod(&from_pod(pod, &s)).ret, TC_ACT_REDIRECT);
        let s = pkt(
            pod.ip,
            REMOTE,
            ICMP6,
            64,
            &echo(pod.ip, REMOTE, 128, sport, 1),
        );
        assert_eq!(f.pod(&from_pod(pod, &s)).ret, TC_ACT_REDIRECT);
        let (u, t, e) = (
            f.nat_port(pod, UDP, sport, 53),
            f.nat_port(pod, TCP, sport, 443),
            f.nat_port(pod, ICMP6, sport, 0),
        );
        valid.push(uplink(&pkt(
            REMOTE,
            NAT,
            UDP,
            64,
            &udp(REMOTE, NAT, 53, u, b"r"),
        )));
        valid.push(uplink(&pkt(
            REMOTE,
            NAT,
            TCP,
            64,
            &tcp(REMOTE, NAT, 443, t, SYN | ACK, b""),
        )));
        valid.push(uplink(&pkt(
            REMOTE,
            NAT,
            ICMP6,
            64,
            &echo(REMOTE, NAT, 129, e, 1),
        )));
        let left = pkt(NAT, REMOTE, UDP, 63, &udp(NAT, REMOTE, u, 53, b"q"));
        valid.push(uplink(&pkt(
            ROUTER,
            NAT,
            ICMP6,
            64,
            &icmp6(ROUTER, NAT, 1, 4, [0; 4], &left),
        )));
    }
    f.become_pod(POD_A);
    let table = f.nat();
    let pod_a = ipv6_to_map(ip6(POD_A.ip));

    let seed = 0x5eed_0000_0000_0610u64;
    let mut rng = Rng(seed);
    let (mut redirected, mut refused, mut unsolicited) = (0, 0, 0);
    for n in 0..5_000 {
        let frame = mangled(&mut rng, &valid);
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
            TC_ACT_OK | TC_ACT_SHOT => {
                unsolicited += usize::from(run.delta.contains_key(&(0, "drop_unsolicited")));
            }
            TC_ACT_REDIRECT => {
                redirected += 1;
                let key = reverse_key_of(&frame).unwrap_or_else(|| {
                    panic!("frame {n} (seed {seed:#x}) redirected but no reply: {frame:02x?}")
                });
                let (_, e) = table.iter().find(|(k, _)| *k == key).unwrap_or_else(|| {
                    panic!(
                        "frame {n} (seed {seed:#x}) redirected for no flow {key:?}: {frame:02x?}"
                    )
                });
                assert_eq!(
                    e.addr, pod_a,
                    "frame {n} (seed {seed:#x}) delivered to a pod it is no reply for"
                );
                assert!(
                    run.delta.contains_key(&(POD_A.id, "rev_nat"))
                        || run.delta.contains_key(&(POD_A.id, "rev_nat_icmp")),
                    "{:?}",
                    run.delta
                );
                // It went to pod A, addressed to it.
                assert_eq!(&run.out[..6], &POD_A.mac, "frame {n}");
            }
            other => panic!("frame {n} (seed {seed:#x}): tc action {other}"),
        }
    }
    eprintln!("{redirected} redirected, {unsolicited} unsolicited, {refused} refused");
    assert!(redirected > 0, "some mangled frames are still replies");
    assert!(unsolicited > 0, "pod B's replies were refused");
}
