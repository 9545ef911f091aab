//! `from_pod` and `from_uplink` together under BPF_PROG_TEST_RUN, for the egress test
//! files (testrun_nat.rs for IPv4, testrun_nat6.rs for IPv6): a copy of the object
//! of its own (its own maps) with both programs through the verifier and the node
//! configuration written, runs of a frame through either program, and the counters
//! each run moved. Needs root.
//!
//! test_run runs the skb on `lo` of the test's namespace: `from_pod` sees ifindex 1,
//! so the sending pod is the endpoint stored under key 1, and `from_uplink` frames
//! carry lo's MAC (all zeros) as destination, so the kernel classifies them
//! PACKET_HOST as it does a frame for this host on a real uplink. The uplink is `lo`
//! too: test_run returns a redirect without performing it.

use std::collections::BTreeMap;

use aya::{
    Ebpf, TestRunOptions,
    maps::{Array, MapData, PerCpuArray},
    programs::{ProgramError, SchedClassifier, TestRun as _},
};
use vethbpf_common::{
    Config, Counter, MAP_CONFIG, MAP_STATS, PROG_FROM_POD, PROG_FROM_UPLINK, Verdict, ipv4_to_map,
    stats_index,
};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// The gateway MAC every host veth carries.
pub const GW_MAC: [u8; 6] = [0xee; 6];
/// `lo`'s MAC: the destination of a frame for this host in a test run.
pub const LO_MAC: [u8; 6] = [0; 6];
/// The outside router's MAC, as the source of uplink frames.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];

/// (endpoint id, verdict name).
pub type CounterKey = (u32, &'static str);

pub struct Run {
    pub ret: u32,
    pub out: Vec<u8>,
    /// Counters (packets) the run moved.
    pub delta: BTreeMap<CounterKey, u64>,
}

pub struct Programs {
    pub ebpf: Ebpf,
    /// Endpoint ids whose counters runs are checked on (0, the node's, always).
    ids: Vec<u32>,
}

impl Programs {
    /// The object loaded with both programs verified and the node configuration
    /// (gateway 169.254.1.1, [`GW_MAC`]); counters watched for id 0 and `ids`.
    pub fn load(ids: &[u32]) -> Self {
        let mut ebpf = Ebpf::load(vethbpf::EBPF_OBJECT).expect("load the eBPF object");
        for name in [PROG_FROM_POD, PROG_FROM_UPLINK] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("program {name}"))
                .try_into()
                .expect("a classifier");
            prog.load()
                .unwrap_or_else(|e| panic!("the verifier rejects {name}: {e:?}"));
        }
        let mut config: Array<&mut MapData, Config> =
            ebpf.map_mut(MAP_CONFIG).unwrap().try_into().unwrap();
        config
            .set(
                0,
                Config {
                    gateway_ip: ipv4_to_map([169, 254, 1, 1]),
                    flags: 0,
                    gateway_mac: GW_MAC,
                    _pad: [0; 2],
                },
                0,
            )
            .unwrap();
        let mut all = vec![0];
        all.extend_from_slice(ids);
        Self { ebpf, ids: all }
    }

    pub fn prog(&self, name: &str) -> &SchedClassifier {
        self.ebpf.program(name).unwrap().try_into().unwrap()
    }

    pub fn counters(&self) -> BTreeMap<CounterKey, u64> {
        let stats: PerCpuArray<&MapData, Counter> =
            self.ebpf.map(MAP_STATS).unwrap().try_into().unwrap();
        let mut out = BTreeMap::new();
        for &id in &self.ids {
            for v in Verdict::ALL {
                let n: u64 = stats
                    .get(&stats_index(id, v), 0)
                    .unwrap()
                    .iter()
                    .map(|c| c.packets)
                    .sum();
                if n != 0 {
                    out.insert((id, v.name()), n);
                }
            }
        }
        out
    }

    pub fn run(&self, prog: &str, frame: &[u8]) -> Run {
        self.try_run(prog, frame).expect("BPF_PROG_TEST_RUN")
    }

    /// A run, or the kernel's refusal to run the frame at all (EINVAL for a frame
    /// shorter than its EtherType's header), after which no counter may have moved.
    pub fn try_run(&self, prog: &str, frame: &[u8]) -> Result<Run, ProgramError> {
        let before = self.counters();
        let mut out = vec![0u8; frame.len() + 256];
        let r = self.prog(prog).test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        });
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                assert_eq!(self.counters(), before, "a refused frame moved counters");
                return Err(e);
            }
        };
        out.truncate(r.data_size_out as usize);
        let after = self.counters();
        let delta = after
            .iter()
            .filter_map(|(k, a)| {
                let d = a - before.get(k).copied().unwrap_or(0);
                (d != 0).then_some((*k, d))
            })
            .collect();
        Ok(Run {
            ret: r.return_value,
            out,
            delta,
        })
    }

    pub fn pod(&self, frame: &[u8]) -> Run {
        self.run(PROG_FROM_POD, frame)
    }

    pub fn uplink(&self, frame: &[u8]) -> Run {
        self.run(PROG_FROM_UPLINK, frame)
    }
}

/// Exactly one counter moved: `v` of endpoint `id`.
pub fn one(id: u32, v: Verdict) -> BTreeMap<CounterKey, u64> {
    BTreeMap::from([((id, v.name()), 1)])
}

/// The run returned `ret` and counted `v` for `id`, and nothing else.
pub fn assert_run(run: &Run, ret: u32, id: u32, v: Verdict) {
    assert_eq!(run.ret, ret, "tc action for {v:?}");
    assert_eq!(run.delta, one(id, v), "counters for {v:?}");
}
