//! Pod egress in real namespaces (issue 10): pods reach servers in an "outside"
//! namespace through the node's uplink, masqueraded by eBPF, with the node at
//! `ip_forward=0` and no iptables or nftables rule; replies and ICMP errors come
//! back through `from_uplink`. Every packet stays inside namespaces the test made:
//! the node, its pods, the outside namespace (router and servers on its own
//! addresses) and, for the path MTU and TTL tests, a far namespace behind it.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vethbpf_tests::{
    FAR_SERVER_IP, FAR_SERVER_IP6, Outside, POD_CIDR, POD_CIDR6, ROUTER_IP, ROUTER_IP6, SERVER_IP,
    SERVER_IP6, TestNode, UPLINK, UPLINK_NODE_IP, UPLINK_NODE_IP6, must, packets,
};

const NAT_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 address")
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 address")
}

fn netns(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{name}"))
}

fn in_ns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    vethbpf::kernel::netns::run_in(ns, f).expect("enter the namespace")
}

/// A node with an uplink to an outside namespace, `up` with `args`, and pods.
struct World {
    node: TestNode,
    out: Outside,
}

impl World {
    fn new(up: &[&str], pods: &[&str]) -> World {
        Self::build(up, pods, None, false)
    }

    fn with_far(up: &[&str], pods: &[&str], far_mtu: u32) -> World {
        Self::build(up, pods, Some(far_mtu), false)
    }

    /// A world whose outside has IPv6 too ([`TestNode::outside6`]); `up` must give
    /// the pod CIDRs.
    fn new6(up: &[&str], pods: &[&str], far_mtu: Option<u32>) -> World {
        Self::build(up, pods, far_mtu, true)
    }

    /// An IPv6-only node ([`POD_CIDR6`] alone) in a world whose node has no IPv4
    /// default route: its uplink is found by the IPv6 one.
    fn ipv6_only(up: &[&str], pods: &[&str], far_mtu: Option<u32>) -> World {
        let mut args = vec!["--pod-cidr", POD_CIDR6];
        args.extend_from_slice(up);
        Self::build(&args, pods, far_mtu, true)
    }

    fn build(up: &[&str], pods: &[&str], far_mtu: Option<u32>, v6: bool) -> World {
        let node = TestNode::new();
        let out = match far_mtu {
            Some(mtu) => node.outside_with_far(mtu),
            None => node.outside(),
        };
        if v6 {
            node.outside6(&out);
            if !up.contains(&POD_CIDR) {
                node.node_must("ip", &["route", "del", "default"]);
            }
        }
        let mut args = vec!["up"];
        args.extend_from_slice(up);
        node.ok(&args);
        for p in pods {
            node.add(p, &[]);
        }
        World { node, out }
    }

    fn pod(&self, p: &str) -> PathBuf {
        netns(&self.node.pod(p))
    }

    fn pod_ip(&self, p: &str) -> Ipv4Addr {
        let name = self.node.pod(p);
        let list = self.node.json(&["endpoint", "list"]);
        let ep = list
            .as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == name.as_str()))
            .unwrap_or_else(|| panic!("no endpoint {name}"));
        ip(ep["ip"].as_str().expect("ip"))
    }

    fn pod_ip6(&self, p: &str) -> Ipv6Addr {
        let name = self.node.pod(p);
        let list = self.node.json(&["endpoint", "list"]);
        let ep = list
            .as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == name.as_str()))
            .unwrap_or_else(|| panic!("no endpoint {name}"));
        ip6(ep["ip6"].as_str().expect("ip6"))
    }

    fn status(&self) -> serde_json::Value {
        self.node.json(&["status"])
    }

    fn flows(&self) -> Vec<serde_json::Value> {
        self.node
            .json(&["nat", "list"])
            .as_array()
            .expect("nat list is an array")
            .clone()
    }
}

// ---------------------------------------------------------------------------------
// Servers and clients.

/// A TCP echo server on `ip` in `ns` for `conns` connections (a thread each);
/// returns its port and the peers it saw.
fn tcp_server(
    ns: &Path,
    ip: impl Into<IpAddr>,
    conns: usize,
) -> (u16, JoinHandle<Vec<SocketAddr>>) {
    let ip = ip.into();
    let listener = in_ns(ns, || TcpListener::bind((ip, 0))).expect("bind the TCP server");
    let port = listener.local_addr().expect("local addr").port();
    let handle = std::thread::spawn(move || {
        let mut peers = Vec::new();
        let mut workers = Vec::new();
        for _ in 0..conns {
            let (mut s, peer) = listener.accept().expect("accept");
            peers.push(peer);
            workers.push(std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).ok();
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
        for w in workers {
            w.join().expect("echo worker");
        }
        peers
    });
    (port, handle)
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + seed * 13) % 251) as u8)
        .collect()
}

/// Connects from `ns` (from `bind_port` if given), sends `data`, and checks the echo
/// byte for byte; returns the connection's local address.
fn tcp_roundtrip(
    ns: &Path,
    dst: impl Into<SocketAddr>,
    bind_port: Option<u16>,
    data: &[u8],
) -> SocketAddr {
    let dst = dst.into();
    let stream = in_ns(ns, move || match (dst, bind_port) {
        (SocketAddr::V4(v4), _) => socket2_free_connect(v4, bind_port),
        (SocketAddr::V6(_), None) => TcpStream::connect_timeout(&dst, Duration::from_secs(5)),
        (SocketAddr::V6(_), Some(_)) => Err(std::io::Error::other(
            "a fixed source port is for IPv4 here (IPv6 tests use UDP for that)",
        )),
    })
    .unwrap_or_else(|e| panic!("connect to {dst} from {}: {e}", ns.display()));
    echo_over(stream, data)
}

/// A connected TCP stream, optionally from a fixed source port (SO_REUSEADDR, so a
/// port left in TIME_WAIT by an earlier test run is no obstacle).
fn socket2_free_connect(dst: SocketAddrV4, bind_port: Option<u16>) -> std::io::Result<TcpStream> {
    let Some(port) = bind_port else {
        return TcpStream::connect_timeout(&dst.into(), Duration::from_secs(5));
    };
    // std has no bind-before-connect: a raw socket, bound, then connected.
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as u32,
        );
        let sin = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let local = sin(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        if libc::bind(
            fd,
            (&raw const local).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sin(dst);
        if libc::connect(
            fd,
            (&raw const remote).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

fn echo_over(mut stream: TcpStream, data: &[u8]) -> SocketAddr {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let local = stream.local_addr().expect("local addr");
    let writer = {
        let mut w = stream.try_clone().expect("clone");
        let data = data.to_vec();
        std::thread::spawn(move || {
            w.write_all(&data).expect("write");
            w.shutdown(std::net::Shutdown::Write).expect("shutdown");
        })
    };
    let mut back = Vec::with_capacity(data.len());
    stream.read_to_end(&mut back).expect("read the echo");
    writer.join().expect("writer");
    assert_eq!(back.len(), data.len(), "echoed length");
    assert!(back == data, "echoed bytes differ");
    local
}

/// A UDP socket in `ns` bound to `ip:port` (port 0: any).
fn udp(ns: &Path, ip: impl Into<IpAddr>, port: u16) -> UdpSocket {
    let ip = ip.into();
    let s = in_ns(ns, || UdpSocket::bind((ip, port))).expect("bind UDP");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s
}

/// Receives one datagram, or `None` after the socket's timeout.
fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
            // A signal (the test harness's threads) is not a timeout: wait on.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn assert_nat_addr(seen: SocketAddr, what: &str) {
    let SocketAddr::V4(v4) = seen else {
        panic!("{what}: IPv6 peer {seen}");
    };
    assert_eq!(
        *v4.ip(),
        ip(UPLINK_NODE_IP),
        "{what}: the server sees the node's address"
    );
    assert!(
        NAT_PORTS.contains(&v4.port()),
        "{what}: port {} in the NAT range",
        v4.port()
    );
}

fn assert_nat_addr6(seen: SocketAddr, what: &str) {
    let SocketAddr::V6(v6) = seen else {
        panic!("{what}: IPv4 peer {seen}");
    };
    assert_eq!(
        *v6.ip(),
        ip6(UPLINK_NODE_IP6),
        "{what}: the server sees the node's IPv6 address"
    );
    assert!(
        NAT_PORTS.contains(&v6.port()),
        "{what}: port {} in the NAT range",
        v6.port()
    );
}

/// The node is clean: no forwarding (either family), no iptables or ip6tables rule,
/// an empty nftables ruleset.
fn assert_no_kernel_path(node: &TestNode) {
    for sysctl in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        assert_eq!(node.node_must("cat", &[sysctl]).trim(), "0", "{sysctl}");
    }
    for save in ["iptables-save", "ip6tables-save"] {
        let rules = node.node_must(save, &[]);
        assert!(
            !rules.lines().any(|l| l.starts_with("-A")),
            "{save}: {rules}"
        );
    }
    let nft = node.node_must("nft", &["list", "ruleset"]);
    assert!(nft.trim().is_empty(), "nftables ruleset: {nft}");
}

// ---------------------------------------------------------------------------------

#[test]
fn pods_reach_the_outside_through_ebpf_masqueraded() {
    let w = World::new(&[], &["a", "b"]);
    let st = w.status();
    assert_eq!(st["egress"]["enabled"], true, "{st}");
    assert_eq!(st["egress"]["settings"]["uplink"], UPLINK);
    assert_eq!(st["egress"]["settings"]["nat_addr"], UPLINK_NODE_IP);
    assert!(st["egress"]["attachment"]["link_id"].is_u64(), "{st}");
    assert_no_kernel_path(&w.node);

    // Ping: TTL 64 from the server, minus the node's eBPF hop.
    for p in ["a", "b"] {
        assert_eq!(
            w.node.ping_from_pod(p, SERVER_IP, 3),
            Some(63),
            "ping from {p}"
        );
    }

    // A few MiB over TCP, byte for byte; the server sees the node's address.
    let (port, server) = tcp_server(&w.out.path(), ip(SERVER_IP), 2);
    let dst = SocketAddrV4::new(ip(SERVER_IP), port);
    tcp_roundtrip(&w.pod("a"), dst, None, &pattern(4 << 20, 1));
    tcp_roundtrip(&w.pod("b"), dst, None, &pattern(1 << 20, 2));
    for peer in server.join().expect("server") {
        assert_nat_addr(peer, "TCP");
    }

    // UDP both ways.
    let server = udp(&w.out.path(), ip(SERVER_IP), 0);
    let server_addr = server.local_addr().expect("addr");
    for (i, p) in ["a", "b"].into_iter().enumerate() {
        let client = udp(&w.pod(p), Ipv4Addr::UNSPECIFIED, 0);
        let msg = format!("hello from {p}");
        client.send_to(msg.as_bytes(), server_addr).expect("send");
        let (got, from) = recv(&server).expect("the server gets the datagram");
        assert_eq!(got, msg.as_bytes());
        assert_nat_addr(from, "UDP");
        server
            .send_to(format!("reply {i}").as_bytes(), from)
            .expect("reply");
        let (back, _) = recv(&client).expect("the reply reaches the pod");
        assert_eq!(back, format!("reply {i}").as_bytes());
    }

    for p in ["a", "b"] {
        let c = w.node.counters(p);
        assert!(packets(&c, &["masqueraded"]) > 0, "{p}: {c}");
        assert!(packets(&c, &["rev_nat"]) > 0, "{p}: {c}");
        assert_eq!(packets(&c, &["dropped"]), 0, "{p}: {c}");
    }
    let flows = w.flows();
    assert!(
        flows
            .iter()
            .any(|f| f["protocol"] == "udp" && f["state"] == "replied"),
        "{flows:?}"
    );
    assert!(flows.iter().all(|f| {
        f["node"]
            .as_str()
            .is_some_and(|n| n.starts_with(UPLINK_NODE_IP))
    }));
    // Still no kernel path after all that.
    assert_no_kernel_path(&w.node);
}

#[test]
fn two_pods_with_the_same_source_port_to_the_same_server_both_work() {
    let w = World::new(&[], &["a", "b"]);
    let (port, server) = tcp_server(&w.out.path(), ip(SERVER_IP), 2);
    let dst = SocketAddrV4::new(ip(SERVER_IP), port);
    // Inside the NAT range: the first keeps it, the second cannot.
    let src = 62222;
    let ta = {
        let ns = w.pod("a");
        std::thread::spawn(move || tcp_roundtrip(&ns, dst, Some(src), &pattern(256 << 10, 3)))
    };
    let tb = {
        let ns = w.pod("b");
        std::thread::spawn(move || tcp_roundtrip(&ns, dst, Some(src), &pattern(256 << 10, 4)))
    };
    assert_eq!(ta.join().expect("a").port(), src);
    assert_eq!(tb.join().expect("b").port(), src);
    let peers = server.join().expect("server");
    let ports: BTreeSet<u16> = peers.iter().map(SocketAddr::port).collect();
    assert_eq!(ports.len(), 2, "two mappings: {peers:?}");
    for p in peers {
        assert_nat_addr(p, "same source port");
    }

    // UDP too, at the same time.
    let server = udp(&w.out.path(), ip(SERVER_IP), 0);
    let to = server.local_addr().expect("addr");
    let ca = udp(&w.pod("a"), Ipv4Addr::UNSPECIFIED, 40000);
    let cb = udp(&w.pod("b"), Ipv4Addr::UNSPECIFIED, 40000);
    ca.send_to(b"a", to).expect("send a");
    cb.send_to(b"b", to).expect("send b");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (m, from) = recv(&server).expect("datagram");
        server.send_to(&m, from).expect("reply");
        seen.push(from);
    }
    assert_ne!(seen[0].port(), seen[1].port());
    assert_eq!(recv(&ca).expect("a's reply").0, b"a");
    assert_eq!(recv(&cb).expect("b's reply").0, b"b");
}

#[test]
fn two_thousand_concurrent_flows_from_three_pods_all_complete() {
    const FLOWS: usize = 2000;
    let w = World::new(&[], &["a", "b", "c"]);
    let (port, server) = tcp_server(&w.out.path(), ip(SERVER_IP), FLOWS);
    let dst = SocketAddrV4::new(ip(SERVER_IP), port);
    // Open them all first (each pod's sockets made inside its namespace), then talk
    // on every one while all are open.
    let mut streams = Vec::new();
    for (i, p) in ["a", "b", "c"].into_iter().enumerate() {
        let n = FLOWS / 3 + usize::from(i < FLOWS % 3);
        let mut s = in_ns(&w.pod(p), move || {
            (0..n)
                .map(|_| TcpStream::connect_timeout(&dst.into(), Duration::from_secs(10)))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_else(|e| panic!("connect from {p}: {e}"));
        streams.append(&mut s);
    }
    assert_eq!(streams.len(), FLOWS);
    let tcp_flows = w
        .flows()
        .iter()
        .filter(|f| f["protocol"] == "tcp" && f["state"] == "established")
        .count();
    assert!(tcp_flows >= FLOWS, "{tcp_flows} established flows");
    for (i, s) in streams.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let msg = format!("flow {i}");
        s.write_all(msg.as_bytes()).expect("write");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).expect("read");
        assert_eq!(back, msg.as_bytes());
    }
    drop(streams);
    let peers = server.join().expect("server");
    let distinct: BTreeSet<SocketAddr> = peers.iter().copied().collect();
    assert_eq!(distinct.len(), FLOWS, "every flow its own mapping");
    let st = w.status();
    assert_eq!(st["egress"]["nat_no_port_drops"], 0, "{st}");
    assert_eq!(st["egress"]["nat_table_full_drops"], 0, "{st}");
}

/// Opens a UDP flow from a fresh socket of `pod` to the echo `server`; whether the
/// echo came back. A flow the NAT refuses never reaches the server: waiting longer
/// for it proves nothing, so a slow machine only makes success slower.
fn udp_flow(w: &World, pod: &str, server: &UdpSocket) -> bool {
    let c = udp(&w.pod(pod), Ipv4Addr::UNSPECIFIED, 0);
    c.send_to(b"x", server.local_addr().expect("addr"))
        .expect("send");
    server.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let Some((m, from)) = recv(server) else {
        return false;
    };
    server.send_to(&m, from).expect("echo");
    recv(&c).is_some()
}

#[test]
fn a_full_nat_table_drops_new_flows_until_flushed_or_expired() {
    const MAX: u32 = 20;
    let w = World::new(&["--nat-max-flows", &MAX.to_string()], &["a"]);
    let server = udp(&w.out.path(), ip(SERVER_IP), 0);
    for i in 0..MAX {
        assert!(udp_flow(&w, "a", &server), "flow {i} within the limit");
    }
    assert!(!udp_flow(&w, "a", &server), "a flow beyond the limit");
    let c = w.node.counters("a");
    assert!(packets(&c, &["drops", "nat_table_full"]) >= 1, "{c}");
    let st = w.status();
    assert_eq!(st["egress"]["table_full"], true, "{st}");
    assert!(
        st["egress"]["nat_table_full_drops"].as_u64() >= Some(1),
        "{st}"
    );
    assert!(
        st["egress"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("NAT table is full")),
        "{st}"
    );
    let text = w.node.ok(&["status"]);
    assert!(text.contains("FULL"), "{text}");
    // Existing flows still work: the node's own reply path is unaffected.
    assert_eq!(w.node.ping_from_node(SERVER_IP), Some(64));

    let flushed = w.node.json(&["nat", "flush"]);
    assert_eq!(flushed["flushed_flows"], u64::from(MAX));
    assert!(udp_flow(&w, "a", &server), "a new flow after the flush");

    // Expiry: fill the table with flows nobody answers (UDP, unreplied: 30 s), then
    // a new flow after they expired gets through (the datapath collects them).
    w.node.ok(&["nat", "flush"]);
    let silent = SocketAddr::from((ip(SERVER_IP), 9)); // nothing listens there
    for _ in 0..MAX {
        let c = udp(&w.pod("a"), Ipv4Addr::UNSPECIFIED, 0);
        c.send_to(b"x", silent).expect("send");
    }
    // A send returns before the datapath has run on the packet (under load the
    // softirq runs later, maybe on another CPU): probe once all are in the table.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.flows().len() < MAX as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "the {MAX} silent flows never all reached the NAT table: {:?}",
            w.flows()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !udp_flow(&w, "a", &server),
        "full again: {:?}",
        w.status()["egress"]
    );
    std::thread::sleep(Duration::from_secs(31));
    assert!(
        udp_flow(&w, "a", &server),
        "a new flow once the old expired"
    );
    let st = w.status();
    assert!(
        st["egress"]["gc_deleted"].as_u64() >= Some(2 * u64::from(MAX)),
        "{st}"
    );
}

#[test]
fn the_node_own_connections_keep_working_while_pods_hammer_the_nat() {
    let w = World::new(&[], &["a", "b", "c"]);
    let listener = in_ns(&w.out.path(), || TcpListener::bind((ip(SERVER_IP), 0))).expect("bind");
    let dst = SocketAddrV4::new(ip(SERVER_IP), listener.local_addr().expect("addr").port());
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(b"ok");
                        n += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            n
        })
    };
    let hammer: Vec<JoinHandle<u64>> = ["a", "b", "c"]
        .into_iter()
        .map(|p| {
            let ns = w.pod(p);
            let stop = stop.clone();
            std::thread::spawn(move || {
                in_ns(&ns, move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(mut s) =
                            TcpStream::connect_timeout(&dst.into(), Duration::from_secs(2))
                        {
                            let mut b = [0u8; 2];
                            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                            if s.read_exact(&mut b).is_ok() {
                                n += 1;
                            }
                        }
                    }
                    n
                })
            })
        })
        .collect();
    // Meanwhile the node itself connects, from ports its kernel picks.
    let started = Instant::now();
    let mut node_ports = Vec::new();
    while started.elapsed() < Duration::from_secs(4) {
        let mut s = in_ns(&netns(&w.node.netns), || {
            TcpStream::connect_timeout(&dst.into(), Duration::from_secs(2))
        })
        .expect("the node connects during the load");
        let mut b = [0u8; 2];
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        s.read_exact(&mut b)
            .expect("the node's connection gets its reply");
        node_ports.push(s.local_addr().expect("addr").port());
    }
    stop.store(true, Ordering::Relaxed);
    let pod_conns: u64 = hammer.into_iter().map(|h| h.join().expect("pod")).sum();
    acceptor.join().expect("acceptor");
    assert!(
        node_ports.len() > 50,
        "{} node connections",
        node_ports.len()
    );
    assert!(pod_conns > 100, "{pod_conns} pod connections");
    // Why no reply of the node's can be taken for a pod's: its ports are not the
    // NAT's.
    assert!(
        node_ports.iter().all(|p| !NAT_PORTS.contains(p)),
        "{node_ports:?}"
    );
    let st = w.status();
    assert!(st["egress"]["uplink_passed"].as_u64() > Some(100), "{st}");
}

#[test]
fn unsolicited_packets_reach_no_pod() {
    let w = World::new(&[], &["a"]);
    let pod_ip = w.pod_ip("a");
    // The pod's flow: from port 61234 (in the NAT range, kept) to the server's 7777.
    let flow_port = 61234;
    let sock = udp(&w.pod("a"), Ipv4Addr::UNSPECIFIED, flow_port);
    sock.set_read_timeout(Some(Duration::from_millis(800))).ok();
    let server = udp(&w.out.path(), ip(SERVER_IP), 7777);
    sock.send_to(b"hi", (ip(SERVER_IP), 7777)).expect("send");
    let (_, seen) = recv(&server).expect("server");
    assert_eq!(seen, SocketAddr::from((ip(UPLINK_NODE_IP), flow_port)));

    // From the same server, another port, to the NAT port: no flow, not the pod's.
    let other = udp(&w.out.path(), ip(SERVER_IP), 7778);
    other.send_to(b"intruder", seen).expect("send");
    // From another address of the outside, to the NAT port.
    let router = udp(&w.out.path(), ip(ROUTER_IP), 7777);
    router.send_to(b"intruder", seen).expect("send");
    // Straight to the pod's address, routed to the node.
    w.out.must(
        "ip",
        &["route", "add", "10.244.0.0/24", "via", UPLINK_NODE_IP],
    );
    other
        .send_to(b"intruder", (pod_ip, flow_port))
        .expect("send");
    let tcp_listener = in_ns(&w.pod("a"), || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080))
    })
    .expect("listen in the pod");
    let syn = in_ns(&w.out.path(), move || {
        TcpStream::connect_timeout(&SocketAddr::from((pod_ip, 8080)), Duration::from_secs(2))
    });
    assert!(syn.is_err(), "a connection from outside into the pod");
    tcp_listener.set_nonblocking(true).expect("nonblocking");
    assert!(tcp_listener.accept().is_err(), "the pod accepted nothing");
    while let Some((m, from)) = recv(&sock) {
        assert_ne!(
            m, b"intruder",
            "the pod got an unsolicited packet from {from}"
        );
    }
    let st = w.status();
    let c = w.node.counters("a");
    assert_eq!(packets(&c, &["rev_nat"]), 0, "{c}");
    // The packets for the pod's address were dropped on the uplink (id 0), the ones
    // for the NAT port went to the node stack.
    assert!(st["egress"]["uplink_passed"].as_u64() >= Some(2), "{st}");

    // The real reply still arrives.
    server.send_to(b"reply", seen).expect("reply");
    assert_eq!(recv(&sock).expect("the reply").0, b"reply");
}

#[test]
fn path_mtu_discovery_works_through_the_nat() {
    // The router's side of the far link has MTU 1280, the far server's 1500: the
    // server's SYN-ACK offers MSS 1460, so the pod sends full-size segments (with DF,
    // as Linux TCP does) and only the router's "fragmentation needed" can shrink them.
    // One way (the server acknowledges, checks every byte and says how many matched):
    // its own full-size segments would not fit back through the 1280 side.
    let w = World::with_far(&[], &["a"], 1280);
    let peer = send_checked(&w, "a", &w.out.far_path(), ip(FAR_SERVER_IP), 2 << 20);
    assert_nat_addr(peer, "far TCP");
    let c = w.node.counters("a");
    assert!(
        packets(&c, &["rev_nat_icmp"]) >= 1,
        "frag-needed translated: {c}"
    );
    // The pod learnt the path MTU.
    let cached = w.node.in_pod("a", "ip", &["route", "get", FAR_SERVER_IP]);
    let text = String::from_utf8_lossy(&cached.stdout);
    assert!(text.contains("mtu 1280"), "{text}");
}

#[test]
fn a_ttl_limited_probe_gets_the_routers_time_exceeded() {
    let w = World::with_far(&[], &["a"], 1500);
    let out = w.node.in_pod(
        "a",
        "ping",
        &["-c", "1", "-t", "2", "-W", "2", FAR_SERVER_IP],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("From {ROUTER_IP}")) && text.contains("Time to live exceeded"),
        "{text}"
    );
    let c = w.node.counters("a");
    assert!(packets(&c, &["rev_nat_icmp"]) >= 1, "{c}");
    // TTL 1 ends at the node itself: dropped, counted, and the gateway says so, as
    // the first hop of a traceroute.
    let before = packets(&w.node.counters("a"), &["drops", "drop_ttl"]);
    let flows = w.flows().len();
    let out = w.node.in_pod(
        "a",
        "ping",
        &["-c", "1", "-t", "1", "-W", "2", FAR_SERVER_IP],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("From {GATEWAY_IP}")) && text.contains("Time to live exceeded"),
        "{text}"
    );
    let c = w.node.counters("a");
    assert_eq!(packets(&c, &["drops", "drop_ttl"]), before + 1, "{c}");
    assert_eq!(w.flows().len(), flows, "an expired packet opens no flow");
}

/// The gateway's own address, which the pods' default route goes through.
const GATEWAY_IP: &str = "169.254.1.1";

/// Sends `len` patterned bytes from `pod` to a TCP server at `ip` in `server_ns`
/// (one way: the server checks every byte and answers good or bad); returns the
/// peer the server saw.
fn send_checked(
    w: &World,
    pod: &str,
    server_ns: &Path,
    ip: impl Into<IpAddr>,
    len: usize,
) -> SocketAddr {
    let ip = ip.into();
    let listener = in_ns(server_ns, || TcpListener::bind((ip, 0))).expect("bind");
    let dst = SocketAddr::from((ip, listener.local_addr().expect("addr").port()));
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        let good = got.len() == len && got == pattern(len, 5);
        s.write_all(if good { b"good" } else { b"bad!" })
            .expect("answer");
        peer
    });
    let mut stream = in_ns(&w.pod(pod), move || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(5))
    })
    .expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    stream.write_all(&pattern(len, 5)).expect("send");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the server's answer");
    assert_eq!(answer, b"good", "every byte arrived");
    server.join().expect("server")
}

#[test]
fn a_packet_too_big_for_the_uplink_gets_the_gateways_fragmentation_needed() {
    // The uplink link has MTU 1400 on both ends, the pod 1500, and the server
    // advertises MSS 1460 anyway (advmss: as a server behind a larger link would), so
    // the pod sends segments (with DF) that do not fit the uplink, and only the
    // gateway's "fragmentation needed" can shrink them (the kernel's router would send
    // it; a silent drop is a PMTU black hole).
    let w = World::new(&[], &["a"]);
    // Traffic first, at the old MTU: the datapath remembers the uplink's MTU (per
    // CPU, for a bounded time), and a lowered MTU must still be noticed.
    let warm = w.node.in_pod(
        "a",
        "ping",
        &["-c", "3", "-i", "0.05", "-W", "2", SERVER_IP],
    );
    assert!(warm.status.success(), "{warm:?}");
    w.node
        .node_must("ip", &["link", "set", UPLINK, "mtu", "1400"]);
    w.out.must("ip", &["link", "set", "eth0", "mtu", "1400"]);
    w.out.must(
        "ip",
        &[
            "route",
            "change",
            "172.30.0.0/24",
            "dev",
            "eth0",
            "advmss",
            "1460",
        ],
    );
    let peer = send_checked(&w, "a", &w.out.path(), ip(SERVER_IP), 2 << 20);
    assert_nat_addr(peer, "TCP through the smaller uplink");
    let c = w.node.counters("a");
    assert!(packets(&c, &["drops", "drop_too_big"]) >= 1, "{c}");
    // The pod learnt the uplink's MTU from the gateway.
    let cached = w.node.in_pod("a", "ip", &["route", "get", SERVER_IP]);
    let text = String::from_utf8_lossy(&cached.stdout);
    assert!(text.contains("mtu 1400"), "{text}");
}

#[test]
fn up_replace_during_a_stream_keeps_it() {
    let w = World::new(&[], &["a"]);
    let (port, server) = tcp_server(&w.out.path(), ip(SERVER_IP), 1);
    let dst = SocketAddrV4::new(ip(SERVER_IP), port);
    let mut stream = in_ns(&w.pod("a"), move || {
        TcpStream::connect_timeout(&dst.into(), Duration::from_secs(5))
    })
    .expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let before = w.flows();
    // Stream for about three seconds; replace the program in the middle.
    let chunk = pattern(64 << 10, 6);
    let replacer = {
        let cmd_args = ["up", "--replace"];
        let out = w.node.command(&cmd_args);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            let mut out = out;
            out.output().expect("run up --replace")
        })
    };
    let started = Instant::now();
    let mut sent = 0usize;
    let mut back = vec![0u8; chunk.len()];
    while started.elapsed() < Duration::from_secs(3) {
        stream
            .write_all(&chunk)
            .expect("write: the stream must not be reset");
        stream
            .read_exact(&mut back)
            .expect("read: the stream must not be reset");
        assert!(back == chunk, "echo differs after {sent} bytes");
        sent += chunk.len();
    }
    let replaced = replacer.join().expect("replacer");
    assert!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    assert!(
        String::from_utf8_lossy(&replaced.stdout).contains("program replaced"),
        "{}",
        String::from_utf8_lossy(&replaced.stdout)
    );
    drop(stream);
    server.join().expect("server");
    assert!(sent > 1 << 20, "{sent} bytes");
    // The flow kept its mapping.
    let after = w.flows();
    let tcp = |v: &[serde_json::Value]| {
        v.iter()
            .find(|f| f["protocol"] == "tcp")
            .map(|f| f["node"].clone())
    };
    assert_eq!(tcp(&before), tcp(&after), "{before:?} / {after:?}");
}

#[test]
fn endpoint_del_removes_its_flows() {
    let w = World::new(&[], &["a", "b"]);
    let a_ip = w.pod_ip("a");
    for p in ["a", "b"] {
        assert!(w.node.ping_from_pod(p, SERVER_IP, 1).is_some());
    }
    let flows = w.flows();
    assert!(flows.iter().any(|f| {
        f["pod"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{a_ip}:")))
    }));
    let before = w.node.map_dump("NAT").len();
    w.node.ok(&["endpoint", "del", &w.node.pod("a")]);
    let flows = w.flows();
    assert!(
        flows.iter().all(|f| !f["pod"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{a_ip}:")))),
        "{flows:?}"
    );
    assert!(!flows.is_empty(), "b's flows stay");
    let after = w.node.map_dump("NAT");
    assert_eq!(
        after.len(),
        2 * flows.len(),
        "both halves of b's flows only: {after:?}"
    );
    assert!(after.len() < before);
}

/// What `up`/`down` may touch on the uplink side, besides what the node snapshot has.
fn uplink_state(node: &TestNode) -> (String, String, String) {
    (
        node.node_must("tc", &["filter", "show", "dev", UPLINK, "ingress"]),
        node.node_must("bpftool", &["net", "show", "dev", UPLINK]),
        node.node_must(
            "sysctl",
            &["net.ipv4.ip_forward", "net.ipv4.ip_local_port_range"],
        ),
    )
}

#[test]
fn down_leaves_the_node_as_before() {
    let node = TestNode::new();
    let _out = node.outside();
    let before = (node.snapshot(), uplink_state(&node));
    node.ok(&["up"]);
    node.add("a", &[]);
    assert!(node.ping_from_pod("a", SERVER_IP, 1).is_some());
    // (Debian's bpftool 7.1 does not list TCX attachments: the link by its id.)
    let st = node.json(&["status"]);
    let id = |k: &str| {
        st["egress"]["attachment"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("from_uplink's {k}: {st}"))
    };
    let (link, prog) = (id("link_id").to_string(), id("program_id"));
    let shown = must("bpftool", ["link", "show", "id", &link]);
    assert!(shown.contains(&format!("prog {prog}")), "{shown}");
    node.ok(&["down"]);
    let after = (node.snapshot(), uplink_state(&node));
    assert_eq!(before, after);
    assert!(!node.bpffs.join("progs").exists());
    let gone = vethbpf_tests::run("bpftool", ["link", "show", "id", &link]);
    assert!(!gone.status.success(), "the uplink's link is gone");
}

#[test]
fn egress_settings_are_checked_and_kept() {
    // No default route: no egress, said so; egress options without an uplink fail.
    let node = TestNode::new();
    let out = node.ok(&["up"]);
    assert!(out.contains("egress: off"), "{out}");
    let st = node.json(&["status"]);
    assert_eq!(st["egress"]["enabled"], false);
    assert!(
        st["egress"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("default route"))
    );
    let r = node.vethbpf(&["up", "--no-masquerade"]);
    assert!(!r.status.success());
    node.ok(&["down"]);
    let r = node.vethbpf(&["up", "--no-masquerade"]);
    assert_eq!(
        r.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("--uplink"));
    let r = node.vethbpf(&["up", "--uplink", "nosuch0"]);
    assert_eq!(
        r.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    drop(node);

    let w = World::new(&["--nat-max-flows", "1000"], &[]);
    let state = std::fs::read_to_string(w.node.state.join("state.json")).expect("state");
    for (args, needle, code) in [
        (vec!["up", "--nat-max-flows", "2000"], "vethbpf down", 5),
        (vec!["up", "--no-masquerade"], "vethbpf down", 5),
        (vec!["up", "--uplink", "lo"], "vethbpf down", 5),
        (vec!["up", "--nat-ports", "40000-50000"], "vethbpf down", 5),
    ] {
        let r = w.node.vethbpf(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // Same settings again: fine, nothing changed.
    let again = w
        .node
        .ok(&["up", "--nat-max-flows", "1000", "--uplink", UPLINK]);
    assert!(again.contains("nothing changed"), "{again}");
    assert_eq!(
        std::fs::read_to_string(w.node.state.join("state.json")).expect("state"),
        state
    );
    drop(w);

    // Ports that overlap the node's own, on a fresh node.
    let node = TestNode::new();
    let _out = node.outside();
    let r = node.vethbpf(&["up", "--nat-ports", "32768-40000"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(err.contains("ip_local_port_range"), "{err}");
    assert!(
        !node.bpffs.join("progs").exists(),
        "a refused up made nothing"
    );
}

#[test]
fn without_masquerade_pods_go_out_with_their_own_address() {
    let w = World::new(&["--no-masquerade"], &["a"]);
    let pod_ip = w.pod_ip("a");
    // The outside routes the pod CIDR to the node.
    w.out.must(
        "ip",
        &["route", "add", "10.244.0.0/24", "via", UPLINK_NODE_IP],
    );
    assert_eq!(w.node.ping_from_pod("a", SERVER_IP, 2), Some(63));
    let server = udp(&w.out.path(), ip(SERVER_IP), 0);
    let c = udp(&w.pod("a"), Ipv4Addr::UNSPECIFIED, 0);
    c.send_to(b"q", server.local_addr().expect("addr"))
        .expect("send");
    let (_, from) = recv(&server).expect("datagram");
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(pod_ip),
        "the pod's own address"
    );
    server.send_to(b"r", from).expect("reply");
    assert_eq!(recv(&c).expect("reply").0, b"r");
    // Unsolicited: dropped on the uplink.
    server
        .send_to(
            b"intruder",
            (pod_ip, c.local_addr().expect("addr").port() + 1),
        )
        .expect("send");
    let st = w.status();
    assert_eq!(st["egress"]["settings"]["masquerade"], false);
    let cnt = w.node.counters("a");
    assert!(packets(&cnt, &["egress"]) > 0, "{cnt}");
    assert_no_kernel_path(&w.node);
}

#[test]
fn up_replace_migrates_counters_of_an_older_stats_map() {
    // An older vethbpf's STATS: 8 verdicts per endpoint. Made with bpftool, pinned
    // where the node's is, with a forward counter for endpoint 1.
    let w = World::new(&[], &["a"]);
    assert!(w.node.ping_from_pod("a", SERVER_IP, 2).is_some());
    let id = w.node.json(&["endpoint", "list"])[0]["id"]
        .as_u64()
        .expect("id") as u32;
    let stats = w.node.bpffs.join("maps").join("STATS");
    std::fs::remove_file(&stats).expect("unpin STATS");
    let path = stats.to_str().expect("path");
    must(
        "bpftool",
        [
            "map",
            "create",
            path,
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "16",
            "entries",
            "32768",
            "name",
            "STATS",
        ],
    );
    // Endpoint `id`, verdict 0 (forward): 7 packets of 700 bytes (bpftool writes one
    // value: CPU 0's, the others zero).
    let key = ((id * 8).to_le_bytes()).map(|b| b.to_string());
    let value: Vec<String> = 7u64
        .to_le_bytes()
        .iter()
        .chain(700u64.to_le_bytes().iter())
        .map(u8::to_string)
        .collect();
    let mut args = vec!["map", "update", "pinned", path, "key"];
    args.extend(key.iter().map(String::as_str));
    args.push("value");
    args.extend(value.iter().map(String::as_str));
    must("bpftool", args);
    w.node.ok(&["up", "--replace"]);
    let c = w.node.counters("a");
    assert!(
        packets(&c, &["forwarded"]) >= 7,
        "the old counter migrated: {c}"
    );
    assert!(w.node.ping_from_pod("a", SERVER_IP, 1).is_some());
    let c2 = w.node.counters("a");
    assert!(packets(&c2, &["masqueraded"]) >= 1, "{c2}");

    // A map whose value layout changed cannot be migrated: refused, named.
    let config = w.node.bpffs.join("maps").join("CONFIG");
    // The real one is kept under another name, and put back for `down`.
    let kept = w.node.bpffs.join("maps").join("CONFIG_kept");
    std::fs::rename(&config, &kept).expect("move the CONFIG pin aside");
    must(
        "bpftool",
        [
            "map",
            "create",
            config.to_str().expect("path"),
            "type",
            "array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "1",
            "name",
            "CONFIG",
        ],
    );
    let r = w.node.vethbpf(&["up", "--replace"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("CONFIG") && err.contains("vethbpf down"),
        "{err}"
    );
    std::fs::remove_file(&config).expect("unpin the impostor");
    std::fs::rename(&kept, &config).expect("put CONFIG back");
    w.node.ok(&["status"]);
}

#[test]
fn reconcile_puts_back_a_lost_uplink_attachment() {
    let w = World::new(&[], &["a"]);
    assert_eq!(w.node.ping_from_pod("a", SERVER_IP, 1), Some(63));
    // Someone removes the pinned link: the program leaves the uplink, replies stop.
    let link = w.node.bpffs.join("links").join("from_uplink").join(UPLINK);
    std::fs::remove_file(&link).expect("unpin the uplink link");
    // The kernel frees a link whose last reference was its pin from a work queue, so
    // the program leaves the uplink shortly after the unlink, not at once: replies
    // must stop within a few tries.
    assert!(
        (0..10).any(|_| w.node.ping_from_pod("a", SERVER_IP, 1).is_none()),
        "replies need from_uplink, yet kept coming after its link was unpinned"
    );
    assert_eq!(
        w.node.ping_from_pod("a", SERVER_IP, 1),
        None,
        "replies came back without from_uplink"
    );
    let st = w.status();
    assert!(
        st["egress"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("not attached")),
        "{st}"
    );
    let report = w.node.json(&["reconcile"]);
    assert!(
        report["uplink"]
            .as_str()
            .is_some_and(|u| u.contains("attached again")),
        "{report}"
    );
    assert!(link.exists());
    assert_eq!(w.node.ping_from_pod("a", SERVER_IP, 1), Some(63));
    // All well now: nothing more to do.
    let again = w.node.json(&["reconcile"]);
    assert!(again["uplink"].is_null(), "{again}");
}

/// The cls_bpf filters on tc ingress of the uplink: (pref, program id).
fn uplink_filters(node: &TestNode) -> Vec<(u64, u64)> {
    let out = must(
        "tc",
        [
            "-n",
            node.netns.as_str(),
            "-j",
            "filter",
            "show",
            "dev",
            UPLINK,
            "ingress",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("tc JSON");
    v.as_array()
        .expect("filters")
        .iter()
        .filter_map(|f| {
            Some((
                f["pref"].as_u64()?,
                f.get("options")?["prog"]["id"].as_u64()?,
            ))
        })
        .collect()
}

#[test]
fn the_clsact_fallback_carries_egress_too() {
    // Kernels without TCX get a cls_bpf filter on the uplink; forced here.
    let node = TestNode::new();
    let out = node.outside();
    let run = |args: &[&str]| {
        let r = node
            .command(args)
            .env("VETHBPF_TEST_ATTACH_MODE", "netlink")
            .output()
            .expect("run vethbpf");
        assert!(
            r.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8_lossy(&r.stdout).into_owned()
    };
    run(&["up"]);
    node.add("a", &[]);
    let st = node.json(&["status"]);
    let prog = |st: &serde_json::Value| {
        st["programs"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "from_uplink"))
            .and_then(|p| p["id"].as_u64())
            .expect("from_uplink's id")
    };
    let first = prog(&st);
    assert_eq!(uplink_filters(&node), [(1, first)]);
    assert_eq!(node.ping_from_pod("a", SERVER_IP, 2), Some(63));
    let (port, server) = tcp_server(&out.path(), ip(SERVER_IP), 1);
    let dst = SocketAddrV4::new(ip(SERVER_IP), port);
    tcp_roundtrip(&netns(&node.pod("a")), dst, None, &pattern(1 << 20, 7));
    server.join().expect("server");

    // --replace swaps the filter's program in place: one filter, the new program.
    let replaced = run(&["up", "--replace"]);
    assert!(replaced.contains("program replaced"), "{replaced}");
    let second = prog(&node.json(&["status"]));
    assert_ne!(first, second);
    assert_eq!(uplink_filters(&node), [(1, second)]);
    assert_eq!(node.ping_from_pod("a", SERVER_IP, 1), Some(63));

    run(&["down"]);
    assert!(uplink_filters(&node).is_empty(), "down removed the filter");
}

#[test]
fn reconcile_from_kernel_rebuilds_the_egress_settings() {
    let w = World::new(
        &["--nat-max-flows", "5000", "--cluster-cidr", "10.0.0.0/8"],
        &["a"],
    );
    rebuilt_from_kernel(&w, SERVER_IP, &[]);
}

#[test]
fn reconcile_from_kernel_rebuilds_the_ipv6_egress_settings() {
    let w = World::new6(
        &[
            "--pod-cidr",
            POD_CIDR,
            "--pod-cidr",
            POD_CIDR6,
            "--nat-max-flows",
            "5000",
        ],
        &["a"],
        None,
    );
    rebuilt_from_kernel(
        &w,
        SERVER_IP6,
        &["--pod-cidr", POD_CIDR, "--pod-cidr", POD_CIDR6],
    );
    assert_eq!(w.node.ping_from_pod("a", SERVER_IP, 1), Some(63));
}

/// Loses the state file, rebuilds it with `reconcile --from-kernel` (and `args`),
/// and checks the egress settings came back as they were (both families), pod `a`
/// still reaching `server`, and the next `up` keeping them.
fn rebuilt_from_kernel(w: &World, server: &str, args: &[&str]) {
    let state_path = w.node.state.join("state.json");
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).expect("state")).expect("json");
    assert_eq!(good["node"]["egress"]["max_flows"], 5000, "{good}");
    std::fs::write(&state_path, b"lost").expect("corrupt the state");
    let mut reconcile = vec!["reconcile", "--from-kernel"];
    reconcile.extend_from_slice(args);
    w.node.ok(&reconcile);
    let now: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).expect("state")).expect("json");
    assert_eq!(
        now["node"]["egress"], good["node"]["egress"],
        "egress rebuilt from EGRESS and EGRESS6"
    );
    assert_eq!(w.node.ping_from_pod("a", server, 1), Some(63));
    // And kept by the next up.
    let mut up = vec!["up"];
    up.extend_from_slice(args);
    let again = w.node.ok(&up);
    assert!(again.contains("max 5000 flows"), "{again}");
}

// ---------------------------------------------------------------------------------
// IPv6 (issue 12): the same egress for IPv6 pods, masqueraded to the node's global
// IPv6 address on the uplink.

/// A UDP exchange of pod `pod` (from `port`, 0: any) with `server`: whether the
/// reply came back; the source the server saw.
fn udp_exchange(w: &World, pod: &str, port: u16, server: &UdpSocket) -> Option<SocketAddr> {
    let c = udp(&w.pod(pod), Ipv6Addr::UNSPECIFIED, port);
    c.send_to(pod.as_bytes(), server.local_addr().expect("addr"))
        .expect("send");
    let (m, from) = recv(server)?;
    assert_eq!(m, pod.as_bytes());
    server.send_to(&m, from).expect("echo");
    let (back, _) = recv(&c)?;
    assert_eq!(back, pod.as_bytes());
    Some(from)
}

#[test]
fn ipv6_only_pods_reach_the_outside_masqueraded() {
    let w = World::ipv6_only(&[], &["a", "b"], None);
    let st = w.status();
    let settings = &st["egress"]["settings"];
    assert_eq!(st["egress"]["enabled"], true, "{st}");
    assert_eq!(
        settings["uplink"], UPLINK,
        "found by the IPv6 default route"
    );
    assert_eq!(settings["ipv6"]["nat_addr"], UPLINK_NODE_IP6, "{st}");
    assert_eq!(settings["ipv6"]["cluster_cidr"], POD_CIDR6, "{st}");
    assert!(settings["nat_addr"].is_null(), "no IPv4 egress: {st}");
    let text = w.node.ok(&["status"]);
    assert!(text.contains(UPLINK_NODE_IP6), "{text}");
    assert_no_kernel_path(&w.node);

    // ping6: hop limit 64 from the server, minus the node's eBPF hop.
    for p in ["a", "b"] {
        assert_eq!(
            w.node.ping_from_pod(p, SERVER_IP6, 3),
            Some(63),
            "ping from {p}"
        );
    }
    // A few MiB over TCP, byte for byte; the server sees the node's IPv6 address.
    let (port, server) = tcp_server(&w.out.path(), ip6(SERVER_IP6), 2);
    let dst = SocketAddr::from((ip6(SERVER_IP6), port));
    tcp_roundtrip(&w.pod("a"), dst, None, &pattern(4 << 20, 1));
    tcp_roundtrip(&w.pod("b"), dst, None, &pattern(1 << 20, 2));
    for peer in server.join().expect("server") {
        assert_nat_addr6(peer, "TCP");
    }
    // UDP both ways.
    let server = udp(&w.out.path(), ip6(SERVER_IP6), 0);
    for p in ["a", "b"] {
        let from = udp_exchange(&w, p, 0, &server).expect("UDP both ways");
        assert_nat_addr6(from, "UDP");
    }
    for p in ["a", "b"] {
        let c = w.node.counters(p);
        assert!(packets(&c, &["masqueraded"]) > 0, "{p}: {c}");
        assert!(packets(&c, &["rev_nat"]) > 0, "{p}: {c}");
        assert_eq!(packets(&c, &["dropped"]), 0, "{p}: {c}");
    }
    let flows = w.flows();
    assert!(flows.iter().all(|f| f["family"] == "ipv6"), "{flows:?}");
    for proto in ["tcp", "udp", "icmpv6"] {
        assert!(
            flows.iter().any(|f| f["protocol"] == proto),
            "{proto}: {flows:?}"
        );
    }
    assert!(
        flows.iter().all(|f| f["node"]
            .as_str()
            .is_some_and(|n| n.starts_with(&format!("[{UPLINK_NODE_IP6}]:")))),
        "{flows:?}"
    );
    let text = w.node.ok(&["nat", "list"]);
    assert!(text.contains("icmpv6"), "{text}");
    assert_no_kernel_path(&w.node);
}

#[test]
fn dual_stack_pods_reach_the_outside_over_both_families() {
    let w = World::new6(
        &["--pod-cidr", POD_CIDR, "--pod-cidr", POD_CIDR6],
        &["a"],
        None,
    );
    let st = w.status();
    assert_eq!(st["egress"]["settings"]["nat_addr"], UPLINK_NODE_IP, "{st}");
    assert_eq!(
        st["egress"]["settings"]["ipv6"]["nat_addr"], UPLINK_NODE_IP6,
        "{st}"
    );
    assert_eq!(w.node.ping_from_pod("a", SERVER_IP, 2), Some(63));
    assert_eq!(w.node.ping_from_pod("a", SERVER_IP6, 2), Some(63));
    let (port, server) = tcp_server(&w.out.path(), ip(SERVER_IP), 1);
    tcp_roundtrip(
        &w.pod("a"),
        SocketAddrV4::new(ip(SERVER_IP), port),
        None,
        &pattern(1 << 20, 3),
    );
    let (port6, server6) = tcp_server(&w.out.path(), ip6(SERVER_IP6), 1);
    tcp_roundtrip(
        &w.pod("a"),
        SocketAddr::from((ip6(SERVER_IP6), port6)),
        None,
        &pattern(1 << 20, 4),
    );
    for peer in server.join().expect("server") {
        assert_nat_addr(peer, "TCP over IPv4");
    }
    for peer in server6.join().expect("server") {
        assert_nat_addr6(peer, "TCP over IPv6");
    }
    let families: BTreeSet<String> = w
        .flows()
        .iter()
        .filter_map(|f| f["family"].as_str().map(String::from))
        .collect();
    assert_eq!(
        families,
        ["ipv4", "ipv6"].map(String::from).into_iter().collect()
    );
    assert_no_kernel_path(&w.node);
}

#[test]
fn ipv6_two_pods_with_the_same_source_port_both_work_and_no_stranger_gets_in() {
    let w = World::ipv6_only(&[], &["a", "b"], None);
    let server = udp(&w.out.path(), ip6(SERVER_IP6), 0);
    let port = 61500;
    let seen_a = udp_exchange(&w, "a", port, &server).expect("a");
    let seen_b = udp_exchange(&w, "b", port, &server).expect("b");
    assert_nat_addr6(seen_a, "a");
    assert_nat_addr6(seen_b, "b");
    assert_eq!(seen_a.port(), port, "the first keeps its port");
    assert_ne!(seen_a, seen_b, "the second gets another");

    // A pod's open flow: packets to its NAT port from another port, or straight to
    // the pod's address, never reach it.
    let pod = udp(&w.pod("a"), Ipv6Addr::UNSPECIFIED, 61600);
    pod.set_read_timeout(Some(Duration::from_millis(800))).ok();
    pod.send_to(b"hi", server.local_addr().expect("addr"))
        .expect("send");
    let (_, seen) = recv(&server).expect("server");
    let other = udp(&w.out.path(), ip6(SERVER_IP6), 0);
    other.send_to(b"intruder", seen).expect("send");
    w.out.must(
        "ip",
        &["-6", "route", "add", POD_CIDR6, "via", UPLINK_NODE_IP6],
    );
    other
        .send_to(b"intruder", (w.pod_ip6("a"), 61600))
        .expect("send");
    while let Some((m, from)) = recv(&pod) {
        assert_ne!(m, b"intruder", "an unsolicited packet from {from}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.status()["egress"]["uplink_passed"].as_u64() < Some(1) {
        assert!(Instant::now() < deadline, "{}", w.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The real reply still arrives.
    server.send_to(b"reply", seen).expect("reply");
    assert_eq!(recv(&pod).expect("the reply").0, b"reply");
}

#[test]
fn ipv6_a_full_nat_table_drops_new_flows_until_flushed() {
    const MAX: u32 = 8;
    let w = World::ipv6_only(&["--nat-max-flows", &MAX.to_string()], &["a"], None);
    let server = udp(&w.out.path(), ip6(SERVER_IP6), 0);
    server.set_read_timeout(Some(Duration::from_secs(2))).ok();
    for i in 0..MAX {
        assert!(
            udp_exchange(&w, "a", 0, &server).is_some(),
            "flow {i} within the limit"
        );
    }
    assert!(
        udp_exchange(&w, "a", 0, &server).is_none(),
        "a flow beyond the limit"
    );
    let c = w.node.counters("a");
    assert!(packets(&c, &["drops", "nat_table_full"]) >= 1, "{c}");
    let st = w.status();
    assert_eq!(st["egress"]["table_full"], true, "{st}");
    let flushed = w.node.json(&["nat", "flush"]);
    assert_eq!(flushed["flushed_flows"], u64::from(MAX));
    assert_eq!(w.node.map_dump("NAT6").len(), 0);
    assert!(
        udp_exchange(&w, "a", 0, &server).is_some(),
        "a new flow after the flush"
    );
}

#[test]
fn ipv6_packet_too_big_and_time_exceeded_are_translated() {
    // As the IPv4 test: the router's side of the far link has MTU 1280 (IPv6's
    // minimum), the far server's 1500, the pod 1500; only the router's "packet too
    // big", translated back to the pod, lets its full-size segments through.
    let w = World::ipv6_only(&[], &["a"], Some(1280));
    assert_nat_addr6(
        send_checked(&w, "a", &w.out.far_path(), ip6(FAR_SERVER_IP6), 2 << 20),
        "far TCP",
    );
    let c = w.node.counters("a");
    assert!(
        packets(&c, &["rev_nat_icmp"]) >= 1,
        "packet too big translated: {c}"
    );
    let cached = w
        .node
        .in_pod("a", "ip", &["-6", "route", "get", FAR_SERVER_IP6]);
    let text = String::from_utf8_lossy(&cached.stdout);
    assert!(
        text.contains("mtu 1280"),
        "the pod learnt the path MTU: {text}"
    );

    // A hop-limited probe gets the router's time exceeded, translated.
    let before = packets(&w.node.counters("a"), &["rev_nat_icmp"]);
    let out = w.node.in_pod(
        "a",
        "ping",
        &["-6", "-c", "1", "-t", "2", "-W", "2", FAR_SERVER_IP6],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("From {ROUTER_IP6}")) && text.contains("Time exceeded"),
        "{text}"
    );
    assert!(packets(&w.node.counters("a"), &["rev_nat_icmp"]) > before);
    assert_no_kernel_path(&w.node);
}

#[test]
fn ipv6_a_packet_too_big_for_the_uplink_gets_the_gateways_packet_too_big() {
    // The IPv6 twin of the IPv4 test: the uplink link has MTU 1400 on both ends, the
    // pod 1500, the server advertises MSS 1440 anyway (advmss), so only the gateway's
    // "packet too big" shrinks the pod's segments (IPv6 routers never fragment).
    let w = World::ipv6_only(&[], &["a"], None);
    w.node
        .node_must("ip", &["link", "set", UPLINK, "mtu", "1400"]);
    w.out.must("ip", &["link", "set", "eth0", "mtu", "1400"]);
    w.out.must(
        "ip",
        &[
            "-6",
            "route",
            "replace",
            "2001:db8:30::/64",
            "dev",
            "eth0",
            "metric",
            "256",
            "advmss",
            "1440",
        ],
    );
    let peer = send_checked(&w, "a", &w.out.path(), ip6(SERVER_IP6), 2 << 20);
    assert_nat_addr6(peer, "TCP through the smaller uplink");
    let c = w.node.counters("a");
    assert!(packets(&c, &["drops", "drop_too_big"]) >= 1, "{c}");
    let cached = w
        .node
        .in_pod("a", "ip", &["-6", "route", "get", SERVER_IP6]);
    let text = String::from_utf8_lossy(&cached.stdout);
    assert!(
        text.contains("mtu 1400"),
        "the pod learnt the uplink's MTU: {text}"
    );

    // Hop limit 1 ends at the gateway, which says so (the first hop of a traceroute).
    let out = w.node.in_pod(
        "a",
        "ping",
        &["-6", "-c", "1", "-t", "1", "-W", "2", SERVER_IP6],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("From fe80::ecee:eeff:feee:eeee") && text.contains("Time exceeded"),
        "{text}"
    );
    assert_no_kernel_path(&w.node);
}

#[test]
fn ipv6_endpoint_del_removes_its_flows_and_down_leaves_nothing() {
    let w = World::ipv6_only(&[], &["a", "b"], None);
    let a_ip = w.pod_ip6("a");
    for p in ["a", "b"] {
        assert!(w.node.ping_from_pod(p, SERVER_IP6, 1).is_some());
    }
    let of_a = |f: &serde_json::Value| {
        f["pod"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("[{a_ip}]:")))
    };
    assert!(w.flows().iter().any(of_a));
    w.node.ok(&["endpoint", "del", &w.node.pod("a")]);
    let flows = w.flows();
    assert!(!flows.iter().any(of_a), "{flows:?}");
    assert!(!flows.is_empty(), "b's flows stay");
    assert_eq!(
        w.node.map_dump("NAT6").len(),
        2 * flows.len(),
        "both halves of b's flows only"
    );
    let before = uplink_state(&w.node);
    w.node.ok(&["endpoint", "del", &w.node.pod("b")]);
    w.node.ok(&["down"]);
    assert!(!w.node.bpffs.join("maps").join("NAT6").exists());
    assert!(!w.node.bpffs.join("progs").exists());
    let (filters, net, _) = uplink_state(&w.node);
    assert!(!net.contains("from_uplink"), "{net}");
    assert_eq!(filters, before.0);
    assert_no_kernel_path(&w.node);
}

#[test]
fn ipv6_without_masquerade_pods_go_out_with_their_own_address() {
    let w = World::ipv6_only(&["--no-masquerade"], &["a"], None);
    // The network routes the pod CIDR to the node.
    w.out.must(
        "ip",
        &["-6", "route", "add", POD_CIDR6, "via", UPLINK_NODE_IP6],
    );
    let pod_ip = w.pod_ip6("a");
    assert_eq!(w.node.ping_from_pod("a", SERVER_IP6, 2), Some(63));
    let server = udp(&w.out.path(), ip6(SERVER_IP6), 0);
    let from = udp_exchange(&w, "a", 0, &server).expect("UDP both ways");
    assert_eq!(from.ip(), IpAddr::V6(pod_ip), "the pod's own address");
    let c = w.node.counters("a");
    assert!(packets(&c, &["egress"]) > 0, "{c}");
    assert_eq!(packets(&c, &["masqueraded"]), 0, "{c}");
    assert!(packets(&c, &["rev_nat"]) > 0, "{c}");
    assert_no_kernel_path(&w.node);
}
