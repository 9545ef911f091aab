//! Control-plane cost: how long it takes to add and delete one endpoint (a pod's
//! network) with N endpoints already on the node, for vethbpf (its command line
//! and its CNI plugin), the CNI ptp plugin and the plain iproute2 recipe, each in a
//! node namespace of its own.
//!
//! Pod namespaces are created beforehand and not timed, for all of them alike: a
//! container runtime makes the namespace and hands it to the network plugin
//! (vethbpf gets it with `--netns`, or as `CNI_NETNS`). Each timed operation is the
//! wall-clock time of what a runtime would run: one `vethbpf endpoint add/del`
//! process, one CNI plugin ADD/DEL (vethbpf's, or ptp, which itself runs
//! host-local), or the recipe's commands in sequence.
//!
//! The node grows in stages (e.g. 10, 100, 1000 endpoints) with the contenders
//! interleaved one operation at a time; at each stage `probes` extra endpoints are
//! added and deleted again, round-robin, and their latencies are the stage's figures.
//! At the largest stage, bursts of `burst` concurrent ADDs (a node starting many
//! pods at once) are timed as a whole, then deleted concurrently, and vethbpf's
//! `endpoint list` and `status` are timed. At the end every endpoint is deleted,
//! timed: the drain.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{
    report::{Target, target},
    stats,
    sys::{self, Teardown, in_ns, ip, netns_add},
    topo::{self, Cni, Vethbpf},
};

#[derive(Clone, Debug, Serialize)]
pub struct CpSample {
    pub contender: &'static str,
    /// "add" or "del".
    pub op: &'static str,
    /// "populate" (growing the node), "probe" (at a stage size), "burst" (one of
    /// several at once) or "drain".
    pub phase: &'static str,
    /// Endpoints on the node before the operation.
    pub endpoints: usize,
    pub ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpStage {
    pub contender: &'static str,
    pub endpoints: usize,
    pub add_p50_ms: f64,
    pub add_p99_ms: f64,
    pub del_p50_ms: f64,
    pub del_p99_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpTotal {
    pub contender: &'static str,
    pub endpoints: usize,
    /// Sum of the populate adds from 0 to `endpoints`.
    pub add_total_s: f64,
    /// Sum of the drain deletes from `endpoints` to 0.
    pub del_total_s: f64,
}

/// `burst` operations started at once: from the first start to the last end
/// (median over rounds), and the slowest single operation.
#[derive(Clone, Debug, Serialize)]
pub struct CpBurst {
    pub contender: &'static str,
    pub op: &'static str,
    /// Endpoints on the node before the burst.
    pub endpoints: usize,
    pub concurrent: usize,
    pub rounds: usize,
    pub total_ms: f64,
    pub slowest_ms: f64,
}

/// A read-only vethbpf command on the node at `endpoints`.
#[derive(Clone, Debug, Serialize)]
pub struct CpQuery {
    pub command: &'static str,
    pub endpoints: usize,
    pub runs: usize,
    pub p50_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CpResults {
    pub samples: Vec<CpSample>,
    pub stages: Vec<CpStage>,
    pub totals: Vec<CpTotal>,
    pub bursts: Vec<CpBurst>,
    pub queries: Vec<CpQuery>,
    /// Contenders that could not run, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// One way of giving pods their network. `Sync`: bursts run it from many threads.
trait Plugin: Sync {
    fn name(&self) -> &'static str;
    fn add(&self, idx: usize, pod: &str) -> Result<()>;
    fn del(&self, idx: usize, pod: &str) -> Result<()>;
}

/// vethbpf's command line on a node whose pods get `.1`'s attachment: `vethbpf`
/// the default (cls_bpf filters), `vethbpf-tcx` a TCX link per pod.
struct VethbpfPlugin(Vethbpf, &'static str);

impl Plugin for VethbpfPlugin {
    fn name(&self) -> &'static str {
        self.1
    }
    fn add(&self, _: usize, pod: &str) -> Result<()> {
        self.0
            .add(pod, None::<std::net::IpAddr>, Some(&sys::netns_path(pod)))
    }
    fn del(&self, _: usize, pod: &str) -> Result<()> {
        self.0.del(pod)
    }
}

/// vethbpf's own CNI plugin: the same binary run as a container runtime runs a
/// plugin (`CNI_COMMAND` set, the network configuration on stdin), with its own
/// node, state and bpffs dirs.
struct VethbpfCniPlugin {
    node: String,
    bin: PathBuf,
    config: String,
}

impl VethbpfCniPlugin {
    const NETWORK: &'static str = "vbbcni";

    fn new(bin: &Path, node: &str, vb: &Vethbpf, cidr: &str) -> Self {
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": Self::NETWORK,
            "type": "vethbpf",
            "podCidr": cidr,
            "gateway": topo::GATEWAY,
            "stateDir": vb.state_dir(),
            "bpffsDir": vb.bpffs_dir(),
        })
        .to_string();
        Self {
            node: node.to_string(),
            bin: bin.to_path_buf(),
            config,
        }
    }

    fn call(&self, verb: &str, pod: &str) -> Result<String> {
        let mut c = in_ns(&self.node, &self.bin);
        c.env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", format!("{pod}-id"))
            .env("CNI_NETNS", sys::netns_path(pod))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", topo::CNI_PATH);
        sys::run_with_input(&mut c, self.config.as_bytes(), Duration::from_secs(30))
            .with_context(|| format!("vethbpf CNI {verb} {pod}"))
    }
}

impl Plugin for VethbpfCniPlugin {
    fn name(&self) -> &'static str {
        "vethbpf-cni"
    }
    fn add(&self, _: usize, pod: &str) -> Result<()> {
        let out = self.call("ADD", pod)?;
        // The path measured is the plugin's: a CNI result with vethbpf's host veth
        // (`vb` + hash) and the pod's address.
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("CNI ADD result: {out}"))?;
        let host = v["interfaces"][0]["name"].as_str().unwrap_or_default();
        if !host.starts_with("vb") || v["ips"][0]["address"].as_str().is_none() {
            bail!("not a vethbpf CNI ADD result: {out}");
        }
        Ok(())
    }
    fn del(&self, _: usize, pod: &str) -> Result<()> {
        self.call("DEL", pod).map(drop)
    }
}

struct PtpPlugin(Cni);

impl Plugin for PtpPlugin {
    fn name(&self) -> &'static str {
        "ptp"
    }
    fn add(&self, _: usize, pod: &str) -> Result<()> {
        self.0.add(&format!("{pod}-id"), pod).map(|_| ())
    }
    fn del(&self, _: usize, pod: &str) -> Result<()> {
        self.0.del(&format!("{pod}-id"), pod)
    }
}

struct RecipePlugin {
    node: String,
}

impl Plugin for RecipePlugin {
    fn name(&self) -> &'static str {
        "iproute2"
    }
    fn add(&self, idx: usize, pod: &str) -> Result<()> {
        // 10.240.0.0/16, skipping .0 and .1 of each /24.
        let addr = Ipv4Addr::new(10, 240, (idx / 250) as u8, (idx % 250 + 2) as u8);
        for args in topo::routing_recipe(&self.node, pod, &format!("vbh{idx}"), addr) {
            sys::run(Command::new(&args[0]).args(&args[1..]))?;
        }
        Ok(())
    }
    fn del(&self, idx: usize, _: &str) -> Result<()> {
        // Deleting the host veth removes its peer and the /32 route with it.
        ip(Some(&self.node), &["link", "del", &format!("vbh{idx}")]).map(|_| ())
    }
}

pub struct CpPlan<'a> {
    pub sizes: &'a [usize],
    pub probes: usize,
    /// Concurrent operations per burst, and bursts per contender.
    pub burst: usize,
    pub burst_rounds: usize,
    /// Runs of `endpoint list` and `status` at the largest size.
    pub query_runs: usize,
    pub vethbpf: Option<&'a Path>,
    pub tmp: &'a Path,
}

struct Slot {
    plugin: Box<dyn Plugin>,
    /// Pod namespaces with an endpoint, by index.
    pods: Vec<(usize, String)>,
    next: usize,
}

const CONTENDERS: [&str; 5] = ["vethbpf", "vethbpf-tcx", "vethbpf-cni", "ptp", "iproute2"];
const CIDR: &str = "10.240.0.0/16";

/// A pod namespace for the next endpoint of `slot` (removed by `td`).
fn new_pod(prefix: &str, slot: &mut Slot, td: &mut Teardown) -> Result<(usize, String)> {
    let idx = slot.next;
    slot.next += 1;
    let pod = format!("{prefix}cp-{}-{idx}", slot.plugin.name());
    netns_add(&pod)?;
    td.netns(&pod);
    Ok((idx, pod))
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

pub fn run(plan: &CpPlan, td: &mut Teardown, progress: &mut dyn FnMut(&str)) -> Result<CpResults> {
    let mut res = CpResults::default();
    let p = sys::prefix();
    let mut slots: Vec<Slot> = Vec::new();
    // The CLI contender's node, for `endpoint list` and `status`.
    let mut cli: Option<Vethbpf> = None;

    // Node namespaces and per-plugin setup (untimed).
    let mut make = |name: &'static str, td: &mut Teardown| -> Result<Box<dyn Plugin>> {
        let node = format!("{p}cp-{name}-node");
        netns_add(&node)?;
        td.netns(&node);
        Ok(match name {
            "vethbpf" | "vethbpf-tcx" | "vethbpf-cni" => {
                let bin = plan
                    .vethbpf
                    .context("the vethbpf binary is not available")?;
                let dir = plan.tmp.join(format!("{name}-cp"));
                let vb = Vethbpf::new(bin.to_path_buf(), &node, &dir, td)?;
                // Up before the clock starts for all: a runtime's first ADD would
                // load the datapath, every other one finds it loaded.
                let attach = if name == "vethbpf-tcx" { "tcx" } else { "tc" };
                vb.cmd(&[
                    "up",
                    "--pod-cidr",
                    CIDR,
                    "--gateway",
                    topo::GATEWAY,
                    "--pod-attach",
                    attach,
                ])?;
                // The path measured is the one named.
                let status: serde_json::Value =
                    serde_json::from_str(&vb.cmd(&["-o", "json", "status"])?)?;
                if status["node"]["pod_attach"] != attach {
                    bail!(
                        "{name}: pods attach by {}, not {attach}",
                        status["node"]["pod_attach"]
                    );
                }
                let vbd = vb.clone();
                td.push(format!("vethbpf down ({name})"), move || {
                    vbd.cmd(&["down"]).map(|_| ())
                });
                match name {
                    "vethbpf" => {
                        cli = Some(vb.clone());
                        Box::new(VethbpfPlugin(vb, "vethbpf"))
                    }
                    "vethbpf-tcx" => Box::new(VethbpfPlugin(vb, "vethbpf-tcx")),
                    _ => Box::new(VethbpfCniPlugin::new(bin, &node, &vb, CIDR)),
                }
            }
            "ptp" => Box::new(PtpPlugin(Cni::new(&node, &plan.tmp.join("ptp-cp"), CIDR)?)),
            _ => {
                topo::routing_node_prepare(&node)?;
                Box::new(RecipePlugin { node })
            }
        })
    };
    for name in CONTENDERS {
        match make(name, td) {
            Ok(plugin) => slots.push(Slot {
                plugin,
                pods: Vec::new(),
                next: 0,
            }),
            Err(e) => {
                progress(&format!("  control plane: {name} skipped: {e:#}"));
                res.skipped.push((name.to_string(), format!("{e:#}")));
            }
        }
    }

    let new_pod = |slot: &mut Slot, td: &mut Teardown| new_pod(&p, slot, td);

    let started = Instant::now();
    let top = plan.sizes.iter().copied().max().unwrap_or(0);
    for &size in plan.sizes {
        // Grow every node to `size`, one add per contender in turn.
        while slots.iter().any(|s| s.pods.len() < size) {
            sys::check_interrupt()?;
            for slot in slots.iter_mut().filter(|s| s.pods.len() < size) {
                let (idx, pod) = new_pod(slot, td)?;
                let n = slot.pods.len();
                let ms = timed(|| slot.plugin.add(idx, &pod))
                    .with_context(|| format!("{} add #{idx}", slot.plugin.name()))?;
                res.samples.push(CpSample {
                    contender: slot.plugin.name(),
                    op: "add",
                    phase: "populate",
                    endpoints: n,
                    ms,
                });
                slot.pods.push((idx, pod));
            }
            let n = slots.iter().map(|s| s.pods.len()).min().unwrap_or(0);
            if n % 100 == 0 && n > 0 {
                progress(&format!(
                    "  control plane: {n} endpoints per node ({:.0} s)",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        // Probes at this size.
        for _ in 0..plan.probes {
            for slot in slots.iter_mut() {
                sys::check_interrupt()?;
                let (idx, pod) = new_pod(slot, td)?;
                let name = slot.plugin.name();
                let add = timed(|| slot.plugin.add(idx, &pod))
                    .with_context(|| format!("{name} probe add"))?;
                let del = timed(|| slot.plugin.del(idx, &pod))
                    .with_context(|| format!("{name} probe del"))?;
                for (op, ms) in [("add", add), ("del", del)] {
                    res.samples.push(CpSample {
                        contender: name,
                        op,
                        phase: "probe",
                        endpoints: size,
                        ms,
                    });
                }
                sys::netns_del(&pod)?;
            }
        }
        for slot in &slots {
            let name = slot.plugin.name();
            let pick = |op: &str| -> Vec<f64> {
                res.samples
                    .iter()
                    .filter(|s| {
                        s.contender == name
                            && s.phase == "probe"
                            && s.endpoints == size
                            && s.op == op
                    })
                    .map(|s| s.ms)
                    .collect()
            };
            let (a, d) = (pick("add"), pick("del"));
            let st = CpStage {
                contender: name,
                endpoints: size,
                add_p50_ms: stats::median(&a),
                add_p99_ms: stats::percentile(&a, 99.0),
                del_p50_ms: stats::median(&d),
                del_p99_ms: stats::percentile(&d, 99.0),
            };
            progress(&format!(
                "  {name:<11} at {size:>5} endpoints: add p50 {:.2} ms p99 {:.2} ms, del p50 {:.2} ms p99 {:.2} ms",
                st.add_p50_ms, st.add_p99_ms, st.del_p50_ms, st.del_p99_ms
            ));
            res.stages.push(st);
        }
        if size == top {
            bursts(plan, &p, &mut slots, td, &mut res, progress)?;
            if let Some(vb) = &cli {
                queries(plan, vb, size, &mut res, progress)?;
            }
        }
    }

    // Drain: delete everything, newest first, contenders interleaved.
    let most = slots.iter().map(|s| s.pods.len()).max().unwrap_or(0);
    progress(&format!(
        "  control plane: deleting {most} endpoints per node"
    ));
    while slots.iter().any(|s| !s.pods.is_empty()) {
        sys::check_interrupt()?;
        for slot in slots.iter_mut() {
            let Some((idx, pod)) = slot.pods.pop() else {
                continue;
            };
            let name = slot.plugin.name();
            let n = slot.pods.len() + 1;
            let ms = timed(|| slot.plugin.del(idx, &pod))
                .with_context(|| format!("{name} del #{idx}"))?;
            res.samples.push(CpSample {
                contender: name,
                op: "del",
                phase: "drain",
                endpoints: n,
                ms,
            });
            sys::netns_del(&pod)?;
        }
    }
    for slot in &slots {
        let name = slot.plugin.name();
        let sum = |op: &str, phase: &str| -> f64 {
            res.samples
                .iter()
                .filter(|s| s.contender == name && s.op == op && s.phase == phase)
                .map(|s| s.ms)
                .sum::<f64>()
                / 1e3
        };
        res.totals.push(CpTotal {
            contender: name,
            endpoints: most,
            add_total_s: sum("add", "populate"),
            del_total_s: sum("del", "drain"),
        });
    }
    progress(&format!(
        "  control plane done in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(res)
}

/// `plan.burst` ADDs started at once on each node, timed from the first start to
/// the last end; then as many DELs at once. Contenders take turns, round after
/// round. The pods are not left on the node.
fn bursts(
    plan: &CpPlan,
    prefix: &str,
    slots: &mut [Slot],
    td: &mut Teardown,
    res: &mut CpResults,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    if plan.burst == 0 || plan.burst_rounds == 0 {
        return Ok(());
    }
    let mut totals: Vec<(&'static str, &'static str, usize, Vec<f64>, f64)> = Vec::new();
    for _ in 0..plan.burst_rounds {
        for slot in slots.iter_mut() {
            sys::check_interrupt()?;
            let pods: Vec<(usize, String)> = (0..plan.burst)
                .map(|_| new_pod(prefix, slot, td))
                .collect::<Result<_>>()?;
            let name = slot.plugin.name();
            let endpoints = slot.pods.len();
            let plugin = slot.plugin.as_ref();
            for op in ["add", "del"] {
                let t = Instant::now();
                let each: Vec<Result<f64>> = std::thread::scope(|s| {
                    let handles: Vec<_> = pods
                        .iter()
                        .map(|(idx, pod)| {
                            s.spawn(move || {
                                timed(|| match op {
                                    "add" => plugin.add(*idx, pod),
                                    _ => plugin.del(*idx, pod),
                                })
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join()
                                .unwrap_or_else(|_| bail!("a burst thread panicked"))
                        })
                        .collect()
                });
                let total = t.elapsed().as_secs_f64() * 1e3;
                let each: Vec<f64> = each
                    .into_iter()
                    .collect::<Result<_>>()
                    .with_context(|| format!("{name} burst {op}"))?;
                for ms in &each {
                    res.samples.push(CpSample {
                        contender: name,
                        op,
                        phase: "burst",
                        endpoints,
                        ms: *ms,
                    });
                }
                let slowest = each.iter().copied().fold(0.0, f64::max);
                match totals.iter_mut().find(|(c, o, ..)| *c == name && *o == op) {
                    Some(t) => {
                        t.3.push(total);
                        t.4 = t.4.max(slowest);
                    }
                    None => totals.push((name, op, endpoints, vec![total], slowest)),
                }
            }
            for (_, pod) in &pods {
                sys::netns_del(pod)?;
            }
        }
    }
    for (contender, op, endpoints, t, slowest) in totals {
        let b = CpBurst {
            contender,
            op,
            endpoints,
            concurrent: plan.burst,
            rounds: t.len(),
            total_ms: stats::median(&t),
            slowest_ms: slowest,
        };
        progress(&format!(
            "  {contender:<11} {} concurrent {op}s at {endpoints} endpoints: {:.0} ms in all (median of {}), slowest {:.0} ms",
            b.concurrent, b.total_ms, b.rounds, b.slowest_ms
        ));
        res.bursts.push(b);
    }
    Ok(())
}

/// `endpoint list` and `status` on the CLI contender's node.
fn queries(
    plan: &CpPlan,
    vb: &Vethbpf,
    endpoints: usize,
    res: &mut CpResults,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    for (command, args) in [
        ("endpoint list", &["endpoint", "list"][..]),
        ("status", &["status"][..]),
    ] {
        let mut t = Vec::new();
        let mut listed = 0;
        for _ in 0..plan.query_runs {
            sys::check_interrupt()?;
            let start = Instant::now();
            let out = vb.cmd(args)?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
            listed = out.lines().filter(|l| l.contains(" vb")).count();
        }
        // Checked, so that a fast answer is a whole one.
        if listed < endpoints {
            bail!("`vethbpf {command}` showed {listed} endpoints, the node has {endpoints}");
        }
        let q = CpQuery {
            command,
            endpoints,
            runs: t.len(),
            p50_ms: stats::median(&t),
            max_ms: t.iter().copied().fold(0.0, f64::max),
        };
        progress(&format!(
            "  vethbpf {command} at {endpoints} endpoints: p50 {:.1} ms, max {:.1} ms",
            q.p50_ms, q.max_ms
        ));
        res.queries.push(q);
    }
    Ok(())
}

/// Issue 14's targets: vethbpf's add and del, from the command line and as a CNI
/// plugin, faster than ptp's at p50 and p99 at every size, and in bursts of
/// concurrent adds and dels; 5 ms p50 adds at the largest; `endpoint list` and
/// `status` under 20 ms.
pub fn targets(cp: &CpResults) -> Vec<Target> {
    let mut t = Vec::new();
    let stage = |c: &str, n: usize| {
        cp.stages
            .iter()
            .find(|s| s.contender == c && s.endpoints == n)
    };
    let mut sizes: Vec<usize> = cp.stages.iter().map(|s| s.endpoints).collect();
    sizes.dedup();
    for n in &sizes {
        let Some(ptp) = stage("ptp", *n) else {
            continue;
        };
        for c in ["vethbpf", "vethbpf-cni"] {
            let Some(vb) = stage(c, *n) else { continue };
            for (what, v, r) in [
                ("add p50", vb.add_p50_ms, ptp.add_p50_ms),
                ("add p99", vb.add_p99_ms, ptp.add_p99_ms),
                ("del p50", vb.del_p50_ms, ptp.del_p50_ms),
                ("del p99", vb.del_p99_ms, ptp.del_p99_ms),
            ] {
                let ratio = v / r;
                t.push(target(
                    &format!("{c} {what} vs ptp at {n}"),
                    "< 1.0x".into(),
                    ratio,
                    1.0,
                    true,
                    format!("{v:.2} / {r:.2} ms = {ratio:.2}x"),
                ));
            }
        }
    }
    if let Some(n) = sizes.iter().copied().max() {
        for c in ["vethbpf", "vethbpf-cni"] {
            if let Some(vb) = stage(c, n) {
                t.push(target(
                    &format!("{c} add p50 at {n} (stretch)"),
                    "< 5 ms".into(),
                    vb.add_p50_ms,
                    5.0,
                    true,
                    format!("{:.2} ms", vb.add_p50_ms),
                ));
            }
        }
    }
    // Bursts: a node starting (and stopping) many pods at once, first start to
    // last end, against ptp's burst of the same size.
    for b in cp
        .bursts
        .iter()
        .filter(|b| b.contender.starts_with("vethbpf"))
    {
        let Some(ptp) = cp
            .bursts
            .iter()
            .find(|p| p.contender == "ptp" && p.op == b.op && p.endpoints == b.endpoints)
        else {
            continue;
        };
        let ratio = b.total_ms / ptp.total_ms;
        t.push(target(
            &format!(
                "{} {} concurrent {}s vs ptp at {}",
                b.contender, b.concurrent, b.op, b.endpoints
            ),
            "< 1.0x".into(),
            ratio,
            1.0,
            true,
            format!("{:.0} / {:.0} ms = {ratio:.2}x", b.total_ms, ptp.total_ms),
        ));
    }
    for q in &cp.queries {
        t.push(target(
            &format!("vethbpf {} at {}", q.command, q.endpoints),
            "< 20 ms".into(),
            q.p50_ms,
            20.0,
            true,
            format!("{:.1} ms", q.p50_ms),
        ));
    }
    t
}
