//! From a parsed command line to the library calls that carry it out, and the
//! printing of what they return. Errors here are `anyhow` with context; the library
//! returns typed errors.

use anyhow::{Context, Result};
use vethbpf::datapath::Pins;
use vethbpf::defaults::POD_CIDR as DEFAULT_POD_CIDR;
use vethbpf::egress::EgressRequest;
use vethbpf::egress::table::Table;
use vethbpf::endpoint::{self, AddRequest, EndpointView};
use vethbpf::kernel::bpffs;
use vethbpf::node::{self, NodeError, UpRequest};
use vethbpf::observe::monitor::{MonitorRequest, Session};
use vethbpf::observe::{self, ObserveError};
use vethbpf::reconcile;
use vethbpf::state::{LOG_FILE, Locked, NodeConfig, STATE_FILE, StateDir, StateError};
use vethbpf_common::PROG_FROM_POD;

use super::args::{
    Cli, Command, EndpointCommand, EventType, MetricsArgs, MonitorArgs, NatCommand, ReconcileArgs,
};
use super::error::RunError;
use super::{cluster, demo, output, signals};

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(RunError::NotRoot.into());
    }
    Ok(())
}

/// The bpffs dir a command should use: the one the node was brought up with,
/// unless the user names another explicitly, which is an error.
fn check_bpffs(locked: &Locked, cli: &Cli, explicit: bool) -> Result<()> {
    if let Some(node) = &locked.state.node
        && explicit
        && node.bpffs_dir != cli.bpffs_dir
    {
        return Err(NodeError::BpffsMismatch {
            recorded: node.bpffs_dir.clone(),
            requested: cli.bpffs_dir.clone(),
        }
        .into());
    }
    Ok(())
}

/// Every command but `up` works on a node that is up; before `up` there is no
/// state file, and such a command must not create the state dir either.
fn lock_up_node(state_dir: &StateDir) -> Result<Locked> {
    lock_up_node_by(state_dir, StateDir::lock)
}

/// `lock_up_node` for `endpoint add` and `del`, which do not wait for the
/// deletions of other endpoints in progress.
fn lock_up_node_for_endpoint_change(state_dir: &StateDir) -> Result<Locked> {
    lock_up_node_by(state_dir, |d| d.lock_for_endpoint_change(None))
}

fn lock_up_node_by(
    state_dir: &StateDir,
    take: impl FnOnce(&StateDir) -> Result<Locked, StateError>,
) -> Result<Locked> {
    if !state_dir.path().join(vethbpf::state::STATE_FILE).exists() {
        return Err(RunError::NoState(state_dir.path().to_path_buf()).into());
    }
    let locked = take(state_dir)
        .with_context(|| format!("state directory {}", state_dir.path().display()))?;
    if let Some(node) = &locked.state.node {
        bpffs::check_lasting(&node.bpffs_dir)?;
    }
    if locked.state.node.is_none() && locked.state.endpoints.is_empty() {
        // `down` ran while this command waited for the lock; taking the lock made
        // the state dir again, which must not outlive this command.
        state_dir
            .remove(locked)
            .with_context(|| format!("state directory {}", state_dir.path().display()))?;
        return Err(RunError::NotUp.into());
    }
    Ok(locked)
}

fn lock(state_dir: &StateDir) -> Result<Locked> {
    state_dir
        .lock()
        .with_context(|| format!("state directory {}", state_dir.path().display()))
}

fn node_config(locked: &Locked) -> Result<NodeConfig> {
    Ok(locked.state.node.clone().ok_or(RunError::NotUp)?)
}

/// Settles the journal of a command that died halfway (for commands that do not
/// change endpoints themselves; `add`, `del` and `down` do it on their own).
fn settle(locked: &mut Locked) -> Result<()> {
    endpoint::settle_with_kernel(locked).context("settling an interrupted command")?;
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
        return Err(RunError::NothingPinned {
            dir: cli.bpffs_dir.clone(),
            program: pins.program(PROG_FROM_POD),
        }
        .into());
    }
    let mut locked = state_dir
        .lock_to_rebuild()
        .with_context(|| format!("state directory {}", state_dir.path().display()))?;
    let file = state_dir.path().join(STATE_FILE);
    if file.exists() || state_dir.path().join(LOG_FILE).exists() {
        match state_dir.read() {
            Ok(_) => return Err(RunError::StateReadable(file).into()),
            Err(e) => tracing::warn!(error = %e, "rebuilding the state file"),
        }
        let kept = locked
            .set_aside()
            .with_context(|| format!("state directory {}", state_dir.path().display()))?;
        for keep in kept {
            eprintln!("kept the unreadable state as {}", keep.display());
        }
    }
    let (pod_cidr, pod_cidr6) = node::split_cidrs(&args.pod_cidr)?;
    let node = reconcile::node_from_pins(&pins, pod_cidr, pod_cidr6)
        .context("reading the node config from the pinned maps")?;
    endpoint::with_kernel(&node, |env| {
        reconcile::from_kernel(env, &mut locked, node.clone()).context("reconcile --from-kernel")
    })
}

pub fn run(cli: Cli, bpffs_explicit: bool) -> Result<()> {
    // Every command reads pinned eBPF objects or a root-owned state dir; say so
    // up front rather than fail on a permission somewhere inside.
    require_root()?;
    // Before anything is made: `up` and `reconcile --from-kernel` pin at the given
    // bpffs dir (the other commands at the node's, checked once it is read).
    match &cli.command {
        Command::Up(_)
        | Command::Reconcile(ReconcileArgs {
            from_kernel: true, ..
        }) => {
            bpffs::check_lasting(&cli.bpffs_dir)?;
        }
        _ => {}
    }
    let state_dir = StateDir::new(&cli.state_dir);
    let out = cli.output;
    match &cli.command {
        Command::Up(args) => {
            let mut locked = lock(&state_dir)?;
            // Without --pod-cidr, `up` on a node that is up keeps its CIDRs (a reload
            // after a reboot must not ask for them again).
            let (pod_cidr, pod_cidr6) = match (&locked.state.node, args.pod_cidr.is_empty()) {
                (Some(n), true) => (n.pod_cidr, n.pod_cidr6),
                (None, true) => node::split_cidrs(&[DEFAULT_POD_CIDR.parse()?])?,
                (_, false) => node::split_cidrs(&args.pod_cidr)?,
            };
            let (cluster_cidr, cluster_cidr6) =
                vethbpf::cluster::setup::split_cluster_cidrs(&args.cluster_cidr)
                    .context("vethbpf up")?;
            let req = UpRequest {
                pod_cidr,
                pod_cidr6,
                gateway: args.gateway,
                bpffs_dir: cli.bpffs_dir.clone(),
                replace: args.replace,
                pod_attach: args.pod_attach,
                egress: EgressRequest {
                    uplink: args.uplink.clone(),
                    cluster_cidr,
                    cluster_cidr6,
                    no_masquerade: args.no_masquerade,
                    nat_ports: args.nat_ports,
                    max_flows: args.nat_max_flows,
                },
            };
            cluster::up(out, &mut locked, &req, cluster_cidr6, &args.cluster)?;
            settle(&mut locked)
        }
        Command::Endpoint(EndpointCommand::Add(args)) => {
            let mut locked = lock_up_node_for_endpoint_change(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            let req = AddRequest {
                name: args.name.clone(),
                ips: args.ip.clone(),
                netns: args.netns.clone(),
                ifname: args.ifname.clone(),
            };
            let node = node_config(&locked)?;
            let rec = endpoint::with_kernel(&node, |env| {
                endpoint::add(env, &mut locked, &req)
                    .with_context(|| format!("endpoint add {}", req.name))
            })?;
            output::endpoint(out, &EndpointView::new(&rec, None))
        }
        Command::Endpoint(EndpointCommand::Del { name }) => {
            let mut locked = lock_up_node_for_endpoint_change(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            let node = node_config(&locked)?;
            let rec = endpoint::with_kernel(&node, |env| {
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
                Some(node) => endpoint::list(node, &locked)?,
                None => return Err(RunError::NotUp.into()),
            };
            output::endpoints(out, &views)
        }
        Command::Status if !state_dir.path().join(vethbpf::state::STATE_FILE).exists() => {
            output::status(out, &node::Status::not_up())
        }
        Command::Nat(cmd) => {
            let locked = lock_up_node(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            let node = node_config(&locked)?;
            let mut table = Table::open(&Pins::new(&node.bpffs_dir)).context("the NAT table")?;
            match cmd {
                NatCommand::List => {
                    let flows = table.flows();
                    let views: Vec<output::FlowView<'_>> = flows
                        .iter()
                        .map(|f| output::FlowView {
                            endpoint: locked
                                .state
                                .endpoints
                                .values()
                                .find(|e| e.host_ifindex == f.ifindex)
                                .map(|e| e.name.as_str()),
                            flow: f,
                        })
                        .collect();
                    output::nat_list(out, &views)
                }
                NatCommand::Flush => {
                    let n = table.flush().context("vethbpf nat flush")?;
                    output::nat_flushed(out, n)
                }
            }
        }
        Command::Status => {
            let mut locked = lock_up_node(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            settle(&mut locked)?;
            let status = node::status(&locked)?;
            cluster::status(out, &mut locked, &status)
        }
        Command::Down if !state_dir.path().join(vethbpf::state::STATE_FILE).exists() => {
            output::down(
                out,
                &node::DownReport {
                    was_up: false,
                    endpoints_removed: vec![],
                },
            )
        }
        Command::Down => {
            let mut locked = lock_up_node(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            cluster::down(&mut locked)?;
            let report = match locked.state.node.clone() {
                // The pins are gone (someone unmounted the bpffs): so are the
                // maps and attachments; `down` still removes links, namespaces
                // and state.
                Some(node) if !Pins::new(&node.bpffs_dir).is_loaded() => {
                    tracing::warn!(bpffs = %node.bpffs_dir.display(), "nothing pinned; removing endpoints without the datapath");
                    endpoint::with_kernel_without_pins(|env| {
                        node::down(env, &state_dir, locked).context("vethbpf down")
                    })?
                }
                Some(node) => endpoint::with_kernel(&node, |env| {
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
            let report = endpoint::with_kernel(&node, |env| {
                reconcile::reconcile(env, &mut locked).context("vethbpf reconcile")
            })?;
            let fixes = cluster::reconcile(&mut locked)?;
            cluster::print_reconcile(out, &report, &fixes)
        }
        Command::Demo(args) => demo::run(args.keep, out),
        Command::Node(cmd) => {
            let mut locked = lock_up_node(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            cluster::node(&cli, &mut locked, cmd)
        }
        Command::Agent(args) => cluster::agent(&cli, args),
        Command::Monitor(args) => {
            let locked = lock_up_node(&state_dir)?;
            check_bpffs(&locked, &cli, bpffs_explicit)?;
            monitor(&state_dir, locked, args, out)
        }
        Command::Metrics(args) => {
            // Read without the lock: a scrape never waits for a command.
            if !state_dir.path().join(vethbpf::state::STATE_FILE).exists() {
                return Err(RunError::NoState(state_dir.path().to_path_buf()).into());
            }
            metrics(&state_dir, args)
        }
    }
}

/// `monitor`: claims the event stream (under the state lock, briefly), prints
/// records until a signal or a closed output.
fn monitor(
    state_dir: &StateDir,
    locked: Locked,
    args: &MonitorArgs,
    out: output::Output,
) -> Result<()> {
    let stop = signals::stop_flag()?;
    let req = MonitorRequest {
        drops: matches!(args.event_type, EventType::Drop | EventType::All),
        traces: matches!(args.event_type, EventType::Trace | EventType::All),
        endpoint: args.endpoint.clone(),
        node: args.node.clone(),
        log: args.log,
    };
    let mut session = Session::start(locked, state_dir, req).context("vethbpf monitor")?;
    if out == output::Output::Table {
        eprintln!("listening for events (Ctrl-C to stop)");
    }
    match session.run(stop, &mut |r| output::record(out, r)) {
        // `vethbpf monitor | head`: the reader is done, so are we.
        Err(ObserveError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("vethbpf monitor"),
    }
}

/// `metrics`: the Prometheus text once, or served until a signal.
fn metrics(state_dir: &StateDir, args: &MetricsArgs) -> Result<()> {
    let Some(addr) = args.listen else {
        let text = observe::metrics::render(state_dir).context("vethbpf metrics")?;
        print!("{text}");
        return Ok(());
    };
    let stop = signals::stop_flag()?;
    observe::serve::serve(addr, state_dir, stop, &mut |bound| {
        eprintln!("serving http://{bound}/metrics (Ctrl-C to stop)");
    })
    .context("vethbpf metrics --listen")
}
