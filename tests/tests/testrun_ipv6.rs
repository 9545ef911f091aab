//! `from_pod` with IPv6 under BPF_PROG_TEST_RUN (fixture: `vethbpf_tests::testrun`):
//! neighbour solicitations answered field by field, NDP an endpoint may not send,
//! source validation, forwarding with the hop limit, extension headers, and random
//! frames. Needs root.

use std::collections::BTreeMap;

use aya::maps::{HashMap, LpmTrie, Map, MapData};
use vethbpf_common::{
    Counter, EndpointInfo6, MAP_ENDPOINTS6, MAP_ROUTES6, MAX_ENDPOINTS, MAX_ROUTES,
    ROUTE_KIND_NODE, Route, Verdict,
};
use vethbpf_tests::ipv6::{
    ECHO_REQUEST, ETH_P_IPV6, MLD2_REPORT, NA, NA_OVERRIDE, NH_ICMPV6, NS, RS, assert_icmp6_error,
    icmp6_checksum, ip6, na_msg, ns_msg, ra_msg, redirect_msg, solicited_node,
};
use vethbpf_tests::testrun::{
    DST_ID, DST_MAC, Fixture, GW_MAC, Run, SRC_ID, SRC_MAC, TC_ACT_OK, TC_ACT_REDIRECT,
    TC_ACT_SHOT, expect, expect_untouched, key, local_route,
};
use vethbpf_tests::{Rng, eth, ones_sum};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;

const NH_HOP: u8 = 0;
const NH_TCP: u8 = 6;
const NH_UDP: u8 = 17;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_NONE: u8 = 59;
const NH_DEST: u8 = 60;

/// The pod's addresses: its IPv6 address and its link-local one (EUI-64 of SRC_MAC).
fn src_ip() -> [u8; 16] {
    ip6("fd00:10:244::2")
}
fn src_lla() -> [u8; 16] {
    ip6("fe80::ff:fe00:2")
}
fn dst_ip() -> [u8; 16] {
    ip6("fd00:10:244::3")
}
/// The gateway as pods see it: the EUI-64 link-local address of ee:ee:ee:ee:ee:ee.
fn gw_lla() -> [u8; 16] {
    ip6("fe80::ecee:eeff:feee:eeee")
}
/// Inside a prefix routed by a route of another kind (e.g. a remote node's pods).
fn remote_ip() -> [u8; 16] {
    ip6("fd00:10:245::9")
}
/// Covered by no route.
fn outside_ip() -> [u8; 16] {
    ip6("2001:db8::10")
}
fn unspecified() -> [u8; 16] {
    [0; 16]
}

/// The fixture with the config, both endpoints (IPv4 and IPv6), their routes, and a
/// route of another kind.
fn fixture() -> Fixture {
    let mut f = Fixture::bare();
    f.set_config();
    let (src, dst) = (f.src_ifindex, f.dst_ifindex);
    f.add_endpoint(src, SRC_ID, [10, 244, 0, 2], SRC_MAC);
    f.add_endpoint6(src, src_ip(), src_lla());
    f.add_endpoint(dst, DST_ID, [10, 244, 0, 3], DST_MAC);
    f.add_endpoint6(dst, dst_ip(), ip6("fe80::ff:fe00:3"));
    let route = local_route(&f);
    f.add_route6(dst_ip(), 128, route);
    f.add_route6(
        ip6("fd00:10:245::"),
        64,
        Route {
            // Neither local nor a remote node's (those are testrun_cluster6's): the
            // node stack's.
            kind: ROUTE_KIND_NODE,
            ifindex: 0,
            endpoint_id: 0,
            mac: [0; 6],
            _pad: [0; 2],
        },
    );
    f
}

// ---------------------------------------------------------------------------------
// Frame builders, computed independently of the program.

/// An IPv6 packet: fixed header, extension headers, upper-layer bytes. Knobs for
/// malformed ones.
#[derive(Clone)]
struct Ipv6 {
    src: [u8; 16],
    dst: [u8; 16],
    hop_limit: u8,
    /// Extension headers as (type, body after next-header/length, already padded).
    ext: Vec<(u8, Vec<u8>)>,
    proto: u8,
    upper: Vec<u8>,
    payload_len: Option<u16>,
    version: u8,
    eth_dst: [u8; 6],
}

impl Ipv6 {
    fn new(src: [u8; 16], dst: [u8; 16], proto: u8, upper: Vec<u8>) -> Self {
        Self {
            src,
            dst,
            hop_limit: 64,
            ext: Vec::new(),
            proto,
            upper,
            payload_len: None,
            version: 6,
            eth_dst: GW_MAC,
        }
    }

    fn udp(src: [u8; 16], dst: [u8; 16]) -> Self {
        let mut u = vec![0x9c, 0x40, 0x00, 0x09, 0, 0, 0, 0];
        u.extend_from_slice(b"payload the fast path must leave untouched");
        let len = u.len() as u16;
        u[4..6].copy_from_slice(&len.to_be_bytes());
        Self::new(src, dst, NH_UDP, u)
    }

    /// An ICMPv6 message with a correct checksum (for these addresses).
    fn icmp(src: [u8; 16], dst: [u8; 16], msg: Vec<u8>) -> Self {
        let mut msg = msg;
        let check = icmp6_checksum(src, dst, &msg);
        msg[2..4].copy_from_slice(&check.to_be_bytes());
        let mut p = Self::new(src, dst, NH_ICMPV6, msg);
        p.hop_limit = 255;
        p
    }

    fn with_ext(mut self, kind: u8, body: Vec<u8>) -> Self {
        self.ext.push((kind, body));
        self
    }

    fn payload(&self) -> Vec<u8> {
        let mut p = Vec::new();
        for (i, (_, body)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.proto, |(k, _)| *k);
            p.push(next);
            if self.ext[i].0 == NH_FRAGMENT {
                p.push(0);
            } else {
                assert_eq!((body.len() + 2) % 8, 0, "extension header length");
                p.push(((body.len() + 2) / 8 - 1) as u8);
            }
            p.extend_from_slice(body);
        }
        p.extend_from_slice(&self.upper);
        p
    }

    fn packet(&self) -> Vec<u8> {
        let payload = self.payload();
        let mut h = Vec::with_capacity(40 + payload.len());
        h.extend_from_slice(&[self.version << 4, 0, 0, 0]);
        let len = self.payload_len.unwrap_or(payload.len() as u16);
        h.extend_from_slice(&len.to_be_bytes());
        h.push(self.ext.first().map_or(self.proto, |(k, _)| *k));
        h.push(self.hop_limit);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&payload);
        h
    }

    fn frame(&self) -> Vec<u8> {
        eth(self.eth_dst, SRC_MAC, ETH_P_IPV6, &self.packet())
    }
}

/// Hop-by-Hop / Destination Options body of 6 bytes: a router alert (as MLD carries)
/// or PadN.
fn router_alert() -> Vec<u8> {
    vec![5, 2, 0, 0, 1, 0]
}
fn padn6() -> Vec<u8> {
    vec![1, 4, 0, 0, 0, 0]
}
/// A type-4 (segment routing style) routing header with no segments left, 6 bytes +
/// one address.
fn routing() -> Vec<u8> {
    let mut r = vec![4, 0, 0, 0, 0, 0];
    r.extend_from_slice(&dst_ip());
    r
}
/// A Fragment header body: offset (8-byte units), more-fragments flag, identification.
fn fragment(offset: u16, more: bool) -> Vec<u8> {
    let mut f = ((offset << 3) | u16::from(more)).to_be_bytes().to_vec();
    f.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    f
}

/// What a pod's stack sends to resolve `target`: multicast to the solicited-node
/// group, from `src`, with its MAC as the option.
fn ns(src: [u8; 16], target: [u8; 16]) -> Ipv6 {
    let (group, mac) = solicited_node(target);
    let mut p = Ipv6::icmp(src, group, ns_msg(target, Some(SRC_MAC)));
    p.eth_dst = mac;
    p
}

/// A neighbour advertisement (override) for `target` with the target link-layer
/// option.
fn na(src: [u8; 16], dst: [u8; 16], target: [u8; 16], mac: [u8; 6]) -> Ipv6 {
    Ipv6::icmp(src, dst, na_msg(target, NA_OVERRIDE, mac))
}

/// A router advertisement with a prefix information option for fd00:bad::/64.
fn ra(src: [u8; 16]) -> Ipv6 {
    Ipv6::icmp(src, ip6("ff02::1"), ra_msg(SRC_MAC, ip6("fd00:bad::")))
}

/// A redirect: "for `dst_ip()`, use `target`".
fn redirect(src: [u8; 16], to: [u8; 16], target: [u8; 16]) -> Ipv6 {
    Ipv6::icmp(src, to, redirect_msg(target, dst_ip(), SRC_MAC))
}

/// An MLDv2 report behind a Hop-by-Hop router alert, as every stack sends it.
fn mld_report(src: [u8; 16]) -> Ipv6 {
    let mut m = vec![MLD2_REPORT, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0];
    m.extend_from_slice(&solicited_node(src_ip()).0);
    let mut p = Ipv6::icmp(src, ip6("ff02::16"), m);
    p.hop_limit = 1;
    p.eth_dst = [0x33, 0x33, 0, 0, 0, 0x16];
    p.with_ext(NH_HOP, router_alert())
}

fn echo(src: [u8; 16], dst: [u8; 16]) -> Ipv6 {
    let mut p = Ipv6::icmp(
        src,
        dst,
        vec![ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3, 4],
    );
    p.hop_limit = 64;
    p
}

// ---------------------------------------------------------------------------------
// The object's shape.

#[test]
fn ipv6_maps_have_the_shared_layouts_and_capacities() {
    let f = Fixture::bare();
    let _: LpmTrie<&MapData, [u8; 16], Route> =
        f.ebpf.map(MAP_ROUTES6).unwrap().try_into().unwrap();
    let _: HashMap<&MapData, u32, EndpointInfo6> =
        f.ebpf.map(MAP_ENDPOINTS6).unwrap().try_into().unwrap();
    let info = |name: &str| match f.ebpf.map(name).unwrap() {
        Map::LpmTrie(d) | Map::HashMap(d) => d.info().unwrap(),
        other => panic!("{name}: unexpected map kind {other:?}"),
    };
    assert_eq!(info(MAP_ROUTES6).max_entries(), MAX_ROUTES);
    const BPF_F_NO_PREALLOC: u32 = 1;
    assert_ne!(info(MAP_ROUTES6).map_flags() & BPF_F_NO_PREALLOC, 0);
    assert_eq!(info(MAP_ENDPOINTS6).max_entries(), MAX_ENDPOINTS);
}

// ---------------------------------------------------------------------------------
// Neighbour solicitations.

/// Checks `run.out` is the advertisement of `target` at the gateway MAC to `asker`
/// (IPv6 source of the question, from `SRC_MAC`), every field, with a checksum
/// computed here.
fn assert_na(out: &[u8], asker: [u8; 16], target: [u8; 16]) {
    assert_na_to(out, SRC_MAC, asker, target);
}

/// [`assert_na`] for a question from the MAC `asker_mac`.
fn assert_na_to(out: &[u8], asker_mac: [u8; 6], asker: [u8; 16], target: [u8; 16]) {
    assert_eq!(out.len(), 14 + 40 + 32, "Ethernet + IPv6 + NA + one option");
    assert_eq!(&out[0..6], &asker_mac, "eth dst = the asker");
    assert_eq!(&out[6..12], &GW_MAC, "eth src = the gateway");
    assert_eq!(&out[12..14], &ETH_P_IPV6.to_be_bytes());
    let ip = &out[14..54];
    assert_eq!(&ip[0..4], &[0x60, 0, 0, 0], "version 6, class and flow 0");
    assert_eq!(&ip[4..6], &32u16.to_be_bytes(), "payload length");
    assert_eq!(ip[6], NH_ICMPV6, "next header");
    assert_eq!(ip[7], 255, "hop limit");
    assert_eq!(&ip[8..24], &target, "source = the address asked about");
    assert_eq!(&ip[24..40], &asker, "destination = the asker");
    let msg = &out[54..];
    assert_eq!(msg[0], NA, "type");
    assert_eq!(msg[1], 0, "code");
    assert_eq!(
        &msg[4..8],
        &[0xe0, 0, 0, 0],
        "router, solicited, override; reserved 0"
    );
    assert_eq!(&msg[8..24], &target, "target");
    assert_eq!(
        &msg[24..26],
        &[2, 1],
        "target link-layer address option, 8 bytes"
    );
    assert_eq!(&msg[26..32], &GW_MAC, "option: the gateway MAC");
    let check = u16::from_be_bytes([msg[2], msg[3]]);
    assert_eq!(check, icmp6_checksum(target, asker, msg), "checksum");
    // And the receiver's view: the sum over pseudo-header and message is all ones.
    let mut all = Vec::new();
    all.extend_from_slice(&target);
    all.extend_from_slice(&asker);
    all.extend_from_slice(&32u32.to_be_bytes());
    all.extend_from_slice(&[0, 0, 0, NH_ICMPV6]);
    all.extend_from_slice(msg);
    assert_eq!(ones_sum(&all), 0xffff, "checksum verifies");
}

#[test]
fn ns_for_the_gateway_is_answered_field_by_field() {
    let f = fixture();
    for asker in [src_lla(), src_ip()] {
        let frame = ns(asker, gw_lla()).frame();
        assert_eq!(
            frame.len(),
            86,
            "a Linux NS with its option is the NA's size"
        );
        let run = expect(&f, &frame, SRC_ID, Verdict::NaReply);
        assert_na(&run.out, asker, gw_lla());
    }
}

#[test]
fn unicast_ns_is_answered_too() {
    // Neighbour unreachability detection asks the cached MAC directly.
    let f = fixture();
    let mut p = Ipv6::icmp(src_ip(), gw_lla(), ns_msg(gw_lla(), Some(SRC_MAC)));
    p.eth_dst = GW_MAC;
    let run = expect(&f, &p.frame(), SRC_ID, Verdict::NaReply);
    assert_na(&run.out, src_ip(), gw_lla());
}

#[test]
fn ns_for_any_address_but_the_pods_own_is_answered_with_the_gateway_mac() {
    let f = fixture();
    for target in [
        dst_ip(),
        remote_ip(),
        outside_ip(),
        ip6("fe80::1"),
        ip6("fe80::ff:fe00:3"),
    ] {
        let run = expect(&f, &ns(src_lla(), target).frame(), SRC_ID, Verdict::NaReply);
        assert_na(&run.out, src_lla(), target);
    }
}

/// Runs a frame whose answer changes the frame's length: verdict, action and one
/// counter (bytes as the pod sent them).
fn expect_resized_na(f: &Fixture, frame: &[u8], asker: [u8; 16], target: [u8; 16]) {
    let run = f.run(frame);
    assert_eq!(run.ret, TC_ACT_REDIRECT);
    assert_eq!(
        run.delta,
        BTreeMap::from([(
            key(SRC_ID, Verdict::NaReply),
            Counter {
                packets: 1,
                bytes: frame.len() as u64
            }
        )])
    );
    assert_na(&run.out, asker, target);
}

#[test]
fn ns_without_or_with_more_options_gets_the_same_answer() {
    let f = fixture();
    // No option (allowed for a unicast NS): the answer grows by the option.
    let mut p = Ipv6::icmp(src_ip(), gw_lla(), ns_msg(gw_lla(), None));
    p.eth_dst = GW_MAC;
    let frame = p.frame();
    assert_eq!(frame.len(), 78);
    expect_resized_na(&f, &frame, src_ip(), gw_lla());
    // The source link-layer option and a nonce (RFC 3971): shrunk to the answer.
    let mut m = ns_msg(gw_lla(), Some(SRC_MAC));
    m.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
    let frame = Ipv6::icmp(src_lla(), solicited_node(gw_lla()).0, m).frame();
    assert_eq!(frame.len(), 94);
    expect_resized_na(&f, &frame, src_lla(), gw_lla());
    // Ethernet padding after the NS.
    let mut frame = ns(src_lla(), gw_lla()).frame();
    frame.resize(100, 0);
    expect_resized_na(&f, &frame, src_lla(), gw_lla());
}

#[test]
fn ns_for_the_pods_own_addresses_and_dad_are_not_answered() {
    let f = fixture();
    // Asking for its own addresses, or duplicate address detection (from ::) for any
    // target: an answer would make the pod think its address taken.
    for (src, target) in [
        (src_lla(), src_ip()),
        (src_ip(), src_lla()),
        (unspecified(), src_ip()),
        (unspecified(), src_lla()),
        (unspecified(), gw_lla()),
    ] {
        let mut p = ns(src, target);
        if src == unspecified() {
            p = Ipv6::icmp(src, solicited_node(target).0, ns_msg(target, None));
        }
        expect_untouched(&f, &p.frame(), SRC_ID, Verdict::Pass);
    }
}

#[test]
fn invalid_ns_is_dropped_as_malformed() {
    let f = fixture();
    let good = ns(src_lla(), gw_lla());
    // A hop limit below 255: a router forwarded it (RFC 4861 7.1.1).
    let mut p = good.clone();
    p.hop_limit = 254;
    expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropMalformed);
    // Code not 0.
    let mut m = ns_msg(gw_lla(), Some(SRC_MAC));
    m[1] = 1;
    let p = Ipv6::icmp(src_lla(), good.dst, m);
    expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropMalformed);
    // A multicast or unspecified target.
    for target in [ip6("ff02::1"), unspecified()] {
        let p = Ipv6::icmp(src_lla(), good.dst, ns_msg(target, Some(SRC_MAC)));
        expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropMalformed);
    }
    // Shorter than an NS (the target cut off), the lengths agreeing.
    let mut short = good.clone();
    short.upper.truncate(20);
    expect_untouched(&f, &short.frame(), SRC_ID, Verdict::DropMalformed);
    // Behind an extension header.
    let p = good.clone().with_ext(NH_DEST, padn6());
    expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropMalformed);
}

#[test]
fn ns_from_an_address_the_pod_does_not_own_is_a_spoof() {
    let f = fixture();
    for src in [dst_ip(), gw_lla(), ip6("fe80::ff:fe00:3"), outside_ip()] {
        expect_untouched(&f, &ns(src, gw_lla()).frame(), SRC_ID, Verdict::DropSpoof);
    }
}

// ---------------------------------------------------------------------------------
// Pings of the gateway.

/// Checks `out` is the gateway's echo reply to `request` (a frame from the pod): every
/// field, the checksum verified from scratch.
fn assert_echo_reply(out: &[u8], request: &[u8]) {
    assert_echo_reply_checked(out, request, true);
}

/// The ICMPv6 message of a frame (as long as the payload length says) and whether
/// its checksum verifies.
fn icmp6_message_verifies(frame: &[u8]) -> bool {
    let len = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
    let (src, dst): ([u8; 16], [u8; 16]) = (
        frame[22..38].try_into().unwrap(),
        frame[38..54].try_into().unwrap(),
    );
    let msg = &frame[54..54 + len];
    u16::from_be_bytes([msg[2], msg[3]]) == icmp6_checksum(src, dst, msg)
}

/// [`assert_echo_reply`]; the reply's checksum verifies exactly when `verifies` (a
/// request with a bad checksum gets a reply just as bad, which the pod drops).
fn assert_echo_reply_checked(out: &[u8], request: &[u8], verifies: bool) {
    assert_eq!(out.len(), request.len());
    assert_eq!(&out[0..6], &request[6..12], "eth dst = the asker");
    assert_eq!(&out[6..12], &GW_MAC, "eth src = the gateway");
    assert_eq!(
        &out[12..21],
        &request[12..21],
        "EtherType, version, class, flow, length, next header"
    );
    assert_eq!(out[21], 64, "hop limit of a fresh reply");
    assert_eq!(&out[22..38], &request[38..54], "source = the gateway");
    assert_eq!(&out[38..54], &request[22..38], "destination = the asker");
    assert_eq!(out[54], 129, "echo reply");
    assert_eq!(
        out[55], request[55],
        "code kept, as Linux's icmpv6_echo_reply does"
    );
    assert_eq!(
        &out[58..],
        &request[58..],
        "identifier, sequence and data stay"
    );
    assert_eq!(icmp6_message_verifies(out), verifies, "checksum");
}

#[test]
fn pings_of_the_gateway_are_answered_in_place() {
    let f = fixture();
    // From the pod's link-local address (what `ping GW%eth0` uses) and its address.
    for src in [src_lla(), src_ip()] {
        let frame = echo(src, gw_lla()).frame();
        let run = expect(&f, &frame, SRC_ID, Verdict::EchoReply);
        assert_echo_reply(&run.out, &frame);
    }
    // Odd but valid: a one-byte and a long payload.
    for len in [1, 1200] {
        let mut p = echo(src_ip(), gw_lla());
        p.upper.resize(8 + len, 0x5a);
        let p = Ipv6::icmp(p.src, p.dst, p.upper.clone());
        let frame = p.frame();
        let run = expect(&f, &frame, SRC_ID, Verdict::EchoReply);
        assert_echo_reply(&run.out, &frame);
    }
    // Not from the pod: a spoof. Behind an extension header: not answered here, and
    // from the link-local address no longer allowed.
    expect_untouched(
        &f,
        &echo(dst_ip(), gw_lla()).frame(),
        SRC_ID,
        Verdict::DropSpoof,
    );
    let wrapped = |src| echo(src, gw_lla()).with_ext(NH_DEST, padn6()).frame();
    expect_untouched(&f, &wrapped(src_lla()), SRC_ID, Verdict::DropSpoof);
    expect_untouched(&f, &wrapped(src_ip()), SRC_ID, Verdict::Pass);
    // A ping of another link-local address is no ping of the gateway.
    expect_untouched(
        &f,
        &echo(src_lla(), ip6("fe80::1")).frame(),
        SRC_ID,
        Verdict::DropSpoof,
    );
}

// ---------------------------------------------------------------------------------
// What only owners and routers may say.

#[test]
fn na_may_only_claim_the_pods_own_addresses() {
    let f = fixture();
    let all_nodes = ip6("ff02::1");
    // Claims of the gateway's, another pod's or any address: dropped.
    for (src, target) in [
        (src_lla(), gw_lla()),
        (src_ip(), gw_lla()),
        (src_lla(), dst_ip()),
        (src_ip(), ip6("fe80::ff:fe00:3")),
        (src_ip(), outside_ip()),
    ] {
        let p = na(src, all_nodes, target, SRC_MAC);
        expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropNaSpoof);
    }
    // Its own addresses: the node may learn them.
    for target in [src_ip(), src_lla()] {
        let p = na(src_lla(), all_nodes, target, SRC_MAC);
        expect_untouched(&f, &p.frame(), SRC_ID, Verdict::Pass);
    }
    // From :: (never valid for an NA) or another address: a spoof first.
    for src in [unspecified(), dst_ip()] {
        let p = na(src, all_nodes, src_ip(), SRC_MAC);
        expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropSpoof);
    }
    // Behind an extension header, even for its own address.
    let p = na(src_lla(), all_nodes, src_ip(), SRC_MAC).with_ext(NH_DEST, padn6());
    expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropMalformed);
}

#[test]
fn router_advertisements_and_redirects_are_dropped_from_any_source_in_any_form() {
    let f = fixture();
    for src in [src_lla(), src_ip(), unspecified(), gw_lla(), dst_ip()] {
        expect_untouched(&f, &ra(src).frame(), SRC_ID, Verdict::DropNdpRouter);
        let r = redirect(src, src_ip(), gw_lla());
        expect_untouched(&f, &r.frame(), SRC_ID, Verdict::DropNdpRouter);
    }
    // Behind extension headers too (the walk finds them).
    let p = ra(src_lla())
        .with_ext(NH_HOP, router_alert())
        .with_ext(NH_DEST, padn6());
    expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropNdpRouter);
    // Sent to another pod: never forwarded either.
    let mut p = ra(src_ip());
    p.dst = dst_ip();
    expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropNdpRouter);
}

#[test]
fn router_solicitations_and_listener_reports_pass_from_link_local_sources() {
    let f = fixture();
    for src in [src_lla(), unspecified(), src_ip()] {
        let rs = Ipv6::icmp(src, ip6("ff02::2"), vec![RS, 0, 0, 0, 0, 0, 0, 0]);
        expect_untouched(&f, &rs.frame(), SRC_ID, Verdict::Pass);
        expect_untouched(&f, &mld_report(src).frame(), SRC_ID, Verdict::Pass);
    }
    for src in [ip6("fe80::ff:fe00:3"), dst_ip()] {
        let rs = Ipv6::icmp(src, ip6("ff02::2"), vec![RS, 0, 0, 0, 0, 0, 0, 0]);
        expect_untouched(&f, &rs.frame(), SRC_ID, Verdict::DropSpoof);
        expect_untouched(&f, &mld_report(src).frame(), SRC_ID, Verdict::DropSpoof);
    }
}

// ---------------------------------------------------------------------------------
// Forwarding.

/// Checks a forwarded frame: MACs rewritten, hop limit one less, every other byte as
/// it was.
fn assert_forwarded(run: &Run, frame: &[u8]) {
    assert_eq!(run.out.len(), frame.len());
    assert_eq!(&run.out[0..6], &DST_MAC, "eth dst = the destination pod");
    assert_eq!(&run.out[6..12], &GW_MAC, "eth src = the gateway");
    assert_eq!(run.out[14 + 7], frame[14 + 7] - 1, "hop limit - 1");
    let (mut a, mut b) = (run.out.clone(), frame.to_vec());
    for v in [&mut a, &mut b] {
        v[..12].fill(0);
        v[21] = 0;
    }
    assert_eq!(a, b, "nothing else changes");
}

#[test]
fn ipv6_to_a_local_pod_is_forwarded_with_the_hop_limit_and_macs() {
    let f = fixture();
    let mut tcp = Ipv6::new(src_ip(), dst_ip(), NH_TCP, vec![0x55; 40]);
    tcp.hop_limit = 2;
    for p in [Ipv6::udp(src_ip(), dst_ip()), echo(src_ip(), dst_ip()), tcp] {
        let frame = p.frame();
        let run = expect(&f, &frame, SRC_ID, Verdict::Forward);
        assert_forwarded(&run, &frame);
    }
}

#[test]
fn ipv6_with_hop_limit_1_or_0_drops_and_the_gateway_says_time_exceeded() {
    let f = fixture();
    for hop_limit in [1, 0] {
        let mut p = Ipv6::udp(src_ip(), dst_ip());
        p.hop_limit = hop_limit;
        let frame = p.frame();
        let run = f.run(&frame);
        assert_eq!(run.ret, TC_ACT_REDIRECT, "the error goes back to the pod");
        assert_eq!(
            run.delta,
            BTreeMap::from([(
                key(SRC_ID, Verdict::DropTtl),
                Counter {
                    packets: 1,
                    bytes: frame.len() as u64
                }
            )])
        );
        assert_icmp6_error(&frame, &run.out, GW_MAC, (3, 0, 0));
    }
}

#[test]
fn ipv6_with_a_spoofed_source_drops() {
    let f = fixture();
    // Another pod's, the gateway's, the unspecified and an outside address; and the
    // pod's own link-local address, which is for NDP only.
    for src in [dst_ip(), gw_lla(), unspecified(), outside_ip(), src_lla()] {
        for dst in [dst_ip(), outside_ip(), gw_lla()] {
            let p = Ipv6::udp(src, dst);
            expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropSpoof);
            // (A ping of the gateway from the link-local address is answered.)
            if (src, dst) != (src_lla(), gw_lla()) {
                let p = echo(src, dst);
                expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropSpoof);
            }
        }
    }
}

#[test]
fn ipv6_to_anything_but_a_local_pod_passes_unchanged() {
    let f = fixture();
    for dst in [
        outside_ip(),
        remote_ip(),
        gw_lla(),
        ip6("ff02::1"),
        src_ip(),
    ] {
        expect_untouched(&f, &Ipv6::udp(src_ip(), dst).frame(), SRC_ID, Verdict::Pass);
    }
}

// ---------------------------------------------------------------------------------
// Extension headers.

#[test]
fn extension_headers_are_walked_and_forwarded() {
    let f = fixture();
    let base = Ipv6::udp(src_ip(), dst_ip());
    let chains: Vec<Vec<(u8, Vec<u8>)>> = vec![
        vec![(NH_HOP, padn6())],
        vec![(NH_DEST, padn6())],
        vec![(NH_ROUTING, routing())],
        vec![(NH_FRAGMENT, fragment(0, true))],
        vec![(NH_FRAGMENT, fragment(100, false))],
        vec![
            (NH_HOP, padn6()),
            (NH_DEST, padn6()),
            (NH_ROUTING, routing()),
            (NH_DEST, padn6()),
        ],
        vec![(NH_HOP, padn6()), (NH_FRAGMENT, fragment(0, true))],
    ];
    for chain in chains {
        let mut p = base.clone();
        for (k, b) in &chain {
            p = p.with_ext(*k, b.clone());
        }
        let frame = p.frame();
        let run = expect(&f, &frame, SRC_ID, Verdict::Forward);
        assert_forwarded(&run, &frame);
    }
    // No upper layer at all.
    let p = Ipv6::new(src_ip(), dst_ip(), NH_NONE, Vec::new());
    let frame = p.frame();
    let run = expect(&f, &frame, SRC_ID, Verdict::Forward);
    assert_forwarded(&run, &frame);
}

#[test]
fn bad_extension_header_chains_are_malformed() {
    let f = fixture();
    let base = Ipv6::udp(src_ip(), dst_ip());
    // Longer than the walk goes (five).
    let mut p = base.clone();
    for _ in 0..5 {
        p = p.with_ext(NH_DEST, padn6());
    }
    expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropMalformed);
    // Hop-by-Hop anywhere but first.
    let p = base
        .clone()
        .with_ext(NH_DEST, padn6())
        .with_ext(NH_HOP, padn6());
    expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropMalformed);
    // A header whose length runs past the packet.
    let p = Ipv6::new(src_ip(), dst_ip(), NH_UDP, Vec::new()).with_ext(NH_DEST, padn6());
    let mut frame = p.frame();
    frame[14 + 41] = 3; // 32 bytes claimed, 8 there
    expect_untouched(&f, &frame, SRC_ID, Verdict::DropMalformed);
    // A fragment header cut short.
    let mut p =
        Ipv6::new(src_ip(), dst_ip(), NH_UDP, Vec::new()).with_ext(NH_FRAGMENT, fragment(0, true));
    p.ext[0].1.truncate(2);
    expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropMalformed);
}

#[test]
fn fragmented_icmpv6_is_never_taken_for_ndp() {
    let f = fixture();
    // An NS in a fragment from the pod's link-local address: not NDP, so a spoof.
    let p = ns(src_lla(), gw_lla()).with_ext(NH_FRAGMENT, fragment(0, true));
    expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropSpoof);
    // From its own address to a pod: an ordinary packet, forwarded (the receiver
    // ignores fragmented NDP, and the hop limit no longer says 255).
    let mut p = na(src_ip(), dst_ip(), gw_lla(), SRC_MAC).with_ext(NH_FRAGMENT, fragment(0, true));
    p.hop_limit = 255;
    let frame = p.frame();
    let run = expect(&f, &frame, SRC_ID, Verdict::Forward);
    assert_eq!(run.out[21], 254);
}

// ---------------------------------------------------------------------------------
// Header checks.

#[test]
fn malformed_ipv6_headers_drop() {
    let f = fixture();
    let good = Ipv6::udp(src_ip(), dst_ip());
    for version in [0, 4, 7, 15] {
        let mut p = good.clone();
        p.version = version;
        expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropMalformed);
    }
    // A payload length longer than the frame.
    let real = good.payload().len() as u16;
    for len in [real + 1, u16::MAX] {
        let mut p = good.clone();
        p.payload_len = Some(len);
        expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropMalformed);
    }
    // Shorter than a fixed header: refused by the kernel or dropped.
    let frame = good.frame();
    for len in [14, 20, 53] {
        match f.try_run(&frame[..len], 1) {
            Err(_) => {}
            Ok(_) => expect_untouched(&f, &frame[..len], SRC_ID, Verdict::DropMalformed),
        }
    }
}

#[test]
fn ipv6_with_ethernet_padding_or_zero_payload_length_is_forwarded() {
    let f = fixture();
    // A shorter payload length than the frame: the rest is padding.
    let mut frame = Ipv6::new(src_ip(), dst_ip(), NH_NONE, vec![7; 4]).frame();
    frame.resize(80, 0);
    let run = expect(&f, &frame, SRC_ID, Verdict::Forward);
    assert_forwarded(&run, &frame);
    // 0: the length comes from the skb (jumbogram, BIG TCP).
    let mut p = Ipv6::udp(src_ip(), dst_ip());
    p.payload_len = Some(0);
    let frame = p.frame();
    let run = expect(&f, &frame, SRC_ID, Verdict::Forward);
    assert_forwarded(&run, &frame);
}

// ---------------------------------------------------------------------------------
// Endpoints with one family.

#[test]
fn an_ipv6_only_endpoint_owns_no_ipv4_source_or_arp_sender() {
    let mut f = fixture();
    let src = f.src_ifindex;
    f.add_endpoint(src, SRC_ID, [0, 0, 0, 0], SRC_MAC);
    let mut v4 = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
    v4.extend_from_slice(&[0, 0, 0, 0, 10, 244, 0, 3]);
    let check = !ones_sum(&v4);
    v4[10..12].copy_from_slice(&check.to_be_bytes());
    v4.extend_from_slice(&[0; 8]);
    expect_untouched(
        &f,
        &eth(GW_MAC, SRC_MAC, ETH_P_IP, &v4),
        SRC_ID,
        Verdict::DropSpoof,
    );
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&SRC_MAC);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 169, 254, 1, 1]);
    expect_untouched(
        &f,
        &eth([0xff; 6], SRC_MAC, ETH_P_ARP, &arp),
        SRC_ID,
        Verdict::DropArpSpoof,
    );
    // IPv6 works as before.
    let frame = Ipv6::udp(src_ip(), dst_ip()).frame();
    expect(&f, &frame, SRC_ID, Verdict::Forward);
    expect(
        &f,
        &ns(src_lla(), gw_lla()).frame(),
        SRC_ID,
        Verdict::NaReply,
    );
}

#[test]
fn an_endpoint_without_ipv6_gets_link_local_control_traffic_only() {
    let mut f = Fixture::bare();
    f.set_config();
    let (src, dst) = (f.src_ifindex, f.dst_ifindex);
    f.add_endpoint(src, SRC_ID, [10, 244, 0, 2], SRC_MAC);
    f.add_endpoint(dst, DST_ID, [10, 244, 0, 3], DST_MAC);
    f.add_endpoint6(dst, dst_ip(), ip6("fe80::ff:fe00:3"));
    let route = local_route(&f);
    f.add_route6(dst_ip(), 128, route);
    // Its stack's own chatter from its (unknown to vethbpf) link-local address: to
    // the node, which ignores it.
    let any_lla = ip6("fe80::1234");
    let rs = Ipv6::icmp(any_lla, ip6("ff02::2"), vec![RS, 0, 0, 0, 0, 0, 0, 0]);
    expect_untouched(&f, &rs.frame(), SRC_ID, Verdict::Pass);
    expect_untouched(&f, &mld_report(any_lla).frame(), SRC_ID, Verdict::Pass);
    let dad = Ipv6::icmp(
        unspecified(),
        solicited_node(any_lla).0,
        ns_msg(any_lla, None),
    );
    expect_untouched(&f, &dad.frame(), SRC_ID, Verdict::Pass);
    // Nothing to resolve: not answered.
    expect_untouched(&f, &ns(any_lla, gw_lla()).frame(), SRC_ID, Verdict::Pass);
    // What it may never say.
    expect_untouched(&f, &ra(any_lla).frame(), SRC_ID, Verdict::DropNdpRouter);
    let p = na(any_lla, ip6("ff02::1"), any_lla, SRC_MAC);
    expect_untouched(&f, &p.frame(), SRC_ID, Verdict::DropNaSpoof);
    // No IPv6 address: any other source is a spoof, whatever the destination.
    for src in [src_ip(), dst_ip(), any_lla] {
        expect_untouched(
            &f,
            &Ipv6::udp(src, dst_ip()).frame(),
            SRC_ID,
            Verdict::DropSpoof,
        );
    }
}

// ---------------------------------------------------------------------------------
// Costs and random frames.

#[test]
fn repeated_ipv6_forwarding_counts_every_run() {
    // test_run with `repeat` runs the program again on the same skb: the hop limit
    // goes down once per run. Also the ns/packet figure of the IPv6 fast path
    // (printed, not asserted: tests run in parallel).
    const REPEAT: u32 = 250;
    let f = fixture();
    let mut p = Ipv6::udp(src_ip(), dst_ip());
    p.hop_limit = 255;
    let frame = p.frame();
    let run = f.try_run(&frame, REPEAT).expect("BPF_PROG_TEST_RUN");
    eprintln!(
        "from_pod IPv6 local forward: {} ns/packet (average of {REPEAT})",
        run.duration_ns
    );
    assert_eq!(run.ret, TC_ACT_REDIRECT);
    assert_eq!(
        run.delta,
        BTreeMap::from([(
            key(SRC_ID, Verdict::Forward),
            Counter {
                packets: REPEAT.into(),
                bytes: u64::from(REPEAT) * frame.len() as u64,
            }
        )])
    );
    assert_eq!(run.out[21], 255 - REPEAT as u8);
    let ns_run = f
        .try_run(&ns(src_lla(), gw_lla()).frame(), 1)
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(ns_run.ret, TC_ACT_REDIRECT);
}

/// A frame to stress the IPv6 paths: random bytes behind an IPv6 EtherType, or a
/// valid NS/NA/RA/UDP/echo/MLD packet with random choices of addresses, hop limit,
/// extension headers, lengths, then bytes overwritten and the frame cut.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let pick = |rng: &mut Rng| -> [u8; 16] {
        match rng.below(8) {
            0 => src_ip(),
            1 => src_lla(),
            2 => dst_ip(),
            3 => gw_lla(),
            4 => unspecified(),
            5 => ip6("ff02::1"),
            _ => rng.bytes(16).try_into().unwrap(),
        }
    };
    // Mostly the pod's own source and the local pod as destination, so that the
    // redirecting paths are reached often, mangled or not.
    let biased = |rng: &mut Rng, likely: [u8; 16]| -> [u8; 16] {
        if rng.below(2) == 0 { likely } else { pick(rng) }
    };
    let mut frame = if rng.below(6) == 0 {
        let len = rng.below(120);
        eth(GW_MAC, SRC_MAC, ETH_P_IPV6, &rng.bytes(len))
    } else {
        let own = if rng.below(2) == 0 {
            src_ip()
        } else {
            src_lla()
        };
        // Pings go to the gateway or the local pod, mostly.
        let ping_dst = if rng.below(2) == 0 {
            gw_lla()
        } else {
            dst_ip()
        };
        let (src, dst, target) = (
            biased(rng, own),
            biased(rng, dst_ip()),
            biased(rng, gw_lla()),
        );
        let mut p = match rng.below(7) {
            0 | 1 => ns(src, target),
            2 => na(src, dst, target, SRC_MAC),
            3 => ra(src),
            4 => mld_report(src),
            5 => echo(biased(rng, own), biased(rng, ping_dst)),
            _ => Ipv6::udp(biased(rng, src_ip()), dst),
        };
        if rng.below(3) == 0 {
            p.hop_limit = rng.next_u64() as u8;
        }
        let headers = if rng.below(3) == 0 {
            1 + rng.below(3)
        } else {
            0
        };
        for _ in 0..headers {
            p = match rng.below(4) {
                0 => p.with_ext(NH_HOP, padn6()),
                1 => p.with_ext(NH_DEST, padn6()),
                2 => p.with_ext(NH_ROUTING, routing()),
                _ => p.with_ext(NH_FRAGMENT, fragment(rng.below(2) as u16, true)),
            };
        }
        if rng.below(6) == 0 {
            p.payload_len = Some(rng.next_u64() as u16);
        }
        p.frame()
    };
    for _ in 0..rng.below(4) {
        let i = rng.below(frame.len().min(100));
        frame[i] = rng.next_u64() as u8;
    }
    if rng.below(5) == 0 {
        frame.truncate(14 + rng.below(frame.len() - 13));
    }
    frame
}

/// Twenty thousand random and mangled IPv6 frames: the program redirects only (a) a
/// valid NS from the pod's own or link-local address for a target it does not own,
/// answered back to the asker with a correct advertisement, (b) a packet from the
/// pod's address to the one local pod, with hop limit > 1, rewritten for it, or (c) a
/// ping of the gateway from one of the pod's addresses, answered. Every run counts
/// exactly one verdict.
#[test]
fn random_ipv6_frames_are_never_redirected_where_they_were_not_addressed() {
    let f = fixture();
    let seed = 0x1f6_5eed_u64;
    let mut rng = Rng(seed);
    let (mut answered, mut forwarded, mut echoed, mut rejected) = (0, 0, 0, 0);
    for n in 0..20_000 {
        let frame = random_frame(&mut rng);
        let Ok(run) = f.try_run(&frame, 1) else {
            rejected += 1;
            continue;
        };
        let ctx = format!(
            "frame #{n} (seed {seed:#x}): {frame:02x?} -> ret {}",
            run.ret
        );
        assert!(
            matches!(run.ret, TC_ACT_OK | TC_ACT_SHOT | TC_ACT_REDIRECT),
            "{ctx}"
        );
        let moved: u64 = run.delta.values().map(|c| c.packets).sum();
        assert_eq!(
            moved, 1,
            "exactly one counter per frame: {ctx} {:?}",
            run.delta
        );
        if run.ret != TC_ACT_REDIRECT {
            continue;
        }
        assert_eq!(
            u16::from_be_bytes([frame[12], frame[13]]),
            ETH_P_IPV6,
            "{ctx}"
        );
        let ip = &frame[14..];
        let src: [u8; 16] = ip[8..24].try_into().unwrap();
        let dst: [u8; 16] = ip[24..40].try_into().unwrap();
        if run.delta.contains_key(&key(SRC_ID, Verdict::EchoReply)) {
            echoed += 1;
            assert_eq!(ip[6], NH_ICMPV6, "{ctx}");
            assert_eq!(ip[40], ECHO_REQUEST, "{ctx}");
            assert!(
                src == src_ip() || src == src_lla(),
                "spoofed ping answered: {ctx}"
            );
            assert_eq!(dst, gw_lla(), "a ping of someone else answered: {ctx}");
            assert_echo_reply_checked(&run.out, &frame, icmp6_message_verifies(&frame));
        } else if run.delta.contains_key(&key(SRC_ID, Verdict::NaReply)) {
            answered += 1;
            assert_eq!(ip[0] >> 4, 6, "{ctx}");
            assert_eq!(ip[6], NH_ICMPV6, "NS behind a header answered: {ctx}");
            assert_eq!(ip[7], 255, "{ctx}");
            assert_eq!(ip[40], NS, "{ctx}");
            assert!(
                src == src_ip() || src == src_lla(),
                "spoofed asker answered: {ctx}"
            );
            let target: [u8; 16] = ip[48..64].try_into().unwrap();
            assert!(
                target != src_ip() && target != src_lla() && target[0] != 0xff,
                "{ctx}"
            );
            let asker_mac: [u8; 6] = frame[6..12].try_into().unwrap();
            assert_na_to(&run.out, asker_mac, src, target);
        } else if run.delta.contains_key(&key(SRC_ID, Verdict::DropTtl)) {
            // Expiring here: only the gateway's time exceeded goes, back to the
            // sender, about a packet it really sent to a routed destination.
            assert_eq!(src, src_ip(), "spoofed source answered: {ctx}");
            assert_eq!(dst, dst_ip(), "{ctx}");
            assert!(ip[7] <= 1, "{ctx}");
            assert_icmp6_error(&frame, &run.out, GW_MAC, (3, 0, 0));
        } else {
            forwarded += 1;
            assert!(
                run.delta.contains_key(&key(SRC_ID, Verdict::Forward)),
                "{ctx}"
            );
            assert_eq!(ip[0] >> 4, 6, "{ctx}");
            assert_eq!(src, src_ip(), "spoofed source forwarded: {ctx}");
            assert_eq!(dst, dst_ip(), "forwarded to a non-destination: {ctx}");
            assert!(ip[7] > 1, "hop limit {} forwarded: {ctx}", ip[7]);
            assert_forwarded(&run, &frame);
        }
    }
    eprintln!(
        "{answered} answered, {forwarded} forwarded, {echoed} pings answered, {rejected} refused by the kernel"
    );
    // The generator must reach both redirecting paths, or the test proves little.
    assert!(answered > 300, "only {answered} NS answered");
    assert!(forwarded > 300, "only {forwarded} frames forwarded");
    assert!(echoed > 30, "only {echoed} pings of the gateway answered");
    assert!(
        rejected < 10_000,
        "{rejected} frames rejected by the kernel"
    );
}
