//! The datapath contenders: the same two-pod scenario (pod A client, pod B server)
//! built six ways over IPv4, and four of them (vethbpf, bridge, kernel routing, the
//! veth floor) again over IPv6, each in namespaces of its own.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::sys::{self, Teardown, in_ns, ip, netns_add};

/// Ports of the long-lived servers in pod B.
pub const SOCKPERF_PORT: u16 = 11111;
pub const IPERF_PORT: u16 = 5201;
pub const CONNECT_PORT: u16 = 7001;
/// The IPv6 latency ping-pong (`measure::pingpong`), per measurement.
pub const PINGPONG_PORT: u16 = 7002;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
const POD_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 2);
const POD_B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 3);
const POD_CIDR6: &str = "fd00:10:244::/64";
/// The EUI-64 link-local address of ee:ee:ee:ee:ee:ee: vethbpf's IPv6 gateway, and
/// the host veths' own address in the kernel-routing model (Calico's IPv6 recipe).
const GATEWAY6: &str = "fe80::ecee:eeff:feee:eeee";
/// The pods' gateway in the vethbpf and kernel-routing models.
pub const GATEWAY: &str = "169.254.1.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Vethbpf,
    Bridge,
    Routing,
    Ptp,
    Veth,
    Loopback,
    /// The IPv6 twins (pods with IPv6 only).
    Vethbpf6,
    Bridge6,
    Routing6,
    Veth6,
    /// The egress section's contenders (`super::egress`), not in [`Kind::ALL`].
    EgressVethbpf,
    EgressIptables,
    EgressNode,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Vethbpf,
        Kind::Bridge,
        Kind::Routing,
        Kind::Ptp,
        Kind::Veth,
        Kind::Loopback,
        Kind::Vethbpf6,
        Kind::Bridge6,
        Kind::Routing6,
        Kind::Veth6,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Vethbpf => "vethbpf",
            Kind::Bridge => "bridge",
            Kind::Routing => "routing",
            Kind::Ptp => "ptp",
            Kind::Veth => "veth",
            Kind::Loopback => "loopback",
            Kind::Vethbpf6 => "vethbpf6",
            Kind::Bridge6 => "bridge6",
            Kind::Routing6 => "routing6",
            Kind::Veth6 => "veth6",
            Kind::EgressVethbpf => "egress-vethbpf",
            Kind::EgressIptables => "egress-iptables",
            Kind::EgressNode => "egress-node",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::Vethbpf => "vethbpf up + 2x endpoint add: tc ingress eBPF, bpf_redirect_peer",
            Kind::Bridge => "Linux bridge in a node namespace, pods on one /24",
            Kind::Routing => {
                "host veths with proxy_arp, /32 routes, ip_forward=1, default via 169.254.1.1 onlink"
            }
            Kind::Ptp => {
                "CNI ptp plugin (containernetworking-plugins) + host-local, via the CNI protocol"
            }
            Kind::Veth => "one veth pair straight between the two pod namespaces (floor)",
            Kind::Loopback => "127.0.0.1 inside one namespace (ceiling)",
            Kind::Vethbpf6 => {
                "IPv6: vethbpf up (IPv6 pod CIDR) + 2x endpoint add: NDP answered in eBPF, bpf_redirect_peer"
            }
            Kind::Bridge6 => "IPv6: Linux bridge in a node namespace, pods on one /64",
            Kind::Routing6 => {
                "IPv6: host veths with the gateway's EUI-64 link-local address, /128 routes, forwarding=1, default via fe80::ecee:eeff:feee:eeee"
            }
            Kind::Veth6 => "IPv6: one veth pair straight between the two pod namespaces (floor)",
            Kind::EgressVethbpf => {
                "vethbpf: from_pod masquerades out of the uplink, from_uplink translates back; ip_forward=0, no rules"
            }
            Kind::EgressIptables => {
                "kernel path: proxy-ARP host veth, ip_forward=1, iptables MASQUERADE on the uplink (as CNI ipMasq)"
            }
            Kind::EgressNode => "the node itself to the same server (ceiling)",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// A built contender. Dropping it stops its servers and removes its namespaces,
/// links and mounts.
pub struct Contender {
    /// The contender's name in tables and samples.
    pub name: &'static str,
    pub client_ns: String,
    pub server_ns: String,
    pub server_ip: IpAddr,
    pub teardown: Teardown,
}

/// What a contender setup needs from the run.
pub struct Env {
    /// This run's private temp dir (bpffs mounts, state dirs, IPAM data).
    pub tmp: PathBuf,
    /// The vethbpf binary, when it is available.
    pub vethbpf: Option<PathBuf>,
}

pub fn build(kind: Kind, env: &Env) -> Result<Contender> {
    let p = sys::prefix();
    let tag = kind.name();
    let ns = |role: &str| format!("{p}{tag}-{role}");
    let mut td = Teardown::new(tag);
    let (client_ns, server_ns, server_ip) = match kind {
        Kind::Loopback => {
            let one = ns("pod");
            netns_add(&one)?;
            td.netns(&one);
            (one.clone(), one, Ipv4Addr::LOCALHOST)
        }
        Kind::Veth => {
            let (a, b) = (ns("a"), ns("b"));
            for n in [&a, &b] {
                netns_add(n)?;
                td.netns(n);
            }
            ip(
                Some(&a),
                &[
                    "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b,
                ],
            )?;
            for (n, addr) in [(&a, POD_A), (&b, POD_B)] {
                ip(
                    Some(n),
                    &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
                )?;
                ip(Some(n), &["link", "set", "eth0", "up"])?;
            }
            (a, b, POD_B)
        }
        Kind::Bridge => {
            let (node, a, b) = (ns("node"), ns("a"), ns("b"));
            for n in [&node, &a, &b] {
                netns_add(n)?;
                td.netns(n);
            }
            ip(Some(&node), &["link", "add", "br0", "type", "bridge"])?;
            ip(Some(&node), &["link", "set", "br0", "up"])?;
            for (i, (pod, addr)) in [(&a, POD_A), (&b, POD_B)].into_iter().enumerate() {
                let host = format!("vbh{i}");
                ip(
                    Some(&node),
                    &[
                        "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", pod,
                    ],
                )?;
                ip(Some(&node), &["link", "set", &host, "master", "br0", "up"])?;
                ip(
                    Some(pod),
                    &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
                )?;
                ip(Some(pod), &["link", "set", "eth0", "up"])?;
            }
            (a, b, POD_B)
        }
        Kind::Routing => {
            let (node, a, b) = (ns("node"), ns("a"), ns("b"));
            for n in [&node, &a, &b] {
                netns_add(n)?;
                td.netns(n);
            }
            routing_node_prepare(&node)?;
            for (i, (pod, addr)) in [(&a, POD_A), (&b, POD_B)].into_iter().enumerate() {
                for args in routing_recipe(&node, pod, &format!("vbh{i}"), addr) {
                    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                    sys::run(Command::new(refs[0]).args(&refs[1..]))?;
                }
            }
            (a, b, POD_B)
        }
        Kind::Ptp => {
            let (node, a, b) = (ns("node"), ns("a"), ns("b"));
            for n in [&node, &a, &b] {
                netns_add(n)?;
                td.netns(n);
            }
            let cni = Cni::new(&node, &env.tmp.join("ptp-dp"), "10.244.0.0/24")?;
            let mut ips = Vec::new();
            for pod in [&a, &b] {
                let id = format!("{pod}-id");
                ips.push(cni.add(&id, pod)?);
                let (c, id, pod) = (cni.clone(), id.clone(), pod.clone());
                td.push(format!("CNI DEL {id}"), move || c.del(&id, &pod));
            }
            (a, b, ips[1])
        }
        Kind::Vethbpf => {
            let Some(bin) = env.vethbpf.clone() else {
                bail!("the vethbpf binary is not available");
            };
            let node = ns("node");
            netns_add(&node)?;
            td.netns(&node);
            let vb = Vethbpf::new(bin, &node, &env.tmp.join("vethbpf-dp"), &mut td)?;
            vb.up("10.244.0.0/24")?;
            let vbd = vb.clone();
            td.push("vethbpf down", move || vbd.cmd(&["down"]).map(|_| ()));
            let (a, b) = (ns("a"), ns("b"));
            for (pod, addr) in [(&a, POD_A), (&b, POD_B)] {
                // Registered before the add: if the add fails halfway, the netns it
                // may have created still goes.
                td.netns(pod);
                vb.add(pod, Some(addr), None)?;
                let (v, pod2) = (vb.clone(), pod.clone());
                td.push(format!("vethbpf endpoint del {pod}"), move || v.del(&pod2));
            }
            (a, b, POD_B)
        }
        Kind::Vethbpf6 | Kind::Bridge6 | Kind::Routing6 | Kind::Veth6 => {
            return build6(kind, env);
        }
        Kind::EgressVethbpf | Kind::EgressIptables | Kind::EgressNode => {
            return super::egress::build(kind, env);
        }
    };
    Ok(Contender {
        name: kind.name(),
        client_ns,
        server_ns,
        server_ip: server_ip.into(),
        teardown: td,
    })
}

/// The IPv6 contenders: pods with one IPv6 address each (`nodad`: usable at once,
/// as vethbpf makes them), no IPv4.
fn build6(kind: Kind, env: &Env) -> Result<Contender> {
    let p = sys::prefix();
    let tag = kind.name();
    let ns = |role: &str| format!("{p}{tag}-{role}");
    let mut td = Teardown::new(tag);
    let (a, b) = (ns("a"), ns("b"));
    let pod_addr = |pod: &str, addr: Ipv6Addr, len: u8| -> Result<()> {
        ip(
            Some(pod),
            &[
                "-6",
                "addr",
                "add",
                &format!("{addr}/{len}"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        ip(Some(pod), &["link", "set", "eth0", "up"]).map(|_| ())
    };
    match kind {
        Kind::Veth6 => {
            for n in [&a, &b] {
                netns_add(n)?;
                td.netns(n);
            }
            ip(
                Some(&a),
                &[
                    "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b,
                ],
            )?;
            pod_addr(&a, POD_A6, 64)?;
            pod_addr(&b, POD_B6, 64)?;
        }
        Kind::Bridge6 => {
            let node = ns("node");
            for n in [&node, &a, &b] {
                netns_add(n)?;
                td.netns(n);
            }
            ip(Some(&node), &["link", "add", "br0", "type", "bridge"])?;
            ip(Some(&node), &["link", "set", "br0", "up"])?;
            for (i, (pod, addr)) in [(&a, POD_A6), (&b, POD_B6)].into_iter().enumerate() {
                let host = format!("vbh{i}");
                ip(
                    Some(&node),
                    &[
                        "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", pod,
                    ],
                )?;
                ip(Some(&node), &["link", "set", &host, "master", "br0", "up"])?;
                pod_addr(pod, addr, 64)?;
            }
        }
        Kind::Routing6 => {
            let node = ns("node");
            for n in [&node, &a, &b] {
                netns_add(n)?;
                td.netns(n);
            }
            sys::sysctls(&node, &[("net.ipv6.conf.all.forwarding", "1")])?;
            for (i, (pod, addr)) in [(&a, POD_A6), (&b, POD_B6)].into_iter().enumerate() {
                let host = format!("vbh{i}");
                ip(
                    Some(&node),
                    &[
                        "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", pod,
                    ],
                )?;
                // The gateway MAC makes the host veth's own EUI-64 link-local address
                // the pods' gateway; no duplicate address detection, so it answers
                // neighbour solicitations at once.
                ip(
                    Some(&node),
                    &["link", "set", &host, "address", "ee:ee:ee:ee:ee:ee"],
                )?;
                sys::sysctls(&node, &[(&format!("net.ipv6.conf.{host}.accept_dad"), "0")])?;
                ip(Some(&node), &["link", "set", &host, "up"])?;
                ip(
                    Some(&node),
                    &["-6", "route", "add", &format!("{addr}/128"), "dev", &host],
                )?;
                pod_addr(pod, addr, 128)?;
                ip(
                    Some(pod),
                    &[
                        "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0",
                    ],
                )?;
            }
        }
        Kind::Vethbpf6 => {
            let Some(bin) = env.vethbpf.clone() else {
                bail!("the vethbpf binary is not available");
            };
            let node = ns("node");
            netns_add(&node)?;
            td.netns(&node);
            let vb = Vethbpf::new(bin, &node, &env.tmp.join("vethbpf6-dp"), &mut td)?;
            vb.up(POD_CIDR6)?;
            let vbd = vb.clone();
            td.push("vethbpf down", move || vbd.cmd(&["down"]).map(|_| ()));
            for (pod, addr) in [(&a, POD_A6), (&b, POD_B6)] {
                td.netns(pod);
                vb.add(pod, Some(addr), None)?;
                let (v, pod2) = (vb.clone(), pod.clone());
                td.push(format!("vethbpf endpoint del {pod}"), move || v.del(&pod2));
            }
        }
        _ => bail!("{tag} is not an IPv6 contender"),
    }
    Ok(Contender {
        name: kind.name(),
        client_ns: a,
        server_ns: b,
        server_ip: POD_B6.into(),
        teardown: td,
    })
}

impl Contender {
    /// Check that A reaches B, then start the long-lived sockperf (IPv4 only: it
    /// has no IPv6, `measure::pingpong` stands in) and iperf3 servers in B
    /// (stopped, by pid, at teardown) and wait until they listen.
    pub fn start_servers(&mut self) -> Result<()> {
        if self.client_ns != self.server_ns {
            sys::ping(&self.client_ns, self.server_ip, 5)?;
        }
        let ip = self.server_ip.to_string();
        let v4 = self.server_ip.is_ipv4();
        if v4 {
            let cpu = sys::latency_cpus().map(|(_, server)| server);
            let sockperf = sys::in_ns_on_cpu(&self.server_ns, cpu, "sockperf")
                .args(["sr", "--tcp", "-i", &ip, "-p", &SOCKPERF_PORT.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting the sockperf server")?;
            self.teardown.child("sockperf server", sockperf);
        }
        let iperf = in_ns(&self.server_ns, "iperf3")
            .args(["-s", "-B", &ip, "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the iperf3 server")?;
        self.teardown.child("iperf3 server", iperf);
        if v4 {
            sys::wait_tcp(
                &self.client_ns,
                self.server_ip,
                SOCKPERF_PORT,
                Duration::from_secs(5),
            )?;
        }
        sys::wait_tcp(
            &self.client_ns,
            self.server_ip,
            IPERF_PORT,
            Duration::from_secs(5),
        )?;
        Ok(())
    }
}

/// Node-wide part of the kernel-routing model.
pub fn routing_node_prepare(node: &str) -> Result<()> {
    sys::sysctls(node, &[("net.ipv4.ip_forward", "1")])?;
    // proxy_arp answers only for addresses the node routes out of another interface.
    // A real node's default route covers 169.254.1.1; this node namespace has no
    // uplink, so a host route on lo stands in for it.
    ip(
        Some(node),
        &["route", "add", &format!("{GATEWAY}/32"), "dev", "lo"],
    )?;
    Ok(())
}

/// The classic per-pod recipe (Calico's model, as the tutorials type it): host veth
/// with proxy_arp and no address, a /32 route to the pod, the pod with a /32 address
/// and `default via 169.254.1.1 onlink`. One command per line, as a user runs it.
pub fn routing_recipe(node: &str, pod: &str, host: &str, addr: Ipv4Addr) -> Vec<Vec<String>> {
    let nsenter = format!("--net={}", sys::netns_path(node).display());
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        v(&[
            "ip", "-n", node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns",
            pod,
        ]),
        // proxy_delay=0: without it the kernel delays proxy ARP replies by up to 0.8 s.
        v(&[
            "nsenter",
            &nsenter,
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{host}.proxy_arp=1"),
            &format!("net.ipv4.neigh.{host}.proxy_delay=0"),
        ]),
        v(&["ip", "-n", node, "link", "set", host, "up"]),
        v(&[
            "ip",
            "-n",
            node,
            "route",
            "add",
            &format!("{addr}/32"),
            "dev",
            host,
        ]),
        v(&[
            "ip",
            "-n",
            pod,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "eth0",
        ]),
        v(&["ip", "-n", pod, "link", "set", "eth0", "up"]),
        v(&[
            "ip", "-n", pod, "route", "add", GATEWAY, "dev", "eth0", "scope", "link",
        ]),
        v(&[
            "ip", "-n", pod, "route", "add", "default", "via", GATEWAY, "dev", "eth0", "onlink",
        ]),
    ]
}

/// The CNI ptp plugin, driven through the CNI protocol from a node namespace.
#[derive(Clone)]
pub struct Cni {
    node: String,
    config: String,
}

pub const CNI_PATH: &str = "/usr/lib/cni";

impl Cni {
    pub fn new(node: &str, data_dir: &Path, subnet: &str) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "vbbptp",
            "type": "ptp",
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": data_dir.join("ipam"),
            }
        })
        .to_string();
        Ok(Self {
            node: node.to_string(),
            config,
        })
    }

    fn command(&self, verb: &str, id: &str, pod: &str) -> Command {
        let mut c = in_ns(&self.node, Path::new(CNI_PATH).join("ptp"));
        c.env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", sys::netns_path(pod))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH);
        c
    }

    /// CNI ADD; returns the pod's address from the result.
    pub fn add(&self, id: &str, pod: &str) -> Result<Ipv4Addr> {
        let out = sys::run_with_input(
            &mut self.command("ADD", id, pod),
            self.config.as_bytes(),
            Duration::from_secs(30),
        )
        .with_context(|| format!("CNI ADD {id}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("CNI ADD result: {out}"))?;
        let addr = v["ips"][0]["address"]
            .as_str()
            .with_context(|| format!("no ips[0].address in {out}"))?;
        let ip = addr.split('/').next().unwrap_or_default();
        ip.parse()
            .with_context(|| format!("CNI result address {addr}"))
    }

    pub fn del(&self, id: &str, pod: &str) -> Result<()> {
        sys::run_with_input(
            &mut self.command("DEL", id, pod),
            self.config.as_bytes(),
            Duration::from_secs(30),
        )
        .with_context(|| format!("CNI DEL {id}"))
        .map(|_| ())
    }
}

/// The vethbpf CLI, run in a node namespace with its own bpffs and state dirs.
#[derive(Clone)]
pub struct Vethbpf {
    bin: PathBuf,
    node: String,
    bpffs: PathBuf,
    state: PathBuf,
}

impl Vethbpf {
    /// Mounts a private bpffs under `dir` (unmounted by `td`).
    pub fn new(bin: PathBuf, node: &str, dir: &Path, td: &mut Teardown) -> Result<Self> {
        let bpffs = dir.join("bpffs");
        let state = dir.join("state");
        std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        sys::mount_bpffs(&bpffs, td)?;
        Ok(Self {
            bin,
            node: node.to_string(),
            bpffs,
            state,
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs
    }

    pub fn cmd(&self, args: &[&str]) -> Result<String> {
        sys::run_limited(&mut self.command(args), Duration::from_secs(30))
    }

    /// The command line of [`Vethbpf::cmd`], to spawn a long-running one (`agent`).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = in_ns(&self.node, &self.bin);
        c.arg("--bpffs-dir")
            .arg(&self.bpffs)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args);
        c
    }

    pub fn up(&self, cidr: &str) -> Result<()> {
        self.cmd(&["up", "--pod-cidr", cidr, "--gateway", GATEWAY])
            .map(|_| ())
    }

    /// `endpoint add NAME [--ip IP] [--netns PATH]`.
    pub fn add(
        &self,
        name: &str,
        ip: Option<impl Into<IpAddr>>,
        netns: Option<&Path>,
    ) -> Result<()> {
        let mut args = vec!["endpoint".to_string(), "add".into(), name.into()];
        if let Some(ip) = ip {
            args.extend(["--ip".into(), ip.into().to_string()]);
        }
        if let Some(p) = netns {
            args.extend(["--netns".into(), p.display().to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cmd(&refs).map(|_| ())
    }

    pub fn del(&self, name: &str) -> Result<()> {
        self.cmd(&["endpoint", "del", name]).map(|_| ())
    }
}
