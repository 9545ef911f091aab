//! IPv6 pods on different nodes (the dual-stack variant of multinode.rs, on its
//! world): three node namespaces on an IPv4 underlay bridge (the underlay has no
//! IPv6 at all), each up with an IPv4 and an IPv6 pod CIDR in a dual-stack
//! cluster, in both overlays. IPv6 between nodes crosses the IPv4 underlay;
//! every node keeps `ip_forward=0` and `net.ipv6.conf.all.forwarding=0`.

use std::net::{IpAddr, Ipv6Addr};

use vethbpf_tests::cluster::{CLUSTER_CIDR, CLUSTER_CIDR6, Cluster, Stranger};
use vethbpf_tests::{TestNode, packets, tcp_echo_peer};

/// A pod: its node, short name and both addresses.
#[derive(Clone, Debug)]
struct Pod {
    node: usize,
    name: &'static str,
    ip: String,
    ip6: Ipv6Addr,
}

fn add_pod(c: &Cluster, node: usize, name: &'static str) -> Pod {
    let ep = c.nodes[node].add(name, &[]);
    let ip6: Ipv6Addr = ep["ip6"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no ip6 in {ep}"));
    assert!(
        Cluster::pod_cidr6(node)
            .parse::<ipnet::Ipv6Net>()
            .expect("cidr")
            .contains(&ip6),
        "{ep}"
    );
    Pod {
        node,
        name,
        ip: ep["ip"].as_str().expect("ip").to_string(),
        ip6,
    }
}

/// A dual-stack cluster of `n` nodes, every node knowing every other.
fn dual_cluster(n: usize, overlay: &str) -> Cluster {
    let c = Cluster::new(n);
    for i in 0..n {
        let up = c.up_dual(i, overlay);
        assert_eq!(up["cluster"]["action"], "joined", "{up}");
        assert_eq!(
            up["cluster"]["cluster"]["cluster_cidr6"], CLUSTER_CIDR6,
            "{up}"
        );
    }
    c.connect_static_dual();
    c
}

/// No kernel forwarding of either family, no bridge, no iptables rules.
fn assert_node_hygiene(node: &TestNode) {
    for (path, want) in [
        ("/proc/sys/net/ipv4/ip_forward", "0"),
        ("/proc/sys/net/ipv6/conf/all/forwarding", "0"),
    ] {
        assert_eq!(node.node_must("cat", &[path]).trim(), want, "{path}");
    }
    let bridges = node.node_must("ip", &["-o", "link", "show", "type", "bridge"]);
    assert!(bridges.trim().is_empty(), "a bridge in the node: {bridges}");
    for tool in ["iptables-save", "ip6tables-save"] {
        let rules = node.in_node(tool, &[]);
        if rules.status.success() {
            let text = String::from_utf8_lossy(&rules.stdout);
            assert!(!text.lines().any(|l| l.starts_with("-A")), "{tool}: {text}");
        }
    }
}

fn ping6_hops(c: &Cluster, src: &Pod, dst: &Pod, count: u32) -> Option<u8> {
    c.nodes[src.node].ping_from_pod(src.name, &dst.ip6.to_string(), count)
}

fn pods_on_three_nodes_reach_each_other_over_ipv6(overlay: &str) {
    let c = dual_cluster(3, overlay);
    let mut pods = Vec::new();
    for i in 0..3 {
        for name in ["a", "b"] {
            pods.push(add_pod(&c, i, name));
        }
    }
    for node in &c.nodes {
        assert_node_hygiene(node);
    }
    for src in &pods {
        for dst in pods.iter().filter(|d| d.node != src.node) {
            // Two eBPF hops (the sender's from_pod, the receiver's from_uplink or
            // from_tunnel), one hop-limit decrement each.
            assert_eq!(ping6_hops(&c, src, dst, 1), Some(62), "{src:?} -> {dst:?}");
            let (_, peer) = tcp_echo_peer(
                &c.pod_path(dst.node, dst.name),
                dst.ip6,
                &c.pod_path(src.node, src.name),
                3 << 20,
            );
            assert_eq!(
                peer.ip(),
                IpAddr::V6(src.ip6),
                "the server must see the client pod's own IPv6 address"
            );
        }
    }
    // IPv4 still goes the same way.
    assert_eq!(
        c.nodes[0].ping_from_pod("a", &pods[5].ip, 1),
        Some(62),
        "{overlay}: IPv4 in the dual-stack cluster"
    );

    for (i, node) in c.nodes.iter().enumerate() {
        assert_node_hygiene(node);
        let list = node.json(&["node", "list"]);
        let list = list.as_array().expect("node list");
        assert_eq!(list.len(), 2, "node {i}: {list:?}");
        for n in list {
            let j: usize = n["name"]
                .as_str()
                .and_then(|s| s.strip_prefix("node"))
                .and_then(|s| s.parse().ok())
                .expect("node name");
            assert_eq!(n["pod_cidr6"], Cluster::pod_cidr6(j).as_str(), "{n}");
            assert_eq!(n["reachability"], "reachable", "node {i}: {n}");
        }
        let text = node.ok(&["node", "list"]);
        assert!(text.contains(&Cluster::pod_cidr6((i + 1) % 3)), "{text}");
        for name in ["a", "b"] {
            let ctr = node.counters(name);
            assert!(packets(&ctr, &["to_nodes"]) > 0, "{name}@{i}: {ctr}");
            assert!(packets(&ctr, &["from_nodes"]) > 0, "{name}@{i}: {ctr}");
            assert_eq!(packets(&ctr, &["dropped"]), 0, "{name}@{i}: {ctr}");
        }
        if overlay == "none" {
            // Direct routing learnt every node's MAC for IPv6.
            assert_eq!(node.snapshot().node_neigh_map.len(), 2, "node {i}");
        }
    }

    if overlay == "vxlan" {
        // The overlay's 50 bytes are the same for an IPv6 inner packet: a 1450-byte
        // packet (1402 bytes of ICMPv6 payload) fits with DF, one byte more is
        // refused in the pod itself.
        let (src, dst) = (&pods[0], &pods[2]);
        let node = &c.nodes[src.node];
        let dst_ip = dst.ip6.to_string();
        let ping = |size: &str| {
            node.in_pod(
                src.name,
                "ping",
                &["-c", "1", "-W", "2", "-M", "do", "-s", size, &dst_ip],
            )
        };
        assert!(ping("1402").status.success(), "1450-byte IPv6 must pass");
        let big = ping("1403");
        assert!(!big.status.success());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&big.stdout),
            String::from_utf8_lossy(&big.stderr)
        );
        assert!(
            text.contains("mtu=1450") || text.contains("mtu: 1450"),
            "{text}"
        );
    }
}

#[test]
fn ipv6_pods_on_three_nodes_reach_each_other_by_direct_routing() {
    pods_on_three_nodes_reach_each_other_over_ipv6("none");
}

#[test]
fn ipv6_pods_on_three_nodes_reach_each_other_through_vxlan() {
    pods_on_three_nodes_reach_each_other_over_ipv6("vxlan");
}

/// The hop limit drops once per eBPF hop: 1 dies at the sender's, 2 at the
/// receiver's, 3 arrives; each death counted where it happened.
#[test]
fn hop_limit_expires_at_the_hop_it_runs_out() {
    for overlay in ["none", "vxlan"] {
        let c = dual_cluster(2, overlay);
        let a = add_pod(&c, 0, "a");
        let b = add_pod(&c, 1, "b");
        let b6 = b.ip6.to_string();
        let ping = |hops: &str| {
            c.nodes[0]
                .in_pod("a", "ping", &["-c", "1", "-W", "1", "-t", hops, &b6])
                .status
                .success()
        };
        assert!(
            !ping("1"),
            "{overlay}: hop limit 1 dies at the sender's hop"
        );
        let first_hop = c.nodes[0].in_pod("a", "ping", &["-c", "1", "-W", "1", "-t", "1", &b6]);
        let text = String::from_utf8_lossy(&first_hop.stdout);
        assert!(
            text.contains("From fe80::ecee:eeff:feee:eeee") && text.contains("Time exceeded"),
            "{overlay}: the sender's gateway says so: {text}"
        );
        assert!(packets(&c.nodes[0].counters("a"), &["drops", "drop_ttl"]) >= 1);
        assert!(
            !ping("2"),
            "{overlay}: hop limit 2 dies at the receiver's hop"
        );
        assert!(packets(&c.nodes[1].counters("b"), &["drops", "drop_ttl"]) >= 1);
        assert!(ping("3"), "{overlay}: hop limit 3 is enough for two hops");
        assert_eq!(ping6_hops(&c, &b, &a, 1), Some(62), "{overlay}");
    }
}

/// `node del` removes the node's IPv6 route (and its MACs): the node is exactly as
/// before the add, and its IPv6 pods are unreachable again.
#[test]
fn node_del_removes_the_ipv6_route() {
    for overlay in ["none", "vxlan"] {
        let c = Cluster::new(2);
        c.up_dual(0, overlay);
        c.up_dual(1, overlay);
        let a = add_pod(&c, 0, "a");
        let b = add_pod(&c, 1, "b");
        assert_eq!(
            ping6_hops(&c, &a, &b, 1),
            None,
            "{overlay}: before node add"
        );
        let before = c.nodes[0].snapshot();
        c.connect_static_dual();
        assert_eq!(ping6_hops(&c, &a, &b, 1), Some(62), "{overlay}");
        let with = c.nodes[0].snapshot();
        assert_eq!(
            with.routes6_map.len(),
            before.routes6_map.len() + 1,
            "{overlay}: {:?}",
            with.routes6_map
        );
        assert_eq!(
            with.node_neigh_map.len(),
            usize::from(overlay == "none"),
            "{overlay}: {:?}",
            with.node_neigh_map
        );

        c.nodes[0].ok(&["node", "del", "node1"]);
        assert_eq!(ping6_hops(&c, &a, &b, 1), None, "{overlay}: after node del");
        assert_eq!(
            c.nodes[0].snapshot(),
            before,
            "{overlay}: node del left something"
        );
        // node1 still sends; node0 no longer knows it: dropped, counted at the pod.
        let dropped = packets(&c.nodes[0].counters("a"), &["drops", "drop_unknown_source"]);
        assert_eq!(ping6_hops(&c, &b, &a, 2), None);
        assert!(
            packets(&c.nodes[0].counters("a"), &["drops", "drop_unknown_source"]) >= dropped + 2,
            "{overlay}"
        );
    }
}

/// A VXLAN packet carrying IPv6 from an outer source that is no known node reaches
/// no pod, even with an inner source inside a known node's IPv6 pod CIDR; an IPv6
/// packet routed directly to a node from outside the cluster's pod CIDRs neither.
#[test]
fn ipv6_from_strangers_reaches_no_pod() {
    for overlay in ["vxlan", "none"] {
        let c = dual_cluster(2, overlay);
        let a = add_pod(&c, 0, "a");
        let b = add_pod(&c, 1, "b");
        assert_eq!(ping6_hops(&c, &b, &a, 1), Some(62), "{overlay}");

        let stranger = Stranger::join(&c);
        let ns = |args: &[&str]| stranger.ip(args);
        let a6 = a.ip6.to_string();
        let before = packets(&c.nodes[0].counters("a"), &["drops", "drop_unknown_source"]);
        let from_nodes = packets(&c.nodes[0].counters("a"), &["from_nodes"]);
        let source = if overlay == "vxlan" {
            // Its own kernel VXLAN device, VNI and port of the cluster, speaking for
            // an address in node1's IPv6 pod CIDR.
            stranger.vxlan_to_node0();
            ns(&["addr", "add", "fd00:10:244:2::c8/64", "dev", "vx0", "nodad"]);
            ns(&["-6", "route", "add", &Cluster::pod_cidr6(0), "dev", "vx0"]);
            ns(&[
                "-6",
                "neigh",
                "add",
                &a6,
                "lladdr",
                "ee:ee:ee:ee:ee:ee",
                "dev",
                "vx0",
                "nud",
                "permanent",
            ]);
            "fd00:10:244:2::c8"
        } else {
            // Straight to node0's uplink MAC, from an address outside the cluster.
            // /sys shows the mounter's namespace under nsenter: ask ip.
            let mac = c.nodes[0]
                .node_must("ip", &["-br", "link", "show", "eth0"])
                .split_whitespace()
                .nth(2)
                .expect("eth0's MAC")
                .to_string();
            ns(&["addr", "add", "fd99::1/128", "dev", "lo"]);
            ns(&["-6", "route", "add", &Cluster::pod_cidr6(0), "dev", "eth0"]);
            ns(&[
                "-6",
                "neigh",
                "add",
                &a6,
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
            "fd99::1"
        };
        let out = TestNode::in_ns(
            &stranger.netns,
            "ping",
            &["-c", "3", "-i", "0.2", "-W", "1", "-I", source, &a6],
        );
        assert!(
            !out.status.success(),
            "{overlay}: the stranger reached the pod: {out:?}"
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
        assert_eq!(ping6_hops(&c, &a, &b, 1), Some(62), "{overlay}");
    }
}

fn assert_rejected(node: &TestNode, args: &[&str], expect: &str) {
    let before = node.snapshot();
    let out = node.vethbpf(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} must fail");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: usage error: {stderr}"
    );
    assert!(
        stderr.contains(expect),
        "{args:?}: expected {expect:?} in the error, got: {stderr}"
    );
    assert_eq!(node.snapshot(), before, "{args:?} changed the node");
}

fn assert_conflict(node: &TestNode, args: &[&str], expect: &str) {
    let before = node.snapshot();
    let out = node.vethbpf(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{args:?}: conflict: {stderr}");
    assert!(stderr.contains(expect), "{args:?}: {expect:?} in {stderr}");
    assert_eq!(node.snapshot(), before, "{args:?} changed the node");
}

/// Bad dual-stack input names the problem and changes nothing.
#[test]
fn bad_dual_stack_input_is_named_and_changes_nothing() {
    let c = Cluster::new(2);
    let fresh = &c.nodes[1];
    let up = |extra: &[&'static str]| {
        let mut a = vec![
            "up",
            "--pod-cidr",
            "10.244.2.0/24",
            "--cluster-cidr",
            CLUSTER_CIDR,
        ];
        a.extend_from_slice(extra);
        a
    };
    assert_rejected(
        fresh,
        &up(&["--cluster-cidr", CLUSTER_CIDR6]),
        "needs an IPv6 pod CIDR",
    );
    assert_rejected(
        fresh,
        &up(&[
            "--pod-cidr",
            "fd00:99::/64",
            "--cluster-cidr",
            CLUSTER_CIDR6,
        ]),
        "is not inside the cluster CIDR fd00:10:244::/48",
    );
    assert_rejected(
        fresh,
        &up(&[
            "--pod-cidr",
            "fd00:10:244:2::/64",
            "--cluster-cidr",
            CLUSTER_CIDR6,
            "--cluster-cidr",
            "fd00:10:245::/48",
        ]),
        "two IPv6 cluster CIDRs",
    );
    assert_rejected(
        fresh,
        &[
            "up",
            "--pod-cidr",
            "fd00:10:244:2::/64",
            "--cluster-cidr",
            CLUSTER_CIDR6,
        ],
        "comes with an IPv4 one",
    );

    c.up_dual(0, "none");
    let node = &c.nodes[0];
    node.add("a", &[]);
    node.ok(&[
        "node",
        "add",
        "node1",
        "--pod-cidr",
        "10.244.2.0/24",
        "--pod-cidr",
        "fd00:10:244:2::/64",
        "--address",
        "192.168.77.2",
    ]);
    let add = |cidr6: &'static str| {
        vec![
            "node",
            "add",
            "x",
            "--pod-cidr",
            "10.244.9.0/24",
            "--pod-cidr",
            cidr6,
            "--address",
            "192.168.77.9",
        ]
    };
    assert_rejected(node, &add("fd00:99::/64"), "not inside the cluster CIDR");
    assert_conflict(
        node,
        &add("fd00:10:244:1:8000::/65"),
        "overlaps this node's own pod CIDR fd00:10:244:1::/64",
    );
    assert_conflict(
        node,
        &add("fd00:10:244:2::/64"),
        "overlaps fd00:10:244:2::/64 of node node1",
    );
    let mut two = add("fd00:10:244:9::/64");
    two.extend_from_slice(&["--pod-cidr", "fd00:10:244:a::/64"]);
    assert_rejected(node, &two, "two IPv6 pod CIDRs");
    assert_rejected(
        node,
        &[
            "node",
            "add",
            "x",
            "--pod-cidr",
            "fd00:10:244:9::/64",
            "--address",
            "192.168.77.9",
        ],
        "needs an IPv4 pod CIDR",
    );

    // An IPv4-only cluster takes no IPv6 pod CIDR for a node.
    fresh.ok(&[
        "up",
        "--pod-cidr",
        "10.244.2.0/24",
        "--cluster-cidr",
        CLUSTER_CIDR,
    ]);
    assert_rejected(
        fresh,
        &[
            "node",
            "add",
            "x",
            "--pod-cidr",
            "10.244.9.0/24",
            "--pod-cidr",
            "fd00:10:244:9::/64",
            "--address",
            "192.168.77.9",
        ],
        "needs a dual-stack cluster",
    );
}

/// `reconcile` puts a lost IPv6 route and lost MACs back.
#[test]
fn reconcile_puts_back_the_ipv6_route_and_the_macs() {
    let c = dual_cluster(2, "none");
    let a = add_pod(&c, 0, "a");
    let b = add_pod(&c, 1, "b");
    assert_eq!(ping6_hops(&c, &a, &b, 1), Some(62));
    let with = c.nodes[0].snapshot();
    // On a healthy node there is nothing to fix: the remote IPv6 routes are the
    // cluster's, not orphaned endpoint routes.
    let healthy = c.nodes[0].json(&["reconcile"]);
    assert_eq!(healthy["nodes"], serde_json::json!([]), "{healthy}");
    assert_eq!(
        healthy["removed_route_entries"],
        serde_json::json!([]),
        "{healthy}"
    );
    assert_eq!(c.nodes[0].snapshot(), with);
    let bpffs = c.nodes[0].bpffs.join("maps");
    let key = [
        "key", "hex", "40", "00", "00", "00", "fd", "00", "00", "10", "02", "44", "00", "02", "00",
        "00", "00", "00", "00", "00", "00", "00",
    ];
    let mut del = vec!["map", "delete", "pinned"];
    let routes6 = bpffs.join("ROUTES6");
    del.push(routes6.to_str().expect("path"));
    del.extend_from_slice(&key);
    vethbpf_tests::must("bpftool", &del);
    let neigh = bpffs.join("NODE_NEIGH");
    vethbpf_tests::must(
        "bpftool",
        [
            "map",
            "update",
            "pinned",
            neigh.to_str().expect("path"),
            "key",
            "1",
            "0",
            "0",
            "0",
            "value",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
        ],
    );
    assert_eq!(
        ping6_hops(&c, &a, &b, 1),
        None,
        "the route and MACs are gone"
    );
    let fixed = c.nodes[0].json(&["reconcile"]);
    let fixes = fixed["nodes"].to_string();
    assert!(fixes.contains("IPv6 route map entry"), "{fixed}");
    assert!(fixes.contains("neighbour MACs"), "{fixed}");
    assert_eq!(c.nodes[0].snapshot(), with);
    assert_eq!(ping6_hops(&c, &a, &b, 1), Some(62));
}

/// Every step of a dual-stack `node add` and `node del` with direct routing (an
/// IPv6 route and the node's MACs besides the IPv4 entries) made to fail and to
/// crash: a failed add leaves the node as it was, a crashed one is rolled back (or
/// kept, once committed); a del is undone until its routes are gone and finished
/// after.
#[test]
fn every_failing_or_crashing_dual_stack_node_change_is_undone_or_finished() {
    use std::os::unix::process::ExitStatusExt;
    use vethbpf::fault::{NODE_ADD_POINTS, NODE_DEL_POINTS};

    let c = Cluster::new(2);
    c.up_dual(0, "none");
    c.up_dual(1, "none");
    add_pod(&c, 0, "a");
    let node = &c.nodes[0];
    let (cidr, cidr6) = (Cluster::pod_cidr(1), Cluster::pod_cidr6(1));
    let address = Cluster::node_ip(1);
    let add = [
        "node",
        "add",
        "node1",
        "--pod-cidr",
        cidr.as_str(),
        "--pod-cidr",
        cidr6.as_str(),
        "--address",
        address.as_str(),
    ];
    let del = ["node", "del", "node1"];
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
    assert_eq!(with.routes6_map.len(), without.routes6_map.len() + 1);
    assert_eq!(with.node_neigh_map.len(), 1);
    node.ok(&del);
    assert_eq!(node.snapshot(), without);

    for point in NODE_ADD_POINTS {
        let committed = *point == "node-add.done";
        let out = with_fault(point, &add);
        assert_eq!(out.status.success(), committed, "{point}: {out:?}");
        settle();
        let want = if committed { &with } else { &without };
        assert_eq!(&node.snapshot(), want, "{point}: failed");
        if committed {
            node.ok(&del);
        }
        let out = with_fault(&format!("{point}:crash"), &add);
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{point}: {out:?}");
        settle();
        assert_eq!(&node.snapshot(), want, "{point}: crashed");
        if committed {
            node.ok(&del);
        }
    }
    for point in NODE_DEL_POINTS {
        node.ok(&add);
        let out = with_fault(point, &del);
        // Before the routes go, a failed del leaves the node with the remote node.
        let undone = matches!(
            *point,
            "node-del.intent"
                | "node-del.cidr-route"
                | "node-del.address-route"
                | "node-del.node-map"
        );
        assert_eq!(
            out.status.success(),
            *point == "node-del.done",
            "{point}: {out:?}"
        );
        settle();
        if undone {
            assert_eq!(
                node.snapshot(),
                with,
                "{point}: a failed del changed the node"
            );
            node.ok(&del);
        } else {
            assert_eq!(
                node.snapshot(),
                without,
                "{point}: the del was not finished"
            );
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
}
