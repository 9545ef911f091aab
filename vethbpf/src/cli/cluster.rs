//! The command line of the cluster: `up`'s cluster flags, `node add/del/list`,
//! `agent` (grammar, library calls and printing together, one feature), and the
//! cluster parts of `status`, `down` and `reconcile`.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use vethbpf::cluster::ClusterError;
use vethbpf::cluster::agent::{self, AgentConfig};
use vethbpf::cluster::join::{self, JoinReport};
use vethbpf::cluster::maps::PinnedNodeMaps;
use vethbpf::cluster::neigh;
use vethbpf::cluster::nodes::{self, NodeFix, NodeSpec, NodeView};
use vethbpf::cluster::setup::{self, ClusterRequest, ClusterStatus};
use vethbpf::datapath::Pins;
use vethbpf::kernel::netlink::RtNetlink;
use vethbpf::node::{Status, UpRequest};
use vethbpf::reconcile::Report;
use vethbpf::state::{Locked, NodeOrigin, Overlay};

use super::args::Cli;
use super::output::{self, Output, table};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OverlayArg {
    /// Route to each node's address on the uplink's network (nodes share one L2
    /// network; Flannel's host-gw).
    None,
    /// Tunnel in VXLAN (UDP 8472) over any IP network; pods get the uplink's MTU
    /// minus 50.
    Vxlan,
}

impl From<OverlayArg> for Overlay {
    fn from(o: OverlayArg) -> Self {
        match o {
            OverlayArg::None => Overlay::None,
            OverlayArg::Vxlan => Overlay::Vxlan,
        }
    }
}

/// `up`'s cluster flag; `--uplink` and `--cluster-cidr` are `up`'s own (egress
/// and the cluster share them).
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// How pod traffic travels to other nodes (with --cluster-cidr).
    #[arg(long, value_enum, default_value_t = OverlayArg::None, requires = "cluster_cidr")]
    pub overlay: OverlayArg,
}

impl ClusterArgs {
    /// The cluster part of `up`: a cluster is joined when `--cluster-cidr` is given.
    pub fn request(
        &self,
        req: &UpRequest,
        cluster_cidr6: Option<Ipv6Net>,
    ) -> Option<ClusterRequest> {
        req.egress.cluster_cidr.map(|cidr| ClusterRequest {
            cluster_cidr: cidr.trunc(),
            cluster_cidr6: cluster_cidr6.map(|c| c.trunc()),
            overlay: self.overlay.into(),
            uplink: req.egress.uplink.clone(),
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Make a remote node's pod CIDR reachable through its address.
    Add(NodeAddArgs),
    /// Stop routing to a remote node and accepting traffic from it.
    Del {
        /// The remote node's name.
        name: String,
    },
    /// Every remote node with its traffic and reachability.
    List,
}

#[derive(Args, Debug)]
pub struct NodeAddArgs {
    /// The remote node's name (1-63 of [A-Za-z0-9_.-]).
    pub name: String,
    /// Its pod CIDR (inside the cluster CIDR, overlapping no other node's); give
    /// it twice, IPv4 and IPv6, for a node of a dual-stack cluster.
    #[arg(long, value_name = "CIDR", required = true, action = clap::ArgAction::Append)]
    pub pod_cidr: Vec<IpNet>,
    /// Its (IPv4) address: on the uplink's network for --overlay none, anywhere
    /// reachable for vxlan. IPv6 pods are reached through it too.
    #[arg(long, value_name = "IP")]
    pub address: Ipv4Addr,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// etcd endpoints, comma-separated (e.g. http://10.0.0.1:2379).
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        value_name = "URL[,URL...]"
    )]
    pub etcd: Vec<String>,
    /// The range pod subnets are leased from; give an IPv6 one too (at most one
    /// per family) for a dual-stack cluster, each node then leasing one subnet of
    /// each.
    #[arg(long, default_value = "10.244.0.0/16", value_name = "CIDR", action = clap::ArgAction::Append)]
    pub cluster_cidr: Vec<IpNet>,
    /// Prefix length of each node's pod subnet.
    #[arg(long, default_value_t = 24, value_name = "LEN")]
    pub subnet_len: u8,
    /// Prefix length of each node's IPv6 pod subnet (with an IPv6 --cluster-cidr).
    #[arg(long, default_value_t = 64, value_name = "LEN")]
    pub subnet_len6: u8,
    /// How pod traffic travels to other nodes (every agent of a cluster the same).
    #[arg(long, value_enum, default_value_t = OverlayArg::None)]
    pub overlay: OverlayArg,
    /// The interface other nodes are reached through (default: the device of the
    /// default route).
    #[arg(long, value_name = "IFACE")]
    pub uplink: Option<String>,
    /// This node's name in the cluster (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// etcd key prefix of the cluster.
    #[arg(long, default_value = "/vethbpf/network", value_name = "PREFIX")]
    pub etcd_prefix: String,
    /// Seconds a lease outlives its last renewal (renewed every third of it); a
    /// node gone this long disappears from the others.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub lease_ttl: i64,
}

/// `vethbpf up` (with or without cluster flags).
pub fn up(
    out: Output,
    locked: &mut Locked,
    req: &UpRequest,
    cluster_cidr6: Option<Ipv6Net>,
    args: &ClusterArgs,
) -> Result<()> {
    let mut nl = RtNetlink::connect().context("netlink in the node namespace")?;
    let report = join::up(
        &mut nl,
        locked,
        req,
        args.request(req, cluster_cidr6).as_ref(),
        vethbpf::EBPF_OBJECT,
    )
    .context("vethbpf up")?;
    print_up(out, &report)
}

fn print_up(out: Output, r: &JoinReport) -> Result<()> {
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    output::up(out, &r.node)?;
    if let Some(c) = &r.cluster {
        let what = match c.action {
            "joined" => "joined the cluster",
            "repaired" => "cluster set-up repaired",
            "reconfigured" => "cluster set-up changed",
            _ => "cluster set-up unchanged",
        };
        println!("{what}");
        cluster_table(
            c.cluster.cluster_cidr,
            c.cluster.cluster_cidr6,
            c.cluster.overlay,
            &c.cluster.uplink,
            c.cluster.node_ip,
            c.cluster.pod_mtu,
            c.cluster.vxlan.as_ref().map(|v| v.name.as_str()),
        );
    }
    Ok(())
}

fn cluster_table(
    cidr: Ipv4Net,
    cidr6: Option<Ipv6Net>,
    overlay: Overlay,
    uplink: &str,
    node_ip: Ipv4Addr,
    pod_mtu: u32,
    tunnel: Option<&str>,
) {
    table(
        &[
            "CLUSTER CIDR",
            "OVERLAY",
            "UPLINK",
            "NODE IP",
            "POD MTU",
            "TUNNEL",
        ],
        &[vec![
            cidrs(cidr, cidr6),
            overlay.name().to_string(),
            uplink.to_string(),
            node_ip.to_string(),
            pod_mtu.to_string(),
            tunnel.unwrap_or("-").to_string(),
        ]],
    );
}

/// A node's CIDRs in one table cell: `10.244.1.0/24,fd00:10:244:1::/64`.
fn cidrs(cidr: Ipv4Net, cidr6: Option<Ipv6Net>) -> String {
    match cidr6 {
        Some(c6) => format!("{cidr},{c6}"),
        None => cidr.to_string(),
    }
}

fn open_maps(locked: &Locked) -> Result<PinnedNodeMaps> {
    let node = locked
        .state
        .node
        .as_ref()
        .context("the node is not up: run `vethbpf up` first")?;
    PinnedNodeMaps::open(&Pins::new(&node.bpffs_dir)).context("opening the pinned maps")
}

/// `vethbpf node ...`.
pub fn node(cli: &Cli, locked: &mut Locked, cmd: &NodeCommand) -> Result<()> {
    let out = cli.output;
    let mut maps = open_maps(locked)?;
    match cmd {
        NodeCommand::Add(args) => {
            let cluster = locked
                .state
                .cluster
                .clone()
                .context("the node is not part of a cluster: run `vethbpf up --pod-cidr CIDR --cluster-cidr CIDR` first")?;
            let mut nl = RtNetlink::connect().context("netlink in the node namespace")?;
            let nets = setup::uplink_nets(&mut nl, &cluster)?;
            let (pod_cidr, pod_cidr6) =
                node_cidrs(&args.pod_cidr).with_context(|| format!("node add {}", args.name))?;
            let spec = NodeSpec {
                name: args.name.clone(),
                pod_cidr,
                pod_cidr6,
                address: args.address,
                origin: NodeOrigin::Static,
            };
            let mut learn = |c: &vethbpf::state::ClusterState, n: &vethbpf::state::RemoteNode| {
                neigh::learn(&mut nl, c.uplink_ifindex, n.address)
            };
            let node = nodes::add(&mut maps, locked, &spec, &nets, &mut learn)
                .with_context(|| format!("node add {}", args.name))?;
            let view = nodes::list(&maps, locked)?
                .into_iter()
                .find(|v| v.name == node.name)
                .context("the node just added is not listed")?;
            print_nodes(out, &[view], false)
        }
        NodeCommand::Del { name } => {
            let node =
                nodes::del(&mut maps, locked, name).with_context(|| format!("node del {name}"))?;
            if out == Output::Json {
                println!("{}", serde_json::json!({ "deleted": node.name }));
            } else {
                println!("node {} deleted", node.name);
            }
            Ok(())
        }
        NodeCommand::List => {
            nodes::finish_pending(&mut maps, locked)?;
            let views = nodes::list(&maps, locked)?;
            print_nodes(out, &views, true)
        }
    }
}

/// `node add --pod-cidr`: one IPv4 CIDR, and at most one IPv6 one.
fn node_cidrs(cidrs: &[IpNet]) -> Result<(Ipv4Net, Option<Ipv6Net>), ClusterError> {
    let (v4, v6) = setup::split_cluster_cidrs(cidrs).map_err(|e| match e {
        // The same rule, said of pod CIDRs.
        ClusterError::TwoClusterCidrs {
            family,
            first,
            second,
        } => ClusterError::TwoNodeCidrs {
            family,
            first,
            second,
        },
        ClusterError::Ipv6ClusterWithoutIpv4 => ClusterError::NoIpv4NodeCidr,
        e => e,
    })?;
    Ok((
        v4.ok_or(ClusterError::NoIpv4NodeCidr)?.trunc(),
        v6.map(|c| c.trunc()),
    ))
}

fn print_nodes(out: Output, views: &[NodeView], list: bool) -> Result<()> {
    if out == Output::Json {
        let text = if list {
            serde_json::to_string_pretty(views)?
        } else {
            serde_json::to_string_pretty(&views[0])?
        };
        println!("{text}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                cidrs(v.pod_cidr, v.pod_cidr6),
                v.address.to_string(),
                match v.origin {
                    NodeOrigin::Static => "static".into(),
                    NodeOrigin::Etcd => "etcd".into(),
                },
                format!("{}p/{}B", v.sent.packets, v.sent.bytes),
                format!("{}p/{}B", v.received.packets, v.received.bytes),
                v.last_received_secs
                    .map_or("never".into(), |s| format!("{s:.0}s ago")),
                v.reachability.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "POD CIDR", "ADDRESS", "FROM", "SENT", "RECEIVED", "LAST RX", "STATE",
        ],
        &rows,
    );
    Ok(())
}

/// `vethbpf status`: the node's status and, in a cluster, the cluster view.
pub fn status(out: Output, locked: &mut Locked, status: &Status) -> Result<()> {
    let cluster = match &locked.state.cluster {
        Some(_) => {
            let mut maps = open_maps(locked)?;
            nodes::finish_pending(&mut maps, locked)?;
            let pins = Pins::new(
                &locked
                    .state
                    .node
                    .as_ref()
                    .context("the node is not up")?
                    .bpffs_dir,
            );
            setup::status(&maps, &pins, locked)?
        }
        None => None,
    };
    if out == Output::Json {
        #[derive(Serialize)]
        struct WithCluster<'a> {
            #[serde(flatten)]
            status: &'a Status,
            #[serde(skip_serializing_if = "Option::is_none")]
            cluster: Option<ClusterStatus>,
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&WithCluster { status, cluster })?
        );
        return Ok(());
    }
    output::status(out, status)?;
    if let Some(c) = cluster {
        println!();
        cluster_table(
            c.cluster_cidr,
            c.cluster_cidr6,
            c.overlay,
            &c.uplink,
            c.node_ip,
            c.pod_mtu,
            c.vxlan.as_ref().map(|v| v.name.as_str()),
        );
        println!();
        table(
            &["PROGRAM", "ID", "ATTACHED TO", "LINK ID"],
            &c.programs
                .iter()
                .map(|p| {
                    let id = |v: Option<u32>| v.map_or("-".into(), |i| i.to_string());
                    vec![
                        p.name.to_string(),
                        id(p.id),
                        p.attached_to.clone().unwrap_or("-".into()),
                        id(p.link_id),
                    ]
                })
                .collect::<Vec<_>>(),
        );
        println!();
        print_nodes(out, &c.nodes, true)?;
    }
    Ok(())
}

/// `down`'s cluster part, before the endpoints and pins go.
pub fn down(locked: &mut Locked) -> Result<()> {
    let Some(node) = locked.state.node.clone() else {
        return Ok(());
    };
    let mut nl = RtNetlink::connect().context("netlink in the node namespace")?;
    setup::down(&mut nl, &Pins::new(&node.bpffs_dir), locked).context("removing the cluster set-up")
}

/// `reconcile`'s cluster part: the remote nodes' map entries, then the kernel side
/// again from the record.
pub fn reconcile(locked: &mut Locked) -> Result<Vec<NodeFix>> {
    let Some(node) = locked.state.node.clone() else {
        return Ok(vec![]);
    };
    let mut maps = open_maps(locked)?;
    let mut fixes = nodes::reconcile(&mut maps, locked)?;
    if let Some(c) = locked.state.cluster.clone() {
        let mut nl = RtNetlink::connect().context("netlink in the node namespace")?;
        let req = ClusterRequest {
            cluster_cidr: c.cluster_cidr,
            cluster_cidr6: c.cluster_cidr6,
            overlay: c.overlay,
            uplink: Some(c.uplink.clone()),
        };
        let uplink = setup::find_uplink(&mut nl, Some(&c.uplink))?;
        let pod_cidr = node.pod_cidr.ok_or(ClusterError::NoIpv4PodCidr)?;
        let desired = setup::plan(&mut nl, locked, pod_cidr, node.pod_cidr6, &req, &uplink)?;
        let report = setup::apply(
            &mut nl,
            &mut maps,
            &Pins::new(&node.bpffs_dir),
            node.attach_mode,
            locked,
            desired,
        )?;
        if report.action != "unchanged" {
            fixes.push(NodeFix {
                what: format!("cluster set-up {}", report.action),
                name: c.uplink.clone(),
            });
        }
        let mut learn = |c: &vethbpf::state::ClusterState, n: &vethbpf::state::RemoteNode| {
            neigh::learn(&mut nl, c.uplink_ifindex, n.address)
        };
        fixes.extend(nodes::refresh_neigh(&mut maps, locked, false, &mut learn)?);
    }
    Ok(fixes)
}

/// `vethbpf agent`.
pub fn agent(cli: &Cli, args: &AgentArgs) -> Result<()> {
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .context("reading the host name (give --node-name)")?
            .into_string()
            .map_err(|_| anyhow::anyhow!("the host name is not UTF-8: give --node-name"))?,
    };
    if args.etcd.iter().any(|e| e.is_empty()) {
        bail!("--etcd has an empty endpoint");
    }
    let (cluster_cidr, cluster_cidr6) =
        setup::split_cluster_cidrs(&args.cluster_cidr).context("vethbpf agent")?;
    let cluster_cidr = cluster_cidr.context("vethbpf agent: --cluster-cidr needs an IPv4 CIDR")?;
    agent::run(AgentConfig {
        etcd: args.etcd.clone(),
        prefix: args.etcd_prefix.clone(),
        node_name,
        cluster: ClusterRequest {
            cluster_cidr: cluster_cidr.trunc(),
            cluster_cidr6: cluster_cidr6.map(|c| c.trunc()),
            overlay: args.overlay.into(),
            uplink: args.uplink.clone(),
        },
        subnet_len: args.subnet_len,
        subnet_len6: args.subnet_len6,
        ttl_secs: args.lease_ttl,
        gateway: vethbpf::defaults::GATEWAY
            .parse()
            .context("the default gateway")?,
        bpffs_dir: cli.bpffs_dir.clone(),
        state_dir: cli.state_dir.clone(),
    })
    .context("vethbpf agent")
}

/// Prints `reconcile`'s report with the cluster's fixes: one JSON document, or the
/// endpoint table followed by the cluster's rows.
pub fn print_reconcile(out: Output, report: &Report, fixes: &[NodeFix]) -> Result<()> {
    if out == Output::Json {
        #[derive(Serialize)]
        struct WithNodes<'a> {
            #[serde(flatten)]
            report: &'a Report,
            nodes: &'a [NodeFix],
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&WithNodes {
                report,
                nodes: fixes
            })?
        );
        return Ok(());
    }
    if report.changed() || fixes.is_empty() {
        output::reconcile(out, report)?;
    }
    if !fixes.is_empty() {
        let rows: Vec<Vec<String>> = fixes
            .iter()
            .map(|f| vec![f.what.clone(), f.name.clone(), "done".into()])
            .collect();
        table(&["WHAT", "NAME", "ACTION"], &rows);
    }
    Ok(())
}
