//! Program cost: the built eBPF object loaded with aya, its maps filled with one
//! source endpoint and one local destination, and `from_pod` run through
//! BPF_PROG_TEST_RUN on one frame per path. The kernel times the repetitions of one
//! call and returns the mean, so no syscall cost is in the figure.
//!
//! The kernel runs all repetitions of a call on the *same* buffer: a path that
//! rewrites the frame sees its own output from the second repetition on. So:
//! - pass and spoof drop leave the frame alone: calls of [`BATCH`] repetitions;
//! - local forward decrements the TTL: the frame starts at TTL 255 and a call has
//!   [`BATCH`] (< 254) repetitions, so every repetition is a forward;
//! - the ARP reply turns the request into a reply (the next repetition would be an
//!   ARP spoof drop), the gateway's echo reply likewise (its next repetition would be
//!   from the gateway's address, a spoof): single-repetition calls, whose mean
//!   includes the kernel's per-call timer overhead; that overhead, measured as (pass
//!   path, 1 repetition) minus (pass path, BATCH repetitions), is subtracted and both
//!   figures are kept.
//!
//! A figure is only reported for the path it names: every call must return that
//! path's tc action, and the source endpoint's counters must show exactly one
//! repetition per packet under that path's verdict and nothing under any other.
//! Otherwise the path is reported as "not measured: took verdict X".
//!
//! An empty program (`r0 = TC_ACT_OK; exit`) measured the same way gives the test
//! harness's own per-repetition floor.

use std::{collections::BTreeMap, os::fd::AsRawFd, path::Path};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{Program, SchedClassifier, TestRun, TestRunOptions},
};
use serde::Serialize;
use vethbpf_common::{
    Config, Counter, EndpointInfo, MAP_CONFIG, MAP_ENDPOINTS, MAP_ROUTES, MAP_STATS, PROG_FROM_POD,
    ROUTE_KIND_LOCAL, Route, Verdict, ipv4_to_map, stats_index,
};

use super::stats;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const GW_MAC: [u8; 6] = [0xee; 6];
const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const A_IP: [u8; 4] = [10, 244, 0, 2];
const B_IP: [u8; 4] = [10, 244, 0, 3];
const GW_IP: [u8; 4] = [169, 254, 1, 1];
/// Under TEST_RUN without a context the skb arrives on the namespace's loopback
/// device: ifindex 1 is the source endpoint's key.
const SOURCE_IFINDEX: u32 = 1;
/// Any ifindex will do for the destination: the redirect is only recorded, never
/// carried out, under TEST_RUN.
const DEST_IFINDEX: u32 = 1;
/// Endpoint id of the source, whose counters each path must move.
const SOURCE_ID: u32 = 1;

/// Repetitions per TEST_RUN call for frames that survive repetition.
pub const BATCH: u32 = 250;

#[derive(Clone, Debug, Serialize)]
pub struct PathCost {
    pub path: &'static str,
    /// The verdict the path is named after, and the tc action it comes with.
    pub expected_verdict: &'static str,
    pub expected_action: u32,
    /// tc actions returned over all calls (all must equal `expected_action`).
    pub actions: Vec<u32>,
    /// Packets counted per verdict of the source endpoint over all calls (only
    /// `expected_verdict`, once per repetition, is right).
    pub counted: BTreeMap<&'static str, u64>,
    /// Why the figure is not that path's, if it is not: then it is not reported.
    pub wrong_path: Option<String>,
    /// Repetitions per call.
    pub repeat: u32,
    /// One sample per call: the kernel's mean ns per repetition.
    pub ns_per_packet: Vec<f64>,
    /// Median of the samples.
    pub raw_median_ns: f64,
    /// Per-call timer overhead subtracted (single-repetition paths only).
    pub overhead_ns: f64,
    /// The figure: raw median minus overhead; NaN when `wrong_path` is set.
    pub median_ns: f64,
}

impl PathCost {
    /// The figure, only if the path taken was the one named.
    pub fn verified_ns(&self) -> Option<f64> {
        self.wrong_path.is_none().then_some(self.median_ns)
    }
}

/// One timed path: a frame, what it must do, and how often it may repeat per call.
struct PathSpec<'a> {
    name: &'static str,
    frame: &'a [u8],
    verdict: Verdict,
    action: u32,
    repeat: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgInsns {
    pub program: String,
    pub id: u32,
    /// Instructions as loaded (translated by the verifier): xlated bytes / 8.
    pub xlated_insns: Option<u32>,
    /// Instructions the verifier processed (all paths explored).
    pub verified_insns: Option<u32>,
    pub jited_bytes: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgCost {
    pub object: String,
    /// Empty tc program, BATCH repetitions per call: the harness floor, ns.
    pub empty_program_ns: Option<f64>,
    pub paths: Vec<PathCost>,
    pub programs: Vec<ProgInsns>,
}

pub fn run(object: &Path, total_runs: u32, progress: &mut dyn FnMut(&str)) -> Result<ProgCost> {
    // No pin path: the maps are private to this process and vanish with it.
    let mut ebpf = EbpfLoader::new()
        .load_file(object)
        .with_context(|| format!("loading {}", object.display()))?;
    fill_maps(&mut ebpf)?;

    let mut programs = Vec::new();
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    for name in &names {
        let Some(Program::SchedClassifier(p)) = ebpf.program_mut(name) else {
            continue;
        };
        p.load()
            .with_context(|| format!("loading program {name}"))?;
        let info = p.info().with_context(|| format!("info of {name}"))?;
        programs.push(ProgInsns {
            program: name.clone(),
            id: info.id(),
            xlated_insns: info.size_translated().map(|b| b / 8),
            verified_insns: info.verified_instruction_count(),
            jited_bytes: info.size_jitted(),
        });
    }
    let prog: &SchedClassifier = ebpf
        .program(PROG_FROM_POD)
        .with_context(|| format!("no program {PROG_FROM_POD} in the object"))?
        .try_into()
        .with_context(|| format!("{PROG_FROM_POD} is not a tc program"))?;

    let batched_calls = (total_runs / BATCH).max(10) as usize;
    let single_calls = (total_runs / 100).clamp(1000, 20000) as usize;
    let fwd = ipv4_tcp(GW_MAC, A_MAC, A_IP, B_IP, 255);
    let pass = ipv4_tcp(GW_MAC, A_MAC, A_IP, [192, 0, 2, 1], 64);
    let spoof = ipv4_tcp(GW_MAC, A_MAC, [10, 244, 0, 99], B_IP, 64);
    let arp = arp_request(A_MAC, A_IP, GW_IP);
    let echo = echo_request(GW_MAC, A_MAC, A_IP, GW_IP);

    // Sanity: one run of the forward rewrites the MACs.
    let mut out = [0u8; 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&fwd),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .context("TEST_RUN local_forward")?;
    if r.return_value == TC_ACT_REDIRECT && (out[0..6] != B_MAC || out[6..12] != GW_MAC) {
        bail!(
            "local_forward did not rewrite the MACs: {:02x?}",
            &out[0..12]
        );
    }

    let spec = |name, frame, verdict, action, repeat| PathSpec {
        name,
        frame,
        verdict,
        action,
        repeat,
    };
    let mut paths = Vec::new();
    for p in [
        spec(
            "local_forward",
            &fwd,
            Verdict::Forward,
            TC_ACT_REDIRECT,
            BATCH,
        ),
        spec("pass", &pass, Verdict::Pass, TC_ACT_OK, BATCH),
        spec("spoof_drop", &spoof, Verdict::DropSpoof, TC_ACT_SHOT, BATCH),
    ] {
        paths.push(measure(&ebpf, prog, &p, batched_calls, 0.0)?);
    }
    // Per-call overhead, from the pass path, which is the same at any repetition count.
    let pass1 = measure(
        &ebpf,
        prog,
        &spec("pass (1 repetition)", &pass, Verdict::Pass, TC_ACT_OK, 1),
        single_calls,
        0.0,
    )?;
    let overhead = match (pass1.verified_ns(), paths[1].verified_ns()) {
        (Some(one), Some(batched)) => (one - batched).max(0.0),
        // Without it the single-repetition figures would include the timer: refuse.
        _ => f64::NAN,
    };
    for p in [
        spec("arp_reply", &arp, Verdict::ArpReply, TC_ACT_REDIRECT, 1),
        spec(
            "gateway_echo",
            &echo,
            Verdict::EchoReply,
            TC_ACT_REDIRECT,
            1,
        ),
    ] {
        let mut cost = measure(&ebpf, prog, &p, single_calls, overhead)?;
        if overhead.is_nan() && cost.wrong_path.is_none() {
            cost.wrong_path = Some("the per-call overhead (pass path) was not measured".into());
            cost.median_ns = f64::NAN;
        }
        paths.push(cost);
    }
    for p in &paths {
        progress(&match &p.wrong_path {
            None => format!(
                "  {:<14} {} (action {}, counted {:?}) {:.1} ns/packet ({} x {} repetitions)",
                p.path,
                p.expected_verdict,
                p.expected_action,
                p.counted,
                p.median_ns,
                p.ns_per_packet.len(),
                p.repeat
            ),
            Some(why) => format!("  {:<14} not measured: {why}", p.path),
        });
    }
    let empty_program_ns = match empty_program_ns(batched_calls) {
        Ok(v) => Some(v),
        Err(e) => {
            progress(&format!("  empty program baseline not measured: {e:#}"));
            None
        }
    };
    Ok(ProgCost {
        object: object.display().to_string(),
        empty_program_ns,
        paths,
        programs,
    })
}

/// Times `p` over `calls` calls and checks that every repetition took that path: the
/// tc action of every call, and the source endpoint's counters (exactly one packet
/// of the frame per repetition, under the path's verdict only).
fn measure(
    ebpf: &Ebpf,
    prog: &SchedClassifier,
    p: &PathSpec<'_>,
    calls: usize,
    overhead_ns: f64,
) -> Result<PathCost> {
    let before = counters(ebpf)?;
    let (ns, actions) = sample(prog, p.frame, p.repeat, calls)?;
    let after = counters(ebpf)?;
    let mut counted = BTreeMap::new();
    let mut bytes = BTreeMap::new();
    for v in Verdict::ALL {
        let (a, b) = (after[v as usize], before[v as usize]);
        if a.packets != b.packets {
            counted.insert(v.name(), a.packets - b.packets);
            bytes.insert(v.name(), a.bytes - b.bytes);
        }
    }
    let runs = calls as u64 * u64::from(p.repeat);
    let wrong_path = wrong_path(p, runs, &actions, &counted, &bytes);
    let raw = stats::median(&ns);
    let median_ns = if wrong_path.is_none() {
        raw - overhead_ns
    } else {
        f64::NAN
    };
    Ok(PathCost {
        path: p.name,
        expected_verdict: p.verdict.name(),
        expected_action: p.action,
        actions,
        counted,
        wrong_path,
        repeat: p.repeat,
        ns_per_packet: ns,
        raw_median_ns: raw,
        overhead_ns,
        median_ns,
    })
}

/// Why `runs` repetitions of `p` did not all take the path `p` names (`None`: they
/// did): a call returned another tc action, or the counters moved under another
/// verdict, or by another number of packets or bytes than one frame per repetition.
fn wrong_path(
    p: &PathSpec<'_>,
    runs: u64,
    actions: &[u32],
    counted: &BTreeMap<&'static str, u64>,
    bytes: &BTreeMap<&'static str, u64>,
) -> Option<String> {
    let expected = BTreeMap::from([(p.verdict.name(), runs)]);
    let expected_bytes = BTreeMap::from([(p.verdict.name(), runs * p.frame.len() as u64)]);
    if actions != [p.action] {
        Some(format!(
            "path {} returned tc actions {actions:?}, not {} only",
            p.name, p.action
        ))
    } else if *counted != expected || *bytes != expected_bytes {
        Some(format!(
            "path {} took verdict(s) {counted:?} over {runs} runs, not {} only",
            p.name,
            p.verdict.name()
        ))
    } else {
        None
    }
}

/// The source endpoint's counters by verdict, summed over CPUs.
fn counters(ebpf: &Ebpf) -> Result<Vec<Counter>> {
    let stats: PerCpuArray<&MapData, Counter> = ebpf
        .map(MAP_STATS)
        .context("no STATS map")?
        .try_into()
        .context("STATS is not a per-CPU array of counters")?;
    Verdict::ALL
        .iter()
        .map(|&v| {
            let per_cpu = stats
                .get(&stats_index(SOURCE_ID, v), 0)
                .with_context(|| format!("reading the {} counter", v.name()))?;
            Ok(per_cpu.iter().fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            }))
        })
        .collect()
}

/// `calls` TEST_RUN calls of `repeat` repetitions: per-call mean ns, distinct tc
/// actions returned.
pub(super) fn sample(
    prog: &SchedClassifier,
    frame: &[u8],
    repeat: u32,
    calls: usize,
) -> Result<(Vec<f64>, Vec<u32>)> {
    let mut ns = Vec::with_capacity(calls);
    let mut actions = Vec::new();
    for i in 0..calls {
        if i % 1000 == 0 {
            super::sys::check_interrupt()?;
        }
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..Default::default()
            })
            .context("TEST_RUN")?;
        ns.push(r.duration.as_nanos() as f64);
        if !actions.contains(&r.return_value) {
            actions.push(r.return_value);
        }
    }
    Ok((ns, actions))
}

/// The harness floor: a two-instruction tc program (`r0 = 0; exit`) loaded with
/// the raw bpf(2) syscall (aya loads only ELF objects) and test-run like the paths.
pub(super) fn empty_program_ns(calls: usize) -> Result<f64> {
    // struct bpf_insn: code, dst:4|src:4, off, imm.
    #[repr(C)]
    struct Insn {
        code: u8,
        regs: u8,
        off: i16,
        imm: i32,
    }
    let insns = [
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: 0,
        },
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    // bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, ...; the rest
    // zero. 128 bytes covers every field this kernel reads for the command.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&3u32.to_ne_bytes()); // BPF_PROG_TYPE_SCHED_CLS
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix whose pointers
    // (insns, license) outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5, /* BPF_PROG_LOAD */
            attr.as_ptr(),
            attr.len() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_PROG_LOAD of the empty program");
    }
    // SAFETY: the kernel just returned this fd to us; OwnedFd closes it on drop.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let frame = ipv4_tcp(GW_MAC, A_MAC, A_IP, B_IP, 64);
    let mut ns = Vec::with_capacity(calls);
    for _ in 0..calls {
        // bpf_attr.test: prog_fd, retval, data_size_in, data_size_out, data_in,
        // data_out, repeat, duration.
        let mut t = [0u8; 80];
        t[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
        t[8..12].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        t[16..24].copy_from_slice(&(frame.as_ptr() as u64).to_ne_bytes());
        t[32..36].copy_from_slice(&BATCH.to_ne_bytes());
        // SAFETY: as above; data_in points to `frame`, which outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                10, /* BPF_PROG_TEST_RUN */
                t.as_mut_ptr(),
                t.len() as u32,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error())
                .context("BPF_PROG_TEST_RUN of the empty program");
        }
        ns.push(f64::from(u32::from_ne_bytes([t[36], t[37], t[38], t[39]])));
    }
    Ok(stats::median(&ns))
}

fn fill_maps(ebpf: &mut Ebpf) -> Result<()> {
    let mut config: Array<_, Config> =
        Array::try_from(ebpf.map_mut(MAP_CONFIG).context("no CONFIG map")?)?;
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
    let mut eps: HashMap<_, u32, EndpointInfo> =
        HashMap::try_from(ebpf.map_mut(MAP_ENDPOINTS).context("no ENDPOINTS map")?)?;
    eps.insert(
        SOURCE_IFINDEX,
        EndpointInfo {
            ip: ipv4_to_map(A_IP),
            id: SOURCE_ID,
            mac: A_MAC,
            _pad: [0; 2],
        },
        0,
    )?;
    let mut routes: LpmTrie<_, u32, Route> =
        LpmTrie::try_from(ebpf.map_mut(MAP_ROUTES).context("no ROUTES map")?)?;
    let route = |id, mac| Route {
        kind: ROUTE_KIND_LOCAL,
        ifindex: DEST_IFINDEX,
        endpoint_id: id,
        mac,
        _pad: [0; 2],
    };
    routes.insert(&Key::new(32, ipv4_to_map(B_IP)), route(2, B_MAC), 0)?;
    routes.insert(&Key::new(32, ipv4_to_map(A_IP)), route(1, A_MAC), 0)?;
    Ok(())
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = eth([0xff; 6], sha, 0x0806);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}

/// A ping (ICMP echo request, 56 bytes of data as `ping` sends) with valid checksums.
fn echo_request(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend((0..56u8).map(|i| i.wrapping_mul(7)));
    let check = !ones_sum(&icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut f = eth(dst_mac, src_mac, 0x0800);
    f.extend_from_slice(&ipv4_header(src, dst, 64, 1, icmp.len()));
    f.extend_from_slice(&icmp);
    f
}

/// An option-less IPv4 header with a valid checksum (DF set).
fn ipv4_header(src: [u8; 4], dst: [u8; 4], ttl: u8, protocol: u8, payload: usize) -> [u8; 20] {
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = ttl;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let csum = !ones_sum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    ip
}

/// One's complement sum of big-endian 16-bit words, folded.
fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A minimal TCP SYN (no payload) with a valid IPv4 header checksum.
fn ipv4_tcp(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, 0x0800);
    f.extend_from_slice(&ipv4_header(src, dst, ttl, 6, 20));
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.resize(64, 0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_checksum_verifies() {
        let f = ipv4_tcp(GW_MAC, A_MAC, A_IP, B_IP, 255);
        assert_eq!(ones_sum(&f[14..34]), 0xffff);
    }

    #[test]
    fn a_figure_is_only_the_named_paths() {
        let frame = [0u8; 64];
        let p = PathSpec {
            name: "local_forward",
            frame: &frame,
            verdict: Verdict::Forward,
            action: TC_ACT_REDIRECT,
            repeat: BATCH,
        };
        let n = |v: &[(&'static str, u64)]| v.iter().copied().collect::<BTreeMap<_, _>>();
        let (fwd, fwd_bytes) = (n(&[("forward", 500)]), n(&[("forward", 500 * 64)]));
        assert_eq!(
            wrong_path(&p, 500, &[TC_ACT_REDIRECT], &fwd, &fwd_bytes),
            None
        );
        // Another action in some call.
        let why = wrong_path(&p, 500, &[TC_ACT_REDIRECT, TC_ACT_OK], &fwd, &fwd_bytes);
        assert!(why.is_some_and(|w| w.contains("tc actions")));
        // The right action, but counted under another verdict (e.g. the redirect of
        // an ARP reply, or a pass that also returns TC_ACT_OK).
        let arp = (n(&[("arp_reply", 500)]), n(&[("arp_reply", 500 * 64)]));
        let why = wrong_path(&p, 500, &[TC_ACT_REDIRECT], &arp.0, &arp.1);
        assert!(why.is_some_and(|w| w.contains("took verdict(s) {\"arp_reply\": 500}")));
        // Partly another verdict, or fewer packets than repetitions.
        let mixed = n(&[("forward", 499), ("drop_ttl", 1)]);
        assert!(wrong_path(&p, 500, &[TC_ACT_REDIRECT], &mixed, &fwd_bytes).is_some());
        let short = n(&[("forward", 250)]);
        assert!(wrong_path(&p, 500, &[TC_ACT_REDIRECT], &short, &fwd_bytes).is_some());
    }

    #[test]
    fn echo_request_checksums_verify() {
        let f = echo_request(GW_MAC, A_MAC, A_IP, GW_IP);
        assert_eq!(ones_sum(&f[14..34]), 0xffff);
        assert_eq!(ones_sum(&f[34..]), 0xffff);
        assert_eq!(f[34], 8, "echo request");
    }
}
