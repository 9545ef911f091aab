//! Hostile pods on IPv6, in real namespaces: pod A sends, from an AF_PACKET socket
//! inside its own namespace, neighbour advertisements claiming the gateway's and
//! other pods' addresses, router advertisements, ICMPv6 redirects, and a flood of
//! neighbour solicitations for random targets. Nothing of it may reach or poison the
//! node or pods B and C (their neighbour caches and routes stay as they were, packet
//! sockets inside them see none of it), B and C keep talking, and A's counters say
//! exactly what happened.
//!
//! A control shows that the frames are real attacks: the same router advertisement
//! sent over a plain veth pair (no vethbpf) gives the receiving namespace a default
//! route through the sender.

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vethbpf_tests::ipv6::{
    NA, NA_OVERRIDE, NA_ROUTER, NS, RA, REDIRECT, icmp6_packet, ip6, link_local, na_msg, ns_msg,
    ra_msg, redirect_msg, solicited_node,
};
use vethbpf_tests::packet::{PacketSocket, Sniffer};
use vethbpf_tests::{GATEWAY6, NODE_IP6, Rng, TestNode, eth, must, packets};

const GW_MAC: [u8; 6] = [0xee; 6];
const ETH_P_IPV6: u16 = vethbpf_tests::ipv6::ETH_P_IPV6;
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// An endpoint of the test's node, as `endpoint add` reported it.
struct Pod {
    short: &'static str,
    ip6: [u8; 16],
    mac: [u8; 6],
    netns: PathBuf,
}

impl Pod {
    fn lla(&self) -> [u8; 16] {
        link_local(self.mac)
    }
    fn ip6_str(&self) -> String {
        Ipv6Addr::from(self.ip6).to_string()
    }
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex MAC byte"))
        .collect();
    v.try_into().expect("6-byte MAC")
}

fn add_pod(node: &TestNode, short: &'static str) -> Pod {
    let ep = node.add(short, &[]);
    Pod {
        short,
        ip6: ep["ip6"]
            .as_str()
            .expect("ip6")
            .parse::<Ipv6Addr>()
            .expect("IPv6")
            .octets(),
        mac: parse_mac(ep["pod_mac"].as_str().expect("pod_mac")),
        netns: PathBuf::from(ep["netns"].as_str().expect("netns")),
    }
}

/// Packets of counter `path` of `pod`.
fn count(node: &TestNode, pod: &Pod, path: &[&str]) -> u64 {
    packets(&node.counters(pod.short), path)
}

/// The IPv6 neighbour cache of a namespace as (address, device, MAC), FAILED and
/// INCOMPLETE entries aside (they hold no MAC).
fn neighbours(ns: &str) -> Vec<(String, String, String)> {
    let out = must(
        "nsenter",
        [
            &format!("--net=/run/netns/{ns}"),
            "--",
            "ip",
            "-j",
            "-6",
            "neigh",
            "show",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j neigh JSON");
    let mut n: Vec<(String, String, String)> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| {
            Some((
                e["dst"].as_str()?.to_string(),
                e["dev"].as_str()?.to_string(),
                e["lladdr"].as_str()?.to_string(),
            ))
        })
        .collect();
    n.sort();
    n
}

/// What a namespace routes by, and its IPv6 addresses.
fn routes_and_addrs(ns: &str) -> (String, String) {
    let run = |args: &[&str]| {
        let mut full = vec![format!("--net=/run/netns/{ns}"), "--".into(), "ip".into()];
        full.extend(args.iter().map(|a| a.to_string()));
        must("nsenter", full)
    };
    (
        run(&["-6", "route", "show", "table", "all"]),
        run(&["-o", "-6", "addr", "show"]),
    )
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Pods B and C talk over IPv6: ping without loss, a TCP echo with the right bytes.
fn b_and_c_talk(node: &TestNode, b: &Pod, c: &Pod) {
    assert_eq!(node.ping_from_pod(b.short, &c.ip6_str(), 3), Some(63));
    assert_eq!(node.ping_from_pod(c.short, &b.ip6_str(), 3), Some(63));
    vethbpf_tests::tcp_echo(&c.netns, Ipv6Addr::from(c.ip6), &b.netns, 1 << 20);
}

/// A node with pods a (the hostile one), b and c that have talked: every cache that
/// matters is warm (b and c know the gateway, the node knows every pod).
fn world() -> (TestNode, Pod, Pod, Pod) {
    let node = TestNode::dual();
    let (a, b, c) = (
        add_pod(&node, "a"),
        add_pod(&node, "b"),
        add_pod(&node, "c"),
    );
    b_and_c_talk(&node, &b, &c);
    for p in [&a, &b, &c] {
        assert_eq!(node.ping_from_node(&p.ip6_str()), Some(64), "{}", p.short);
        assert_eq!(
            node.ping_from_pod(p.short, NODE_IP6, 1),
            Some(64),
            "{}",
            p.short
        );
    }
    (node, a, b, c)
}

/// A frame from pod `a`: its MAC as the source, the given destination MAC.
fn from_a(a: &Pod, dst_mac: [u8; 6], packet: &[u8]) -> Vec<u8> {
    eth(dst_mac, a.mac, ETH_P_IPV6, packet)
}

/// Whether a captured frame is an ICMPv6 message of `icmp_type` sent by MAC `src`
/// (no extension headers: these tests send none).
fn is_icmp6_from(frame: &[u8], icmp_type: u8, src: [u8; 6]) -> bool {
    frame.len() > 54
        && frame[6..12] == src
        && frame[12..14] == ETH_P_IPV6.to_be_bytes()
        && frame[20] == 58
        && frame[54] == icmp_type
}

#[test]
fn na_claiming_the_gateway_or_another_pod_poisons_nobody() {
    let (node, a, b, c) = world();
    let all_nodes = ip6("ff02::1");
    let gw6 = ip6(GATEWAY6);
    let before_node = neighbours(&node.netns);
    let before_b = neighbours(&node.pod("b"));
    let before_c = neighbours(&node.pod("c"));
    let (na_spoof0, fwd0) = (
        count(&node, &a, &["drops", "drop_na_spoof"]),
        count(&node, &a, &["forwarded"]),
    );
    let sniff_b = Sniffer::start(&b.netns, "eth0");
    let sniff_c = Sniffer::start(&c.netns, "eth0");

    // Claims from A's real addresses (so no spoofed source gives them away), as
    // unsolicited overrides to all nodes and straight to B and to the gateway, with
    // the router flag where a router would set it.
    let claim = |src, dst, target, dst_mac, flags| {
        from_a(
            &a,
            dst_mac,
            &icmp6_packet(src, dst, 255, &na_msg(target, flags, a.mac)),
        )
    };
    let claims = [
        claim(
            a.lla(),
            all_nodes,
            gw6,
            ALL_NODES_MAC,
            NA_OVERRIDE | NA_ROUTER,
        ),
        claim(a.ip6, all_nodes, gw6, ALL_NODES_MAC, NA_OVERRIDE),
        claim(a.lla(), all_nodes, b.ip6, ALL_NODES_MAC, NA_OVERRIDE),
        claim(a.ip6, b.ip6, c.ip6, GW_MAC, NA_OVERRIDE),
        claim(a.lla(), gw6, b.ip6, GW_MAC, NA_OVERRIDE),
        claim(a.ip6, all_nodes, c.lla(), ALL_NODES_MAC, NA_OVERRIDE),
    ];
    const ROUNDS: u64 = 50;
    let sock = PacketSocket::open(&a.netns, "eth0", false);
    for _ in 0..ROUNDS {
        for frame in &claims {
            sock.send(frame);
        }
    }
    let seen_b = sniff_b.finish();
    let seen_c = sniff_c.finish();

    let sent = ROUNDS * claims.len() as u64;
    assert_eq!(
        count(&node, &a, &["drops", "drop_na_spoof"]) - na_spoof0,
        sent,
        "every claim counted as drop_na_spoof"
    );
    assert_eq!(count(&node, &a, &["forwarded"]), fwd0, "nothing forwarded");
    for (who, seen) in [("b", &seen_b), ("c", &seen_c)] {
        let nas = seen.iter().filter(|f| is_icmp6_from(f, NA, a.mac)).count();
        assert_eq!(nas, 0, "{who} received advertisements from a");
    }
    // Caches: the node still has b's and c's MACs, b and c the gateway's; no entry
    // anywhere points at a's MAC for an address that is not a's.
    let after_node = neighbours(&node.netns);
    for (before, after, ns) in [
        (&before_node, &after_node, "node"),
        (&before_b, &neighbours(&node.pod("b")), "b"),
        (&before_c, &neighbours(&node.pod("c")), "c"),
    ] {
        for (dst, dev, mac) in after {
            let own = dst == &Ipv6Addr::from(a.ip6).to_string()
                || dst == &Ipv6Addr::from(a.lla()).to_string();
            assert!(
                own || mac != &fmt_mac(&a.mac),
                "{ns}: {dst} dev {dev} now at a's MAC {mac}"
            );
            if let Some((_, _, was)) = before.iter().find(|(d, v, _)| d == dst && v == dev) {
                assert_eq!(mac, was, "{ns}: {dst} changed its MAC");
            }
        }
    }
    let gw_in_b = neighbours(&node.pod("b"))
        .into_iter()
        .find(|(d, _, _)| d == GATEWAY6)
        .expect("b knows the gateway");
    assert_eq!(gw_in_b.2, "ee:ee:ee:ee:ee:ee");
    b_and_c_talk(&node, &b, &c);
    // A itself is unharmed too: its own traffic flows.
    assert_eq!(node.ping_from_pod("a", &b.ip6_str(), 1), Some(63));
}

/// Sends `frame` from a fresh veth pair between two new namespaces of the test (no
/// vethbpf), the receiving side set up like a host veth (the gateway's link-local
/// address only), and returns the receiver's routes afterwards.
fn routes_after_on_a_plain_veth(node: &TestNode, frame: &[u8]) -> String {
    let (rx, tx) = (node.pod("ctl-rx"), node.pod("ctl-tx"));
    for ns in [&rx, &tx] {
        must("ip", ["netns", "add", ns.as_str()]);
    }
    must(
        "ip",
        [
            "-n", &rx, "link", "add", "ctl0", "type", "veth", "peer", "name", "ctl1", "netns", &tx,
        ],
    );
    must(
        "ip",
        ["-n", &rx, "link", "set", "ctl0", "addrgenmode", "none"],
    );
    must(
        "ip",
        [
            "-n",
            &rx,
            "addr",
            "add",
            &format!("{GATEWAY6}/64"),
            "dev",
            "ctl0",
            "nodad",
        ],
    );
    must("ip", ["-n", &rx, "link", "set", "ctl0", "up"]);
    must("ip", ["-n", &tx, "link", "set", "ctl1", "up"]);
    let sock = PacketSocket::open(&PathBuf::from(format!("/run/netns/{tx}")), "ctl1", false);
    for _ in 0..3 {
        sock.send(frame);
        std::thread::sleep(Duration::from_millis(100));
    }
    routes_and_addrs(&rx).0
}

#[test]
fn router_advertisements_and_redirects_reach_no_one() {
    let (node, a, b, c) = world();
    let gw6 = ip6(GATEWAY6);
    let bad_prefix = ip6("fd00:bad::");
    let before_node = routes_and_addrs(&node.netns);
    let before_b = routes_and_addrs(&node.pod("b"));
    let before_c = routes_and_addrs(&node.pod("c"));
    let router0 = count(&node, &a, &["drops", "drop_ndp_router"]);
    let sniff_b = Sniffer::start(&b.netns, "eth0");

    let ra = |dst: [u8; 16], dst_mac: [u8; 6]| {
        from_a(
            &a,
            dst_mac,
            &icmp6_packet(a.lla(), dst, 255, &ra_msg(a.mac, bad_prefix)),
        )
    };
    let frames = [
        // "I am a router, and here is a prefix": to all nodes, and to the gateway.
        ra(ip6("ff02::1"), ALL_NODES_MAC),
        ra(gw6, GW_MAC),
        // "To reach c, go through me": to b, and to the node.
        from_a(
            &a,
            GW_MAC,
            &icmp6_packet(a.lla(), b.ip6, 255, &redirect_msg(a.lla(), c.ip6, a.mac)),
        ),
        from_a(
            &a,
            GW_MAC,
            &icmp6_packet(
                a.lla(),
                gw6,
                255,
                &redirect_msg(a.lla(), ip6(NODE_IP6), a.mac),
            ),
        ),
    ];
    const ROUNDS: u64 = 30;
    let sock = PacketSocket::open(&a.netns, "eth0", false);
    for _ in 0..ROUNDS {
        for f in &frames {
            sock.send(f);
        }
    }
    let seen_b = sniff_b.finish();
    std::thread::sleep(Duration::from_millis(200));

    assert_eq!(
        count(&node, &a, &["drops", "drop_ndp_router"]) - router0,
        ROUNDS * frames.len() as u64
    );
    assert!(
        !seen_b
            .iter()
            .any(|f| is_icmp6_from(f, RA, a.mac) || is_icmp6_from(f, REDIRECT, a.mac)),
        "b received a router message from a"
    );
    // Nobody learned a route or an address from them.
    assert_eq!(
        routes_and_addrs(&node.netns),
        before_node,
        "the node changed"
    );
    assert_eq!(routes_and_addrs(&node.pod("b")), before_b, "b changed");
    assert_eq!(routes_and_addrs(&node.pod("c")), before_c, "c changed");
    b_and_c_talk(&node, &b, &c);

    // The control: the same advertisement over a plain veth is taken as gospel.
    let routes = routes_after_on_a_plain_veth(&node, &frames[0]);
    assert!(
        routes.contains(&format!("default via {} dev ctl0", Ipv6Addr::from(a.lla()))),
        "the control did not take the router advertisement: {routes}"
    );
}

#[test]
fn ns_flood_for_random_targets_is_answered_to_the_sender_only() {
    let (node, a, b, c) = world();
    let before_node = neighbours(&node.netns);
    let (na0, spoof0, fwd0, pass0) = (
        count(&node, &a, &["na_replies"]),
        count(&node, &a, &["drops", "drop_spoof"]),
        count(&node, &a, &["forwarded"]),
        count(&node, &a, &["passed"]),
    );
    let sniff_b = Sniffer::start(&b.netns, "eth0");

    // The flood runs on its own thread while b and c talk.
    const FRAMES: u64 = 20_000;
    let done = Arc::new(AtomicBool::new(false));
    let flood = {
        let (netns, mac, ip, lla, b_ip) = (a.netns.clone(), a.mac, a.ip6, a.lla(), b.ip6);
        let done = done.clone();
        std::thread::spawn(move || {
            let sock = PacketSocket::open(&netns, "eth0", false);
            let mut rng = Rng(0x6e5_f100d);
            let (mut valid, mut spoofed) = (0u64, 0u64);
            for i in 0..FRAMES {
                let mut target: [u8; 16] = rng.bytes(16).try_into().expect("16 bytes");
                match i % 3 {
                    // In the pod CIDR, outside anything, link-local.
                    0 => target[..8].copy_from_slice(&ip6("fd00:10:244::")[..8]),
                    1 => target[0] = 0x20,
                    _ => target[..8].copy_from_slice(&ip6("fe80::")[..8]),
                }
                // One in ten from another pod's address: a spoof, never answered.
                let src = match i % 10 {
                    0 => b_ip,
                    n if n % 2 == 0 => ip,
                    _ => lla,
                };
                if src == b_ip {
                    spoofed += 1;
                } else {
                    valid += 1;
                }
                let (group, group_mac) = solicited_node(target);
                let packet = icmp6_packet(src, group, 255, &ns_msg(target, Some(mac)));
                sock.send(&eth(group_mac, mac, ETH_P_IPV6, &packet));
            }
            done.store(true, Ordering::SeqCst);
            (valid, spoofed)
        })
    };
    while !done.load(Ordering::SeqCst) {
        b_and_c_talk(&node, &b, &c);
    }
    let (valid, spoofed) = flood.join().expect("flood thread");
    b_and_c_talk(&node, &b, &c);
    let seen_b = sniff_b.finish();

    let na = count(&node, &a, &["na_replies"]) - na0;
    // Every valid solicitation answered; at most a few more from a's own stack
    // (neighbour unreachability probes of the gateway).
    assert!(
        (valid..=valid + 3).contains(&na),
        "{na} answers for {valid} valid solicitations"
    );
    assert_eq!(count(&node, &a, &["drops", "drop_spoof"]) - spoof0, spoofed);
    assert_eq!(count(&node, &a, &["forwarded"]), fwd0);
    assert!(
        count(&node, &a, &["passed"]) - pass0 < 10,
        "solicitations went to the node stack"
    );
    // None of it reached b, and the node's neighbour cache did not grow.
    assert!(
        !seen_b
            .iter()
            .any(|f| is_icmp6_from(f, NS, a.mac) || f[0..6] == a.mac),
        "b saw the flood or its answers"
    );
    let after_node = neighbours(&node.netns);
    assert!(
        after_node.len() <= before_node.len(),
        "the node's neighbour cache grew: {before_node:?} -> {after_node:?}"
    );
}
