//! Control-plane cost: how long it takes to add and delete one endpoint (a pod's
//! network) with N endpoints already on the node, for vethbpf, the CNI ptp plugin and
//! the plain iproute2 recipe, each in a node namespace of its own.
//!
//! Pod namespaces are created beforehand and not timed, for all three alike: a
//! container runtime makes the namespace and hands it to the network plugin
//! (vethbpf gets it with `--netns`). Each timed operation is the wall-clock time of
//! what a runtime would run: one `vethbpf endpoint add/del` process, one CNI plugin
//! ADD/DEL (ptp, which itself runs host-local), or the recipe's commands in sequence.
//!
//! The node grows in stages (e.g. 10, 100, 1000 endpoints) with the contenders
//! interleaved one operation at a time; at each stage `probes` extra endpoints are
//! added and deleted again, round-robin, and their latencies are the stage's figures.
//! At the end every endpoint is deleted, timed: the drain.

use std::{net::Ipv4Addr, path::Path, process::Command, time::Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{
    stats,
    sys::{self, Teardown, ip, netns_add},
    topo::{self, Cni, Vethbpf},
};

#[derive(Clone, Debug, Serialize)]
pub struct CpSample {
    pub contender: &'static str,
    /// "add" or "del".
    pub op: &'static str,
    /// "populate" (growing the node), "probe" (at a stage size) or "drain".
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

#[derive(Clone, Debug, Default, Serialize)]
pub struct CpResults {
    pub samples: Vec<CpSample>,
    pub stages: Vec<CpStage>,
    pub totals: Vec<CpTotal>,
    /// Contenders that could not run, with the reason.
    pub skipped: Vec<(String, String)>,
}

trait Plugin {
    fn name(&self) -> &'static str;
    fn add(&mut self, idx: usize, pod: &str) -> Result<()>;
    fn del(&mut self, idx: usize, pod: &str) -> Result<()>;
}

struct VethbpfPlugin(Vethbpf);

impl Plugin for VethbpfPlugin {
    fn name(&self) -> &'static str {
        "vethbpf"
    }
    fn add(&mut self, _: usize, pod: &str) -> Result<()> {
        self.0.add(pod, None, Some(&sys::netns_path(pod)))
    }
    fn del(&mut self, _: usize, pod: &str) -> Result<()> {
        self.0.del(pod)
    }
}

struct PtpPlugin(Cni);

impl Plugin for PtpPlugin {
    fn name(&self) -> &'static str {
        "ptp"
    }
    fn add(&mut self, _: usize, pod: &str) -> Result<()> {
        self.0.add(&format!("{pod}-id"), pod).map(|_| ())
    }
    fn del(&mut self, _: usize, pod: &str) -> Result<()> {
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
    fn add(&mut self, idx: usize, pod: &str) -> Result<()> {
        // 10.240.0.0/16, skipping .0 and .1 of each /24.
        let addr = Ipv4Addr::new(10, 240, (idx / 250) as u8, (idx % 250 + 2) as u8);
        for args in topo::routing_recipe(&self.node, pod, &format!("vbh{idx}"), addr) {
            sys::run(Command::new(&args[0]).args(&args[1..]))?;
        }
        Ok(())
    }
    fn del(&mut self, idx: usize, _: &str) -> Result<()> {
        // Deleting the host veth removes its peer and the /32 route with it.
        ip(Some(&self.node), &["link", "del", &format!("vbh{idx}")]).map(|_| ())
    }
}

pub struct CpPlan<'a> {
    pub sizes: &'a [usize],
    pub probes: usize,
    pub vethbpf: Option<&'a Path>,
    pub tmp: &'a Path,
}

struct Slot {
    plugin: Box<dyn Plugin>,
    /// Pod namespaces with an endpoint, by index.
    pods: Vec<(usize, String)>,
    next: usize,
}

pub fn run(plan: &CpPlan, td: &mut Teardown, progress: &mut dyn FnMut(&str)) -> Result<CpResults> {
    let mut res = CpResults::default();
    let p = sys::prefix();
    let mut slots: Vec<Slot> = Vec::new();

    // Node namespaces and per-plugin setup (untimed).
    let make = |name: &'static str, td: &mut Teardown| -> Result<Box<dyn Plugin>> {
        let node = format!("{p}cp-{name}-node");
        netns_add(&node)?;
        td.netns(&node);
        Ok(match name {
            "vethbpf" => {
                let bin = plan
                    .vethbpf
                    .context("the vethbpf binary is not available")?;
                let vb = Vethbpf::new(bin.to_path_buf(), &node, &plan.tmp.join("vethbpf-cp"), td)?;
                vb.up("10.240.0.0/16")?;
                let vbd = vb.clone();
                td.push("vethbpf down (control plane)", move || {
                    vbd.cmd(&["down"]).map(|_| ())
                });
                Box::new(VethbpfPlugin(vb))
            }
            "ptp" => Box::new(PtpPlugin(Cni::new(
                &node,
                &plan.tmp.join("ptp-cp"),
                "10.240.0.0/16",
            )?)),
            _ => {
                topo::routing_node_prepare(&node)?;
                Box::new(RecipePlugin { node })
            }
        })
    };
    for name in ["vethbpf", "ptp", "iproute2"] {
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

    let new_pod = |slot: &mut Slot, td: &mut Teardown| -> Result<(usize, String)> {
        let idx = slot.next;
        slot.next += 1;
        let pod = format!("{p}cp-{}-{idx}", slot.plugin.name());
        netns_add(&pod)?;
        td.netns(&pod);
        Ok((idx, pod))
    };
    let timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };

    let started = Instant::now();
    for &size in plan.sizes {
        // Grow every node to `size`, one add per contender in turn.
        while slots.iter().any(|s| s.pods.len() < size) {
            sys::check_interrupt()?;
            for slot in slots.iter_mut().filter(|s| s.pods.len() < size) {
                let (idx, pod) = new_pod(slot, td)?;
                let n = slot.pods.len();
                let ms = timed(&mut || slot.plugin.add(idx, &pod))
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
                let add = timed(&mut || slot.plugin.add(idx, &pod))
                    .with_context(|| format!("{name} probe add"))?;
                let del = timed(&mut || slot.plugin.del(idx, &pod))
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
                "  {name:<9} at {size:>5} endpoints: add p50 {:.2} ms p99 {:.2} ms, del p50 {:.2} ms p99 {:.2} ms",
                st.add_p50_ms, st.add_p99_ms, st.del_p50_ms, st.del_p99_ms
            ));
            res.stages.push(st);
        }
    }

    // Drain: delete everything, newest first, contenders interleaved.
    let top = slots.iter().map(|s| s.pods.len()).max().unwrap_or(0);
    progress(&format!(
        "  control plane: deleting {top} endpoints per node"
    ));
    while slots.iter().any(|s| !s.pods.is_empty()) {
        sys::check_interrupt()?;
        for slot in slots.iter_mut() {
            let Some((idx, pod)) = slot.pods.pop() else {
                continue;
            };
            let name = slot.plugin.name();
            let n = slot.pods.len() + 1;
            let ms = timed(&mut || slot.plugin.del(idx, &pod))
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
            endpoints: top,
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
