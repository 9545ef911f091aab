//! The datapath's events under BPF_PROG_TEST_RUN: what `from_pod` puts into the
//! `EVENTS` ring buffer for each verdict, with and without a listener, the trace
//! filter (first packet of a flow, new TCP flags), the lease, a full ring, and GSO
//! packets counted as their segments. Each test loads its own copy of the object
//! (private maps). Needs root.
//!
//! Runs pass a `__sk_buff` context naming `lo` (ifindex 1, in every namespace) as
//! the sender's interface, so the sending endpoint is ENDPOINTS key 1; the context
//! also carries `gso_segs` where a test needs a GSO packet.

use aya::{
    Ebpf, TestRunOptions,
    maps::{Array, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{SchedClassifier, TestRun as _},
};
use vethbpf_common::{
    Config, Counter, EVENT_DATA_LEN, EVENT_DROP, EVENT_TRACE, EVENT_VERSION, Event, MAP_CONFIG,
    MAP_EVENTS, MAP_EVENTS_LOST, MAP_MONITOR, MAP_ROUTES, MAP_STATS, MONITOR_LEASE_NS, Monitor,
    PROG_FROM_POD, ROUTE_KIND_LOCAL, ROUTE_KIND_POD_CIDR, Route, Verdict, ipv4_to_map, kind_bit,
    stats_index,
};
use vethbpf_tests::{eth, ones_sum, testrun::set_endpoint};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const GW_IP: [u8; 4] = [169, 254, 1, 1];
const GW_MAC: [u8; 6] = [0xee; 6];
const LO: u32 = 1;
const SRC_ID: u32 = 5;
const SRC_IP: [u8; 4] = [10, 244, 0, 2];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const DST_IFINDEX: u32 = 42;
const DST_ID: u32 = 6;
const DST_IP: [u8; 4] = [10, 244, 0, 3];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
/// In the pod CIDR, no endpoint's.
const GONE_IP: [u8; 4] = [10, 244, 0, 77];

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// `struct __sk_buff` as test_run takes it: the fields it accepts are ifindex,
/// gso_segs and gso_size (offsets from the kernel's BTF; testrun.rs checks them).
fn skb_ctx(gso_segs: u32, gso_size: u32) -> [u8; 192] {
    let mut b = [0u8; 192];
    b[40..44].copy_from_slice(&LO.to_ne_bytes());
    b[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
    b[176..180].copy_from_slice(&gso_size.to_ne_bytes());
    b
}

/// An IPv4 packet (valid header checksum) around `l4`.
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let check = !ones_sum(&h);
    h[10..12].copy_from_slice(&check.to_be_bytes());
    h.extend_from_slice(l4);
    eth(GW_MAC, SRC_MAC, 0x0800, &h)
}

/// A TCP segment (checksum not checked by the datapath) with `flags` and `payload`.
fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    ipv4(src, dst, 6, &t)
}

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    ipv4(src, dst, 17, &u)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Fixture {
    ebpf: Ebpf,
}

impl Fixture {
    fn new() -> Self {
        let mut ebpf = Ebpf::load(vethbpf::EBPF_OBJECT).expect("load the eBPF object");
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROG_FROM_POD)
            .expect("from_pod")
            .try_into()
            .expect("a classifier");
        prog.load().expect("the verifier accepts from_pod");
        let mut config: Array<&mut MapData, Config> =
            ebpf.map_mut(MAP_CONFIG).unwrap().try_into().unwrap();
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
        for (ifindex, id, ip, mac) in [
            (LO, SRC_ID, SRC_IP, SRC_MAC),
            (DST_IFINDEX, DST_ID, DST_IP, DST_MAC),
        ] {
            set_endpoint(&mut ebpf, ifindex, id, ipv4_to_map(ip), mac);
        }
        let mut routes: LpmTrie<&mut MapData, u32, Route> =
            ebpf.map_mut(MAP_ROUTES).unwrap().try_into().unwrap();
        let route = |kind, ifindex, endpoint_id, mac| Route {
            kind,
            ifindex,
            endpoint_id,
            mac,
            _pad: [0; 2],
        };
        routes
            .insert(
                &Key::new(32, ipv4_to_map(DST_IP)),
                route(ROUTE_KIND_LOCAL, DST_IFINDEX, DST_ID, DST_MAC),
                0,
            )
            .unwrap();
        routes
            .insert(
                &Key::new(24, ipv4_to_map([10, 244, 0, 0])),
                route(ROUTE_KIND_POD_CIDR, 0, 0, [0; 6]),
                0,
            )
            .unwrap();
        Fixture { ebpf }
    }

    /// Sets the MONITOR entry: `kinds` wanted, lease `lease_ns` from now.
    fn listen(&mut self, kinds: u32, session: u32, lease_ns: i64) {
        let mut m: Array<&mut MapData, Monitor> =
            self.ebpf.map_mut(MAP_MONITOR).unwrap().try_into().unwrap();
        let deadline_ns = (monotonic_ns() as i64 + lease_ns).max(0) as u64;
        m.set(
            0,
            Monitor {
                deadline_ns,
                kinds,
                session,
                pid: std::process::id(),
                _pad: 0,
            },
            0,
        )
        .unwrap();
    }

    fn listen_all(&mut self, session: u32) {
        self.listen(
            kind_bit(EVENT_DROP) | kind_bit(EVENT_TRACE),
            session,
            MONITOR_LEASE_NS as i64,
        );
    }

    /// Runs `frame` `repeat` times with a context of `gso_segs`; returns the action.
    fn run_ctx(&self, frame: &[u8], repeat: u32, gso_segs: u32) -> u32 {
        let prog: &SchedClassifier = self
            .ebpf
            .program(PROG_FROM_POD)
            .unwrap()
            .try_into()
            .unwrap();
        let ctx = skb_ctx(gso_segs, if gso_segs > 1 { 1400 } else { 0 });
        let mut out = vec![0u8; frame.len() + 64];
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
    }

    fn run(&self, frame: &[u8]) -> u32 {
        self.run_ctx(frame, 1, 0)
    }

    /// Every event in the ring, in order.
    fn events(&mut self) -> Vec<Event> {
        let mut ring: RingBuf<&mut MapData> =
            self.ebpf.map_mut(MAP_EVENTS).unwrap().try_into().unwrap();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), size_of::<Event>(), "one Event per record");
            // SAFETY: size checked; Event is plain old data.
            out.push(unsafe { item.as_ptr().cast::<Event>().read_unaligned() });
        }
        out
    }

    fn lost(&self) -> u64 {
        let lost: PerCpuArray<&MapData, u64> =
            self.ebpf.map(MAP_EVENTS_LOST).unwrap().try_into().unwrap();
        lost.get(&0, 0).unwrap().iter().sum()
    }

    fn counter(&self, id: u32, v: Verdict) -> Counter {
        let stats: PerCpuArray<&MapData, Counter> =
            self.ebpf.map(MAP_STATS).unwrap().try_into().unwrap();
        stats
            .get(&stats_index(id, v), 0)
            .unwrap()
            .iter()
            .fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            })
    }
}

fn verdicts(events: &[Event]) -> Vec<Verdict> {
    events
        .iter()
        .map(|e| Verdict::ALL[usize::from(e.verdict)])
        .collect()
}

#[test]
fn nothing_is_emitted_without_a_listener() {
    let mut f = Fixture::new();
    let spoof = udp([10, 244, 0, 99], DST_IP, 1, 2, b"x");
    let fwd = tcp(SRC_IP, DST_IP, 40000, 80, TCP_SYN, b"");
    assert_eq!(f.run(&spoof), TC_ACT_SHOT);
    assert_eq!(f.run(&fwd), TC_ACT_REDIRECT);
    assert!(f.events().is_empty());
    assert_eq!(f.lost(), 0);
    // A listener whose lease ran out a second ago (a monitor that was SIGKILLed) is
    // nobody. (The datapath reads the coarse clock: a lease ends within a tick.)
    f.listen(
        kind_bit(EVENT_DROP) | kind_bit(EVENT_TRACE),
        7,
        -1_000_000_000,
    );
    assert_eq!(f.run(&spoof), TC_ACT_SHOT);
    assert_eq!(f.run(&fwd), TC_ACT_REDIRECT);
    assert!(f.events().is_empty(), "no events after the lease");
    assert_eq!(f.lost(), 0);
}

#[test]
fn a_drop_event_carries_verdict_endpoint_interface_length_and_the_first_bytes() {
    let mut f = Fixture::new();
    f.listen_all(1);
    let t0 = monotonic_ns();
    let spoof = udp([10, 244, 0, 99], DST_IP, 1234, 9, &[0xab; 300]);
    assert_eq!(f.run(&spoof), TC_ACT_SHOT);
    let gone = udp(SRC_IP, GONE_IP, 1234, 9, b"short");
    assert_eq!(f.run(&gone), TC_ACT_SHOT);
    let events = f.events();
    assert_eq!(
        verdicts(&events),
        [Verdict::DropSpoof, Verdict::DropUnknownDestination]
    );
    let e = &events[0];
    assert_eq!((e.kind, e.version), (EVENT_DROP, EVENT_VERSION));
    assert_eq!((e.endpoint_id, e.ifindex), (SRC_ID, LO));
    assert_eq!((e.len, e.segs), (spoof.len() as u32, 1));
    assert_eq!(
        e.cap_len as usize, EVENT_DATA_LEN,
        "a long packet: the first 128 bytes"
    );
    assert_eq!(&e.data[..], &spoof[..EVENT_DATA_LEN]);
    assert!(e.time_ns >= t0 && e.time_ns <= monotonic_ns());
    let e = &events[1];
    assert_eq!(e.cap_len as usize, gone.len(), "a short packet: all of it");
    assert_eq!(&e.data[..gone.len()], &gone[..]);
    // Counted as ever.
    assert_eq!(f.counter(SRC_ID, Verdict::DropSpoof).packets, 1);
    assert_eq!(
        f.counter(SRC_ID, Verdict::DropUnknownDestination).packets,
        1
    );
}

#[test]
fn traces_come_once_per_flow_and_again_for_each_new_tcp_flag() {
    let mut f = Fixture::new();
    f.listen_all(1);
    let seg = |sport, flags| tcp(SRC_IP, DST_IP, sport, 80, flags, b"data");
    // A connection: SYN (new flow), data (nothing new), FIN (new flag), data after.
    for (flags, times) in [
        (TCP_SYN, 1),
        (TCP_SYN, 1),
        (TCP_ACK, 50),
        (TCP_ACK | TCP_PSH, 50),
        (TCP_FIN | TCP_ACK, 1),
        (TCP_ACK, 10),
        (TCP_RST, 1),
    ] {
        for _ in 0..times {
            assert_eq!(f.run(&seg(40000, flags)), TC_ACT_REDIRECT);
        }
    }
    let events = f.events();
    assert!(events.iter().all(|e| e.kind == EVENT_TRACE));
    let flags: Vec<u8> = events.iter().map(|e| e.data[14 + 20 + 13]).collect();
    assert_eq!(
        flags,
        [TCP_SYN, TCP_FIN | TCP_ACK, TCP_RST],
        "113 segments of one flow: the SYN, the first FIN and the first RST"
    );
    assert_eq!(f.counter(SRC_ID, Verdict::Forward).packets, 114);
    // Another port is another flow; UDP flows are traced once.
    assert_eq!(f.run(&seg(40001, TCP_ACK)), TC_ACT_REDIRECT);
    for _ in 0..5 {
        assert_eq!(f.run(&udp(SRC_IP, DST_IP, 5000, 53, b"q")), TC_ACT_REDIRECT);
    }
    assert_eq!(f.events().len(), 2);
    // A new monitor session is told about the flows again.
    f.listen_all(2);
    assert_eq!(f.run(&seg(40000, TCP_ACK)), TC_ACT_REDIRECT);
    assert_eq!(f.run(&seg(40000, TCP_ACK)), TC_ACT_REDIRECT);
    assert_eq!(f.events().len(), 1);
    assert_eq!(f.lost(), 0);
}

#[test]
fn the_kinds_a_listener_asks_for_are_the_only_ones_emitted() {
    let mut f = Fixture::new();
    let spoof = udp([10, 244, 0, 99], DST_IP, 1, 2, b"x");
    let fwd = |sport| tcp(SRC_IP, DST_IP, sport, 80, TCP_SYN, b"");
    f.listen(kind_bit(EVENT_DROP), 1, MONITOR_LEASE_NS as i64);
    f.run(&spoof);
    f.run(&fwd(1));
    assert_eq!(verdicts(&f.events()), [Verdict::DropSpoof]);
    f.listen(kind_bit(EVENT_TRACE), 1, MONITOR_LEASE_NS as i64);
    f.run(&spoof);
    f.run(&fwd(2));
    assert_eq!(verdicts(&f.events()), [Verdict::Forward]);
    // Verdicts that are neither (ARP replies, pass) never make events.
    f.listen_all(1);
    let pass = udp(SRC_IP, [192, 0, 2, 9], 1, 2, b"x");
    f.run(&pass);
    assert!(f.events().is_empty());
}

#[test]
fn a_full_ring_counts_lost_events_and_the_verdicts_stay() {
    let mut f = Fixture::new();
    f.listen(kind_bit(EVENT_DROP), 1, MONITOR_LEASE_NS as i64);
    let spoof = udp([10, 244, 0, 99], DST_IP, 1, 2, b"x");
    let runs = 10_000;
    assert_eq!(f.run_ctx(&spoof, runs, 0), TC_ACT_SHOT);
    let events = f.events().len() as u64;
    let lost = f.lost();
    eprintln!("{runs} drops: {events} events in the ring, {lost} lost");
    assert!(events > 1000, "the ring holds thousands of events");
    assert!(lost > 0, "a full ring counts what it could not take");
    assert_eq!(events + lost, u64::from(runs));
    assert_eq!(
        f.counter(SRC_ID, Verdict::DropSpoof).packets,
        u64::from(runs)
    );
    // Drained, the ring takes events again.
    f.run(&spoof);
    assert_eq!(f.events().len(), 1);
    assert_eq!(f.lost(), lost);
}

#[test]
fn a_gso_packet_counts_as_its_segments_and_its_bytes() {
    let mut f = Fixture::new();
    f.listen_all(1);
    // A TSO send of 44 segments as the pod's stack hands it to its veth (the frame
    // itself is short: test_run takes one page).
    let frame = tcp(SRC_IP, DST_IP, 40000, 80, TCP_ACK | TCP_PSH, &[0x5a; 1400]);
    assert_eq!(f.run_ctx(&frame, 1, 44), TC_ACT_REDIRECT);
    let c = f.counter(SRC_ID, Verdict::Forward);
    assert_eq!((c.packets, c.bytes), (44, frame.len() as u64));
    let events = f.events();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].segs, events[0].len), (44, frame.len() as u32));
    // A plain packet (gso_segs 0 or 1) counts as one.
    assert_eq!(f.run_ctx(&frame, 1, 1), TC_ACT_REDIRECT);
    assert_eq!(f.counter(SRC_ID, Verdict::Forward).packets, 45);
}
