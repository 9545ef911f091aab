//! What pods send besides plain IPv4 and ARP, in real namespaces: VLAN-tagged frames,
//! BIG TCP super-packets, ARP probes, pings to the gateway.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::LinkUnspec;
use rtnetlink::packet_route::link::LinkAttribute;

use vethbpf_tests::TestNode;
use vethbpf_tests::packet::{PacketSocket, Sniffer, contains, ipv4_udp, ipv4_udp_frame};

const GW_MAC: [u8; 6] = [0xee; 6];

/// An endpoint of the test's node, as `endpoint add` reported it.
struct Pod {
    ip: Ipv4Addr,
    mac: [u8; 6],
    netns: PathBuf,
    host_veth: String,
}

/// Adds an endpoint with IPv6 off in its pod: router solicitations and MLD reports
/// would be counted as `pass` and blur the exact counter checks.
fn add_pod(node: &TestNode, short: &str) -> Pod {
    let ep = node.add(short, &[]);
    let out = node.in_pod(
        short,
        "sysctl",
        &[
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    );
    assert!(out.status.success(), "disable IPv6 in {short}");
    let mac: Vec<u8> = ep["pod_mac"]
        .as_str()
        .expect("pod_mac")
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex MAC byte"))
        .collect();
    Pod {
        ip: ep["ip"].as_str().expect("ip").parse().expect("IPv4"),
        mac: mac.try_into().expect("6-byte MAC"),
        netns: PathBuf::from(ep["netns"].as_str().expect("netns")),
        host_veth: ep["host_veth"].as_str().expect("host_veth").to_string(),
    }
}

/// Packets of counter `path` of pod `pod` (e.g. `["drops", "drop_vlan"]`).
fn packets(node: &TestNode, pod: &str, path: &[&str]) -> u64 {
    vethbpf_tests::packets(&node.counters(pod), path)
}

// ---------------------------------------------------------------------------------
// VLAN tags.

/// `inner` (an EtherType and what follows the Ethernet header) behind the tags
/// `(TPID, VLAN id)`, outermost first.
fn tagged(
    dst: [u8; 6],
    src: [u8; 6],
    tags: &[(u16, u16)],
    inner_type: u16,
    inner: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, &(_, vid)) in tags.iter().enumerate() {
        let next = tags.get(i + 1).map_or(inner_type, |t| t.0);
        body.extend_from_slice(&vid.to_be_bytes());
        body.extend_from_slice(&next.to_be_bytes());
    }
    body.extend_from_slice(inner);
    vethbpf_tests::eth(dst, src, tags[0].0, &body)
}

/// The kernel of these machines has no VLAN devices (CONFIG_VLAN_8021Q is off), so
/// the tags are written by hand from a packet socket in pod A, as a pod with VLAN
/// sub-interfaces (or a DPDK app, or a bridge inside it) would send them. The host
/// veth's receive path strips the outer tag into the skb before tc ingress runs:
/// `from_pod` sees `vlan_present` and the inner EtherType, the case a test_run context
/// cannot carry. Nothing of it may reach pod B, where a packet socket watches every
/// frame; the same frame untagged does arrive, which shows the watch works.
#[test]
fn vlan_tagged_frames_from_a_pod_reach_no_other_pod() {
    const ETH_P_8021Q: u16 = 0x8100;
    const ETH_P_8021AD: u16 = 0x88a8;
    let node = TestNode::up();
    let a = add_pod(&node, "a");
    let b = add_pod(&node, "b");
    // Resolve the gateway in both pods first: no ARP below but the tests' own.
    assert_eq!(node.ping_from_pod("a", &b.ip.to_string(), 1), Some(63));

    let send = PacketSocket::open(&a.netns, "eth0", false);
    let watch = Sniffer::start(&b.netns, "eth0");
    let forwarded = packets(&node, "a", &["forwarded"]);
    let cases: [(&str, &[(u16, u16)]); 4] = [
        ("802.1Q VLAN 100", &[(ETH_P_8021Q, 100)]),
        ("802.1Q priority tag (VLAN 0)", &[(ETH_P_8021Q, 0)]),
        ("802.1ad VLAN 10", &[(ETH_P_8021AD, 10)]),
        (
            "QinQ 802.1ad 10 / 802.1Q 20",
            &[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)],
        ),
    ];
    const EACH: u64 = 3;
    for (name, tags) in cases {
        let packet = ipv4_udp(a.ip, b.ip, format!("VLAN-frame {name}").as_bytes());
        for _ in 0..EACH {
            send.send(&tagged(GW_MAC, a.mac, tags, 0x0800, &packet));
        }
    }
    // ARP behind a tag is no ARP request from the pod either: no answer comes back.
    let arp_watch = Sniffer::start(&a.netns, "eth0");
    let arp = arp_request(a.mac, a.ip, Ipv4Addr::new(169, 254, 1, 1));
    send.send(&tagged(
        [0xff; 6],
        a.mac,
        &[(ETH_P_8021Q, 100)],
        0x0806,
        &arp[14..],
    ));
    let untagged = b"control frame, no tag";
    send.send(&ipv4_udp_frame(GW_MAC, a.mac, a.ip, b.ip, untagged));

    let arrived = watch.finish();
    let answers = arp_watch.finish();
    let tagged_arrivals: Vec<&Vec<u8>> = arrived
        .iter()
        .filter(|f| contains(f, b"VLAN-frame "))
        .collect();
    assert!(
        tagged_arrivals.is_empty(),
        "tagged frames reached pod b: {tagged_arrivals:02x?}"
    );
    assert_eq!(
        arrived.iter().filter(|f| contains(f, untagged)).count(),
        1,
        "the untagged control frame must arrive at b (else the watch proves nothing)"
    );
    assert!(
        !answers.iter().any(|f| f.len() >= 42 && f[12..14] == [8, 6]),
        "an ARP reply answered a tagged request: {answers:02x?}"
    );
    assert_eq!(
        packets(&node, "a", &["drops", "drop_vlan"]),
        cases.len() as u64 * EACH + 1,
        "every tagged frame counted as drop_vlan"
    );
    assert_eq!(
        packets(&node, "a", &["forwarded"]),
        forwarded + 1,
        "only the untagged control was forwarded"
    );
}

// ---------------------------------------------------------------------------------
// BIG TCP.

/// The largest frame a GSO packet can be without BIG TCP: an IPv4 total length of
/// 65535 behind a 14-byte Ethernet header (what the counters count per packet).
const LEGACY_GSO_MAX_FRAME: u64 = 65535 + 14;

/// `ip link set DEV gso_ipv4_max_size SIZE gro_ipv4_max_size SIZE` (iproute2 6.1 has
/// neither option) inside `netns`, read back.
fn set_big_tcp(netns: &Path, dev: &str, size: u32) {
    let dev = dev.to_string();
    vethbpf::kernel::netns::run_in(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("tokio runtime");
        let (connection, handle, _) = {
            let _guard = rt.enter();
            rtnetlink::new_connection().expect("netlink socket")
        };
        rt.spawn(connection);
        let name = std::ffi::CString::new(dev.as_str()).expect("name");
        // SAFETY: a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "no {dev}");
        let message = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::GsoIpv4MaxSize(size))
            .append_extra_attribute(LinkAttribute::GroIpv4MaxSize(size))
            .build();
        rt.block_on(handle.link().change(message).execute())
            .unwrap_or_else(|e| panic!("set BIG TCP sizes on {dev}: {e}"));
        let link = rt
            .block_on(handle.link().get().match_index(index).execute().try_next())
            .expect("get link")
            .expect("the link");
        for want in [
            LinkAttribute::GsoIpv4MaxSize(size),
            LinkAttribute::GroIpv4MaxSize(size),
        ] {
            assert!(link.attributes.contains(&want), "{dev}: {want:?} not set");
        }
    })
    .expect("enter the namespace");
}

/// BIG TCP on both ends of pod `p`'s veth pair.
fn enable_big_tcp(node: &TestNode, p: &Pod) {
    set_big_tcp(&p.netns, "eth0", 131072);
    set_big_tcp(
        Path::new(&format!("/run/netns/{}", node.netns)),
        &p.host_veth,
        131072,
    );
}

/// Sends `len` bytes over one TCP connection from namespace `client` to a listener on
/// `server_ip` in namespace `server`, which reads to the end; returns what the server
/// received (an error after 30 s without progress).
fn tcp_send(server: &Path, server_ip: Ipv4Addr, client: &Path, len: usize) -> Vec<u8> {
    let listener = vethbpf::kernel::netns::run_in(server, move || {
        TcpListener::bind(SocketAddr::from((server_ip, 0)))
    })
    .expect("enter the server's namespace")
    .expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let receiver = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut got = Vec::with_capacity(len);
        s.read_to_end(&mut got)?;
        Ok(got)
    });
    let mut stream = vethbpf::kernel::netns::run_in(client, move || {
        TcpStream::connect_timeout(&SocketAddr::from((server_ip, port)), Duration::from_secs(5))
    })
    .expect("enter the client's namespace")
    .expect("connect");
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    stream.write_all(&data).expect("send");
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let got = receiver.join().expect("receiver thread").expect("receive");
    assert!(
        got == data,
        "{} of {len} bytes arrived, or altered",
        got.len()
    );
    got
}

/// Packets and bytes of a counter.
fn count(node: &TestNode, pod: &str, path: &[&str]) -> (u64, u64) {
    let c = node.counters(pod);
    let mut v = &c;
    for p in path {
        v = &v[*p];
    }
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{path:?}.{k} in {c}"))
    };
    (n("packets"), n("bytes"))
}

/// With BIG TCP on, a pod's TCP stack hands its veth super-packets over 64 KiB whose
/// IPv4 total length is 0. They must be forwarded to another pod and passed to the
/// node like any packet. The counters show they occurred: over the transfer, the
/// sender's packets averaged more bytes than any packet can have without BIG TCP.
#[test]
fn big_tcp_super_packets_reach_other_pods_and_the_node() {
    const LEN: usize = 64 << 20;
    let node = TestNode::up();
    let a = add_pod(&node, "a");
    let b = add_pod(&node, "b");
    enable_big_tcp(&node, &a);
    enable_big_tcp(&node, &b);

    // Pod to pod.
    let (p0, b0) = count(&node, "a", &["forwarded"]);
    tcp_send(&b.netns, b.ip, &a.netns, LEN);
    let (p1, b1) = count(&node, "a", &["forwarded"]);
    let per_packet = (b1 - b0) / (p1 - p0);
    eprintln!("a -> b: {} packets, {per_packet} bytes on average", p1 - p0);
    assert!(
        per_packet > LEGACY_GSO_MAX_FRAME,
        "a -> b: {} packets, {per_packet} bytes each on average: no BIG TCP super-packet",
        p1 - p0
    );

    // Pod to node.
    let node_ns = PathBuf::from(format!("/run/netns/{}", node.netns));
    let node_ip: Ipv4Addr = vethbpf_tests::NODE_IP.parse().expect("node IP");
    let (p0, b0) = count(&node, "a", &["passed"]);
    tcp_send(&node_ns, node_ip, &a.netns, LEN);
    let (p1, b1) = count(&node, "a", &["passed"]);
    let per_packet = (b1 - b0) / (p1 - p0);
    eprintln!(
        "a -> node: {} packets, {per_packet} bytes on average",
        p1 - p0
    );
    assert!(
        per_packet > LEGACY_GSO_MAX_FRAME,
        "a -> node: {} packets, {per_packet} bytes each on average: no BIG TCP super-packet",
        p1 - p0
    );
    assert_eq!(packets(&node, "a", &["drops", "drop_malformed"]), 0);
}

// ---------------------------------------------------------------------------------
// ARP probes.

/// An ARP request from `sha`/`spa` for `tpa`, broadcast.
fn arp_request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&sha);
    arp.extend_from_slice(&spa.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&tpa.octets());
    vethbpf_tests::eth([0xff; 6], sha, 0x0806, &arp)
}

/// Duplicate address detection as `arping -D` does it: a probe (sender 0.0.0.0) for
/// an address. No one may answer for the pod's own address (else every pod would see
/// its address as taken), nor for the gateway's or another pod's; the probes are
/// passed, not counted as spoofs.
#[test]
fn arp_probes_from_a_pod_get_no_answer_and_are_no_spoof() {
    let node = TestNode::up();
    let a = add_pod(&node, "a");
    let b = add_pod(&node, "b");
    let gateway = Ipv4Addr::new(169, 254, 1, 1);
    let send = PacketSocket::open(&a.netns, "eth0", false);
    let (passed, spoofs) = (
        packets(&node, "a", &["passed"]),
        packets(&node, "a", &["drops", "drop_arp_spoof"]),
    );
    let watch = Sniffer::start(&a.netns, "eth0");
    for target in [a.ip, gateway, b.ip] {
        send.send(&arp_request(a.mac, Ipv4Addr::UNSPECIFIED, target));
    }
    let answers: Vec<Vec<u8>> = watch
        .finish()
        .into_iter()
        .filter(|f| f.len() >= 42 && f[12..14] == [8, 6])
        .collect();
    assert!(answers.is_empty(), "probes answered: {answers:02x?}");
    assert_eq!(packets(&node, "a", &["passed"]), passed + 3);
    assert_eq!(
        packets(&node, "a", &["drops", "drop_arp_spoof"]),
        spoofs,
        "a probe is no spoof"
    );
}

// ---------------------------------------------------------------------------------
// The gateway answers ping.

/// The first thing a person tries in a pod without network: `ping 169.254.1.1`. The
/// replies come from `from_pod` (nothing on the node owns the address), with a TTL of
/// 64 and checksums the pod's stack accepts, and are counted.
#[test]
fn ping_to_the_gateway_is_answered() {
    let node = TestNode::up();
    add_pod(&node, "a");
    let out = node.in_pod(
        "a",
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "2", "169.254.1.1"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ping 169.254.1.1 from a pod: {text}");
    assert!(text.contains("3 received"), "{text}");
    assert_eq!(
        text.matches("ttl=64").count(),
        3,
        "every reply with the gateway's fresh TTL: {text}"
    );
    assert_eq!(packets(&node, "a", &["echo_replies"]), 3);
    assert_eq!(packets(&node, "a", &["dropped"]), 0);
    // Nothing of it went through the node's stack: it has no address to answer for.
    let addrs = node.node_must("ip", &["-o", "-4", "addr", "show"]);
    assert!(!addrs.contains("169.254.1.1"), "{addrs}");
}
