//! Results: the JSON document with every sample, the summary tables printed on the
//! terminal, the targets of issue 3 with pass/short, and the SVG chart of ratios.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{
    controlplane::CpResults,
    measure::{ConnectRate, Latency, Throughput},
    progcost::ProgCost,
    stats::median,
};

#[derive(Clone, Debug, Serialize)]
pub struct DpSample {
    pub round: u32,
    pub contender: &'static str,
    pub latency: Option<Latency>,
    pub tput_1: Option<Throughput>,
    pub tput_4: Option<Throughput>,
    pub connect: Option<ConnectRate>,
    pub errors: Vec<String>,
}

impl DpSample {
    /// The progress line of this sample: `[round r/rounds] name  RTT ... | conn/s`,
    /// the name padded to `width`, with the CPU cost per Gbit when `cpu`.
    pub fn progress_line(&self, rounds: u32, width: usize, cpu: bool) -> String {
        let f = |v: Option<f64>, p: usize| v.map_or_else(|| "-".into(), |x| format!("{x:.p$}"));
        let cpu = if cpu {
            format!(
                " | {:>5} CPU ms/Gbit",
                f(self.tput_1.as_ref().map(|t| t.cpu_s_per_gbit * 1e3), 1)
            )
        } else {
            String::new()
        };
        let errors = if self.errors.is_empty() {
            String::new()
        } else {
            format!("  errors: {}", self.errors.join("; "))
        };
        format!(
            "  [round {}/{rounds}] {:<width$} RTT p50 {:>6} us p99 {:>7} us | 1-stream {:>6} Gbit/s | 4-stream {:>6} Gbit/s | {:>6} conn/s{cpu}{errors}",
            self.round,
            self.contender,
            f(self.latency.as_ref().map(|l| l.p50_us), 1),
            f(self.latency.as_ref().map(|l| l.p99_us), 1),
            f(self.tput_1.as_ref().map(|t| t.gbps), 2),
            f(self.tput_4.as_ref().map(|t| t.gbps), 2),
            f(self.connect.as_ref().map(|x| x.per_sec), 0),
        )
    }
}

/// Medians over rounds for one contender.
#[derive(Clone, Debug, Serialize)]
pub struct DpSummary {
    pub contender: &'static str,
    pub rounds: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub gbps_1: f64,
    pub gbps_4: f64,
    pub connects_per_s: f64,
    /// Busy CPU seconds (all cores) per Gbit, single stream.
    pub cpu_s_per_gbit_1: f64,
    pub softirq_s_per_gbit_1: f64,
    pub cpu_s_per_gbit_4: f64,
}

impl DpSummary {
    /// A row with only the p50 and one-stream figures (others NaN), for tests of the
    /// targets.
    #[cfg(test)]
    pub fn of(contender: &'static str, p50_us: f64, gbps_1: f64) -> Self {
        DpSummary {
            contender,
            rounds: 5,
            p50_us,
            p99_us: f64::NAN,
            gbps_1,
            gbps_4: f64::NAN,
            connects_per_s: f64::NAN,
            cpu_s_per_gbit_1: f64::NAN,
            softirq_s_per_gbit_1: f64::NAN,
            cpu_s_per_gbit_4: f64::NAN,
        }
    }
}

/// The datapath figures, in table order: name, unit, lower-is-better, getter.
pub type Metric = (&'static str, &'static str, bool, fn(&DpSummary) -> f64);
pub const METRICS: [Metric; 6] = [
    ("p50 RTT", "us", true, |s| s.p50_us),
    ("p99 RTT", "us", true, |s| s.p99_us),
    ("1-stream", "Gbit/s", false, |s| s.gbps_1),
    ("4-stream", "Gbit/s", false, |s| s.gbps_4),
    ("connect/s", "1/s", false, |s| s.connects_per_s),
    ("CPU/Gbit", "ms", true, |s| s.cpu_s_per_gbit_1 * 1e3),
];

pub fn summarize(contender: &'static str, samples: &[DpSample]) -> DpSummary {
    let mine: Vec<&DpSample> = samples
        .iter()
        .filter(|s| s.contender == contender)
        .collect();
    let m = |f: &dyn Fn(&DpSample) -> Option<f64>| {
        median(&mine.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
    };
    DpSummary {
        contender,
        rounds: mine.len(),
        p50_us: m(&|s| s.latency.as_ref().map(|l| l.p50_us)),
        p99_us: m(&|s| s.latency.as_ref().map(|l| l.p99_us)),
        gbps_1: m(&|s| s.tput_1.as_ref().map(|t| t.gbps)),
        gbps_4: m(&|s| s.tput_4.as_ref().map(|t| t.gbps)),
        connects_per_s: m(&|s| s.connect.as_ref().map(|c| c.per_sec)),
        cpu_s_per_gbit_1: m(&|s| s.tput_1.as_ref().map(|t| t.cpu_s_per_gbit)),
        softirq_s_per_gbit_1: m(&|s| s.tput_1.as_ref().map(|t| t.softirq_s_per_gbit)),
        cpu_s_per_gbit_4: m(&|s| s.tput_4.as_ref().map(|t| t.cpu_s_per_gbit)),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub contender: &'static str,
    pub reference: &'static str,
    pub metric: &'static str,
    pub lower_is_better: bool,
    /// contender / reference, of the medians.
    pub ratio: f64,
}

/// Whether a datapath contender measures IPv6 (the `...6` twins).
pub fn is_ipv6(contender: &str) -> bool {
    contender.ends_with('6')
}

/// Each contender against each reference of its own family (IPv4 contenders
/// against `veth`, IPv6 ones against `veth6`).
pub fn ratios(summaries: &[DpSummary], references: &[&'static str]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for &r in references {
        let Some(rs) = summaries.iter().find(|s| s.contender == r) else {
            continue;
        };
        for s in summaries
            .iter()
            .filter(|s| is_ipv6(s.contender) == is_ipv6(r))
        {
            for (metric, _, lower, get) in METRICS {
                out.push(Ratio {
                    contender: s.contender,
                    reference: r,
                    metric,
                    lower_is_better: lower,
                    ratio: get(s) / get(rs),
                });
            }
        }
    }
    out
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub measured: String,
    /// None: could not be measured in this run.
    pub pass: Option<bool>,
    /// How far short, when short.
    pub shortfall: Option<String>,
}

/// `value` must be <= `limit` (`at_most`) or >= `limit`.
pub fn target(
    name: &str,
    target: String,
    value: f64,
    limit: f64,
    at_most: bool,
    shown: String,
) -> Target {
    if !value.is_finite() || !limit.is_finite() {
        return Target {
            name: name.into(),
            target,
            measured: "not measured".into(),
            pass: None,
            shortfall: None,
        };
    }
    let pass = if at_most {
        value <= limit
    } else {
        value >= limit
    };
    let shortfall = (!pass).then(|| {
        if at_most {
            format!("{:.0}% over", (value / limit - 1.0) * 100.0)
        } else {
            format!("{:.0}% under", (1.0 - value / limit) * 100.0)
        }
    });
    Target {
        name: name.into(),
        target,
        measured: shown,
        pass: Some(pass),
        shortfall,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub os: String,
    pub tools: Vec<String>,
    /// 1-minute load average when the run started (others compiling shows here).
    pub loadavg_at_start: String,
    /// The machine's default TCP congestion control; throughput runs ask for
    /// `measure::CONGESTION` whatever it is.
    pub tcp_congestion_default: String,
}

impl Machine {
    pub fn probe() -> Self {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .unwrap_or("unknown")
            .trim_matches('"')
            .to_string();
        let first_line = |prog: &str, arg: &str| {
            std::process::Command::new(prog)
                .arg(arg)
                .output()
                .ok()
                .map(|o| {
                    let s = String::from_utf8_lossy(if o.stdout.is_empty() {
                        &o.stderr
                    } else {
                        &o.stdout
                    })
                    .into_owned();
                    s.lines().next().unwrap_or("").trim().to_string()
                })
                .unwrap_or_default()
        };
        Machine {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            os,
            tools: vec![
                first_line("iperf3", "--version"),
                first_line("sockperf", "--version"),
                first_line("bpftool", "--version"),
            ],
            loadavg_at_start: read("/proc/loadavg").trim().to_string(),
            tcp_congestion_default: read("/proc/sys/net/ipv4/tcp_congestion_control")
                .trim()
                .to_string(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub command: String,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub elapsed_s: f64,
    /// Load average when the run ended: with `machine.loadavg_at_start`, shows whether
    /// the machine was quiet.
    pub loadavg_at_end: String,
    /// Contender name -> "ok" or why it was skipped.
    pub contenders: Vec<(String, String, String)>,
    pub datapath_samples: Vec<DpSample>,
    pub datapath_summary: Vec<DpSummary>,
    pub ratios: Vec<Ratio>,
    pub progcost: Option<ProgCost>,
    pub progcost_error: Option<String>,
    pub controlplane: Option<CpResults>,
    pub controlplane_error: Option<String>,
    /// Pod egress (issue 10): pod to an outside server, vethbpf / iptables / node.
    pub egress: Option<super::egress::EgressResults>,
    pub egress_error: Option<String>,
    /// Pod to pod across two nodes, and the cluster's control plane.
    pub crossnode: Option<super::crossnode::CrossResults>,
    pub crossnode_error: Option<String>,
    pub targets: Vec<Target>,
}

/// A plain text table: first column left-aligned, the rest right-aligned.
pub struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: &[&str]) -> Self {
        Self {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    pub fn render(&self) -> String {
        let n = self.head.len();
        let mut w = vec![0; n];
        for r in std::iter::once(&self.head).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, r: &[String]| {
            for (i, c) in r.iter().enumerate().take(n) {
                let pad = w[i] - c.chars().count();
                if i == 0 {
                    out.push_str(c);
                    out.push_str(&" ".repeat(pad));
                } else {
                    out.push_str("  ");
                    out.push_str(&" ".repeat(pad));
                    out.push_str(c);
                }
            }
            out.push('\n');
        };
        line(&mut out, &self.head);
        out.push_str(&"-".repeat(w.iter().sum::<usize>() + 2 * (n - 1)));
        out.push('\n');
        for r in &self.rows {
            line(&mut out, r);
        }
        out
    }
}

fn num(v: f64, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:.prec$}")
    } else {
        "-".into()
    }
}

fn ratio_cell(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}x")
    } else {
        "-".into()
    }
}

/// All tables, as printed at the end of a run.
pub fn render(r: &Results) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(
        out,
        "machine: {} ({} CPUs, {:.1} GiB), kernel {}, {}; load at start {}",
        m.cpu, m.cpus, m.memory_gib, m.kernel, m.os, m.loadavg_at_start
    );
    let _ = writeln!(
        out,
        "command: {}   ({:.0} s; load at end {})",
        r.command, r.elapsed_s, r.loadavg_at_end
    );
    for (name, desc, status) in &r.contenders {
        let _ = writeln!(
            out,
            "  {name:<9} {desc}{}",
            if status == "ok" {
                String::new()
            } else {
                format!(" -- SKIPPED: {status}")
            }
        );
    }
    if !r.datapath_summary.is_empty() {
        let _ = writeln!(
            out,
            "\nDatapath, medians over rounds (pod A -> pod B; TCP; RTT from sockperf ping-pong; iperf3; CPU = busy CPU ms per Gbit, all cores, 1 stream)"
        );
        if r.datapath_summary.iter().any(|s| is_ipv6(s.contender)) {
            let _ = writeln!(
                out,
                "(the ...6 rows are IPv6 pods; their RTT is the same 14-byte TCP ping-pong from a Rust client and server, since sockperf 3.7 has no IPv6: compare them with each other)"
            );
        }
        let mut t = Table::new(&[
            "contender",
            "rounds",
            "p50 RTT us",
            "p99 RTT us",
            "1-stream Gbit/s",
            "4-stream Gbit/s",
            "connect/s",
            "CPU ms/Gbit",
            "softirq ms/Gbit",
        ]);
        for s in &r.datapath_summary {
            t.row(vec![
                s.contender.into(),
                s.rounds.to_string(),
                num(s.p50_us, 1),
                num(s.p99_us, 1),
                num(s.gbps_1, 2),
                num(s.gbps_4, 2),
                num(s.connects_per_s, 0),
                num(s.cpu_s_per_gbit_1 * 1e3, 1),
                num(s.softirq_s_per_gbit_1 * 1e3, 1),
            ]);
        }
        out.push_str(&t.render());
        for reference in ["veth", "bridge", "veth6", "bridge6"] {
            let rs: Vec<&Ratio> = r
                .ratios
                .iter()
                .filter(|x| x.reference == reference)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "\nRatios vs {reference} (latency and CPU: lower is better; throughput and connect/s: higher is better)"
            );
            let mut head = vec!["contender"];
            head.extend(METRICS.iter().map(|m| m.0));
            let mut t = Table::new(&head);
            for s in r
                .datapath_summary
                .iter()
                .filter(|s| is_ipv6(s.contender) == is_ipv6(reference))
            {
                let mut row = vec![s.contender.to_string()];
                for (metric, ..) in METRICS {
                    let v = rs
                        .iter()
                        .find(|x| x.contender == s.contender && x.metric == metric)
                        .map(|x| x.ratio);
                    row.push(ratio_cell(v.unwrap_or(f64::NAN)));
                }
                t.row(row);
            }
            out.push_str(&t.render());
        }
    }
    if let Some(pc) = &r.progcost {
        let _ = writeln!(
            out,
            "\nProgram cost of from_pod (BPF_PROG_TEST_RUN; median over calls of the kernel's per-call mean)"
        );
        let mut t = Table::new(&[
            "path",
            "verdict (checked)",
            "ns/packet",
            "raw ns",
            "overhead ns",
            "calls x repetitions",
        ]);
        let mut wrong = Vec::new();
        for p in &pc.paths {
            if let Some(why) = &p.wrong_path {
                wrong.push(format!("not measured: {why}"));
                t.row(vec![
                    p.path.into(),
                    p.expected_verdict.into(),
                    "not measured".into(),
                    "-".into(),
                    "-".into(),
                    format!("{} x {}", p.ns_per_packet.len(), p.repeat),
                ]);
                continue;
            }
            t.row(vec![
                p.path.into(),
                p.expected_verdict.into(),
                num(p.median_ns, 1),
                num(p.raw_median_ns, 1),
                num(p.overhead_ns, 1),
                format!("{} x {}", p.ns_per_packet.len(), p.repeat),
            ]);
        }
        if let Some(e) = pc.empty_program_ns {
            t.row(vec![
                "(empty program)".into(),
                "-".into(),
                num(e, 1),
                num(e, 1),
                "0.0".into(),
                "harness floor".into(),
            ]);
        }
        out.push_str(&t.render());
        for w in &wrong {
            let _ = writeln!(out, "{w}");
        }
        let _ = writeln!(
            out,
            "(checked: every call returned the verdict's tc action, and the source endpoint's counters moved by one packet per repetition under that verdict only)"
        );
        let mut t = Table::new(&["program", "insns (xlated)", "insns verified", "jited bytes"]);
        for p in &pc.programs {
            let o = |v: Option<u32>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
            t.row(vec![
                p.program.clone(),
                o(p.xlated_insns),
                o(p.verified_insns),
                p.jited_bytes.to_string(),
            ]);
        }
        out.push_str(&t.render());
    } else if let Some(e) = &r.progcost_error {
        let _ = writeln!(out, "\nProgram cost: not measured: {e}");
    }
    if let Some(e) = &r.egress {
        out.push_str(&super::egress::render(e));
    } else if let Some(e) = &r.egress_error {
        let _ = writeln!(out, "\nEgress: not measured: {e}");
    }
    if let Some(cp) = &r.controlplane {
        let _ = writeln!(
            out,
            "\nControl plane (wall-clock per operation, pod namespaces pre-created; probes at each size)"
        );
        let mut t = Table::new(&[
            "contender",
            "endpoints",
            "add p50 ms",
            "add p99 ms",
            "del p50 ms",
            "del p99 ms",
        ]);
        for s in &cp.stages {
            t.row(vec![
                s.contender.into(),
                s.endpoints.to_string(),
                num(s.add_p50_ms, 2),
                num(s.add_p99_ms, 2),
                num(s.del_p50_ms, 2),
                num(s.del_p99_ms, 2),
            ]);
        }
        out.push_str(&t.render());
        let mut t = Table::new(&["contender", "endpoints", "add all s", "delete all s"]);
        for s in &cp.totals {
            t.row(vec![
                s.contender.into(),
                s.endpoints.to_string(),
                num(s.add_total_s, 1),
                num(s.del_total_s, 1),
            ]);
        }
        out.push_str(&t.render());
        if !cp.bursts.is_empty() {
            let _ = writeln!(
                out,
                "Concurrent operations (started at once; first start to last end, median over rounds)"
            );
            let mut t = Table::new(&[
                "contender",
                "endpoints",
                "op",
                "at once",
                "rounds",
                "all ms",
                "slowest ms",
            ]);
            for b in &cp.bursts {
                t.row(vec![
                    b.contender.into(),
                    b.endpoints.to_string(),
                    b.op.into(),
                    b.concurrent.to_string(),
                    b.rounds.to_string(),
                    num(b.total_ms, 0),
                    num(b.slowest_ms, 0),
                ]);
            }
            out.push_str(&t.render());
        }
        if !cp.queries.is_empty() {
            let mut t = Table::new(&["vethbpf command", "endpoints", "runs", "p50 ms", "max ms"]);
            for q in &cp.queries {
                t.row(vec![
                    q.command.into(),
                    q.endpoints.to_string(),
                    q.runs.to_string(),
                    num(q.p50_ms, 1),
                    num(q.max_ms, 1),
                ]);
            }
            out.push_str(&t.render());
        }
        for (name, why) in &cp.skipped {
            let _ = writeln!(out, "  {name} skipped: {why}");
        }
    } else if let Some(e) = &r.controlplane_error {
        let _ = writeln!(out, "\nControl plane: not measured: {e}");
    }
    if let Some(c) = &r.crossnode {
        out.push_str(&super::crossnode::render(c));
    } else if let Some(e) = &r.crossnode_error {
        let _ = writeln!(out, "\nCross-node: not measured: {e}");
    }
    if !r.targets.is_empty() {
        let _ = writeln!(out, "\nTargets (issues 3 and 14)");
        let mut t = Table::new(&["target", "wanted", "measured", "result"]);
        for x in &r.targets {
            let res = match (x.pass, &x.shortfall) {
                (Some(true), _) => "pass".to_string(),
                (Some(false), Some(s)) => format!("SHORT ({s})"),
                (Some(false), None) => "SHORT".to_string(),
                (None, _) => "n/a".to_string(),
            };
            t.row(vec![
                x.name.clone(),
                x.target.clone(),
                x.measured.clone(),
                res,
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

pub fn write_json(r: &Results, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let s = serde_json::to_string_pretty(r).context("serializing results")?;
    fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

const COLORS: [&str; 6] = [
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f", "#bcbd22",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Horizontal grouped bars: one panel per reference, one group per metric, one bar
/// per contender, a line at 1.0x. Ratios above the scale's cap are drawn clipped
/// with their value printed.
pub fn svg(r: &Results) -> String {
    let refs: Vec<&str> = ["veth", "bridge"]
        .into_iter()
        .filter(|x| r.ratios.iter().any(|y| y.reference == *x))
        .collect();
    // The chart is the IPv4 run's; the IPv6 twins are in the tables.
    let names: Vec<&str> = r
        .datapath_summary
        .iter()
        .map(|s| s.contender)
        .filter(|c| !is_ipv6(c))
        .collect();
    let (bar_h, gap, label_w, plot_w) = (12.0, 10.0, 110.0, 420.0);
    let group_h = names.len() as f64 * bar_h + gap;
    let panel_h = METRICS.len() as f64 * group_h + 40.0;
    let panel_w = label_w + plot_w + 60.0;
    let width = panel_w * refs.len().max(1) as f64 + 20.0;
    let height = panel_h + 70.0 + 18.0 * ((names.len() as f64 / 3.0).ceil());
    let cap = 3.0_f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="18" font-size="14" font-weight="bold">vethbpf bench: ratios of medians (latency, CPU: lower is better; throughput, connect/s: higher)</text>"#
    );
    for (pi, reference) in refs.iter().enumerate() {
        let x0 = 10.0 + pi as f64 * panel_w;
        let y0 = 40.0;
        let sx = |v: f64| x0 + label_w + v.min(cap) / cap * plot_w;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="13" font-weight="bold">vs {}</text>"#,
            x0 + label_w,
            y0 + 4.0,
            esc(reference)
        );
        for tick in [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0] {
            let x = sx(tick);
            let stroke = if tick == 1.0 { "#000" } else { "#ddd" };
            let _ = writeln!(
                s,
                r#"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="{stroke}"/>"#,
                y0 + 12.0,
                y0 + panel_h - 18.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{x}" y="{}" text-anchor="middle">{tick:.1}x</text>"#,
                y0 + panel_h - 6.0
            );
        }
        for (mi, (metric, ..)) in METRICS.iter().enumerate() {
            let gy = y0 + 16.0 + mi as f64 * group_h;
            let _ = writeln!(
                s,
                r#"<text x="{x0}" y="{}">{}</text>"#,
                gy + group_h / 2.0,
                esc(metric)
            );
            for (ci, name) in names.iter().enumerate() {
                let v = r
                    .ratios
                    .iter()
                    .find(|x| {
                        x.reference == *reference && x.metric == *metric && x.contender == *name
                    })
                    .map(|x| x.ratio)
                    .unwrap_or(f64::NAN);
                if !v.is_finite() {
                    continue;
                }
                let y = gy + ci as f64 * bar_h;
                let w = sx(v) - sx(0.0);
                let color = COLORS[ci % COLORS.len()];
                let _ = writeln!(
                    s,
                    r#"<rect x="{}" y="{y}" width="{w:.1}" height="{}" fill="{color}"/>"#,
                    sx(0.0),
                    bar_h - 2.0
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{}" font-size="9">{v:.2}{}</text>"#,
                    sx(v) + 3.0,
                    y + bar_h - 3.0,
                    if v > cap { " (clipped)" } else { "" }
                );
            }
        }
    }
    let ly = 40.0 + panel_h + 14.0;
    for (ci, name) in names.iter().enumerate() {
        let x = 10.0 + label_w + (ci % 3) as f64 * 140.0;
        let y = ly + (ci / 3) as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="10" fill="{}"/>"#,
            y - 9.0,
            COLORS[ci % COLORS.len()]
        );
        let _ = writeln!(s, r#"<text x="{}" y="{y}">{}</text>"#, x + 16.0, esc(name));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_reports_shortfall() {
        let t = target("x", "<= 1.0x".into(), 1.2, 1.0, true, "1.20x".into());
        assert_eq!(t.pass, Some(false));
        assert_eq!(t.shortfall.as_deref(), Some("20% over"));
        let t = target("y", ">= 1.1x".into(), 0.99, 1.1, false, "0.99x".into());
        assert_eq!(t.shortfall.as_deref(), Some("10% under"));
        assert_eq!(
            target("z", "".into(), f64::NAN, 1.0, true, "".into()).pass,
            None
        );
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&["a", "bb"]);
        t.row(vec!["xyz".into(), "1".into()]);
        assert_eq!(t.render(), "a    bb\n-------\nxyz   1\n");
    }
}
