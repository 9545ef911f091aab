//! `vethbpf demo`: the whole system, working, in a throwaway node namespace.
//!
//! The demo makes a node namespace `vethbpf-demo-<pid>` and a directory
//! `/run/vethbpf-demo-<pid>` (its bpffs and state dirs), then runs *this binary*
//! inside that namespace for `up` and three `endpoint add`s: the same code path a
//! user takes. It probes every path between the node and the pods (ICMP echo with
//! RTT and TTL, a verified TCP echo), reads the counters back with `endpoint list`,
//! and checks what proves that the eBPF program, not the kernel, carried pod-to-pod
//! traffic: forward counters moved, replies arrive with TTL 63, `ip_forward` is 0,
//! there is no bridge and the host veths have no address.
//!
//! Everything it makes is removed at the end, also when a step fails or the user
//! presses Ctrl-C ([`Demo`] is a guard), unless `--keep` asks to leave it for
//! inspection; then the commands to remove it are printed.

use std::fs::{self, DirBuilder, File};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::cli::output::{Output, table};
use prober::{EchoReply, TcpReport};
use vethbpf::kernel::bpffs::is_bpffs;
use vethbpf::kernel::netlink::{Netlink, RtNetlink};
use vethbpf::kernel::netns;

mod prober;

/// The node's own address, on `lo` of the node namespace: the source of node -> pod
/// traffic and the target of pod -> node traffic. From TEST-NET-1 (RFC 5737), so
/// it can never be a real host's address.
const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PODS: [&str; 3] = ["a", "b", "c"];
const ICMP_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
const TCP_BYTES: usize = 64 * 1024;
/// What a Linux sender puts in the TTL, and what one routing hop leaves of it.
const INITIAL_TTL: u8 = 64;
const STEPS: u32 = 6;

fn progress(step: u32, msg: impl std::fmt::Display) {
    eprintln!("[{step}/{STEPS}] {msg}");
}

// ---- Ctrl-C ----

/// Set by SIGINT/SIGTERM. The demo checks it between steps and then cleans up like
/// after any other failure, instead of dying with namespaces and pins left behind.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_interrupt_handler() -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    // SA_RESETHAND: a second Ctrl-C kills the demo at once, for a user who does not
    // want to wait for the cleanup. SA_RESTART: blocking calls are not cut short.
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESETHAND | SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe,
        // and no other code in vethbpf installs handlers for these signals.
        unsafe { sigaction(signal, &action) }
            .with_context(|| format!("installing a {signal} handler"))?;
    }
    Ok(())
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

// ---- what the child `vethbpf ... -o json` commands print ----

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
struct Count {
    packets: u64,
    bytes: u64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct Counters {
    forwarded: Count,
    arp_replies: Count,
    #[serde(default)]
    echo_replies: Count,
    passed: Count,
    dropped: Count,
}

/// An endpoint as `endpoint add` and `endpoint list` print it (fields the demo
/// does not use are ignored).
#[derive(Clone, Debug, Deserialize)]
struct EndpointJson {
    name: String,
    ip: Ipv4Addr,
    pod_mac: String,
    host_veth: String,
    host_ifindex: u32,
    netns: PathBuf,
    #[serde(default)]
    counters: Option<Counters>,
}

// ---- the report ----

#[derive(Clone, Debug, Serialize)]
struct Pod {
    label: String,
    name: String,
    ip: Ipv4Addr,
    pod_mac: String,
    host_veth: String,
    host_ifindex: u32,
    netns: PathBuf,
}

/// One side of a probe: the node or a pod.
#[derive(Clone, Debug)]
struct Peer {
    label: String,
    ip: Ipv4Addr,
    netns: PathBuf,
    is_node: bool,
}

#[derive(Clone, Debug, Serialize)]
struct IcmpCell {
    ok: bool,
    rtt_ms: Option<f64>,
    ttl: Option<u8>,
    expected_ttl: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
struct TcpCell {
    ok: bool,
    bytes: usize,
    elapsed_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
struct Cell {
    from: String,
    to: String,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// `ebpf` for pod -> pod (from_pod redirects it), `kernel` for node <-> pod
    /// (the node's own stack and its /32 routes).
    path: &'static str,
    ok: bool,
    icmp: IcmpCell,
    tcp: TcpCell,
}

/// A pod pinging its gateway: the first thing a person tries, answered by from_pod
/// itself (nothing in the node owns the link-local gateway address).
#[derive(Clone, Debug, Serialize)]
struct GatewayCell {
    from: String,
    gateway: Ipv4Addr,
    ok: bool,
    rtt_ms: Option<f64>,
    ttl: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Clone, Debug, Serialize)]
struct NodeInfo {
    name: String,
    netns: PathBuf,
    address: Ipv4Addr,
    bpffs_dir: PathBuf,
    state_dir: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize)]
struct CleanupInfo {
    kept: bool,
    done: bool,
    problems: Vec<String>,
    /// With `--keep`: the commands that inspect and remove what the demo left.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    inspect: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    remove: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    node: NodeInfo,
    pods: Vec<Pod>,
    matrix: Vec<Cell>,
    /// Each pod's ping to its gateway.
    gateway: Vec<GatewayCell>,
    /// `endpoint list -o json`, as printed.
    counters: serde_json::Value,
    /// The same, parsed, for the table.
    #[serde(skip)]
    list: Vec<EndpointJson>,
    checks: Vec<Check>,
    cleanup: CleanupInfo,
}

// ---- the guard ----

/// Everything the demo made, and how to remove it. Dropping it removes whatever
/// exists (best effort), unless `--keep`.
struct Demo {
    name: String,
    dir: PathBuf,
    bpffs: PathBuf,
    state: PathBuf,
    /// The binary's path, for the commands printed with `--keep`.
    exe: PathBuf,
    keep: bool,
    dir_created: bool,
    node_netns: Option<PathBuf>,
    /// Open for the children's `setns` (see [`Demo::vethbpf`]).
    node_fd: Option<File>,
    /// `up` was attempted: `down` has something to do.
    up_started: bool,
    /// Endpoints that `endpoint add` made.
    endpoints: Vec<String>,
    /// Cleanup ran, or the kept-notice was printed.
    finished: bool,
}

impl Demo {
    fn new(keep: bool) -> Self {
        Self::named(format!("vethbpf-demo-{}", std::process::id()), keep)
    }

    /// The node namespace is `name`, the directory `/run/<name>`, the pods
    /// `<name>-a`, ...
    fn named(name: String, keep: bool) -> Self {
        let dir = PathBuf::from("/run").join(&name);
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vethbpf"));
        Demo {
            bpffs: dir.join("bpffs"),
            state: dir.join("state"),
            dir,
            name,
            exe,
            keep,
            dir_created: false,
            node_netns: None,
            node_fd: None,
            up_started: false,
            endpoints: Vec::new(),
            finished: false,
        }
    }

    /// Step 1: the directory and the node namespace with `lo` up and the node
    /// address on it.
    fn make_node(&mut self) -> Result<()> {
        DirBuilder::new()
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| {
                format!(
                    "creating {} (left over from an earlier demo with the same pid? remove it)",
                    self.dir.display()
                )
            })?;
        self.dir_created = true;
        for d in [&self.bpffs, &self.state] {
            DirBuilder::new()
                .mode(0o700)
                .create(d)
                .with_context(|| format!("creating {}", d.display()))?;
        }

        let path = netns::create_named(&self.name)
            .with_context(|| format!("creating the node namespace {}", self.name))?;
        self.node_netns = Some(path.clone());
        self.node_fd =
            Some(File::open(&path).with_context(|| format!("opening {}", path.display()))?);

        netns::with_netlink_in(&path, |nl: &mut RtNetlink| {
            let lo = nl
                .link_by_name("lo")?
                .context("the new namespace has no lo")?;
            nl.set_link_up(lo.index)?;
            nl.add_address(lo.index, Ipv4Net::from(NODE_ADDR))?;
            Ok::<_, anyhow::Error>(())
        })
        .context("configuring lo in the node namespace")?;

        // A new namespace starts with forwarding off, unless the host sets
        // net.core.devconf_inherit_init_net. The demo's point is that pods talk with
        // it off, so make sure it is.
        let forward = read_sysctl(&path, "net/ipv4/ip_forward")?;
        if forward != "0" {
            netns::run_in(&path, || fs::write("/proc/sys/net/ipv4/ip_forward", "0"))?
                .context("turning ip_forward off in the node namespace")?;
            debug!(was = %forward, "ip_forward turned off in the node namespace");
        }
        Ok(())
    }

    fn node_netns(&self) -> Result<&Path> {
        self.node_netns
            .as_deref()
            .context("the node namespace does not exist")
    }

    /// Runs `vethbpf --bpffs-dir .. --state-dir .. -o json ARGS` inside the node
    /// namespace and parses what it prints.
    fn vethbpf(&self, args: &[&str]) -> Result<serde_json::Value> {
        let node_fd = self
            .node_fd
            .as_ref()
            .context("the node namespace is not open")?
            .as_raw_fd();
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("--bpffs-dir")
            .arg(&self.bpffs)
            .arg("--state-dir")
            .arg(&self.state)
            .args(["-o", "json"])
            .args(args)
            .stdin(Stdio::null())
            // Its own process group: a Ctrl-C on the terminal reaches only the
            // demo, which lets the running command finish and then cleans up.
            .process_group(0);
        // SAFETY: runs in the forked child before exec, where only
        // async-signal-safe calls are allowed: setns(2) is a plain system call, and
        // `last_os_error` only reads errno. The descriptor was opened before the
        // fork and stays open (it is owned by `self`) until `output` returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(node_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let shown = format!("vethbpf {}", args.join(" "));
        debug!(command = %shown, "running in the node namespace");
        let out = cmd
            .output()
            .with_context(|| format!("running `{shown}` in the node namespace"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("`{shown}` failed ({}): {}", out.status, stderr.trim());
        }
        if !stderr.trim().is_empty() {
            // Warnings of the child: shown, not swallowed.
            eprint!("{stderr}");
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing the JSON output of `{shown}`"))
    }

    /// The commands to inspect and to remove what `--keep` leaves.
    fn kept_commands(&self) -> (Vec<String>, Vec<String>) {
        let netns = netns::named_path(&self.name);
        let cli = format!(
            "nsenter --net={} {} --bpffs-dir {} --state-dir {}",
            netns.display(),
            self.exe.display(),
            self.bpffs.display(),
            self.state.display()
        );
        let mut inspect = vec![format!("{cli} status"), format!("{cli} endpoint list")];
        if let Some(pod) = self.endpoints.first() {
            inspect.push(format!("ip netns exec {pod} ip route"));
        }
        let remove = vec![
            // Removes the endpoints, their namespaces and pins, and unmounts the
            // bpffs that `up` mounted.
            format!("{cli} down"),
            format!("ip netns del {}", self.name),
            // Only does something if `down` could not unmount it.
            format!("mountpoint -q {0} && umount {0}", self.bpffs.display()),
            format!("rm -r {}", self.dir.display()),
        ];
        (inspect, remove)
    }

    fn print_kept(&self, to_stdout: bool) {
        let (inspect, remove) = self.kept_commands();
        let mut text = format!(
            "kept: node namespace {}, {} endpoint(s), datapath pinned in {}\n\ninspect:\n",
            self.name,
            self.endpoints.len(),
            self.bpffs.display()
        );
        for c in &inspect {
            text.push_str(&format!("  {c}\n"));
        }
        text.push_str("\nremove:\n");
        for c in &remove {
            text.push_str(&format!("  {c}\n"));
        }
        if to_stdout {
            print!("{text}");
        } else {
            eprint!("{text}");
        }
    }

    /// Removes everything the demo made, in order; goes on after a failure and
    /// returns what could not be removed.
    fn cleanup(&mut self) -> Vec<String> {
        self.finished = true;
        let mut problems = Vec::new();
        if self.up_started && self.node_fd.is_some() {
            progress(STEPS, "cleaning up: vethbpf down");
            if let Err(e) = self.vethbpf(&["down"]) {
                problems.push(format!("{e:#}"));
            }
        } else {
            progress(STEPS, "cleaning up");
        }
        // Pod namespaces that a failed `down` left.
        for pod in &self.endpoints {
            if netns::named_path(pod).exists()
                && let Err(e) = netns::delete_named(pod)
            {
                problems.push(format!("deleting the namespace {pod}: {e}"));
            }
        }
        self.node_fd = None;
        if self.node_netns.take().is_some() {
            // Whatever `down` could not remove in it (veths, addresses) goes with it.
            if let Err(e) = netns::delete_named(&self.name) {
                problems.push(format!("deleting the node namespace {}: {e}", self.name));
            }
        }
        if self.dir_created {
            let mut may_remove = true;
            if is_bpffs(&self.bpffs) {
                // `down` unmounts the bpffs that `up` mounted; this is for when it
                // could not run. Detached: pins go away once nothing uses them.
                if let Err(e) = nix::mount::umount2(&self.bpffs, nix::mount::MntFlags::MNT_DETACH) {
                    problems.push(format!("unmounting {}: {e}", self.bpffs.display()));
                    // Never recurse into a mounted bpffs.
                    may_remove = false;
                }
            }
            if may_remove {
                match fs::remove_dir_all(&self.dir) {
                    Ok(()) => self.dir_created = false,
                    Err(e) => problems.push(format!("removing {}: {e}", self.dir.display())),
                }
            }
        }
        problems
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if self.keep {
            self.finished = true;
            self.print_kept(false);
            return;
        }
        for problem in self.cleanup() {
            warn!("cleanup: {problem}");
        }
    }
}

/// Reads `/proc/sys/<key>` as the namespace `netns` sees it: /proc/sys/net shows
/// the namespace of the thread that opens the file, so it is opened in there.
fn read_sysctl(netns: &Path, key: &str) -> Result<String> {
    let file = Path::new("/proc/sys").join(key);
    let value = netns::run_in(netns, || fs::read_to_string(&file))?
        .with_context(|| format!("reading {}", file.display()))?;
    Ok(value.trim().to_string())
}

// ---- probes ----

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 1e2
}

fn probe_cell(from: &Peer, to: &Peer) -> Cell {
    let pod_to_pod = !from.is_node && !to.is_node;
    let expected_ttl = if pod_to_pod {
        INITIAL_TTL - 1
    } else {
        INITIAL_TTL
    };
    let icmp = match prober::icmp_echo(&from.netns, to.ip, ICMP_TIMEOUT) {
        Ok(EchoReply { rtt, ttl }) => IcmpCell {
            ok: true,
            rtt_ms: Some(ms(rtt)),
            ttl: Some(ttl),
            expected_ttl,
            error: None,
        },
        Err(e) => IcmpCell {
            ok: false,
            rtt_ms: None,
            ttl: None,
            expected_ttl,
            error: Some(e.to_string()),
        },
    };
    let tcp = match prober::tcp_exchange(&to.netns, to.ip, &from.netns, TCP_BYTES, TCP_TIMEOUT) {
        Ok(TcpReport { bytes, elapsed, .. }) => TcpCell {
            ok: true,
            bytes,
            elapsed_ms: Some(ms(elapsed)),
            error: None,
        },
        Err(e) => TcpCell {
            ok: false,
            bytes: TCP_BYTES,
            elapsed_ms: None,
            error: Some(e.to_string()),
        },
    };
    Cell {
        from: from.label.clone(),
        to: to.label.clone(),
        src: from.ip,
        dst: to.ip,
        path: if pod_to_pod { "ebpf" } else { "kernel" },
        ok: icmp.ok && tcp.ok,
        icmp,
        tcp,
    }
}

fn gateway_cell(from: &Peer, gateway: Ipv4Addr) -> GatewayCell {
    let (ok, rtt_ms, ttl, error) = match prober::icmp_echo(&from.netns, gateway, ICMP_TIMEOUT) {
        Ok(EchoReply { rtt, ttl }) => (true, Some(ms(rtt)), Some(ttl), None),
        Err(e) => (false, None, None, Some(e.to_string())),
    };
    GatewayCell {
        from: from.label.clone(),
        gateway,
        ok,
        rtt_ms,
        ttl,
        error,
    }
}

fn cell_text(c: &Cell) -> String {
    let icmp = match (&c.icmp.rtt_ms, &c.icmp.ttl) {
        (Some(rtt), Some(ttl)) => format!("ok {rtt:.2}ms ttl={ttl}"),
        _ => "icmp FAIL".to_string(),
    };
    let tcp = if c.tcp.ok { "tcp ok" } else { "tcp FAIL" };
    format!("{icmp} {tcp}")
}

// ---- checks ----

fn checks(
    report_pods: &[Pod],
    matrix: &[Cell],
    gateway: &[GatewayCell],
    list: &[EndpointJson],
    node: &Path,
) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    let label = |name: &str| {
        report_pods
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.label.clone())
            .unwrap_or_else(|| name.to_string())
    };

    let pod_cells: Vec<&Cell> = matrix.iter().filter(|c| c.path == "ebpf").collect();
    let pod_ok = pod_cells.iter().filter(|c| c.ok).count();
    checks.push(Check {
        name: "pod-to-pod",
        ok: pod_ok == pod_cells.len() && !pod_cells.is_empty(),
        detail: format!(
            "{pod_ok} of {} pod-to-pod paths answered ICMP and echoed {} KiB over TCP",
            pod_cells.len(),
            TCP_BYTES / 1024
        ),
    });

    // One counter of every endpoint, labelled by pod.
    let per_pod = |count: fn(&Counters) -> u64| -> Vec<(String, u64)> {
        list.iter()
            .map(|e| (label(&e.name), e.counters.as_ref().map_or(0, count)))
            .collect()
    };
    let forwarded: Vec<(String, u64)> = per_pod(|c| c.forwarded.packets);
    checks.push(Check {
        name: "forwarded by from_pod",
        ok: forwarded.len() == report_pods.len() && forwarded.iter().all(|(_, n)| *n > 0),
        detail: format!(
            "the forward counter of from_pod moved on every host veth ({})",
            forwarded
                .iter()
                .map(|(l, n)| format!("{l}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });

    let ttls: Vec<u8> = pod_cells.iter().filter_map(|c| c.icmp.ttl).collect();
    checks.push(Check {
        name: "ttl decremented",
        ok: !ttls.is_empty() && ttls.iter().all(|t| *t == INITIAL_TTL - 1),
        detail: format!(
            "pod-to-pod replies arrived with ttl={} ({} minus the one hop from_pod routed); node <-> pod with {}",
            INITIAL_TTL - 1,
            INITIAL_TTL,
            INITIAL_TTL
        ),
    });

    let arp: Vec<(String, u64)> = per_pod(|c| c.arp_replies.packets);
    checks.push(Check {
        name: "gateway ARP",
        ok: !arp.is_empty() && arp.iter().all(|(_, n)| *n > 0),
        detail: format!(
            "from_pod answered every pod's ARP for the gateway ({})",
            arp.iter()
                .map(|(l, n)| format!("{l}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });

    let echo: Vec<(String, u64)> = per_pod(|c| c.echo_replies.packets);
    let gw_ok = gateway.iter().filter(|g| g.ok).count();
    checks.push(Check {
        name: "gateway answers ping",
        ok: gw_ok == report_pods.len()
            && echo.len() == report_pods.len()
            && echo.iter().all(|(_, n)| *n > 0),
        detail: format!(
            "{gw_ok} of {} pods got an echo reply from the gateway, built by from_pod (echo replies: {})",
            report_pods.len(),
            echo.iter()
                .map(|(l, n)| format!("{l}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });

    let forward = read_sysctl(node, "net/ipv4/ip_forward")?;
    let proxy_arp = read_sysctl(node, "net/ipv4/conf/all/proxy_arp")?;
    checks.push(Check {
        name: "no kernel forwarding",
        ok: forward == "0" && proxy_arp == "0",
        detail: format!(
            "ip_forward={forward} and proxy_arp={proxy_arp} in the node namespace: the kernel did not route between pods"
        ),
    });

    let host_veths: Vec<(String, u32)> = list
        .iter()
        .map(|e| (e.host_veth.clone(), e.host_ifindex))
        .collect();
    let (bridges, total_links, addressed) = netns::with_netlink_in(node, |nl: &mut RtNetlink| {
        let links = nl.links()?;
        let bridges: Vec<String> = links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("bridge"))
            .map(|l| l.name.clone())
            .collect();
        let mut addressed = Vec::new();
        for (name, index) in &host_veths {
            for (_, addr) in nl.addresses(Some(*index))? {
                addressed.push(format!("{name} has {addr}"));
            }
        }
        Ok::<_, anyhow::Error>((bridges, links.len(), addressed))
    })
    .context("inspecting the node namespace")?;
    checks.push(Check {
        name: "no bridge",
        ok: bridges.is_empty(),
        detail: if bridges.is_empty() && total_links == host_veths.len() + 1 {
            format!(
                "no bridge in the node namespace ({total_links} links: lo and {} host veths)",
                host_veths.len()
            )
        } else if bridges.is_empty() {
            format!("no bridge in the node namespace ({total_links} links)")
        } else {
            format!("bridges in the node namespace: {}", bridges.join(", "))
        },
    });
    checks.push(Check {
        name: "no host veth address",
        ok: addressed.is_empty(),
        detail: if addressed.is_empty() {
            "the host veths carry no IPv4 address".to_string()
        } else {
            addressed.join(", ")
        },
    });
    Ok(checks)
}

// ---- the scenario ----

/// Steps 1 to 5; everything they make is recorded in `demo` for the cleanup.
fn scenario(demo: &mut Demo) -> Result<Report> {
    progress(
        1,
        format_args!(
            "node namespace {} ({NODE_ADDR} on lo), pins and state in {}",
            demo.name,
            demo.dir.display()
        ),
    );
    demo.make_node()?;
    check_interrupted()?;

    progress(2, "vethbpf up: loading and pinning the datapath");
    demo.up_started = true;
    let up = demo.vethbpf(&["up"])?;
    debug!(%up, "up");
    check_interrupted()?;

    let mut pods = Vec::new();
    for suffix in PODS {
        let name = format!("{}-{suffix}", demo.name);
        let label = format!("pod-{suffix}");
        // A failed add rolls itself back; only an added endpoint is the demo's to
        // remove (its namespace name could, in theory, belong to someone else).
        let value = demo.vethbpf(&["endpoint", "add", &name])?;
        demo.endpoints.push(name.clone());
        let ep: EndpointJson = serde_json::from_value(value)
            .with_context(|| format!("reading what `endpoint add {name}` printed"))?;
        progress(
            3,
            format_args!("added endpoint {name} ({label}): {}", ep.ip),
        );
        pods.push(Pod {
            label,
            name: ep.name,
            ip: ep.ip,
            pod_mac: ep.pod_mac,
            host_veth: ep.host_veth,
            host_ifindex: ep.host_ifindex,
            netns: ep.netns,
        });
        check_interrupted()?;
    }

    let node_netns = demo.node_netns()?.to_path_buf();
    let node = Peer {
        label: "node".into(),
        ip: NODE_ADDR,
        netns: node_netns.clone(),
        is_node: true,
    };
    let pod_peers: Vec<Peer> = pods
        .iter()
        .map(|p| Peer {
            label: p.label.clone(),
            ip: p.ip,
            netns: p.netns.clone(),
            is_node: false,
        })
        .collect();
    progress(
        4,
        format_args!(
            "probing every path: ICMP echo and a {} KiB TCP echo",
            TCP_BYTES / 1024
        ),
    );
    let mut matrix = Vec::new();
    let sources = std::iter::once(&node).chain(&pod_peers);
    for from in sources {
        let targets = pod_peers.iter().chain((!from.is_node).then_some(&node));
        for to in targets.filter(|to| to.label != from.label) {
            let cell = probe_cell(from, to);
            debug!(from = %cell.from, to = %cell.to, ok = cell.ok, "probed");
            matrix.push(cell);
            check_interrupted()?;
        }
    }

    let gateway_ip: Ipv4Addr = vethbpf::defaults::GATEWAY
        .parse()
        .context("the default gateway address")?;
    let gateway: Vec<GatewayCell> = pod_peers
        .iter()
        .map(|p| gateway_cell(p, gateway_ip))
        .collect();
    check_interrupted()?;

    progress(5, "reading counters and checking the node namespace");
    let counters = demo.vethbpf(&["endpoint", "list"])?;
    let list: Vec<EndpointJson> =
        serde_json::from_value(counters.clone()).context("reading what `endpoint list` printed")?;
    let checks = checks(&pods, &matrix, &gateway, &list, &node_netns)?;

    let ok =
        matrix.iter().all(|c| c.ok) && gateway.iter().all(|g| g.ok) && checks.iter().all(|c| c.ok);
    Ok(Report {
        ok,
        node: NodeInfo {
            name: demo.name.clone(),
            netns: node_netns,
            address: NODE_ADDR,
            bpffs_dir: demo.bpffs.clone(),
            state_dir: demo.state.clone(),
        },
        pods,
        matrix,
        gateway,
        counters,
        list,
        checks,
        cleanup: CleanupInfo::default(),
    })
}

fn print_table(r: &Report) {
    println!(
        "vethbpf demo: node namespace {} (node address {}), {} pods\n",
        r.node.name,
        r.node.address,
        r.pods.len()
    );
    table(
        &["POD", "ENDPOINT", "IP", "POD MAC", "HOST VETH"],
        &r.pods
            .iter()
            .map(|p| {
                vec![
                    p.label.clone(),
                    p.name.clone(),
                    p.ip.to_string(),
                    p.pod_mac.clone(),
                    p.host_veth.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    );

    println!(
        "\nconnectivity: ICMP echo (rtt, ttl of the reply) and {} KiB echoed over TCP",
        TCP_BYTES / 1024
    );
    let mut columns: Vec<String> = r.pods.iter().map(|p| p.label.clone()).collect();
    columns.push("node".into());
    let mut header = vec!["FROM \\ TO".to_string()];
    header.extend(columns.iter().cloned());
    header.push("gateway".into());
    let rows: Vec<Vec<String>> = std::iter::once("node".to_string())
        .chain(r.pods.iter().map(|p| p.label.clone()))
        .map(|from| {
            let mut row = vec![from.clone()];
            for to in &columns {
                let cell = r.matrix.iter().find(|c| c.from == from && &c.to == to);
                row.push(cell.map_or_else(|| "-".to_string(), cell_text));
            }
            let gw = r.gateway.iter().find(|g| g.from == from);
            row.push(match gw {
                Some(GatewayCell {
                    rtt_ms: Some(rtt),
                    ttl: Some(ttl),
                    ..
                }) => format!("ok {rtt:.2}ms ttl={ttl}"),
                Some(_) => "icmp FAIL".to_string(),
                None => "-".to_string(),
            });
            row
        })
        .collect();
    table(
        &header.iter().map(String::as_str).collect::<Vec<_>>(),
        &rows,
    );
    for g in r.gateway.iter().filter(|g| !g.ok) {
        if let Some(err) = &g.error {
            println!("  {} -> gateway {} icmp: {err}", g.from, g.gateway);
        }
    }
    for c in r.matrix.iter().filter(|c| !c.ok) {
        for (what, err) in [("icmp", &c.icmp.error), ("tcp", &c.tcp.error)] {
            if let Some(err) = err {
                println!(
                    "  {} -> {} ({} -> {}) {what}: {err}",
                    c.from, c.to, c.src, c.dst
                );
            }
        }
    }

    println!("\ncounters of from_pod (packets), per host veth:");
    table(
        &[
            "POD",
            "FORWARDED",
            "ARP REPLIES",
            "ECHO REPLIES",
            "PASSED",
            "DROPPED",
        ],
        &r.list
            .iter()
            .map(|e| {
                let label = r
                    .pods
                    .iter()
                    .find(|p| p.name == e.name)
                    .map_or_else(|| e.name.clone(), |p| p.label.clone());
                let c = e.counters.clone().unwrap_or_default();
                vec![
                    label,
                    c.forwarded.packets.to_string(),
                    c.arp_replies.packets.to_string(),
                    c.echo_replies.packets.to_string(),
                    c.passed.packets.to_string(),
                    c.dropped.packets.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );

    println!("\nchecks:");
    for c in &r.checks {
        println!("  {:<4}  {}", if c.ok { "ok" } else { "FAIL" }, c.detail);
    }
    println!();
}

/// `vethbpf demo [--keep]`.
pub fn run(keep: bool, out: Output) -> Result<()> {
    install_interrupt_handler()?;
    let mut demo = Demo::new(keep);
    // On an error here, dropping `demo` cleans up (or, with --keep, says how).
    let mut report = scenario(&mut demo)?;

    if keep {
        demo.finished = true;
        let (inspect, remove) = demo.kept_commands();
        report.cleanup = CleanupInfo {
            kept: true,
            done: false,
            problems: vec![],
            inspect,
            remove,
        };
    } else {
        let problems = demo.cleanup();
        report.cleanup = CleanupInfo {
            kept: false,
            done: problems.is_empty(),
            problems,
            ..Default::default()
        };
    }

    match out {
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).context("serializing the report")?
            );
            if keep {
                demo.print_kept(false);
            }
        }
        Output::Table => {
            print_table(&report);
            if keep {
                demo.print_kept(true);
            } else if report.cleanup.done {
                println!(
                    "cleaned up: endpoints, namespaces, pins and {} are gone",
                    demo.dir.display()
                );
            }
        }
    }

    if !report.cleanup.problems.is_empty() {
        let (_, remove) = demo.kept_commands();
        bail!(
            "cleanup was incomplete: {}; finish it by hand with:\n  {}",
            report.cleanup.problems.join("; "),
            remove.join("\n  ")
        );
    }
    let failed: Vec<String> = report
        .matrix
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{} -> {}", c.from, c.to))
        .chain(
            report
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("check `{}`", c.name)),
        )
        .collect();
    if !failed.is_empty() {
        bail!(
            "the demo failed: {} ({} of {} paths ok)",
            failed.join(", "),
            report.matrix.iter().filter(|c| c.ok).count(),
            report.matrix.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_text_and_ms() {
        assert_eq!(ms(Duration::from_micros(61)), 0.06);
        assert_eq!(ms(Duration::from_millis(2)), 2.0);
        let from = Peer {
            label: "pod-a".into(),
            ip: Ipv4Addr::new(10, 244, 0, 1),
            netns: PathBuf::from("/nonexistent/vethbpf/a"),
            is_node: false,
        };
        let to = Peer {
            label: "pod-b".into(),
            ip: Ipv4Addr::new(10, 244, 0, 2),
            netns: PathBuf::from("/nonexistent/vethbpf/b"),
            is_node: false,
        };
        // Namespaces that do not exist: both probes fail, and say why.
        let cell = probe_cell(&from, &to);
        assert!(!cell.ok);
        assert_eq!(cell.path, "ebpf");
        assert_eq!(cell.icmp.expected_ttl, 63);
        assert_eq!(cell_text(&cell), "icmp FAIL tcp FAIL");
        assert!(
            cell.tcp
                .error
                .as_deref()
                .unwrap_or("")
                .contains("does not exist")
        );
    }

    /// What the guard does when `down` could not run: pod namespaces, the node
    /// namespace, a still-mounted bpffs and the directory all go.
    #[test]
    #[ignore = "needs root: creates network namespaces and mounts a bpffs"]
    fn cleanup_removes_leftovers_without_down() {
        let mut demo = Demo::named(format!("vbt-demo-{}", std::process::id()), false);
        demo.make_node().unwrap();
        let node = demo.node_netns().unwrap().to_path_buf();
        assert_eq!(read_sysctl(&node, "net/ipv4/ip_forward").unwrap(), "0");
        let addrs = netns::with_netlink_in(&node, |nl: &mut RtNetlink| {
            Ok::<_, anyhow::Error>(nl.addresses(None)?)
        })
        .unwrap();
        assert!(addrs.iter().any(|(_, a)| a.addr() == NODE_ADDR));
        // The node answers on its address from inside its namespace.
        assert_eq!(
            prober::icmp_echo(&node, NODE_ADDR, ICMP_TIMEOUT)
                .unwrap()
                .ttl,
            INITIAL_TTL
        );

        // As if `up` had mounted the bpffs and an endpoint had been added, and
        // then `down` could not run.
        vethbpf::kernel::bpffs::ensure(&demo.bpffs).unwrap();
        assert!(is_bpffs(&demo.bpffs));
        let pod = format!("{}-a", demo.name);
        netns::create_named(&pod).unwrap();
        demo.endpoints.push(pod.clone());

        let problems = demo.cleanup();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(!netns::named_path(&pod).exists());
        assert!(!node.exists());
        assert!(!demo.dir.exists());
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&demo.name), "{mounts}");
    }
}
