//! Nodes joining through etcd: `vethbpf agent` on each node of a simulated cluster,
//! etcd on the underlay, both started and ended by the tests. Leases have a 4 s TTL
//! here so that lapses are seen quickly.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use vethbpf::cluster::etcd::{self, RegistryConfig, Update};
use vethbpf::state::Overlay;
use vethbpf_tests::TestNode;
use vethbpf_tests::cluster::{
    Agent, CLUSTER_CIDR, Cluster, Etcd, TcpStreamJob, pod_cidr_of, remote_nodes, wait_for,
};

fn name(i: usize) -> String {
    format!("node{i}")
}

/// Waits until node `i` is up in the cluster; returns its pod CIDR.
fn wait_up(c: &Cluster, agents: &mut [Agent], i: usize) -> Ipv4Net {
    let cidr = wait_for(Duration::from_secs(20), &format!("node {i} up"), || {
        agents[i].assert_running();
        pod_cidr_of(&c.nodes[i])
    });
    cidr.parse().expect("pod CIDR")
}

/// Waits until node `i` lists exactly `want` as its remote nodes.
fn wait_nodes(c: &Cluster, i: usize, want: &BTreeSet<String>, timeout: Duration) -> Duration {
    let start = Instant::now();
    wait_for(timeout, &format!("node {i} to list {want:?}"), || {
        let have: BTreeSet<String> = remote_nodes(&c.nodes[i]).into_keys().collect();
        (have == *want).then_some(())
    });
    start.elapsed()
}

fn others(n: usize, except: usize) -> BTreeSet<String> {
    (0..n).filter(|j| *j != except).map(name).collect()
}

fn pod_ip(node: &TestNode, pod: &str) -> String {
    node.add(pod, &[])["ip"].as_str().expect("ip").to_string()
}

/// Three agents lease three distinct subnets; pods reach each other once all are
/// up; a fourth node becomes reachable from the others within seconds.
#[test]
fn agents_lease_distinct_subnets_and_a_fourth_node_joins_within_seconds() {
    let mut c = Cluster::new(3);
    let etcd = Etcd::start(&c.underlay);
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| Agent::start(&c.nodes[i], &name(i), "vxlan", &[]))
        .collect();
    let cidrs: Vec<Ipv4Net> = (0..3).map(|i| wait_up(&c, &mut agents, i)).collect();
    let distinct: BTreeSet<Ipv4Net> = cidrs.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "{cidrs:?}");
    let cluster: Ipv4Net = CLUSTER_CIDR.parse().expect("cidr");
    assert!(
        cidrs
            .iter()
            .all(|s| cluster.contains(s) && s.prefix_len() == 24),
        "{cidrs:?}"
    );
    let keys = etcd.get_prefix("/vethbpf/network/subnets/");
    assert_eq!(keys.len(), 3, "{keys:?}");

    for i in 0..3 {
        wait_nodes(&c, i, &others(3, i), Duration::from_secs(10));
    }
    let ips: Vec<String> = (0..3).map(|i| pod_ip(&c.nodes[i], "a")).collect();
    for i in 0..3 {
        for j in (0..3).filter(|j| *j != i) {
            assert_eq!(
                c.nodes[i].ping_from_pod("a", &ips[j], 1),
                Some(62),
                "pod on node {i} -> pod on node {j}"
            );
        }
    }

    // A fourth node joins: from its agent's start to a packet from node0's pod
    // answered by its pod.
    let start = Instant::now();
    let d = c.add_node();
    agents.push(Agent::start(&c.nodes[d], &name(d), "vxlan", &[]));
    let cidr = wait_up(&c, &mut agents, d);
    assert!(!distinct.contains(&cidr), "{cidr} leased twice");
    let ip = pod_ip(&c.nodes[d], "a");
    let reached = wait_for(
        Duration::from_secs(10),
        "node3's pod reachable from node0's",
        || {
            c.nodes[0]
                .ping_from_pod("a", &ip, 1)
                .filter(|ttl| *ttl == 62)
                .map(|_| start.elapsed())
        },
    );
    eprintln!("a fourth node was reachable {reached:?} after its agent started");
    for i in 0..4 {
        wait_nodes(&c, i, &others(4, i), Duration::from_secs(10));
    }
    for i in 1..3 {
        assert_eq!(c.nodes[i].ping_from_pod("a", &ip, 1), Some(62));
    }
    for a in &mut agents {
        a.assert_running();
    }
}

/// SIGKILL of an agent interrupts no running cross-node TCP stream, and the agent
/// keeps its subnet when it comes back; an agent that stops renewing disappears
/// from the others after its lease TTL, and comes back when it resumes.
#[test]
fn killing_an_agent_stops_no_traffic_and_a_lapsed_lease_disappears() {
    let c = Cluster::new(3);
    let etcd = Etcd::start(&c.underlay);
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| Agent::start(&c.nodes[i], &name(i), "none", &[]))
        .collect();
    let cidrs: Vec<Ipv4Net> = (0..3).map(|i| wait_up(&c, &mut agents, i)).collect();
    for i in 0..3 {
        wait_nodes(&c, i, &others(3, i), Duration::from_secs(10));
    }
    let ips: Vec<Ipv4Addr> = (0..3)
        .map(|i| pod_ip(&c.nodes[i], "a").parse().expect("ip"))
        .collect();

    let stream = TcpStreamJob::start(&c.pod_path(1, "a"), ips[1], &c.pod_path(0, "a"));
    std::thread::sleep(Duration::from_secs(1));
    agents[0].kill();
    std::thread::sleep(Duration::from_secs(2));
    agents[0] = Agent::start(&c.nodes[0], &name(0), "none", &[]);
    assert_eq!(wait_up(&c, &mut agents, 0), cidrs[0]);
    std::thread::sleep(Duration::from_secs(1));
    let bytes = stream
        .finish()
        .expect("the stream across the agent's SIGKILL");
    assert!(bytes > 10 << 20, "only {bytes} bytes went through");
    assert_eq!(
        pod_cidr_of(&c.nodes[0]).as_deref(),
        Some(cidrs[0].to_string().as_str()),
        "the restarted agent keeps its subnet"
    );

    // node2's agent stops renewing: after the 4 s TTL the others drop it.
    let stopped = Instant::now();
    agents[2].signal(libc::SIGSTOP);
    let both: BTreeSet<String> = [name(0), name(1)].into();
    for i in 0..2 {
        let mut want = both.clone();
        want.remove(&name(i));
        wait_nodes(&c, i, &want, Duration::from_secs(15));
    }
    let gone = stopped.elapsed();
    assert!(
        gone >= Duration::from_secs(2),
        "dropped after {gone:?}: before the TTL"
    );
    assert_eq!(etcd.get_prefix("/vethbpf/network/subnets/").len(), 2);
    assert_eq!(c.nodes[0].ping_from_pod("a", &ips[2].to_string(), 1), None);

    // Resumed, it leases its subnet again and the others learn it back.
    agents[2].signal(libc::SIGCONT);
    for i in 0..2 {
        wait_nodes(&c, i, &others(3, i), Duration::from_secs(15));
    }
    assert_eq!(pod_cidr_of(&c.nodes[2]), Some(cidrs[2].to_string()));
    assert_eq!(
        c.nodes[0].ping_from_pod("a", &ips[2].to_string(), 1),
        Some(62)
    );
}

/// With etcd stopped, traffic keeps flowing and nodes stay; a node that starts
/// meanwhile is learned once etcd returns.
#[test]
fn etcd_down_stops_no_traffic_and_a_node_added_meanwhile_is_learned() {
    let mut c = Cluster::new(2);
    let mut etcd = Etcd::start(&c.underlay);
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| Agent::start(&c.nodes[i], &name(i), "none", &[]))
        .collect();
    for i in 0..2 {
        wait_up(&c, &mut agents, i);
        wait_nodes(&c, i, &others(2, i), Duration::from_secs(10));
    }
    let a0 = pod_ip(&c.nodes[0], "a");
    let a1 = pod_ip(&c.nodes[1], "a");

    etcd.stop();
    // Longer than the lease TTL: nothing may be dropped for want of etcd.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(c.nodes[0].ping_from_pod("a", &a1, 1), Some(62));
        assert_eq!(c.nodes[1].ping_from_pod("a", &a0, 1), Some(62));
        std::thread::sleep(Duration::from_millis(500));
    }
    for (i, agent) in agents.iter_mut().enumerate() {
        assert_eq!(remote_nodes(&c.nodes[i]).len(), 1, "node {i} lost its peer");
        agent.assert_running();
    }

    let d = c.add_node();
    agents.push(Agent::start(&c.nodes[d], &name(d), "none", &[]));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pod_cidr_of(&c.nodes[d]), None, "no lease without etcd");
    etcd.restart();
    let back = Instant::now();
    wait_up(&c, &mut agents, d);
    for i in 0..3 {
        wait_nodes(&c, i, &others(3, i), Duration::from_secs(15));
    }
    eprintln!(
        "all three nodes knew each other {:?} after etcd came back",
        back.elapsed()
    );
    let a2 = pod_ip(&c.nodes[d], "a");
    assert_eq!(c.nodes[0].ping_from_pod("a", &a2, 1), Some(62));
    assert_eq!(c.nodes[d].ping_from_pod("a", &a1, 1), Some(62));
}

/// Two agents starting at the same moment get different subnets; so do eight
/// registries claiming the eight /24s of a /21 at once, and a ninth finds none.
#[test]
fn agents_racing_never_share_a_subnet() {
    let c = Cluster::new(2);
    let _etcd = Etcd::start(&c.underlay);
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| Agent::start(&c.nodes[i], &name(i), "none", &[]))
        .collect();
    let a = wait_up(&c, &mut agents, 0);
    let b = wait_up(&c, &mut agents, 1);
    assert_ne!(a, b);

    // The registries (the agent's etcd side) directly, from the underlay, on a
    // cluster prefix of their own.
    let cidr: Ipv4Net = "10.250.0.0/21".parse().expect("cidr");
    let underlay = c.underlay.path();
    let results = vethbpf::kernel::netns::run_in(&underlay, move || {
        let (tx, rx) = std::sync::mpsc::channel();
        let _threads: Vec<_> = (0..9)
            .map(|k| {
                etcd::spawn(
                    RegistryConfig {
                        endpoints: vec![Etcd::url()],
                        prefix: "/race".into(),
                        node_name: format!("racer{k}"),
                        address: Ipv4Addr::new(192, 168, 77, 100 + k as u8),
                        cluster_cidr: cidr,
                        subnet_len: 24,
                        cluster_cidr6: None,
                        subnet_len6: 64,
                        overlay: Overlay::None,
                        ttl_secs: 30,
                        prefer: None,
                        prefer6: None,
                    },
                    tx.clone(),
                )
            })
            .collect();
        drop(tx);
        let mut leased = Vec::new();
        let mut fatal = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while leased.len() + fatal.len() < 9 && Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Update::Leased(s, _)) => leased.push(s),
                Ok(Update::Fatal(m)) => fatal.push(m),
                _ => {}
            }
        }
        (leased, fatal)
    })
    .expect("enter the underlay");
    let (leased, fatal) = results;
    let distinct: BTreeSet<Ipv4Net> = leased.iter().copied().collect();
    assert_eq!(leased.len(), 8, "{leased:?} {fatal:?}");
    assert_eq!(distinct.len(), 8, "a subnet was leased twice: {leased:?}");
    assert_eq!(fatal.len(), 1, "{fatal:?}");
    assert!(
        fatal[0].contains("every /24 subnet of 10.250.0.0/21 is leased"),
        "{fatal:?}"
    );
}
