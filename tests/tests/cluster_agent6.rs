//! Dual-stack nodes joining through etcd (the IPv6 side of cluster_agent.rs):
//! agents given an IPv4 and an IPv6 cluster CIDR lease one subnet of each, and
//! learn the others' IPv6 subnets from the same records an IPv4-only agent reads.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::time::Duration;

use ipnet::Ipv6Net;
use vethbpf_tests::cluster::{
    Agent, CLUSTER_CIDR6, Cluster, Etcd, pod_cidr_of, remote_nodes, wait_for,
};
use vethbpf_tests::{TestNode, tcp_echo_peer};

fn name(i: usize) -> String {
    format!("node{i}")
}

/// The IPv6 pod CIDR a node is up with, if it is up with one.
fn pod_cidr6_of(node: &TestNode) -> Option<Ipv6Net> {
    let out = node.vethbpf(&["-o", "json", "status"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["node"]["pod_cidr6"].as_str()?.parse().ok()
}

/// The remote nodes of `node` with their IPv6 pod CIDRs (`None`: none).
fn remote_cidrs6(node: &TestNode) -> Vec<(String, Option<String>)> {
    node.json(&["node", "list"])
        .as_array()
        .expect("node list")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_string(),
                n["pod_cidr6"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn dual_stack_agents_lease_distinct_ipv6_subnets_and_pods_reach_each_other() {
    for overlay in ["none", "vxlan"] {
        let mut c = Cluster::new(3);
        let etcd = Etcd::start(&c.underlay);
        let dual = ["--cluster-cidr", CLUSTER_CIDR6];
        let mut agents: Vec<Agent> = (0..3)
            .map(|i| Agent::start(&c.nodes[i], &name(i), overlay, &dual))
            .collect();
        let cidrs6: Vec<Ipv6Net> = (0..3)
            .map(|i| {
                wait_for(Duration::from_secs(20), &format!("node {i} up"), || {
                    agents[i].assert_running();
                    pod_cidr6_of(&c.nodes[i])
                })
            })
            .collect();
        let distinct: BTreeSet<Ipv6Net> = cidrs6.iter().copied().collect();
        assert_eq!(distinct.len(), 3, "{overlay}: {cidrs6:?}");
        let cluster6: Ipv6Net = CLUSTER_CIDR6.parse().expect("cidr");
        assert!(
            cidrs6
                .iter()
                .all(|s| cluster6.contains(s) && s.prefix_len() == 64),
            "{overlay}: {cidrs6:?}"
        );
        // One IPv6 key per node, and the IPv4 records name each node's IPv6
        // subnet (what the others learn it from).
        assert_eq!(
            etcd.get_prefix("/vethbpf/network/subnets6/").len(),
            3,
            "{overlay}"
        );
        let records = etcd.get_prefix("/vethbpf/network/subnets/");
        assert_eq!(records.len(), 3, "{overlay}: {records:?}");
        for (_, value) in &records {
            let v: serde_json::Value = serde_json::from_str(value).expect("lease JSON");
            let cidr6: Ipv6Net = v["pod_cidr6"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{overlay}: no pod_cidr6 in {value}"));
            assert!(distinct.contains(&cidr6), "{overlay}: {value}");
        }
        for i in 0..3 {
            wait_for(
                Duration::from_secs(10),
                &format!("node {i} to know the others' IPv6 subnets"),
                || {
                    let have = remote_cidrs6(&c.nodes[i]);
                    (have.len() == 2 && have.iter().all(|(_, c6)| c6.is_some())).then_some(())
                },
            );
        }
        let pods: Vec<Ipv6Addr> = (0..3)
            .map(|i| {
                let ep = c.nodes[i].add("a", &[]);
                ep["ip6"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no ip6 in {ep}"))
            })
            .collect();
        for i in 0..3 {
            for j in (0..3).filter(|j| *j != i) {
                assert_eq!(
                    c.nodes[i].ping_from_pod("a", &pods[j].to_string(), 1),
                    Some(62),
                    "{overlay}: pod on node {i} -> pod on node {j}"
                );
            }
        }
        if overlay == "none" {
            // A node's MACs lost (as if it had not answered ARP when it was added):
            // its IPv6 pods are unreachable, until the agent's retry learns them.
            let neigh = c.nodes[0].bpffs.join("maps").join("NODE_NEIGH");
            let neigh = neigh.to_str().expect("path");
            let mut zero = vec!["map", "update", "pinned", neigh, "key", "hex"];
            let id: u64 = c.nodes[0].json(&["node", "list"])[0]["id"]
                .as_u64()
                .expect("id");
            let key = format!("{:02x}", id);
            let target = c.nodes[0].json(&["node", "list"])[0]["name"]
                .as_str()
                .expect("name")
                .to_string();
            zero.extend_from_slice(&[key.as_str(), "00", "00", "00", "value", "hex"]);
            zero.extend_from_slice(&["00"; 16]);
            vethbpf_tests::must("bpftool", &zero);
            let j: usize = target.trim_start_matches("node").parse().expect("index");
            assert_eq!(
                c.nodes[0].ping_from_pod("a", &pods[j].to_string(), 1),
                None,
                "without the MACs"
            );
            wait_for(
                Duration::from_secs(15),
                "the agent to learn the MACs again",
                || {
                    c.nodes[0]
                        .ping_from_pod("a", &pods[j].to_string(), 1)
                        .filter(|h| *h == 62)
                },
            );
        }
        let (_, peer) = tcp_echo_peer(&c.pod_path(2, "a"), pods[2], &c.pod_path(0, "a"), 2 << 20);
        assert_eq!(peer.ip(), std::net::IpAddr::V6(pods[0]), "{overlay}");

        // An IPv4-only agent joins the dual-stack cluster: it reads the dual-stack
        // records (its pods reach the others' over IPv4), and the others know it
        // without an IPv6 subnet.
        let d = c.add_node();
        agents.push(Agent::start(&c.nodes[d], &name(d), overlay, &[]));
        wait_for(Duration::from_secs(20), "the IPv4-only node up", || {
            agents[d].assert_running();
            pod_cidr_of(&c.nodes[d])
        });
        wait_for(
            Duration::from_secs(10),
            "the IPv4-only node to learn the others",
            || (remote_nodes(&c.nodes[d]).len() == 3).then_some(()),
        );
        assert_eq!(pod_cidr6_of(&c.nodes[d]), None, "{overlay}");
        wait_for(
            Duration::from_secs(10),
            "node0 to learn the IPv4-only node",
            || {
                remote_cidrs6(&c.nodes[0])
                    .contains(&(name(d), None))
                    .then_some(())
            },
        );
        let ip = c.nodes[d].add("a", &[])["ip"]
            .as_str()
            .expect("ip")
            .to_string();
        let v4 = c.nodes[0].json(&["endpoint", "list"]);
        let ip0 = v4
            .as_array()
            .and_then(|a| a.first())
            .and_then(|e| e["ip"].as_str())
            .expect("node0's pod ip")
            .to_string();
        assert_eq!(c.nodes[0].ping_from_pod("a", &ip, 1), Some(62), "{overlay}");
        assert_eq!(
            c.nodes[d].ping_from_pod("a", &ip0, 1),
            Some(62),
            "{overlay}"
        );
        for a in &mut agents {
            a.assert_running();
        }
        drop(agents);
        drop(etcd);
    }
}
