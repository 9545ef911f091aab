//! `vethbpf metrics` in real namespaces: the text passes `promtool check metrics`,
//! its counters equal `endpoint list`'s after traffic, `--listen` serves the same
//! over HTTP, a nearly full map shows its fill; and the counters count what the
//! wire carries: a 64 KiB GSO send as its segments. Needs root.
//!
//! promtool comes from `cargo xtask test` (VETHBPF_PROMTOOL, taken out of Debian's
//! prometheus package) or the PATH; without it the tests fail.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData};
use serde_json::Value;
use vethbpf_common::{ROUTE_KIND_LOCAL, Route, ipv4_to_map};
use vethbpf_tests::packet::{PacketSocket, ipv4_udp_frame};
use vethbpf_tests::{TestNode, must, no_ipv6, parse_mac};

fn promtool() -> PathBuf {
    let p = std::env::var_os("VETHBPF_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("promtool"));
    let ok = Command::new(&p)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "promtool not found ({}): run the tests with `cargo xtask test`, which fetches it",
        p.display()
    );
    p
}

/// `promtool check metrics` on `text`: its verdict and what it said.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Samples of the text: "name{labels}" -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample {l}"));
            (
                k.to_string(),
                v.parse().unwrap_or_else(|_| panic!("value {l}")),
            )
        })
        .collect()
}

fn sample(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:#?}", s.keys().collect::<Vec<_>>()))
}

#[test]
fn metrics_pass_promtool_and_equal_endpoint_list_after_traffic() {
    let node = TestNode::up();
    let a = node.add("a", &[]);
    let b = node.add("b", &[]);
    for pod in [&a, &b] {
        no_ipv6(Path::new(pod["netns"].as_str().expect("netns")));
    }
    let b_ip = b["ip"].as_str().expect("ip");
    assert_eq!(node.ping_from_pod("a", b_ip, 3), Some(63));
    assert_eq!(node.ping_from_pod("b", "169.254.1.1", 2), Some(64));
    // A spoofed packet, so a drop reason has a count.
    let a_mac = parse_mac(a["pod_mac"].as_str().expect("mac"));
    let spoof = ipv4_udp_frame(
        [0xee; 6],
        a_mac,
        Ipv4Addr::new(10, 244, 0, 99),
        b_ip.parse().expect("ip"),
        b"x",
    );
    let a_netns = PathBuf::from(a["netns"].as_str().expect("netns"));
    PacketSocket::open(&a_netns, "eth0", false).send(&spoof);

    let text = node.ok(&["metrics"]);
    let (ok, said) = promtool_check(&text);
    assert!(ok, "promtool check metrics: {said}\n{text}");
    // promtool's lints say nothing either (it prints each finding).
    assert!(said.trim().is_empty(), "promtool found: {said}");
    for needed in [
        "# TYPE vethbpf_packets_total counter",
        "# TYPE vethbpf_bytes_total counter",
        "# TYPE vethbpf_drops_total counter",
        "# TYPE vethbpf_map_entries gauge",
        "# TYPE vethbpf_map_max_entries gauge",
        "# TYPE vethbpf_events_lost_total counter",
        "# TYPE vethbpf_program_info gauge",
    ] {
        assert!(text.contains(needed), "{needed} in\n{text}");
    }

    // Every endpoint's counters as endpoint list shows them, verdict by verdict.
    let s = samples(&text);
    let list = node.json(&["endpoint", "list"]);
    let mut checked = 0;
    for ep in list.as_array().expect("list") {
        let name = ep["name"].as_str().expect("name");
        let c = &ep["counters"];
        let mut views: Vec<(&str, &Value)> = vec![
            ("forward", &c["forwarded"]),
            ("arp_reply", &c["arp_replies"]),
            ("pass", &c["passed"]),
            ("echo_reply", &c["echo_replies"]),
            ("na_reply", &c["na_replies"]),
            ("masquerade", &c["masqueraded"]),
            ("egress", &c["egress"]),
            ("rev_nat", &c["rev_nat"]),
            ("rev_nat_icmp", &c["rev_nat_icmp"]),
            ("to_node", &c["to_nodes"]),
            ("from_node", &c["from_nodes"]),
        ];
        for (k, v) in c["drops"].as_object().expect("drops") {
            views.push((k.as_str(), v));
        }
        // Every verdict but uplink_pass (the node's own traffic, never a pod's).
        assert_eq!(views.len(), vethbpf_common::Verdict::COUNT as usize - 1);
        for (verdict, v) in views {
            let labels = format!("{{endpoint=\"{name}\",verdict=\"{verdict}\"}}");
            assert_eq!(
                sample(&s, &format!("vethbpf_packets_total{labels}")),
                v["packets"].as_u64().expect("packets") as f64,
                "{name} {verdict}"
            );
            assert_eq!(
                sample(&s, &format!("vethbpf_bytes_total{labels}")),
                v["bytes"].as_u64().expect("bytes") as f64,
                "{name} {verdict}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * (vethbpf_common::Verdict::COUNT - 1));
    let a_name = a["name"].as_str().expect("name");
    assert!(
        sample(
            &s,
            &format!("vethbpf_packets_total{{endpoint=\"{a_name}\",verdict=\"forward\"}}")
        ) >= 3.0
    );
    assert_eq!(
        sample(&s, "vethbpf_drops_total{reason=\"drop_spoof\"}"),
        1.0
    );
    assert_eq!(sample(&s, "vethbpf_endpoints"), 2.0);
    // Two /32s and the pod CIDR's own entry.
    assert_eq!(
        sample(&s, "vethbpf_map_entries{map=\"ROUTES\",kind=\"lpm_trie\"}"),
        3.0
    );
    assert_eq!(
        sample(&s, "vethbpf_map_entries{map=\"ENDPOINTS\",kind=\"hash\"}"),
        2.0
    );
    assert_eq!(
        sample(
            &s,
            "vethbpf_program_attachments{program=\"from_pod\",mode=\"tc\"}"
        ),
        2.0
    );
    assert_eq!(sample(&s, "vethbpf_monitor_listening"), 0.0);
    let status = node.json(&["status"]);
    let id = status["programs"][0]["id"].as_u64().expect("program id");
    assert!(
        s.keys()
            .any(|k| k.starts_with("vethbpf_program_info{") && k.contains(&format!("id=\"{id}\""))),
        "program id {id} in {text}"
    );
    // Every map the object defines has its capacity.
    for m in status["maps"].as_array().expect("maps") {
        let name = m["name"].as_str().expect("name");
        assert!(
            s.keys()
                .any(|k| k.starts_with(&format!("vethbpf_map_max_entries{{map=\"{name}\""))),
            "{name}"
        );
    }
    // The attachments are read from the kernel: a filter deleted by hand is one
    // attachment fewer, until reconcile puts it back.
    let a_host = a["host_veth"].as_str().expect("host_veth");
    node.node_must("tc", &["filter", "del", "dev", a_host, "ingress"]);
    let attached = || {
        sample(
            &samples(&node.ok(&["metrics"])),
            "vethbpf_program_attachments{program=\"from_pod\",mode=\"tc\"}",
        )
    };
    assert_eq!(attached(), 1.0);
    node.ok(&["reconcile"]);
    assert_eq!(attached(), 2.0);
}

#[test]
fn listen_serves_the_same_over_http_and_a_nearly_full_map_shows() {
    let node = TestNode::up();
    let a = node.add("a", &[]);
    no_ipv6(Path::new(a["netns"].as_str().expect("netns")));
    let mut server = node
        .command(&["metrics", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn metrics --listen");
    // "serving http://127.0.0.1:PORT/metrics (Ctrl-C to stop)"
    let mut stderr = server.stderr.take().expect("stderr");
    let mut said = Vec::new();
    let mut byte = [0u8; 1];
    while !said.ends_with(b"\n") && stderr.read(&mut byte).unwrap_or(0) == 1 {
        said.push(byte[0]);
    }
    let said = String::from_utf8_lossy(&said).to_string();
    let url = said
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {said:?}"))
        .to_string();
    let curl = |url: &str| {
        let out = node.in_node("curl", &["-sS", "-i", url]);
        assert!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
    };
    let got = curl(&url);
    let (head, body) = got.split_once("\n\n").expect("HTTP head and body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(
        body,
        node.ok(&["metrics"]),
        "the same text as `vethbpf metrics`"
    );
    let (ok, said) = promtool_check(body);
    assert!(ok, "{said}");
    let missing = curl(&url.replace("/metrics", "/nothing"));
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

    // Fill ROUTES to 16,000 of its 16,384 entries by hand (addresses outside the
    // pod CIDR, nothing routes to them): the next scrape shows it.
    let path = node.bpffs.join("maps").join("ROUTES");
    let mut routes: LpmTrie<MapData, u32, Route> =
        Map::LpmTrie(MapData::from_pin(&path).expect("open ROUTES"))
            .try_into()
            .expect("LPM trie");
    let route = Route {
        kind: ROUTE_KIND_LOCAL,
        ifindex: 0,
        endpoint_id: 0,
        mac: [0; 6],
        _pad: [0; 2],
    };
    let start = Instant::now();
    for i in 0..16_000u32 {
        let ip = Ipv4Addr::from(0xc633_0000 | i); // 198.51.0.0/16 and up
        routes
            .insert(&Key::new(32, ipv4_to_map(ip.octets())), route, 0)
            .expect("insert");
    }
    println!("16,000 routes in {:?}", start.elapsed());
    let s = samples(curl(&url).split_once("\n\n").expect("body").1);
    let key = "{map=\"ROUTES\",kind=\"lpm_trie\"}";
    let entries = sample(&s, &format!("vethbpf_map_entries{key}"));
    let max = sample(&s, &format!("vethbpf_map_max_entries{key}"));
    // 16,000 + a's /32 + the pod CIDR's entry.
    assert_eq!((entries, max), (16_002.0, 16_384.0));
    assert!(entries / max > 0.97);

    // Ctrl-C stops it.
    // SAFETY: a signal to our own child, by pid.
    assert_eq!(unsafe { libc::kill(server.id() as i32, libc::SIGINT) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the server did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// `/proc/net/snmp` of a namespace: "Proto:Field" -> value.
fn snmp(netns: &Path) -> BTreeMap<String, i64> {
    let text = must(
        "nsenter",
        [
            format!("--net={}", netns.display()).as_str(),
            "cat",
            "/proc/net/snmp",
        ],
    );
    let lines: Vec<&str> = text.lines().collect();
    let mut out = BTreeMap::new();
    for pair in lines.chunks(2) {
        let (Some(names), Some(values)) = (pair.first(), pair.get(1)) else {
            continue;
        };
        let (proto, names) = names.split_once(": ").expect("proto");
        let (_, values) = values.split_once(": ").expect("values");
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            out.insert(format!("{proto}:{n}"), v.parse().unwrap_or(0));
        }
    }
    out
}

/// tx packets and bytes of `dev` in `netns` (skbs, as the veth counts them: a GSO
/// packet is one).
fn tx(netns: &Path, dev: &str) -> (u64, u64) {
    let out = must(
        "nsenter",
        [
            format!("--net={}", netns.display()).as_str(),
            "ip",
            "-j",
            "-s",
            "link",
            "show",
            dev,
        ],
    );
    let v: Value = serde_json::from_str(&out).expect("ip -j");
    let tx = &v[0]["stats64"]["tx"];
    (
        tx["packets"].as_u64().expect("packets"),
        tx["bytes"].as_u64().expect("bytes"),
    )
}

#[test]
fn a_64k_gso_send_counts_as_the_segments_on_the_wire() {
    let node = TestNode::up();
    let a = node.add("a", &[]);
    let b = node.add("b", &[]);
    let a_netns = PathBuf::from(a["netns"].as_str().expect("netns"));
    let b_netns = PathBuf::from(b["netns"].as_str().expect("netns"));
    let b_ip: Ipv4Addr = b["ip"].as_str().expect("ip").parse().expect("ip");
    no_ipv6(&a_netns);
    // TSO on the pod's veth (the default), so its TCP stack hands down 64 KiB at once.
    let features = must(
        "nsenter",
        [
            format!("--net={}", a_netns.display()).as_str(),
            "ethtool",
            "-k",
            "eth0",
        ],
    );
    assert!(
        features.contains("tcp-segmentation-offload: on"),
        "{features}"
    );

    let listener = vethbpf::kernel::netns::run_in(&b_netns, move || {
        TcpListener::bind(SocketAddr::from((b_ip, 0)))
    })
    .expect("enter b")
    .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let (mut total, mut acked) = (0usize, 0usize);
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break total;
            }
            total += n;
            // Tell the sender each 64 KiB that arrived.
            while total >= (acked + 1) * (64 << 10) {
                s.write_all(b"k").expect("ack");
                acked += 1;
            }
        }
    });
    let mut stream = vethbpf::kernel::netns::run_in(&a_netns, move || {
        TcpStream::connect_timeout(&SocketAddr::from((b_ip, port)), Duration::from_secs(5))
    })
    .expect("enter a")
    .expect("connect");
    let chunk = vec![0x5au8; 64 << 10];
    let mut ack = [0u8; 1];
    // Warm up until the congestion window takes 64 KiB in one go.
    for _ in 0..32 {
        stream.write_all(&chunk).expect("write");
        stream.read_exact(&mut ack).expect("ack");
    }
    let name = a["name"].as_str().expect("name");
    let forwarded = |node: &TestNode| {
        let list = node.json(&["endpoint", "list"]);
        let ep = list
            .as_array()
            .and_then(|l| l.iter().find(|e| e["name"] == name))
            .cloned()
            .expect("a listed");
        (
            ep["counters"]["forwarded"]["packets"].as_u64().expect("p"),
            ep["counters"]["forwarded"]["bytes"].as_u64().expect("b"),
        )
    };
    // A delayed ACK of b's last "k" goes out within 40 ms: let it, so that the
    // three readings below see the same traffic.
    std::thread::sleep(Duration::from_millis(300));
    let (c0, snmp0, tx0) = (forwarded(&node), snmp(&a_netns), tx(&a_netns, "eth0"));
    // The send: 64 KiB in one write, read by b before the counters are read again.
    stream.write_all(&chunk).expect("write");
    stream.read_exact(&mut ack).expect("ack");
    std::thread::sleep(Duration::from_millis(300));
    let (c1, snmp1, tx1) = (forwarded(&node), snmp(&a_netns), tx(&a_netns, "eth0"));
    drop(stream);
    let total = reader.join().expect("reader");
    assert_eq!(total, 33 * (64 << 10));

    let segments = (snmp1["Tcp:OutSegs"] - snmp0["Tcp:OutSegs"]) as u64;
    let skbs = tx1.0 - tx0.0;
    let counted = c1.0 - c0.0;
    println!(
        "64 KiB sent: a's TCP sent {segments} segments in {skbs} skbs; vethbpf counted \
         {counted} packets, {} bytes ({} bytes left the veth)",
        c1.1 - c0.1,
        tx1.1 - tx0.1
    );
    // 65,536 bytes in segments of at most 1,448: at least 46 on the wire.
    assert!(segments >= 46, "{segments} segments");
    assert!(
        skbs < segments,
        "the pod handed down GSO packets ({skbs} skbs)"
    );
    assert_eq!(
        counted, segments,
        "counted as the segments the wire carries"
    );
    assert_eq!(c1.1 - c0.1, tx1.1 - tx0.1, "bytes as bytes");
}
