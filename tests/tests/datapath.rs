//! The datapath with real namespaces, veths and packets: pods reach each other
//! through from_pod and bpf_redirect_peer with `ip_forward=0`, no bridge, no proxy
//! ARP, no iptables rules and no address on any host-side veth.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use vethbpf_common::{endpoint_addr_index, ipv4_to_map};
use vethbpf_tests::{NODE_IP, TestNode, netns_list, packets};

fn ip_of(ep: &serde_json::Value) -> String {
    ep["ip"].as_str().expect("ip in endpoint JSON").to_string()
}

/// [`vethbpf_tests::tcp_echo`] between two of the node's pods.
fn tcp_echo(node: &TestNode, server: &str, server_ip: &str, client: &str, len: usize) {
    let ns = |p: &str| PathBuf::from(format!("/run/netns/{}", node.pod(p)));
    let ip: Ipv4Addr = server_ip.parse().expect("server ip");
    vethbpf_tests::tcp_echo(&ns(server), ip, &ns(client), len);
}

#[test]
fn three_pods_talk_through_ebpf_with_forwarding_off() {
    let node = TestNode::up();
    let pods = ["a", "b", "c"];
    let ips: Vec<String> = pods.iter().map(|p| ip_of(&node.add(p, &[]))).collect();

    // The node namespace forwards nothing itself and has no bridge, no proxy ARP,
    // no iptables rules and no address on the host-side veths.
    assert_eq!(
        node.node_must("cat", &["/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "0"
    );
    assert!(
        node.node_must("ip", &["-o", "link", "show", "type", "bridge"])
            .trim()
            .is_empty()
    );
    let proxy = node.node_must(
        "sh",
        &["-c", "cat /proc/sys/net/ipv4/conf/*/proxy_arp | sort -u"],
    );
    assert_eq!(proxy.trim(), "0", "proxy_arp must be off everywhere");
    // iptables (Debian's is the nft backend) and nftables itself: no rule anywhere.
    let rules = node.node_must("iptables-save", &[]);
    assert!(!rules.lines().any(|l| l.starts_with("-A")), "{rules}");
    let ruleset = node.node_must("nft", &["list", "ruleset"]);
    assert!(ruleset.trim().is_empty(), "nftables ruleset: {ruleset}");
    let list = node.json(&["endpoint", "list"]);
    for ep in list.as_array().expect("list") {
        let host = ep["host_veth"].as_str().expect("host_veth");
        let addrs = node.node_must("ip", &["-o", "addr", "show", "dev", host]);
        assert!(addrs.trim().is_empty(), "{host} has addresses: {addrs}");
    }

    // Every pair: ping (TTL decremented once by the eBPF hop) and a TCP transfer.
    for (i, src) in pods.iter().enumerate() {
        for (j, dst) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let ttl = node.ping_from_pod(src, &ips[j], 2);
            assert_eq!(ttl, Some(63), "ping {src} -> {dst} ({})", ips[j]);
            tcp_echo(&node, dst, &ips[j], src, 256 * 1024);
        }
    }
    for p in pods {
        let c = node.counters(p);
        assert!(packets(&c, &["forwarded"]) >= 4, "{p}: {c}");
        assert!(packets(&c, &["arp_replies"]) >= 1, "{p}: {c}");
        assert_eq!(packets(&c, &["dropped"]), 0, "{p}: {c}");
    }
}

#[test]
fn node_and_pods_reach_each_other() {
    let node = TestNode::up();
    let a = ip_of(&node.add("a", &[]));
    // The node reaches the pod through its /32 kernel route (no eBPF hop: TTL 64).
    assert_eq!(node.ping_from_node(&a), Some(64));
    // The pod reaches the node address through the gateway (passed to the stack).
    assert_eq!(node.ping_from_pod("a", NODE_IP, 1), Some(64));
    let c = node.counters("a");
    assert!(packets(&c, &["passed"]) >= 1, "{c}");
    assert!(packets(&c, &["arp_replies"]) >= 1, "{c}");
}

#[test]
fn spoofed_source_is_dropped_and_counted_while_real_traffic_flows() {
    let node = TestNode::up();
    node.add("a", &[]);
    let b = ip_of(&node.add("b", &[]));
    // Give pod a a second address it does not own and send from it. The gateway's
    // neighbour entry is made permanent first: otherwise the ARP request would carry
    // the spoofed sender and be dropped before any IPv4 is sent (that path is the
    // ARP test's).
    for args in [
        &["addr", "add", "10.244.0.200/32", "dev", "eth0"][..],
        &[
            "neigh",
            "replace",
            "169.254.1.1",
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
    let spoofed = node.in_pod(
        "a",
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "1", "-I", "10.244.0.200", &b],
    );
    assert!(
        !spoofed.status.success(),
        "spoofed ping must not get through"
    );
    // Each of the 3 echo requests, and nothing else: the ARP path was not involved.
    let c = node.counters("a");
    assert_eq!(packets(&c, &["drops", "drop_spoof"]), 3, "{c}");
    assert_eq!(packets(&c, &["drops", "drop_arp_spoof"]), 0, "{c}");
    assert_eq!(node.ping_from_pod("a", &b, 2), Some(63));
}

#[test]
fn deleting_an_endpoint_stops_it_and_leaves_nothing_of_it() {
    let node = TestNode::up();
    let a = ip_of(&node.add("a", &[]));
    let b_ep = node.add("b", &[]);
    let b = ip_of(&b_ep);
    let c = ip_of(&node.add("c", &[]));
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
    assert!(
        !netns_list().contains(&node.pod("b")),
        "b's namespace is gone"
    );
    let links = node.node_must("ip", &["-o", "link", "show"]);
    assert!(!links.contains(&b_host), "b's host veth is gone: {links}");
    let routes = node.node_must("ip", &["-4", "route", "show"]);
    assert!(!routes.contains(&b), "b's route is gone: {routes}");
    assert!(!node.bpffs.join("links").join(&b_host).exists());
    let status = node.json(&["status"]);
    let entries = |name: &str| vethbpf_tests::map_entries(&status, name);
    // The two endpoints' /32s and the pod CIDR's own entry.
    assert_eq!(entries("ROUTES"), 3);
    assert_eq!(entries("ENDPOINTS"), 2);
    let list = node.json(&["endpoint", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    // The address is free again.
    let again = node.add("d", &["--ip", &b]);
    assert_eq!(ip_of(&again), b);
}

#[test]
fn down_leaves_the_node_as_before_up() {
    let node = TestNode::new();
    let before = node.snapshot();
    let ours = || -> std::collections::BTreeSet<String> {
        netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&node.prefix))
            .collect()
    };
    let ns_before = ours();
    node.ok(&["up"]);
    node.add("a", &[]);
    node.add("b", &[]);
    let existing = node.pod("x");
    vethbpf_tests::must("ip", ["netns", "add", &existing]);
    node.add("c", &["--netns", &existing, "--ifname", "net1"]);
    node.ok(&["down"]);
    // vethbpf made a and b's namespaces and removed them; x was the test's and stays.
    let mut after_ns = ours();
    assert!(
        after_ns.remove(&existing),
        "a namespace given with --netns stays"
    );
    assert_eq!(after_ns, ns_before);
    let links_in_x = TestNode::in_ns(&existing, "ip", &["-o", "link", "show"]);
    assert!(!String::from_utf8_lossy(&links_in_x.stdout).contains("net1"));
    vethbpf_tests::must("ip", ["netns", "del", &existing]);
    assert_eq!(node.snapshot(), before);
    assert!(!node.bpffs.exists(), "bpffs dir unmounted and removed");
    assert!(!node.state.exists(), "state dir removed");
}

#[test]
fn up_twice_changes_nothing_and_reports_it() {
    let node = TestNode::up();
    node.add("a", &[]);
    let before = node.snapshot();
    let r = node.json(&["up"]);
    assert_eq!(r["action"], "unchanged");
    assert_eq!(node.snapshot(), before);
}

#[test]
fn arp_claiming_another_address_is_dropped() {
    let node = TestNode::up();
    node.add("a", &[]);
    let b = ip_of(&node.add("b", &[]));
    let drops = |c: &serde_json::Value| packets(c, &["drops", "drop_arp_spoof"]);

    // A gratuitous ARP from pod a claiming the gateway's address: exactly one frame,
    // exactly one drop, no answer. (arping binds to the address it announces, which
    // is not a's: ip_nonlocal_bind lets it, as an attacker would.)
    let out = node.in_pod("a", "sysctl", &["-qw", "net.ipv4.ip_nonlocal_bind=1"]);
    assert!(out.status.success(), "ip_nonlocal_bind in a");
    let before = node.counters("a");
    let garp = node.in_pod(
        "a",
        "arping",
        &["-c", "1", "-U", "-I", "eth0", "169.254.1.1"],
    );
    assert!(
        garp.status.success(),
        "arping -U: {}{}",
        String::from_utf8_lossy(&garp.stdout),
        String::from_utf8_lossy(&garp.stderr)
    );
    let after_garp = node.counters("a");
    assert_eq!(
        drops(&after_garp) - drops(&before),
        1,
        "the gratuitous ARP: {before} -> {after_garp}"
    );

    // ARP requests sent from an address a does not own (the kernel resolves the
    // gateway for a ping from it): dropped as ARP spoofs too, so the ping never
    // leaves.
    let out = node.in_pod(
        "a",
        "ip",
        &["addr", "add", "10.244.0.201/32", "dev", "eth0"],
    );
    assert!(
        out.status.success(),
        "ip addr add in a: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spoofed = node.in_pod(
        "a",
        "ping",
        &["-c", "2", "-i", "0.2", "-W", "1", "-I", "10.244.0.201", &b],
    );
    assert!(!spoofed.status.success());
    let c = node.counters("a");
    assert!(
        drops(&c) > drops(&after_garp),
        "the requests from 10.244.0.201: {after_garp} -> {c}"
    );
    assert_eq!(
        packets(&c, &["drops", "drop_spoof"]),
        0,
        "no IPv4 left a without the gateway's MAC: {c}"
    );
    assert_eq!(
        packets(&c, &["arp_replies"]),
        0,
        "no reply to a spoofed ARP: {c}"
    );
}

/// The raw value bytes of a `bpftool -j map lookup` answer, as bpftool takes them.
fn value_bytes(lookup: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(lookup).expect("bpftool JSON");
    v["value"]
        .as_array()
        .expect("value bytes")
        .iter()
        .map(|b| b.as_str().expect("hex byte").to_string())
        .collect()
}

/// The endpoint id `ENDPOINT_ADDRS` holds at the index of the address `ip`.
fn addr_entry(node: &TestNode, ip: &str) -> u32 {
    let ip: Ipv4Addr = ip.parse().expect("ip");
    let index = endpoint_addr_index(ipv4_to_map(ip.octets()));
    let v: serde_json::Value =
        serde_json::from_str(&node.map_op("lookup", "ENDPOINT_ADDRS", index, None))
            .expect("bpftool JSON");
    v["formatted"]["value"].as_u64().expect("a u32 value") as u32
}

/// from_pod finds a pod's endpoint by the endpoint id its cls_bpf filter carries as
/// classid (its `ENDPOINT_SLOTS` slot), and only where the slot names the very veth
/// the frame came in on; otherwise by `ENDPOINTS`. `endpoint del` empties the slot
/// and the address's `ENDPOINT_ADDRS` entry.
#[test]
fn from_pod_finds_its_endpoint_by_the_filters_classid() {
    let node = TestNode::up();
    let a = node.add("a", &[]);
    let b = node.add("b", &[]);
    let b_ip = ip_of(&b);
    let a_host = a["host_veth"].as_str().expect("host_veth");
    let a_id = a["id"].as_u64().expect("id") as u32;
    let a_index = a["host_ifindex"].as_u64().expect("host_ifindex") as u32;
    assert_eq!(node.ping_from_pod("a", &b_ip, 1), Some(63));

    // tc prints the classid as the filter's flowid (minor, hex).
    let filter = node.node_must("tc", &["filter", "show", "dev", a_host, "ingress"]);
    assert!(
        filter.contains(&format!("flowid :{a_id:x} ")),
        "classid {a_id}: {filter}"
    );
    let slot: serde_json::Value =
        serde_json::from_str(&node.map_op("lookup", "ENDPOINT_SLOTS", a_id, None))
            .expect("bpftool JSON");
    assert_eq!(slot["formatted"]["value"]["ifindex"], a_index, "{slot}");
    assert_eq!(slot["formatted"]["value"]["info"]["id"], a_id, "{slot}");
    // And from_uplink's way to it from a's address: ENDPOINT_ADDRS.
    assert_eq!(addr_entry(&node, &ip_of(&a)), a_id);

    // The slot alone carries a's frames: its ENDPOINTS entry gone, a still reaches b.
    let entry = value_bytes(&node.map_op("lookup", "ENDPOINTS", a_index, None));
    node.map_op("delete", "ENDPOINTS", a_index, None);
    assert_eq!(
        node.ping_from_pod("a", &b_ip, 1),
        Some(63),
        "through the slot"
    );

    // A slot naming another veth is not trusted: with no ENDPOINTS entry either,
    // a's frames find no endpoint and are dropped...
    let mut foreign = (a_index + 1000)
        .to_ne_bytes()
        .map(|b| b.to_string())
        .to_vec();
    foreign.extend(entry.iter().cloned());
    node.map_op("update", "ENDPOINT_SLOTS", a_id, Some(&foreign));
    assert_eq!(node.ping_from_pod("a", &b_ip, 1), None, "a foreign slot");
    // ... and with the ENDPOINTS entry back, they flow through it.
    node.map_op("update", "ENDPOINTS", a_index, Some(&entry));
    assert_eq!(
        node.ping_from_pod("a", &b_ip, 1),
        Some(63),
        "through ENDPOINTS"
    );
    // reconcile puts the slot back.
    let report = node.json(&["reconcile"]);
    assert!(report.to_string().contains("endpoint slot"), "{report}");
    let slot: serde_json::Value =
        serde_json::from_str(&node.map_op("lookup", "ENDPOINT_SLOTS", a_id, None))
            .expect("bpftool JSON");
    assert_eq!(slot["formatted"]["value"]["ifindex"], a_index, "{slot}");

    // Deleting b empties its slot and its address entry.
    let b_id = b["id"].as_u64().expect("id") as u32;
    assert_eq!(addr_entry(&node, &b_ip), b_id);
    node.ok(&["endpoint", "del", &node.pod("b")]);
    assert_eq!(addr_entry(&node, &b_ip), 0, "b's address entry after del");
    let gone: serde_json::Value =
        serde_json::from_str(&node.map_op("lookup", "ENDPOINT_SLOTS", b_id, None))
            .expect("bpftool JSON");
    assert!(
        value_bytes(&gone.to_string()).iter().all(|b| b == "0x00"),
        "b's slot after del: {gone}"
    );
}
