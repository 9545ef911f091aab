//! The TestRun harness of the cluster paths (testrun_cluster.rs, testrun_cluster6.rs):
//! the object with `from_pod`, `from_uplink` and `from_tunnel` loaded and private
//! maps, the node config and the cluster config of one mode set, and runs that report
//! the counters they moved. test_run runs the skb on `lo` (ifindex 1) and never
//! performs a redirect.

use std::collections::BTreeMap;

use aya::{
    Ebpf, TestRunOptions,
    maps::{Array, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun as _},
};
use vethbpf_common::{
    ClusterConfig, Config, Counter, MAP_CLUSTER, MAP_CONFIG, MAP_NODE_STATS, MAP_NODES, MAP_STATS,
    NodeCounter, NodeInfo, PROG_FROM_POD, PROG_FROM_TUNNEL, PROG_FROM_UPLINK, Verdict, ipv4_to_map,
    stats_index,
};

pub const GW_IP: [u8; 4] = [169, 254, 1, 1];
pub const GW_MAC: [u8; 6] = [0xee; 6];
/// This node's underlay address.
pub const OWN_NODE_IP: [u8; 4] = [192, 168, 77, 1];

/// Counter changes of one run: (endpoint id, verdict name) -> packets.
pub type Delta = BTreeMap<(u32, &'static str), u64>;

/// The loaded object and the endpoint ids whose counters runs report.
pub struct ClusterRun {
    pub ebpf: Ebpf,
    ids: Vec<u32>,
}

impl ClusterRun {
    /// Loads the three programs (each must pass the verifier) and sets the node
    /// config (gateway [`GW_IP`], [`GW_MAC`]) and the cluster config for `mode`
    /// (uplink and tunnel on ifindex 1, VNI 1, this node [`OWN_NODE_IP`]); runs
    /// report the counters of endpoint ids `ids` (and 0).
    pub fn load(mode: u32, ids: &[u32]) -> ClusterRun {
        let mut ebpf = Ebpf::load(vethbpf::EBPF_OBJECT).expect("load the object");
        for name in [PROG_FROM_POD, PROG_FROM_UPLINK, PROG_FROM_TUNNEL] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load()
                .unwrap_or_else(|e| panic!("the verifier refuses {name}: {e}"));
        }
        let mut config: Array<&mut MapData, Config> =
            ebpf.map_mut(MAP_CONFIG).unwrap().try_into().unwrap();
        let node = Config {
            gateway_ip: ipv4_to_map(GW_IP),
            flags: 0,
            gateway_mac: GW_MAC,
            _pad: [0; 2],
        };
        config.set(0, node, 0).unwrap();
        let mut cluster: Array<&mut MapData, ClusterConfig> =
            ebpf.map_mut(MAP_CLUSTER).unwrap().try_into().unwrap();
        let c = ClusterConfig {
            mode,
            uplink_ifindex: 1,
            tunnel_ifindex: 1,
            vni: 1,
            node_ip: ipv4_to_map(OWN_NODE_IP),
            _pad: 0,
        };
        cluster.set(0, c, 0).unwrap();
        let mut all = vec![0];
        all.extend_from_slice(ids);
        ClusterRun { ebpf, ids: all }
    }

    /// Makes remote node `id` the one at underlay address `ip`.
    pub fn node(&mut self, id: u32, ip: [u8; 4]) {
        let mut nodes: Array<&mut MapData, NodeInfo> =
            self.ebpf.map_mut(MAP_NODES).unwrap().try_into().unwrap();
        let info = NodeInfo {
            ip: ipv4_to_map(ip),
            _pad: 0,
        };
        nodes.set(id, info, 0).unwrap();
    }

    /// Nonzero counters of the watched endpoints: (id, verdict) -> packets.
    pub fn counters(&self) -> Delta {
        let stats: PerCpuArray<&MapData, Counter> =
            self.ebpf.map(MAP_STATS).unwrap().try_into().unwrap();
        let mut out = BTreeMap::new();
        for &id in &self.ids {
            for v in Verdict::ALL {
                let n: u64 = stats
                    .get(&stats_index(id, v), 0)
                    .unwrap()
                    .iter()
                    .map(|c| c.packets)
                    .sum();
                if n > 0 {
                    out.insert((id, v.name()), n);
                }
            }
        }
        out
    }

    /// Remote node `id`'s counters, summed over CPUs (times: the latest).
    pub fn node_counter(&self, id: u32) -> NodeCounter {
        let stats: PerCpuArray<&MapData, NodeCounter> =
            self.ebpf.map(MAP_NODE_STATS).unwrap().try_into().unwrap();
        stats
            .get(&id, 0)
            .unwrap()
            .iter()
            .fold(NodeCounter::default(), |a, c| NodeCounter {
                tx_packets: a.tx_packets + c.tx_packets,
                rx_packets: a.rx_packets + c.rx_packets,
                tx_bytes: a.tx_bytes + c.tx_bytes,
                rx_bytes: a.rx_bytes + c.rx_bytes,
                tx_last_ns: a.tx_last_ns.max(c.tx_last_ns),
                rx_last_ns: a.rx_last_ns.max(c.rx_last_ns),
            })
    }

    /// Runs `frame` through `prog`: return value, frame out, counter changes.
    pub fn run(&self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>, Delta) {
        let before = self.counters();
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 64];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        let delta = self
            .counters()
            .into_iter()
            .filter_map(|(k, n)| {
                let d = n - before.get(&k).copied().unwrap_or(0);
                (d > 0).then_some((k, d))
            })
            .collect();
        (r.return_value, out, delta)
    }
}

/// Checks that `out` is a VXLAN frame from this node to `node` as the kernel's
/// device would build it (outer IPv4 with DF, a right header checksum, TTL 64; UDP
/// to the VXLAN port from an ephemeral port, no checksum; VNI 1) and returns the
/// inner frame.
pub fn assert_vxlan(out: &[u8], node: [u8; 4]) -> Vec<u8> {
    assert!(
        out.len() > 14 + 50,
        "{} bytes: no room for VXLAN",
        out.len()
    );
    assert_eq!(&out[12..14], &[0x08, 0x00], "outer EtherType IPv4");
    let ip = &out[14..34];
    assert_eq!(ip[0], 0x45, "IPv4, 20-byte header");
    assert_eq!(
        u16::from_be_bytes([ip[2], ip[3]]) as usize,
        out.len() - 14,
        "total length"
    );
    assert_eq!(&ip[6..8], &[0x40, 0], "DF, no fragment");
    assert_eq!((ip[8], ip[9]), (64, 17), "TTL 64, UDP");
    assert_eq!(crate::ones_sum(ip), 0xffff, "outer header checksum");
    assert_eq!(&ip[12..16], &OWN_NODE_IP, "from this node");
    assert_eq!(&ip[16..20], &node, "to the node");
    let udp = &out[34..50];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    assert!((32768..61000).contains(&sport), "source port {sport}");
    assert_eq!(
        u16::from_be_bytes([udp[2], udp[3]]),
        vethbpf_common::VXLAN_PORT
    );
    assert_eq!(
        u16::from_be_bytes([udp[4], udp[5]]) as usize,
        out.len() - 34,
        "UDP length"
    );
    assert_eq!(&udp[6..8], &[0, 0], "no UDP checksum");
    assert_eq!(&udp[8..16], &[0x08, 0, 0, 0, 0, 0, 1, 0], "VNI 1");
    out[50..].to_vec()
}
