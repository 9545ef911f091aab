//! The command line: argument parsing (clap) and the glue from commands to the
//! library modules. Errors here are `anyhow` with context; the modules below return
//! typed errors.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;

use crate::bpf::Pins;
use crate::endpoint::{self, AddRequest, EndpointView, Env, KernelNamespaces, PinnedDatapath};
use crate::netlink::RtNetlink;
use crate::node::{self, UpRequest};
use crate::output;
use crate::reconcile;
use crate::state::{Locked, NodeConfig, STATE_FILE, StateDir};

pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/vethbpf";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vethbpf";
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/24";
pub const DEFAULT_GATEWAY: &str = "169.254.1.1";

#[derive(Parser, Debug)]
#[command(
    name = "vethbpf",
    version,
    about = "Connect network namespaces with veth pairs and eBPF: no bridge, no iptables",
    long_about = "vethbpf connects network namespaces (\"pods\") on this node through veth pairs \
and a tc ingress eBPF program on each host-side veth. The program answers ARP for the pods' \
gateway, looks destinations up in an LPM map and hands packets straight into the destination \
pod with bpf_redirect_peer. Programs, maps and links are pinned in bpffs, so the datapath keeps \
running when vethbpf exits.\n\nStart with `vethbpf demo` to see it work in a throwaway namespace.\n\
All commands act on the network namespace vethbpf runs in (the node) and need root."
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load and pin the datapath on this node (idempotent).
    Up(UpArgs),
    /// Add, delete or list endpoints (pods).
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Show node config, programs, maps and attachments.
    Status,
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
    Node(crate::cluster::cli::NodeCommand),
    /// Lease this node's pod subnet in etcd, bring the node up with it, and keep
    /// the remote nodes equal to the other leases (the only long-running process;
    /// optional, and the datapath keeps forwarding without it).
    Agent(crate::cluster::cli::AgentArgs),
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// IPv4 range the pods' addresses come from.
    #[arg(long, default_value = DEFAULT_POD_CIDR, value_name = "CIDR")]
    pub pod_cidr: Ipv4Net,
    /// The pods' gateway: a link-local address nobody owns; the eBPF program answers
    /// ARP for it with the gateway MAC.
    #[arg(long, default_value = DEFAULT_GATEWAY, value_name = "IP")]
    pub gateway: Ipv4Addr,
    /// On a node that is up, upgrade the loaded program to this binary's: maps and
    /// their entries are kept, every TCX link switches atomically (no packet sees a
    /// moment without a program).
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub cluster: crate::cluster::cli::ClusterArgs,
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
    /// The pod's address (default: the next free one of the pod CIDR).
    #[arg(long, value_name = "IP")]
    pub ip: Option<Ipv4Addr>,
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
    /// and the pinned maps (the unreadable file is kept as state.json.corrupt).
    #[arg(long)]
    pub from_kernel: bool,
    /// With --from-kernel: the pod CIDR the node was brought up with (the kernel does
    /// not hold it).
    #[arg(long, value_name = "CIDR", default_value = DEFAULT_POD_CIDR, requires = "from_kernel")]
    pub pod_cidr: Ipv4Net,
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
    let matches: ArgMatches = Cli::command().get_matches();
    let explicit = matches
        .value_source("bpffs_dir")
        .is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => (cli, explicit),
        Err(e) => e.exit(),
    }
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("vethbpf must run as root: it creates namespaces, links and eBPF objects (try sudo)");
    }
    Ok(())
}

/// The bpffs dir a command should use: the one the node was brought up with,
/// unless the user names another explicitly, which is an error.
pub(crate) fn check_bpffs(locked: &Locked, cli: &Cli, explicit: bool) -> Result<()> {
    if let Some(node) = &locked.state.node
        && explicit
        && node.bpffs_dir != cli.bpffs_dir
    {
        bail!(
            "the node was brought up with --bpffs-dir {}, not {}",
            node.bpffs_dir.display(),
            cli.bpffs_dir.display()
        );
    }
    Ok(())
}

/// Every command but `up` works on a node that is up; before `up` there is no
/// state file, and such a command must not create the state dir either.
pub(crate) fn lock_up_node(state_dir: &StateDir) -> Result<Locked> {
    if !state_dir.path().join(crate::state::STATE_FILE).exists() {
        bail!(
            "the node is not up (no state in {}): run `vethbpf up` first",
            state_dir.path().display()
        );
    }
    let locked = lock(state_dir)?;
    if locked.state.node.is_none() && locked.state.endpoints.is_empty() {
        // `down` ran while this command waited for the lock; taking the lock made
        // the state dir again, which must not outlive this command.
        state_dir
            .remove(locked)
            .with_context(|| format!("state directory {}", state_dir.path().display()))?;
        bail!("the node is not up: run `vethbpf up` first");
    }
    Ok(locked)
}

fn lock(state_dir: &StateDir) -> Result<Locked> {
    state_dir
        .lock()
        .with_context(|| format!("state directory {}", state_dir.path().display()))
}

fn node_config(locked: &Locked) -> Result<NodeConfig> {
    locked
        .state
        .node
        .clone()
        .context("the node is not up: run `vethbpf up` first")
}

/// Settles the journal of a command that died halfway (for commands that do not
/// change endpoints themselves; `add`, `del` and `down` do it on their own).
fn settle(locked: &mut Locked) -> Result<()> {
    if locked.pending()?.is_none() {
        return Ok(());
    }
    let node = node_config(locked)?;
    with_env(&node, |env| {
        endpoint::finish_pending(env, locked).context("settling an interrupted command")
    })?;
    Ok(())
}

/// `reconcile --from-kernel`: a new state file from what is pinned at the bpffs dir.
fn rebuild_from_kernel(
    cli: &Cli,
    state_dir: &StateDir,
    args: &ReconcileArgs,
) -> Result<reconcile::Report> {
    let pins = Pins::new(&cli.bpffs_dir);
    if !pins.is_loaded() {
        bail!(
            "nothing is pinned at {} (no {}): give the --bpffs-dir the node was brought up with, or run `vethbpf up`",
            cli.bpffs_dir.display(),
            pins.program().display()
        );
    }
    let mut locked = state_dir
        .lock_to_rebuild()
        .with_context(|| format!("state directory {}", state_dir.path().display()))?;
    let file = state_dir.path().join(STATE_FILE);
    if file.exists() {
        match state_dir.read() {
            Ok(_) => bail!(
                "the state file {} is readable; run `vethbpf reconcile` without --from-kernel",
                file.display()
            ),
            Err(e) => tracing::warn!(error = %e, "rebuilding the state file"),
        }
        let keep = file.with_extension("json.corrupt");
        std::fs::rename(&file, &keep)
            .with_context(|| format!("moving {} to {}", file.display(), keep.display()))?;
        eprintln!("kept the unreadable state file as {}", keep.display());
    }
    let node = reconcile::node_from_pins(&pins, args.pod_cidr.trunc())
        .context("reading the node config from the pinned maps")?;
    with_env(&node, |env| {
        reconcile::from_kernel(env, &mut locked, node.clone()).context("reconcile --from-kernel")
    })
}

/// Runs `f` with the real kernel behind the endpoint traits.
fn with_env<T>(node: &NodeConfig, f: impl FnOnce(&mut Env<'_>) -> Result<T>) -> Result<T> {
    let mut dp = PinnedDatapath::open(node).context("opening the pinned datapath")?;
    with_datapath(&mut dp, f)
}

fn with_datapath<T>(
    dp: &mut dyn endpoint::Datapath,
    f: impl FnOnce(&mut Env<'_>) -> Result<T>,
) -> Result<T> {
    let mut nl = RtNetlink::connect().context("netlink in the node namespace")?;
    let mut ns = KernelNamespaces;
    let mut env = Env {
        node: &mut nl,
        ns: &mut ns,
        dp,
    };
    f(&mut env)
}

pub fn run(cli: Cli, bpffs_explicit: bool) -> Result<()> {
    // Every command reads pinned eBPF objects or a root-owned state dir; say so
    // up front rather than fail on a permission somewhere inside.
    require_root()?;
    let state_dir = StateDir::new(&cli.state_dir);
    let out = cli.output;
    match &cli.command {
        Command::Up(args) => {
            let mut locked = lock(&state_dir)?;
            let req = UpRequest {
                pod_cidr: args.pod_cidr.trunc(),
                gateway: args.gateway,
                bpffs_dir: cli.bpffs_dir.clone(),
                replace: args.replace,
            };
            crate::cluster::cli::up(out, &mut locked, &req, &args.cluster)?;
            settle(&mut locked)
        }
        Command::Endpoint(EndpointCommand::Add(args)) => {
            let mut locked = lock_up_node(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            let req = AddRequest {
                name: args.name.clone(),
                ip: args.ip,
                netns: args.netns.clone(),
                ifname: args.ifname.clone(),
            };
            let node = node_config(&locked)?;
            let rec = with_env(&node, |env| {
                endpoint::add(env, &mut locked, &req)
                    .with_context(|| format!("endpoint add {}", req.name))
            })?;
            output::endpoint(out, &EndpointView::new(&rec, None))
        }
        Command::Endpoint(EndpointCommand::Del { name }) => {
            let mut locked = lock_up_node(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            let node = node_config(&locked)?;
            let rec = with_env(&node, |env| {
                endpoint::del(env, &mut locked, name)
                    .with_context(|| format!("endpoint del {name}"))
            })?;
            output::deleted(out, &rec.name)
        }
        Command::Endpoint(EndpointCommand::List) => {
            let mut locked = lock_up_node(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            settle(&mut locked)?;
            let views = match &locked.state.node {
                Some(node) => {
                    let dp = PinnedDatapath::open(node).context("opening the pinned datapath")?;
                    endpoint::list(&dp, &locked)?
                }
                None => bail!("the node is not up: run `vethbpf up` first"),
            };
            output::endpoints(out, &views)
        }
        Command::Status if !state_dir.path().join(crate::state::STATE_FILE).exists() => {
            output::status(out, &node::Status::not_up())
        }
        Command::Status => {
            let mut locked = lock_up_node(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            settle(&mut locked)?;
            let status = node::status(&locked)?;
            crate::cluster::cli::status(out, &mut locked, &status)
        }
        Command::Down if !state_dir.path().join(crate::state::STATE_FILE).exists() => output::down(
            out,
            &node::DownReport {
                was_up: false,
                endpoints_removed: vec![],
            },
        ),
        Command::Down => {
            let mut locked = lock_up_node(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            crate::cluster::cli::down(&mut locked)?;
            let report = match locked.state.node.clone() {
                // The pins are gone (someone unmounted the bpffs): so are the
                // maps and attachments; `down` still removes links, namespaces
                // and state.
                Some(node) if !Pins::new(&node.bpffs_dir).is_loaded() => {
                    tracing::warn!(bpffs = %node.bpffs_dir.display(), "nothing pinned; removing endpoints without the datapath");
                    with_datapath(&mut endpoint::GoneDatapath, |env| {
                        node::down(env, &state_dir, locked).context("vethbpf down")
                    })?
                }
                Some(node) => with_env(&node, |env| {
                    node::down(env, &state_dir, locked).context("vethbpf down")
                })?,
                None => node::down_not_up(&state_dir, locked)?,
            };
            output::down(out, &report)
        }
        Command::Reconcile(args) if args.from_kernel => {
            let report = rebuild_from_kernel(&cli, &state_dir, args)?;
            output::reconcile(out, &report)
        }
        Command::Reconcile(_) => {
            let mut locked = lock_up_node(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            let node = node_config(&locked)?;
            let mut report = with_env(&node, |env| {
                reconcile::reconcile(env, &mut locked).context("vethbpf reconcile")
            })?;
            report.nodes = crate::cluster::cli::reconcile(&mut locked)?;
            output::reconcile(out, &report)
        }
        Command::Demo(args) => crate::demo::run(args, out),
        Command::Node(cmd) => {
            let mut locked = lock_up_node(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            crate::cluster::cli::node(&cli, &mut locked, cmd)
        }
        Command::Agent(args) => crate::cluster::cli::agent(&cli, args),
    }
}
