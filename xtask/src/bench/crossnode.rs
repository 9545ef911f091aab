//! Cross-node: a pod on node 1 to a pod on node 2, two node namespaces on an underlay
//! namespace whose bridge stands in for the switch, built five ways and measured
//! round-robin: vethbpf direct routing, vethbpf VXLAN, the kernel doing host-gw,
//! Flannel's VXLAN stack by hand, and node to node on the underlay (the ceiling).
//! Each measured path is checked afterwards to have carried the traffic (vethbpf's
//! per-node counters, the kernel's forwarding counter, the tunnel device's).
//!
//! Then the control plane of a cluster: `node add` until the first packet gets
//! through, a lease appearing in etcd until the first packet, and an agent's start
//! until 100 remote nodes are installed.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{
    gap::{self, NoGap},
    inplace, measure,
    report::{self, DpSample, DpSummary, Ratio, Table, Target, target},
    stats::median,
    sys::{self, Teardown, in_ns, ip, netns_add},
    topo::{self, Contender, GATEWAY, Vethbpf},
};

const CLUSTER_CIDR: &str = "10.244.0.0/16";
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);
/// The underlay bridge's own address (where etcd listens).
const UNDERLAY_GW: &str = "192.168.100.254";
const ETCD_URL: &str = "http://192.168.100.254:2379";

fn node_ip(i: u8) -> String {
    format!("192.168.100.{i}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CrossKind {
    Direct,
    Vxlan,
    HostGw,
    Flannel,
    NodeToNode,
}

impl CrossKind {
    pub const ALL: [CrossKind; 5] = [
        CrossKind::Direct,
        CrossKind::Vxlan,
        CrossKind::HostGw,
        CrossKind::Flannel,
        CrossKind::NodeToNode,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CrossKind::Direct => "vethbpf-direct",
            CrossKind::Vxlan => "vethbpf-vxlan",
            CrossKind::HostGw => "host-gw",
            CrossKind::Flannel => "flannel",
            CrossKind::NodeToNode => "node-to-node",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            CrossKind::Direct => {
                "vethbpf --overlay none: from_pod redirect_neigh to node 2, from_uplink redirect_peer"
            }
            CrossKind::Vxlan => {
                "vethbpf --overlay vxlan: from_pod encapsulates + redirect_neigh; from_uplink decapsulates (GSO bursts: VXLAN device, from_tunnel) + redirect_peer"
            }
            CrossKind::HostGw => {
                "kernel host-gw: proxy_arp veths, /32 routes, pod CIDR via the node address, ip_forward=1"
            }
            CrossKind::Flannel => {
                "Flannel by hand: cni0 bridge, flannel.1 VXLAN (VNI 1, 8472, nolearning), route + neigh + fdb"
            }
            CrossKind::NodeToNode => "node 1 to node 2 on the underlay (ceiling)",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub what: String,
    pub samples_ms: Vec<f64>,
    pub median_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CrossResults {
    /// Name, description, "ok" or why it was skipped.
    pub contenders: Vec<(String, String, String)>,
    pub samples: Vec<DpSample>,
    pub summary: Vec<DpSummary>,
    /// Every contender against node-to-node, and VXLAN against Flannel.
    pub ratios: Vec<Ratio>,
    /// Contender -> what showed that the path carried the traffic.
    pub path_checks: Vec<(String, String)>,
    pub timings: Vec<Timing>,
    pub timing_errors: Vec<String>,
    pub targets: Vec<Target>,
    /// vethbpf's programs in place, per vethbpf contender (after the rounds).
    pub inplace: inplace::Report,
}

/// The two-node world of one contender; `contender` measures pod A -> pod B.
struct Built {
    kind: CrossKind,
    contender: Contender,
    n1: String,
    vb1: Option<Vethbpf>,
    /// Both nodes' pinned programs (vethbpf contenders only).
    programs: Vec<(String, std::path::PathBuf)>,
}

/// Underlay namespace with `br0`, and nodes `n1`, `n2` wired to it (eth0,
/// 192.168.100.N/24).
fn underlay(tag: &str, td: &mut Teardown) -> Result<(String, String, String)> {
    let p = sys::prefix();
    let (ul, n1, n2) = (
        format!("{p}{tag}-ul"),
        format!("{p}{tag}-n1"),
        format!("{p}{tag}-n2"),
    );
    for n in [&ul, &n1, &n2] {
        netns_add(n)?;
        td.netns(n);
    }
    ip(Some(&ul), &["link", "add", "br0", "type", "bridge"])?;
    ip(
        Some(&ul),
        &["addr", "add", &format!("{UNDERLAY_GW}/24"), "dev", "br0"],
    )?;
    ip(Some(&ul), &["link", "set", "br0", "up"])?;
    for (i, n) in [(1u8, &n1), (2, &n2)] {
        let port = format!("p{i}");
        ip(
            Some(&ul),
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", n,
            ],
        )?;
        ip(Some(&ul), &["link", "set", &port, "master", "br0", "up"])?;
        ip(
            Some(n),
            &["addr", "add", &format!("{}/24", node_ip(i)), "dev", "eth0"],
        )?;
        ip(Some(n), &["link", "set", "eth0", "up"])?;
        ip(Some(n), &["link", "set", "lo", "up"])?;
    }
    Ok((ul, n1, n2))
}

fn vethbpf_node(
    env: &topo::Env,
    node: &str,
    dir: &str,
    pod_cidr: &str,
    overlay: &str,
    td: &mut Teardown,
) -> Result<Vethbpf> {
    let Some(bin) = env.vethbpf.clone() else {
        bail!("the vethbpf binary is not available");
    };
    let vb = Vethbpf::new(bin, node, &env.tmp.join(dir), td)?;
    let down = vb.clone();
    td.push(format!("vethbpf down in {node}"), move || {
        down.cmd(&["down"]).map(|_| ())
    });
    vb.cmd(&[
        "up",
        "--pod-cidr",
        pod_cidr,
        "--gateway",
        GATEWAY,
        "--cluster-cidr",
        CLUSTER_CIDR,
        "--overlay",
        overlay,
        "--uplink",
        "eth0",
    ])?;
    Ok(vb)
}

fn build(kind: CrossKind, env: &topo::Env) -> Result<Built> {
    let tag = match kind {
        CrossKind::Direct => "xdirect",
        CrossKind::Vxlan => "xvxlan",
        CrossKind::HostGw => "xhostgw",
        CrossKind::Flannel => "xflannel",
        CrossKind::NodeToNode => "xnode",
    };
    let mut td = Teardown::new(kind.name());
    let (_ul, n1, n2) = underlay(tag, &mut td)?;
    let p = sys::prefix();
    let (pa, pb) = (format!("{p}{tag}-a"), format!("{p}{tag}-b"));
    let mut vb1 = None;
    let mut programs = Vec::new();
    let (client, server, server_ip) = match kind {
        CrossKind::NodeToNode => (n1.clone(), n2.clone(), node_ip(2).parse()?),
        CrossKind::Direct | CrossKind::Vxlan => {
            let overlay = if kind == CrossKind::Direct {
                "none"
            } else {
                "vxlan"
            };
            let a = vethbpf_node(
                env,
                &n1,
                &format!("{tag}-n1"),
                "10.244.1.0/24",
                overlay,
                &mut td,
            )?;
            let b = vethbpf_node(
                env,
                &n2,
                &format!("{tag}-n2"),
                "10.244.2.0/24",
                overlay,
                &mut td,
            )?;
            a.cmd(&[
                "node",
                "add",
                "n2",
                "--pod-cidr",
                "10.244.2.0/24",
                "--address",
                &node_ip(2),
            ])?;
            b.cmd(&[
                "node",
                "add",
                "n1",
                "--pod-cidr",
                "10.244.1.0/24",
                "--address",
                &node_ip(1),
            ])?;
            for (vb, pod, addr) in [(&a, &pa, POD_A), (&b, &pb, POD_B)] {
                td.netns(pod);
                vb.add(pod, Some(addr), None)?;
            }
            programs = inplace::node_programs("node 1", a.bpffs_dir());
            programs.extend(inplace::node_programs("node 2", b.bpffs_dir()));
            vb1 = Some(a);
            (pa, pb, POD_B)
        }
        CrossKind::HostGw => {
            for n in [&pa, &pb] {
                netns_add(n)?;
                td.netns(n);
            }
            for (node, pod, addr, other_cidr, other) in [
                (&n1, &pa, POD_A, "10.244.2.0/24", node_ip(2)),
                (&n2, &pb, POD_B, "10.244.1.0/24", node_ip(1)),
            ] {
                topo::routing_node_prepare(node)?;
                for args in topo::routing_recipe(node, pod, "vbh0", addr) {
                    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                    sys::run(Command::new(refs[0]).args(&refs[1..]))?;
                }
                ip(
                    Some(node),
                    &["route", "add", other_cidr, "via", &other, "dev", "eth0"],
                )?;
            }
            (pa, pb, POD_B)
        }
        CrossKind::Flannel => {
            for n in [&pa, &pb] {
                netns_add(n)?;
                td.netns(n);
            }
            flannel(&n1, &n2, &pa, &pb)?;
            (pa, pb, POD_B)
        }
    };
    Ok(Built {
        kind,
        contender: Contender {
            name: kind.name(),
            client_ns: client,
            server_ns: server,
            server_ip: server_ip.into(),
            teardown: td,
        },
        n1,
        vb1,
        programs,
    })
}

/// What flanneld and the bridge CNI plugin set up, typed by hand: per node a `cni0`
/// bridge with the subnet's first address, the pod on it (MTU 1450), `flannel.1`
/// (VNI 1, port 8472, no learning) with the subnet's .0/32, and for the other node a
/// route via its `flannel.1` address (onlink), a permanent neighbour entry and an
/// FDB entry to its underlay address.
fn flannel(n1: &str, n2: &str, pa: &str, pb: &str) -> Result<()> {
    let nodes = [(n1, pa, 1u8, POD_A), (n2, pb, 2u8, POD_B)];
    for (node, pod, i, addr) in nodes {
        sys::sysctls(node, &[("net.ipv4.ip_forward", "1")])?;
        ip(Some(node), &["link", "add", "cni0", "type", "bridge"])?;
        ip(
            Some(node),
            &["addr", "add", &format!("10.244.{i}.1/24"), "dev", "cni0"],
        )?;
        ip(Some(node), &["link", "set", "cni0", "up"])?;
        ip(
            Some(node),
            &[
                "link", "add", "veth0", "mtu", "1450", "type", "veth", "peer", "name", "eth0",
                "mtu", "1450", "netns", pod,
            ],
        )?;
        ip(
            Some(node),
            &["link", "set", "veth0", "master", "cni0", "up"],
        )?;
        ip(
            Some(pod),
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        )?;
        ip(Some(pod), &["link", "set", "eth0", "up"])?;
        ip(
            Some(pod),
            &["route", "add", "default", "via", &format!("10.244.{i}.1")],
        )?;
        ip(
            Some(node),
            &[
                "link",
                "add",
                "flannel.1",
                "type",
                "vxlan",
                "id",
                "1",
                "local",
                &node_ip(i),
                "dev",
                "eth0",
                "dstport",
                "8472",
                "nolearning",
            ],
        )?;
        ip(
            Some(node),
            &["link", "set", "flannel.1", "mtu", "1450", "up"],
        )?;
        ip(
            Some(node),
            &[
                "addr",
                "add",
                &format!("10.244.{i}.0/32"),
                "dev",
                "flannel.1",
            ],
        )?;
    }
    let mac = |node: &str| -> Result<String> {
        let out = ip(Some(node), &["-j", "link", "show", "flannel.1"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["address"]
            .as_str()
            .map(str::to_string)
            .context("flannel.1 has no MAC")
    };
    for ((node, _, _, _), (other, _, j, _)) in [(nodes[0], nodes[1]), (nodes[1], nodes[0])] {
        let other_mac = mac(other)?;
        let vtep = format!("10.244.{j}.0");
        ip(
            Some(node),
            &[
                "route",
                "add",
                &format!("10.244.{j}.0/24"),
                "via",
                &vtep,
                "dev",
                "flannel.1",
                "onlink",
            ],
        )?;
        ip(
            Some(node),
            &[
                "neigh",
                "add",
                &vtep,
                "lladdr",
                &other_mac,
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ],
        )?;
        sys::run(in_ns(node, "bridge").args([
            "fdb",
            "append",
            &other_mac,
            "dev",
            "flannel.1",
            "dst",
            &node_ip(j),
        ]))?;
    }
    Ok(())
}

/// `Ip: ForwDatagrams` of a namespace (/proc/net/snmp).
fn forwarded(ns: &str) -> Result<u64> {
    sys::in_netns(ns, || {
        // /proc/net is the thread group leader's namespace; this thread's is here.
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
        let (head, vals) = (
            ip.next().context("no Ip header")?,
            ip.next().context("no Ip values")?,
        );
        let col = head
            .split_whitespace()
            .position(|h| h == "ForwDatagrams")
            .context("no ForwDatagrams")?;
        Ok(vals
            .split_whitespace()
            .nth(col)
            .context("short line")?
            .parse()?)
    })
}

fn tx_packets(ns: &str, dev: &str) -> Result<u64> {
    link_packets(ns, dev, "tx")
}

/// A link's packet counter, `dir` "tx" or "rx".
fn link_packets(ns: &str, dev: &str, dir: &str) -> Result<u64> {
    let out = ip(Some(ns), &["-j", "-s", "link", "show", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["stats64"][dir]["packets"]
        .as_u64()
        .with_context(|| format!("no {dir} counter of {dev}"))
}

/// What proves that the measured path carried the traffic: (counter, value).
fn path_counter(b: &Built) -> Result<(String, u64)> {
    Ok(match b.kind {
        CrossKind::Direct | CrossKind::Vxlan => {
            let vb = b.vb1.as_ref().context("no vethbpf")?;
            let list: serde_json::Value =
                serde_json::from_str(&vb.cmd(&["-o", "json", "node", "list"])?)?;
            let sent = list[0]["sent"]["packets"]
                .as_u64()
                .context("no sent counter")?;
            let fwd = forwarded(&b.n1)?;
            let extra = if b.kind == CrossKind::Vxlan {
                // tx: frames from_pod could not wrap itself (0 when every one
                // fit); rx: what came up through the device (GSO bursts);
                // from_uplink decapsulates the rest itself.
                format!(
                    ", vethbpf.vx tx {}, rx {}",
                    tx_packets(&b.n1, "vethbpf.vx")?,
                    link_packets(&b.n1, "vethbpf.vx", "rx")?
                )
            } else {
                String::new()
            };
            (
                format!("node 1 NODE_STATS sent (kernel forwarded {fwd}{extra})"),
                sent,
            )
        }
        CrossKind::HostGw => ("node 1 ip ForwDatagrams".into(), forwarded(&b.n1)?),
        CrossKind::Flannel => (
            "node 1 flannel.1 tx packets".into(),
            tx_packets(&b.n1, "flannel.1")?,
        ),
        CrossKind::NodeToNode => ("node 1 eth0 tx packets".into(), tx_packets(&b.n1, "eth0")?),
    })
}

/// Knobs from the run's plan.
pub struct CrossPlan {
    pub rounds: u32,
    pub secs: u32,
}

pub fn run(
    plan: &CrossPlan,
    env: &topo::Env,
    progress: &mut dyn FnMut(&str),
) -> Result<CrossResults> {
    let mut r = CrossResults::default();
    progress("== cross-node: building 5 contenders");
    let mut built = Vec::new();
    for kind in CrossKind::ALL {
        sys::check_interrupt()?;
        match build(kind, env).and_then(|mut b| b.contender.start_servers().map(|_| b)) {
            Ok(b) => {
                progress(&format!("  {:<14} ready", kind.name()));
                r.contenders
                    .push((kind.name().into(), kind.describe().into(), "ok".into()));
                built.push(b);
            }
            Err(e) => {
                sys::check_interrupt()?;
                progress(&format!("  {:<14} SKIPPED: {e:#}", kind.name()));
                r.contenders
                    .push((kind.name().into(), kind.describe().into(), format!("{e:#}")));
            }
        }
    }
    let before: Vec<Option<u64>> = built
        .iter()
        .map(|b| path_counter(b).ok().map(|c| c.1))
        .collect();
    for round in 1..=plan.rounds {
        for b in &built {
            sys::check_interrupt()?;
            let c = &b.contender;
            let mut s = DpSample {
                round,
                contender: c.name,
                latency: None,
                tput_1: None,
                tput_4: None,
                connect: None,
                errors: Vec::new(),
            };
            match measure::latency(c, plan.secs) {
                Ok(l) => s.latency = Some(l),
                Err(e) => s.errors.push(format!("latency: {e:#}")),
            }
            match measure::throughput(c, plan.secs, 1) {
                Ok(t) => s.tput_1 = Some(t),
                Err(e) => s.errors.push(format!("1-stream: {e:#}")),
            }
            match measure::throughput(c, plan.secs, 4) {
                Ok(t) => s.tput_4 = Some(t),
                Err(e) => s.errors.push(format!("4-stream: {e:#}")),
            }
            progress(&format!(
                "  [round {round}/{}] {:<14} RTT p50 {:>6} us | 1-stream {:>6} Gbit/s | 4-stream {:>6} Gbit/s{}",
                plan.rounds,
                c.name,
                s.latency
                    .as_ref()
                    .map_or("-".into(), |l| format!("{:.1}", l.p50_us)),
                s.tput_1
                    .as_ref()
                    .map_or("-".into(), |t| format!("{:.2}", t.gbps)),
                s.tput_4
                    .as_ref()
                    .map_or("-".into(), |t| format!("{:.2}", t.gbps)),
                if s.errors.is_empty() {
                    String::new()
                } else {
                    format!("  errors: {}", s.errors.join("; "))
                }
            ));
            r.samples.push(s);
        }
    }
    for (b, before) in built.iter().zip(before) {
        let check = match (path_counter(b), before) {
            (Ok((what, after)), Some(before)) if after > before + 10_000 => {
                format!("ok: {what} +{}", after - before)
            }
            (Ok((what, after)), before) => format!(
                "NOT SHOWN: {what} went from {} to {after}",
                before.map_or("?".into(), |b| b.to_string())
            ),
            (Err(e), _) => format!("NOT SHOWN: {e:#}"),
        };
        progress(&format!("  path check {:<14} {check}", b.kind.name()));
        r.path_checks.push((b.kind.name().into(), check));
    }
    for b in built.iter().filter(|b| !b.programs.is_empty()) {
        r.inplace.take(&b.contender, &b.programs, progress)?;
    }
    progress("  tearing the cross-node contenders down");
    drop(built);
    let names: Vec<&'static str> = CrossKind::ALL
        .iter()
        .filter(|k| r.contenders.iter().any(|c| c.0 == k.name() && c.2 == "ok"))
        .map(|k| k.name())
        .collect();
    r.summary = names
        .iter()
        .map(|n| report::summarize(n, &r.samples))
        .collect();
    r.ratios = report::ratios(&r.summary, &["node-to-node", "host-gw", "flannel"]);

    progress("== cross-node control plane");
    match node_add_to_first_packet(env, 5) {
        Ok(t) => r.timings.push(t),
        Err(e) => r
            .timing_errors
            .push(format!("node add -> first packet: {e:#}")),
    }
    sys::check_interrupt()?;
    match agent_timings(env, progress) {
        Ok(ts) => r.timings.extend(ts),
        Err(e) => r.timing_errors.push(format!("agent: {e:#}")),
    }
    for t in &r.timings {
        progress(&format!(
            "  {}: median {:.1} ms of {:?}",
            t.what, t.median_ms, t.samples_ms
        ));
    }
    for e in &r.timing_errors {
        progress(&format!("  not measured: {e}"));
    }
    r.targets = targets(&r);
    Ok(r)
}

/// A UDP echo in `server` at `ip:port` for as long as the namespace lives.
fn udp_echo(server: &str, ip: Ipv4Addr, port: u16) -> Result<()> {
    let sock = sys::in_netns(server, move || {
        let s = UdpSocket::bind(SocketAddr::from((ip, port)))?;
        Ok(s)
    })?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        sock.set_read_timeout(Some(Duration::from_secs(30))).ok();
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    Ok(())
}

/// Sends a datagram every 100 us from `client` to `ip:port` until one comes back;
/// returns when that happened.
fn first_reply(
    client: &str,
    ip: Ipv4Addr,
    port: u16,
    limit: Duration,
) -> Result<std::thread::JoinHandle<Result<Instant>>> {
    sys::in_netns_thread(client, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(SocketAddr::from((ip, port)))?;
        s.set_nonblocking(true)?;
        let end = Instant::now() + limit;
        let mut buf = [0u8; 64];
        while Instant::now() < end {
            // Errors (no route yet, ICMP unreachable) are part of the wait.
            let _ = s.send(b"probe");
            if s.recv(&mut buf).is_ok() {
                return Ok(Instant::now());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        bail!("no reply within {limit:?}")
    })
}

fn timing(what: &str, samples: Vec<f64>) -> Timing {
    Timing {
        what: what.into(),
        median_ms: median(&samples),
        samples_ms: samples,
    }
}

/// Direct routing, node 2 knowing node 1 already: from starting `node add n2` on
/// node 1 to the first echo from pod B.
fn node_add_to_first_packet(env: &topo::Env, reps: usize) -> Result<Timing> {
    let mut td = Teardown::new("node add timing");
    let (_ul, n1, n2) = underlay("xadd", &mut td)?;
    let p = sys::prefix();
    let (pa, pb) = (format!("{p}xadd-a"), format!("{p}xadd-b"));
    let a = vethbpf_node(env, &n1, "xadd-n1", "10.244.1.0/24", "none", &mut td)?;
    let b = vethbpf_node(env, &n2, "xadd-n2", "10.244.2.0/24", "none", &mut td)?;
    b.cmd(&[
        "node",
        "add",
        "n1",
        "--pod-cidr",
        "10.244.1.0/24",
        "--address",
        &node_ip(1),
    ])?;
    for (vb, pod, addr) in [(&a, &pa, POD_A), (&b, &pb, POD_B)] {
        td.netns(pod);
        vb.add(pod, Some(addr), None)?;
    }
    udp_echo(&pb, POD_B, 9999)?;
    let mut samples = Vec::new();
    for _ in 0..reps {
        sys::check_interrupt()?;
        let prober = first_reply(&pa, POD_B, 9999, Duration::from_secs(5))?;
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        a.cmd(&[
            "node",
            "add",
            "n2",
            "--pod-cidr",
            "10.244.2.0/24",
            "--address",
            &node_ip(2),
        ])?;
        let got = prober
            .join()
            .map_err(|_| anyhow::anyhow!("prober panicked"))??;
        samples.push(got.duration_since(t0).as_secs_f64() * 1e3);
        a.cmd(&["node", "del", "n2"])?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(timing(
        "node add -> first packet (incl. the command's start)",
        samples,
    ))
}

/// etcd and agents: a lease appearing (seen by an etcd watcher) until the first
/// packet, and an agent's start until 100 remote nodes are installed.
fn agent_timings(env: &topo::Env, progress: &mut dyn FnMut(&str)) -> Result<Vec<Timing>> {
    if Command::new("etcd").arg("--version").output().is_err() {
        bail!("etcd is not installed (cargo xtask install-deps: etcd-server)");
    }
    let Some(bin) = env.vethbpf.clone() else {
        bail!("the vethbpf binary is not available");
    };
    let mut td = Teardown::new("agent timing");
    let (ul, n1, n2) = underlay("xagent", &mut td)?;
    let dir = env.tmp.join("xagent-etcd");
    std::fs::create_dir_all(&dir)?;
    let etcd = in_ns(&ul, "etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            ETCD_URL,
            "--advertise-client-urls",
            ETCD_URL,
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "bench=http://127.0.0.1:2380",
            "--log-level",
            "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting etcd")?;
    td.child("etcd", etcd);
    sys::wait_tcp(&n1, UNDERLAY_GW.parse()?, 2379, Duration::from_secs(10))?;

    let node_vethbpf = |node: &str, dir: &str, td: &mut Teardown| -> Result<Vethbpf> {
        let vb = Vethbpf::new(bin.clone(), node, &env.tmp.join(dir), td)?;
        let down = vb.clone();
        td.push(format!("vethbpf down in {node}"), move || {
            down.cmd(&["down"]).map(|_| ())
        });
        Ok(vb)
    };
    let a = node_vethbpf(&n1, "xagent-n1", &mut td)?;
    let b = node_vethbpf(&n2, "xagent-n2", &mut td)?;
    let start_agent = |vb: &Vethbpf, node: &str, name: &str| -> Result<Child> {
        vb.command(&[
            "agent",
            "--etcd",
            ETCD_URL,
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--node-name",
            name,
            "--uplink",
            "eth0",
            "--lease-ttl",
            "30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting the agent in {node}"))
    };
    let mut agent_a = start_agent(&a, &n1, "n1")?;
    let p = sys::prefix();
    let (pa, pb) = (format!("{p}xagent-a"), format!("{p}xagent-b"));
    wait_until(Duration::from_secs(15), || {
        Ok(a.cmd(&["status", "-o", "json"])
            .is_ok_and(|s| s.contains("\"cluster\"")))
    })?;
    td.netns(&pa);
    a.cmd(&["endpoint", "add", &pa])?;
    // Node 2 is up with a subnet of its own before its agent starts (which keeps
    // it), so that its pod exists when the lease appears.
    b.cmd(&[
        "up",
        "--pod-cidr",
        "10.244.200.0/24",
        "--gateway",
        GATEWAY,
        "--cluster-cidr",
        CLUSTER_CIDR,
        "--uplink",
        "eth0",
    ])?;
    td.netns(&pb);
    b.add(&pb, Some(Ipv4Addr::new(10, 244, 200, 3)), None)?;
    let pb_ip = Ipv4Addr::new(10, 244, 200, 3);
    udp_echo(&pb, pb_ip, 9999)?;

    let mut lease = Vec::new();
    for _ in 0..3 {
        sys::check_interrupt()?;
        let mut watch = in_ns(&ul, "etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                ETCD_URL,
                "watch",
                "/vethbpf/network/subnets/10.244.200.0-24",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("etcdctl watch")?;
        let out = watch.stdout.take().context("watch stdout")?;
        let seen = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(out).lines();
            lines.next().map(|_| Instant::now())
        });
        std::thread::sleep(Duration::from_millis(300));
        let prober = first_reply(&pa, pb_ip, 9999, Duration::from_secs(10))?;
        let mut agent_b = start_agent(&b, &n2, "n2")?;
        let got = prober
            .join()
            .map_err(|_| anyhow::anyhow!("prober panicked"))?;
        let _ = watch.kill();
        let _ = watch.wait();
        let at = seen
            .join()
            .map_err(|_| anyhow::anyhow!("watch reader panicked"))?;
        let _ = agent_b.kill();
        let _ = agent_b.wait();
        let (got, at) = (got?, at.context("the watch saw no lease")?);
        lease.push(got.saturating_duration_since(at).as_secs_f64() * 1e3);
        // Gone again: node 1 forgets node 2.
        sys::run(in_ns(&ul, "etcdctl").env("ETCDCTL_API", "3").args([
            "--endpoints",
            ETCD_URL,
            "del",
            "/vethbpf/network/subnets/10.244.200.0-24",
        ]))?;
        wait_until(Duration::from_secs(10), || {
            Ok(!a.cmd(&["node", "list"])?.contains("n2"))
        })?;
    }

    // 100 leases of nodes on the underlay, then node 1's agent from a node that is
    // down: its start until every one of them is a remote node.
    progress("  writing 100 leases");
    let _ = agent_a.kill();
    let _ = agent_a.wait();
    a.cmd(&["down"])?;
    for i in 0..100u32 {
        let key = format!("/vethbpf/network/subnets/10.244.{}.0-24", 10 + i);
        let value = format!(
            "{{\"node\":\"fake{i}\",\"address\":\"192.168.100.{}\"}}",
            10 + i
        );
        sys::run(in_ns(&ul, "etcdctl").env("ETCDCTL_API", "3").args([
            "--endpoints",
            ETCD_URL,
            "put",
            &key,
            &value,
        ]))?;
    }
    let t0 = Instant::now();
    agent_a = start_agent(&a, &n1, "n1")?;
    wait_until(Duration::from_secs(60), || {
        let list = a.cmd(&["-o", "json", "node", "list"]).unwrap_or_default();
        Ok(serde_json::from_str::<serde_json::Value>(&list)
            .ok()
            .and_then(|v| v.as_array().map(|a| a.len()))
            .unwrap_or(0)
            >= 100)
    })?;
    let resync = t0.elapsed().as_secs_f64() * 1e3;
    let _ = agent_a.kill();
    let _ = agent_a.wait();
    Ok(vec![
        timing("lease in etcd -> first packet (watch seen to echo)", lease),
        timing(
            "agent start -> 100 remote nodes installed (incl. up)",
            vec![resync],
        ),
    ])
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        sys::check_interrupt()?;
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("not within {limit:?}")
}

/// Issue 11's targets, against this run's node-to-node, host-gw and Flannel. "Half
/// of a gap closed" is graded only where there is a gap (`gap.rs`): where host-gw
/// matches node to node, asking for half of its distance asks for nothing, or for
/// more than the ceiling when it is ahead.
fn targets(r: &CrossResults) -> Vec<Target> {
    let get = |name: &str, f: fn(&DpSummary) -> f64| {
        r.summary
            .iter()
            .find(|s| s.contender == name)
            .map_or(f64::NAN, f)
    };
    let tput: fn(&DpSummary) -> f64 = |s| s.gbps_1;
    let p50: fn(&DpSummary) -> f64 = |s| s.p50_us;
    let x = |v: f64| format!("{v:.3}x");
    // Ours against node-to-node must reach halfway from the reference to 1.0x.
    let half_gap = |name: &str, ours: &str, reference: &str, f: fn(&DpSummary) -> f64, lower| {
        let n2n = get("node-to-node", f);
        let (mine, theirs) = (get(ours, f) / n2n, get(reference, f) / n2n);
        let lim = (1.0 + theirs) / 2.0;
        let wanted = format!(
            "{} {lim:.3}x ({reference} {theirs:.3}x)",
            if lower { "<=" } else { ">=" }
        );
        match gap::closed(
            &r.samples,
            &r.summary,
            [ours, reference, "node-to-node"],
            f,
            lower,
        ) {
            Ok(_) => target(name, wanted, mine, lim, lower, x(mine)),
            Err(NoGap { noise, .. }) => Target {
                name: name.into(),
                target: wanted,
                measured: format!(
                    "{}; no gap: {reference} {theirs:.3}x of node-to-node, rounds +-{noise:.2}",
                    x(mine)
                ),
                pass: None,
                shortfall: None,
            },
        }
    };
    let mut t = vec![
        half_gap(
            "direct: 1-stream vs node-to-node",
            "vethbpf-direct",
            "host-gw",
            tput,
            false,
        ),
        half_gap(
            "direct: p50 RTT vs node-to-node",
            "vethbpf-direct",
            "host-gw",
            p50,
            true,
        ),
    ];
    // VXLAN: 1.1x Flannel's throughput, half of its p50 gap closed.
    let v_vs_f = get("vethbpf-vxlan", tput) / get("flannel", tput);
    t.push(target(
        "vxlan: 1-stream vs flannel",
        ">= 1.10x".into(),
        v_vs_f,
        1.1,
        false,
        x(v_vs_f),
    ));
    t.push(half_gap(
        "vxlan: p50 RTT vs node-to-node",
        "vethbpf-vxlan",
        "flannel",
        p50,
        true,
    ));
    t
}

/// The cross-node tables, as printed at the end of a run.
pub fn render(r: &CrossResults) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ncross-node (pod on node 1 -> pod on node 2), medians over rounds:"
    );
    for (name, desc, status) in &r.contenders {
        let _ = writeln!(
            out,
            "  {name:<14} {desc}{}",
            if status == "ok" {
                String::new()
            } else {
                format!("  SKIPPED: {status}")
            }
        );
    }
    let mut t = Table::new(&[
        "contender",
        "p50 us",
        "p99 us",
        "1-stream Gbit/s",
        "4-stream Gbit/s",
        "CPU ms/Gbit",
        "vs node-to-node (1-stream, p50)",
    ]);
    let n2n = r.summary.iter().find(|s| s.contender == "node-to-node");
    for s in &r.summary {
        let rel = n2n.map_or("-".into(), |n| {
            format!("{:.3}x, {:.3}x", s.gbps_1 / n.gbps_1, s.p50_us / n.p50_us)
        });
        t.row(vec![
            s.contender.to_string(),
            format!("{:.1}", s.p50_us),
            format!("{:.1}", s.p99_us),
            format!("{:.2}", s.gbps_1),
            format!("{:.2}", s.gbps_4),
            format!("{:.1}", s.cpu_s_per_gbit_1 * 1e3),
            rel,
        ]);
    }
    out.push_str(&t.render());
    for (name, check) in &r.path_checks {
        let _ = writeln!(out, "  path {name:<14} {check}");
    }
    for tm in &r.timings {
        let _ = writeln!(
            out,
            "  {}: median {:.1} ms ({} samples)",
            tm.what,
            tm.median_ms,
            tm.samples_ms.len()
        );
    }
    for e in &r.timing_errors {
        let _ = writeln!(out, "  not measured: {e}");
    }
    out.push_str(&inplace::render(&r.inplace));
    let mut t = Table::new(&["cross-node target", "target", "measured", "result"]);
    for x in &r.targets {
        t.row(vec![
            x.name.clone(),
            x.target.clone(),
            x.measured.clone(),
            match x.pass {
                Some(true) => "met".into(),
                Some(false) => format!("short {}", x.shortfall.clone().unwrap_or_default()),
                None => "n/a".into(),
            },
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(rows: &[(&'static str, f64, f64)]) -> CrossResults {
        let row = |&(contender, gbps, p50): &(&'static str, f64, f64)| {
            DpSummary::of(contender, p50, gbps)
        };
        CrossResults {
            contenders: Vec::new(),
            samples: Vec::new(),
            summary: rows.iter().map(row).collect(),
            ratios: Vec::new(),
            path_checks: Vec::new(),
            timings: Vec::new(),
            timing_errors: Vec::new(),
            targets: Vec::new(),
            inplace: inplace::Report::default(),
        }
    }

    fn pass(t: &[Target], name: &str) -> Option<bool> {
        t.iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no target {name}"))
            .pass
    }

    #[test]
    fn half_a_gap_is_graded_only_where_host_gw_is_behind_node_to_node() {
        // The second run of 2026-12-02: host-gw 1.044x node to node's throughput.
        let t = targets(&results(&[
            ("vethbpf-direct", 39.70, 18.2),
            ("vethbpf-vxlan", 34.81, 19.6),
            ("host-gw", 39.83, 18.8),
            ("flannel", 34.65, 22.3),
            ("node-to-node", 38.17, 16.8),
        ]));
        assert_eq!(pass(&t, "direct: 1-stream vs node-to-node"), None);
        assert_eq!(pass(&t, "direct: p50 RTT vs node-to-node"), Some(false));
        assert_eq!(pass(&t, "vxlan: p50 RTT vs node-to-node"), Some(false));
        assert_eq!(pass(&t, "vxlan: 1-stream vs flannel"), Some(false));
        // The first: host-gw behind (0.864x); direct at 0.988x closes more than half.
        let t = targets(&results(&[
            ("vethbpf-direct", 38.62, 18.9),
            ("vethbpf-vxlan", 34.14, 19.7),
            ("host-gw", 33.76, 19.3),
            ("flannel", 32.67, 23.2),
            ("node-to-node", 39.08, 17.2),
        ]));
        assert_eq!(pass(&t, "direct: 1-stream vs node-to-node"), Some(true));
        assert_eq!(pass(&t, "vxlan: p50 RTT vs node-to-node"), Some(true));
    }
}
