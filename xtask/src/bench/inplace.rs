//! What vethbpf's programs cost in place, on the traffic of a measured path: the
//! kernel's own per-program run counter and run time (`kernel.bpf_stats_enabled`),
//! read with `bpftool` from the programs' pins before and after a short ping-pong and
//! a short single stream.
//!
//! BPF_PROG_TEST_RUN (progcost.rs) runs a program on one frame in a tight loop, its
//! maps and code hot in cache; in place, between two packets of a ping-pong the
//! whole TCP stack and the benchmark tools run, and the same program pays for what
//! it touches again. This is the share of a round trip that is vethbpf's own code.
//!
//! The stats cost every program run two clock reads, so they are on only for this
//! phase, after the rounds, never while a contender is graded.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use vethbpf_common::{PROG_FROM_POD, PROG_FROM_TUNNEL, PROG_FROM_UPLINK};

use super::{
    measure,
    sys::{self, run},
    topo::Contender,
};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` on for the guard's life, then as it was.
struct StatsOn {
    previous: String,
}

impl StatsOn {
    fn enable() -> Result<Self> {
        let previous = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL}"))?;
        std::fs::write(STATS_SYSCTL, "1").with_context(|| format!("writing {STATS_SYSCTL}"))?;
        Ok(Self { previous })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, self.previous.trim());
    }
}

/// A program's run count and total run time so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Runs {
    count: u64,
    ns: u64,
}

/// `bpftool prog show pinned PIN -j`: its `run_cnt` and `run_time_ns` (bpftool leaves
/// both out while they are 0).
fn runs(pin: &Path) -> Result<Runs> {
    let out = run(std::process::Command::new("bpftool")
        .args(["prog", "show", "pinned"])
        .arg(pin)
        .arg("-j"))?;
    parse_runs(&out).with_context(|| format!("bpftool's answer for {}", pin.display()))
}

fn parse_runs(json: &str) -> Result<Runs> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    if !v.is_object() {
        bail!("not one program: {json}");
    }
    Ok(Runs {
        count: v["run_cnt"].as_u64().unwrap_or(0),
        ns: v["run_time_ns"].as_u64().unwrap_or(0),
    })
}

/// One program of one node on one phase's traffic.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramInPlace {
    /// "node 1 from_pod".
    pub program: String,
    /// "ping-pong" or "1-stream".
    pub phase: &'static str,
    pub runs: u64,
    pub ns_per_run: f64,
    /// Runs per round trip of the ping-pong (1 per direction the program is on).
    pub runs_per_exchange: Option<f64>,
}

/// A contender's programs in place, and the ping-pong they were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct InPlace {
    pub contender: &'static str,
    pub programs: Vec<ProgramInPlace>,
    pub pingpong_p50_us: f64,
    pub exchanges: u64,
    /// Sum over the programs of ns/run x runs/exchange: vethbpf's code in one round
    /// trip of the ping-pong.
    pub programs_us_per_exchange: f64,
}

/// Seconds of each in-place phase (ping-pong, one stream).
const SECS: u32 = 3;

/// A section's in-place figures, and the contenders it could not measure (why).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub results: Vec<InPlace>,
    pub errors: Vec<String>,
}

impl Report {
    /// [`measure`] on `c`, with a progress line; a failure is recorded, an
    /// interrupt ends the run.
    pub fn take(
        &mut self,
        c: &Contender,
        programs: &[(String, PathBuf)],
        progress: &mut dyn FnMut(&str),
    ) -> Result<()> {
        progress(&format!(
            "  {:<16} programs in place: {SECS} s ping-pong, {SECS} s one stream",
            c.name
        ));
        match measure(c, programs, SECS) {
            Ok(m) => self.results.push(m),
            Err(e) => {
                sys::check_interrupt()?;
                self.errors.push(format!("{}: {e:#}", c.name));
            }
        }
        Ok(())
    }
}

/// The pinned programs of one vethbpf node: (label, pin) for each that exists.
pub fn node_programs(label: &str, bpffs: &Path) -> Vec<(String, PathBuf)> {
    [PROG_FROM_POD, PROG_FROM_UPLINK, PROG_FROM_TUNNEL]
        .iter()
        .map(|p| (format!("{label} {p}"), bpffs.join("progs").join(p)))
        .filter(|(_, pin)| pin.exists())
        .collect()
}

/// Ping-pong and one stream of `secs` each on `c`, with the programs' counters read
/// around each; programs that did not run in a phase are left out of it.
fn measure(c: &Contender, programs: &[(String, PathBuf)], secs: u32) -> Result<InPlace> {
    let _on = StatsOn::enable()?;
    let snapshot = || -> Result<Vec<Runs>> { programs.iter().map(|(_, pin)| runs(pin)).collect() };
    sys::check_interrupt()?;
    let before = snapshot()?;
    let lat = measure::latency(c, secs)?;
    let mid = snapshot()?;
    sys::check_interrupt()?;
    measure::throughput(c, secs, 1)?;
    let after = snapshot()?;
    // sockperf's warm-up exchanges run the programs too but are not among its
    // observations: runs per exchange reads a little over 1 per direction.
    let exchanges = lat.observations;
    let mut out = Vec::new();
    let mut per_exchange_ns = 0.0;
    for (phase, from, to) in [("ping-pong", &before, &mid), ("1-stream", &mid, &after)] {
        for ((label, _), (a, b)) in programs.iter().zip(from.iter().zip(to.iter())) {
            let runs = b.count.saturating_sub(a.count);
            if runs == 0 {
                continue;
            }
            let ns_per_run = b.ns.saturating_sub(a.ns) as f64 / runs as f64;
            let runs_per_exchange =
                (phase == "ping-pong" && exchanges > 0).then(|| runs as f64 / exchanges as f64);
            if let Some(rpe) = runs_per_exchange {
                // Whole runs per round trip (1 per direction the program is on):
                // the warm-up's runs are not among the exchanges.
                per_exchange_ns += ns_per_run * rpe.round();
            }
            out.push(ProgramInPlace {
                program: label.clone(),
                phase,
                runs,
                ns_per_run,
                runs_per_exchange,
            });
        }
    }
    // The path check: a round trip crosses vethbpf's programs, or this measured
    // something else.
    if per_exchange_ns == 0.0 {
        bail!("none of {} ran during the ping-pong", programs.len());
    }
    Ok(InPlace {
        contender: c.name,
        programs: out,
        pingpong_p50_us: lat.p50_us,
        exchanges,
        programs_us_per_exchange: per_exchange_ns / 1000.0,
    })
}

/// The table printed after a section's rounds.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for e in &report.errors {
        let _ = writeln!(out, "  programs in place not measured: {e}");
    }
    let results = &report.results;
    if results.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nvethbpf's programs in place (kernel.bpf_stats_enabled, after the rounds; TEST_RUN figures are hot-cache):"
    );
    let _ = writeln!(
        out,
        "{:<16} {:<24} {:<10} {:>10} {:>10} {:>10}",
        "contender", "program", "phase", "runs", "ns/run", "runs/RTT"
    );
    for r in results {
        for p in &r.programs {
            let _ = writeln!(
                out,
                "{:<16} {:<24} {:<10} {:>10} {:>10.0} {:>10}",
                r.contender,
                p.program,
                p.phase,
                p.runs,
                p.ns_per_run,
                p.runs_per_exchange
                    .map_or("-".into(), |x| format!("{x:.2}"))
            );
        }
        let _ = writeln!(
            out,
            "{:<16} programs per round trip: {:.2} us of a {:.1} us ping-pong p50 ({} exchanges)",
            r.contender, r.programs_us_per_exchange, r.pingpong_p50_us, r.exchanges
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpftool_counters_are_read_and_absent_ones_are_zero() {
        let shown = r#"{"id":7585,"type":"sched_cls","name":"from_pod","run_time_ns":724824951,"run_cnt":1731271}"#;
        assert_eq!(
            parse_runs(shown).ok(),
            Some(Runs {
                count: 1_731_271,
                ns: 724_824_951
            })
        );
        // Never run while the stats were on: bpftool prints neither field.
        let fresh = r#"{"id":7585,"type":"sched_cls","name":"from_pod"}"#;
        assert_eq!(parse_runs(fresh).ok(), Some(Runs::default()));
        assert!(parse_runs("[]").is_err());
    }
}
