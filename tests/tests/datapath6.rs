//! The IPv6 twin of datapath.rs, in real namespaces: pods reach each other over IPv6
//! (IPv6 only and dual stack) through from_pod and bpf_redirect_peer with both
//! `net.ipv4.ip_forward=0` and `net.ipv6.conf.all.forwarding=0`, neighbour
//! discovery answered in eBPF, no bridge, no proxy NDP, no global address on any
//! host-side veth.

use std::net::IpAddr;
use std::path::PathBuf;

use vethbpf_tests::{GATEWAY6, NODE_IP6, TestNode, map_entries, netns_list, packets};

fn ip6_of(ep: &serde_json::Value) -> String {
    ep["ip6"]
        .as_str()
        .expect("ip6 in endpoint JSON")
        .to_string()
}

fn ip_of(ep: &serde_json::Value) -> String {
    ep["ip"].as_str().expect("ip in endpoint JSON").to_string()
}

/// [`vethbpf_tests::tcp_echo`] between two of the node's pods.
fn tcp_echo(node: &TestNode, server: &str, server_ip: &str, client: &str, len: usize) {
    let ns = |p: &str| PathBuf::from(format!("/run/netns/{}", node.pod(p)));
    let ip: IpAddr = server_ip.parse().expect("server ip");
    vethbpf_tests::tcp_echo(&ns(server), ip, &ns(client), len);
}

/// What the node must be while pods talk: forwarding off for both families, no
/// bridge, no proxy NDP or ARP, and on each host veth no address but the gateway's
/// link-local one.
fn assert_node_forwards_nothing_itself(node: &TestNode) {
    for (sysctl, want) in [
        ("/proc/sys/net/ipv4/ip_forward", "0"),
        ("/proc/sys/net/ipv6/conf/all/forwarding", "0"),
        ("/proc/sys/net/ipv6/conf/default/forwarding", "0"),
    ] {
        assert_eq!(node.node_must("cat", &[sysctl]).trim(), want, "{sysctl}");
    }
    assert!(
        node.node_must("ip", &["-o", "link", "show", "type", "bridge"])
            .trim()
            .is_empty()
    );
    let proxy = node.node_must(
        "sh",
        &[
            "-c",
            "cat /proc/sys/net/ipv4/conf/*/proxy_arp /proc/sys/net/ipv6/conf/*/proxy_ndp | sort -u",
        ],
    );
    assert_eq!(proxy.trim(), "0", "proxy_arp and proxy_ndp must be off");
    assert!(
        node.node_must("ip", &["-6", "neigh", "show", "proxy"])
            .trim()
            .is_empty()
    );
    let list = node.json(&["endpoint", "list"]);
    for ep in list.as_array().expect("list") {
        let host = ep["host_veth"].as_str().expect("host_veth");
        let v4 = node.node_must("ip", &["-o", "-4", "addr", "show", "dev", host]);
        assert!(v4.trim().is_empty(), "{host} has IPv4 addresses: {v4}");
        let v6 = node.node_must("ip", &["-o", "-6", "addr", "show", "dev", host]);
        let addrs: Vec<&str> = v6
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .collect();
        assert_eq!(addrs, [format!("{GATEWAY6}/64")], "{host}: {v6}");
    }
}

#[test]
fn three_pods_talk_over_ipv6_only_with_forwarding_off() {
    let node = TestNode::v6_only();
    let pods = ["a", "b", "c"];
    let eps: Vec<serde_json::Value> = pods.iter().map(|p| node.add(p, &[])).collect();
    let ips: Vec<String> = eps.iter().map(ip6_of).collect();
    assert_eq!(ips, ["fd00:10:244::1", "fd00:10:244::2", "fd00:10:244::3"]);
    for ep in &eps {
        assert!(ep.get("ip").is_none(), "IPv6 only: {ep}");
    }
    assert_node_forwards_nothing_itself(&node);
    // No IPv4 inside the pods either.
    for p in pods {
        let out = node.in_pod(p, "ip", &["-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    }

    // Every pair: ping (hop limit decremented once by the eBPF hop) and TCP.
    for (i, src) in pods.iter().enumerate() {
        for (j, dst) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let hops = node.ping_from_pod(src, &ips[j], 2);
            assert_eq!(hops, Some(63), "ping {src} -> {dst} ({})", ips[j]);
            tcp_echo(&node, dst, &ips[j], src, 256 * 1024);
        }
    }
    for p in pods {
        let c = node.counters(p);
        assert!(packets(&c, &["forwarded"]) >= 4, "{p}: {c}");
        assert!(packets(&c, &["na_replies"]) >= 1, "{p}: {c}");
        assert_eq!(packets(&c, &["arp_replies"]), 0, "{p}: {c}");
        assert_eq!(packets(&c, &["dropped"]), 0, "{p}: {c}");
    }
    // The pods resolved the gateway through the eBPF answer, flagged as a router.
    let neigh = node.in_pod("a", "ip", &["-6", "neigh", "show", GATEWAY6]);
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(
        neigh.contains("lladdr ee:ee:ee:ee:ee:ee") && neigh.contains("router"),
        "{neigh}"
    );
}

#[test]
fn three_pods_talk_over_both_families_on_dual_stack() {
    let node = TestNode::dual();
    let pods = ["a", "b", "c"];
    let eps: Vec<serde_json::Value> = pods.iter().map(|p| node.add(p, &[])).collect();
    assert_node_forwards_nothing_itself(&node);
    for (i, src) in pods.iter().enumerate() {
        for (j, dst) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            for ip in [ip_of(&eps[j]), ip6_of(&eps[j])] {
                assert_eq!(node.ping_from_pod(src, &ip, 1), Some(63), "{src} -> {ip}");
                tcp_echo(&node, dst, &ip, src, 128 * 1024);
            }
        }
    }
    for p in pods {
        let c = node.counters(p);
        assert!(packets(&c, &["forwarded"]) >= 8, "{p}: {c}");
        assert!(packets(&c, &["arp_replies"]) >= 1, "{p}: {c}");
        assert!(packets(&c, &["na_replies"]) >= 1, "{p}: {c}");
        assert_eq!(packets(&c, &["dropped"]), 0, "{p}: {c}");
    }
}

#[test]
fn node_and_pods_reach_each_other_over_ipv6() {
    let node = TestNode::dual();
    let a = ip6_of(&node.add("a", &[]));
    // The node reaches the pod through its /128 kernel route and ordinary NDP from
    // the host veth's link-local address (no eBPF hop: hop limit 64).
    assert_eq!(node.ping_from_node(&a), Some(64));
    // The pod reaches the node's address through the gateway (passed to the stack).
    assert_eq!(node.ping_from_pod("a", NODE_IP6, 1), Some(64));
    // And TCP both ways.
    let node_ns = PathBuf::from(format!("/run/netns/{}", node.netns));
    let pod_ns = PathBuf::from(format!("/run/netns/{}", node.pod("a")));
    let a_ip: IpAddr = a.parse().expect("pod address");
    let node_ip: IpAddr = NODE_IP6.parse().expect("node address");
    vethbpf_tests::tcp_echo(&pod_ns, a_ip, &node_ns, 64 * 1024);
    vethbpf_tests::tcp_echo(&node_ns, node_ip, &pod_ns, 64 * 1024);
    // (No neighbour solicitation needs answering here: the node's own solicitation
    // for the pod, from the gateway address, already taught the pod its MAC.)
    let c = node.counters("a");
    assert!(packets(&c, &["passed"]) >= 1, "{c}");
    assert_eq!(packets(&c, &["dropped"]), 0, "{c}");
}

#[test]
fn spoofed_ipv6_source_is_dropped_and_counted_while_real_traffic_flows() {
    let node = TestNode::dual();
    node.add("a", &[]);
    let b = ip6_of(&node.add("b", &[]));
    // Give pod a a second address it does not own and send from it. The gateway's
    // neighbour entry is made permanent first: otherwise the neighbour solicitation
    // would carry the spoofed source and be dropped before any ping is sent (that
    // path is the NS test's).
    for args in [
        &[
            "-6",
            "addr",
            "add",
            "fd00:10:244::200/128",
            "dev",
            "eth0",
            "nodad",
        ][..],
        &[
            "-6",
            "neigh",
            "replace",
            GATEWAY6,
            "lladdr",
            "ee:ee:ee:ee:ee:ee",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ][..],
    ] {
        let out = node.in_pod("a", "ip", args);
        assert!(out.status.success(), "{args:?}");
    }
    let before = packets(&node.counters("a"), &["drops", "drop_spoof"]);
    let spoofed = node.in_pod(
        "a",
        "ping",
        &[
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "fd00:10:244::200",
            &b,
        ],
    );
    assert!(
        !spoofed.status.success(),
        "spoofed ping must not get through"
    );
    let c = node.counters("a");
    assert_eq!(
        packets(&c, &["drops", "drop_spoof"]) - before,
        3,
        "one drop per spoofed echo request: {c}"
    );
    assert_eq!(node.ping_from_pod("a", &b, 2), Some(63));
}

#[test]
fn pods_ping_their_ipv6_gateway() {
    // `ping GATEWAY%eth0` goes out from the pod's link-local address; from_pod answers
    // it in place (hop limit 64: no hop), as it answers `ping 169.254.1.1`.
    let node = TestNode::dual();
    node.add("a", &[]);
    let gw = format!("{GATEWAY6}%eth0");
    assert_eq!(node.ping_from_pod("a", &gw, 3), Some(64));
    let c = node.counters("a");
    assert!(packets(&c, &["echo_replies"]) >= 3, "{c}");
    assert_eq!(packets(&c, &["dropped"]), 0, "{c}");
}

#[test]
fn a_hop_limit_ending_at_the_gateway_gets_time_exceeded_in_both_families() {
    // A traceroute's first probe from a pod to another: the gateway is the first
    // hop, and says so (from its link-local address, or 169.254.1.1), as a router
    // does; the probe itself is dropped and counted, never delivered.
    let node = TestNode::dual();
    node.add("a", &[]);
    let b = node.add("b", &[]);
    for (ip, from) in [
        (ip6_of(&b), format!("From {GATEWAY6}")),
        (ip_of(&b), "From 169.254.1.1".to_string()),
    ] {
        let before = node.counters("a");
        let out = node.in_pod("a", "ping", &["-c", "1", "-t", "1", "-W", "2", &ip]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&from) && text.to_lowercase().contains("exceeded"),
            "ping -t 1 {ip}: {text}"
        );
        let after = node.counters("a");
        assert_eq!(
            packets(&after, &["drops", "drop_ttl"]),
            packets(&before, &["drops", "drop_ttl"]) + 1,
            "{after}"
        );
        assert_eq!(
            packets(&after, &["forwarded"]),
            packets(&before, &["forwarded"]),
            "{after}"
        );
    }
}

#[test]
fn ns_from_an_address_the_pod_does_not_own_is_dropped_and_not_answered() {
    // The twin of the ARP spoof test: the pod's own stack solicits the gateway from
    // an address it was not given (its neighbour cache is empty, so the ping needs
    // an answer first).
    let node = TestNode::dual();
    node.add("a", &[]);
    let b = ip6_of(&node.add("b", &[]));
    node.in_pod(
        "a",
        "ip",
        &[
            "-6",
            "addr",
            "add",
            "fd00:10:244::201/128",
            "dev",
            "eth0",
            "nodad",
        ],
    );
    node.in_pod("a", "ip", &["-6", "neigh", "flush", "dev", "eth0"]);
    let spoofed = node.in_pod(
        "a",
        "ping",
        &[
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "fd00:10:244::201",
            &b,
        ],
    );
    assert!(!spoofed.status.success());
    let c = node.counters("a");
    assert!(packets(&c, &["drops", "drop_spoof"]) >= 1, "{c}");
    assert_eq!(
        packets(&c, &["na_replies"]),
        0,
        "no answer to a spoofed NS: {c}"
    );
    // The real address still resolves and reaches b.
    assert_eq!(node.ping_from_pod("a", &b, 1), Some(63));
    assert!(packets(&node.counters("a"), &["na_replies"]) >= 1);
}

#[test]
fn deleting_an_endpoint_leaves_no_ipv6_route_map_entry_or_address() {
    let node = TestNode::dual();
    let a = ip6_of(&node.add("a", &[]));
    let b_ep = node.add("b", &[]);
    let b = ip6_of(&b_ep);
    let c = ip6_of(&node.add("c", &[]));
    let b_host = b_ep["host_veth"].as_str().expect("host_veth").to_string();
    assert_eq!(node.ping_from_pod("a", &b, 1), Some(63));

    node.ok(&["endpoint", "del", &node.pod("b")]);

    assert_eq!(
        node.ping_from_pod("a", &b, 1),
        None,
        "b must be unreachable"
    );
    assert_eq!(
        node.ping_from_pod("a", &c, 1),
        Some(63),
        "a -> c still works"
    );
    assert_eq!(
        node.ping_from_pod("c", &a, 1),
        Some(63),
        "c -> a still works"
    );
    assert!(!netns_list().contains(&node.pod("b")));
    let links = node.node_must("ip", &["-o", "link", "show"]);
    assert!(!links.contains(&b_host), "b's host veth is gone: {links}");
    let routes = node.node_must("ip", &["-6", "route", "show", "table", "all"]);
    assert!(!routes.contains(&b), "b's route is gone: {routes}");
    assert!(!routes.contains(&b_host), "{routes}");
    let addrs = node.node_must("ip", &["-o", "-6", "addr", "show"]);
    assert!(!addrs.contains(&b_host), "{addrs}");
    let status = node.json(&["status"]);
    assert_eq!(map_entries(&status, "ROUTES6"), 2);
    assert_eq!(map_entries(&status, "ENDPOINTS6"), 2);
    // The address is free again.
    let again = node.add("d", &["--ip", &b]);
    assert_eq!(ip6_of(&again), b);
    assert_eq!(node.ping_from_pod("a", &b, 1), Some(63));
}

#[test]
fn down_leaves_the_node_as_before_up_on_dual_stack() {
    let node = TestNode::new();
    let before = node.snapshot();
    let ours = || -> std::collections::BTreeSet<String> {
        netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&node.prefix))
            .collect()
    };
    let ns_before = ours();
    node.ok(&[
        "up",
        "--pod-cidr",
        vethbpf_tests::POD_CIDR,
        "--pod-cidr",
        vethbpf_tests::POD_CIDR6,
    ]);
    node.add("a", &[]);
    node.add("b", &[]);
    let existing = node.pod("x");
    vethbpf_tests::must("ip", ["netns", "add", &existing]);
    node.add("c", &["--netns", &existing, "--ifname", "net1"]);
    assert_ne!(node.snapshot().addrs6, before.addrs6, "up added addresses");
    node.ok(&["down"]);
    let mut after_ns = ours();
    assert!(after_ns.remove(&existing));
    assert_eq!(after_ns, ns_before);
    let links_in_x = TestNode::in_ns(&existing, "ip", &["-o", "link", "show"]);
    assert!(!String::from_utf8_lossy(&links_in_x.stdout).contains("net1"));
    vethbpf_tests::must("ip", ["netns", "del", &existing]);
    assert_eq!(node.snapshot(), before);
    assert!(!node.bpffs.exists(), "bpffs dir unmounted and removed");
    assert!(!node.state.exists(), "state dir removed");
}

#[test]
fn up_twice_on_dual_stack_changes_nothing_and_reports_it() {
    let node = TestNode::dual();
    node.add("a", &[]);
    let before = node.snapshot();
    let r = node.json(&[
        "up",
        "--pod-cidr",
        vethbpf_tests::POD_CIDR,
        "--pod-cidr",
        vethbpf_tests::POD_CIDR6,
    ]);
    assert_eq!(r["action"], "unchanged");
    assert_eq!(node.snapshot(), before);
    // Dropping a family while an endpoint has it is refused, changing nothing.
    let out = node.vethbpf(&["up", "--pod-cidr", vethbpf_tests::POD_CIDR]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(node.snapshot(), before);
}

#[test]
fn a_node_loaded_before_ipv6_is_named_and_upgraded_by_up_replace() {
    // A node brought up by a vethbpf without the IPv6 maps: their pins are absent.
    let node = TestNode::up();
    let a = ip_of(&node.add("a", &[]));
    for map in ["ROUTES6", "ENDPOINTS6"] {
        std::fs::remove_file(node.bpffs.join("maps").join(map)).expect("unpin");
    }
    for args in [&["endpoint", "list"][..], &["up"][..]] {
        let out = node.vethbpf(args);
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("ROUTES6 is missing") && err.contains("vethbpf up --replace"),
            "{args:?}: {err}"
        );
    }
    // The IPv4 datapath kept working all along; --replace pins what is missing.
    assert_eq!(node.ping_from_node(&a), Some(64));
    let r = node.json(&["up", "--replace"]);
    assert_eq!(r["action"], "replaced", "{r}");
    assert!(node.bpffs.join("maps/ROUTES6").exists());
    assert_eq!(
        node.json(&["endpoint", "list"]).as_array().map(Vec::len),
        Some(1)
    );
    node.add("b", &[]);
    assert_eq!(node.ping_from_pod("b", &a, 1), Some(63));
}
