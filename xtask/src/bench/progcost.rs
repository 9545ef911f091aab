//! Program cost: the built eBPF object loaded with aya, its maps filled with one
//! source endpoint and one local destination, and `from_pod` run through
//! BPF_PROG_TEST_RUN with a large repeat count on one frame per path. The kernel
//! returns the mean run time per repetition, so no clock overhead is in the figure.

use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::{Program, SchedClassifier, TestRun, TestRunOptions},
};
use serde::Serialize;
use vethbpf_common::{
    Config, EndpointInfo, MAP_CONFIG, MAP_ENDPOINTS, MAP_ROUTES, PROG_FROM_POD, ROUTE_KIND_LOCAL,
    Route, ipv4_to_map,
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

#[derive(Clone, Debug, Serialize)]
pub struct PathCost {
    pub path: &'static str,
    pub expected_verdict: u32,
    pub verdict: u32,
    /// One sample per TEST_RUN call: mean ns per packet over `repeat` runs.
    pub ns_per_packet: Vec<f64>,
    pub median_ns: f64,
    pub repeat: u32,
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
    pub paths: Vec<PathCost>,
    pub programs: Vec<ProgInsns>,
}

pub fn run(
    object: &Path,
    repeat: u32,
    samples: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<ProgCost> {
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

    let cases: [(&'static str, Vec<u8>, u32); 4] = [
        (
            "arp_reply",
            arp_request(A_MAC, A_IP, GW_IP),
            TC_ACT_REDIRECT,
        ),
        (
            "local_forward",
            ipv4_tcp(GW_MAC, A_MAC, A_IP, B_IP),
            TC_ACT_REDIRECT,
        ),
        (
            "pass",
            ipv4_tcp(GW_MAC, A_MAC, A_IP, [192, 0, 2, 1]),
            TC_ACT_OK,
        ),
        (
            "spoof_drop",
            ipv4_tcp(GW_MAC, A_MAC, [10, 244, 0, 99], B_IP),
            TC_ACT_SHOT,
        ),
    ];
    let mut paths = Vec::new();
    for (path, frame, expected) in cases {
        // Sanity run: verdict and, for the forward, the rewritten MACs.
        let mut out = [0u8; 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .with_context(|| format!("TEST_RUN {path}"))?;
        if path == "local_forward"
            && r.return_value == TC_ACT_REDIRECT
            && (out[0..6] != B_MAC || out[6..12] != GW_MAC)
        {
            bail!(
                "local_forward did not rewrite the MACs: {:02x?}",
                &out[0..12]
            );
        }
        let mut ns = Vec::new();
        for _ in 0..samples {
            super::sys::check_interrupt()?;
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    repeat,
                    ..Default::default()
                })
                .with_context(|| format!("TEST_RUN {path} x{repeat}"))?;
            // The kernel reports the mean per repetition (integer ns).
            ns.push(r.duration.as_nanos() as f64);
        }
        let median_ns = stats::median(&ns);
        progress(&format!(
            "  {path:<14} verdict {} (expected {expected}) {median_ns:.0} ns/packet",
            r.return_value
        ));
        paths.push(PathCost {
            path,
            expected_verdict: expected,
            verdict: r.return_value,
            ns_per_packet: ns,
            median_ns,
            repeat,
        });
    }
    Ok(ProgCost {
        object: object.display().to_string(),
        paths,
        programs,
    })
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
            id: 1,
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

/// A minimal TCP SYN (no payload) with a valid IPv4 header checksum.
fn ipv4_tcp(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, 0x0800);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let csum = !(((folded & 0xffff) + (folded >> 16)) as u16);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
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
        let f = ipv4_tcp(GW_MAC, A_MAC, A_IP, B_IP);
        let sum: u32 = f[14..34]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!((folded & 0xffff) + (folded >> 16), 0xffff);
    }
}
