//! Pods on different nodes, with static remote nodes (`node add`): three node
//! namespaces on an underlay bridge, each running vethbpf with its own state and
//! bpffs dirs and two pods, in both overlays. Every node keeps `ip_forward=0` and
//! has no bridge and no iptables rules: the eBPF programs carry every packet.

use std::net::Ipv4Addr;

use vethbpf_tests::cluster::{CLUSTER_CIDR, Cluster, PodRef, Stranger, UNDERLAY_GW};
use vethbpf_tests::{TestNode, packets, tcp_echo_peer};

fn ip_of(ep: &serde_json::Value) -> Ipv4Addr {
    ep["ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no ip in {ep}"))
}

/// Two pods, `a` and `b`, on every node.
fn add_pods(c: &Cluster) -> Vec<PodRef> {
    let mut pods = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        for name in ["a", "b"] {
            let ip = ip_of(&node.add(name, &[]));
            pods.push(PodRef { node: i, name, ip });
        }
    }
    pods
}

/// No kernel forwarding, no bridge, no iptables rules in the node namespace.
fn assert_node_hygiene(node: &TestNode) {
    assert_eq!(
        node.node_must("cat", &["/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "0",
        "ip_forward must stay 0"
    );
    let bridges = node.node_must("ip", &["-o", "link", "show", "type", "bridge"]);
    assert!(bridges.trim().is_empty(), "a bridge in the node: {bridges}");
    let rules = node.in_node("iptables-save", &[]);
    if rules.status.success() {
        let text = String::from_utf8_lossy(&rules.stdout);
        assert!(!text.lines().any(|l| l.starts_with("-A")), "{text}");
    }
}

fn pod_mtu(c: &Cluster, p: &PodRef) -> u32 {
    // /sys shows the mounter's namespace under nsenter: ask ip instead.
    let out = c.nodes[p.node].in_pod(p.name, "ip", &["-o", "link", "show", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mtu in {text}"))
}

fn link_packets(node: &TestNode, dev: &str, dir: &str) -> u64 {
    let out = node.node_must("ip", &["-j", "-s", "link", "show", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["stats64"][dir]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {dir} packets in {v}"))
}

/// The whole matrix in one overlay.
fn pods_on_three_nodes_reach_each_other(overlay: &str) {
    let c = Cluster::new(3);
    for i in 0..3 {
        let up = c.up(i, overlay);
        assert_eq!(up["cluster"]["action"], "joined", "{up}");
    }
    c.connect_static();
    let pods = add_pods(&c);
    for node in &c.nodes {
        assert_node_hygiene(node);
    }
    let mtu = if overlay == "vxlan" { 1450 } else { 1500 };
    for p in &pods {
        assert_eq!(pod_mtu(&c, p), mtu, "pod {p:?}");
    }

    for src in &pods {
        for dst in pods.iter().filter(|d| d.node != src.node) {
            let dst_ip = dst.ip.to_string();
            // Two eBPF hops (the sender's from_pod, the receiver's from_uplink or
            // from_tunnel), one decrement each.
            assert_eq!(
                c.nodes[src.node].ping_from_pod(src.name, &dst_ip, 1),
                Some(62),
                "ping {src:?} -> {dst:?}"
            );
            let (_, peer) = tcp_echo_peer(
                &c.pod_path(dst.node, dst.name),
                dst.ip,
                &c.pod_path(src.node, src.name),
                3 << 20,
            );
            assert_eq!(
                peer.ip(),
                std::net::IpAddr::V4(src.ip),
                "the server must see the client pod's own address"
            );
        }
    }

    // A pod reaches the other nodes' own addresses (their kubelets, host-network
    // pods): as egress, from the sending node's address, since the other node has no
    // route back to this node's pods other than through its own datapath.
    for src in pods.iter().filter(|p| p.name == "a") {
        for other in (0..3).filter(|n| *n != src.node) {
            let addr = Cluster::node_ip(other);
            assert_eq!(
                c.nodes[src.node].ping_from_pod(src.name, &addr, 1),
                Some(63),
                "ping {src:?} -> node {other} ({addr})"
            );
        }
    }

    for (i, node) in c.nodes.iter().enumerate() {
        assert_node_hygiene(node);
        let list = node.json(&["node", "list"]);
        let list = list.as_array().expect("node list");
        assert_eq!(list.len(), 2, "node {i}: {list:?}");
        for n in list {
            assert_eq!(n["reachability"], "reachable", "node {i}: {n}");
            assert!(n["sent"]["packets"].as_u64() > Some(0), "{n}");
            assert!(n["received"]["packets"].as_u64() > Some(0), "{n}");
        }
        for name in ["a", "b"] {
            let ctr = node.counters(name);
            assert!(packets(&ctr, &["to_nodes"]) > 0, "{name}@{i}: {ctr}");
            assert!(packets(&ctr, &["from_nodes"]) > 0, "{name}@{i}: {ctr}");
            assert_eq!(packets(&ctr, &["dropped"]), 0, "{name}@{i}: {ctr}");
        }
        let tunnel = node.in_node("ip", &["link", "show", "vethbpf.vx"]);
        if overlay == "vxlan" {
            assert!(tunnel.status.success(), "node {i} has no VXLAN device");
            // from_pod wrapped every frame itself and sent it out of the uplink
            // (none needed the device's transmit); the device received the GSO
            // bursts of the transfers, which from_uplink leaves to it.
            assert_eq!(link_packets(node, "vethbpf.vx", "tx"), 0, "node {i}");
            assert!(link_packets(node, "vethbpf.vx", "rx") > 0, "node {i}");
            assert!(link_packets(node, "eth0", "tx") > 1000, "node {i}");
        } else {
            assert!(
                !tunnel.status.success(),
                "direct routing made a VXLAN device"
            );
        }
    }

    if overlay == "vxlan" {
        // The MTU leaves room for the outer headers: a full-size DF packet goes
        // through, one byte more is refused in the pod itself, and TCP (which sets
        // DF: path MTU discovery is on in the pods) moved megabytes above.
        let (src, dst) = (&pods[0], &pods[2]);
        let node = &c.nodes[src.node];
        let dst_ip = dst.ip.to_string();
        assert_eq!(
            node.in_pod(src.name, "cat", &["/proc/sys/net/ipv4/ip_no_pmtu_disc"])
                .stdout,
            b"0\n"
        );
        let fits = node.in_pod(
            src.name,
            "ping",
            &["-c", "1", "-W", "2", "-M", "do", "-s", "1422", &dst_ip],
        );
        assert!(fits.status.success(), "1450-byte DF ping must pass");
        let big = node.in_pod(
            src.name,
            "ping",
            &["-c", "1", "-W", "2", "-M", "do", "-s", "1423", &dst_ip],
        );
        assert!(!big.status.success());
        assert!(
            String::from_utf8_lossy(&big.stderr).contains("mtu=1450")
                || String::from_utf8_lossy(&big.stdout).contains("mtu=1450"),
            "{big:?}"
        );
    }
}

#[test]
fn pods_on_three_nodes_reach_each_other_by_direct_routing() {
    pods_on_three_nodes_reach_each_other("none");
}

#[test]
fn pods_on_three_nodes_reach_each_other_through_vxlan() {
    pods_on_three_nodes_reach_each_other("vxlan");
}

/// A pod that runs a tunnel of its own (a VXLAN device in the pod, as a pod-hosted
/// overlay or VPN would) over the cluster's VXLAN: its TCP bursts leave the pod as
/// GSO packets that are encapsulated already, which `from_pod` cannot wrap again
/// (`bpf_skb_adjust_room` refuses), so they take the VXLAN device's transmit, the
/// path `from_pod` keeps for what it cannot wrap; a transfer through the pods'
/// tunnel arrives byte for byte.
#[test]
fn a_pods_own_tunnel_is_carried_through_the_vxlan_device() {
    let c = Cluster::new(2);
    for i in 0..2 {
        let up = c.up(i, "vxlan");
        assert_eq!(up["cluster"]["action"], "joined", "{up}");
    }
    c.connect_static();
    let pods = add_pods(&c);
    let (a, b) = (&pods[0], &pods[2]);
    assert_eq!((a.node, b.node), (0, 1));
    let inner_a: Ipv4Addr = "172.31.0.1".parse().expect("address");
    let inner_b: Ipv4Addr = "172.31.0.2".parse().expect("address");
    for (pod, peer, inner) in [(a, b, inner_a), (b, a, inner_b)] {
        let node = &c.nodes[pod.node];
        let peer_ip = peer.ip.to_string();
        let cidr = format!("{inner}/24");
        let steps: [&[&str]; 3] = [
            &[
                "link", "add", "pv", "type", "vxlan", "id", "42", "remote", &peer_ip, "dstport",
                "4790", "dev", "eth0",
            ],
            &["addr", "add", &cidr, "dev", "pv"],
            &["link", "set", "pv", "up"],
        ];
        for args in steps {
            let out = node.in_pod(pod.name, "ip", args);
            assert!(
                out.status.success(),
                "ip {args:?} in pod {pod:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // A ping through the pods' tunnel (not a GSO packet: from_pod wraps it; its
    // TTL is the pods' inner header's, which no eBPF hop touches).
    assert_eq!(
        c.nodes[0].ping_from_pod(a.name, &inner_b.to_string(), 1),
        Some(64)
    );
    let before = link_packets(&c.nodes[0], "vethbpf.vx", "tx");
    let (_, peer) = tcp_echo_peer(
        &c.pod_path(1, b.name),
        inner_b,
        &c.pod_path(0, a.name),
        3 << 20,
    );
    assert_eq!(peer.ip(), std::net::IpAddr::V4(inner_a));
    let through_device = link_packets(&c.nodes[0], "vethbpf.vx", "tx") - before;
    assert!(
        through_device > 0,
        "the pod's encapsulated bursts must take the device's transmit"
    );
    let ctr = c.nodes[0].counters(a.name);
    assert_eq!(packets(&ctr, &["dropped"]), 0, "{ctr}");
}

/// TTL: one decrement per eBPF hop, and a packet that would expire at a hop dies
/// there, counted.
/// Egress and the cluster on one uplink: a pod's traffic to a pod on another node
/// keeps the pod's own address (the cluster CIDR is never masqueraded), while its
/// traffic to the outside (a server on the underlay, beyond the uplink) leaves
/// masqueraded behind the node's address. Each path's counters move, and the NAT
/// table holds the outside flow only.
#[test]
fn cluster_traffic_keeps_the_pod_address_outside_traffic_is_masqueraded() {
    for overlay in ["none", "vxlan"] {
        let c = Cluster::new(2);
        for i in 0..2 {
            let up = c.up(i, overlay);
            assert_eq!(up["cluster"]["action"], "joined", "{up}");
        }
        c.connect_static();
        let pods = add_pods(&c);
        let (src, dst) = (&pods[0], &pods[2]);
        assert_eq!((src.node, dst.node), (0, 1));
        let node = &c.nodes[0];
        let node_ip: Ipv4Addr = Cluster::node_ip(0).parse().expect("node ip");
        let outside: Ipv4Addr = UNDERLAY_GW.parse().expect("underlay address");
        let before = node.counters(src.name);

        let (_, peer) = tcp_echo_peer(
            &c.pod_path(dst.node, dst.name),
            dst.ip,
            &c.pod_path(src.node, src.name),
            1 << 20,
        );
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(src.ip),
            "{overlay}: a pod on another node must see the client pod's own address"
        );
        let (_, peer) = tcp_echo_peer(
            &c.underlay.path(),
            outside,
            &c.pod_path(src.node, src.name),
            1 << 20,
        );
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(node_ip),
            "{overlay}: the outside must see the node's address"
        );

        let after = node.counters(src.name);
        let moved = |k: &str| packets(&after, &[k]) - packets(&before, &[k]);
        assert!(moved("to_nodes") > 0, "{overlay}: {after}");
        assert!(moved("from_nodes") > 0, "{overlay}: {after}");
        assert!(moved("masqueraded") > 0, "{overlay}: {after}");
        assert!(moved("rev_nat") > 0, "{overlay}: {after}");
        assert_eq!(packets(&after, &["dropped"]), 0, "{overlay}: {after}");

        let flows = node.json(&["nat", "list"]);
        let flows = flows.as_array().expect("nat list");
        assert!(!flows.is_empty(), "{overlay}: no NAT flow");
        for f in flows {
            let remote: std::net::SocketAddrV4 = f["remote"]
                .as_str()
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("no remote in {f}"));
            assert_eq!(
                *remote.ip(),
                outside,
                "{overlay}: only the outside flow: {f}"
            );
            assert!(
                f["node"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("{node_ip}:"))),
                "{overlay}: translated to the node address: {f}"
            );
        }
        assert_node_hygiene(node);
    }
}

#[test]
fn ttl_expires_at_the_hop_it_runs_out() {
    for overlay in ["none", "vxlan"] {
        let c = Cluster::new(2);
        c.up(0, overlay);
        c.up(1, overlay);
        c.connect_static();
        let a = ip_of(&c.nodes[0].add("a", &[])).to_string();
        let b = ip_of(&c.nodes[1].add("b", &[])).to_string();
        let ping_ttl = |ttl: &str| {
            c.nodes[0]
                .in_pod("a", "ping", &["-c", "1", "-W", "1", "-t", ttl, &b])
                .status
                .success()
        };
        assert!(
            !ping_ttl("1"),
            "{overlay}: TTL 1 must die at the sender's hop"
        );
        assert!(packets(&c.nodes[0].counters("a"), &["drops", "drop_ttl"]) >= 1);
        assert!(
            !ping_ttl("2"),
            "{overlay}: TTL 2 must die at the receiver's hop"
        );
        assert!(packets(&c.nodes[1].counters("b"), &["drops", "drop_ttl"]) >= 1);
        assert!(ping_ttl("3"), "{overlay}: TTL 3 is enough for two hops");
        assert_eq!(c.nodes[1].ping_from_pod("b", &a, 1), Some(62));
    }
}

/// `node add` makes a remote subnet reachable; `node del` stops it and leaves no
/// route, map entry or device of it: the node is exactly as before the add.
#[test]
fn node_add_then_del_leaves_nothing_of_the_node() {
    for overlay in ["none", "vxlan"] {
        let c = Cluster::new(2);
        c.up(0, overlay);
        c.up(1, overlay);
        let a = ip_of(&c.nodes[0].add("a", &[])).to_string();
        let b = ip_of(&c.nodes[1].add("b", &[])).to_string();
        assert_eq!(
            c.nodes[0].ping_from_pod("a", &b, 1),
            None,
            "{overlay}: no route before node add"
        );
        let before = c.nodes[0].snapshot();
        c.connect_static();
        assert_eq!(c.nodes[0].ping_from_pod("a", &b, 1), Some(62), "{overlay}");
        let routes = c.nodes[0].map_dump("ROUTES");
        assert_eq!(routes.len(), before.routes_map.len() + 2, "{routes:?}");

        c.nodes[0].ok(&["node", "del", "node1"]);
        assert_eq!(c.nodes[0].ping_from_pod("a", &b, 1), None, "{overlay}");
        assert_eq!(
            c.nodes[0].snapshot(),
            before,
            "{overlay}: node del left something"
        );
        assert_eq!(
            node_entry(&c.nodes[0], 1),
            vec![0u8; 8],
            "{overlay}: NODES[1]"
        );
        assert!(
            c.nodes[0]
                .json(&["node", "list"])
                .as_array()
                .is_some_and(|l| l.is_empty())
        );
        // node1 still sends; node0 no longer knows it: dropped, counted at the pod.
        assert_eq!(c.nodes[1].ping_from_pod("b", &a, 2), None);
        let ctr = c.nodes[0].counters("a");
        assert!(
            packets(&ctr, &["drops", "drop_unknown_source"]) >= 2,
            "{overlay}: {ctr}"
        );
    }
}

/// The raw value of NODES[id].
fn node_entry(node: &TestNode, id: u32) -> Vec<u8> {
    let path = node.bpffs.join("maps").join("NODES");
    let key: Vec<String> = id.to_le_bytes().iter().map(|b| b.to_string()).collect();
    let mut args = vec![
        "-j",
        "map",
        "lookup",
        "pinned",
        path.to_str().unwrap_or(""),
        "key",
    ];
    args.extend(key.iter().map(String::as_str));
    let out = vethbpf_tests::must("bpftool", args);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool JSON");
    v["value"]
        .as_array()
        .unwrap_or_else(|| panic!("no value in {v}"))
        .iter()
        .map(|b| {
            let s = b.as_str().unwrap_or_default();
            u8::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0xff)
        })
        .collect()
}

fn assert_rejected(node: &TestNode, args: &[&str], expect: &str) {
    let before = node.snapshot();
    let out = node.vethbpf(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} must fail");
    assert!(
        stderr.contains(expect),
        "{args:?}: expected {expect:?} in the error, got: {stderr}"
    );
    assert_eq!(node.snapshot(), before, "{args:?} changed the node");
}

#[test]
fn bad_node_input_is_named_and_changes_nothing() {
    let c = Cluster::new(2);
    let fresh = &c.nodes[1];
    assert_rejected(
        fresh,
        &[
            "node",
            "add",
            "x",
            "--pod-cidr",
            "10.244.9.0/24",
            "--address",
            "192.168.77.9",
        ],
        "the node is not up",
    );
    fresh.ok(&["up", "--pod-cidr", "10.244.2.0/24"]);
    assert_rejected(
        fresh,
        &[
            "node",
            "add",
            "x",
            "--pod-cidr",
            "10.244.9.0/24",
            "--address",
            "192.168.77.9",
        ],
        "not part of a cluster",
    );

    c.up(0, "none");
    let node = &c.nodes[0];
    node.add("a", &[]);
    node.ok(&[
        "node",
        "add",
        "node1",
        "--pod-cidr",
        "10.244.2.0/24",
        "--address",
        "192.168.77.2",
    ]);
    let add = |name: &'static str, cidr: &'static str, addr: &'static str| {
        vec!["node", "add", name, "--pod-cidr", cidr, "--address", addr]
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            add("x", "10.244.1.0/24", "192.168.77.9"),
            "overlaps this node's own pod CIDR 10.244.1.0/24",
        ),
        (
            add("x", "10.244.1.128/25", "192.168.77.9"),
            "overlaps this node's own pod CIDR",
        ),
        (
            add("x", "10.244.2.128/25", "192.168.77.9"),
            "overlaps 10.244.2.0/24 of node node1",
        ),
        (
            add("x", "10.9.0.0/24", "192.168.77.9"),
            "is not inside the cluster CIDR 10.244.0.0/16",
        ),
        (
            add("x", "10.244.9.0/24", "10.77.0.1"),
            "is not on the uplink eth0's network (192.168.77.0/24)",
        ),
        (
            add("node1", "10.244.9.0/24", "192.168.77.9"),
            "node node1 already exists",
        ),
        (
            add("x", "10.244.9.0/24", "192.168.77.2"),
            "is the address of node node1 already",
        ),
        (
            add("x", "10.244.9.0/24", "192.168.77.1"),
            "is this node's own address",
        ),
        (
            add("x", "10.244.9.0/24", "10.244.200.1"),
            "lies inside the cluster CIDR",
        ),
        (
            add("x", "10.244.9.0/24", "0.0.0.0"),
            "not a usable unicast address",
        ),
        (
            add("a/b", "10.244.9.0/24", "192.168.77.9"),
            "node name \"a/b\" is not valid",
        ),
        (add("x", "10.244.9.0/24", "not-an-ip"), "invalid value"),
        (vec!["node", "del", "nosuch"], "no remote node named nosuch"),
        (
            vec![
                "up",
                "--pod-cidr",
                "10.244.1.0/24",
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--overlay",
                "vxlan",
            ],
            "has 1 endpoint(s) and 1 remote node(s)",
        ),
        (
            vec![
                "up",
                "--pod-cidr",
                "10.9.0.0/24",
                "--cluster-cidr",
                CLUSTER_CIDR,
            ],
            "is not inside the cluster CIDR",
        ),
        (
            vec![
                "up",
                "--pod-cidr",
                "10.244.1.0/24",
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--uplink",
                "nosuch0",
            ],
            "the uplink nosuch0 does not exist",
        ),
        (vec!["up", "--overlay", "vxlan"], "--cluster-cidr"),
    ];
    for (args, expect) in &cases {
        assert_rejected(node, args, expect);
    }
    // The same settings again change nothing and say so.
    let again = c.up(0, "none");
    assert_eq!(again["cluster"]["action"], "unchanged", "{again}");
}

/// A VXLAN packet from an outer source that is no known node reaches no pod, even
/// with an inner source inside a known node's pod CIDR; a direct-routed packet
/// from outside the cluster's pod CIDRs neither.
#[test]
fn strangers_reach_no_pod() {
    for overlay in ["vxlan", "none"] {
        let c = Cluster::new(2);
        c.up(0, overlay);
        c.up(1, overlay);
        c.connect_static();
        let a = ip_of(&c.nodes[0].add("a", &[]));
        let b = ip_of(&c.nodes[1].add("b", &[])).to_string();
        assert_eq!(c.nodes[1].ping_from_pod("b", &a.to_string(), 1), Some(62));

        // The stranger: a namespace on the underlay with an address of its own.
        let stranger = Stranger::join(&c);
        let ns = |args: &[&str]| stranger.ip(args);
        let before = packets(&c.nodes[0].counters("a"), &["drops", "drop_unknown_source"]);
        let from_nodes = packets(&c.nodes[0].counters("a"), &["from_nodes"]);
        let source = if overlay == "vxlan" {
            // Its own kernel VXLAN device, VNI and port of the cluster, speaking for
            // an address in node1's pod CIDR.
            stranger.vxlan_to_node0();
            ns(&["addr", "add", "10.244.2.200/24", "dev", "vx0"]);
            ns(&["route", "add", "10.244.1.0/24", "dev", "vx0"]);
            ns(&[
                "neigh",
                "add",
                &a.to_string(),
                "lladdr",
                "ee:ee:ee:ee:ee:ee",
                "dev",
                "vx0",
                "nud",
                "permanent",
            ]);
            "10.244.2.200"
        } else {
            // Routed at node0 like a node would, from an address outside the cluster.
            ns(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
            ns(&["route", "add", "10.244.1.0/24", "via", "192.168.77.1"]);
            "10.99.0.1"
        };
        let out = TestNode::in_ns(
            &stranger.netns,
            "ping",
            &[
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "1",
                "-I",
                source,
                &a.to_string(),
            ],
        );
        assert!(
            !out.status.success(),
            "{overlay}: the stranger reached the pod"
        );
        let ctr = c.nodes[0].counters("a");
        assert!(
            packets(&ctr, &["drops", "drop_unknown_source"]) >= before + 3,
            "{overlay}: {ctr}"
        );
        assert_eq!(
            packets(&ctr, &["from_nodes"]),
            from_nodes,
            "{overlay}: {ctr}"
        );
        // The cluster's own traffic still flows.
        assert_eq!(c.nodes[0].ping_from_pod("a", &b, 1), Some(62), "{overlay}");
    }
}

/// `down` removes the VXLAN device, the programs, the routes and the maps.
#[test]
fn down_removes_the_cluster_set_up() {
    let c = Cluster::new(2);
    let before = c.nodes[0].snapshot();
    c.up(0, "vxlan");
    c.up(1, "vxlan");
    c.connect_static();
    c.nodes[0].add("a", &[]);
    let status = c.nodes[0].json(&["status"]);
    assert_eq!(status["cluster"]["overlay"], "vxlan", "{status}");
    assert_eq!(status["cluster"]["nodes"][0]["name"], "node1", "{status}");
    let programs = status["cluster"]["programs"].as_array().expect("programs");
    assert!(
        programs
            .iter()
            .any(|p| p["name"] == "from_tunnel" && p["attached_to"] == "vethbpf.vx"),
        "{status}"
    );
    c.nodes[0].ok(&["down"]);
    assert_eq!(c.nodes[0].snapshot(), before, "down left something");
    assert!(
        !c.nodes[0]
            .in_node("ip", &["link", "show", "vethbpf.vx"])
            .status
            .success()
    );
}

/// Every step of `node add` and `node del` made to fail, and made to crash
/// (SIGKILL), through the test-only `VETHBPF_FAULT` hook: a failed add leaves the
/// node as it was, a failed del too until its routes are gone, after which the next
/// command finishes it; after a crash the next command rolls an add back (or keeps
/// it, once committed) and finishes a del.
#[test]
fn every_failing_or_crashing_node_change_is_undone_or_finished() {
    use std::os::unix::process::ExitStatusExt;
    use vethbpf::fault::{NODE_ADD_POINTS, NODE_DEL_POINTS};

    let c = Cluster::new(2);
    c.up(0, "vxlan");
    c.up(1, "vxlan");
    c.nodes[0].add("a", &[]);
    let b = ip_of(&c.nodes[1].add("b", &[])).to_string();
    let node = &c.nodes[0];
    let add = [
        "node",
        "add",
        "node1",
        "--pod-cidr",
        "10.244.2.0/24",
        "--address",
        "192.168.77.2",
    ];
    let with_fault = |spec: &str, args: &[&str]| {
        node.command(args)
            .env("VETHBPF_FAULT", spec)
            .output()
            .expect("run vethbpf")
    };
    let settle = || node.ok(&["node", "list"]);
    let without = node.snapshot();
    node.ok(&add);
    let with = node.snapshot();
    assert_eq!(
        node.ping_from_pod("a", &b, 1),
        None,
        "node1 does not know node0"
    );
    node.ok(&["node", "del", "node1"]);
    assert_eq!(node.snapshot(), without);

    for point in NODE_ADD_POINTS {
        let out = with_fault(point, &add);
        if *point == "node-add.done" {
            // Committed; only the journal's removal failed, and the next command
            // clears it.
            assert!(out.status.success(), "{point}: {out:?}");
            settle();
            assert_eq!(node.snapshot(), with, "{point}");
            node.ok(&["node", "del", "node1"]);
        } else {
            assert!(!out.status.success(), "{point} must fail");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(point),
                "{point}: {out:?}"
            );
            assert_eq!(
                node.snapshot(),
                without,
                "{point}: a failed add left something"
            );
        }
        let out = with_fault(&format!("{point}:crash"), &add);
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{point}: {out:?}");
        settle();
        if *point == "node-add.done" {
            assert_eq!(
                node.snapshot(),
                with,
                "{point}: the committed add must stay"
            );
            node.ok(&["node", "del", "node1"]);
        } else {
            assert_eq!(
                node.snapshot(),
                without,
                "{point}: the crashed add was not rolled back"
            );
        }
    }

    for point in NODE_DEL_POINTS {
        let del = ["node", "del", "node1"];
        node.ok(&add);
        let out = with_fault(point, &del);
        match *point {
            "node-del.done" => {
                assert!(out.status.success(), "{point}: {out:?}");
                settle();
                assert_eq!(node.snapshot(), without, "{point}");
            }
            "node-del.commit" => {
                assert!(!out.status.success(), "{point} must fail");
                assert!(String::from_utf8_lossy(&out.stderr).contains("the next vethbpf command"));
                settle();
                assert_eq!(
                    node.snapshot(),
                    without,
                    "{point}: the del was not finished"
                );
            }
            _ => {
                assert!(!out.status.success(), "{point} must fail");
                assert_eq!(
                    node.snapshot(),
                    with,
                    "{point}: a failed del changed the node"
                );
                node.ok(&del);
            }
        }
        node.ok(&add);
        let out = with_fault(&format!("{point}:crash"), &del);
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{point}: {out:?}");
        settle();
        if *point == "node-del.intent" {
            assert_eq!(node.snapshot(), with, "{point}: nothing was journalled yet");
            node.ok(&del);
        } else {
            assert_eq!(
                node.snapshot(),
                without,
                "{point}: the crashed del was not finished"
            );
        }
    }

    // reconcile puts back entries removed by hand and removes strays.
    node.ok(&add);
    let path = node.bpffs.join("maps").join("ROUTES");
    let key = ["24", "0", "0", "0", "10", "244", "2", "0"];
    let mut args = vec!["map", "delete", "pinned", path.to_str().unwrap_or("")];
    args.push("key");
    args.extend(key);
    vethbpf_tests::must("bpftool", &args);
    assert_eq!(node.snapshot().routes_map.len(), with.routes_map.len() - 1);
    let report = node.json(&["reconcile"]);
    assert!(
        report["nodes"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["what"] == "route map entry")),
        "{report}"
    );
    assert_eq!(
        node.snapshot(),
        with,
        "reconcile did not put the route back"
    );
    // A VXLAN device deleted by hand is made again, its program attached.
    node.node_must("ip", &["link", "del", "vethbpf.vx"]);
    let report = node.json(&["reconcile"]);
    assert!(
        report["nodes"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["what"] == "cluster set-up repaired")),
        "{report}"
    );
    c.nodes[1].ok(&[
        "node",
        "add",
        "node0",
        "--pod-cidr",
        "10.244.1.0/24",
        "--address",
        "192.168.77.1",
    ]);
    assert_eq!(node.ping_from_pod("a", &b, 1), Some(62), "after the repair");
}

/// CNI ADD on a node in a VXLAN cluster: the container gets the overlay's MTU and
/// reaches pods on other nodes; DEL removes it.
#[test]
fn cni_add_in_a_vxlan_cluster_gets_the_overlay_mtu() {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let c = Cluster::new(2);
    c.up(0, "vxlan");
    c.up(1, "vxlan");
    c.connect_static();
    let b = ip_of(&c.nodes[1].add("b", &[])).to_string();
    let node = &c.nodes[0];
    let netns = node.pod("ctr");
    vethbpf_tests::must("ip", ["netns", "add", &netns]);
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "vethbpf-test",
        "type": "vethbpf",
        "podCidr": Cluster::pod_cidr(0),
        "stateDir": node.state,
        "bpffsDir": node.bpffs,
    });
    let plugin = |command: &str| {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.netns))
            .arg("--")
            .arg(vethbpf_tests::vethbpf_bin())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "ctr1")
            .env("CNI_NETNS", format!("/run/netns/{netns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write the config");
        let out = child.wait_with_output().expect("plugin");
        assert!(out.status.success(), "CNI {command}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let result: serde_json::Value = serde_json::from_str(&plugin("ADD")).expect("ADD result");
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .expect("an address")
        .to_string();
    let link = TestNode::in_ns(&netns, "ip", &["-o", "link", "show", "eth0"]);
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("mtu 1450"),
        "{link:?}"
    );
    let ping = TestNode::in_ns(&netns, "ping", &["-c", "1", "-W", "2", &b]);
    assert!(ping.status.success(), "container -> pod on node1: {ping:?}");
    assert_eq!(c.nodes[1].ping_from_pod("b", &ip, 1), Some(62));
    plugin("DEL");
    assert!(
        node.json(&["endpoint", "list"])
            .as_array()
            .is_some_and(|l| l.is_empty())
    );
}
