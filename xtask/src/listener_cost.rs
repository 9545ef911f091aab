//! `cargo xtask bench-listener`: what `vethbpf monitor` costs the datapath, under
//! BPF_PROG_TEST_RUN. The forward path and the spoof-drop path of `from_pod`, timed
//! by the kernel in calls of 250 repetitions, for:
//!
//! - `baseline`: the object of another revision (`--baseline-rev`, built from a
//!   `git archive` of it), the datapath before events existed;
//! - `no listener`: this object, MONITOR all zero (nobody listens): what every
//!   packet pays when no monitor runs;
//! - `listener`: this object, MONITOR set as `vethbpf monitor` sets it. The forward
//!   path then runs on a flow already traced (the lease check, the flow parse and the
//!   TRACE_FLOWS lookup, no event); the drop path emits an event per packet
//!   (reserve, 128 bytes copied, submit), the ring drained between calls.
//!
//! Variants are interleaved call by call, so the machine's drift hits all alike; each
//! variant's counters and events are checked afterwards to prove it took its path.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use serde::Serialize;
use vethbpf_common::{
    Config, Counter, EVENT_DROP, EVENT_TRACE, EndpointInfo, MAP_CONFIG, MAP_ENDPOINTS, MAP_EVENTS,
    MAP_EVENTS_LOST, MAP_MONITOR, MAP_ROUTES, MAP_STATS, Monitor, PROG_FROM_POD, ROUTE_KIND_LOCAL,
    Route, Verdict, ipv4_to_map, kind_bit, stats_index,
};

use crate::{ebpf, util};

#[derive(clap::Args, Debug)]
pub struct ListenerArgs {
    /// A revision (e.g. the commit before events existed) whose object is measured
    /// too, as the baseline.
    #[arg(long, value_name = "REV", conflicts_with = "baseline_object")]
    pub baseline_rev: Option<String>,
    /// An eBPF object file measured as the baseline instead (e.g. a build with one
    /// change taken out).
    #[arg(long, value_name = "PATH")]
    pub baseline_object: Option<PathBuf>,
    /// TEST_RUN calls per variant and path (250 repetitions each).
    #[arg(long, default_value_t = 4000)]
    pub calls: usize,
    /// JSON output with every sample.
    #[arg(long, default_value = "target/bench/listener.json")]
    pub out: PathBuf,
}

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const REPEAT: u32 = 250;
const GW_MAC: [u8; 6] = [0xee; 6];
const GW_IP: [u8; 4] = [169, 254, 1, 1];
const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const A_IP: [u8; 4] = [10, 244, 0, 2];
const B_IP: [u8; 4] = [10, 244, 0, 3];
/// Without a context, test_run runs the skb on `lo`: ifindex 1 is the sender's key.
const A_IFINDEX: u32 = 1;
/// Counter id 0: its counters sit at index `verdict` whatever the number of verdicts
/// (the STATS stride) of the revision measured.
const A_ID: u32 = 0;
const B_ID: u32 = 2;

/// Ethernet + IPv4 (valid checksum) + a TCP ACK from A.
fn frame(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&A_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, ttl, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    // TCP: ports 40000 -> 80, ACK.
    f.extend_from_slice(&[
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff,
    ]);
    f.extend_from_slice(&[0, 0, 0, 0]);
    f
}

struct Variant {
    name: &'static str,
    ebpf: Ebpf,
    /// Whether the object has the event maps (the baseline may not).
    events: bool,
}

impl Variant {
    fn load(name: &'static str, object: &Path, listen: bool) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load_file(object)
            .with_context(|| format!("loading {}", object.display()))?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROG_FROM_POD)
            .context("no from_pod")?
            .try_into()?;
        prog.load().context("loading from_pod")?;
        let mut config: Array<_, Config> =
            ebpf.map_mut(MAP_CONFIG).context("CONFIG")?.try_into()?;
        config.set(
            0,
            Config {
                gateway_ip: ipv4_to_map(GW_IP),
                flags: 0,
                gateway_mac: GW_MAC,
                _pad: [0; 2],
            },
            0,
        )?;
        let mut eps: HashMap<_, u32, EndpointInfo> = ebpf
            .map_mut(MAP_ENDPOINTS)
            .context("ENDPOINTS")?
            .try_into()?;
        eps.insert(
            A_IFINDEX,
            EndpointInfo {
                ip: ipv4_to_map(A_IP),
                id: A_ID,
                mac: A_MAC,
                _pad: [0; 2],
            },
            0,
        )?;
        let mut routes: LpmTrie<_, u32, Route> =
            ebpf.map_mut(MAP_ROUTES).context("ROUTES")?.try_into()?;
        routes.insert(
            &Key::new(32, ipv4_to_map(B_IP)),
            Route {
                kind: ROUTE_KIND_LOCAL,
                ifindex: 1,
                endpoint_id: B_ID,
                mac: B_MAC,
                _pad: [0; 2],
            },
            0,
        )?;
        let events = ebpf.map(MAP_MONITOR).is_some();
        if listen {
            let mut m: Array<_, Monitor> =
                ebpf.map_mut(MAP_MONITOR).context("MONITOR")?.try_into()?;
            m.set(
                0,
                Monitor {
                    // A lease far ahead: the benchmark is the listener.
                    deadline_ns: u64::MAX,
                    kinds: kind_bit(EVENT_DROP) | kind_bit(EVENT_TRACE),
                    session: 1,
                    pid: std::process::id(),
                    _pad: 0,
                },
                0,
            )?;
        }
        Ok(Variant { name, ebpf, events })
    }

    /// One call of REPEAT repetitions: the kernel's mean ns per repetition, and the
    /// tc action.
    fn call(&self, frame: &[u8]) -> Result<(f64, u32)> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(PROG_FROM_POD)
            .context("from_pod")?
            .try_into()?;
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: REPEAT,
            ..Default::default()
        })?;
        Ok((r.duration.as_nanos() as f64, r.return_value))
    }

    /// Events in the ring, drained.
    fn drain(&mut self) -> Result<u64> {
        if !self.events {
            return Ok(0);
        }
        let mut ring: RingBuf<&mut MapData> = self
            .ebpf
            .map_mut(MAP_EVENTS)
            .context("EVENTS")?
            .try_into()?;
        let mut n = 0;
        while ring.next().is_some() {
            n += 1;
        }
        Ok(n)
    }

    fn lost(&self) -> Result<u64> {
        if !self.events {
            return Ok(0);
        }
        let lost: PerCpuArray<&MapData, u64> = self
            .ebpf
            .map(MAP_EVENTS_LOST)
            .context("EVENTS_LOST")?
            .try_into()?;
        Ok(lost.get(&0, 0)?.iter().sum())
    }

    fn packets(&self, v: Verdict) -> Result<u64> {
        let stats: PerCpuArray<&MapData, Counter> =
            self.ebpf.map(MAP_STATS).context("STATS")?.try_into()?;
        Ok(stats
            .get(&stats_index(A_ID, v), 0)?
            .iter()
            .map(|c| c.packets)
            .sum())
    }
}

#[derive(Serialize)]
struct Figure {
    path: &'static str,
    variant: &'static str,
    median_ns: f64,
    p25_ns: f64,
    p75_ns: f64,
    samples: Vec<f64>,
    /// Events the variant emitted over the run (and lost).
    events: u64,
    lost: u64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Builds the eBPF object of revision `rev` from a `git archive` of it.
fn baseline_object(rev: &str) -> Result<PathBuf> {
    let root = util::workspace_root()?;
    let commit = util::capture(Command::new("git").args(["rev-parse", "--verify", rev]))
        .with_context(|| format!("no revision {rev}"))?;
    let commit = commit.trim();
    let dir = root.join("target").join("baseline").join(commit);
    let object = dir.join("target/ebpf/bpfel-unknown-none/release/vethbpf-ebpf");
    if object.is_file() {
        return Ok(object);
    }
    fs::create_dir_all(&dir)?;
    util::step(format!("unpacking {rev} ({commit}) into {}", dir.display()));
    let archive = Command::new("git")
        .args(["archive", "--format=tar", commit])
        .current_dir(&root)
        .stdout(Stdio::piped())
        .spawn()
        .context("git archive")?;
    let status = Command::new("tar")
        .args(["-x", "-C"])
        .arg(&dir)
        .stdin(archive.stdout.context("git archive stdout")?)
        .status()
        .context("tar")?;
    if !status.success() {
        bail!("unpacking {rev} failed");
    }
    ebpf::build_ebpf_at(&dir)
}

pub fn run(args: &ListenerArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("TEST_RUN needs root");
    }
    let object = ebpf::build_ebpf()?;
    let mut variants = Vec::new();
    if let Some(rev) = &args.baseline_rev {
        variants.push(Variant::load("baseline", &baseline_object(rev)?, false)?);
    } else if let Some(object) = &args.baseline_object {
        variants.push(Variant::load("baseline", object, false)?);
    }
    variants.push(Variant::load("no listener", &object, false)?);
    variants.push(Variant::load("listener", &object, true)?);

    let fwd = frame(A_IP, B_IP, 255);
    let spoof = frame([10, 244, 0, 99], B_IP, 64);
    let paths: [(&str, &[u8], u32, Verdict); 2] = [
        ("local_forward", &fwd, TC_ACT_REDIRECT, Verdict::Forward),
        ("spoof_drop", &spoof, TC_ACT_SHOT, Verdict::DropSpoof),
    ];
    let mut samples = vec![vec![Vec::with_capacity(args.calls); variants.len()]; paths.len()];
    let mut events = vec![vec![0u64; variants.len()]; paths.len()];
    for _ in 0..args.calls {
        for (p, (name, frame, action, _)) in paths.iter().enumerate() {
            for (v, variant) in variants.iter_mut().enumerate() {
                let (ns, got) = variant.call(frame)?;
                if got != *action {
                    bail!("{name} on {}: tc action {got}, not {action}", variant.name);
                }
                samples[p][v].push(ns);
                events[p][v] += variant.drain()?;
            }
        }
    }
    // Each variant took its path on every repetition, and emitted what it should.
    let runs = args.calls as u64 * u64::from(REPEAT);
    for variant in &variants {
        for (_, _, _, verdict) in &paths {
            let n = variant.packets(*verdict)?;
            if n != runs {
                bail!(
                    "{}: {n} {} packets, not {runs}",
                    variant.name,
                    verdict.name()
                );
            }
        }
    }
    let mut figures = Vec::new();
    for (p, (path, ..)) in paths.iter().enumerate() {
        for (v, variant) in variants.iter().enumerate() {
            let (ev, lost) = (events[p][v], variant.lost()?);
            let expected = match (variant.name, *path) {
                ("listener", "local_forward") => 1,
                ("listener", "spoof_drop") => runs,
                _ => 0,
            };
            if ev != expected || (variant.name == "listener" && lost != 0) {
                bail!(
                    "{path} on {}: {ev} events ({lost} lost), expected {expected}",
                    variant.name
                );
            }
            let mut sorted = samples[p][v].clone();
            sorted.sort_by(f64::total_cmp);
            figures.push(Figure {
                path,
                variant: variant.name,
                median_ns: quantile(&sorted, 0.5),
                p25_ns: quantile(&sorted, 0.25),
                p75_ns: quantile(&sorted, 0.75),
                samples: samples[p][v].clone(),
                events: ev,
                lost,
            });
        }
    }
    println!(
        "{:<14} {:<12} {:>10} {:>10} {:>10} {:>8} {:>9}",
        "path", "variant", "median ns", "p25", "p75", "ratio", "events"
    );
    for f in &figures {
        let reference = figures
            .iter()
            .find(|g| g.path == f.path && g.variant == "no listener")
            .map(|g| g.median_ns)
            .unwrap_or(f64::NAN);
        println!(
            "{:<14} {:<12} {:>10.2} {:>10.2} {:>10.2} {:>8.3} {:>9}",
            f.path,
            f.variant,
            f.median_ns,
            f.p25_ns,
            f.p75_ns,
            f.median_ns / reference,
            f.events
        );
    }
    println!(
        "({} calls of {REPEAT} repetitions per path and variant, interleaved; ratio to `no listener`)",
        args.calls
    );
    if let Some(dir) = args.out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&args.out, serde_json::to_string_pretty(&figures)?)?;
    util::step(format!("samples: {}", args.out.display()));
    Ok(())
}
