//! `vethbpf monitor` in real namespaces: the drops a pod causes come out with their
//! reasons, endpoint names and addresses, and nothing else; a TCP flow between two
//! pods is traced once, not per packet; a monitor stopped with SIGSTOP while a pod
//! floods finds the ring overflowed and reports the loss while the datapath keeps
//! forwarding; the program's aya-log diagnostics come out with `--log`; Ctrl-C (or
//! a SIGKILL) leaves no listener behind. Needs root.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use vethbpf_tests::packet::{PacketSocket, ipv4_udp_frame};
use vethbpf_tests::{TestNode, eth, packets, parse_mac, tcp_echo};

const GW_MAC: [u8; 6] = [0xee; 6];

/// A pod as `endpoint add -o json` describes it.
struct Pod {
    name: String,
    ip: Ipv4Addr,
    mac: [u8; 6],
    netns: PathBuf,
    host_veth: String,
}

fn add_pod(node: &TestNode, short: &str) -> Pod {
    let v = node.add(short, &[]);
    Pod {
        name: v["name"].as_str().expect("name").to_string(),
        ip: v["ip"].as_str().expect("ip").parse().expect("ip"),
        mac: parse_mac(v["pod_mac"].as_str().expect("pod_mac")),
        netns: PathBuf::from(v["netns"].as_str().expect("netns")),
        host_veth: v["host_veth"].as_str().expect("host_veth").to_string(),
    }
}

/// `vethbpf monitor ARGS` running in the background, its stdout collected by line.
struct Monitor {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Starts the monitor and waits until it listens (its metrics say so).
    fn start(node: &TestNode, args: &[&str]) -> Monitor {
        let mut full = vec!["monitor"];
        full.extend_from_slice(args);
        let mut child = node
            .command(&full)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vethbpf monitor");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines").push(line);
            }
        });
        let m = Monitor {
            child: Some(child),
            lines,
            reader: Some(reader),
        };
        wait_until(Duration::from_secs(10), "the monitor listens", || {
            listening(node)
        });
        m
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child, by pid.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// The lines printed so far.
    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Ctrl-C: SIGINT, then the exit status and every line it printed.
    fn interrupt(mut self) -> (std::process::ExitStatus, Vec<String>) {
        self.signal(libc::SIGINT);
        let status = self.wait();
        (status, self.lines())
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("the monitor did not stop within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            r.join().expect("reader");
        }
        status
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of an unlabelled metric in `vethbpf metrics`.
fn metric(node: &TestNode, name: &str) -> f64 {
    let text = node.ok(&["metrics"]);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .expect("a number")
}

fn listening(node: &TestNode) -> bool {
    metric(node, "vethbpf_monitor_listening") == 1.0
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// A gratuitous ARP reply from `pod` claiming `claimed` (the gateway's address, say).
fn arp_claim(pod: &Pod, claimed: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 2];
    a.extend_from_slice(&pod.mac);
    a.extend_from_slice(&claimed.octets());
    a.extend_from_slice(&[0xff; 6]);
    a.extend_from_slice(&claimed.octets());
    eth([0xff; 6], pod.mac, 0x0806, &a)
}

#[test]
fn monitor_shows_exactly_the_drops_with_reasons_names_and_addresses() {
    let node = TestNode::up();
    let a = add_pod(&node, "a");
    let b = add_pod(&node, "b");
    let c = add_pod(&node, "c");
    node.ok(&["endpoint", "del", &c.name]);
    let spoofed_src = Ipv4Addr::new(10, 244, 0, 99);
    let gateway = Ipv4Addr::new(169, 254, 1, 1);

    let monitor = Monitor::start(&node, &["-o", "json", "--type", "drop"]);
    // One monitor at a time: a second one is refused (a conflict) and changes nothing.
    let second = node.vethbpf(&["monitor"]);
    assert_eq!(second.status.code(), Some(5), "a second monitor is refused");
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another vethbpf monitor"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(listening(&node));

    // Pod a: a spoofed packet, an ARP claim for the gateway, traffic to the deleted c;
    // and some ordinary traffic to b, which must not show up as a drop.
    let frames = vec![
        ipv4_udp_frame(GW_MAC, a.mac, spoofed_src, b.ip, b"spoof"),
        arp_claim(&a, gateway),
        ipv4_udp_frame(GW_MAC, a.mac, a.ip, c.ip, b"to the deleted pod"),
    ];
    let socket = PacketSocket::open(&a.netns, "eth0", false);
    for f in &frames {
        socket.send(f);
    }
    assert_eq!(node.ping_from_pod("a", &b.ip.to_string(), 3), Some(63));
    // The ring is read every 200 ms at most.
    wait_until(Duration::from_secs(5), "three drops are printed", || {
        monitor.lines().len() >= 3
    });
    std::thread::sleep(Duration::from_millis(500));
    let (status, lines) = monitor.interrupt();
    assert!(
        status.success(),
        "Ctrl-C ends the monitor cleanly: {status}"
    );
    let records = json_lines(&lines);
    assert_eq!(records.len(), 3, "exactly the three drops:\n{lines:#?}");
    for r in &records {
        assert_eq!(r["type"], "drop", "{r}");
        assert_eq!(r["endpoint"], a.name.as_str(), "{r}");
        assert_eq!(r["interface"], a.host_veth.as_str(), "{r}");
        assert!(!r["reason"].as_str().unwrap_or("").is_empty(), "{r}");
        assert!(r["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
    }
    let spoof = &records[0];
    assert_eq!(spoof["verdict"], "drop_spoof");
    assert_eq!(spoof["reason"], "source address is not the pod's");
    assert_eq!(spoof["packet"]["src"], spoofed_src.to_string());
    assert_eq!(spoof["packet"]["dst"], b.ip.to_string());
    assert_eq!(spoof["packet"]["protocol"], "udp");
    assert_eq!(spoof["packet"]["sport"], 40000);
    assert_eq!(spoof["packet"]["dport"], 9);
    assert_eq!(spoof["destination_endpoint"], b.name.as_str());
    assert_eq!(spoof["len"], frames[0].len());
    let claim = &records[1];
    assert_eq!(claim["verdict"], "drop_arp_spoof");
    assert_eq!(claim["packet"]["arp"]["op"], "reply");
    assert_eq!(claim["packet"]["arp"]["sender_ip"], gateway.to_string());
    assert_eq!(
        claim["packet"]["arp"]["sender_mac"],
        vethbpf::state::ident::MacAddr(a.mac).to_string()
    );
    let gone = &records[2];
    assert_eq!(gone["verdict"], "drop_unknown_destination");
    assert_eq!(gone["packet"]["src"], a.ip.to_string());
    assert_eq!(gone["packet"]["dst"], c.ip.to_string());
    assert_eq!(gone["destination_endpoint"], Value::Null, "c is gone");
    // The counters agree.
    let counters = node.counters("a");
    for v in ["drop_spoof", "drop_arp_spoof", "drop_unknown_destination"] {
        assert_eq!(packets(&counters, &["drops", v]), 1, "{v}: {counters}");
    }

    // Nothing is left listening: the datapath emits nothing, a new monitor may start.
    assert!(!listening(&node), "Ctrl-C clears the listener entry");
    let monitor = Monitor::start(&node, &["--type", "drop"]);
    let spoof = ipv4_udp_frame(GW_MAC, a.mac, spoofed_src, b.ip, b"x");
    socket.send(&spoof);
    wait_until(Duration::from_secs(5), "a line is printed", || {
        !monitor.lines().is_empty()
    });
    let (status, lines) = monitor.interrupt();
    assert!(status.success());
    // For people: time, endpoint, verdict, reason in words, addresses and ports.
    let line = &lines[0];
    for part in [
        "drop ",
        a.name.as_str(),
        "drop_spoof (source address is not the pod's)",
        &format!("UDP {spoofed_src}:40000 -> {}:9", b.ip),
    ] {
        assert!(line.contains(part), "{part:?} in {line:?}");
    }
}

#[test]
fn a_tcp_flow_between_pods_is_traced_once_not_per_packet() {
    let node = TestNode::up();
    let a = add_pod(&node, "a");
    let b = add_pod(&node, "b");
    let before = packets(&node.counters("a"), &["forwarded"]);
    let monitor = Monitor::start(
        &node,
        &["-o", "json", "--type", "trace", "--endpoint", &b.name],
    );
    tcp_echo(&b.netns, b.ip, &a.netns, 1 << 20);
    std::thread::sleep(Duration::from_millis(600));
    let (status, lines) = monitor.interrupt();
    assert!(status.success());
    let forwarded = packets(&node.counters("a"), &["forwarded"]) - before;
    let records = json_lines(&lines);
    let flow: Vec<&Value> = records
        .iter()
        .filter(|r| r["packet"]["protocol"] == "tcp")
        .collect();
    println!(
        "1 MiB echoed: a forwarded {forwarded} packets; {} trace events for the flow:",
        flow.len()
    );
    for r in &flow {
        println!(
            "  {} -> {} [{}]",
            r["endpoint"], r["destination_endpoint"], r["packet"]["tcp_flags"]
        );
    }
    assert!(forwarded > 100, "a real stream: {forwarded} packets");
    for r in &flow {
        assert_eq!(r["type"], "trace");
        assert_eq!(r["verdict"], "forward");
    }
    let a_to_b: Vec<&&Value> = flow
        .iter()
        .filter(|r| r["endpoint"] == a.name.as_str())
        .collect();
    let b_to_a: Vec<&&Value> = flow
        .iter()
        .filter(|r| r["endpoint"] == b.name.as_str())
        .collect();
    assert_eq!(a_to_b.len() + b_to_a.len(), flow.len());
    // The first packet of each direction: the SYN, and the SYN-ACK.
    assert_eq!(a_to_b[0]["packet"]["tcp_flags"], "SYN");
    assert_eq!(a_to_b[0]["destination_endpoint"], b.name.as_str());
    assert_eq!(a_to_b[0]["packet"]["src"], a.ip.to_string());
    assert_eq!(a_to_b[0]["packet"]["dst"], b.ip.to_string());
    assert_eq!(b_to_a[0]["packet"]["tcp_flags"], "SYN,ACK");
    // After that only a new flag (FIN, RST) makes an event: at most two per direction.
    for dir in [&a_to_b, &b_to_a] {
        assert!(dir.len() <= 2, "{dir:?}");
        for r in dir.iter().skip(1) {
            let flags = r["packet"]["tcp_flags"].as_str().unwrap_or("");
            assert!(flags.contains("FIN") || flags.contains("RST"), "{r}");
        }
    }
}

#[test]
fn an_overflowing_ring_reports_lost_events_and_the_datapath_keeps_forwarding() {
    let node = TestNode::up();
    let a = add_pod(&node, "a");
    let b = add_pod(&node, "b");
    let before = packets(&node.counters("a"), &["drops", "drop_spoof"]);
    let monitor = Monitor::start(&node, &["-o", "json", "--type", "drop"]);
    monitor.signal(libc::SIGSTOP);
    // Spoofed frames, each a drop event, far more than the ring holds (~3,000),
    // sent within the monitor's lease (10 s).
    let frame = ipv4_udp_frame(GW_MAC, a.mac, Ipv4Addr::new(10, 244, 0, 99), b.ip, b"flood");
    let frames = vec![frame; 20_000];
    let start = Instant::now();
    let socket = PacketSocket::open(&a.netns, "eth0", false);
    for f in &frames {
        socket.send(f);
    }
    let sent = frames.len() as u64;
    let took = start.elapsed();
    // Forwarding goes on while the monitor sleeps and its ring is full.
    assert_eq!(node.ping_from_pod("a", &b.ip.to_string(), 3), Some(63));
    assert_eq!(node.ping_from_pod("b", &a.ip.to_string(), 3), Some(63));
    monitor.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(1500));
    let (status, lines) = monitor.interrupt();
    assert!(status.success());
    let dropped = packets(&node.counters("a"), &["drops", "drop_spoof"]) - before;
    let records = json_lines(&lines);
    let events = of_type(&records, "drop").len() as u64;
    let lost: Vec<&Value> = of_type(&records, "lost");
    let lost_total = lost
        .last()
        .and_then(|r| r["lost_total"].as_u64())
        .unwrap_or(0);
    println!(
        "{sent} spoofed frames in {took:?}; {dropped} drops counted; the stopped monitor \
         then printed {events} events and reported {lost_total} lost"
    );
    assert!(took < Duration::from_secs(8), "the flood fits in the lease");
    assert_eq!(dropped, sent, "every frame dropped and counted");
    assert!(
        !lost.is_empty(),
        "the loss is reported:\n{:#?}",
        &lines[lines.len().saturating_sub(3)..]
    );
    assert!(
        events > 1000,
        "the ring's worth of events came out: {events}"
    );
    assert_eq!(
        events + lost_total,
        dropped,
        "each drop is an event or counted lost"
    );
    let sum: u64 = lost.iter().filter_map(|r| r["lost"].as_u64()).sum();
    assert_eq!(sum, lost_total, "the reports are deltas");
}

#[test]
fn diagnostics_come_out_with_log_and_a_killed_monitor_leaves_no_listener() {
    let node = TestNode::up();
    let a = add_pod(&node, "a");
    let b = add_pod(&node, "b");
    let monitor = Monitor::start(&node, &["-o", "json", "--log"]);
    // A hand in the kernel: a's ENDPOINTS entry and its slot removed. Its frames are
    // then dropped (drop_no_endpoint) and the program logs why.
    let link: Value =
        serde_json::from_str(&node.node_must("ip", &["-j", "link", "show", &a.host_veth]))
            .expect("ip -j");
    let ifindex = link[0]["ifindex"].as_u64().expect("ifindex") as u32;
    node.map_op("delete", "ENDPOINTS", ifindex, None);
    let id = node
        .json(&["endpoint", "list"])
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["name"] == a.name.as_str())
        .and_then(|e| e["id"].as_u64())
        .expect("a's id") as u32;
    node.map_op(
        "update",
        "ENDPOINT_SLOTS",
        id,
        Some(&vec!["0".to_string(); 20]),
    );
    let frame = ipv4_udp_frame(GW_MAC, a.mac, a.ip, b.ip, b"x");
    PacketSocket::open(&a.netns, "eth0", false).send(&frame);
    wait_until(Duration::from_secs(5), "a drop and a log line", || {
        let records = json_lines(&monitor.lines());
        !of_type(&records, "log").is_empty() && !of_type(&records, "drop").is_empty()
    });
    let records = json_lines(&monitor.lines());
    let log = of_type(&records, "log")[0];
    assert_eq!(log["level"], "warn");
    assert_eq!(
        log["message"],
        format!("ifindex {ifindex} has no ENDPOINTS entry: frame dropped (drop_no_endpoint)")
    );
    let drop = of_type(&records, "drop")[0];
    assert_eq!(drop["verdict"], "drop_no_endpoint");
    assert_eq!(drop["endpoint_id"], 0);
    // Named by its interface, which is still a's.
    assert_eq!(drop["endpoint"], a.name.as_str());
    node.ok(&["reconcile"]);
    assert_eq!(node.ping_from_pod("a", &b.ip.to_string(), 1), Some(63));

    // SIGKILL: no chance to clear the entry. Nobody listens any more, and the next
    // monitor takes over at once.
    monitor.signal(libc::SIGKILL);
    drop_monitor(monitor);
    assert!(!listening(&node), "a dead monitor is not listening");
    let next = Monitor::start(&node, &["--type", "drop"]);
    let (status, _) = next.interrupt();
    assert!(status.success());
    assert!(!listening(&node));
}

fn drop_monitor(mut m: Monitor) {
    let _ = m.wait();
}

#[test]
fn node_keeps_the_events_of_one_remote_node() {
    use vethbpf_tests::cluster::Cluster;
    let c = Cluster::new(3);
    for i in 0..3 {
        c.up(i, "vxlan");
    }
    c.connect_static();
    let ip = |i: usize, pod: &str| -> String {
        c.nodes[i].add(pod, &[])["ip"]
            .as_str()
            .expect("ip")
            .to_string()
    };
    ip(0, "a");
    let (b, d) = (ip(1, "b"), ip(2, "d"));
    let node = &c.nodes[0];
    // A node this one does not know: refused, naming it.
    let out = node.vethbpf(&["monitor", "--node", "nosuchnode"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no remote node named nosuchnode"));

    let monitor = Monitor::start(node, &["-o", "json", "--type", "trace", "--node", "node1"]);
    assert_eq!(node.ping_from_pod("a", &b, 2), Some(62));
    assert_eq!(node.ping_from_pod("a", &d, 2), Some(62));
    wait_until(Duration::from_secs(5), "both directions traced", || {
        monitor.lines().len() >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let (status, lines) = monitor.interrupt();
    assert!(status.success());
    let records = json_lines(&lines);
    // node1's pod only: out (to_node, from a's veth) and back (from_node, from the
    // tunnel), each the first packet of its flow.
    let verdicts: Vec<&str> = records
        .iter()
        .map(|r| r["verdict"].as_str().expect("verdict"))
        .collect();
    assert_eq!(verdicts, ["to_node", "from_node"], "{lines:#?}");
    for r in &records {
        assert_eq!(r["node"], "node1", "{r}");
        assert!(
            r["packet"]["src"] == b.as_str() || r["packet"]["dst"] == b.as_str(),
            "{r}"
        );
    }
    assert_eq!(records[0]["endpoint"], node.pod("a").as_str());
    assert_eq!(records[1]["destination_endpoint"], node.pod("a").as_str());
    // The way out is seen wrapped (the event is taken after from_pod): the pods'
    // packet, with the outer headers to node1 beside it.
    let tunnel = &records[0]["packet"]["tunnel"];
    assert_eq!(tunnel["dst"], Cluster::node_ip(1).as_str(), "{tunnel}");
    assert_eq!(tunnel["src"], Cluster::node_ip(0).as_str(), "{tunnel}");
}

/// `--node` on a dual-stack cluster: IPv6 packets of that node's pods are its
/// events too.
#[test]
fn node_keeps_the_ipv6_events_of_one_remote_node() {
    use vethbpf_tests::cluster::Cluster;
    let c = Cluster::new(3);
    for i in 0..3 {
        c.up_dual(i, "vxlan");
    }
    c.connect_static_dual();
    let ip6 = |i: usize, pod: &str| {
        c.nodes[i].add(pod, &[])["ip6"]
            .as_str()
            .expect("ip6")
            .to_string()
    };
    ip6(0, "a");
    let (b, d) = (ip6(1, "b"), ip6(2, "d"));
    let node = &c.nodes[0];
    let monitor = Monitor::start(node, &["-o", "json", "--type", "trace", "--node", "node1"]);
    assert_eq!(node.ping_from_pod("a", &b, 2), Some(62));
    assert_eq!(node.ping_from_pod("a", &d, 2), Some(62));
    wait_until(Duration::from_secs(5), "both directions traced", || {
        monitor.lines().len() >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let (status, lines) = monitor.interrupt();
    assert!(status.success());
    let records = json_lines(&lines);
    let verdicts: Vec<&str> = records
        .iter()
        .map(|r| r["verdict"].as_str().expect("verdict"))
        .collect();
    assert_eq!(verdicts, ["to_node", "from_node"], "{lines:#?}");
    for r in &records {
        assert_eq!(r["node"], "node1", "{r}");
        assert!(
            r["packet"]["src"] == b.as_str() || r["packet"]["dst"] == b.as_str(),
            "{r}"
        );
    }
}

#[test]
fn a_full_nat_table_is_logged_and_each_refused_flow_is_a_drop() {
    let node = TestNode::new();
    let _outside = node.outside();
    node.ok(&["up", "--nat-max-flows", "3"]);
    let a = add_pod(&node, "a");
    let monitor = Monitor::start(&node, &["-o", "json", "--type", "drop", "--log"]);
    // Four UDP flows to a server outside (nothing needs to answer): a new source port
    // each. The fourth finds the table at its limit.
    let server: std::net::SocketAddr = format!("{}:9", vethbpf_tests::SERVER_IP)
        .parse()
        .expect("address");
    for _ in 0..4 {
        let socket =
            vethbpf::kernel::netns::run_in(&a.netns, || std::net::UdpSocket::bind("0.0.0.0:0"))
                .expect("enter a")
                .expect("bind");
        socket.send_to(b"x", server).expect("send");
    }
    wait_until(Duration::from_secs(5), "a drop and a log line", || {
        let records = json_lines(&monitor.lines());
        !of_type(&records, "log").is_empty() && !of_type(&records, "drop").is_empty()
    });
    let (status, lines) = monitor.interrupt();
    assert!(status.success());
    let records = json_lines(&lines);
    let drops = of_type(&records, "drop");
    assert_eq!(drops.len(), 1, "{lines:#?}");
    assert_eq!(drops[0]["verdict"], "nat_table_full");
    assert_eq!(drops[0]["endpoint"], a.name.as_str());
    assert_eq!(drops[0]["packet"]["dst"], vethbpf_tests::SERVER_IP);
    let logs = of_type(&records, "log");
    assert_eq!(
        logs[0]["message"],
        "the NAT table is full (3 flows): new flow refused (nat_table_full)"
    );
}
