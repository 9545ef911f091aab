//! `from_pod` under BPF_PROG_TEST_RUN: a fixture that loads its own copy of the object
//! (its own maps), fills them in-process and runs frames through the program, for the
//! `testrun*` test files. Needs root (CAP_BPF + CAP_NET_ADMIN).
//!
//! Each fixture enters a network namespace of its own (aya's `NetNsGuard`, on the
//! test's thread) holding a veth pair, and every run passes a `__sk_buff` context
//! naming the sender's veth: the program sees the ifindex it sees in production.
//! test_run never performs a redirect, so the pair only has to exist.

use std::collections::BTreeMap;

use aya::{
    Ebpf, TestRunOptions,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, TestRun as _},
    test_helpers::NetNsGuard,
};
use vethbpf_common::{
    Config, Counter, EndpointInfo, EndpointInfo6, MAP_CONFIG, MAP_ENDPOINTS, MAP_ENDPOINTS6,
    MAP_ROUTES, MAP_ROUTES6, MAP_STATS, PROG_FROM_POD, Route, Verdict, ipv4_to_map, stats_index,
};

use crate::must;

// tc actions (linux/pkt_cls.h).
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const GW_IP: [u8; 4] = [169, 254, 1, 1];
pub const GW_MAC: [u8; 6] = [0xee; 6];

/// The sender's host-side veth in the fixture's namespace, and its endpoint.
pub const SRC_VETH: &str = "vbsrc";
pub const SRC_ID: u32 = 5;
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// A second endpoint, the fast path's destination: the veth's peer.
pub const DST_VETH: &str = "vbdst";
pub const DST_ID: u32 = 6;
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];

/// Makes the endpoint `id` (IPv4 address `ip` as the datapath stores it, `mac`)
/// the one behind `ifindex` in the object's ENDPOINTS map.
pub fn set_endpoint(ebpf: &mut Ebpf, ifindex: u32, id: u32, ip: u32, mac: [u8; 6]) {
    let mut eps: HashMap<&mut MapData, u32, EndpointInfo> = ebpf
        .map_mut(MAP_ENDPOINTS)
        .expect("the object has ENDPOINTS")
        .try_into()
        .expect("ENDPOINTS is a hash map");
    let info = EndpointInfo {
        ip,
        id,
        mac,
        _pad: [0; 2],
    };
    eps.insert(ifindex, info, 0).expect("ENDPOINTS insert");
}

/// (endpoint id, verdict name): readable in assertion failures.
pub type CounterKey = (u32, &'static str);

pub fn key(id: u32, v: Verdict) -> CounterKey {
    (id, v.name())
}

/// The `__sk_buff` fields BPF_PROG_TEST_RUN takes from userspace; the kernel refuses a
/// context with any other field set (EINVAL). Offsets are the UAPI's, checked against
/// this kernel's BTF by testrun.rs's `skb_context_offsets_are_the_kernels`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Skb {
    pub ifindex: u32,
    pub gso_segs: u32,
    pub gso_size: u32,
}

impl Skb {
    pub const SIZE: usize = 192;
    pub const IFINDEX: usize = 40;
    pub const GSO_SEGS: usize = 164;
    pub const GSO_SIZE: usize = 176;
    /// Not accepted by test_run; only used to show that.
    pub const VLAN_PRESENT: usize = 20;
    pub const VLAN_TCI: usize = 24;

    pub fn bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        for (at, v) in [
            (Self::IFINDEX, self.ifindex),
            (Self::GSO_SEGS, self.gso_segs),
            (Self::GSO_SIZE, self.gso_size),
        ] {
            b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// One program run.
pub struct Run {
    pub ret: u32,
    pub out: Vec<u8>,
    pub duration_ns: u128,
    /// Counter changes.
    pub delta: BTreeMap<CounterKey, Counter>,
}

pub struct Fixture {
    pub ebpf: Ebpf,
    /// ifindex of `SRC_VETH` and `DST_VETH` in the fixture's namespace.
    pub src_ifindex: u32,
    pub dst_ifindex: u32,
    /// Left (namespace removed) when the fixture drops, after the object.
    _netns: NetNsGuard,
}

impl Fixture {
    /// The object loaded and verified, maps empty; the calling thread in a namespace of
    /// its own with the veth pair `SRC_VETH`/`DST_VETH`.
    pub fn bare() -> Self {
        let netns = NetNsGuard::new().expect("enter a network namespace for the test");
        // Commands inherit the calling thread's namespace.
        must(
            "ip",
            [
                "link", "add", SRC_VETH, "type", "veth", "peer", "name", DST_VETH,
            ],
        );
        let ifindex = |name: &str| -> u32 {
            let c = std::ffi::CString::new(name).expect("interface name");
            // SAFETY: a valid NUL-terminated string; the call asks this thread's
            // namespace.
            let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert_ne!(index, 0, "no interface {name} in the test's namespace");
            index
        };
        let (src_ifindex, dst_ifindex) = (ifindex(SRC_VETH), ifindex(DST_VETH));
        let mut ebpf = Ebpf::load(vethbpf::EBPF_OBJECT).expect("load the eBPF object");
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROG_FROM_POD)
            .expect("program from_pod")
            .try_into()
            .expect("from_pod is a classifier");
        prog.load().expect("the verifier accepts from_pod");
        Self {
            ebpf,
            src_ifindex,
            dst_ifindex,
            _netns: netns,
        }
    }

    /// The context of a frame the sender's pod sends.
    pub fn skb(&self) -> Skb {
        Skb {
            ifindex: self.src_ifindex,
            ..Skb::default()
        }
    }

    pub fn map_mut(&mut self, name: &str) -> &mut Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name}"))
    }

    /// The node configuration: gateway `GW_IP`, `GW_MAC`.
    pub fn set_config(&mut self) {
        let mut config: Array<&mut MapData, Config> = self.map_mut(MAP_CONFIG).try_into().unwrap();
        config
            .set(
                0,
                Config {
                    gateway_ip: ipv4_to_map(GW_IP),
                    flags: 0,
                    gateway_mac: GW_MAC,
                    _pad: [0; 2],
                },
                0,
            )
            .unwrap();
    }

    /// An `ENDPOINTS` entry (`ip` 0.0.0.0: the endpoint has no IPv4).
    pub fn add_endpoint(&mut self, ifindex: u32, id: u32, ip: [u8; 4], mac: [u8; 6]) {
        let mut eps: HashMap<&mut MapData, u32, EndpointInfo> =
            self.map_mut(MAP_ENDPOINTS).try_into().unwrap();
        eps.insert(
            ifindex,
            EndpointInfo {
                ip: ipv4_to_map(ip),
                id,
                mac,
                _pad: [0; 2],
            },
            0,
        )
        .unwrap();
    }

    /// An `ENDPOINTS6` entry.
    pub fn add_endpoint6(&mut self, ifindex: u32, ip: [u8; 16], link_local: [u8; 16]) {
        let mut eps: HashMap<&mut MapData, u32, EndpointInfo6> =
            self.map_mut(MAP_ENDPOINTS6).try_into().unwrap();
        eps.insert(ifindex, EndpointInfo6 { ip, link_local }, 0)
            .unwrap();
    }

    pub fn add_route(&mut self, prefix: [u8; 4], len: u32, route: Route) {
        let mut routes: LpmTrie<&mut MapData, u32, Route> =
            self.map_mut(MAP_ROUTES).try_into().unwrap();
        routes
            .insert(&Key::new(len, ipv4_to_map(prefix)), route, 0)
            .unwrap();
    }

    pub fn add_route6(&mut self, prefix: [u8; 16], len: u32, route: Route) {
        let mut routes: LpmTrie<&mut MapData, [u8; 16], Route> =
            self.map_mut(MAP_ROUTES6).try_into().unwrap();
        routes.insert(&Key::new(len, prefix), route, 0).unwrap();
    }

    pub fn prog(&self) -> &SchedClassifier {
        self.ebpf
            .program(PROG_FROM_POD)
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// Nonzero counters of the endpoint ids the tests use (0, `SRC_ID`, `DST_ID`),
    /// summed over CPUs.
    pub fn counters(&self) -> BTreeMap<CounterKey, Counter> {
        let stats: PerCpuArray<&MapData, Counter> =
            self.ebpf.map(MAP_STATS).unwrap().try_into().unwrap();
        let mut out = BTreeMap::new();
        for id in [0, SRC_ID, DST_ID] {
            for v in Verdict::ALL {
                let per_cpu = stats.get(&stats_index(id, v), 0).unwrap();
                let total = per_cpu.iter().fold(Counter::default(), |a, c| Counter {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                });
                if total != Counter::default() {
                    out.insert(key(id, v), total);
                }
            }
        }
        out
    }

    /// Runs `frame` `repeat` times with the sender's context; checks that a run the
    /// kernel refuses moved no counter.
    pub fn try_run(&self, frame: &[u8], repeat: u32) -> Result<Run, aya::programs::ProgramError> {
        self.try_run_ctx(frame, repeat, Some(&self.skb().bytes()))
    }

    /// Runs `frame` with the raw `__sk_buff` context `ctx` (`None`: no context).
    pub fn try_run_ctx(
        &self,
        frame: &[u8],
        repeat: u32,
        ctx: Option<&[u8]>,
    ) -> Result<Run, aya::programs::ProgramError> {
        let before = self.counters();
        // Room for a larger output, so a length change would show.
        let mut out = vec![0u8; frame.len() + 64];
        let result = self.prog().test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            repeat,
            ..TestRunOptions::default()
        });
        let after = self.counters();
        let mut delta = BTreeMap::new();
        for (k, a) in &after {
            let b = before.get(k).copied().unwrap_or_default();
            if *a != b {
                delta.insert(
                    *k,
                    Counter {
                        packets: a.packets - b.packets,
                        bytes: a.bytes - b.bytes,
                    },
                );
            }
        }
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                assert!(delta.is_empty(), "a rejected run moved counters: {delta:?}");
                return Err(e);
            }
        };
        out.truncate(result.data_size_out as usize);
        Ok(Run {
            ret: result.return_value,
            out,
            duration_ns: result.duration.as_nanos(),
            delta,
        })
    }

    pub fn run(&self, frame: &[u8]) -> Run {
        self.try_run(frame, 1).expect("BPF_PROG_TEST_RUN")
    }
}

/// Runs `frame` once and checks: the return value is the verdict's action, and exactly
/// one counter moved, (endpoint `id`, verdict), by one packet of the frame's length
/// (as it came in).
pub fn expect(f: &Fixture, frame: &[u8], id: u32, verdict: Verdict) -> Run {
    expect_in(f, frame, f.skb(), id, verdict)
}

/// [`expect`] with the context `skb`; a GSO skb counts as its `gso_segs` packets.
pub fn expect_in(f: &Fixture, frame: &[u8], skb: Skb, id: u32, verdict: Verdict) -> Run {
    let run = f
        .try_run_ctx(frame, 1, Some(&skb.bytes()))
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(
        run.ret,
        action_of(verdict),
        "return value for expected verdict {verdict:?}"
    );
    let expected = BTreeMap::from([(
        key(id, verdict),
        Counter {
            packets: u64::from(skb.gso_segs.max(1)),
            bytes: frame.len() as u64,
        },
    )]);
    assert_eq!(run.delta, expected, "counters after one {verdict:?} frame");
    run
}

/// Like [`expect`], and the frame came out byte for byte as it went in.
pub fn expect_untouched(f: &Fixture, frame: &[u8], id: u32, verdict: Verdict) {
    let run = expect(f, frame, id, verdict);
    assert_eq!(run.out, frame, "{verdict:?} must not modify the frame");
}

/// The tc action each verdict must come with.
pub fn action_of(v: Verdict) -> u32 {
    match v {
        Verdict::Forward | Verdict::ArpReply | Verdict::EchoReply | Verdict::NaReply => {
            TC_ACT_REDIRECT
        }
        Verdict::Pass => TC_ACT_OK,
        _ => {
            assert!(
                v.is_drop(),
                "{v:?} is neither a redirect, a pass nor a drop"
            );
            TC_ACT_SHOT
        }
    }
}

/// A local-endpoint route to the fixture's destination endpoint.
pub fn local_route(f: &Fixture) -> Route {
    Route {
        kind: vethbpf_common::ROUTE_KIND_LOCAL,
        ifindex: f.dst_ifindex,
        endpoint_id: DST_ID,
        mac: DST_MAC,
        _pad: [0; 2],
    }
}

/// The one's complement checksum of `bytes` (RFC 1071), computed here from scratch.
pub fn inet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Checks that `out` is the gateway's ICMP error (`type_`, `code`, next-hop `mtu`)
/// about the pod's IPv4 frame `sent`: addressed back to the pod from the gateway
/// (MACs and addresses), valid header and ICMP checksums computed independently, and
/// the quote the first 28 bytes of the sent IP packet.
pub fn assert_icmp_error(sent: &[u8], out: &[u8], type_: u8, code: u8, mtu: u16) {
    assert_eq!(
        out.len(),
        14 + 20 + 8 + 28,
        "error frame length: {out:02x?}"
    );
    assert_eq!(out[0..6], sent[6..12], "to the pod's MAC");
    assert_eq!(out[6..12], GW_MAC, "from the gateway MAC");
    assert_eq!(out[12..14], [0x08, 0x00], "IPv4");
    let ip = &out[14..34];
    assert_eq!(ip[0], 0x45, "version, header length");
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 56, "total length");
    assert_eq!(ip[9], 1, "ICMP");
    assert!(ip[8] > 1, "a TTL that gets it home: {}", ip[8]);
    assert_eq!(ip[12..16], GW_IP, "from the gateway address");
    assert_eq!(ip[16..20], sent[26..30], "to the pod's address");
    assert_eq!(inet_checksum(ip), 0, "IPv4 header checksum: {ip:02x?}");
    let icmp = &out[34..];
    assert_eq!((icmp[0], icmp[1]), (type_, code), "type and code");
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), mtu, "next-hop MTU");
    assert_eq!(inet_checksum(icmp), 0, "ICMP checksum: {icmp:02x?}");
    assert_eq!(
        icmp[8..],
        sent[14..42],
        "the quote: the sent header and 8 bytes"
    );
}

/// Runs the pod's IPv4 `frame` and checks that it was dropped, counted under
/// `verdict` for endpoint `id`, and answered with the ICMP error (see
/// [`assert_icmp_error`]) sent back out of the pod's veth. Bytes are counted as the
/// pod sent them.
pub fn expect_icmp_error(
    f: &Fixture,
    frame: &[u8],
    id: u32,
    verdict: Verdict,
    (type_, code, mtu): (u8, u8, u16),
) -> Run {
    let run = f.run(frame);
    assert_eq!(run.ret, TC_ACT_REDIRECT, "the error goes back to the pod");
    let expected = BTreeMap::from([(
        key(id, verdict),
        Counter {
            packets: 1,
            bytes: frame.len() as u64,
        },
    )]);
    assert_eq!(run.delta, expected, "counters after one {verdict:?} frame");
    assert_icmp_error(frame, &run.out, type_, code, mtu);
    run
}
