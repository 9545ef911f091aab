//! What pods send besides plain IPv4 and ARP, in real namespaces: VLAN-tagged frames,
//! BIG TCP super-packets, pings to the gateway.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use vethbpf_tests::TestNode;
use vethbpf_tests::packet::{PacketSocket, Sniffer, contains, ipv4_udp, ipv4_udp_frame};

const GW_MAC: [u8; 6] = [0xee; 6];

/// An endpoint of the test's node, as `endpoint add` reported it.
struct Pod {
    ip: Ipv4Addr,
    mac: [u8; 6],
    netns: PathBuf,
}

fn add_pod(node: &TestNode, short: &str) -> Pod {
    let ep = node.add(short, &[]);
    let mac: Vec<u8> = ep["pod_mac"]
        .as_str()
        .expect("pod_mac")
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex MAC byte"))
        .collect();
    Pod {
        ip: ep["ip"].as_str().expect("ip").parse().expect("IPv4"),
        mac: mac.try_into().expect("6-byte MAC"),
        netns: PathBuf::from(ep["netns"].as_str().expect("netns")),
    }
}

/// Packets of counter `path` of pod `pod` (e.g. `["drops", "drop_vlan"]`).
fn packets(node: &TestNode, pod: &str, path: &[&str]) -> u64 {
    vethbpf_tests::packets(&node.counters(pod), path)
}

// ---------------------------------------------------------------------------------
// VLAN tags.

/// `inner` (an EtherType and what follows the Ethernet header) behind the tags
/// `(TPID, VLAN id)`, outermost first.
fn tagged(
    dst: [u8; 6],
    src: [u8; 6],
    tags: &[(u16, u16)],
    inner_type: u16,
    inner: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, &(_, vid)) in tags.iter().enumerate() {
        let next = tags.get(i + 1).map_or(inner_type, |t| t.0);
        body.extend_from_slice(&vid.to_be_bytes());
        body.extend_from_slice(&next.to_be_bytes());
    }
    body.extend_from_slice(inner);
    vethbpf_tests::eth(dst, src, tags[0].0, &body)
}

/// The kernel of these machines has no VLAN devices (CONFIG_VLAN_8021Q is off), so
/// the tags are written by hand from a packet socket in pod A, as a pod with VLAN
/// sub-interfaces (or a DPDK app, or a bridge inside it) would send them. The host
/// veth's receive path strips the outer tag into the skb before tc ingress runs:
/// `from_pod` sees `vlan_present` and the inner EtherType, the case a test_run context
/// cannot carry. Nothing of it may reach pod B, where a packet socket watches every
/// frame; the same frame untagged does arrive, which shows the watch works.
#[test]
fn vlan_tagged_frames_from_a_pod_reach_no_other_pod() {
    const ETH_P_8021Q: u16 = 0x8100;
    const ETH_P_8021AD: u16 = 0x88a8;
    let node = TestNode::up();
    let a = add_pod(&node, "a");
    let b = add_pod(&node, "b");
    // Resolve the gateway in both pods first: no ARP below but the tests' own.
    assert_eq!(node.ping_from_pod("a", &b.ip.to_string(), 1), Some(63));

    let send = PacketSocket::open(&a.netns, "eth0", false);
    let watch = Sniffer::start(&b.netns, "eth0");
    let forwarded = packets(&node, "a", &["forwarded"]);
    let cases: [(&str, &[(u16, u16)]); 4] = [
        ("802.1Q VLAN 100", &[(ETH_P_8021Q, 100)]),
        ("802.1Q priority tag (VLAN 0)", &[(ETH_P_8021Q, 0)]),
        ("802.1ad VLAN 10", &[(ETH_P_8021AD, 10)]),
        (
            "QinQ 802.1ad 10 / 802.1Q 20",
            &[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)],
        ),
    ];
    const EACH: u64 = 3;
    for (name, tags) in cases {
        let packet = ipv4_udp(a.ip, b.ip, format!("VLAN-frame {name}").as_bytes());
        for _ in 0..EACH {
            send.send(&tagged(GW_MAC, a.mac, tags, 0x0800, &packet));
        }
    }
    // ARP behind a tag is no ARP request from the pod either: no answer comes back.
    let arp_watch = Sniffer::start(&a.netns, "eth0");
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&a.mac);
    arp.extend_from_slice(&a.ip.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[169, 254, 1, 1]);
    send.send(&tagged(
        [0xff; 6],
        a.mac,
        &[(ETH_P_8021Q, 100)],
        0x0806,
        &arp,
    ));
    let untagged = b"control frame, no tag";
    send.send(&ipv4_udp_frame(GW_MAC, a.mac, a.ip, b.ip, untagged));

    let arrived = watch.finish();
    let answers = arp_watch.finish();
    let tagged_arrivals: Vec<&Vec<u8>> = arrived
        .iter()
        .filter(|f| contains(f, b"VLAN-frame "))
        .collect();
    assert!(
        tagged_arrivals.is_empty(),
        "tagged frames reached pod b: {tagged_arrivals:02x?}"
    );
    assert_eq!(
        arrived.iter().filter(|f| contains(f, untagged)).count(),
        1,
        "the untagged control frame must arrive at b (else the watch proves nothing)"
    );
    assert!(
        !answers.iter().any(|f| f.len() >= 42 && f[12..14] == [8, 6]),
        "an ARP reply answered a tagged request: {answers:02x?}"
    );
    assert_eq!(
        packets(&node, "a", &["drops", "drop_vlan"]),
        cases.len() as u64 * EACH + 1,
        "every tagged frame counted as drop_vlan"
    );
    assert_eq!(
        packets(&node, "a", &["forwarded"]),
        forwarded + 1,
        "only the untagged control was forwarded"
    );
}
