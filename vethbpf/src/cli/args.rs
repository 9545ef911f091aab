//! The command line's grammar (clap): commands, options, their help.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use ipnet::IpNet;
use vethbpf::defaults::{
    BPFFS_DIR as DEFAULT_BPFFS_DIR, GATEWAY as DEFAULT_GATEWAY, POD_CIDR as DEFAULT_POD_CIDR,
    STATE_DIR as DEFAULT_STATE_DIR,
};

use super::error::exit_on_parse_error;
use super::output::Output;

/// The end of `--help`: what scripts can rely on.
const EXIT_STATUS: &str = "\
Exit status:
  0  done
  1  anything else: the kernel refused, I/O failed, not root, a command interrupted
  2  the command line is wrong: an unknown command or option, an invalid name or
     address, an address outside the pod CIDR, a gateway inside it
  3  what the command names does not exist: an endpoint, a namespace
  4  the node is not up, or its datapath is gone (the bpffs was unmounted)
  5  it clashes with what exists: a name or address in use, no free address, a
     pod CIDR, gateway or bpffs dir other than the node's
With -o json, a failure prints one JSON object on stderr:
  {\"error\": MESSAGE, \"code\": STATUS, \"kind\": \"other\"|\"usage\"|\"not_found\"|\"not_up\"|\"conflict\"}";

#[derive(Parser, Debug)]
#[command(
    name = "vethbpf",
    version,
    about = "Connect network namespaces with veth pairs and eBPF: no bridge, no iptables",
    long_about = "vethbpf connects network namespaces (\"pods\") on this node through veth pairs \
and a tc ingress eBPF program on each host-side veth. The program answers ARP for the pods' \
gateway, looks destinations up in an LPM map and hands packets straight into the destination \
pod with bpf_redirect_peer; traffic for the outside world leaves through the node's uplink, \
tracked and masqueraded, and a second program on the uplink translates the replies back. \
Programs, maps and links are pinned in bpffs, so the datapath keeps running when vethbpf exits.\n\nStart with `vethbpf demo` to see it work in a throwaway namespace.\n\
All commands act on the network namespace vethbpf runs in (the node) and need root.",
    after_help = EXIT_STATUS
)]
pub struct Cli {
    /// Where programs, maps and links are pinned (a bpffs is mounted there if needed).
    #[arg(
        long,
        global = true,
        env = "VETHBPF_BPFFS_DIR",
        default_value = DEFAULT_BPFFS_DIR,
        value_name = "DIR"
    )]
    pub bpffs_dir: PathBuf,
    /// Where node config and endpoint records are kept.
    #[arg(
        long,
        global = true,
        env = "VETHBPF_STATE_DIR",
        default_value = DEFAULT_STATE_DIR,
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
    /// Output format: a table for people, JSON for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// More logging on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load and pin the datapath on this node (idempotent).
    Up(UpArgs),
    /// Add, delete or list endpoints (pods).
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Show node config, programs, maps, attachments and egress (NAT table).
    Status,
    /// The NAT table of pod egress: list its flows, or flush it.
    #[command(subcommand)]
    Nat(NatCommand),
    /// Delete every endpoint and every pinned object: the node as before `up`.
    Down,
    /// Make state, maps, pinned links, links and routes agree again after a crash.
    ///
    /// Settles a command that died halfway (an `endpoint add` is rolled back, an
    /// `endpoint del` finished), repairs each endpoint's map entries, attachment and
    /// node route from its record, removes endpoints whose veth or namespace is gone,
    /// and removes links, map entries and pins with vethbpf's names that no endpoint
    /// owns. Every command settles an interrupted one by itself; this does the full
    /// check.
    Reconcile(ReconcileArgs),
    /// Run the three-pod scenario in a throwaway node namespace and show a
    /// connectivity matrix with the counters that prove the eBPF path carried it.
    Demo(DemoArgs),
    /// Add, delete or list remote nodes (their pod CIDRs become reachable).
    #[command(subcommand)]
    Node(super::cluster::NodeCommand),
    /// Lease this node's pod subnet in etcd, bring the node up with it, and keep
    /// the remote nodes equal to the other leases (the only long-running process;
    /// optional, and the datapath keeps forwarding without it).
    Agent(super::cluster::AgentArgs),
    /// Show what the datapath decides, packet by packet: drops with their reason,
    /// the first packet of each forwarded flow, until Ctrl-C.
    ///
    /// One line per event (time, endpoint, verdict and reason, addresses and ports or
    /// ARP fields); with `-o json` one JSON object per line. Events the ring buffer
    /// had no room for are reported as lost. The datapath emits events only while a
    /// monitor runs (one at a time); stopping it turns them off again.
    Monitor(MonitorArgs),
    /// Print the node's metrics in the Prometheus text format (packets and bytes per
    /// endpoint and verdict, drops by reason, map fill, programs), or serve them.
    ///
    /// Once, for node_exporter's textfile collector
    /// (`vethbpf metrics > /var/lib/node_exporter/vethbpf.prom.tmp && mv ...`), or
    /// with --listen on http://ADDR:PORT/metrics until stopped.
    Metrics(MetricsArgs),
}

/// Which events `monitor` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventType {
    /// Dropped packets, each with its reason.
    Drop,
    /// Forwarded flows: the first packet and each new SYN, FIN or RST.
    Trace,
    /// Both.
    All,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// Which events to show.
    #[arg(long = "type", short = 't', value_enum, default_value_t = EventType::All)]
    pub event_type: EventType,
    /// Only events from or to this endpoint.
    #[arg(long, value_name = "NAME")]
    pub endpoint: Option<String>,
    /// Only events from or to this remote node: its pods (its pod CIDR) or the node
    /// itself (its address).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Also show the program's diagnostics (aya-log): frames on an interface without
    /// an endpoint entry, a configuration it does not expect.
    #[arg(long)]
    pub log: bool,
}

#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// Serve http://ADDR:PORT/metrics until stopped, instead of printing once.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Range the pods' addresses come from, at most one per family: give it twice
    /// (an IPv4 and an IPv6 CIDR) for dual stack, or an IPv6 one alone. Default: the
    /// node's CIDRs if it is up, else 10.244.0.0/24.
    #[arg(long, value_name = "CIDR", action = clap::ArgAction::Append)]
    pub pod_cidr: Vec<IpNet>,
    /// The pods' IPv4 gateway: a link-local address nobody owns; the eBPF program
    /// answers ARP for it with the gateway MAC. (IPv6 pods use the gateway MAC's
    /// link-local address, fe80::ecee:eeff:feee:eeee, answered by NDP likewise.)
    #[arg(long, default_value = DEFAULT_GATEWAY, value_name = "IP")]
    pub gateway: Ipv4Addr,
    /// On a node that is up, upgrade the loaded programs to this binary's: maps and
    /// their entries are kept, every attachment (TCX link or cls_bpf filter)
    /// switches atomically (no packet sees a moment without a program).
    #[arg(long)]
    pub replace: bool,
    /// How each pod's host veth gets its program. `tc`: a clsact qdisc and a
    /// cls_bpf filter (direct-action), made in the netlink batch that sets the
    /// veth up; any kernel. `tcx`: a TCX link pinned per pod (kernel 6.6+), which
    /// `status` shows by link id; each attach and each veth deletion then waits for
    /// an RCU grace period in the kernel (~10 ms). The node's own attach points
    /// (uplink, VXLAN device) use TCX where the kernel has it either way. Default:
    /// tc on a new node; a node that is up keeps its own (changing it needs `down`).
    #[arg(long, value_enum, value_name = "MODE")]
    pub pod_attach: Option<vethbpf::datapath::AttachMode>,
    /// The node's uplink: pod egress leaves through it, masqueraded behind its
    /// primary IPv4 address, and other nodes of a cluster are reached through it
    /// (that address is this node's in the cluster). Default: the device of the
    /// node's IPv4 default route, else of its IPv6 one; with none, pods reach only
    /// the node and each other. IPv4 and IPv6 egress both leave through it.
    #[arg(long, value_name = "IFACE")]
    pub uplink: Option<String>,
    /// The cluster's pod CIDR, which every node's pod CIDR lies in: never
    /// masqueraded, and given, the node joins a cluster whose remote nodes' pod
    /// CIDRs pods reach (`vethbpf node add`, or `vethbpf agent`). At most one per
    /// family: an IPv6 one too makes a dual-stack cluster (it needs an IPv6 pod
    /// CIDR inside it; IPv6 between nodes crosses the IPv4 underlay). Default: the
    /// pod CIDR, and no cluster.
    #[arg(long, value_name = "CIDR", action = clap::ArgAction::Append)]
    pub cluster_cidr: Vec<IpNet>,
    /// Send pod egress out with the pods' own addresses (for networks that route the
    /// pod CIDR to this node): tracked, not translated.
    #[arg(long)]
    pub no_masquerade: bool,
    /// Ports (and ICMP identifiers) the NAT gives pod flows; must not overlap
    /// net.ipv4.ip_local_port_range, whose ports are the node's own (default: every
    /// port above that range).
    #[arg(long, value_name = "FIRST-LAST")]
    pub nat_ports: Option<vethbpf::egress::PortRange>,
    /// The most pod flows the NAT tracks at once; a new flow beyond is dropped and
    /// counted (nat_table_full) until flows expire or `vethbpf nat flush`.
    #[arg(long, value_name = "N")]
    pub nat_max_flows: Option<u32>,
    #[command(flatten)]
    pub cluster: super::cluster::ClusterArgs,
}

#[derive(Subcommand, Debug)]
pub enum NatCommand {
    /// Every pod flow: protocol, pod address:port, what it was translated to, the
    /// remote, state, age and idle time.
    List,
    /// Delete every flow (open connections of pods lose their mappings).
    Flush,
}

#[derive(Subcommand, Debug)]
pub enum EndpointCommand {
    /// Create a pod: namespace, veth pair, addresses, routes, program, map entries.
    Add(AddArgs),
    /// Remove everything `endpoint add` made for NAME.
    Del {
        /// The endpoint's name.
        name: String,
    },
    /// Every endpoint with its counters (forwarded, ARP replies, passed, drops).
    List,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// Endpoint name (1-63 of [A-Za-z0-9_.-]); also the name of the namespace made
    /// for it under /run/netns.
    pub name: String,
    /// The pod's address, at most one per family (default: the next free one of
    /// each pod CIDR the node has).
    #[arg(long, value_name = "IP", action = clap::ArgAction::Append)]
    pub ip: Vec<IpAddr>,
    /// Use this existing namespace (a name under /run/netns, or a path) instead of
    /// making one.
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// Interface name inside the pod.
    #[arg(long, default_value = "eth0", value_name = "IFNAME")]
    pub ifname: String,
}

#[derive(Args, Debug)]
pub struct ReconcileArgs {
    /// Rebuild a lost or corrupt state file from the kernel: the host veths' aliases
    /// and the pinned maps (the unreadable state is kept as state.json.corrupt and
    /// state.log.corrupt).
    #[arg(long)]
    pub from_kernel: bool,
    /// With --from-kernel: the pod CIDRs the node was brought up with (the kernel
    /// does not hold them), one per family.
    #[arg(long, value_name = "CIDR", default_value = DEFAULT_POD_CIDR, requires = "from_kernel", action = clap::ArgAction::Append)]
    pub pod_cidr: Vec<IpNet>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Leave the demo's namespaces and datapath in place (prints how to remove them).
    #[arg(long)]
    pub keep: bool,
}

/// Parses the command line; also reports whether --bpffs-dir was given explicitly
/// (flag or environment) rather than defaulted.
pub fn parse() -> (Cli, bool) {
    let matches: ArgMatches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => exit_on_parse_error(e),
    };
    let explicit = matches
        .value_source("bpffs_dir")
        .is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => (cli, explicit),
        Err(e) => exit_on_parse_error(e),
    }
}
